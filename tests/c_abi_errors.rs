//! Bad input through the C ABI, called directly from Rust: for every case the exact status, a
//! last-error message naming the problem, and out-pointers / output buffers left untouched.

mod common;

use common::{correlated_activations, Rng};
use gptq::ffi::*;
use std::ffi::{c_void, CStr};
use std::mem::size_of;
use std::ptr::{null, null_mut};

const K: usize = 64;
const N: usize = 16;
const ROWS: usize = 128;
const F32: gptq_dtype = GPTQ_DTYPE_F32;

/// Bit patterns preset into output buffers; a failed call must leave them in place.
const SENT_F32: u32 = 0x7FC0_BEEF; // a quiet NaN with a payload
const SENT_I32: i32 = 0x5A5A_5A5A;
const SENT_U16: u16 = 0xA5A5;
const SENT_BYTE: u8 = 0xA5;

/// A dangling value preset into out-handle pointers; a failed call must leave it in place.
fn sentinel<T>() -> *mut T {
    0x1 as *mut T
}

fn sent_f32(n: usize) -> Vec<f32> {
    vec![f32::from_bits(SENT_F32); n]
}

#[track_caller]
fn assert_f32_untouched(v: &[f32], what: &str) {
    if let Some(i) = v.iter().position(|x| x.to_bits() != SENT_F32) {
        panic!("{what}[{i}] was written ({})", v[i]);
    }
}

fn last_error() -> String {
    // SAFETY: never NULL, valid until the next libgptq call on this thread.
    unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_str().expect("UTF-8 message").to_owned()
}

fn status_name(s: gptq_status) -> String {
    unsafe { CStr::from_ptr(gptq_status_string(s)) }.to_str().unwrap().to_owned()
}

/// Asserts the exact status and a non-empty message containing every word of `words`.
#[track_caller]
fn check(status: gptq_status, want: gptq_status, words: &[&str]) {
    let msg = last_error();
    assert_eq!(
        status,
        want,
        "expected {want} ({}), got {status} ({}); message: {msg:?}",
        status_name(want),
        status_name(status)
    );
    assert!(!msg.is_empty(), "status {status} came with an empty message");
    for w in words {
        assert!(msg.contains(w), "message {msg:?} does not mention {w:?}");
    }
}

#[track_caller]
fn ok(status: gptq_status) {
    assert_eq!(status, GPTQ_STATUS_OK, "{}: {}", status_name(status), last_error());
}

// ---------------------------------------------------------------------------------------------
// Owned handles and helpers

struct Hess(*mut gptq_hessian);
impl Drop for Hess {
    fn drop(&mut self) {
        unsafe { gptq_hessian_free(self.0) }
    }
}

struct Layer(*mut gptq_layer);
impl Drop for Layer {
    fn drop(&mut self) {
        unsafe { gptq_layer_free(self.0) }
    }
}

fn hessian(k: usize) -> Hess {
    let mut p = null_mut();
    ok(unsafe { gptq_hessian_new(k, GPTQ_COUNT_ROWS, &mut p) });
    assert!(!p.is_null());
    Hess(p)
}

fn add(h: &Hess, x: &[f32], rows: usize, cols: usize) {
    assert_eq!(x.len(), rows * cols);
    ok(unsafe { gptq_hessian_add_batch(h.0, x.as_ptr().cast(), F32, rows, cols, cols) });
}

fn read(h: &Hess) -> Vec<u32> {
    let mut k = 0usize;
    ok(unsafe { gptq_hessian_info(h.0, &mut k, null_mut()) });
    let mut m = sent_f32(k * k);
    ok(unsafe { gptq_hessian_read(h.0, m.as_mut_ptr(), m.len()) });
    m.iter().map(|v| v.to_bits()).collect()
}

fn n_samples(h: &Hess) -> u64 {
    let mut n = u64::MAX;
    ok(unsafe { gptq_hessian_info(h.0, null_mut(), &mut n) });
    n
}

fn from_dense(m: &[f32], k: usize) -> Hess {
    let mut p = null_mut();
    ok(unsafe { gptq_hessian_from_dense(m.as_ptr().cast(), F32, k, 1000, GPTQ_COUNT_ROWS, &mut p) });
    Hess(p)
}

fn config(bits: u32, group_size: i32) -> gptq_quant_config {
    let mut c = std::mem::MaybeUninit::<gptq_quant_config>::uninit();
    ok(unsafe { gptq_quant_config_init(c.as_mut_ptr(), size_of::<gptq_quant_config>()) });
    let mut c = unsafe { c.assume_init() };
    c.bits = bits;
    c.group_size = group_size;
    c
}

/// A report whose fields all hold sentinels.
fn report_sentinel() -> gptq_quant_report {
    gptq_quant_report {
        struct_size: size_of::<gptq_quant_report>(),
        loss_estimate: -7.25,
        loss_gptq: -7.25,
        loss_rtn: -7.25,
        damp_percent_used: -7.25,
        diag_floor_used: -7,
        seconds: -7.25,
    }
}

#[track_caller]
fn assert_report_untouched(r: &gptq_quant_report) {
    let s = report_sentinel();
    assert_eq!(r.struct_size, s.struct_size);
    assert_eq!(r.loss_estimate.to_bits(), s.loss_estimate.to_bits(), "report written: {r:?}");
    assert_eq!(r.loss_gptq.to_bits(), s.loss_gptq.to_bits(), "report written: {r:?}");
    assert_eq!(r.loss_rtn.to_bits(), s.loss_rtn.to_bits(), "report written: {r:?}");
    assert_eq!(r.damp_percent_used.to_bits(), s.damp_percent_used.to_bits(), "report written: {r:?}");
    assert_eq!(r.diag_floor_used, s.diag_floor_used, "report written: {r:?}");
    assert_eq!(r.seconds.to_bits(), s.seconds.to_bits(), "report written: {r:?}");
}

/// Calls gptq_quantize with sentinel out/report; returns the status and asserts that on failure
/// neither was touched. On success returns the layer.
#[track_caller]
fn quantize_raw(
    h: *const gptq_hessian,
    w: *const c_void,
    dtype: gptq_dtype,
    n: usize,
    k: usize,
    stride: usize,
    cfg: *const gptq_quant_config,
) -> (gptq_status, Option<Layer>, gptq_quant_report) {
    let mut out = sentinel::<gptq_layer>();
    let mut rep = report_sentinel();
    let s = unsafe { gptq_quantize(h, w, dtype, n, k, stride, cfg, &mut out, &mut rep) };
    if s == GPTQ_STATUS_OK {
        assert!(!out.is_null() && out != sentinel());
        (s, Some(Layer(out)), rep)
    } else {
        assert_eq!(out, sentinel(), "out written on error");
        assert_report_untouched(&rep);
        (s, None, rep)
    }
}

#[track_caller]
fn quantize_fails(h: &Hess, w: &[f32], n: usize, k: usize, cfg: &gptq_quant_config, want: gptq_status, words: &[&str]) {
    let (s, _, _) = quantize_raw(h.0, w.as_ptr().cast(), F32, n, k, k, cfg);
    check(s, want, words);
}

#[track_caller]
fn rtn_fails(w: &[f32], n: usize, k: usize, cfg: &gptq_quant_config, want: gptq_status, words: &[&str]) {
    let mut out = sentinel::<gptq_layer>();
    let s = unsafe { gptq_quantize_rtn(w.as_ptr().cast(), F32, n, k, k, cfg, &mut out) };
    check(s, want, words);
    assert_eq!(out, sentinel(), "out written on error");
}

fn quantize(h: &Hess, w: &[f32], n: usize, k: usize, cfg: &gptq_quant_config) -> (Layer, gptq_quant_report) {
    let (s, l, r) = quantize_raw(h.0, w.as_ptr().cast(), F32, n, k, k, cfg);
    ok(s);
    (l.unwrap(), r)
}

/// A small quantized layer (out 16, in 64, 4 bit, group 32) with its inputs.
struct Fx {
    x: Vec<f32>,
    w: Vec<f32>,
    h: Hess,
    cfg: gptq_quant_config,
    layer: Layer,
}

fn fixture(seed: u64) -> Fx {
    let mut rng = Rng::new(seed);
    let x = correlated_activations(&mut rng, ROWS, K);
    let w = rng.normals(N * K, 0.05);
    let h = hessian(K);
    add(&h, &x, ROWS, K);
    let cfg = config(4, 32);
    let (layer, _) = quantize(&h, &w, N, K, &cfg);
    Fx { x, w, h, cfg, layer }
}

fn props(l: &Layer) -> gptq_layer_properties {
    let mut p = gptq_layer_properties { struct_size: size_of::<gptq_layer_properties>(), ..Default::default() };
    ok(unsafe { gptq_layer_info(l.0, &mut p) });
    p
}

/// Element counts of qweight, qzeros, scales and g_idx.
fn export_lens(p: &gptq_layer_properties) -> [usize; 4] {
    [p.qweight_rows * p.out_features, p.num_groups * p.qzeros_cols, p.num_groups * p.out_features, p.in_features]
}

