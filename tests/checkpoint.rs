//! GPTQ checkpoints on disk: the oracle vectors load through the reader, written checkpoints read back
//! identical, a transformers-style sharded model round-trips, and broken files fail cleanly with the
//! right error and a message naming the file and the tensor.

mod common;

use common::{Case, Rng};
use gptq::format::checkpoint::{Checkpoint, CheckpointWriter, GptqConfig, TensorDtype, WriteOptions};
use gptq::format::pack::pack_rows;
use gptq::format::{CheckpointFormat, LayerDesc, PackedRef, QuantizedLayer};
use gptq::Error;
use half::f16;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("checkpoint-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// A tensor for the reference writer: name, dtype, shape, little-endian bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// Writes a safetensors file with the reference implementation (the `safetensors` crate), as
/// transformers and the Python tools would.
fn write_reference(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A random but valid layer. Zero points avoid 0 unless `allow_zero0` (v1 cannot store it).
#[allow(clippy::too_many_arguments)]
fn random_layer(rng: &mut Rng, bits: u32, gs: Option<usize>, k: usize, n: usize, sym: bool, act_order: bool, bias: bool, allow_zero0: bool) -> QuantizedLayer {
    let desc = LayerDesc { bits, group_size: gs, in_features: k, out_features: n, sym };
    let g = desc.num_groups();
    let maxq = (1u32 << bits) - 1;
    let qweight: Vec<i32> = (0..desc.qweight_rows() * n).map(|_| rng.next_u64() as i32).collect();
    let zeros: Vec<u32> = (0..g * n)
        .map(|_| if sym { 1 << (bits - 1) } else if allow_zero0 { rng.below(maxq as u64 + 1) as u32 } else { 1 + rng.below(maxq as u64) as u32 })
        .collect();
    let qzeros: Vec<i32> = pack_rows(&zeros, bits, n).into_iter().map(|v| v as i32).collect();
    let scales: Vec<f16> = (0..g * n).map(|_| f16::from_f32(0.001 + rng.uniform() as f32 * 0.05)).collect();
    let gsz = gs.unwrap_or(k);
    let mut g_idx: Vec<i32> = (0..k).map(|c| (c / gsz) as i32).collect();
    if act_order {
        // A permuted order: position p of the permutation belongs to group p / gs.
        let mut perm: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (p, &c) in perm.iter().enumerate() {
            g_idx[c] = (p / gsz) as i32;
        }
    }
    let b: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.normal())).collect();
    let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: Some(&g_idx), bias: bias.then_some(&b[..]) };
    QuantizedLayer::from_packed(desc, CheckpointFormat::V2, t).unwrap()
}

fn dequant(l: &QuantizedLayer) -> Vec<f32> {
    let d = l.desc();
    let mut out = vec![0f32; d.in_features * d.out_features];
    l.dequantize_into(&mut out);
    out
}

#[track_caller]
fn assert_same_layer(a: &QuantizedLayer, b: &QuantizedLayer, what: &str) {
    assert_eq!(a.desc(), b.desc(), "{what}: desc");
    assert_eq!(a.qweight(), b.qweight(), "{what}: qweight");
    assert_eq!(a.zeros(), b.zeros(), "{what}: zeros");
    assert_eq!(a.scales(), b.scales(), "{what}: scales");
    assert_eq!(a.g_idx(), b.g_idx(), "{what}: g_idx");
    assert_eq!(a.bias(), b.bias(), "{what}: bias");
}

/// Asserts the error's kind and that its message contains every piece of `words`.
#[track_caller]
fn assert_err(r: Result<impl std::fmt::Debug, Error>, kind: fn(&Error) -> bool, words: &[&str]) -> String {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(kind(&e), "wrong error kind: {e:?}");
    for w in words {
        assert!(msg.contains(w), "message {msg:?} does not mention {w:?}");
    }
    msg
}

// ---------------------------------------------------------------------------------------------------
// The oracle vectors.

