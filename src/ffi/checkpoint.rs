//! `gptq_checkpoint` and `gptq_checkpoint_writer`: reading and writing GPTQ checkpoints (safetensors
//! plus `quantize_config.json` / `config.json`), as transformers, vLLM, AutoGPTQ and GPTQModel use.

use super::boundary::*;
use super::layer::{gptq_layer, gptq_layer_properties, INFO_V1_SIZE};
use super::status::gptq_status;
use super::types::*;
use crate::error::{Error, Result};
use crate::format::checkpoint::{Checkpoint, CheckpointWriter, GptqConfig, TensorDtype, WriteOptions};
use crate::format::CheckpointFormat;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::{Mutex, MutexGuard};

/// An open GPTQ checkpoint: a model directory (sharded or not) or a single `.safetensors` file,
/// memory-mapped. Immutable: every function taking a `const gptq_checkpoint *` may run on the same
/// handle from several threads at once. Strings, shapes and tensor data it hands out stay valid until
/// `gptq_checkpoint_close`. The files must not be modified while it is open.
pub struct gptq_checkpoint {
    inner: Checkpoint,
    layer_names: Vec<CString>,
    tensor_names: Vec<CString>,
    config_json: CString,
}

/// A zero-copy view of a pass-through tensor of an open checkpoint (embeddings, norms, `lm_head`, ...).
/// Filled by `gptq_checkpoint_tensor` and `gptq_checkpoint_find_tensor`; set
/// `struct_size = sizeof(gptq_tensor_view)` before the call. Every pointer stays valid until the
/// checkpoint is closed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gptq_tensor_view {
    pub struct_size: usize,
    /// The tensor's name (NUL-terminated UTF-8).
    pub name: *const c_char,
    /// The safetensors dtype name: `"F16"`, `"BF16"`, `"F32"`, `"F64"`, `"I8"`, `"I16"`, `"I32"`,
    /// `"I64"`, `"U8"`, `"U16"`, `"U32"`, `"U64"`, `"BOOL"`, `"F8_E4M3"` or `"F8_E5M2"`.
    pub dtype: *const c_char,
    /// Bytes per element.
    pub element_size: usize,
    pub ndim: usize,
    /// `ndim` dimensions (NULL when `ndim` is 0).
    pub shape: *const usize,
    /// The raw little-endian bytes inside the memory-mapped file. Aligned to `element_size` in files
    /// written by libgptq or the `safetensors` library; other writers may not align them.
    pub data: *const c_void,
    pub nbytes: usize,
}

const VIEW_V1_SIZE: usize = std::mem::size_of::<gptq_tensor_view>();

/// Options of `gptq_checkpoint_writer_new`. Set `struct_size = sizeof(gptq_checkpoint_write_options)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gptq_checkpoint_write_options {
    pub struct_size: usize,
    /// `GPTQ_FORMAT_V1` (the default; what every engine reads) or `GPTQ_FORMAT_V2` (GPTQModel).
    pub format: gptq_format,
    /// Largest shard in bytes; 0 writes a single `model.safetensors`.
    pub max_shard_size: u64,
    /// The source model's `config.json` as UTF-8 JSON text, copied with its `quantization_config`
    /// replaced; NULL keeps an existing `config.json` in the target directory (or writes a minimal one).
    pub source_config_json: *const c_char,
}

impl Default for gptq_checkpoint_write_options {
    fn default() -> Self {
        gptq_checkpoint_write_options {
            struct_size: 0,
            format: GPTQ_FORMAT_V1,
            max_shard_size: 0,
            source_config_json: std::ptr::null(),
        }
    }
}

const WRITE_OPTIONS_V1_SIZE: usize = std::mem::size_of::<gptq_checkpoint_write_options>();

/// A checkpoint being written. Calls on one handle are serialized by an internal lock, so it may be
/// shared across threads. Temporary files are renamed into place only by `gptq_checkpoint_writer_finish`;
/// `gptq_checkpoint_writer_abort` discards them. Both free the handle.
pub struct gptq_checkpoint_writer {
    inner: Mutex<Option<CheckpointWriter>>,
}

impl gptq_checkpoint_writer {
    fn lock(&self) -> Result<MutexGuard<'_, Option<CheckpointWriter>>> {
        self.inner
            .lock()
            .map_err(|_| Error::Poisoned("the writer was left inconsistent by an earlier panic; abort it".into()))
    }
}