const EXPORT_NAMES: [&str; 4] = ["qweight", "qzeros", "scales", "g_idx"];

/// Sentinel-filled export buffers.
struct Bufs {
    qweight: Vec<i32>,
    qzeros: Vec<i32>,
    scales: Vec<u16>,
    g_idx: Vec<i32>,
}

impl Bufs {
    fn new(lens: [usize; 4]) -> Bufs {
        Bufs {
            qweight: vec![SENT_I32; lens[0]],
            qzeros: vec![SENT_I32; lens[1]],
            scales: vec![SENT_U16; lens[2]],
            g_idx: vec![SENT_I32; lens[3]],
        }
    }
    #[track_caller]
    fn assert_untouched(&self) {
        assert!(self.qweight.iter().all(|&v| v == SENT_I32), "qweight written on error");
        assert!(self.qzeros.iter().all(|&v| v == SENT_I32), "qzeros written on error");
        assert!(self.scales.iter().all(|&v| v == SENT_U16), "scales written on error");
        assert!(self.g_idx.iter().all(|&v| v == SENT_I32), "g_idx written on error");
    }
}

/// gptq_layer_export into buffers of exactly `lens` elements, passing NULL where `null[i]`.
fn export_raw(layer: *const gptq_layer, format: gptq_format, lens: [usize; 4], null: [bool; 4]) -> (gptq_status, Bufs) {
    let mut b = Bufs::new(lens);
    let qw = if null[0] { null_mut() } else { b.qweight.as_mut_ptr() };
    let qz = if null[1] { null_mut() } else { b.qzeros.as_mut_ptr() };
    let sc = if null[2] { null_mut() } else { b.scales.as_mut_ptr() };
    let gi = if null[3] { null_mut() } else { b.g_idx.as_mut_ptr() };
    let s = unsafe {
        gptq_layer_export(layer, format, qw, lens[0], qz, lens[1], sc, lens[2], gi, lens[3], null_mut(), 0)
    };
    (s, b)
}

/// The layer's tensors in `format`.
fn export(l: &Layer, format: gptq_format) -> Bufs {
    let (s, b) = export_raw(l.0, format, export_lens(&props(l)), [false; 4]);
    ok(s);
    b
}

fn desc_of(p: &gptq_layer_properties, format: gptq_format) -> gptq_layer_desc {
    gptq_layer_desc {
        struct_size: size_of::<gptq_layer_desc>(),
        bits: p.bits,
        group_size: p.group_size,
        in_features: p.in_features,
        out_features: p.out_features,
        sym: p.sym,
        format,
    }
}

/// The arguments of one gptq_layer_import call; every case edits a copy of a valid set.
#[derive(Clone, Copy)]
struct Imp {
    desc: *const gptq_layer_desc,
    qweight: *const i32,
    qweight_len: usize,
    qzeros: *const i32,
    qzeros_len: usize,
    scales: *const u16,
    scales_len: usize,
    g_idx: *const i32,
    g_idx_len: usize,
    bias: *const u16,
    bias_len: usize,
}

impl Imp {
    fn new(d: &gptq_layer_desc, b: &Bufs) -> Imp {
        Imp {
            desc: d,
            qweight: b.qweight.as_ptr(),
            qweight_len: b.qweight.len(),
            qzeros: b.qzeros.as_ptr(),
            qzeros_len: b.qzeros.len(),
            scales: b.scales.as_ptr(),
            scales_len: b.scales.len(),
            g_idx: b.g_idx.as_ptr(),
            g_idx_len: b.g_idx.len(),
            bias: null(),
            bias_len: 0,
        }
    }
    /// Imports with a sentinel out pointer; asserts it is untouched on failure.
    #[track_caller]
    fn run(&self) -> (gptq_status, Option<Layer>) {
        let mut out = sentinel::<gptq_layer>();
        let s = unsafe {
            gptq_layer_import(
                self.desc,
                self.qweight,
                self.qweight_len,
                self.qzeros,
                self.qzeros_len,
                self.scales,
                self.scales_len,
                self.g_idx,
                self.g_idx_len,
                self.bias,
                self.bias_len,
                &mut out,
            )
        };
        if s == GPTQ_STATUS_OK {
            assert!(!out.is_null() && out != sentinel());
            (s, Some(Layer(out)))
        } else {
            assert_eq!(out, sentinel(), "import wrote out on error");
            (s, None)
        }
    }
    #[track_caller]
    fn fails(&self, want: gptq_status, words: &[&str]) {
        let (s, _) = self.run();
        check(s, want, words);
    }
}

fn dequantize(l: &Layer) -> Vec<f32> {
    let p = props(l);
    let mut out = sent_f32(p.out_features * p.in_features);
    ok(unsafe { gptq_layer_dequantize(l.0, F32, out.as_mut_ptr().cast(), out.len()) });
    out
}

fn gemm(l: &Layer, a: &[f32], m: usize) -> Vec<f32> {
    let p = props(l);
    let mut c = sent_f32(m * p.out_features);
    ok(unsafe {
        gptq_gemm(l.0, a.as_ptr().cast(), F32, m, p.in_features, c.as_mut_ptr().cast(), F32, p.out_features)
    });
    c
}

/// `A · Wᵀ` in f64 from the dequantized weight, checked against `c` per element relative to
/// `Σ|a||w|` of that element.
#[track_caller]
fn assert_gemm_correct(l: &Layer, a: &[f32], m: usize, c: &[f32]) {
    let w = dequantize(l);
    let p = props(l);
    let (n, k) = (p.out_features, p.in_features);
    for i in 0..m {
        for o in 0..n {
            let (mut s, mut mag) = (0f64, 0f64);
            for j in 0..k {
                s += a[i * k + j] as f64 * w[o * k + j] as f64;
                mag += (a[i * k + j] as f64 * w[o * k + j] as f64).abs();
            }
            let got = c[i * n + o] as f64;
            assert!((got - s).abs() <= 1e-5 * mag + 1e-30, "C[{i}, {o}] = {got}, expected {s}");
        }
    }
}

/// A byte buffer (8-aligned) filled with SENT_BYTE, for misaligned pointers into it.
fn byte_buf(n: usize) -> Vec<u64> {
    vec![u64::from_ne_bytes([SENT_BYTE; 8]); n.div_ceil(8) + 1]
}

#[track_caller]
fn assert_bytes_untouched(b: &[u64]) {
    assert!(b.iter().all(|&w| w == u64::from_ne_bytes([SENT_BYTE; 8])), "a misaligned buffer was written");
}

fn misaligned<T>(b: &mut [u64], offset: usize) -> *mut T {
    unsafe { b.as_mut_ptr().cast::<u8>().add(offset).cast::<T>() }
}

// ---------------------------------------------------------------------------------------------
// NULL pointers

