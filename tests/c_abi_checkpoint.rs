//! The checkpoint C ABI, called directly from Rust: write a checkpoint through the writer functions,
//! open it, enumerate layers and tensors, fetch layers, and check statuses, messages and untouched
//! out-parameters on bad input.

use gptq::ffi::*;
use std::ffi::{c_char, CStr, CString};
use std::mem::size_of;
use std::path::PathBuf;
use std::ptr::{null, null_mut};

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-abi-checkpoint").join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn path_c(p: &std::path::Path) -> CString {
    cstr(p.to_str().unwrap())
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_str().unwrap().to_owned()
}

#[track_caller]
fn check(status: gptq_status, want: gptq_status, words: &[&str]) {
    let msg = last_error();
    assert_eq!(status, want, "message: {msg:?}");
    for w in words {
        assert!(msg.contains(w), "message {msg:?} does not mention {w:?}");
    }
}

#[track_caller]
fn ok(status: gptq_status) {
    assert_eq!(status, GPTQ_STATUS_OK, "{}", last_error());
}

const K: usize = 64;
const N: usize = 32;

/// A 4-bit, group-32, symmetric layer with a bias, imported through the C ABI.
fn make_layer(seed: u32) -> *mut gptq_layer {
    make_layer_with(seed, true)
}

fn make_layer_with(seed: u32, with_bias: bool) -> *mut gptq_layer {
    let desc = gptq_layer_desc { struct_size: size_of::<gptq_layer_desc>(), bits: 4, group_size: 32, in_features: K, out_features: N, sym: 1, format: GPTQ_FORMAT_V1 };
    let qweight: Vec<i32> = (0..K / 8 * N).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as i32).collect();
    let qzeros = [0x7777_7777i32; 2 * N / 8];
    let scales: Vec<u16> = (0..2 * N).map(|i| half::f16::from_f32(0.01 + i as f32 * 1e-4).to_bits()).collect();
    let g_idx: Vec<i32> = (0..K).map(|k| (k / 32) as i32).collect();
    let bias: Vec<u16> = (0..N).map(|i| half::f16::from_f32(i as f32 / 8.0).to_bits()).collect();
    let mut out = null_mut();
    ok(unsafe {
        gptq_layer_import(&desc, qweight.as_ptr(), qweight.len(), qzeros.as_ptr(), qzeros.len(), scales.as_ptr(), scales.len(), g_idx.as_ptr(), g_idx.len(), if with_bias { bias.as_ptr() } else { null() }, if with_bias { bias.len() } else { 0 }, &mut out)
    });
    out
}

fn dequant(layer: *const gptq_layer) -> Vec<f32> {
    let mut out = vec![0f32; K * N];
    ok(unsafe { gptq_layer_dequantize(layer, GPTQ_DTYPE_F32, out.as_mut_ptr().cast(), out.len()) });
    out
}

const CONFIG: &str = r#"{"bits": 4, "group_size": 32, "sym": true, "desc_act": false, "custom": "kept"}"#;

/// Writes two layers and two tensors through the C writer. Returns the layers (caller frees).
fn write_checkpoint(dir: &std::path::Path, max_shard_size: u64) -> Vec<*mut gptq_layer> {
    let source = cstr(r#"{"model_type": "llama", "hidden_size": 64}"#);
    let opts = gptq_checkpoint_write_options { struct_size: size_of::<gptq_checkpoint_write_options>(), format: GPTQ_FORMAT_V1, max_shard_size, source_config_json: source.as_ptr() };
    let mut w = null_mut();
    ok(unsafe { gptq_checkpoint_writer_new(path_c(dir).as_ptr(), cstr(CONFIG).as_ptr(), &opts, &mut w) });
    let layers = vec![make_layer(1), make_layer(2)];
    for (i, l) in layers.iter().enumerate() {
        ok(unsafe { gptq_checkpoint_writer_add_layer(w, cstr(&format!("model.layers.{i}.mlp.up_proj")).as_ptr(), *l) });
    }
    let emb: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let shape = [3usize, 4];
    ok(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("model.embed_tokens.weight").as_ptr(), cstr("F32").as_ptr(), shape.as_ptr(), 2, emb.as_ptr().cast(), 48) });
    let scalar = 7i64.to_le_bytes();
    ok(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("model.step").as_ptr(), cstr("I64").as_ptr(), null(), 0, scalar.as_ptr().cast(), 8) });
    ok(unsafe { gptq_checkpoint_writer_finish(w) });
    layers
}

