// GPTQ dequant-GEMM on tensor cores for any M, 4 and 8 bit, fp16 or bf16 activations:
// C[M, N] = A[M, K] · W[K, N] (+ bias), mma.sync m16n8k16 with f32 accumulators. Compiled at run time
// by NVRTC after kernels/common.cuh.
//
// Weight layout (built once per layer by src/cuda/layer.rs): K in the layer's permuted order (every
// g_idx group a contiguous run, as vLLM's Marlin path does), padded to tiles of 16 inputs × 64
// outputs (pad codes 0, pad scales 0). Tile (nt, kt) is 512 bytes at 4 bit (1 KB at 8 bit) stored
// as [nt/4][kt][nt%4][v < BITS/4][lane < 32][4 words] (column tiles padded to a multiple of 4), so
// each lane's 16-byte load v is one slice of a 512-byte coalesced warp load, and four warps that
// stream four neighbouring column tiles along K together read one contiguous stream. (Each warp
// streaming its own distant region measured 25% below the bandwidth of a contiguous block stream,
// 8 bit included: docs/perf.md, version 9.)
// Each lane's words hold exactly the codes of its mma B fragments (lane = 4·g + t; fragment
// registers b0 = (k 2t, 2t+1), b1 = (k 2t+8, 2t+9), both at column g of an 8-column subtile s):
//   4 bit, word c < 4: subtiles 2c and 2c+1; nibble j and j+4 are the low and high halves of pair j:
//          pair 0 = b0 of 2c, pair 1 = b0 of 2c+1, pair 2 = b1 of 2c, pair 3 = b1 of 2c+1 (so the
//          pairs read in place from bits 4-7 of each byte, pairs 1 and 3, are all of subtile 2c+1).
//   8 bit, word c < 8: subtile c; bytes (0, 2) = b0, bytes (1, 3) = b1.
// So one LOP3 turns a masked word into a register of two codes (the magic-number trick of
// common.cuh), with no shuffles and no shared memory for B.
// Three kernels read this layout. Small batches (M <= 16, mma_gemm_small): the B fragments are the
// raw codes plus a magic number, and scales and zeros are applied once per group to the f32 sums
// (section below). Up to 8 rows on sm_90 (bulk_gemm_small): the same codes, streamed into shared
// memory by bulk copies and fed to mma as its A operand (section below). Large batches (mma_gemm):
// each pair is offset and scaled in the activation type before its mma, which keeps one set of
// accumulators for 64 rows.
//   acc_scale [G][nt][t < 4][s < 8][2]  f16 (mma_gemm_small): the scales of columns 64·nt + 8s + 2t + h,
//                                the accumulator columns of lane t: two 16-byte loads per group
//   acc_zero  same layout, the zero points as f16 (null for symmetric layers)
//   scale [G][nt][g < 8][s < 8]  fp16 or bf16 (large batches; the f16 one also bulk_gemm_small): the
//                                scale of column 64·nt + 8s + g,
//                                one 16-byte load per lane; groups are uniform runs of 2^shift tiles
//   nzero same layout, the pair offset -(magic + zero) (null for symmetric layers: a constant)
//   perm  i32 [K] or null        column of A feeding permuted input k: the library gathers act-order
//                                A into the workspace first (gptq_gather_a) and passes null, except
//                                to the small-batch kernel for <= 8 rows and <= 256 inputs per block,
//                                which gathers while staging (no extra launch)
//   partial f32 [S, M, N]        split-K workspace; gptq_reduce_* adds the splits and the bias
//
// Tiles: a block of 4 warps owns BM = 16·MF rows of A and 64·WN columns; its WK = 4/WN warps split
// the block's K tiles round-robin and add their sums through shared memory at the end. MF = 1,
// WK = 1 for M <= 16 (memory-bound: each warp streams one column tile, A staged once for four);
// MF = 2, WK = 2 for M <= 32; MF = 4, WK = 1 above (each warp 64×64 of C, A reused by 4 warps).
// A is staged per chunk of K in shared memory (act-order A arrives gathered by gptq_gather_a; only
// the block's real rows are staged, rows past M read a zero row), read with ldmatrix; rows padded by
// 8 halves so the 8 rows of an ldmatrix hit distinct banks. The chunk is as long as the rows allow
// (`chunk`, from the host: 16384 inputs at M = 1, 256 at 64 rows), so small M stages A once. Each
// warp loads its tiles in batches straight into registers (small batches: 8 tiles at 4 bit, 4 at
// 8 bit, 4 KB either way; large: 4, 2 at MF = 4), a chunk's first batch before A is staged. (A cp.async ring in shared memory, 8 tiles deep, and a ring of two register
// half-batches were both measured slower: docs/perf.md, versions 3 and 14.) blockIdx.y splits
// K so that small M still puts enough loads in flight on every SM; with one split C is written
// directly.

#define MMA_THREADS 128

// Column tile nt's words for `lane`: tile kt is at the result + kt·TILE_STRIDE(QV) (layout above).
__device__ __forceinline__ const uint4* column_words(const uint4* qw, int nt, int KT, int QV, int lane) {
    return qw + ((long)(nt >> 2) * KT * 4 + (nt & 3)) * (32 * QV) + lane;
}
#define TILE_STRIDE(QV) (4 * 32 * (QV))

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
__device__ __forceinline__ void ldmatrix_x2(u32 (&a)[2], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(a[0]), "=r"(a[1]) : "r"(addr) : "memory");
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

// (q & mask) | 0x6400 (fp16 1024) in one LOP3.
__device__ __forceinline__ u32 and_or(u32 q, u32 mask) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(q), "r"(mask), "r"(0x64006400u));
    return r;
}

// The 16 B-fragment registers of one tile for this lane (dequant_tile): b[s][r], s = 8-column
// subtile, r = 0/1. w = (pair - (magic + zero)) exactly, then times the scale with one rounding.
// 8 bit in bf16: codes up to 255 do not fit bf16's 8-bit significand above the magic, so the exact
// integer difference is formed in f16 and converted (exactly: |code - zero| <= 256).
// Per-group constants of dequant_pairs: each subtile's scale and zero offset as a duplicated pair
// (fp16 4 bit: odd subtiles hold 1024 + 16·code, so their offset is -(64 + zero)). Kernels that keep a
// group over several tiles compute them once per group.
template <int BITS, bool BF, bool SYM>
__device__ __forceinline__ void group_pairs(const uint4& sc, const uint4& nz, u32 (&scp)[8], u32 (&nzp)[8]) {
    const u32 one = 0x3C003C00u, delta = 0x63806380u /* 960 = 1024 - 64 */;
#pragma unroll
    for (int s = 0; s < 8; s++) {
        scp[s] = dup_half(sc, s);
        const u32 n = dup_half(nz, s);
        nzp[s] = BITS == 4 && !BF && (s & 1) ? (SYM ? 0xD480D480u /* -72 */ : pfma<false>(n, one, delta)) : n;
    }
}

template <int BITS, bool BF>
__device__ __forceinline__ void dequant_pairs(const uint4 (&q)[BITS / 4], const u32 (&scp)[8], const u32 (&nzp)[8],
                                              u32 (&b)[8][2]) {
    const u32 neg_zero = 0x80008000u;
    if constexpr (BITS == 4 && !BF) {
        // fp16: pairs (nibbles 0,4) and (2,6) come out of one LOP3 as 1024 + code; pairs (1,5) and
        // (3,7) as 1024 + 16·code (bits 4-7 are still mantissa), taken back by an exact FMA with 1/16
        // and offset -(64 + zero): one shift per word instead of three.
        const u32 one = 0x3C003C00u, sixteenth = 0x2C002C00u;
        const u32 w[4] = {q[0].x, q[0].y, q[0].z, q[0].w};
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const u32 w8 = w[c] >> 8;
            const u32 p[4] = {and_or(w[c], 0x000F000Fu), and_or(w[c], 0x00F000F0u), and_or(w8, 0x000F000Fu),
                              and_or(w8, 0x00F000F0u)};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int s = 2 * c + (j & 1);
                const u32 d = pfma<false>(p[j], (j & 1) ? sixteenth : one, nzp[s]);
                b[s][j >> 1] = pfma<false>(d, scp[s], neg_zero);
            }
        }
    } else if constexpr (BITS == 4) {
        const u32 one = BF ? 0x3F803F80u : 0x3C003C00u;
        const u32 w[4] = {q[0].x, q[0].y, q[0].z, q[0].w};
#pragma unroll
        for (int c = 0; c < 4; c++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int s = 2 * c + (j & 1);
                b[s][j >> 1] = pfma<BF>(pfma<BF>(code_pair<BF>(w[c] >> (4 * j)), one, nzp[s]), scp[s], neg_zero);
            }
    } else {
        const u32 one_h = 0x3C003C00u;
        const u32 w[8] = {q[0].x, q[0].y, q[0].z, q[0].w, q[1].x, q[1].y, q[1].z, q[1].w};
#pragma unroll
        for (int c = 0; c < 8; c++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                u32 d = pfma<false>(code_pair8(w[c] >> (8 * j)), one_h, nzp[c]);
                if constexpr (BF) d = h2_to_b2(d);
                b[c][j] = pfma<BF>(d, scp[c], neg_zero);
            }
    }
}

template <int BITS, bool BF, bool SYM>
__device__ __forceinline__ void dequant_tile(const uint4 (&q)[BITS / 4], const uint4& sc, const uint4& nz,
                                             u32 (&b)[8][2]) {
    u32 scp[8], nzp[8];
    group_pairs<BITS, BF, SYM>(sc, nz, scp, nzp);
    dequant_pairs<BITS, BF>(q, scp, nzp, b);
}

// Shared memory for A: up to 64 rows × (256 + 8) halves, then one 16-byte zero row that ldmatrix
// reads for rows past M (so only real rows are staged). Small M stages longer chunks of K.
#define SMEM_HALVES (64 * 264)

// Loads tile `tile`'s weight words, scales (and zero offsets) for this lane. Groups are uniform runs
// of 2^group_shift tiles (every supported group size is a power of two ≥ 16; one group: shift 31).
template <int QV, bool SYM>
__device__ __forceinline__ void load_tile(const uint4* __restrict__ qcol, const uint4* __restrict__ scol,
                                          const uint4* __restrict__ zcol, int tile, int group_shift, int NT,
                                          uint4 (&q)[QV], uint4& sc, uint4& nz) {
    const uint4* src = qcol + (long)tile * TILE_STRIDE(QV);
#pragma unroll
    for (int v = 0; v < QV; v++) q[v] = src[32 * v];
    const long si = (long)(tile >> group_shift) * NT * 8;
    sc = scol[si];
    if (!SYM) nz = zcol[si];
}

// Stages rows [m0, m0 + rows) × inputs [kb, kb + klen) of A (zero past K) into sA with row stride
// lds. `vec`: A is 16-byte aligned with lda a multiple of 8 and no perm, so 16-byte loads.
__device__ __forceinline__ void stage_a(const u16* __restrict__ A, long lda, const int* __restrict__ perm, bool vec,
                                        u16* sA, int lds, int m0, int rows, int kb, int klen, int K) {
    if (vec) {
        // Flat over (row, 16-byte piece) so that many rows do not serialize on load latency.
        const int per_row = klen / 8;
#pragma unroll 4
        for (int i = threadIdx.x; i < rows * per_row; i += MMA_THREADS) {
            const int r = i / per_row, v = i - r * per_row;
            const int k = kb + v * 8;
            const u16* src = A + (long)(m0 + r) * lda + k;
            uint4 val;
            if (k + 8 <= K) {
                val = *reinterpret_cast<const uint4*>(src);
            } else {
                u16 e[8];
#pragma unroll
                for (int j = 0; j < 8; j++) e[j] = k + j < K ? src[j] : 0;
                val = make_uint4(e[0] | (u32)e[1] << 16, e[2] | (u32)e[3] << 16, e[4] | (u32)e[5] << 16,
                                 e[6] | (u32)e[7] << 16);
            }
            *reinterpret_cast<uint4*>(&sA[r * lds + v * 8]) = val;
        }
    } else {
        // Gather through perm or unaligned A (the library gathers act-order activations once with
        // gptq_gather_a, so this path is for callers' unaligned A): G column indices per thread at
        // once, then G independent loads per row. G is small: this path's registers count for the
        // whole kernel.
        constexpr int G = 2;
        const u16* src = A + (long)m0 * lda;
        for (int kk0 = threadIdx.x; kk0 < klen; kk0 += G * MMA_THREADS) {
            int col[G];
#pragma unroll
            for (int j = 0; j < G; j++) {
                const int kk = kk0 + j * MMA_THREADS, k = kb + kk;
                col[j] = kk < klen && k < K ? (perm ? perm[k] : k) : -1;
            }
            for (int r = 0; r < rows; r++) {
                u16 v[G];
#pragma unroll
                for (int j = 0; j < G; j++) v[j] = col[j] >= 0 ? src[(long)r * lda + col[j]] : (u16)0;
#pragma unroll
                for (int j = 0; j < G; j++)
                    if (kk0 + j * MMA_THREADS < klen) sA[r * lds + kk0 + j * MMA_THREADS] = v[j];
            }
        }
    }
}

