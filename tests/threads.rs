//! The library thread pool through the C ABI: its size, concurrent use of handles from several
//! threads, and the `GPTQ_NUM_THREADS` environment variable.

mod common;

use common::{correlated_activations, Rng};
use gptq::ffi::*;
use std::ffi::CStr;
use std::mem::size_of;
use std::ptr::null_mut;
use std::sync::{Barrier, Mutex, MutexGuard};

/// The pool is process-wide: tests that resize it or compare results bitwise (which may depend on
/// the pool size) take this lock so they do not run at the same time.
static POOL: Mutex<()> = Mutex::new(());

fn pool_lock() -> MutexGuard<'static, ()> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

const THREADS: usize = 4;
const K: usize = 128;
const N: usize = 32;
const ROWS: usize = 256;
const F32: gptq_dtype = GPTQ_DTYPE_F32;

#[track_caller]
fn ok(status: gptq_status) {
    if status != GPTQ_STATUS_OK {
        let msg = unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_string_lossy();
        panic!("status {status}: {msg}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn new_hessian(k: usize) -> *mut gptq_hessian {
    let mut h = null_mut();
    ok(unsafe { gptq_hessian_new(k, GPTQ_COUNT_ROWS, &mut h) });
    h
}

fn add(h: *mut gptq_hessian, x: &[f32], rows: usize) {
    ok(unsafe { gptq_hessian_add_batch(h, x.as_ptr().cast(), F32, rows, K, K) });
}

fn read(h: *const gptq_hessian) -> Vec<f32> {
    let mut m = vec![f32::NAN; K * K];
    ok(unsafe { gptq_hessian_read(h, m.as_mut_ptr(), m.len()) });
    m
}

fn n_samples(h: *const gptq_hessian) -> u64 {
    let mut n = 0;
    ok(unsafe { gptq_hessian_info(h, null_mut(), &mut n) });
    n
}

fn config() -> gptq_quant_config {
    let mut c = std::mem::MaybeUninit::<gptq_quant_config>::uninit();
    ok(unsafe { gptq_quant_config_init(c.as_mut_ptr(), size_of::<gptq_quant_config>()) });
    let mut c = unsafe { c.assume_init() };
    c.bits = 4;
    c.group_size = 32;
    c
}

/// What one GPTQ run produced: packed tensors (v2), the damping used, and the report's losses.
#[derive(Debug, PartialEq)]
struct Quantized {
    qweight: Vec<i32>,
    qzeros: Vec<i32>,
    scales: Vec<u16>,
    g_idx: Vec<i32>,
    damp: u32,
    /// loss_estimate, loss_gptq, loss_rtn.
    losses: [f64; 3],
}

impl Quantized {
    /// The fields in which `self` differs from `other`: the layer and the damping bit for bit; the
    /// report's losses to 1e-9 relative, since the library sums them with rayon reductions whose
    /// order depends on work stealing.
    fn differences(&self, other: &Quantized) -> Vec<&'static str> {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
        [
            ("qweight", self.qweight == other.qweight),
            ("qzeros", self.qzeros == other.qzeros),
            ("scales", self.scales == other.scales),
            ("g_idx", self.g_idx == other.g_idx),
            ("damp_percent_used", self.damp == other.damp),
            ("loss_estimate", close(self.losses[0], other.losses[0])),
            ("loss_gptq", close(self.losses[1], other.losses[1])),
            ("loss_rtn", close(self.losses[2], other.losses[2])),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
    }
}

/// Calibration data and weight of the `i`-th layer.
fn layer_inputs(i: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(1000 + i);
    let x = correlated_activations(&mut rng, ROWS, K);
    let w = rng.normals(N * K, 0.05);
    (x, w)
}

/// Builds a Hessian from `x`, quantizes `w` against it through the C ABI, and exports the result.
/// Returns the result and the layer handle.
fn quantize_layer(x: &[f32], w: &[f32]) -> (Quantized, *mut gptq_layer) {
    let h = new_hessian(K);
    add(h, &x[..ROWS / 2 * K], ROWS / 2);
    add(h, &x[ROWS / 2 * K..], ROWS / 2);
    let cfg = config();
    let mut layer = null_mut();
    let mut rep = gptq_quant_report { struct_size: size_of::<gptq_quant_report>(), ..Default::default() };
    ok(unsafe { gptq_quantize(h, w.as_ptr().cast(), F32, N, K, K, &cfg, &mut layer, &mut rep) });
    unsafe { gptq_hessian_free(h) };
    let mut p = gptq_layer_properties { struct_size: size_of::<gptq_layer_properties>(), ..Default::default() };
    ok(unsafe { gptq_layer_info(layer, &mut p) });
    let mut q = Quantized {
        qweight: vec![0; p.qweight_rows * N],
        qzeros: vec![0; p.num_groups * p.qzeros_cols],
        scales: vec![0; p.num_groups * N],
        g_idx: vec![0; K],
        damp: rep.damp_percent_used.to_bits(),
        losses: [rep.loss_estimate, rep.loss_gptq, rep.loss_rtn],
    };
    ok(unsafe {
        gptq_layer_export(
            layer,
            GPTQ_FORMAT_V2,
            q.qweight.as_mut_ptr(),
            q.qweight.len(),
            q.qzeros.as_mut_ptr(),
            q.qzeros.len(),
            q.scales.as_mut_ptr(),
            q.scales.len(),
            q.g_idx.as_mut_ptr(),
            q.g_idx.len(),
            null_mut(),
            0,
        )
    });
    (q, layer)
}

/// `C = A · dequant(W)ᵀ` for `m` rows of `a`, as bits.
fn gemm(layer: *const gptq_layer, a: &[f32], m: usize) -> Vec<u32> {
    let mut c = vec![f32::NAN; m * N];
    ok(unsafe { gptq_gemm(layer, a.as_ptr().cast(), F32, m, K, c.as_mut_ptr().cast(), F32, N) });
    bits(&c)
}

/// GEMM inputs: a few shapes, small `m` (direct kernel) and larger `m` (panel kernel).
fn gemm_inputs(i: u64) -> Vec<(Vec<f32>, usize)> {
    let mut rng = Rng::new(2000 + i);
    [1usize, 7, 64, 200].iter().map(|&m| (rng.normals(m * K, 1.0), m)).collect()
}

#[test]
fn set_and_get_num_threads() {
    let _g = pool_lock();
    ok(gptq_set_num_threads(1));
    assert_eq!(gptq_get_num_threads(), 1);
    ok(gptq_set_num_threads(2));
    assert_eq!(gptq_get_num_threads(), 2);
    // More than 4096 is refused and leaves the pool as it was.
    assert_eq!(gptq_set_num_threads(4097), GPTQ_STATUS_INVALID_ARGUMENT);
    let msg = unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_string_lossy().into_owned();
    assert!(msg.contains("4097"), "{msg}");
    assert_eq!(gptq_get_num_threads(), 2);
    // 0 restores the default: one thread per available core.
    ok(gptq_set_num_threads(0));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert_eq!(gptq_get_num_threads(), cores);
    // The pool size is visible from every thread.
    ok(gptq_set_num_threads(3));
    assert_eq!(std::thread::spawn(|| gptq_get_num_threads()).join().unwrap(), 3);
    ok(gptq_set_num_threads(0));
    assert_eq!(gptq_get_num_threads(), cores);
}

#[test]
fn concurrent_quantize_and_shared_layer_gemm_match_the_single_threaded_results() {
    let _g = pool_lock();
    ok(gptq_set_num_threads(2));

    // Single-threaded references: each thread's own layer, and GEMMs on the shared layer.
    let (sx, sw) = layer_inputs(99);
    let (_, shared) = quantize_layer(&sx, &sw);
    let inputs: Vec<(Vec<f32>, Vec<f32>)> = (0..THREADS as u64).map(layer_inputs).collect();
    let expected_q: Vec<Quantized> = inputs
        .iter()
        .map(|(x, w)| {
            let (q, l) = quantize_layer(x, w);
            unsafe { gptq_layer_free(l) };
            q
        })
        .collect();
    let gemm_in: Vec<Vec<(Vec<f32>, usize)>> = (0..THREADS as u64).map(gemm_inputs).collect();
    let expected_c: Vec<Vec<Vec<u32>>> =
        gemm_in.iter().map(|v| v.iter().map(|(a, m)| gemm(shared, a, *m)).collect()).collect();
    // The layers differ from each other, so equality below is not trivially true.
    assert!(expected_q.iter().all(|q| q.losses.iter().all(|l| l.is_finite() && *l > 0.0)));
    let d01 = expected_q[0].differences(&expected_q[1]);
    assert!(d01.contains(&"qweight") && d01.contains(&"scales"), "{d01:?}");
    assert_ne!(expected_c[0][1], expected_c[1][1]);

    // The same work from THREADS threads at once, all sharing the `shared` layer handle.
    let shared_addr = shared as usize;
    let barrier = Barrier::new(THREADS);
    type PerThread = (Vec<Quantized>, Vec<Vec<Vec<u32>>>);
    let results: Vec<PerThread> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (inputs, gemm_in, barrier) = (&inputs, &gemm_in, &barrier);
                s.spawn(move || {
                    let shared = shared_addr as *const gptq_layer;
                    barrier.wait();
                    let mut qs = Vec::new();
                    let mut cs = Vec::new();
                    for round in 0..3 {
                        // Each thread quantizes its own layer, interleaved with GEMMs on the shared one.
                        let (x, w) = &inputs[(t + round) % THREADS];
                        let (q, l) = quantize_layer(x, w);
                        unsafe { gptq_layer_free(l) };
                        qs.push(q);
                        let g = (t + round) % THREADS;
                        cs.push(gemm_in[g].iter().map(|(a, m)| gemm(shared, a, *m)).collect());
                    }
                    (qs, cs)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, (qs, cs)) in results.iter().enumerate() {
        for round in 0..3 {
            let g = (t + round) % THREADS;
            let what = qs[round].differences(&expected_q[g]);
            assert!(what.is_empty(), "thread {t}, round {round}: layer {g} differs from the reference in {what:?}");
            assert!(cs[round] == expected_c[g], "thread {t}, round {round}: GEMMs {g} on the shared layer differ");
        }
    }
    unsafe { gptq_layer_free(shared) };
    ok(gptq_set_num_threads(0));
}

#[test]
fn concurrent_add_batch_on_one_hessian_matches_sequential_accumulation() {
    let _g = pool_lock();
    ok(gptq_set_num_threads(2));
    // THREADS threads × 3 batches of different row counts.
    let mut rng = Rng::new(3000);
    let batches: Vec<Vec<(Vec<f32>, usize)>> = (0..THREADS)
        .map(|t| {
            (0..3)
                .map(|b| {
                    let rows = 16 + 8 * ((t * 3 + b) % 5);
                    (correlated_activations(&mut rng, rows, K), rows)
                })
                .collect()
        })
        .collect();
    let total_rows: usize = batches.iter().flatten().map(|(_, r)| r).sum();

    let sequential = new_hessian(K);
    for (x, rows) in batches.iter().flatten() {
        add(sequential, x, *rows);
    }

    let shared = new_hessian(K);
    let addr = shared as usize;
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for list in &batches {
            let barrier = &barrier;
            s.spawn(move || {
                let h = addr as *mut gptq_hessian;
                barrier.wait();
                for (x, rows) in list {
                    add(h, x, *rows);
                    // Reading concurrently with other threads' adds sees a consistent handle.
                    let n = n_samples(h);
                    assert!(n >= *rows as u64 && n <= total_rows as u64, "n_samples {n} mid-way");
                }
            });
        }
    });

    assert_eq!(n_samples(shared), total_rows as u64);
    assert_eq!(n_samples(shared), n_samples(sequential));
    let (a, b) = (read(shared), read(sequential));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-5 * scale, "concurrent and sequential Hessians differ by {worst} (scale {scale})");
    // Each entry also agrees relative to its own size, except where it is tiny against the matrix.
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-2 * scale), "H[{}, {}]: {x} vs {y}", i / K, i % K);
    }
    unsafe {
        gptq_hessian_free(shared);
        gptq_hessian_free(sequential);
    }
    ok(gptq_set_num_threads(0));
}

