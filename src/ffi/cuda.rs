//! The CUDA entry points. On a machine without a CUDA driver every one returns
//! `GPTQ_STATUS_NO_DEVICE` with a message; none of them panics.

use super::boundary::*;
use super::layer::gptq_layer;
use super::status::gptq_status;
use super::types::*;
use crate::cuda::{ActDType, CudaLayer};
use crate::error::Error;
use std::ffi::c_void;

/// CUDA's stream type, declared here so the header needs no CUDA header: pass a `cudaStream_t` or
/// `CUstream` (NULL = the legacy default stream).
pub struct CUstream_st {
    _opaque: [u8; 0],
}

/// A layer uploaded to one GPU in the kernels' layout. Immutable: `gptq_cuda_gemm` may run on one
/// plan from several streams and threads at once. Free with `gptq_cuda_layer_free`.
pub struct gptq_cuda_layer {
    inner: CudaLayer,
}

fn device_index(device: i32) -> Result<usize, Error> {
    usize::try_from(device).map_err(|_| Error::InvalidArgument(format!("device {device} is negative")))
}

/// Writes the number of CUDA devices to `*count`. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`,
/// `_MISALIGNED`, `_NO_DEVICE` (no driver), `_CUDA`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_cuda_device_count(count: *mut i32) -> gptq_status {
    guard(|| {
        let out = unsafe { deref_mut(count, "count")? };
        *out = crate::cuda::device_count()? as i32;
        Ok(())
    })
}

/// Prepares `device`: retains its primary context and compiles the kernels for its architecture with
/// NVRTC (or loads them from the cache in `$GPTQ_CACHE_DIR`, else `~/.cache/libgptq`). Call once per
/// device before timing-sensitive work; `gptq_cuda_layer_new` calls it too. Idempotent.
///
/// Returns `GPTQ_STATUS_OK`, `_INVALID_ARGUMENT`, `_NO_DEVICE` (no driver, no NVRTC, or no such
/// device), `_CUDA` (compilation or loading failed; the message has the log). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn gptq_cuda_init(device: i32) -> gptq_status {
    guard(|| crate::cuda::init(device_index(device)?).map(|_| ()))
}

/// Uploads `layer` to `device` (2, 3, 4 or 8 bit). Allocates device memory (the only CUDA call that
/// does); the CPU layer is not needed afterwards. On success `*out` receives a new caller-owned
/// handle.
///
/// 2- and 3-bit layers are uploaded with their codes widened to 4 bit: the same results, with the
/// device memory and speed of a 4-bit layer (no kernel reads 2- or 3-bit codes directly yet).
///
/// Layers whose g_idx groups are uniform runs of a power-of-two number of 16-input tiles (every group
/// size the library accepts, or none, with or without act-order) are pre-shuffled for the
/// tensor-core kernel (mma); others (hand-made g_idx with uneven groups) use a slower CUDA-core
/// kernel. With bf16 activations the kernels dequantize in bf16 (scales rounded from fp16 to bf16).
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ARGUMENT`, `_UNSUPPORTED`
/// (act-order groups that are not whole packed words), `_NO_DEVICE`, `_CUDA` (e.g. out of device
/// memory). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_cuda_layer_new(
    layer: *const gptq_layer,
    device: i32,
    out: *mut *mut gptq_cuda_layer,
) -> gptq_status {
    guard(|| {
        let l = &unsafe { deref(layer, "layer")? }.inner;
        let out = unsafe { deref_mut(out, "out")? };
        let inner = CudaLayer::new(l, device_index(device)?)?;
        *out = into_handle(gptq_cuda_layer { inner });
        Ok(())
    })
}

/// Writes to `*bytes` a workspace size enough for every `gptq_cuda_gemm` call on `layer` with 1 to `m`
/// rows (it depends on `m` and the layer only), so one workspace sized for the largest batch serves
/// all smaller ones (how K is split, and so the partial sums, changes with the batch size). 0 when no
/// such call needs one. For the batches that take the dense path (see `gptq_cuda_gemm`) it includes
/// that path's room:
/// the dequantized weights (`2 · in_features · out_features` bytes), 32 MiB for cuBLASLt and, with
/// act-order, `2 · m · in_features` bytes (see `gptq_cuda_gemm`).
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_SHAPE_MISMATCH` (`m` above what one call
/// takes). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_cuda_workspace_size(layer: *const gptq_cuda_layer, m: usize, bytes: *mut usize) -> gptq_status {
    guard(|| {
        let l = unsafe { deref(layer, "layer")? };
        let out = unsafe { deref_mut(bytes, "bytes")? };
        *out = l.inner.workspace_size(m)?;
        Ok(())
    })
}