// Writes a block's accumulators: straight to C (+ bias) with one split of K, else the split's partial
// sums; warps that split the block's K (WK > 1) first add theirs through shared memory (sA reused).
template <int MF, int WK, bool BF>
__device__ __forceinline__ void store_c(float (&acc)[MF][8][4], u16* sA, float* __restrict__ partial,
                                        const float* __restrict__ bias, u16* __restrict__ C, long ldc, int M,
                                        int N, int NT, int nt, int m0, int wk, int wn) {
    constexpr int BM = 16 * MF, BN = 64 * (4 / WK);
    const int lane = threadIdx.x % 32;
    // Accumulator i of subtile s in fragment f: row f·16 + g + 8·(i/2), column 8s + 2t + i%2.
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
    __syncthreads();  // sA is reused as the reduction buffer [WK][BM][BN] f32 (at most 32 KB: fits)
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

template <int BITS, int MF, int WK, bool BF, bool SYM>
__device__ void mma_gemm(const u16* __restrict__ A, long lda, const uint4* __restrict__ qw,
                         const uint4* __restrict__ scale, const uint4* __restrict__ nzero,
                         const int* __restrict__ perm, float* __restrict__ partial,
                         const float* __restrict__ bias, u16* __restrict__ C, long ldc, int M, int N, int K,
                         int tiles_per_split, int group_shift, int chunk) {
    constexpr int WN = 4 / WK;
    constexpr int BM = 16 * MF;
    constexpr int BN = 64 * WN;
    constexpr int QV = BITS / 4;
    constexpr int P = MF == 4 ? 2 : 4;  // tiles per batch of loads in flight (registers allow)
    extern __shared__ __align__(16) unsigned char smem[];
    u16* sA = reinterpret_cast<u16*>(smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wk = warp % WK, wn = warp / WK;
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    const int nt = blockIdx.x * WN + wn;
    const int m0 = blockIdx.z * BM;
    const int rows = min(BM, M - m0);  // real rows of A in this block
    const int lds = chunk + 8;         // row stride: (chunk + 8)·2 bytes = 16 mod 128, conflict-free ldmatrix
    const int t_begin = blockIdx.y * tiles_per_split;
    const int t_end = min(t_begin + tiles_per_split, KT);
    const bool active = nt < NT;
    // This warp's column: tile t's words at qcol + t·TILE_STRIDE, its scales at scol + group·NT·8.
    const uint4* qcol = column_words(qw, nt, KT, QV, lane);
    const uint4* scol = scale + nt * 8 + lane / 4;
    const uint4* zcol = SYM ? scol : nzero + nt * 8 + lane / 4;
    uint4 nz_sym;
    {
        const u32 h = BITS == 4 ? (BF ? 0xC308u /* -136 */ : 0xE408u /* -1032 */) : 0xE480u /* -1152 f16 */;
        nz_sym.x = nz_sym.y = nz_sym.z = nz_sym.w = h | (h << 16);
    }
    const bool vec = !perm && ((reinterpret_cast<unsigned long long>(A) & 15) == 0) && (lda & 7) == 0;
    if (threadIdx.x == 0) *reinterpret_cast<uint4*>(&sA[SMEM_HALVES]) = make_uint4(0, 0, 0, 0);
    // ldmatrix.x4 row addresses: lanes 0-7 rows 0-7 at k 0, 8-15 rows 8-15 at k 0, 16-31 the same at k 8;
    // rows past M read the zero row.
    u32 a_row[MF];
    bool a_real[MF];
    const u32 zero_row = smem_u32(&sA[SMEM_HALVES]);
#pragma unroll
    for (int f = 0; f < MF; f++) {
        const int r = f * 16 + (lane % 8) + 8 * ((lane / 8) % 2);
        a_real[f] = r < rows;
        a_row[f] = smem_u32(&sA[r * lds + 8 * (lane / 16)]);
    }

    float acc[MF][8][4];
#pragma unroll
    for (int f = 0; f < MF; f++)
#pragma unroll
        for (int s = 0; s < 8; s++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[f][s][i] = 0.f;
    pdl_launch_dependents();

    for (int c0 = t_begin; c0 < t_end; c0 += chunk / 16) {
        const int c1 = min(c0 + chunk / 16, t_end);
        const int kb = c0 * 16, klen = (c1 - c0) * 16;
        // The first batch of this warp's tiles is requested before A is staged, so its latency overlaps
        // the staging.
        uint4 q[P][QV], sc[P], nz[P];
        const int first = c0 + wk;
        if (active) {
#pragma unroll
            for (int p = 0; p < P; p++)
                if (first + p * WK < c1) load_tile<QV, SYM>(qcol, scol, zcol, first + p * WK, group_shift, NT, q[p], sc[p], nz[p]);
        }
        __syncthreads();  // the previous chunk is consumed
        pdl_wait();       // A is written by the previous kernel (first batch of weights already in flight)
        stage_a(A, lda, perm, vec, sA, lds, m0, rows, kb, klen, K);
        __syncthreads();
        if (active) {
#pragma unroll 1
            for (int t = first; t < c1; t += WK * P) {
                if (t != first) {
#pragma unroll
                    for (int p = 0; p < P; p++)
                        if (t + p * WK < c1) load_tile<QV, SYM>(qcol, scol, zcol, t + p * WK, group_shift, NT, q[p], sc[p], nz[p]);
                }
#pragma unroll
                for (int p = 0; p < P; p++) {
                    const int tile = t + p * WK;
                    if (tile < c1) {
                        u32 b[8][2];
                        dequant_tile<BITS, BF, SYM>(q[p], sc[p], SYM ? nz_sym : nz[p], b);
                        const u32 off = 2 * (tile - c0) * 16;
#pragma unroll
                        for (int f = 0; f < MF; f++) {
                            u32 a[4];
                            ldmatrix_x4(a, a_real[f] ? a_row[f] + off : zero_row);
#pragma unroll
                            for (int s = 0; s < 8; s++) mma16816<BF>(acc[f][s], a, b[s][0], b[s][1]);
                        }
                    }
                }
            }
        }
    }

    pdl_wait();  // (already passed unless this block had no K tiles) nothing is written before it
    store_c<MF, WK, BF>(acc, sA, partial, bias, C, ldc, M, N, NT, nt, m0, wk, wn);
}

// The most rows the small-batch kernels gather themselves (src/cuda/layer.rs, gathers_in_kernel).
#define GATHER_ROWS 8
// The long form of that gather, in the bulk-copy kernel only: up to GATHER_LONG_ROWS rows over at
// most GATHER_LONG_COLS · 128 inputs per block (the mid-sized layers' blocks at small M, which would
// otherwise launch a gather first: docs/perf.md versions 48 and 52; the library says how many rows).
#define GATHER_LONG_ROWS 2
#define GATHER_LONG_COLS 6
// Act-order in the small-batch kernels (<= 8 rows over <= 256 inputs per block, or the long form:
// src/cuda/layer.rs, gathers_in_kernel): one round of independent loads instead of a gather launch.
// First the NC permuted columns this thread gathers (the layer's own data, read before pdl_wait;
// -1 past the block's inputs or K), ...
template <int NC, int N>
__device__ __forceinline__ void gather_columns(const int* __restrict__ perm, int kb, int klen, int K, int (&col)[N]) {
    static_assert(NC <= N, "the first NC of the N columns");
#pragma unroll
    for (int j = 0; j < NC; j++) {
        const int kk = threadIdx.x + j * MMA_THREADS;
        col[j] = kk < klen && kb + kk < K ? ld_before_wait(perm + kb + kk) : -1;
    }
}
// ... then those columns of rows m0.. m0 + rows - 1 (rows <= R) of A into dst (row stride lds halves;
// zero past K), every load issued before the first store (interleaved, the compiler kept one load in
// flight at a time: docs/perf.md version 40). gather_rows below picks R: the 8-row form alone cost
// M = 1 0.2 µs in predicated-off loads (version 42).
template <int R, int NC, int N>
__device__ __forceinline__ void gather_rows_upto(const u16* __restrict__ A, long lda, const int (&col)[N], int m0,
                                                 int rows, int klen, u16* dst, int lds) {
    static_assert(NC <= N, "the first NC of the N columns");
    u16 v[NC][R];
#pragma unroll
    for (int j = 0; j < NC; j++)
#pragma unroll
        for (int r = 0; r < R; r++) v[j][r] = r < rows && col[j] >= 0 ? A[(long)(m0 + r) * lda + col[j]] : (u16)0;
#pragma unroll
    for (int j = 0; j < NC; j++) {
        const int kk = threadIdx.x + j * MMA_THREADS;
        if (kk >= klen) continue;
#pragma unroll
        for (int r = 0; r < R; r++)
            if (r < rows) dst[r * lds + kk] = v[j][r];
    }
}
// The short form from the first two of N columns.
template <int N>
__device__ __forceinline__ void gather_rows(const u16* __restrict__ A, long lda, const int (&col)[N], int m0,
                                            int rows, int klen, u16* dst, int lds) {
    if (rows <= 4) gather_rows_upto<4, 2>(A, lda, col, m0, rows, klen, dst, lds);
    else gather_rows_upto<GATHER_ROWS, 2>(A, lda, col, m0, rows, klen, dst, lds);
}

// ---- Small batches (M <= 16): integer B fragments, scales and zeros applied per group in f32 ----
//
// The B fragments hold the codes plus a magic number, exact in the activation type; neither the
// zero nor the scale is touched per code. Per group g and column n, with S = Σ_k A[m, k] over the
// group (one extra mma against a fragment of ones):
//     Σ_k A·s·(q − z) = s · (Σ_k A·(magic + mult·q) − (magic + mult·z) · S) / mult
// so each warp keeps a group's raw sums and folds them into the total once per group. Per tile that
// leaves one LOP3 per register (plus a shift per word) and 9 mma, against ≈ 3.5 instructions per
// register when each pair was offset and scaled in f16. (Fewer instructions alone did not make it
// faster: the speed came with one wave of blocks and 4 KB of loads in flight per warp; versions
// 9-11 in docs/perf.md.) The cancellation against magic·S costs about 10 of f32's 24 bits on the
// group's raw sum, far inside the f16 output's precision.
//   4 bit fp16: subtile 2c is 1024 + q, subtile 2c+1 is 1024 + 16q (its nibbles left in place,
//               so mult 16: one shift per word, four LOP3).
//   4 bit bf16: 128 + q (bf16 has no room for 16q above its magic: one shift per register).
//   8 bit fp16: 1024 + q. 8 bit bf16: q (formed in f16 and converted; exact up to 256), magic 0.
// Scales and zeros ([G][nt][t < 4][s < 8][2] f16, the columns 8s + 2t + {0,1} of this lane's
// accumulators: two 16-byte loads per group) are requested when a warp enters a group and used when
// it leaves, so their latency hides behind the group's tiles.

// SIGNED (the symmetric warpgroup kernel): the codes minus their zero 2^(BITS-1), formed by one
// exact add per register (fp16 4 bit: subtile 2c+1 as 16·(q − 8)), so a group needs no row sums and
// a tile one wgmma less (version 31).
template <int BITS, bool BF, bool SIGNED = false>
__device__ __forceinline__ void int_tile(const uint4 (&q)[BITS / 4], u32 (&b)[8][2]) {
    // pfma(x, 1, -c): x − c, exact (small integers); bf16 1 = 0x3F80, f16 1 = 0x3C00.
    constexpr u32 one = BF ? 0x3F803F80u : 0x3C003C00u;
    if constexpr (BITS == 4) {
        const u32 w[4] = {q[0].x, q[0].y, q[0].z, q[0].w};
#pragma unroll
        for (int c = 0; c < 4; c++) {
            if constexpr (!BF) {
                const u32 w8 = w[c] >> 8;
                b[2 * c][0] = and_or(w[c], 0x000F000Fu);
                b[2 * c + 1][0] = and_or(w[c], 0x00F000F0u);
                b[2 * c][1] = and_or(w8, 0x000F000Fu);
                b[2 * c + 1][1] = and_or(w8, 0x00F000F0u);
                if constexpr (SIGNED) {
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        b[2 * c][r] = pfma<false>(b[2 * c][r], one, 0xE408E408u /* -1032 */);
                        b[2 * c + 1][r] = pfma<false>(b[2 * c + 1][r], one, 0xE480E480u /* -1152 */);
                    }
                }
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const u32 v = code_pair<true>(w[c] >> (4 * j));
                    b[2 * c + (j & 1)][j >> 1] = SIGNED ? pfma<true>(v, one, 0xC308C308u /* -136 */) : v;
                }
            }
        }
    } else {
        const u32 w[8] = {q[0].x, q[0].y, q[0].z, q[0].w, q[1].x, q[1].y, q[1].z, q[1].w};
        constexpr u32 off = SIGNED ? 0xE480E480u /* -1152 */ : 0xE400E400u /* -1024 */;
#pragma unroll
        for (int c = 0; c < 8; c++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const u32 d = code_pair8(w[c] >> (8 * j));
                if constexpr (BF) b[c][j] = h2_to_b2(pfma<false>(d, 0x3C003C00u, off));
                else b[c][j] = SIGNED ? pfma<false>(d, 0x3C003C00u, off) : d;
            }
    }
}

// d = a·b (C = 0): the first tile of a group starts its sums without zeroing registers.
template <bool BF> __device__ __forceinline__ void mma16816_first(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if (BF)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f), "f"(0.f), "f"(0.f), "f"(0.f));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f), "f"(0.f), "f"(0.f), "f"(0.f));
}

// tot += the group's sums with its zeros and scales applied (formula above). HI: rows 8-15 are real.
template <int BITS, bool BF, bool SYM, bool HI>
__device__ __forceinline__ void fold_group(const float (&acc)[8][4], const float (&sum)[4], float (&tot)[8][4],
                                           const uint4 (&sc)[2], const uint4 (&zv)[2]) {
    const u32 sw[8] = {sc[0].x, sc[0].y, sc[0].z, sc[0].w, sc[1].x, sc[1].y, sc[1].z, sc[1].w};
    const u32 zw[8] = {zv[0].x, zv[0].y, zv[0].z, zv[0].w, zv[1].x, zv[1].y, zv[1].z, zv[1].w};
    constexpr float magic = BITS == 4 ? (BF ? 128.f : 1024.f) : (BF ? 0.f : 1024.f);
#pragma unroll
    for (int s = 0; s < 8; s++) {
        const float mult = BITS == 4 && !BF && (s & 1) ? 16.f : 1.f;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float z = SYM ? (float)(1 << (BITS - 1)) : h2f((u16)(zw[s] >> (16 * h)));
            const float off = -(magic + mult * z);
            const float scl = h2f((u16)(sw[s] >> (16 * h))) * (1.f / mult);
            tot[s][h] = fmaf(fmaf(sum[0], off, acc[s][h]), scl, tot[s][h]);
            if (HI) tot[s][h + 2] = fmaf(fmaf(sum[2], off, acc[s][h + 2]), scl, tot[s][h + 2]);
        }
    }
}

