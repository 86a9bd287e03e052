//! Large batches through cuBLASLt: the layer's weights dequantized into the caller's workspace
//! (kernels/gptq_dense.cu), then one dense GEMM on tensor cores. Above a few hundred rows a GEMM is
//! compute-bound, and cuBLASLt's Hopper kernels run it 3-4× faster than the quantized kernels;
//! dequantizing costs one pass over the weights (docs/perf.md, version 61).
//!
//! cuBLASLt is loaded at run time like the driver. Where it is missing, or lacks a symbol used here,
//! [`Lt::load`] returns `None` and every call keeps to the quantized kernels.

use crate::error::{Error, Result};
use cudarc::cublaslt::sys as lt;
use std::ffi::c_void;

/// Every cuBLASLt function this module calls; all must resolve before any is called (cudarc's
/// dynamic loader panics on a missing symbol).
const SYMBOLS: &[&str] = &[
    "cublasLtGetVersion",
    "cublasLtCreate",
    "cublasLtDestroy",
    "cublasLtMatmul",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatmulAlgoGetHeuristic",
];

/// cuBLASLt's own workspace inside the caller's, the size NVIDIA recommends for Hopper (it lets the
/// heuristic choose split-K and stream-K kernels).
pub(crate) const LT_WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLASLt handle for one device. cuBLASLt functions are thread-safe on a shared handle; every
/// call here passes its own stream and workspace, and nothing changes the handle after creation.
pub(crate) struct Lt(lt::cublasLtHandle_t);

// SAFETY: see the type's documentation: the handle is never mutated after creation.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Lt {
    /// The handle for the device whose context is current, or `None` where cuBLASLt is not
    /// installed, older than 11.0, lacks a symbol, fails to create a handle, or `GPTQ_CUDA_DENSE=0`
    /// turns it off.
    pub(crate) fn load() -> Option<Lt> {
        if std::env::var("GPTQ_CUDA_DENSE").is_ok_and(|v| v == "0") {
            return None;
        }
        // SAFETY: is_culib_present only tries to open the library; culib() is called after it
        // succeeded, so it does not panic.
        let present = unsafe { lt::is_culib_present() }
            && SYMBOLS.iter().all(|s| unsafe { lt::culib().get::<*const c_void>(s.as_bytes()).is_ok() });
        // (cuBLASLt 10 had another cublasLtMatmulDescCreate.)
        // SAFETY: the symbol was checked above.
        if !present || unsafe { lt::cublasLtGetVersion() } < 11000 {
            return None;
        }
        let mut h = std::ptr::null_mut();
        // SAFETY: writes one handle.
        let ok = unsafe { lt::cublasLtCreate(&mut h) } == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
        (ok && !h.is_null()).then_some(Lt(h))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn alignment_counts_pointer_and_stride() {
        assert_eq!(super::alignment(0x7f00_0000_0000, 4096), 256);
        assert_eq!(super::alignment(0x7f00_0000_0010, 4096), 16);
        assert_eq!(super::alignment(0x7f00_0000_0000, 4100), 8);
        assert_eq!(super::alignment(0x7f00_0000_0002, 4096), 2);
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: created in `load`, destroyed once.
        unsafe { lt::cublasLtDestroy(self.0) };
    }
}

fn status(s: lt::cublasStatus_t, what: &str) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda(format!("cuBLASLt {what}: {s:?}")))
    }
}

/// The alignment in bytes (at most 256) of every column of a column-major operand of 16-bit
/// elements at `ptr` with leading dimension `ld`.
fn alignment(ptr: u64, ld: usize) -> u32 {
    let bits = ptr | (ld as u64 * 2) | 256;
    1 << bits.trailing_zeros()
}

/// Descriptors destroyed on every path out of [`Lt::matmul_tn`].
struct Descs {
    op: lt::cublasLtMatmulDesc_t,
    layouts: Vec<lt::cublasLtMatrixLayout_t>,
    pref: lt::cublasLtMatmulPreference_t,
}

impl Drop for Descs {
    fn drop(&mut self) {
        // SAFETY: each was created once by matmul_tn (null ones are skipped).
        unsafe {
            for &l in &self.layouts {
                lt::cublasLtMatrixLayoutDestroy(l);
            }
            if !self.op.is_null() {
                lt::cublasLtMatmulDescDestroy(self.op);
            }
            if !self.pref.is_null() {
                lt::cublasLtMatmulPreferenceDestroy(self.pref);
            }
        }
    }
}

#[derive(Clone, Copy)]
/// One dense GEMM's operands: `C[m, n] = A[m, k] · W[n, k]ᵀ (+ bias[n])`, all row major in 16-bit
/// floats of one type; device addresses.
pub(crate) struct DenseGemm {
    pub bf16: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    /// `[n, k]`, row stride k.
    pub w: u64,
    pub c: u64,
    pub ldc: usize,
    /// `n` values of the activation type, or 0.
    pub bias: u64,
    pub workspace: u64,
    pub workspace_bytes: usize,
}

