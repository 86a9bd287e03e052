//! Quantization options and the GPTQ / RTN entry points.

use super::boundary::*;
use super::hessian::gptq_hessian;
use super::layer::gptq_layer;
use super::status::gptq_status;
use super::types::gptq_dtype;
use crate::error::{Error, Result};
use crate::format::QuantizedLayer;
use crate::quant::{quantize_gptq, quantize_rtn, MseSearch, QuantConfig, QuantReport};
use crate::tensor::{strided_span, DType, MatView};
use std::ffi::c_void;

/// Quantization options. Always fill with `gptq_quant_config_init` first, then change fields, so that
/// fields added in later versions keep their defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gptq_quant_config {
    /// `sizeof(gptq_quant_config)` as the caller compiled it (set by `gptq_quant_config_init`).
    pub struct_size: usize,
    /// 2, 3, 4 or 8. Default 4.
    pub bits: u32,
    /// -1 (one group per row), 16, 32, 64, 128, 256, 512 or 1024. Default 128.
    pub group_size: i32,
    /// 1: symmetric (zero point at the midpoint), 0: asymmetric. Default 1.
    pub sym: i32,
    /// 1: act-order, process columns by descending Hessian diagonal. Default 0.
    pub desc_act: i32,
    /// 1: compute all group parameters up front from the un-permuted weight. Default 0.
    pub static_groups: i32,
    /// 1: group-aware act-order (GPTQModel's `act_group_aware`); `g_idx` stays trivial. Excludes
    /// `desc_act`. Default 0.
    pub act_group_aware: i32,
    /// Damping added to the Hessian diagonal, as a fraction of its mean, in (0, 1). Default 0.01.
    pub damp_percent: f32,
    /// Step by which damping is raised after a failed Cholesky, in [0, 1); 0 fails at once. Default 0.01.
    pub damp_auto_increment: f32,
    /// Columns per lazy-batch block, 1..=4096. Default 128.
    pub block_size: u32,
    /// 1: search the clipping range minimizing `Σ|q − w|^mse_norm`. Default 0.
    pub mse: i32,
    /// Error norm of the MSE search. Default 2.4.
    pub mse_norm: f32,
    /// Grid resolution of the MSE search. Default 100.
    pub mse_grid: u32,
    /// Largest shrink of the MSE search, in (0, 1]. Default 0.8.
    pub mse_max_shrink: f32,
}

impl Default for gptq_quant_config {
    fn default() -> Self {
        let c = QuantConfig::default();
        let m = MseSearch::default();
        gptq_quant_config {
            struct_size: std::mem::size_of::<Self>(),
            bits: c.bits,
            group_size: c.group_size_i32(),
            sym: c.sym as i32,
            desc_act: c.desc_act as i32,
            static_groups: c.static_groups as i32,
            act_group_aware: c.act_group_aware as i32,
            damp_percent: c.damp_percent,
            damp_auto_increment: c.damp_auto_increment,
            block_size: c.block_size as u32,
            mse: 0,
            mse_norm: m.norm,
            mse_grid: m.grid,
            mse_max_shrink: m.max_shrink,
        }
    }
}

impl gptq_quant_config {
    fn to_core(self) -> Result<QuantConfig> {
        let cfg = QuantConfig {
            bits: self.bits,
            group_size: QuantConfig::group_size_from_i32(self.group_size)?,
            sym: flag(self.sym, "config.sym")?,
            desc_act: flag(self.desc_act, "config.desc_act")?,
            static_groups: flag(self.static_groups, "config.static_groups")?,
            act_group_aware: flag(self.act_group_aware, "config.act_group_aware")?,
            damp_percent: self.damp_percent,
            damp_auto_increment: self.damp_auto_increment,
            block_size: self.block_size as usize,
            mse: flag(self.mse, "config.mse")?.then_some(MseSearch {
                norm: self.mse_norm,
                grid: self.mse_grid,
                max_shrink: self.mse_max_shrink,
            }),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

const CONFIG_V1_SIZE: usize = std::mem::size_of::<gptq_quant_config>();

/// What `gptq_quantize` measured. Set `struct_size = sizeof(gptq_quant_report)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gptq_quant_report {
    /// `sizeof(gptq_quant_report)` as the caller compiled it; the library writes no further.
    pub struct_size: usize,
    /// The solver's own estimate `Σ (w − q)² / (2·Hinv[j,j]²)` (the error the reference logs).
    pub loss_estimate: f64,
    /// `tr((W − Q) H (W − Q)ᵀ)` of the GPTQ result on the undamped Hessian.
    pub loss_gptq: f64,
    /// The same trace for round-to-nearest with the same bits and groups.
    pub loss_rtn: f64,
    /// Damping finally used (above the requested value when a Cholesky failed and was retried).
    pub damp_percent_used: f32,
    /// 1 when the last-resort diagonal floor was needed.
    pub diag_floor_used: i32,
    /// Wall-clock seconds of the call.
    pub seconds: f64,
}

const REPORT_V1_SIZE: usize = std::mem::size_of::<gptq_quant_report>();

/// Fills `*config` with the defaults (4 bit, group 128, symmetric, damp 0.01, block 128, no act-order).
/// Pass `struct_size = sizeof(gptq_quant_config)`; at most that many bytes are written.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_STRUCT_SIZE`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_quant_config_init(config: *mut gptq_quant_config, struct_size: usize) -> gptq_status {
    guard(|| {
        if config.is_null() {
            return Err(Error::NullPointer("config is NULL".into()));
        }
        if struct_size < CONFIG_V1_SIZE {
            return Err(Error::StructSize(format!(
                "struct_size {struct_size} is smaller than gptq_quant_config ({CONFIG_V1_SIZE})"
            )));
        }
        let c = unsafe { deref_mut(config, "config")? };
        *c = gptq_quant_config { struct_size, ..Default::default() };
        Ok(())
    })
}

/// Weight `[out_features, in_features]` with a row stride, as a checked view.
unsafe fn weight_view<'a>(
    weight: *const c_void,
    dtype: gptq_dtype,
    out_features: usize,
    in_features: usize,
    row_stride: usize,
) -> Result<MatView<'a>> {
    let dt = super::boundary::dtype(dtype, "dtype")?;
    if dt == DType::F64 {
        return Err(Error::InvalidEnum("dtype: weights must be F32, F16 or BF16".into()));
    }
    if out_features == 0 || in_features == 0 {
        return Err(Error::Shape(format!(
            "weight dimensions must be non-zero, got [{out_features}, {in_features}]"
        )));
    }
    if row_stride < in_features {
        return Err(Error::InvalidArgument(format!(
            "row_stride {row_stride} is smaller than in_features {in_features}"
        )));
    }
    let span = strided_span(out_features, in_features, row_stride)
        .ok_or_else(|| Error::OutOfMemory("weight: out_features × row_stride overflows".into()))?;
    let data = unsafe { elements(weight, dt, span, "weight")? };
    MatView::new(data, out_features, in_features, row_stride, "weight")
}