/// `C[m, out_features] = A[m, in_features] · dequant(W)ᵀ (+ bias)` on `stream`.
///
/// `a` and `c` are device pointers of `dtype` (`GPTQ_DTYPE_F16` or `GPTQ_DTYPE_BF16`) with row strides
/// `lda ≥ in_features` and `ldc ≥ out_features` elements; `workspace` is device memory of at least
/// `gptq_cuda_workspace_size(layer, m)` bytes (or of any larger m), which the call overwrites
/// (act-order activations gathered once, partial sums of split K; it may be NULL when that size is
/// 0). `a` 16-byte aligned with `lda` a multiple of 8, and a 16-byte aligned workspace, take the
/// fastest path (on sm_90, calls of up to 16 rows need in_features a multiple of 8 for it too; any
/// 2-byte aligned `a` and `lda`, and a 4-byte aligned workspace, work). One call
/// takes up to 4,194,240 rows (524,280 on the CUDA-core kernel); `_SHAPE_MISMATCH` beyond. The stream must belong to
/// the layer's device's primary context (NULL = legacy default stream). The call only enqueues
/// kernels (up to three, or cuBLASLt's): it allocates no device memory, never synchronizes, and can be captured in a CUDA
/// graph. On sm_90+ with a CUDA 12.3+ driver the quantized kernels are launched with programmatic dependent launch
/// (each may begin loading the layer's own weights while the previous kernel on the stream finishes,
/// and waits for that kernel before it reads `a` or writes anything; `GPTQ_CUDA_PDL=0` disables it).
/// On sm_90, calls of up to 8 rows run a kernel that streams weights and `a` into shared memory with
/// bulk copies, and calls of 9 to 16 rows one that copies `a` through a tensor map (encoded on the
/// host per call) and multiplies with warpgroup mma; calls of 17 to 128 rows (256 on layers of at
/// least 2^25 weights) a wider form of it, 32 to 128 rows per block (`GPTQ_CUDA_WIDE=0` turns it off;
/// `GPTQ_CUDA_BULK=0`, `GPTQ_CUDA_WG=0` select the register-fed kernels every architecture runs).
/// Large batches (the dense path): from 129 rows (`GPTQ_CUDA_DENSE_MIN_ROWS`), above those the wide
/// kernel takes (`GPTQ_CUDA_DENSE=0` turns it off), on layers of the tensor-core kernels (4 and 8 bit, and 2 and 3 bit, which run as
/// 4 bit; not layers whose groups put them on the CUDA-core kernel) with `in_features` a multiple
/// of 8, where cuBLASLt 11 or later is installed (the runs so far used CUDA 13's), with `a` and `c` 16-byte aligned, `lda` and `ldc` multiples of 8, and a
/// workspace of the full `gptq_cuda_workspace_size(layer, m)`, the call dequantizes the weights
/// into the workspace (fp16 or bf16 like `a`) and runs one cuBLASLt GEMM (f32 accumulation, the bias
/// in its epilogue, rounded to `dtype` first): up to 3× faster than the quantized kernels at those
/// sizes. A smaller workspace that still holds what the quantized kernels need for `m` rows runs
/// them instead (slower, but without the dense weights' memory).
/// Argument errors are detected before anything is enqueued; a failed launch (`_CUDA`) may
/// leave an earlier kernel of the same call enqueued, which writes only the workspace; kernel faults
/// surface on the stream as CUDA errors.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM`, `_INVALID_ARGUMENT`,
/// `_SHAPE_MISMATCH`, `_BUFFER_TOO_SMALL` (workspace), `_CUDA`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_cuda_gemm(
    layer: *const gptq_cuda_layer,
    a: *const c_void,
    dtype: gptq_dtype,
    m: usize,
    lda: usize,
    c: *mut c_void,
    ldc: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut CUstream_st,
) -> gptq_status {
    guard(|| {
        let l = unsafe { deref(layer, "layer")? };
        let dt = match dtype {
            GPTQ_DTYPE_F16 => ActDType::F16,
            GPTQ_DTYPE_BF16 => ActDType::BF16,
            _ => return Err(Error::InvalidEnum(format!("dtype {dtype}: the CUDA GEMM takes F16 or BF16"))),
        };
        for (p, name) in [(a as usize, "a"), (c as usize, "c")] {
            if p == 0 {
                return Err(Error::NullPointer(format!("{name} is NULL")));
            }
        }
        // SAFETY: the caller guarantees device pointers of the described extents (header contract).
        unsafe { l.inner.gemm(a as u64, dt, m, lda, c as u64, ldc, workspace as u64, workspace_bytes, stream.cast()) }
    })
}

/// Writes the dequantized weight, fp16 `[out_features, in_features]` (the `nn.Linear` layout), to
/// the device buffer `out` on `stream`. Stream-ordered like `gptq_cuda_gemm`.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ARGUMENT`, `_CUDA`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_cuda_dequantize(layer: *const gptq_cuda_layer, out: *mut c_void, stream: *mut CUstream_st) -> gptq_status {
    guard(|| {
        let l = unsafe { deref(layer, "layer")? };
        if out.is_null() {
            return Err(Error::NullPointer("out is NULL".into()));
        }
        // SAFETY: header contract, as for gptq_cuda_gemm.
        unsafe { l.inner.dequantize(out as u64, stream.cast()) }
    })
}

/// Frees a CUDA layer and its device memory (this may synchronize the device). NULL is a no-op. No
/// work using the layer may still be pending or be enqueued afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_cuda_layer_free(layer: *mut gptq_cuda_layer) {
    unsafe { free_handle(layer) }
}
