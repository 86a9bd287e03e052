//! `gptq_hessian`: calibration statistics of one layer's inputs.

use super::boundary::*;
use super::status::gptq_status;
use super::types::*;
use crate::error::{checked_len, Error, Result};
use crate::quant::{Hessian, SampleCount};
use crate::tensor::{strided_span, MatView};
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

/// A layer Hessian `H = (2/n) Σ xᵀx` (f32, `[in_features, in_features]`).
///
/// Thread-safety: every function may be called on the same handle from several threads at once; calls
/// are serialized by an internal lock. Free with `gptq_hessian_free`.
pub struct gptq_hessian {
    inner: Mutex<Hessian>,
}

impl gptq_hessian {
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Hessian>> {
        self.inner
            .lock()
            .map_err(|_| Error::Poisoned("the Hessian was left inconsistent by an earlier panic; free it".into()))
    }
}

fn sample_count(v: gptq_sample_count) -> Result<SampleCount> {
    match v {
        GPTQ_COUNT_ROWS => Ok(SampleCount::Rows),
        GPTQ_COUNT_BATCHES => Ok(SampleCount::Batches),
        _ => Err(Error::InvalidEnum(format!("count: {v} is not a gptq_sample_count"))),
    }
}

/// Creates an empty Hessian for a layer with `in_features` inputs.
///
/// `count` chooses what `n` counts (`GPTQ_COUNT_ROWS` or `GPTQ_COUNT_BATCHES`); GPTQ's result does not
/// depend on it, only the scale of `H` does. On success `*out` receives a new handle owned by the
/// caller (free with `gptq_hessian_free`); on error `*out` is untouched. `out` must not be NULL.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_SHAPE_MISMATCH` (in_features 0),
/// `_INVALID_ENUM`, `_OUT_OF_MEMORY`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_hessian_new(
    in_features: usize,
    count: gptq_sample_count,
    out: *mut *mut gptq_hessian,
) -> gptq_status {
    guard(|| {
        let out = unsafe { deref_mut(out, "out")? };
        let h = Hessian::new(in_features, sample_count(count)?)?;
        *out = into_handle(gptq_hessian { inner: Mutex::new(h) });
        Ok(())
    })
}

/// Adds a batch of calibration activations `x` (`[rows, cols]`, row stride `row_stride` elements,
/// dtype F32, F16 or BF16) to the running average. `cols` must equal the Hessian's `in_features`.
///
/// `x` is read only during the call. On error the Hessian is unchanged and stays usable. Returns
/// `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM` (dtype), `_INVALID_ARGUMENT`
/// (stride < cols), `_SHAPE_MISMATCH` (zero rows/cols, cols ≠ in_features), `_NON_FINITE`,
/// `_POISONED`, `_OUT_OF_MEMORY`. Thread-safe (serialized per handle).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_hessian_add_batch(
    hessian: *mut gptq_hessian,
    x: *const c_void,
    dtype: gptq_dtype,
    rows: usize,
    cols: usize,
    row_stride: usize,
) -> gptq_status {
    guard(|| {
        let h = unsafe { deref(hessian.cast_const(), "hessian")? };
        let dt = super::boundary::dtype(dtype, "dtype")?;
        if dt == crate::tensor::DType::F64 {
            return Err(Error::InvalidEnum("dtype: activations must be F32, F16 or BF16".into()));
        }
        if row_stride < cols {
            return Err(Error::InvalidArgument(format!("row_stride {row_stride} is smaller than cols {cols}")));
        }
        let span = strided_span(rows, cols, row_stride)
            .ok_or_else(|| Error::OutOfMemory("x: rows × row_stride overflows".into()))?;
        let data = unsafe { elements(x, dt, span, "x")? };
        let view = MatView::new(data, rows, cols, row_stride, "x")?;
        h.lock()?.add_batch(&view)
    })
}

