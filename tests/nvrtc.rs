//! The kernels compile with the NVRTC this process loads (CUDA 12.x or 13.x) for every architecture
//! the library runs on: no GPU needed, so CI checks the compilers of both CUDA majors (`.ci/run`
//! fetches NVRTC 12.0 and 13.0 and runs this test with each) and the architectures the device
//! machine does not have (sm_80, sm_86, sm_89, and Blackwell where NVRTC knows it). Skipped with a
//! notice where no NVRTC is found.

/// Whether `cubin` (an ELF image) names the kernel `name` (its symbol table holds the plain
/// `extern "C"` name, NUL-terminated).
fn has_kernel(cubin: &[u8], name: &str) -> bool {
    let needle = [name.as_bytes(), b"\0"].concat();
    cubin.windows(needle.len()).any(|w| w == needle.as_slice())
}

#[test]
fn kernels_compile_for_every_supported_architecture_with_this_nvrtc() {
    let (major, minor) = match gptq::cuda::nvrtc_version() {
        Ok(v) => v,
        Err(e) => {
            println!("NOTICE: {e}; the NVRTC compile test is skipped");
            return;
        }
    };
    // A fresh cache, so that every architecture is compiled now rather than read back.
    let cache = std::env::temp_dir().join(format!("gptq-nvrtc-test-{}", std::process::id()));
    // SAFETY: this test binary has this one test, so no other thread reads the environment.
    unsafe { std::env::set_var(gptq::cuda::CACHE_DIR_ENV, &cache) };
    let mut archs = vec![(8, 0), (8, 6), (8, 9), (9, 0)];
    if (major, minor) >= (12, 8) {
        archs.extend([(10, 0), (12, 0)]); // Blackwell: NVRTC knows it from 12.8
    }
    for arch in archs {
        let t = std::time::Instant::now();
        let cubin = gptq::cuda::kernels_cubin(arch).unwrap_or_else(|e| panic!("NVRTC {major}.{minor}, {arch:?}: {e}"));
        println!("NVRTC {major}.{minor} sm_{}{}: {} bytes in {:.1?}", arch.0, arch.1, cubin.len(), t.elapsed());
        assert_eq!(&cubin[..4], b"\x7fELF", "{arch:?}: not an ELF cubin");
        // Every architecture has the GEMV, register-fed mma, gather, reduction and dequantize kernels.
        for k in [
            "gptq_gemv_b4_m1_f16x2",
            "gptq_mma_b4_m1_f16_sym",
            "gptq_mma_b8_m4_bf16_asym",
            "gptq_gather_a",
            "gptq_mma_dequant_b4",
        ] {
            assert!(has_kernel(&cubin, k), "{arch:?}: kernel {k} missing");
        }
        // The bulk-copy ring needs sm_90+; the warpgroup kernel sm_90a alone.
        assert_eq!(has_kernel(&cubin, "gptq_bulk_b4_f16_sym"), arch.0 >= 9, "{arch:?}: bulk kernel");
        assert_eq!(has_kernel(&cubin, "gptq_gather_a_bulk"), arch.0 >= 9, "{arch:?}: row-by-row gather");
        assert_eq!(has_kernel(&cubin, "gptq_wg_b4_f16_sym"), arch == (9, 0), "{arch:?}: warpgroup kernel");
        // Cached under a name carrying the NVRTC version, and read back identical.
        let cached = std::fs::read_dir(&cache).unwrap().filter_map(|e| e.ok()).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.contains(&format!("sm_{}{}", arch.0, arch.1)) && n.contains(&format!("nvrtc{major}.{minor}"))
        });
        assert!(cached, "{arch:?}: no cache file for NVRTC {major}.{minor}");
        assert_eq!(gptq::cuda::kernels_cubin(arch).unwrap(), cubin, "{arch:?}: cache read back differs");
    }
    // PTX for the virtual architectures (GPTQ_CUDA_KERNEL_ARCH runs it on a newer card): text with
    // the terminating NUL cuModuleLoadData needs, the older cards' kernels and no sm_90 ones.
    for arch in [(8, 0), (8, 9)] {
        let ptx = gptq::cuda::kernels_ptx(arch).unwrap_or_else(|e| panic!("NVRTC {major}.{minor}, PTX {arch:?}: {e}"));
        let text = std::str::from_utf8(&ptx[..ptx.len() - 1]).expect("PTX is text");
        assert_eq!(ptx.last(), Some(&0), "{arch:?}: PTX not NUL-terminated");
        assert!(text.contains(&format!(".target sm_{}{}", arch.0, arch.1)), "{arch:?}: PTX target");
        assert!(text.contains(".entry gptq_mma_b4_m1_f16_sym"), "{arch:?}: register-fed kernel missing");
        assert!(!text.contains("gptq_bulk_b4_f16_sym") && !text.contains("griddepcontrol"), "{arch:?}: sm_90 code");
        assert!(!text.contains("gptq_gather_a_bulk"), "{arch:?}: the sm_90 row-by-row gather");
        let name = format!("compute_{}{}-nvrtc{major}.{minor}.ptx", arch.0, arch.1);
        let cached = std::fs::read_dir(&cache)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(&name));
        assert!(cached, "{arch:?}: no PTX cache file for NVRTC {major}.{minor}");
        assert_eq!(gptq::cuda::kernels_ptx(arch).unwrap(), ptx, "{arch:?}: PTX cache read back differs");
        if arch == (8, 0) {
            // A cached PTX file cut short (no terminating NUL) is compiled again, not handed to the driver.
            let file = std::fs::read_dir(&cache)
                .unwrap()
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().to_string_lossy().ends_with(&name))
                .unwrap()
                .path();
            std::fs::write(&file, &ptx[..ptx.len() / 2]).unwrap();
            assert_eq!(gptq::cuda::kernels_ptx(arch).unwrap(), ptx, "truncated PTX in the cache was used");
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}
