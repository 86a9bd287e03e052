'use strict';
// libgptq Node binding: the C API of include/gptq.h in JavaScript idiom. Handles are classes with
// close() (idempotent; the garbage collector frees what was not closed); every failing call throws
// an Error with `status` (the C status code), `code` (its name) and the library's message. Matrices
// are typed arrays: Float32Array, Float64Array, or Uint16Array with a dtype (F16 or BF16) for
// 16-bit values. The native part (src/addon.c) only converts arguments and checks array lengths.
//
// The addon is built by `npm run build` into build/gptq.node (or named by GPTQ_NODE_ADDON).
const path = require('path');
const native = require(process.env.GPTQ_NODE_ADDON || path.join(__dirname, 'build', 'gptq.node'));

const DType = Object.freeze({ F32: 0, F16: 1, BF16: 2, F64: 3 });
const Format = Object.freeze({ V1: 1, V2: 2 });
const SampleCount = Object.freeze({ Rows: 0, Batches: 1 });
const Status = Object.freeze({
  OK: 0, NULL_POINTER: 1, INVALID_ARGUMENT: 2, SHAPE_MISMATCH: 3, UNSUPPORTED: 4, INVALID_ENUM: 5,
  STRUCT_SIZE: 6, NON_FINITE: 7, NOT_POSITIVE_DEFINITE: 8, INVALID_FORMAT: 9, BUFFER_TOO_SMALL: 10,
  MISALIGNED: 11, POISONED: 12, OUT_OF_MEMORY: 13, IO: 14, NO_DEVICE: 15, CUDA: 16, PANIC: 99,
});

// The Uint16Array dtype argument: only 16-bit arrays need one.
const dt = (array, dtype) => (array instanceof Uint16Array ? dtype : null);

class Handle {
  constructor(handle) { this.handle = handle; }
  /** Frees the handle; later calls fail with status NULL_POINTER. */
  close() { native.close(this.handle); }
}

/** The Hessian of a layer's inputs (gptq_hessian_*). */
class Hessian extends Handle {
  constructor(inFeatures, count = SampleCount.Rows, handle = undefined) {
    super(handle === undefined ? native.hessianNew(inFeatures, count) : handle);
  }
  /** A Hessian from a dense in × in matrix (Float32Array or Float64Array) over nSamples. */
  static fromDense(h, inFeatures, nSamples, count = SampleCount.Rows) {
    return new Hessian(0, count, native.hessianFromDense(h, null, inFeatures, nSamples, count));
  }
  /** Accumulates rows × cols of x at rowStride (elements). */
  addBatch(x, rows, cols, rowStride = cols, dtype = undefined) {
    native.hessianAddBatch(this.handle, x, dt(x, dtype), rows, cols, rowStride);
  }
  merge(src) { native.hessianMerge(this.handle, src.handle); }
  /** { inFeatures, nSamples } */
  info() { return native.hessianInfo(this.handle); }
  /** Copies the Hessian (row-major, inFeatures² values) into a Float32Array. */
  read(out) { native.hessianRead(this.handle, out); }
}

/** The library's default quantization config (gptq_quant_config_init), as a plain object. */
const defaultQuantConfig = () => native.quantConfigDefault();

