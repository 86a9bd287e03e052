//! Driver loading, devices and their primary contexts, and the per-device kernel module.

use super::{check, compile, dense, layer};
use crate::error::{Error, Result};
use cudarc::driver::sys as cu;
use once_cell::sync::OnceCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

/// Loads libcuda and calls `cuInit` once; fails cleanly where there is no driver.
fn driver() -> Result<()> {
    static INIT: OnceCell<std::result::Result<(), Error>> = OnceCell::new();
    INIT.get_or_init(|| {
        // SAFETY: only probes whether the library can be opened (cudarc panics on a missing library
        // at the first call, so this check must come first).
        if !unsafe { cu::is_culib_present() } {
            return Err(Error::NoDevice("the CUDA driver library (libcuda.so) was not found".into()));
        }
        // SAFETY: plain driver call.
        check(unsafe { cu::cuInit(0) }, "cuInit")
    })
    .clone()
}

/// Number of CUDA devices (an error, not 0, where there is no driver).
pub fn device_count() -> Result<usize> {
    driver()?;
    let mut n = 0;
    // SAFETY: plain driver call writing one int.
    check(unsafe { cu::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")?;
    Ok(n.max(0) as usize)
}

/// A device with its primary context (the one PyTorch and TensorRT use) and the compiled kernels.
pub struct Device {
    pub ordinal: usize,
    pub(crate) ctx: cu::CUcontext,
    pub sm_count: u32,
    /// Compute capability, e.g. (9, 0).
    pub arch: (u32, u32),
    /// Whether the GEMM kernels are launched with programmatic dependent launch (sm_90 and later,
    /// a driver of CUDA 12.3 or later, which also captures it into graphs; `GPTQ_CUDA_PDL=0` turns it
    /// off): each may start its weight loads while the previous kernel on the stream finishes.
    pub pdl: bool,
    /// Whether up to 8 rows take the sm_90 kernel that streams weights and A into shared memory
    /// with bulk copies (cp.async.bulk and mbarriers) and swaps the mma roles; not before sm_90, nor
    /// with `GPTQ_CUDA_BULK=0`, which selects the register-fed kernel every architecture runs (for
    /// comparisons).
    pub bulk: bool,
    /// Whether 9 to 16 rows (from fewer on layers with long K splits: `CudaLayer::wg_min_rows`; none
    /// on small layers, which take the wide kernel) take the sm_90a kernel that feeds warpgroup mma
    /// (wgmma) from a ring of bulk and tensor copies (compute capability 9.0 exactly, whose cubin is built for sm_90a; a
    /// CUDA 12 or later driver for tensor maps; not with `GPTQ_CUDA_WG=0`).
    pub wg: bool,
    /// `GPTQ_CUDA_WG_MIN_ROWS` (1 to 16): the fewest rows the warpgroup kernel takes on every
    /// layer, for comparisons with the bulk-copy kernel; otherwise each layer chooses (9; 1 to 7 for
    /// long K splits, by bits and on memory-rich cards: `CudaLayer::with_wg_min_rows`).
    pub wg_min_rows: Option<usize>,
    /// Peak HBM bytes per SM and SM clock cycle, from the memory clock, bus width, SM count and
    /// SM clock the driver reports (H100 SXM: 12.8 from its nominal clocks; an H200 reported 18.4);
    /// `None` where it reports none.
    pub hbm_bytes_per_sm_cycle: Option<f64>,
    /// Whether the memory outruns the 4-bit decode at small batches: at least
    /// [`MEMORY_RICH_BYTES_PER_SM_CYCLE`] HBM bytes per SM cycle, or `GPTQ_CUDA_MEMORY_RICH=1` / `0`
    /// (for comparisons on one card). Such cards take other kernels at 2–16 rows on layers with long
    /// K splits (`CudaLayer::with_wg_min_rows`, `CudaLayer::balance`).
    pub memory_rich: bool,
    /// The rows that take the wide warpgroup kernel (32, 64 or 128 rows per block; sm_90a, where
    /// `wg` holds): [`WIDE_ROWS`] by default, `GPTQ_CUDA_WIDE_ROWS=LO-HI` for comparisons (on every
    /// layer), none with `GPTQ_CUDA_WIDE=0`.
    pub wide_rows: Option<(usize, usize)>,
    /// Whether `wide_rows` is the default (whose top applies to large layers only:
    /// `layer::WIDE_LARGE_LAYER`).
    pub(crate) wide_rows_default: bool,
    /// `GPTQ_CUDA_WIDE_SPLITS`: the wide kernel's K splits, for comparisons.
    pub(crate) wide_splits: Option<usize>,
    /// The most K splits the wide kernel's rule takes: [`WIDE_MAX_SPLITS`], or
    /// `GPTQ_CUDA_WIDE_MAX_SPLITS` for comparisons (0: no limit).
    pub(crate) wide_max_splits: usize,
    /// `GPTQ_CUDA_WIDE_FORM=64` / `64k` / `128`: the wide kernel's form from 33 rows, for comparisons.
    pub(crate) wide_form: Option<layer::WideForm>,
    /// Whether two blocks of every warpgroup kernel with its deep ring fit on one SM (checked at
    /// init; see [`Device::deep_ring_stages`]).
    wg_deep: bool,
    /// `GPTQ_CUDA_BULK_STAGES`: the ring kernels' depth, for benchmarks.
    bulk_stages_override: Option<usize>,
    /// The longest row of A (inputs) the row-by-row act-order gather (`gptq_gather_a_bulk`, sm_90)
    /// holds in one block's shared memory; 0 where it does not run.
    pub(crate) gather_row_max_k: usize,
    /// Shared memory one SM has for blocks, and what each block reserves of it.
    smem_per_sm: usize,
    smem_reserved: usize,
    module: cu::CUmodule,
    /// cuBLASLt for large batches (`None` where it is not installed or `GPTQ_CUDA_DENSE=0`).
    pub(crate) lt: Option<dense::Lt>,
    /// The fewest rows a call needs to take the dense path (dequantize, then cuBLASLt):
    /// 129 by default (docs/perf.md, version 61), or `GPTQ_CUDA_DENSE_MIN_ROWS`.
    pub dense_min_rows: usize,
    functions: Mutex<HashMap<String, usize>>,
    /// Blocks of each tensor-core kernel that fit on one SM at once (registers, shared memory),
    /// measured at init so launches never queue a second wave by accident.
    resident: HashMap<String, usize>,
}

// SAFETY: CUDA contexts, modules and functions are usable from any thread; the function cache is
// behind a mutex.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("ordinal", &self.ordinal).field("arch", &self.arch).finish()
    }
}

