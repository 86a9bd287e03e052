//! CUDA backend tests. Without a driver they check that every entry point fails cleanly with
//! GPTQ_STATUS_NO_DEVICE; with a GPU they check the kernels against the CPU path on fresh random
//! data (outputs poisoned first), CUDA-graph replay, and two streams on one plan.

mod common;

use common::Case;
use cudarc::driver::sys as cu;
use gptq::cuda::{ActDType, CudaLayer, KernelFamily};
use gptq::cpu::{gemm, OutMatMut};
use gptq::ffi::*;
use gptq::format::pack::{pack_qweight, pack_rows};
use gptq::format::{CheckpointFormat, LayerDesc, PackedRef};
use gptq::{Elements, MatView, QuantizedLayer};
use half::{bf16, f16};
use std::ffi::{c_void, CStr};

fn gpu_available() -> bool {
    let mut n = 0;
    let s = unsafe { gptq_cuda_device_count(&mut n) };
    if s != GPTQ_STATUS_OK || n == 0 {
        eprintln!("NOTICE: no CUDA device ({}); GPU tests skipped", unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_string_lossy());
        return false;
    }
    true
}

#[test]
fn without_a_driver_every_cuda_entry_point_reports_no_device() {
    if unsafe { cu::is_culib_present() } {
        eprintln!("NOTICE: a CUDA driver is present; the no-driver test does not apply");
        return;
    }
    let mut n = -1;
    assert_eq!(unsafe { gptq_cuda_device_count(&mut n) }, GPTQ_STATUS_NO_DEVICE);
    assert_eq!(n, -1, "count written on error");
    let msg = unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_string_lossy().into_owned();
    assert!(msg.contains("libcuda"), "{msg}");
    assert_eq!(gptq_cuda_init(0), GPTQ_STATUS_NO_DEVICE);
    let h = gptq_test_layer(random_layer(1, 4, Some(128), 256, 128, false, true));
    let mut cl = 0x1 as *mut gptq_cuda_layer;
    assert_eq!(unsafe { gptq_cuda_layer_new(h.0, 0, &mut cl) }, GPTQ_STATUS_NO_DEVICE);
    assert_eq!(cl, 0x1 as *mut gptq_cuda_layer, "out written on error");
    h.free();
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn uniform(&mut self) -> f32 {
        (self.next() as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    }
}

fn random_layer(seed: u64, bits: u32, gs: Option<usize>, k: usize, n: usize, act_order: bool, sym: bool) -> QuantizedLayer {
    let mut rng = Rng(seed);
    let maxq = (1u32 << bits) - 1;
    let g = gs.map_or(1, |g| k.div_ceil(g));
    let codes: Vec<u8> = (0..n * k).map(|_| (rng.next() % (maxq as u64 + 1)) as u8).collect();
    let zeros: Vec<u32> = (0..g * n).map(|_| if sym { 1 << (bits - 1) } else { 1 + (rng.next() % maxq as u64) as u32 }).collect();
    let scales: Vec<f16> = (0..g * n).map(|_| f16::from_f32(0.002 + 0.01 * rng.uniform().abs())).collect();
    let gsz = gs.unwrap_or(k);
    let mut order: Vec<usize> = (0..k).collect();
    if act_order {
        for i in (1..k).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
    }
    let mut g_idx = vec![0i32; k];
    for (pos, &c) in order.iter().enumerate() {
        g_idx[c] = (pos / gsz) as i32;
    }
    let qweight: Vec<i32> = pack_qweight(&codes, bits, n, k).into_iter().map(|v| v as i32).collect();
    let qzeros: Vec<i32> = pack_rows(&zeros, bits, n).into_iter().map(|v| v as i32).collect();
    let bias: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.uniform())).collect();
    let desc = LayerDesc { bits, group_size: gs, in_features: k, out_features: n, sym };
    let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: Some(&g_idx), bias: Some(&bias) };
    QuantizedLayer::from_packed(desc, CheckpointFormat::V2, t).unwrap()
}

/// Minimal device-memory helpers for the tests (the library itself never allocates in GEMM calls).
mod gpu {
    use super::cu;
    pub fn ok(r: cu::CUresult) {
        assert_eq!(r, cu::CUresult::CUDA_SUCCESS);
    }
    pub fn ctx() {
        unsafe {
            let mut dev = 0;
            ok(cu::cuDeviceGet(&mut dev, 0));
            let mut ctx = std::ptr::null_mut();
            ok(cu::cuDevicePrimaryCtxRetain(&mut ctx, dev));
            ok(cu::cuCtxSetCurrent(ctx));
        }
    }
    pub struct Buf(pub u64, pub usize);
    impl Buf {
        pub fn new(bytes: usize) -> Buf {
            let mut p = 0;
            unsafe { ok(cu::cuMemAlloc_v2(&mut p, bytes.max(4))) };
            Buf(p, bytes)
        }
        pub fn from<T: Copy>(data: &[T]) -> Buf {
            let b = Buf::new(std::mem::size_of_val(data));
            unsafe { ok(cu::cuMemcpyHtoD_v2(b.0, data.as_ptr().cast(), b.1)) };
            b
        }
        pub fn read<T: Copy + Default>(&self, n: usize) -> Vec<T> {
            let mut v = vec![T::default(); n];
            unsafe { ok(cu::cuMemcpyDtoH_v2(v.as_mut_ptr().cast(), self.0, n * std::mem::size_of::<T>())) };
            v
        }
        pub fn fill16(&self, v: u16) {
            unsafe { ok(cu::cuMemsetD16_v2(self.0, v, self.1 / 2)) };
        }
    }
    impl Drop for Buf {
        fn drop(&mut self) {
            unsafe { cu::cuMemFree_v2(self.0) };
        }
    }
    pub fn stream() -> cu::CUstream {
        let mut s = std::ptr::null_mut();
        unsafe { ok(cu::cuStreamCreate(&mut s, 1)) };
        s
    }
    pub fn sync(s: cu::CUstream) {
        unsafe { ok(cu::cuStreamSynchronize(s)) };
    }
}

const POISON: u16 = 0x7E00; // fp16 and (as 0x7E00 bf16) NaN bit patterns differ; check both below

fn is_nan_bits(bits: u16, bf: bool) -> bool {
    if bf { bf16::from_bits(bits).is_nan() } else { f16::from_bits(bits).is_nan() }
}

/// The layer under test: through the C ABI, or the Rust API (to pick the kernel family).
#[derive(Clone, Copy)]
enum Target<'a> {
    Ffi(*mut gptq_cuda_layer),
    Rust(&'a CudaLayer),
}

/// Runs the CUDA GEMM for `m` rows and compares with the CPU path; returns the relative error.
fn check_one(t: Target, cpu: &QuantizedLayer, m: usize, bf: bool, stream: cu::CUstream, rng: &mut Rng) -> f64 {
    let (k, n) = (cpu.desc().in_features, cpu.desc().out_features);
    // Odd m: an odd row stride, so A cannot be staged with 16-byte loads (the kernels' scalar path).
    let lda = if m % 2 == 1 { k + 3 } else { k + 8 };
    let a32: Vec<f32> = (0..m * lda).map(|_| rng.uniform()).collect();
    let bits: Vec<u16> = a32.iter().map(|&v| if bf { bf16::from_f32(v).to_bits() } else { f16::from_f32(v).to_bits() }).collect();
    let a_dev = gpu::Buf::from(&bits);
    let ldc = n + 4;
    let c_dev = gpu::Buf::new(m * ldc * 2);
    c_dev.fill16(if bf { 0x7FC0 } else { POISON });
    let ws = match t {
        Target::Ffi(cl) => {
            let mut ws = 0usize;
            assert_eq!(unsafe { gptq_cuda_workspace_size(cl, m, &mut ws) }, GPTQ_STATUS_OK);
            ws
        }
        Target::Rust(l) => l.workspace_size(m).unwrap(),
    };
    let ws_dev = gpu::Buf::new(ws);
    match t {
        Target::Ffi(cl) => {
            let dtype = if bf { GPTQ_DTYPE_BF16 } else { GPTQ_DTYPE_F16 };
            let s = unsafe { gptq_cuda_gemm(cl, a_dev.0 as *const c_void, dtype, m, lda, c_dev.0 as *mut c_void, ldc, ws_dev.0 as *mut c_void, ws, stream.cast()) };
            assert_eq!(s, GPTQ_STATUS_OK, "{}", unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_string_lossy());
        }
        Target::Rust(l) => {
            let dtype = if bf { ActDType::BF16 } else { ActDType::F16 };
            unsafe { l.gemm(a_dev.0, dtype, m, lda, c_dev.0, ldc, ws_dev.0, ws, stream) }.unwrap();
        }
    }
    gpu::sync(stream);
    let got: Vec<u16> = c_dev.read(m * ldc);
    relative_error(cpu, &bits, m, lda, &got, ldc, bf)
}

