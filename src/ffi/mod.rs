//! The C ABI (`include/gptq.h`): converts and validates C arguments, then forwards to the safe core.
//!
//! Conventions (after rustls-ffi): opaque handles with `_new`/`_free`; every fallible function returns
//! a `gptq_status` and writes its out-parameters only on success; `gptq_last_error_message()` explains
//! the last failure on the calling thread; every entry point runs inside a panic boundary; enums are
//! plain integers checked on entry; option structs begin with `struct_size`.
#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // the safety contract of every function is in its C documentation

mod boundary;
pub mod checkpoint;
pub mod cuda;
pub mod hessian;
pub mod layer;
pub mod quant;
pub mod status;
pub mod types;

pub use checkpoint::*;
pub use cuda::*;
pub use hessian::*;
pub use layer::*;
pub use quant::*;
pub use status::*;
pub use types::*;

use std::ffi::c_char;

/// Packs a version as `major·10000 + minor·100 + patch`.
const fn version_number(major: &str, minor: &str, patch: &str) -> u32 {
    const fn parse(s: &str) -> u32 {
        let b = s.as_bytes();
        let mut i = 0;
        let mut v = 0;
        while i < b.len() {
            v = v * 10 + (b[i] - b'0') as u32;
            i += 1;
        }
        v
    }
    parse(major) * 10000 + parse(minor) * 100 + parse(patch)
}

const VERSION_NUMBER: u32 = version_number(
    env!("CARGO_PKG_VERSION_MAJOR"),
    env!("CARGO_PKG_VERSION_MINOR"),
    env!("CARGO_PKG_VERSION_PATCH"),
);
const VERSION_STRING: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version as `major·10000 + minor·100 + patch`; compare with `GPTQ_VERSION_NUMBER`
/// to detect a header/library mismatch. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn gptq_version_number() -> u32 {
    VERSION_NUMBER
}

/// The library's version as a static string such as `"0.1.0"`. Never NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn gptq_version_string() -> *const c_char {
    VERSION_STRING.as_ptr().cast()
}

/// Sets the size of the library's CPU thread pool (`0` = one per core, the default; the environment
/// variable `GPTQ_NUM_THREADS` sets the initial size). Calls already running keep their pool.
///
/// Returns `GPTQ_STATUS_OK`, `_INVALID_ARGUMENT` (more than 4096), `_OUT_OF_MEMORY`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn gptq_set_num_threads(num_threads: usize) -> status::gptq_status {
    boundary::guard(|| crate::cpu::threads::set_num_threads(num_threads))
}

/// The number of threads in the library's CPU pool. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn gptq_get_num_threads() -> usize {
    std::panic::catch_unwind(crate::cpu::threads::num_threads).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::boundary::guard;
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let s = guard(|| panic!("boom"));
        assert_eq!(s, GPTQ_STATUS_PANIC);
        let msg = unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_str().unwrap();
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(guard(|| Ok(())), GPTQ_STATUS_OK);
        assert_eq!(unsafe { CStr::from_ptr(gptq_last_error_message()) }.to_bytes(), b"");
    }

    #[test]
    fn version_number_matches_the_package_version() {
        let s = unsafe { CStr::from_ptr(gptq_version_string()) }.to_str().unwrap();
        let parts: Vec<u32> = s.split('.').map(|p| p.parse().unwrap()).collect();
        assert_eq!(gptq_version_number(), parts[0] * 10000 + parts[1] * 100 + parts[2]);
    }
}