// One 16-row fragment; each of the 4 warps streams one column tile over the block's whole share of K
// (so a group's tiles stay with one warp, and the block reads 4 interleaved columns as one
// contiguous stream).
template <int BITS, bool BF, bool SYM>
__device__ void mma_gemm_small(const u16* __restrict__ A, long lda, const uint4* __restrict__ qw,
                               const uint4* __restrict__ scale, const uint4* __restrict__ zero,
                               const int* __restrict__ perm, float* __restrict__ partial,
                               const float* __restrict__ bias, u16* __restrict__ C, long ldc, int M, int N, int K,
                               int tiles_per_split, int group_shift, int chunk) {
    // Tiles per batch of loads: 4 KB per warp in flight either way (4 bit at 4 tiles per batch
    // streamed at 67% of the read floor, 8 bit at 88%: bytes in flight, not instructions, were short).
    constexpr int QV = BITS / 4, P = BITS == 4 ? 8 : 4;
    extern __shared__ __align__(16) unsigned char smem[];
    u16* sA = reinterpret_cast<u16*>(smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    const int nt = blockIdx.x * 4 + warp;
    const int m0 = blockIdx.z * 16;
    const int rows = min(16, M - m0);
    const int lds = chunk + 8;
    const int t_begin = blockIdx.y * tiles_per_split;
    const int t_end = min(t_begin + tiles_per_split, KT);
    const bool active = nt < NT;
    const uint4* qcol = column_words(qw, nt, KT, QV, lane);
    const uint4* scol = scale + nt * 8 + (lane % 4) * 2;
    const uint4* zcol = SYM ? scol : zero + nt * 8 + (lane % 4) * 2;
    const bool vec = !perm && ((reinterpret_cast<unsigned long long>(A) & 15) == 0) && (lda & 7) == 0;
    if (threadIdx.x == 0) *reinterpret_cast<uint4*>(&sA[SMEM_HALVES]) = make_uint4(0, 0, 0, 0);
    const int r = (lane % 8) + 8 * ((lane / 8) % 2);
    const bool a_real = r < rows;
    const u32 a_row = smem_u32(&sA[r * lds + 8 * (lane / 16)]), zero_row = smem_u32(&sA[SMEM_HALVES]);
    const u32 ones = BF ? 0x3F803F80u : 0x3C003C00u;

    float tot[1][8][4], acc[8][4], sum[4];
#pragma unroll
    for (int s = 0; s < 8; s++)
#pragma unroll
        for (int i = 0; i < 4; i++) tot[0][s][i] = 0.f;
    uint4 sc[2], zv[2];
    zv[0] = zv[1] = make_uint4(0, 0, 0, 0);
    int cur = -1;  // the group whose sums acc and sum hold
    bool fresh = true;
    pdl_launch_dependents();

    for (int c0 = t_begin; c0 < t_end; c0 += chunk / 16) {
        const int c1 = min(c0 + chunk / 16, t_end);
        uint4 q[P][QV];
        if (active) {
#pragma unroll
            for (int p = 0; p < P; p++)
                if (c0 + p < c1)
#pragma unroll
                    for (int v = 0; v < QV; v++) q[p][v] = qcol[(long)(c0 + p) * TILE_STRIDE(QV) + 32 * v];
        }
        const int kb = c0 * 16, klen = (c1 - c0) * 16;
        int col[2];  // act-order: the permuted columns
        if (perm) gather_columns<2>(perm, kb, klen, K, col);
        __syncthreads();  // the previous chunk is consumed
        pdl_wait();       // A is written by the previous kernel (first batch of weights already in flight)
        if (perm) {
            gather_rows(A, lda, col, m0, rows, klen, sA, lds);
        } else {
            stage_a(A, lda, nullptr, vec, sA, lds, m0, rows, kb, klen, K);
        }
        __syncthreads();
        if (!active) continue;
#pragma unroll 1
        for (int t = c0; t < c1; t += P) {
            if (t != c0) {
#pragma unroll
                for (int p = 0; p < P; p++)
                    if (t + p < c1)
#pragma unroll
                        for (int v = 0; v < QV; v++) q[p][v] = qcol[(long)(t + p) * TILE_STRIDE(QV) + 32 * v];
            }
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int tile = t + p;
                if (tile >= c1) break;
                const int G = tile >> group_shift;
                if (G != cur) {
                    if (cur >= 0) {
                        if (rows > 8) fold_group<BITS, BF, SYM, true>(acc, sum, tot[0], sc, zv);
                        else fold_group<BITS, BF, SYM, false>(acc, sum, tot[0], sc, zv);
                    }
                    cur = G;
                    const long gi = (long)G * NT * 8;
                    sc[0] = scol[gi];
                    sc[1] = scol[gi + 1];
                    if (!SYM) {
                        zv[0] = zcol[gi];
                        zv[1] = zcol[gi + 1];
                    }
                    fresh = true;
                }
                u32 b[8][2];
                int_tile<BITS, BF>(q[p], b);
                u32 a[4];
                ldmatrix_x4(a, a_real ? a_row + 2 * (tile - c0) * 16 : zero_row);
                if (fresh) {
#pragma unroll
                    for (int s = 0; s < 8; s++) mma16816_first<BF>(acc[s], a, b[s][0], b[s][1]);
                    mma16816_first<BF>(sum, a, ones, ones);
                    fresh = false;
                } else {
#pragma unroll
                    for (int s = 0; s < 8; s++) mma16816<BF>(acc[s], a, b[s][0], b[s][1]);
                    mma16816<BF>(sum, a, ones, ones);
                }
            }
        }
    }
    if (cur >= 0) {
        if (rows > 8) fold_group<BITS, BF, SYM, true>(acc, sum, tot[0], sc, zv);
        else fold_group<BITS, BF, SYM, false>(acc, sum, tot[0], sc, zv);
    }
    pdl_wait();  // (already passed unless this block had no K tiles) nothing is written before it
    store_c<1, 1, BF>(tot, sA, partial, bias, C, ldc, M, N, NT, nt, m0, 0, warp);
}

// ---- Up to 8 rows on sm_90: weights and A streamed into shared memory by bulk copies, roles swapped ----
//
// The arithmetic of mma_gemm_small (integer codes, zeros and scales folded per group in f32) fed by
// the copy engine instead of register loads, with the mma roles swapped:
// - A fifth warp (the producer) issues, per stage, one cp.async.bulk of TPS tiles of the block's
//   four column tiles (contiguous in the interleaved layout: 8 KB), one per group those tiles touch
//   of the quad's scales (and zeros), 512 bytes each, and one per row of A over the stage's inputs,
//   into a ring of `stages` stages guarded by mbarriers (full: bytes landed; empty: the 128
//   consumer threads have read the stage, release_stage). Bytes in flight cost no registers, a group's scales arrive
//   with its tiles instead of as a load the consumer waits for, and A needs no staging step in
//   which the weight stream stalls. Weights and scales of the first ring-full go out before
//   pdl_wait (the layer's own data), A after it. Act-order A is gathered by the library first,
//   except for <= 8 rows over <= 256 inputs per block (one row over <= 768), which the consumers gather themselves into
//   their own rows of shared memory before the first stage (one round of loads; a gather launch
//   would cost more on such small layers).
// - C^T = W^T · A^T, the weight tile as mma's 16×16 A operand and A^T as its
//   k16×n8 B operand, so one mma covers 16 output columns for all rows and a tile takes 4 mma (+1
//   for the row sums) instead of 9. With 9 the kernel was bound by mma issue, not memory (one block
//   per SM reached 45% of the read floor at any ring depth; the 8-bit kernel, half the mma per
//   byte, streamed at 89%). The weight registers keep their layout: the A fragment of columns
//   16j..16j+15 is {b[2j][0], b[2j+1][0], b[2j][1], b[2j+1][1]} of the B layout above; A^T's
//   fragment is ldmatrix.x2 of rows 0-7. Each lane then holds columns 16j + g and 16j + g + 8 of
//   rows 2t and 2t+1, so scales and zeros come in the large-batch layout [G][nt][g][s] (`scale`
//   f16, `zero` = -(1024 + z) f16): one 16-byte read per lane and group. (16 rows in this kernel,
//   unswapped, measured slower than the register-fed kernel: docs/perf.md.)
// - Blocks split K uniformly (grid x: column blocks, y: splits of K), or, where that leaves block
//   slots of the SMs empty (the _balanced kernels; src/cuda/layer.rs, balance), each block takes an
//   equal run of all column blocks' tiles in storage order, across a column block's end if need
//   be: a memory-bound grid streams at the rate of its fill (8192×28672: 112 column blocks × 3
//   splits = 336 blocks in 396 slots ran at 89% of the read floor, 388 balanced blocks at 92%).
// Shared memory (src/cuda/layer.rs, bulk_smem_bytes, mirrors it): 2·16 mbarriers and a 16-byte zero
// row (384 bytes), 8 gathered rows of 256 + 8 inputs or one of 768 + 8 (4224 bytes, rounded up), then the stages
// (BulkStage).
#if __CUDA_ARCH__ >= 900
#define BULK_MAX_STAGES 16
#define BULK_GATHER_OFFSET 384  // after 2·16 mbarriers and a 16-byte zero row
#define BULK_GATHER_LDS 264     // halves per gathered row (256 inputs + 8: distinct banks)
#define BULK_GATHER_LONG_LDS 776  // the long form's rows (GATHER_LONG_COLS · 128 + 8; 2 fit the space)
#define BULK_RING_OFFSET (384 + 4352)
#define BULK_THREADS (MMA_THREADS + 32)

