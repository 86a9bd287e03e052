//! CPU benchmarks, each a ratio to a baseline measured in the same process:
//! - GPTQ on a 4096×4096 layer (4 bit, g128, act-order): seconds, and the solver's GFLOP/s as a
//!   fraction of faer's f32 matmul GFLOP/s;
//! - the 4-bit dequant-GEMM at M = 1 and M = 32 on K = 4096, N = 11008 against faer's f32 GEMV/GEMM
//!   on the same shape;
//! - opening a sharded checkpoint of 448 layers (headers only).
//!
//! Run: `cargo bench --bench cpu` (set GPTQ_NUM_THREADS to pin the pool; default = all cores).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};
use gptq::cpu::{gemm, threads, OutMatMut};
use gptq::format::pack::{pack_qweight, pack_rows};
use gptq::format::{CheckpointFormat, LayerDesc, PackedRef};
use gptq::quant::{quantize_gptq, Hessian, QuantConfig, SampleCount};
use gptq::{Elements, MatView, QuantizedLayer};
use half::f16;
use std::time::Instant;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * s).collect()
    }
}

/// Median seconds of `reps` runs after one warm-up.
fn time(reps: usize, f: impl FnMut()) -> f64 {
    times(reps, f).0
}

/// (median, min) seconds of `reps` runs after one warm-up.
fn times(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[reps / 2], t[0])
}

fn faer_matmul_gflops(n: usize) -> f64 {
    let mut rng = Lcg(1);
    let a = Mat::<f32>::from_fn(n, n, |_, _| rng.next());
    let b = Mat::<f32>::from_fn(n, n, |_, _| rng.next());
    let mut c = Mat::<f32>::zeros(n, n);
    let s = threads::install(|| time(3, || matmul(c.as_mut(), Accum::Replace, a.as_ref(), b.as_ref(), 1.0, threads::faer_par())));
    2.0 * (n as f64).powi(3) / s / 1e9
}

fn bench_gptq(faer_gflops: f64) {
    let (n, k) = (4096, 4096);
    let mut rng = Lcg(2);
    let w = rng.vec(n * k, 0.02);
    // A positive definite Hessian with correlated structure: B Bᵀ / r + a diagonal, B [k, r].
    let r = 512;
    let b = Mat::<f32>::from_fn(k, r, |_, _| rng.next());
    let mut hm = Mat::<f32>::zeros(k, k);
    threads::install(|| matmul(hm.as_mut(), Accum::Replace, b.as_ref(), b.transpose(), 1.0 / r as f32, threads::faer_par()));
    let dense: Vec<f32> = (0..k * k).map(|i| hm[(i / k, i % k)] + if i / k == i % k { 0.05 } else { 0.0 }).collect();
    let h = Hessian::from_dense(Elements::F32(&dense), k, 1, SampleCount::Rows).unwrap();
    let cfg = QuantConfig { bits: 4, group_size: Some(128), desc_act: true, ..QuantConfig::default() };
    let view = MatView::dense(Elements::F32(&w), n, k, "W").unwrap();
    for compare_rtn in [false, true] {
        let mut report = None;
        let secs = time(3, || report = Some(quantize_gptq(&view, &h, &cfg, compare_rtn).unwrap().1));
        let rep = report.unwrap();
        let gflops = rep.flops / secs / 1e9;
        println!(
            "gptq 4096x4096 4bit g128 act-order{}: {secs:.3} s (target <= 3 s), solver {gflops:.1} GFLOP/s = {:.0}% of faer f32 matmul {faer_gflops:.1} GFLOP/s (target >= 50%)",
            if compare_rtn { " + RTN loss in report" } else { "" },
            100.0 * gflops / faer_gflops,
        );
    }
}