/// A UTF-8 string argument.
unsafe fn utf8<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    let p = unsafe { deref(p, name)? };
    // SAFETY: non-null; NUL termination is the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| Error::InvalidArgument(format!("{name} is not valid UTF-8 ({e})")))
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidFormat(format!("{what} \"{}\" contains a NUL byte", s.escape_debug())))
}

fn dtype_cstr(d: TensorDtype) -> &'static CStr {
    match d {
        TensorDtype::Bool => c"BOOL",
        TensorDtype::U8 => c"U8",
        TensorDtype::I8 => c"I8",
        TensorDtype::F8E5M2 => c"F8_E5M2",
        TensorDtype::F8E4M3 => c"F8_E4M3",
        TensorDtype::I16 => c"I16",
        TensorDtype::U16 => c"U16",
        TensorDtype::F16 => c"F16",
        TensorDtype::BF16 => c"BF16",
        TensorDtype::I32 => c"I32",
        TensorDtype::U32 => c"U32",
        TensorDtype::F32 => c"F32",
        TensorDtype::I64 => c"I64",
        TensorDtype::U64 => c"U64",
        TensorDtype::F64 => c"F64",
    }
}

/// Opens a GPTQ checkpoint: a model directory (`config.json` and/or `quantize_config.json`;
/// `model.safetensors` or the shards of `model.safetensors.index.json`) or a single `.safetensors`
/// file (its config from the JSON files beside it, else its `gptq_*` metadata). `path` is a
/// NUL-terminated UTF-8 path.
///
/// Only headers are read: every header, and every quantized layer's tensor names, dtypes and shapes,
/// are validated against the config here; tensor contents when a layer is fetched. On success `*out`
/// receives a new handle owned by the caller (close with `gptq_checkpoint_close`); on error it is
/// untouched and the last-error message names the file and the tensor or config key.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ARGUMENT` (path not UTF-8),
/// `_IO` (missing or unreadable file, an index naming a missing shard), `_INVALID_FORMAT` (malformed
/// header, JSON or index; a tensor missing from a layer; a wrong layer dtype), `_SHAPE_MISMATCH`
/// (layer shapes inconsistent with the config), `_UNSUPPORTED` (bits, group size, checkpoint format
/// or tensor dtype the library does not handle). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_open(path: *const c_char, out: *mut *mut gptq_checkpoint) -> gptq_status {
    guard(|| {
        let path = unsafe { utf8(path, "path")? };
        let out = unsafe { deref_mut(out, "out")? };
        let inner = Checkpoint::open(path)?;
        let layer_names = inner.layers().map(|l| c_string(&l.name, "layer name")).collect::<Result<_>>()?;
        let tensor_names = inner.tensor_names().iter().map(|n| c_string(n, "tensor name")).collect::<Result<_>>()?;
        let config_json = c_string(&inner.config().to_json().to_string(), "config")?;
        *out = into_handle(gptq_checkpoint { inner, layer_names, tensor_names, config_json });
        Ok(())
    })
}

/// Closes a checkpoint, unmapping its files; every string, shape and data pointer it handed out becomes
/// invalid. Layers fetched from it stay valid (they own their data). NULL is a no-op. The handle must
/// not be in use by another thread or used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_close(checkpoint: *mut gptq_checkpoint) {
    unsafe { free_handle(checkpoint) }
}

/// Writes the number of quantized layers to `*out`. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`,
/// `_MISALIGNED`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_num_layers(checkpoint: *const gptq_checkpoint, out: *mut usize) -> gptq_status {
    guard(|| {
        let c = unsafe { deref(checkpoint, "checkpoint")? };
        *unsafe { deref_mut(out, "out")? } = c.layer_names.len();
        Ok(())
    })
}

/// Writes the name of quantized layer `index` (`0 ≤ index < num_layers`, sorted by name; e.g.
/// `"model.layers.0.self_attn.q_proj"`) to `*name`. The string is owned by the checkpoint and valid
/// until it is closed. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ARGUMENT`
/// (index out of range). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_layer_name(
    checkpoint: *const gptq_checkpoint,
    index: usize,
    name: *mut *const c_char,
) -> gptq_status {
    guard(|| {
        let c = unsafe { deref(checkpoint, "checkpoint")? };
        let out = unsafe { deref_mut(name, "name")? };
        let s = c.layer_names.get(index).ok_or_else(|| {
            Error::InvalidArgument(format!("layer index {index} is out of range ({} layers)", c.layer_names.len()))
        })?;
        *out = s.as_ptr();
        Ok(())
    })
}