// One ring stage (src/cuda/layer.rs, bulk_stage_bytes, mirrors it): TPS tiles of the quad's four
// column tiles (8 KB), TPS scale slots of 512 bytes (and TPS zero slots), then A's 8 rows over the
// stage's TPS·16 inputs, each row padded by 8 halves so the 8 rows an ldmatrix reads fall in
// distinct banks.
template <int BITS, bool SYM> struct BulkStage {
    static constexpr int TPS = BITS == 4 ? 4 : 2;
    static constexpr int TILE_BYTES = TPS * TILE_STRIDE(BITS / 4) * 16;
    static constexpr int SLOT_BYTES = TPS * 512 * (SYM ? 1 : 2);
    static constexpr int A_ROW = (TPS * 16 + 8) * 2;
    static constexpr int BYTES = TILE_BYTES + SLOT_BYTES + 8 * A_ROW;
};

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Arrives once and adds `bytes` to the transaction count the phase waits for.
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Waits until the phase with this parity has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
// Adds `bytes` to the transaction count of the current phase without arriving.
__device__ __forceinline__ void mbar_expect_tx_only(u32 bar, u32 bytes) {
    asm volatile("mbarrier.expect_tx.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// `bytes` from global `src` to shared `dst` by the copy engine; completion is counted on `bar`.
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

// The ring's mbarriers (thread 0): `full` (one arrival, the producer's, plus the copies' bytes) and
// `empty` (`consumers` arrivals: one per consumer warp, or per consumer thread) for each stage, 8
// bytes apart.
__device__ __forceinline__ void ring_barriers_init(u32 full, u32 empty, int stages, int consumers) {
    for (int s = 0; s < stages; s++) {
        mbar_init(full + 8 * s, 1);
        mbar_init(empty + 8 * s, consumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// The producer's schedule over `nstages` stages of a ring of `stages`: the weights of the first
// ring-full before pdl_wait (the layer's own data), A after it; then each stage once the consumers
// have handed it back. weights(i) counts its bytes on stage i's full barrier, activations(i)
// arrives on it.
template <class Weights, class Activations>
__device__ __forceinline__ void ring_produce(u32 empty, int stages, int nstages, Weights weights,
                                             Activations activations) {
    const int first = min(stages, nstages);
    for (int i = 0; i < first; i++) weights(i);
    pdl_wait();  // A is written by the previous kernel
    for (int i = 0; i < first; i++) activations(i);
    for (int i = first; i < nstages; i++) {
        mbar_wait(empty + 8 * (i % stages), ((i / stages) - 1) & 1);
        weights(i);
        activations(i);
    }
}

// The producer's weight copies of one ring stage (bulk_gemm_small, wg_gemm_small): `n` tiles of the
// block's four column tiles, contiguous from `tiles` (column_words), to shared `dst`, then a scale
// row of the quad (4 column tiles of 128 bytes, fewer in the last quad) per group the tiles touch to
// the slots after them (zero rows TPS slots further), counted on `bar`, not arrived.
template <int QV, int TPS, bool SYM>
__device__ __forceinline__ void copy_stage_weights(u32 dst, u32 bar, const uint4* tiles, int t0, int n,
                                                   int group_shift, int NT, const uint4* __restrict__ scale,
                                                   const uint4* __restrict__ zero, int quad) {
    const int g0 = t0 >> group_shift, g1 = (t0 + n - 1) >> group_shift;
    const u32 row_bytes = min(4, NT - 4 * quad) * 128;
    const u32 tile_bytes = n * TILE_STRIDE(QV) * 16, slots = dst + TPS * TILE_STRIDE(QV) * 16;
    mbar_expect_tx_only(bar, tile_bytes + (g1 - g0 + 1) * row_bytes * (SYM ? 1 : 2));
    bulk_copy(dst, tiles, tile_bytes, bar);
    for (int g = g0; g <= g1; g++) {
        const long row = ((long)g * NT + 4 * quad) * 8;
        bulk_copy(slots + (g - g0) * 512, scale + row, row_bytes, bar);
        if (!SYM) bulk_copy(slots + (TPS + g - g0) * 512, zero + row, row_bytes, bar);
    }
}

// tot += the group's sums with its zeros and scales applied, for the swapped accumulators of R
// blocks of 8 rows (mma.sync m16n8: R = 1; wgmma m64n16: R = 2): acc[j][i] is column
// 16j + g + 8·((i/2)%2), row 8·(i/4) + 2t + i%2; sum[i] the row sums of that row. sc, zv: this
// lane's 8 scales and offsets -(1024 + zero), subtile s = 2j + (i/2)%2. fold_columns_swapped: the
// columns 16j.. alone (acc[j], tot[j]), for a caller that keeps its sums out of registers.
// SIGNED: the codes were formed signed (int_tile), so tot += acc · scale and `sum`, `zv` are unused.
template <int BITS, bool BF, bool SYM, int R, bool SIGNED = false>
__device__ __forceinline__ void fold_columns_swapped(int j, const float (&acc)[4 * R], const float (&sum)[4 * R],
                                                     float (&tot)[4 * R], const uint4& sc, const uint4& zv) {
    const u32 sw[4] = {sc.x, sc.y, sc.z, sc.w}, zw[4] = {zv.x, zv.y, zv.z, zv.w};
    constexpr float magic = BITS == 4 ? (BF ? 128.f : 1024.f) : (BF ? 0.f : 1024.f);
#pragma unroll
    for (int hi = 0; hi < 2; hi++) {
        const int s = 2 * j + hi;
        const float mult = BITS == 4 && !BF && hi ? 16.f : 1.f;
        const float z = SYM ? (float)(1 << (BITS - 1)) : -h2f((u16)(zw[s / 2] >> (16 * (s % 2)))) - 1024.f;
        const float off = -(magic + mult * z);
        const float scl = h2f((u16)(sw[s / 2] >> (16 * (s % 2)))) * (1.f / mult);
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int i = 4 * r + 2 * hi + h;
                tot[i] = SIGNED ? fmaf(acc[i], scl, tot[i]) : fmaf(fmaf(sum[i], off, acc[i]), scl, tot[i]);
            }
    }
}
template <int BITS, bool BF, bool SYM, int R>
__device__ __forceinline__ void fold_group_swapped(const float (&acc)[4][4 * R], const float (&sum)[4 * R],
                                                   float (&tot)[4][4 * R], const uint4& sc, const uint4& zv) {
#pragma unroll
    for (int j = 0; j < 4; j++) fold_columns_swapped<BITS, BF, SYM, R>(j, acc[j], sum, tot[j], sc, zv);
}

// A consumer's hand-back of a ring stage it has read. Every consumer thread arrives (the `empty`
// barrier counts 128), so each thread's reads are ordered before the producer's next copy into the
// stage by its own release; a warp's lane 0 arriving for it after __syncwarp (BULK_THREAD_ARRIVE=0,
// the form before version 73) relies on __syncwarp's ordering, which compute-sanitizer's racecheck
// does not model: it reported every stage's reads as racing the next bulk copy.
#ifndef BULK_THREAD_ARRIVE
#define BULK_THREAD_ARRIVE 1
#endif
__device__ __forceinline__ void release_stage(u32 empty, int lane) {
#if BULK_THREAD_ARRIVE
    (void)lane;
    mbar_arrive(empty);
#else
    __syncwarp();  // every lane's reads of the stage are done
    if (lane == 0) mbar_arrive(empty);
#endif
}

// A arrives with each stage, so there is no staging step and no chunking: A must be 16-byte aligned
// with lda and K multiples of 8 (src/cuda/layer.rs). With `perm` (<= 8 rows over <= 256 inputs per
// block, or one row over <= 768) the consumers gather A instead and the stages carry none.
// Balanced splits (`balanced_tiles` L > 0; grid x counts blocks, grid y is 1): block b streams the
// tiles [b·L, (b+1)·L) of all column blocks' tiles in storage order ([quad][kt], one contiguous
// stream), so the grid fills the SMs' block slots whatever the number of column blocks (112 column
// blocks × 3 splits of 8192×28672 filled 336 of 396: docs/perf.md, version 55). A block then spans
// up to two column blocks; at the change it writes the first one's sums, as partial sums of slot
// b − first block of that column block, which gptq_reduce_* adds. The host makes L and KT whole
// stages, so no stage straddles two column blocks, and sends no `perm`.
template <int BITS, bool BF, bool SYM, bool BALANCED>
__device__ void bulk_gemm_small(const u16* __restrict__ A, long lda, const uint4* __restrict__ qw,
                                const uint4* __restrict__ scale, const uint4* __restrict__ zero,
                                const int* __restrict__ perm, float* __restrict__ partial,
                                const float* __restrict__ bias, u16* __restrict__ C, long ldc, int M, int N, int K,
                                int tiles_per_split, int group_shift, int balanced_tiles, int stages) {
    using St = BulkStage<BITS, SYM>;
    constexpr int QV = BITS / 4, TPS = St::TPS, STAGE_U4 = TPS * TILE_STRIDE(QV);
    extern __shared__ __align__(128) unsigned char smem[];
    const u32 full = smem_u32(smem), empty = full + 8 * BULK_MAX_STAGES, zero_row = full + 16 * BULK_MAX_STAGES;
    unsigned char* ring = smem + BULK_RING_OFFSET;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    // (A kernel of its own: the uniform one keeps 89-95 registers, 4 blocks per SM on short blocks.)
    const int L = BALANCED ? balanced_tiles : 0;  // (the host keeps all column blocks' tiles below 2^31)
    const int f_begin = blockIdx.x * L, f_end = min(f_begin + L, (NT + 3) / 4 * KT);
    const int t_begin = L ? 0 : blockIdx.y * tiles_per_split;
    const int t_end = L ? 0 : min(t_begin + tiles_per_split, KT);
    const int nstages = L ? (f_end - f_begin + TPS - 1) / TPS : (max(t_end - t_begin, 0) + TPS - 1) / TPS;
    // Stage i: its column block, first K tile and tile count.
    auto stage_at = [&](int i, int& quad, int& t0, int& n) {
        if (L) {
            const int f0 = f_begin + i * TPS;
            quad = f0 / KT;
            t0 = f0 - quad * KT;
            n = min(TPS, f_end - f0);
        } else {
            quad = blockIdx.x;
            t0 = t_begin + i * TPS;
            n = min(TPS, t_end - t0);
        }
    };
    const int m0 = blockIdx.z * 8, rows = min(8, M - m0);
    u16* sG = reinterpret_cast<u16*>(smem + BULK_GATHER_OFFSET);  // gathered act-order rows
    // Act-order: the permuted columns each consumer thread gathers (the layer's own data), loaded
    // before the producer's first weight copies go out: issued after them, the loads waited behind
    // a ring-full of weights and delayed the gather (docs/perf.md, version 51).
    const bool long_gather = tiles_per_split * 16 > 256;  // (the library sends such blocks <= 2 rows)
    const int kb = t_begin * 16, klen = (t_end - t_begin) * 16;
    int col[GATHER_LONG_COLS];
    if (perm && warp < 4) {
        if (long_gather) gather_columns<GATHER_LONG_COLS>(perm, kb, klen, K, col);
        else gather_columns<2>(perm, kb, klen, K, col);
    }
    if (threadIdx.x == 0) {
        ring_barriers_init(full, empty, stages, BULK_THREAD_ARRIVE ? MMA_THREADS : 4);
        *reinterpret_cast<uint4*>(smem + 16 * 8 * BULK_MAX_STAGES) = make_uint4(0, 0, 0, 0);
    }
    __syncthreads();
    pdl_launch_dependents();

    if (warp == 4) {  // producer
        if (lane != 0) return;
        auto weights = [&](int i) {  // stage i's tiles, scales and zeros (counted, not arrived)
            int quad, t0, n;
            stage_at(i, quad, t0, n);
            // The four column tiles of the quad are contiguous along K (column_words).
            const uint4* src = qw + ((long)quad * KT + t0) * TILE_STRIDE(QV);
            const int s = i % stages;
            copy_stage_weights<QV, TPS, SYM>(smem_u32(ring + s * St::BYTES), full + 8 * s, src, t0, n, group_shift, NT,
                                             scale, zero, quad);
        };
        auto activations = [&](int i) {  // stage i's rows of A, then the one arrival
            int quad, t0, n;
            stage_at(i, quad, t0, n);
            const int s = i % stages;
            if (perm) {  // the consumers gather A themselves
                mbar_arrive(full + 8 * s);
                return;
            }
            const int kb = t0 * 16, valid = min(n * 16, K - kb);  // a multiple of 8 (K is)
            unsigned char* a_slot = ring + s * St::BYTES + St::TILE_BYTES + St::SLOT_BYTES;
            if (valid < n * 16) {  // K ends in this stage: the inputs past it read zeros
                for (int r = 0; r < rows; r++)
                    for (int k = valid; k < n * 16; k += 8)
                        *reinterpret_cast<uint4*>(a_slot + r * St::A_ROW + 2 * k) = make_uint4(0, 0, 0, 0);
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
            }
            const u32 bar = full + 8 * s;
            mbar_expect_tx(bar, rows * valid * 2);
            for (int r = 0; r < rows; r++)
                bulk_copy(smem_u32(a_slot + r * St::A_ROW), A + (m0 + r) * lda + kb, valid * 2, bar);
        };
        ring_produce(empty, stages, nstages, weights, activations);
        return;
    }

    // ldmatrix.x2 row addresses in a stage's A rows (or the gathered rows): lanes 0-7 rows 0-7 at
    // k 0, 8-15 at k 8; rows past M read the zero row.
    const int r = lane % 8;
    const bool a_real = r < rows;
    const int glds = long_gather ? BULK_GATHER_LONG_LDS : BULK_GATHER_LDS;
    const u32 a_off = perm ? r * glds * 2 + 16 * ((lane / 8) % 2) : r * St::A_ROW + 16 * ((lane / 8) % 2);
    const u32 ones = BF ? 0x3F803F80u : 0x3C003C00u;
    if (perm) {
        // Act-order: rows of A gathered through perm over the block's <= 256 inputs (<= 768 for up
        // to 2 rows), zero past K; one round of independent loads.
        pdl_wait();  // A is written by the previous kernel
        if (!long_gather) gather_rows(A, lda, col, m0, rows, klen, sG, glds);
        else if (rows == 1) gather_rows_upto<1, GATHER_LONG_COLS>(A, lda, col, m0, rows, klen, sG, glds);
        else gather_rows_upto<GATHER_LONG_ROWS, GATHER_LONG_COLS>(A, lda, col, m0, rows, klen, sG, glds);
        asm volatile("bar.sync 1, 128;" ::: "memory");  // the consumer warps only
    }

    // acc[j][i], tot[j][i]: column 16j + g + 8·(i/2), row 2t + i%2; sum[i]: row 2t + i%2.
    float tot[4][4], acc[4][4], sum[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) tot[j][i] = 0.f;
    uint4 sc, zv = make_uint4(0, 0, 0, 0);
    int cur = -1;  // the group whose sums acc and sum hold
    // Ring stage s holds tiles t0.. t0 + n - 1 of this block's current column block: their products
    // into the group's sums acc and sum, each group folded into tot as it ends.
    auto consume = [&](int s, int t0, int n) {
        const unsigned char* st = ring + s * St::BYTES;
        const uint4* stage = reinterpret_cast<const uint4*>(st);
        uint4 q[TPS][QV];
#pragma unroll
        for (int p = 0; p < TPS; p++)
#pragma unroll
            for (int v = 0; v < QV; v++) q[p][v] = stage[p * TILE_STRIDE(QV) + warp * 32 * QV + 32 * v + lane];
        // This lane's scales (zeros) in slot j: column tile `warp` of the quad's row.
        const uint4* slot = stage + STAGE_U4 + warp * 8 + lane / 4;
        const u32 a_base = perm ? smem_u32(sG) + a_off + (t0 - t_begin) * 32
                                : smem_u32(st + St::TILE_BYTES + St::SLOT_BYTES) + a_off;
        const int g0 = t0 >> group_shift;
#pragma unroll
        for (int p = 0; p < TPS; p++) {
            if (p >= n) break;
            const int G = (t0 + p) >> group_shift;
            if (G != cur) {
                if (cur >= 0) fold_group_swapped<BITS, BF, SYM, 1>(acc, sum, tot, sc, zv);
                cur = G;
                const int j = G - g0;  // the group's slot in this stage (32 uint4 per slot)
                sc = slot[32 * j];
                if (!SYM) zv = slot[32 * (TPS + j)];
                // The group's sums start from zeroed registers: choosing between an mma with C = 0
                // and one that adds, per product, made ptxas issue both, predicated (version 47).
#pragma unroll
                for (int c = 0; c < 4; c++)
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[c][i] = 0.f;
#pragma unroll
                for (int i = 0; i < 4; i++) sum[i] = 0.f;
            }
            u32 b[8][2];
            int_tile<BITS, BF>(q[p], b);
            const u32 a_addr = a_real ? a_base + p * 32 : zero_row;
            u32 at[2];  // A^T as the B operand: rows 0-7 at k 2t.. and k 2t+8..
            ldmatrix_x2(at, a_addr);
            const u32 one4[4] = {ones, ones, ones, ones};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const u32 w[4] = {b[2 * j][0], b[2 * j + 1][0], b[2 * j][1], b[2 * j + 1][1]};
                mma16816<BF>(acc[j], w, at[0], at[1]);
            }
            mma16816<BF>(sum, one4, at[0], at[1]);
        }
    };
    // The last group's fold, then column tile nt's totals to C (direct) or as the partial sums of
    // `slot`; nothing is written before pdl_wait (already passed unless this block had no K tiles).
    auto finish = [&](int nt, bool direct, int slot) {
        if (cur >= 0) fold_group_swapped<BITS, BF, SYM, 1>(acc, sum, tot, sc, zv);
        pdl_wait();
        if (nt >= NT) return;
        const int g = lane / 4, tq = lane % 4;
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int m = m0 + 2 * tq + (i % 2), n = nt * 64 + 16 * j + g + 8 * (i / 2);
                if (m < M && n < N) {
                    if (direct) C[(long)m * ldc + n] = store_act<BF>(tot[j][i] + (bias ? bias[n] : 0.f));
                    else partial[((long)slot * M + m) * N + n] = tot[j][i];
                }
            }
    };
    if constexpr (!BALANCED) {
        // Uniform splits: the column block blockIdx.x over [t_begin, t_end).
        const int nt = blockIdx.x * 4 + warp;
#pragma unroll 1
        for (int i = 0; i < nstages; i++) {
            const int s = i % stages, t0 = t_begin + i * TPS;
            mbar_wait(full + 8 * s, (i / stages) & 1);
            if (nt < NT) consume(s, t0, min(TPS, t_end - t0));
            release_stage(empty + 8 * s, lane);
        }
        finish(nt, gridDim.y == 1, blockIdx.y);
    } else {
        // The block's stages by column block: column block `seg`, its tiles [t_lo, t_hi), stages
        // [i_lo, i_hi); each column block's totals go out as the partial sums of slot blockIdx.x −
        // the first block of that column block.
        int seg = f_begin / KT, t_lo = f_begin - seg * KT, i_lo = 0;
#pragma unroll 1
        while (true) {
            const int t_hi = min(KT, f_end - seg * KT);
            const int i_hi = min(nstages, i_lo + (t_hi - t_lo + TPS - 1) / TPS);
#pragma unroll 1
            for (int i = i_lo; i < i_hi; i++) {
                const int s = i % stages, t0 = t_lo + (i - i_lo) * TPS;
                mbar_wait(full + 8 * s, (i / stages) & 1);
                if (seg * 4 + warp < NT) consume(s, t0, min(TPS, t_hi - t0));
                release_stage(empty + 8 * s, lane);
            }
            finish(seg * 4 + warp, false, blockIdx.x - seg * KT / L);
            if (i_hi >= nstages) break;
            // on to the next column block, from its first tile
            cur = -1;
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) tot[j][e] = 0.f;
            seg++, t_lo = 0, i_lo = i_hi;
        }
    }
}
// gptq_bulk_b{BITS}_{f16|bf16}_{sym|asym}[_balanced]: 4 consumer warps and a producer, 3 blocks per
// SM. Same parameters as the register kernels, but for balanced splits' tiles per block (the
// _balanced kernels) where those take the chunk of A.
#define BULK_SMALL(BITS, BF, SYM, NAME)                                                                          \
    extern "C" __global__ void __launch_bounds__(BULK_THREADS, 3) NAME(                                          \
        const u16* A, long lda, const uint4* qw, const uint4* scale, const uint4* zero, const int* perm,          \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int gshift,           \
        int balanced_tiles, int stages) {                                                                        \
        bulk_gemm_small<BITS, BF, SYM, false>(A, lda, qw, scale, zero, perm, partial, bias, C, ldc, M, N, K, tps, \
                                              gshift, balanced_tiles, stages);                                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BULK_THREADS, 3) NAME##_balanced(                               \
        const u16* A, long lda, const uint4* qw, const uint4* scale, const uint4* zero, const int* perm,          \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int gshift,           \
        int balanced_tiles, int stages) {                                                                        \
        bulk_gemm_small<BITS, BF, SYM, true>(A, lda, qw, scale, zero, perm, partial, bias, C, ldc, M, N, K, tps,  \
                                             gshift, balanced_tiles, stages);                                    \
    }
