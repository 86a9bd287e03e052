//! Writing a GPTQ checkpoint that transformers, vLLM, AutoGPTQ and GPTQModel load: `model.safetensors`
//! or `model-0000i-of-0000n.safetensors` shards with `model.safetensors.index.json`,
//! `quantize_config.json`, and `config.json` with a `quantization_config` block.
//!
//! Every file is first written under a temporary name in the target directory and synced; only when
//! all of them are complete are they renamed into place. Until then an existing checkpoint in the
//! directory is untouched, and any error (or [`CheckpointWriter::abort`], or dropping the writer)
//! removes the temporary files.
//!
//! The commit itself is a sequence of renames, ordered so that the directory never holds a mix of old
//! and new files that looks like a complete checkpoint: the old `config.json` and
//! `quantize_config.json` (what makes a directory look like a model) are moved aside first, then every
//! old weight file the new checkpoint replaces or no longer uses (`model.safetensors`, shards, the
//! index), then the new weights and index are renamed in, and the new configs last. An error during
//! the commit undoes what was done, in reverse, leaving the directory as before. A crash during the
//! commit can leave the directory without configs (the old files are then still there under hidden
//! names `.<name>.libgptq-<pid>-<n>.old`), but never with configs beside weights they do not describe.

use super::config::{format_name, GptqConfig};
use super::reader::{io_error, read_json};
use super::safetensors_io::{write_safetensors, TensorData, TensorDtype};
use super::{INDEX_FILE, QUANTIZE_CONFIG_FILE, SINGLE_FILE};
use crate::error::{Error, Result};
use crate::format::{CheckpointFormat, QuantizedLayer};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The tool and version recorded in every file this library writes.
pub fn quantizer_name() -> String {
    format!("libgptq {}", env!("CARGO_PKG_VERSION"))
}

/// How to write a checkpoint.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `V1` (`"gptq"`, what every engine reads; the default) or `V2` (`"gptq_v2"`, GPTQModel).
    pub format: CheckpointFormat,
    /// Largest shard in bytes (tensor data); `None` writes a single `model.safetensors`. A layer's
    /// tensors stay in one shard, and a tensor larger than the limit gets a shard of its own.
    pub max_shard_size: Option<u64>,
    /// The source model's `config.json`: copied with its `quantization_config` replaced. When `None`,
    /// an existing `config.json` in the target directory is updated the same way, else a minimal one
    /// holding only `quantization_config` is written.
    pub source_config: Option<Value>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { format: CheckpointFormat::V1, max_shard_size: None, source_config: None }
    }
}

/// What [`CheckpointWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteSummary {
    /// Every file written, in the target directory.
    pub files: Vec<PathBuf>,
    /// Tensor data bytes in all shards (the index's `total_size`).
    pub total_size: u64,
    pub num_layers: usize,
    pub num_tensors: usize,
}

