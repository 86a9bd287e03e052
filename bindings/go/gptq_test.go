package gptq_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	. "libgptq/bindings/go"
)

type rng uint64

func (r *rng) uniform() float32 { // in [-1, 1)
	*r = *r*6364136223846793005 + 1442695040888963407
	return float32((uint64(*r)>>40)&0xFFFFFF)/8388608.0 - 1
}

// statusOf is the Status of a failed call (StatusOK for nil).
func statusOf(t *testing.T, err error) Status {
	t.Helper()
	if err == nil {
		return StatusOK
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("not a *gptq.Error: %v", err)
	}
	if e.Message == "" {
		t.Fatalf("error without a message: %v", err)
	}
	return e.Status
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

const out, in, tokens, m = 96, 256, 512, 3

func quantized(t *testing.T) (*Layer, []float32, []float32) {
	t.Helper()
	r := rng(7)
	w, x := make([]float32, out*in), make([]float32, tokens*in)
	for i := range w {
		w[i] = 0.05 * r.uniform()
	}
	for i := range x {
		x[i] = r.uniform()
	}
	h, err := NewHessian(in, CountRows)
	must(t, err)
	defer h.Close()
	must(t, h.AddBatch(F32Matrix(x, tokens, in, in)))
	cfg, err := DefaultQuantConfig()
	must(t, err)
	q, report, err := Quantize(h, F32Matrix(w, out, in, in), cfg)
	must(t, err)
	if !(report.LossGPTQ > 0 && report.LossGPTQ < report.LossRTN) {
		t.Fatalf("GPTQ loss %v not below RTN's %v", report.LossGPTQ, report.LossRTN)
	}
	return q, w, x
}

func TestVersionAndThreads(t *testing.T) {
	if VersionNumber() == 0 || VersionString() == "" {
		t.Fatal("no version")
	}
	must(t, SetNumThreads(2))
	if NumThreads() != 2 {
		t.Fatalf("threads %d", NumThreads())
	}
	if StatusShapeMismatch.String() == "" {
		t.Fatal("no status name")
	}
}

func TestHessian(t *testing.T) {
	r := rng(3)
	x := make([]float32, tokens*in)
	for i := range x {
		x[i] = r.uniform()
	}
	h, err := NewHessian(in, CountRows)
	must(t, err)
	defer h.Close()
	must(t, h.AddBatch(F32Matrix(x, tokens, in, in)))
	h1, _ := NewHessian(in, CountRows)
	h2, _ := NewHessian(in, CountRows)
	defer h1.Close()
	defer h2.Close()
	must(t, h1.AddBatch(F32Matrix(x[:tokens/2*in], tokens/2, in, in)))
	must(t, h2.AddBatch(F32Matrix(x[tokens/2*in:], tokens/2, in, in)))
	must(t, h1.Merge(h2))
	a, b := make([]float32, in*in), make([]float32, in*in)
	must(t, h.Read(a))
	must(t, h1.Read(b))
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-4*(1+math.Abs(float64(a[i]))) {
			t.Fatalf("merged Hessian differs at %d: %v vs %v", i, a[i], b[i])
		}
	}
	n, s, err := h.Info()
	must(t, err)
	if n != in || s != tokens {
		t.Fatalf("info %d %d", n, s)
	}
	hd, err := HessianFromDense(F32Matrix(a, in, in, in), tokens, CountRows)
	must(t, err)
	hd.Close()
	// The library's shape error, and the binding's own length check (C cannot see Go lengths).
	if s := statusOf(t, h.AddBatch(F32Matrix(x, 4, in+1, in+1))); s != StatusShapeMismatch {
		t.Fatalf("wrong width: %v", s)
	}
	if s := statusOf(t, h.AddBatch(F32Matrix(x[:10], 4, in, in))); s != StatusBufferTooSmall {
		t.Fatalf("short slice: %v", s)
	}
	// 16-bit values with a 32-bit dtype: refused before C reads twice the slice.
	if s := statusOf(t, h.AddBatch(HalfMatrix(make([]uint16, in), F32, 1, in, in))); s != StatusInvalidArgument {
		t.Fatalf("dtype of another size: %v", s)
	}
	if _, got, _ := h.Info(); got != tokens {
		t.Fatalf("a failed call changed the Hessian: %d samples", got)
	}
	// A closed handle is a NULL handle to the library.
	h2.Close()
	if s := statusOf(t, h2.AddBatch(F32Matrix(x, 1, in, in))); s != StatusNullPointer {
		t.Fatalf("closed handle: %v", s)
	}
}