/// Relative Frobenius error of `got` (`m` rows of stride `ldc`, fp16 or bf16 bits) against the CPU
/// path on exactly the activations `a` (stride `lda`); checks that every output was written and that
/// the padding between rows (poisoned by the caller) was not.
fn relative_error(cpu: &QuantizedLayer, a: &[u16], m: usize, lda: usize, got: &[u16], ldc: usize, bf: bool) -> f64 {
    let (k, n) = (cpu.desc().in_features, cpu.desc().out_features);
    let a_vals: Vec<f32> = a.iter().map(|&b| if bf { bf16::from_bits(b).to_f32() } else { f16::from_bits(b).to_f32() }).collect();
    let view = MatView::new(Elements::F32(&a_vals), m, k, lda, "A").unwrap();
    let mut want = vec![0f32; m * n];
    gemm(cpu, &view, OutMatMut::F32(&mut want), n).unwrap();
    let (mut num, mut den) = (0f64, 0f64);
    for r in 0..m {
        for j in 0..ldc {
            let b = got[r * ldc + j];
            if j >= n {
                assert!(is_nan_bits(b, bf), "padding C[{r},{j}] overwritten");
                continue;
            }
            assert!(!is_nan_bits(b, bf), "C[{r},{j}] not written (m {m})");
            let v = if bf { bf16::from_bits(b).to_f64() } else { f16::from_bits(b).to_f64() };
            let w = want[r * n + j] as f64;
            num += (v - w) * (v - w);
            den += w * w;
        }
    }
    (num / den).sqrt()
}

fn bound(bf: bool) -> f64 {
    if bf { 1e-2 } else { 2e-3 }
}

/// Checks every `m` in `ms` for fp16 and bf16 activations against the CPU path.
fn assert_matches(t: Target, cpu: &QuantizedLayer, ms: &[usize], stream: cu::CUstream, rng: &mut Rng, what: &str) {
    for &m in ms {
        for bf in [false, true] {
            let e = check_one(t, cpu, m, bf, stream, rng);
            assert!(e < bound(bf), "{what} m {m} bf16 {bf}: rel err {e:e}");
        }
    }
}

/// Whether any of the comparison switches `GPTQ_CUDA_{name}` is set (tests then skip their
/// assertions on which kernel runs).
fn any_set(names: &[&str]) -> bool {
    names.iter().any(|v| std::env::var_os(format!("GPTQ_CUDA_{v}")).is_some())
}

/// Every M of the issue (up to `max_m`).
fn all_ms(max_m: usize) -> Vec<usize> {
    (1..=16).chain([31, 64, 127, 256, 1000, 4096]).filter(|&m| m <= max_m).collect()
}

#[test]
fn cuda_gemm_matches_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(99);
    // (bits, group, act-order, sym, K, N, largest M)
    let cases: &[(u32, Option<usize>, bool, bool, usize, usize, usize)] = &[
        (4, Some(128), false, true, 4096, 4096, 4096),
        (4, Some(128), true, true, 4096, 11008, 1000),
        (4, Some(128), false, false, 11008, 4096, 1000),
        (4, Some(32), true, false, 512, 1000, 4096),
        (4, Some(64), false, true, 1024, 776, 1000),
        (4, None, false, false, 768, 512, 1000),
        (4, Some(16), true, true, 520, 200, 1000),
        (8, Some(128), false, true, 4096, 4096, 4096),
        (8, Some(32), true, true, 1024, 1032, 1000),
        (8, None, false, true, 512, 256, 1000),
        (8, Some(64), false, false, 1028, 328, 1000),
        // 8-bit act-order, asymmetric, on short K splits (8 tiles, 16 splits at 9-16 rows).
        (8, Some(128), true, false, 2048, 512, 64),
        // 2 and 3 bit run as 4 bit (codes widened when the plan is built).
        (2, Some(128), false, true, 2048, 1024, 256),
        (2, Some(64), true, false, 1024, 512, 64),
        (3, Some(128), true, true, 2048, 1024, 256),
        (3, Some(32), false, false, 1024, 768, 64),
        (3, None, false, true, 512, 256, 16),
        // Act-order, asymmetric, K ending inside a tile: at M = 1 the bulk-copy kernel's long
        // in-kernel gather (12 splits of 17 tiles, 272 inputs; the last split 6 tiles).
        (4, Some(128), true, false, 3080, 8192, 16),
    ];
    for (i, &(bits, gs, act, sym, k, n, max_m)) in cases.iter().enumerate() {
        let cpu = random_layer(i as u64 + 1, bits, gs, k, n, act, sym);
        let mut cl = std::ptr::null_mut();
        let layer_handle = gptq_test_layer(cpu);
        let s = unsafe { gptq_cuda_layer_new(layer_handle.0, 0, &mut cl) };
        assert_eq!(s, GPTQ_STATUS_OK, "{}", unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_string_lossy());
        let what = format!("bits {bits} gs {gs:?} act {act} sym {sym} K {k} N {n}");
        assert_matches(Target::Ffi(cl), &layer_handle.1, &all_ms(max_m), stream, &mut rng, &what);
        eprintln!("case {i}: bits {bits} gs {gs:?} act {act} sym {sym} K {k} N {n}: all M up to {max_m} pass");
        unsafe { gptq_cuda_layer_free(cl) };
        layer_handle.free();
    }
}