#[test]
fn a_checkpoint_written_through_the_c_abi_reads_back() {
    for shard in [0u64, 2000] {
        let dir = scratch(&format!("roundtrip-{shard}"));
        let layers = write_checkpoint(&dir, shard);
        assert_eq!(dir.join("model.safetensors.index.json").exists(), shard > 0);

        let mut ck = null_mut();
        ok(unsafe { gptq_checkpoint_open(path_c(&dir).as_ptr(), &mut ck) });
        let mut n = 0usize;
        ok(unsafe { gptq_checkpoint_num_layers(ck, &mut n) });
        assert_eq!(n, 2);
        for (i, original) in layers.iter().enumerate() {
            let mut name: *const c_char = null();
            ok(unsafe { gptq_checkpoint_layer_name(ck, i, &mut name) });
            let name_s = unsafe { CStr::from_ptr(name) }.to_str().unwrap();
            assert_eq!(name_s, format!("model.layers.{i}.mlp.up_proj"));
            let mut info = gptq_layer_properties { struct_size: size_of::<gptq_layer_properties>(), ..Default::default() };
            ok(unsafe { gptq_checkpoint_layer_info(ck, name, &mut info) });
            assert_eq!((info.bits, info.group_size, info.in_features, info.out_features, info.sym, info.act_order, info.has_bias), (4, 32, K, N, 1, 0, 1));
            let mut layer = null_mut();
            ok(unsafe { gptq_checkpoint_get_layer(ck, name, &mut layer) });
            assert_eq!(dequant(layer), dequant(*original));
            unsafe { gptq_layer_free(layer) };
        }
        let mut nt = 0usize;
        ok(unsafe { gptq_checkpoint_num_tensors(ck, &mut nt) });
        assert_eq!(nt, 2);
        let mut v = gptq_tensor_view { struct_size: size_of::<gptq_tensor_view>(), name: null(), dtype: null(), element_size: 0, ndim: 0, shape: null(), data: null(), nbytes: 0 };
        ok(unsafe { gptq_checkpoint_tensor(ck, 0, &mut v) });
        assert_eq!(unsafe { CStr::from_ptr(v.name) }.to_str().unwrap(), "model.embed_tokens.weight");
        assert_eq!(unsafe { CStr::from_ptr(v.dtype) }.to_str().unwrap(), "F32");
        assert_eq!((v.element_size, v.ndim, v.nbytes), (4, 2, 48));
        assert_eq!(unsafe { std::slice::from_raw_parts(v.shape, v.ndim) }, [3, 4]);
        let data = unsafe { std::slice::from_raw_parts(v.data.cast::<f32>(), 12) };
        assert_eq!(data, (0..12).map(|i| i as f32).collect::<Vec<_>>());
        ok(unsafe { gptq_checkpoint_find_tensor(ck, cstr("model.step").as_ptr(), &mut v) });
        assert_eq!((v.ndim, v.shape, v.nbytes), (0, null(), 8));
        assert_eq!(unsafe { std::slice::from_raw_parts(v.data.cast::<u8>(), 8) }, 7i64.to_le_bytes());

        let mut json: *const c_char = null();
        ok(unsafe { gptq_checkpoint_config(ck, &mut json) });
        let cfg: serde_json::Value = serde_json::from_str(unsafe { CStr::from_ptr(json) }.to_str().unwrap()).unwrap();
        assert_eq!((cfg["bits"].as_u64(), cfg["custom"].as_str(), cfg["checkpoint_format"].as_str()), (Some(4), Some("kept"), Some("gptq")));
        let model: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(model["model_type"], "llama");
        unsafe { gptq_checkpoint_close(ck) };
        for l in layers {
            unsafe { gptq_layer_free(l) };
        }
    }
}

