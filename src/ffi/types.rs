//! Enumerations that cross the C boundary as plain integers (checked on entry, never transmuted).

/// Element type of a tensor argument.
pub type gptq_dtype = u32;
/// IEEE float32.
pub const GPTQ_DTYPE_F32: gptq_dtype = 0;
/// IEEE float16 (pass as `uint16_t` bit patterns where C lacks a half type).
pub const GPTQ_DTYPE_F16: gptq_dtype = 1;
/// bfloat16.
pub const GPTQ_DTYPE_BF16: gptq_dtype = 2;
/// IEEE float64 (accepted where noted: dense Hessians).
pub const GPTQ_DTYPE_F64: gptq_dtype = 3;

/// How zero points are stored in `qzeros`.
pub type gptq_format = u32;
/// `checkpoint_format = "gptq"`: `qzeros` holds zero − 1. What transformers, vLLM and AutoGPTQ read.
pub const GPTQ_FORMAT_V1: gptq_format = 1;
/// `checkpoint_format = "gptq_v2"`: `qzeros` holds the zero point itself (GPTQModel).
pub const GPTQ_FORMAT_V2: gptq_format = 2;

/// What `n` in the Hessian's running average `H = (2/n) Σ xᵀx` counts.
pub type gptq_sample_count = u32;
/// Every activation row is one sample (GPTQModel's convention).
pub const GPTQ_COUNT_ROWS: gptq_sample_count = 0;
/// Every `gptq_hessian_add_batch` call is one sample (AutoGPTQ, one sequence per call).
pub const GPTQ_COUNT_BATCHES: gptq_sample_count = 1;