struct Pending {
    name: String,
    dtype: TensorDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

struct Shard {
    temp: PathBuf,
    names: Vec<String>,
}

/// Temporary files that are removed unless committed.
#[derive(Default)]
struct Temps(Vec<PathBuf>);

impl Drop for Temps {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Builds a checkpoint from packed layers and pass-through tensors; see the module documentation.
///
/// Memory: the tensors of the shard being filled are held until it is flushed (the whole model when
/// unsharded).
pub struct CheckpointWriter {
    dir: PathBuf,
    config: GptqConfig,
    opts: WriteOptions,
    names: HashSet<String>,
    pending: Vec<Pending>,
    pending_bytes: u64,
    shards: Vec<Shard>,
    temps: Temps,
    total_size: u64,
    num_layers: usize,
    /// Out-features of every added quantized layer, by prefix (for checking a pass-through `.bias`).
    layer_out: HashMap<String, usize>,
    /// Dtype and shape of pass-through tensors named `<prefix>.bias`, by prefix (for checking a layer
    /// added later under that prefix).
    biases: HashMap<String, (TensorDtype, Vec<usize>)>,
    /// The directories `new` created, deepest first (removed again, if still empty, unless finished).
    created_dirs: Vec<PathBuf>,
    finished: bool,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter").field("dir", &self.dir).field("tensors", &self.names.len()).finish()
    }
}

impl CheckpointWriter {
    /// Starts a checkpoint in `dir` (created if missing). `config` describes the layers that will be
    /// added (its `dynamic` rules included); its `checkpoint_format` is replaced by `opts.format`.
    pub fn new(dir: impl AsRef<Path>, config: GptqConfig, opts: WriteOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if opts.max_shard_size == Some(0) {
            return Err(Error::InvalidArgument("max_shard_size must be positive".into()));
        }
        if let Some(c) = &opts.source_config {
            if !c.is_object() {
                return Err(Error::InvalidArgument("source_config is not a JSON object".into()));
            }
        }
        // The directories about to be created, deepest first.
        let mut created_dirs: Vec<PathBuf> = Vec::new();
        let mut d: &Path = &dir;
        while !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err() {
            created_dirs.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        if let Err(e) = std::fs::create_dir_all(&dir) {
            remove_empty_dirs(&created_dirs);
            return Err(io_error(&dir, "cannot create the directory", &e));
        }
        let mut config = config;
        config.checkpoint_format = opts.format;
        Ok(CheckpointWriter {
            dir,
            config,
            opts,
            names: HashSet::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            shards: Vec::new(),
            temps: Temps::default(),
            total_size: 0,
            num_layers: 0,
            layer_out: HashMap::new(),
            biases: HashMap::new(),
            created_dirs,
            finished: false,
        })
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if name.is_empty() || name == "__metadata__" {
            return Err(Error::InvalidArgument(format!("\"{name}\" is not a valid tensor name")));
        }
        if !self.names.insert(name.to_string()) {
            return Err(Error::InvalidArgument(format!("tensor \"{name}\" was already added")));
        }
        Ok(())
    }

    /// Flushes the current shard first when `bytes` more would overflow it.
    fn make_room(&mut self, bytes: u64) -> Result<()> {
        if let Some(max) = self.opts.max_shard_size {
            if !self.pending.is_empty() && self.pending_bytes + bytes > max {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Adds a quantized layer under the module name `prefix` (tensors `<prefix>.qweight`, `.qzeros`,
    /// `.scales`, `.g_idx` and, if the layer has one, `.bias`). The layer must match the config's
    /// effective parameters for `prefix`; a zero point the chosen format cannot store (0 in v1) fails.
    pub fn add_layer(&mut self, prefix: &str, layer: &QuantizedLayer) -> Result<()> {
        let d = *layer.desc();
        let m = self.config.effective(prefix).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "layer \"{prefix}\": the config's dynamic rule \"{}\" marks it as not quantized",
                self.config.matching_rule(prefix).unwrap_or_default()
            ))
        })?;
        if (d.bits, d.group_size, d.sym) != (m.bits, m.group_size, m.sym) {
            return Err(Error::InvalidArgument(format!(
                "layer \"{prefix}\" is {}-bit, group_size {:?}, sym {}, but the config says {}-bit, group_size {:?}, sym {}",
                d.bits, d.group_size, d.sym, m.bits, m.group_size, m.sym
            )));
        }
        // Engines skip g_idx when desc_act is false, which would silently decode an act-order layer
        // with the wrong groups.
        if layer.has_act_order() && !m.desc_act {
            return Err(Error::InvalidArgument(format!(
                "layer \"{prefix}\" has an act-order g_idx, but the config's desc_act is false"
            )));
        }
        let t = layer
            .to_packed(self.opts.format)
            .map_err(|e| super::context(e, format!("layer \"{prefix}\"")))?;
        let name = |s: &str| if prefix.is_empty() { s.to_string() } else { format!("{prefix}.{s}") };
        let (n, g) = (d.out_features, d.num_groups());
        let mut parts = vec![
            (name("qweight"), TensorDtype::I32, vec![d.qweight_rows(), n], words(&t.qweight)),
            (name("qzeros"), TensorDtype::I32, vec![g, d.qzeros_cols()], words(&t.qzeros)),
            (name("scales"), TensorDtype::F16, vec![g, n], halves(&t.scales)),
            (name("g_idx"), TensorDtype::I32, vec![d.in_features], words(&t.g_idx)),
        ];
        if let Some(b) = &t.bias {
            parts.push((name("bias"), TensorDtype::F16, vec![n], halves(b)));
        }
        for (nm, ..) in &parts {
            if self.names.contains(nm) {
                return Err(Error::InvalidArgument(format!("tensor \"{nm}\" was already added")));
            }
        }
        // A `.bias` added earlier with add_tensor becomes this layer's bias for every reader.
        if let Some((dtype, shape)) = self.biases.get(prefix) {
            check_bias(&name("bias"), *dtype, shape, n)?;
        }
        self.make_room(parts.iter().map(|p| p.3.len() as u64).sum())?;
        for (nm, dtype, shape, data) in parts {
            self.claim(&nm)?;
            self.push(Pending { name: nm, dtype, shape, data });
        }
        self.layer_out.insert(prefix.to_string(), n);
        self.num_layers += 1;
        Ok(())
    }

    /// Adds a pass-through tensor (embeddings, norms, `lm_head`, ...): `data` is its little-endian
    /// bytes, `product(shape) · dtype size` of them. Names ending in `.qweight` or `.qzeros` are
    /// refused, since readers would take them for a quantized layer. `<prefix>.bias` for a quantized
    /// layer's prefix (added before or after) is that layer's bias to every reader, so it must be F16
    /// of shape `[out_features]`.
    pub fn add_tensor(&mut self, name: &str, dtype: TensorDtype, shape: &[usize], data: &[u8]) -> Result<()> {
        let (prefix, suffix) = name.rsplit_once('.').unwrap_or(("", name));
        if suffix == "qweight" || suffix == "qzeros" {
            return Err(Error::InvalidArgument(format!(
                "tensor \"{name}\": names ending in .{suffix} are reserved for quantized layers (use add_layer)"
            )));
        }
        let want = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
        if want != Some(data.len()) {
            let want = want.map_or("more than usize::MAX".to_string(), |w| w.to_string());
            return Err(Error::Shape(format!(
                "tensor \"{name}\": shape {shape:?} of {} needs {want} bytes, got {}",
                dtype.name(),
                data.len()
            )));
        }
        if self.names.contains(name) {
            return Err(Error::InvalidArgument(format!("tensor \"{name}\" was already added")));
        }
        if suffix == "bias" {
            if let Some(&n) = self.layer_out.get(prefix) {
                check_bias(name, dtype, shape, n)?;
            }
        }
        self.make_room(data.len() as u64)?;
        self.claim(name)?;
        if suffix == "bias" {
            self.biases.insert(prefix.to_string(), (dtype, shape.to_vec()));
        }
        self.push(Pending { name: name.into(), dtype, shape: shape.to_vec(), data: data.to_vec() });
        Ok(())
    }

    fn push(&mut self, p: Pending) {
        self.pending_bytes += p.data.len() as u64;
        self.pending.push(p);
    }

    fn metadata(&self) -> Map<String, Value> {
        let c = &self.config;
        let mut m = Map::new();
        m.insert("format".into(), "pt".into());
        m.insert("quantizer".into(), quantizer_name().into());
        // AutoGPTQ's keys, so that a lone shard still says how to decode it.
        m.insert("gptq_quant_method".into(), "gptq".into());
        m.insert("gptq_bits".into(), c.bits.to_string().into());
        m.insert("gptq_group_size".into(), c.group_size.map_or(-1, |g| g as i64).to_string().into());
        m.insert("gptq_desc_act".into(), py_bool(c.desc_act).into());
        m.insert("gptq_sym".into(), py_bool(c.sym).into());
        m.insert("gptq_checkpoint_format".into(), format_name(c.checkpoint_format).into());
        m
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".{what}.libgptq-{}-{n}.tmp", std::process::id()))
    }