func TestQuantizeExportImportGemm(t *testing.T) {
	q, w, x := quantized(t)
	defer q.Close()
	cfg, _ := DefaultQuantConfig()
	if cfg.Bits != 4 || cfg.GroupSize != 128 || !cfg.Sym {
		t.Fatalf("defaults %+v", cfg)
	}
	rtn, err := QuantizeRTN(F32Matrix(w, out, in, in), cfg)
	must(t, err)
	rtn.Close()
	cfg.Bits = 5
	_, err = QuantizeRTN(F32Matrix(w, out, in, in), cfg)
	if statusOf(t, err) == StatusOK || !strings.Contains(err.Error(), "bits") {
		t.Fatalf("bits 5: %v", err)
	}

	p, err := q.Info()
	must(t, err)
	if p.Bits != 4 || p.InFeatures != in || p.OutFeatures != out || p.NumGroups != in/128 {
		t.Fatalf("info %+v", p)
	}
	qweight := make([]int32, p.QweightRows*out)
	qzeros := make([]int32, p.NumGroups*p.QzerosCols)
	scales := make([]uint16, p.NumGroups*out)
	gIdx := make([]int32, in)
	must(t, q.Export(FormatV1, qweight, qzeros, scales, gIdx, nil))
	desc := LayerDesc{Bits: 4, GroupSize: 128, InFeatures: in, OutFeatures: out, Sym: true, Format: FormatV1}
	back, err := ImportLayer(desc, qweight, qzeros, scales, gIdx, nil)
	must(t, err)
	defer back.Close()
	dq, dqBack := make([]float32, out*in), make([]float32, out*in)
	must(t, q.Dequantize(dq))
	must(t, back.Dequantize(dqBack))
	if !reflect.DeepEqual(dq, dqBack) {
		t.Fatal("export/import changed the layer")
	}
	if s := statusOf(t, q.Dequantize(dq[:len(dq)-1])); s != StatusBufferTooSmall {
		t.Fatalf("short output: %v", s)
	}
	half := make([]uint16, out*in)
	must(t, q.DequantizeHalf(F16, half))
	for i, h := range half { // fp16 of the same values: within half a unit in the last place
		if d := math.Abs(float64(f16(h) - dq[i])); d > math.Abs(float64(dq[i]))/1024+1e-7 {
			t.Fatalf("fp16 dequantized [%d] = %v, f32 %v", i, f16(h), dq[i])
		}
	}
	if s := statusOf(t, q.DequantizeHalf(F32, half)); s != StatusInvalidArgument {
		t.Fatalf("DequantizeHalf with F32: %v", s)
	}

	c := make([]float32, m*out)
	for i := range c {
		c[i] = float32(math.NaN())
	}
	must(t, q.Gemm(F32Matrix(x, m, in, in), F32Matrix(c, m, out, out)))
	for r := 0; r < m; r++ {
		for n := 0; n < out; n++ {
			ref := 0.0
			for k := 0; k < in; k++ {
				ref += float64(x[r*in+k]) * float64(dq[n*in+k])
			}
			if math.Abs(float64(c[r*out+n])-ref) > 1e-4*(1+math.Abs(ref)) {
				t.Fatalf("gemm [%d,%d] = %v, want %v", r, n, c[r*out+n], ref)
			}
		}
	}
	if s := statusOf(t, q.Gemm(F32Matrix(x, m, in, in), F32Matrix(c[:len(c)-1], m, out, out))); s != StatusBufferTooSmall {
		t.Fatalf("too short an output: %v", s)
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	q, _, _ := quantized(t)
	defer q.Close()
	dq := make([]float32, out*in)
	must(t, q.Dequantize(dq))
	dir := filepath.Join(t.TempDir(), "model")
	cfg := `{"bits":4,"group_size":128,"desc_act":false,"sym":true}`
	// An abandoned writer leaves nothing.
	w, err := NewCheckpointWriter(dir, cfg, nil)
	must(t, err)
	must(t, w.AddLayer("model.layers.0.mlp.up_proj", q))
	w.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("an aborted writer left its directory: %v", err)
	}
	w, err = NewCheckpointWriter(dir, cfg, &WriteOptions{Format: FormatV2})
	must(t, err)
	must(t, w.AddLayer("model.layers.0.mlp.up_proj", q))
	norm := new(bytes.Buffer)
	must(t, binary.Write(norm, binary.LittleEndian, []float32{1, 2, 3, 4}))
	must(t, w.AddTensor("model.norm.weight", "F32", []int{4}, norm.Bytes()))
	must(t, w.Finish())
	if s := statusOf(t, w.Finish()); s != StatusNullPointer {
		t.Fatalf("second finish: %v", s)
	}
	w.Close()

	cp, err := OpenCheckpoint(dir)
	must(t, err)
	defer cp.Close()
	n, err := cp.NumLayers()
	must(t, err)
	name, err := cp.LayerName(0)
	must(t, err)
	if n != 1 || name != "model.layers.0.mlp.up_proj" {
		t.Fatalf("layers %d %q", n, name)
	}
	p, err := cp.LayerInfo(name)
	must(t, err)
	if p.OutFeatures != out {
		t.Fatalf("info %+v", p)
	}
	js, err := cp.Config()
	must(t, err)
	if !strings.Contains(js, `"bits":4`) {
		t.Fatalf("config %s", js)
	}
	nt, err := cp.NumTensors()
	must(t, err)
	tv, err := cp.FindTensor("model.norm.weight")
	must(t, err)
	t0, err := cp.Tensor(0)
	must(t, err)
	if nt != 1 || tv.DType != "F32" || !reflect.DeepEqual(tv.Shape, []int{4}) || !bytes.Equal(tv.Data, norm.Bytes()) || t0.Name != tv.Name {
		t.Fatalf("tensor %+v", tv)
	}
	if _, err := cp.FindTensor("no.such"); statusOf(t, err) != StatusInvalidArgument {
		t.Fatalf("missing tensor: %v", err)
	}
	loaded, err := cp.Layer(name)
	must(t, err)
	defer loaded.Close()
	got := make([]float32, out*in)
	must(t, loaded.Dequantize(got))
	if !reflect.DeepEqual(got, dq) {
		t.Fatal("the layer read back differs")
	}
	if _, err := OpenCheckpoint("/nonexistent/gptq-checkpoint"); statusOf(t, err) != StatusIO {
		t.Fatalf("missing checkpoint: %v", err)
	}
}

func TestCuda(t *testing.T) {
	q, _, _ := quantized(t)
	defer q.Close()
	n, err := CudaDeviceCount()
	if s := statusOf(t, err); s == StatusNoDevice {
		_, err := NewCudaLayer(q, 0)
		if statusOf(t, err) != StatusNoDevice {
			t.Fatalf("layer without a driver: %v", err)
		}
		t.Log("NOTICE: no CUDA driver; the device calls report StatusNoDevice")
		return
	} else if s != StatusOK {
		t.Fatal(err)
	}
	if n == 0 {
		t.Skip("NOTICE: no CUDA device")
	}
	cl, err := NewCudaLayer(q, 0)
	must(t, err)
	defer cl.Close()
	_, err = cl.WorkspaceSize(16)
	must(t, err)
}

// f16 decodes IEEE half-precision bits.
func f16(h uint16) float32 {
	sign, exp, man := float64(1-2*int(h>>15)), int(h>>10)&31, float64(h&1023)
	switch exp {
	case 0:
		return float32(sign * man * math.Pow(2, -24))
	case 31:
		return float32(math.NaN())
	}
	return float32(sign * (1 + man/1024) * math.Pow(2, float64(exp-15)))
}
