//! CPU dequant-GEMM: `C[M, N] = A[M, K] · dequant(W)ᵀ (+ bias)`.
//!
//! Two paths, both parallel over tiles of output columns (each tile owns a contiguous block of a
//! transposed result `Cᵀ [N, M]`, so threads never share writes):
//! - **direct** (4 and 8 bit, small M): streams the packed words once, unpacks them in registers and
//!   accumulates `Σ a·q` per group, then applies `scale·(acc − zero·Σ a)`: the dequantized matrix is
//!   never formed. `qweight [K/pf, N]` is N-contiguous, so one word row of a tile is a SIMD load and the
//!   inner loops vectorize over N; the function is compiled for several ISAs and picked at run time.
//! - **panel** (every bit width, larger M): dequantizes a `[K, NP]` panel of W to f32 in a per-thread
//!   buffer and hands it to faer's matmul.
//!
//! Act-order layers (unsorted `g_idx`) are handled by a plan built once per layer: K is permuted so that
//! each group is contiguous, the packed words are repacked in that order, and A's columns are gathered
//! to match.

use super::threads;
use crate::error::{Error, Result};
use crate::format::pack::{locate, pack_qweight};
use crate::format::QuantizedLayer;
use crate::tensor::{strided_span, MatView};
use faer::linalg::matmul::matmul;
use super::views::{rm, rm_mut};
use faer::{Accum, Par};
use half::f16;
use rayon::prelude::*;

/// Output columns per direct-path tile: 1 KB of each packed word row, read as a contiguous run the
/// hardware prefetcher follows (a narrow tile touches one cache line per 4 KB page and stalls).
const NT: usize = 256;
/// Output columns per inner step (one AVX-512 vector, two AVX2 vectors).
const LANES: usize = 16;
/// Rows of A processed together by the direct path (amortizes unpacking over MR rows). 6 is the
/// measured optimum: 8 spills (8 accumulators plus 8 row pointers) and runs 2–3× slower.
const MR: usize = 6;
/// Output columns per panel-path tile.
const NP: usize = 128;
/// Largest M for which the direct path is used.
pub const DIRECT_MAX_M: usize = 64;
/// Mutable output matrix `[rows, cols]` with a row stride.
pub enum OutMatMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
}

impl OutMatMut<'_> {
    fn len(&self) -> usize {
        match self {
            OutMatMut::F32(s) => s.len(),
            OutMatMut::F16(s) => s.len(),
        }
    }
}

/// Per-layer data the kernels need beyond the packed tensors (built once, cached in the layer).
#[derive(Debug)]
pub struct GemmPlan {
    /// Column gather of A when groups are not contiguous in K.
    pub(crate) perm: Option<Vec<u32>>,
    /// `qweight` repacked in permuted K order (only with `perm`).
    pub(crate) qweight_perm: Option<Vec<u32>>,
    /// Runs of equal group in (permuted) K order: `(k_start, k_end, group)`.
    pub(crate) segments: Vec<(usize, usize, u32)>,
    /// Whether the direct path applies (4/8 bit, every run on a word boundary); the CUDA kernels
    /// need the same layout.
    pub(crate) direct: bool,
    pub(crate) scales: Vec<f32>,
    pub(crate) zeros: Vec<f32>,
}

