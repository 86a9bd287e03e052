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
    let wrap = |m: String| format!("{ctx}: {m}");
    match e {
        Error::NullPointer(m) => Error::NullPointer(wrap(m)),
        Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
        Error::Shape(m) => Error::Shape(wrap(m)),
        Error::Unsupported(m) => Error::Unsupported(wrap(m)),
        Error::InvalidEnum(m) => Error::InvalidEnum(wrap(m)),
        Error::StructSize(m) => Error::StructSize(wrap(m)),
        Error::NonFinite(m) => Error::NonFinite(wrap(m)),
        Error::NotPositiveDefinite(m) => Error::NotPositiveDefinite(wrap(m)),
        Error::InvalidFormat(m) => Error::InvalidFormat(wrap(m)),
        Error::Misaligned(m) => Error::Misaligned(wrap(m)),
        Error::BufferTooSmall(m) => Error::BufferTooSmall(wrap(m)),
        Error::Poisoned(m) => Error::Poisoned(wrap(m)),
        Error::OutOfMemory(m) => Error::OutOfMemory(wrap(m)),
        Error::Io(m) => Error::Io(wrap(m)),
        // Kinds the checkpoint code never produces (device errors, ...) pass through unchanged, so
        // that adding a variant elsewhere does not need a change here.
        #[allow(unreachable_patterns)]
        other => other,
    }
}
