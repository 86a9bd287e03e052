//! The GPTQ solver (Frantar et al.), reproducing the reference implementation's column loop, group
//! parameter timing and rounding so that codes match AutoGPTQ's up to float noise.
//!
//! Layout: the working weight is row-major `[out, in]` with columns in processing order. Inside a block
//! of columns every output row is independent, so rows are processed in parallel, each walking the
//! block's columns in order (a 128-wide row slice and the block of `Hinv` stay in L1/L2). The update of
//! the columns after the block (the lazy batch update) is one faer matmul.

use super::config::{num_groups, QuantConfig};
use super::hessian::Hessian;
use super::params::{dequantize_code, find_params, quantize_code, GroupParams};
use super::rtn::rtn_dense;
use super::{QuantReport, Quantized};
use crate::cpu::threads;
use crate::cpu::views::{rm, rm_mut};
use crate::error::{Error, Result};
use crate::tensor::MatView;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltRegularization};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;
use std::time::Instant;

/// Quantizes `w` (`[out, in]`) against the Hessian `h` of its inputs.
///
/// With `compare_rtn`, the report also carries the loss round-to-nearest would have had on the same
/// Hessian (one extra triangular matmul, about a third of the solver's work); otherwise
/// `loss_rtn` is NaN.
pub fn quantize_gptq(
    w: &MatView<'_>,
    h: &Hessian,
    cfg: &QuantConfig,
    compare_rtn: bool,
) -> Result<(Quantized, QuantReport)> {
    let start = Instant::now();
    cfg.validate()?;
    let (n, k) = (w.rows(), w.cols());
    if k != h.in_features() {
        return Err(Error::Shape(format!(
            "weight has in_features {k} but the Hessian was built for {}",
            h.in_features()
        )));
    }
    crate::format::check_layer_dims(cfg.bits, k, n)?;
    if h.n_samples() == 0 {
        return Err(Error::InvalidArgument("the Hessian has no samples: add calibration batches first".into()));
    }
    w.check_finite("weight")?;
    threads::install(|| solve(w, h, cfg, compare_rtn, start))
}

/// How the processing order is split into groups.
struct Groups {
    /// Group id of each position in processing order.
    of_pos: Vec<u32>,
    /// Dynamic groups: `(first position, length, group id)`, parameters computed when the sweep gets there.
    dynamic: Vec<(usize, usize, u32)>,
    count: usize,
}

