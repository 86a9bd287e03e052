// Package gptq is the Go binding of libgptq: the C API of include/gptq.h in Go idiom.
//
// Every handle (Hessian, Layer, Checkpoint, CheckpointWriter, CudaLayer) has a Close method that
// frees it (idempotent); every failing call returns an *Error carrying the C status code and the
// library's message. Nothing else is added: sizes and shapes are checked by the library, and the
// rules on ownership and thread safety are the C header's, function by function. Buffers are Go
// slices whose element type fixes the dtype where the C API takes one (float32, float64, or uint16
// for fp16/bf16 bits with an explicit DType).
//
// Build: cgo needs include/ (found relative to this package) and libgptq.so on the linker and
// loader paths, e.g. CGO_LDFLAGS="-L/path/to/target/release -Wl,-rpath,/path/to/target/release".
package gptq

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -lgptq
#include <stdlib.h>
#include "gptq.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Status is a C status code (GPTQ_STATUS_*).
type Status int32

const (
	StatusOK                  Status = C.GPTQ_STATUS_OK
	StatusNullPointer         Status = C.GPTQ_STATUS_NULL_POINTER
	StatusInvalidArgument     Status = C.GPTQ_STATUS_INVALID_ARGUMENT
	StatusShapeMismatch       Status = C.GPTQ_STATUS_SHAPE_MISMATCH
	StatusUnsupported         Status = C.GPTQ_STATUS_UNSUPPORTED
	StatusInvalidEnum         Status = C.GPTQ_STATUS_INVALID_ENUM
	StatusStructSize          Status = C.GPTQ_STATUS_STRUCT_SIZE
	StatusNonFinite           Status = C.GPTQ_STATUS_NON_FINITE
	StatusNotPositiveDefinite Status = C.GPTQ_STATUS_NOT_POSITIVE_DEFINITE
	StatusInvalidFormat       Status = C.GPTQ_STATUS_INVALID_FORMAT
	StatusBufferTooSmall      Status = C.GPTQ_STATUS_BUFFER_TOO_SMALL
	StatusMisaligned          Status = C.GPTQ_STATUS_MISALIGNED
	StatusPoisoned            Status = C.GPTQ_STATUS_POISONED
	StatusOutOfMemory         Status = C.GPTQ_STATUS_OUT_OF_MEMORY
	StatusIO                  Status = C.GPTQ_STATUS_IO
	StatusNoDevice            Status = C.GPTQ_STATUS_NO_DEVICE
	StatusCuda                Status = C.GPTQ_STATUS_CUDA
	StatusPanic               Status = C.GPTQ_STATUS_PANIC
)

// String is the library's name for the status.
func (s Status) String() string { return C.GoString(C.gptq_status_string(C.gptq_status(s))) }

// Error is a failed call: the status code and the library's message.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Status, e.Message) }

// call runs f (one C call) and turns a failed status into an *Error. The message is thread-local
// in the library, so the goroutine stays on one OS thread from the call to the message read.
func call(f func() C.gptq_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s := f()
	if s == C.GPTQ_STATUS_OK {
		return nil
	}
	return &Error{Status: Status(s), Message: C.GoString(C.gptq_last_error_message())}
}

// DType is an element type (GPTQ_DTYPE_*).
type DType uint32

const (
	F32  DType = C.GPTQ_DTYPE_F32
	F16  DType = C.GPTQ_DTYPE_F16
	BF16 DType = C.GPTQ_DTYPE_BF16
	F64  DType = C.GPTQ_DTYPE_F64
)

// Format is a checkpoint format (GPTQ_FORMAT_*).
type Format uint32

const (
	FormatV1 Format = C.GPTQ_FORMAT_V1
	FormatV2 Format = C.GPTQ_FORMAT_V2
)

// SampleCount says how a Hessian counts samples (GPTQ_COUNT_*).
type SampleCount uint32

const (
	CountRows    SampleCount = C.GPTQ_COUNT_ROWS
	CountBatches SampleCount = C.GPTQ_COUNT_BATCHES
)

// VersionNumber is major·10000 + minor·100 + patch of the loaded library.
func VersionNumber() uint32 { return uint32(C.gptq_version_number()) }

// VersionString is the loaded library's version.
func VersionString() string { return C.GoString(C.gptq_version_string()) }