/// Creates a Hessian from a caller's dense, symmetric `[in_features, in_features]` matrix (F32 or F64,
/// row-major) standing for `n_samples` samples (used when merging later).
///
/// On success `*out` receives a new caller-owned handle; on error it is untouched. Returns
/// `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM`, `_SHAPE_MISMATCH`,
/// `_INVALID_ARGUMENT` (n_samples 0), `_NON_FINITE`, `_OUT_OF_MEMORY`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_hessian_from_dense(
    h: *const c_void,
    dtype: gptq_dtype,
    in_features: usize,
    n_samples: u64,
    count: gptq_sample_count,
    out: *mut *mut gptq_hessian,
) -> gptq_status {
    guard(|| {
        let out = unsafe { deref_mut(out, "out")? };
        let dt = super::boundary::dtype(dtype, "dtype")?;
        if !matches!(dt, crate::tensor::DType::F32 | crate::tensor::DType::F64) {
            return Err(Error::InvalidEnum("dtype: a dense Hessian must be F32 or F64".into()));
        }
        if in_features == 0 {
            return Err(Error::Shape("in_features must be non-zero".into()));
        }
        let len = checked_len(&[in_features, in_features], "h")?;
        let data = unsafe { elements(h, dt, len, "h")? };
        let hess = Hessian::from_dense(data, in_features, n_samples, sample_count(count)?)?;
        *out = into_handle(gptq_hessian { inner: Mutex::new(hess) });
        Ok(())
    })
}

/// Folds `src` into `dst` as if `src`'s samples had been added to `dst` (data-parallel calibration).
/// Both must have the same `in_features` and sample count convention, and must be different handles.
///
/// `src` is unchanged. On error `dst` is unchanged. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`,
/// `_MISALIGNED`, `_SHAPE_MISMATCH`, `_INVALID_ARGUMENT`, `_POISONED`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_hessian_merge(dst: *mut gptq_hessian, src: *const gptq_hessian) -> gptq_status {
    guard(|| {
        let d = unsafe { deref(dst.cast_const(), "dst")? };
        let s = unsafe { deref(src, "src")? };
        if std::ptr::eq(d, s) {
            return Err(Error::InvalidArgument("dst and src are the same Hessian".into()));
        }
        // Copy src first so the two locks are never held together (no lock-order deadlock).
        let other = s.lock()?.clone();
        d.lock()?.merge(&other)
    })
}

/// Reports the Hessian's `in_features` and the samples accumulated so far. Either out-pointer may be
/// NULL. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_POISONED`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_hessian_info(
    hessian: *const gptq_hessian,
    in_features: *mut usize,
    n_samples: *mut u64,
) -> gptq_status {
    guard(|| {
        let h = unsafe { deref(hessian, "hessian")? };
        // Check both out-pointers before writing either: on error nothing is written.
        let k_out = if in_features.is_null() { None } else { Some(unsafe { deref_mut(in_features, "in_features")? }) };
        let n_out = if n_samples.is_null() { None } else { Some(unsafe { deref_mut(n_samples, "n_samples")? }) };
        let g = h.lock()?;
        if let Some(k) = k_out {
            *k = g.in_features();
        }
        if let Some(n) = n_out {
            *n = g.n_samples();
        }
        Ok(())
    })
}

/// Copies the Hessian (row-major f32, `in_features²` values) into `out`, which holds `out_len` floats.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_BUFFER_TOO_SMALL`, `_POISONED`; on error
/// `out` is untouched. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_hessian_read(hessian: *const gptq_hessian, out: *mut f32, out_len: usize) -> gptq_status {
    guard(|| {
        let h = unsafe { deref(hessian, "hessian")? };
        let g = h.lock()?;
        let m = g.matrix();
        let out = unsafe { slice_mut(out, out_len, "out")? };
        if out.len() < m.len() {
            return Err(Error::BufferTooSmall(format!("out holds {} floats, the Hessian has {}", out.len(), m.len())));
        }
        out[..m.len()].copy_from_slice(m);
        Ok(())
    })
}

/// Frees a Hessian. NULL is a no-op. The handle must not be in use by another thread or used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_hessian_free(hessian: *mut gptq_hessian) {
    unsafe { free_handle(hessian) }
}