#[test]
fn null_pointers_are_named_and_nothing_is_written() {
    let fx = fixture(1);
    let h_before = read(&fx.h);
    let n_before = n_samples(&fx.h);

    // gptq_hessian_new(out)
    check(unsafe { gptq_hessian_new(K, GPTQ_COUNT_ROWS, null_mut()) }, GPTQ_STATUS_NULL_POINTER, &["out is NULL"]);

    // gptq_hessian_add_batch(hessian, x)
    let x = fx.x.as_ptr().cast::<c_void>();
    check(
        unsafe { gptq_hessian_add_batch(null_mut(), x, F32, ROWS, K, K) },
        GPTQ_STATUS_NULL_POINTER,
        &["hessian is NULL"],
    );
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, null(), F32, ROWS, K, K) },
        GPTQ_STATUS_NULL_POINTER,
        &["x is NULL"],
    );
    assert_eq!(read(&fx.h), h_before);
    assert_eq!(n_samples(&fx.h), n_before);

    // gptq_hessian_from_dense(h, out), gptq_hessian_read(out), gptq_hessian_info(hessian),
    // gptq_hessian_merge(dst, src)
    let dense = sent_f32(K * K);
    check(
        unsafe { gptq_hessian_from_dense(null(), F32, K, 1, GPTQ_COUNT_ROWS, &mut sentinel()) },
        GPTQ_STATUS_NULL_POINTER,
        &["h is NULL"],
    );
    check(
        unsafe { gptq_hessian_from_dense(dense.as_ptr().cast(), F32, K, 1, GPTQ_COUNT_ROWS, null_mut()) },
        GPTQ_STATUS_NULL_POINTER,
        &["out is NULL"],
    );
    check(unsafe { gptq_hessian_read(fx.h.0, null_mut(), K * K) }, GPTQ_STATUS_NULL_POINTER, &["out is NULL"]);
    check(unsafe { gptq_hessian_read(null(), null_mut(), K * K) }, GPTQ_STATUS_NULL_POINTER, &["hessian is NULL"]);
    let (mut kk, mut nn) = (usize::MAX, u64::MAX);
    check(unsafe { gptq_hessian_info(null(), &mut kk, &mut nn) }, GPTQ_STATUS_NULL_POINTER, &["hessian is NULL"]);
    assert_eq!((kk, nn), (usize::MAX, u64::MAX));
    check(unsafe { gptq_hessian_merge(null_mut(), fx.h.0) }, GPTQ_STATUS_NULL_POINTER, &["dst is NULL"]);
    check(unsafe { gptq_hessian_merge(fx.h.0, null()) }, GPTQ_STATUS_NULL_POINTER, &["src is NULL"]);
    assert_eq!(read(&fx.h), h_before);
    assert_eq!(n_samples(&fx.h), n_before);

    // gptq_quantize(hessian, weight, config, out): each NULL in turn; the rest valid.
    let names = ["hessian is NULL", "weight is NULL", "config is NULL", "out is NULL"];
    for (i, name) in names.iter().enumerate() {
        let mut out = sentinel::<gptq_layer>();
        let mut rep = report_sentinel();
        let s = unsafe {
            gptq_quantize(
                if i == 0 { null() } else { fx.h.0 },
                if i == 1 { null() } else { fx.w.as_ptr().cast() },
                F32,
                N,
                K,
                K,
                if i == 2 { null() } else { &fx.cfg },
                if i == 3 { null_mut() } else { &mut out },
                &mut rep,
            )
        };
        check(s, GPTQ_STATUS_NULL_POINTER, &[name]);
        assert_eq!(out, sentinel(), "quantize wrote out with {name}");
        assert_report_untouched(&rep);
    }
    // gptq_quantize_rtn(weight, config, out)
    let mut out = sentinel::<gptq_layer>();
    check(
        unsafe { gptq_quantize_rtn(null(), F32, N, K, K, &fx.cfg, &mut out) },
        GPTQ_STATUS_NULL_POINTER,
        &["weight is NULL"],
    );
    check(
        unsafe { gptq_quantize_rtn(fx.w.as_ptr().cast(), F32, N, K, K, null(), &mut out) },
        GPTQ_STATUS_NULL_POINTER,
        &["config is NULL"],
    );
    check(
        unsafe { gptq_quantize_rtn(fx.w.as_ptr().cast(), F32, N, K, K, &fx.cfg, null_mut()) },
        GPTQ_STATUS_NULL_POINTER,
        &["out is NULL"],
    );
    assert_eq!(out, sentinel());
    check(
        unsafe { gptq_quant_config_init(null_mut(), size_of::<gptq_quant_config>()) },
        GPTQ_STATUS_NULL_POINTER,
        &["config is NULL"],
    );

    // gptq_layer_info(layer, info)
    let mut p = gptq_layer_properties { struct_size: size_of::<gptq_layer_properties>(), ..Default::default() };
    check(unsafe { gptq_layer_info(null(), &mut p) }, GPTQ_STATUS_NULL_POINTER, &["layer is NULL"]);
    assert_eq!(p.out_features, 0, "info written on error");
    check(unsafe { gptq_layer_info(fx.layer.0, null_mut()) }, GPTQ_STATUS_NULL_POINTER, &["info is NULL"]);

    // gptq_layer_export(layer, qweight, qzeros, scales, g_idx)
    let lens = export_lens(&props(&fx.layer));
    let (s, b) = export_raw(null(), GPTQ_FORMAT_V1, lens, [false; 4]);
    check(s, GPTQ_STATUS_NULL_POINTER, &["layer is NULL"]);
    b.assert_untouched();
    for (i, name) in EXPORT_NAMES.iter().enumerate() {
        let mut null = [false; 4];
        null[i] = true;
        let (s, b) = export_raw(fx.layer.0, GPTQ_FORMAT_V1, lens, null);
        check(s, GPTQ_STATUS_NULL_POINTER, &[&format!("{name} is NULL")]);
        b.assert_untouched();
    }

    // gptq_layer_import(desc, qweight, qzeros, scales, out)
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = desc_of(&props(&fx.layer), GPTQ_FORMAT_V1);
    let good = Imp::new(&desc, &packed);
    assert!(good.run().1.is_some(), "the valid import fails: {}", last_error());
    Imp { desc: null(), ..good }.fails(GPTQ_STATUS_NULL_POINTER, &["desc is NULL"]);
    Imp { qweight: null(), ..good }.fails(GPTQ_STATUS_NULL_POINTER, &["qweight is NULL"]);
    Imp { qzeros: null(), ..good }.fails(GPTQ_STATUS_NULL_POINTER, &["qzeros is NULL"]);
    Imp { scales: null(), ..good }.fails(GPTQ_STATUS_NULL_POINTER, &["scales is NULL"]);
    let s = unsafe {
        gptq_layer_import(
            &desc,
            good.qweight,
            good.qweight_len,
            good.qzeros,
            good.qzeros_len,
            good.scales,
            good.scales_len,
            good.g_idx,
            good.g_idx_len,
            null(),
            0,
            null_mut(),
        )
    };
    check(s, GPTQ_STATUS_NULL_POINTER, &["out is NULL"]);

    // gptq_gemm(layer, a, c)
    let m = 3;
    let a = Rng::new(11).normals(m * K, 1.0);
    for (i, name) in ["layer is NULL", "a is NULL", "c is NULL"].iter().enumerate() {
        let mut c = sent_f32(m * N);
        let s = unsafe {
            gptq_gemm(
                if i == 0 { null() } else { fx.layer.0 },
                if i == 1 { null() } else { a.as_ptr().cast() },
                F32,
                m,
                K,
                if i == 2 { null_mut() } else { c.as_mut_ptr().cast() },
                F32,
                N,
            )
        };
        check(s, GPTQ_STATUS_NULL_POINTER, &[name]);
        assert_f32_untouched(&c, "c");
    }

    // gptq_layer_dequantize(layer, out)
    let mut out = sent_f32(N * K);
    check(
        unsafe { gptq_layer_dequantize(fx.layer.0, F32, null_mut(), N * K) },
        GPTQ_STATUS_NULL_POINTER,
        &["out is NULL"],
    );
    check(
        unsafe { gptq_layer_dequantize(null(), F32, out.as_mut_ptr().cast(), N * K) },
        GPTQ_STATUS_NULL_POINTER,
        &["layer is NULL"],
    );
    assert_f32_untouched(&out, "out");

    // The freeing functions accept NULL.
    unsafe {
        gptq_hessian_free(null_mut());
        gptq_layer_free(null_mut());
    }
}

// ---------------------------------------------------------------------------------------------
// Zero and mismatched dimensions, wrong buffer lengths