#[test]
fn model_sized_layers_run_on_tensor_cores_and_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(3);
    // On sm_90a: 8192×28672's long K splits take the warpgroup kernel from 2 rows (M = 1 the
    // bulk-copy kernel; at 8 bit from 1 row, its 3 splits adding in one cluster), the other layers
    // from 9 (M = 8 the bulk-copy kernel, at 8 bit only for
    // blocks of at least 32 K tiles); 4 and 8 bit. 28672×8192 (asymmetric, act-order): from 8 rows
    // the warpgroup kernel's deep ring (4 bit asymmetric: 6 stages; 8 bit: 9 symmetric, 8 here).
    // On memory-rich cards (the H200) the 4-bit long splits take the warpgroup kernel from 3 rows
    // where its splits are balanced (8192×28672 symmetric, balanced up to 8 rows), else from 7.
    let cases = [
        (5120usize, 13824usize, false, 4u32),
        (13824, 5120, true, 4),
        (8192, 28672, false, 4),
        (8192, 8192, false, 8),
        (28672, 8192, true, 4),
        (28672, 8192, false, 8),
        (8192, 28672, false, 8),
        (8192, 28672, true, 4),
    ];
    for (i, &(k, n, act, bits)) in cases.iter().enumerate() {
        let cpu = random_layer(50 + i as u64, bits, Some(128), k, n, act, k != 28672);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        assert!(l.uses_tensor_cores(), "a g128 layer must take the tensor-core path");
        let ms: &[usize] = match (bits, k, n) {
            _ if act && (k, n) == (8192, 28672) => &[1, 2, 5],
            (8, 28672, 8192) => &[8, 16],
            (8, 8192, 28672) => &[1, 2, 16],
            (8, ..) => &[1, 8, 16],
            (4, 8192, 28672) => &[1, 2, 5, 8, 16, 64, 1000],
            (4, 28672, 8192) => &[1, 4, 7, 8, 12, 16, 64],
            (4, 13824, 5120) => &[1, 2, 3, 8, 16, 64, 1000],
            _ => &[1, 8, 16, 64, 1000],
        };
        let what = format!("{bits} bit K {k} N {n} act {act}");
        assert_matches(Target::Rust(&l), &cpu, ms, stream, &mut rng, &what);
        // On sm_90a, M = 16 on 8192×28672 (3 splits of K) adds its splits in thread-block clusters
        // unless GPTQ_CUDA_NO_CLUSTERS asks for the workspace path: the check above covered it.
        let clusters_wanted = gptq::cuda::init(0).unwrap().wg && std::env::var_os("GPTQ_CUDA_NO_CLUSTERS").is_none();
        let wg = gptq::cuda::init(0).unwrap().wg && std::env::var_os("GPTQ_CUDA_WG_MIN_ROWS").is_none();
        // The deep ring's rule as the H100 (132 SMs) takes it without overrides: 28672×8192 splits
        // K 12 ways at three blocks per SM, 8 at two, so 8 to 16 rows take the deep ring.
        let overrides =
            any_set(&["WG_MIN_ROWS", "BLOCKS_PER_SM", "BULK_STAGES", "DEEP_SPLITS", "NO_DEEP_RING", "DEEP_RING"]);
        let dev = gptq::cuda::init(0).unwrap();
        // sm_90: act-order A of 8+ rows is gathered row by row through shared memory where rows ×
        // inputs reach 196,608 (28672 inputs from 8 rows, 13824 from 15), else element by element
        // (the rule for 16-byte rows, as the even M above have; odd M have unaligned rows, which
        // always take the element-wise gather: cuda_gemm_matches_the_cpu_path covers those).
        if act && dev.bulk && std::env::var_os("GPTQ_CUDA_GATHER_BY_ROW").is_none() {
            for m in [4, 7, 8, 16, 64] {
                let want = m >= 8 && m * k >= 3 << 16;
                assert_eq!(l.gathers_act_order_by_row(m), want, "{what}: row-by-row gather at M = {m}");
            }
        }
        // sm_90: act-order A of one row over the bulk-copy kernel's blocks of up to 768 inputs
        // (13824×5120: 19 splits of 46 tiles, 736 inputs, 496 sectors of A per row) is gathered in
        // the kernel; 2 rows (991 sectors) first.
        let long_gather_off = std::env::var_os("GPTQ_CUDA_LONG_GATHER").is_some();
        if act && (k, n) == (13824, 5120) && dev.bulk && dev.sm_count == 132 && !overrides && !long_gather_off {
            for m in [1, 2, 3] {
                assert_eq!(l.gathers_act_order_in_kernel(m), m == 1, "{what}: in-kernel gather at M = {m}");
            }
        }
        if (k, n) == (28672, 8192) && dev.wg && dev.sm_count == 132 && !overrides {
            for m in [7, 8, 16] {
                assert_eq!(l.runs_deep_ring(m), m >= 8, "{what}: deep ring at M = {m}");
            }
        }
        // The bulk-copy kernel keeps a fourth block off each SM for blocks of 32+ K tiles (8192×8192
        // at 8 bit: 43), not on short ones (4096×4096, in split_k_through_a_4_byte_aligned_workspace_…).
        if (k, n, bits) == (8192, 8192, 8) && dev.bulk && std::env::var_os("GPTQ_CUDA_BULK_PAD").is_none() && !overrides {
            assert!(l.pads_bulk_at(1), "{what}: M = 1 at three blocks per SM");
        }
        if (k, n) == (8192, 28672) {
            assert!(!l.runs_deep_ring(16), "{what}: 3 splits at three blocks per SM need no deep ring");
            // 4 bit: 112 column blocks × 3 splits fill 336 of the H100's 396 block slots, so 1-2 rows
            // take balanced splits (M = 2: the warpgroup kernel's, through the workspace); from 3 rows
            // the 3 splits add in clusters. Memory-rich cards: balanced up to 8 rows (from 3 on the
            // warpgroup kernel), clusters from 9.
            let rule = !overrides && std::env::var_os("GPTQ_CUDA_BALANCED").is_none();
            let balanced = bits == 4 && dev.wg && dev.sm_count == 132 && rule;
            let rich = balanced && dev.memory_rich;
            if rule {
                assert_eq!(l.reduces_in_clusters(16), clusters_wanted, "{what}: cluster reduction at M = 16");
                // (Any memory-rich card: M = 5 runs balanced or on the bulk-copy kernel.)
                let at5 = clusters_wanted && !(bits == 4 && dev.memory_rich);
                assert_eq!(l.reduces_in_clusters(5), at5, "{what}: cluster reduction at M = 5");
            }
            if balanced {
                // Memory-rich cards: 1-2 rows of symmetric 4-bit layers without act-order run the
                // bulk-copy kernel at four blocks per SM, in uniform splits (version 73).
                let four_on = std::env::var("GPTQ_CUDA_BULK_FOUR").map_or(true, |v| v != "0")
                    && std::env::var("GPTQ_CUDA_BULK_PAD").map_or(true, |v| v != "1");
                let four = rich && !act && four_on;
                // (The bulk-copy kernel's registers decide whether four blocks fit: at most 96 each.)
                assert!(!four || l.bulk_four_fits(), "{what}: four blocks per SM no longer fit (registers?)");
                for m in [1, 2] {
                    assert_eq!(l.runs_four_per_sm(m), four, "{what}: four blocks per SM at M = {m}");
                    assert_eq!(l.runs_balanced(m), !four, "{what}: balanced splits at M = {m}");
                }
                for m in [3, 5, 8] {
                    assert_eq!(l.runs_balanced(m), rich, "{what}: balanced splits at M = {m}");
                }
                assert!(!l.runs_balanced(9) && !l.runs_balanced(16), "{what}: uniform splits at M = 9-16");
            }
            if bits == 8 && wg {
                assert_eq!(l.reduces_in_clusters(1), clusters_wanted, "{what}: cluster reduction at M = 1");
            }
        }
        if wg {
            let long = (k, n) == (8192, 28672) || (k, n) == (28672, 8192);
            let one_row = bits == 8 && (k, n) == (8192, 28672);
            // (The same for bf16 activations: 4-bit M = 1 stays on the bulk-copy kernel, version 50.)
            assert_eq!(l.takes_warpgroup(1), one_row, "{what}: the warpgroup kernel at M = 1");
            // Memory-rich cards: 4-bit long splits from 3 rows where balanced (the H200's 132 SMs:
            // 8192×28672 symmetric), else from 7.
            let rich = long && bits == 4 && dev.memory_rich;
            let known = !rich || (dev.sm_count == 132 && std::env::var_os("GPTQ_CUDA_BALANCED").is_none());
            let from = match (long, rich) {
                (false, _) => 9,
                (true, false) => 2,
                (true, true) if (k, n) == (8192, 28672) => 3,
                (true, true) => 7,
            };
            for m in [2, 3, 6, 7, 8].into_iter().filter(|_| known) {
                let want = one_row || m >= from;
                assert_eq!(l.takes_warpgroup(m), want, "{what}: the warpgroup kernel at M = {m}, from {from}");
            }
            assert!(l.takes_warpgroup(9) && l.takes_warpgroup(16), "{what}: the warpgroup kernel at M = 9-16");
            // 17-128 rows (8 bit: 17-32) as blocks of 16 side by side, where those fit the H100's
            // 396 block slots unsplit (8192×28672 at 64 rows: 112 column blocks × 4 do not), above
            // 96 rows only where no block's run of K exceeds 1024 tiles (28672×8192: one of 1792).
            if dev.sm_count == 132 && std::env::var_os("GPTQ_CUDA_WG_MAX_ROWS").is_none() && !overrides {
                assert!(l.takes_warpgroup(17) && l.takes_warpgroup(32), "{what}: the warpgroup kernel at M = 17-32");
                assert!(!l.takes_warpgroup(129), "{what}: no warpgroup kernel from M = 129");
                let fits = (k, n) != (8192, 28672) && bits == 4;
                assert_eq!(l.takes_warpgroup(64), fits, "{what}: the warpgroup kernel at M = 64");
                assert_eq!(l.takes_warpgroup(96), fits, "{what}: the warpgroup kernel at M = 96");
                if (k, n, bits) == (28672, 8192, 4) {
                    assert!(!l.takes_warpgroup(112), "{what}: the register-fed kernel at M = 112");
                }
            }
        }
        eprintln!("{what}: M {ms:?} pass (clusters at M = 16: {})", l.reduces_in_clusters(16));
    }
}

/// With `GPTQ_CUDA_KERNEL_ARCH` (e.g. 80), the device runs an older card's kernels (PTX for that
/// architecture, compiled by the driver) and none of the sm_90 paths, so the whole GPU suite then
/// checks the code an A100 or an RTX 4090 runs; without it, the device's own.
#[test]
fn kernel_arch_override_selects_the_older_cards_kernels() {
    if !gpu_available() {
        return;
    }
    let dev = gptq::cuda::init(0).unwrap();
    match std::env::var("GPTQ_CUDA_KERNEL_ARCH").ok().and_then(|v| v.trim().parse::<u32>().ok()) {
        Some(cc) if cc < 90 => {
            assert!(!dev.bulk && !dev.wg && !dev.pdl, "sm_90 paths chosen under GPTQ_CUDA_KERNEL_ARCH={cc}");
            let l = CudaLayer::new(&random_layer(5, 4, Some(128), 1024, 1024, false, true), 0).unwrap();
            assert!(l.uses_tensor_cores() && !l.takes_warpgroup(16), "register-fed tensor-core kernels");
            eprintln!("kernels built for compute_{cc}, running on sm_{}{}", dev.arch.0, dev.arch.1);
        }
        _ => eprintln!("NOTICE: no older GPTQ_CUDA_KERNEL_ARCH; the device's own kernels (sm_{}{})", dev.arch.0, dev.arch.1),
    }
}