fn random_layer(n: usize, k: usize, seed: u64) -> QuantizedLayer {
    let mut rng = Lcg(seed);
    let g = k / 128;
    let codes: Vec<u8> = (0..n * k).map(|_| ((rng.next() + 1.0) * 7.99) as u8).collect();
    let qweight: Vec<i32> = pack_qweight(&codes, 4, n, k).into_iter().map(|v| v as i32).collect();
    let qzeros: Vec<i32> = pack_rows(&vec![7u32; g * n], 4, n).into_iter().map(|v| v as i32).collect();
    let scales: Vec<f16> = (0..g * n).map(|_| f16::from_f32(0.001 + 0.002 * rng.next().abs())).collect();
    let desc = LayerDesc { bits: 4, group_size: Some(128), in_features: k, out_features: n, sym: true };
    let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: None, bias: None };
    QuantizedLayer::from_packed(desc, CheckpointFormat::V1, t).unwrap()
}

fn bench_gemm() {
    let (k, n) = (4096, 11008);
    // Four copies (90 MB of packed weights) rotated call by call, so the 4-bit path is not timed out of
    // the last-level cache while the 180 MB f32 baseline streams from memory.
    let layers: Vec<QuantizedLayer> = (0..4).map(|s| random_layer(n, k, 3 + s)).collect();
    let mut rng = Lcg(4);
    let wf = Mat::<f32>::from_fn(k, n, |_, _| rng.next() * 0.01);
    for m in [1usize, 4, 16, 32, 64, 128] {
        let a = rng.vec(m * k, 1.0);
        let view = MatView::dense(Elements::F32(&a), m, k, "A").unwrap();
        let mut c = vec![0f32; m * n];
        let mut next = 0;
        let (ours, ours_min) = times(21, || {
            next = (next + 1) % layers.len();
            gemm(&layers[next], &view, OutMatMut::F32(&mut c), n).unwrap()
        });
        let am = Mat::<f32>::from_fn(m, k, |i, j| a[i * k + j]);
        let mut cm = Mat::<f32>::zeros(m, n);
        let (base, base_min) =
            threads::install(|| times(21, || matmul(cm.as_mut(), Accum::Replace, am.as_ref(), wf.as_ref(), 1.0, threads::faer_par())));
        println!(
            "gemm 4bit g128 K={k} N={n} M={m:>3}: median ours {:8.3} ms, faer f32 {:8.3} ms, speedup {:.2}x | best ours {:8.3} ms, faer {:8.3} ms, {:.2}x",
            ours * 1e3,
            base * 1e3,
            base / ours,
            ours_min * 1e3,
            base_min * 1e3,
            base_min / ours_min
        );
    }
}

/// Opening a sharded checkpoint of many layers must read only headers: time `Checkpoint::open` on a
/// model of 448 quantized layers (a 64-layer transformer's 7 projections) in 8 shards.
fn bench_checkpoint_open() {
    use gptq::format::checkpoint::{Checkpoint, CheckpointWriter, GptqConfig, WriteOptions};
    let dir = std::env::temp_dir().join(format!("gptq-bench-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layer = random_layer(256, 512, 9);
    let cfg = QuantConfig { bits: 4, group_size: Some(128), ..QuantConfig::default() };
    let mut w = CheckpointWriter::new(
        &dir,
        GptqConfig::from_quant_config(&cfg).unwrap(),
        WriteOptions { max_shard_size: Some(4 << 20), ..WriteOptions::default() },
    )
    .unwrap();
    for l in 0..64 {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] {
            w.add_layer(&format!("model.layers.{l}.{p}"), &layer).unwrap();
        }
    }
    let summary = w.finish().unwrap();
    let shards = summary.files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")).count();
    let t = time(9, || {
        std::hint::black_box(Checkpoint::open(&dir).unwrap());
    });
    println!(
        "checkpoint open: {} layers in {shards} shards ({:.0} MB): {:.2} ms (target: milliseconds; only headers are read)",
        summary.num_layers,
        summary.total_size as f64 / 1e6,
        t * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    println!("threads: {}", threads::num_threads());
    if filter.is_empty() || filter.contains("gptq") {
        let g = faer_matmul_gflops(2048);
        bench_gptq(g);
    }
    if filter.is_empty() || filter.contains("gemm") {
        bench_gemm();
    }
    if filter.is_empty() || filter.contains("checkpoint") {
        bench_checkpoint_open();
    }
}
