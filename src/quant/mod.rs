//! GPTQ and round-to-nearest quantization of one linear layer (CPU).

pub mod config;
pub mod gptq;
pub mod hessian;
pub mod params;
pub mod rtn;

pub use config::{MseSearch, QuantConfig};
pub use gptq::quantize_gptq;
pub use hessian::{Hessian, SampleCount};
pub use rtn::quantize_rtn;

use params::{dequantize_code, GroupParams};

/// A quantized layer before packing: integer codes and f32 group parameters, original column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub bits: u32,
    pub group_size: Option<usize>,
    pub sym: bool,
    pub out_features: usize,
    pub in_features: usize,
    /// `[out, in]`, one code per weight.
    pub codes: Vec<u8>,
    /// `[out, G]`, f32 as the solver computed them (packing rounds them to f16).
    pub scales: Vec<f32>,
    /// `[out, G]`, integer zero points.
    pub zeros: Vec<u32>,
    /// `[in]`: group of each input column.
    pub g_idx: Vec<u32>,
    /// Processing order when columns were reordered (position `p` handled column `perm[p]`).
    pub perm: Option<Vec<u32>>,
}

impl Quantized {
    /// Number of groups `G`.
    pub fn num_groups(&self) -> usize {
        self.scales.len() / self.out_features
    }

    /// `scale · (code − zero)` in f32 with the f32 scales, `[out, in]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let (k, g) = (self.in_features, self.num_groups());
        let mut out = vec![0f32; self.codes.len()];
        for (r, row) in out.chunks_exact_mut(k).enumerate() {
            for (c, o) in row.iter_mut().enumerate() {
                let gi = r * g + self.g_idx[c] as usize;
                let p = GroupParams { scale: self.scales[gi], zero: self.zeros[gi] as f32 };
                *o = dequantize_code(self.codes[r * k + c] as f32, p);
            }
        }
        out
    }
}

/// What a quantization run reports besides its result.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuantReport {
    /// The solver's own estimate, `Σ (w − q)² / (2·Hinv[j,j]²)` (what the reference logs as the error).
    pub loss_estimate: f64,
    /// `tr((W − Q) H (W − Q)ᵀ)` of this result on the undamped Hessian.
    pub loss_gptq: f64,
    /// The same trace for round-to-nearest with the same bits and groups (NaN unless requested).
    pub loss_rtn: f64,
    /// `damp_percent` finally used (larger than requested when a Cholesky failed).
    pub damp_percent_used: f32,
    /// Whether the last-resort diagonal floor was needed.
    pub diag_floor_used: bool,
    /// Wall-clock seconds of the whole call.
    pub seconds: f64,
    /// Floating-point operations of the solver proper (Cholesky, inverse, updates).
    pub flops: f64,
}
