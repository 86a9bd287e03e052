//! CUDA backend: the driver and NVRTC are loaded at run time, so everything here fails with
//! [`Error::NoDevice`] on a machine without them, and nothing panics.
//!
//! GPU work follows the library's rules: kernels are compiled and loaded in [`init`] (never in a
//! GEMM call); a [`CudaLayer`] owns its device memory; `gemm` and `dequantize` take the caller's
//! stream and device pointers, allocate nothing, never synchronize, and use only the caller's
//! workspace, so they can be captured in a CUDA graph.

mod compile;
mod dense;
mod device;
mod layer;
mod tiles;

pub use compile::{CACHE_DIR_ENV, kernels_cubin, kernels_ptx, nvrtc_version};
pub use device::{Device, device_count, init};
pub use layer::{ActDType, CudaLayer, KernelFamily, Ring};

use crate::error::{Error, Result};
use cudarc::driver::sys as cu;

/// Turns a driver result into an error carrying CUDA's text and what we were doing.
pub(crate) fn check(r: cu::CUresult, what: &str) -> Result<()> {
    if r == cu::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut msg: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it NULL).
    unsafe { cu::cuGetErrorString(r, &mut msg) };
    let text = if msg.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: non-null pointers from cuGetErrorString are static NUL-terminated strings.
        unsafe { std::ffi::CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    };
    let e = format!("{what}: {text}");
    Err(if r == cu::CUresult::CUDA_ERROR_NO_DEVICE { Error::NoDevice(e) } else { Error::Cuda(e) })
}
