//! The GPTQ packed layer format (`qweight`, `qzeros`, `scales`, `g_idx`), versions v1 and v2.

pub mod checkpoint;
pub mod layer;
pub mod pack;

pub use checkpoint::{Checkpoint, CheckpointWriter, GptqConfig, TensorDtype, WriteOptions};
pub use layer::{LayerDesc, PackedRef, PackedTensors, QuantizedLayer};

use crate::error::{Error, Result};

/// How zero points are stored in `qzeros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `"gptq"`: stores `zero − 1` (what transformers, vLLM and AutoGPTQ read).
    V1,
    /// `"gptq_v2"`: stores `zero` itself (GPTQModel).
    V2,
}

/// Multiple that `in_features` and `out_features` must be of, so that packing fills whole words.
pub fn dim_multiple(bits: u32) -> usize {
    if 32 % bits == 0 { (32 / bits) as usize } else { 32 }
}

/// Checks that a `[out, in]` layer of `bits` bits packs into whole words.
pub fn check_layer_dims(bits: u32, in_features: usize, out_features: usize) -> Result<()> {
    crate::quant::config::check_bits(bits)?;
    let m = dim_multiple(bits);
    if in_features == 0 || out_features == 0 {
        return Err(Error::Shape(format!(
            "layer dimensions must be non-zero, got out_features {out_features}, in_features {in_features}"
        )));
    }
    if in_features % m != 0 || out_features % m != 0 {
        return Err(Error::Shape(format!(
            "{bits}-bit packing needs in_features and out_features to be multiples of {m}, got \
             in_features {in_features}, out_features {out_features}"
        )));
    }
    Ok(())
}