impl GemmPlan {
    pub(crate) fn new(layer: &QuantizedLayer) -> Self {
        let d = layer.desc();
        let (k, n, bits) = (d.in_features, d.out_features, d.bits);
        let g_idx = layer.g_idx();
        let fast_bits = bits == 4 || bits == 8;
        let sorted = g_idx.windows(2).all(|w| w[0] <= w[1]);
        let (perm, qweight_perm) = if fast_bits && !sorted {
            let mut p: Vec<u32> = (0..k as u32).collect();
            p.sort_by_key(|&c| g_idx[c as usize]); // stable
            let mut codes = vec![0u8; n * k];
            for (r, row) in codes.chunks_exact_mut(k).enumerate() {
                for (kk, c) in row.iter_mut().enumerate() {
                    *c = layer.code(r, p[kk] as usize) as u8;
                }
            }
            let qw = pack_qweight(&codes, bits, n, k);
            (Some(p), Some(qw))
        } else {
            (None, None)
        };
        let g_of = |kk: usize| perm.as_ref().map_or(g_idx[kk], |p| g_idx[p[kk] as usize]);
        let mut segments = Vec::new();
        let mut s = 0;
        while s < k {
            let g = g_of(s);
            let mut e = s + 1;
            while e < k && g_of(e) == g {
                e += 1;
            }
            segments.push((s, e, g));
            s = e;
        }
        let pf = (32 / bits) as usize;
        let direct = fast_bits && (sorted || perm.is_some()) && segments.iter().all(|&(s, e, _)| s % pf == 0 && e % pf == 0);
        GemmPlan {
            perm,
            qweight_perm,
            segments,
            direct,
            scales: layer.scales().iter().map(|v| v.to_f32()).collect(),
            zeros: layer.zeros().iter().map(|&z| z as f32).collect(),
        }
    }
}

/// Computes `C = A · dequant(W)ᵀ (+ bias)` into `c` (`[M, N]` with row stride `ldc`). `A` is
/// `[M, K]`. Nothing in `c` outside the `[M, N]` window is touched.
pub fn gemm(layer: &QuantizedLayer, a: &MatView<'_>, c: OutMatMut<'_>, ldc: usize) -> Result<()> {
    let d = layer.desc();
    let (k, n, m) = (d.in_features, d.out_features, a.rows());
    if a.cols() != k {
        return Err(Error::Shape(format!("A has {} columns but the layer has in_features {k}", a.cols())));
    }
    if ldc < n {
        return Err(Error::InvalidArgument(format!("ldc {ldc} is smaller than out_features {n}")));
    }
    let span = strided_span(m, n, ldc).ok_or_else(|| Error::OutOfMemory("C's extent overflows".into()))?;
    if c.len() < span {
        return Err(Error::BufferTooSmall(format!("C needs {span} elements, got {}", c.len())));
    }
    a.check_finite("A")?;
    threads::install(|| {
        let plan = layer.gemm_plan();
        let use_direct = plan.direct && m <= DIRECT_MAX_M;
        let a32 = gather_a(a, if use_direct { plan.perm.as_deref() } else { None });
        let mut ct = vec![0f32; n * m];
        if use_direct {
            direct(layer, plan, &a32, m, &mut ct);
        } else {
            panel(layer, plan, &a32, m, &mut ct);
        }
        store(&ct, m, n, layer.bias(), c, ldc);
    });
    Ok(())
}

/// A as dense f32 `[M, K]`, columns gathered by `perm` when given.
fn gather_a(a: &MatView<'_>, perm: Option<&[u32]>) -> Vec<f32> {
    let k = a.cols();
    let mut out = vec![0f32; a.rows() * k];
    out.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
        a.read_row(r, row);
        if let Some(p) = perm {
            let src = row.to_vec();
            row.iter_mut().zip(p).for_each(|(d, &c)| *d = src[c as usize]);
        }
    });
    out
}

fn store(ct: &[f32], m: usize, n: usize, bias: Option<&[f16]>, c: OutMatMut<'_>, ldc: usize) {
    let value = |r: usize, j: usize| ct[j * m + r] + bias.map_or(0.0, |b| b[j].to_f32());
    match c {
        OutMatMut::F32(s) => s.par_chunks_mut(ldc).take(m).enumerate().for_each(|(r, row)| {
            row[..n].iter_mut().enumerate().for_each(|(j, o)| *o = value(r, j));
        }),
        OutMatMut::F16(s) => s.par_chunks_mut(ldc).take(m).enumerate().for_each(|(r, row)| {
            row[..n].iter_mut().enumerate().for_each(|(j, o)| *o = f16::from_f32(value(r, j)));
        }),
    }
}

