// Helpers shared by the kernel families in kernels/: compiled in front of them as one NVRTC program
// (src/cuda/compile.rs), with no CUDA headers, so half/bfloat16 conversions are PTX or bit tricks.

typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float b2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
// One instruction from sm_80 (every card the kernels support: their mma needs it), NaN kept.
__device__ __forceinline__ u16 f2b(float f) {
    u16 b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
}
template <bool BF16> __device__ __forceinline__ float load_act(u16 v) { return BF16 ? b2f(v) : h2f(v); }
template <bool BF16> __device__ __forceinline__ u16 store_act(float v) { return BF16 ? f2b(v) : f2h(v); }

// Programmatic dependent launch (sm_90+; no-ops before, and when a kernel was launched without it):
// a kernel the host launched with programmatic stream serialization may start while the previous
// kernel on the stream finishes. It must call pdl_wait() before it reads anything that kernel may
// write (A, the workspace) and before it writes anything (C, the workspace); weights and scales are
// the layer's own, immutable, so they may be prefetched before. pdl_launch_dependents() lets the
// next such kernel start early (it still waits for this one's completion in its own pdl_wait()).
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// A load of the layer's own data meant to be in flight before pdl_wait(): ptxas moves the
// ld.global.nc that a const __restrict__ load becomes past griddepcontrol.wait (it did so with the
// act-order gather's perm load, docs/perf.md version 40); a plain ld.global stays in place.
__device__ __forceinline__ int ld_before_wait(const int* p) {
    int v;
    asm volatile("ld.global.b32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}

// Packed 16-bit pair math (f16x2 or bf16x2). bf16 uses FMAs only: fma.rn.bf16x2 exists from sm_80,
// add/mul only from sm_90.
template <bool BF> __device__ __forceinline__ u32 pfma(u32 a, u32 b, u32 c) {
    u32 r;
    if (BF) asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    else asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
template <bool BF> __device__ __forceinline__ u32 pdup(float f) {
    const u32 h = BF ? f2b(f) : f2h(f);
    return h | (h << 16);
}
template <bool BF> __device__ __forceinline__ u32 code_pair(u32 q) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(q), "r"(0x000F000Fu), "r"(BF ? 0x43004300u : 0x64006400u));
    return r;
}

