package gptq

/*
#include <stdint.h>
#include "gptq.h"
// Device addresses and streams are integers on the Go side (not Go memory).
static inline void* gptq_go_dev_ptr(uintptr_t p) { return (void*)p; }
static inline struct CUstream_st* gptq_go_stream(uintptr_t p) { return (struct CUstream_st*)p; }
*/
import "C"

// CudaDeviceCount is the number of CUDA devices (StatusNoDevice without a driver).
func CudaDeviceCount() (int, error) {
	var n C.int32_t
	err := call(func() C.gptq_status { return C.gptq_cuda_device_count(&n) })
	return int(n), err
}

// CudaInit prepares a device (compiles or loads the kernels).
func CudaInit(device int) error {
	return call(func() C.gptq_status { return C.gptq_cuda_init(C.int32_t(device)) })
}

// CudaLayer is a layer prepared on one device (gptq_cuda_layer_*). Its GEMM takes device pointers
// and the caller's CUDA stream as integers (CUdeviceptr, CUstream), as the C API does.
type CudaLayer struct{ l *C.gptq_cuda_layer }

// NewCudaLayer uploads l to device.
func NewCudaLayer(l *Layer, device int) (*CudaLayer, error) {
	var out *C.gptq_cuda_layer
	if err := call(func() C.gptq_status { return C.gptq_cuda_layer_new(l.l, C.int32_t(device), &out) }); err != nil {
		return nil, err
	}
	return &CudaLayer{out}, nil
}

// WorkspaceSize is the workspace in bytes that calls of up to m rows need.
func (l *CudaLayer) WorkspaceSize(m int) (int, error) {
	var b C.size_t
	err := call(func() C.gptq_status { return C.gptq_cuda_workspace_size(l.l, C.size_t(m), &b) })
	return int(b), err
}

// Gemm enqueues C = A · Wᵀ (+ bias) on stream; a, c and workspace are device addresses.
func (l *CudaLayer) Gemm(a uintptr, dtype DType, m, lda int, c uintptr, ldc int, workspace uintptr, workspaceBytes int, stream uintptr) error {
	return call(func() C.gptq_status {
		return C.gptq_cuda_gemm(l.l, C.gptq_go_dev_ptr(C.uintptr_t(a)), C.gptq_dtype(dtype), C.size_t(m), C.size_t(lda),
			C.gptq_go_dev_ptr(C.uintptr_t(c)), C.size_t(ldc), C.gptq_go_dev_ptr(C.uintptr_t(workspace)),
			C.size_t(workspaceBytes), C.gptq_go_stream(C.uintptr_t(stream)))
	})
}

// Dequantize enqueues the fp16 weight [out_features, in_features] into device memory out.
func (l *CudaLayer) Dequantize(out uintptr, stream uintptr) error {
	return call(func() C.gptq_status {
		return C.gptq_cuda_dequantize(l.l, C.gptq_go_dev_ptr(C.uintptr_t(out)), C.gptq_go_stream(C.uintptr_t(stream)))
	})
}

// Close frees the device layer.
func (l *CudaLayer) Close() {
	C.gptq_cuda_layer_free(l.l)
	l.l = nil
}