#[test]
fn oracle_vectors_load_through_the_reader_and_dequantize_to_q() {
    // c6's reference qzeros carry the corrupted v1 words (zero point 0); c1..c5 are clean v1.
    for name in ["c1", "c2", "c3", "c5"] {
        let case = Case::load(name);
        let st = SafeTensors::deserialize(&case.bytes).unwrap();
        let dir = scratch(&format!("oracle-{name}"));
        let prefix = "model.layers.0.mlp.down_proj";
        // The standard packer's bytes, unchanged, under the names a checkpoint uses.
        let mut tensors: Vec<Raw> = [("qweight", "qweight"), ("qzeros", "qzeros"), ("scales", "scales"), ("packed_g_idx", "g_idx")]
            .iter()
            .map(|(src, dst)| {
                let t = st.tensor(src).unwrap();
                (format!("{prefix}.{dst}"), t.dtype(), t.shape().to_vec(), t.data().to_vec())
            })
            .collect();
        let q = st.tensor("Q").unwrap();
        tensors.push(("reference.Q".into(), q.dtype(), q.shape().to_vec(), q.data().to_vec()));
        write_reference(&dir.join("model.safetensors"), &tensors);
        let m = &case.meta;
        write_json(
            &dir.join("quantize_config.json"),
            &json!({"bits": m["bits"], "group_size": m["group_size"], "desc_act": m["desc_act"], "sym": m["sym"],
                    "static_groups": m["static_groups"], "damp_percent": m["damp_percent"], "true_sequential": true,
                    "quant_method": "gptq", "checkpoint_format": "gptq"}),
        );

        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.layers().map(|l| l.name.as_str()).collect::<Vec<_>>(), [prefix], "{name}");
        assert_eq!(ck.tensor_names(), ["reference.Q"], "{name}");
        let info = ck.layer_info(prefix).unwrap();
        let (n, k) = (case.cfg_usize("out_features"), case.cfg_usize("in_features"));
        assert_eq!((info.desc.in_features, info.desc.out_features), (k, n), "{name}");
        let layer = ck.layer(prefix).unwrap();
        assert_eq!(layer.has_act_order(), name == "c2", "{name}");
        let deq = dequant(&layer);

        let view = ck.tensor("reference.Q").unwrap();
        assert_eq!((view.dtype, view.shape), (TensorDtype::F16, &[n, k][..]), "{name}");
        let q_ref: Vec<f16> = view.data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(q_ref, case.f16("Q"), "{name}: the pass-through view is the stored tensor");
        let (codes, zero, scales, g_idx) = (case.i32("codes"), case.i32("zero"), case.f16("scales"), case.i32("packed_g_idx"));
        let g = zero.len() / n;
        for r in 0..n {
            for c in 0..k {
                let gi = g_idx[c] as usize;
                let s = scales[gi * n + r].to_f32();
                let steps = (codes[r * k + c] - zero[r * g + gi]).abs() as f32;
                // fp16 scales vs the reference's fp32 scale: about one fp16 ulp of the scale per step.
                let tol = steps * s * 2f32.powi(-10) + q_ref[r * k + c].to_f32().abs() * 2f32.powi(-10) + 1e-7;
                let (a, b) = (deq[r * k + c], q_ref[r * k + c].to_f32());
                assert!((a - b).abs() <= tol, "{name}: deq[{r},{c}] {a} vs {b}");
            }
        }
        // The stored tensors come back bit for bit.
        let packed = ck.packed(prefix).unwrap();
        assert_eq!(packed.qweight, case.i32("qweight"), "{name}");
        assert_eq!(packed.qzeros, case.i32("qzeros"), "{name}");
        assert_eq!(packed.g_idx, g_idx, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Write, then read back.

struct Model {
    config: GptqConfig,
    layers: Vec<(String, QuantizedLayer)>,
    tensors: Vec<(String, TensorDtype, Vec<usize>, Vec<u8>)>,
}

fn random_model(rng: &mut Rng, bits: u32, sym: bool, allow_zero0: bool) -> Model {
    let m = if bits == 3 { 32 } else { 32 / bits as usize * 4 };
    let gs = Some(32);
    let mut config = GptqConfig::new(bits, gs, sym, true).unwrap();
    config.static_groups = false;
    let layers = vec![
        ("model.layers.0.self_attn.q_proj".to_string(), random_layer(rng, bits, gs, 2 * m.max(32), m, sym, false, false, allow_zero0)),
        ("model.layers.0.self_attn.k_proj".to_string(), random_layer(rng, bits, gs, 2 * m.max(32), m, sym, true, true, allow_zero0)),
        ("model.layers.0.mlp.down_proj".to_string(), random_layer(rng, bits, gs, 4 * m.max(32), 2 * m, sym, true, false, allow_zero0)),
    ];
    let emb: Vec<u8> = (0..16 * 8).flat_map(|_| rng.normal().to_le_bytes()).collect();
    let norm: Vec<u8> = (0..8).flat_map(|_| half::bf16::from_f32(rng.normal()).to_le_bytes()).collect();
    let pos: Vec<u8> = (0..5i64).flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        ("model.embed_tokens.weight".to_string(), TensorDtype::F32, vec![16, 8], emb),
        ("model.norm.weight".to_string(), TensorDtype::BF16, vec![8], norm),
        ("model.position_ids".to_string(), TensorDtype::I64, vec![1, 5], pos),
        ("model.empty".to_string(), TensorDtype::F16, vec![0, 4], vec![]),
    ];
    Model { config, layers, tensors }
}

fn write_model(dir: &Path, model: &Model, opts: WriteOptions) -> gptq::Result<gptq::format::checkpoint::WriteSummary> {
    let mut w = CheckpointWriter::new(dir, model.config.clone(), opts)?;
    for (name, l) in &model.layers {
        w.add_layer(name, l)?;
    }
    for (name, dt, shape, data) in &model.tensors {
        w.add_tensor(name, *dt, shape, data)?;
    }
    w.finish()
}

#[track_caller]
fn assert_model_reads_back(ck: &Checkpoint, model: &Model, format: CheckpointFormat, what: &str) {
    let mut names: Vec<&str> = model.layers.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(ck.layers().map(|l| l.name.as_str()).collect::<Vec<_>>(), names, "{what}");
    assert_eq!(ck.config().checkpoint_format, format, "{what}");
    for (name, l) in &model.layers {
        let info = ck.layer_info(name).unwrap();
        assert_eq!(info.desc, *l.desc(), "{what}: {name}");
        assert_eq!(info.has_bias, l.bias().is_some(), "{what}: {name}");
        let back = ck.layer(name).unwrap();
        assert_same_layer(&back, l, &format!("{what}: {name}"));
        assert_eq!(dequant(&back), dequant(l), "{what}: {name} dequantized");
        assert_eq!(ck.packed(name).unwrap(), l.to_packed(format).unwrap(), "{what}: {name} stored tensors");
    }
    let mut tnames: Vec<&str> = model.tensors.iter().map(|t| t.0.as_str()).collect();
    tnames.sort();
    assert_eq!(ck.tensor_names(), tnames, "{what}");
    for (name, dt, shape, data) in &model.tensors {
        let v = ck.tensor(name).unwrap();
        assert_eq!((v.dtype, v.shape, v.data), (*dt, &shape[..], &data[..]), "{what}: {name}");
        // Zero-copy views are aligned to their element size in files this library writes.
        assert_eq!(v.data.as_ptr() as usize % dt.size(), 0, "{what}: {name} alignment");
    }
}

#[test]
fn written_checkpoints_read_back_identical_for_every_bit_width_format_and_sharding() {
    let mut rng = Rng::new(7);
    for bits in [2, 3, 4, 8] {
        for format in [CheckpointFormat::V1, CheckpointFormat::V2] {
            for sym in [true, false] {
                for shard in [None, Some(3000u64)] {
                    let what = format!("{bits}-bit {format:?} sym={sym} shard={shard:?}");
                    let dir = scratch(&format!("rt-{bits}-{format:?}-{sym}-{}", shard.is_some()));
                    let model = random_model(&mut rng, bits, sym, format == CheckpointFormat::V2);
                    let opts = WriteOptions { format, max_shard_size: shard, source_config: None };
                    let summary = write_model(&dir, &model, opts).unwrap();
                    assert_eq!(summary.num_layers, 3, "{what}");
                    let ck = Checkpoint::open(&dir).unwrap();
                    assert_model_reads_back(&ck, &model, format, &what);

                    let files: Vec<PathBuf> = ck.files().map(Path::to_path_buf).collect();
                    if shard.is_some() {
                        assert!(files.len() >= 2, "{what}: {files:?}");
                        assert!(dir.join("model.safetensors.index.json").is_file(), "{what}");
                        assert!(!dir.join("model.safetensors").exists(), "{what}");
                    } else {
                        assert_eq!(files, [dir.join("model.safetensors")], "{what}");
                    }
                    for f in &files {
                        // Every file is a valid safetensors file for the reference parser, tagged with the tool.
                        let bytes = std::fs::read(f).unwrap();
                        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
                        let meta = meta.metadata().clone().unwrap();
                        assert_eq!(meta["format"], "pt", "{what}");
                        assert!(meta["quantizer"].starts_with("libgptq "), "{what}");
                        SafeTensors::deserialize(&bytes).unwrap();
                    }
                    let qc: Value = serde_json::from_slice(&std::fs::read(dir.join("quantize_config.json")).unwrap()).unwrap();
                    let fmt_name = if format == CheckpointFormat::V1 { "gptq" } else { "gptq_v2" };
                    assert_eq!((qc["bits"].as_u64(), qc["checkpoint_format"].as_str()), (Some(bits as u64), Some(fmt_name)), "{what}");
                    let cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
                    assert_eq!(cfg["quantization_config"], qc, "{what}");
                    // No temporary files are left behind.
                    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
                    assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
                }
            }
        }
    }
}

#[test]
fn v1_stores_zero_minus_one_and_v2_the_zero_point() {
    let mut rng = Rng::new(3);
    let layer = random_layer(&mut rng, 4, Some(32), 64, 16, true, false, false, false);
    for (format, word) in [(CheckpointFormat::V1, 0x7777_7777i32), (CheckpointFormat::V2, 0x8888_8888u32 as i32)] {
        let dir = scratch(&format!("zeros-{format:?}"));
        let mut w = CheckpointWriter::new(&dir, GptqConfig::new(4, Some(32), true, false).unwrap(), WriteOptions { format, ..Default::default() }).unwrap();
        w.add_layer("l", &layer).unwrap();
        w.finish().unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        let qz = ck.raw_tensor("l.qzeros").unwrap();
        assert!(qz.data.chunks_exact(4).all(|b| i32::from_le_bytes(b.try_into().unwrap()) == word), "{format:?}");
    }
    // A zero point of 0 cannot be stored in v1: the writer refuses the layer and v2 takes it.
    let l0 = random_layer(&mut Rng::new(4), 2, Some(32), 64, 16, false, false, false, true);
    assert!(l0.zeros().contains(&0));
    let dir = scratch("zeros-0");
    let mut w = CheckpointWriter::new(&dir, GptqConfig::new(2, Some(32), false, false).unwrap(), WriteOptions::default()).unwrap();
    assert_err(w.add_layer("l", &l0), |e| matches!(e, Error::Unsupported(_)), &["layer \"l\"", "v2"]);
    w.abort();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "abort leaves nothing");
}