BULK_SMALL(4, false, true, gptq_bulk_b4_f16_sym)
BULK_SMALL(4, false, false, gptq_bulk_b4_f16_asym)
BULK_SMALL(4, true, true, gptq_bulk_b4_bf16_sym)
BULK_SMALL(4, true, false, gptq_bulk_b4_bf16_asym)
BULK_SMALL(8, false, true, gptq_bulk_b8_f16_sym)
BULK_SMALL(8, false, false, gptq_bulk_b8_f16_asym)
BULK_SMALL(8, true, true, gptq_bulk_b8_bf16_sym)
BULK_SMALL(8, true, false, gptq_bulk_b8_bf16_asym)

// ---- 9 to 64 rows on sm_90a (from 2 on layers with long K splits, src/cuda/layer.rs
// with_wg_min_rows; blocks of 16 rows along grid z): the bulk-copy ring feeding warpgroup mma
// (wgmma) ----
//
// At 16 rows, mma.sync is the limit: every weight meets 16 rows, so the tile's mma count doubles
// (8, or 9 with the row sums, per warp and tile), and both the register kernel (63-67% of the read
// floor) and 16-row variants of bulk_gemm_small (slower still) stalled on mma issue. wgmma
// (asynchronous, a warpgroup's 64×16×16 per instruction from one issue per warp) takes the same
// products at a fraction of the issue cost and runs while the warps read the next tile:
// - the producer warp streams weights and scales as in bulk_gemm_small, and the block's 16 rows of
//   A by the tensor copy engine (cp.async.bulk.tensor, one 2D box of 16 rows × the stage's inputs
//   per stage), which writes them in the 128-byte (4 bit; 64-byte at 8 bit) swizzled K-major layout
//   wgmma reads, and fills rows past M and inputs past K with zeros;
// - the four consumer warps are one warpgroup: warp w's registers are rows 16w..16w+15 of wgmma's
//   64-row A operand (the swapped roles of bulk_gemm_small: 16 output columns per warp and wgmma),
//   A^T is the shared-memory B operand (16 inputs × 16 rows); a tile takes 4 wgmma m64n16k16;
// - integer codes in the registers (int_tile), a group's raw sums folded into the total with its
//   scales once per group: symmetric codes are formed signed (q − zero, exact: a LOP3 and an add per
//   register, version 31); asymmetric ones keep the magic number (one LOP3 per register) and a fifth
//   wgmma against ones for the row sums that take the zeros out (fold_columns_swapped). (Scales
//   applied per code pair, two more FMA per register, left the kernel issue-bound: version 25.)
// - two tiles in flight: tile t's wgmma run while tile t+1's codes are formed in the other half of
//   a double register buffer (wait_group 1 frees it); a group's fold waits for all (wait_group 0).
//   The folded totals live in shared memory (read and written once per group), whose 32 registers
//   pay for the second tile's codes at 3 blocks per SM (version 27 kept them and spilled).
// - a stage inside one group with two more tiles after it (nearly all: the host makes K splits
//   whole stages) runs a straight-line body: the group can change only at its first tile.
// - every consumer thread arrives on a stage's `empty` barrier once its last tile's wgmma are done
//   (after the next tile's wait_group 1), so no hand-over through __syncwarp is needed.
// - split K: where the host launches the 2-8 splits of a column block as one thread-block cluster
//   (layer.rs, with_cluster_rows), the splits add their folded totals through distributed shared
//   memory, each rank a share of them in rank order, and write C: no partial sums in the
//   workspace and no reduction launch, which cost 8192×28672 at M = 16 a tenth of its time
//   (version 32). Otherwise partial sums go to the workspace for gptq_reduce_*; so do the
//   _balanced kernels' (balanced splits as bulk_gemm_small takes them: src/cuda/layer.rs, balance,
//   uses them at 2 rows on 4-bit symmetric layers, where the 3 splits' clusters left slots empty).
// Shared memory: 2·16 mbarriers, the folded totals (128 threads × 32 floats, float4 k of thread i at
// [128 k + i], conflict-free), then the ring at the next 1024-byte boundary (the swizzle atom), each
// stage (WgStage, mirrored by src/cuda/layer.rs wg_stage_bytes) A first, so every stage's A is
// 1024-byte aligned (stage sizes are multiples of 1024); 4 stages fit 3 blocks per SM at 4 bit (3
// measured the same: the ring is not the limit, version 30).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_ROWS 16
#ifndef WG_SIGNED
#define WG_SIGNED 1
#endif
template <bool V> struct Flag {  // a compile-time flag for a generic lambda's argument
    static constexpr bool value = V;
};
// Thread-block cluster helpers: the cluster barrier (release/acquire: shared-memory writes before
// it are visible to the cluster after it), this block's rank, the cluster's size (1 when launched
// without clusters), and a 16-byte load from block `rank`'s shared memory at the address matching
// `local` there.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ u32 cluster_size() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ float4 ld_cluster_f32x4(u32 local, u32 rank) {
    u32 remote;
    float4 v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(remote)
                 : "memory");
    return v;
}
#define WG_TOT_BYTES (MMA_THREADS * 32 * 4)  // each consumer thread's 32 folded sums
// 256 bytes of mbarriers, the folded sums, alignment of the ring to 1024
#define WG_RING_SLACK (256 + WG_TOT_BYTES + 1024)

// CUtensorMap, opaque (the library encodes it on the host for every call's A).
struct __align__(64) TmaMap {
    unsigned long long v[16];
};

template <int BITS, bool SYM> struct WgStage {
    static constexpr int TPS = BITS == 4 ? 4 : 2;
    static constexpr int A_ROW = TPS * 16 * 2;  // bytes per row of A: one swizzle span (128 or 64)
    static constexpr int A_BYTES = WG_ROWS * A_ROW;
    static constexpr int TILE_BYTES = TPS * TILE_STRIDE(BITS / 4) * 16;
    static constexpr int SLOT_BYTES = TPS * 512 * (SYM ? 1 : 2);
    static constexpr int BYTES = A_BYTES + TILE_BYTES + SLOT_BYTES;
    static_assert(BYTES % 1024 == 0, "every stage's A starts on a swizzle atom");
};

// The tensor map's box at (x = input, y = row) into shared `dst`; completion counted on `bar`.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaMap* map, int x, int y, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(x), "r"(y), "r"(bar)
        : "memory");
}

// Shared-memory matrix descriptor of A^T for one wgmma: 16 inputs (32 bytes) of 16 rows at `addr`,
// rows of A_ROW bytes swizzled in 8-row atoms (stride 8·A_ROW; the leading offset is unused for
// K-major swizzled layouts); mode 1 = 128-byte swizzle, 2 = 64-byte.
template <int A_ROW> __device__ __forceinline__ unsigned long long wg_desc(u32 addr) {
    constexpr unsigned long long mode = A_ROW == 128 ? 1 : 2;
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(8 * A_ROW / 16) << 32) |
           (mode << 62);
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma.
__device__ __forceinline__ void wg_pin(float (&d)[8]) {
    asm volatile("" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])::"memory");
}
// Makes the tile's A registers and descriptor complete before wgmma.fence, so that no other
// instruction lands between a tile's wgmma. (A first version that issued each wgmma from its own asm
// statement, a setp before each, and did not pin its inputs had every wgmma serialized by ptxas,
// advisory C7513: docs/perf.md, version 24.)
__device__ __forceinline__ void wg_pin_inputs(u32 (&b)[8][2], unsigned long long& desc) {
#pragma unroll
    for (int s = 0; s < 8; s += 2)
        asm volatile("" : "+r"(b[s][0]), "+r"(b[s][1]), "+r"(b[s + 1][0]), "+r"(b[s + 1][1]));
    asm volatile("" : "+l"(desc));
}
// acc[j][64×16] (+)= (the tile's 16 output columns j of each warp)[64×16, registers] · A^T[16×16,
// shared memory at desc], j < 4 (and for asymmetric codes sum (+)= ones · A^T, every row the row sums
// of A), in one asm statement so that nothing lands between the wgmma; accumulate = 0 starts a
// group's sums.
// acc[j][i]: row 16·warp + g + 8·((i/2)%2) of wgmma j, column (row of A) 8·(i/4) + 2t + i%2.
#define WG_ACC(x) "+f"(x[0]), "+f"(x[1]), "+f"(x[2]), "+f"(x[3]), "+f"(x[4]), "+f"(x[5]), "+f"(x[6]), "+f"(x[7])
#define WG_A(j) "r"(b[2 * j][0]), "r"(b[2 * j + 1][0]), "r"(b[2 * j][1]), "r"(b[2 * j + 1][1])
#define WG_MMA(T, D, A, DESC) \
    "wgmma.mma_async.sync.aligned.m64n16k16.f32." T "." T " {" D "}, {" A "}, " DESC ", p, 1, 1, 0;\n"
// The four wgmma of the output columns; A0..A3 their A registers, DESC and ACC operand numbers.
#define WG_TILE(T, A0, A1, A2, A3, DESC, ACC)                                    \
    "{\n.reg .pred p;\nsetp.ne.b32 p, " ACC ", 0;\n"                              \
    WG_MMA(T, "%0,%1,%2,%3,%4,%5,%6,%7", A0, DESC)                               \
    WG_MMA(T, "%8,%9,%10,%11,%12,%13,%14,%15", A1, DESC)                         \
    WG_MMA(T, "%16,%17,%18,%19,%20,%21,%22,%23", A2, DESC)                       \
    WG_MMA(T, "%24,%25,%26,%27,%28,%29,%30,%31", A3, DESC)
// Operands with ROWSUM: acc 0-31 (wgmma j: 8j..8j+7), sum 32-39, A registers 40-55 (wgmma j:
// 40+4j..), ones 56, desc 57, accumulate 58. Without: acc 0-31, A registers 32-47, desc 48,
// accumulate 49.
#define WG_TILE_ROWSUM(T)                                                                                \
    WG_TILE(T, "%40,%41,%42,%43", "%44,%45,%46,%47", "%48,%49,%50,%51", "%52,%53,%54,%55", "%57", "%58") \
    WG_MMA(T, "%32,%33,%34,%35,%36,%37,%38,%39", "%56,%56,%56,%56", "%57") "}\n"
#define WG_TILE_SIGNED(T) \
    WG_TILE(T, "%32,%33,%34,%35", "%36,%37,%38,%39", "%40,%41,%42,%43", "%44,%45,%46,%47", "%48", "%49") "}\n"
// ROWSUM (asymmetric codes): the fifth wgmma, sum (+)= ones · A^T. Without it (signed codes) `sum`
// and `ones` are not operands at all, so they take no registers.
template <bool BF, bool ROWSUM>
__device__ __forceinline__ void wgmma_tile(float (&acc)[4][8], float (&sum)[8], const u32 (&b)[8][2], u32 ones,
                                           unsigned long long desc, int accumulate) {
    if constexpr (ROWSUM) {
        if (BF)
            asm volatile(WG_TILE_ROWSUM("bf16")
                         : WG_ACC(acc[0]), WG_ACC(acc[1]), WG_ACC(acc[2]), WG_ACC(acc[3]), WG_ACC(sum)
                         : WG_A(0), WG_A(1), WG_A(2), WG_A(3), "r"(ones), "l"(desc), "r"(accumulate));
        else
            asm volatile(WG_TILE_ROWSUM("f16")
                         : WG_ACC(acc[0]), WG_ACC(acc[1]), WG_ACC(acc[2]), WG_ACC(acc[3]), WG_ACC(sum)
                         : WG_A(0), WG_A(1), WG_A(2), WG_A(3), "r"(ones), "l"(desc), "r"(accumulate));
    } else {
        if (BF)
            asm volatile(WG_TILE_SIGNED("bf16")
                         : WG_ACC(acc[0]), WG_ACC(acc[1]), WG_ACC(acc[2]), WG_ACC(acc[3])
                         : WG_A(0), WG_A(1), WG_A(2), WG_A(3), "l"(desc), "r"(accumulate));
        else
            asm volatile(WG_TILE_SIGNED("f16")
                         : WG_ACC(acc[0]), WG_ACC(acc[1]), WG_ACC(acc[2]), WG_ACC(acc[3])
                         : WG_A(0), WG_A(1), WG_A(2), WG_A(3), "l"(desc), "r"(accumulate));
    }
}
#undef WG_MMA
#undef WG_TILE
#undef WG_TILE_ROWSUM
#undef WG_TILE_SIGNED
#undef WG_ACC
#undef WG_A

