//! A layer prepared for one GPU, and the stream-ordered GEMM and dequantization on it.

use super::device::{CtxGuard, Device, init};
use super::tiles::{TILE_K, TILE_N, mma_tiles};
use super::{check, dense};
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
/// Halves of A the tensor-core kernel stages (kernels/gptq_mma.cu, SMEM_HALVES).
const MMA_SMEM_HALVES: usize = 64 * 264;

/// The register-fed tensor-core kernel's name (kernels/gptq_mma.cu): `mf` 16-row fragments per
/// block (1: the small-batch kernel).
pub(crate) fn mma_kernel_name(bits: u32, mf: usize, act: &str, sym: bool) -> String {
    let sym = if sym { "sym" } else { "asym" };
    format!("gptq_mma_b{bits}_m{mf}_{act}_{sym}")
}

/// Dynamic shared memory of the register-fed tensor-core kernels: A and its zero row
/// (kernels/gptq_mma.cu).
pub(crate) const MMA_SMEM_BYTES: usize = (MMA_SMEM_HALVES + 8) * 2;
/// Threads of a bulk-copy kernel block: four consumer warps and the producer.
pub(crate) const BULK_THREADS: u32 = 160;
/// Most stages of the bulk-copy kernel's ring (kernels/gptq_mma.cu, BULK_MAX_STAGES).
pub(crate) const BULK_MAX_STAGES: usize = 16;
/// Rows of A one bulk-copy block takes.
const BULK_ROWS: usize = 8;
/// K tiles per block from which the bulk-copy kernel keeps a fourth block off each SM
/// ([`CudaLayer::pads_bulk`]).
const BULK_PAD_MIN_TILES: usize = 32;
/// The most rows the small-batch kernels gather act-order A for themselves (kernels/gptq_mma.cu,
/// GATHER_ROWS).
const KERNEL_GATHER_ROWS: usize = 8;
/// The bulk-copy kernel's long in-kernel gather: up to [`KERNEL_GATHER_LONG_ROWS`] rows over at
/// most [`KERNEL_GATHER_LONG_INPUTS`] inputs per block (kernels/gptq_mma.cu, GATHER_LONG_ROWS and
/// GATHER_LONG_COLS · 128), where the rows' expected distinct 32-byte sectors of A stay within
/// [`KERNEL_GATHER_LONG_SECTORS`] ([`long_gather_sectors`]).
const KERNEL_GATHER_LONG_ROWS: usize = 2;
const KERNEL_GATHER_LONG_INPUTS: usize = 768;
const KERNEL_GATHER_LONG_SECTORS: f64 = 600.0;
/// Rows of A one warpgroup-mma block takes.
const WG_ROWS: usize = 16;
/// The most rows the warpgroup kernel takes ([`CudaLayer::wg_max_rows`]), in blocks of 16 rows
/// (grid z), each reading its column block's weights. Measured on the H100 against the
/// register-fed kernel (docs/perf.md, version 62): at 65-96 rows 1.2-2.4× faster on all nine
/// layers measured where the blocks fit at once, at 112-128 1.1-2.3× on all but 28672×8192 (see
/// [`WG_WIDE_MAX_TILES`]).
const WG_MAX_ROWS: usize = 128;
/// Above this many rows the warpgroup kernel runs only where each block's run of K is at most
/// [`WG_WIDE_MAX_TILES`] tiles.
const WG_WIDE_ROWS: usize = 96;
/// 28672×8192 at 112-128 rows (one split of 1792 tiles per block, 224-256 blocks) ran 1.0-1.05×
/// slower than the register-fed kernel's four splits; 8192×8192 (one of 512) 1.1× faster.
const WG_WIDE_MAX_TILES: usize = 1024;
/// The same at 8 bit: at 64 rows the warpgroup kernel measured 1.1-1.5× faster than the
/// register-fed kernel on three of the profile layers but 1.1-1.3× slower on 4096×14336,
/// 28672×8192 and 8192×28672 (docs/perf.md, version 59).
const WG_MAX_ROWS_8BIT: usize = 32;
/// K tiles (of 16 inputs) per split from which the warpgroup kernel also takes 2 to 8 rows
/// ([`CudaLayer::wg_min_rows`]).
const WG_LONG_SPLIT_TILES: usize = 128;
/// The fewest rows that may take the warpgroup kernel's deep ring ([`CudaLayer::wg_deep_rows`]).
const WG_DEEP_MIN_ROWS: usize = 8;
/// The warpgroup-mma kernel's shared memory before its ring: 256 bytes of mbarriers, the consumer
/// threads' folded sums (128 × 32 floats) and the ring's alignment to 1024 bytes
/// (kernels/gptq_mma.cu, WG_RING_SLACK).
const WG_RING_SLACK: usize = 256 + 128 * 32 * 4 + 1024;
/// The bulk-copy kernel's shared memory before its ring: 2·16 mbarriers and a zero row (384 bytes),
/// then 8 gathered act-order rows of 264 halves or one of 776 (kernels/gptq_mma.cu, BULK_RING_OFFSET).
const BULK_RING_OFFSET: usize = 384 + 4352;
const _: () = assert!(384 + 8 * 264 * 2 <= BULK_RING_OFFSET, "the gathered rows fit before the ring");
const _: () = assert!(
    384 + 2 * (KERNEL_GATHER_LONG_INPUTS + 8) * 2 <= BULK_RING_OFFSET,
    "the long gather's rows fit before the ring"
);

/// Bytes of one stage of the bulk-copy kernel (kernels/gptq_mma.cu, BulkStage): 8 KB of weights, up
/// to `tps` scale (and zero) rows of 512 bytes, and 8 rows of A over the stage's inputs, padded by
/// 8 halves.
pub(crate) fn bulk_stage_bytes(bits: u32, sym: bool) -> usize {
    let tps = if bits == 4 { 4 } else { 2 };
    8192 + tps * 512 * if sym { 1 } else { 2 } + BULK_ROWS * (tps * 16 + 8) * 2
}

/// Bytes of one stage of the warpgroup-mma kernel (kernels/gptq_mma.cu, WgStage): 16 rows of A over
/// the stage's inputs (one swizzle span each), 8 KB of weights, up to `tps` scale (and zero) rows of
/// 512 bytes; a multiple of 1024 so every stage's A starts on a swizzle atom.
pub(crate) fn wg_stage_bytes(bits: u32, sym: bool) -> usize {
    let tps = if bits == 4 { 4 } else { 2 };
    WG_ROWS * tps * 16 * 2 + 8192 + tps * 512 * if sym { 1 } else { 2 }
}

/// The wide warpgroup kernel's forms (kernels/gptq_mma.cu, wg_gemm_wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WideForm {
    /// 32 rows per block, one warpgroup, two blocks per SM.
    Rows32,
    /// 64 rows per block, one warpgroup, one block per SM.
    Rows64,
    /// 64 rows per block, two warpgroups splitting its stages (K), one block per SM.
    Rows64Split,
    /// 128 rows per block, two warpgroups of 64 rows, one block per SM.
    Rows128,
}

impl WideForm {
    pub(crate) const ALL: [WideForm; 4] =
        [WideForm::Rows32, WideForm::Rows64, WideForm::Rows64Split, WideForm::Rows128];

    /// The kernel's name for `bits`, activation type `act` and symmetry.
    pub(crate) fn kernel_name(self, bits: u32, act: &str, sym: bool) -> String {
        let sym = if sym { "sym" } else { "asym" };
        let form = match self {
            WideForm::Rows32 => "32",
            WideForm::Rows64 => "64",
            WideForm::Rows64Split => "64k",
            WideForm::Rows128 => "128",
        };
        format!("gptq_wgw{form}_b{bits}_{act}_{sym}")
    }

    /// Rows of A per block.
    pub(crate) fn rows(self) -> usize {
        match self {
            WideForm::Rows32 => 32,
            WideForm::Rows64 | WideForm::Rows64Split => 64,
            WideForm::Rows128 => 128,
        }
    }

    /// Threads per block: the consumer warpgroups and the producer (a warp; a warpgroup beside two
    /// consumer warpgroups, whose registers it hands to them).
    pub(crate) fn threads(self) -> u32 {
        match self {
            WideForm::Rows32 | WideForm::Rows64 => 160,
            WideForm::Rows64Split | WideForm::Rows128 => 384,
        }
    }

    /// Blocks per SM (the kernel's launch bounds): the accumulators of 64 rows take 208-224
    /// registers per thread, those of 32 rows 139-154.
    pub(crate) fn blocks_per_sm(self) -> usize {
        if self == WideForm::Rows32 { 2 } else { 1 }
    }

    /// Bytes of one stage (kernels/gptq_mma.cu, WideStage): the block's rows of A over the stage's
    /// inputs (one swizzle span each), 8 KB of weights, up to `tps` scale (and zero) rows of 512
    /// bytes; a multiple of 1024.
    pub(crate) fn stage_bytes(self, bits: u32, sym: bool) -> usize {
        let tps = if bits == 4 { 4 } else { 2 };
        self.rows() * tps * 16 * 2 + 8192 + tps * 512 * if sym { 1 } else { 2 }
    }

    /// The fewest ring stages the form needs: with two warpgroups taking alternate stages, a stage
    /// is handed back only when its warpgroup starts its next one, two on (3); the split form also
    /// adds its two sums through the ring (64 KB).
    pub(crate) fn min_stages(self, bits: u32, sym: bool) -> usize {
        match self {
            WideForm::Rows64Split => 3.max((64usize << 10).div_ceil(self.stage_bytes(bits, sym))),
            _ => 2,
        }
    }
}

/// Layers of at least this many weights take the wide kernel up to 256 rows by default, smaller ones
/// up to 128 (more rows: the dense path). Measured on the H200 (docs/perf.md, version 64): at 192 and
/// 256 rows the wide kernel ran 4096×4096 in 29.3 / 31.8 µs against the dense path's 27.8 / 25.8, and
/// the five larger profile layers 1.0-1.24× faster than the dense path (28672×8192 at 256 rows 255
/// against 315 µs).
pub(crate) const WIDE_LARGE_LAYER: usize = 1 << 25;
/// 4-bit layers of at most this many weights take the wide kernel (its 32-row form) from
/// [`WIDE_SMALL_LAYER_MIN_ROWS`] rows by default instead of the 16-row warpgroup kernel: their few
/// column blocks give that kernel many short K splits. Measured on the H200 (docs/perf.md, version
/// 72), M = 9 / 12 / 16: 3584×512 5.9 / 6.0 / 6.8 → 4.2 / 4.9 / 5.1 µs, 4096×1024 6.7 / 6.8 / 7.1 →
/// 5.2 / 6.3 / 6.3, 896×4864 7.3 / 7.3 / 7.4 → 6.0 / 6.3 / 6.4, 4864×896 7.5 / 7.6 / 6.4 → 6.4 / 7.1 /
/// 7.1 (M = 16 the one loss; the 16-row kernel ran that layer faster at 16 rows than at 9-14);
/// act-order 0.7-2.8 µs faster on all four; 8192×1024 and every larger layer the same or slower.
pub(crate) const WIDE_SMALL_LAYER: usize = 4_500_000;
/// The fewest rows that small layers ([`WIDE_SMALL_LAYER`]) take the wide kernel for.
const WIDE_SMALL_LAYER_MIN_ROWS: usize = 9;
/// At 65-128 rows, layers of at most this many inputs take [`WideForm::Rows64Split`] (two blocks of
/// 64 rows) rather than [`WideForm::Rows128`]: their short K splits' partial sums weigh more. Measured
/// on the H200 (version 64): 4096×14336 at 96 / 128 rows 44.1 / 44.5 µs against 48.0 / 51.6, 4096×4096
/// 18.5 / 19.9 against 18.9 / 21.1; the longer layers 1-11% slower that way (8192×28672 at 128 rows
/// 161 against 145).
pub(crate) const WIDE_SHORT_K: usize = 4096;

/// The wide kernel's shared memory before its ring: 256 bytes of mbarriers and the ring's alignment
/// to 1024 bytes (kernels/gptq_mma.cu, WIDE_RING_SLACK).
pub(crate) const WIDE_RING_SLACK: usize = 256 + 1024;

/// The sm_90 small-batch kernels that stream weights, scales and A into a ring of shared-memory
/// stages (kernels/gptq_mma.cu); other calls take the register-fed kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// bulk_gemm_small: up to 8 rows, mma.sync with the roles swapped.
    Bulk,
    /// wg_gemm_small: up to 16 rows, warpgroup mma (sm_90a), A through a tensor map.
    Warpgroup,
}

impl Ring {
    /// The kernel's name for `bits`, activation type `act` and symmetry.
    pub(crate) fn kernel_name(self, bits: u32, act: &str, sym: bool) -> String {
        let sym = if sym { "sym" } else { "asym" };
        match self {
            Ring::Bulk => format!("gptq_bulk_b{bits}_{act}_{sym}"),
            Ring::Warpgroup => format!("gptq_wg_b{bits}_{act}_{sym}"),
        }
    }

    /// The kernel's balanced-split form (kernels/gptq_mma.cu, bulk_gemm_small and wg_gemm_small).
    pub(crate) fn balanced_kernel_name(self, bits: u32, act: &str, sym: bool) -> String {
        format!("{}_balanced", self.kernel_name(bits, act, sym))
    }

    /// The kernel taking `shape` (the balanced-split form where it says so).
    fn shape_kernel_name(self, bits: u32, act: &str, sym: bool, shape: &MmaShape) -> String {
        if shape.balanced.is_some() {
            self.balanced_kernel_name(bits, act, sym)
        } else {
            self.kernel_name(bits, act, sym)
        }
    }

    /// Rows of A one block takes.
    pub(crate) fn rows(self) -> usize {
        match self {
            Ring::Bulk => BULK_ROWS,
            Ring::Warpgroup => WG_ROWS,
        }
    }

    /// Bytes of one ring stage.
    pub(crate) fn stage_bytes(self, bits: u32, sym: bool) -> usize {
        match self {
            Ring::Bulk => bulk_stage_bytes(bits, sym),
            Ring::Warpgroup => wg_stage_bytes(bits, sym),
        }
    }

    /// Dynamic shared memory with `stages` stages.
    pub(crate) fn smem_bytes(self, bits: u32, sym: bool, stages: usize) -> usize {
        let before = match self {
            Ring::Bulk => BULK_RING_OFFSET,
            Ring::Warpgroup => WG_RING_SLACK,
        };
        before + stages * self.stage_bytes(bits, sym)
    }

    /// Stages that let `blocks` blocks share an SM with `smem_per_sm` bytes of shared memory,
    /// `reserved` of them set aside per block (three blocks measured faster than two with a deeper
    /// ring, but for the warpgroup kernel's deep ring: docs/perf.md, [`Device::deep_ring_stages`]).
    pub(crate) fn stages_fitting(
        self,
        bits: u32,
        sym: bool,
        smem_per_sm: usize,
        reserved: usize,
        blocks: usize,
    ) -> usize {
        let per_block = (smem_per_sm / blocks).saturating_sub(reserved + self.smem_bytes(bits, sym, 0));
        (per_block / self.stage_bytes(bits, sym)).clamp(2, BULK_MAX_STAGES)
    }
}

/// Device memory owned by a layer, freed in the context that allocated it.
struct DevBuf {
    ptr: cu::CUdeviceptr,
    /// Bytes of data (what a benchmark's read floor streams).
    len: usize,
    ctx: cu::CUcontext,
}

/// Which kernel family a layer is prepared for (each has its own device layout; a layer holds one).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFamily {
    /// Tensor cores (kernels/gptq_mma.cu) where the layout allows, else CUDA cores.
    Auto,
    /// The CUDA-core split-K GEMV (kernels/gptq_gemv.cu), for A/B benchmarks and tests.
    CudaCores,
}

