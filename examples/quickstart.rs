//! Quickstart: quantize one linear layer with GPTQ and with round-to-nearest at 4 bit, group 128,
//! compare their errors on held-out activations, and time the CPU dequant-GEMM against an f32 GEMM.
//!
//!     cargo run --release --example quickstart [layer.safetensors]
//!
//! Without an argument it uses a built-in workload shaped like a transformer MLP input: correlated
//! activations with a few outlier channels 10–50× larger, the case GPTQ exists for. A `.safetensors`
//! file must hold `W` `[out, in]` and `X` `[tokens, in]` (f32, f16 or bf16); the last quarter of `X`
//! is held out.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};
use gptq::cpu::{gemm, threads, OutMatMut};
use gptq::quant::{quantize_gptq, quantize_rtn, Hessian, QuantConfig, SampleCount};
use gptq::{Elements, MatView, QuantizedLayer};
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (a, b) = (self.uniform(), self.uniform());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    }
}

/// (W [n, k], X [rows, k]) of the built-in workload.
fn synthetic(n: usize, k: usize, rows: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng(42);
    let w: Vec<f32> = (0..n * k).map(|_| 0.02 * rng.normal()).collect();
    let rank = 64;
    let mix: Vec<f32> = (0..rank * k).map(|_| rng.normal()).collect();
    let scale: Vec<f32> = (0..k).map(|_| (0.5 * rng.normal()).exp()).collect();
    let outliers = [7 % k, 101 % k, 555 % k, 1234 % k];
    let mut x = vec![0f32; rows * k];
    for r in 0..rows {
        let z: Vec<f32> = (0..rank).map(|_| rng.normal()).collect();
        for c in 0..k {
            let mut v = 1.5 * rng.normal();
            for t in 0..rank {
                v += z[t] * mix[t * k + c];
            }
            v *= scale[c];
            if let Some(i) = outliers.iter().position(|&o| o == c) {
                v *= [12.0, 25.0, 40.0, 50.0][i];
            }
            x[r * k + c] = v;
        }
    }
    (w, x)
}

fn load(path: &str) -> Result<(Vec<f32>, usize, usize, Vec<f32>, usize), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let read = |name: &str| -> Result<(Vec<f32>, Vec<usize>), Box<dyn std::error::Error>> {
        let t = st.tensor(name).map_err(|e| format!("{path}: tensor {name}: {e}"))?;
        let d = t.data();
        let v = match t.dtype() {
            safetensors::Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            safetensors::Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            safetensors::Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(format!("{path}: tensor {name} has dtype {other:?}, expected F32/F16/BF16").into()),
        };
        Ok((v, t.shape().to_vec()))
    };
    let (w, ws) = read("W")?;
    let (x, xs) = read("X")?;
    if ws.len() != 2 || xs.len() < 2 || xs[xs.len() - 1] != ws[1] {
        return Err(format!("{path}: W {ws:?} and X {xs:?} must be [out, in] and [..., in]").into());
    }
    let rows = x.len() / ws[1];
    Ok((w, ws[0], ws[1], x, rows))
}

/// ‖X (W − Q)ᵀ‖² / ‖X Wᵀ‖² on the held-out rows.
fn held_out_error(x: &[f32], rows: usize, w: &[f32], q: &[f32], n: usize, k: usize) -> f64 {
    let xm = Mat::<f32>::from_fn(rows, k, |i, j| x[i * k + j]);
    let wm = Mat::<f32>::from_fn(k, n, |i, j| w[j * k + i]);
    let dm = Mat::<f32>::from_fn(k, n, |i, j| w[j * k + i] - q[j * k + i]);
    let (mut y, mut e) = (Mat::<f32>::zeros(rows, n), Mat::<f32>::zeros(rows, n));
    threads::install(|| {
        matmul(y.as_mut(), Accum::Replace, xm.as_ref(), wm.as_ref(), 1.0, threads::faer_par());
        matmul(e.as_mut(), Accum::Replace, xm.as_ref(), dm.as_ref(), 1.0, threads::faer_par());
    });
    let sq = |m: &Mat<f32>| m.col_iter().flat_map(|c| c.iter().copied().collect::<Vec<_>>()).map(|v| (v as f64).powi(2)).sum::<f64>();
    sq(&e) / sq(&y)
}

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (w, n, k, x, rows, source) = match args.first() {
        Some(path) => {
            let (w, n, k, x, rows) = load(path)?;
            (w, n, k, x, rows, path.clone())
        }
        None => {
            let (n, k, rows) = (2048, 2048, 4096);
            let (w, x) = synthetic(n, k, rows);
            (w, n, k, x, rows, "built-in workload (correlated activations, 4 outlier channels)".to_string())
        }
    };
    let calib = rows * 3 / 4;
    println!("libgptq {} — layer [{n} x {k}] from {source}; {calib} calibration rows, {} held out, {} threads", env!("CARGO_PKG_VERSION"), rows - calib, threads::num_threads());

    let t = Instant::now();
    let mut h = Hessian::new(k, SampleCount::Rows)?;
    h.add_batch(&MatView::dense(Elements::F32(&x[..calib * k]), calib, k, "X")?)?;
    println!("Hessian from {calib} rows: {:.3} s", t.elapsed().as_secs_f64());

    let cfg = QuantConfig { bits: 4, group_size: Some(128), desc_act: true, ..QuantConfig::default() };
    let view = MatView::dense(Elements::F32(&w), n, k, "W")?;
    let (q, report) = quantize_gptq(&view, &h, &cfg, true)?;
    let rtn = quantize_rtn(&view, &cfg)?;
    let held = &x[calib * k..];
    let (eg, er) = (held_out_error(held, rows - calib, &w, &q.dequantize(), n, k), held_out_error(held, rows - calib, &w, &rtn.dequantize(), n, k));
    println!("\n4-bit, group 128, act-order (GPTQ {:.3} s, damping {}):", report.seconds, report.damp_percent_used);
    println!("  held-out relative error  GPTQ {eg:.3e}   RTN {er:.3e}   ({:.1}x lower with GPTQ)", er / eg);
    println!("  Hessian-weighted loss    GPTQ {:.3e}   RTN {:.3e}", report.loss_gptq, report.loss_rtn);

    let layer = QuantizedLayer::from_quantized(&q);
    let wt = Mat::<f32>::from_fn(k, n, |i, j| w[j * k + i]);
    println!("\nCPU GEMM, C[M, {n}] = A[M, {k}] · Wᵀ (best of 5):");
    for m in [1usize, 16] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let av = MatView::dense(Elements::F32(&a), m, k, "A")?;
        let mut c = vec![0f32; m * n];
        let ours = best_of(5, || gemm(&layer, &av, OutMatMut::F32(&mut c), n).unwrap());
        let am = Mat::<f32>::from_fn(m, k, |i, j| a[i * k + j]);
        let mut cm = Mat::<f32>::zeros(m, n);
        let dense = threads::install(|| best_of(5, || matmul(cm.as_mut(), Accum::Replace, am.as_ref(), wt.as_ref(), 1.0, threads::faer_par())));
        println!("  M = {m:>2}: 4-bit {:7.3} ms   f32 (faer) {:7.3} ms   {:.2}x", ours * 1e3, dense * 1e3, dense / ours);
    }
    Ok(())
}
