//! `gptq_layer`: a packed quantized layer; import/export of GPTQ tensors, dequantization, CPU GEMM.

use super::boundary::*;
use super::status::gptq_status;
use super::types::*;
use crate::error::{Error, Result};
use crate::format::{CheckpointFormat, LayerDesc, PackedRef, QuantizedLayer};
use crate::quant::QuantConfig;
use crate::tensor::{strided_span, DType, MatView};
use half::f16;
use std::ffi::c_void;

/// A packed GPTQ layer. Immutable: every function that takes a `const gptq_layer *` may run on the
/// same handle from several threads at once. Free with `gptq_layer_free`.
pub struct gptq_layer {
    pub(crate) inner: QuantizedLayer,
}

impl gptq_layer {
    pub(crate) fn new(inner: QuantizedLayer) -> Self {
        gptq_layer { inner }
    }
}

/// Shape and parameters of a packed layer (for `gptq_layer_import`). Set `struct_size =
/// sizeof(gptq_layer_desc)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gptq_layer_desc {
    pub struct_size: usize,
    /// 2, 3, 4 or 8.
    pub bits: u32,
    /// -1, 16, 32, 64, 128, 256, 512 or 1024.
    pub group_size: i32,
    pub in_features: usize,
    pub out_features: usize,
    /// 1 if symmetric: every zero point must then be `2^(bits-1)`.
    pub sym: i32,
    /// `GPTQ_FORMAT_V1` or `GPTQ_FORMAT_V2`: how `qzeros` stores zero points.
    pub format: gptq_format,
}

const DESC_V1_SIZE: usize = std::mem::size_of::<gptq_layer_desc>();

/// Everything needed to size export buffers. Filled by `gptq_layer_info`; set
/// `struct_size = sizeof(gptq_layer_properties)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gptq_layer_properties {
    pub struct_size: usize,
    pub bits: u32,
    pub group_size: i32,
    pub in_features: usize,
    pub out_features: usize,
    /// Groups `G` (rows of `scales` and `qzeros`).
    pub num_groups: usize,
    pub sym: i32,
    /// 1 when `g_idx` is not `k / group_size` (act-order).
    pub act_order: i32,
    pub has_bias: i32,
    /// Rows of `qweight` (`in_features · bits / 32`); `qweight` has `qweight_rows · out_features` words.
    pub qweight_rows: usize,
    /// Columns of `qzeros` (`out_features · bits / 32`); `qzeros` has `num_groups · qzeros_cols` words.
    pub qzeros_cols: usize,
}

pub(crate) const INFO_V1_SIZE: usize = std::mem::size_of::<gptq_layer_properties>();

impl gptq_layer_properties {
    pub(crate) fn new(d: &LayerDesc, act_order: bool, has_bias: bool) -> Self {
        gptq_layer_properties {
            struct_size: INFO_V1_SIZE,
            bits: d.bits,
            group_size: d.group_size.map_or(-1, |g| g as i32),
            in_features: d.in_features,
            out_features: d.out_features,
            num_groups: d.num_groups(),
            sym: d.sym as i32,
            act_order: act_order as i32,
            has_bias: has_bias as i32,
            qweight_rows: d.qweight_rows(),
            qzeros_cols: d.qzeros_cols(),
        }
    }
}

fn format(v: gptq_format) -> Result<CheckpointFormat> {
    match v {
        GPTQ_FORMAT_V1 => Ok(CheckpointFormat::V1),
        GPTQ_FORMAT_V2 => Ok(CheckpointFormat::V2),
        _ => Err(Error::InvalidEnum(format!("format: {v} is not a gptq_format"))),
    }
}

/// Describes a layer. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_STRUCT_SIZE`; on error
/// `*info` is untouched. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_layer_info(layer: *const gptq_layer, info: *mut gptq_layer_properties) -> gptq_status {
    guard(|| {
        let l = &unsafe { deref(layer, "layer")? }.inner;
        let value = gptq_layer_properties::new(l.desc(), l.has_act_order(), l.bias().is_some());
        unsafe { write_versioned(info, &value, INFO_V1_SIZE, "info") }
    })
}

/// Copies `src` into a caller buffer of `len` elements that must hold exactly `src.len()`.
unsafe fn export_into<'a, T: Copy>(src: &[T], dst: *mut T, len: usize, name: &str) -> Result<&'a mut [T]> {
    if len != src.len() {
        return Err(Error::BufferTooSmall(format!("{name} has room for {len} elements, the layer needs exactly {}", src.len())));
    }
    unsafe { slice_mut(dst, len, name) }
}

