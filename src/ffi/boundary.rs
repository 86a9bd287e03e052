//! The panic boundary and the checks that turn raw C arguments into safe Rust values.

use super::status::{clear_last_error, gptq_status, set_last_error, status_of, GPTQ_STATUS_OK, GPTQ_STATUS_PANIC};
use super::types::*;
use crate::error::{Error, Result};
use crate::tensor::{DType, Elements};
use half::{bf16, f16};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning its error or panic into a status and the thread's last-error message.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> gptq_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            clear_last_error();
            GPTQ_STATUS_OK
        }
        Ok(Err(e)) => {
            set_last_error(e.to_string());
            status_of(&e)
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("internal panic (a libgptq bug): {what}"));
            GPTQ_STATUS_PANIC
        }
    }
}

/// A shared reference from a pointer that must not be NULL.
///
/// # Safety
/// `p` must be NULL or point to a valid `T` that outlives `'a`.
pub(crate) unsafe fn deref<'a, T>(p: *const T, name: &str) -> Result<&'a T> {
    check_ptr(p, name)?;
    // SAFETY: non-null and aligned (checked); validity is the caller's contract.
    Ok(unsafe { &*p })
}

/// A mutable reference from a pointer that must not be NULL.
///
/// # Safety
/// `p` must be NULL or point to a valid `T`, not aliased during `'a`.
pub(crate) unsafe fn deref_mut<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T> {
    check_ptr(p, name)?;
    // SAFETY: as for `deref`.
    Ok(unsafe { &mut *p })
}

fn check_ptr<T>(p: *const T, name: &str) -> Result<()> {
    if p.is_null() {
        return Err(Error::NullPointer(format!("{name} is NULL")));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Error::Misaligned(format!(
            "{name} ({p:p}) is not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    Ok(())
}

/// A slice from a pointer and a length in elements.
///
/// # Safety
/// `p` must be NULL or valid for reads of `len` elements during `'a`.
pub(crate) unsafe fn slice<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T]> {
    check_ptr(p, name)?;
    if len.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Error::InvalidArgument(format!("{name}: length {len} is too large")));
    }
    // SAFETY: non-null, aligned, size fits isize; validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A mutable slice from a pointer and a length in elements.
///
/// # Safety
/// `p` must be NULL or valid for writes of `len` elements, not aliased during `'a`.
pub(crate) unsafe fn slice_mut<'a, T>(p: *mut T, len: usize, name: &str) -> Result<&'a mut [T]> {
    check_ptr(p, name)?;
    if len.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Error::InvalidArgument(format!("{name}: length {len} is too large")));
    }
    // SAFETY: as for `slice`.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// `None` for NULL, else the slice.
///
/// # Safety
/// As for [`slice`].
pub(crate) unsafe fn opt_slice<'a, T>(p: *const T, len: usize, name: &str) -> Result<Option<&'a [T]>> {
    if p.is_null() { Ok(None) } else { unsafe { slice(p, len, name) }.map(Some) }
}

/// Checks a C dtype value.
pub(crate) fn dtype(v: gptq_dtype, name: &str) -> Result<DType> {
    match v {
        GPTQ_DTYPE_F32 => Ok(DType::F32),
        GPTQ_DTYPE_F16 => Ok(DType::F16),
        GPTQ_DTYPE_BF16 => Ok(DType::BF16),
        GPTQ_DTYPE_F64 => Ok(DType::F64),
        _ => Err(Error::InvalidEnum(format!("{name}: {v} is not a gptq_dtype"))),
    }
}

/// Typed elements from an untyped pointer.
///
/// # Safety
/// `p` must be NULL or valid for reads of `len` elements of `dt` during `'a`.
pub(crate) unsafe fn elements<'a>(p: *const c_void, dt: DType, len: usize, name: &str) -> Result<Elements<'a>> {
    unsafe {
        Ok(match dt {
            DType::F32 => Elements::F32(slice(p.cast::<f32>(), len, name)?),
            DType::F16 => Elements::F16(slice(p.cast::<f16>(), len, name)?),
            DType::BF16 => Elements::BF16(slice(p.cast::<bf16>(), len, name)?),
            DType::F64 => Elements::F64(slice(p.cast::<f64>(), len, name)?),
        })
    }
}

/// `0`/`1` flags of option structs.
pub(crate) fn flag(v: i32, name: &str) -> Result<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::InvalidArgument(format!("{name} must be 0 or 1, got {v}"))),
    }
}

/// Reads a versioned struct that begins with `size_t struct_size`: the caller's bytes up to
/// `min(struct_size, sizeof(T))` over `T::default()`. Fails when `struct_size` is below `min_size`.
///
/// # Safety
/// `p` must be NULL or point to at least `struct_size` readable bytes.
pub(crate) unsafe fn read_versioned<T: Default + Copy>(p: *const T, min_size: usize, name: &str) -> Result<T> {
    let size = unsafe { *deref(p.cast::<usize>(), name)? };
    if size < min_size {
        return Err(Error::StructSize(format!(
            "{name}->struct_size is {size}, but at least {min_size} is required (initialize it with sizeof)"
        )));
    }
    let mut out = T::default();
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: `p` has at least `size` readable bytes (caller contract) and `out` has `size_of::<T>()`;
    // T is a plain-old-data repr(C) struct whose fields are valid for any bit pattern.
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&raw mut out).cast::<u8>(), n) };
    Ok(out)
}

/// Writes `value` to a versioned out-struct, at most the caller's `struct_size` bytes, keeping its
/// `struct_size` field.
///
/// # Safety
/// `p` must be NULL or point to at least `struct_size` writable bytes.
pub(crate) unsafe fn write_versioned<T: Copy>(p: *mut T, value: &T, min_size: usize, name: &str) -> Result<()> {
    let size = unsafe { *deref(p.cast::<usize>().cast_const(), name)? };
    if size < min_size {
        return Err(Error::StructSize(format!(
            "{name}->struct_size is {size}, but at least {min_size} is required (initialize it with sizeof)"
        )));
    }
    let n = size.min(std::mem::size_of::<T>());
    let skip = std::mem::size_of::<usize>();
    // SAFETY: writes bytes [skip, n) of a buffer the caller declared to be `size >= n` bytes long.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>().add(skip),
            p.cast::<u8>().add(skip),
            n - skip,
        )
    };
    Ok(())
}

/// Moves a value into a heap handle for C.
pub(crate) fn into_handle<T>(v: T) -> *mut T {
    Box::into_raw(Box::new(v))
}

/// Frees a handle made by [`into_handle`]; NULL is a no-op. Never unwinds.
///
/// # Safety
/// `p` must be NULL or a live handle of this type, not used again afterwards.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: `p` came from Box::into_raw (caller contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(p) })));
    }
}