fn solve(w: &MatView<'_>, h: &Hessian, cfg: &QuantConfig, compare_rtn: bool, start: Instant) -> Result<(Quantized, QuantReport)> {
    let (n, k) = (w.rows(), w.cols());
    let maxq = cfg.maxq();
    let g_count = num_groups(k, cfg.group_size);
    let w_orig = w.to_f32();
    let mut scales = vec![0f32; n * g_count];
    let mut zeros = vec![0f32; n * g_count];

    // Per-row parameters for group_size -1 see W before dead columns are zeroed (reference order).
    if cfg.group_size.is_none() {
        fill_params(&w_orig, k, &mut scales, &mut zeros, 1, |_| 0..k, cfg);
    }
    // Dead inputs (zero Hessian diagonal) get H[i,i] = 1 and a zero weight column; both are applied
    // while copying into processing order rather than on extra copies.
    let hraw = h.matrix();
    let dead: Vec<bool> = (0..k).map(|i| hraw[i * k + i] == 0.0).collect();
    let diag: Vec<f32> = (0..k).map(|i| if dead[i] { 1.0 } else { hraw[i * k + i] }).collect();
    let gs = cfg.group_size.unwrap_or(k);
    if cfg.static_groups {
        let zeroed;
        let src = if dead.contains(&true) {
            zeroed = gather_cols(&w_orig, k, &(0..k).collect::<Vec<_>>(), &dead);
            &zeroed
        } else {
            &w_orig
        };
        fill_params(src, k, &mut scales, &mut zeros, g_count, |g| g * gs..((g + 1) * gs).min(k), cfg);
    }
    let perm = processing_order(&diag, k, cfg);
    let groups = group_layout(perm.as_deref(), k, cfg);
    let order: Vec<usize> = match &perm {
        Some(p) => p.iter().map(|&c| c as usize).collect(),
        None => (0..k).collect(),
    };
    let mut wf = gather_cols(&w_orig, k, &order, &dead);

    let factors = damped_factors(hraw, &order, &dead, &diag, cfg)?;
    let u = &factors.u_inv;

    // The sweep.
    let mut codes_p = vec![0u8; n * k];
    let mut row_loss = vec![0f64; n];
    let bs = cfg.block_size;
    let mut err = vec![0f32; n * bs];
    let rows_per_task = (n / (4 * rayon::current_num_threads())).next_multiple_of(RI).max(RI);
    for i1 in (0..k).step_by(bs) {
        let i2 = (i1 + bs).min(k);
        let width = i2 - i1;
        wf.par_chunks_mut(k * rows_per_task)
            .zip(codes_p.par_chunks_mut(k * rows_per_task))
            .zip(err.par_chunks_mut(bs * rows_per_task))
            .zip(scales.par_chunks_mut(g_count * rows_per_task).zip(zeros.par_chunks_mut(g_count * rows_per_task)))
            .zip(row_loss.par_chunks_mut(rows_per_task))
            .for_each(|((((wr, cr), er), (sr, zr)), lr)| {
                // Groups starting in this block take their parameters from the row as it stands at
                // the block start: in-block updates are not yet visible (the reference's timing).
                for (t, row) in wr.chunks_exact(k).enumerate() {
                    for &(s, len, g) in groups.dynamic.iter().filter(|d| (i1..i2).contains(&d.0)) {
                        let p = find_params(&row[s..s + len], maxq, cfg.sym, cfg.mse);
                        sr[t * g_count + g as usize] = p.scale;
                        zr[t * g_count + g as usize] = p.zero;
                    }
                }
                let block = Block { i1, i2, k, bs, g_count, maxq: maxq as f32 };
                let rows = Rows { w: wr, codes: cr, err: er, scales: sr, zeros: zr };
                sweep_block(&block, rows, lr, &groups.of_pos, u);
            });
        if i2 < k {
            let rest = k - i2;
            let e = rm(&err, n, width, bs);
            let ub = rm(&u[i1 * k + i2..], width, rest, k);
            let wv = rm_mut(&mut wf[i2..], n, rest, k);
            matmul(wv, Accum::Add, e, ub, -1.0f32, threads::faer_par());
        }
    }

    // Back to the original column order.
    let mut codes = vec![0u8; n * k];
    let mut g_idx = vec![0u32; k];
    for (pos, &c) in order.iter().enumerate() {
        g_idx[c] = groups.of_pos[pos];
    }
    codes.par_chunks_mut(k).zip(codes_p.par_chunks(k)).for_each(|(dst, src)| {
        for (pos, &c) in order.iter().enumerate() {
            dst[c] = src[pos];
        }
    });
    let q = Quantized {
        bits: cfg.bits,
        group_size: cfg.group_size,
        sym: cfg.sym,
        out_features: n,
        in_features: k,
        codes,
        scales,
        zeros: zeros.iter().map(|&z| z as u32).collect(),
        g_idx,
        perm: perm.clone(),
    };
    debug_assert_eq!(groups.count, g_count);

    // Losses on the undamped Hessian. For GPTQ the trace follows from the solver's own sum: with
    // δ = W − Q and e the scaled errors, δ = e·U, so δ H_d δᵀ = ‖e‖² exactly; subtract the damping.
    let loss_estimate: f64 = row_loss.iter().sum();
    let loss_gptq = 2.0 * loss_estimate - damping_term(&w_orig, &q, &dead, &order, &factors.added_diag);
    let loss_rtn = if compare_rtn {
        let rtn = rtn_dense(&w_orig, n, k, cfg);
        let delta_rtn = residual(&w_orig, &rtn, &dead, &order, k);
        trace_with_factor(&delta_rtn, n, k, &factors.r_upper_cm)
            - damping_term(&w_orig, &rtn, &dead, &order, &factors.added_diag)
    } else {
        f64::NAN
    };

    let kf = k as f64;
    let flops = 2.0 * kf.powi(3) / 3.0 + (n as f64) * kf * kf + (n as f64) * kf * bs as f64;
    let report = QuantReport {
        loss_estimate,
        loss_gptq,
        loss_rtn,
        damp_percent_used: factors.damp_percent,
        diag_floor_used: factors.diag_floor,
        seconds: start.elapsed().as_secs_f64(),
        flops,
    };
    Ok((q, report))
}

/// The block of columns `i1..i2` being swept.
struct Block {
    i1: usize,
    i2: usize,
    k: usize,
    bs: usize,
    g_count: usize,
    maxq: f32,
}

/// A run of consecutive rows: weights `[r, k]`, codes `[r, k]`, block errors `[r, bs]`, group
/// parameters `[r, g_count]`.
struct Rows<'a> {
    w: &'a mut [f32],
    codes: &'a mut [u8],
    err: &'a mut [f32],
    scales: &'a [f32],
    zeros: &'a [f32],
}