fn direct(layer: &QuantizedLayer, plan: &GemmPlan, a: &[f32], m: usize, ct: &mut [f32]) {
    let d = layer.desc();
    let (k, n, bits) = (d.in_features, d.out_features, d.bits);
    let qweight = plan.qweight_perm.as_deref().unwrap_or(layer.qweight());
    // Σ a over each run, per row of A, for the zero-point correction.
    let nseg = plan.segments.len();
    let mut asum = vec![0f32; m * nseg];
    for r in 0..m {
        for (si, &(s, e, _)) in plan.segments.iter().enumerate() {
            asum[r * nseg + si] = a[r * k + s..r * k + e].iter().sum();
        }
    }
    let args = DirectArgs { qweight, n, k, bits, a, m, asum: &asum, plan };
    // Narrower tiles as M grows keep the `[m, nt]` accumulators and a group's packed rows within L1.
    let nt = if m > 16 { NT / 2 } else { NT };
    ct.par_chunks_mut(nt * m)
        .enumerate()
        .for_each_init(|| vec![0f32; m * nt], |acc, (t, tile)| direct_tile(&args, t * nt, nt, tile, acc));
}

struct DirectArgs<'a> {
    qweight: &'a [u32],
    n: usize,
    k: usize,
    bits: u32,
    a: &'a [f32],
    m: usize,
    asum: &'a [f32],
    plan: &'a GemmPlan,
}

/// One tile of up to `nt` output columns starting at `n0`, all rows of A; `acc` is `[m, nt]` scratch.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn direct_tile(x: &DirectArgs<'_>, n0: usize, nt: usize, tile: &mut [f32], acc: &mut [f32]) {
    let (n, m) = (x.n, x.m);
    let width = nt.min(n - n0);
    let acc = &mut acc[..m * width];
    acc.fill(0.0);
    for (si, &seg) in x.plan.segments.iter().enumerate() {
        for r0 in (0..m).step_by(MR) {
            let s = Segment { n0, width, seg, si, r0 };
            macro_rules! dispatch {
                ($($r:literal)*) => {
                    match (x.bits, MR.min(m - r0)) {
                        $((4, $r) => segment::<4, 8, $r>(x, &s, acc),)*
                        $((_, $r) => segment::<8, 4, $r>(x, &s, acc),)*
                        _ => unreachable!("row count is 1..=MR"),
                    }
                };
            }
            dispatch!(1 2 3 4 5 6 7 8);
        }
    }
    for r in 0..m {
        for j in 0..width {
            tile[j * m + r] = acc[r * width + j];
        }
    }
}

/// Where one call of [`segment`] works: tile columns `n0..n0+width`, run `seg` (index `si`), rows from `r0`.
struct Segment {
    n0: usize,
    width: usize,
    seg: (usize, usize, u32),
    si: usize,
    r0: usize,
}