/// Split-K partial sums through a workspace only 4-byte aligned (the least `gemm` accepts) give the
/// same bits as through an aligned one, and match the CPU path, on the tensor-core and CUDA-core
/// layers.
#[test]
fn split_k_through_a_4_byte_aligned_workspace_gives_the_same_bits() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(23);
    let cpu = random_layer(91, 4, Some(128), 4096, 4096, false, true);
    let layers = [CudaLayer::new(&cpu, 0).unwrap(), CudaLayer::with_family(&cpu, 0, KernelFamily::CudaCores).unwrap()];
    let dev = gptq::cuda::init(0).unwrap();
    for (l, family) in layers.iter().zip(["tensor-core", "CUDA-core"]) {
        if family == "tensor-core" && dev.bulk && std::env::var_os("GPTQ_CUDA_BULK_PAD").is_none() {
            // 4096×4096's blocks are short (11 K tiles): a fourth block may share each SM.
            assert!(!l.pads_bulk_at(1), "4096x4096 M = 1: no padding of the bulk-copy kernel");
        }
        for m in [1usize, 4, 12, 16, 64] {
            let (k, n) = (4096, 4096);
            let ws = l.workspace_size(m).unwrap();
            if ws == 0 {
                continue; // no split of K at this m
            }
            let a: Vec<u16> = (0..m * k).map(|_| f16::from_f32(rng.uniform()).to_bits()).collect();
            let a_dev = gpu::Buf::from(&a);
            let ws_dev = gpu::Buf::new(ws + 16);
            let mut outs = Vec::new();
            for offset in [0u64, 4] {
                let c_dev = gpu::Buf::new(m * n * 2);
                c_dev.fill16(POISON);
                unsafe { l.gemm(a_dev.0, ActDType::F16, m, k, c_dev.0, n, ws_dev.0 + offset, ws, stream) }.unwrap();
                gpu::sync(stream);
                outs.push(c_dev.read::<u16>(m * n));
            }
            let err = relative_error(&cpu, &a, m, k, &outs[0], n, false);
            assert!(err < bound(false), "{family} m {m}: relative error {err:.2e}");
            assert!(outs[0] == outs[1], "{family} m {m}: the unaligned workspace changed the result");
            eprintln!("{family} m {m}: aligned and unaligned workspaces agree, error {err:.2e}");
        }
    }
}

/// Act-order calls that the small-batch kernels gather themselves give the same bits whether A is
/// 16-byte aligned or 2 bytes off, and match the CPU path: 4096×4096 (blocks of 176 inputs, M = 1,
/// 2 and 8) and 4096×11008 (464 inputs: the bulk-copy kernel's long form at M = 1-2; M = 8 takes
/// the gather launch), fp16 and bf16, symmetric and asymmetric. (Also the case compute-sanitizer's
/// racecheck runs for the in-kernel gathers.)
#[test]
fn act_order_in_kernel_gathers_do_not_depend_on_the_alignment_of_a() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(29);
    let dev = gptq::cuda::init(0).unwrap();
    let rule = dev.bulk
        && dev.sm_count == 132
        && !any_set(&["LONG_GATHER", "BULK_PAD", "BULK_STAGES", "BLOCKS_PER_SM", "BULK", "WG_MIN_ROWS"]);
    for (i, &(k, n, sym)) in [(4096usize, 4096usize, true), (4096, 11008, false)].iter().enumerate() {
        let cpu = random_layer(200 + i as u64, 4, Some(128), k, n, true, sym);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        for m in [1usize, 2, 8] {
            for bf in [false, true] {
                let dtype = if bf { ActDType::BF16 } else { ActDType::F16 };
                if rule {
                    // On the H100: 4096×11008 gathers in the kernel at M = 1-2 (29-tile blocks, 214
                    // sectors of A per row).
                    let want = n == 4096 || m <= 2;
                    assert_eq!(l.gathers_act_order_in_kernel(m), want, "{k}x{n} m {m}: in-kernel gather");
                }
                let a: Vec<u16> = (0..m * k)
                    .map(|_| if bf { bf16::from_f32(rng.uniform()).to_bits() } else { f16::from_f32(rng.uniform()).to_bits() })
                    .collect();
                let a_dev = gpu::Buf::new(m * k * 2 + 16);
                let ws = l.workspace_size(m).unwrap();
                let ws_dev = gpu::Buf::new(ws.max(16));
                let mut outs = Vec::new();
                for offset in [0u64, 2] {
                    // A at a 16-byte boundary, then 2 bytes off.
                    unsafe { gpu::ok(cu::cuMemcpyHtoD_v2(a_dev.0 + offset, a.as_ptr().cast(), m * k * 2)) };
                    let c_dev = gpu::Buf::new(m * n * 2);
                    c_dev.fill16(if bf { 0x7FC0 } else { POISON });
                    unsafe { l.gemm(a_dev.0 + offset, dtype, m, k, c_dev.0, n, ws_dev.0, ws, stream) }.unwrap();
                    gpu::sync(stream);
                    outs.push(c_dev.read::<u16>(m * n));
                }
                let err = relative_error(&cpu, &a, m, k, &outs[0], n, bf);
                assert!(err < bound(bf), "{k}x{n} m {m} bf16 {bf}: relative error {err:.2e}");
                assert!(outs[0] == outs[1], "{k}x{n} m {m} bf16 {bf}: the two gathers disagree");
            }
            eprintln!("{k}x{n} m {m}: in-kernel gather {}: aligned and unaligned A agree", l.gathers_act_order_in_kernel(m));
        }
    }
}

/// Runs `m` rows with 16-byte aligned strides (lda = k + 8, ldc = n rounded up to 8, + 8) and a
/// workspace of `ws` bytes; returns the relative error against the CPU path.
fn check_aligned(l: &CudaLayer, cpu: &QuantizedLayer, m: usize, bf: bool, ws: usize, stream: cu::CUstream, rng: &mut Rng) -> f64 {
    let (k, n) = (cpu.desc().in_features, cpu.desc().out_features);
    let (lda, ldc) = (k + 8, n.next_multiple_of(8) + 8);
    let bits: Vec<u16> =
        (0..m * lda).map(|_| rng.uniform()).map(|v| if bf { bf16::from_f32(v).to_bits() } else { f16::from_f32(v).to_bits() }).collect();
    let a_dev = gpu::Buf::from(&bits);
    let c_dev = gpu::Buf::new(m * ldc * 2);
    c_dev.fill16(if bf { 0x7FC0 } else { POISON });
    let ws_dev = gpu::Buf::new(ws);
    let dtype = if bf { ActDType::BF16 } else { ActDType::F16 };
    unsafe { l.gemm(a_dev.0, dtype, m, lda, c_dev.0, ldc, ws_dev.0, ws, stream) }.unwrap();
    gpu::sync(stream);
    relative_error(cpu, &bits, m, lda, &c_dev.read(m * ldc), ldc, bf)
}