/// Sweeps the block over every row of `rows`, [`RI`] rows at a time, adding each row's share of the
/// loss estimate to `loss`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn sweep_block(b: &Block, rows: Rows<'_>, loss: &mut [f64], group_of_pos: &[u32], u: &[f32]) {
    let mut t = 0;
    while t < loss.len() {
        let r = RI.min(loss.len() - t);
        let view = Rows {
            w: &mut rows.w[t * b.k..(t + r) * b.k],
            codes: &mut rows.codes[t * b.k..(t + r) * b.k],
            err: &mut rows.err[t * b.bs..(t + r) * b.bs],
            scales: &rows.scales[t * b.g_count..(t + r) * b.g_count],
            zeros: &rows.zeros[t * b.g_count..(t + r) * b.g_count],
        };
        let l = &mut loss[t..t + r];
        if r == RI { sweep_rows::<RI>(b, view, l, group_of_pos, u) } else { sweep_rows::<1>(b, view, l, group_of_pos, u) }
        t += if r == RI { RI } else { 1 };
    }
}

/// Rows swept together: one row alone is a serial chain (divide, round, update the next column)
/// that leaves the core idle; R independent chains interleave.
const RI: usize = 4;

/// Quantizes columns `i1..i2` of `R` rows in column order, feeding each column's scaled error into
/// the rest of the block. Per element the arithmetic is the reference's, in the same order (no FMA).
#[inline(always)]
fn sweep_rows<const R: usize>(b: &Block, rows: Rows<'_>, loss: &mut [f64], group_of_pos: &[u32], u: &[f32]) {
    let k = b.k;
    let mut lossv = [0f64; R];
    for i in b.i1..b.i2 {
        let g = group_of_pos[i] as usize;
        let d = u[i * k + i];
        let mut e = [0f32; R];
        for t in 0..R {
            let p = GroupParams { scale: rows.scales[t * b.g_count + g], zero: rows.zeros[t * b.g_count + g] };
            let wi = rows.w[t * k + i];
            let q = quantize_code(wi, p, b.maxq);
            let diff = wi - dequantize_code(q, p);
            e[t] = diff / d;
            lossv[t] += (diff as f64 * diff as f64) / (d as f64 * d as f64) / 2.0;
            rows.codes[t * k + i] = q as u8;
            rows.err[t * b.bs + i - b.i1] = e[t];
        }
        let urow = &u[i * k + i + 1..i * k + b.i2];
        for t in 0..R {
            let w = &mut rows.w[t * k + i + 1..t * k + b.i2];
            for (x, &hv) in w.iter_mut().zip(urow) {
                *x -= e[t] * hv;
            }
        }
    }
    for t in 0..R {
        loss[t] += lossv[t];
    }
}

/// Per-row parameters for `groups` ranges of columns of the dense `[n, k]` matrix `w`.
fn fill_params(
    w: &[f32],
    k: usize,
    scales: &mut [f32],
    zeros: &mut [f32],
    groups: usize,
    range: impl Fn(usize) -> std::ops::Range<usize> + Sync,
    cfg: &QuantConfig,
) {
    let g_count = scales.len() / (w.len() / k);
    w.par_chunks(k)
        .zip(scales.par_chunks_mut(g_count).zip(zeros.par_chunks_mut(g_count)))
        .for_each(|(row, (s, z))| {
            for g in 0..groups {
                let p = find_params(&row[range(g)], cfg.maxq(), cfg.sym, cfg.mse);
                s[g] = p.scale;
                z[g] = p.zero;
            }
        });
}

/// The column processing order, or `None` for the natural order.
fn processing_order(diag: &[f32], k: usize, cfg: &QuantConfig) -> Option<Vec<u32>> {
    let by_diag_desc = |a: &u32, b: &u32| diag[*b as usize].total_cmp(&diag[*a as usize]);
    if cfg.desc_act {
        let mut p: Vec<u32> = (0..k as u32).collect();
        p.sort_by(by_diag_desc); // stable: ties keep their natural order
        Some(p)
    } else if cfg.act_group_aware {
        // Act-order inside each natural group, groups ordered by their most important column:
        // every group stays contiguous in processing order, so g_idx stays trivial.
        let gs = cfg.group_size.unwrap_or(k);
        let mut groups: Vec<Vec<u32>> = (0..k.div_ceil(gs))
            .map(|g| {
                let mut cols: Vec<u32> = (g * gs..((g + 1) * gs).min(k)).map(|c| c as u32).collect();
                cols.sort_by(by_diag_desc);
                cols
            })
            .collect();
        groups.sort_by(|a, b| by_diag_desc(&a[0], &b[0]));
        Some(groups.concat())
    } else {
        None
    }
}