/// Makes `ctx` current for the guard's lifetime and restores the caller's context afterwards.
pub(crate) struct CtxGuard;

impl CtxGuard {
    pub(crate) fn push(ctx: cu::CUcontext) -> Result<CtxGuard> {
        // SAFETY: `ctx` is a retained primary context.
        check(unsafe { cu::cuCtxPushCurrent_v2(ctx) }, "cuCtxPushCurrent")?;
        Ok(CtxGuard)
    }
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        let mut old = std::ptr::null_mut();
        // SAFETY: pops the context pushed in `push`.
        unsafe { cu::cuCtxPopCurrent_v2(&mut old) };
    }
}

/// `GPTQ_CUDA_KERNEL_ARCH` (e.g. `80`, `86`, `89`): build the kernels for that older compute
/// capability, as PTX the driver compiles for this card, and choose kernels as on such a card (no
/// bulk copies, warpgroup mma or programmatic dependent launch). For tests: it runs the code an
/// A100 or an RTX 4090 runs, on the card at hand. An error for a malformed value or one above the
/// card's own capability.
fn kernel_arch_override(arch: (u32, u32)) -> Result<Option<(u32, u32)>> {
    std::env::var("GPTQ_CUDA_KERNEL_ARCH").ok().map(|v| parse_kernel_arch(&v, arch)).transpose()
}