#[test]
fn a_lone_safetensors_file_is_read_with_its_metadata_config() {
    let mut rng = Rng::new(11);
    let model = random_model(&mut rng, 4, false, false);
    let dir = scratch("lone-src");
    write_model(&dir, &model, WriteOptions::default()).unwrap();
    // Moved away from its JSON configs, the file still decodes through its gptq_* metadata.
    let lone = scratch("lone").join("weights.safetensors");
    std::fs::copy(dir.join("model.safetensors"), &lone).unwrap();
    let ck = Checkpoint::open(&lone).unwrap();
    assert!(ck.config_source().contains("__metadata__"), "{}", ck.config_source());
    assert_model_reads_back(&ck, &model, CheckpointFormat::V1, "lone file");
}

#[test]
fn dynamic_overrides_change_a_modules_bits_and_exclude_others() {
    let mut rng = Rng::new(5);
    let mut config = GptqConfig::new(4, Some(32), true, false).unwrap();
    let dynamic = json!({"-:.*\\.mlp\\.gate$": {}, "+:.*down_proj": {"bits": 8, "group_size": 64}});
    config.set_dynamic(dynamic.as_object().cloned(), "test").unwrap();
    let up = random_layer(&mut rng, 4, Some(32), 64, 32, true, false, false, false);
    let down = random_layer(&mut rng, 8, Some(64), 128, 16, true, false, false, false);
    let dir = scratch("dynamic");
    let mut w = CheckpointWriter::new(&dir, config.clone(), WriteOptions::default()).unwrap();
    w.add_layer("m.layers.0.mlp.up_proj", &up).unwrap();
    w.add_layer("m.layers.0.mlp.down_proj", &down).unwrap();
    // The 4-bit layer under the 8-bit rule, or a layer the rules exclude, is refused.
    assert_err(w.add_layer("m.layers.1.mlp.down_proj", &up), |e| matches!(e, Error::InvalidArgument(_)), &["config says 8-bit"]);
    assert_err(w.add_layer("m.layers.0.mlp.gate", &up), |e| matches!(e, Error::InvalidArgument(_)), &["not quantized"]);
    w.add_tensor("m.layers.0.mlp.gate.weight", TensorDtype::F16, &[2, 2], &[0; 8]).unwrap();
    w.finish().unwrap();

    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.config().dynamic().unwrap(), dynamic.as_object().unwrap());
    assert_eq!(ck.layer_info("m.layers.0.mlp.down_proj").unwrap().desc.bits, 8);
    assert_same_layer(&ck.layer("m.layers.0.mlp.down_proj").unwrap(), &down, "down");
    assert_same_layer(&ck.layer("m.layers.0.mlp.up_proj").unwrap(), &up, "up");
    assert_eq!(ck.tensor_names(), ["m.layers.0.mlp.gate.weight"]);
}

// ---------------------------------------------------------------------------------------------------
// A directory laid out like a transformers GPTQ model.

const HIDDEN: usize = 64;
const VOCAB: usize = 32;
const LAYERS: usize = 2;

/// Builds a tiny Llama-shaped GPTQ model the way transformers saves one: config.json with a
/// quantization_config block, quantize_config.json, and two shards plus an index, written by the
/// reference safetensors writer. Returns the quantized layers by name and the pass-through tensors.
fn build_transformers_model(dir: &Path, rng: &mut Rng) -> (Vec<(String, QuantizedLayer)>, Vec<Raw>) {
    let qc = json!({"bits": 4, "group_size": 32, "damp_percent": 0.1, "desc_act": true, "sym": true,
                    "true_sequential": true, "quant_method": "gptq", "static_groups": false,
                    "checkpoint_format": "gptq", "use_exllama": true, "max_input_length": null,
                    "meta": {"quantizer": ["gptqmodel:2.2.0"], "damp_auto_increment": 0.0025}});
    let config = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
                        "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS, "vocab_size": VOCAB,
                        "rms_norm_eps": 1e-6, "torch_dtype": "float16", "quantization_config": qc.clone()});
    write_json(&dir.join("config.json"), &config);
    write_json(&dir.join("quantize_config.json"), &qc);

    let mut layers = Vec::new();
    let mut passthrough: Vec<Raw> = Vec::new();
    let f16s = |rng: &mut Rng, n: usize| -> Vec<u8> { (0..n).flat_map(|_| f16::from_f32(rng.normal()).to_le_bytes()).collect() };
    passthrough.push(("model.embed_tokens.weight".into(), Dtype::F16, vec![VOCAB, HIDDEN], f16s(rng, VOCAB * HIDDEN)));
    for i in 0..LAYERS {
        for (proj, k, n) in [("self_attn.q_proj", HIDDEN, HIDDEN), ("self_attn.o_proj", HIDDEN, HIDDEN), ("mlp.up_proj", HIDDEN, 2 * HIDDEN), ("mlp.down_proj", 2 * HIDDEN, HIDDEN)] {
            layers.push((format!("model.layers.{i}.{proj}"), random_layer(rng, 4, Some(32), k, n, true, proj.contains("down"), proj.contains("q_proj"), false)));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            passthrough.push((format!("model.layers.{i}.{norm}.weight"), Dtype::F16, vec![HIDDEN], f16s(rng, HIDDEN)));
        }
    }
    passthrough.push(("model.norm.weight".into(), Dtype::F16, vec![HIDDEN], f16s(rng, HIDDEN)));
    passthrough.push(("lm_head.weight".into(), Dtype::F16, vec![VOCAB, HIDDEN], f16s(rng, VOCAB * HIDDEN)));

    // Layer 0 and the embeddings in shard 1, the rest in shard 2, as transformers splits by size.
    let mut shards: [Vec<Raw>; 2] = [Vec::new(), Vec::new()];
    for (name, l) in &layers {
        let t = l.to_packed(CheckpointFormat::V1).unwrap();
        let d = l.desc();
        let s = &mut shards[usize::from(!name.starts_with("model.layers.0."))];
        s.push((format!("{name}.qweight"), Dtype::I32, vec![d.qweight_rows(), d.out_features], i32_bytes(&t.qweight)));
        s.push((format!("{name}.qzeros"), Dtype::I32, vec![d.num_groups(), d.qzeros_cols()], i32_bytes(&t.qzeros)));
        s.push((format!("{name}.scales"), Dtype::F16, vec![d.num_groups(), d.out_features], f16_bytes(&t.scales)));
        s.push((format!("{name}.g_idx"), Dtype::I32, vec![d.in_features], i32_bytes(&t.g_idx)));
        if let Some(b) = &t.bias {
            s.push((format!("{name}.bias"), Dtype::F16, vec![d.out_features], f16_bytes(b)));
        }
    }
    for t in &passthrough {
        shards[usize::from(!(t.0.starts_with("model.layers.0.") || t.0.starts_with("model.embed")))].push(t.clone());
    }
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, s) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        write_reference(&dir.join(&file), s);
        for t in s {
            weight_map.insert(t.0.clone(), Value::from(file.clone()));
            total += t.3.len();
        }
    }
    write_json(&dir.join("model.safetensors.index.json"), &json!({"metadata": {"total_size": total}, "weight_map": weight_map}));
    (layers, passthrough)
}