fn group_layout(perm: Option<&[u32]>, k: usize, cfg: &QuantConfig) -> Groups {
    let Some(gs) = cfg.group_size else {
        return Groups { of_pos: vec![0; k], dynamic: Vec::new(), count: 1 };
    };
    let col = |pos: usize| perm.map_or(pos, |p| p[pos] as usize);
    let count = k.div_ceil(gs);
    if cfg.static_groups || cfg.act_group_aware {
        let of_pos: Vec<u32> = (0..k).map(|pos| (col(pos) / gs) as u32).collect();
        let mut dynamic = Vec::new();
        if !cfg.static_groups {
            // Group-aware order: each natural group is one contiguous run of positions.
            let mut s = 0;
            while s < k {
                let g = of_pos[s];
                let len = of_pos[s..].iter().take_while(|&&x| x == g).count();
                dynamic.push((s, len, g));
                s += len;
            }
        }
        Groups { of_pos, dynamic, count }
    } else {
        let of_pos = (0..k).map(|pos| (pos / gs) as u32).collect();
        let dynamic = (0..count).map(|g| (g * gs, gs.min(k - g * gs), g as u32)).collect();
        Groups { of_pos, dynamic, count }
    }
}

/// Columns of the dense `[n, k]` matrix `w` in `order`, dead columns zeroed.
fn gather_cols(w: &[f32], k: usize, order: &[usize], dead: &[bool]) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(k).zip(w.par_chunks(k)).for_each(|(dst, src)| {
        for (d, &c) in dst.iter_mut().zip(order) {
            *d = if dead[c] { 0.0 } else { src[c] };
        }
    });
    out
}

/// The undamped Hessian seen in processing order, with dead inputs' diagonal set to 1.
struct PermutedHessian<'a> {
    h: &'a [f32],
    order: &'a [usize],
    dead: &'a [bool],
}

/// Triangular factors of the damped Hessian `H_d = H + diag(added_diag)`.
struct Factors {
    /// Upper Cholesky factor of `H_d⁻¹` (the reference's `Hinv`), row-major.
    u_inv: Vec<f32>,
    /// Upper triangular `R` with `H_d = R Rᵀ`, column-major, lower triangle unspecified (for exact
    /// loss traces).
    r_upper_cm: Vec<f32>,
    added_diag: Vec<f32>,
    damp_percent: f32,
    diag_floor: bool,
}

/// Damps `h` and factors it, raising the damping after a failed Cholesky as GPTQModel does (steps of
/// `damp_auto_increment` while below 1), then one last try with the diagonal floored at its mean.
fn damped_factors(h: &[f32], order: &[usize], dead: &[bool], diag: &[f32], cfg: &QuantConfig) -> Result<Factors> {
    let k = order.len();
    let src = PermutedHessian { h, order, dead };
    let mean = (diag.iter().map(|&d| d as f64).sum::<f64>() / k as f64) as f32;
    if !(mean > 0.0 && mean.is_finite()) {
        return Err(Error::NotPositiveDefinite(format!(
            "the Hessian's mean diagonal is {mean}: it must be positive (are the activations all zero?)"
        )));
    }
    let mut damp = cfg.damp_percent;
    loop {
        let added = vec![damp * mean; k];
        if let Some(f) = factor(&src, added, damp, false) {
            return Ok(f);
        }
        if cfg.damp_auto_increment == 0.0 {
            return Err(Error::NotPositiveDefinite(format!(
                "Cholesky failed at damp_percent {damp} and damp_auto_increment is 0"
            )));
        }
        damp += cfg.damp_auto_increment;
        if damp >= 1.0 {
            break;
        }
    }
    let added: Vec<f32> = order.iter().map(|&c| (mean - diag[c]).max(0.0) + mean).collect();
    factor(&src, added, 1.0, true).ok_or_else(|| {
        Error::NotPositiveDefinite(format!(
            "Cholesky failed with damping raised to 1.0 and the diagonal floored at its mean ({mean}); \
             the Hessian is far from positive semi-definite"
        ))
    })
}

