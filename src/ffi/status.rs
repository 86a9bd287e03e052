//! Status codes, their strings, and the thread-local last-error message.

use crate::error::Error;
use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// Result of every fallible libgptq function. Values are stable and never reused.
pub type gptq_status = i32;

/// Success.
pub const GPTQ_STATUS_OK: gptq_status = 0;
/// A required pointer argument was NULL.
pub const GPTQ_STATUS_NULL_POINTER: gptq_status = 1;
/// An argument is out of range (sizes, strides, flags, options).
pub const GPTQ_STATUS_INVALID_ARGUMENT: gptq_status = 2;
/// Dimensions are zero or do not agree with each other.
pub const GPTQ_STATUS_SHAPE_MISMATCH: gptq_status = 3;
/// A configuration the library does not implement (bits, group size, ...).
pub const GPTQ_STATUS_UNSUPPORTED: gptq_status = 4;
/// An enum argument (dtype, format, sample count) has an undefined value.
pub const GPTQ_STATUS_INVALID_ENUM: gptq_status = 5;
/// An options or result struct's `struct_size` is smaller than the oldest supported layout.
pub const GPTQ_STATUS_STRUCT_SIZE: gptq_status = 6;
/// A NaN or infinity in weights, activations, a Hessian, scales or bias.
pub const GPTQ_STATUS_NON_FINITE: gptq_status = 7;
/// The Hessian stayed non-positive-definite even with the maximum damping.
pub const GPTQ_STATUS_NOT_POSITIVE_DEFINITE: gptq_status = 8;
/// Packed tensors violate the GPTQ format (g_idx out of range, bad zero points, ...).
pub const GPTQ_STATUS_INVALID_FORMAT: gptq_status = 9;
/// A buffer's length is too small for the data it must hold.
pub const GPTQ_STATUS_BUFFER_TOO_SMALL: gptq_status = 10;
/// A pointer is not aligned for its element type.
pub const GPTQ_STATUS_MISALIGNED: gptq_status = 11;
/// A handle was left inconsistent by an earlier internal panic and can only be freed.
pub const GPTQ_STATUS_POISONED: gptq_status = 12;
/// An allocation failed or a size overflowed.
pub const GPTQ_STATUS_OUT_OF_MEMORY: gptq_status = 13;
/// A file could not be read or written.
pub const GPTQ_STATUS_IO: gptq_status = 14;
/// No usable CUDA driver, NVRTC or device (every CUDA entry point on a machine without a GPU).
pub const GPTQ_STATUS_NO_DEVICE: gptq_status = 15;
/// A CUDA driver or NVRTC call failed; the message carries CUDA's own error text.
pub const GPTQ_STATUS_CUDA: gptq_status = 16;
/// An internal panic was caught at the API boundary (a libgptq bug; please report it).
pub const GPTQ_STATUS_PANIC: gptq_status = 99;

pub(crate) fn status_of(e: &Error) -> gptq_status {
    match e {
        Error::NullPointer(_) => GPTQ_STATUS_NULL_POINTER,
        Error::InvalidArgument(_) => GPTQ_STATUS_INVALID_ARGUMENT,
        Error::Shape(_) => GPTQ_STATUS_SHAPE_MISMATCH,
        Error::Unsupported(_) => GPTQ_STATUS_UNSUPPORTED,
        Error::InvalidEnum(_) => GPTQ_STATUS_INVALID_ENUM,
        Error::StructSize(_) => GPTQ_STATUS_STRUCT_SIZE,
        Error::NonFinite(_) => GPTQ_STATUS_NON_FINITE,
        Error::NotPositiveDefinite(_) => GPTQ_STATUS_NOT_POSITIVE_DEFINITE,
        Error::InvalidFormat(_) => GPTQ_STATUS_INVALID_FORMAT,
        Error::BufferTooSmall(_) => GPTQ_STATUS_BUFFER_TOO_SMALL,
        Error::Misaligned(_) => GPTQ_STATUS_MISALIGNED,
        Error::Poisoned(_) => GPTQ_STATUS_POISONED,
        Error::OutOfMemory(_) => GPTQ_STATUS_OUT_OF_MEMORY,
        Error::Io(_) => GPTQ_STATUS_IO,
        Error::NoDevice(_) => GPTQ_STATUS_NO_DEVICE,
        Error::Cuda(_) => GPTQ_STATUS_CUDA,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(msg: String) {
    // Interior NULs cannot cross as a C string; replace them rather than lose the message.
    let c = CString::new(msg.replace('\0', "?")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::default());
}

/// The message of the last failed libgptq call on the calling thread, naming what was wrong; `""`
/// after a successful call.
///
/// Never NULL. The string is owned by libgptq and stays valid until the next libgptq call on the same
/// thread. Thread-safe (each thread has its own message).
#[unsafe(no_mangle)]
pub extern "C" fn gptq_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A static, human-readable name for a status code (`"unknown status"` for undefined values).
///
/// Never NULL; the string is static. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn gptq_status_string(status: gptq_status) -> *const c_char {
    let s: &'static [u8] = match status {
        GPTQ_STATUS_OK => b"ok\0",
        GPTQ_STATUS_NULL_POINTER => b"null pointer\0",
        GPTQ_STATUS_INVALID_ARGUMENT => b"invalid argument\0",
        GPTQ_STATUS_SHAPE_MISMATCH => b"shape mismatch\0",
        GPTQ_STATUS_UNSUPPORTED => b"unsupported configuration\0",
        GPTQ_STATUS_INVALID_ENUM => b"invalid enum value\0",
        GPTQ_STATUS_STRUCT_SIZE => b"struct_size too small\0",
        GPTQ_STATUS_NON_FINITE => b"NaN or infinite value\0",
        GPTQ_STATUS_NOT_POSITIVE_DEFINITE => b"Hessian not positive definite\0",
        GPTQ_STATUS_INVALID_FORMAT => b"invalid packed layer\0",
        GPTQ_STATUS_BUFFER_TOO_SMALL => b"buffer too small\0",
        GPTQ_STATUS_MISALIGNED => b"misaligned pointer\0",
        GPTQ_STATUS_POISONED => b"handle poisoned by an earlier panic\0",
        GPTQ_STATUS_OUT_OF_MEMORY => b"out of memory\0",
        GPTQ_STATUS_IO => b"I/O error\0",
        GPTQ_STATUS_NO_DEVICE => b"no CUDA device\0",
        GPTQ_STATUS_CUDA => b"CUDA error\0",
        GPTQ_STATUS_PANIC => b"internal panic\0",
        _ => b"unknown status\0",
    };
    s.as_ptr().cast()
}