#[test]
fn zero_and_mismatched_dimensions() {
    let fx = fixture(2);
    let h_before = read(&fx.h);
    let n_before = n_samples(&fx.h);
    let x = fx.x.as_ptr().cast::<c_void>();

    // add_batch: x holds ROWS·K floats, offered as [ROWS, 32] to a 64-input Hessian.
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, x, F32, ROWS, 32, 32) },
        GPTQ_STATUS_SHAPE_MISMATCH,
        &["32 columns", "in_features 64"],
    );
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, x, F32, ROWS / 2, 2 * K, 2 * K) },
        GPTQ_STATUS_SHAPE_MISMATCH,
        &["128 columns", "in_features 64"],
    );
    check(unsafe { gptq_hessian_add_batch(fx.h.0, x, F32, 0, K, K) }, GPTQ_STATUS_SHAPE_MISMATCH, &["[0, 64]"]);
    check(unsafe { gptq_hessian_add_batch(fx.h.0, x, F32, ROWS, 0, 0) }, GPTQ_STATUS_SHAPE_MISMATCH, &["[128, 0]"]);
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, x, F32, 4, K, K - 1) },
        GPTQ_STATUS_INVALID_ARGUMENT,
        &["row_stride 63"],
    );
    assert_eq!(read(&fx.h), h_before, "a failed add_batch changed the Hessian");
    assert_eq!(n_samples(&fx.h), n_before);

    // Hessian constructors with in_features 0.
    let mut out = sentinel::<gptq_hessian>();
    check(unsafe { gptq_hessian_new(0, GPTQ_COUNT_ROWS, &mut out) }, GPTQ_STATUS_SHAPE_MISMATCH, &["in_features"]);
    assert_eq!(out, sentinel());
    let one = [1.0f32];
    check(
        unsafe { gptq_hessian_from_dense(one.as_ptr().cast(), F32, 0, 1, GPTQ_COUNT_ROWS, &mut out) },
        GPTQ_STATUS_SHAPE_MISMATCH,
        &["in_features"],
    );
    assert_eq!(out, sentinel());
    check(
        unsafe { gptq_hessian_from_dense(one.as_ptr().cast(), F32, 1, 0, GPTQ_COUNT_ROWS, &mut out) },
        GPTQ_STATUS_INVALID_ARGUMENT,
        &["n_samples"],
    );
    assert_eq!(out, sentinel());

    // Hessian read into a buffer one float short.
    let mut buf = sent_f32(K * K - 1);
    check(
        unsafe { gptq_hessian_read(fx.h.0, buf.as_mut_ptr(), buf.len()) },
        GPTQ_STATUS_BUFFER_TOO_SMALL,
        &["4095", "4096"],
    );
    assert_f32_untouched(&buf, "out");

    // Merging Hessians of different widths.
    let small = hessian(32);
    check(unsafe { gptq_hessian_merge(fx.h.0, small.0) }, GPTQ_STATUS_SHAPE_MISMATCH, &["in_features 32", "64"]);
    assert_eq!(read(&fx.h), h_before);

    // quantize: out_features 0, in_features 0, weight narrower than the Hessian, stride too small.
    quantize_fails(&fx.h, &fx.w, 0, K, &fx.cfg, GPTQ_STATUS_SHAPE_MISMATCH, &["non-zero", "[0, 64]"]);
    quantize_fails(&fx.h, &fx.w, N, 0, &fx.cfg, GPTQ_STATUS_SHAPE_MISMATCH, &["non-zero", "[16, 0]"]);
    quantize_fails(&fx.h, &fx.w, N, 32, &fx.cfg, GPTQ_STATUS_SHAPE_MISMATCH, &["in_features 32", "built for 64"]);
    let (s, _, _) = quantize_raw(fx.h.0, fx.w.as_ptr().cast(), F32, N / 2, K, K - 1, &fx.cfg);
    check(s, GPTQ_STATUS_INVALID_ARGUMENT, &["row_stride 63"]);
    rtn_fails(&fx.w, 0, K, &fx.cfg, GPTQ_STATUS_SHAPE_MISMATCH, &["[0, 64]"]);

    // quantize against an empty Hessian.
    let empty = hessian(K);
    quantize_fails(&empty, &fx.w, N, K, &fx.cfg, GPTQ_STATUS_INVALID_ARGUMENT, &["no samples"]);

    // gemm: m 0, lda < in_features, ldc < out_features.
    let a = Rng::new(3).normals(4 * K, 1.0);
    let gemm_fails = |m: usize, lda: usize, ldc: usize, want: gptq_status, words: &[&str]| {
        let mut c = sent_f32(4 * N);
        check(
            unsafe { gptq_gemm(fx.layer.0, a.as_ptr().cast(), F32, m, lda, c.as_mut_ptr().cast(), F32, ldc) },
            want,
            words,
        );
        assert_f32_untouched(&c, "c");
    };
    gemm_fails(0, K, N, GPTQ_STATUS_SHAPE_MISMATCH, &["m must be non-zero"]);
    gemm_fails(2, K - 1, N, GPTQ_STATUS_INVALID_ARGUMENT, &["lda 63", "in_features 64"]);
    gemm_fails(2, K, N - 1, GPTQ_STATUS_INVALID_ARGUMENT, &["ldc 15", "out_features 16"]);

    // dequantize into a buffer one element short.
    let mut out = sent_f32(N * K);
    check(
        unsafe { gptq_layer_dequantize(fx.layer.0, F32, out.as_mut_ptr().cast(), N * K - 1) },
        GPTQ_STATUS_BUFFER_TOO_SMALL,
        &["1023", "1024"],
    );
    assert_f32_untouched(&out, "out");

    // export: every buffer one element short and one element long (lengths must match exactly).
    let p = props(&fx.layer);
    let lens = export_lens(&p);
    assert_eq!(lens, [8 * N, 2 * 2, 2 * N, K], "the fixture's packed shapes");
    for (i, name) in EXPORT_NAMES.iter().enumerate() {
        for delta in [-1isize, 1] {
            let mut l = lens;
            l[i] = (l[i] as isize + delta) as usize;
            let (s, b) = export_raw(fx.layer.0, GPTQ_FORMAT_V1, l, [false; 4]);
            check(s, GPTQ_STATUS_BUFFER_TOO_SMALL, &[&format!("{name} has room for {}", l[i])]);
            b.assert_untouched();
        }
    }
    // export of a bias the layer does not have.
    let mut b = Bufs::new(lens);
    let mut bias = vec![SENT_U16; N];
    let s = unsafe {
        gptq_layer_export(
            fx.layer.0,
            GPTQ_FORMAT_V1,
            b.qweight.as_mut_ptr(),
            lens[0],
            b.qzeros.as_mut_ptr(),
            lens[1],
            b.scales.as_mut_ptr(),
            lens[2],
            b.g_idx.as_mut_ptr(),
            lens[3],
            bias.as_mut_ptr(),
            N,
        )
    };
    check(s, GPTQ_STATUS_INVALID_ARGUMENT, &["bias"]);
    b.assert_untouched();
    assert!(bias.iter().all(|&v| v == SENT_U16));

    // import: every buffer one element short and one element long.
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = desc_of(&p, GPTQ_FORMAT_V1);
    let good = Imp::new(&desc, &packed);
    let long_i32: Vec<i32> = packed.qweight.iter().chain(&packed.qzeros).chain(&packed.g_idx).copied().collect();
    let long_u16: Vec<u16> = packed.scales.iter().copied().chain([0x3C00; N]).collect();
    let bias_ok = [0x3C00u16; N + 1];
    for (imp, name, got, want) in [
        (Imp { qweight_len: lens[0] - 1, ..good }, "qweight", lens[0] - 1, lens[0]),
        (Imp { qweight: long_i32.as_ptr(), qweight_len: lens[0] + 1, ..good }, "qweight", lens[0] + 1, lens[0]),
        (Imp { qzeros_len: lens[1] - 1, ..good }, "qzeros", lens[1] - 1, lens[1]),
        (Imp { qzeros: long_i32.as_ptr(), qzeros_len: lens[1] + 1, ..good }, "qzeros", lens[1] + 1, lens[1]),
        (Imp { scales_len: lens[2] - 1, ..good }, "scales", lens[2] - 1, lens[2]),
        (Imp { scales: long_u16.as_ptr(), scales_len: lens[2] + 1, ..good }, "scales", lens[2] + 1, lens[2]),
        (Imp { g_idx_len: K - 1, ..good }, "g_idx", K - 1, K),
        (Imp { g_idx: long_i32.as_ptr(), g_idx_len: K + 1, ..good }, "g_idx", K + 1, K),
        (Imp { bias: bias_ok.as_ptr(), bias_len: N - 1, ..good }, "bias", N - 1, N),
        (Imp { bias: bias_ok.as_ptr(), bias_len: N + 1, ..good }, "bias", N + 1, N),
    ] {
        imp.fails(GPTQ_STATUS_SHAPE_MISMATCH, &[&format!("{name} has {got} elements, expected {want}")]);
    }
    // ... and with a desc whose dimensions are zero.
    let zero_out = gptq_layer_desc { out_features: 0, ..desc };
    Imp { desc: &zero_out, ..good }.fails(GPTQ_STATUS_SHAPE_MISMATCH, &["out_features 0"]);
    let zero_in = gptq_layer_desc { in_features: 0, ..desc };
    Imp { desc: &zero_in, ..good }.fails(GPTQ_STATUS_SHAPE_MISMATCH, &["in_features 0"]);
    // The untouched valid set imports fine (the failures above are due to the edits).
    assert!(good.run().1.is_some());
}

// ---------------------------------------------------------------------------------------------
// Unsupported bits / group sizes / packing

#[test]
fn unsupported_bits_group_sizes_and_packing() {
    let fx = fixture(3);
    for (bits, gs, word) in [
        (5, 32, "bits 5"),
        (1, 32, "bits 1"),
        (16, 32, "bits 16"),
        (4, 100, "group_size 100"),
        (4, 0, "group_size 0"),
        (4, 8, "group_size 8"),
    ] {
        let cfg = config(bits, gs);
        quantize_fails(&fx.h, &fx.w, N, K, &cfg, GPTQ_STATUS_UNSUPPORTED, &[word]);
        rtn_fails(&fx.w, N, K, &cfg, GPTQ_STATUS_UNSUPPORTED, &[word]);
    }

    // The same through gptq_layer_desc, with otherwise valid tensors.
    let p = props(&fx.layer);
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = desc_of(&p, GPTQ_FORMAT_V1);
    for (d, word) in [
        (gptq_layer_desc { bits: 5, ..desc }, "bits 5"),
        (gptq_layer_desc { bits: 0, ..desc }, "bits 0"),
        (gptq_layer_desc { group_size: 100, ..desc }, "group_size 100"),
        (gptq_layer_desc { group_size: -2, ..desc }, "group_size -2"),
    ] {
        Imp::new(&d, &packed).fails(GPTQ_STATUS_UNSUPPORTED, &[word]);
    }

    // in_features 36 is not a multiple of the 8 values a 4-bit word packs; out_features 12 neither.
    let mut rng = Rng::new(33);
    let x36 = correlated_activations(&mut rng, 64, 36);
    let w36 = rng.normals(N * 36, 0.05);
    let h36 = hessian(36);
    add(&h36, &x36, 64, 36);
    let cfg = config(4, 32);
    quantize_fails(&h36, &w36, N, 36, &cfg, GPTQ_STATUS_SHAPE_MISMATCH, &["multiples of 8", "in_features 36"]);
    rtn_fails(&w36, N, 36, &cfg, GPTQ_STATUS_SHAPE_MISMATCH, &["multiples of 8", "in_features 36"]);
    quantize_fails(&fx.h, &fx.w, 12, K, &cfg, GPTQ_STATUS_SHAPE_MISMATCH, &["multiples of 8", "out_features 12"]);
    // 3 bit packs in units of 32 inputs: 36 fails there too, as does 48.
    let cfg3 = config(3, 32);
    quantize_fails(&h36, &w36, 32, 36, &cfg3, GPTQ_STATUS_SHAPE_MISMATCH, &["multiples of 32"]);
    let d36 = gptq_layer_desc { in_features: 36, ..desc };
    Imp::new(&d36, &packed).fails(GPTQ_STATUS_SHAPE_MISMATCH, &["multiples of 8", "in_features 36"]);
}

