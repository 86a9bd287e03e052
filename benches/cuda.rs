//! GPU benchmark (issue 4): our 4-bit (and 8-bit) GEMM against cuBLAS fp16 GEMM on the same data,
//! and against the read floor (a plain kernel streaming the same weight and scale bytes once), all
//! in one process. Each figure is the median over CUDA-graph replays of many calls that rotate over
//! weight copies larger than the 50 MB L2, so nothing is timed out of cache; no buffer is zeros.
//!
//! Run on a GPU machine: `cargo bench --bench cuda` (or the staged `stage/bench-cuda`).
//! Optional argument: `quick` (fewer shapes).

use cudarc::cublas::sys as cb;
use cudarc::driver::sys as cu;
use gptq::QuantizedLayer;
use gptq::cuda::{ActDType, CudaLayer, KernelFamily, Ring};
use gptq::format::{CheckpointFormat, LayerDesc, PackedRef};
use half::{bf16, f16};

fn ok(r: cu::CUresult, what: &str) {
    assert_eq!(r, cu::CUresult::CUDA_SUCCESS, "{what}");
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }
}

fn alloc(bytes: usize) -> u64 {
    let mut p = 0;
    unsafe { ok(cu::cuMemAlloc_v2(&mut p, bytes), "cuMemAlloc") };
    p
}

fn upload_random_f16(n: usize, rng: &mut Rng, scale: f32) -> u64 {
    upload_random(n, rng, scale, |x| f16::from_f32(x).to_bits())
}