/// With J the exchange matrix, Cholesky of `J H_d J = L Lᵀ` gives `H_d = R Rᵀ` with `R = J L J` upper,
/// hence `H_d⁻¹ = R⁻ᵀ R⁻¹` and `R⁻¹` is the upper Cholesky factor of `H_d⁻¹`: one factorization and one
/// triangular inverse instead of the reference's three O(k³) steps. In column-major storage `J M J` is
/// the reversed array, so every reordering here is a sequential reversal plus one blocked transpose.
fn factor(src: &PermutedHessian<'_>, added: Vec<f32>, damp: f32, diag_floor: bool) -> Option<Factors> {
    let k = src.order.len();
    // J H_p J with the damping on its diagonal, H_p the Hessian in processing order.
    let rev: Vec<usize> = src.order.iter().rev().copied().collect();
    let mut l = vec![0f32; k * k];
    l.par_chunks_mut(k).enumerate().for_each(|(a, row)| {
        let hrow = &src.h[rev[a] * k..(rev[a] + 1) * k];
        for (v, &c) in row.iter_mut().zip(&rev) {
            *v = hrow[c];
        }
        if src.dead[rev[a]] {
            row[a] = 1.0;
        }
        row[a] += added[k - 1 - a];
    });
    let par = threads::faer_par();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f32>(k, par, Default::default()));
    let lm = MatMut::from_column_major_slice_mut(&mut l, k, k);
    cholesky_in_place(lm, LltRegularization::default(), par, MemStack::new(&mut mem), Default::default()).ok()?;
    let mut linv = vec![0f32; k * k];
    // Written through a row-major view, so the reversed array is U in row-major order.
    invert_lower_triangular(rm_mut(&mut linv, k, k, k), MatRef::from_column_major_slice(&l, k, k), par);
    if linv.par_iter().any(|v| !v.is_finite()) {
        return None;
    }
    // Reversed, U is upper triangular row-major with zeros below, and R upper triangular column-major
    // (its lower triangle is left-over input that nothing reads).
    linv.reverse();
    l.reverse();
    Some(Factors {
        u_inv: linv,
        r_upper_cm: l,
        added_diag: added,
        damp_percent: damp,
        diag_floor,
    })
}

/// `W − Q` of row `r` at column `c`.
#[inline(always)]
fn delta(w: &[f32], q: &Quantized, r: usize, c: usize) -> f32 {
    let (k, g) = (q.in_features, q.num_groups());
    let gi = r * g + q.g_idx[c] as usize;
    w[r * k + c] - dequantize_code(q.codes[r * k + c] as f32, GroupParams { scale: q.scales[gi], zero: q.zeros[gi] as f32 })
}

/// `W − Q` in processing order, with dead columns zeroed (their Hessian rows are zero).
fn residual(w: &[f32], q: &Quantized, dead: &[bool], order: &[usize], k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(k).enumerate().for_each(|(r, o)| {
        for (d, &c) in o.iter_mut().zip(order) {
            *d = if dead[c] { 0.0 } else { delta(w, q, r, c) };
        }
    });
    out
}

/// `Σ_i added[i] · ‖δ[:, i]‖²` over live columns (`added` in processing order): the part of
/// `tr(δ H_d δᵀ)` that comes from damping.
fn damping_term(w: &[f32], q: &Quantized, dead: &[bool], order: &[usize], added: &[f32]) -> f64 {
    let mut weight = vec![0f32; order.len()];
    for (pos, &c) in order.iter().enumerate() {
        weight[c] = if dead[c] { 0.0 } else { added[pos] };
    }
    // Per-row sums collected in order, then added sequentially: reproducible whatever the scheduling.
    let rows: Vec<f64> = (0..q.out_features)
        .into_par_iter()
        .map(|r| (0..order.len()).map(|c| weight[c] as f64 * (delta(w, q, r, c) as f64).powi(2)).sum::<f64>())
        .collect();
    rows.iter().sum()
}

/// `tr(δ H_d δᵀ) = ‖δ R‖²_F` with one triangular matmul (`r` column-major, upper triangle read).
fn trace_with_factor(delta: &[f32], n: usize, k: usize, r: &[f32]) -> f64 {
    let mut prod = vec![0f32; n * k];
    tri_matmul(
        rm_mut(&mut prod, n, k, k),
        BlockStructure::Rectangular,
        Accum::Replace,
        rm(delta, n, k, k),
        BlockStructure::Rectangular,
        MatRef::from_column_major_slice(r, k, k),
        BlockStructure::TriangularUpper,
        1.0f32,
        threads::faer_par(),
    );
    let rows: Vec<f64> = prod.par_chunks(k).map(|row| row.iter().map(|&v| v as f64 * v as f64).sum()).collect();
    rows.iter().sum()
}