// SetNumThreads sizes the library's CPU pool.
func SetNumThreads(n int) error {
	return call(func() C.gptq_status { return C.gptq_set_num_threads(C.size_t(n)) })
}

// NumThreads is the size of the library's CPU pool.
func NumThreads() int { return int(C.gptq_get_num_threads()) }

// A buffer of one of the element types the C API takes: its pointer, length and dtype.
func f32(s []float32) (unsafe.Pointer, int) {
	if len(s) == 0 {
		return nil, 0
	}
	return unsafe.Pointer(&s[0]), len(s)
}

func u16(s []uint16) (unsafe.Pointer, int) {
	if len(s) == 0 {
		return nil, 0
	}
	return unsafe.Pointer(&s[0]), len(s)
}

func i32(s []int32) (*C.int32_t, C.size_t) {
	if len(s) == 0 {
		return nil, 0
	}
	return (*C.int32_t)(unsafe.Pointer(&s[0])), C.size_t(len(s))
}

func u16p(s []uint16) (*C.uint16_t, C.size_t) {
	if len(s) == 0 {
		return nil, 0
	}
	return (*C.uint16_t)(unsafe.Pointer(&s[0])), C.size_t(len(s))
}

// Matrix is a row-major matrix of float32, float64 or 16-bit (fp16/bf16 bits) values: the data,
// its dtype, and rows × cols with a row stride in elements.
type Matrix struct {
	Data      unsafe.Pointer
	DType     DType
	Rows      int
	Cols      int
	RowStride int
	len       int
}

// F32Matrix describes rows × cols float32 values in x with row stride `stride`.
func F32Matrix(x []float32, rows, cols, stride int) Matrix {
	p, n := f32(x)
	return Matrix{Data: p, DType: F32, Rows: rows, Cols: cols, RowStride: stride, len: n}
}

// F64Matrix describes rows × cols float64 values in x with row stride `stride`.
func F64Matrix(x []float64, rows, cols, stride int) Matrix {
	var p unsafe.Pointer
	if len(x) > 0 {
		p = unsafe.Pointer(&x[0])
	}
	return Matrix{Data: p, DType: F64, Rows: rows, Cols: cols, RowStride: stride, len: len(x)}
}

// HalfMatrix describes rows × cols fp16 or bf16 values (dtype F16 or BF16) stored as bits in x.
func HalfMatrix(x []uint16, dtype DType, rows, cols, stride int) Matrix {
	p, n := u16(x)
	return Matrix{Data: p, DType: dtype, Rows: rows, Cols: cols, RowStride: stride, len: n}
}

// fits reports an *Error before C would read past the slice (the C API cannot see Go lengths).
func (m Matrix) fits(what string) error {
	if m.Rows < 0 || m.Cols < 0 || m.RowStride < m.Cols {
		return &Error{Status: StatusShapeMismatch, Message: fmt.Sprintf("%s: %d×%d with row stride %d", what, m.Rows, m.Cols, m.RowStride)}
	}
	if m.Rows > 0 && (m.Rows-1)*m.RowStride+m.Cols > m.len {
		return &Error{Status: StatusBufferTooSmall, Message: fmt.Sprintf("%s: %d×%d with row stride %d needs more than its %d elements", what, m.Rows, m.Cols, m.RowStride, m.len)}
	}
	return nil
}

// Hessian is the Hessian of a layer's inputs (gptq_hessian_*).
type Hessian struct{ h *C.gptq_hessian }

// NewHessian starts an empty Hessian of in × in.
func NewHessian(inFeatures int, count SampleCount) (*Hessian, error) {
	var h *C.gptq_hessian
	if err := call(func() C.gptq_status { return C.gptq_hessian_new(C.size_t(inFeatures), C.gptq_sample_count(count), &h) }); err != nil {
		return nil, err
	}
	return &Hessian{h}, nil
}

// HessianFromDense builds a Hessian from a dense in × in matrix h (F32 or F64, row stride in) over
// nSamples.
func HessianFromDense(h Matrix, nSamples uint64, count SampleCount) (*Hessian, error) {
	if err := h.fits("h"); err != nil {
		return nil, err
	}
	if h.Rows != h.Cols || h.RowStride != h.Cols {
		return nil, &Error{Status: StatusShapeMismatch, Message: fmt.Sprintf("h: %d×%d with row stride %d is not a dense square matrix", h.Rows, h.Cols, h.RowStride)}
	}
	var out *C.gptq_hessian
	if err := call(func() C.gptq_status {
		return C.gptq_hessian_from_dense(h.Data, C.gptq_dtype(h.DType), C.size_t(h.Cols), C.uint64_t(nSamples), C.gptq_sample_count(count), &out)
	}); err != nil {
		return nil, err
	}
	return &Hessian{out}, nil
}