/// Describes the quantized layer `name` without loading it (its headers, plus its `g_idx` for
/// `act_order`), into `*info` as `gptq_layer_info` would describe the loaded layer.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_STRUCT_SIZE`, `_INVALID_ARGUMENT` (no
/// such layer, name not UTF-8); on error `*info` is untouched. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_layer_info(
    checkpoint: *const gptq_checkpoint,
    name: *const c_char,
    info: *mut gptq_layer_properties,
) -> gptq_status {
    guard(|| {
        let c = &unsafe { deref(checkpoint, "checkpoint")? }.inner;
        let name = unsafe { utf8(name, "name")? };
        let l = c
            .layer_info(name)
            .ok_or_else(|| Error::InvalidArgument(format!("the checkpoint has no quantized layer \"{name}\"")))?;
        let d = l.desc;
        let value = gptq_layer_properties::new(&d, c.has_act_order(name)?, l.has_bias);
        unsafe { write_versioned(info, &value, INFO_V1_SIZE, "info") }
    })
}

/// Loads the quantized layer `name`, validating its contents (g_idx range, zero points, finite scales
/// and bias) and converting it from the checkpoint's format. On success `*out` receives a new layer
/// owned by the caller (free with `gptq_layer_free`; it does not depend on the checkpoint staying
/// open); on error it is untouched and the message names the file and the tensor.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ARGUMENT` (no such layer, name
/// not UTF-8), `_INVALID_FORMAT`, `_NON_FINITE`, `_OUT_OF_MEMORY`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_get_layer(
    checkpoint: *const gptq_checkpoint,
    name: *const c_char,
    out: *mut *mut gptq_layer,
) -> gptq_status {
    guard(|| {
        let c = &unsafe { deref(checkpoint, "checkpoint")? }.inner;
        let name = unsafe { utf8(name, "name")? };
        let out = unsafe { deref_mut(out, "out")? };
        *out = into_handle(gptq_layer::new(c.layer(name)?));
        Ok(())
    })
}

/// Writes the number of pass-through tensors (everything that is not part of a quantized layer) to
/// `*out`. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_num_tensors(checkpoint: *const gptq_checkpoint, out: *mut usize) -> gptq_status {
    guard(|| {
        let c = unsafe { deref(checkpoint, "checkpoint")? };
        *unsafe { deref_mut(out, "out")? } = c.tensor_names.len();
        Ok(())
    })
}

unsafe fn write_view(c: &gptq_checkpoint, index: usize, view: *mut gptq_tensor_view) -> Result<()> {
    let v = c.inner.tensor(&c.inner.tensor_names()[index]).expect("a listed pass-through tensor exists");
    let value = gptq_tensor_view {
        struct_size: VIEW_V1_SIZE,
        name: c.tensor_names[index].as_ptr(),
        dtype: dtype_cstr(v.dtype).as_ptr(),
        element_size: v.dtype.size(),
        ndim: v.shape.len(),
        shape: if v.shape.is_empty() { std::ptr::null() } else { v.shape.as_ptr() },
        data: v.data.as_ptr().cast(),
        nbytes: v.data.len(),
    };
    unsafe { write_versioned(view, &value, VIEW_V1_SIZE, "view") }
}

/// Fills `*view` with pass-through tensor `index` (`0 ≤ index < num_tensors`, sorted by name). No data
/// is copied: the view points into the mapped file.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_STRUCT_SIZE`, `_INVALID_ARGUMENT`
/// (index out of range); on error `*view` is untouched. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_tensor(
    checkpoint: *const gptq_checkpoint,
    index: usize,
    view: *mut gptq_tensor_view,
) -> gptq_status {
    guard(|| {
        let c = unsafe { deref(checkpoint, "checkpoint")? };
        if index >= c.tensor_names.len() {
            return Err(Error::InvalidArgument(format!(
                "tensor index {index} is out of range ({} tensors)",
                c.tensor_names.len()
            )));
        }
        unsafe { write_view(c, index, view) }
    })
}

/// Fills `*view` with the pass-through tensor named `name`, as `gptq_checkpoint_tensor` does.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_STRUCT_SIZE`, `_INVALID_ARGUMENT` (no
/// such pass-through tensor, name not UTF-8); on error `*view` is untouched. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_find_tensor(
    checkpoint: *const gptq_checkpoint,
    name: *const c_char,
    view: *mut gptq_tensor_view,
) -> gptq_status {
    guard(|| {
        let c = unsafe { deref(checkpoint, "checkpoint")? };
        let name = unsafe { utf8(name, "name")? };
        let index = c.inner.tensor_names().binary_search_by(|n| n.as_str().cmp(name)).map_err(|_| {
            Error::InvalidArgument(format!("the checkpoint has no pass-through tensor \"{name}\""))
        })?;
        unsafe { write_view(c, index, view) }
    })
}