/// Uniform values in [-scale/2, scale/2) in the encoding `bits` gives, uploaded.
fn upload_random(n: usize, rng: &mut Rng, scale: f32, bits: impl Fn(f32) -> u16) -> u64 {
    let v: Vec<u16> = (0..n).map(|_| bits(((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale)).collect();
    let p = alloc(n * 2);
    unsafe { ok(cu::cuMemcpyHtoD_v2(p, v.as_ptr().cast(), n * 2), "upload") };
    p
}

/// A random symmetric g128 layer (random packed words are uniformly random codes); with `act_order`,
/// g_idx assigns the groups through a random permutation of the inputs, as desc_act does.
/// A random `bits`-bit layer with groups of 128 (random codes and scales; zeros 2^(bits-1), or random
/// with `GPTQ_BENCH_ASYM=1`, which makes the layer asymmetric).
fn random_layer(bits: u32, k: usize, n: usize, rng: &mut Rng, act_order: bool) -> QuantizedLayer {
    let g = k / 128;
    let mut order: Vec<usize> = (0..k).collect();
    if act_order {
        for i in (1..k).rev() {
            order.swap(i, (rng.next() >> 20) as usize % (i + 1));
        }
    }
    let mut g_idx = vec![0i32; k];
    for (pos, &c) in order.iter().enumerate() {
        g_idx[c] = (pos / 128) as i32;
    }
    let qweight: Vec<i32> = (0..k * bits as usize / 32 * n).map(|_| (rng.next() >> 16) as i32).collect();
    let zero_word = if bits == 4 { 0x7777_7777u32 } else { 0x7F7F_7F7F };
    let asym = std::env::var("GPTQ_BENCH_ASYM").is_ok_and(|v| v == "1");
    let qzeros: Vec<i32> = (0..g * n * bits as usize / 32)
        .map(|_| if asym { (rng.next() >> 24) as i32 } else { zero_word as i32 })
        .collect();
    let scales: Vec<f16> =
        (0..g * n).map(|_| f16::from_f32(0.001 + (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 0.01)).collect();
    let desc = LayerDesc { bits, group_size: Some(128), in_features: k, out_features: n, sym: !asym };
    let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: Some(&g_idx), bias: None };
    QuantizedLayer::from_packed(desc, CheckpointFormat::V1, t).unwrap()
}

/// Median microseconds per call of `calls` enqueued by `f(i)` (i = call index), captured once in a
/// graph and replayed `reps` times.
fn time_graph(stream: cu::CUstream, calls: usize, reps: usize, mut f: impl FnMut(usize)) -> f64 {
    unsafe {
        // Warm-up outside the graph.
        for i in 0..calls.min(4) {
            f(i);
        }
        ok(cu::cuStreamSynchronize(stream), "sync");
        ok(
            cu::cuStreamBeginCapture_v2(stream, cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            "capture",
        );
        for i in 0..calls {
            f(i);
        }
        let mut graph = std::ptr::null_mut();
        ok(cu::cuStreamEndCapture(stream, &mut graph), "end capture");
        let mut exec = std::ptr::null_mut();
        ok(cu::cuGraphInstantiateWithFlags(&mut exec, graph, 0), "instantiate");
        ok(cu::cuGraphLaunch(exec, stream), "warm-up replay");
        let (mut e0, mut e1) = (std::ptr::null_mut(), std::ptr::null_mut());
        ok(cu::cuEventCreate(&mut e0, 0), "event");
        ok(cu::cuEventCreate(&mut e1, 0), "event");
        let mut t = Vec::new();
        for _ in 0..reps {
            ok(cu::cuEventRecord(e0, stream), "record");
            ok(cu::cuGraphLaunch(exec, stream), "replay");
            ok(cu::cuEventRecord(e1, stream), "record");
            ok(cu::cuEventSynchronize(e1), "event sync");
            let mut ms = 0f32;
            ok(cu::cuEventElapsedTime_v2(&mut ms, e0, e1), "elapsed");
            t.push(ms as f64 * 1e3 / calls as f64);
        }
        cu::cuGraphExecDestroy(exec);
        cu::cuGraphDestroy(graph);
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    // `profile`: chosen call shapes only (GPTQ_BENCH_SHAPE, GPTQ_BENCH_M, GPTQ_BENCH_BITS below; no
    // CUDA-core column), for a profiler or an A/B of run-time switches.
    let profile = std::env::args().any(|a| a == "profile");
    if !unsafe { cu::is_culib_present() } || gptq::cuda::device_count().unwrap_or(0) == 0 {
        println!("NOTICE: no CUDA device; nothing to benchmark");
        return;
    }
    unsafe {
        let mut dev = 0;
        ok(cu::cuDeviceGet(&mut dev, 0), "device");
        let mut ctx = std::ptr::null_mut();
        ok(cu::cuDevicePrimaryCtxRetain(&mut ctx, dev), "ctx");
        ok(cu::cuCtxSetCurrent(ctx), "set ctx");
    }
    let dev = gptq::cuda::init(0).unwrap();
    println!(
        "device 0: compute capability {}.{}, {} SMs, HBM {} per SM cycle{}, programmatic dependent launch {}, bulk-copy kernel {}, warpgroup kernel {}",
        dev.arch.0,
        dev.arch.1,
        dev.sm_count,
        dev.hbm_bytes_per_sm_cycle.map_or("unknown bytes".to_string(), |b| format!("{b:.1} bytes")),
        if dev.memory_rich { " (memory-rich)" } else { "" },
        if dev.pdl { "on" } else { "off" },
        if dev.bulk {
            format!("on ({} stages at 4 bit, 3 for short blocks)", dev.ring_stages(Ring::Bulk, 4, true, usize::MAX))
        } else {
            "off".to_string()
        },
        if dev.wg {
            format!(
                "on from {} to 128 rows (32 at 8 bit; {} stages at 4 bit, 3 for short blocks, deep ring {})",
                dev.wg_min_rows.map_or(
                    if dev.memory_rich {
                        "9 (on long K splits 3 at 4 bit where balanced, else 7; 2 at 8 bit, 1 in one cluster)"
                    } else {
                        "9 (2 on long K splits, 1 at 8 bit in one cluster)"
                    }
                    .to_string(),
                    |r| r.to_string()
                ),
                dev.ring_stages(Ring::Warpgroup, 4, true, usize::MAX),
                dev.deep_ring_stages(4, true).map_or("off".to_string(), |s| format!("{s} stages"))
            )
        } else {
            "off".to_string()
        }
    );
    let mut stream = std::ptr::null_mut();
    unsafe { ok(cu::cuStreamCreate(&mut stream, 1), "stream") };
    let mut handle = std::ptr::null_mut();
    unsafe {
        assert_eq!(cb::cublasCreate_v2(&mut handle), cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        assert_eq!(cb::cublasSetStream_v2(handle, stream.cast()), cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
    }
    let shapes: &[(usize, usize)] = if quick {
        &[(4096, 4096), (8192, 28672), (28672, 8192)]
    } else {
        &[(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
    };
    let ms: &[usize] = if quick { &[1, 4, 16, 64] } else { &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096] };
    let mut rng = Rng(7);
    let sink = alloc(1 << 16);
    println!(
        "{:>6} {:>12} {:>4} {:>10} {:>10} {:>8} {:>10} {:>8} {:>10} {:>10}",
        "M", "KxN", "bits", "ours us", "cuBLAS us", "speedup", "floor us", "of floor", "bf16 us", "cores us"
    );
    println!("(ours: tensor-core kernel, fp16; cores: the CUDA-core kernel on the same call, M <= 16)");
    // GPTQ_BENCH_SHAPE=KxN[,KxN...] picks the profile shapes (default 8192x28672), GPTQ_BENCH_M=M[,M...]
    // the row counts (default 1): several variants of one build compare in one process each.
    let profile_shapes: Vec<(usize, usize)> = std::env::var("GPTQ_BENCH_SHAPE")
        .unwrap_or_else(|_| "8192x28672".into())
        .split(',')
        .map(|s| {
            let parsed = s.split_once('x').and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)));
            parsed.unwrap_or_else(|| panic!("GPTQ_BENCH_SHAPE: {s:?} is not KxN"))
        })
        .collect();
    let profile_m: Vec<usize> = std::env::var("GPTQ_BENCH_M")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|m| m.parse().unwrap_or_else(|_| panic!("GPTQ_BENCH_M: {m:?} is not a row count")))
        .collect();
    // GPTQ_BENCH_ACT=1: the profile's layers with act-order (a random permutation of K).
    let profile_act = profile && std::env::var("GPTQ_BENCH_ACT").is_ok_and(|v| v == "1");
    // GPTQ_BENCH_BITS=8: the profile's layers at 8 bit (default 4).
    let bf16_raw = std::env::var("GPTQ_BENCH_BF16_RAW").is_ok_and(|v| v == "1");
    let profile_bits: u32 = std::env::var("GPTQ_BENCH_BITS").ok().and_then(|b| b.parse().ok()).unwrap_or(4);
    let (shapes, ms): (&[(usize, usize)], &[usize]) =
        if profile { (&profile_shapes, &profile_m) } else { (shapes, ms) };
    // cuBLAS fp16 times per (K, N, M), measured in the 4-bit pass and reused for the 8-bit rows.
    let mut cublas_us: std::collections::HashMap<(usize, usize, usize), f64> = std::collections::HashMap::new();
    for &(k, n) in shapes {
        for bits in [4u32, 8] {
            if profile && bits != profile_bits {
                continue;
            }
            // Enough copies that one rotation exceeds the L2 by far.
            let layer_bytes = k * n * bits as usize / 8;
            let copies = (200usize << 20).div_ceil(layer_bytes).clamp(2, 32);
            let cpu: Vec<QuantizedLayer> =
                (0..copies).map(|_| random_layer(bits, k, n, &mut rng, profile_act)).collect();
            let layers: Vec<CudaLayer> = cpu.iter().map(|l| CudaLayer::new(l, 0).unwrap()).collect();
            assert!(layers[0].uses_tensor_cores());
            let cores: Vec<CudaLayer> =
                cpu.iter().map(|l| CudaLayer::with_family(l, 0, KernelFamily::CudaCores).unwrap()).collect();
            drop(cpu);
            let dense_copies = (200usize << 20).div_ceil(k * n * 2).clamp(2, 8);
            let dense: Vec<u64> = if bits == 4 || profile {
                (0..dense_copies).map(|_| upload_random_f16(k * n, &mut rng, 0.02)).collect()
            } else {
                Vec::new()
            };
            let floor = time_graph(stream, 2 * copies, 9, |i| unsafe {
                for &(p, b) in &layers[i % copies].weight_buffers() {
                    layers[0].read_floor(p, b / 16 * 16, sink, stream).unwrap();
                }
            });
            for &m in ms {
                if bits == 8 && m > 64 && !profile {
                    continue;
                }
                let a = upload_random_f16(m * k, &mut rng, 2.0);
                // The bf16 call reads real bf16 values (fp16 bits read as bf16 span 2^-24..2^120 and
                // overflow the f32 sums); GPTQ_BENCH_BF16_RAW=1 reads the fp16 buffer instead, as
                // bench runs before 2026-11-28 did.
                let a_bf16 =
                    if bf16_raw { a } else { upload_random(m * k, &mut rng, 2.0, |x| bf16::from_f32(x).to_bits()) };
                let c = alloc(m * n * 2);
                let ws_bytes = layers[0].workspace_size(m).unwrap().max(cores[0].workspace_size(m).unwrap());
                let ws = alloc(ws_bytes.max(4));
                let calls = 2 * copies;
                let ours = time_graph(stream, calls, 9, |i| unsafe {
                    layers[i % copies].gemm(a, ActDType::F16, m, k, c, n, ws, ws_bytes, stream).unwrap();
                });
                let ours_bf16 = time_graph(stream, calls, 9, |i| unsafe {
                    layers[i % copies].gemm(a_bf16, ActDType::BF16, m, k, c, n, ws, ws_bytes, stream).unwrap();
                });
                let ours_cores = if m <= 16 && !profile {
                    time_graph(stream, calls, 9, |i| unsafe {
                        cores[i % copies].gemm(a, ActDType::F16, m, k, c, n, ws, ws_bytes, stream).unwrap();
                    })
                } else {
                    f64::NAN
                };
                let cublas = if !dense.is_empty() {
                    let (alpha, beta) = (1f32, 0f32);
                    time_graph(stream, 2 * dense_copies, 9, |i| unsafe {
                        // Row-major C[m, n] = A[m, k] · W[n, k]ᵀ is column-major Cᵀ = W · Aᵀ.
                        let st = cb::cublasGemmEx(
                            handle,
                            cb::cublasOperation_t::CUBLAS_OP_T,
                            cb::cublasOperation_t::CUBLAS_OP_N,
                            n as i32,
                            m as i32,
                            k as i32,
                            (&raw const alpha).cast(),
                            dense[i % dense_copies] as *const _,
                            cb::cudaDataType::CUDA_R_16F,
                            k as i32,
                            a as *const _,
                            cb::cudaDataType::CUDA_R_16F,
                            k as i32,
                            (&raw const beta).cast(),
                            c as *mut _,
                            cb::cudaDataType::CUDA_R_16F,
                            n as i32,
                            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                            cb::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                        );
                        assert_eq!(st, cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
                    })
                } else {
                    cublas_us.get(&(k, n, m)).copied().unwrap_or(f64::NAN)
                };
                cublas_us.insert((k, n, m), cublas);
                println!(
                    "{m:>6} {:>12} {bits:>4} {ours:>10.1} {cublas:>10.1} {:>7.2}x {floor:>10.1} {:>7.0}% {ours_bf16:>10.1} {ours_cores:>10.1}",
                    format!("{k}x{n}"),
                    cublas / ours,
                    100.0 * floor / ours
                );
                if profile {
                    println!("       ({})", layers[0].describe_call(m));
                }
                unsafe {
                    cu::cuMemFree_v2(a);
                    if a_bf16 != a {
                        cu::cuMemFree_v2(a_bf16);
                    }
                    cu::cuMemFree_v2(c);
                    cu::cuMemFree_v2(ws);
                }
            }
            for p in dense {
                unsafe { cu::cuMemFree_v2(p) };
            }
        }
    }
    if profile {
        return;
    }
    // Act-order: the same shapes with g_idx through a random permutation (A gathered first, or by
    // the small kernels themselves), against plain layers in the same process: issue 4's target.
    println!("act-order vs plain (4 bit g128 fp16, tensor cores)");
    println!("{:>6} {:>12} {:>10} {:>10} {:>8}", "M", "KxN", "plain us", "act us", "ratio");
    for &(k, n) in shapes {
        let copies = (200usize << 20).div_ceil(k * n / 2).clamp(2, 32);
        let plain: Vec<CudaLayer> =
            (0..copies).map(|_| CudaLayer::new(&random_layer(4, k, n, &mut rng, false), 0).unwrap()).collect();
        let act: Vec<CudaLayer> =
            (0..copies).map(|_| CudaLayer::new(&random_layer(4, k, n, &mut rng, true), 0).unwrap()).collect();
        let act_ms: &[usize] = if quick { &[1, 16] } else { &[1, 2, 4, 8, 16, 64, 256] };
        for &m in act_ms {
            let a = upload_random_f16(m * k, &mut rng, 2.0);
            let c = alloc(m * n * 2);
            let ws_bytes = plain[0].workspace_size(m).unwrap().max(act[0].workspace_size(m).unwrap());
            let ws = alloc(ws_bytes.max(4));
            let tp = time_graph(stream, 2 * copies, 9, |i| unsafe {
                plain[i % copies].gemm(a, ActDType::F16, m, k, c, n, ws, ws_bytes, stream).unwrap();
            });
            let ta = time_graph(stream, 2 * copies, 9, |i| unsafe {
                act[i % copies].gemm(a, ActDType::F16, m, k, c, n, ws, ws_bytes, stream).unwrap();
            });
            println!("{m:>6} {:>12} {tp:>10.1} {ta:>10.1} {:>7.2}x", format!("{k}x{n}"), ta / tp);
            unsafe {
                cu::cuMemFree_v2(a);
                cu::cuMemFree_v2(c);
                cu::cuMemFree_v2(ws);
            }
        }
    }
}
