//! A layer prepared for one GPU, and the stream-ordered GEMM and dequantization on it.

use super::device::{init, CtxGuard, Device};
use super::check;
use crate::error::{Error, Result};
use crate::format::QuantizedLayer;
use cudarc::driver::sys as cu;
use std::ffi::c_void;
use std::sync::Arc;

/// Activation (A and C) element type on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActDType {
    F16,
    BF16,
}

/// Threads per GEMV block = output columns per block (kernels/gptq_gemv.cu).
const THREADS: usize = 128;
/// Most inputs of A one GEMV block stages in shared memory (kernels/gptq_gemv.cu).
const KSPAN: usize = 1024;

/// Device memory owned by a layer.
struct DevBuf(cu::CUdeviceptr);

/// A layer in device memory, in the kernels' layout: K permuted so every group is contiguous,
/// asymmetric zeros folded into `scale·zero`. Immutable, so one plan may serve many streams at once.
pub struct CudaLayer {
    device: Arc<Device>,
    bits: u32,
    k: usize,
    n: usize,
    qweight: DevBuf,
    gword: DevBuf,
    scale: DevBuf,
    scale_len: usize,
    szero: DevBuf,
    zero: DevBuf,
    perm: Option<DevBuf>,
    bias: Option<DevBuf>,
    /// Use the packed-pair (f16x2/bf16x2) kernels for 4 bit (on unless `GPTQ_CUDA_F32_MATH` is set,
    /// for A/B benchmarks).
    pair_math: bool,
}

// SAFETY: device pointers are plain integers; the memory is only freed in Drop.
unsafe impl Send for CudaLayer {}
unsafe impl Sync for CudaLayer {}

fn upload<T: Copy>(data: &[T], what: &str) -> Result<DevBuf> {
    let bytes = std::mem::size_of_val(data).max(4);
    let mut ptr = 0;
    // SAFETY: allocates `bytes` and copies `data` (the current context is the layer's device).
    unsafe {
        check(cu::cuMemAlloc_v2(&mut ptr, bytes), &format!("cuMemAlloc ({what}, {bytes} bytes)"))?;
        if let Err(e) = check(cu::cuMemcpyHtoD_v2(ptr, data.as_ptr().cast(), std::mem::size_of_val(data)), what) {
            cu::cuMemFree_v2(ptr);
            return Err(e);
        }
    }
    Ok(DevBuf(ptr))
}

/// Enqueues `f` on `stream` with a 1-D block of `threads` and the given grid.
///
/// # Safety
/// `args` must point to values whose types and order match the kernel's signature, and the extents
/// they describe must be valid device memory.
unsafe fn launch(
    f: cu::CUfunction,
    grid: (u32, u32, u32),
    threads: u32,
    stream: cu::CUstream,
    args: &mut [*mut c_void],
    what: &str,
) -> Result<()> {
    // SAFETY: the caller's contract above.
    let r = unsafe {
        cu::cuLaunchKernel(f, grid.0, grid.1, grid.2, threads, 1, 1, 0, stream, args.as_mut_ptr(), std::ptr::null_mut())
    };
    check(r, what)
}