/// Writes the checkpoint's quantization config, as compact JSON text, to `*json`: the object it was
/// read from (unknown keys included, GPTQModel's `meta` and `dynamic` too) with `quant_method`, `bits`,
/// `group_size`, `desc_act`, `sym`, `static_groups`, `true_sequential`, `damp_percent` and
/// `checkpoint_format` always present. The string is owned by the checkpoint and valid until it is
/// closed. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_config(checkpoint: *const gptq_checkpoint, json: *mut *const c_char) -> gptq_status {
    guard(|| {
        let c = unsafe { deref(checkpoint, "checkpoint")? };
        *unsafe { deref_mut(json, "json")? } = c.config_json.as_ptr();
        Ok(())
    })
}

/// Starts writing a checkpoint into the directory `dir` (NUL-terminated UTF-8; created if missing).
/// `quant_config_json` is the quantization config as JSON text (the content of a
/// `quantize_config.json`: at least `bits`; `group_size`, `sym`, `desc_act`, GPTQModel's `dynamic`
/// and any other keys are honoured or kept). `options` may be NULL for the defaults (v1, one file).
///
/// Nothing visible changes in `dir` until `gptq_checkpoint_writer_finish`. On success `*out` receives
/// a new writer owned by the caller, to be consumed by `_finish` or `_abort`; on error it is untouched.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_STRUCT_SIZE`, `_INVALID_ENUM` (format),
/// `_INVALID_ARGUMENT` (strings not UTF-8, source config not a JSON object), `_INVALID_FORMAT` (bad
/// JSON or config values), `_UNSUPPORTED` (bits, group size), `_IO` (cannot create `dir`). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_writer_new(
    dir: *const c_char,
    quant_config_json: *const c_char,
    options: *const gptq_checkpoint_write_options,
    out: *mut *mut gptq_checkpoint_writer,
) -> gptq_status {
    guard(|| {
        let dir = unsafe { utf8(dir, "dir")? };
        let text = unsafe { utf8(quant_config_json, "quant_config_json")? };
        let o = if options.is_null() {
            gptq_checkpoint_write_options::default()
        } else {
            unsafe { read_versioned(options, WRITE_OPTIONS_V1_SIZE, "options")? }
        };
        let out = unsafe { deref_mut(out, "out")? };
        let parse = |t: &str, what: &str| {
            serde_json::from_str::<serde_json::Value>(t)
                .map_err(|e| Error::InvalidFormat(format!("{what} is not valid JSON ({e})")))
        };
        let config = GptqConfig::from_json(&parse(text, "quant_config_json")?, "quant_config_json")?;
        let format = match o.format {
            GPTQ_FORMAT_V1 => CheckpointFormat::V1,
            GPTQ_FORMAT_V2 => CheckpointFormat::V2,
            v => return Err(Error::InvalidEnum(format!("options.format: {v} is not a gptq_format"))),
        };
        let source_config = if o.source_config_json.is_null() {
            None
        } else {
            let t = unsafe { utf8(o.source_config_json, "options.source_config_json")? };
            Some(parse(t, "options.source_config_json")?)
        };
        let opts = WriteOptions { format, max_shard_size: (o.max_shard_size > 0).then_some(o.max_shard_size), source_config };
        let w = CheckpointWriter::new(dir, config, opts)?;
        *out = into_handle(gptq_checkpoint_writer { inner: Mutex::new(Some(w)) });
        Ok(())
    })
}

fn active<'a>(g: &'a mut MutexGuard<'_, Option<CheckpointWriter>>) -> Result<&'a mut CheckpointWriter> {
    g.as_mut().ok_or_else(|| Error::InvalidArgument("the writer has already finished".into()))
}

/// Adds a quantized layer under the module name `name` (tensors `<name>.qweight`, `.qzeros`,
/// `.scales`, `.g_idx` and `.bias` if the layer has one). The layer's bits, group size and sym must
/// match the config's (after its `dynamic` overrides for `name`); an act-order layer needs `desc_act`.
/// The layer is copied; it may be freed after the call. A full shard may be written to a temporary
/// file here.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ARGUMENT` (mismatch with the
/// config, duplicate name, name not UTF-8), `_UNSUPPORTED` (a zero point of 0 with v1), `_IO`,
/// `_POISONED`. On error the writer is unchanged and stays usable. Thread-safe (serialized per handle).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_writer_add_layer(
    writer: *mut gptq_checkpoint_writer,
    name: *const c_char,
    layer: *const gptq_layer,
) -> gptq_status {
    guard(|| {
        let w = unsafe { deref(writer.cast_const(), "writer")? };
        let name = unsafe { utf8(name, "name")? };
        let l = &unsafe { deref(layer, "layer")? }.inner;
        active(&mut w.lock()?)?.add_layer(name, l)
    })
}

