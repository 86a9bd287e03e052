//! CPU execution: the thread pool and the dequant-GEMM kernels.

pub mod gemm;
pub mod threads;
pub mod views;

pub use gemm::{gemm, OutMatMut};