/// Adds rows `r0..r0+R` of `A · dequant(W)ᵀ` restricted to one group run into `acc`. The inner loops
/// run over `LANES` output columns, so `gacc` is R vector registers and each packed word is unpacked
/// once for R rows of A. `PF = 32 / BITS` values per word; fixed-size arrays keep the hot loop free of
/// bounds checks.
#[inline(always)]
fn segment<const BITS: u32, const PF: usize, const R: usize>(x: &DirectArgs<'_>, s: &Segment, acc: &mut [f32]) {
    let mask = (1u32 << BITS) - 1;
    let (n, k) = (x.n, x.k);
    let (k0, k1, g) = s.seg;
    let words_per_run = (k1 - k0) / PF;
    let rows: [&[f32]; R] = std::array::from_fn(|r| &x.a[(s.r0 + r) * k + k0..(s.r0 + r) * k + k1]);
    let sbase = g as usize * n + s.n0;
    let nseg = x.plan.segments.len();
    for jc in (0..s.width).step_by(LANES) {
        let lanes = LANES.min(s.width - jc);
        let mut gacc = [[0f32; LANES]; R];
        for wi in 0..words_per_run {
            let base = (k0 / PF + wi) * n + s.n0 + jc;
            let words: [u32; LANES] = if lanes == LANES {
                x.qweight[base..base + LANES].try_into().unwrap()
            } else {
                let mut w = [0u32; LANES];
                w[..lanes].copy_from_slice(&x.qweight[base..base + lanes]);
                w
            };
            let a: [&[f32; PF]; R] = std::array::from_fn(|r| rows[r][wi * PF..(wi + 1) * PF].try_into().unwrap());
            for i in 0..PF {
                let mut q = [0f32; LANES];
                for l in 0..LANES {
                    q[l] = ((words[l] >> (BITS * i as u32)) & mask) as i32 as f32;
                }
                for r in 0..R {
                    let av = a[r][i];
                    for l in 0..LANES {
                        gacc[r][l] = av.mul_add(q[l], gacc[r][l]);
                    }
                }
            }
        }
        let (sc, zr) = (&x.plan.scales[sbase + jc..sbase + jc + lanes], &x.plan.zeros[sbase + jc..sbase + jc + lanes]);
        for r in 0..R {
            let sa = x.asum[(s.r0 + r) * nseg + s.si];
            let out = &mut acc[(s.r0 + r) * s.width + jc..(s.r0 + r) * s.width + jc + lanes];
            for l in 0..lanes {
                out[l] += sc[l] * (gacc[r][l] - zr[l] * sa);
            }
        }
    }
}

fn panel(layer: &QuantizedLayer, plan: &GemmPlan, a: &[f32], m: usize, ct: &mut [f32]) {
    let d = layer.desc();
    let (k, n) = (d.in_features, d.out_features);
    let am = rm(a, m, k, k);
    ct.par_chunks_mut(NP * m).enumerate().for_each_init(
        || vec![0f32; k * NP],
        |wbuf, (t, tile)| {
            let n0 = t * NP;
            let width = NP.min(n - n0);
            dequant_panel(layer, plan, n0, width, &mut wbuf[..k * width]);
            let w = rm(&wbuf[..k * width], k, width, width);
            let dst = rm_mut(tile, width, m, m);
            matmul(dst, Accum::Replace, w.transpose(), am.transpose(), 1.0f32, Par::Seq);
        },
    );
}

/// Dequantizes columns `n0..n0+width` of W into `out` (`[K, width]`, row-major).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn dequant_panel(layer: &QuantizedLayer, plan: &GemmPlan, n0: usize, width: usize, out: &mut [f32]) {
    let d = layer.desc();
    let (n, bits) = (d.out_features, d.bits);
    let (qw, g_idx) = (layer.qweight(), layer.g_idx());
    let mask = (1u32 << bits) - 1;
    for (kk, row) in out.chunks_exact_mut(width).enumerate() {
        let base = g_idx[kk] as usize * n + n0;
        let (s, z) = (&plan.scales[base..base + width], &plan.zeros[base..base + width]);
        // The word row and shift depend on k only, so the inner loop is the same for every column.
        let (w, off, spill) = locate(kk, bits);
        let lo = &qw[w * n + n0..w * n + n0 + width];
        if spill {
            let hi = &qw[(w + 1) * n + n0..(w + 1) * n + n0 + width];
            for j in 0..width {
                let q = ((lo[j] >> off) | (hi[j] << (32 - off))) & mask;
                row[j] = s[j] * (q as i32 as f32 - z[j]);
            }
        } else {
            for j in 0..width {
                row[j] = s[j] * (((lo[j] >> off) & mask) as i32 as f32 - z[j]);
            }
        }
    }
}