#[test]
fn bad_arguments_and_files_get_their_status_and_leave_outputs_untouched() {
    let dir = scratch("bad");
    let layers = write_checkpoint(&dir, 0);
    let sentinel = std::ptr::dangling_mut::<gptq_checkpoint>();
    let mut ck = sentinel;
    check(unsafe { gptq_checkpoint_open(null(), &mut ck) }, GPTQ_STATUS_NULL_POINTER, &["path"]);
    check(unsafe { gptq_checkpoint_open(path_c(&dir.join("nope")).as_ptr(), &mut ck) }, GPTQ_STATUS_IO, &["nope"]);
    let bad_utf8 = [0xffu8, 0];
    check(unsafe { gptq_checkpoint_open(bad_utf8.as_ptr().cast(), &mut ck) }, GPTQ_STATUS_INVALID_ARGUMENT, &["UTF-8"]);
    assert_eq!(ck, sentinel);

    // A corrupt header: the status and a message naming the file.
    let file = dir.join("model.safetensors");
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, &good[..4]).unwrap();
    check(unsafe { gptq_checkpoint_open(path_c(&dir).as_ptr(), &mut ck) }, GPTQ_STATUS_INVALID_FORMAT, &["model.safetensors", "truncated"]);
    assert_eq!(ck, sentinel);
    std::fs::write(&file, &good).unwrap();

    ok(unsafe { gptq_checkpoint_open(path_c(&dir).as_ptr(), &mut ck) });
    let mut name: *const c_char = std::ptr::dangling::<c_char>();
    check(unsafe { gptq_checkpoint_layer_name(ck, 2, &mut name) }, GPTQ_STATUS_INVALID_ARGUMENT, &["out of range"]);
    assert_eq!(name, std::ptr::dangling::<c_char>());
    let mut layer = std::ptr::dangling_mut::<gptq_layer>();
    check(unsafe { gptq_checkpoint_get_layer(ck, cstr("model.missing").as_ptr(), &mut layer) }, GPTQ_STATUS_INVALID_ARGUMENT, &["model.missing"]);
    assert_eq!(layer, std::ptr::dangling_mut::<gptq_layer>());
    let mut v = gptq_tensor_view { struct_size: 8, name: null(), dtype: null(), element_size: 0, ndim: 0, shape: null(), data: null(), nbytes: 0 };
    check(unsafe { gptq_checkpoint_tensor(ck, 0, &mut v) }, GPTQ_STATUS_STRUCT_SIZE, &["struct_size"]);
    v.struct_size = size_of::<gptq_tensor_view>();
    check(unsafe { gptq_checkpoint_tensor(ck, 5, &mut v) }, GPTQ_STATUS_INVALID_ARGUMENT, &["out of range"]);
    check(unsafe { gptq_checkpoint_find_tensor(ck, cstr("model.layers.0.mlp.up_proj.qweight").as_ptr(), &mut v) }, GPTQ_STATUS_INVALID_ARGUMENT, &["pass-through"]);
    assert!(v.name.is_null());
    check(unsafe { gptq_checkpoint_num_layers(null(), &mut 0) }, GPTQ_STATUS_NULL_POINTER, &["checkpoint"]);
    unsafe { gptq_checkpoint_close(ck) };
    unsafe { gptq_checkpoint_close(null_mut()) };

    // Writer: bad config, bad format, mismatched layer, bad dtype, and an abort that leaves nothing.
    let out = scratch("bad-writer");
    let mut w = std::ptr::dangling_mut::<gptq_checkpoint_writer>();
    check(unsafe { gptq_checkpoint_writer_new(path_c(&out).as_ptr(), cstr("{\"bits\": 5}").as_ptr(), null(), &mut w) }, GPTQ_STATUS_UNSUPPORTED, &["bits"]);
    check(unsafe { gptq_checkpoint_writer_new(path_c(&out).as_ptr(), cstr("{bits").as_ptr(), null(), &mut w) }, GPTQ_STATUS_INVALID_FORMAT, &["quant_config_json"]);
    let opts = gptq_checkpoint_write_options { struct_size: size_of::<gptq_checkpoint_write_options>(), format: 7, max_shard_size: 0, source_config_json: null() };
    check(unsafe { gptq_checkpoint_writer_new(path_c(&out).as_ptr(), cstr(CONFIG).as_ptr(), &opts, &mut w) }, GPTQ_STATUS_INVALID_ENUM, &["format"]);
    assert_eq!(w, std::ptr::dangling_mut::<gptq_checkpoint_writer>());
    let eight_bit = cstr(r#"{"bits": 8, "group_size": 32}"#);
    ok(unsafe { gptq_checkpoint_writer_new(path_c(&out).as_ptr(), eight_bit.as_ptr(), null(), &mut w) });
    check(unsafe { gptq_checkpoint_writer_add_layer(w, cstr("l").as_ptr(), layers[0]) }, GPTQ_STATUS_INVALID_ARGUMENT, &["config says 8-bit"]);
    let x = [0u8; 4];
    check(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("t").as_ptr(), cstr("F17").as_ptr(), [4usize].as_ptr(), 1, x.as_ptr().cast(), 4) }, GPTQ_STATUS_INVALID_ENUM, &["F17"]);
    check(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("t").as_ptr(), cstr("F16").as_ptr(), [4usize].as_ptr(), 1, x.as_ptr().cast(), 4) }, GPTQ_STATUS_SHAPE_MISMATCH, &["\"t\""]);
    ok(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("t").as_ptr(), cstr("U8").as_ptr(), [4usize].as_ptr(), 1, x.as_ptr().cast(), 4) });
    unsafe { gptq_checkpoint_writer_abort(w) };
    assert!(!out.exists(), "abort removes the directory it created");
    unsafe { gptq_checkpoint_writer_abort(null_mut()) };
    check(unsafe { gptq_checkpoint_writer_finish(null_mut()) }, GPTQ_STATUS_NULL_POINTER, &["writer"]);
    for l in layers {
        unsafe { gptq_layer_free(l) };
    }
}

