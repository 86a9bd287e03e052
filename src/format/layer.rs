//! A packed, quantized linear layer: the library's central value, produced by the quantizers, read
//! from and written to GPTQ tensors, dequantized, and multiplied by the GEMM kernels.

use super::pack::{extract, pack_qweight, pack_rows, unpack_qweight, unpack_rows};
use super::{check_layer_dims, CheckpointFormat};
use crate::cpu::gemm::GemmPlan;
use crate::error::{Error, Result};
use crate::quant::Quantized;
use crate::quant::config::{num_groups, QuantConfig};
use half::f16;
use once_cell::sync::OnceCell;

/// Shape and quantization parameters of a packed layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerDesc {
    pub bits: u32,
    pub group_size: Option<usize>,
    pub in_features: usize,
    pub out_features: usize,
    pub sym: bool,
}

impl LayerDesc {
    pub fn num_groups(&self) -> usize {
        num_groups(self.in_features, self.group_size)
    }
    /// Rows of `qweight`: `in·bits/32`.
    pub fn qweight_rows(&self) -> usize {
        self.in_features * self.bits as usize / 32
    }
    /// Columns of `qzeros`: `out·bits/32`.
    pub fn qzeros_cols(&self) -> usize {
        self.out_features * self.bits as usize / 32
    }
    fn validate(&self) -> Result<()> {
        check_layer_dims(self.bits, self.in_features, self.out_features)?;
        QuantConfig::group_size_from_i32(self.group_size.map_or(-1, |g| g as i32))?;
        Ok(())
    }
}

/// Borrowed GPTQ tensors, as found in a checkpoint (int32 words reinterpreted as u32 when unpacking).
#[derive(Debug, Clone, Copy)]
pub struct PackedRef<'a> {
    pub qweight: &'a [i32],
    pub qzeros: &'a [i32],
    pub scales: &'a [f16],
    /// `None` means the trivial `g_idx[k] = k / group_size`.
    pub g_idx: Option<&'a [i32]>,
    pub bias: Option<&'a [f16]>,
}

/// Owned GPTQ tensors in one checkpoint format.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTensors {
    pub qweight: Vec<i32>,
    pub qzeros: Vec<i32>,
    pub scales: Vec<f16>,
    pub g_idx: Vec<i32>,
    pub bias: Option<Vec<f16>>,
}

/// A quantized layer in GPTQ's packed layout. Immutable once built, so it may be shared across threads.
#[derive(Debug)]
pub struct QuantizedLayer {
    desc: LayerDesc,
    /// `[in·bits/32, out]`, GPTQ packing along K.
    qweight: Vec<u32>,
    /// `[G, out]`: true zero points. A v1 checkpoint can encode `2^bits` (a wrapped zero of 0).
    zeros: Vec<u32>,
    /// `[G, out]`.
    scales: Vec<f16>,
    /// `[in]`.
    g_idx: Vec<u32>,
    bias: Option<Vec<f16>>,
    /// Built on first CPU GEMM.
    gemm_plan: OnceCell<GemmPlan>,
}

impl QuantizedLayer {
    /// Packs a quantizer result (scales rounded to f16).
    pub fn from_quantized(q: &Quantized) -> Self {
        let (n, g) = (q.out_features, q.num_groups());
        let mut zeros = vec![0u32; g * n];
        let mut scales = vec![f16::ZERO; g * n];
        for r in 0..n {
            for gi in 0..g {
                zeros[gi * n + r] = q.zeros[r * g + gi];
                scales[gi * n + r] = f16::from_f32(q.scales[r * g + gi]);
            }
        }
        QuantizedLayer {
            desc: LayerDesc {
                bits: q.bits,
                group_size: q.group_size,
                in_features: q.in_features,
                out_features: n,
                sym: q.sym,
            },
            qweight: pack_qweight(&q.codes, q.bits, n, q.in_features),
            zeros,
            scales,
            g_idx: q.g_idx.clone(),
            bias: None,
            gemm_plan: OnceCell::new(),
        }
    }