impl CudaLayer {
    /// Uploads `layer` to device `ordinal` (initializing the device and its kernels if needed).
    /// Supported: 4 and 8 bit, any group size, act-order whose groups are runs of whole words.
    pub fn new(layer: &QuantizedLayer, ordinal: usize) -> Result<CudaLayer> {
        let d = *layer.desc();
        if d.bits != 4 && d.bits != 8 {
            return Err(Error::Unsupported(format!("the CUDA kernels support 4 and 8 bit, not {}", d.bits)));
        }
        let plan = layer.gemm_plan();
        if !plan.direct {
            return Err(Error::Unsupported(
                "the CUDA kernels need every g_idx group to be a run of whole packed words".into(),
            ));
        }
        let (k, n) = (d.in_features, d.out_features);
        let pf = (32 / d.bits) as usize;
        let mut gword = vec![0i32; k / pf];
        for &(s, e, g) in &plan.segments {
            gword[s / pf..e / pf].fill(g as i32);
        }
        let szero: Vec<f32> = plan.scales.iter().zip(&plan.zeros).map(|(s, z)| s * z).collect();
        let device = init(ordinal)?;
        let _ctx = CtxGuard::push(device.ctx)?;
        let qweight = plan.qweight_perm.as_deref().unwrap_or(layer.qweight());
        let bias: Option<Vec<f32>> = layer.bias().map(|b| b.iter().map(|v| v.to_f32()).collect());
        let perm: Option<Vec<i32>> = plan.perm.as_ref().map(|p| p.iter().map(|&c| c as i32).collect());
        Ok(CudaLayer {
            bits: d.bits,
            k,
            n,
            qweight: upload(qweight, "qweight")?,
            gword: upload(&gword, "group index")?,
            scale: upload(&plan.scales, "scales")?,
            scale_len: plan.scales.len(),
            szero: upload(&szero, "scaled zeros")?,
            zero: upload(&plan.zeros, "zeros")?,
            perm: perm.map(|p| upload(&p, "permutation")).transpose()?,
            bias: bias.map(|b| upload(&b, "bias")).transpose()?,
            pair_math: std::env::var_os("GPTQ_CUDA_F32_MATH").is_none(),
            device,
        })
    }

    pub fn device(&self) -> usize {
        self.device.ordinal
    }

    /// Device address and size of the buffers every GEMM must read (packed weights, scales, scaled
    /// zeros): what a benchmark's read floor streams.
    #[doc(hidden)]
    pub fn weight_buffers(&self) -> Vec<(u64, usize)> {
        let words = self.k / (32 / self.bits) as usize;
        let g = self.scale_len / self.n;
        vec![(self.qweight.0, words * self.n * 4), (self.scale.0, g * self.n * 4), (self.szero.0, g * self.n * 4)]
    }

    /// Launches the read-floor kernel over `bytes` (a multiple of 16) at `src` on `stream`.
    ///
    /// # Safety
    /// `src` must be device memory of this layer's device with `bytes` readable bytes; `sink` 4-byte
    /// aligned device memory of at least 4096 bytes.
    #[doc(hidden)]
    pub unsafe fn read_floor(&self, src: u64, bytes: usize, sink: u64, stream: cu::CUstream) -> Result<()> {
        let f = self.device.function("gptq_read_floor")?;
        let _ctx = CtxGuard::push(self.device.ctx)?;
        let n16 = (bytes / 16) as i64;
        let mut args: [*mut c_void; 3] =
            [(&raw const src).cast_mut().cast(), (&raw const n16).cast_mut().cast(), (&raw const sink).cast_mut().cast()];
        let blocks = (self.device.sm_count * 8).min(1024);
        // SAFETY: matches the kernel's signature; extents are the caller's contract.
        unsafe { launch(f, (blocks, 1, 1), 512, stream, &mut args, "launching the read-floor kernel") }
    }

    /// (rows of A per block, splits of K, word rows per split) for `m` rows.
    fn launch_shape(&self, m: usize) -> (usize, usize, usize) {
        let mt = match m {
            1 => 1,
            2 => 2,
            3 | 4 => 4,
            _ => 8,
        };
        let words = self.k / (32 / self.bits) as usize;
        let cap = KSPAN / (32 / self.bits) as usize;
        let blocks = self.n.div_ceil(THREADS) * m.div_ceil(mt);
        // Four blocks (16 warps) per SM measured best (eight: 7% slower at M = 1); every split must
        // fit the shared-memory staging and give each warp at least two word rows.
        let want = (4 * self.device.sm_count as usize).div_ceil(blocks);
        let splits = want.max(words.div_ceil(cap)).min((words / 8).max(1));
        let wps = words.div_ceil(splits);
        (mt, words.div_ceil(wps), wps)
    }