enum Weights {
    /// kernels/gptq_gemv.cu: packed rows in permuted K order, f32 scales, scaled zeros and zeros.
    Gemv { qweight: DevBuf, gword: DevBuf, scale: DevBuf, szero: DevBuf, zero: DevBuf, pair_math: bool },
    /// kernels/gptq_mma.cu: mma-fragment tiles; per-lane scales and zero offsets per activation type
    /// (large batches), per-group scales and zeros in accumulator order (small batches).
    Mma {
        qweight: DevBuf,
        acc_scale: DevBuf,
        acc_zero: Option<DevBuf>,
        scale_f16: DevBuf,
        scale_bf16: DevBuf,
        nzero_f16: Option<DevBuf>,
        nzero_bf16: Option<DevBuf>,
        tiles_per_group: usize,
        group_shift: u32,
    },
}

/// A `gemm` call's operands (device addresses; strides in elements), as the dense path checks and
/// plans them.
#[derive(Clone, Copy)]
struct Operands {
    a: u64,
    dtype: ActDType,
    m: usize,
    lda: usize,
    c: u64,
    ldc: usize,
    workspace: u64,
    workspace_bytes: usize,
}

/// A layer in device memory, in a kernel's layout: K permuted so every group is contiguous; for the
/// tensor-core kernel, weights pre-shuffled into mma fragments. Immutable, so one plan may serve many
/// streams at once.
pub struct CudaLayer {
    device: Arc<Device>,
    bits: u32,
    k: usize,
    n: usize,
    weights: Weights,
    perm: Option<DevBuf>,
    bias: Option<DevBuf>,
    /// The bias as fp16 and as bf16, for cuBLASLt's epilogue on the dense path (its default bias
    /// type is the output's).
    bias_act: Option<[DevBuf; 2]>,
    /// Blocks per SM the tensor-core launch aims for, when overridden for benchmarks.
    blocks_per_sm: Option<usize>,
    /// Blocks of this layer's tensor-core kernels (1, 2 and 4 fragments) resident on one SM, the
    /// smaller of the fp16 and bf16 kernels: the launch shape must not depend on the activation
    /// type (the workspace query does not know it). Looked up once here, not on every call.
    resident: [usize; 3],
    /// The same for the ring kernels ([`Ring`] order; where the device uses them).
    resident_ring: [usize; 2],
    /// The same for their balanced-split forms ([`CudaLayer::balance`]).
    resident_balanced: [usize; 2],
    /// The same for the wide kernel's forms ([`WideForm::ALL`] order).
    resident_wide: [usize; 4],
    /// Blocks of the bulk-copy kernel resident on one SM with [`BULK_FOUR_STAGES`] stages.
    resident_bulk_four: usize,
    /// Whether [`CudaLayer::bulk_four`] may apply (not with `GPTQ_CUDA_BULK_FOUR=0`).
    bulk_four_on: bool,
    /// The fewest rows the warpgroup kernel takes on this layer (fewer take the bulk-copy kernel),
    /// for either activation type ([`CudaLayer::with_wg_min_rows`]).
    wg_min_rows: usize,
    /// The most rows it takes (more take the register-fed kernel): [`WG_MAX_ROWS`] (8 bit:
    /// [`WG_MAX_ROWS_8BIT`]), or `GPTQ_CUDA_WG_MAX_ROWS` (16 to 128) for comparisons.
    wg_max_rows: usize,
    /// Bit m set: a call of m rows on the warpgroup kernel launches the K splits of each column
    /// block as one thread-block cluster that adds them in shared memory (no workspace, no
    /// reduction launch), because every cluster of the grid fits on the device at once.
    wg_cluster_rows: u32,
    /// Bit m set: a call of m rows on the warpgroup kernel runs two blocks per SM, each with the deep
    /// ring, in as few K splits as that allows (at most 8; they add in clusters where those fit).
    wg_deep_rows: u32,
    /// `GPTQ_CUDA_DEEP_SPLITS` (2 to 8): the deep ring's K splits, for comparisons.
    deep_splits: Option<usize>,
    /// `GPTQ_CUDA_WG_SPLITS` (1 to 64): the warpgroup kernel's K splits at up to 16 rows on its
    /// normal ring, for comparisons.
    wg_splits: Option<usize>,
    /// `GPTQ_CUDA_BULK_MIN_TILES` (0 to 64): the fewest K tiles per split of the bulk-copy kernel
    /// on every call, for comparisons (0: none); unset, [`BULK_MANY_SPLITS_MIN_TILES`] where the
    /// split would exceed [`BULK_MANY_SPLITS`] ([`CudaLayer::bulk_split`]).
    bulk_min_tiles: Option<usize>,
    /// The most threads per output of the split-K reduction ([`reduce_lanes`]): 8, or
    /// `GPTQ_CUDA_REDUCE_LANES` (1, 2, 4 or 8; 0: the plain kernel for every call) for comparisons.
    reduce_lanes_max: usize,
    /// `GPTQ_CUDA_NO_DEEP_RING`: no deep ring at all (read once here, not on every call).
    no_deep_ring: bool,
    /// Whether large act-order calls ([`GATHER_ROW_MIN_ROWS`], [`GATHER_ROW_MIN_ELEMENTS`]) may
    /// gather A row by row through shared memory (sm_90; not with `GPTQ_CUDA_GATHER_BY_ROW=0`).
    gather_by_row: bool,
    /// Whether the bulk-copy kernel may gather act-order A itself over blocks of up to 768 inputs
    /// ([`CudaLayer::gathers_in_kernel`]; not with `GPTQ_CUDA_LONG_GATHER=0`).
    long_gather: bool,
    /// `GPTQ_CUDA_BULK_PAD=0` / `1`: the bulk-copy kernel's launches never / always ask for the full
    /// ring's shared memory ([`CudaLayer::pads_bulk`]), for comparisons.
    bulk_pad: Option<bool>,
    /// Where the ring kernels take balanced splits ([`CudaLayer::balance`]; `GPTQ_CUDA_BALANCED=0`:
    /// nowhere, `2`: the warpgroup kernel wherever the bulk-copy kernel would, for comparisons).
    balanced: Balanced,
}

// SAFETY: device pointers are plain integers; the memory is only freed in Drop.
unsafe impl Send for CudaLayer {}
unsafe impl Sync for CudaLayer {}

fn upload<T: Copy>(data: &[T], what: &str) -> Result<DevBuf> {
    let bytes = std::mem::size_of_val(data).max(4);
    let len = std::mem::size_of_val(data);
    let mut ptr = 0;
    let mut ctx = std::ptr::null_mut();
    // SAFETY: allocates `bytes` and copies `data` (the current context is the layer's device).
    unsafe {
        check(cu::cuCtxGetCurrent(&mut ctx), "cuCtxGetCurrent")?;
        check(cu::cuMemAlloc_v2(&mut ptr, bytes), &format!("cuMemAlloc ({what}, {bytes} bytes)"))?;
        if let Err(e) = check(cu::cuMemcpyHtoD_v2(ptr, data.as_ptr().cast(), std::mem::size_of_val(data)), what) {
            cu::cuMemFree_v2(ptr);
            return Err(e);
        }
    }
    Ok(DevBuf { ptr, len, ctx })
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
    // SAFETY: the caller's contract.
    unsafe { launch_smem(f, grid, threads, 0, stream, args, what, false) }
}

/// [`launch`] with `smem` bytes of dynamic shared memory (the function's limit raised at init), and
/// with programmatic stream serialization when `pdl` (kernels/common.cuh, pdl_wait: the kernel may
/// start while the previous one on the stream finishes, and waits for it before touching its data).
///
/// # Safety
/// As [`launch`]; with `pdl`, the kernel must call `pdl_wait()` before it reads or writes memory
/// that earlier work on the stream may use.
#[allow(clippy::too_many_arguments)]
unsafe fn launch_smem(
    f: cu::CUfunction,
    grid: (u32, u32, u32),
    threads: u32,
    smem: u32,
    stream: cu::CUstream,
    args: &mut [*mut c_void],
    what: &str,
    pdl: bool,
) -> Result<()> {
    // SAFETY: the caller's contract.
    unsafe { launch_cluster(f, grid, threads, smem, 1, stream, args, what, pdl) }
}

/// Launch attributes: programmatic stream serialization when `pdl`, and thread-block clusters of
/// `cluster_y` blocks along grid y when more than 1.
fn launch_attributes(pdl: bool, cluster_y: u32) -> Vec<cu::CUlaunchAttribute> {
    let mut attrs = Vec::with_capacity(2);
    if pdl {
        // SAFETY: a zeroed attribute is a valid plain-data value; then id and the matching member set.
        let mut attr: cu::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        attrs.push(attr);
    }
    if cluster_y > 1 {
        // SAFETY: as above.
        let mut attr: cu::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attr.value.clusterDim.x = 1;
        attr.value.clusterDim.y = cluster_y;
        attr.value.clusterDim.z = 1;
        attrs.push(attr);
    }
    attrs
}

/// A launch configuration for `cuLaunchKernelEx` and the cluster occupancy query; `attrs` must
/// outlive its use.
fn launch_config(
    grid: (u32, u32, u32),
    threads: u32,
    smem: u32,
    stream: cu::CUstream,
    attrs: &mut [cu::CUlaunchAttribute],
) -> cu::CUlaunchConfig {
    cu::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: threads,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream,
        attrs: if attrs.is_empty() { std::ptr::null_mut() } else { attrs.as_mut_ptr() },
        numAttrs: attrs.len() as u32,
    }
}

/// [`launch_smem`] as thread-block clusters of `cluster_y` blocks along grid y (1: no clusters),
/// which must divide `grid.1`.
///
/// # Safety
/// As [`launch_smem`].
#[allow(clippy::too_many_arguments)]
unsafe fn launch_cluster(
    f: cu::CUfunction,
    grid: (u32, u32, u32),
    threads: u32,
    smem: u32,
    cluster_y: u32,
    stream: cu::CUstream,
    args: &mut [*mut c_void],
    what: &str,
    pdl: bool,
) -> Result<()> {
    let r = if pdl || cluster_y > 1 {
        let mut attrs = launch_attributes(pdl, cluster_y);
        let config = launch_config(grid, threads, smem, stream, &mut attrs);
        // SAFETY: the caller's contract above; `config` and `attrs` outlive the call.
        unsafe { cu::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()) }
    } else {
        // SAFETY: the caller's contract above.
        unsafe {
            cu::cuLaunchKernel(
                f,
                grid.0,
                grid.1,
                grid.2,
                threads,
                1,
                1,
                smem,
                stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    };
    check(r, what)
}

/// How a tensor-core GEMM call is cut up (kernels/gptq_mma.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MmaShape {
    /// 16-row mma fragments per block (block rows = 16·mf).
    mf: usize,
    /// Warps of the block along K (4/wk warps along N).
    wk: usize,
    splits: usize,
    tiles_per_split: usize,
    /// Inputs of A per shared-memory chunk.
    chunk: usize,
    /// The sm_90 ring kernel taking the call (one block row), or none: the register-fed kernels.
    ring: Option<Ring>,
    /// The warpgroup kernel at two blocks per SM with its deep ring ([`Device::deep_ring_stages`]).
    deep: bool,
    /// The bulk-copy kernel's balanced splits ([`balanced_split`]): this many blocks of
    /// `tiles_per_split` tiles over all column blocks' tiles in storage order; `splits` is then the
    /// most blocks that cover one column block (partial-sum slots).
    balanced: Option<usize>,
    /// The bulk-copy kernel at [`BULK_FOUR_PER_SM`] blocks per SM with [`BULK_FOUR_STAGES`] stages
    /// ([`CudaLayer::bulk_four`]).
    four: bool,
}

/// How a call runs on the wide warpgroup kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WideShape {
    /// The kernel's form (its rows per block: blocks of them along grid z).
    form: WideForm,
    splits: usize,
    tiles_per_split: usize,
}

/// Where a layer's ring kernels take balanced splits ([`CudaLayer::balance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Balanced {
    Off,
    Rule,
    Always,
}

/// The most rows the warpgroup kernel takes balanced splits for ([`CudaLayer::balance`]). Measured
/// on the H100 (docs/perf.md, version 56), 8192×28672: at M = 2 fp16 the same as 3 splits adding in
/// clusters (47.9-48.0 µs), bf16 faster (50.4 → 48.2); from M = 4 fp16 slower (M = 4 48.1 → 48.8,
/// M = 8 48.4 → 51.2, M = 16 48.5 → 55.2: the partial sums of 5 slots per column block).
const WG_BALANCED_ROWS: usize = 2;
/// The same on memory-rich cards ([`Device::memory_rich`](super::Device::memory_rich)), where up to
/// 8 rows take the warpgroup kernel only on layers with long K splits. Measured on the H200
/// (docs/perf.md, version 70), 8192×28672 fp16: M = 3 / 4 / 6 / 8 46.7 / 46.7 / 46.6 / 46.8 → 42.4 /
/// 42.6 / 43.3 / 43.7 µs (the clusters' 336 blocks leave 15% of the block slots empty, and on that
/// card the consumers, not HBM, set the pace); at 12 and 16 rows 3% and 1% faster there, but 4–14%
/// slower on 8192×10240, so those keep the rule of other cards.
const WG_BALANCED_ROWS_RICH: usize = 8;
/// Blocks per SM of the bulk-copy kernel on memory-rich cards for 4-bit symmetric layers without
/// act-order at up to [`BULK_FOUR_ROWS`] rows, with [`BULK_FOUR_STAGES`] ring stages (so that four
/// fit in an SM's shared memory), instead of three with the full ring ([`CudaLayer::bulk_four`]).
/// On that card the consumers' decode, not HBM, sets the pace, and a fourth warp per scheduler
/// hides more of its latency. Measured on the H200 (docs/perf.md, version 73), fp16 / bf16 at M = 1:
/// 28672×8192 38.7 → 35.6 µs (bf16 42.3 → 39.3), 5120×13824 14.4 → 13.4, 8192×8192 13.3 → 12.45,
/// 14336×4096 12.3 → 11.8, 8192×28672 40.3 → 39.8 (uniform splits, against the balanced ones);
/// M = 2 alike; 4096×14336 0.2-0.3 µs slower. In the probe before it, 4 rows ran 1-1.4 µs slower on
/// 4096×4096, 14336×4096 and (on the warpgroup kernel's ring) 8192×28672, but 2.4 µs faster on
/// 28672×8192: a rule by layer could take more rows there.
pub(crate) const BULK_FOUR_PER_SM: usize = 4;
/// Stages of the bulk-copy kernel's ring at [`BULK_FOUR_PER_SM`] blocks per SM.
pub(crate) const BULK_FOUR_STAGES: usize = 3;
/// The most rows that take [`BULK_FOUR_PER_SM`] blocks per SM.
const BULK_FOUR_ROWS: usize = 2;
/// The fewest rows the warpgroup kernel takes on memory-rich cards on 4-bit layers with long K
/// splits: [`WG_RICH_MIN_ROWS_BALANCED`] where its splits are balanced, else this. Measured on the
/// H200 (docs/perf.md, version 70): 28672×8192 fp16 at M = 2 / 4 / 6 on the bulk-copy kernel 39.0 /
/// 39.8 / 42.0 µs against the warpgroup kernel's 42.5 / 42.7 / 42.8 (M = 8 the same, 7 not measured
/// on the bulk-copy kernel: the limit rests on M = 8);
/// asymmetric 39.8 / 40.5 / 43.3 against 45.9 / 46.1 / 46.2 at M = 2 / 4 / 6, and 8192×28672
/// asymmetric (no balanced warpgroup kernel) 44.0 / 46.8 / 49.9 against 50.2 / 50.3 / 50.4, M = 7
/// the same.
const WG_RICH_MIN_ROWS: usize = 7;
/// 8192×28672 fp16 at M = 2: the balanced bulk-copy kernel 41.2 µs against the balanced warpgroup
/// kernel's 42.4; at M = 3 43.7 against 42.4, and the gap grows with the rows.
const WG_RICH_MIN_ROWS_BALANCED: usize = 3;

