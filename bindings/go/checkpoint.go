package gptq

/*
#include <stdlib.h>
#include "gptq.h"
*/
import "C"

import "unsafe"

// Checkpoint is a GPTQ checkpoint opened for reading (gptq_checkpoint_*).
type Checkpoint struct{ c *C.gptq_checkpoint }

// OpenCheckpoint opens a model directory or a single .safetensors file.
func OpenCheckpoint(path string) (*Checkpoint, error) {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	var c *C.gptq_checkpoint
	if err := call(func() C.gptq_status { return C.gptq_checkpoint_open(cp, &c) }); err != nil {
		return nil, err
	}
	return &Checkpoint{c}, nil
}

// NumLayers is the number of quantized layers.
func (c *Checkpoint) NumLayers() (int, error) {
	var n C.size_t
	err := call(func() C.gptq_status { return C.gptq_checkpoint_num_layers(c.c, &n) })
	return int(n), err
}

// LayerName is the name of quantized layer index (sorted by name).
func (c *Checkpoint) LayerName(index int) (string, error) {
	var name *C.char
	if err := call(func() C.gptq_status { return C.gptq_checkpoint_layer_name(c.c, C.size_t(index), &name) }); err != nil {
		return "", err
	}
	return C.GoString(name), nil
}

// LayerInfo describes the quantized layer `name`.
func (c *Checkpoint) LayerInfo(name string) (LayerProperties, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var p C.gptq_layer_properties
	p.struct_size = C.size_t(unsafe.Sizeof(p))
	err := call(func() C.gptq_status { return C.gptq_checkpoint_layer_info(c.c, cn, &p) })
	return propsOf(&p), err
}

// Layer reads the quantized layer `name`; the caller closes it.
func (c *Checkpoint) Layer(name string) (*Layer, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var out *C.gptq_layer
	if err := call(func() C.gptq_status { return C.gptq_checkpoint_get_layer(c.c, cn, &out) }); err != nil {
		return nil, err
	}
	return newLayer(out)
}

// NumTensors is the number of pass-through tensors.
func (c *Checkpoint) NumTensors() (int, error) {
	var n C.size_t
	err := call(func() C.gptq_status { return C.gptq_checkpoint_num_tensors(c.c, &n) })
	return int(n), err
}

// Tensor is a pass-through tensor; Data is a copy of its bytes.
type Tensor struct {
	Name  string
	DType string // safetensors dtype name, e.g. "F16"
	Shape []int
	Data  []byte
}

func tensorOf(v *C.gptq_tensor_view) Tensor {
	t := Tensor{Name: C.GoString(v.name), DType: C.GoString(v.dtype)}
	if v.ndim > 0 {
		for _, d := range unsafe.Slice(v.shape, int(v.ndim)) {
			t.Shape = append(t.Shape, int(d))
		}
	}
	if v.nbytes > 0 {
		t.Data = C.GoBytes(v.data, C.int(v.nbytes))
	}
	return t
}

// Tensor returns pass-through tensor index (sorted by name).
func (c *Checkpoint) Tensor(index int) (Tensor, error) {
	var v C.gptq_tensor_view
	v.struct_size = C.size_t(unsafe.Sizeof(v))
	if err := call(func() C.gptq_status { return C.gptq_checkpoint_tensor(c.c, C.size_t(index), &v) }); err != nil {
		return Tensor{}, err
	}
	return tensorOf(&v), nil
}

// FindTensor returns the pass-through tensor `name`.
func (c *Checkpoint) FindTensor(name string) (Tensor, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var v C.gptq_tensor_view
	v.struct_size = C.size_t(unsafe.Sizeof(v))
	if err := call(func() C.gptq_status { return C.gptq_checkpoint_find_tensor(c.c, cn, &v) }); err != nil {
		return Tensor{}, err
	}
	return tensorOf(&v), nil
}