/// Large batches (from 129 rows) with aligned operands dequantize the weights into the
/// workspace and run cuBLASLt: 4 and 8 bit (2 bit widened to 4), symmetric and asymmetric, groups
/// 32/64/128/none, act-order (A gathered first), K ending inside a tile, odd N, with the bias in
/// cuBLASLt's epilogue, and an act-order 8192×28672 layer; fp16 and bf16. The same calls (but on
/// the large layer) with only the quantized kernels' workspace run those kernels instead, and match
/// too.
#[test]
fn large_batches_dequantize_and_run_cublaslt() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    if !gptq::cuda::init(0).unwrap().has_cublaslt() {
        eprintln!("NOTICE: cuBLASLt not found (or GPTQ_CUDA_DENSE=0): the dense path is not tested");
        return;
    }
    let stream = gpu::stream();
    let mut rng = Rng(61);
    // (bits, group, act-order, sym, K, N); the model-sized layer at the first M only, dense only.
    let cases: &[(u32, Option<usize>, bool, bool, usize, usize)] = &[
        (4, Some(128), false, true, 4096, 4096),
        (4, Some(32), true, false, 1024, 1000),
        (4, Some(128), true, false, 3080, 1032),
        (4, None, false, false, 768, 520),
        (8, Some(128), true, true, 2048, 1032),
        (8, Some(64), false, false, 1024, 328),
        (2, Some(128), false, true, 2048, 1024),
        (4, Some(128), true, true, 8192, 28672),
    ];
    // The dense path starts where the wide warpgroup kernel (sm_90a) stops.
    let dev = gptq::cuda::init(0).unwrap();
    for (i, &(bits, gs, act, sym, k, n)) in cases.iter().enumerate() {
        let cpu = random_layer(100 + i as u64, bits, gs, k, n, act, sym);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        let what = format!("bits {bits} gs {gs:?} act {act} sym {sym} K {k} N {n}");
        let min = (dev.dense_min_rows..).find(|&m| l.wide_rows_per_block(m).is_none()).unwrap();
        assert!(l.runs_dense(min) && (min == 1 || !l.runs_dense(min - 1)), "{what}: the dense path from {min} rows");
        let big = n * k > 1 << 26;
        let ms = if big { vec![min] } else { vec![min, min + 44, 1000] };
        for &m in &ms {
            let full = l.workspace_size(m).unwrap();
            let quantized = l.quantized_workspace_size(m);
            assert!(full > quantized + (n * k * 2), "{what} m {m}: workspace {full} holds no dense weights");
            for bf in [false, true] {
                let e = check_aligned(&l, &cpu, m, bf, full, stream, &mut rng);
                assert!(e < bound(bf), "{what} m {m} bf16 {bf} dense: rel err {e:e}");
                if !big {
                    let e = check_aligned(&l, &cpu, m, bf, quantized, stream, &mut rng);
                    assert!(e < bound(bf), "{what} m {m} bf16 {bf} quantized kernels: rel err {e:e}");
                }
            }
        }
        eprintln!("{what}: M {ms:?} match");
    }
}

/// 17-128 rows on the warpgroup kernel as blocks of 16 rows (grid z) match the CPU path: 2048×28672
/// (112 column blocks), where 17-32 rows leave K unsplit on the normal ring (224 blocks for the
/// H100's 396 slots) and so take the deep ring (two blocks per SM), 48 rows the normal ring
/// unsplit (336 blocks), 64 rows the register-fed kernel (448 blocks do not fit at once); and
/// 2048×4096 (16 column blocks), whose 65-128 rows run 5-8 row blocks with K split; symmetric
/// and asymmetric, fp16 and bf16.
#[test]
fn wide_batches_on_the_warpgroup_kernel_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(37);
    let dev = gptq::cuda::init(0).unwrap();
    let overrides = any_set(&["WG_MAX_ROWS", "WG_MIN_ROWS", "BLOCKS_PER_SM", "NO_DEEP_RING", "WG"]);
    for (i, sym) in [true, false].into_iter().enumerate() {
        let (k, n) = (2048, 28672);
        let cpu = random_layer(400 + i as u64, 4, Some(128), k, n, false, sym);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        let what = format!("4 bit sym {sym} {k}x{n}");
        if dev.wg && dev.sm_count == 132 && !overrides {
            for m in [17, 24, 32] {
                assert!(l.takes_warpgroup(m) && l.runs_deep_ring(m), "{what}: the deep ring at M = {m}");
            }
            assert!(l.takes_warpgroup(48) && !l.runs_deep_ring(48), "{what}: the normal ring at M = 48");
            assert!(!l.takes_warpgroup(64), "{what}: the register-fed kernel at M = 64");
        }
        let ms: &[usize] = if sym { &[17, 24, 31, 32, 48, 64] } else { &[17, 32, 48] };
        assert_matches(Target::Rust(&l), &cpu, ms, stream, &mut rng, &what);
        eprintln!("{what}: M {ms:?} match (M = 32: {})", l.describe_call(32));
        let (k, n) = (2048, 4096);
        let cpu = random_layer(410 + i as u64, 4, Some(128), k, n, false, sym);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        let what = format!("4 bit sym {sym} {k}x{n}");
        let ms = [65, 80, 97, 112, 127, 128];
        if dev.wg && dev.sm_count == 132 && !overrides {
            for m in ms {
                assert!(l.takes_warpgroup(m), "{what}: the warpgroup kernel at M = {m}");
            }
        }
        assert_matches(Target::Rust(&l), &cpu, &ms, stream, &mut rng, &what);
        eprintln!("{what}: M {ms:?} match (M = 128: {})", l.describe_call(128));
    }
}

/// 17-128 rows (256 on large layers) with aligned operands on sm_90a take the wide warpgroup kernel
/// (32 rows per block up to 32 rows, 64 up to 64 (two warpgroups splitting K) and up to 128 where K
/// is at most 4096, else 128 (two warpgroups of 64 rows); row blocks along grid z; K split through
/// the workspace where the blocks would not fill the SMs) and match the CPU path: 4, 8, 2 and 3 bit, symmetric and asymmetric,
/// groups 32/64/128/none, act-order (A gathered first), K ending inside a tile, N not a multiple of
/// 256 (a block's last warps idle), fp16 and bf16; and 8192×28672 at 64, 128 and 256 rows.
#[test]
fn wide_kernel_matches_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let dev = gptq::cuda::init(0).unwrap();
    let Some((lo, hi)) = dev.wide_rows else {
        eprintln!("NOTICE: no wide warpgroup kernel here (sm_90a only; or GPTQ_CUDA_WIDE=0): not tested");
        return;
    };
    let stream = gpu::stream();
    let mut rng = Rng(63);
    // (bits, group, act-order, sym, K, N)
    let cases: &[(u32, Option<usize>, bool, bool, usize, usize)] = &[
        (4, Some(128), false, true, 4096, 4096),
        (4, Some(32), true, false, 1024, 1000),
        (4, Some(128), true, false, 3080, 1032),
        (4, None, false, false, 768, 520),
        (4, Some(64), false, true, 2048, 328),
        (8, Some(128), true, true, 2048, 1032),
        (8, Some(64), false, false, 1024, 328),
        (8, None, false, true, 512, 256),
        (2, Some(128), false, true, 2048, 1024),
        (3, Some(32), true, false, 1024, 768),
        // K above 4096: 65-128 rows in blocks of 128 (two warpgroups of 64 rows).
        (4, Some(128), true, false, 5120, 1032),
        (8, Some(64), false, false, 4616, 328),
        (4, None, false, true, 6144, 776),
        (4, Some(128), false, true, 8192, 28672),
    ];
    for (i, &(bits, gs, act, sym, k, n)) in cases.iter().enumerate() {
        let cpu = random_layer(500 + i as u64, bits, gs, k, n, act, sym);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        let what = format!("bits {bits} gs {gs:?} act {act} sym {sym} K {k} N {n}");
        let big = n * k > 1 << 26;
        let ms: Vec<usize> = if big { vec![64, 128, 256] } else { vec![17, 24, 31, 32, 33, 50, 64, 65, 101, 128] };
        let ms: Vec<usize> = ms.into_iter().filter(|m| (lo..=hi).contains(m)).collect();
        for &m in &ms {
            let rows = match m {
                ..=32 => 32,
                ..=64 => 64,
                ..=128 if k <= 4096 => 64,
                _ => 128,
            };
            if std::env::var_os("GPTQ_CUDA_WIDE_FORM").is_none() {
                assert_eq!(l.wide_rows_per_block(m), Some(rows), "{what}: the wide kernel at M = {m}");
            }
            let ws = l.workspace_size(m).unwrap();
            for bf in [false, true] {
                let e = check_aligned(&l, &cpu, m, bf, ws, stream, &mut rng);
                assert!(e < bound(bf), "{what} m {m} bf16 {bf}: rel err {e:e} ({})", l.describe_call(m));
            }
        }
        eprintln!("{what}: M {ms:?} match (M = 64: {})", l.describe_call(64));
    }
}

