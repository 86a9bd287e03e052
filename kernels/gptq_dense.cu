// Dense weights for large batches: the tile layout of kernels/gptq_mma.cu (4 and 8 bit) dequantized
// to W[N, K] row major, in the layer's own (permuted) K order, fp16 or bf16, which cuBLASLt then
// multiplies as the transposed operand of a "TN" GEMM (src/cuda/dense.rs). Above a few hundred rows
// the GEMM is compute-bound, so one pass over the weights (read 0.5 or 1 byte, write 2 bytes per
// weight) buys cuBLASLt's tensor-core kernels; act-order A is gathered into K's permuted order first
// (gptq_gather_a), so these writes stay contiguous.
//
// Block: 256 threads = 8 warps, one column tile (64 outputs) × DENSE_KT K tiles (128 inputs). Warp w
// decodes K tile kt0 + w exactly as gptq_mma_dequant does (lane 4g + t holds columns 8s + g, inputs
// 2t, 2t+1, 2t+8, 2t+9 of its tile) into shared memory; the block then writes its 64 rows as 16-byte
// pieces, 256 contiguous bytes per row (the lanes' own values are 2-byte pieces of 8 rows: written
// straight out they would touch a 32-byte sector per 8 bytes). Rows padded by 8 halves so the
// transposed reads spread over the banks. Needs K % 8 == 0 (whole 16-byte pieces; the host checks).
#define DENSE_KT 8
#define DENSE_ROW (DENSE_KT * 16 + 8)

template <int BITS, bool BF>
__device__ void dense_dequant(const uint4* __restrict__ qw, const uint4* __restrict__ scale,
                              const uint4* __restrict__ nzero, u16* __restrict__ out, int N, int K,
                              int tiles_per_group) {
    __shared__ __align__(16) u16 rows[64 * DENSE_ROW];
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    const int nt = blockIdx.y, kt0 = blockIdx.x * DENSE_KT;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kt = kt0 + warp;
    if (kt < KT)
        dequant_lane<BITS>(qw, scale, nzero, nt, kt, KT, NT, tiles_per_group, lane, [&](int s, int i, float v) {
            rows[(8 * s + lane / 4) * DENSE_ROW + 16 * warp + i] = store_act<BF>(v);
        });
    __syncthreads();
    constexpr int PIECES = DENSE_KT * 2;  // 16-byte pieces per row
    for (int i = threadIdx.x; i < 64 * PIECES; i += blockDim.x) {
        const int r = i / PIECES, p = i % PIECES;
        const int n = nt * 64 + r, k = kt0 * 16 + 8 * p;
        if (n < N && k < K)
            *reinterpret_cast<uint4*>(out + (long)n * K + k) = *reinterpret_cast<const uint4*>(&rows[r * DENSE_ROW + 8 * p]);
    }
}
// gptq_dense_dequant_b{BITS}_{f16|bf16}: grid (ceil(K tiles / DENSE_KT), column tiles), 256 threads.
#define DENSE_DEQUANT(BITS, BF, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) gptq_dense_dequant_b##BITS##_##T(                     \
        const uint4* q, const uint4* s, const uint4* z, u16* o, int N, int K, int tpg) {                    \
        dense_dequant<BITS, BF>(q, s, z, o, N, K, tpg);                                                     \
    }
DENSE_DEQUANT(4, false, f16)
DENSE_DEQUANT(4, true, bf16)
DENSE_DEQUANT(8, false, f16)
DENSE_DEQUANT(8, true, bf16)
