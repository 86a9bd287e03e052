//! NVRTC compilation of `kernels/` straight to a cubin for the device's own architecture (PTX from a
//! newer NVRTC than the driver would not load), cached on disk by source hash, arch and NVRTC version;
//! PTX only for tests that run an older card's code (`GPTQ_CUDA_KERNEL_ARCH`).

use crate::error::{Error, Result};
use cudarc::nvrtc::sys as nv;
use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// The kernel sources compiled into one module: shared helpers first, then each kernel family.
const SOURCE: &str = concat!(
    include_str!("../../kernels/common.cuh"),
    "\n",
    include_str!("../../kernels/gptq_gemv.cu"),
    "\n",
    include_str!("../../kernels/gptq_mma.cu"),
    "\n",
    include_str!("../../kernels/gptq_dense.cu"),
);

/// Environment variable overriding the cubin cache directory.
pub const CACHE_DIR_ENV: &str = "GPTQ_CACHE_DIR";

/// `GPTQ_NVRTC_DEFINES="NAME=VALUE ..."`: extra preprocessor definitions for the kernels, so a
/// benchmark can compare variants of a kernel's compile-time choices in one build (part of the
/// cache key).
fn defines() -> Vec<String> {
    std::env::var("GPTQ_NVRTC_DEFINES")
        .map(|v| v.split_whitespace().map(|d| format!("-D{d}")).collect())
        .unwrap_or_default()
}

fn nvrtc_check(r: nv::nvrtcResult, what: &str) -> Result<()> {
    if r == nv::nvrtcResult::NVRTC_SUCCESS { Ok(()) } else { Err(Error::Cuda(format!("{what}: {r:?}"))) }
}

/// FNV-1a: a stable hash, so cache names survive Rust upgrades.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(CACHE_DIR_ENV) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("libgptq"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/libgptq"))
}

/// The version of the NVRTC library the kernels are compiled with (e.g. `(12, 0)`, `(13, 0)`).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { nv::is_culib_present() } {
        return Err(Error::NoDevice("NVRTC (libnvrtc.so) was not found; it is needed to compile the kernels".into()));
    }
    let (mut maj, mut min) = (0, 0);
    // SAFETY: writes two ints.
    nvrtc_check(unsafe { nv::nvrtcVersion(&mut maj, &mut min) }, "nvrtcVersion")?;
    Ok((maj, min))
}

/// The kernel module's cubin for compute capability `arch` (e.g. `(8, 6)`; `(9, 0)` builds sm_90a),
/// from the cache or compiled by NVRTC (CUDA 12.x or 13.x) and cached. Needs NVRTC, not a GPU, so a
/// build machine can fill the cache (`GPTQ_CACHE_DIR`) for the cards it will serve, and a packager
/// can check that an NVRTC compiles the kernels. [`Error::NoDevice`] without NVRTC;
/// [`Error::Cuda`] with NVRTC's log where compilation fails (e.g. an architecture it does not know).
pub fn kernels_cubin(arch: (u32, u32)) -> Result<Vec<u8>> {
    // sm_90a unlocks Hopper-only instructions; other architectures use their plain name.
    let sm = if arch == (9, 0) { "sm_90a".to_string() } else { format!("sm_{}{}", arch.0, arch.1) };
    kernels_image(&sm, "cubin")
}

/// The kernel module as PTX for virtual architecture `compute_{arch}`, NUL-terminated (what
/// `cuModuleLoadData` takes), from the cache or compiled by NVRTC. The driver compiles it for the
/// card it loads on: how `GPTQ_CUDA_KERNEL_ARCH` runs an older card's kernel code on a newer card
/// (the library otherwise loads cubins only; PTX from an NVRTC newer than the driver would not load).
pub fn kernels_ptx(arch: (u32, u32)) -> Result<Vec<u8>> {
    kernels_image(&format!("compute_{}{}", arch.0, arch.1), "ptx")
}

/// A cubin (`kind` "cubin", `target` a real architecture) or PTX ("ptx", a virtual one), cached.
fn kernels_image(target: &str, kind: &str) -> Result<Vec<u8>> {
    let (maj, min) = nvrtc_version()?;
    let defines = defines();
    let hashed = [SOURCE.as_bytes(), defines.join(" ").as_bytes()].concat();
    let key = format!("{:016x}-{target}-nvrtc{maj}.{min}.{kind}", fnv1a(&hashed));
    let cached = cache_dir().map(|d| d.join(&key));
    // A PTX file without its terminating NUL (truncated, or not ours) is a miss: the driver would
    // read past the buffer.
    let usable = |b: &Vec<u8>| kind != "ptx" || b.last() == Some(&0);
    if let Some(bytes) = cached.as_ref().and_then(|p| std::fs::read(p).ok()).filter(usable) {
        return Ok(bytes);
    }
    let image = compile(target, &defines, kind == "ptx")?;
    if let Some(path) = cached {
        // Best effort, atomically: a failed cache write only costs a recompile next time.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &image).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }
    Ok(image)
}

/// Compiles the kernels for `sm`: a cubin, or with `ptx` NUL-terminated PTX.
fn compile(sm: &str, defines: &[String], ptx: bool) -> Result<Vec<u8>> {
    let src = CString::new(SOURCE).map_err(|_| Error::Cuda("kernel source has a NUL byte".into()))?;
    let name = CString::new("gptq_kernels.cu").unwrap();
    let opts: Vec<CString> = [format!("--gpu-architecture={sm}"), "--std=c++17".into(), "-default-device".into()]
        .into_iter()
        .chain(defines.iter().cloned())
        .filter_map(|o| CString::new(o).ok())
        .collect();
    let opt_ptrs: Vec<*const std::ffi::c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog = std::ptr::null_mut();
    // SAFETY: NVRTC copies the strings; the program is destroyed below on every path.
    unsafe {
        nvrtc_check(
            nv::nvrtcCreateProgram(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
            "nvrtcCreateProgram",
        )?;
        let compiled = nv::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let result = if compiled != nv::nvrtcResult::NVRTC_SUCCESS {
            let mut n = 0;
            nv::nvrtcGetProgramLogSize(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            nv::nvrtcGetProgramLog(prog, log.as_mut_ptr().cast());
            let log = CStr::from_bytes_until_nul(&log).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
            Err(Error::Cuda(format!("NVRTC failed to compile the kernels for {sm}: {log}")))
        } else if ptx {
            // The size counts the terminating NUL, which cuModuleLoadData needs.
            let mut n = 0;
            nvrtc_check(nv::nvrtcGetPTXSize(prog, &mut n), "nvrtcGetPTXSize").and_then(|_| {
                let mut text = vec![0u8; n];
                nvrtc_check(nv::nvrtcGetPTX(prog, text.as_mut_ptr().cast()), "nvrtcGetPTX").map(|_| text)
            })
        } else {
            let mut n = 0;
            nvrtc_check(nv::nvrtcGetCUBINSize(prog, &mut n), "nvrtcGetCUBINSize").and_then(|_| {
                let mut cubin = vec![0u8; n];
                nvrtc_check(nv::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()), "nvrtcGetCUBIN").map(|_| cubin)
            })
        };
        nv::nvrtcDestroyProgram(&mut prog);
        result
    }
}