#[track_caller]
fn assert_transformers_model(ck: &Checkpoint, layers: &[(String, QuantizedLayer)], passthrough: &[Raw], what: &str) {
    assert_eq!(ck.num_layers(), layers.len(), "{what}");
    for (name, l) in layers {
        assert_same_layer(&ck.layer(name).unwrap(), l, &format!("{what}: {name}"));
    }
    assert_eq!(ck.tensor_names().len(), passthrough.len(), "{what}");
    for (name, _, shape, data) in passthrough {
        let v = ck.tensor(name).unwrap_or_else(|| panic!("{what}: {name} missing"));
        assert_eq!((v.dtype, v.shape, v.data), (TensorDtype::F16, &shape[..], &data[..]), "{what}: {name}");
    }
}

#[test]
fn a_transformers_style_sharded_model_round_trips() {
    let mut rng = Rng::new(42);
    let src = scratch("hf-src");
    let (layers, passthrough) = build_transformers_model(&src, &mut rng);
    let ck = Checkpoint::open(&src).unwrap();
    assert_eq!(ck.files().count(), 2);
    assert_eq!(ck.layer_info("model.layers.0.self_attn.q_proj").map(|i| i.has_bias), Some(true));
    assert_transformers_model(&ck, &layers, &passthrough, "source");
    let c = ck.config();
    assert_eq!((c.bits, c.group_size, c.desc_act, c.sym, c.damp_percent), (4, Some(32), true, true, 0.1));
    assert_eq!(c.meta.as_ref().unwrap()["damp_auto_increment"], 0.0025);
    assert_eq!(c.to_json()["use_exllama"], true, "unknown keys are kept");

    // Re-save through the writer: sharded again, the source config.json carried over.
    let out = scratch("hf-out");
    let opts = WriteOptions { format: CheckpointFormat::V1, max_shard_size: Some(8 * 1024), source_config: ck.model_config().cloned() };
    let mut w = CheckpointWriter::new(&out, c.clone(), opts).unwrap();
    for info in ck.layers() {
        w.add_layer(&info.name, &ck.layer(&info.name).unwrap()).unwrap();
    }
    for t in ck.tensors() {
        w.add_tensor(t.name, t.dtype, t.shape, t.data).unwrap();
    }
    let summary = w.finish().unwrap();
    assert!(summary.files.iter().filter(|f| f.extension().is_some_and(|x| x == "safetensors")).count() >= 2);

    let back = Checkpoint::open(&out).unwrap();
    assert_transformers_model(&back, &layers, &passthrough, "re-saved");
    let (a, b) = (ck.model_config().unwrap(), back.model_config().unwrap());
    for (key, v) in a.as_object().unwrap() {
        if key != "quantization_config" {
            assert_eq!(&b[key], v, "config.json key {key}");
        }
    }
    let qc = &b["quantization_config"];
    assert_eq!((qc["use_exllama"].clone(), qc["damp_percent"].clone(), qc["checkpoint_format"].clone()), (json!(true), json!(0.1), json!("gptq")));
    assert_eq!(qc["meta"]["quantizer"], json!(["gptqmodel:2.2.0", format!("libgptq:{}", env!("CARGO_PKG_VERSION"))]));
    // The index lists every tensor, in the shard that holds it.
    let index: Value = serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let wm = index["weight_map"].as_object().unwrap();
    assert_eq!(wm.len(), summary.num_tensors);
    for (name, file) in wm {
        let bytes = std::fs::read(out.join(file.as_str().unwrap())).unwrap();
        assert!(SafeTensors::deserialize(&bytes).unwrap().tensor(name).is_ok(), "{name} in {file}");
    }
}

#[test]
fn rewriting_replaces_an_older_checkpoint_without_stale_weights() {
    let mut rng = Rng::new(9);
    let dir = scratch("rewrite");
    let a = random_model(&mut rng, 4, true, false);
    write_model(&dir, &a, WriteOptions { max_shard_size: Some(3000), ..Default::default() }).unwrap();
    assert!(dir.join("model.safetensors.index.json").exists());
    let b = random_model(&mut rng, 8, true, false);
    write_model(&dir, &b, WriteOptions::default()).unwrap();
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with("model-") && n != "model.safetensors.index.json"), "{names:?}");
    assert_model_reads_back(&Checkpoint::open(&dir).unwrap(), &b, CheckpointFormat::V1, "rewritten");
}

#[test]
fn a_failed_or_aborted_write_leaves_the_existing_checkpoint_untouched() {
    let mut rng = Rng::new(13);
    let dir = scratch("atomic");
    let a = random_model(&mut rng, 4, true, false);
    write_model(&dir, &a, WriteOptions::default()).unwrap();
    let snapshot = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())).collect();
        v.sort();
        v
    };

    // Aborted after some shards were already flushed to temporary files.
    let before = snapshot(&dir);
    let b = random_model(&mut rng, 4, true, false);
    let mut w = CheckpointWriter::new(&dir, b.config.clone(), WriteOptions { max_shard_size: Some(100), ..Default::default() }).unwrap();
    for (name, l) in &b.layers {
        w.add_layer(name, l).unwrap();
    }
    assert!(snapshot(&dir).len() > before.len(), "shards were flushed to temporary files");
    w.abort();
    assert_eq!(snapshot(&dir), before);

    // Failing in finish (the config.json to update is corrupt) after every shard was written.
    std::fs::write(dir.join("config.json"), b"{ not json").unwrap();
    let before = snapshot(&dir);
    assert_err(write_model(&dir, &b, WriteOptions { max_shard_size: Some(100), ..Default::default() }), |e| matches!(e, Error::InvalidFormat(_)), &["config.json"]);
    assert_eq!(snapshot(&dir), before);

    // Dropping an unfinished writer cleans up too.
    let mut w = CheckpointWriter::new(&dir, b.config.clone(), WriteOptions { max_shard_size: Some(100), ..Default::default() }).unwrap();
    for (name, l) in &b.layers {
        w.add_layer(name, l).unwrap();
    }
    drop(w);
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn writer_refuses_bad_input() {
    let mut rng = Rng::new(17);
    let dir = scratch("writer-bad");
    let l = random_layer(&mut rng, 4, Some(32), 64, 16, true, true, false, false);
    let mut w = CheckpointWriter::new(&dir, GptqConfig::new(4, Some(32), true, false).unwrap(), WriteOptions::default()).unwrap();
    assert_err(w.add_layer("a", &l), |e| matches!(e, Error::InvalidArgument(_)), &["act-order", "desc_act"]);
    assert_err(w.add_tensor("x", TensorDtype::F32, &[3], &[0; 8]), |e| matches!(e, Error::Shape(_)), &["\"x\"", "12"]);
    assert_err(w.add_tensor("a.qweight", TensorDtype::I32, &[1], &[0; 4]), |e| matches!(e, Error::InvalidArgument(_)), &["reserved"]);
    w.add_tensor("x", TensorDtype::F32, &[2], &[0; 8]).unwrap();
    assert_err(w.add_tensor("x", TensorDtype::F32, &[2], &[0; 8]), |e| matches!(e, Error::InvalidArgument(_)), &["already added"]);
    w.abort();
    let w = CheckpointWriter::new(&dir, GptqConfig::new(4, Some(32), true, false).unwrap(), WriteOptions::default()).unwrap();
    assert_err(w.finish(), |e| matches!(e, Error::InvalidArgument(_)), &["no layers"]);
}

// ---------------------------------------------------------------------------------------------------
// Broken files.