// Config is the quantization config as compact JSON.
func (c *Checkpoint) Config() (string, error) {
	var json *C.char
	if err := call(func() C.gptq_status { return C.gptq_checkpoint_config(c.c, &json) }); err != nil {
		return "", err
	}
	return C.GoString(json), nil
}

// Close releases the checkpoint.
func (c *Checkpoint) Close() {
	C.gptq_checkpoint_close(c.c)
	c.c = nil
}

// WriteOptions is gptq_checkpoint_write_options.
type WriteOptions struct {
	Format           Format // FormatV1 (what every engine reads) or FormatV2
	MaxShardSize     uint64 // largest shard in bytes; 0 writes one model.safetensors
	SourceConfigJSON string // the model's config.json to copy; "" keeps an existing one
}

// CheckpointWriter writes a checkpoint (gptq_checkpoint_writer_*). Finish commits it; Close
// without Finish aborts, leaving the directory as it was.
type CheckpointWriter struct{ w *C.gptq_checkpoint_writer }

// NewCheckpointWriter starts a checkpoint in dir; options may be nil (defaults).
func NewCheckpointWriter(dir, quantConfigJSON string, options *WriteOptions) (*CheckpointWriter, error) {
	cd, cj := C.CString(dir), C.CString(quantConfigJSON)
	defer C.free(unsafe.Pointer(cd))
	defer C.free(unsafe.Pointer(cj))
	var o *C.gptq_checkpoint_write_options
	if options != nil {
		// C memory: the struct holds a pointer (cgo passes no Go pointers to Go pointers).
		o = (*C.gptq_checkpoint_write_options)(C.calloc(1, C.size_t(unsafe.Sizeof(*o))))
		defer C.free(unsafe.Pointer(o))
		o.struct_size = C.size_t(unsafe.Sizeof(*o))
		o.format = C.gptq_format(options.Format)
		o.max_shard_size = C.uint64_t(options.MaxShardSize)
		if options.SourceConfigJSON != "" {
			o.source_config_json = C.CString(options.SourceConfigJSON)
			defer C.free(unsafe.Pointer(o.source_config_json))
		}
	}
	var w *C.gptq_checkpoint_writer
	if err := call(func() C.gptq_status { return C.gptq_checkpoint_writer_new(cd, cj, o, &w) }); err != nil {
		return nil, err
	}
	return &CheckpointWriter{w}, nil
}

// AddLayer adds quantized layer `name`.
func (w *CheckpointWriter) AddLayer(name string, l *Layer) error {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	return call(func() C.gptq_status { return C.gptq_checkpoint_writer_add_layer(w.w, cn, l.l) })
}

// AddTensor adds a pass-through tensor of safetensors dtype `dtype` (e.g. "F32").
func (w *CheckpointWriter) AddTensor(name, dtype string, shape []int, data []byte) error {
	cn, cd := C.CString(name), C.CString(dtype)
	defer C.free(unsafe.Pointer(cn))
	defer C.free(unsafe.Pointer(cd))
	// C memory for the shape: cgo forbids Go pointers to Go pointers, and size_t may differ from int.
	dims := (*C.size_t)(C.malloc(C.size_t(len(shape)+1) * C.size_t(unsafe.Sizeof(C.size_t(0)))))
	defer C.free(unsafe.Pointer(dims))
	ds := unsafe.Slice(dims, len(shape)+1)
	for i, d := range shape {
		ds[i] = C.size_t(d)
	}
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	return call(func() C.gptq_status {
		return C.gptq_checkpoint_writer_add_tensor(w.w, cn, cd, dims, C.size_t(len(shape)), p, C.size_t(len(data)))
	})
}

// Finish commits the files; the writer is spent whether or not it fails.
func (w *CheckpointWriter) Finish() error {
	h := w.w
	w.w = nil
	return call(func() C.gptq_status { return C.gptq_checkpoint_writer_finish(h) })
}

// Close aborts an unfinished writer (no-op after Finish).
func (w *CheckpointWriter) Close() {
	C.gptq_checkpoint_writer_abort(w.w)
	w.w = nil
}
