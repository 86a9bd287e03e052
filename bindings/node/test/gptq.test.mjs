// Tests of the Node binding against libgptq (node --test; run by tests/c_programs.rs with the addon
// built against the freshly built libgptq.so).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const g = require('../index.js');

const OUT = 96, IN = 256, TOKENS = 512, M = 3;
let state = 7n;
const uniform = () => { // in [-1, 1)
  state = (state * 6364136223846793005n + 1442695040888963407n) & 0xFFFFFFFFFFFFFFFFn;
  return Number((state >> 40n) & 0xFFFFFFn) / 8388608 - 1;
};
// IEEE half-precision bits to a number.
const f16 = (h) => {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return NaN;
  return s * (1 + m / 1024) * 2 ** (e - 15);
};
const w = Float32Array.from({ length: OUT * IN }, () => 0.05 * uniform());
const x = Float32Array.from({ length: TOKENS * IN }, () => uniform());

// The library's error for `f`: status, code name and a message.
const throwsStatus = (f, status, re) => assert.throws(f, (e) => {
  assert.ok(e instanceof Error);
  assert.equal(e.status, status, `${e.code}: ${e.message}`);
  assert.equal(e.code, g.statusString(status));
  assert.ok(e.message.length > 0);
  if (re) assert.match(e.message, re);
  return true;
});

const quantized = () => {
  const h = new g.Hessian(IN);
  h.addBatch(x, TOKENS, IN);
  const r = g.Layer.quantize(h, w, OUT, IN);
  h.close();
  return r;
};

test('version and threads', () => {
  assert.ok(g.versionNumber() > 0 && g.versionString().length > 0);
  g.setNumThreads(2);
  assert.equal(g.numThreads(), 2);
});

test('Hessian: merge, read, errors', () => {
  const h = new g.Hessian(IN), h1 = new g.Hessian(IN), h2 = new g.Hessian(IN);
  h.addBatch(x, TOKENS, IN);
  h1.addBatch(x.subarray(0, TOKENS / 2 * IN), TOKENS / 2, IN);
  h2.addBatch(x.subarray(TOKENS / 2 * IN), TOKENS / 2, IN);
  h1.merge(h2);
  const a = new Float32Array(IN * IN), b = new Float32Array(IN * IN);
  h.read(a);
  h1.read(b);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-4 * (1 + Math.abs(a[i])));
  assert.deepEqual(h.info(), { inFeatures: IN, nSamples: TOKENS });
  const hd = g.Hessian.fromDense(a, IN, TOKENS);
  assert.equal(hd.info().nSamples, TOKENS);
  hd.close();
  throwsStatus(() => h.addBatch(x, 4, IN + 1), g.Status.SHAPE_MISMATCH);  // the library's check
  throwsStatus(() => h.addBatch(x.subarray(0, 10), 4, IN), g.Status.BUFFER_TOO_SMALL);  // the binding's
  throwsStatus(() => h.addBatch(new Uint16Array(IN), 1, IN), g.Status.INVALID_ARGUMENT);  // no dtype
  throwsStatus(() => h.addBatch(x, 2, IN, IN - 1), g.Status.INVALID_ARGUMENT);  // stride below the width
  assert.equal(h.info().nSamples, TOKENS);
  h2.close();
  h2.close();  // idempotent
  throwsStatus(() => h2.addBatch(x, 1, IN), g.Status.NULL_POINTER);
  for (const o of [h, h1]) o.close();
});