/// Writes the layer's GPTQ tensors in `format` into caller buffers, sized per `gptq_layer_info`:
/// `qweight` int32 `[qweight_rows, out_features]`, `qzeros` int32 `[num_groups, qzeros_cols]`,
/// `scales` fp16 bits `[num_groups, out_features]`, `g_idx` int32 `[in_features]`, and `bias` fp16
/// bits `[out_features]`. Each `*_len` is that buffer's length in elements and must match exactly.
/// `bias` may be NULL (not written); it must be NULL when the layer has no bias.
///
/// All checks happen before anything is written: on error no buffer is touched. Returns
/// `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM`, `_BUFFER_TOO_SMALL`,
/// `_INVALID_ARGUMENT` (bias requested but absent), `_UNSUPPORTED` (a zero point the format cannot
/// store: 0 in v1, 2^bits in v2). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_layer_export(
    layer: *const gptq_layer,
    format: gptq_format,
    qweight: *mut i32,
    qweight_len: usize,
    qzeros: *mut i32,
    qzeros_len: usize,
    scales: *mut u16,
    scales_len: usize,
    g_idx: *mut i32,
    g_idx_len: usize,
    bias: *mut u16,
    bias_len: usize,
) -> gptq_status {
    guard(|| {
        let l = &unsafe { deref(layer, "layer")? }.inner;
        let t = l.to_packed(self::format(format)?)?;
        let scale_bits: Vec<u16> = t.scales.iter().map(|v| v.to_bits()).collect();
        let bias_bits: Option<Vec<u16>> = t.bias.as_ref().map(|b| b.iter().map(|v| v.to_bits()).collect());
        let qw = unsafe { export_into(&t.qweight, qweight, qweight_len, "qweight")? };
        let qz = unsafe { export_into(&t.qzeros, qzeros, qzeros_len, "qzeros")? };
        let sc = unsafe { export_into(&scale_bits, scales, scales_len, "scales")? };
        let gi = unsafe { export_into(&t.g_idx, g_idx, g_idx_len, "g_idx")? };
        let bi = match (&bias_bits, bias.is_null()) {
            (_, true) => None,
            (Some(b), false) => Some((b, unsafe { export_into(b, bias, bias_len, "bias")? })),
            (None, false) => {
                return Err(Error::InvalidArgument("bias is not NULL but the layer has no bias".into()));
            }
        };
        qw.copy_from_slice(&t.qweight);
        qz.copy_from_slice(&t.qzeros);
        sc.copy_from_slice(&scale_bits);
        gi.copy_from_slice(&t.g_idx);
        if let Some((src, dst)) = bi {
            dst.copy_from_slice(src);
        }
        Ok(())
    })
}

/// Builds a layer from GPTQ tensors (as stored in a checkpoint), validating every field first:
/// lengths against `desc`, `g_idx` range, zero points (symmetric layers must have `2^(bits-1)`),
/// finite scales and bias. Buffers are laid out as for `gptq_layer_export` and are copied; they may be
/// freed after the call. `g_idx` may be NULL (meaning `k / group_size`); `bias` may be NULL.
///
/// On success `*out` receives a new caller-owned layer; on error it is untouched. Returns
/// `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_STRUCT_SIZE`, `_INVALID_ENUM`,
/// `_INVALID_ARGUMENT`, `_UNSUPPORTED`, `_SHAPE_MISMATCH`, `_INVALID_FORMAT`, `_NON_FINITE`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_layer_import(
    desc: *const gptq_layer_desc,
    qweight: *const i32,
    qweight_len: usize,
    qzeros: *const i32,
    qzeros_len: usize,
    scales: *const u16,
    scales_len: usize,
    g_idx: *const i32,
    g_idx_len: usize,
    bias: *const u16,
    bias_len: usize,
    out: *mut *mut gptq_layer,
) -> gptq_status {
    guard(|| {
        let d = unsafe { read_versioned(desc, DESC_V1_SIZE, "desc")? };
        let out = unsafe { deref_mut(out, "out")? };
        let core = LayerDesc {
            bits: d.bits,
            group_size: QuantConfig::group_size_from_i32(d.group_size)?,
            in_features: d.in_features,
            out_features: d.out_features,
            sym: flag(d.sym, "desc.sym")?,
        };
        let fmt = format(d.format)?;
        let t = PackedRef {
            qweight: unsafe { slice(qweight, qweight_len, "qweight")? },
            qzeros: unsafe { slice(qzeros, qzeros_len, "qzeros")? },
            scales: unsafe { slice(scales.cast::<f16>(), scales_len, "scales")? },
            g_idx: unsafe { opt_slice(g_idx, g_idx_len, "g_idx")? },
            bias: unsafe { opt_slice(bias.cast::<f16>(), bias_len, "bias")? },
        };
        *out = into_handle(gptq_layer::new(QuantizedLayer::from_packed(core, fmt, t)?));
        Ok(())
    })
}

