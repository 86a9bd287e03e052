// GPTQ dequant-GEMM on tensor cores for any M, 4 and 8 bit, fp16 or bf16 activations:
// C[M, N] = A[M, K] · W[K, N] (+ bias), mma.sync m16n8k16 with f32 accumulators. Compiled at run time
// by NVRTC after kernels/common.cuh.
//
// Weight layout (built once per layer by src/cuda/layer.rs): K in the layer's permuted order (every
// g_idx group a contiguous run, as vLLM's Marlin path does), padded to tiles of 16 inputs × 64
// outputs (pad codes 0, pad scales 0). Tile (nt, kt) is 512 bytes at 4 bit (1 KB at 8 bit) stored
// as [nt][kt][v < BITS/4][lane < 32][4 words], so each lane's 16-byte load v is one slice of a
// 512-byte coalesced warp load, and a warp streams its column tile along K through contiguous memory.
// Each lane's words hold exactly the codes of its mma B fragments (lane = 4·g + t; fragment
// registers b0 = (k 2t, 2t+1), b1 = (k 2t+8, 2t+9), both at column g of an 8-column subtile s):
//   4 bit, word c < 4: subtiles 2c and 2c+1; nibble j and j+4 are the low and high halves of pair j:
//          pair 0 = b0 of 2c, pair 1 = b1 of 2c, pair 2 = b0 of 2c+1, pair 3 = b1 of 2c+1.
//   8 bit, word c < 8: subtile c; bytes (0, 2) = b0, bytes (1, 3) = b1.
// So one LOP3 turns a masked word into a register of two codes (the magic-number trick of
// common.cuh), with no shuffles and no shared memory for B.
//   scale [G][nt][g < 8][s < 8]  fp16 or bf16: the scale of column 64·nt + 8s + g in group G, one
//                                16-byte load per lane; groups are uniform runs of `tpg` tiles
//   nzero same layout, the pair offset -(magic + zero) (null for symmetric layers: a constant)
//   perm  i32 [K] or null        column of A feeding permuted input k (act-order)
//   partial f32 [S, M, N]        split-K workspace; gptq_reduce_* adds the splits and the bias
//
// Tiles: a block of 4 warps owns BM = 16·MF rows of A and 64·WN columns; its WK = 4/WN warps split
// the block's K tiles round-robin and reduce through shared memory at the end. MF = 1, WK = 4 for
// M <= 16 (memory-bound: 4 warps stream one column tile, batches of 4 tiles in flight per warp);
// MF = 2, WK = 2 for M <= 32; MF = 4, WK = 1 above (each warp 64×64 of C, A reused by 4 warps).
// A is staged per chunk of KC inputs in shared memory (through perm), read with ldmatrix; rows
// padded by 8 halves so the 8 rows of an ldmatrix hit distinct banks. blockIdx.y splits K so that
// small M still puts enough loads in flight on every SM; with one split C is written directly.

#define MMA_THREADS 128

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ void ldmatrix_x4(u32 (&a)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(addr)
                 : "memory");
}
template <bool BF> __device__ __forceinline__ void mma16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if (BF)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Half s of a 16-byte vector of 8 halves, duplicated into both halves of a pair.
__device__ __forceinline__ u32 dup_half(const uint4& v, int s) {
    const u32 w = s < 2 ? v.x : s < 4 ? v.y : s < 6 ? v.z : v.w;
    return __byte_perm(w, 0, (s & 1) ? 0x3232 : 0x1010);
}
// Two 8-bit codes (bytes j and j+2 of q) as f16 pair 1024 + code (exact: f16 spacing is 1 there).
__device__ __forceinline__ u32 code_pair8(u32 q) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(q), "r"(0x00FF00FFu), "r"(0x64006400u));
    return r;
}
__device__ __forceinline__ u32 h2_to_b2(u32 h) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(h2f((u16)(h >> 16))), "f"(h2f((u16)(h & 0xffffu))));
    return r;
}