/// A single-file checkpoint of one 4-bit, group-32 layer `m.l` (in 64, out 16) and a norm, written by
/// hand so the header can be corrupted at will. Returns the directory and the file.
fn good_raw_checkpoint(name: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 4, "group_size": 32, "sym": true, "desc_act": false}));
    let layer = random_layer(&mut Rng::new(1), 4, Some(32), 64, 16, true, false, false, false);
    let t = layer.to_packed(CheckpointFormat::V1).unwrap();
    let tensors: Vec<Raw> = vec![
        ("m.l.qweight".into(), Dtype::I32, vec![8, 16], i32_bytes(&t.qweight)),
        ("m.l.qzeros".into(), Dtype::I32, vec![2, 2], i32_bytes(&t.qzeros)),
        ("m.l.scales".into(), Dtype::F16, vec![2, 16], f16_bytes(&t.scales)),
        ("m.l.g_idx".into(), Dtype::I32, vec![64], i32_bytes(&t.g_idx)),
        ("m.norm".into(), Dtype::F16, vec![16], vec![0; 32]),
    ];
    let file = dir.join("model.safetensors");
    write_reference(&file, &tensors);
    (dir, file)
}

/// Splits a safetensors file into its JSON header and data.
fn split(file: &Path) -> (Value, Vec<u8>) {
    let b = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&b[8..8 + n]).unwrap(), b[8 + n..].to_vec())
}

fn join(file: &Path, header: &[u8], data: &[u8]) {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    std::fs::write(file, out).unwrap();
}

/// Rewrites a file's header with `edit`.
fn edit_header(file: &Path, edit: impl FnOnce(&mut Value)) {
    let (mut h, data) = split(file);
    edit(&mut h);
    join(file, &serde_json::to_vec(&h).unwrap(), &data);
}

fn is_format(e: &Error) -> bool {
    matches!(e, Error::InvalidFormat(_))
}

#[test]
fn the_unbroken_file_opens() {
    let (dir, _) = good_raw_checkpoint("good");
    let ck = Checkpoint::open(&dir).unwrap();
    ck.layer("m.l").unwrap();
    assert_eq!(ck.tensor_names(), ["m.norm"]);
}

#[test]
fn truncated_files_are_refused() {
    let (dir, file) = good_raw_checkpoint("truncated");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 40]).unwrap();
    // The last tensor in the data section (the header's data_offsets order) runs past the end.
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "tensor \"", "out of bounds"]);
    std::fs::write(&file, &bytes[..5]).unwrap();
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "truncated"]);
    std::fs::write(&file, b"").unwrap();
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "truncated"]);
}

#[test]
fn a_header_length_beyond_the_file_is_refused() {
    let (dir, file) = good_raw_checkpoint("hdr-len");
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "header length"]);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "header length"]);
}

#[test]
fn garbage_and_non_utf8_headers_are_refused() {
    let (dir, file) = good_raw_checkpoint("garbage");
    let (_, data) = split(&file);
    join(&file, b"{\"m.l.qweight\": {\"dtype\": \"I32\", \"shape\": [8, 16], ", &data);
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "not valid JSON"]);
    join(&file, b"{\"m.l.qw\xffeight\": {}}", &data);
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "UTF-8"]);
    join(&file, b"[1, 2, 3]", &data);
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "not a JSON object"]);
    join(&file, b"{\"m.norm\": {\"dtype\": \"F16\", \"shape\": [-1], \"data_offsets\": [0, 2]}}", &data);
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "m.norm", "shape"]);
}

#[test]
fn an_unknown_dtype_is_refused() {
    let (dir, file) = good_raw_checkpoint("dtype");
    edit_header(&file, |h| h["m.norm"]["dtype"] = json!("F12"));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Unsupported(_)), &["model.safetensors", "m.norm", "F12"]);
    // A known dtype that a layer tensor cannot have.
    let (dir, file) = good_raw_checkpoint("dtype-layer");
    edit_header(&file, |h| h["m.l.g_idx"]["dtype"] = json!("F32"));
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "m.l.g_idx", "I32"]);
}

#[test]
fn overlapping_or_out_of_bounds_offsets_are_refused() {
    let (dir, file) = good_raw_checkpoint("overlap");
    let (h, _) = split(&file);
    let qz = h["m.l.qzeros"]["data_offsets"].clone();
    edit_header(&file, |h| {
        // Same size as qzeros (2·2 int32), placed on top of it.
        h["m.l.scales"] = json!({"dtype": "F16", "shape": [2, 4], "data_offsets": qz});
    });
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "overlaps", "m.l.qzeros"]);

    let (dir, file) = good_raw_checkpoint("oob");
    let (_, data) = split(&file);
    let end = data.len() as u64;
    edit_header(&file, |h| h["m.norm"]["data_offsets"] = json!([end - 16, end + 16]));
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "m.norm", "out of bounds"]);

    let (dir, file) = good_raw_checkpoint("size");
    edit_header(&file, |h| h["m.norm"]["shape"] = json!([17]));
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", "m.norm", "needs 34 bytes"]);
}

#[test]
fn a_tensor_missing_from_a_layer_is_refused() {
    for missing in ["qzeros", "scales", "qweight"] {
        let (dir, file) = good_raw_checkpoint(&format!("missing-{missing}"));
        edit_header(&file, |h| {
            h.as_object_mut().unwrap().remove(&format!("m.l.{missing}"));
        });
        assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors", &format!("m.l.{missing}"), "layer \"m.l\""]);
    }
}

#[test]
fn shapes_inconsistent_with_the_config_are_refused() {
    // The config says group 32; the scales have one group only.
    let (dir, file) = good_raw_checkpoint("shape-scales");
    edit_header(&file, |h| h["m.l.scales"]["shape"] = json!([1, 32]));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Shape(_)), &["model.safetensors", "m.l.scales", "[2, 16]", "quantize_config.json"]);
    // The config says 8-bit: qweight's 8 rows then mean in_features 32 and groups no longer fit.
    let (dir, _) = good_raw_checkpoint("shape-bits");
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 8, "group_size": 32, "sym": true}));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Shape(_)), &["model.safetensors", "m.l.", "8-bit"]);
    // qzeros as wide as for 8 output columns.
    let (dir, file) = good_raw_checkpoint("shape-qzeros");
    edit_header(&file, |h| h["m.l.qzeros"]["shape"] = json!([4, 1]));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Shape(_)), &["model.safetensors", "m.l.qzeros", "[2, 2]"]);
    // g_idx of the wrong length.
    let (dir, file) = good_raw_checkpoint("shape-gidx");
    edit_header(&file, |h| h["m.l.g_idx"]["shape"] = json!([32, 2]));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Shape(_)), &["model.safetensors", "m.l.g_idx"]);
}

/// Overwrites bytes of a tensor's data in place, leaving the header alone.
fn poke(file: &Path, tensor: &str, at: usize, bytes: &[u8]) {
    let mut b = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let start = 8 + n + h[tensor]["data_offsets"][0].as_u64().unwrap() as usize + at;
    b[start..start + bytes.len()].copy_from_slice(bytes);
    std::fs::write(file, b).unwrap();
}