    /// Workspace bytes `gemm` needs for `m` rows (0 when one split suffices).
    pub fn workspace_size(&self, m: usize) -> usize {
        let (_, splits, _) = self.launch_shape(m.max(1));
        if splits == 1 { 0 } else { splits * m.max(1) * self.n * 4 }
    }

    fn stream_check(&self, stream: cu::CUstream) -> Result<()> {
        if stream.is_null() {
            return Ok(()); // the legacy default stream of the context we make current
        }
        let mut ctx = std::ptr::null_mut();
        // SAFETY: queries the stream's context.
        check(unsafe { cu::cuStreamGetCtx(stream, &mut ctx) }, "cuStreamGetCtx")?;
        if ctx != self.device.ctx {
            return Err(Error::InvalidArgument(format!(
                "the stream does not belong to device {}'s primary context, where this layer lives",
                self.device.ordinal
            )));
        }
        Ok(())
    }

    /// `C[m, n] = A[m, k] · Wᵀ (+ bias)` on `stream`. A and C are device pointers (fp16 or bf16) with row
    /// strides `lda`, `ldc` in elements; `workspace` holds at least [`workspace_size`](Self::workspace_size)
    /// bytes. Enqueues two kernels; allocates and synchronizes nothing.
    ///
    /// # Safety
    /// The pointers must be device memory of this layer's device, valid for the extents described, and
    /// not written by other work while the kernels run.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        &self,
        a: u64,
        dtype: ActDType,
        m: usize,
        lda: usize,
        c: u64,
        ldc: usize,
        workspace: u64,
        workspace_bytes: usize,
        stream: cu::CUstream,
    ) -> Result<()> {
        if m == 0 || m > i32::MAX as usize || self.n > i32::MAX as usize {
            return Err(Error::Shape(format!("m must be in 1..=2^31-1, got {m}")));
        }
        if lda < self.k || ldc < self.n {
            return Err(Error::InvalidArgument(format!(
                "lda {lda} must be >= in_features {} and ldc {ldc} >= out_features {}",
                self.k, self.n
            )));
        }
        if a % 2 != 0 || c % 2 != 0 || workspace % 4 != 0 {
            return Err(Error::Misaligned("A and C must be 2-byte aligned, the workspace 4-byte aligned".into()));
        }
        let need = self.workspace_size(m);
        if workspace_bytes < need || (need > 0 && workspace == 0) {
            return Err(Error::BufferTooSmall(format!(
                "workspace has {workspace_bytes} bytes, gemm with m = {m} needs {need}"
            )));
        }
        self.stream_check(stream)?;
        let (mt, splits, wps) = self.launch_shape(m);
        let suffix = if dtype == ActDType::BF16 { "bf16" } else { "f16" };
        // 4 bit has packed-pair kernels (half the instructions per code); 8 bit uses f32 math.
        let pairs = format!("{suffix}x2");
        let variant = if self.bits == 4 && self.pair_math { &pairs } else { suffix };
        let gemv = self.device.function(&format!("gptq_gemv_b{}_m{mt}_{variant}", self.bits))?;
        let reduce = self.device.function(&format!("gptq_reduce_{suffix}"))?;
        let _ctx = CtxGuard::push(self.device.ctx)?;
        let (mi, ni, ki, wpsi, si) = (m as i32, self.n as i32, self.k as i32, wps as i32, splits as i32);
        let (lda64, ldc64) = (lda as i64, ldc as i64);
        let perm = self.perm.as_ref().map_or(0, |p| p.0);
        let bias = self.bias.as_ref().map_or(0, |b| b.0);
        let mut args: [*mut c_void; 16] = [
            (&raw const a).cast_mut().cast(),
            (&raw const lda64).cast_mut().cast(),
            (&raw const self.qweight.0).cast_mut().cast(),
            (&raw const self.gword.0).cast_mut().cast(),
            (&raw const self.scale.0).cast_mut().cast(),
            (&raw const self.szero.0).cast_mut().cast(),
            (&raw const self.zero.0).cast_mut().cast(),
            (&raw const perm).cast_mut().cast(),
            (&raw const workspace).cast_mut().cast(),
            (&raw const bias).cast_mut().cast(),
            (&raw const c).cast_mut().cast(),
            (&raw const ldc64).cast_mut().cast(),
            (&raw const mi).cast_mut().cast(),
            (&raw const ni).cast_mut().cast(),
            (&raw const ki).cast_mut().cast(),
            (&raw const wpsi).cast_mut().cast(),
        ];
        let grid = (self.n.div_ceil(THREADS) as u32, splits as u32, m.div_ceil(mt) as u32);
        // SAFETY: argument types and order match the kernel's signature; extents were checked above.
        unsafe { launch(gemv, grid, THREADS as u32, stream, &mut args, "launching the GEMV kernel")? };
        if splits == 1 {
            return Ok(()); // the GEMV kernel wrote C itself
        }
        let mut rargs: [*mut c_void; 7] = [
            (&raw const workspace).cast_mut().cast(),
            (&raw const si).cast_mut().cast(),
            (&raw const bias).cast_mut().cast(),
            (&raw const c).cast_mut().cast(),
            (&raw const ldc64).cast_mut().cast(),
            (&raw const mi).cast_mut().cast(),
            (&raw const ni).cast_mut().cast(),
        ];
        let total = m * self.n;
        // SAFETY: as above.
        unsafe { launch(reduce, (total.div_ceil(256) as u32, 1, 1), 256, stream, &mut rargs, "launching the reduction kernel") }
    }

    /// Writes the dequantized weight, `[n, k]` fp16 in the original input order, to `out` on `stream`.
    ///
    /// # Safety
    /// `out` must be device memory of this layer's device holding `n·k` fp16 values.
    pub unsafe fn dequantize(&self, out: u64, stream: cu::CUstream) -> Result<()> {
        if out % 2 != 0 {
            return Err(Error::Misaligned("out must be 2-byte aligned".into()));
        }
        self.stream_check(stream)?;
        let f = self.device.function(&format!("gptq_dequant_b{}", self.bits))?;
        let _ctx = CtxGuard::push(self.device.ctx)?;
        let (ni, ki) = (self.n as i32, self.k as i32);
        let perm = self.perm.as_ref().map_or(0, |p| p.0);
        let mut args: [*mut c_void; 8] = [
            (&raw const self.qweight.0).cast_mut().cast(),
            (&raw const self.gword.0).cast_mut().cast(),
            (&raw const self.scale.0).cast_mut().cast(),
            (&raw const self.szero.0).cast_mut().cast(),
            (&raw const perm).cast_mut().cast(),
            (&raw const out).cast_mut().cast(),
            (&raw const ni).cast_mut().cast(),
            (&raw const ki).cast_mut().cast(),
        ];
        let words = self.k / (32 / self.bits) as usize;
        let grid = (self.n.div_ceil(THREADS) as u32, words as u32, 1);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { launch(f, grid, THREADS as u32, stream, &mut args, "launching the dequantization kernel") }
    }
}

impl Drop for CudaLayer {
    fn drop(&mut self) {
        // Freeing may implicitly synchronize; it happens only when the caller frees the layer.
        if let Ok(_g) = CtxGuard::push(self.device.ctx) {
            for b in [Some(&self.qweight), Some(&self.gword), Some(&self.scale), Some(&self.szero), Some(&self.zero), self.perm.as_ref(), self.bias.as_ref()]
                .into_iter()
                .flatten()
            {
                // SAFETY: allocated by `upload`, freed once.
                unsafe { cu::cuMemFree_v2(b.0) };
            }
        }
    }
}
