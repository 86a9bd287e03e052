//! libgptq: GPTQ post-training quantization of LLM weights and dequant-GEMM kernels, behind a stable C
//! ABI (`include/gptq.h`).
//!
//! The safe Rust core lives in [`quant`] (Hessians, GPTQ, RTN), [`format`] (the packed GPTQ layer
//! format) and [`cpu`] (threads and GEMM); [`ffi`] is the thin C layer that validates and forwards.

pub mod cpu;
pub mod cuda;
pub mod error;
pub mod ffi;
pub mod format;
pub mod quant;
pub mod tensor;

pub use error::{Error, Result};
pub use format::{CheckpointFormat, QuantizedLayer};
pub use quant::{Hessian, QuantConfig, QuantReport, Quantized, SampleCount};
pub use tensor::{DType, Elements, MatView};