#[test]
fn a_bad_bias_for_a_quantized_layer_is_refused_and_the_writer_stays_usable() {
    let dir = scratch("bias");
    let mut w = null_mut();
    ok(unsafe { gptq_checkpoint_writer_new(path_c(&dir).as_ptr(), cstr(CONFIG).as_ptr(), null(), &mut w) });
    let layer = make_layer_with(3, false);
    ok(unsafe { gptq_checkpoint_writer_add_layer(w, cstr("m.l").as_ptr(), layer) });
    // A pass-through bias of a quantized layer is that layer's bias to readers: F16 [N] only.
    let wide = [0u8; 4 * N];
    check(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("m.l.bias").as_ptr(), cstr("F32").as_ptr(), [N].as_ptr(), 1, wide.as_ptr().cast(), 4 * N) }, GPTQ_STATUS_INVALID_ARGUMENT, &["\"m.l.bias\"", "F16"]);
    // Added first, the layer is refused instead.
    ok(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("m.k.bias").as_ptr(), cstr("F16").as_ptr(), [2 * N].as_ptr(), 1, wide.as_ptr().cast(), 4 * N) });
    check(unsafe { gptq_checkpoint_writer_add_layer(w, cstr("m.k").as_ptr(), layer) }, GPTQ_STATUS_INVALID_ARGUMENT, &["\"m.k.bias\"", "F16"]);
    // The writer is still usable and the result readable.
    ok(unsafe { gptq_checkpoint_writer_add_tensor(w, cstr("m.l.bias").as_ptr(), cstr("F16").as_ptr(), [N].as_ptr(), 1, wide.as_ptr().cast(), 2 * N) });
    ok(unsafe { gptq_checkpoint_writer_finish(w) });
    let mut ck = null_mut();
    ok(unsafe { gptq_checkpoint_open(path_c(&dir).as_ptr(), &mut ck) });
    let mut n = 0usize;
    ok(unsafe { gptq_checkpoint_num_layers(ck, &mut n) });
    assert_eq!(n, 1);
    unsafe { gptq_checkpoint_close(ck) };
    unsafe { gptq_layer_free(layer) };
}