    /// Validates GPTQ tensors against `desc` and builds a layer from them. Every field is checked
    /// (lengths, g_idx range, zero point range, symmetric zero points, finite scales and bias)
    /// before anything is accepted.
    pub fn from_packed(desc: LayerDesc, format: CheckpointFormat, t: PackedRef<'_>) -> Result<Self> {
        desc.validate()?;
        let (k, n, g) = (desc.in_features, desc.out_features, desc.num_groups());
        let expect = |name: &str, got: usize, want: usize, shape: String| {
            if got == want {
                Ok(())
            } else {
                Err(Error::Shape(format!("{name} has {got} elements, expected {want} ({shape})")))
            }
        };
        expect("qweight", t.qweight.len(), desc.qweight_rows() * n, format!("[{}, {n}]", desc.qweight_rows()))?;
        expect("qzeros", t.qzeros.len(), g * desc.qzeros_cols(), format!("[{g}, {}]", desc.qzeros_cols()))?;
        expect("scales", t.scales.len(), g * n, format!("[{g}, {n}]"))?;
        if let Some(gi) = t.g_idx {
            expect("g_idx", gi.len(), k, format!("[{k}]"))?;
        }
        if let Some(b) = t.bias {
            expect("bias", b.len(), n, format!("[{n}]"))?;
            if let Some(i) = b.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite(format!("bias[{i}] is NaN or infinite")));
            }
        }
        if let Some(i) = t.scales.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("scales[{}, {}] is NaN or infinite", i / n, i % n)));
        }
        let g_idx: Vec<u32> = match t.g_idx {
            Some(gi) => {
                if let Some((i, v)) = gi.iter().enumerate().find(|(_, v)| **v < 0 || **v as usize >= g) {
                    return Err(Error::InvalidFormat(format!(
                        "g_idx[{i}] = {v} is outside [0, {g}) for {g} groups"
                    )));
                }
                gi.iter().map(|&v| v as u32).collect()
            }
            None => trivial_g_idx(k, desc.group_size),
        };
        let words: Vec<u32> = t.qzeros.iter().map(|&v| v as u32).collect();
        let stored = unpack_rows(&words, desc.bits, n);
        let zeros: Vec<u32> = match format {
            CheckpointFormat::V1 => stored.iter().map(|&z| z + 1).collect(),
            CheckpointFormat::V2 => stored,
        };
        if desc.sym {
            let mid = 1u32 << (desc.bits - 1);
            if let Some(i) = zeros.iter().position(|&z| z != mid) {
                return Err(Error::InvalidFormat(format!(
                    "layer is symmetric but zero point [{}, {}] is {} instead of {mid} (wrong checkpoint_format?)",
                    i / n,
                    i % n,
                    zeros[i]
                )));
            }
        }
        Ok(QuantizedLayer {
            desc,
            qweight: t.qweight.iter().map(|&v| v as u32).collect(),
            zeros,
            scales: t.scales.to_vec(),
            g_idx,
            bias: t.bias.map(|b| b.to_vec()),
            gemm_plan: OnceCell::new(),
        })
    }

    /// The layer's tensors in `format`. A zero point that `format` cannot store fails: v1 cannot hold a
    /// zero of 0 (it would wrap to `2^bits`), v2 cannot hold `2^bits` (only a v1 import produces it).
    pub fn to_packed(&self, format: CheckpointFormat) -> Result<PackedTensors> {
        let (n, bits) = (self.desc.out_features, self.desc.bits);
        let max = (1u32 << bits) - 1;
        let stored: Vec<u32> = match format {
            CheckpointFormat::V1 => self
                .zeros
                .iter()
                .enumerate()
                .map(|(i, &z)| match z {
                    0 => Err(Error::Unsupported(format!(
                        "zero point [{}, {}] is 0, which GPTQ v1 cannot store (it stores zero − 1); \
                         export as v2 (checkpoint_format gptq_v2)",
                        i / n,
                        i % n
                    ))),
                    z => Ok(z - 1),
                })
                .collect::<Result<_>>()?,
            CheckpointFormat::V2 => self
                .zeros
                .iter()
                .enumerate()
                .map(|(i, &z)| {
                    if z > max {
                        Err(Error::Unsupported(format!(
                            "zero point [{}, {}] is {z}, which does not fit in {bits} bits (v2)",
                            i / n,
                            i % n
                        )))
                    } else {
                        Ok(z)
                    }
                })
                .collect::<Result<_>>()?,
        };
        Ok(PackedTensors {
            qweight: self.qweight.iter().map(|&v| v as i32).collect(),
            qzeros: pack_rows(&stored, bits, n).into_iter().map(|v| v as i32).collect(),
            scales: self.scales.clone(),
            g_idx: self.g_idx.iter().map(|&v| v as i32).collect(),
            bias: self.bias.clone(),
        })
    }

    pub fn desc(&self) -> &LayerDesc {
        &self.desc
    }
    pub fn qweight(&self) -> &[u32] {
        &self.qweight
    }
    /// True zero points, `[G, out]`.
    pub fn zeros(&self) -> &[u32] {
        &self.zeros
    }
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }
    pub fn g_idx(&self) -> &[u32] {
        &self.g_idx
    }
    pub fn bias(&self) -> Option<&[f16]> {
        self.bias.as_deref()
    }
    /// Whether `g_idx` differs from `k / group_size` (an act-order layer).
    pub fn has_act_order(&self) -> bool {
        self.g_idx != trivial_g_idx(self.desc.in_features, self.desc.group_size)
    }
    /// Unpacked integer codes, `[out, in]`.
    pub fn codes(&self) -> Vec<u8> {
        unpack_qweight(&self.qweight, self.desc.bits, self.desc.out_features, self.desc.in_features)
    }

    /// The same layer with its codes packed at `bits` (more than its own): the same weights, zero
    /// points, scales, g_idx and bias, for kernels that read only wider codes (the CUDA kernels run
    /// 2- and 3-bit layers as 4-bit ones). Marked asymmetric, since its zero points are not the
    /// wider format's midpoint.
    pub fn widened(&self, bits: u32) -> Result<QuantizedLayer> {
        let d = self.desc;
        if bits <= d.bits {
            return Err(Error::InvalidArgument(format!("cannot widen a {}-bit layer to {bits} bits", d.bits)));
        }
        check_layer_dims(bits, d.in_features, d.out_features)?;
        Ok(QuantizedLayer {
            desc: LayerDesc { bits, sym: false, ..d },
            qweight: pack_qweight(&self.codes(), bits, d.out_features, d.in_features),
            zeros: self.zeros.clone(),
            scales: self.scales.clone(),
            g_idx: self.g_idx.clone(),
            bias: self.bias.clone(),
            gemm_plan: OnceCell::new(),
        })
    }

    /// Code of weight `(n, k)`.
    #[inline(always)]
    pub(crate) fn code(&self, n: usize, k: usize) -> u32 {
        let out = self.desc.out_features;
        extract(k, self.desc.bits, |w| self.qweight[w * out + n])
    }

    /// `scale · (code − zero)` with the f16 scales, into `out` (`[out, in]`, f32).
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let (k, n) = (self.desc.in_features, self.desc.out_features);
        use rayon::prelude::*;
        crate::cpu::threads::install(|| {
            out.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
                for (c, o) in row.iter_mut().enumerate() {
                    let gi = self.g_idx[c] as usize * n + r;
                    *o = self.scales[gi].to_f32() * (self.code(r, c) as f32 - self.zeros[gi] as f32);
                }
            })
        });
    }

    pub(crate) fn gemm_plan(&self) -> &GemmPlan {
        self.gemm_plan.get_or_init(|| GemmPlan::new(self))
    }
}

/// `g_idx[k] = k / group_size` (all zeros for one group per row).
pub fn trivial_g_idx(k: usize, group_size: Option<usize>) -> Vec<u32> {
    let gs = group_size.unwrap_or(k);
    (0..k).map(|c| (c / gs) as u32).collect()
}