/// Quantizes one linear layer with GPTQ.
///
/// `weight` is the `nn.Linear` weight `[out_features, in_features]` (F32, F16 or BF16, row stride
/// `row_stride` elements), read only during the call. `hessian` must have `in_features` inputs and at
/// least one sample. On success `*out` receives a new caller-owned layer (free with
/// `gptq_layer_free`) and, when `report` is not NULL, `*report` is filled; on error neither is
/// touched. `hessian`, `weight`, `config` and `out` must not be NULL.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM`, `_STRUCT_SIZE`,
/// `_INVALID_ARGUMENT`, `_SHAPE_MISMATCH`, `_UNSUPPORTED`, `_NON_FINITE`, `_NOT_POSITIVE_DEFINITE`,
/// `_POISONED`, `_OUT_OF_MEMORY`. Thread-safe; the Hessian is locked for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_quantize(
    hessian: *const gptq_hessian,
    weight: *const c_void,
    dtype: gptq_dtype,
    out_features: usize,
    in_features: usize,
    row_stride: usize,
    config: *const gptq_quant_config,
    out: *mut *mut gptq_layer,
    report: *mut gptq_quant_report,
) -> gptq_status {
    guard(|| {
        let h = unsafe { deref(hessian, "hessian")? };
        let cfg = unsafe { read_versioned(config, CONFIG_V1_SIZE, "config")? }.to_core()?;
        let out = unsafe { deref_mut(out, "out")? };
        if !report.is_null() {
            unsafe { read_versioned(report.cast_const(), REPORT_V1_SIZE, "report")? };
        }
        let w = unsafe { weight_view(weight, dtype, out_features, in_features, row_stride)? };
        let (q, r) = quantize_gptq(&w, &*h.lock()?, &cfg, !report.is_null())?;
        if !report.is_null() {
            unsafe { write_versioned(report, &report_to_c(&r), REPORT_V1_SIZE, "report")? };
        }
        *out = into_handle(gptq_layer::new(QuantizedLayer::from_quantized(&q)));
        Ok(())
    })
}

fn report_to_c(r: &QuantReport) -> gptq_quant_report {
    gptq_quant_report {
        struct_size: REPORT_V1_SIZE,
        loss_estimate: r.loss_estimate,
        loss_gptq: r.loss_gptq,
        loss_rtn: r.loss_rtn,
        damp_percent_used: r.damp_percent_used,
        diag_floor_used: r.diag_floor_used as i32,
        seconds: r.seconds,
    }
}

/// Quantizes one linear layer with round-to-nearest, group by group (no Hessian; act-order options are
/// ignored). Arguments, ownership and statuses as for `gptq_quantize`, without the Hessian-related
/// ones. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_quantize_rtn(
    weight: *const c_void,
    dtype: gptq_dtype,
    out_features: usize,
    in_features: usize,
    row_stride: usize,
    config: *const gptq_quant_config,
    out: *mut *mut gptq_layer,
) -> gptq_status {
    guard(|| {
        let cfg = unsafe { read_versioned(config, CONFIG_V1_SIZE, "config")? }.to_core()?;
        let out = unsafe { deref_mut(out, "out")? };
        let w = unsafe { weight_view(weight, dtype, out_features, in_features, row_stride)? };
        let q = quantize_rtn(&w, &cfg)?;
        *out = into_handle(gptq_layer::new(QuantizedLayer::from_quantized(&q)));
        Ok(())
    })
}
