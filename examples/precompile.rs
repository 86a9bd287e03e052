//! Compiles the CUDA kernels for the given architectures into the kernel cache, without a GPU: run it
//! while building a container image so that the first `gptq_cuda_init` on the serving machine reads
//! the cubin instead of spending seconds in NVRTC.
//!
//!     GPTQ_CACHE_DIR=/opt/gptq-cache cargo run --release --example precompile -- 80 86 89 90
//!
//! Each argument is a compute capability without its dot (90 compiles for sm_90a), or `ptx` and one
//! (e.g. `ptx80`: PTX for compute_80, what `GPTQ_CUDA_KERNEL_ARCH=80` loads). Needs NVRTC
//! (CUDA 12.x or 13.x) on the library path; the cache key carries the NVRTC version, so the serving
//! machine must load the same one.

fn main() {
    let archs: Vec<String> = std::env::args().skip(1).collect();
    if archs.is_empty() {
        eprintln!("usage: precompile CC... (e.g. 80 86 89 90)");
        std::process::exit(2);
    }
    let (major, minor) = match gptq::cuda::nvrtc_version() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for a in &archs {
        let (ptx, digits) = match a.strip_prefix("ptx") {
            Some(d) => (true, d),
            None => (false, a.as_str()),
        };
        let cc: u32 = match digits.parse() {
            Ok(cc) if (50..=199).contains(&cc) => cc,
            _ => {
                eprintln!("{a}: not a compute capability such as 80 or 90");
                std::process::exit(2);
            }
        };
        let (image, what) = if ptx {
            (gptq::cuda::kernels_ptx((cc / 10, cc % 10)), format!("compute_{cc} PTX"))
        } else {
            (gptq::cuda::kernels_cubin((cc / 10, cc % 10)), format!("sm_{cc}"))
        };
        match image {
            Ok(bytes) => println!("{what}: {} bytes (NVRTC {major}.{minor})", bytes.len()),
            Err(e) => {
                eprintln!("{what}: {e}");
                std::process::exit(1);
            }
        }
    }
    match std::env::var_os(gptq::cuda::CACHE_DIR_ENV) {
        Some(d) => println!("cache: {}", d.to_string_lossy()),
        None => println!("cache: the default location ({} unset)", gptq::cuda::CACHE_DIR_ENV),
    }
}