#[test]
fn g_idx_out_of_range_is_refused_when_the_layer_is_read() {
    let (dir, file) = good_raw_checkpoint("gidx-range");
    poke(&file, "m.l.g_idx", 4 * 5, &7i32.to_le_bytes());
    let ck = Checkpoint::open(&dir).unwrap();
    assert_err(ck.layer("m.l"), is_format, &["model.safetensors", "m.l.g_idx", "g_idx[5] = 7", "[0, 2)"]);
    poke(&file, "m.l.g_idx", 4 * 5, &(-1i32).to_le_bytes());
    let ck = Checkpoint::open(&dir).unwrap();
    assert_err(ck.layer("m.l"), is_format, &["m.l.g_idx", "g_idx[5] = -1"]);
    // Zero points that contradict sym are caught too, naming the layer and file.
    let (dir, file) = good_raw_checkpoint("zeros-sym");
    poke(&file, "m.l.qzeros", 0, &0x1234_5678i32.to_le_bytes());
    let ck = Checkpoint::open(&dir).unwrap();
    assert_err(ck.layer("m.l"), is_format, &["model.safetensors", "layer \"m.l\"", "symmetric"]);
    // Non-finite scales name the layer too.
    poke(&file, "m.l.qzeros", 0, &0x7777_7777i32.to_le_bytes());
    poke(&file, "m.l.scales", 2 * 3, &f16::NAN.to_le_bytes());
    let ck = Checkpoint::open(&dir).unwrap();
    assert_err(ck.layer("m.l"), |e| matches!(e, Error::NonFinite(_)), &["model.safetensors", "layer \"m.l\"", "scales[0, 3]"]);
    ck.layer("m.missing").unwrap_err();
}

#[test]
fn unsupported_bits_and_bad_configs_are_refused() {
    let (dir, _) = good_raw_checkpoint("bits");
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 5, "group_size": 32}));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Unsupported(_)), &["quantize_config.json", "\"bits\"", "5"]);
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 4, "group_size": 48}));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Unsupported(_)), &["quantize_config.json", "group_size"]);
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 4, "checkpoint_format": "marlin"}));
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Unsupported(_)), &["quantize_config.json", "marlin"]);
    std::fs::write(dir.join("quantize_config.json"), b"\xff\xfe").unwrap();
    assert_err(Checkpoint::open(&dir), is_format, &["quantize_config.json", "JSON"]);
    // config.json and quantize_config.json describing different layouts.
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 4, "group_size": 32}));
    write_json(&dir.join("config.json"), &json!({"quantization_config": {"bits": 4, "group_size": 64}}));
    assert_err(Checkpoint::open(&dir), is_format, &["config.json", "quantize_config.json", "disagree"]);
    // No config at all.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::remove_file(dir.join("quantize_config.json")).unwrap();
    assert_err(Checkpoint::open(&dir), is_format, &["no GPTQ config"]);
}

#[test]
fn index_problems_are_refused() {
    let mut rng = Rng::new(21);
    let dir = scratch("index");
    let model = random_model(&mut rng, 4, true, false);
    write_model(&dir, &model, WriteOptions { max_shard_size: Some(3000), ..Default::default() }).unwrap();
    let index_path = dir.join("model.safetensors.index.json");
    let index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut shards: Vec<String> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect();
    shards.sort();
    shards.dedup();
    assert!(shards.len() >= 2, "{shards:?}");
    let holder = index["weight_map"]["model.norm.weight"].as_str().unwrap().to_string();
    let other = shards.iter().find(|s| **s != holder).unwrap().clone();

    // A shard named by the index is missing.
    let moved = dir.join("moved.bin");
    std::fs::rename(dir.join(&holder), &moved).unwrap();
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Io(_)), &["model.safetensors.index.json", &holder]);
    std::fs::rename(&moved, dir.join(&holder)).unwrap();
    Checkpoint::open(&dir).unwrap();

    // The index places a tensor in a shard that does not hold it.
    let mut bad = index.clone();
    bad["weight_map"]["model.norm.weight"] = json!(other);
    write_json(&index_path, &bad);
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors.index.json", "model.norm.weight", &other]);
    // A shard path that leaves the directory.
    bad["weight_map"]["model.norm.weight"] = json!(format!("../{holder}"));
    write_json(&index_path, &bad);
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors.index.json", "not a plain file name"]);
    // Not an index at all.
    write_json(&index_path, &json!({"metadata": {}}));
    assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors.index.json", "weight_map"]);

    // A tensor stored in two shards.
    write_json(&index_path, &index);
    let other_path = dir.join(&other);
    let (h, data) = split(&other_path);
    let mut tensors: Vec<Raw> = vec![("model.norm.weight".into(), Dtype::BF16, vec![8], vec![0; 16])];
    for (name, info) in h.as_object().unwrap().iter().filter(|(n, _)| *n != "__metadata__") {
        let [b, e] = [0, 1].map(|i| info["data_offsets"][i].as_u64().unwrap() as usize);
        let dtype: Dtype = serde_json::from_value(info["dtype"].clone()).unwrap();
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).unwrap();
        tensors.push((name.clone(), dtype, shape, data[b..e].to_vec()));
    }
    write_reference(&other_path, &tensors);
    assert_err(Checkpoint::open(&dir), is_format, &["model.norm.weight", "stored twice", &holder, &other]);
}

// ---------------------------------------------------------------------------------------------------
// Review fixes (issue 3): failure injection, commit rollback, config merging, odd inputs.

/// Every file in `dir` (sub-directories skipped) with its bytes, sorted by name.
fn snapshot_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_shard_write_keeps_every_tensor_and_the_writer_usable() {
    let mut rng = Rng::new(31);
    let model = random_model(&mut rng, 4, true, false);
    let dir = scratch("flush-fail").join("out");
    let opts = WriteOptions { max_shard_size: Some(100), ..Default::default() };
    let mut w = CheckpointWriter::new(&dir, model.config.clone(), opts).unwrap();
    let (first, rest) = model.layers.split_first().unwrap();
    w.add_layer(&first.0, &first.1).unwrap();
    // The next layer does not fit the shard, so the first is flushed: make that write fail.
    std::fs::remove_dir(&dir).unwrap();
    assert_err(w.add_layer(&rest[0].0, &rest[0].1), |e| matches!(e, Error::Io(_)), &["out"]);
    // Once the cause is fixed, the same writer finishes with every tensor.
    std::fs::create_dir(&dir).unwrap();
    for (name, l) in rest {
        w.add_layer(name, l).unwrap();
    }
    for (name, dt, shape, data) in &model.tensors {
        w.add_tensor(name, *dt, shape, data).unwrap();
    }
    let summary = w.finish().unwrap();
    assert_eq!(summary.num_layers, 3);
    assert_model_reads_back(&Checkpoint::open(&dir).unwrap(), &model, CheckpointFormat::V1, "after a failed flush");
}