// The 16 B-fragment registers of one tile for this lane: b[s][r], s = 8-column subtile, r = 0/1.
// w = (pair - (magic + zero)) exactly, then times the scale with one rounding. 8 bit in bf16: codes
// up to 255 do not fit bf16's 8-bit significand above the magic, so the exact integer difference
// is formed in f16 and converted (exactly: |code - zero| <= 256).
template <int BITS, bool BF>
__device__ __forceinline__ void dequant_tile(const uint4 (&q)[BITS / 4], const uint4& sc, const uint4& nz,
                                             u32 (&b)[8][2]) {
    const u32 neg_zero = 0x80008000u;
    if constexpr (BITS == 4) {
        const u32 one = BF ? 0x3F803F80u : 0x3C003C00u;
        const u32 w[4] = {q[0].x, q[0].y, q[0].z, q[0].w};
#pragma unroll
        for (int c = 0; c < 4; c++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int s = 2 * c + (j >> 1);
                b[s][j & 1] = pfma<BF>(pfma<BF>(code_pair<BF>(w[c] >> (4 * j)), one, dup_half(nz, s)),
                                       dup_half(sc, s), neg_zero);
            }
    } else {
        const u32 one_h = 0x3C003C00u;
        const u32 w[8] = {q[0].x, q[0].y, q[0].z, q[0].w, q[1].x, q[1].y, q[1].z, q[1].w};
#pragma unroll
        for (int c = 0; c < 8; c++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                u32 d = pfma<false>(code_pair8(w[c] >> (8 * j)), one_h, dup_half(nz, c));
                if constexpr (BF) d = h2_to_b2(d);
                b[c][j] = pfma<BF>(d, dup_half(sc, c), neg_zero);
            }
    }
}

