//! Fuzzes everything that reads untrusted checkpoint bytes: the safetensors header parser, the GPTQ
//! config parser, and opening a file as a checkpoint, which validates every layer against the config,
//! then fetching and dequantizing each layer. Any panic, crash or sanitizer report is a bug: bad
//! input must come back as an error.
#![no_main]

use gptq::format::checkpoint::safetensors_io::parse_header;
use gptq::format::checkpoint::{Checkpoint, GptqConfig};
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

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(data, Path::new("fuzz.safetensors"));
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = GptqConfig::from_json(&v, "fuzz config");
    }
    let path = scratch().join("model.safetensors");
    std::fs::write(&path, data).unwrap();
    for (bits, group) in [(4, Some(32)), (3, None), (8, Some(128))] {
        let config = GptqConfig::new(bits, group, bits != 3, false).unwrap();
        let Ok(ck) = Checkpoint::open_with_config(&path, config) else { continue };
        let names: Vec<String> = ck.layers().map(|l| l.name.clone()).collect();
        for name in names {
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
});
