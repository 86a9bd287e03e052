//! Writes the seed corpus of the checkpoint fuzz target (tests/fuzz/corpus/checkpoint): small valid
//! checkpoints in v1 and v2 at several bit widths, and their configs.
//!
//!     cargo run --release --example fuzz_seeds

use gptq::format::checkpoint::{CheckpointWriter, GptqConfig, TensorDtype, WriteOptions};
use gptq::quant::{quantize_rtn, QuantConfig};
use gptq::{CheckpointFormat, Elements, MatView, QuantizedLayer};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/checkpoint");
    std::fs::create_dir_all(&out)?;
    let tmp = std::env::temp_dir().join(format!("gptq-seeds-{}", std::process::id()));
    for (bits, group, sym, format) in
        [(4, Some(32), true, CheckpointFormat::V1), (3, None, false, CheckpointFormat::V2), (8, Some(128), true, CheckpointFormat::V1)]
    {
        let (n, k) = (32, 128);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 5e4).collect();
        let cfg = QuantConfig { bits, group_size: group, sym, ..QuantConfig::default() };
        let layer = QuantizedLayer::from_quantized(&quantize_rtn(&MatView::dense(Elements::F32(&w), n, k, "W")?, &cfg)?);
        let _ = std::fs::remove_dir_all(&tmp);
        let gc = GptqConfig::from_quant_config(&cfg)?;
        let mut wr = CheckpointWriter::new(&tmp, gc, WriteOptions { format, ..WriteOptions::default() })?;
        wr.add_layer("model.layers.0.mlp.up_proj", &layer)?;
        let norm: Vec<u8> = (0..k).flat_map(|_| half::f16::ONE.to_le_bytes()).collect();
        wr.add_tensor("model.norm.weight", TensorDtype::F16, &[k], &norm)?;
        wr.finish()?;
        let name = format!("b{bits}-{}", if format == CheckpointFormat::V1 { "v1" } else { "v2" });
        std::fs::copy(tmp.join("model.safetensors"), out.join(format!("{name}.safetensors")))?;
        std::fs::copy(tmp.join("quantize_config.json"), out.join(format!("{name}.json")))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("seeds written to {}", out.display());
    Ok(())
}