template <int BITS, int MF, int WK, bool BF>
__device__ void mma_gemm(const u16* __restrict__ A, long lda, const uint4* __restrict__ qw,
                         const uint4* __restrict__ scale, const uint4* __restrict__ nzero,
                         const int* __restrict__ perm, float* __restrict__ partial,
                         const float* __restrict__ bias, u16* __restrict__ C, long ldc, int M, int N, int K,
                         int tiles_per_split, int tiles_per_group) {
    constexpr int WN = 4 / WK;
    constexpr int BM = 16 * MF;
    constexpr int BN = 64 * WN;
    constexpr int KC = 1024 / MF;  // inputs of A per shared-memory chunk (33 KB for every MF)
    constexpr int LDS = KC + 8;
    constexpr int QV = BITS / 4;
    constexpr int P = MF == 4 ? 2 : 4;  // tiles per batch of loads in flight (registers allow)
    __shared__ __align__(16) u16 sA[BM * LDS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wk = warp % WK, wn = warp / WK;
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    const int nt = blockIdx.x * WN + wn;
    const int m0 = blockIdx.z * BM;
    const int t_begin = blockIdx.y * tiles_per_split;
    const int t_end = min(t_begin + tiles_per_split, KT);
    // Symmetric layers: one constant offset -(magic + 2^(BITS-1)).
    uint4 nz_const;
    {
        const u32 h = BITS == 4 ? (BF ? 0xC308u /* -136 */ : 0xE408u /* -1032 */) : 0xE480u /* -1152 f16 */;
        nz_const.x = nz_const.y = nz_const.z = nz_const.w = h | (h << 16);
    }
    const bool vec = !perm && ((reinterpret_cast<unsigned long long>(A) & 15) == 0) && (lda & 7) == 0;

    float acc[MF][8][4];
#pragma unroll
    for (int f = 0; f < MF; f++)
#pragma unroll
        for (int s = 0; s < 8; s++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[f][s][i] = 0.f;

    for (int c0 = t_begin; c0 < t_end; c0 += KC / 16) {
        const int c1 = min(c0 + KC / 16, t_end);
        const int kb = c0 * 16, klen = (c1 - c0) * 16;
        __syncthreads();  // the previous chunk is consumed
        if (vec) {
            for (int i = threadIdx.x; i < BM * (klen / 8); i += MMA_THREADS) {
                const int r = i / (klen / 8), k = kb + (i % (klen / 8)) * 8;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (m0 + r < M) {
                    const u16* src = A + (long)(m0 + r) * lda + k;
                    if (k + 8 <= K) {
                        v = *reinterpret_cast<const uint4*>(src);
                    } else {
                        u16 e[8];
#pragma unroll
                        for (int j = 0; j < 8; j++) e[j] = k + j < K ? src[j] : 0;
                        v = make_uint4(e[0] | (u32)e[1] << 16, e[2] | (u32)e[3] << 16, e[4] | (u32)e[5] << 16,
                                       e[6] | (u32)e[7] << 16);
                    }
                }
                *reinterpret_cast<uint4*>(&sA[r * LDS + (k - kb)]) = v;
            }
        } else {
            for (int i = threadIdx.x; i < BM * klen; i += MMA_THREADS) {
                const int r = i / klen, kk = i % klen, k = kb + kk;
                u16 v = 0;
                if (m0 + r < M && k < K) v = A[(long)(m0 + r) * lda + (perm ? perm[k] : k)];
                sA[r * LDS + kk] = v;
            }
        }
        __syncthreads();
        if (nt < NT) {
            // ldmatrix.x4 row addresses: lanes 0-7 rows 0-7 at k 0, 8-15 rows 8-15 at k 0, 16-31 the same at k 8.
            const u32 a_base = smem_u32(&sA[((lane % 8) + 8 * ((lane / 8) % 2)) * LDS + 8 * (lane / 16)]);
            for (int t = c0 + wk; t < c1; t += WK * P) {
                uint4 q[P][QV], sc[P], nz[P];
#pragma unroll
                for (int p = 0; p < P; p++) {
                    const int tile = t + p * WK;
                    if (tile < c1) {
                        const uint4* src = qw + ((long)nt * KT + tile) * (32 * QV) + lane;
#pragma unroll
                        for (int v = 0; v < QV; v++) q[p][v] = src[32 * v];
                        const long si = ((long)(tile / tiles_per_group) * NT + nt) * 8 + lane / 4;
                        sc[p] = scale[si];
                        nz[p] = nzero ? nzero[si] : nz_const;
                    }
                }
#pragma unroll
                for (int p = 0; p < P; p++) {
                    const int tile = t + p * WK;
                    if (tile < c1) {
                        u32 b[8][2];
                        dequant_tile<BITS, BF>(q[p], sc[p], nz[p], b);
#pragma unroll
                        for (int f = 0; f < MF; f++) {
                            u32 a[4];
                            ldmatrix_x4(a, a_base + 2 * (f * 16 * LDS + (tile - c0) * 16));
#pragma unroll
                            for (int s = 0; s < 8; s++) mma16816<BF>(acc[f][s], a, b[s][0], b[s][1]);
                        }
                    }
                }
            }
        }
    }

    // Epilogue. Accumulator i of subtile s in fragment f: row f·16 + g + 8·(i/2), column 8s + 2t + i%2.
    const int g = lane / 4, tq = lane % 4;
    if (WK == 1) {
        if (nt >= NT) return;
#pragma unroll
        for (int f = 0; f < MF; f++)
#pragma unroll
            for (int s = 0; s < 8; s++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int m = m0 + f * 16 + g + 8 * (i / 2), n = nt * 64 + 8 * s + 2 * tq + (i % 2);
                    if (m < M && n < N) {
                        if (gridDim.y == 1) C[(long)m * ldc + n] = store_act<BF>(acc[f][s][i] + (bias ? bias[n] : 0.f));
                        else partial[((long)blockIdx.y * M + m) * N + n] = acc[f][s][i];
                    }
                }
        return;
    }
    __syncthreads();  // sA is reused as the reduction buffer [WK][BM][BN] f32 (fits: see KC)
    float* red = reinterpret_cast<float*>(sA);
#pragma unroll
    for (int f = 0; f < MF; f++)
#pragma unroll
        for (int s = 0; s < 8; s++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                red[(wk * BM + f * 16 + g + 8 * (i / 2)) * BN + wn * 64 + 8 * s + 2 * tq + (i % 2)] = acc[f][s][i];
    __syncthreads();
    for (int idx = threadIdx.x; idx < BM * BN; idx += MMA_THREADS) {
        const int r = idx / BN, col = idx % BN;
        const int m = m0 + r, n = blockIdx.x * BN + col;
        if (m >= M || n >= N) continue;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < WK; w++) v += red[(w * BM + r) * BN + col];
        if (gridDim.y == 1) C[(long)m * ldc + n] = store_act<BF>(v + (bias ? bias[n] : 0.f));
        else partial[((long)blockIdx.y * M + m) * N + n] = v;
    }
}

// Stable extern "C" names for module lookup: gptq_mma_b{BITS}_m{MF}_{f16|bf16}.
#define MMA(BITS, MF, WK, BF, NAME)                                                                        \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) NAME(                                        \
        const u16* A, long lda, const uint4* qw, const uint4* scale, const uint4* nzero, const int* perm,   \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int tpg) {      \
        mma_gemm<BITS, MF, WK, BF>(A, lda, qw, scale, nzero, perm, partial, bias, C, ldc, M, N, K, tps, tpg); \
    }
MMA(4, 1, 4, false, gptq_mma_b4_m1_f16)
MMA(4, 2, 2, false, gptq_mma_b4_m2_f16)
MMA(4, 4, 1, false, gptq_mma_b4_m4_f16)
MMA(4, 1, 4, true, gptq_mma_b4_m1_bf16)
MMA(4, 2, 2, true, gptq_mma_b4_m2_bf16)
MMA(4, 4, 1, true, gptq_mma_b4_m4_bf16)
MMA(8, 1, 4, false, gptq_mma_b8_m1_f16)
MMA(8, 2, 2, false, gptq_mma_b8_m2_f16)
MMA(8, 4, 1, false, gptq_mma_b8_m4_f16)
MMA(8, 1, 4, true, gptq_mma_b8_m1_bf16)
MMA(8, 2, 2, true, gptq_mma_b8_m2_bf16)
MMA(8, 4, 1, true, gptq_mma_b8_m4_bf16)

// out [N, K] fp16 in the original input order from the tile layout; one thread per (tile, lane),
// f32 math as the CPU path: s · (code - zero). Scales and offsets are the f16 arrays.
template <int BITS>
__device__ void mma_dequant(const uint4* __restrict__ qw, const uint4* __restrict__ scale,
                            const uint4* __restrict__ nzero, const int* __restrict__ perm, u16* __restrict__ out,
                            int N, int K, int tiles_per_group) {
    constexpr int QV = BITS / 4;
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    const long tid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= (long)NT * KT * 32) return;
    const int lane = (int)(tid % 32), kt = (int)((tid / 32) % KT), nt = (int)(tid / 32 / KT);
    const int g = lane / 4, tq = lane % 4;
    const uint4* src = qw + ((long)nt * KT + kt) * (32 * QV) + lane;
    const long si = ((long)(kt / tiles_per_group) * NT + nt) * 8 + g;
    const uint4 sv = scale[si];
    const u32 magic_zero = BITS == 4 ? 0xE408E408u : 0xE480E480u;
    const uint4 zv = nzero ? nzero[si] : make_uint4(magic_zero, magic_zero, magic_zero, magic_zero);
    const u32 sw[4] = {sv.x, sv.y, sv.z, sv.w}, zw[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
    for (int v = 0; v < QV; v++) {
        const uint4 qv = src[32 * v];
        const u32 w[4] = {qv.x, qv.y, qv.z, qv.w};
#pragma unroll
        for (int c4 = 0; c4 < 4; c4++) {
            const int c = 4 * v + c4;
#pragma unroll
            for (int e = 0; e < 32 / BITS; e++) {
                // 4 bit: nibble e -> subtile 2c + (e&3)/2, register (e&1), half e/4.
                // 8 bit: byte e -> subtile c, register e&1, half e/2.
                const int s = BITS == 4 ? 2 * c + ((e & 3) >> 1) : c;
                const int r = e & 1, hi = BITS == 4 ? e >> 2 : e >> 1;
                const int k = kt * 16 + 2 * tq + 8 * r + hi, n = nt * 64 + 8 * s + g;
                if (k >= K || n >= N) continue;
                const u32 code = (w[c4] >> (BITS * e)) & ((1u << BITS) - 1u);
                const float sc = h2f((u16)(sw[s / 2] >> (16 * (s % 2))));
                const float zero = -h2f((u16)(zw[s / 2] >> (16 * (s % 2)))) - 1024.f;
                out[(long)n * K + (perm ? perm[k] : k)] = f2h(sc * ((float)code - zero));
            }
        }
    }
}
extern "C" __global__ void gptq_mma_dequant_b4(const uint4* q, const uint4* s, const uint4* z, const int* p, u16* o, int N, int K, int tpg) {
    mma_dequant<4>(q, s, z, p, o, N, K, tpg);
}
extern "C" __global__ void gptq_mma_dequant_b8(const uint4* q, const uint4* s, const uint4* z, const int* p, u16* o, int N, int K, int tpg) {
    mma_dequant<8>(q, s, z, p, o, N, K, tpg);
}
