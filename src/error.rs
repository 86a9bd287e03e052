//! The crate's one error type. Every variant maps to exactly one C status code (see `ffi::status`).

use thiserror::Error;

/// Everything that can go wrong in libgptq, each with a message naming the offending input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// A required pointer/reference was missing.
    #[error("null pointer: {0}")]
    NullPointer(String),
    /// An argument is out of its allowed range (sizes, strides, flags).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Two shapes that must agree do not, or a dimension is zero.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A configuration the library does not implement (bits, group size, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An enum value (dtype, format) outside the defined set.
    #[error("invalid enum value: {0}")]
    InvalidEnum(String),
    /// An options struct whose `struct_size` is smaller than any version the library knows.
    #[error("struct too small: {0}")]
    StructSize(String),
    /// A NaN or infinity in weights, activations or a Hessian.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// The Hessian could not be made positive definite, even with the maximum damping.
    #[error("Hessian not positive definite: {0}")]
    NotPositiveDefinite(String),
    /// Packed tensors that violate the GPTQ format (g_idx range, zero points, ...).
    #[error("invalid packed layer: {0}")]
    InvalidFormat(String),
    /// A pointer is not aligned for its element type.
    #[error("misaligned pointer: {0}")]
    Misaligned(String),
    /// An output buffer is too small for the result.
    #[error("buffer too small: {0}")]
    BufferTooSmall(String),
    /// A handle whose internal state was left inconsistent by an earlier panic.
    #[error("handle poisoned: {0}")]
    Poisoned(String),
    /// A memory allocation failed or would overflow `usize`.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// A file could not be read or written.
    #[error("I/O error: {0}")]
    Io(String),
    /// No usable CUDA driver or device (library missing, no GPU, device index out of range).
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// A CUDA driver or NVRTC call failed.
    #[error("CUDA error: {0}")]
    Cuda(String),
}

impl Error {
    /// The same kind of error (so the same C status) with its message rewritten, e.g. prefixed with
    /// the file or tensor it concerns.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Error {
        use Error::*;
        match self {
            NullPointer(m) => NullPointer(f(m)),
            InvalidArgument(m) => InvalidArgument(f(m)),
            Shape(m) => Shape(f(m)),
            Unsupported(m) => Unsupported(f(m)),
            InvalidEnum(m) => InvalidEnum(f(m)),
            StructSize(m) => StructSize(f(m)),
            NonFinite(m) => NonFinite(f(m)),
            NotPositiveDefinite(m) => NotPositiveDefinite(f(m)),
            InvalidFormat(m) => InvalidFormat(f(m)),
            Misaligned(m) => Misaligned(f(m)),
            BufferTooSmall(m) => BufferTooSmall(f(m)),
            Poisoned(m) => Poisoned(f(m)),
            OutOfMemory(m) => OutOfMemory(f(m)),
            Io(m) => Io(f(m)),
            NoDevice(m) => NoDevice(f(m)),
            Cuda(m) => Cuda(f(m)),
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Multiplies dimensions, failing cleanly instead of wrapping.
pub(crate) fn checked_len(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::OutOfMemory(format!("{what}: size {dims:?} overflows usize")))
}
