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
	"math"
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

// elemSize is the bytes per element of dtype (0 for an unknown one).
func elemSize(d DType) uint64 {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	case F64:
		return 8
	}
	return 0
}

// Matrix is a row-major matrix in a Go slice: built by F32Matrix, F64Matrix or HalfMatrix, which
// record the slice's size in bytes so that the binding can check every access the C call will make.
type Matrix struct {
	data               unsafe.Pointer
	dtype              DType
	half               bool // from HalfMatrix: dtype must be F16 or BF16
	rows, cols, stride int
	bytes              uint64
}

// F32Matrix describes rows × cols float32 values in x, rows `stride` elements apart.
func F32Matrix(x []float32, rows, cols, stride int) Matrix {
	m := Matrix{dtype: F32, rows: rows, cols: cols, stride: stride, bytes: 4 * uint64(len(x))}
	if len(x) > 0 {
		m.data = unsafe.Pointer(&x[0])
	}
	return m
}

// F64Matrix describes rows × cols float64 values in x, rows `stride` elements apart.
func F64Matrix(x []float64, rows, cols, stride int) Matrix {
	m := Matrix{dtype: F64, rows: rows, cols: cols, stride: stride, bytes: 8 * uint64(len(x))}
	if len(x) > 0 {
		m.data = unsafe.Pointer(&x[0])
	}
	return m
}

// HalfMatrix describes rows × cols fp16 or bf16 values (dtype F16 or BF16) stored as bits in x.
func HalfMatrix(x []uint16, dtype DType, rows, cols, stride int) Matrix {
	m := Matrix{dtype: dtype, half: true, rows: rows, cols: cols, stride: stride, bytes: 2 * uint64(len(x))}
	if len(x) > 0 {
		m.data = unsafe.Pointer(&x[0])
	}
	return m
}

// fits reports an *Error before C would touch bytes past the slice (the C API cannot see Go
// lengths): `rows` rows of `cols` elements, `stride` apart.
func (m Matrix) fits(what string, rows, cols int) error {
	size := elemSize(m.dtype)
	if size == 0 || m.half != (size == 2) {
		return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("%s: dtype %d does not match its slice", what, m.dtype)}
	}
	if rows < 0 || cols < 0 || m.stride < cols {
		return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("%s: %d×%d with row stride %d", what, rows, cols, m.stride)}
	}
	if rows == 0 {
		return nil
	}
	// Elements spanned, in uint64 with an overflow check (each factor is below 2^63).
	r, st, c := uint64(rows-1), uint64(m.stride), uint64(cols)
	if st != 0 && r > (math.MaxUint64-c)/st {
		return &Error{Status: StatusBufferTooSmall, Message: fmt.Sprintf("%s: %d×%d with row stride %d overflows", what, rows, cols, m.stride)}
	}
	span := r*st + c
	if span > m.bytes/size {
		return &Error{Status: StatusBufferTooSmall, Message: fmt.Sprintf("%s: %d×%d with row stride %d needs %d elements, its slice holds %d", what, rows, cols, m.stride, span, m.bytes/size)}
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
	if h.rows != h.cols || h.stride != h.cols {
		return nil, &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("h: %d×%d with row stride %d is not a dense square matrix", h.rows, h.cols, h.stride)}
	}
	if err := h.fits("h", h.rows, h.cols); err != nil {
		return nil, err
	}
	var out *C.gptq_hessian
	if err := call(func() C.gptq_status {
		return C.gptq_hessian_from_dense(h.data, C.gptq_dtype(h.dtype), C.size_t(h.cols), C.uint64_t(nSamples), C.gptq_sample_count(count), &out)
	}); err != nil {
		return nil, err
	}
	return &Hessian{out}, nil
}