/// The bulk-copy kernel's balanced splits (blocks over all column blocks' tiles in storage order,
/// each spanning up to two column blocks, their sums added by the reduction from per-column-block
/// slots) match the CPU path: 4096×28672 (112 column blocks of 256 K tiles, which uniform splits
/// of 85 tiles fill into 336 of the H100's 396 block slots), 4 and 8 bit, symmetric and asymmetric,
/// act-order (its gather launch first), M = 1 to 8, fp16 and bf16 (on memory-rich cards the
/// symmetric layer's 1-2 rows run uniform splits at four blocks per SM, balanced with
/// `GPTQ_CUDA_BULK_FOUR=0`); with `GPTQ_CUDA_BALANCED=0` the same cases run uniform splits.
#[test]
fn balanced_splits_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(31);
    let dev = gptq::cuda::init(0).unwrap();
    let overrides = any_set(&["BALANCED", "BLOCKS_PER_SM", "BULK_STAGES", "BULK", "WG_MIN_ROWS", "BULK_PAD"]);
    for (i, &(bits, sym, act)) in [(4u32, true, false), (4, false, false), (8, true, false), (4, true, true)].iter().enumerate() {
        let (k, n) = (4096, 28672);
        let cpu = random_layer(300 + i as u64, bits, Some(128), k, n, act, sym);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        let what = format!("{bits} bit sym {sym} act {act} {k}x{n}");
        if dev.bulk && dev.sm_count == 132 && !overrides {
            // Memory-rich cards: 1-2 rows of the symmetric 4-bit layer without act-order take four
            // blocks per SM in uniform splits instead (version 73; `GPTQ_CUDA_BULK_FOUR=0` keeps
            // them balanced).
            let four_on = std::env::var("GPTQ_CUDA_BULK_FOUR").map_or(true, |v| v != "0");
            let four = dev.memory_rich && bits == 4 && sym && !act && four_on;
            assert!(!four || l.bulk_four_fits(), "{what}: four blocks per SM no longer fit (registers?)");
            for m in [1, 2, 5, 8] {
                let want = !(four && m <= 2);
                assert_eq!(l.runs_balanced(m), want, "{what}: balanced splits at M = {m}");
                if m <= 2 {
                    assert_eq!(l.runs_four_per_sm(m), four, "{what}: four blocks per SM at M = {m}");
                }
            }
            assert!(!l.runs_balanced(9), "{what}: 9 rows take the warpgroup kernel");
        }
        let ms: &[usize] = if bits == 4 && sym && !act { &[1, 2, 3, 5, 8] } else { &[1, 8] };
        assert_matches(Target::Rust(&l), &cpu, ms, stream, &mut rng, &what);
        eprintln!("{what}: M {ms:?} match ({})", l.describe_call(1));
    }
}

/// Calls with more than 24 K splits add their partial sums with the lanes reduction (several
/// threads per output where the outputs are few, whole rounds of loads), and the bulk-copy kernel
/// keeps at least 8 K tiles per split where it would take more than 32 splits. On the H100/H200:
/// 16384×1024 94 splits of 11 tiles at 1-2 rows (8 lanes at M = 1, one at M = 2); 4096×1024 32 of
/// 8 (was 86 of 3; 2 lanes at M = 1), 4 bit asymmetric g64; 8192×1024 64 of 8 (was 86 of 6), 4 bit
/// act-order; 8 bit on 8192×2048 (the register-fed kernel's 47 splits: 4 lanes at M = 1); fp16 and
/// bf16, M = 1 to 16, against the CPU path. `GPTQ_CUDA_REDUCE_LANES=1`, `2` or `4` runs the same
/// cases through the other lane counts. The wide kernel takes at most 16 K splits where its splits'
/// partial sums would weigh at least the weights' codes and 16 leave 64 blocks: 4096×1024 at 24 and
/// 48 rows (16 of 16 tiles, not 32 of 8); and on this small layer
/// it takes 9-16 rows too (`GPTQ_CUDA_WIDE_ROWS=17-256` runs them on the 16-row warpgroup kernel, as
/// the whole suite's small layers do then).
#[test]
fn many_k_splits_reduce_in_lanes_and_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(37);
    let dev = gptq::cuda::init(0).unwrap();
    let overrides = any_set(&[
        "REDUCE_LANES",
        "BLOCKS_PER_SM",
        "BULK",
        "WG_MIN_ROWS",
        "BULK_MIN_TILES",
        "WG_SPLITS",
        "WIDE",
        "WIDE_ROWS",
        "WIDE_FORM",
        "WIDE_SPLITS",
        "WIDE_MAX_SPLITS",
    ]);
    // (bits, symmetric, act-order, K, N, group size, M and what its call should say)
    let cases: [(u32, bool, bool, usize, usize, usize, &[(usize, &str)]); 4] = [
        (4, true, false, 16384, 1024, 128, &[(1, "94 splits of 11 tiles"), (1, "lanes (8 per"), (2, "lanes (1 per")]),
        (
            4,
            false,
            false,
            4096,
            1024,
            64,
            &[(1, "32 splits of 8 tiles"), (1, "lanes (2 per"), (12, "wide warpgroup kernel Rows32"), (48, "16 splits of 16 tiles")],
        ),
        (4, true, true, 8192, 1024, 128, &[(1, "64 splits of 8 tiles"), (1, "lanes (4 per")]),
        (8, true, false, 8192, 2048, 128, &[(1, "lanes (4 per")]),
    ];
    for (i, &(bits, sym, act, k, n, gs, says)) in cases.iter().enumerate() {
        let cpu = random_layer(400 + i as u64, bits, Some(gs), k, n, act, sym);
        let l = CudaLayer::new(&cpu, 0).unwrap();
        let what = format!("{bits} bit sym {sym} act {act} g{gs} {k}x{n}");
        if dev.bulk && dev.sm_count == 132 && !overrides {
            // (Above 8 rows the wide kernel: sm_90a and a CUDA 12 driver.)
            for &(m, text) in says.iter().filter(|s| s.0 <= 8 || dev.wg) {
                let call = l.describe_call(m);
                assert!(call.contains(text), "{what} M = {m}: {call}");
            }
        }
        let ms: &[usize] = match i {
            0 => &[1, 2, 3, 4, 5, 8, 9, 12, 16],
            1 => &[1, 2, 4, 8, 9, 12, 16, 24, 48],
            _ => &[1, 2, 4, 8, 16],
        };
        assert_matches(Target::Rust(&l), &cpu, ms, stream, &mut rng, &what);
        eprintln!("{what}: M {ms:?} match (M = 1: {})", l.describe_call(1));
    }
}

/// Small batches whose blocks stage A in several chunks (the register-fed kernel, GPTQ_CUDA_BULK=0;
/// the bulk-copy kernel copies A with every stage), with K ending inside a tile (the inputs past K
/// read zeros) and asymmetric zeros.
#[test]
fn small_batches_staged_in_several_chunks_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(17);
    let (k, n) = (8200usize, 12800usize);
    let cpu = random_layer(77, 4, Some(128), k, n, false, false);
    let l = CudaLayer::new(&cpu, 0).unwrap();
    // 7 splits of 1184 inputs; 14 and 16 rows stage at most 1152 and 1024 inputs per chunk.
    assert_matches(Target::Rust(&l), &cpu, &[14, 16], stream, &mut rng, &format!("K {k} N {n} asym"));
    eprintln!("{k}x{n} asym: M 14, 16 pass");
}

#[test]
fn the_cuda_core_kernel_matches_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(11);
    // Forced CUDA-core layouts, and a layer whose groups are not whole 16-input tiles (runs of 24 and
    // 40 inputs), which takes that kernel by itself.
    let forced = [(4u32, Some(128), true, true, 4096usize, 4096usize), (4, Some(32), false, false, 512, 1000), (8, Some(128), true, true, 1024, 1032)];
    for (i, &(bits, gs, act, sym, k, n)) in forced.iter().enumerate() {
        let cpu = random_layer(70 + i as u64, bits, gs, k, n, act, sym);
        let l = CudaLayer::with_family(&cpu, 0, KernelFamily::CudaCores).unwrap();
        assert!(!l.uses_tensor_cores());
        let what = format!("CUDA cores: bits {bits} gs {gs:?} act {act} sym {sym} K {k} N {n}");
        assert_matches(Target::Rust(&l), &cpu, &all_ms(256), stream, &mut rng, &what);
    }
    let cpu = uneven_group_layer();
    let l = CudaLayer::new(&cpu, 0).unwrap();
    assert!(!l.uses_tensor_cores(), "groups of 24 and 40 inputs cannot be 16-input tiles");
    assert_matches(Target::Rust(&l), &cpu, &[1, 5, 16, 64], stream, &mut rng, "uneven groups");
}