/// Adds a pass-through tensor: `dtype` is a safetensors dtype name (see `gptq_tensor_view`), `shape`
/// holds `ndim` dimensions (may be NULL when `ndim` is 0), and `data` its `nbytes` little-endian bytes,
/// which must equal the product of the shape times the element size. The data is copied.
///
/// Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`, `_INVALID_ENUM` (dtype),
/// `_SHAPE_MISMATCH` (nbytes), `_INVALID_ARGUMENT` (duplicate or reserved name, a `<layer>.bias` for a
/// quantized layer's name that is not F16 of shape `[out_features]`, strings not UTF-8), `_IO`,
/// `_POISONED`. On error the writer is unchanged and stays usable. Thread-safe (serialized per
/// handle).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_writer_add_tensor(
    writer: *mut gptq_checkpoint_writer,
    name: *const c_char,
    dtype: *const c_char,
    shape: *const usize,
    ndim: usize,
    data: *const c_void,
    nbytes: usize,
) -> gptq_status {
    guard(|| {
        let w = unsafe { deref(writer.cast_const(), "writer")? };
        let name = unsafe { utf8(name, "name")? };
        let dt_name = unsafe { utf8(dtype, "dtype")? };
        let dt = TensorDtype::from_name(dt_name)
            .ok_or_else(|| Error::InvalidEnum(format!("dtype \"{dt_name}\" is not a safetensors dtype")))?;
        let shape: &[usize] = if ndim == 0 { &[] } else { unsafe { slice(shape, ndim, "shape")? } };
        // An empty tensor may come with any pointer, NULL included.
        let bytes: &[u8] = if nbytes == 0 { &[] } else { unsafe { slice(data.cast::<u8>(), nbytes, "data")? } };
        active(&mut w.lock()?)?.add_tensor(name, dt, shape, bytes)
    })
}

/// Writes the remaining files (shards, `model.safetensors.index.json` when sharded,
/// `quantize_config.json`, `config.json`), syncs them, and renames them into place, replacing an older
/// checkpoint's files in `dir` and removing its weight files that the new one does not use. The old
/// `config.json` and `quantize_config.json` are moved aside first and the new ones renamed in last, so
/// a crash during the renames can leave `dir` without configs (the old files then remain under hidden
/// `.<name>.libgptq-*.old` names) but never with a mix of old and new files that looks complete. On
/// error every temporary file is removed, renames already done are undone, and `dir` is as before.
///
/// The writer is freed in every case, success or not, and must not be used again. NULL is a
/// `_NULL_POINTER` error. Returns `GPTQ_STATUS_OK`, `_NULL_POINTER`, `_MISALIGNED`,
/// `_INVALID_ARGUMENT` (nothing was added), `_INVALID_FORMAT` (an existing `config.json` to update is
/// not JSON), `_IO`, `_POISONED`. Must not race with other calls on the same handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_writer_finish(writer: *mut gptq_checkpoint_writer) -> gptq_status {
    guard(|| {
        unsafe { deref(writer.cast_const(), "writer")? };
        // SAFETY: non-null and from `into_handle` (caller contract); ownership returns here.
        let w = unsafe { Box::from_raw(writer) };
        let taken = match w.inner.into_inner() {
            Ok(inner) => inner,
            // A poisoned writer still drops its temporary files.
            Err(p) => {
                drop(p.into_inner());
                return Err(Error::Poisoned("the writer was left inconsistent by an earlier panic".into()));
            }
        };
        match taken {
            Some(w) => w.finish().map(|_| ()),
            None => Err(Error::InvalidArgument("the writer has already finished".into())),
        }
    })
}

/// Discards a writer: removes every temporary file and frees the handle; `dir` is left as it was
/// before `gptq_checkpoint_writer_new` (a directory it created is removed if empty). NULL is a no-op.
/// Never fails. Must not race with other calls on the same handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gptq_checkpoint_writer_abort(writer: *mut gptq_checkpoint_writer) {
    if writer.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: from `into_handle` (caller contract); ownership returns here.
        let w = unsafe { Box::from_raw(writer) };
        let inner = w.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = inner {
            w.abort();
        }
    }));
}