/// A dense GEMM ready to enqueue: its descriptors and the algorithm cuBLASLt's heuristic chose.
pub(crate) struct Plan<'a> {
    lt: &'a Lt,
    g: DenseGemm,
    d: Descs,
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Lt {
    /// Describes `g` to cuBLASLt (f32 accumulation) and asks its heuristic for a kernel, before
    /// anything is enqueued; `None` where it has none for these shapes and alignments, or refuses
    /// a descriptor (the caller then runs the quantized kernels). cuBLASLt is column major, so this is
    /// `Cᵀ[n, m] = W[k, n]ᵀ · Aᵀ[k, m]`: W's rows are the k-long columns of a transposed operand,
    /// the "TN" GEMM cuBLAS runs fastest.
    pub(crate) fn plan(&self, g: DenseGemm) -> Option<Plan<'_>> {
        self.try_plan(g).ok().flatten()
    }

    fn try_plan(&self, g: DenseGemm) -> Result<Option<Plan<'_>>> {
        let t = if g.bf16 { lt::cudaDataType_t::CUDA_R_16BF } else { lt::cudaDataType_t::CUDA_R_16F };
        let mut d = Descs { op: std::ptr::null_mut(), layouts: Vec::new(), pref: std::ptr::null_mut() };
        // SAFETY: plain cuBLASLt calls on descriptors created here; attribute buffers are locals of
        // the sizes passed; nothing is enqueued.
        unsafe {
            status(
                lt::cublasLtMatmulDescCreate(
                    &mut d.op,
                    lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lt::cudaDataType_t::CUDA_R_32F,
                ),
                "matmul descriptor",
            )?;
            let set = |attr: lt::cublasLtMatmulDescAttributes_t, v: *const c_void, bytes: usize| {
                status(lt::cublasLtMatmulDescSetAttribute(d.op, attr, v, bytes), "matmul attribute")
            };
            let trans: i32 = 1; // cublasOperation_t CUBLAS_OP_T (an int in cublas_api.h)
            set(
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&raw const trans).cast(),
                std::mem::size_of_val(&trans),
            )?;
            if g.bias != 0 {
                let epi = lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
                set(
                    lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    (&raw const epi).cast(),
                    std::mem::size_of_val(&epi),
                )?;
                let bias = g.bias as *const c_void;
                set(
                    lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (&raw const bias).cast(),
                    std::mem::size_of_val(&bias),
                )?;
            }
            // (rows, cols, leading dimension) of the column-major views: W as k × n, A as k × m, C as n × m.
            for (rows, cols, ld) in [(g.k, g.n, g.k), (g.k, g.m, g.lda), (g.n, g.m, g.ldc)] {
                let mut l = std::ptr::null_mut();
                status(
                    lt::cublasLtMatrixLayoutCreate(&mut l, t, rows as u64, cols as u64, ld as i64),
                    "matrix layout",
                )?;
                d.layouts.push(l);
            }
            status(lt::cublasLtMatmulPreferenceCreate(&mut d.pref), "preference")?;
            let ws = g.workspace_bytes;
            status(
                lt::cublasLtMatmulPreferenceSetAttribute(
                    d.pref,
                    lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&raw const ws).cast(),
                    std::mem::size_of_val(&ws),
                ),
                "preference attribute",
            )?;
            // The operands' true alignment: the default (256 bytes) would let the heuristic pick a
            // kernel that needs more than the caller's pointers and strides give.
            type P = lt::cublasLtMatmulPreferenceAttributes_t;
            for (attr, ptr, ld) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, g.w, g.k),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, g.a, g.lda),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, g.c, g.ldc),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, g.c, g.ldc),
            ] {
                let align = alignment(ptr, ld);
                status(
                    lt::cublasLtMatmulPreferenceSetAttribute(
                        d.pref,
                        attr,
                        (&raw const align).cast(),
                        std::mem::size_of_val(&align),
                    ),
                    "preference attribute",
                )?;
            }
            let (wl, al, cl) = (d.layouts[0], d.layouts[1], d.layouts[2]);
            let mut result: lt::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
            let mut found = 0;
            status(
                lt::cublasLtMatmulAlgoGetHeuristic(self.0, d.op, wl, al, cl, cl, d.pref, 1, &mut result, &mut found),
                "heuristic",
            )?;
            if found == 0 || result.state != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Ok(None);
            }
            Ok(Some(Plan { lt: self, g, d, algo: result.algo }))
        }
    }
}

impl Plan<'_> {
    /// The operands it was planned for.
    pub(crate) fn gemm(&self) -> &DenseGemm {
        &self.g
    }

    /// Enqueues the planned GEMM on `stream`.
    ///
    /// # Safety
    /// The planned addresses are device memory of the current context's device, valid for their
    /// extents, and W (and A, where the caller gathers it) is written before this on `stream`;
    /// `stream` belongs to that context.
    pub(crate) unsafe fn run(&self, stream: *mut c_void) -> Result<()> {
        let (d, g) = (&self.d, &self.g);
        let (wl, al, cl) = (d.layouts[0], d.layouts[1], d.layouts[2]);
        let (one, zero) = (1.0f32, 0.0f32);
        // SAFETY: the descriptors are live (owned by self); the operands are the caller's contract.
        unsafe {
            status(
                lt::cublasLtMatmul(
                    self.lt.0,
                    d.op,
                    (&raw const one).cast(),
                    g.w as *const c_void,
                    wl,
                    g.a as *const c_void,
                    al,
                    (&raw const zero).cast(),
                    g.c as *const c_void,
                    cl,
                    g.c as *mut c_void,
                    cl,
                    &self.algo,
                    g.workspace as *mut c_void,
                    g.workspace_bytes,
                    stream.cast(),
                ),
                "matmul",
            )
        }
    }
}