/// Dequantizes the layer to `out`, `[out_features, in_features]` row-major (the `nn.Linear` weight
/// layout), as F32 or F16 (`out_dtype`); `out_len` is its length in elements.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM`, `_BUFFER_TOO_SMALL`; on
/// error `out` is untouched. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_layer_dequantize(
    layer: *const gptq_layer,
    out_dtype: gptq_dtype,
    out: *mut c_void,
    out_len: usize,
) -> gptq_status {
    guard(|| {
        let l = &unsafe { deref(layer, "layer")? }.inner;
        let d = l.desc();
        let need = d.out_features * d.in_features;
        if out_len < need {
            return Err(Error::BufferTooSmall(format!("out holds {out_len} elements, the layer has {need}")));
        }
        match dtype(out_dtype, "out_dtype")? {
            DType::F32 => l.dequantize_into(&mut unsafe { slice_mut(out.cast::<f32>(), out_len, "out")? }[..need]),
            DType::F16 => {
                let o = unsafe { slice_mut(out.cast::<f16>(), out_len, "out")? };
                let mut tmp = vec![0f32; need];
                l.dequantize_into(&mut tmp);
                o.iter_mut().zip(&tmp).for_each(|(o, v)| *o = f16::from_f32(*v));
            }
            _ => return Err(Error::InvalidEnum("out_dtype must be F32 or F16".into())),
        }
        Ok(())
    })
}

/// CPU dequant-GEMM: `C[m, out_features] = A[m, in_features] · dequant(W)ᵀ (+ the layer's bias)`.
///
/// `a` is F32, F16 or BF16 with row stride `lda ≥ in_features`; `c` is F32 or F16 with row stride
/// `ldc ≥ out_features` (both in elements, buffers of `(m−1)·ld + cols` elements at least). Only the
/// `[m, out_features]` window of `c` is written, and only on success. Uses the library's thread pool.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM`, `_INVALID_ARGUMENT`
/// (strides), `_SHAPE_MISMATCH` (m = 0), `_NON_FINITE` (in A), `_OUT_OF_MEMORY`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_gemm(
    layer: *const gptq_layer,
    a: *const c_void,
    a_dtype: gptq_dtype,
    m: usize,
    lda: usize,
    c: *mut c_void,
    c_dtype: gptq_dtype,
    ldc: usize,
) -> gptq_status {
    guard(|| {
        let l = &unsafe { deref(layer, "layer")? }.inner;
        let d = l.desc();
        let (k, n) = (d.in_features, d.out_features);
        let adt = dtype(a_dtype, "a_dtype")?;
        if adt == DType::F64 {
            return Err(Error::InvalidEnum("a_dtype must be F32, F16 or BF16".into()));
        }
        if m == 0 {
            return Err(Error::Shape("m must be non-zero".into()));
        }
        if lda < k {
            return Err(Error::InvalidArgument(format!("lda {lda} is smaller than in_features {k}")));
        }
        if ldc < n {
            return Err(Error::InvalidArgument(format!("ldc {ldc} is smaller than out_features {n}")));
        }
        let a_span = strided_span(m, k, lda).ok_or_else(|| Error::OutOfMemory("A's extent overflows".into()))?;
        let c_span = strided_span(m, n, ldc).ok_or_else(|| Error::OutOfMemory("C's extent overflows".into()))?;
        let av = MatView::new(unsafe { elements(a, adt, a_span, "a")? }, m, k, lda, "A")?;
        let cv = match dtype(c_dtype, "c_dtype")? {
            DType::F32 => crate::cpu::OutMatMut::F32(unsafe { slice_mut(c.cast::<f32>(), c_span, "c")? }),
            DType::F16 => crate::cpu::OutMatMut::F16(unsafe { slice_mut(c.cast::<f16>(), c_span, "c")? }),
            _ => return Err(Error::InvalidEnum("c_dtype must be F32 or F16".into())),
        };
        crate::cpu::gemm(l, &av, cv, ldc)
    })
}

/// Frees a layer. NULL is a no-op. The handle must not be in use by another thread or used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_layer_free(layer: *mut gptq_layer) {
    unsafe { free_handle(layer) }
}