/// A `GPTQ_CUDA_KERNEL_ARCH` value on a device of compute capability `arch`.
fn parse_kernel_arch(v: &str, arch: (u32, u32)) -> Result<(u32, u32)> {
    let cc = v.trim().parse::<u32>().ok().filter(|&cc| (80..1000).contains(&cc)).map(|cc| (cc / 10, cc % 10));
    match cc {
        Some(cc) if cc <= arch => Ok(cc),
        _ => Err(Error::InvalidArgument(format!(
            "GPTQ_CUDA_KERNEL_ARCH = {v:?}: expected a compute capability from 80 up to this device's {}{}",
            arch.0, arch.1
        ))),
    }
}

/// The fewest rows that take the dense path by default. The register-fed kernel runs blocks of 64
/// rows; with a third block per column block (129 rows on; measured at 160-224) it ran at
/// 0.26-0.46× cuBLAS fp16 on the six profile layers and the dense path at 0.46-0.58×, faster on
/// every one (1.2-1.8× there, 1.5-3.1× from 256 rows). At 128 rows the kernel was faster on four of the six (docs/perf.md, version 61).
pub(crate) const DENSE_MIN_ROWS: usize = 129;
/// The rows the wide warpgroup kernel takes by default ([`Device::wide_rows`]; above 128 on large
/// layers only, `layer::WIDE_LARGE_LAYER`; from 9 on small 4-bit layers, `layer::WIDE_SMALL_LAYER`).
pub(crate) const WIDE_ROWS: (usize, usize) = (17, 256);
/// The most K splits the wide kernel takes by default where their partial sums would weigh at least
/// as much as the weights' codes, unless that leaves fewer than 64 blocks (`layer::wide_split`). Splitting K so that the
/// blocks fill the SMs once gives layers of few columns many splits, whose partial sums (splits ×
/// rows × columns × 4 bytes) outweigh the weights: 4096×1024 at 64 rows in 32 splits writes and
/// reads 8 MB of them for 2 MB of weights. Measured on the H200 (docs/perf.md, version 71).
pub(crate) const WIDE_MAX_SPLITS: usize = 16;
/// HBM bytes per SM cycle from which a card counts as memory-rich ([`Device::memory_rich`]): between
/// the H100 SXM's 12.8, where the kernel choices at 2–16 rows were measured, and the H200's 18.4,
/// where the 4-bit decode rather than HBM sets the pace from 2 rows (docs/perf.md, version 70).
pub(crate) const MEMORY_RICH_BYTES_PER_SM_CYCLE: f64 = 16.0;

/// Peak HBM bytes per SM and SM cycle: memory clock (kHz, double data rate) × bus width (bits) / 8
/// over SM count × SM clock (kHz). `None` where any is 0 (a driver that no longer reports one).
fn hbm_bytes_per_sm_cycle(mem_khz: u32, bus_bits: u32, sm_count: u32, sm_khz: u32) -> Option<f64> {
    let per_second = 2.0 * mem_khz as f64 * bus_bits as f64 / 8.0;
    let cycles = sm_count as f64 * sm_khz as f64;
    (per_second > 0.0 && cycles > 0.0).then(|| per_second / cycles)
}

/// `GPTQ_CUDA_WIDE_ROWS=LO-HI` (rounded out to whole runs of 16 rows, 16k+1 to 16j, which the
/// workspace bound assumes: `CudaLayer::workspace_size`), or the default where it is unset or does
/// not parse; `None` with `GPTQ_CUDA_WIDE=0`. The flag: whether the default was taken.
fn wide_rows_setting() -> (Option<(usize, usize)>, bool) {
    if std::env::var("GPTQ_CUDA_WIDE").is_ok_and(|v| v == "0") {
        return (None, false);
    }
    let parsed = std::env::var("GPTQ_CUDA_WIDE_ROWS").ok().and_then(|v| {
        let (lo, hi) = v.split_once('-')?;
        let (lo, hi) = (lo.trim().parse::<usize>().ok()?, hi.trim().parse::<usize>().ok()?);
        (lo >= 1 && lo <= hi).then(|| ((lo - 1) / 16 * 16 + 1, hi.next_multiple_of(16)))
    });
    match parsed {
        Some(rows) => (Some(rows), false),
        None => (Some(WIDE_ROWS), true),
    }
}