/// K = 128 in 4 groups of uneven runs (24, 40, 32, 32 inputs): valid GPTQ, but not tile-aligned.
fn uneven_group_layer() -> QuantizedLayer {
    let (k, n, bits) = (128usize, 256usize, 4u32);
    let mut rng = Rng(17);
    let codes: Vec<u8> = (0..n * k).map(|_| (rng.next() % 16) as u8).collect();
    let bounds = [0usize, 24, 64, 96, 128];
    let g_idx: Vec<i32> = (0..k).map(|c| bounds.windows(2).position(|w| c >= w[0] && c < w[1]).unwrap() as i32).collect();
    let zeros: Vec<u32> = vec![8; 4 * n];
    let scales: Vec<f16> = (0..4 * n).map(|_| f16::from_f32(0.002 + 0.01 * rng.uniform().abs())).collect();
    let qweight: Vec<i32> = pack_qweight(&codes, bits, n, k).into_iter().map(|v| v as i32).collect();
    let qzeros: Vec<i32> = pack_rows(&zeros, bits, n).into_iter().map(|v| v as i32).collect();
    let desc = LayerDesc { bits, group_size: Some(32), in_features: k, out_features: n, sym: true };
    let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: Some(&g_idx), bias: None };
    QuantizedLayer::from_packed(desc, CheckpointFormat::V2, t).unwrap()
}

#[test]
fn oracle_vector_layers_match_on_the_gpu() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(21);
    for name in ["c1", "c2", "c3", "c5", "c6"] {
        let case = Case::load(name);
        let cfg = case.config();
        let shape = case.shape("qweight");
        let n = shape[1];
        let k = shape[0] * 32 / cfg.bits as usize;
        let desc = LayerDesc { bits: cfg.bits, group_size: cfg.group_size, in_features: k, out_features: n, sym: cfg.sym };
        let (qweight, qzeros, scales, g_idx) = (case.i32("qweight"), case.i32("qzeros"), case.f16("scales"), case.i32("packed_g_idx"));
        let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: Some(&g_idx), bias: None };
        let Ok(cpu) = QuantizedLayer::from_packed(desc, CheckpointFormat::V1, t) else {
            continue; // c6 carries deliberately corrupted qzeros words (tests/vectors.rs covers it)
        };
        // (2- and 3-bit layers run widened to 4 bit.)
        let l = CudaLayer::new(&cpu, 0).unwrap();
        assert!(l.uses_tensor_cores(), "{name}");
        assert_matches(Target::Rust(&l), &cpu, &[1, 7, 64, 300], stream, &mut rng, name);
        eprintln!("{name}: bits {} group {:?} act-order {}: GPU matches the CPU path", cfg.bits, cfg.group_size, g_idx.windows(2).any(|w| w[0] > w[1]));
    }
}

/// A `gptq_layer` handle made through the C ABI (export + import) so the test uses only public calls.
struct Handle(*const gptq_layer, QuantizedLayer, *mut gptq_layer);
impl Handle {
    fn free(self) {
        unsafe { gptq_layer_free(self.2) };
    }
}
fn gptq_test_layer(cpu: QuantizedLayer) -> Handle {
    let d = *cpu.desc();
    let t = cpu.to_packed(CheckpointFormat::V2).unwrap();
    let desc = gptq_layer_desc {
        struct_size: std::mem::size_of::<gptq_layer_desc>(),
        bits: d.bits,
        group_size: d.group_size.map_or(-1, |g| g as i32),
        in_features: d.in_features,
        out_features: d.out_features,
        sym: d.sym as i32,
        format: GPTQ_FORMAT_V2,
    };
    let scales: Vec<u16> = t.scales.iter().map(|v| v.to_bits()).collect();
    let bias: Vec<u16> = t.bias.as_ref().unwrap().iter().map(|v| v.to_bits()).collect();
    let mut out = std::ptr::null_mut();
    let s = unsafe {
        gptq_layer_import(
            &desc, t.qweight.as_ptr(), t.qweight.len(), t.qzeros.as_ptr(), t.qzeros.len(), scales.as_ptr(), scales.len(),
            t.g_idx.as_ptr(), t.g_idx.len(), bias.as_ptr(), bias.len(), &mut out,
        )
    };
    assert_eq!(s, GPTQ_STATUS_OK);
    Handle(out, cpu, out)
}

#[test]
fn graph_replay_two_streams_and_dequantize_agree_with_direct_launches() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let cpu = random_layer(7, 4, Some(128), 4096, 4096, true, true);
    let h = gptq_test_layer(cpu);
    let mut cl = std::ptr::null_mut();
    assert_eq!(unsafe { gptq_cuda_layer_new(h.0, 0, &mut cl) }, GPTQ_STATUS_OK);
    // Act-order activations are gathered into the workspace by a kernel, K is split and the partial
    // sums reduced: three launches in the graph (m = 3: on sm_90 the bulk-copy kernel gathering A
    // itself, two launches; m = 5: the same with its 8-row gather; m = 12: on sm_90 the
    // warpgroup kernel after a gather launch, elsewhere the register-fed small-batch kernel; m = 48:
    // on sm_90a the wide warpgroup kernel's 64-row block (two warpgroups splitting K) after the
    // row-by-row gather through shared memory, elsewhere 64-row blocks of the register-fed kernel).
    for m in [3usize, 5, 12, 48] {
        graph_and_streams(cl, m, 4096, 4096);
    }
    // The wide warpgroup kernel (sm_90a) at 96 rows, after the gather (K = 4096: two 64-row blocks).
    let dev = gptq::cuda::init(0).unwrap();
    if dev.wide_rows.is_some_and(|(lo, hi)| (lo..=hi).contains(&96)) {
        assert!(CudaLayer::new(&h.1, 0).unwrap().wide_rows_per_block(96).is_some());
        graph_and_streams(cl, 96, 4096, 4096);
    }
    // The dense path (gather, dequantization, cuBLASLt) under capture and on two streams.
    let dense_m = dev.dense_min_rows.max(dev.wide_rows.map_or(0, |w| w.1 + 1)).max(256);
    if dev.has_cublaslt() {
        assert!(CudaLayer::new(&h.1, 0).unwrap().runs_dense(dense_m));
        graph_and_streams(cl, dense_m, 4096, 4096);
    }
    {
        // Without act-order, 6 rows: on sm_90 the bulk-copy kernel copies A's rows into its ring
        // itself (no gather), under capture.
        let h = gptq_test_layer(random_layer(9, 4, Some(128), 2048, 4096, false, true));
        if gptq::cuda::init(0).unwrap().bulk {
            let call = CudaLayer::new(&h.1, 0).unwrap().describe_call(6);
            assert!(call.starts_with("Bulk kernel"), "m = 6 on 2048x4096 takes {call}");
        }
        let mut cl = std::ptr::null_mut();
        assert_eq!(unsafe { gptq_cuda_layer_new(h.0, 0, &mut cl) }, GPTQ_STATUS_OK);
        graph_and_streams(cl, 6, 2048, 4096);
        unsafe { gptq_cuda_layer_free(cl) };
        h.free();
    }
    {
        // A wide layer whose 4 splits of K at m = 12 (after the gather launch) add up in
        // thread-block clusters on sm_90a: graph capture and two streams of the cluster launch.
        let (k, n) = (1024usize, 14336usize);
        let h = gptq_test_layer(random_layer(8, 4, Some(128), k, n, true, true));
        let wg = gptq::cuda::init(0).unwrap().wg && std::env::var_os("GPTQ_CUDA_NO_CLUSTERS").is_none();
        assert_eq!(CudaLayer::new(&h.1, 0).unwrap().reduces_in_clusters(12), wg, "clusters at m = 12 on {k}x{n}");
        let mut cl = std::ptr::null_mut();
        assert_eq!(unsafe { gptq_cuda_layer_new(h.0, 0, &mut cl) }, GPTQ_STATUS_OK);
        graph_and_streams(cl, 12, k, n);
        unsafe { gptq_cuda_layer_free(cl) };
        h.free();
    }
    let (k, n) = (4096usize, 4096usize);
    let s1 = gpu::stream();
    // Dequantization matches the CPU's (fp16 of the same f32 value).
    let out = gpu::Buf::new(n * k * 2);
    out.fill16(POISON);
    assert_eq!(unsafe { gptq_cuda_dequantize(cl, out.0 as *mut c_void, s1.cast()) }, GPTQ_STATUS_OK);
    gpu::sync(s1);
    let got: Vec<u16> = out.read(n * k);
    let mut want = vec![0f32; n * k];
    h.1.dequantize_into(&mut want);
    let bad = got.iter().zip(&want).filter(|(g, w)| (f16::from_bits(**g).to_f32() - **w).abs() > 1e-3 * w.abs().max(1e-3)).count();
    assert_eq!(bad, 0, "{bad} dequantized values differ");
    unsafe { gptq_cuda_layer_free(cl) };
    h.free();
}