// ---------------------------------------------------------------------------------------------
// struct_size

#[test]
fn struct_size_too_small_is_rejected_before_anything_is_written() {
    let fx = fixture(4);
    let full = size_of::<gptq_quant_config>();

    // gptq_quant_config_init: too small a struct_size writes nothing at all.
    for size in [0, 8, full - 4] {
        let mut raw = byte_buf(full);
        check(
            unsafe { gptq_quant_config_init(raw.as_mut_ptr().cast(), size) },
            GPTQ_STATUS_STRUCT_SIZE,
            &["struct_size", &size.to_string()],
        );
        assert_bytes_untouched(&raw);
    }
    // A larger struct_size (a newer caller) is accepted and recorded.
    let mut raw = byte_buf(full + 16);
    ok(unsafe { gptq_quant_config_init(raw.as_mut_ptr().cast(), full + 16) });
    let c = unsafe { *raw.as_ptr().cast::<gptq_quant_config>() };
    assert_eq!((c.struct_size, c.bits, c.group_size, c.sym), (full + 16, 4, 128, 1));

    // gptq_quantize / gptq_quantize_rtn with config->struct_size 8 and 0.
    for size in [8usize, 0] {
        let cfg = gptq_quant_config { struct_size: size, ..fx.cfg };
        quantize_fails(&fx.h, &fx.w, N, K, &cfg, GPTQ_STATUS_STRUCT_SIZE, &["config->struct_size", &size.to_string()]);
        rtn_fails(&fx.w, N, K, &cfg, GPTQ_STATUS_STRUCT_SIZE, &["config->struct_size"]);
    }

    // gptq_quantize with report->struct_size 8: out and report untouched.
    let mut out = sentinel::<gptq_layer>();
    let mut rep = gptq_quant_report { struct_size: 8, ..report_sentinel() };
    let s = unsafe { gptq_quantize(fx.h.0, fx.w.as_ptr().cast(), F32, N, K, K, &fx.cfg, &mut out, &mut rep) };
    check(s, GPTQ_STATUS_STRUCT_SIZE, &["report->struct_size", "8"]);
    assert_eq!(out, sentinel());
    assert_report_untouched(&gptq_quant_report { struct_size: size_of::<gptq_quant_report>(), ..rep });
    assert_eq!(rep.struct_size, 8);

    // gptq_layer_info with info->struct_size 8: nothing else written.
    let psize = size_of::<gptq_layer_properties>();
    let mut raw = byte_buf(psize);
    unsafe { *raw.as_mut_ptr().cast::<usize>() = 8 };
    check(
        unsafe { gptq_layer_info(fx.layer.0, raw.as_mut_ptr().cast()) },
        GPTQ_STATUS_STRUCT_SIZE,
        &["info->struct_size", "8"],
    );
    assert_eq!(raw[0], 8);
    assert_bytes_untouched(&raw[1..]);
    // A larger struct_size: the library writes sizeof(gptq_layer_properties) bytes and no further,
    // keeping the caller's struct_size.
    let mut raw = byte_buf(psize + 16);
    unsafe { *raw.as_mut_ptr().cast::<usize>() = psize + 16 };
    ok(unsafe { gptq_layer_info(fx.layer.0, raw.as_mut_ptr().cast()) });
    let got = unsafe { *raw.as_ptr().cast::<gptq_layer_properties>() };
    assert_eq!((got.struct_size, got.in_features, got.out_features, got.num_groups), (psize + 16, K, N, 2));
    assert_bytes_untouched(&raw[psize / 8..]);

    // gptq_layer_import with desc->struct_size 8.
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = gptq_layer_desc { struct_size: 8, ..desc_of(&props(&fx.layer), GPTQ_FORMAT_V1) };
    Imp::new(&desc, &packed).fails(GPTQ_STATUS_STRUCT_SIZE, &["desc->struct_size", "8"]);
}

// ---------------------------------------------------------------------------------------------
// Enums and flags

#[test]
fn out_of_range_enums_and_flags() {
    let fx = fixture(5);
    let h_before = read(&fx.h);
    let x = fx.x.as_ptr().cast::<c_void>();

    // dtype
    for dt in [7, GPTQ_DTYPE_F64, u32::MAX] {
        check(unsafe { gptq_hessian_add_batch(fx.h.0, x, dt, ROWS, K, K) }, GPTQ_STATUS_INVALID_ENUM, &["dtype"]);
        let (s, _, _) = quantize_raw(fx.h.0, fx.w.as_ptr().cast(), dt, N, K, K, &fx.cfg);
        check(s, GPTQ_STATUS_INVALID_ENUM, &["dtype"]);
    }
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, x, 7, ROWS, K, K) },
        GPTQ_STATUS_INVALID_ENUM,
        &["7 is not a gptq_dtype"],
    );
    assert_eq!(read(&fx.h), h_before);
    let mut out = sentinel::<gptq_hessian>();
    let dense = vec![0f32; K * K];
    for dt in [7, GPTQ_DTYPE_F16, GPTQ_DTYPE_BF16] {
        check(
            unsafe { gptq_hessian_from_dense(dense.as_ptr().cast(), dt, K, 1, GPTQ_COUNT_ROWS, &mut out) },
            GPTQ_STATUS_INVALID_ENUM,
            &["dtype"],
        );
        assert_eq!(out, sentinel());
    }
    let a = Rng::new(5).normals(2 * K, 1.0);
    for (adt, cdt, word) in
        [(7, F32, "a_dtype"), (GPTQ_DTYPE_F64, F32, "a_dtype"), (F32, 7, "c_dtype"), (F32, GPTQ_DTYPE_BF16, "c_dtype")]
    {
        let mut c = sent_f32(2 * N);
        check(
            unsafe { gptq_gemm(fx.layer.0, a.as_ptr().cast(), adt, 2, K, c.as_mut_ptr().cast(), cdt, N) },
            GPTQ_STATUS_INVALID_ENUM,
            &[word],
        );
        assert_f32_untouched(&c, "c");
    }
    for dt in [7, GPTQ_DTYPE_BF16, GPTQ_DTYPE_F64] {
        let mut o = sent_f32(N * K);
        check(
            unsafe { gptq_layer_dequantize(fx.layer.0, dt, o.as_mut_ptr().cast(), N * K) },
            GPTQ_STATUS_INVALID_ENUM,
            &["out_dtype"],
        );
        assert_f32_untouched(&o, "out");
    }

    // format 0 and 3, on export and import.
    let lens = export_lens(&props(&fx.layer));
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = desc_of(&props(&fx.layer), GPTQ_FORMAT_V1);
    for f in [0, 3] {
        let (s, b) = export_raw(fx.layer.0, f, lens, [false; 4]);
        check(s, GPTQ_STATUS_INVALID_ENUM, &[&format!("format: {f} is not a gptq_format")]);
        b.assert_untouched();
        let d = gptq_layer_desc { format: f, ..desc };
        Imp::new(&d, &packed).fails(GPTQ_STATUS_INVALID_ENUM, &[&format!("format: {f}")]);
    }

    // sample count 9
    let mut out = sentinel::<gptq_hessian>();
    check(unsafe { gptq_hessian_new(K, 9, &mut out) }, GPTQ_STATUS_INVALID_ENUM, &["count: 9"]);
    assert_eq!(out, sentinel());
    let mut eye = vec![0f32; K * K];
    (0..K).for_each(|i| eye[i * K + i] = 1.0);
    check(
        unsafe { gptq_hessian_from_dense(eye.as_ptr().cast(), F32, K, 1, 9, &mut out) },
        GPTQ_STATUS_INVALID_ENUM,
        &["count: 9"],
    );
    assert_eq!(out, sentinel());

    // Merging Hessians that count samples differently.
    let mut batches = null_mut();
    ok(unsafe { gptq_hessian_from_dense(eye.as_ptr().cast(), F32, K, 1, GPTQ_COUNT_BATCHES, &mut batches) });
    let batches = Hess(batches);
    check(unsafe { gptq_hessian_merge(fx.h.0, batches.0) }, GPTQ_STATUS_INVALID_ARGUMENT, &["rows vs batches"]);
    assert_eq!(read(&fx.h), h_before);

    // Flags other than 0/1 in the config.
    type Edit = fn(&mut gptq_quant_config);
    let edits: [(Edit, &str); 6] = [
        (|c| c.sym = 2, "config.sym must be 0 or 1, got 2"),
        (|c| c.sym = -1, "config.sym must be 0 or 1, got -1"),
        (|c| c.desc_act = 2, "config.desc_act"),
        (|c| c.static_groups = 7, "config.static_groups"),
        (|c| c.act_group_aware = -3, "config.act_group_aware"),
        (|c| c.mse = 2, "config.mse"),
    ];
    for (edit, word) in edits {
        let mut cfg = fx.cfg;
        edit(&mut cfg);
        quantize_fails(&fx.h, &fx.w, N, K, &cfg, GPTQ_STATUS_INVALID_ARGUMENT, &[word]);
        rtn_fails(&fx.w, N, K, &cfg, GPTQ_STATUS_INVALID_ARGUMENT, &[word]);
    }
    // Out-of-range option values.
    let edits: [(Edit, &str); 5] = [
        (|c| c.damp_percent = 0.0, "damp_percent"),
        (|c| c.damp_percent = f32::NAN, "damp_percent"),
        (|c| c.damp_auto_increment = 1.0, "damp_auto_increment"),
        (|c| c.block_size = 0, "block_size 0"),
        (|c| (c.desc_act, c.act_group_aware) = (1, 1), "desc_act and act_group_aware"),
    ];
    for (edit, word) in edits {
        let mut cfg = fx.cfg;
        edit(&mut cfg);
        quantize_fails(&fx.h, &fx.w, N, K, &cfg, GPTQ_STATUS_INVALID_ARGUMENT, &[word]);
    }
    // desc.sym 2
    let d = gptq_layer_desc { sym: 2, ..desc };
    Imp::new(&d, &packed).fails(GPTQ_STATUS_INVALID_ARGUMENT, &["desc.sym must be 0 or 1, got 2"]);
}