// A (the caller's, or act-order A gathered by the library) is read through `amap`: K inputs × M rows,
// row stride a multiple of 16 bytes (src/cuda/layer.rs). Scales and zero offsets as bulk_gemm_small
// takes them (f16, per-lane order).
// BALANCED (the _balanced kernels): balanced splits as bulk_gemm_small takes them, `balanced_tiles`
// tiles per block over all column blocks' tiles in storage order; tile positions below are then
// flattened ([quad][kt]) and a column block's sums go out as partial sums when it ends.
template <int BITS, bool BF, bool SYM, bool BALANCED>
__device__ void wg_gemm_small(const TmaMap& amap, const uint4* __restrict__ qw, const uint4* __restrict__ scale,
                              const uint4* __restrict__ nzero, float* __restrict__ partial,
                              const float* __restrict__ bias, u16* __restrict__ C, long ldc, int M, int N, int K,
                              int tiles_per_split, int group_shift, int balanced_tiles, int stages) {
    using St = WgStage<BITS, SYM>;
    constexpr int QV = BITS / 4, TPS = St::TPS, STAGE_U4 = TPS * TILE_STRIDE(QV);
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 full = smem_u32(smem), empty = full + 8 * BULK_MAX_STAGES;
    const u32 ring_s = (full + 256 + WG_TOT_BYTES + 1023) & ~1023u;  // shared address of stage 0
    const unsigned char* ring = smem + (ring_s - full);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    // The block's tiles [t_begin, t_end): of column block blockIdx.x, or flattened (BALANCED).
    const int L = BALANCED ? balanced_tiles : 0;
    const int t_begin = BALANCED ? blockIdx.x * L : blockIdx.y * tiles_per_split;
    const int t_end = BALANCED ? min(t_begin + L, (NT + 3) / 4 * KT) : min(t_begin + tiles_per_split, KT);
    const int nstages = (max(t_end - t_begin, 0) + TPS - 1) / TPS;
    const int m0 = blockIdx.z * WG_ROWS;
    if (threadIdx.x == 0) ring_barriers_init(full, empty, stages, MMA_THREADS);
    __syncthreads();
    pdl_launch_dependents();

    // The K splits of a column block launched as one cluster (grid y = cluster y) add their totals
    // through distributed shared memory: no partial sums in the workspace, no reduction kernel.
    const u32 ranks = cluster_size();
    if (warp == 4) {  // producer
        if (lane == 0) {
            // Stage i's column block and first K tile in it (whole stages never straddle two).
            auto place = [&](int i, int& quad, int& t0) {
                const int f0 = t_begin + i * TPS;
                quad = BALANCED ? f0 / KT : blockIdx.x;
                t0 = BALANCED ? f0 - quad * KT : f0;
            };
            auto weights = [&](int i) {  // stage i's tiles, scales and zeros (counted, not arrived)
                int quad, t0;
                place(i, quad, t0);
                const int s = i % stages, n = min(TPS, t_end - (t_begin + i * TPS));
                // The quad's four column tiles are contiguous along K (column_words).
                copy_stage_weights<QV, TPS, SYM>(ring_s + s * St::BYTES + St::A_BYTES, full + 8 * s,
                                                 qw + ((long)quad * KT + t0) * TILE_STRIDE(QV), t0, n, group_shift,
                                                 NT, scale, nzero, quad);
            };
            auto activations = [&](int i) {  // stage i's box of A (the whole box counts, zeros included)
                int quad, t0;
                place(i, quad, t0);
                const int s = i % stages;
                const u32 bar = full + 8 * s;
                mbar_expect_tx(bar, St::A_BYTES);
                tma_load_2d(ring_s + s * St::BYTES, &amap, t0 * 16, m0, bar);
            };
            ring_produce(empty, stages, nstages, weights, activations);
        }
        __syncwarp();
        if (ranks > 1) {  // every thread of every block takes part in the two cluster barriers below
            cluster_sync();
            cluster_sync();
        }
        return;
    }

    // sq: the current stage's column block, its first tile at `base` (flattened; 0 otherwise); seg:
    // the column block whose sums tot_s holds. Warps past N's last column tile are inactive but
    // still take part in every wgmma, with zero weights.
    int sq = BALANCED ? t_begin / KT : blockIdx.x, seg = sq, base = BALANCED ? sq * KT : 0;
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    const u32 ones = BF ? 0x3F803F80u : 0x3C003C00u;
    // Symmetric codes are formed signed: no row sums (int_tile). WG_SIGNED=0 (GPTQ_NVRTC_DEFINES)
    // keeps version 30's row sums for them, for an A/B in one build.
    constexpr bool ROWSUM = !SYM || !WG_SIGNED;
    // The sums with scales and zeros applied live in shared memory (this thread's float4 k at
    // tot_s[128 k], conflict-free), read and written once per group: their 32 registers pay for the
    // second tile's codes in flight. acc, sum: the current group's raw sums (layout at wgmma_tile).
    float4* const tot_s = reinterpret_cast<float4*>(smem + 256) + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 8; k++) tot_s[MMA_THREADS * k] = make_float4(0.f, 0.f, 0.f, 0.f);
    float acc[4][8], sum[8];  // no initial value: a group's first wgmma runs with scale-d = 0
    uint4 sc = zero4, zv = zero4;  // the current group's scales and zero offsets
    int cur = -1;                  // the group whose sums acc and sum hold
    auto fold = [&]() {            // after wait_group 0; a column block at a time (register peak)
#pragma unroll
        for (int j = 0; j < 4; j++) wg_pin(acc[j]);
        if constexpr (ROWSUM) wg_pin(sum);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float4 lo = tot_s[MMA_THREADS * 2 * j], hi = tot_s[MMA_THREADS * (2 * j + 1)];
            float t[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
            fold_columns_swapped<BITS, BF, SYM, 2, !ROWSUM>(j, acc[j], sum, t, sc, zv);
            tot_s[MMA_THREADS * 2 * j] = make_float4(t[0], t[1], t[2], t[3]);
            tot_s[MMA_THREADS * (2 * j + 1)] = make_float4(t[4], t[5], t[6], t[7]);
        }
    };
    uint4 q[QV];     // the words of the tile after the one whose codes are being formed
    u32 b[2][8][2];  // two tiles' codes: one read by wgmma in flight, the next being formed
    auto load_q = [&](int slot, int p) {
        const uint4* tiles = reinterpret_cast<const uint4*>(ring + slot * St::BYTES + St::A_BYTES);
#pragma unroll
        for (int v = 0; v < QV; v++) q[v] = tiles[p * TILE_STRIDE(QV) + warp * 32 * QV + 32 * v + lane];
    };

    // This thread's float4 k holds rows m0 + 8·(k%2) + 2tq + {0, 1} (x/z, y/w) of columns
    // nt·64 + 16·(k/2) + g + {0, 8} (x/y, z/w): to C, or to the partial sums of `slot`.
    auto store = [&](int k, const float4& v, bool direct, int nt, int slot) {
        const int g = lane / 4, tq = lane % 4;
        const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int m = m0 + 8 * (k % 2) + 2 * tq + c % 2, n = nt * 64 + 16 * (k / 2) + g + 8 * (c / 2);
            if (m < M && n < N) {
                if (direct) C[(long)m * ldc + n] = store_act<BF>(e[c] + (bias ? bias[n] : 0.f));
                else partial[((long)slot * M + m) * N + n] = e[c];
            }
        }
    };
    // (BALANCED) column block `quad`'s sums as its partial sums of slot blockIdx.x − its first block.
    auto emit = [&](int quad) {
        pdl_wait();  // nothing is written before it
        const int nt = quad * 4 + warp;
        if (nt >= NT) return;
#pragma unroll
        for (int k = 0; k < 8; k++) store(k, tot_s[MMA_THREADS * k], false, nt, blockIdx.x - quad * KT / L);
    };

    // Per tile t: fence, 5 wgmma, commit; wait_group 1 (tile t-1 done: its codes' registers and its
    // stage are free); then tile t+1's codes are formed from q while t's wgmma run, and q takes tile
    // t+2's words. A group's fold waits for all (wait_group 0), once per group. The stage index and
    // parity advance by increments (a division by the runtime `stages` per stage cost ~20 issue slots).
    if (nstages > 0) {
        mbar_wait(full, 0);
        load_q(0, 0);
        int_tile<BITS, BF, !ROWSUM>(q, b[0]);
        if (t_begin + 1 < t_end) load_q(0, 1);  // TPS >= 2
    }
    int s = 0;
    u32 parity = 0;  // stage i's ring slot and the parity of its full barrier's phase
#pragma unroll 1
    for (int i = 0; i < nstages; i++) {
        const int t0 = t_begin + i * TPS;
        if (BALANCED && t0 >= base + KT) sq++, base += KT;  // (a stage starts the next column block)
        const int sn = s + 1 == stages ? 0 : s + 1;     // stage i+1's slot
        const u32 parity_n = sn == 0 ? parity ^ 1 : parity;  // and parity
        const unsigned long long desc0 = wg_desc<St::A_ROW>(ring_s + s * St::BYTES);  // the stage's A
        const uint4* slot = reinterpret_cast<const uint4*>(ring + s * St::BYTES + St::A_BYTES) + STAGE_U4 + warp * 8 +
                            lane / 4;  // this lane's scales in the stage's slot 0
        // FAST: all TPS tiles inside one group with two more tiles after them (nearly every stage):
        // the group can change only at the first tile and no tile tests the end of the range.
        auto stage = [&](auto fast_flag) {
            constexpr bool FAST = decltype(fast_flag)::value;
#pragma unroll
            for (int p = 0; p < TPS; p++) {
                const int tile = t0 + p;
                if (!FAST && tile >= t_end) break;  // uniform over the block
                bool fresh = false;
                if (!FAST || p == 0) {
                    const int G = (tile - base) >> group_shift;
                    fresh = G != cur || (BALANCED && sq != seg);
                    if (fresh) {
                        if (cur >= 0) {
                            wg_wait<0>();
                            fold();
                            if (BALANCED && sq != seg) {  // column block seg is done
                                emit(seg);
#pragma unroll
                                for (int k = 0; k < 8; k++) tot_s[MMA_THREADS * k] = make_float4(0.f, 0.f, 0.f, 0.f);
                            }
                        }
                        cur = G;
                        seg = sq;
                        const int j = G - ((t0 - base) >> group_shift);  // the group's slot in this stage (32 uint4 each)
                        if (seg * 4 + warp < NT) {
                            sc = slot[32 * j];
                            if (!SYM) zv = slot[32 * (TPS + j)];
                        }
                    }
                }
                unsigned long long desc = desc0 + 2 * p;  // 32 bytes on (the address field counts 16)
                wg_pin_inputs(b[p % 2], desc);
                wg_fence();
                wgmma_tile<BF, ROWSUM>(acc, sum, b[p % 2], ones, desc, fresh ? 0 : 1);
                wg_commit();
                wg_wait<1>();  // tile t-1's wgmma are done
                // Stage i-1 is read to the end (its last tile's wgmma; its words and scales long loaded).
                if (p == 0 && i > 0) mbar_arrive(empty + 8 * (s == 0 ? stages - 1 : s - 1));
                if (FAST || tile + 1 < t_end) {
                    int_tile<BITS, BF, !ROWSUM>(q, b[(p + 1) % 2]);
                    if (FAST || tile + 2 < t_end) {
                        if (p + 2 < TPS) {
                            load_q(s, p + 2);
                        } else {
                            if (p + 2 == TPS) mbar_wait(full + 8 * sn, parity_n);
                            load_q(sn, p + 2 - TPS);
                        }
                    }
                }
            }
        };
        if (t0 + TPS + 2 <= t_end && ((t0 - base) >> group_shift) == ((t0 - base + TPS - 1) >> group_shift))
            stage(Flag<true>());
        else stage(Flag<false>());
        s = sn;
        parity = parity_n;
    }
    wg_wait<0>();
    if (cur >= 0) fold();
    if (BALANCED) {
        emit(seg);
        return;
    }
    pdl_wait();  // (already passed unless this block had no K tiles) nothing is written before it
    const int nt = blockIdx.x * 4 + warp;
    const bool active = nt < NT;
    if (ranks > 1) {
        // Rank r adds the float4s k = r, r + ranks, ... of every block (in rank order: the same sum
        // on every run) and writes them; the second barrier keeps each block's shared memory alive
        // until the others have read it.
        cluster_sync();
        const u32 rank = cluster_rank();
        for (int k = rank; k < 8; k += ranks) {
            const u32 local = smem_u32(&tot_s[MMA_THREADS * k]);
            float4 sum = ld_cluster_f32x4(local, 0);
            for (u32 r = 1; r < ranks; r++) {
                const float4 v = ld_cluster_f32x4(local, r);
                sum = make_float4(sum.x + v.x, sum.y + v.y, sum.z + v.z, sum.w + v.w);
            }
            if (active) store(k, sum, true, nt, 0);
        }
        cluster_sync();
        return;
    }
    if (!active) return;
#pragma unroll
    for (int k = 0; k < 8; k++) store(k, tot_s[MMA_THREADS * k], gridDim.y == 1, nt, blockIdx.y);
}
// gptq_wg_b{BITS}_{f16|bf16}_{sym|asym}[_balanced]: a warpgroup of consumers and a producer warp, 3
// blocks per SM; `balanced_tiles` is read by the _balanced kernels only.
#define WG_SMALL(BITS, BF, SYM, NAME)                                                                        \
    extern "C" __global__ void __launch_bounds__(BULK_THREADS, 3) NAME(                                      \
        const __grid_constant__ TmaMap amap, const uint4* qw, const uint4* scale, const uint4* nzero,        \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int gshift,       \
        int balanced_tiles, int stages) {                                                                    \
        wg_gemm_small<BITS, BF, SYM, false>(amap, qw, scale, nzero, partial, bias, C, ldc, M, N, K, tps,     \
                                            gshift, balanced_tiles, stages);                                 \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BULK_THREADS, 3) NAME##_balanced(                           \
        const __grid_constant__ TmaMap amap, const uint4* qw, const uint4* scale, const uint4* nzero,        \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int gshift,       \
        int balanced_tiles, int stages) {                                                                    \
        wg_gemm_small<BITS, BF, SYM, true>(amap, qw, scale, nzero, partial, bias, C, ldc, M, N, K, tps,      \
                                           gshift, balanced_tiles, stages);                                  \
    }
WG_SMALL(4, false, true, gptq_wg_b4_f16_sym)
WG_SMALL(4, false, false, gptq_wg_b4_f16_asym)
WG_SMALL(4, true, true, gptq_wg_b4_bf16_sym)
WG_SMALL(4, true, false, gptq_wg_b4_bf16_asym)
WG_SMALL(8, false, true, gptq_wg_b8_f16_sym)
WG_SMALL(8, false, false, gptq_wg_b8_f16_asym)
WG_SMALL(8, true, true, gptq_wg_b8_bf16_sym)
WG_SMALL(8, true, false, gptq_wg_b8_bf16_asym)