test('quantize, export/import, dequantize, gemm', () => {
  const { layer: q, report } = quantized();
  assert.ok(report.lossGptq > 0 && report.lossGptq < report.lossRtn);
  const cfg = g.defaultQuantConfig();
  assert.equal(cfg.bits, 4);
  assert.equal(cfg.groupSize, 128);
  g.Layer.quantizeRtn(w, OUT, IN).close();
  throwsStatus(() => g.Layer.quantizeRtn(w, OUT, IN, { bits: 5 }), g.Status.UNSUPPORTED, /bits/);

  const p = q.info();
  assert.equal(p.bits, 4);
  assert.equal(p.inFeatures, IN);
  assert.equal(p.outFeatures, OUT);
  const qweight = new Int32Array(p.qweightRows * OUT), qzeros = new Int32Array(p.numGroups * p.qzerosCols);
  const scales = new Uint16Array(p.numGroups * OUT), gIdx = new Int32Array(IN);
  q.export(g.Format.V1, qweight, qzeros, scales, gIdx);
  const back = g.Layer.import({ bits: 4, groupSize: 128, inFeatures: IN, outFeatures: OUT, sym: true, format: g.Format.V1 },
    qweight, qzeros, scales, gIdx);
  const dq = new Float32Array(OUT * IN), dqBack = new Float32Array(OUT * IN);
  q.dequantize(dq);
  back.dequantize(dqBack);
  assert.deepEqual(dqBack, dq);
  throwsStatus(() => q.dequantize(new Float32Array(OUT * IN - 1)), g.Status.BUFFER_TOO_SMALL);
  const half = new Uint16Array(OUT * IN);
  q.dequantize(half, g.DType.F16);
  for (let i = 0; i < half.length; i++) {  // fp16 of the same values: within half a unit in the last place
    assert.ok(Math.abs(f16(half[i]) - dq[i]) <= Math.abs(dq[i]) / 1024 + 1e-7, `fp16 [${i}] ${f16(half[i])} vs ${dq[i]}`);
  }
  // A config getter that closes the Hessian runs before the handle is used: a clean NULL_POINTER.
  const h = new g.Hessian(IN);
  h.addBatch(x, TOKENS, IN);
  throwsStatus(() => g.Layer.quantize(h, w, OUT, IN, { get bits() { h.close(); return 4; } }), g.Status.NULL_POINTER);
  throwsStatus(() => g.Layer.quantizeRtn(w, OUT, IN, { groupSize: 1.5 }), g.Status.INVALID_ARGUMENT);

  const c = new Float32Array(M * OUT).fill(NaN);
  q.gemm(x, M, c);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < OUT; n++) {
      let ref = 0;
      for (let k = 0; k < IN; k++) ref += x[m * IN + k] * dq[n * IN + k];
      assert.ok(Math.abs(c[m * OUT + n] - ref) <= 1e-4 * (1 + Math.abs(ref)), `c[${m},${n}] ${c[m * OUT + n]} vs ${ref}`);
    }
  }
  throwsStatus(() => q.gemm(x, M, new Float32Array(M * OUT - 1)), g.Status.BUFFER_TOO_SMALL);
  for (const o of [q, back]) o.close();
});

test('checkpoint round trip', () => {
  const { layer: q } = quantized();
  const dq = new Float32Array(OUT * IN);
  q.dequantize(dq);
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'gptq-node-')), 'model');
  const cfg = '{"bits":4,"group_size":128,"desc_act":false,"sym":true}';
  const abandoned = new g.CheckpointWriter(dir, cfg);
  abandoned.addLayer('model.layers.0.mlp.up_proj', q);
  abandoned.close();
  assert.ok(!fs.existsSync(dir), 'an aborted writer left its directory');
  const wr = new g.CheckpointWriter(dir, cfg, { format: g.Format.V2 });
  wr.addLayer('model.layers.0.mlp.up_proj', q);
  wr.addTensor('model.norm.weight', 'F32', [4], new Float32Array([1, 2, 3, 4]));
  wr.finish();
  throwsStatus(() => wr.finish(), g.Status.NULL_POINTER);  // spent
  wr.close();

  const cp = new g.Checkpoint(dir);
  assert.equal(cp.numLayers(), 1);
  assert.equal(cp.layerName(0), 'model.layers.0.mlp.up_proj');
  assert.equal(cp.layerInfo(cp.layerName(0)).outFeatures, OUT);
  assert.match(cp.config(), /"bits":4/);
  assert.equal(cp.numTensors(), 1);
  const t = cp.findTensor('model.norm.weight');
  assert.equal(t.dtype, 'F32');
  assert.deepEqual(t.shape, [4]);
  assert.deepEqual([...new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + 16))], [1, 2, 3, 4]);
  assert.equal(cp.tensor(0).name, t.name);
  throwsStatus(() => cp.findTensor('no.such'), g.Status.INVALID_ARGUMENT);
  const loaded = cp.layer('model.layers.0.mlp.up_proj');
  const got = new Float32Array(OUT * IN);
  loaded.dequantize(got);
  assert.deepEqual(got, dq);
  for (const o of [loaded, cp, q]) o.close();
  throwsStatus(() => new g.Checkpoint('/nonexistent/gptq-checkpoint'), g.Status.IO);
  fs.rmSync(path.dirname(dir), { recursive: true });
});

test('CUDA: a device count, or NO_DEVICE without a driver', (t) => {
  const { layer: q } = quantized();
  let n;
  try {
    n = g.cudaDeviceCount();
  } catch (e) {
    assert.equal(e.status, g.Status.NO_DEVICE);
    throwsStatus(() => new g.CudaLayer(q, 0), g.Status.NO_DEVICE);
    t.diagnostic('NOTICE: no CUDA driver; the device calls report NO_DEVICE');
    q.close();
    return;
  }
  if (n > 0) {
    const cl = new g.CudaLayer(q, 0);
    assert.equal(typeof cl.workspaceSize(16), 'number');
    cl.close();
  }
  q.close();
});