// ---------------------------------------------------------------------------------------------
// Misaligned pointers

#[test]
fn misaligned_pointers() {
    let fx = fixture(6);
    let h_before = read(&fx.h);
    let n_before = n_samples(&fx.h);

    // add_batch: f32 activations at an odd byte offset (the bytes are never read).
    let mut raw = byte_buf(ROWS * K * 4 + 8);
    let x1 = misaligned::<c_void>(&mut raw, 1);
    check(unsafe { gptq_hessian_add_batch(fx.h.0, x1, F32, ROWS, K, K) }, GPTQ_STATUS_MISALIGNED, &["x (", "4 bytes"]);
    // f16 activations at an odd offset.
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, x1, GPTQ_DTYPE_F16, ROWS, K, K) },
        GPTQ_STATUS_MISALIGNED,
        &["x (", "2 bytes"],
    );
    // The Hessian handle itself misaligned.
    let hm = unsafe { fx.h.0.cast::<u8>().add(1).cast::<gptq_hessian>() };
    check(
        unsafe { gptq_hessian_add_batch(hm, fx.x.as_ptr().cast(), F32, ROWS, K, K) },
        GPTQ_STATUS_MISALIGNED,
        &["hessian ("],
    );
    assert_eq!(read(&fx.h), h_before);
    assert_eq!(n_samples(&fx.h), n_before);

    // from_dense: f32 and f64 matrices at offsets 2 and 4.
    let mut out = sentinel::<gptq_hessian>();
    let mut raw = byte_buf(K * K * 8 + 8);
    check(
        unsafe { gptq_hessian_from_dense(misaligned(&mut raw, 2), F32, K, 1, GPTQ_COUNT_ROWS, &mut out) },
        GPTQ_STATUS_MISALIGNED,
        &["h ("],
    );
    check(
        unsafe { gptq_hessian_from_dense(misaligned(&mut raw, 4), GPTQ_DTYPE_F64, K, 1, GPTQ_COUNT_ROWS, &mut out) },
        GPTQ_STATUS_MISALIGNED,
        &["h (", "8 bytes"],
    );
    assert_eq!(out, sentinel());

    // hessian_new: the out-pointer itself misaligned; its bytes stay as they were.
    let mut raw = byte_buf(16);
    check(
        unsafe { gptq_hessian_new(K, GPTQ_COUNT_ROWS, misaligned(&mut raw, 4)) },
        GPTQ_STATUS_MISALIGNED,
        &["out ("],
    );
    assert_bytes_untouched(&raw);

    // hessian_read into a misaligned float buffer.
    let mut raw = byte_buf(K * K * 4 + 8);
    check(
        unsafe { gptq_hessian_read(fx.h.0, misaligned(&mut raw, 3), K * K) },
        GPTQ_STATUS_MISALIGNED,
        &["out ("],
    );
    assert_bytes_untouched(&raw);

    // hessian_info with one good and one misaligned out-pointer: neither is written.
    let mut k_out = usize::MAX;
    let mut raw = byte_buf(16);
    check(
        unsafe { gptq_hessian_info(fx.h.0, &mut k_out, misaligned(&mut raw, 4)) },
        GPTQ_STATUS_MISALIGNED,
        &["n_samples ("],
    );
    assert_bytes_untouched(&raw);
    assert_eq!(k_out, usize::MAX, "gptq_hessian_info wrote in_features although it failed");
    let mut n_out = u64::MAX;
    check(
        unsafe { gptq_hessian_info(fx.h.0, misaligned(&mut raw, 4), &mut n_out) },
        GPTQ_STATUS_MISALIGNED,
        &["in_features ("],
    );
    assert_bytes_untouched(&raw);
    assert_eq!(n_out, u64::MAX, "gptq_hessian_info wrote n_samples although it failed");

    // quantize: weight at offset 2, config at offset 4, out at offset 4.
    let mut raw = byte_buf(N * K * 4 + 8);
    let (s, _, _) = quantize_raw(fx.h.0, misaligned(&mut raw, 2), F32, N, K, K, &fx.cfg);
    check(s, GPTQ_STATUS_MISALIGNED, &["weight ("]);
    let mut craw = byte_buf(size_of::<gptq_quant_config>() + 8);
    let cm = misaligned::<gptq_quant_config>(&mut craw, 4);
    let (s, _, _) = quantize_raw(fx.h.0, fx.w.as_ptr().cast(), F32, N, K, K, cm);
    check(s, GPTQ_STATUS_MISALIGNED, &["config ("]);
    let mut oraw = byte_buf(16);
    let om = misaligned::<*mut gptq_layer>(&mut oraw, 4);
    let s = unsafe { gptq_quantize(fx.h.0, fx.w.as_ptr().cast(), F32, N, K, K, &fx.cfg, om, null_mut()) };
    check(s, GPTQ_STATUS_MISALIGNED, &["out ("]);
    assert_bytes_untouched(&oraw);

    // gemm: A at an odd offset; C at an odd offset (C's bytes unchanged).
    let m = 2;
    let a = Rng::new(6).normals(m * K, 1.0);
    let mut c = sent_f32(m * N);
    check(
        unsafe { gptq_gemm(fx.layer.0, misaligned(&mut raw, 1), F32, m, K, c.as_mut_ptr().cast(), F32, N) },
        GPTQ_STATUS_MISALIGNED,
        &["a ("],
    );
    assert_f32_untouched(&c, "c");
    let mut craw = byte_buf(m * N * 4 + 8);
    check(
        unsafe { gptq_gemm(fx.layer.0, a.as_ptr().cast(), F32, m, K, misaligned(&mut craw, 1), F32, N) },
        GPTQ_STATUS_MISALIGNED,
        &["c ("],
    );
    check(
        unsafe { gptq_gemm(fx.layer.0, a.as_ptr().cast(), F32, m, K, misaligned(&mut craw, 1), GPTQ_DTYPE_F16, N) },
        GPTQ_STATUS_MISALIGNED,
        &["c (", "2 bytes"],
    );
    assert_bytes_untouched(&craw);

    // dequantize into a misaligned buffer.
    let mut draw = byte_buf(N * K * 4 + 8);
    check(
        unsafe { gptq_layer_dequantize(fx.layer.0, F32, misaligned(&mut draw, 2), N * K) },
        GPTQ_STATUS_MISALIGNED,
        &["out ("],
    );
    check(
        unsafe { gptq_layer_dequantize(fx.layer.0, GPTQ_DTYPE_F16, misaligned(&mut draw, 1), N * K) },
        GPTQ_STATUS_MISALIGNED,
        &["out ("],
    );
    assert_bytes_untouched(&draw);

    // export: scales (u16) at an odd offset; the other buffers stay untouched.
    let p = props(&fx.layer);
    let lens = export_lens(&p);
    let mut b = Bufs::new(lens);
    let mut sraw = byte_buf(lens[2] * 2 + 8);
    let s = unsafe {
        gptq_layer_export(
            fx.layer.0,
            GPTQ_FORMAT_V1,
            b.qweight.as_mut_ptr(),
            lens[0],
            b.qzeros.as_mut_ptr(),
            lens[1],
            misaligned(&mut sraw, 1),
            lens[2],
            b.g_idx.as_mut_ptr(),
            lens[3],
            null_mut(),
            0,
        )
    };
    check(s, GPTQ_STATUS_MISALIGNED, &["scales ("]);
    b.assert_untouched();
    assert_bytes_untouched(&sraw);
    // layer_info into a misaligned struct.
    let mut iraw = byte_buf(size_of::<gptq_layer_properties>() + 8);
    check(
        unsafe { gptq_layer_info(fx.layer.0, misaligned(&mut iraw, 4)) },
        GPTQ_STATUS_MISALIGNED,
        &["info ("],
    );
    assert_bytes_untouched(&iraw);

    // import: qweight (i32) at an odd offset, and the desc at offset 4.
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = desc_of(&p, GPTQ_FORMAT_V1);
    let good = Imp::new(&desc, &packed);
    let mut qraw = byte_buf(lens[0] * 4 + 8);
    Imp { qweight: misaligned(&mut qraw, 1), ..good }.fails(GPTQ_STATUS_MISALIGNED, &["qweight ("]);
    Imp { g_idx: misaligned(&mut qraw, 2), ..good }.fails(GPTQ_STATUS_MISALIGNED, &["g_idx ("]);
    let mut draw = byte_buf(size_of::<gptq_layer_desc>() + 8);
    Imp { desc: misaligned(&mut draw, 4), ..good }.fails(GPTQ_STATUS_MISALIGNED, &["desc ("]);
}