// AddBatch accumulates the rows of x (tokens × in_features).
func (h *Hessian) AddBatch(x Matrix) error {
	if err := x.fits("x", x.rows, x.cols); err != nil {
		return err
	}
	return call(func() C.gptq_status {
		return C.gptq_hessian_add_batch(h.h, x.data, C.gptq_dtype(x.dtype), C.size_t(x.rows), C.size_t(x.cols), C.size_t(x.stride))
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
	var p *C.float
	if len(out) > 0 {
		p = (*C.float)(unsafe.Pointer(&out[0]))
	}
	return call(func() C.gptq_status { return C.gptq_hessian_read(h.h, p, C.size_t(len(out))) })
}

// Close frees the Hessian; later calls on it fail with StatusNullPointer.
func (h *Hessian) Close() {
	C.gptq_hessian_free(h.h)
	h.h = nil
}

// QuantConfig is gptq_quant_config (its fields' meanings and ranges are the C header's).
type QuantConfig struct {
	Bits              uint32
	GroupSize         int32 // -1: one group per row
	Sym               bool
	DescAct           bool
	StaticGroups      bool
	ActGroupAware     bool
	DampPercent       float32
	DampAutoIncrement float32
	BlockSize         uint32
	MSE               bool
	MSENorm           float32
	MSEGrid           uint32
	MSEMaxShrink      float32
}

func cbool(b bool) C.int32_t {
	if b {
		return 1
	}
	return 0
}

func (c *QuantConfig) toC() C.gptq_quant_config {
	var o C.gptq_quant_config
	o.struct_size = C.size_t(unsafe.Sizeof(o))
	o.bits = C.uint32_t(c.Bits)
	o.group_size = C.int32_t(c.GroupSize)
	o.sym = cbool(c.Sym)
	o.desc_act = cbool(c.DescAct)
	o.static_groups = cbool(c.StaticGroups)
	o.act_group_aware = cbool(c.ActGroupAware)
	o.damp_percent = C.float(c.DampPercent)
	o.damp_auto_increment = C.float(c.DampAutoIncrement)
	o.block_size = C.uint32_t(c.BlockSize)
	o.mse = cbool(c.MSE)
	o.mse_norm = C.float(c.MSENorm)
	o.mse_grid = C.uint32_t(c.MSEGrid)
	o.mse_max_shrink = C.float(c.MSEMaxShrink)
	return o
}

// DefaultQuantConfig is the library's default configuration (gptq_quant_config_init).
func DefaultQuantConfig() (QuantConfig, error) {
	var c C.gptq_quant_config
	if err := call(func() C.gptq_status { return C.gptq_quant_config_init(&c, C.size_t(unsafe.Sizeof(c))) }); err != nil {
		return QuantConfig{}, err
	}
	return QuantConfig{
		Bits: uint32(c.bits), GroupSize: int32(c.group_size), Sym: c.sym != 0, DescAct: c.desc_act != 0,
		StaticGroups: c.static_groups != 0, ActGroupAware: c.act_group_aware != 0,
		DampPercent: float32(c.damp_percent), DampAutoIncrement: float32(c.damp_auto_increment),
		BlockSize: uint32(c.block_size), MSE: c.mse != 0, MSENorm: float32(c.mse_norm),
		MSEGrid: uint32(c.mse_grid), MSEMaxShrink: float32(c.mse_max_shrink),
	}, nil
}

// QuantReport is gptq_quant_report: what a GPTQ run measured.
type QuantReport struct {
	LossEstimate    float64 // the solver's own estimate
	LossGPTQ        float64 // tr((W − Q) H (W − Q)ᵀ) of the result
	LossRTN         float64 // the same for round-to-nearest
	DampPercentUsed float32
	DiagFloorUsed   bool
	Seconds         float64
}

// LayerProperties is gptq_layer_properties.
type LayerProperties struct {
	Bits        uint32
	GroupSize   int32
	InFeatures  int
	OutFeatures int
	NumGroups   int
	Sym         bool
	ActOrder    bool
	HasBias     bool
	QweightRows int // rows of qweight (in_features · bits / 32)
	QzerosCols  int // columns of qzeros (out_features · bits / 32)
}

func propsOf(p *C.gptq_layer_properties) LayerProperties {
	return LayerProperties{
		Bits: uint32(p.bits), GroupSize: int32(p.group_size), InFeatures: int(p.in_features),
		OutFeatures: int(p.out_features), NumGroups: int(p.num_groups), Sym: p.sym != 0,
		ActOrder: p.act_order != 0, HasBias: p.has_bias != 0, QweightRows: int(p.qweight_rows),
		QzerosCols: int(p.qzeros_cols),
	}
}

// LayerDesc is gptq_layer_desc: what ImportLayer needs to know of the tensors.
type LayerDesc struct {
	Bits        uint32
	GroupSize   int32
	InFeatures  int
	OutFeatures int
	Sym         bool
	Format      Format
}

// Layer is a quantized layer (gptq_layer_*).
type Layer struct {
	l       *C.gptq_layer
	in, out int // its shape, for the length checks of Gemm (the C call takes no lengths)
}

func newLayer(l *C.gptq_layer) (*Layer, error) {
	var p C.gptq_layer_properties
	p.struct_size = C.size_t(unsafe.Sizeof(p))
	if err := call(func() C.gptq_status { return C.gptq_layer_info(l, &p) }); err != nil {
		C.gptq_layer_free(l)
		return nil, err
	}
	return &Layer{l: l, in: int(p.in_features), out: int(p.out_features)}, nil
}

// Quantize runs GPTQ on weight (out_features × in_features) with h.
func Quantize(h *Hessian, weight Matrix, config QuantConfig) (*Layer, QuantReport, error) {
	if err := weight.fits("weight", weight.rows, weight.cols); err != nil {
		return nil, QuantReport{}, err
	}
	c := config.toC()
	var r C.gptq_quant_report
	r.struct_size = C.size_t(unsafe.Sizeof(r))
	var out *C.gptq_layer
	if err := call(func() C.gptq_status {
		return C.gptq_quantize(h.h, weight.data, C.gptq_dtype(weight.dtype), C.size_t(weight.rows), C.size_t(weight.cols), C.size_t(weight.stride), &c, &out, &r)
	}); err != nil {
		return nil, QuantReport{}, err
	}
	l, err := newLayer(out)
	report := QuantReport{
		LossEstimate: float64(r.loss_estimate), LossGPTQ: float64(r.loss_gptq), LossRTN: float64(r.loss_rtn),
		DampPercentUsed: float32(r.damp_percent_used), DiagFloorUsed: r.diag_floor_used != 0, Seconds: float64(r.seconds),
	}
	return l, report, err
}

// QuantizeRTN rounds weight (out_features × in_features) to nearest.
func QuantizeRTN(weight Matrix, config QuantConfig) (*Layer, error) {
	if err := weight.fits("weight", weight.rows, weight.cols); err != nil {
		return nil, err
	}
	var out *C.gptq_layer
	if err := call(func() C.gptq_status {
		c := config.toC()
		return C.gptq_quantize_rtn(weight.data, C.gptq_dtype(weight.dtype), C.size_t(weight.rows), C.size_t(weight.cols), C.size_t(weight.stride), &c, &out)
	}); err != nil {
		return nil, err
	}
	return newLayer(out)
}

// ImportLayer builds a layer from checkpoint tensors; gIdx and bias may be nil.
func ImportLayer(desc LayerDesc, qweight, qzeros []int32, scales []uint16, gIdx []int32, bias []uint16) (*Layer, error) {
	qw, qwn := i32(qweight)
	qz, qzn := i32(qzeros)
	sc, scn := u16p(scales)
	gi, gin := i32(gIdx)
	bi, bin := u16p(bias)
	var out *C.gptq_layer
	if err := call(func() C.gptq_status {
		d := C.gptq_layer_desc{
			struct_size: C.size_t(unsafe.Sizeof(C.gptq_layer_desc{})), bits: C.uint32_t(desc.Bits),
			group_size: C.int32_t(desc.GroupSize), in_features: C.size_t(desc.InFeatures),
			out_features: C.size_t(desc.OutFeatures), sym: cbool(desc.Sym), format: C.gptq_format(desc.Format),
		}
		return C.gptq_layer_import(&d, qw, qwn, qz, qzn, sc, scn, gi, gin, bi, bin, &out)
	}); err != nil {
		return nil, err
	}
	return newLayer(out)
}

// Info describes the layer.
func (l *Layer) Info() (LayerProperties, error) {
	var p C.gptq_layer_properties
	p.struct_size = C.size_t(unsafe.Sizeof(p))
	err := call(func() C.gptq_status { return C.gptq_layer_info(l.l, &p) })
	return propsOf(&p), err
}

// Export writes the checkpoint tensors, each slice sized per Info; bias may be nil (not written).
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
	var p unsafe.Pointer
	if len(out) > 0 {
		p = unsafe.Pointer(&out[0])
	}
	return call(func() C.gptq_status { return C.gptq_layer_dequantize(l.l, C.GPTQ_DTYPE_F32, p, C.size_t(len(out))) })
}

// DequantizeHalf writes the weight as fp16 or bf16 bits (dtype F16 or BF16).
func (l *Layer) DequantizeHalf(dtype DType, out []uint16) error {
	if dtype != F16 && dtype != BF16 {
		return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("DequantizeHalf: dtype %d is not F16 or BF16", dtype)}
	}
	p, n := u16p(out)
	return call(func() C.gptq_status { return C.gptq_layer_dequantize(l.l, C.gptq_dtype(dtype), unsafe.Pointer(p), n) })
}

// Gemm computes C = A · Wᵀ (+ bias) on the CPU for the rows of a (its columns: in_features); c
// receives as many rows of out_features at its row stride.
func (l *Layer) Gemm(a, c Matrix) error {
	if err := a.fits("a", a.rows, l.in); err != nil {
		return err
	}
	if err := c.fits("c", a.rows, l.out); err != nil {
		return err
	}
	return call(func() C.gptq_status {
		return C.gptq_gemm(l.l, a.data, C.gptq_dtype(a.dtype), C.size_t(a.rows), C.size_t(a.stride), c.data, C.gptq_dtype(c.dtype), C.size_t(c.stride))
	})
}

// Close frees the layer; later calls on it fail with StatusNullPointer.
func (l *Layer) Close() {
	C.gptq_layer_free(l.l)
	l.l = nil
}