    /// Writes `bytes` produced by `fill` to a new temporary file, synced.
    fn write_temp(&mut self, what: &str, fill: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>) -> Result<PathBuf> {
        let path = self.temp_path(what);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error(&path, "cannot create", &e))?;
        self.temps.0.push(path.clone());
        let mut w = std::io::BufWriter::new(&file);
        let written = fill(&mut w)
            .and_then(|_| w.flush())
            .map_err(|e| io_error(&path, "cannot write", &e))
            .and_then(|_| {
                drop(w);
                file.sync_all().map_err(|e| io_error(&path, "cannot sync", &e))
            });
        if let Err(e) = written {
            // Do not keep a partial file (a full disk stays full otherwise) until the writer goes.
            drop(file);
            if std::fs::remove_file(&path).is_ok() {
                self.temps.0.retain(|t| t != &path);
            }
            return Err(e);
        }
        Ok(path)
    }

    /// Writes the pending tensors to a new shard. On error they stay pending and nothing else
    /// changes, so the writer stays usable.
    fn flush(&mut self) -> Result<()> {
        let meta = self.metadata();
        // Taken out only while writing (write_temp borrows the writer); put back whatever happens.
        let pending = std::mem::take(&mut self.pending);
        let views: Vec<TensorData<'_>> = pending
            .iter()
            .map(|p| TensorData { name: &p.name, dtype: p.dtype, shape: &p.shape, data: &p.data })
            .collect();
        let written = self.write_temp("shard", |w| write_safetensors(w, &views, &meta).map(|_| ()));
        drop(views);
        match written {
            Ok(temp) => {
                self.total_size += pending.iter().map(|p| p.data.len() as u64).sum::<u64>();
                self.pending_bytes = 0;
                self.shards.push(Shard { temp, names: pending.into_iter().map(|p| p.name).collect() });
                Ok(())
            }
            Err(e) => {
                self.pending = pending;
                Err(e)
            }
        }
    }

    /// Writes everything, then renames the files into place (see the module documentation for the
    /// order). On error the directory is as it was before: the temporary files are removed and any
    /// rename already done is undone. A crash during the final renames can leave the directory without
    /// `config.json`/`quantize_config.json`, never a mix of old and new files that looks complete.
    pub fn finish(mut self) -> Result<WriteSummary> {
        match self.finish_inner() {
            Ok(s) => {
                self.finished = true;
                Ok(s)
            }
            Err(e) => {
                self.cleanup();
                Err(e)
            }
        }
    }

    fn finish_inner(&mut self) -> Result<WriteSummary> {
        if self.names.is_empty() {
            return Err(Error::InvalidArgument("no layers or tensors were added".into()));
        }
        if !self.pending.is_empty() {
            self.flush()?;
        }
        let n = self.shards.len();
        let shard_names: Vec<String> = if n == 1 {
            vec![SINGLE_FILE.to_string()]
        } else {
            (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect()
        };
        let mut commits: Vec<(PathBuf, String)> =
            self.shards.iter().zip(&shard_names).map(|(s, name)| (s.temp.clone(), name.clone())).collect();

        if n > 1 {
            let mut weight_map: Vec<(&str, &str)> = self
                .shards
                .iter()
                .zip(&shard_names)
                .flat_map(|(s, f)| s.names.iter().map(move |t| (t.as_str(), f.as_str())))
                .collect();
            weight_map.sort();
            let index = serde_json::json!({
                "metadata": { "total_size": self.total_size, "quantizer": quantizer_name() },
                "weight_map": weight_map.into_iter().map(|(t, f)| (t.to_string(), Value::from(f))).collect::<Map<_, _>>(),
            });
            let p = self.write_temp("index", |w| write_json(w, &index))?;
            commits.push((p, INDEX_FILE.to_string()));
        }

        let mut qc = self.config.to_json();
        add_quantizer_meta(&mut qc);
        let p = self.write_temp("quantize_config", |w| write_json(w, &qc))?;
        commits.push((p, QUANTIZE_CONFIG_FILE.to_string()));

        let existing = self.dir.join("config.json");
        let mut model = match self.opts.source_config.clone() {
            Some(c) => c,
            None if existing.is_file() => read_json(&existing)?,
            None => Value::Object(Map::new()),
        };
        let Value::Object(obj) = &mut model else {
            return Err(Error::InvalidFormat(format!("{}: not a JSON object", existing.display())));
        };
        obj.insert("quantization_config".into(), qc);
        let p = self.write_temp("config", |w| write_json(w, &model))?;
        // config.json last: it is what marks a directory as a model.
        commits.push((p, "config.json".to_string()));

        let files = self.commit(&commits)?;
        Ok(WriteSummary {
            files,
            total_size: self.total_size,
            num_layers: self.num_layers,
            num_tensors: self.names.len(),
        })
    }

    /// Renames the temporary files `commits` (weights and index first, configs last) into place; see
    /// the module documentation. On error everything done is undone and the error returned.
    fn commit(&mut self, commits: &[(PathBuf, String)]) -> Result<Vec<PathBuf>> {
        let is_config = |name: &str| name == "config.json" || name == QUANTIZE_CONFIG_FILE;
        let new_names: Vec<&str> = commits.iter().map(|(_, n)| n.as_str()).collect();
        // What to move aside: the configs first, then every old weight file that a new file replaces or
        // that the new checkpoint does not use. Directories and the like are left alone (a rename onto
        // one fails, and is undone).
        let mut aside: Vec<String> = ["config.json", QUANTIZE_CONFIG_FILE].iter().map(|s| s.to_string()).collect();
        let mut weights: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| io_error(&self.dir, "cannot list", &e))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| {
                new_names.contains(&name.as_str())
                    || name == SINGLE_FILE
                    || name == INDEX_FILE
                    || is_shard_name(name)
            })
            .filter(|name| !is_config(name))
            .collect();
        weights.sort();
        aside.extend(weights);

        let mut log = CommitLog::default();
        let result = (|| -> Result<Vec<PathBuf>> {
            for name in &aside {
                let path = self.dir.join(name);
                if !std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                    continue;
                }
                let old = self.aside_path(name);
                std::fs::rename(&path, &old).map_err(|e| io_error(&path, "cannot move the old file aside", &e))?;
                log.moved.push((old, path));
            }
            sync_dir(&self.dir);
            let mut files = Vec::with_capacity(commits.len());
            let mut configs_started = false;
            for (temp, name) in commits {
                if is_config(name) && !configs_started {
                    // The new weights are all in place before any new config appears.
                    sync_dir(&self.dir);
                    configs_started = true;
                }
                let dest = self.dir.join(name);
                std::fs::rename(temp, &dest).map_err(|e| io_error(&dest, "cannot rename into place", &e))?;
                log.placed.push((dest.clone(), temp.clone()));
                files.push(dest);
            }
            Ok(files)
        })();
        match result {
            Ok(files) => {
                self.temps.0.retain(|t| !commits.iter().any(|(c, _)| c == t));
                for (old, _) in &log.moved {
                    let _ = std::fs::remove_file(old);
                }
                // Persist the renames; not every platform can sync a directory, and the data is safe.
                sync_dir(&self.dir);
                Ok(files)
            }
            Err(e) => {
                // Undo in reverse: the new files go back to their temporary names (removed with the
                // other temporary files), the old ones come back.
                for (dest, temp) in log.placed.iter().rev() {
                    if std::fs::rename(dest, temp).is_err() {
                        let _ = std::fs::remove_file(dest);
                    }
                }
                for (old, path) in log.moved.iter().rev() {
                    let _ = std::fs::rename(old, path);
                }
                sync_dir(&self.dir);
                Err(e)
            }
        }
    }

    /// A hidden name for an old file moved aside during the commit.
    fn aside_path(&self, name: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".{name}.libgptq-{}-{n}.old", std::process::id()))
    }

    fn cleanup(&mut self) {
        self.temps.0.retain(|p| std::fs::remove_file(p).is_err() && p.exists());
        // Only removes empty directories: never anything of the caller's.
        remove_empty_dirs(&self.created_dirs);
    }

    /// Abandons the checkpoint, removing every temporary file. Dropping the writer does the same.
    pub fn abort(mut self) {
        self.cleanup();
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // Removes the temporary files and the directories `new` created, if still empty.
        if !self.finished {
            self.cleanup();
        }
    }
}