static DEVICES: OnceCell<Mutex<HashMap<usize, Arc<Device>>>> = OnceCell::new();

/// Retains device `ordinal`'s primary context and compiles (or loads from the disk cache) the
/// kernels for its architecture. Idempotent; later calls return the same device.
pub fn init(ordinal: usize) -> Result<Arc<Device>> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::NoDevice(format!("device {ordinal} does not exist ({count} CUDA devices)")));
    }
    let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let mut dev = 0;
    // SAFETY: plain driver calls writing to locals.
    unsafe {
        check(cu::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
    }
    let attr = |a: cu::CUdevice_attribute| -> Result<u32> {
        let mut v = 0;
        // SAFETY: writes one int.
        check(unsafe { cu::cuDeviceGetAttribute(&mut v, a, dev) }, "cuDeviceGetAttribute")?;
        Ok(v as u32)
    };
    let arch = (
        attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    let sm_count = attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let mut driver_version = 0;
    // SAFETY: writes one int.
    check(unsafe { cu::cuDriverGetVersion(&mut driver_version) }, "cuDriverGetVersion")?;
    // The architecture the kernels are built for: the device's own, or an older one for tests.
    let code_arch = kernel_arch_override(arch)?.unwrap_or(arch);
    let pdl = code_arch.0 >= 9 && driver_version >= 12030 && std::env::var("GPTQ_CUDA_PDL").map_or(true, |v| v != "0");
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
    let bulk = code_arch.0 >= 9 && std::env::var("GPTQ_CUDA_BULK").map_or(true, |v| v != "0");
    // The warpgroup kernels exist only in the sm_90a cubin (not in compute_90 PTX on a newer card).
    let wg = code_arch == (9, 0)
        && arch == (9, 0)
        && driver_version >= 12000
        && std::env::var("GPTQ_CUDA_WG").map_or(true, |v| v != "0");
    let wg_min_rows = env("GPTQ_CUDA_WG_MIN_ROWS").map(|r| r.clamp(1, 16));
    // (Attributes a driver may stop reporting read as 0 rather than failing init.)
    let soft = |a| attr(a).unwrap_or(0);
    let hbm = hbm_bytes_per_sm_cycle(
        soft(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE),
        soft(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH),
        sm_count,
        soft(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE),
    );
    let memory_rich = match std::env::var("GPTQ_CUDA_MEMORY_RICH").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => hbm.is_some_and(|b| b >= MEMORY_RICH_BYTES_PER_SM_CYCLE),
    };
    let (wide_rows, wide_rows_default) = if wg { wide_rows_setting() } else { (None, false) };
    let bulk_stages_override = env("GPTQ_CUDA_BULK_STAGES").map(|s| s.clamp(2, layer::BULK_MAX_STAGES));
    let smem_per_sm = attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as usize;
    let smem_reserved = attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK)? as usize;
    let mut ctx = std::ptr::null_mut();
    // SAFETY: retains the primary context (released never: it lives as long as the process).
    check(unsafe { cu::cuDevicePrimaryCtxRetain(&mut ctx, dev) }, "cuDevicePrimaryCtxRetain")?;
    let cubin = if code_arch == arch { compile::kernels_cubin(arch)? } else { compile::kernels_ptx(code_arch)? };
    let _g = CtxGuard::push(ctx)?;
    let mut module = std::ptr::null_mut();
    // SAFETY: `cubin` is a complete cubin image for this device's architecture, or NUL-terminated
    // PTX for an older one (kernels_ptx), which the driver compiles.
    check(unsafe { cu::cuModuleLoadData(&mut module, cubin.as_ptr().cast()) }, "cuModuleLoadData")?;
    let mut d = Device {
        ordinal,
        ctx,
        sm_count,
        arch,
        pdl,
        bulk,
        wg,
        wg_min_rows,
        hbm_bytes_per_sm_cycle: hbm,
        memory_rich,
        wide_rows,
        wide_rows_default,
        wide_splits: env("GPTQ_CUDA_WIDE_SPLITS").filter(|&s| s > 0),
        wide_max_splits: env("GPTQ_CUDA_WIDE_MAX_SPLITS").unwrap_or(WIDE_MAX_SPLITS),
        wide_form: match std::env::var("GPTQ_CUDA_WIDE_FORM").as_deref() {
            Ok("64") => Some(layer::WideForm::Rows64),
            Ok("64k") => Some(layer::WideForm::Rows64Split),
            Ok("128") => Some(layer::WideForm::Rows128),
            _ => None,
        },
        wg_deep: wg,
        bulk_stages_override,
        gather_row_max_k: 0,
        smem_per_sm,
        smem_reserved,
        module,
        lt: dense::Lt::load(),
        dense_min_rows: env("GPTQ_CUDA_DENSE_MIN_ROWS").unwrap_or(DENSE_MIN_ROWS).max(1),
        functions: Mutex::new(HashMap::new()),
        resident: HashMap::new(),
    };
    // Look up every tensor-core kernel here, once, and set its dynamic shared-memory limit to what
    // it uses (above the default 48 KB for the ring kernels), so GEMM calls only launch.
    let rings: Vec<layer::Ring> =
        [(layer::Ring::Bulk, bulk), (layer::Ring::Warpgroup, wg)].into_iter().filter(|r| r.1).map(|r| r.0).collect();
    for bits in [4, 8] {
        for act in ["f16", "bf16"] {
            for sym in [true, false] {
                let mut kernels: Vec<(String, u32, usize)> = [1, 2, 4]
                    .iter()
                    .map(|&mf| (layer::mma_kernel_name(bits, mf, act, sym), 128, layer::MMA_SMEM_BYTES))
                    .collect();
                for &r in &rings {
                    let bytes = d.full_ring_bytes(r, bits, sym);
                    kernels.push((r.kernel_name(bits, act, sym), layer::BULK_THREADS, bytes));
                    kernels.push((r.balanced_kernel_name(bits, act, sym), layer::BULK_THREADS, bytes));
                }
                if wg {
                    for form in layer::WideForm::ALL {
                        let bytes = d.wide_smem_bytes(bits, sym, form);
                        kernels.push((form.kernel_name(bits, act, sym), form.threads(), bytes));
                    }
                }
                for (name, threads, bytes) in kernels {
                    let f = d.function(&name)?;
                    // The warpgroup kernel may also run with its deep ring (two blocks per SM).
                    let deep = name.starts_with("gptq_wg_").then(|| d.deep_ring_bytes(bits, sym));
                    let limit = deep.map_or(bytes, |deep| deep.max(bytes)) as i32;
                    let attr = cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                    // SAFETY: `f` is a function of the loaded module.
                    check(unsafe { cu::cuFuncSetAttribute(f, attr, limit) }, "cuFuncSetAttribute (shared memory)")?;
                    // Blocks of `f` resident on one SM with `smem` bytes of dynamic shared memory.
                    let occupancy = |smem: usize| {
                        let mut blocks = 0;
                        // SAFETY: `f` is a function of the loaded module; writes one int.
                        let r = unsafe {
                            cu::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut blocks, f, threads as i32, smem)
                        };
                        check(r, "cuOccupancyMaxActiveBlocksPerMultiprocessor").map(|_| blocks.max(0) as usize)
                    };
                    if let Some(deep) = deep {
                        d.wg_deep &= occupancy(deep).is_ok_and(|b| b >= 2);
                    }
                    d.resident.insert(name.clone(), occupancy(bytes)?.max(1));
                    // The bulk-copy kernel may also run with a shallow ring at four blocks per SM.
                    if bulk && name == layer::Ring::Bulk.kernel_name(bits, act, sym) {
                        let shallow = layer::Ring::Bulk.smem_bytes(bits, sym, layer::BULK_FOUR_STAGES);
                        d.resident.insert(layer::bulk_four_key(&name), occupancy(shallow).unwrap_or(1).max(1));
                    }
                }
            }
        }
    }
    if bulk {
        // The row-by-row gather holds a whole row of A: as long a row as one block's shared memory
        // takes (after its 16-byte mbarrier), in whole 16-byte pieces.
        let optin = attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let f = d.function("gptq_gather_a_bulk")?;
        let attr = cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: `f` is a function of the loaded module.
        check(unsafe { cu::cuFuncSetAttribute(f, attr, optin as i32) }, "cuFuncSetAttribute (shared memory)")?;
        d.gather_row_max_k = (optin as usize).saturating_sub(16) / 16 * 8;
    }
    let d = Arc::new(d);
    map.insert(ordinal, d.clone());
    Ok(d)
}

