//! GPTQ checkpoints on disk: safetensors files plus the quantization config, as written and read by
//! transformers, vLLM, AutoGPTQ and GPTQModel.
//!
//! - [`Checkpoint`] opens a model directory (sharded or not) or a single `.safetensors` file,
//!   memory-maps it, validates every header and quantized layer against the config, and hands out
//!   [`QuantizedLayer`](crate::format::QuantizedLayer)s and zero-copy pass-through tensors.
//! - [`CheckpointWriter`] writes one, atomically (temporary files, sync, rename).
//! - [`GptqConfig`] is the `quantize_config.json` / `quantization_config` block, unknown keys kept.
//!
//! Every error names the file, and the tensor or config key, that caused it.

pub mod config;
pub mod reader;
pub mod safetensors_io;
pub mod writer;

pub use config::{GptqConfig, ModuleQuant};
pub use reader::{Checkpoint, LayerInfo, TensorView};
pub use safetensors_io::TensorDtype;
pub use writer::{CheckpointWriter, WriteOptions, WriteSummary};

use crate::error::Error;

/// The weights of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// AutoGPTQ's and GPTQModel's config file.
pub const QUANTIZE_CONFIG_FILE: &str = "quantize_config.json";

/// Prefixes an error's message with `ctx` (a file, tensor or layer), keeping its kind and so its status.
pub(crate) fn context(e: Error, ctx: impl std::fmt::Display) -> Error {
    e.map_message(|m| format!("{ctx}: {m}"))
}
