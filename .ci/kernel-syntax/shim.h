// Host stand-ins for CUDA built-ins so g++ can parse and instantiate kernels/ (asm dropped): a
// syntax and template check before a device call (.ci/kernel-syntax.sh). Not a CUDA emulation.
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __restrict__
#define __launch_bounds__(...)
#define __align__(n)
#define __shared__
struct uint4 { unsigned x, y, z, w; };
struct dim3 { unsigned x, y, z; };
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a,b,c,d}; }
inline unsigned __byte_perm(unsigned, unsigned, unsigned) { return 0; }
inline float __uint_as_float(unsigned) { return 0; }
inline unsigned __float_as_uint(float) { return 0; }
inline void __syncthreads() {}
template <class T> T min(T a, T b) { return a < b ? a : b; }
template <class T> T max(T a, T b) { return a > b ? a : b; }
#define asm(...) ((void)0)
#define fmaf(a,b,c) ((a)*(b)+(c))
struct float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a,b,c,d}; }
struct uint2 { unsigned x, y; };
inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
inline float __shfl_down_sync(unsigned, float v, int) { return v; }
inline void __syncwarp() {}
#define __CUDA_ARCH__ 900
#define __CUDA_ARCH_FEAT_SM90_ALL 1
#define __grid_constant__