/// The renames done so far by a commit, to undo on error.
#[derive(Default)]
struct CommitLog {
    /// Old files moved aside: (hidden name, original path).
    moved: Vec<(PathBuf, PathBuf)>,
    /// New files renamed into place: (final path, temporary path).
    placed: Vec<(PathBuf, PathBuf)>,
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes each directory (deepest first) if it is empty.
fn remove_empty_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// A pass-through `<prefix>.bias` of a quantized layer with `n` outputs must be what readers expect.
fn check_bias(name: &str, dtype: TensorDtype, shape: &[usize], n: usize) -> Result<()> {
    if dtype != TensorDtype::F16 || shape != [n] {
        return Err(Error::InvalidArgument(format!(
            "tensor \"{name}\" is the bias of a quantized layer with {n} outputs, so it must be F16 of shape [{n}], \
             got {} of shape {shape:?}",
            dtype.name()
        )));
    }
    Ok(())
}

/// `model-00001-of-00003.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == "model-00001-of-00003.safetensors".len()
        && b.starts_with(b"model-")
        && b.ends_with(b".safetensors")
        && &b[11..15] == b"-of-"
        && b[6..11].iter().chain(&b[15..20]).all(u8::is_ascii_digit)
}

/// Records this library in GPTQModel's `meta.quantizer` list, keeping whatever was there.
fn add_quantizer_meta(qc: &mut Value) {
    let tag = Value::from(format!("libgptq:{}", env!("CARGO_PKG_VERSION")));
    let Some(o) = qc.as_object_mut() else { return };
    let meta = o.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = meta.as_object_mut() {
        match m.get_mut("quantizer") {
            Some(Value::Array(a)) => {
                if !a.contains(&tag) {
                    a.push(tag)
                }
            }
            Some(Value::String(s)) => {
                let prev = Value::from(s.clone());
                m.insert("quantizer".into(), Value::Array(vec![prev, tag]));
            }
            _ => {
                m.insert("quantizer".into(), Value::Array(vec![tag]));
            }
        }
    }
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

fn write_json(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, v).map_err(std::io::Error::other)?;
    w.write_all(b"\n")
}

fn words(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn halves(v: &[half::f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_recognised_exactly() {
        assert!(is_shard_name("model-00001-of-00003.safetensors"));
        assert!(!is_shard_name("model-0001-of-00003.safetensors"));
        assert!(!is_shard_name("model-0000a-of-00003.safetensors"));
        assert!(!is_shard_name("model.safetensors"));
        // 32 bytes, with a multi-byte character across byte 11.
        assert!(!is_shard_name("model-0000é-of-0003.safetensors"));
        assert!(!is_shard_name("model-0000éof-00003.safetensors"));
    }
}