/** A quantized layer (gptq_layer_*). */
class Layer extends Handle {
  /** GPTQ: returns { layer, report }. config: fields of defaultQuantConfig() to override. */
  static quantize(hessian, weight, outFeatures, inFeatures, config = null, { rowStride = inFeatures, dtype } = {}) {
    const r = native.quantize(hessian.handle, weight, dt(weight, dtype), outFeatures, inFeatures, rowStride, config);
    return { layer: new Layer(r.layer), report: r.report };
  }
  /** Round to nearest. */
  static quantizeRtn(weight, outFeatures, inFeatures, config = null, { rowStride = inFeatures, dtype } = {}) {
    return new Layer(native.quantize(null, weight, dt(weight, dtype), outFeatures, inFeatures, rowStride, config).layer);
  }
  /** From checkpoint tensors: desc { bits, groupSize, inFeatures, outFeatures, sym, format }; gIdx, bias may be null. */
  static import(desc, qweight, qzeros, scales, gIdx = null, bias = null) {
    return new Layer(native.layerImport(desc, qweight, qzeros, scales, gIdx, bias));
  }
  info() { return native.layerInfo(this.handle); }
  /** Writes the checkpoint tensors, sized per info(): qweight, qzeros, gIdx Int32Array, scales Uint16Array; bias Uint16Array or null (not written). */
  export(format, qweight, qzeros, scales, gIdx, bias = null) {
    native.layerExport(this.handle, format, qweight, qzeros, scales, gIdx, bias);
  }
  /** The weight [outFeatures, inFeatures] into out (Float32Array, Float64Array, or Uint16Array with dtype). */
  dequantize(out, dtype = undefined) { native.layerDequantize(this.handle, out, dt(out, dtype)); }
  /** C = A · Wᵀ (+ bias) on the CPU for m rows; lda, ldc in elements. */
  gemm(a, m, c, { lda, ldc, aDtype, cDtype } = {}) {
    const p = lda === undefined || ldc === undefined ? this.info() : null;
    native.gemm(this.handle, a, dt(a, aDtype), m, lda ?? p.inFeatures, c, dt(c, cDtype), ldc ?? p.outFeatures);
  }
}

/** A GPTQ checkpoint opened for reading (gptq_checkpoint_*). */
class Checkpoint extends Handle {
  constructor(path) { super(native.checkpointOpen(path)); }
  numLayers() { return native.checkpointNumLayers(this.handle); }
  layerName(index) { return native.checkpointLayerName(this.handle, index); }
  layerInfo(name) { return native.checkpointLayerInfo(this.handle, name); }
  layer(name) { return new Layer(native.checkpointGetLayer(this.handle, name)); }
  numTensors() { return native.checkpointNumTensors(this.handle); }
  /** { name, dtype, shape, data: Buffer (a copy) } */
  tensor(index) { return native.checkpointTensor(this.handle, index); }
  findTensor(name) { return native.checkpointFindTensor(this.handle, name); }
  /** The quantization config as compact JSON text. */
  config() { return native.checkpointConfig(this.handle); }
}

/** Writes a checkpoint; finish() commits, close() without finish() aborts. */
class CheckpointWriter extends Handle {
  /** options: { format, maxShardSize, sourceConfigJson } or null. */
  constructor(dir, quantConfigJson, options = null) { super(native.writerNew(dir, quantConfigJson, options)); }
  addLayer(name, layer) { native.writerAddLayer(this.handle, name, layer.handle); }
  /** data: any typed array or Buffer holding the raw little-endian bytes. */
  addTensor(name, dtype, shape, data) { native.writerAddTensor(this.handle, name, dtype, shape, data); }
  /** Commits the files; the writer is spent whether or not this throws. */
  finish() { native.writerFinish(this.handle); }
}

/**
 * A layer prepared on one CUDA device; device addresses and streams are BigInts. As in C, it must
 * outlive the GPU work queued with it: close() it (and keep it referenced) only after that work is
 * done, or the garbage collector may free it while kernels still read it.
 */
class CudaLayer extends Handle {
  constructor(layer, device = 0) { super(native.cudaLayerNew(layer.handle, device)); }
  workspaceSize(m) { return native.cudaWorkspaceSize(this.handle, m); }
  gemm(a, dtype, m, lda, c, ldc, workspace, workspaceBytes, stream) {
    native.cudaGemm(this.handle, a, dtype, m, lda, c, ldc, workspace, workspaceBytes, stream);
  }
  dequantize(out, stream) { native.cudaDequantize(this.handle, out, stream); }
}

module.exports = {
  DType, Format, SampleCount, Status,
  versionNumber: native.versionNumber,
  versionString: native.versionString,
  setNumThreads: native.setNumThreads,
  numThreads: native.numThreads,
  statusString: native.statusString,
  defaultQuantConfig,
  Hessian, Layer, Checkpoint, CheckpointWriter, CudaLayer,
  cudaDeviceCount: native.cudaDeviceCount,
  cudaInit: native.cudaInit,
};