// AddBatch accumulates the rows of x (tokens × in_features).
func (h *Hessian) AddBatch(x Matrix) error {
	if err := x.fits("x"); err != nil {
		return err
	}
	return call(func() C.gptq_status {
		return C.gptq_hessian_add_batch(h.h, x.Data, C.gptq_dtype(x.DType), C.size_t(x.Rows), C.size_t(x.Cols), C.size_t(x.RowStride))
	})
}

// Merge adds src's samples into h.
func (h *Hessian) Merge(src *Hessian) error {
	return call(func() C.gptq_status { return C.gptq_hessian_merge(h.h, src.h) })
}

// Info reports in_features and the samples accumulated so far.
func (h *Hessian) Info() (inFeatures int, nSamples uint64, err error) {
	var n C.size_t
	var s C.uint64_t
	err = call(func() C.gptq_status { return C.gptq_hessian_info(h.h, &n, &s) })
	return int(n), uint64(s), err
}

// Read copies the Hessian (row-major, in_features² values) into out.
func (h *Hessian) Read(out []float32) error {
	p, n := f32(out)
	return call(func() C.gptq_status { return C.gptq_hessian_read(h.h, (*C.float)(p), C.size_t(n)) })
}

// Close frees the Hessian; later calls on it fail with StatusNullPointer.
func (h *Hessian) Close() {
	C.gptq_hessian_free(h.h)
	h.h = nil
}

// QuantConfig is gptq_quant_config.
type QuantConfig = C.gptq_quant_config

// DefaultQuantConfig is the library's default configuration (gptq_quant_config_init).
func DefaultQuantConfig() (QuantConfig, error) {
	var c QuantConfig
	err := call(func() C.gptq_status { return C.gptq_quant_config_init(&c, C.size_t(unsafe.Sizeof(c))) })
	return c, err
}

// QuantReport is gptq_quant_report.
type QuantReport = C.gptq_quant_report

// LayerProperties is gptq_layer_properties.
type LayerProperties = C.gptq_layer_properties

// LayerDesc is gptq_layer_desc; NewLayerDesc fills it.
type LayerDesc = C.gptq_layer_desc

// NewLayerDesc describes a layer for ImportLayer.
func NewLayerDesc(bits uint32, groupSize int32, inFeatures, outFeatures int, sym bool, format Format) LayerDesc {
	var d LayerDesc
	d.struct_size = C.size_t(unsafe.Sizeof(d))
	d.bits = C.uint32_t(bits)
	d.group_size = C.int32_t(groupSize)
	d.in_features = C.size_t(inFeatures)
	d.out_features = C.size_t(outFeatures)
	if sym {
		d.sym = 1
	}
	d.format = C.gptq_format(format)
	return d
}

// Layer is a quantized layer (gptq_layer_*).
type Layer struct {
	l       *C.gptq_layer
	in, out int // its shape, for the length checks of Gemm (the C call takes no lengths)
}

func newLayer(l *C.gptq_layer) (*Layer, error) {
	var p LayerProperties
	p.struct_size = C.size_t(unsafe.Sizeof(p))
	if err := call(func() C.gptq_status { return C.gptq_layer_info(l, &p) }); err != nil {
		C.gptq_layer_free(l)
		return nil, err
	}
	return &Layer{l: l, in: int(p.in_features), out: int(p.out_features)}, nil
}

// Quantize runs GPTQ on weight (out_features × in_features) with h; report may be nil.
func Quantize(h *Hessian, weight Matrix, config *QuantConfig, report *QuantReport) (*Layer, error) {
	if err := weight.fits("weight"); err != nil {
		return nil, err
	}
	if report != nil {
		report.struct_size = C.size_t(unsafe.Sizeof(*report))
	}
	var out *C.gptq_layer
	if err := call(func() C.gptq_status {
		return C.gptq_quantize(h.h, weight.Data, C.gptq_dtype(weight.DType), C.size_t(weight.Rows), C.size_t(weight.Cols), C.size_t(weight.RowStride), config, &out, report)
	}); err != nil {
		return nil, err
	}
	return newLayer(out)
}