impl Device {
    /// Stages of ring kernel `ring` for blocks of `tiles_per_block` K tiles: as many as let three
    /// blocks share an SM (the launch attribute and occupancy are set for that many). For blocks of
    /// fewer than 64 K tiles, at most 3: the smaller shared-memory footprint measured 7-15% faster
    /// there for the bulk-copy kernel (4096×4096, 4096×14336, 8192×8192 at M = 1), while blocks of
    /// 150+ tiles kept their speed only with the full ring (docs/perf.md, version 23).
    pub fn ring_stages(&self, ring: layer::Ring, bits: u32, sym: bool, tiles_per_block: usize) -> usize {
        let fit = ring.stages_fitting(bits, sym, self.smem_per_sm, self.smem_reserved, 3);
        self.bulk_stages_override.unwrap_or(if tiles_per_block < 64 { fit.min(3) } else { fit })
    }

    /// Stages of the warpgroup kernel's deep ring: as many as let two blocks share an SM (7 at 4
    /// bit symmetric on sm_90, against 4 for three blocks), for layers whose long K splits then fit
    /// in clusters (`CudaLayer::wg_deep_rows`); `None` where the device has no warpgroup kernel, two
    /// such blocks do not fit, the ring would be no deeper, or `GPTQ_CUDA_BULK_STAGES` fixes the depth.
    pub fn deep_ring_stages(&self, bits: u32, sym: bool) -> Option<usize> {
        let ring = layer::Ring::Warpgroup;
        let stages = ring.stages_fitting(bits, sym, self.smem_per_sm, self.smem_reserved, 2);
        let deeper = stages > self.ring_stages(ring, bits, sym, usize::MAX);
        // Not with GPTQ_CUDA_BULK_STAGES, whose fixed depth a comparison means for every call.
        (self.wg && self.wg_deep && self.bulk_stages_override.is_none() && deeper).then_some(stages)
    }