#[test]
fn a_failed_commit_rolls_back_to_the_old_checkpoint() {
    let mut rng = Rng::new(37);
    let a = random_model(&mut rng, 4, true, false);
    let b = random_model(&mut rng, 8, false, false);
    let sharded = WriteOptions { max_shard_size: Some(3000), ..Default::default() };
    // Learn the shard names the new checkpoint will use.
    let probe = scratch("commit-probe");
    write_model(&probe, &b, sharded.clone()).unwrap();
    let index: Value = serde_json::from_slice(&std::fs::read(probe.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut shards: Vec<String> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect();
    shards.sort();
    shards.dedup();
    assert!(shards.len() >= 2, "{shards:?}");

    // An unsharded checkpoint to replace by a sharded one; a directory blocks the rename of a later
    // shard, after the first one was already renamed into place.
    let dir = scratch("commit-rollback");
    write_model(&dir, &a, WriteOptions::default()).unwrap();
    let before = snapshot_files(&dir);
    let blocker = dir.join(shards.last().unwrap());
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    assert_err(write_model(&dir, &b, sharded.clone()), |e| matches!(e, Error::Io(_)), &[shards.last().unwrap()]);
    assert_eq!(snapshot_files(&dir), before, "the old checkpoint is byte-identical, nothing else is left");
    assert_model_reads_back(&Checkpoint::open(&dir).unwrap(), &a, CheckpointFormat::V1, "after a failed shard rename");
    std::fs::remove_dir_all(&blocker).unwrap();

    // The very last rename (config.json) fails: the new weights and quantize_config.json go again.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::create_dir(dir.join("config.json")).unwrap();
    let before = snapshot_files(&dir);
    assert_err(write_model(&dir, &b, sharded.clone()), |e| matches!(e, Error::Io(_)), &["config.json"]);
    assert_eq!(snapshot_files(&dir), before);
    assert_model_reads_back(&Checkpoint::open(&dir).unwrap(), &a, CheckpointFormat::V1, "after a failed config rename");
    std::fs::remove_dir(dir.join("config.json")).unwrap();

    // With nothing in the way, the sharded checkpoint replaces the single file, leaving nothing stale.
    write_model(&dir, &b, sharded).unwrap();
    assert!(!dir.join("model.safetensors").exists());
    let names: Vec<String> = snapshot_files(&dir).into_iter().map(|f| f.0).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "no temporary or moved-aside files: {names:?}");
    assert_model_reads_back(&Checkpoint::open(&dir).unwrap(), &b, CheckpointFormat::V1, "sharded rewrite");
}

#[test]
fn a_non_ascii_file_name_shaped_like_a_shard_is_left_alone() {
    let mut rng = Rng::new(41);
    let dir = scratch("non-ascii");
    // 32 bytes, like model-00001-of-00003.safetensors, with a two-byte character across byte 11.
    let odd = "model-0000é-of-0003.safetensors";
    assert_eq!(odd.len(), 32);
    std::fs::write(dir.join(odd), b"not mine").unwrap();
    let model = random_model(&mut rng, 4, true, false);
    write_model(&dir, &model, WriteOptions::default()).unwrap();
    write_model(&dir, &model, WriteOptions { max_shard_size: Some(3000), ..Default::default() }).unwrap();
    assert_eq!(std::fs::read(dir.join(odd)).unwrap(), b"not mine");
    assert_model_reads_back(&Checkpoint::open(&dir).unwrap(), &model, CheckpointFormat::V1, "non-ascii neighbour");
}

#[test]
fn config_json_and_quantize_config_json_are_merged() {
    // sym/desc_act may differ (they do not change how stored tensors decode); config.json wins.
    let (dir, _) = good_raw_checkpoint("merge-sym");
    write_json(&dir.join("config.json"), &json!({"quantization_config": {"bits": 4, "group_size": 32, "sym": false, "desc_act": true}}));
    let ck = Checkpoint::open(&dir).unwrap();
    assert!(ck.config_source().contains("config.json"), "{}", ck.config_source());
    assert_eq!((ck.config().sym, ck.config().desc_act), (false, true));
    ck.layer("m.l").unwrap();

    // dynamic only in quantize_config.json is applied.
    let (dir, _) = good_raw_checkpoint("merge-dynamic");
    let dynamic = json!({"+:m\\.l$": {"desc_act": true}});
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 4, "group_size": 32, "sym": true, "dynamic": dynamic}));
    write_json(&dir.join("config.json"), &json!({"quantization_config": {"bits": 4, "group_size": 32, "sym": true}}));
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.config().dynamic(), dynamic.as_object());
    assert!(ck.layer_info("m.l").unwrap().desc_act);
    assert!(ck.config_source().contains("quantize_config.json"), "{}", ck.config_source());
    // A dynamic excluding the layer, from quantize_config.json, is enforced too.
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 4, "group_size": 32, "dynamic": {"-:m\\.l$": {}}}));
    assert_err(Checkpoint::open(&dir), is_format, &["m.l", "excludes"]);
    // config.json's own dynamic wins over quantize_config.json's.
    write_json(&dir.join("config.json"), &json!({"quantization_config": {"bits": 4, "group_size": 32, "dynamic": {"+:m\\.x$": {}}}}));
    assert!(!Checkpoint::open(&dir).unwrap().layer_info("m.l").unwrap().desc_act);

    // bits, group_size and checkpoint_format change the layout: disagreeing is refused.
    for (key, value) in [("bits", json!(8)), ("group_size", json!(64)), ("checkpoint_format", json!("gptq_v2"))] {
        let mut q = json!({"bits": 4, "group_size": 32});
        q[key] = value;
        write_json(&dir.join("config.json"), &json!({"quantization_config": q}));
        assert_err(Checkpoint::open(&dir), is_format, &["config.json", "quantize_config.json", "disagree", key]);
    }
}

#[test]
fn zero_element_layer_tensors_with_huge_dimensions_are_refused() {
    let (dir, file) = good_raw_checkpoint("huge-dims");
    let (h, data) = split(&file);
    let end = data.len();
    for rows in [1u64 << 60, (1u64 << 59) + 1] {
        let mut h = h.clone();
        h["z.qweight"] = json!({"dtype": "I32", "shape": [rows, 0], "data_offsets": [end, end]});
        h["z.qzeros"] = json!({"dtype": "I32", "shape": [0, 0], "data_offsets": [end, end]});
        h["z.scales"] = json!({"dtype": "F16", "shape": [0, 0], "data_offsets": [end, end]});
        join(&file, &serde_json::to_vec(&h).unwrap(), &data);
        assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Shape(_)), &["model.safetensors", "z.qweight"]);
    }
    // Out-features too large to pack.
    let mut h = h.clone();
    h["z.qweight"] = json!({"dtype": "I32", "shape": [0, 1u64 << 60], "data_offsets": [end, end]});
    h["z.qzeros"] = json!({"dtype": "I32", "shape": [0, 0], "data_offsets": [end, end]});
    h["z.scales"] = json!({"dtype": "F16", "shape": [0, 0], "data_offsets": [end, end]});
    join(&file, &serde_json::to_vec(&h).unwrap(), &data);
    assert_err(Checkpoint::open(&dir), |e| matches!(e, Error::Shape(_)), &["model.safetensors", "z.qweight"]);
}

#[test]
fn shard_names_in_the_index_must_be_plain_file_names() {
    let mut rng = Rng::new(43);
    let dir = scratch("index-names");
    let model = random_model(&mut rng, 4, true, false);
    write_model(&dir, &model, WriteOptions { max_shard_size: Some(3000), ..Default::default() }).unwrap();
    let index_path = dir.join("model.safetensors.index.json");
    let index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for bad_name in ["C:x", "C:\\x", "..", ".", "/abs", "a/b", "a\\b", "", "./x"] {
        let mut bad = index.clone();
        bad["weight_map"]["model.norm.weight"] = json!(bad_name);
        write_json(&index_path, &bad);
        assert_err(Checkpoint::open(&dir), is_format, &["model.safetensors.index.json", "not a plain file name"]);
    }
    write_json(&index_path, &index);
    Checkpoint::open(&dir).unwrap();
}

