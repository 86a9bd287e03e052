//! Fuzzes everything that reads untrusted checkpoint bytes: the safetensors header parser, the GPTQ
//! config parser, config discovery (`quantize_config.json`, else the `gptq_*` safetensors metadata)
//! with GPTQModel's `dynamic` rules, and opening a checkpoint, which validates every layer against the
//! config, then fetching and dequantizing each layer, in v1 and v2. Any panic, crash or sanitizer
//! report is a bug: bad input must come back as an error.
//!
//! Input framing: an input that starts with `{` is `quantize_config.json`, then a 0xFF byte (never in
//! UTF-8 JSON), then the safetensors file; any other input is the safetensors file alone (as the
//! `.safetensors` seeds are), and the config then comes from its metadata.
#![no_main]

use gptq::format::checkpoint::safetensors_io::parse_header;
use gptq::format::checkpoint::{Checkpoint, GptqConfig};
use gptq::format::CheckpointFormat;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A private directory for this process (the reader looks for config files beside the weights).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("gptq-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Fetches, checks and dequantizes every layer, and touches every pass-through tensor.
fn exercise(ck: &Checkpoint) {
    let names: Vec<String> = ck.layers().map(|l| l.name.clone()).collect();
    for name in names {
        let _ = ck.has_act_order(&name);
        if let Ok(layer) = ck.layer(&name) {
            let d = layer.desc();
            // Bounded: a header may declare a huge layer backed by few bytes; it must fail above.
            if d.in_features * d.out_features <= 1 << 20 {
                let mut out = vec![0f32; d.in_features * d.out_features];
                layer.dequantize_into(&mut out);
            }
        }
    }
    for t in ck.tensors() {
        std::hint::black_box(t.data.first());
    }
}

fuzz_target!(|data: &[u8]| {
    let (config, weights) = if data.first() == Some(&b'{') {
        match data.iter().position(|&b| b == 0xFF) {
            Some(i) => (Some(&data[..i]), &data[i + 1..]),
            None => (Some(data), &[][..]),
        }
    } else {
        (None, data)
    };
    let _ = parse_header(weights, Path::new("fuzz.safetensors"));
    let dir = scratch();
    let qc_path = dir.join("quantize_config.json");
    match config {
        Some(c) => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(c) {
                let _ = GptqConfig::from_json(&v, "fuzz config");
            }
            std::fs::write(&qc_path, c).unwrap();
        }
        None => {
            let _ = std::fs::remove_file(&qc_path);
        }
    }
    let path = dir.join("model.safetensors");
    std::fs::write(&path, weights).unwrap();

    // The config found on disk (quantize_config.json, else the file's gptq_* metadata).
    if let Ok(ck) = Checkpoint::open(dir) {
        exercise(&ck);
    }
    // Given configs, each in v1 and v2 (without the config file, which would otherwise have to parse).
    let _ = std::fs::remove_file(&qc_path);
    for (bits, group) in [(4, Some(32)), (3, None), (8, Some(128))] {
        for format in [CheckpointFormat::V1, CheckpointFormat::V2] {
            let mut config = GptqConfig::new(bits, group, bits != 3, false).unwrap();
            config.checkpoint_format = format;
            if let Ok(ck) = Checkpoint::open_with_config(&path, config) {
                exercise(&ck);
            }
        }
    }
});
