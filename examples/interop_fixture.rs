//! Writes a small GPTQ model directory (v1, sharded, with act-order) plus the dequantized weights of
//! each layer as raw little-endian f32, for checking the files with other implementations (Python
//! safetensors/transformers on the GPU machine: see `.ci/stage-device.sh`).
//!
//!     cargo run --release --example interop_fixture -- <out-dir>

use gptq::format::checkpoint::{CheckpointWriter, GptqConfig, WriteOptions};
use gptq::quant::{quantize_gptq, Hessian, QuantConfig, SampleCount};
use gptq::{Elements, MatView, QuantizedLayer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: interop_fixture <out-dir>")?);
    let _ = std::fs::remove_dir_all(&out);
    let (n, k) = (256, 512);
    let cfg = QuantConfig { bits: 4, group_size: Some(128), desc_act: true, ..QuantConfig::default() };
    let source = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": k,
        "intermediate_size": n, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 128,
    });
    let mut w = CheckpointWriter::new(
        &out,
        GptqConfig::from_quant_config(&cfg)?,
        WriteOptions { max_shard_size: Some(100_000), source_config: Some(source), ..WriteOptions::default() },
    )?;
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    for l in 0..2 {
        let wt: Vec<f32> = (0..n * k).map(|_| 0.05 * rnd()).collect();
        let x: Vec<f32> = (0..1024 * k).map(|i| rnd() * if i % k == 7 { 20.0 } else { 1.0 }).collect();
        let mut h = Hessian::new(k, SampleCount::Rows)?;
        h.add_batch(&MatView::dense(Elements::F32(&x), 1024, k, "X")?)?;
        let (q, _) = quantize_gptq(&MatView::dense(Elements::F32(&wt), n, k, "W")?, &h, &cfg, false)?;
        let layer = QuantizedLayer::from_quantized(&q);
        let name = format!("model.layers.{l}.mlp.up_proj");
        w.add_layer(&name, &layer)?;
        let mut deq = vec![0f32; n * k];
        layer.dequantize_into(&mut deq);
        let bytes: Vec<u8> = deq.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::create_dir_all(out.with_extension("ref"))?;
        std::fs::write(out.with_extension("ref").join(format!("{name}.f32")), bytes)?;
    }
    let s = w.finish()?;
    println!("{} layers, {} files in {}", s.num_layers, s.files.len(), out.display());
    Ok(())
}