// ---------------------------------------------------------------------------------------------
// NaN / Inf

#[test]
fn non_finite_values_are_rejected() {
    let fx = fixture(7);
    let h_before = read(&fx.h);
    let n_before = n_samples(&fx.h);

    // Weights (quantize and RTN).
    for (bad, pos) in [(f32::NAN, 5 * K + 7), (f32::INFINITY, 0), (f32::NEG_INFINITY, N * K - 1)] {
        let mut w = fx.w.clone();
        w[pos] = bad;
        let at = format!("weight[{}, {}]", pos / K, pos % K);
        quantize_fails(&fx.h, &w, N, K, &fx.cfg, GPTQ_STATUS_NON_FINITE, &[&at, "NaN"]);
        rtn_fails(&w, N, K, &fx.cfg, GPTQ_STATUS_NON_FINITE, &[&at]);
    }
    // Weight NaN in f16 and bf16.
    let mut w16: Vec<u16> = fx.w.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    w16[3] = 0x7E00;
    let (s, _, _) = quantize_raw(fx.h.0, w16.as_ptr().cast(), GPTQ_DTYPE_F16, N, K, K, &fx.cfg);
    check(s, GPTQ_STATUS_NON_FINITE, &["weight[0, 3]"]);
    let mut wb: Vec<u16> = fx.w.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    wb[K + 1] = 0x7F80; // +Inf
    let (s, _, _) = quantize_raw(fx.h.0, wb.as_ptr().cast(), GPTQ_DTYPE_BF16, N, K, K, &fx.cfg);
    check(s, GPTQ_STATUS_NON_FINITE, &["weight[1, 1]"]);
    // A NaN outside the strided window is not part of the weight and is fine.
    let mut ws = vec![f32::NAN; N * (K + 3)];
    for r in 0..N {
        ws[r * (K + 3)..r * (K + 3) + K].copy_from_slice(&fx.w[r * K..(r + 1) * K]);
    }
    let (s, l, _) = quantize_raw(fx.h.0, ws.as_ptr().cast(), F32, N, K, K + 3, &fx.cfg);
    ok(s);
    assert_eq!(dequantize(l.as_ref().unwrap()), dequantize(&fx.layer), "strided weight gives another result");

    // Activations.
    for (bad, pos) in [(f32::NAN, 17 * K + 3), (f32::NEG_INFINITY, ROWS * K - 1)] {
        let mut x = fx.x.clone();
        x[pos] = bad;
        check(
            unsafe { gptq_hessian_add_batch(fx.h.0, x.as_ptr().cast(), F32, ROWS, K, K) },
            GPTQ_STATUS_NON_FINITE,
            &[&format!("activations[{}, {}]", pos / K, pos % K), "NaN"],
        );
    }
    let mut x16: Vec<u16> = fx.x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    x16[2 * K] = 0xFC00; // -Inf
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, x16.as_ptr().cast(), GPTQ_DTYPE_F16, ROWS, K, K) },
        GPTQ_STATUS_NON_FINITE,
        &["activations[2, 0]"],
    );
    assert_eq!(read(&fx.h), h_before);
    assert_eq!(n_samples(&fx.h), n_before);

    // Dense Hessians, f32 and f64.
    let mut out = sentinel::<gptq_hessian>();
    let mut dense: Vec<f32> = h_before.iter().map(|&b| f32::from_bits(b)).collect();
    dense[3 * K + 9] = f32::NAN;
    check(
        unsafe { gptq_hessian_from_dense(dense.as_ptr().cast(), F32, K, 10, GPTQ_COUNT_ROWS, &mut out) },
        GPTQ_STATUS_NON_FINITE,
        &["Hessian[3, 9]", "NaN"],
    );
    let mut dense64: Vec<f64> = h_before.iter().map(|&b| f32::from_bits(b) as f64).collect();
    dense64[K * K - 1] = f64::INFINITY;
    check(
        unsafe { gptq_hessian_from_dense(dense64.as_ptr().cast(), GPTQ_DTYPE_F64, K, 10, GPTQ_COUNT_ROWS, &mut out) },
        GPTQ_STATUS_NON_FINITE,
        &["Hessian[63, 63]"],
    );
    assert_eq!(out, sentinel());

    // A of gemm (f32 and bf16); C untouched.
    let m = 3;
    let mut a = Rng::new(70).normals(m * K, 1.0);
    a[K + 5] = f32::NAN;
    let mut c = sent_f32(m * N);
    check(
        unsafe { gptq_gemm(fx.layer.0, a.as_ptr().cast(), F32, m, K, c.as_mut_ptr().cast(), F32, N) },
        GPTQ_STATUS_NON_FINITE,
        &["A[1, 5]", "NaN"],
    );
    assert_f32_untouched(&c, "c");
    let mut ab: Vec<u16> = a.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    ab[K + 5] = 0;
    ab[2 * K] = 0xFF80; // -Inf
    check(
        unsafe { gptq_gemm(fx.layer.0, ab.as_ptr().cast(), GPTQ_DTYPE_BF16, m, K, c.as_mut_ptr().cast(), F32, N) },
        GPTQ_STATUS_NON_FINITE,
        &["A[2, 0]"],
    );
    assert_f32_untouched(&c, "c");

    // Scales and bias on import.
    let p = props(&fx.layer);
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = desc_of(&p, GPTQ_FORMAT_V1);
    for (bits, pos) in [(0x7E00u16, N + 3), (0x7C00, 0), (0xFC00, 2 * N - 1)] {
        let mut scales = packed.scales.clone();
        scales[pos] = bits;
        let imp = Imp { scales: scales.as_ptr(), ..Imp::new(&desc, &packed) };
        imp.fails(GPTQ_STATUS_NON_FINITE, &[&format!("scales[{}, {}]", pos / N, pos % N), "NaN"]);
    }
    let mut bias = [0x3C00u16; N];
    bias[4] = 0x7E01;
    Imp { bias: bias.as_ptr(), bias_len: N, ..Imp::new(&desc, &packed) }.fails(GPTQ_STATUS_NON_FINITE, &["bias[4]"]);
    bias[4] = 0x3C00;
    let (s, l) = Imp { bias: bias.as_ptr(), bias_len: N, ..Imp::new(&desc, &packed) }.run();
    ok(s);
    assert_eq!(props(l.as_ref().unwrap()).has_bias, 1);
}

// ---------------------------------------------------------------------------------------------
// Non-positive-definite Hessians

/// A k×k matrix with `diag` on the diagonal and `off` elsewhere.
fn constant_matrix(k: usize, diag: f32, off: f32) -> Vec<f32> {
    (0..k * k).map(|i| if i / k == i % k { diag } else { off }).collect()
}