    /// Whether `GPTQ_CUDA_BULK_STAGES` fixes the ring kernels' depth (for comparisons).
    pub(crate) fn ring_depth_fixed(&self) -> bool {
        self.bulk_stages_override.is_some()
    }

    /// Dynamic shared memory of ring kernel `ring` with its full ring (three blocks per SM): the
    /// most a launch asks for outside the deep ring (the kernels' attribute is set to it at init).
    pub(crate) fn full_ring_bytes(&self, ring: layer::Ring, bits: u32, sym: bool) -> usize {
        ring.smem_bytes(bits, sym, self.ring_stages(ring, bits, sym, usize::MAX))
    }

    /// Stages of the wide warpgroup kernel's `form`: as many as let its blocks per SM share one, at
    /// most 16, at least what the form needs ([`layer::WideForm::min_stages`]).
    pub(crate) fn wide_stages(&self, bits: u32, sym: bool, form: layer::WideForm) -> usize {
        let per_block =
            (self.smem_per_sm / form.blocks_per_sm()).saturating_sub(self.smem_reserved + layer::WIDE_RING_SLACK);
        (per_block / form.stage_bytes(bits, sym)).clamp(form.min_stages(bits, sym), layer::BULK_MAX_STAGES)
    }

    /// Dynamic shared memory of the wide warpgroup kernel's `form`.
    pub(crate) fn wide_smem_bytes(&self, bits: u32, sym: bool, form: layer::WideForm) -> usize {
        layer::WIDE_RING_SLACK + self.wide_stages(bits, sym, form) * form.stage_bytes(bits, sym)
    }

