//! Round-to-nearest: every natural group quantized on its own, the baseline GPTQ is compared with.

use super::config::{num_groups, QuantConfig};
use super::params::{find_params, quantize_code};
use super::Quantized;
use crate::cpu::threads;
use crate::error::Result;
use crate::tensor::MatView;
use rayon::prelude::*;

/// Quantizes `w` (`[out, in]`) group by group with no error feedback.
pub fn quantize_rtn(w: &MatView<'_>, cfg: &QuantConfig) -> Result<Quantized> {
    cfg.validate()?;
    w.check_finite("weight")?;
    crate::format::check_layer_dims(cfg.bits, w.cols(), w.rows())?;
    Ok(rtn_dense(&w.to_f32(), w.rows(), w.cols(), cfg))
}

/// RTN of a dense f32 `[n, k]` matrix (already validated).
pub(crate) fn rtn_dense(w: &[f32], n: usize, k: usize, cfg: &QuantConfig) -> Quantized {
    let g = num_groups(k, cfg.group_size);
    let gs = cfg.group_size.unwrap_or(k);
    let maxq = cfg.maxq();
    let mut codes = vec![0u8; n * k];
    let mut scales = vec![0f32; n * g];
    let mut zeros = vec![0u32; n * g];
    threads::install(|| {
        codes
            .par_chunks_mut(k)
            .zip(scales.par_chunks_mut(g).zip(zeros.par_chunks_mut(g)))
            .enumerate()
            .for_each(|(r, (crow, (srow, zrow)))| {
                let wrow = &w[r * k..(r + 1) * k];
                for gi in 0..g {
                    let cols = gi * gs..((gi + 1) * gs).min(k);
                    let p = find_params(&wrow[cols.clone()], maxq, cfg.sym, cfg.mse);
                    srow[gi] = p.scale;
                    zrow[gi] = p.zero as u32;
                    for c in cols {
                        crow[c] = quantize_code(wrow[c], p, maxq as f32) as u8;
                    }
                }
            })
    });
    Quantized {
        bits: cfg.bits,
        group_size: cfg.group_size,
        sym: cfg.sym,
        out_features: n,
        in_features: k,
        codes,
        scales,
        zeros,
        g_idx: (0..k).map(|c| (c / gs) as u32).collect(),
        perm: None,
    }
}