// QuantizeRTN rounds weight (out_features × in_features) to nearest.
func QuantizeRTN(weight Matrix, config *QuantConfig) (*Layer, error) {
	if err := weight.fits("weight"); err != nil {
		return nil, err
	}
	var out *C.gptq_layer
	if err := call(func() C.gptq_status {
		return C.gptq_quantize_rtn(weight.Data, C.gptq_dtype(weight.DType), C.size_t(weight.Rows), C.size_t(weight.Cols), C.size_t(weight.RowStride), config, &out)
	}); err != nil {
		return nil, err
	}
	return newLayer(out)
}

// ImportLayer builds a layer from checkpoint tensors; gIdx and bias may be nil.
func ImportLayer(desc *LayerDesc, qweight, qzeros []int32, scales []uint16, gIdx []int32, bias []uint16) (*Layer, error) {
	qw, qwn := i32(qweight)
	qz, qzn := i32(qzeros)
	sc, scn := u16p(scales)
	gi, gin := i32(gIdx)
	bi, bin := u16p(bias)
	var out *C.gptq_layer
	if err := call(func() C.gptq_status {
		return C.gptq_layer_import(desc, qw, qwn, qz, qzn, sc, scn, gi, gin, bi, bin, &out)
	}); err != nil {
		return nil, err
	}
	return newLayer(out)
}

// Info describes the layer.
func (l *Layer) Info() (LayerProperties, error) {
	var p LayerProperties
	p.struct_size = C.size_t(unsafe.Sizeof(p))
	err := call(func() C.gptq_status { return C.gptq_layer_info(l.l, &p) })
	return p, err
}

// Export writes the checkpoint tensors; gIdx and bias may be nil.
func (l *Layer) Export(format Format, qweight, qzeros []int32, scales []uint16, gIdx []int32, bias []uint16) error {
	qw, qwn := i32(qweight)
	qz, qzn := i32(qzeros)
	sc, scn := u16p(scales)
	gi, gin := i32(gIdx)
	bi, bin := u16p(bias)
	return call(func() C.gptq_status {
		return C.gptq_layer_export(l.l, C.gptq_format(format), qw, qwn, qz, qzn, sc, scn, gi, gin, bi, bin)
	})
}

// Dequantize writes the weight (out_features × in_features, row-major) as float32.
func (l *Layer) Dequantize(out []float32) error {
	p, n := f32(out)
	return call(func() C.gptq_status { return C.gptq_layer_dequantize(l.l, C.GPTQ_DTYPE_F32, p, C.size_t(n)) })
}

// DequantizeHalf writes the weight as fp16 or bf16 bits (dtype F16 or BF16).
func (l *Layer) DequantizeHalf(dtype DType, out []uint16) error {
	p, n := u16(out)
	return call(func() C.gptq_status { return C.gptq_layer_dequantize(l.l, C.gptq_dtype(dtype), p, C.size_t(n)) })
}

// Gemm computes C = A · Wᵀ (+ bias) on the CPU for the a.Rows rows of a (a.Cols = in_features);
// c must hold a.Rows rows of out_features at its row stride.
func (l *Layer) Gemm(a, c Matrix) error {
	if err := a.fits("a"); err != nil {
		return err
	}
	if err := c.fits("c"); err != nil {
		return err
	}
	if l.l != nil && (a.Cols != l.in || c.Rows < a.Rows || c.Cols < l.out) {
		return &Error{Status: StatusShapeMismatch, Message: fmt.Sprintf("a %d×%d, c %d×%d for a layer of %d inputs and %d outputs", a.Rows, a.Cols, c.Rows, c.Cols, l.in, l.out)}
	}
	return call(func() C.gptq_status {
		return C.gptq_gemm(l.l, a.Data, C.gptq_dtype(a.DType), C.size_t(a.Rows), C.size_t(a.RowStride), c.Data, C.gptq_dtype(c.DType), C.size_t(c.RowStride))
	})
}

// Close frees the layer; later calls on it fail with StatusNullPointer.
func (l *Layer) Close() {
	C.gptq_layer_free(l.l)
	l.l = nil
}