// ---- 17 to 256 rows on sm_90a: the bulk-copy ring feeding wgmma with 32 to 128 rows per block ----
//
// wg_gemm_small above decodes a column block's weights once per 16 rows, so at 32-128 rows every
// weight is decoded (and its block's tile re-read from L2) 2-8 times: 64 rows ran at 0.6-1.1× cuBLAS
// fp16 on the H100 (docs/perf.md, seventeenth slice). This kernel keeps the same producer, ring and
// weight layout, and widens wgmma's N (the rows of A) to R = 32 or 64 per warpgroup:
// - each tile's codes are dequantized in the activation type (dequant_pairs: offset and scale per
//   code pair, as the register-fed mma_gemm does) instead of folding per group, so the f32
//   accumulators are the totals: 4 wgmma m64nRk16 per tile, in one asm statement, R/2 accumulators
//   each (64 and 128 registers per thread at R = 32 and 64). The dequantization is paid once per R
//   rows, which is why it is affordable here and not at 16 rows (version 25);
// - scales and zero offsets come per stage as in wg_gemm_small, but in the activation type (the
//   large-batch `scale`/`nzero` arrays, same per-lane layout); a tile's group pairs are formed when
//   its codes are, one tile ahead of its wgmma;
// - A arrives as one tensor-copy box of the block's rows × the stage's inputs (128-byte swizzle at
//   4 bit, 64-byte at 8), zeros past M and K; the shared-memory descriptor is wg_gemm_small's (the
//   8-row atoms simply continue for R rows);
// - forms (src/cuda/layer.rs, WideForm): 32 rows, one warpgroup, two blocks per SM; 64 rows, one
//   warpgroup (for comparisons); 64 rows, two warpgroups taking alternate stages (K) and adding
//   their sums in shared memory; 128 rows, two warpgroups of 64 rows (each dequantizes every tile).
//   One warpgroup per SM left the tensor pipe idle while it dequantized (ncu: issue-bound on
//   fixed-latency chains), so the two-warpgroup forms, whose producer warpgroup hands its registers
//   to the consumers (setmaxnreg), run 1.2-1.5× faster;
// - blocks of rows along grid z, K splits along y through the workspace (gptq_reduce_*), C written
//   directly when K is not split.
// Shared memory: 2·16 mbarriers, then the ring at the next 1024-byte boundary; each stage
// (WideStage, mirrored by src/cuda/layer.rs wide_stage_bytes) A first, then the tiles and the slots.
template <int BITS, bool SYM, int ROWS> struct WideStage {
    static constexpr int TPS = BITS == 4 ? 4 : 2;
    static constexpr int A_ROW = TPS * 16 * 2;
    static constexpr int A_BYTES = ROWS * A_ROW;
    static constexpr int TILE_BYTES = TPS * TILE_STRIDE(BITS / 4) * 16;
    static constexpr int SLOT_BYTES = TPS * 512 * (SYM ? 1 : 2);
    static constexpr int BYTES = A_BYTES + TILE_BYTES + SLOT_BYTES;
    static_assert(BYTES % 1024 == 0, "every stage's A starts on a swizzle atom");
};
#define WIDE_RING_SLACK (256 + 1024)  // mbarriers, alignment of the ring to 1024
#ifndef WIDE_FAST
#define WIDE_FAST 1
#endif


// A tile's four wgmma (acc[j] (+)= the pairs of output columns j · A^T at desc) in one asm
// statement, so one uniform copy of the descriptor serves all four (issued as four statements, each
// took its own pair of uniform registers: 8 R2UR per tile, version 66). Operands: the accumulators
// (R/2 per wgmma), then the A registers (4 per wgmma), the descriptor, the accumulate flag.
// Wgmma j's A registers are b[2j][0], b[2j+1][0], b[2j][1], b[2j+1][1] (the warp's output columns
// 16j.. as 16 rows of the 64); acc[j][i]: row 16·warp + g + 8·((i/2)%2) of the 64 (column 16j + g +
// 8·((i/2)%2) of the warp's column tile), column (row of A) 8·(i/4) + 2t + i%2.
#define WGW_MMA(N, T, D, A, DESC) \
    "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." T "." T " {" D "}, {" A "}, " DESC ", p, 1, 1, 0;\n"
#define WGW_TILE32(T)                                        \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %81, 0;\n"                                                            \
    WGW_MMA("32", T, "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15", "%64,%65,%66,%67", "%80") \
    WGW_MMA("32", T, "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31", "%68,%69,%70,%71", "%80") \
    WGW_MMA("32", T, "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47", "%72,%73,%74,%75", "%80") \
    WGW_MMA("32", T, "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63", "%76,%77,%78,%79", "%80") \
    "}\n"
#define WGW_TILE64(T)                                        \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %145, 0;\n"                                                            \
    WGW_MMA("64", T, "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15," \
            "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31", "%128,%129,%130,%131", "%144") \
    WGW_MMA("64", T, "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47," \
            "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63", "%132,%133,%134,%135", "%144") \
    WGW_MMA("64", T, "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79," \
            "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95", "%136,%137,%138,%139", "%144") \
    WGW_MMA("64", T, "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111," \
            "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127", "%140,%141,%142,%143", "%144") \
    "}\n"
#define WGW_F8(x, o) \
    "+f"(x[o]), "+f"(x[o + 1]), "+f"(x[o + 2]), "+f"(x[o + 3]), "+f"(x[o + 4]), "+f"(x[o + 5]), "+f"(x[o + 6]), "+f"(x[o + 7])
#define WGW_ACC32 WGW_F8(acc[0], 0), WGW_F8(acc[0], 8), WGW_F8(acc[1], 0), WGW_F8(acc[1], 8), WGW_F8(acc[2], 0), WGW_F8(acc[2], 8), WGW_F8(acc[3], 0), WGW_F8(acc[3], 8)
#define WGW_ACC64_(j) WGW_F8(acc[j], 0), WGW_F8(acc[j], 8), WGW_F8(acc[j], 16), WGW_F8(acc[j], 24)
#define WGW_ACC64 WGW_ACC64_(0), WGW_ACC64_(1), WGW_ACC64_(2), WGW_ACC64_(3)
#define WGW_A(j) "r"(b[2 * j][0]), "r"(b[2 * j + 1][0]), "r"(b[2 * j][1]), "r"(b[2 * j + 1][1])
#define WGW_IN WGW_A(0), WGW_A(1), WGW_A(2), WGW_A(3), "l"(desc), "r"(1)
template <bool BF, int R>
__device__ __forceinline__ void wgmma_tile_wide(float (&acc)[4][R / 2], const u32 (&b)[8][2], unsigned long long desc) {
    static_assert(R == 32 || R == 64, "rows per warpgroup");
    if constexpr (R == 32) {
        if (BF) asm volatile(WGW_TILE32("bf16") : WGW_ACC32 : WGW_IN);
        else asm volatile(WGW_TILE32("f16") : WGW_ACC32 : WGW_IN);
    } else {
        if (BF) asm volatile(WGW_TILE64("bf16") : WGW_ACC64 : WGW_IN);
        else asm volatile(WGW_TILE64("f16") : WGW_ACC64 : WGW_IN);
    }
}
#undef WGW_MMA
#undef WGW_TILE32
#undef WGW_TILE64
#undef WGW_F8
#undef WGW_ACC32
#undef WGW_ACC64_
#undef WGW_ACC64
#undef WGW_A
#undef WGW_IN
// Keeps the compiler from moving accesses of d across the asynchronous wgmma.
template <int N> __device__ __forceinline__ void wg_pin_all(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// A through `amap` as wg_gemm_small reads it (K inputs × M rows, boxes of the block's rows);
// scales and zero offsets in the activation type (`scale`, `nzero`: [G][nt][g < 8][s < 8], null
// nzero for symmetric layers).
// R: rows per warpgroup (wgmma's N). WGS consumer warpgroups and a producer (warp 4·WGS; with two
// consumer warpgroups a whole producer warpgroup, whose registers setmaxnreg hands to the consumers:
// at 384 threads ptxas would otherwise allot 168 per thread, and 64 rows' accumulators spilled):
// - WGS = 1: the block's R rows;
// - ROW_SPLIT: warpgroup c takes rows R·c.. of the block's WGS·R, every stage (the codes are
//   dequantized by each warpgroup, the weights streamed once);
// - otherwise (K split): both take the block's R rows, warpgroup c the stages i ≡ c (mod WGS), and
//   they add their sums in shared memory at the end. Either way an SM has twice the independent
//   wgmma chains and dequantization of one warpgroup.
template <int BITS, bool BF, bool SYM, int R, int WGS, bool ROW_SPLIT>
__device__ void wg_gemm_wide(const TmaMap& amap, const uint4* __restrict__ qw, const uint4* __restrict__ scale,
                             const uint4* __restrict__ nzero, float* __restrict__ partial,
                             const float* __restrict__ bias, u16* __restrict__ C, long ldc, int M, int N, int K,
                             int tiles_per_split, int group_shift, int stages) {
    constexpr int ROWS = ROW_SPLIT ? R * WGS : R;  // rows of A per block
    using St = WideStage<BITS, SYM, ROWS>;
    constexpr int QV = BITS / 4, TPS = St::TPS, STAGE_U4 = TPS * TILE_STRIDE(QV);
    static_assert(TPS % 2 == 0, "a stage starts on an even tile: the register buffers alternate per tile");
    // Consumers of each stage (arrivals on its `empty` barrier) and stages between a warpgroup's own.
    constexpr int STAGE_USERS = (ROW_SPLIT ? WGS : 1) * MMA_THREADS, STRIDE = ROW_SPLIT ? 1 : WGS;
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 full = smem_u32(smem), empty = full + 8 * BULK_MAX_STAGES;
    const u32 ring_s = (full + 256 + 1023) & ~1023u;  // shared address of stage 0
    unsigned char* ring = smem + (ring_s - full);
    const int warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32, wg = threadIdx.x / MMA_THREADS;
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    const int t_begin = blockIdx.y * tiles_per_split, t_end = min(t_begin + tiles_per_split, KT);
    const int nstages = (max(t_end - t_begin, 0) + TPS - 1) / TPS;
    const int m_block = blockIdx.z * ROWS;
    if (threadIdx.x == 0) ring_barriers_init(full, empty, stages, STAGE_USERS);
    __syncthreads();
    pdl_launch_dependents();

    if (wg == WGS) {  // producer
        if constexpr (WGS > 1) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x % MMA_THREADS == 0) {
            auto weights = [&](int i) {
                const int t0 = t_begin + i * TPS, s = i % stages, n = min(TPS, t_end - t0);
                copy_stage_weights<QV, TPS, SYM>(ring_s + s * St::BYTES + St::A_BYTES, full + 8 * s,
                                                 qw + ((long)blockIdx.x * KT + t0) * TILE_STRIDE(QV), t0, n,
                                                 group_shift, NT, scale, nzero, blockIdx.x);
            };
            auto activations = [&](int i) {
                const int s = i % stages;
                const u32 bar = full + 8 * s;
                mbar_expect_tx(bar, St::A_BYTES);
                tma_load_2d(ring_s + s * St::BYTES, &amap, (t_begin + i * TPS) * 16, m_block, bar);
            };
            ring_produce(empty, stages, nstages, weights, activations);
        }
        return;
    }

    if constexpr (WGS > 1) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");  // 128·40 + 256·232 <= 64K
    // Warps past N's last column tile dequantize zero codes with zero scales: their rows of every
    // wgmma are zeros, and they write nothing.
    const bool active = blockIdx.x * 4 + warp < NT;
    const int m0 = m_block + (ROW_SPLIT ? wg * R : 0);
    const u32 a_offset = ROW_SPLIT ? wg * R * St::A_ROW : 0;  // this warpgroup's rows in a stage's A
    float acc[4][R / 2];
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < R / 2; i++) acc[j][i] = 0.f;
    uint4 nz_sym;  // the symmetric layers' pair offset (mma_gemm's)
    {
        const u32 h = BITS == 4 ? (BF ? 0xC308u /* -136 */ : 0xE408u /* -1032 */) : 0xE480u /* -1152 f16 */;
        nz_sym.x = nz_sym.y = nz_sym.z = nz_sym.w = h | (h << 16);
    }
    uint4 q[QV];     // the words of the tile after the one being dequantized
    u32 b[2][8][2];  // two tiles' dequantized pairs: one read by wgmma in flight, the next being formed
    u32 scp[8], nzp[8];  // the current group's pairs (group_pairs)
    int gcur = -1;       // the group they belong to
    auto load_q = [&](int slot, int p) {
        const uint4* tiles = reinterpret_cast<const uint4*>(ring + slot * St::BYTES + St::A_BYTES);
#pragma unroll
        for (int v = 0; v < QV; v++) q[v] = tiles[p * TILE_STRIDE(QV) + warp * 32 * QV + 32 * v + lane];
    };
    // Tile `tile` (words in q) into bb; its stage is in ring slot `slot`, starting at tile t0.
    // SAME_GROUP: the caller knows the tile is in the current group.
    auto dequant = [&](int tile, int slot, int t0, u32 (&bb)[8][2], auto same_group) {
        const int G = tile >> group_shift;
        if (!decltype(same_group)::value && G != gcur) {
            gcur = G;
            uint4 sc = make_uint4(0, 0, 0, 0), nz = nz_sym;
            if (active) {
                const uint4* sl = reinterpret_cast<const uint4*>(ring + slot * St::BYTES + St::A_BYTES) + STAGE_U4 +
                                  warp * 8 + lane / 4;
                const int j = G - (t0 >> group_shift);  // the group's slot in the stage (32 uint4 each)
                sc = sl[32 * j];
                if (!SYM) nz = sl[32 * (TPS + j)];
            }
            group_pairs<BITS, BF, SYM>(sc, nz, scp, nzp);
        }
        dequant_pairs<BITS, BF>(q, scp, nzp, bb);
    };

    // This warpgroup's stages i = first, first + STRIDE, ...; stage i is in ring slot i % stages,
    // its full barrier's phase parity (i / stages) % 2, both advanced by increments (a division by
    // the runtime `stages` per stage made the kernel 8-25% slower). Per tile t: fence, 4 wgmma, commit;
    // wait_group 1 (tile t-1 done: its registers and, at a stage's first tile, the previous own
    // stage are free); then tile t+1 is dequantized from q while t's wgmma run, and q takes tile
    // t+2's words.
    const int first = ROW_SPLIT ? 0 : wg;  // (stages > STRIDE: WideForm::min_stages)
    int s = first, s_prev = 0;               // this stage's and the previous own stage's slots
    u32 parity = 0;
    if (first < nstages) {
        mbar_wait(full + 8 * s, parity);
        const int t = t_begin + first * TPS;
        load_q(s, 0);
        dequant(t, s, t, b[0], Flag<false>());
        if (t + 1 < t_end) load_q(s, 1);  // TPS >= 2
    }