    /// Dynamic shared memory of the warpgroup kernel with its deep ring.
    fn deep_ring_bytes(&self, bits: u32, sym: bool) -> usize {
        let ring = layer::Ring::Warpgroup;
        ring.smem_bytes(bits, sym, ring.stages_fitting(bits, sym, self.smem_per_sm, self.smem_reserved, 2))
    }

    /// Blocks of tensor-core kernel `name` resident on one SM at once (1 if unknown).
    pub(crate) fn resident_blocks(&self, name: &str) -> usize {
        self.resident.get(name).copied().unwrap_or(1)
    }

    /// Whether cuBLASLt was loaded for the dense path of large batches.
    pub fn has_cublaslt(&self) -> bool {
        self.lt.is_some()
    }

    /// A kernel of the module by its `extern "C"` name.
    pub(crate) fn function(&self, name: &str) -> Result<cu::CUfunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&f) = cache.get(name) {
            return Ok(f as cu::CUfunction);
        }
        let cname = CString::new(name).map_err(|_| Error::InvalidArgument("kernel name".into()))?;
        let mut f = std::ptr::null_mut();
        // The caller's thread may have no current context (a fresh thread calling gemm).
        let _ctx = CtxGuard::push(self.ctx)?;
        // SAFETY: the module is loaded for the life of the process.
        check(unsafe { cu::cuModuleGetFunction(&mut f, self.module, cname.as_ptr()) }, name)?;
        cache.insert(name.to_string(), f as usize);
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::{MEMORY_RICH_BYTES_PER_SM_CYCLE, hbm_bytes_per_sm_cycle, parse_kernel_arch};

    #[test]
    fn hbm_bytes_per_sm_cycle_separates_h100_from_h200() {
        // Nominal figures of these cards: memory clock (kHz), bus width, SMs, SM clock (kHz). (The
        // H200 lent to this project reported attributes that give 18.4: memory-rich either way.)
        let h100 = hbm_bytes_per_sm_cycle(2_619_000, 5120, 132, 1_980_000).unwrap();
        let h200 = hbm_bytes_per_sm_cycle(3_201_000, 6144, 132, 1_980_000).unwrap();
        assert!((h100 - 12.83).abs() < 0.01 && (h200 - 18.81).abs() < 0.01, "{h100} {h200}");
        assert!(h100 < MEMORY_RICH_BYTES_PER_SM_CYCLE && h200 >= MEMORY_RICH_BYTES_PER_SM_CYCLE);
        assert_eq!(hbm_bytes_per_sm_cycle(0, 5120, 132, 1_980_000), None);
        assert_eq!(hbm_bytes_per_sm_cycle(2_619_000, 5120, 132, 0), None);
    }

    #[test]
    fn kernel_arch_override_takes_older_capabilities_only() {
        assert_eq!(parse_kernel_arch("80", (9, 0)).unwrap(), (8, 0));
        assert_eq!(parse_kernel_arch(" 89 ", (9, 0)).unwrap(), (8, 9));
        assert_eq!(parse_kernel_arch("90", (9, 0)).unwrap(), (9, 0));
        for bad in ["100", "75", "sm_80", "", "8.0"] {
            let e = parse_kernel_arch(bad, (9, 0)).unwrap_err().to_string();
            assert!(e.contains("GPTQ_CUDA_KERNEL_ARCH") && e.contains("90"), "{bad:?}: {e}");
        }
    }
}
