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
pub fn quantize_gptq(w: &MatView<'_>, h: &Hessian, cfg: &QuantConfig) -> Result<(Quantized, QuantReport)> {
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
    threads::install(|| solve(w, h, cfg, start))
}

/// How the processing order is split into groups.
struct Groups {
    /// Group id of each position in processing order.
    of_pos: Vec<u32>,
    /// Dynamic groups: `(first position, length, group id)`, parameters computed when the sweep gets there.
    dynamic: Vec<(usize, usize, u32)>,
    count: usize,
}

fn solve(w: &MatView<'_>, h: &Hessian, cfg: &QuantConfig, start: Instant) -> Result<(Quantized, QuantReport)> {
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
    let mut hm = h.matrix().to_vec();
    let dead: Vec<usize> = (0..k).filter(|&i| hm[i * k + i] == 0.0).collect();
    let mut wf = w_orig.clone();
    for &i in &dead {
        hm[i * k + i] = 1.0;
        wf.chunks_exact_mut(k).for_each(|row| row[i] = 0.0);
    }
    let gs = cfg.group_size.unwrap_or(k);
    if cfg.static_groups {
        fill_params(&wf, k, &mut scales, &mut zeros, g_count, |g| g * gs..((g + 1) * gs).min(k), cfg);
    }

    let diag: Vec<f32> = (0..k).map(|i| hm[i * k + i]).collect();
    let perm = processing_order(&diag, k, cfg);
    let groups = group_layout(perm.as_deref(), k, cfg);
    if let Some(p) = &perm {
        wf = permute_cols(&wf, k, p);
        hm = permute_sym(&hm, k, p);
    }

    let factors = damped_factors(&hm, k, cfg)?;
    let u = &factors.u_inv;

    // The sweep.
    let mut codes_p = vec![0u8; n * k];
    let mut row_loss = vec![0f64; n];
    let bs = cfg.block_size;
    let mut err = vec![0f32; n * bs];
    let rows_per_task = (n / (4 * rayon::current_num_threads())).max(1);
    for i1 in (0..k).step_by(bs) {
        let i2 = (i1 + bs).min(k);
        let width = i2 - i1;
        wf.par_chunks_mut(k * rows_per_task)
            .zip(codes_p.par_chunks_mut(k * rows_per_task))
            .zip(err.par_chunks_mut(bs * rows_per_task))
            .zip(scales.par_chunks_mut(g_count * rows_per_task).zip(zeros.par_chunks_mut(g_count * rows_per_task)))
            .zip(row_loss.par_chunks_mut(rows_per_task))
            .for_each(|((((wr, cr), er), (sr, zr)), lr)| {
                for (t, loss) in lr.iter_mut().enumerate() {
                    let row = &mut wr[t * k..(t + 1) * k];
                    let (srow, zrow) = (&mut sr[t * g_count..(t + 1) * g_count], &mut zr[t * g_count..(t + 1) * g_count]);
                    // Groups starting in this block take their parameters from the row as it stands at
                    // the block start: in-block updates are not yet visible (the reference's timing).
                    for &(s, len, g) in groups.dynamic.iter().filter(|d| (i1..i2).contains(&d.0)) {
                        let p = find_params(&row[s..s + len], maxq, cfg.sym, cfg.mse);
                        srow[g as usize] = p.scale;
                        zrow[g as usize] = p.zero;
                    }
                    let erow = &mut er[t * bs..t * bs + width];
                    for i in i1..i2 {
                        let g = groups.of_pos[i] as usize;
                        let p = GroupParams { scale: srow[g], zero: zrow[g] };
                        let wi = row[i];
                        let q = quantize_code(wi, p, maxq as f32);
                        let diff = wi - dequantize_code(q, p);
                        let d = u[i * k + i];
                        let e = diff / d;
                        *loss += (diff as f64 * diff as f64) / (d as f64 * d as f64) / 2.0;
                        cr[t * k + i] = q as u8;
                        erow[i - i1] = e;
                        let urow = &u[i * k + i + 1..i * k + i2];
                        for (x, &hv) in row[i + 1..i2].iter_mut().zip(urow) {
                            *x -= e * hv;
                        }
                    }
                }
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
    let order: Vec<usize> = match &perm {
        Some(p) => p.iter().map(|&c| c as usize).collect(),
        None => (0..k).collect(),
    };
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
    let delta_gptq = residual(&w_orig, &q, &dead, &order, k);
    let loss_gptq = 2.0 * loss_estimate - damping_term(&delta_gptq, k, &factors.added_diag);
    let rtn = rtn_dense(&w_orig, n, k, cfg);
    let delta_rtn = residual(&w_orig, &rtn, &dead, &order, k);
    let loss_rtn = trace_with_factor(&delta_rtn, n, k, &factors.r_upper) - damping_term(&delta_rtn, k, &factors.added_diag);

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

fn permute_cols(w: &[f32], k: usize, perm: &[u32]) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(k).zip(w.par_chunks(k)).for_each(|(dst, src)| {
        for (d, &c) in dst.iter_mut().zip(perm) {
            *d = src[c as usize];
        }
    });
    out
}

fn permute_sym(h: &[f32], k: usize, perm: &[u32]) -> Vec<f32> {
    let mut out = vec![0f32; h.len()];
    out.par_chunks_mut(k).enumerate().for_each(|(i, dst)| {
        let src = &h[perm[i] as usize * k..(perm[i] as usize + 1) * k];
        for (d, &c) in dst.iter_mut().zip(perm) {
            *d = src[c as usize];
        }
    });
    out
}

/// Triangular factors of the damped Hessian `H_d = H + diag(added_diag)`.
struct Factors {
    /// Upper Cholesky factor of `H_d⁻¹` (the reference's `Hinv`), row-major.
    u_inv: Vec<f32>,
    /// Upper triangular `R` with `H_d = R Rᵀ`, row-major (for exact loss traces).
    r_upper: Vec<f32>,
    added_diag: Vec<f32>,
    damp_percent: f32,
    diag_floor: bool,
}

/// Damps `h` and factors it, raising the damping after a failed Cholesky as GPTQModel does (steps of
/// `damp_auto_increment` while below 1), then one last try with the diagonal floored at its mean.
fn damped_factors(h: &[f32], k: usize, cfg: &QuantConfig) -> Result<Factors> {
    let mean = ((0..k).map(|i| h[i * k + i] as f64).sum::<f64>() / k as f64) as f32;
    if !(mean > 0.0 && mean.is_finite()) {
        return Err(Error::NotPositiveDefinite(format!(
            "the Hessian's mean diagonal is {mean}: it must be positive (are the activations all zero?)"
        )));
    }
    let mut damp = cfg.damp_percent;
    loop {
        let added = vec![damp * mean; k];
        if let Some(f) = factor(h, k, added, damp, false) {
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
    let added: Vec<f32> = (0..k).map(|i| (mean - h[i * k + i]).max(0.0) + mean).collect();
    factor(h, k, added, 1.0, true).ok_or_else(|| {
        Error::NotPositiveDefinite(format!(
            "Cholesky failed with damping raised to 1.0 and the diagonal floored at its mean ({mean}); \
             the Hessian is far from positive semi-definite"
        ))
    })
}

/// With J the exchange matrix, Cholesky of `J H_d J = L Lᵀ` gives `H_d = R Rᵀ` with `R = J L J` upper,
/// hence `H_d⁻¹ = R⁻ᵀ R⁻¹` and `R⁻¹` is the upper Cholesky factor of `H_d⁻¹`: one factorization and one
/// triangular inverse instead of the reference's three O(k³) steps.
fn factor(h: &[f32], k: usize, added: Vec<f32>, damp: f32, diag_floor: bool) -> Option<Factors> {
    // For a symmetric matrix the reversed flat array is J H J in either storage order.
    let mut l: Vec<f32> = h.iter().rev().copied().collect();
    for i in 0..k {
        l[i * k + i] += added[k - 1 - i];
    }
    let par = threads::faer_par();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f32>(k, par, Default::default()));
    let lm = MatMut::from_column_major_slice_mut(&mut l, k, k);
    cholesky_in_place(lm, LltRegularization::default(), par, MemStack::new(&mut mem), Default::default()).ok()?;
    let mut linv = vec![0f32; k * k];
    invert_lower_triangular(
        MatMut::from_column_major_slice_mut(&mut linv, k, k),
        MatRef::from_column_major_slice(&l, k, k),
        par,
    );
    if linv.iter().any(|v| !v.is_finite()) {
        return None;
    }
    // M(i, j) = L(k-1-i, k-1-j), stored column-major at [(k-1-j)·k + (k-1-i)]; written row-major.
    let unreverse = |src: &[f32]| {
        let mut dst = vec![0f32; k * k];
        dst.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate().skip(i) {
                *v = src[(k - 1 - j) * k + (k - 1 - i)];
            }
        });
        dst
    };
    Some(Factors { u_inv: unreverse(&linv), r_upper: unreverse(&l), added_diag: added, damp_percent: damp, diag_floor })
}

/// `W − Q` in processing order, with dead columns (zero Hessian diagonal) zeroed.
fn residual(w: &[f32], q: &Quantized, dead: &[usize], order: &[usize], k: usize) -> Vec<f32> {
    let deq = q.dequantize();
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(k).zip(w.par_chunks(k).zip(deq.par_chunks(k))).for_each(|(o, (wr, qr))| {
        for (pos, &c) in order.iter().enumerate() {
            o[pos] = wr[c] - qr[c];
        }
    });
    if !dead.is_empty() {
        let dead_pos: Vec<usize> = order.iter().enumerate().filter(|(_, c)| dead.contains(c)).map(|(p, _)| p).collect();
        out.par_chunks_mut(k).for_each(|o| dead_pos.iter().for_each(|&p| o[p] = 0.0));
    }
    out
}

/// `Σ_i added[i] · ‖δ[:, i]‖²`: the part of `tr(δ H_d δᵀ)` that comes from damping.
fn damping_term(delta: &[f32], k: usize, added: &[f32]) -> f64 {
    delta
        .par_chunks(k)
        .map(|row| row.iter().zip(added).map(|(&d, &a)| a as f64 * d as f64 * d as f64).sum::<f64>())
        .sum()
}

/// `tr(δ H_d δᵀ) = ‖δ R‖²_F` with one triangular matmul.
fn trace_with_factor(delta: &[f32], n: usize, k: usize, r: &[f32]) -> f64 {
    let mut prod = vec![0f32; n * k];
    tri_matmul(
        rm_mut(&mut prod, n, k, k),
        BlockStructure::Rectangular,
        Accum::Replace,
        rm(delta, n, k, k),
        BlockStructure::Rectangular,
        rm(r, k, k, k),
        BlockStructure::TriangularUpper,
        1.0f32,
        threads::faer_par(),
    );
    prod.par_iter().map(|&v| v as f64 * v as f64).sum()
}