#[test]
fn hessians_that_stay_indefinite_fail_and_mildly_indefinite_ones_are_rescued() {
    const K2: usize = 32;
    const N2: usize = 8;
    let mut rng = Rng::new(8);
    let w = rng.normals(N2 * K2, 0.05);
    let cfg = config(4, 32);

    // Diagonal 1, off-diagonal 3: eigenvalues 94 and -2 (×31); even damping 1.0 and the diagonal
    // floor (both adding the mean diagonal 1) leave it indefinite.
    let strong = from_dense(&constant_matrix(K2, 1.0, 3.0), K2);
    quantize_fails(&strong, &w, N2, K2, &cfg, GPTQ_STATUS_NOT_POSITIVE_DEFINITE, &["Cholesky", "floored"]);
    let no_retry = gptq_quant_config { damp_auto_increment: 0.0, ..cfg };
    quantize_fails(&strong, &w, N2, K2, &no_retry, GPTQ_STATUS_NOT_POSITIVE_DEFINITE, &["damp_auto_increment is 0"]);

    // A negative diagonal (no positive mean diagonal to scale the damping by). (An all-zero Hessian
    // is not an error: like the reference, all-zero diagonal entries count as dead inputs.)
    let negative = from_dense(&constant_matrix(K2, -1.0, 0.0), K2);
    quantize_fails(&negative, &w, N2, K2, &cfg, GPTQ_STATUS_NOT_POSITIVE_DEFINITE, &["mean diagonal is -1"]);

    // Mildly indefinite: a rank-16 Gram matrix (its smallest eigenvalues are 0) minus
    // 0.03·mean(diag)·I. The default damping (0.01) is not enough, but auto-increment rescues it.
    let x = correlated_activations(&mut rng, 16, K2);
    let gram = hessian(K2);
    add(&gram, &x, 16, K2);
    let mut m: Vec<f32> = read(&gram).iter().map(|&b| f32::from_bits(b)).collect();
    let mean = (0..K2).map(|i| m[i * K2 + i]).sum::<f32>() / K2 as f32;
    (0..K2).for_each(|i| m[i * K2 + i] -= 0.03 * mean);
    let mild = from_dense(&m, K2);
    quantize_fails(&mild, &w, N2, K2, &no_retry, GPTQ_STATUS_NOT_POSITIVE_DEFINITE, &["damp_auto_increment is 0"]);
    let (layer, rep) = quantize(&mild, &w, N2, K2, &cfg);
    assert!(rep.damp_percent_used > 0.01, "damping was not raised: {rep:?}");
    assert!(rep.damp_percent_used > 0.025 && rep.damp_percent_used < 0.045, "{rep:?}");
    assert_eq!(rep.diag_floor_used, 0, "{rep:?}");
    assert!(rep.loss_gptq.is_finite() && rep.loss_rtn.is_finite(), "{rep:?}");
    // The result is a usable layer.
    let deq = dequantize(&layer);
    assert!(deq.iter().all(|v| v.is_finite()));
    // The Hessians are unchanged by the failed and successful calls.
    assert_eq!(read(&mild), m.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Invalid packed layers

#[test]
fn invalid_packed_layers_are_rejected() {
    let fx = fixture(9);
    let p = props(&fx.layer);
    let g = p.num_groups as i32;
    assert_eq!(g, 2);
    let packed = export(&fx.layer, GPTQ_FORMAT_V1);
    let desc = desc_of(&p, GPTQ_FORMAT_V1);
    let good = Imp::new(&desc, &packed);
    let (s, l) = good.run();
    ok(s);
    assert_eq!(dequantize(l.as_ref().unwrap()), dequantize(&fx.layer), "a valid round trip changes the layer");

    // g_idx out of range: == num_groups, and -1.
    for (pos, v) in [(5usize, g), (K - 1, g + 100), (0, -1), (40, i32::MIN)] {
        let mut gi = packed.g_idx.clone();
        gi[pos] = v;
        Imp { g_idx: gi.as_ptr(), ..good }
            .fails(GPTQ_STATUS_INVALID_FORMAT, &[&format!("g_idx[{pos}] = {v}"), &format!("[0, {g})")]);
    }
    // A NULL g_idx means the trivial one.
    let (s, l) = Imp { g_idx: null(), g_idx_len: 0, ..good }.run();
    ok(s);
    assert_eq!(dequantize(l.as_ref().unwrap()), dequantize(&fx.layer));

    // Symmetric desc, zero points not at the midpoint: v1 tensors read as v2 (zero 7 instead of 8),
    // and a v1 word with one nibble changed.
    let as_v2 = gptq_layer_desc { format: GPTQ_FORMAT_V2, ..desc };
    Imp { desc: &as_v2, ..good }.fails(GPTQ_STATUS_INVALID_FORMAT, &["symmetric", "is 7 instead of 8"]);
    let mut qz = packed.qzeros.clone();
    qz[1] ^= 0x30; // second word, third nibble: zero point 8 → 5 (stored 7 → 4)
    Imp { qzeros: qz.as_ptr(), ..good }.fails(GPTQ_STATUS_INVALID_FORMAT, &["symmetric", "is 5 instead of 8"]);
    // The same tensors declared asymmetric are a valid layer.
    let asym = gptq_layer_desc { sym: 0, ..desc };
    let (s, _) = Imp { desc: &asym, qzeros: qz.as_ptr(), ..good }.run();
    ok(s);
}

// ---------------------------------------------------------------------------------------------
// Handles after an error

#[test]
fn handles_stay_usable_after_errors() {
    let fx = fixture(10);
    let before = read(&fx.h);
    let n_before = n_samples(&fx.h);
    assert_eq!(n_before, ROWS as u64);

    // A failed add_batch (NaN in the last row) leaves the Hessian bit for bit as it was.
    let mut rng = Rng::new(100);
    let mut x2 = correlated_activations(&mut rng, 32, K);
    let keep = x2[31 * K + 60];
    x2[31 * K + 60] = f32::NAN;
    check(
        unsafe { gptq_hessian_add_batch(fx.h.0, x2.as_ptr().cast(), F32, 32, K, K) },
        GPTQ_STATUS_NON_FINITE,
        &["activations[31, 60]"],
    );
    assert_eq!(read(&fx.h), before, "a failed add_batch changed the Hessian");
    assert_eq!(n_samples(&fx.h), n_before);
    // The following valid batch succeeds and counts, clearing the error message.
    x2[31 * K + 60] = keep;
    add(&fx.h, &x2, 32, K);
    assert_eq!(last_error(), "", "a successful call leaves an error message");
    assert_eq!(n_samples(&fx.h), n_before + 32);
    // ... and gives the same Hessian as adding both batches to a fresh handle.
    let fresh = hessian(K);
    add(&fresh, &fx.x, ROWS, K);
    add(&fresh, &x2, 32, K);
    assert_eq!(read(&fx.h), read(&fresh));

    // gptq_hessian_merge(h, h) is refused and leaves h usable.
    let before = read(&fx.h);
    check(unsafe { gptq_hessian_merge(fx.h.0, fx.h.0) }, GPTQ_STATUS_INVALID_ARGUMENT, &["same Hessian"]);
    assert_eq!(read(&fx.h), before);
    assert_eq!(n_samples(&fx.h), n_before + 32);
    ok(unsafe { gptq_hessian_merge(fx.h.0, fresh.0) });
    assert_eq!(n_samples(&fx.h), 2 * (n_before + 32));
    let (_, rep) = quantize(&fx.h, &fx.w, N, K, &fx.cfg);
    assert!(rep.loss_gptq.is_finite());

    // A failed gemm leaves the layer computing correct results.
    let m = 5;
    let a = Rng::new(101).normals(m * K, 1.0);
    let c0 = gemm(&fx.layer, &a, m);
    assert_gemm_correct(&fx.layer, &a, m, &c0);
    let mut bad = a.clone();
    bad[2 * K] = f32::INFINITY;
    let mut c = sent_f32(m * N);
    check(
        unsafe { gptq_gemm(fx.layer.0, bad.as_ptr().cast(), F32, m, K, c.as_mut_ptr().cast(), F32, N) },
        GPTQ_STATUS_NON_FINITE,
        &["A[2, 0]"],
    );
    assert_f32_untouched(&c, "c");
    check(
        unsafe { gptq_gemm(fx.layer.0, a.as_ptr().cast(), F32, m, K - 1, c.as_mut_ptr().cast(), F32, N) },
        GPTQ_STATUS_INVALID_ARGUMENT,
        &["lda"],
    );
    let c1 = gemm(&fx.layer, &a, m);
    assert_eq!(
        c1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        c0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "gemm after a failed gemm differs"
    );
    assert_gemm_correct(&fx.layer, &a, m, &c1);
    assert_eq!(last_error(), "");
}

// ---------------------------------------------------------------------------------------------
// Status strings

#[test]
fn every_status_has_a_distinct_string() {
    let defined = [
        GPTQ_STATUS_OK,
        GPTQ_STATUS_NULL_POINTER,
        GPTQ_STATUS_INVALID_ARGUMENT,
        GPTQ_STATUS_SHAPE_MISMATCH,
        GPTQ_STATUS_UNSUPPORTED,
        GPTQ_STATUS_INVALID_ENUM,
        GPTQ_STATUS_STRUCT_SIZE,
        GPTQ_STATUS_NON_FINITE,
        GPTQ_STATUS_NOT_POSITIVE_DEFINITE,
        GPTQ_STATUS_INVALID_FORMAT,
        GPTQ_STATUS_BUFFER_TOO_SMALL,
        GPTQ_STATUS_MISALIGNED,
        GPTQ_STATUS_POISONED,
        GPTQ_STATUS_OUT_OF_MEMORY,
        GPTQ_STATUS_IO,
        GPTQ_STATUS_NO_DEVICE,
        GPTQ_STATUS_CUDA,
        GPTQ_STATUS_PANIC,
    ];
    let mut seen = std::collections::HashSet::new();
    for s in defined {
        let name = status_name(s);
        assert!(!name.is_empty(), "status {s} has an empty string");
        assert_ne!(name, "unknown status", "status {s}");
        assert!(seen.insert(name.clone()), "status {s} shares its string {name:?}");
    }
    assert_eq!(seen.len(), 18);
    for s in [12345, 17, 98, 100, -1, i32::MIN, i32::MAX] {
        assert_eq!(status_name(s), "unknown status", "status {s}");
    }
    // The string is static: the same pointer every time.
    assert_eq!(gptq_status_string(GPTQ_STATUS_NON_FINITE), gptq_status_string(GPTQ_STATUS_NON_FINITE));
}