#pragma unroll 1
    for (int i = first; i < nstages; i += STRIDE) {
        const int t0 = t_begin + i * TPS;
        int sn = s + STRIDE;  // the next own stage's slot and parity
        u32 parity_n = parity;
        if (sn >= stages) sn -= stages, parity_n ^= 1;
        const unsigned long long desc0 = wg_desc<St::A_ROW>(ring_s + s * St::BYTES + a_offset);
        // The next tile of this warpgroup after a stage's last is the first of its next own stage
        // (STRIDE stages on): `jump` tiles further.
        constexpr int jump = (STRIDE - 1) * TPS;
        // FAST: this stage and the next own stage are whole and inside the split, and this stage is
        // inside one group (nearly every stage): no tile tests the end of the range, and only the
        // next stage's first tile may start a group (WIDE_FAST=0, a define, keeps the general body).
        auto stage = [&](auto fast_flag) {
            constexpr bool FAST = decltype(fast_flag)::value;
#pragma unroll
            for (int p = 0; p < TPS; p++) {
                const int tile = t0 + p;
                if (!FAST && tile >= t_end) break;  // uniform over the block
                unsigned long long desc = desc0 + 2 * p;  // 32 bytes on (the address field counts 16)
                u32(&bc)[8][2] = b[p % 2];
                wg_pin_inputs(bc, desc);
                wg_fence();
                wgmma_tile_wide<BF, R>(acc, bc, desc);
                wg_commit();
                wg_wait<1>();
                if (p == 0 && i > first) mbar_arrive(empty + 8 * s_prev);
                const int t1 = p + 1 < TPS ? tile + 1 : tile + 1 + jump;
                if (FAST || t1 < t_end) {
                    if (p + 1 < TPS) dequant(t1, s, t0, b[(p + 1) % 2], Flag<FAST>());
                    else dequant(t1, sn, t0 + STRIDE * TPS, b[(p + 1) % 2], Flag<false>());
                    const int t2 = p + 2 < TPS ? tile + 2 : tile + 2 + jump;
                    if (FAST || t2 < t_end) {
                        if (p + 2 < TPS) {
                            load_q(s, p + 2);
                        } else {
                            if (p + 2 == TPS) mbar_wait(full + 8 * sn, parity_n);
                            load_q(sn, p + 2 - TPS);
                        }
                    }
                }
            }
        };
        const bool whole = t0 + jump + 2 * TPS <= t_end;
        if (WIDE_FAST && whole && (t0 >> group_shift) == ((t0 + TPS - 1) >> group_shift)) stage(Flag<true>());
        else stage(Flag<false>());
        s_prev = s;
        s = sn;
        parity = parity_n;
    }
    wg_wait<0>();
#pragma unroll
    for (int j = 0; j < 4; j++) wg_pin_all(acc[j]);
    if constexpr (WGS > 1 && !ROW_SPLIT) {
        // Warpgroup 1..WGS-1 hand their sums to warpgroup 0 through the ring (every stage is consumed
        // and its wgmma done by the first barrier): float i of thread x at [i][x], conflict-free.
        float* red = reinterpret_cast<float*>(ring);
        constexpr int CONSUMERS = WGS * MMA_THREADS;
        asm volatile("bar.sync 1, %0;" ::"n"(CONSUMERS) : "memory");
        for (int w = 1; w < WGS; w++) {
            if (wg == w) {
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int i = 0; i < R / 2; i++) red[(j * (R / 2) + i) * MMA_THREADS + threadIdx.x % MMA_THREADS] = acc[j][i];
            }
            asm volatile("bar.sync 1, %0;" ::"n"(CONSUMERS) : "memory");
            if (wg == 0) {
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int i = 0; i < R / 2; i++) acc[j][i] += red[(j * (R / 2) + i) * MMA_THREADS + threadIdx.x];
            }
            if (w + 1 < WGS) asm volatile("bar.sync 1, %0;" ::"n"(CONSUMERS) : "memory");
        }
        if (wg != 0) return;
    }
    pdl_wait();  // (already passed unless this block had no K tiles) nothing is written before it
    if (!active) return;
    const int nt = blockIdx.x * 4 + warp, g = lane / 4, tq = lane % 4;
    const bool direct = gridDim.y == 1;
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < R / 2; i++) {
            const int m = m0 + 8 * (i / 4) + 2 * tq + i % 2, n = nt * 64 + 16 * j + g + 8 * ((i / 2) % 2);
            if (m < M && n < N) {
                if (direct) C[(long)m * ldc + n] = store_act<BF>(acc[j][i] + (bias ? bias[n] : 0.f));
                else partial[((long)blockIdx.y * M + m) * N + n] = acc[j][i];
            }
        }
}
#define WIDE_THREADS(WGS) ((WGS) == 1 ? MMA_THREADS + 32 : ((WGS) + 1) * MMA_THREADS)
// gptq_wgw{ROWS}{_k}_b{BITS}_{f16|bf16}_{sym|asym}: WGS warpgroups of consumers and a producer warp
// (with two consumer warpgroups a producer warpgroup).
//   gptq_wgw32_*:  32 rows, one warpgroup, two blocks per SM;
//   gptq_wgw64_*:  64 rows, one warpgroup, one block per SM;
//   gptq_wgw64k_*: 64 rows, two warpgroups splitting the block's stages (K), one block per SM;
//   gptq_wgw128_*: 128 rows, two warpgroups of 64 rows, one block per SM.
#define WG_WIDE(BITS, BF, SYM, R, WGS, ROW_SPLIT, BLOCKS, NAME)                                             \
    extern "C" __global__ void __launch_bounds__(WIDE_THREADS(WGS), BLOCKS) NAME(                          \
        const __grid_constant__ TmaMap amap, const uint4* qw, const uint4* scale, const uint4* nzero,        \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int gshift,       \
        int stages) {                                                                                        \
        wg_gemm_wide<BITS, BF, SYM, R, WGS, ROW_SPLIT>(amap, qw, scale, nzero, partial, bias, C, ldc, M, N, \
                                                       K, tps, gshift, stages);                             \
    }
#define WG_WIDE_ALL(R, WGS, ROW_SPLIT, BLOCKS, PREFIX)                                    \
    WG_WIDE(4, false, true, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b4_f16_sym)               \
    WG_WIDE(4, false, false, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b4_f16_asym)             \
    WG_WIDE(4, true, true, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b4_bf16_sym)               \
    WG_WIDE(4, true, false, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b4_bf16_asym)             \
    WG_WIDE(8, false, true, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b8_f16_sym)               \
    WG_WIDE(8, false, false, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b8_f16_asym)             \
    WG_WIDE(8, true, true, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b8_bf16_sym)               \
    WG_WIDE(8, true, false, R, WGS, ROW_SPLIT, BLOCKS, PREFIX##_b8_bf16_asym)
WG_WIDE_ALL(32, 1, false, 2, gptq_wgw32)
WG_WIDE_ALL(64, 1, false, 1, gptq_wgw64)
WG_WIDE_ALL(64, 2, false, 1, gptq_wgw64k)
WG_WIDE_ALL(64, 2, true, 1, gptq_wgw128)
#endif
#endif

// Stable extern "C" names for module lookup: gptq_mma_b{BITS}_m{MF}_{f16|bf16}_{sym|asym} (M > 16).
#define MMA(BITS, MF, WK, BF, SYM, NAME)                                                                   \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) NAME(                                        \
        const u16* A, long lda, const uint4* qw, const uint4* scale, const uint4* nzero, const int* perm,   \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int gshift,     \
        int chunk) {                                                                                       \
        mma_gemm<BITS, MF, WK, BF, SYM>(A, lda, qw, scale, nzero, perm, partial, bias, C, ldc, M, N, K, tps, \
                                        gshift, chunk);                                                       \
    }
// Small batches: gptq_mma_b{BITS}_m1_{f16|bf16}_{sym|asym}, at most 168 registers (3 blocks/SM).
#define MMA_SMALL(BITS, BF, SYM, NAME)                                                                     \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS, 3) NAME(                                     \
        const u16* A, long lda, const uint4* qw, const uint4* scale, const uint4* zero, const int* perm,    \
        float* partial, const float* bias, u16* C, long ldc, int M, int N, int K, int tps, int gshift,     \
        int chunk) {                                                                                       \
        mma_gemm_small<BITS, BF, SYM>(A, lda, qw, scale, zero, perm, partial, bias, C, ldc, M, N, K, tps, \
                                          gshift, chunk);                                                     \
    }
#define MMA_ALL(BITS, BF, T)                                          \
    MMA_SMALL(BITS, BF, true, gptq_mma_b##BITS##_m1_##T##_sym)         \
    MMA(BITS, 2, 2, BF, true, gptq_mma_b##BITS##_m2_##T##_sym)         \
    MMA(BITS, 4, 1, BF, true, gptq_mma_b##BITS##_m4_##T##_sym)         \
    MMA_SMALL(BITS, BF, false, gptq_mma_b##BITS##_m1_##T##_asym)       \
    MMA(BITS, 2, 2, BF, false, gptq_mma_b##BITS##_m2_##T##_asym)       \
    MMA(BITS, 4, 1, BF, false, gptq_mma_b##BITS##_m4_##T##_asym)
MMA_ALL(4, false, f16)
MMA_ALL(4, true, bf16)
MMA_ALL(8, false, f16)
MMA_ALL(8, true, bf16)

// out[m, k] = A[m, perm[k]]: act-order activations gathered once into the workspace, so the GEMM
// stages them with 16-byte loads (gathering inside the GEMM kernel cost registers and load latency
// in every block; docs/perf.md). Grid (K / 256, up to 65535 rows).
extern "C" __global__ void gptq_gather_a(const u16* __restrict__ A, long lda, const int* __restrict__ perm,
                                         u16* __restrict__ out, int M, int K) {
    pdl_launch_dependents();  // the GEMM may start streaming weights now
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    const int col = perm[k];  // (ptxas places this load after pdl_wait; ld_before_wait measured the same)
    pdl_wait();
    for (long m = blockIdx.y; m < M; m += gridDim.y) out[m * K + k] = A[m * lda + col];
}

#if __CUDA_ARCH__ >= 900
// The act-order gather for 8 rows or more on sm_90 (src/cuda/layer.rs, gathers_by_row): block
// (c, y) copies row m of A whole into shared memory with one bulk copy (K halves, 16-byte aligned),
// then writes out[m, k] = row[perm[k]] for its chunk of `chunk` inputs, for rows m = y, y + gridDim.y...
// gptq_gather_a's 2-byte loads from global memory each cost a 32-byte L2 sector (458,752 of them at
// K = 28672, M = 16), which kept act-order 5 µs behind plain there (docs/perf.md, version 40); here
// the gridDim.x copies of each row are whole lines and the random reads hit shared memory.
// Shared memory: one mbarrier (16 bytes), then the row. Block 256 threads, chunk <= 256 · GATHER_PER.
#define GATHER_PER 32
extern "C" __global__ void __launch_bounds__(256) gptq_gather_a_bulk(const u16* __restrict__ A, long lda,
                                                                    const int* __restrict__ perm, u16* __restrict__ out,
                                                                    int M, int K, int chunk) {
    extern __shared__ __align__(16) unsigned char smem[];
    const u16* row = reinterpret_cast<const u16*>(smem + 16);
    const u32 bar = smem_u32(smem);
    const int k0 = blockIdx.x * chunk, k1 = min(K, k0 + chunk);
    int col[GATHER_PER];  // the layer's own permutation, read before pdl_wait
#pragma unroll
    for (int i = 0; i < GATHER_PER; i++) {
        const int k = k0 + threadIdx.x + 256 * i;
        col[i] = k < k1 ? ld_before_wait(perm + k) : 0;
    }
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    pdl_launch_dependents();
    pdl_wait();  // A is written by the previous kernel
    u32 parity = 0;
    for (long m = blockIdx.y; m < M; m += gridDim.y) {
        if (threadIdx.x == 0) {
            mbar_expect_tx(bar, (u32)K * 2);
            bulk_copy(smem_u32(row), A + m * lda, (u32)K * 2, bar);
        }
        mbar_wait(bar, parity);
        parity ^= 1;
#pragma unroll
        for (int i = 0; i < GATHER_PER; i++) {
            const int k = k0 + threadIdx.x + 256 * i;
            if (k < k1) out[m * K + k] = row[col[i]];
        }
        __syncthreads();  // every read of this row is done before the next copy overwrites it
    }
}
#endif

// Tile (nt, kt)'s values for `lane` (= 4g + t), in f32 as the CPU path computes them,
// s · (code - zero): f(s, i, v) for each, v at column 8s + g of the tile and input i < 16 of it
// (2t, 2t+1, 2t+8, 2t+9). Scales and offsets are the f16 arrays.
template <int BITS, class F>
__device__ __forceinline__ void dequant_lane(const uint4* __restrict__ qw, const uint4* __restrict__ scale,
                                             const uint4* __restrict__ nzero, int nt, int kt, int KT, int NT,
                                             int tiles_per_group, int lane, F&& f) {
    constexpr int QV = BITS / 4;
    const int g = lane / 4, tq = lane % 4;
    const uint4* src = column_words(qw, nt, KT, QV, lane) + (long)kt * TILE_STRIDE(QV);
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
                // 4 bit: nibble e -> subtile 2c + (e&1), register (e&3)/2, half e/4.
                // 8 bit: byte e -> subtile c, register e&1, half e/2.
                const int s = BITS == 4 ? 2 * c + (e & 1) : c;
                const int r = BITS == 4 ? (e & 3) >> 1 : e & 1, hi = BITS == 4 ? e >> 2 : e >> 1;
                const u32 code = (w[c4] >> (BITS * e)) & ((1u << BITS) - 1u);
                const float sc = h2f((u16)(sw[s / 2] >> (16 * (s % 2))));
                const float zero = -h2f((u16)(zw[s / 2] >> (16 * (s % 2)))) - 1024.f;
                f(s, 2 * tq + 8 * r + hi, sc * ((float)code - zero));
            }
        }
    }
}

// out [N, K] fp16 in the original input order from the tile layout; one thread per (tile, lane).
template <int BITS>
__device__ void mma_dequant(const uint4* __restrict__ qw, const uint4* __restrict__ scale,
                            const uint4* __restrict__ nzero, const int* __restrict__ perm, u16* __restrict__ out,
                            int N, int K, int tiles_per_group) {
    const int KT = (K + 15) / 16, NT = (N + 63) / 64;
    const long tid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= (long)NT * KT * 32) return;
    const int lane = (int)(tid % 32), kt = (int)((tid / 32) % KT), nt = (int)(tid / 32 / KT);
    dequant_lane<BITS>(qw, scale, nzero, nt, kt, KT, NT, tiles_per_group, lane, [&](int s, int i, float v) {
        const int k = kt * 16 + i, n = nt * 64 + 8 * s + lane / 4;
        if (k < K && n < N) out[(long)n * K + (perm ? perm[k] : k)] = f2h(v);
    });
}
extern "C" __global__ void gptq_mma_dequant_b4(const uint4* q, const uint4* s, const uint4* z, const int* p, u16* o, int N, int K, int tpg) {
    mma_dequant<4>(q, s, z, p, o, N, K, tpg);
}
extern "C" __global__ void gptq_mma_dequant_b8(const uint4* q, const uint4* s, const uint4* z, const int* p, u16* o, int N, int K, int tpg) {
    mma_dequant<8>(q, s, z, p, o, N, K, tpg);
}