/// Direct launch vs graph capture/replay vs two streams at once, for `m` rows of a `k`×`n` layer.
fn graph_and_streams(cl: *mut gptq_cuda_layer, m: usize, k: usize, n: usize) {
    let mut rng = Rng(5 + m as u64);
    let a: Vec<u16> = (0..m * k).map(|_| f16::from_f32(rng.uniform()).to_bits()).collect();
    let a_dev = gpu::Buf::from(&a);
    let mut ws = 0;
    unsafe { gptq_cuda_workspace_size(cl, m, &mut ws) };
    let run = |c: &gpu::Buf, w: &gpu::Buf, s: cu::CUstream| unsafe {
        gptq_cuda_gemm(cl, a_dev.0 as *const c_void, GPTQ_DTYPE_F16, m, k, c.0 as *mut c_void, n, w.0 as *mut c_void, ws, s.cast())
    };
    let s1 = gpu::stream();
    let (c1, w1) = (gpu::Buf::new(m * n * 2), gpu::Buf::new(ws));
    c1.fill16(POISON);
    assert_eq!(run(&c1, &w1, s1), GPTQ_STATUS_OK);
    gpu::sync(s1);
    let direct: Vec<u16> = c1.read(m * n);

    // Graph capture and replay.
    let (c2, w2) = (gpu::Buf::new(m * n * 2), gpu::Buf::new(ws));
    c2.fill16(POISON);
    unsafe {
        gpu::ok(cu::cuStreamBeginCapture_v2(s1, cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
        assert_eq!(run(&c2, &w2, s1), GPTQ_STATUS_OK);
        let mut graph = std::ptr::null_mut();
        gpu::ok(cu::cuStreamEndCapture(s1, &mut graph));
        let mut exec = std::ptr::null_mut();
        gpu::ok(cu::cuGraphInstantiateWithFlags(&mut exec, graph, 0));
        gpu::ok(cu::cuGraphLaunch(exec, s1));
        gpu::ok(cu::cuGraphLaunch(exec, s1));
        gpu::sync(s1);
        cu::cuGraphExecDestroy(exec);
        cu::cuGraphDestroy(graph);
    }
    assert_eq!(c2.read::<u16>(m * n), direct, "graph replay differs from a direct launch");

    // Two streams on one plan at once, each with its own workspace and output.
    let s2 = gpu::stream();
    let (c3, w3, c4, w4) = (gpu::Buf::new(m * n * 2), gpu::Buf::new(ws), gpu::Buf::new(m * n * 2), gpu::Buf::new(ws));
    c3.fill16(POISON);
    c4.fill16(POISON);
    for _ in 0..10 {
        assert_eq!(run(&c3, &w3, s1), GPTQ_STATUS_OK);
        assert_eq!(run(&c4, &w4, s2), GPTQ_STATUS_OK);
    }
    gpu::sync(s1);
    gpu::sync(s2);
    assert_eq!(c3.read::<u16>(m * n), direct);
    assert_eq!(c4.read::<u16>(m * n), direct);

    // A workspace that is too small is refused before anything is enqueued.
    assert!(ws > 0, "m = {m} on {k}x{n} needs a workspace");
    let s = unsafe { gptq_cuda_gemm(cl, a_dev.0 as *const c_void, GPTQ_DTYPE_F16, m, k, c3.0 as *mut c_void, n, w3.0 as *mut c_void, 0, s1.cast()) };
    assert_eq!(s, GPTQ_STATUS_BUFFER_TOO_SMALL);
    // A workspace sized for a larger batch serves this one.
    let mut ws_big = 0;
    assert_eq!(unsafe { gptq_cuda_workspace_size(cl, 4096, &mut ws_big) }, GPTQ_STATUS_OK);
    assert!(ws_big >= ws, "workspace for 4096 rows ({ws_big}) smaller than for {m} ({ws})");
}

/// Zero points at both ends of their range: 0 and 2^bits - 1 (v2), and 2^bits (only a v1 import of
/// a stored 2^bits - 1 gives it), where the kernels' magic-number arithmetic has the least room.
#[test]
fn extreme_zero_points_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let stream = gpu::stream();
    let mut rng = Rng(31);
    for bits in [4u32, 8] {
        let (k, n, gs) = (256usize, 192usize, 64usize);
        let maxq = (1u32 << bits) - 1;
        let g = k / gs;
        let codes: Vec<u8> = (0..n * k).map(|_| (rng.next() % (maxq as u64 + 1)) as u8).collect();
        let scales: Vec<f16> = (0..g * n).map(|_| f16::from_f32(0.002 + 0.01 * rng.uniform().abs())).collect();
        let qweight: Vec<i32> = pack_qweight(&codes, bits, n, k).into_iter().map(|v| v as i32).collect();
        for (format, stored) in [(CheckpointFormat::V2, [0, maxq]), (CheckpointFormat::V1, [maxq, maxq - 1])] {
            let zeros: Vec<u32> = (0..g * n).map(|i| stored[i % 2]).collect();
            let qzeros: Vec<i32> = pack_rows(&zeros, bits, n).into_iter().map(|v| v as i32).collect();
            let desc = LayerDesc { bits, group_size: Some(gs), in_features: k, out_features: n, sym: false };
            let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: None, bias: None };
            let cpu = QuantizedLayer::from_packed(desc, format, t).unwrap();
            let l = CudaLayer::new(&cpu, 0).unwrap();
            assert!(l.uses_tensor_cores());
            assert_matches(Target::Rust(&l), &cpu, &[1, 3, 16, 40, 64], stream, &mut rng, &format!("bits {bits} {format:?} zeros {stored:?}"));
        }
    }
}

/// A call from a thread with no current CUDA context (a server's worker thread) works: the library
/// makes the layer's context current for its own driver calls.
#[test]
fn gemm_from_a_thread_without_a_current_context() {
    if !gpu_available() {
        return;
    }
    gpu::ctx();
    let cpu = random_layer(91, 4, Some(128), 1024, 512, true, true);
    let h = gptq_test_layer(cpu);
    let mut cl = std::ptr::null_mut();
    assert_eq!(unsafe { gptq_cuda_layer_new(h.0, 0, &mut cl) }, GPTQ_STATUS_OK);
    let (k, n, m) = (1024usize, 512usize, 3usize);
    let mut rng = Rng(92);
    let a: Vec<u16> = (0..m * k).map(|_| f16::from_f32(rng.uniform()).to_bits()).collect();
    let a_dev = gpu::Buf::from(&a);
    let c_dev = gpu::Buf::new(m * n * 2);
    c_dev.fill16(POISON);
    let mut ws = 0;
    assert_eq!(unsafe { gptq_cuda_workspace_size(cl, m, &mut ws) }, GPTQ_STATUS_OK);
    let ws_dev = gpu::Buf::new(ws);
    let (cl_addr, a_addr, c_addr, w_addr) = (cl as usize, a_dev.0, c_dev.0, ws_dev.0);
    let (had_ctx, status, msg, left_ctx) = std::thread::spawn(move || {
        let mut cur = std::ptr::null_mut();
        unsafe { gpu::ok(cu::cuCtxGetCurrent(&mut cur)) };
        let s = unsafe {
            gptq_cuda_gemm(cl_addr as *mut gptq_cuda_layer, a_addr as *const c_void, GPTQ_DTYPE_F16, m, k, c_addr as *mut c_void, n, w_addr as *mut c_void, ws, std::ptr::null_mut())
        };
        let msg = unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_string_lossy().into_owned();
        let mut after = std::ptr::null_mut();
        unsafe { gpu::ok(cu::cuCtxGetCurrent(&mut after)) };
        (!cur.is_null(), s, msg, !after.is_null())
    })
    .join()
    .unwrap();
    assert!(!had_ctx, "a fresh thread has no current context");
    assert_eq!(status, GPTQ_STATUS_OK, "{msg}");
    assert!(!left_ctx, "the library must not leave a context current on the caller's thread");
    unsafe { gpu::ok(cu::cuCtxSynchronize()) };
    let got: Vec<u16> = c_dev.read(m * n);
    assert!(relative_error(&h.1, &a, m, k, &got, n, false) < bound(false));
    unsafe { gptq_cuda_layer_free(cl) };
    h.free();
}