/// The test binary re-runs itself with `GPTQ_NUM_THREADS` set, selecting this test; the pool reads
/// the variable once, on first use, so it must run in a fresh process. Ignored in ordinary runs.
#[test]
#[ignore = "run by gptq_num_threads_sets_the_initial_pool_size in a child process"]
fn child_pool_size_from_env() {
    assert_eq!(gptq_get_num_threads(), 3, "GPTQ_NUM_THREADS is {:?}", std::env::var("GPTQ_NUM_THREADS"));
}

fn run_child(env: Option<&str>) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--ignored", "--exact", "child_pool_size_from_env", "--test-threads=1"]);
    match env {
        Some(v) => cmd.env("GPTQ_NUM_THREADS", v),
        None => cmd.env_remove("GPTQ_NUM_THREADS"),
    };
    cmd.output().expect("cannot run the test binary")
}

#[test]
fn gptq_num_threads_sets_the_initial_pool_size() {
    let out = run_child(Some("3"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The filter selected exactly the one test and it ran.
    assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");

    // Without the variable the pool has one thread per core, so the child's check can fail.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cores != 3 {
        let out = run_child(None);
        assert!(!out.status.success(), "the child passed without GPTQ_NUM_THREADS on {cores} cores");
        let out = run_child(Some(" 5 "));
        assert!(!out.status.success(), "the child passed with GPTQ_NUM_THREADS=5");
    }
}