#[test]
fn a_pass_through_bias_of_a_quantized_layer_must_fit_it() {
    let mut rng = Rng::new(47);
    let dir = scratch("writer-bias");
    let l = random_layer(&mut rng, 4, Some(32), 64, 16, true, false, false, false);
    let mut w = CheckpointWriter::new(&dir, GptqConfig::new(4, Some(32), true, false).unwrap(), WriteOptions::default()).unwrap();
    w.add_layer("a", &l).unwrap();
    let arg = |e: &Error| matches!(e, Error::InvalidArgument(_));
    assert_err(w.add_tensor("a.bias", TensorDtype::F32, &[16], &[0; 64]), arg, &["\"a.bias\"", "F16", "[16]", "F32"]);
    assert_err(w.add_tensor("a.bias", TensorDtype::F16, &[8], &[0; 16]), arg, &["\"a.bias\"", "[8]"]);
    // Added before the layer: the layer is refused instead.
    w.add_tensor("b.bias", TensorDtype::F16, &[2, 8], &[0; 32]).unwrap();
    assert_err(w.add_layer("b", &l), arg, &["\"b.bias\"", "[16]"]);
    w.add_tensor("c.bias", TensorDtype::F16, &[16], &[0; 32]).unwrap();
    w.add_layer("c", &l).unwrap();
    // A fitting bias, and a `.bias` of something that is not a layer, are fine.
    w.add_tensor("a.bias", TensorDtype::F16, &[16], &[0; 32]).unwrap();
    w.finish().unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    assert!(ck.layer_info("a").unwrap().has_bias && ck.layer_info("c").unwrap().has_bias);
    assert_eq!(ck.layer("a").unwrap().bias().unwrap(), &[f16::ZERO; 16][..]);
    assert_eq!(ck.tensor_names(), ["b.bias"]);
}

#[test]
fn dropping_or_aborting_an_unused_writer_removes_the_directories_it_created() {
    let base = scratch("writer-dirs");
    let cfg = || GptqConfig::new(4, Some(32), true, false).unwrap();
    let w = CheckpointWriter::new(base.join("x/y"), cfg(), WriteOptions::default()).unwrap();
    assert!(base.join("x/y").is_dir());
    drop(w);
    assert!(!base.join("x").exists(), "both created levels are removed");
    let mut w = CheckpointWriter::new(base.join("x/y"), cfg(), WriteOptions::default()).unwrap();
    w.add_tensor("t", TensorDtype::F16, &[1], &[0; 2]).unwrap();
    w.abort();
    assert!(!base.join("x").exists());
    // A directory that existed is kept, and so is one that is no longer empty.
    drop(CheckpointWriter::new(&base, cfg(), WriteOptions::default()).unwrap());
    assert!(base.is_dir());
    let w = CheckpointWriter::new(base.join("x/y"), cfg(), WriteOptions::default()).unwrap();
    std::fs::write(base.join("x/mine"), b"1").unwrap();
    drop(w);
    assert!(base.join("x/mine").is_file() && !base.join("x/y").exists());
}

#[test]
fn damp_percent_from_a_quant_config_is_written_as_its_decimal_value() {
    let dir = scratch("damp");
    let q = gptq::quant::config::QuantConfig { bits: 4, group_size: Some(32), damp_percent: 0.01, ..Default::default() };
    let mut w = CheckpointWriter::new(&dir, GptqConfig::from_quant_config(&q).unwrap(), WriteOptions::default()).unwrap();
    w.add_tensor("t", TensorDtype::F16, &[1], &[0; 2]).unwrap();
    w.finish().unwrap();
    let text = String::from_utf8(std::fs::read(dir.join("quantize_config.json")).unwrap()).unwrap();
    assert!(text.contains("\"damp_percent\": 0.01\n") || text.contains("\"damp_percent\": 0.01,"), "{text}");
}

#[test]
fn c6_loads_as_v1_with_the_corrupted_zero_points_decoded_as_engines_do() {
    let case = Case::load("c6");
    let st = SafeTensors::deserialize(&case.bytes).unwrap();
    let dir = scratch("oracle-c6");
    let prefix = "model.layers.0.mlp.down_proj";
    let tensors: Vec<Raw> = [("qweight", "qweight"), ("qzeros", "qzeros"), ("scales", "scales"), ("packed_g_idx", "g_idx")]
        .iter()
        .map(|(src, dst)| {
            let t = st.tensor(src).unwrap();
            (format!("{prefix}.{dst}"), t.dtype(), t.shape().to_vec(), t.data().to_vec())
        })
        .collect();
    write_reference(&dir.join("model.safetensors"), &tensors);
    write_json(&dir.join("quantize_config.json"), &json!({"bits": 2, "group_size": 64, "desc_act": false, "sym": false, "checkpoint_format": "gptq"}));

    let ck = Checkpoint::open(&dir).unwrap();
    let info = ck.layer_info(prefix).unwrap();
    assert_eq!(info.format, CheckpointFormat::V1);
    let (n, k) = (case.cfg_usize("out_features"), case.cfg_usize("in_features"));
    assert_eq!((info.desc.bits, info.desc.group_size, info.desc.in_features, info.desc.out_features, info.desc.sym), (2, Some(64), k, n, false));
    let layer = ck.layer(prefix).unwrap();

    // The same tensors straight into the core, as v1.
    let (qweight, qzeros, scales, g_idx) = (case.i32("qweight"), case.i32("qzeros"), case.f16("scales"), case.i32("packed_g_idx"));
    let t = PackedRef { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: Some(&g_idx), bias: None };
    let direct = QuantizedLayer::from_packed(*layer.desc(), CheckpointFormat::V1, t).unwrap();
    assert_same_layer(&layer, &direct, "c6");
    assert_eq!(dequant(&layer), dequant(&direct));

    // Zero points: the oracle's outside the corrupted words; inside them stored + 1 (2^bits where the
    // all-ones field was written), exactly as engines decode v1.
    let zero = case.i32("zero"); // [out, G]
    let g = zero.len() / n;
    let bad = case.i32("qzeros_bad_words"); // [k, 2]: (group, word column)
    assert_eq!(bad.len(), 20);
    let per_word = 32 / 2;
    let words_per_row = n / per_word;
    let mut in_bad = vec![false; g * n];
    let mut fields_at_2_bits = 0;
    for b in bad.chunks_exact(2) {
        let (gi, wc) = (b[0] as usize, b[1] as usize);
        let word = qzeros[gi * words_per_row + wc] as u32;
        for f in 0..per_word {
            let col = wc * per_word + f;
            in_bad[gi * n + col] = true;
            let stored = (word >> (2 * f)) & 3;
            assert_eq!(layer.zeros()[gi * n + col], stored + 1, "c6: zero [{gi}, {col}]");
            fields_at_2_bits += (stored + 1 == 4) as usize;
        }
    }
    assert!(fields_at_2_bits >= 10, "each corrupted word has at least its wrapped field: {fields_at_2_bits}");
    for gi in 0..g {
        for col in 0..n {
            if !in_bad[gi * n + col] {
                assert_eq!(layer.zeros()[gi * n + col], zero[col * g + gi] as u32, "c6: zero [{gi}, {col}]");
            }
        }
    }
}

#[test]
fn an_open_checkpoint_is_shared_across_threads() {
    let mut rng = Rng::new(53);
    let dir = scratch("threads");
    let model = random_model(&mut rng, 4, false, false);
    write_model(&dir, &model, WriteOptions { max_shard_size: Some(3000), ..Default::default() }).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let names: Vec<String> = ck.layers().map(|l| l.name.clone()).collect();
    let expected: Vec<Vec<f32>> = names.iter().map(|n| dequant(&ck.layer(n).unwrap())).collect();
    let norm: &[u8] = &model.tensors[1].3;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (ck, names, expected) = (&ck, &names, &expected);
                s.spawn(move || {
                    for round in 0..20 {
                        // Each thread walks the layers in a different order.
                        for i in 0..names.len() {
                            let j = (i + t + round) % names.len();
                            let l = ck.layer(&names[j]).unwrap();
                            assert_eq!(dequant(&l), expected[j], "thread {t}: {}", names[j]);
                            assert_eq!(ck.packed(&names[j]).unwrap(), l.to_packed(CheckpointFormat::V1).unwrap());
                        }
                        assert_eq!(ck.tensor("model.norm.weight").unwrap().data, norm);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}