/// Above this many K splits the bulk-copy kernel's splits take at least
/// [`BULK_MANY_SPLITS_MIN_TILES`] tiles ([`CudaLayer::bulk_split`]).
const BULK_MANY_SPLITS: usize = 32;
/// Two stages of 4-bit tiles.
const BULK_MANY_SPLITS_MIN_TILES: usize = 8;

/// The number in environment variable `name`, if it is set to one (comparison switches).
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Up to this many K splits the split-K reduction is `gptq_reduce_*` (kernels/gptq_gemv.cu,
/// `reduce`: one thread per output, its compiler-unrolled loop); above, see [`reduce_lanes`].
const REDUCE_PLAIN_SPLITS: usize = 24;
/// The most threads the lanes reduction gives its outputs several lanes for ([`reduce_lanes`]).
const REDUCE_LANES_THREADS: usize = 8192;

/// How the split-K reduction adds `splits` partial sums of `outputs` elements: `None`, the plain
/// kernel; `Some(lanes)`, `gptq_reduce_*_lanes{lanes}`, whose threads issue whole rounds of 16
/// loads. Lanes per output: the fewest of 1, 2, 4, 8 (at most `max`; 0: always the plain kernel)
/// that leave each at most 16 splits, one round of loads; one where that would make more than
/// [`REDUCE_LANES_THREADS`] threads, and then the plain kernel where `splits` is a multiple of 16
/// (its unrolled loop then has no remainder either). Measured on the H200 (docs/perf.md, version
/// 68): the plain loop issues the splits past its batches of 16, 8 and 4 one L2 round trip at a
/// time (86 splits: 8 round trips); 4096×1024, 8192×1024, 8192×2048 and 4864×896 at M = 1 ran
/// 1.0-1.2 µs faster (4096×1024 5.7 → 4.7 µs) and at M = 2-8 up to 1.1 µs faster; at 12-24 splits
/// and at 32 or 64 splits with one lane the plain kernel was as fast or faster.
fn reduce_lanes(splits: usize, outputs: usize, max: usize) -> Option<usize> {
    if splits <= REDUCE_PLAIN_SPLITS || max == 0 {
        return None;
    }
    let lanes = [1, 2, 4, 8].into_iter().find(|&l| l >= max || splits <= 16 * l).unwrap_or(8);
    match (outputs * lanes <= REDUCE_LANES_THREADS, splits % 16) {
        (true, _) => Some(lanes),
        (false, 0) => None,
        (false, _) => Some(1),
    }
}

/// The wide kernel's split of `kt` K tiles for `blocks` blocks per split on `slots` block slots:
/// (splits, tiles per split), each split whole `stage`s, at least two. As many splits as fill the
/// slots once, but at most `cap` (0: no limit) unless that leaves fewer than [`WIDE_MIN_BLOCKS`]
/// blocks; `forced` (`GPTQ_CUDA_WIDE_SPLITS`) instead where set. The caller passes the cap only
/// where the uncapped splits' partial sums would weigh at least as much as the weights' codes. Measured on the H200
/// (docs/perf.md, version 71), with [`WIDE_MAX_SPLITS`](super::device::WIDE_MAX_SPLITS) = 16 at 4
/// bit: 4096×1024 at 17-64 rows (32 splits → 16) 5.6-10.1 → 5.2-7.6 µs, 8192×1024 (64 or 32 → 16)
/// 10.4-11.7 → 7.4-9.6, 4864×896 at 24-128 rows (38 or 26 → 16) 6.3-12.8 → 5.8-11.0 (17 rows 6.1
/// → 7.0), 4096×2560 at 17-32 rows (22 → 16) 8.9-10.2 → 7.0-8.5; 3584×512 (two column blocks: 28
/// splits → 14) 0.2-1.5 µs slower at 17-64 rows, hence the floor of 64 blocks, which keeps its 28;
/// and where the partial sums are lighter than the weights the limit lost: 14336×2048 at 17-32 rows
/// (33 → 16) 13.6-14.3 → 15.3-15.9, 18944×3584 (18 → 16) +3%, 8 bit 18944×3584 +1 µs. 8 bit
/// 8192×1024 at 17-32 rows (64 → 16, partial sums as heavy as the codes) 11.8 / 12.6 → 8.5 / 8.9.
fn wide_split(
    kt: usize,
    stage: usize,
    blocks: usize,
    slots: usize,
    cap: usize,
    forced: Option<usize>,
) -> (usize, usize) {
    let fill = slots / blocks.max(1);
    let cap = if cap == 0 { usize::MAX } else { cap.max(WIDE_MIN_BLOCKS.div_ceil(blocks.max(1))) };
    let want = forced.unwrap_or(fill.min(cap));
    let splits = want.clamp(1, (kt / (2 * stage)).max(1)).min(65535);
    let tiles_per_split = kt.div_ceil(splits).next_multiple_of(stage);
    (kt.div_ceil(tiles_per_split), tiles_per_split)
}

/// The fewest blocks the wide kernel's cap on K splits leaves a call ([`wide_split`]).
const WIDE_MIN_BLOCKS: usize = 64;

/// Balanced splits for the bulk-copy kernel (kernels/gptq_mma.cu, bulk_gemm_small): about `slots`
/// blocks share the `quads · kt` tiles of all column blocks in storage order, each a whole number of
/// `stage` tiles. Returns (tiles per block, blocks, most blocks covering one column block).
fn balanced_split(quads: usize, kt: usize, stage: usize, slots: usize) -> (usize, usize, usize) {
    let total = quads * kt;
    let per = total.div_ceil(slots.max(1)).next_multiple_of(stage);
    let blocks = total.div_ceil(per);
    let most = (0..quads).map(|q| ((q + 1) * kt - 1) / per - q * kt / per + 1).max().unwrap_or(1);
    (per, blocks, most)
}

/// The key under which [`Device`](super::Device) keeps the residency of bulk-copy kernel `name` with
/// [`BULK_FOUR_STAGES`] stages.
pub(crate) fn bulk_four_key(name: &str) -> String {
    format!("{name}@{BULK_FOUR_STAGES}")
}

/// The launch shape for `m` rows of a `k`×`n` layer of `bits`-bit codes on a device with `sm_count`
/// SMs, where `resident(mf)` blocks of the kernel with `mf` fragments fit on one SM at once.
#[allow(clippy::too_many_arguments)]
fn mma_shape(
    m: usize,
    k: usize,
    n: usize,
    bits: u32,
    sm_count: usize,
    blocks_per_sm: Option<usize>,
    resident: impl Fn(usize) -> usize,
) -> MmaShape {
    // Small M: one 16-row fragment, each warp streaming one column tile (memory-bound). Larger M:
    // more rows per block so each dequantized tile feeds more mma, 4 warps sharing A.
    // Blocks per SM to aim for (through splits of K): at M <= 16 three measured faster than 4, 6
    // or 8 (fewer splits and partial sums; docs/perf.md).
    let (mf, wk, per_sm) = match m {
        0..=16 => (1, 1, 3),
        17..=32 => (2, 2, 3),
        _ => (4, 1, 2),
    };
    let per_sm = blocks_per_sm.unwrap_or(per_sm); // benchmark override (GPTQ_CUDA_BLOCKS_PER_SM)
    // Never more split blocks than fit at once: a second wave of a few blocks costs a whole block's
    // time (version 10 in docs/perf.md: 448 blocks where 396 fit ran 30% slower than 336).
    let per_sm = per_sm.min(resident(mf).max(1));
    let kt = k.div_ceil(TILE_K);
    let cols_per_block = TILE_N * (4 / wk);
    let blocks = n.div_ceil(cols_per_block) * m.div_ceil(16 * mf);
    let want = (per_sm * sm_count) / blocks;
    // Each warp keeps at least two tiles per split.
    let mut splits = want.clamp(1, (kt / (2 * wk)).max(1)).min(65535); // gridDim.y
    if mf == 1 {
        // Small batches stream the weights once; the partial sums (written, then read by the
        // reduction) must not outweigh them: 4096×4096 at M = 16 ran 16% faster with 16 splits than
        // with 24 (docs/perf.md, version 15).
        splits = splits.min((k * bits as usize / (64 * m)).max(1));
    }
    let tiles_per_split = kt.div_ceil(splits);
    // Shared memory holds rows × (chunk + 8) halves (kernels/gptq_mma.cu, SMEM_HALVES); chunks are
    // multiples of 64 inputs so rows start 16 bytes apart modulo 128 (conflict-free ldmatrix).
    let rows = m.min(16 * mf);
    let cap = (MMA_SMEM_HALVES / rows - 8) / 64 * 64;
    let chunk = cap.min((tiles_per_split * TILE_K).next_multiple_of(64));
    let splits = kt.div_ceil(tiles_per_split);
    MmaShape { mf, wk, splits, tiles_per_split, chunk, ring: None, deep: false, balanced: None, four: false }
}

/// CUDA-core kernel: (rows of A per block, splits of K, word rows per split) for `m` rows.
fn gemv_shape(m: usize, k: usize, n: usize, bits: u32, sm_count: usize) -> (usize, usize, usize) {
    let mt = match m {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    };
    let words = k / (32 / bits) as usize;
    let cap = KSPAN / (32 / bits) as usize;
    let blocks = n.div_ceil(THREADS) * m.div_ceil(mt);
    // Four blocks (16 warps) per SM measured best (eight: 7% slower at M = 1); every split must
    // fit the shared-memory staging and give each warp at least two word rows.
    let want = (4 * sm_count).div_ceil(blocks);
    let splits = want.max(words.div_ceil(cap)).min((words / 8).max(1));
    let wps = words.div_ceil(splits);
    (mt, words.div_ceil(wps), wps)
}

/// The largest value of `partial(r)` over r in 1..=m, where `partial` is non-decreasing within each run
/// of `step` rows ending at a multiple of `step` after the first (the split of K is fixed there and
/// the partial sums grow with r; within the first run the split may shrink as r grows), and
/// non-decreasing from `limit` on: every r of the first run, the ends of later runs up to `limit`, and
/// `m` itself need evaluating.
fn max_over_rows(m: usize, step: usize, limit: usize, partial: impl Fn(usize) -> usize) -> usize {
    let last = m.min(limit) / step;
    let first = (1..=m.min(step)).map(&partial);
    first.chain((2..=last).map(|j| partial(j * step))).chain(std::iter::once(partial(m))).max().unwrap_or(0)
}

/// The expected number of distinct 32-byte sectors (16 inputs) of one row of A that a block's gather
/// of `inputs` act-order columns touches, the columns drawn at random from `k` (an act-order
/// permutation orders inputs by the Hessian's diagonal: unrelated to their position): s·(1 − (1 −
/// 1/s)^inputs) of the row's s sectors.
fn long_gather_sectors(inputs: usize, k: usize) -> f64 {
    let s = k.div_ceil(16) as f64;
    s * (1.0 - (1.0 - 1.0 / s).powi(inputs as i32))
}

/// The tensor map through which the warpgroup kernels read A (kernels/gptq_mma.cu, wg_gemm_small and
/// wg_gemm_wide): `rows` rows of `k` inputs at `a` (16-byte aligned), row stride `ld` elements (a
/// multiple of 8), boxes of `box_rows` rows × `box_k` inputs written swizzled as wgmma reads them (128-byte rows: 128-byte
/// swizzle; 64-byte rows: 64-byte), zeros past K and past the last row. Encoding is host-only: it
/// allocates nothing and touches no stream.
fn a_tensor_map(
    a: u64,
    dtype: ActDType,
    k: usize,
    rows: usize,
    ld: usize,
    box_k: u32,
    box_rows: u32,
) -> Result<cu::CUtensorMap> {
    use cu::{CUtensorMapDataType as T, CUtensorMapSwizzle as S};
    let elem =
        if dtype == ActDType::BF16 { T::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 } else { T::CU_TENSOR_MAP_DATA_TYPE_FLOAT16 };
    let swizzle = if box_k * 2 == 128 { S::CU_TENSOR_MAP_SWIZZLE_128B } else { S::CU_TENSOR_MAP_SWIZZLE_64B };
    let dims = [k as u64, rows as u64];
    let strides = [ld as u64 * 2];
    let boxes = [box_k, box_rows];
    let unit = [1u32, 1];
    // SAFETY: a zeroed map is a valid value for the driver to overwrite.
    let mut map: cu::CUtensorMap = unsafe { std::mem::zeroed() };
    // SAFETY: every array holds the rank's (2) entries, the strides rank − 1; the driver only writes `map`.
    let r = unsafe {
        cu::cuTensorMapEncodeTiled(
            &mut map,
            elem,
            2,
            a as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            unit.as_ptr(),
            cu::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            cu::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            cu::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    check(r, "cuTensorMapEncodeTiled (A for the warpgroup kernel)")?;
    Ok(map)
}

/// The fewest rows, and inputs times rows, an act-order call gathers row by row
/// ([`CudaLayer::gathers_by_row`]): below, the element-wise gather's few random loads cost less than
/// copying whole rows first. Measured on the H100 (docs/perf.md, version 41): row by row 2.3-3.5 µs
/// faster at K = 28672, M = 8-16 (229,376-458,752 inputs × rows), 0.5-1.2 µs faster at K = 14336,
/// M = 16, and at every K from M = 64 (up to 11% at M = 256); 0.3-1.7 µs slower at K = 14336, M = 8
/// (114,688) and at K = 4096-8192, M = 8-16.
const GATHER_ROW_MIN_ROWS: usize = 8;
const GATHER_ROW_MIN_ELEMENTS: usize = 3 << 16;

/// Arguments of a kernel launch: pointers to the values, in the kernel's parameter order.
macro_rules! args {
    ($($v:expr),* $(,)?) => { [$((&raw const $v).cast_mut().cast::<c_void>()),*] };
}

impl CudaLayer {
    /// Uploads `layer` to device `ordinal` (initializing the device and its kernels if needed).
    /// Supported: 2, 3, 4 and 8 bit, any group size, act-order whose groups are runs of whole words.
    /// Layers whose groups are uniform runs of 16 inputs in permuted order (every GPTQ layer with a
    /// group size, with or without act-order) run on tensor cores; others on the CUDA-core kernel.
    /// 2- and 3-bit layers run as 4-bit ones, their codes widened here
    /// ([`QuantizedLayer::widened`]): the same results, with 4-bit device memory and speed.
    pub fn new(layer: &QuantizedLayer, ordinal: usize) -> Result<CudaLayer> {
        Self::with_family(layer, ordinal, KernelFamily::Auto)
    }

    /// [`new`](Self::new) with the kernel family chosen by the caller (benchmarks and tests). The
    /// `GPTQ_CUDA_KERNEL=cuda-cores` environment variable forces the CUDA-core kernel everywhere.
    #[doc(hidden)]
    pub fn with_family(layer: &QuantizedLayer, ordinal: usize, family: KernelFamily) -> Result<CudaLayer> {
        let d = *layer.desc();
        if d.bits == 2 || d.bits == 3 {
            return Self::with_family(&layer.widened(4)?, ordinal, family);
        }
        if d.bits != 4 && d.bits != 8 {
            return Err(Error::Unsupported(format!("the CUDA kernels support 2, 3, 4 and 8 bit, not {}", d.bits)));
        }
        let plan = layer.gemm_plan();
        if !plan.direct {
            return Err(Error::Unsupported(
                "the CUDA kernels need every g_idx group to be a run of whole packed words".into(),
            ));
        }
        let (k, n) = (d.in_features, d.out_features);
        let qweight = plan.qweight_perm.as_deref().unwrap_or(layer.qweight());
        let forced = std::env::var("GPTQ_CUDA_KERNEL").is_ok_and(|v| v == "cuda-cores");
        let tiles = if family == KernelFamily::Auto && !forced {
            mma_tiles(d.bits, k, n, qweight, &plan.segments, &plan.scales, &plan.zeros)
        } else {
            None
        };
        let device = init(ordinal)?;
        let _ctx = CtxGuard::push(device.ctx)?;
        let weights = match tiles {
            Some(t) => Weights::Mma {
                qweight: upload(&t.qweight, "tiled qweight")?,
                acc_scale: upload(&t.acc_scale, "scales")?,
                acc_zero: t.acc_zero.map(|z| upload(&z, "zeros")).transpose()?,
                scale_f16: upload(&t.scale_f16, "scales")?,
                scale_bf16: upload(&t.scale_bf16, "scales")?,
                nzero_f16: t.nzero_f16.map(|z| upload(&z, "zero offsets")).transpose()?,
                nzero_bf16: t.nzero_bf16.map(|z| upload(&z, "zero offsets")).transpose()?,
                tiles_per_group: t.tiles_per_group,
                group_shift: t.group_shift,
            },
            None => {
                let pf = (32 / d.bits) as usize;
                let mut gword = vec![0i32; k / pf];
                for &(s, e, g) in &plan.segments {
                    gword[s / pf..e / pf].fill(g as i32);
                }
                let szero: Vec<f32> = plan.scales.iter().zip(&plan.zeros).map(|(s, z)| s * z).collect();
                Weights::Gemv {
                    qweight: upload(qweight, "qweight")?,
                    gword: upload(&gword, "group index")?,
                    scale: upload(&plan.scales, "scales")?,
                    szero: upload(&szero, "scaled zeros")?,
                    zero: upload(&plan.zeros, "zeros")?,
                    pair_math: std::env::var_os("GPTQ_CUDA_F32_MATH").is_none(),
                }
            }
        };
        let bias: Option<Vec<f32>> = layer.bias().map(|b| b.iter().map(|v| v.to_f32()).collect());
        let perm: Option<Vec<i32>> = plan.perm.as_ref().map(|p| p.iter().map(|&c| c as i32).collect());
        let sym = matches!(&weights, Weights::Mma { nzero_f16: None, .. });
        let resident_of = |name: &dyn Fn(&str) -> String| {
            ["f16", "bf16"].iter().map(|act| device.resident_blocks(&name(act))).min().unwrap_or(1)
        };
        let resident = [1, 2, 4].map(|mf| resident_of(&|act| mma_kernel_name(d.bits, mf, act, sym)));
        let resident_ring = [Ring::Bulk, Ring::Warpgroup].map(|r| resident_of(&|act| r.kernel_name(d.bits, act, sym)));
        let resident_balanced =
            [Ring::Bulk, Ring::Warpgroup].map(|r| resident_of(&|act| r.balanced_kernel_name(d.bits, act, sym)));
        let resident_wide = WideForm::ALL.map(|f| resident_of(&|act| f.kernel_name(d.bits, act, sym)));
        let resident_bulk_four = resident_of(&|act| bulk_four_key(&Ring::Bulk.kernel_name(d.bits, act, sym)));
        CudaLayer {
            bits: d.bits,
            k,
            n,
            weights,
            perm: perm.map(|p| upload(&p, "permutation")).transpose()?,
            bias_act: match &bias {
                Some(b) => Some([
                    upload(&b.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect::<Vec<u16>>(), "bias")?,
                    upload(&b.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect::<Vec<u16>>(), "bias")?,
                ]),
                None => None,
            },
            bias: bias.map(|b| upload(&b, "bias")).transpose()?,
            blocks_per_sm: std::env::var("GPTQ_CUDA_BLOCKS_PER_SM")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0),
            resident,
            resident_ring,
            resident_balanced,
            resident_wide,
            resident_bulk_four,
            bulk_four_on: std::env::var("GPTQ_CUDA_BULK_FOUR").map_or(true, |v| v != "0"),
            wg_min_rows: 9,
            wg_max_rows: std::env::var("GPTQ_CUDA_WG_MAX_ROWS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(if d.bits == 8 { WG_MAX_ROWS_8BIT } else { WG_MAX_ROWS }, |v: usize| {
                    v.clamp(WG_ROWS, WG_MAX_ROWS)
                }),
            wg_cluster_rows: 0,
            wg_deep_rows: 0,
            no_deep_ring: std::env::var_os("GPTQ_CUDA_NO_DEEP_RING").is_some(),
            deep_splits: env_number("GPTQ_CUDA_DEEP_SPLITS").filter(|v| (2..=8).contains(v)),
            reduce_lanes_max: env_number("GPTQ_CUDA_REDUCE_LANES")
                .filter(|v: &usize| [0, 1, 2, 4, 8].contains(v))
                .unwrap_or(8),
            wg_splits: env_number("GPTQ_CUDA_WG_SPLITS").filter(|v| (1..=64).contains(v)),
            bulk_min_tiles: env_number("GPTQ_CUDA_BULK_MIN_TILES").filter(|v| (0..=64).contains(v)),
            gather_by_row: std::env::var("GPTQ_CUDA_GATHER_BY_ROW").map_or(true, |v| v != "0"),
            long_gather: std::env::var("GPTQ_CUDA_LONG_GATHER").map_or(true, |v| v != "0"),
            bulk_pad: std::env::var("GPTQ_CUDA_BULK_PAD").ok().map(|v| v == "1"),
            balanced: match std::env::var("GPTQ_CUDA_BALANCED").as_deref() {
                Ok("0") => Balanced::Off,
                Ok("2") => Balanced::Always,
                _ => Balanced::Rule,
            },
            device,
        }
        .with_wg_min_rows()
        .with_deep_rows()
        .with_cluster_rows()
    }

    /// Sets [`CudaLayer::wg_min_rows`]: 9; 2 where the warpgroup kernel's K splits are long (at
    /// least [`WG_LONG_SPLIT_TILES`] tiles: 8192×28672 and 28672×8192, not the mid-sized layers),
    /// so their fixed costs weigh little; 1 for 8-bit layers whose long splits (2 to 8) may add in
    /// one cluster (8192×28672: 3; [`CudaLayer::with_cluster_rows`] takes it back to 2 where the
    /// clusters do not fit); on memory-rich cards ([`Device::memory_rich`](super::Device::memory_rich))
    /// 4-bit layers with long splits take [`WG_RICH_MIN_ROWS_BALANCED`] where the warpgroup kernel's
    /// splits are balanced, else [`WG_RICH_MIN_ROWS`]; `GPTQ_CUDA_WG_MIN_ROWS` overrides all. Measured on the H100
    /// (docs/perf.md, version 33): at 2–8 rows 0–7% faster than the bulk-copy kernel on those two
    /// layers (8192×28672 at M = 8: 48.6 against 52.4 µs), 5–60% slower on 4096² to 8192², slower
    /// at M = 1 at 4 bit; at 8 bit on 8192×28672 M = 1 88.7 against 90.3 µs (version 40), while
    /// 28672×8192 (12 splits through the workspace) was slower, 87.7 against 84.6.
    /// bf16 activations take the same kernels: from version 44 to 50, 4-bit layers whose long splits
    /// add in one cluster took the warpgroup kernel from 1 row with bf16 (its bulk-copy kernel had
    /// been 1.07× its fp16 time there), but since version 47 the bulk-copy kernel is the faster one
    /// for bf16 too (version 50: 8192×28672 M = 1 48.8-48.9 against 50.5-50.7 µs; act-order 49.1
    /// against 57.4-57.9, its gather launch before the clustered kernel).
    fn with_wg_min_rows(mut self) -> Self {
        let split = self.ring_split(WG_ROWS, Ring::Warpgroup);
        let long = split.is_some_and(|s| s.tiles_per_split >= WG_LONG_SPLIT_TILES);
        let clusters_allowed = std::env::var_os("GPTQ_CUDA_NO_CLUSTERS").is_none();
        let one_cluster = clusters_allowed && split.is_some_and(|s| (2..=8).contains(&s.splits));
        let default = match (long, self.bits == 8 && one_cluster) {
            (true, true) => 1,
            (true, false) if self.device.memory_rich && self.bits == 4 => {
                let balanced =
                    self.ring_split(WG_RICH_MIN_ROWS_BALANCED, Ring::Warpgroup).is_some_and(|s| s.balanced.is_some());
                if balanced { WG_RICH_MIN_ROWS_BALANCED } else { WG_RICH_MIN_ROWS }
            }
            (true, false) => 2,
            (false, _) => 9,
        };
        self.wg_min_rows = self.device.wg_min_rows.unwrap_or(default);
        self
    }

    /// Sets [`CudaLayer::wg_deep_rows`]: rows from [`WG_DEEP_MIN_ROWS`] on the warpgroup kernel,
    /// on layers whose K splits are long ([`WG_LONG_SPLIT_TILES`]) but more than 8 at three blocks
    /// per SM, take two blocks per SM with the deep ring where that needs at most 8 splits (fewer
    /// partial sums; they add in clusters where the device fits clusters of that size, else through
    /// the workspace); not with `GPTQ_CUDA_NO_DEEP_RING`. Measured on the H100 (docs/perf.md,
    /// version 37): 28672×8192 (12 splits → 8) at M = 16 49.7 against 51.2 µs, M = 12 49.1 against
    /// 50.0-50.4, M = 8 48.2 against 48.6; M = 2-4 no better (their partial sums are few).
    fn with_deep_rows(mut self) -> Self {
        let off = self.no_deep_ring;
        let sym = self.symmetric();
        if !self.device.wg
            || off
            || self.blocks_per_sm.is_some()
            || self.device.deep_ring_stages(self.bits, sym).is_none()
        {
            return self;
        }
        let Some(normal) = self.ring_split(WG_ROWS, Ring::Warpgroup) else { return self };
        // GPTQ_CUDA_DEEP_RING=1: also where the splits are short (for comparisons).
        let any_split = std::env::var("GPTQ_CUDA_DEEP_RING").is_ok_and(|v| v == "1");
        if normal.splits <= 8 || (normal.tiles_per_split < WG_LONG_SPLIT_TILES && !any_split) {
            return self;
        }
        if self.wg_split(true, 1).is_some_and(|s| (2..=8).contains(&s.splits)) {
            for m in WG_DEEP_MIN_ROWS.max(self.wg_min_rows)..=WG_ROWS {
                self.wg_deep_rows |= 1 << m;
            }
        }
        self
    }

    /// Sets [`CudaLayer::wg_cluster_rows`]: for each row count the warpgroup kernel takes, whether
    /// its K splits (2 to 8, the portable cluster sizes) can run as clusters with the whole grid
    /// resident at once (the driver's cluster occupancy, which knows how this chip's SMs are
    /// grouped), unless `GPTQ_CUDA_NO_CLUSTERS` is set. Measured on the H100 (docs/perf.md, version
    /// 32): 3 splits (8192×28672) 10% faster, 7 the same; 16 (4096×4096, non-portable) 3% slower.
    fn with_cluster_rows(mut self) -> Result<Self> {
        if !self.device.wg || std::env::var_os("GPTQ_CUDA_NO_CLUSTERS").is_some() {
            return Ok(self);
        }
        let sym = self.symmetric();
        let mut mask = 0;
        for m in 1..=WG_ROWS {
            let Some(shape) = self.ring_shape(m, Ring::Warpgroup) else { continue };
            if !(2..=8).contains(&shape.splits) || shape.balanced.is_some() {
                continue;
            }
            let stages = self.stages(&shape, sym);
            let smem = Ring::Warpgroup.smem_bytes(self.bits, sym, stages) as u32;
            let grid = (self.n.div_ceil(TILE_N * 4) as u32, shape.splits as u32, 1);
            let mut fits = true;
            for act in ["f16", "bf16"] {
                let f = self.device.function(&Ring::Warpgroup.kernel_name(self.bits, act, sym))?;
                let mut attrs = launch_attributes(false, shape.splits as u32);
                let config = launch_config(grid, BULK_THREADS, smem, std::ptr::null_mut(), &mut attrs);
                let mut clusters = 0;
                let _ctx = CtxGuard::push(self.device.ctx)?;
                // SAFETY: `f` is a function of the loaded module; `config` and `attrs` outlive the
                // call, which writes one int. An error (e.g. a cluster size the device refuses)
                // just means no clusters.
                let r = unsafe { cu::cuOccupancyMaxActiveClusters(&mut clusters, f, &config) };
                fits &= r == cu::CUresult::CUDA_SUCCESS && clusters as u32 >= grid.0;
            }
            if fits {
                mask |= 1 << m;
            }
        }
        self.wg_cluster_rows = mask;
        // A layer set to take the warpgroup kernel from 1 row for its cluster reduction
        // (with_wg_min_rows: 8 bit) keeps the bulk-copy kernel at M = 1 where the clusters do not
        // fit.
        if self.device.wg_min_rows.is_none() && mask & 2 == 0 {
            self.wg_min_rows = self.wg_min_rows.max(2);
        }
        Ok(self)
    }

    /// Whether the tensor-core layout has no zero offsets (every zero is `2^(bits-1)`).
    fn symmetric(&self) -> bool {
        matches!(&self.weights, Weights::Mma { nzero_f16: None, .. })
    }

    pub fn device(&self) -> usize {
        self.device.ordinal
    }

    /// Whether this layer runs on tensor cores (else on the CUDA-core kernel).
    pub fn uses_tensor_cores(&self) -> bool {
        matches!(self.weights, Weights::Mma { .. })
    }

    /// Whether a call of `m` rows may take the warpgroup kernel (sm_90a; an A of whole 16-byte rows).
    #[doc(hidden)]
    pub fn takes_warpgroup(&self, m: usize) -> bool {
        self.ring_shape(m, Ring::Warpgroup).is_some()
    }

    /// Whether a call of `m` rows (with A 16-byte aligned, so the warpgroup kernel takes it) adds
    /// its K splits in thread-block clusters rather than through the workspace.
    #[doc(hidden)]
    pub fn reduces_in_clusters(&self, m: usize) -> bool {
        m <= WG_ROWS && self.wg_cluster_rows & (1 << m) != 0
    }

    /// How a call of `m` rows with A 16-byte aligned runs: kernel, K splits, ring stages, and
    /// whether the splits add in clusters (for benchmarks' logs).
    #[doc(hidden)]
    pub fn describe_call(&self, m: usize) -> String {
        let sym = self.symmetric();
        if self.dense_rows(m) {
            return "dequantized into the workspace, then cuBLASLt".into();
        }
        // The split-K reduction, where the launch has one ([`reduce_lanes`]).
        let reduction = |splits: usize, balanced: bool| match reduce_lanes(splits, m * self.n, self.reduce_lanes_max) {
            Some(l) if !balanced => format!(", reduction by lanes ({l} per output)"),
            _ => String::new(),
        };
        if let Some(w) = self.wide_shape(m) {
            let stages = self.device.wide_stages(self.bits, sym, w.form);
            return format!(
                "wide warpgroup kernel {:?}, {} splits of {} tiles, {stages} stages{}",
                w.form,
                w.splits,
                w.tiles_per_split,
                reduction(w.splits, false)
            );
        }
        match self.ring_shapes(m).next() {
            Some(s @ MmaShape { ring: Some(ring), .. }) => format!(
                "{ring:?} kernel, {} of {} tiles, {} stages{}{}{}{}",
                match s.balanced {
                    Some(blocks) => format!("{blocks} balanced blocks (at most {} per column block)", s.splits),
                    None => format!("{} splits", s.splits),
                },
                s.tiles_per_split,
                self.stages(&s, sym),
                if s.deep { ", deep ring" } else { "" },
                if ring == Ring::Warpgroup && self.reduces_in_clusters(m) { ", clusters" } else { "" },
                if ring == Ring::Bulk && self.pads_bulk(&s) {
                    ", 3 blocks per SM"
                } else if s.four {
                    ", 4 blocks per SM"
                } else {
                    ""
                },
                if ring == Ring::Warpgroup && self.reduces_in_clusters(m) {
                    String::new()
                } else {
                    reduction(s.splits, s.balanced.is_some())
                }
            ),
            _ if self.uses_tensor_cores() => {
                let splits = self.mma_shape(m).splits;
                format!("register-fed kernel, {splits} splits{}", reduction(splits, false))
            }
            _ => {
                let splits = self.gemv_shape(m).1;
                format!("CUDA-core kernel, {splits} splits{}", reduction(splits, false))
            }
        }
    }

    /// Rows per block of the wide warpgroup kernel where a call of `m` rows (with A 16-byte aligned)
    /// takes it ([`CudaLayer::wide_shape`]).
    #[doc(hidden)]
    pub fn wide_rows_per_block(&self, m: usize) -> Option<usize> {
        self.wide_shape(m).map(|w| w.form.rows())
    }

    /// The wide warpgroup kernel's launch for `m` rows, where the device takes it for that many
    /// ([`Device::wide_rows`](super::Device::wide_rows); by default above 128 rows only on layers of
    /// at least [`WIDE_LARGE_LAYER`] weights, and from [`WIDE_SMALL_LAYER_MIN_ROWS`] on 4-bit layers of
    /// at most [`WIDE_SMALL_LAYER`]) and the layer allows it (the tile layout, K a multiple
    /// of 8). Its form: up to 32 rows [`WideForm::Rows32`]; up to 64 [`WideForm::Rows64Split`]; up to
    /// 128 that form too where K is at most [`WIDE_SHORT_K`], else [`WideForm::Rows128`], which also
    /// takes every call above 128 rows (`GPTQ_CUDA_WIDE_FORM` forces one from 33 rows, for
    /// comparisons). K is split so that the blocks fill the SMs once, each split whole stages of at
    /// least two; where those splits' partial sums would weigh at least the weights' codes, in at
    /// most [`WIDE_MAX_SPLITS`](super::device::WIDE_MAX_SPLITS) ([`wide_split`]). Measured on the
    /// H200 (docs/perf.md, versions 63-64 and 71).
    fn wide_shape(&self, m: usize) -> Option<WideShape> {
        let (lo, hi) = self.device.wide_rows?;
        let small_layer_cut = self.device.wide_rows_default && m > 128 && self.n * self.k < WIDE_LARGE_LAYER;
        let small_layer_early = self.device.wide_rows_default && self.bits == 4 && self.n * self.k <= WIDE_SMALL_LAYER;
        let lo = if small_layer_early { lo.min(WIDE_SMALL_LAYER_MIN_ROWS) } else { lo };
        if !(lo..=hi).contains(&m) || small_layer_cut || self.k % 8 != 0 || !matches!(self.weights, Weights::Mma { .. })
        {
            return None;
        }
        let form = match (m, self.device.wide_form) {
            (..=32, _) => WideForm::Rows32,
            (_, Some(f)) => f,
            (..=64, None) => WideForm::Rows64Split,
            (..=128, None) if self.k <= WIDE_SHORT_K => WideForm::Rows64Split,
            (_, None) => WideForm::Rows128,
        };
        let index = WideForm::ALL.iter().position(|&f| f == form).unwrap_or(0);
        let per_sm = form.blocks_per_sm().min(self.resident_wide[index]).max(1);
        let blocks = self.n.div_ceil(TILE_N * 4) * m.div_ceil(form.rows());
        let stage = if self.bits == 4 { 4 } else { 2 };
        let kt = self.k.div_ceil(TILE_K);
        let slots = per_sm * self.device.sm_count as usize;
        // The limit on splits only where their partial sums would weigh at least the weights, judged at
        // the top of m's run of 16 rows so that the split is one per run (workspace_size checks the
        // top of each run only).
        let (uncapped, _) = wide_split(kt, stage, blocks, slots, 0, None);
        let heavy = uncapped * m.next_multiple_of(16) * self.n * 4 >= self.k * self.n * self.bits as usize / 8;
        let cap = if heavy { self.device.wide_max_splits } else { 0 };
        let (splits, tiles_per_split) = wide_split(kt, stage, blocks, slots, cap, self.device.wide_splits);
        Some(WideShape { form, splits, tiles_per_split })
    }

    /// Whether a call of `m` rows (with A 16-byte aligned) runs a ring kernel's balanced splits
    /// ([`CudaLayer::balance`]).
    #[doc(hidden)]
    pub fn runs_balanced(&self, m: usize) -> bool {
        self.ring_shapes(m).next().is_some_and(|s| s.balanced.is_some())
    }

    /// Whether a call of `m` rows (with A 16-byte aligned) runs the bulk-copy kernel with its shared
    /// memory padded to the full ring's ([`CudaLayer::pads_bulk`]).
    #[doc(hidden)]
    pub fn pads_bulk_at(&self, m: usize) -> bool {
        self.ring_shapes(m).next().is_some_and(|s| s.ring == Some(Ring::Bulk) && self.pads_bulk(&s))
    }

    /// Whether an act-order call of `m` rows with A 16-byte aligned gathers it row by row through
    /// shared memory ([`CudaLayer::gathers_by_row`]) before the GEMM kernel.
    #[doc(hidden)]
    pub fn gathers_act_order_by_row(&self, m: usize) -> bool {
        self.perm.is_some() && self.gather_bytes(m) > 0 && self.gathers_by_row(m, 0, self.k)
    }

    /// Whether a call of `m` rows (with A 16-byte aligned) runs the warpgroup kernel at two blocks
    /// per SM with its deep ring ([`CudaLayer::wg_deep_rows`], [`CudaLayer::deep_when_unsplit`]).
    #[doc(hidden)]
    pub fn runs_deep_ring(&self, m: usize) -> bool {
        self.ring_shape(m, Ring::Warpgroup).is_some_and(|s| s.deep)
    }

    /// Device address and size of the buffers every GEMM must read (packed weights, scales, zero
    /// data; for fp16 activations): what a benchmark's read floor streams.
    #[doc(hidden)]
    pub fn weight_buffers(&self) -> Vec<(u64, usize)> {
        let bufs: Vec<&DevBuf> = match &self.weights {
            Weights::Gemv { qweight, scale, szero, .. } => vec![qweight, scale, szero],
            // What the small-batch kernel reads (the large-batch one reads as many bytes).
            Weights::Mma { qweight, acc_scale, acc_zero, .. } => {
                [Some(qweight), Some(acc_scale), acc_zero.as_ref()].into_iter().flatten().collect()
            }
        };
        bufs.iter().map(|b| (b.ptr, b.len)).collect()
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
        let mut args = args![src, n16, sink];
        let blocks = (self.device.sm_count * 8).min(1024);
        // SAFETY: matches the kernel's signature; extents are the caller's contract.
        unsafe { launch(f, (blocks, 1, 1), 512, stream, &mut args, "launching the read-floor kernel") }
    }

    fn gemv_shape(&self, m: usize) -> (usize, usize, usize) {
        gemv_shape(m, self.k, self.n, self.bits, self.device.sm_count as usize)
    }

    /// The register-fed kernels' launch shape for `m` rows.
    fn mma_shape(&self, m: usize) -> MmaShape {
        let resident = |mf: usize| self.resident[mf.trailing_zeros() as usize];
        mma_shape(m, self.k, self.n, self.bits, self.device.sm_count as usize, self.blocks_per_sm, resident)
    }

    /// A ring kernel's launch shape for `m` rows, where the device and the layer allow it (sm_90;
    /// the bulk-copy kernel up to 8 rows, the warpgroup one from `GPTQ_CUDA_WG_MIN_ROWS` (9) to 16;
    /// K a multiple of 8 so rows of A are whole 16-byte pieces). The bulk-copy kernel at 8 bit only
    /// for blocks of at least 32 K tiles: on 4096×4096 (11 per block) it ran 6-15% slower than the
    /// register-fed kernel, on the large layers 0-5% faster (docs/perf.md, version 21).
    fn ring_shape(&self, m: usize, ring: Ring) -> Option<MmaShape> {
        let enabled = match ring {
            Ring::Bulk => self.device.bulk && m <= BULK_ROWS,
            Ring::Warpgroup => {
                self.device.wg && (self.wg_min_rows..=self.wg_max_rows).contains(&m) && self.wg_rows_fit(m)
            }
        };
        if enabled { self.ring_split(m, ring) } else { None }
    }

    /// [`ring_shape`](Self::ring_shape) whatever the device and the row range allow: the layer's
    /// own conditions (K a multiple of 8, the tensor-core layout) and the split of K.
    fn ring_split(&self, m: usize, ring: Ring) -> Option<MmaShape> {
        if self.k % 8 != 0 || !matches!(self.weights, Weights::Mma { .. }) {
            return None;
        }
        match ring {
            Ring::Warpgroup if m <= WG_ROWS && self.wg_deep_rows & (1 << m) != 0 => {
                self.wg_split(true, 1).map(|s| MmaShape { deep: true, ..s })
            }
            Ring::Warpgroup if m > WG_ROWS => {
                let rows = m.div_ceil(WG_ROWS);
                let normal = self.wg_split(false, rows)?;
                let shape = if self.deep_when_unsplit(&normal, rows) {
                    self.wg_split(true, rows).map(|s| MmaShape { deep: true, ..s })?
                } else {
                    self.balance(normal, m)
                };
                (m <= WG_WIDE_ROWS || shape.tiles_per_split <= WG_WIDE_MAX_TILES).then_some(shape)
            }
            Ring::Warpgroup => self.wg_split(false, 1).map(|s| self.balance(s, m)),
            Ring::Bulk => {
                let sm = self.device.sm_count as usize;
                if self.bulk_four(m) {
                    let resident = |_| self.resident_bulk_four;
                    let s = mma_shape(m, self.k, self.n, self.bits, sm, Some(BULK_FOUR_PER_SM), resident);
                    // (Only as many splits as the measured layers took: 4-32.)
                    if s.splits <= BULK_MANY_SPLITS {
                        return Some(self.bulk_split(MmaShape { ring: Some(ring), four: true, ..s }));
                    }
                }
                let resident = |_| self.resident_ring[ring as usize];
                let s = mma_shape(m, self.k, self.n, self.bits, sm, self.blocks_per_sm, resident);
                let s = MmaShape { ring: Some(ring), ..s };
                let s = self.bulk_split(s);
                (self.bits == 4 || s.tiles_per_split >= 32).then(|| self.balance(s, m))
            }
        }
    }

    /// Whether a call of `m` rows takes the bulk-copy kernel at [`BULK_FOUR_PER_SM`] blocks per SM
    /// (uniform splits, [`BULK_FOUR_STAGES`] stages): memory-rich cards, 4-bit symmetric layers
    /// without act-order, at most [`BULK_FOUR_ROWS`] rows, where four blocks fit an SM and take at
    /// most [`BULK_MANY_SPLITS`] splits of K (the measured layers took 4-32; layers of few columns,
    /// which would take more, keep three blocks per SM); not with `GPTQ_CUDA_BULK_FOUR=0`,
    /// `GPTQ_CUDA_BLOCKS_PER_SM`, `GPTQ_CUDA_BULK_STAGES` or `GPTQ_CUDA_BULK_PAD=1`.
    fn bulk_four(&self, m: usize) -> bool {
        self.bulk_four_on
            && self.bulk_pad != Some(true)
            && self.device.memory_rich
            && self.bits == 4
            && self.symmetric()
            && self.perm.is_none()
            && m <= BULK_FOUR_ROWS
            && self.blocks_per_sm.is_none()
            && !self.device.ring_depth_fixed()
            && self.bulk_four_fits()
    }

    /// Whether a call of `m` rows (with A 16-byte aligned) runs the bulk-copy kernel at
    /// [`BULK_FOUR_PER_SM`] blocks per SM ([`CudaLayer::bulk_four`]).
    #[doc(hidden)]
    pub fn runs_four_per_sm(&self, m: usize) -> bool {
        self.ring_shapes(m).next().is_some_and(|s| s.four)
    }

    /// Whether four blocks of the bulk-copy kernel with [`BULK_FOUR_STAGES`] stages fit an SM
    /// (registers and shared memory), which [`CudaLayer::bulk_four`] needs.
    #[doc(hidden)]
    pub fn bulk_four_fits(&self) -> bool {
        self.resident_bulk_four >= BULK_FOUR_PER_SM
    }

    /// The bulk-copy kernel's uniform split `s` (three blocks per SM's worth), with at least
    /// [`BULK_MANY_SPLITS_MIN_TILES`] K tiles per split where it has more than [`BULK_MANY_SPLITS`]
    /// splits (`GPTQ_CUDA_BULK_MIN_TILES` sets the least for every call instead). Measured on the
    /// H200 (docs/perf.md, version 69): 4096×1024 (86 splits of 3 tiles → 32 of 8) at M = 1 / 2 / 4
    /// 4.7 / 5.4 / 4.7 → 4.1 / 4.3 / 4.4 µs, 8192×1024 (86 of 6 → 64 of 8) at M = 1 / 2 5.6 / 6.3 →
    /// 4.8 / 5.1 (M = 4 the same or slower), 4864×896 (76 of 4 → 38 of 8) M = 2 5.1 → 4.2 but M = 1
    /// and 4 0.1-0.2 µs slower; on layers of fewer splits (896×4864: 19 of 3 tiles) fewer, longer
    /// blocks lost in the probe before it, so the rule leaves them.
    fn bulk_split(&self, s: MmaShape) -> MmaShape {
        let min = match self.bulk_min_tiles {
            Some(min) => min,
            None if s.splits > BULK_MANY_SPLITS => BULK_MANY_SPLITS_MIN_TILES,
            None => 0,
        };
        if s.tiles_per_split >= min {
            return s;
        }
        let kt = self.k.div_ceil(TILE_K);
        let tiles = min.min(kt);
        MmaShape { tiles_per_split: tiles, splits: kt.div_ceil(tiles), ..s }
    }

    /// The bulk-copy kernel's `uniform` shape, or its balanced splits ([`balanced_split`]) where
    /// the uniform grid leaves more than 5% of the SMs' block slots (three per SM, long blocks)
    /// empty, the balanced blocks are at least [`BULK_PAD_MIN_TILES`] long and cross column
    /// blocks, and K is whole stages; not with `GPTQ_CUDA_BALANCED=0`. Measured on the H100
    /// (docs/perf.md, version 55): the uniform grid of 8192×N at M = 1 reached 94% of the read
    /// floor with 396 blocks in 396 slots, 91% with 360, 89% with 336 (N = 28672), 87% with 312.
    fn balance(&self, uniform: MmaShape, m: usize) -> MmaShape {
        let Some(ring) = uniform.ring else { return uniform };
        let kt = self.k.div_ceil(TILE_K);
        let quads = self.n.div_ceil(TILE_N * 4);
        let stage = if self.bits == 4 { 4 } else { 2 };
        // (The balanced kernels keep more registers: their own residency counts too.)
        let per_sm = 3.min(self.resident_ring[ring as usize]).min(self.resident_balanced[ring as usize]);
        let slots = per_sm * self.device.sm_count as usize;
        // The warpgroup kernel's balanced form: 4-bit symmetric layers (the asymmetric kernels
        // spill), up to [`WG_BALANCED_ROWS`] rows (its partial sums replace a cluster reduction;
        // [`WG_BALANCED_ROWS_RICH`] on memory-rich cards).
        let wg_ok = match self.balanced {
            Balanced::Off => false,
            Balanced::Rule => {
                let most = if self.device.memory_rich { WG_BALANCED_ROWS_RICH } else { WG_BALANCED_ROWS };
                self.bits == 4 && self.symmetric() && m <= most
            }
            Balanced::Always => true,
        };
        if self.balanced == Balanced::Off
            || (ring == Ring::Warpgroup && !wg_ok)
            || uniform.mf != 1
            || kt % stage != 0
            || quads * kt >= 1 << 30
        {
            return uniform;
        }
        // (Checked before balanced_split's walk over the column blocks: most layers fill their slots.)
        if 20 * quads * uniform.splits >= 19 * slots {
            return uniform;
        }
        let (per, blocks, most) = balanced_split(quads, kt, stage, slots);
        if per < BULK_PAD_MIN_TILES || most < 2 || blocks <= quads * uniform.splits {
            return uniform;
        }
        MmaShape { splits: most, tiles_per_split: per, balanced: Some(blocks), ..uniform }
    }

    /// Whether 17-128 rows on the warpgroup kernel take its deep ring (two blocks per SM, 7 stages)
    /// where its normal ring would not split K (`normal`, `row_blocks` blocks of 16 rows per column
    /// block), so its blocks fill few of the three slots per SM, but they fit two per SM: 4-bit
    /// layers; not with `GPTQ_CUDA_NO_DEEP_RING` or `GPTQ_CUDA_BLOCKS_PER_SM`. Measured on the H100
    /// (docs/perf.md, version 60): 8192×28672 at 17-32 rows (224 blocks) 115 → 92 µs; where the
    /// normal ring splits K the deep ring was 3-40% slower.
    fn deep_when_unsplit(&self, normal: &MmaShape, row_blocks: usize) -> bool {
        let blocks = self.n.div_ceil(TILE_N * 4) * row_blocks;
        self.bits == 4
            && normal.splits == 1
            && blocks <= 2 * self.device.sm_count as usize
            && self.blocks_per_sm.is_none()
            && !self.no_deep_ring
            && self.device.deep_ring_stages(self.bits, self.symmetric()).is_some()
    }

    /// Whether the warpgroup kernel's blocks of 16 rows for `m` rows fit on the device at once
    /// unsplit (always for up to 16 rows): beyond 16 rows it runs only where they do. Measured on
    /// the H100 (docs/perf.md, version 59) against the register-fed kernel: 17-48 rows 1.1-1.8×
    /// faster on every profile layer; 64 rows 1.1-1.8× on four of them, 4096×14336 the same, and
    /// 8192×28672 (448 blocks for 396 slots, so two waves) 1.09× faster at 4 bit but 1.3× slower at
    /// 8 bit: that layer keeps the register-fed kernel there.
    fn wg_rows_fit(&self, m: usize) -> bool {
        let per_sm = 3.min(self.resident_ring[Ring::Warpgroup as usize]);
        let blocks = self.n.div_ceil(TILE_N * 4) * m.div_ceil(WG_ROWS);
        m <= WG_ROWS || blocks <= per_sm * self.device.sm_count as usize
    }

    /// The warpgroup kernel's split of K at the blocks per SM that fit (two with the `deep` ring).
    /// The kernel computes 16 rows per block whatever m is: up to 16 rows its split is that of 16
    /// rows for every m (fewer rows allowed more splits, whose partial sums cost more than they gained: 4096×4096 at M = 9
    /// with 22 splits 10.0 µs, at M = 12 with 16 8.6; version 33). Whole stages per split (4 tiles at 4 bit, 2 at 8),
    /// so that with groups of at least a stage no stage straddles a group and the kernel takes its
    /// straight-line stage body (kernels/gptq_mma.cu, wg_gemm_small; docs/perf.md, version 30).
    /// With `row_blocks` blocks of 16 rows per column block (17 to 128 rows), the split of 16 rows
    /// over that many times the column blocks.
    fn wg_split(&self, deep: bool, row_blocks: usize) -> Option<MmaShape> {
        let resident = if deep { 2 } else { self.resident_ring[Ring::Warpgroup as usize] };
        let sm = self.device.sm_count as usize;
        let cols = self.n.next_multiple_of(TILE_N * 4) * row_blocks;
        let s = mma_shape(WG_ROWS, self.k, cols, self.bits, sm, self.blocks_per_sm, |_| resident);
        let stage_tiles = if self.bits == 4 { 4 } else { 2 };
        let kt = self.k.div_ceil(TILE_K);
        let forced = if deep { self.deep_splits } else { self.wg_splits.filter(|_| row_blocks == 1) };
        let tiles = forced.map_or(s.tiles_per_split, |f| kt.div_ceil(f)).next_multiple_of(stage_tiles);
        let splits = kt.div_ceil(tiles);
        Some(MmaShape { ring: Some(Ring::Warpgroup), tiles_per_split: tiles, splits, ..s })
    }

    /// Whether the bulk-copy kernel's launch for `shape` asks for the shared memory of the full ring
    /// (three blocks per SM) whatever its depth, so that no fourth block shares an SM: blocks of at
    /// least [`BULK_PAD_MIN_TILES`] K tiles. Measured on the H100 (docs/perf.md, version 47): on
    /// 4096×14336, 14336×4096 and 8192×8192 (37-43 tiles, 3 stages) bf16 M = 1 ran 14.8-16.2 µs
    /// unpadded and 13.7-15.1 padded (fp16 within ±2%); on 4096×4096 (11 tiles) padding cost 0.5-0.7
    /// µs (fp16 M = 1 6.2-6.3 → 6.8-6.9). With the full ring (long blocks) it changes nothing.
    fn pads_bulk(&self, shape: &MmaShape) -> bool {
        !shape.four && self.bulk_pad.unwrap_or(shape.tiles_per_split >= BULK_PAD_MIN_TILES)
    }

    /// Stages of the ring kernel taking `shape` (its deep ring where the shape says so).
    fn stages(&self, shape: &MmaShape, sym: bool) -> usize {
        match shape.ring {
            Some(_) if shape.deep => self.device.deep_ring_stages(self.bits, sym).unwrap_or(2),
            Some(_) if shape.four => BULK_FOUR_STAGES,
            Some(r) => self.device.ring_stages(r, self.bits, sym, shape.tiles_per_split),
            None => 0,
        }
    }

    /// The ring kernels that may take a call of `m` rows, in order of preference (the first whose
    /// conditions on A the call meets runs; else the register-fed kernel).
    fn ring_shapes(&self, m: usize) -> impl Iterator<Item = MmaShape> + '_ {
        [Ring::Warpgroup, Ring::Bulk].into_iter().filter_map(move |r| self.ring_shape(m, r))
    }

    /// Splits of K whose partial sums go through the workspace (1: none).
    fn workspace_splits(&self, m: usize) -> usize {
        match self.weights {
            Weights::Gemv { .. } => self.gemv_shape(m).1,
            // The most of any kernel that may take the call (which one depends on A's alignment).
            Weights::Mma { .. } => self
                .ring_shapes(m)
                .map(|s| s.splits)
                .chain(self.wide_shape(m).map(|w| w.splits))
                .fold(self.mma_shape(m).splits, usize::max),
        }
    }

    /// Bytes at the start of the workspace for act-order activations gathered once (tensor-core
    /// kernels that do not gather themselves; either small-batch kernel may serve a call).
    fn gather_bytes(&self, m: usize) -> usize {
        if self.perm.is_none() || !matches!(self.weights, Weights::Mma { .. }) {
            return 0;
        }
        let ring_gathers = self.ring_shapes(m).any(|s| !self.gathers_in_kernel(m, &s));
        if ring_gathers || self.wide_shape(m).is_some() || !self.gathers_in_kernel(m, &self.mma_shape(m)) {
            (m * self.k * 2).next_multiple_of(256)
        } else {
            0
        }
    }

    /// Whether a small-batch kernel gathers act-order activations itself for `shape` (kernels/
    /// gptq_mma.cu: mma_gemm_small while it stages A, bulk_gemm_small before its first stage): at
    /// most 8 rows over at most 256 inputs per block, where one round of loads covers the block's A
    /// and a separate gather launch would cost more than the whole staging (4096×4096 at M = 1:
    /// +18%, docs/perf.md version 13); on the bulk-copy kernel also 1-2 rows over at most 768 inputs
    /// (six loads per thread and row) where the rows' expected distinct 32-byte sectors of A are at
    /// most 600: every load of the gather fetches a sector, so the sectors, not the loads, are its
    /// cost. Measured on the H100 (docs/perf.md, versions 48 and 52), against the gather launch: at
    /// M = 1 on 4096×14336, 14336×4096 and 8192×8192 (37-43 tiles per block; 230-440 sectors) 0.5-0.7
    /// µs faster; at M = 2 0.6-0.7 µs faster on 4096×14336 (2 × 230 sectors) but 0.5-1.0 slower on
    /// 8192×8192 and 14336×4096 (2 × 380 and 2 × 440). Not with `GPTQ_CUDA_LONG_GATHER=0`.
    /// (The warpgroup kernel reads A through a tensor map: always gathered first.)
    fn gathers_in_kernel(&self, m: usize, shape: &MmaShape) -> bool {
        let inputs = shape.tiles_per_split * TILE_K;
        let short = m <= KERNEL_GATHER_ROWS && inputs <= 256;
        let long = self.long_gather
            && shape.ring == Some(Ring::Bulk)
            && m <= KERNEL_GATHER_LONG_ROWS
            && inputs <= KERNEL_GATHER_LONG_INPUTS
            && m as f64 * long_gather_sectors(inputs, self.k) <= KERNEL_GATHER_LONG_SECTORS;
        self.perm.is_some()
            && shape.mf == 1
            && shape.ring != Some(Ring::Warpgroup)
            && shape.balanced.is_none()
            && (short || long)
    }

    /// Whether an act-order call of `m` rows gathers A inside the GEMM kernel (no gather launch).
    #[doc(hidden)]
    pub fn gathers_act_order_in_kernel(&self, m: usize) -> bool {
        let shape = self.ring_shapes(m).next().unwrap_or_else(|| self.mma_shape(m));
        self.gathers_in_kernel(m, &shape)
    }

    /// Whether an act-order call of `m` rows with A at device address `a`, row stride `lda`, gathers
    /// A row by row through shared memory (`gptq_gather_a_bulk`: sm_90, whole 16-byte rows that fit
    /// one block's shared memory) rather than element by element (`gptq_gather_a`). Measured on the
    /// H100 (docs/perf.md, version 41).
    fn gathers_by_row(&self, m: usize, a: u64, lda: usize) -> bool {
        self.gather_by_row
            && m >= GATHER_ROW_MIN_ROWS
            && m * self.k >= GATHER_ROW_MIN_ELEMENTS
            && self.k <= self.device.gather_row_max_k
            && self.k % 8 == 0
            && a % 16 == 0
            && lda % 8 == 0
    }

    /// Enqueues the gather of act-order A (`m` rows at device address `a`, row stride `lda`) into
    /// the layer's input order at the start of `workspace`: row by row through shared memory where
    /// [`CudaLayer::gathers_by_row`] says so (about 64 blocks, so each row is copied a few times; at
    /// most 8192 inputs each, the kernel's GATHER_PER · 256), else element by element.
    ///
    /// # Safety
    /// `a` holds `m` rows of `lda ≥ k` halves and `workspace` at least `m·k` halves, both on this
    /// layer's device; `stream` belongs to its context.
    unsafe fn gather_act_order(
        &self,
        a: u64,
        lda: usize,
        m: usize,
        workspace: u64,
        stream: cu::CUstream,
    ) -> Result<()> {
        let perm = self.perm.as_ref().map_or(0, |p| p.ptr);
        let (lda64, mi, ki) = (lda as i64, m as i32, self.k as i32);
        let by_row = self.gathers_by_row(m, a, lda);
        let chunks = self.k.div_ceil(8192).max(64usize.div_ceil(m)).min(self.k.div_ceil(256));
        let chunk = self.k.div_ceil(chunks) as i32;
        // The element-wise kernel takes the first six of these arguments.
        let mut args = args![a, lda64, perm, workspace, mi, ki, chunk];
        let (name, grid, smem, args) = if by_row {
            ("gptq_gather_a_bulk", (chunks as u32, m.min(65535) as u32, 1), 16 + 2 * self.k as u32, &mut args[..])
        } else {
            ("gptq_gather_a", (self.k.div_ceil(256) as u32, m.min(65535) as u32, 1), 0, &mut args[..6])
        };
        let g = self.device.function(name)?;
        let _ctx = CtxGuard::push(self.device.ctx)?;
        // SAFETY: the arguments match the kernel's signature; the buffers are the caller's contract;
        // the row-by-row kernel's rows are 16-byte aligned and fit the shared memory set at init
        // (gathers_by_row).
        unsafe {
            launch_smem(g, grid, 256, smem, stream, args, "launching the act-order gather kernel", self.device.pdl)
        }
    }

    /// The most rows one `gemm` call takes (grid limits: gridDim.z counts blocks of 64 rows on the
    /// tensor-core kernel, 8 on the CUDA-core one).
    pub fn max_rows(&self) -> usize {
        65535 * if self.uses_tensor_cores() { 64 } else { 8 }
    }

    /// Bytes of split-K partial sums for exactly `m` rows.
    fn partial_bytes(&self, m: usize) -> usize {
        let splits = self.workspace_splits(m);
        if splits == 1 { 0 } else { splits * m * self.n * 4 }
    }

    /// Workspace bytes a call with exactly `m` rows needs.
    fn workspace_need(&self, m: usize) -> usize {
        self.gather_bytes(m) + self.partial_bytes(m)
    }

    /// Workspace bytes enough for every `gemm` call with 1 to `m` rows (0 when none needs any), so a
    /// workspace sized once for the largest batch serves all smaller ones: the split of K, and with it
    /// the partial sums, shrinks as m grows, so the exact need is not monotonic in m.
    pub fn workspace_size(&self, m: usize) -> Result<usize> {
        if m > self.max_rows() {
            return Err(Error::Shape(format!("m = {m} exceeds the {} rows one call can take", self.max_rows())));
        }
        let m = m.max(1);
        let sm = self.device.sm_count as usize;
        let partial = match self.weights {
            // Splits depend on m through 16-row fragments (runs of 16 rows) and stop beyond 64 rows
            // per block × the blocks per SM aimed for.
            Weights::Mma { .. } => {
                let per_sm = self.blocks_per_sm.unwrap_or(3).max(3);
                max_over_rows(m, 16, 64 * per_sm * sm, |r| self.partial_bytes(r))
            }
            // Splits depend on every m below 8 rows per block × 4 blocks per SM, then stay fixed.
            Weights::Gemv { .. } => max_over_rows(m, 1, 8 * 4 * sm, |r| self.partial_bytes(r)),
        };
        Ok((self.gather_bytes(m) + partial).max(self.dense_bytes(m)))
    }

    /// Whether calls of `m` rows may take the dense path: layers in the tile layout (4 and 8 bit;
    /// 2 and 3 bit run as 4),
    /// from [`Device::dense_min_rows`](super::Device::dense_min_rows) rows, with cuBLASLt loaded,
    /// K a multiple of 8 (the dequantized rows are written in 16-byte pieces) and at most 65535
    /// column tiles (the dequantization's grid y), where the wide warpgroup kernel does not take them.
    fn dense_rows(&self, m: usize) -> bool {
        matches!(self.weights, Weights::Mma { .. })
            && self.device.lt.is_some()
            && m >= self.device.dense_min_rows
            && self.wide_shape(m).is_none()
            && self.k % 8 == 0
            && self.n.div_ceil(TILE_N) <= 65535
    }

    /// Workspace bytes of the dense path for `m` rows (0 where it does not apply): 256 for aligning
    /// its start, the dequantized weights `[n, k]`, cuBLASLt's workspace, then act-order A gathered
    /// (`m·k` halves).
    fn dense_bytes(&self, m: usize) -> usize {
        if !self.dense_rows(m) {
            return 0;
        }
        let gather = if self.perm.is_some() { m * self.k * 2 } else { 0 };
        256 + (self.n * self.k * 2).next_multiple_of(256) + dense::LT_WORKSPACE_BYTES + gather
    }

    /// Whether a `gemm` call of `m` rows with these operands takes the dense path: where it applies
    /// ([`CudaLayer::dense_rows`]), A and C are 16-byte aligned with row strides of whole 16-byte
    /// pieces (what cuBLASLt's fastest kernels take), and the workspace holds
    /// [`workspace_size`](Self::workspace_size)`(m)`; otherwise the quantized kernels, which need less.
    fn takes_dense(&self, o: &Operands) -> bool {
        self.dense_rows(o.m)
            && o.a % 16 == 0
            && o.c % 16 == 0
            && o.lda % 8 == 0
            && o.ldc % 8 == 0
            && o.workspace != 0
            && o.workspace_bytes >= self.dense_bytes(o.m)
            && o.workspace_bytes >= self.workspace_need(o.m) // (the quantized kernels' need, should cuBLASLt refuse)
    }

    /// Workspace bytes the quantized kernels need for exactly `m` rows: a call with less than
    /// [`workspace_size`](Self::workspace_size) but at least this runs them instead of the dense path.
    #[doc(hidden)]
    pub fn quantized_workspace_size(&self, m: usize) -> usize {
        self.workspace_need(m)
    }

    /// Whether a call of `m` rows with aligned operands and a workspace of
    /// [`workspace_size`](Self::workspace_size)`(m)` bytes dequantizes and runs cuBLASLt.
    #[doc(hidden)]
    pub fn runs_dense(&self, m: usize) -> bool {
        self.dense_rows(m)
    }

    /// The dense path's cuBLASLt GEMM for these operands (act-order A gathered, the weights
    /// dequantized to `[n, k]`, cuBLASLt's workspace, each at its place in the workspace), or `None`
    /// where cuBLASLt has no kernel for them.
    fn plan_dense(&self, o: &Operands) -> Result<Option<dense::Plan<'_>>> {
        let Operands { a, dtype, m, lda, c, ldc, workspace, .. } = *o;
        let Some(lt) = self.device.lt.as_ref() else { return Ok(None) };
        let bf = dtype == ActDType::BF16;
        let w = workspace.next_multiple_of(256);
        let lt_ws = w + (self.n * self.k * 2).next_multiple_of(256) as u64;
        let gathered = lt_ws + dense::LT_WORKSPACE_BYTES as u64;
        let (a, lda) = if self.perm.is_some() { (gathered, self.k) } else { (a, lda) };
        let bias = self.bias_act.as_ref().map_or(0, |b| b[bf as usize].ptr);
        let (n, k, workspace, workspace_bytes) = (self.n, self.k, lt_ws, dense::LT_WORKSPACE_BYTES);
        let _ctx = CtxGuard::push(self.device.ctx)?;
        Ok(lt.plan(dense::DenseGemm { bf16: bf, m, n, k, a, lda, w, c, ldc, bias, workspace, workspace_bytes }))
    }

    /// The dense path: act-order A gathered (where `plan` reads it from the workspace), the
    /// weights dequantized to `[n, k]` in the workspace (kernels/gptq_dense.cu), then the planned
    /// cuBLASLt GEMM with the bias in its epilogue.
    ///
    /// # Safety
    /// As [`gemm`](Self::gemm); `plan` is [`CudaLayer::plan_dense`]'s for this call, whose A is at
    /// `a` with row stride `lda`.
    unsafe fn gemm_dense(&self, plan: &dense::Plan<'_>, a: u64, lda: usize, stream: cu::CUstream) -> Result<()> {
        let Weights::Mma { qweight, scale_f16, nzero_f16, tiles_per_group, .. } = &self.weights else {
            return Err(Error::Unsupported("the dense path needs the tile layout".into()));
        };
        let g = plan.gemm();
        if self.perm.is_some() {
            // SAFETY: the caller's contract; the workspace holds m·k halves there (dense_bytes).
            unsafe { self.gather_act_order(a, lda, g.m, g.a, stream)? };
        }
        let suffix = if g.bf16 { "bf16" } else { "f16" };
        let f = self.device.function(&format!("gptq_dense_dequant_b{}_{suffix}", self.bits))?;
        let nz = nzero_f16.as_ref().map_or(0, |z| z.ptr);
        let (ni, ki, tpg) = (self.n as i32, self.k as i32, (*tiles_per_group).min(i32::MAX as usize) as i32);
        let mut args = args![qweight.ptr, scale_f16.ptr, nz, g.w, ni, ki, tpg];
        let grid = (self.k.div_ceil(TILE_K).div_ceil(8) as u32, self.n.div_ceil(TILE_N) as u32, 1);
        let _ctx = CtxGuard::push(self.device.ctx)?;
        // SAFETY: argument types and order match the kernel's signature; the workspace holds n·k
        // halves from `g.w` (dense_bytes).
        unsafe { launch(f, grid, 256, stream, &mut args, "launching the dense dequantization kernel")? };
        // SAFETY: the caller's contract for A and C; W, the bias and cuBLASLt's workspace are the
        // layer's and the workspace's, written above on this stream; the layer's context is current.
        unsafe { plan.run(stream.cast()) }
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
    /// bytes. Enqueues one kernel, or two when K is split; allocates and synchronizes nothing.
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
        if m > self.max_rows() {
            return Err(Error::Shape(format!(
                "m = {m} exceeds the {} rows one call can take; split the call",
                self.max_rows()
            )));
        }
        let operands = Operands { a, dtype, m, lda, c, ldc, workspace, workspace_bytes };
        if self.takes_dense(&operands) {
            self.stream_check(stream)?;
            // (Where cuBLASLt has no kernel for these operands, the quantized kernels run.)
            if let Some(plan) = self.plan_dense(&operands)? {
                // SAFETY: the caller's contract; takes_dense holds and `plan` is for these operands.
                return unsafe { self.gemm_dense(&plan, a, lda, stream) };
            }
        }
        let need = self.workspace_need(m);
        if workspace_bytes < need || (need > 0 && workspace == 0) {
            return Err(Error::BufferTooSmall(format!(
                "workspace has {workspace_bytes} bytes, gemm with m = {m} needs {need}"
            )));
        }
        self.stream_check(stream)?;
        let suffix = if dtype == ActDType::BF16 { "bf16" } else { "f16" };

        let (mi, ni, ki) = (m as i32, self.n as i32, self.k as i32);
        let (lda64, ldc64) = (lda as i64, ldc as i64);
        let perm = self.perm.as_ref().map_or(0, |p| p.ptr);
        let bias = self.bias.as_ref().map_or(0, |b| b.ptr);
        // Balanced splits' tiles per block (the reduction finds each column block's slots), or 0.
        let mut balanced_tiles = 0usize;
        let splits = match &self.weights {
            Weights::Mma {
                qweight,
                acc_scale,
                acc_zero,
                scale_f16,
                scale_bf16,
                nzero_f16,
                nzero_bf16,
                group_shift,
                ..
            } => 'mma: {
                let sym = nzero_f16.is_none();
                // The wide kernel reads A through a tensor map: the caller's A in whole 16-byte
                // pieces, or act-order A gathered to the start of the workspace.
                let tma_ok = match self.perm {
                    Some(_) => workspace % 16 == 0,
                    None => a % 16 == 0 && lda % 8 == 0,
                };
                if let Some(w) = self.wide_shape(m).filter(|_| tma_ok) {
                    let (scale, nz) = if dtype == ActDType::BF16 {
                        (scale_bf16.ptr, nzero_bf16.as_ref().map_or(0, |z| z.ptr))
                    } else {
                        (scale_f16.ptr, nzero_f16.as_ref().map_or(0, |z| z.ptr))
                    };
                    let (a_in, lda_in) = if self.perm.is_some() {
                        // SAFETY: the caller's contract; the workspace holds m·k halves (checked above).
                        unsafe { self.gather_act_order(a, lda, m, workspace, stream)? };
                        (workspace, self.k)
                    } else {
                        (a, lda)
                    };
                    let partial = workspace + self.gather_bytes(m) as u64;
                    let f = self.device.function(&w.form.kernel_name(self.bits, suffix, sym))?;
                    let stages = self.device.wide_stages(self.bits, sym, w.form);
                    let smem = self.device.wide_smem_bytes(self.bits, sym, w.form) as u32;
                    let box_k = if self.bits == 4 { 64 } else { 32 };
                    let amap = a_tensor_map(a_in, dtype, self.k, m, lda_in, box_k, w.form.rows() as u32)?;
                    let (tpsi, shifti, stagesi) = (w.tiles_per_split as i32, *group_shift as i32, stages as i32);
                    let mut args =
                        args![amap, qweight.ptr, scale, nz, partial, bias, c, ldc64, mi, ni, ki, tpsi, shifti, stagesi];
                    let grid = (self.n.div_ceil(TILE_N * 4) as u32, w.splits as u32, m.div_ceil(w.form.rows()) as u32);
                    let what = "launching the wide warpgroup GEMM kernel";
                    let _ctx = CtxGuard::push(self.device.ctx)?;
                    // SAFETY: argument types and order match the kernel's signature (the tensor map
                    // first, copied by value); extents were checked above.
                    unsafe { launch_smem(f, grid, w.form.threads(), smem, stream, &mut args, what, self.device.pdl)? };
                    break 'mma w.splits;
                }
                // The ring kernels copy rows of A in 16-byte pieces: from the caller's A, or
                // act-order A gathered to the start of the workspace (unless the kernel gathers it).
                let shape = self
                    .ring_shapes(m)
                    .find(|s| match self.perm {
                        Some(_) => self.gathers_in_kernel(m, s) || workspace % 16 == 0,
                        None => a % 16 == 0 && lda % 8 == 0,
                    })
                    .unwrap_or_else(|| self.mma_shape(m));
                let gather_in_kernel = self.gathers_in_kernel(m, &shape);
                let stages = self.stages(&shape, sym);
                let MmaShape { mf, wk, splits, tiles_per_split: tps, chunk, ring, .. } = shape;
                let bf = dtype == ActDType::BF16;
                let f = match ring {
                    Some(r) => self.device.function(&r.shape_kernel_name(self.bits, suffix, sym, &shape))?,
                    None => self.device.function(&mma_kernel_name(self.bits, mf, suffix, sym))?,
                };
                let (threads, smem) = match ring {
                    Some(Ring::Bulk) if self.pads_bulk(&shape) => {
                        (BULK_THREADS, self.device.full_ring_bytes(Ring::Bulk, self.bits, sym))
                    }
                    Some(r) => (BULK_THREADS, r.smem_bytes(self.bits, sym, stages)),
                    None => (128, MMA_SMEM_BYTES),
                };
                // The small-batch kernels apply scales and zeros per group: the register-fed one in
                // accumulator order, the ring ones in the per-lane order of f16 scales and offsets;
                // the large-batch ones per code pair, in the activation type.
                let (scale, nz) = if ring.is_some() {
                    (scale_f16.ptr, nzero_f16.as_ref().map_or(0, |z| z.ptr))
                } else if mf == 1 && ring.is_none() {
                    (acc_scale.ptr, acc_zero.as_ref().map_or(0, |z| z.ptr))
                } else if bf {
                    (scale_bf16.ptr, nzero_bf16.as_ref().map_or(0, |z| z.ptr))
                } else {
                    (scale_f16.ptr, nzero_f16.as_ref().map_or(0, |z| z.ptr))
                };
                // (The bulk-copy kernel takes balanced splits' tiles per block where the others take
                // the chunk of A.)
                let chunk = if shape.balanced.is_some() { tps } else { chunk };
                let (tpsi, shifti, chunki) = (tps as i32, *group_shift as i32, chunk as i32);
                // The ring kernels' depth (an extra argument the register kernels ignore).
                let stagesi = stages as i32;
                let gather = self.gather_bytes(m);
                let (a_in, lda_in, perm_in) = if self.perm.is_some() && !gather_in_kernel {
                    // SAFETY: the caller's contract; the workspace holds m·k halves (checked above).
                    unsafe { self.gather_act_order(a, lda, m, workspace, stream)? };
                    (workspace, self.k as i64, 0u64)
                } else {
                    (a, lda64, perm)
                };
                let partial = workspace + gather as u64;
                let cols = TILE_N * (4 / wk);
                let block_rows = ring.map_or(16 * mf, Ring::rows);
                let grid = match shape.balanced {
                    Some(blocks) => (blocks as u32, 1, m.div_ceil(block_rows) as u32),
                    None => (self.n.div_ceil(cols) as u32, splits as u32, m.div_ceil(block_rows) as u32),
                };
                let what = "launching the tensor-core GEMM kernel";
                let _ctx = CtxGuard::push(self.device.ctx)?;
                if ring == Some(Ring::Warpgroup) {
                    let box_k = if self.bits == 4 { 64 } else { 32 };
                    let amap = a_tensor_map(a_in, dtype, self.k, m, lda_in as usize, box_k, WG_ROWS as u32)?;
                    // (balanced splits' tiles per block: the chunk argument's place in the others)
                    let mut args = args![
                        amap,
                        qweight.ptr,
                        scale,
                        nz,
                        partial,
                        bias,
                        c,
                        ldc64,
                        mi,
                        ni,
                        ki,
                        tpsi,
                        shifti,
                        chunki,
                        stagesi
                    ];
                    let clusters = self.reduces_in_clusters(m) && shape.balanced.is_none();
                    let cluster_y = if clusters { splits as u32 } else { 1 };
                    // SAFETY: argument types and order match the kernel's signature (the tensor map
                    // first, copied by value); extents were checked above; clusters span grid y.
                    unsafe {
                        launch_cluster(
                            f,
                            grid,
                            threads,
                            smem as u32,
                            cluster_y,
                            stream,
                            &mut args,
                            what,
                            self.device.pdl,
                        )?
                    };
                    if cluster_y > 1 {
                        return Ok(()); // the clusters wrote C
                    }
                } else {
                    let mut args = args![
                        a_in,
                        lda_in,
                        qweight.ptr,
                        scale,
                        nz,
                        perm_in,
                        partial,
                        bias,
                        c,
                        ldc64,
                        mi,
                        ni,
                        ki,
                        tpsi,
                        shifti,
                        chunki,
                        stagesi
                    ];
                    // SAFETY: argument types and order match the kernel's signature; extents were checked above.
                    unsafe { launch_smem(f, grid, threads, smem as u32, stream, &mut args, what, self.device.pdl)? };
                }
                balanced_tiles = if shape.balanced.is_some() { tps } else { 0 };
                splits
            }
            Weights::Gemv { qweight, gword, scale, szero, zero, pair_math } => {
                let (mt, splits, wps) = self.gemv_shape(m);
                // 4 bit has packed-pair kernels (half the instructions per code); 8 bit uses f32 math.
                let pairs = format!("{suffix}x2");
                let variant = if self.bits == 4 && *pair_math { &pairs } else { suffix };
                let f = self.device.function(&format!("gptq_gemv_b{}_m{mt}_{variant}", self.bits))?;
                let wpsi = wps as i32;
                let mut args = args![
                    a,
                    lda64,
                    qweight.ptr,
                    gword.ptr,
                    scale.ptr,
                    szero.ptr,
                    zero.ptr,
                    perm,
                    workspace,
                    bias,
                    c,
                    ldc64,
                    mi,
                    ni,
                    ki,
                    wpsi
                ];
                let grid = (self.n.div_ceil(THREADS) as u32, splits as u32, m.div_ceil(mt) as u32);
                let _ctx = CtxGuard::push(self.device.ctx)?;
                // SAFETY: argument types and order match the kernel's signature; extents were checked above.
                unsafe { launch(f, grid, THREADS as u32, stream, &mut args, "launching the GEMV kernel")? };
                splits
            }
        };
        if splits == 1 {
            return Ok(()); // the GEMM kernel wrote C itself
        }
        let si = splits as i32;
        let partial = workspace + self.gather_bytes(m) as u64;
        let (bti, kti) = (balanced_tiles as i32, self.k.div_ceil(TILE_K) as i32);
        let lanes = if balanced_tiles > 0 { None } else { reduce_lanes(splits, m * self.n, self.reduce_lanes_max) };
        // Balanced splits have a reduction of their own (the uniform one stays branch-free).
        let (reduce, mut rargs) = if balanced_tiles > 0 {
            (
                self.device.function(&format!("gptq_reduce_{suffix}_balanced"))?,
                args![partial, bias, c, ldc64, mi, ni, bti, kti].to_vec(),
            )
        } else {
            let name = match lanes {
                Some(l) => format!("gptq_reduce_{suffix}_lanes{l}"),
                None => format!("gptq_reduce_{suffix}"),
            };
            (self.device.function(&name)?, args![partial, si, bias, c, ldc64, mi, ni].to_vec())
        };
        let total = m * self.n;
        let _ctx = CtxGuard::push(self.device.ctx)?;
        // After the tensor-core kernel (which lets dependents launch early) the reduction may start
        // while the GEMM's last blocks finish; it waits for them in pdl_wait().
        let pdl = self.device.pdl && self.uses_tensor_cores();
        let grid = (total.div_ceil(256 / lanes.unwrap_or(1)) as u32, 1, 1);
        // SAFETY: as above.
        unsafe { launch_smem(reduce, grid, 256, 0, stream, &mut rargs, "launching the reduction kernel", pdl) }
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
        let (ni, ki) = (self.n as i32, self.k as i32);
        let perm = self.perm.as_ref().map_or(0, |p| p.ptr);
        match &self.weights {
            Weights::Mma { qweight, scale_f16, nzero_f16, tiles_per_group, .. } => {
                let f = self.device.function(&format!("gptq_mma_dequant_b{}", self.bits))?;
                let nz = nzero_f16.as_ref().map_or(0, |z| z.ptr);
                let tpg = (*tiles_per_group).min(i32::MAX as usize) as i32;
                let mut args = args![qweight.ptr, scale_f16.ptr, nz, perm, out, ni, ki, tpg];
                let threads = self.n.div_ceil(TILE_N) * self.k.div_ceil(TILE_K) * 32;
                let _ctx = CtxGuard::push(self.device.ctx)?;
                // SAFETY: argument types and order match the kernel's signature.
                unsafe {
                    launch(
                        f,
                        (threads.div_ceil(128) as u32, 1, 1),
                        128,
                        stream,
                        &mut args,
                        "launching the dequantization kernel",
                    )
                }
            }
            Weights::Gemv { qweight, gword, scale, szero, .. } => {
                let f = self.device.function(&format!("gptq_dequant_b{}", self.bits))?;
                let mut args = args![qweight.ptr, gword.ptr, scale.ptr, szero.ptr, perm, out, ni, ki];
                let words = self.k / (32 / self.bits) as usize;
                let grid = (self.n.div_ceil(THREADS) as u32, words as u32, 1);
                let _ctx = CtxGuard::push(self.device.ctx)?;
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { launch(f, grid, THREADS as u32, stream, &mut args, "launching the dequantization kernel") }
            }
        }
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // Freeing may implicitly synchronize; it happens only when the caller frees the layer (or a
        // layer fails to build).
        if let Ok(_g) = CtxGuard::push(self.ctx) {
            // SAFETY: allocated by `upload` in `ctx`, freed once.
            unsafe { cu::cuMemFree_v2(self.ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wide_split_caps_splits_but_keeps_64_blocks() {
        // 4096×1024 (256 K tiles, 4 column blocks) at 64 rows, one block per SM on 132 SMs: 33
        // splits fill the SMs, at most 32 of two 4-tile stages; the cap takes 16.
        assert_eq!(wide_split(256, 4, 4, 132, 0, None), (32, 8));
        assert_eq!(wide_split(256, 4, 4, 132, 16, None), (16, 16));
        // 3584×512 (224 tiles, 2 column blocks) at 32 rows, two blocks per SM: 16 splits would
        // leave 32 blocks, so 32 are allowed (at most 28 whole pairs of stages).
        assert_eq!(wide_split(224, 4, 2, 264, 16, None), (28, 8));
        // Two row blocks of 64 (96 rows): 4 blocks per split, so the cap of 16 stands (14 of 16 tiles).
        assert_eq!(wide_split(224, 4, 4, 132, 16, None), (14, 16));
        // 4096×4096 (16 column blocks) at 64 rows: 8 splits fill the SMs, under the cap.
        assert_eq!(wide_split(256, 4, 16, 132, 16, None), (8, 32));
        // GPTQ_CUDA_WIDE_SPLITS wins; splits stay whole stages, at least two each.
        assert_eq!(wide_split(256, 4, 4, 132, 16, Some(64)), (32, 8));
        assert_eq!(wide_split(256, 4, 4, 132, 16, Some(3)), (3, 88));
        assert_eq!(wide_split(5, 4, 4, 132, 16, None), (1, 8));
    }

    use super::*;

    /// [`reduce_lanes`] keeps the plain reduction up to 24 splits, and above gives each output as
    /// many lanes as leave at most 16 splits to each, within its thread budget.
    #[test]
    fn the_lanes_reduction_takes_many_splits_over_few_outputs() {
        // Up to 24 splits: the plain kernel.
        assert_eq!(reduce_lanes(1, 1024, 8), None);
        assert_eq!(reduce_lanes(24, 1024, 8), None);
        // Enough lanes for at most 16 splits each, while the threads stay at most 8192.
        assert_eq!(reduce_lanes(25, 1024, 8), Some(2));
        assert_eq!(reduce_lanes(47, 2048, 8), Some(4));
        assert_eq!(reduce_lanes(86, 1024, 8), Some(8));
        assert_eq!(reduce_lanes(300, 512, 8), Some(8));
        // More outputs: one lane (whole rounds of loads), or the plain kernel where its batches of
        // 16 leave no remainder.
        assert_eq!(reduce_lanes(86, 2048, 8), Some(1));
        assert_eq!(reduce_lanes(38, 7168, 8), Some(1));
        assert_eq!(reduce_lanes(32, 8192, 8), None);
        assert_eq!(reduce_lanes(64, 4096, 8), None);
        // GPTQ_CUDA_REDUCE_LANES caps them.
        assert_eq!(reduce_lanes(86, 1024, 2), Some(2));
        assert_eq!(reduce_lanes(86, 1024, 1), Some(1));
        assert_eq!(reduce_lanes(86, 1024, 0), None);
    }

    /// The bulk-copy kernel's stages keep every copy destination 16-byte aligned, its A rows put the
    /// 8 rows of an ldmatrix in distinct banks; the warpgroup kernel's stages are whole swizzle
    /// atoms (1024 bytes) with A first; on sm_90 (228 KB per SM, 1 KB reserved per block) three
    /// blocks of either fit with at least four stages, and no more stages would fit.
    #[test]
    fn ring_stages_fit_three_blocks_on_sm90() {
        for bits in [4, 8] {
            for sym in [true, false] {
                let stage = bulk_stage_bytes(bits, sym);
                assert_eq!(stage % 16, 0);
                let a_row = ((if bits == 4 { 4 } else { 2 }) * 16 + 8) * 2;
                assert_eq!(a_row % 16, 0);
                let banks: std::collections::HashSet<usize> = (0..8).map(|r| (r * a_row / 16) % 8).collect();
                assert_eq!(banks.len(), 8, "A row of {a_row} bytes");
                assert_eq!(wg_stage_bytes(bits, sym) % 1024, 0, "{bits} bit sym {sym}");
                // 16 rows of one swizzle span: 128 bytes (64 inputs) at 4 bit, 64 at 8 bit.
                assert_eq!(
                    WG_ROWS * (if bits == 4 { 128 } else { 64 }) + 8192,
                    wg_stage_bytes(bits, true) - 512 * (if bits == 4 { 4 } else { 2 })
                );
                for ring in [Ring::Bulk, Ring::Warpgroup] {
                    let stages = ring.stages_fitting(bits, sym, 233472, 1024, 3);
                    assert!(stages >= 4, "{ring:?} {bits} bit, sym {sym}: {stages} stages");
                    assert!(3 * (ring.smem_bytes(bits, sym, stages) + 1024) <= 233472);
                    let more = 3 * (ring.smem_bytes(bits, sym, stages + 1) + 1024);
                    assert!(more > 233472 || stages == BULK_MAX_STAGES);
                }
                // The warpgroup kernel's deep ring: two blocks per SM, deeper than at three.
                let ring = Ring::Warpgroup;
                let deep = ring.stages_fitting(bits, sym, 233472, 1024, 2);
                assert!(deep > ring.stages_fitting(bits, sym, 233472, 1024, 3), "{bits} bit sym {sym}: {deep}");
                assert!(2 * (ring.smem_bytes(bits, sym, deep) + 1024) <= 233472);
                assert!(2 * (ring.smem_bytes(bits, sym, deep + 1) + 1024) > 233472);
            }
        }
    }

    /// The workspace query (largest need over 1..=m rows) equals a brute-force maximum, for both
    /// kernels' split rules, and never shrinks as m grows.
    /// The long in-kernel gather's sector model on the layers it was measured on (docs/perf.md,
    /// versions 48 and 52): two rows in the kernel at K = 4096 (faster there), launched at K = 8192
    /// and 14336 (slower in the kernel); one row in the kernel on all three.
    #[test]
    fn long_gather_sectors_follow_the_measured_rule() {
        let sectors = |inputs, k| long_gather_sectors(inputs, k);
        assert!((sectors(592, 4096) - 230.8).abs() < 0.5, "{}", sectors(592, 4096));
        assert!((sectors(608, 14336) - 441.6).abs() < 0.5, "{}", sectors(608, 14336));
        for (inputs, k, two_rows) in [(592, 4096, true), (688, 8192, false), (608, 14336, false)] {
            assert!(sectors(inputs, k) <= KERNEL_GATHER_LONG_SECTORS, "one row of K = {k}");
            assert_eq!(2.0 * sectors(inputs, k) <= KERNEL_GATHER_LONG_SECTORS, two_rows, "two rows of K = {k}");
        }
        // A block cannot touch more sectors than it has columns, nor than the row has.
        assert!(sectors(768, 1 << 20) <= 768.0 && sectors(768, 256) <= 16.0);
    }

    /// Balanced splits cover every tile of every column block exactly once, in whole stages, in
    /// about the slots asked for; `most` is the largest number of blocks meeting one column block,
    /// which is what the kernel's slot numbering (block − first block of the column block) needs.
    #[test]
    fn balanced_splits_cover_every_tile_once() {
        for &(quads, kt, stage, slots) in &[
            (112usize, 512usize, 4usize, 396usize),
            (112, 256, 4, 396),
            (3, 1000, 4, 396),
            (500, 64, 2, 264),
            (1, 8, 4, 8),
        ] {
            let (per, blocks, most) = balanced_split(quads, kt, stage, slots);
            assert_eq!(per % stage, 0);
            assert!(blocks <= slots && (blocks - 1) * per < quads * kt && blocks * per >= quads * kt);
            let mut seen = vec![0u8; quads * kt];
            let mut worst = 0;
            for q in 0..quads {
                let first = q * kt / per;
                let mut count = 0;
                for b in 0..blocks {
                    let (lo, hi) = (b * per, ((b + 1) * per).min(quads * kt));
                    if lo < (q + 1) * kt && hi > q * kt {
                        assert_eq!(b - first, count, "slot of block {b} in column block {q}");
                        count += 1;
                    }
                }
                worst = worst.max(count);
            }
            for b in 0..blocks {
                for f in b * per..((b + 1) * per).min(quads * kt) {
                    seen[f] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{quads} {kt}: every tile once");
            assert_eq!(most, worst, "{quads} {kt}");
        }
        // 8192×28672 at 4 bit on 132 SMs: 388 blocks of 148 tiles instead of 336 of 171.
        assert_eq!(balanced_split(112, 512, 4, 396), (148, 388, 5));
    }

    #[test]
    fn workspace_bound_covers_every_smaller_batch() {
        let sm = 132;
        for &(k, n) in &[(4096usize, 4096usize), (512, 1000), (28672, 8192), (1024, 64)] {
            let mma = |r: usize| {
                let s = mma_shape(r, k, n, 4, sm, None, |_| 3);
                if s.splits > 1 { s.splits * r * n * 4 } else { 0 }
            };
            let gemv = |r: usize| {
                let (_, splits, _) = gemv_shape(r, k, n, 4, sm);
                if splits > 1 { splits * r * n * 4 } else { 0 }
            };
            let (mut brute_mma, mut brute_gemv, mut prev) = (0, 0, 0);
            for m in 1..=3000 {
                brute_mma = brute_mma.max(mma(m));
                brute_gemv = brute_gemv.max(gemv(m));
                let bound = max_over_rows(m, 16, 64 * 3 * sm, mma);
                assert_eq!(bound, brute_mma, "tensor cores K {k} N {n} m {m}");
                assert_eq!(max_over_rows(m, 1, 8 * 4 * sm, gemv), brute_gemv, "CUDA cores K {k} N {n} m {m}");
                assert!(bound >= prev);
                prev = bound;
            }
        }
    }

    /// Every launch shape fits the kernel: A's chunk fits shared memory with its padding, chunks are
    /// whole tiles on 64-input boundaries, the splits cover K exactly once, and the reduction
    /// buffer of multi-warp-K blocks fits where A was.
    #[test]
    fn tensor_core_launch_shapes_fit_the_kernel() {
        for sm in [1usize, 46, 132] {
            for &(k, n) in &[(16usize, 64usize), (520, 200), (4096, 4096), (8192, 28672), (28672, 8192), (1028, 328)] {
                for m in (1..=70).chain([127, 128, 129, 1000, 4096, 65536]) {
                    let s = mma_shape(m, k, n, 4, sm, None, |mf| if mf == 4 { 2 } else { 3 });
                    let kt = k.div_ceil(TILE_K);
                    let rows = m.min(16 * s.mf);
                    assert!(rows * (s.chunk + 8) <= MMA_SMEM_HALVES, "{m} {k} {n}: {s:?}");
                    assert!(s.chunk >= 64 && s.chunk % 64 == 0, "{s:?}");
                    assert!(s.splits * s.tiles_per_split >= kt && (s.splits - 1) * s.tiles_per_split < kt, "{s:?}");
                    assert!(s.splits <= 65535);
                    if s.mf == 1 && s.splits > 1 {
                        // Small batches: partial sums (written and read back) within the 4-bit weights.
                        assert!(s.splits * m * n * 8 <= k * n / 2, "{m} {k} {n}: {s:?}");
                    }
                    if s.wk > 1 {
                        let red_bytes = s.wk * 16 * s.mf * TILE_N * (4 / s.wk) * 4;
                        assert!(red_bytes <= MMA_SMEM_HALVES * 2, "{s:?}");
                    }
                }
            }
        }
    }
}
