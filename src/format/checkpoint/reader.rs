//! Opening a GPTQ checkpoint: finding its config and safetensors files, memory-mapping them, validating
//! every header and every quantized layer's structure against the config, and handing out layers and
//! pass-through tensors.

use super::config::{format_name, GptqConfig, ModuleQuant};
use super::safetensors_io::{parse_header, Header, TensorDtype, TensorEntry};
use super::{context, INDEX_FILE, QUANTIZE_CONFIG_FILE, SINGLE_FILE};
use crate::error::{Error, Result};
use crate::format::{check_layer_dims, CheckpointFormat, LayerDesc, PackedRef, PackedTensors, QuantizedLayer};
use crate::quant::config::{check_bits, num_groups};
use half::f16;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The suffixes of a quantized layer's tensors.
const LAYER_SUFFIXES: [&str; 5] = ["qweight", "qzeros", "scales", "g_idx", "bias"];

/// A file's bytes: memory-mapped, or empty (an empty file cannot be mapped on every platform).
#[derive(Debug)]
enum Bytes {
    Mapped(memmap2::Mmap),
    Empty,
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Empty => &[],
        }
    }
}

#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    bytes: Bytes,
    header: Header,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| io_error(path, "cannot open", &e))?;
        let len = file.metadata().map_err(|e| io_error(path, "cannot stat", &e))?.len();
        let bytes = if len == 0 {
            Bytes::Empty
        } else {
            // SAFETY: the map is read-only and private to this value. As with every memory-mapped
            // loader, another process truncating or rewriting the file while it is open is outside
            // what Rust can guard against; `Checkpoint::open` documents that requirement.
            Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(path, "cannot map", &e))?)
        };
        // Only the header's pages are read here; tensor data stays untouched until asked for.
        let header = parse_header(bytes.as_slice(), path)?;
        Ok(MappedFile { path: path.to_path_buf(), bytes, header })
    }

    fn data(&self, e: &TensorEntry) -> &[u8] {
        &self.bytes.as_slice()[e.start..e.start + e.len]
    }
}

pub(super) fn io_error(path: &Path, what: &str, e: &std::io::Error) -> Error {
    Error::Io(format!("{}: {what}: {e}", path.display()))
}

/// Where a tensor lives: file index and entry index in that file's header.
#[derive(Debug, Clone, Copy)]
struct TensorRef {
    file: usize,
    entry: usize,
}

/// A zero-copy view of one tensor of an open checkpoint. `data` is the raw little-endian bytes, aligned
/// in the file as its writer laid it out (files written by this library and by `safetensors` align
/// every tensor to its element size; the mapping itself is page-aligned).
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: TensorDtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
    /// The file the tensor is stored in.
    pub file: &'a Path,
}

/// What is known about a quantized layer from its headers alone (validated against the config).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// The module name, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub desc: LayerDesc,
    pub format: CheckpointFormat,
    /// The config's `desc_act` for this module.
    pub desc_act: bool,
    /// Whether the checkpoint stores `g_idx` (without it, `g_idx[k] = k / group_size`).
    pub has_g_idx: bool,
    pub has_bias: bool,
}

#[derive(Debug)]
struct LayerEntry {
    info: LayerInfo,
    qweight: TensorRef,
    qzeros: TensorRef,
    scales: TensorRef,
    g_idx: Option<TensorRef>,
    bias: Option<TensorRef>,
}

/// An open GPTQ checkpoint (a model directory or a single `.safetensors` file). Immutable once
/// opened; every method takes `&self`, so it can be shared across threads.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<MappedFile>,
    config: GptqConfig,
    config_source: String,
    model_config: Option<Value>,
    /// Sorted by name.
    layers: Vec<LayerEntry>,
    layer_index: HashMap<String, usize>,
    /// Every tensor by name (layer tensors too).
    all: BTreeMap<String, TensorRef>,
    /// Names of the pass-through tensors, sorted.
    passthrough: Vec<String>,
}

impl Checkpoint {
    /// Opens a model directory or a single `.safetensors` file.
    ///
    /// A directory's config is `config.json`'s `quantization_config` and/or `quantize_config.json`.
    /// When both exist, `config.json`'s is used, with `dynamic` taken from `quantize_config.json` when
    /// only that one has it; they must agree on bits, group size and checkpoint_format (which decide
    /// the tensors' layout), and may differ in the rest (sym, desc_act: the stored zero points and
    /// g_idx decode the same either way). Its
    /// weights are `model.safetensors`, else the shards listed in `model.safetensors.index.json`, else
    /// AutoGPTQ's `<model_file_base_name>.safetensors`, else the directory's only `.safetensors` file.
    /// A single file takes its config from the JSON files beside it, else from AutoGPTQ's `gptq_*`
    /// safetensors metadata.
    ///
    /// Files are memory-mapped and only their headers are read; every header and every quantized
    /// layer's names, dtypes and shapes are validated here, tensor contents when a layer is fetched.
    /// The files must not be modified or truncated while the checkpoint is open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_impl(path.as_ref(), None)
    }

    /// Like [`Checkpoint::open`], but with the given config instead of the one found on disk.
    pub fn open_with_config(path: impl AsRef<Path>, config: GptqConfig) -> Result<Self> {
        Self::open_impl(path.as_ref(), Some(config))
    }

    fn open_impl(path: &Path, given: Option<GptqConfig>) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, "cannot open", &e))?;
        let dir = if meta.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
        let found = find_config(dir)?;
        let model_config = found.model_config;
        let (weights, weight_map) = if meta.is_dir() {
            find_weights(dir, found.quant.as_ref().map(|(c, _)| c))?
        } else {
            (vec![path.to_path_buf()], None)
        };
        let files = weights.iter().map(|p| MappedFile::open(p)).collect::<Result<Vec<_>>>()?;
        let (config, config_source) = match (given, found.quant) {
            (Some(c), _) => (c, "the given config".to_string()),
            (None, Some(c)) => c,
            (None, None) => {
                let from_meta = match files.as_slice() {
                    [f] => GptqConfig::from_safetensors_metadata(
                        &f.header.metadata,
                        &format!("{}: __metadata__", f.path.display()),
                    )?
                    .map(|c| (c, format!("{}: __metadata__", f.path.display()))),
                    _ => None,
                };
                from_meta.ok_or_else(|| {
                    Error::InvalidFormat(format!(
                        "{}: no GPTQ config found (no quantization_config in config.json, no {QUANTIZE_CONFIG_FILE}, \
                         no gptq_* safetensors metadata)",
                        path.display()
                    ))
                })?
            }
        };

        // Every tensor by name; a name stored twice is ambiguous.
        let mut all = BTreeMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ei, e) in f.header.tensors.iter().enumerate() {
                if let Some(prev) = all.insert(e.name.clone(), TensorRef { file: fi, entry: ei }) {
                    return Err(Error::InvalidFormat(format!(
                        "tensor \"{}\" is stored twice: in {} and in {}",
                        e.name,
                        files[prev.file].path.display(),
                        f.path.display()
                    )));
                }
            }
        }
        if let Some((index_path, map)) = &weight_map {
            for (name, shard) in map {
                let ok = all.get(name).is_some_and(|r| files[r.file].path.file_name() == Some(shard.as_ref()));
                if !ok {
                    return Err(Error::InvalidFormat(format!(
                        "{}: weight_map places tensor \"{name}\" in {shard}, which does not contain it",
                        index_path.display()
                    )));
                }
            }
        }

        let mut ck = Checkpoint {
            files,
            config,
            config_source,
            model_config,
            layers: Vec::new(),
            layer_index: HashMap::new(),
            all,
            passthrough: Vec::new(),
        };
        ck.classify()?;
        Ok(ck)
    }

    /// Splits the tensors into quantized layers (every prefix with a `qweight` or `qzeros`) and
    /// pass-through tensors, validating each layer's structure.
    fn classify(&mut self) -> Result<()> {
        let mut parts: BTreeMap<&str, [Option<TensorRef>; 5]> = BTreeMap::new();
        for (name, r) in &self.all {
            let (prefix, suffix) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            if let Some(i) = LAYER_SUFFIXES.iter().position(|s| *s == suffix) {
                parts.entry(prefix).or_default()[i] = Some(*r);
            }
        }
        let mut layers = Vec::new();
        for (prefix, p) in &parts {
            if p[0].is_some() || p[1].is_some() {
                layers.push(self.validate_layer(prefix, p)?);
            }
        }
        let owned: std::collections::HashSet<String> = layers
            .iter()
            .flat_map(|l: &LayerEntry| {
                [Some(l.qweight), Some(l.qzeros), Some(l.scales), l.g_idx, l.bias]
                    .into_iter()
                    .flatten()
                    .map(|r| self.entry(r).name.clone())
            })
            .collect();
        self.passthrough = self.all.keys().filter(|n| !owned.contains(*n)).cloned().collect();
        self.layer_index = layers.iter().enumerate().map(|(i, l)| (l.info.name.clone(), i)).collect();
        self.layers = layers;
        Ok(())
    }

    fn entry(&self, r: TensorRef) -> &TensorEntry {
        &self.files[r.file].header.tensors[r.entry]
    }

    fn path(&self, r: TensorRef) -> &Path {
        &self.files[r.file].path
    }

    /// `file: tensor "name"`, the prefix of every tensor-level message.
    fn at(&self, r: TensorRef) -> String {
        format!("{}: tensor \"{}\"", self.path(r).display(), self.entry(r).name)
    }

    fn validate_layer(&self, prefix: &str, p: &[Option<TensorRef>; 5]) -> Result<LayerEntry> {
        let tensor_name = |i: usize| if prefix.is_empty() { LAYER_SUFFIXES[i].to_string() } else { format!("{prefix}.{}", LAYER_SUFFIXES[i]) };
        // Name the file holding one of the layer's tensors, so a missing companion is easy to find.
        let some = p.iter().flatten().next().copied().expect("a layer has a tensor");
        let required = |i: usize| {
            p[i].ok_or_else(|| {
                Error::InvalidFormat(format!(
                    "{}: quantized layer \"{prefix}\" has no tensor \"{}\"",
                    self.path(some).display(),
                    tensor_name(i)
                ))
            })
        };
        let (qweight, qzeros, scales) = (required(0)?, required(1)?, required(2)?);
        let (g_idx, bias) = (p[3], p[4]);

        let m: ModuleQuant = self.config.effective(prefix).ok_or_else(|| {
            Error::InvalidFormat(format!(
                "{}: layer \"{prefix}\" is quantized, but the config's dynamic rule \"{}\" excludes it ({})",
                self.path(qweight).display(),
                self.config.matching_rule(prefix).unwrap_or_default(),
                self.config_source
            ))
        })?;
        check_bits(m.bits).map_err(|e| context(e, format!("layer \"{prefix}\" ({})", self.config_source)))?;
        let bits = m.bits as usize;
        let gs = m.group_size.map_or("-1".to_string(), |g| g.to_string());
        let cfg = format!("{}-bit, group_size {gs} per {}", m.bits, self.config_source);

        let check_dtype = |r: TensorRef, want: TensorDtype| {
            let e = self.entry(r);
            if e.dtype == want {
                Ok(())
            } else {
                Err(Error::InvalidFormat(format!("{}: dtype {} where {} is required", self.at(r), e.dtype.name(), want.name())))
            }
        };
        let check_rank = |r: TensorRef, rank: usize| {
            let e = self.entry(r);
            if e.shape.len() == rank {
                Ok(&e.shape)
            } else {
                Err(Error::Shape(format!("{}: shape {:?} is not {rank}-dimensional", self.at(r), e.shape)))
            }
        };
        let mismatch = |r: TensorRef, want: String| {
            Error::Shape(format!("{}: shape {:?}, expected {want} ({cfg})", self.at(r), self.entry(r).shape))
        };

        check_dtype(qweight, TensorDtype::I32)?;
        check_dtype(qzeros, TensorDtype::I32)?;
        check_dtype(scales, TensorDtype::F16)?;
        let qw = check_rank(qweight, 2)?;
        let (rows, n) = (qw[0], qw[1]);
        // Header dimensions are untrusted: a zero-element tensor may declare any other dimension, so
        // keep every product below in range before computing anything.
        if rows.checked_mul(32).is_none() || n.checked_mul(32).is_none() {
            return Err(mismatch(qweight, "dimensions that fit a layer".to_string()));
        }
        // qweight has in·bits/32 rows: in_features follows from it (3-bit packs 32 rows into 3 words).
        if (rows * 32) % bits != 0 {
            return Err(mismatch(qweight, format!("a row count that is a multiple of {} for {bits}-bit packing", bits / gcd(bits, 32))));
        }
        let k = rows * 32 / bits;
        check_layer_dims(m.bits, k, n).map_err(|e| context(e, self.at(qweight)))?;
        let g = num_groups(k, m.group_size);
        let sc = check_rank(scales, 2)?;
        if sc[..] != [g, n] {
            return Err(mismatch(scales, format!("[{g}, {n}] for in_features {k}, out_features {n}")));
        }
        let qz = check_rank(qzeros, 2)?;
        if qz[..] != [g, n * bits / 32] {
            return Err(mismatch(qzeros, format!("[{g}, {}] for out_features {n}", n * bits / 32)));
        }
        if let Some(r) = g_idx {
            check_dtype(r, TensorDtype::I32)?;
            if check_rank(r, 1)?[0] != k {
                return Err(mismatch(r, format!("[{k}] (in_features)")));
            }
        }
        if let Some(r) = bias {
            check_dtype(r, TensorDtype::F16)?;
            if check_rank(r, 1)?[0] != n {
                return Err(mismatch(r, format!("[{n}] (out_features)")));
            }
        }
        Ok(LayerEntry {
            info: LayerInfo {
                name: prefix.to_string(),
                desc: LayerDesc { bits: m.bits, group_size: m.group_size, in_features: k, out_features: n, sym: m.sym },
                format: self.config.checkpoint_format,
                desc_act: m.desc_act,
                has_g_idx: g_idx.is_some(),
                has_bias: bias.is_some(),
            },
            qweight,
            qzeros,
            scales,
            g_idx,
            bias,
        })
    }

    /// The quantization config in force.
    pub fn config(&self) -> &GptqConfig {
        &self.config
    }

    /// Where the config came from (a file and key), as used in messages.
    pub fn config_source(&self) -> &str {
        &self.config_source
    }

    /// The model's whole `config.json`, when the checkpoint has one.
    pub fn model_config(&self) -> Option<&Value> {
        self.model_config.as_ref()
    }

    /// The safetensors files, in the order they were opened.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// The `__metadata__` of each file.
    pub fn file_metadata(&self) -> impl Iterator<Item = (&Path, &Map<String, Value>)> {
        self.files.iter().map(|f| (f.path.as_path(), &f.header.metadata))
    }

    /// The quantized layers, sorted by name.
    pub fn layers(&self) -> impl Iterator<Item = &LayerInfo> {
        self.layers.iter().map(|l| &l.info)
    }

    /// Number of quantized layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// A quantized layer's description by module name.
    pub fn layer_info(&self, name: &str) -> Option<&LayerInfo> {
        self.layer_index.get(name).map(|&i| &self.layers[i].info)
    }

    fn layer_entry(&self, name: &str) -> Result<&LayerEntry> {
        self.layer_index
            .get(name)
            .map(|&i| &self.layers[i])
            .ok_or_else(|| Error::InvalidArgument(format!("the checkpoint has no quantized layer \"{name}\"")))
    }

    /// The layer's tensors as stored (in the checkpoint's format), with their contents checked:
    /// `g_idx` within `[0, groups)`. A missing `g_idx` is filled in as `k / group_size`.
    pub fn packed(&self, name: &str) -> Result<PackedTensors> {
        let l = self.layer_entry(name)?;
        let words = |r: TensorRef| -> Vec<i32> {
            let d = self.files[r.file].data(self.entry(r));
            d.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        let halves = |r: TensorRef| -> Vec<f16> {
            let d = self.files[r.file].data(self.entry(r));
            d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()
        };
        let desc = &l.info.desc;
        let g_idx = match l.g_idx {
            Some(r) => {
                let v = words(r);
                let g = desc.num_groups();
                if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| **x < 0 || **x as usize >= g) {
                    return Err(Error::InvalidFormat(format!(
                        "{}: g_idx[{i}] = {x} is outside [0, {g}) ({g} groups for in_features {})",
                        self.at(r),
                        desc.in_features
                    )));
                }
                v
            }
            None => {
                let gs = desc.group_size.unwrap_or(desc.in_features);
                (0..desc.in_features).map(|k| (k / gs) as i32).collect()
            }
        };
        Ok(PackedTensors {
            qweight: words(l.qweight),
            qzeros: words(l.qzeros),
            scales: halves(l.scales),
            g_idx,
            bias: l.bias.map(halves),
        })
    }

    /// Whether the layer's stored `g_idx` differs from `k / group_size` (an act-order layer). Reads only
    /// the `g_idx` tensor.
    pub fn has_act_order(&self, name: &str) -> Result<bool> {
        let l = self.layer_entry(name)?;
        let Some(r) = l.g_idx else { return Ok(false) };
        let gs = l.info.desc.group_size.unwrap_or(l.info.desc.in_features);
        let d = self.files[r.file].data(self.entry(r));
        Ok(d.chunks_exact(4)
            .enumerate()
            .any(|(k, b)| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64 != (k / gs) as i64))
    }

    /// The layer, fully validated (contents too: g_idx range, zero points, finite scales and bias) and
    /// converted to the core's packed layer. Errors name the file and the layer.
    pub fn layer(&self, name: &str) -> Result<QuantizedLayer> {
        let l = self.layer_entry(name)?;
        let t = self.packed(name)?;
        let refs = PackedRef {
            qweight: &t.qweight,
            qzeros: &t.qzeros,
            scales: &t.scales,
            g_idx: Some(&t.g_idx),
            bias: t.bias.as_deref(),
        };
        QuantizedLayer::from_packed(l.info.desc, l.info.format, refs).map_err(|e| {
            context(
                e,
                format!(
                    "{}: layer \"{name}\" ({}, checkpoint_format {})",
                    self.path(l.qweight).display(),
                    self.config_source,
                    format_name(l.info.format)
                ),
            )
        })
    }

    /// Names of the pass-through tensors (everything that is not part of a quantized layer), sorted.
    pub fn tensor_names(&self) -> &[String] {
        &self.passthrough
    }

    /// The pass-through tensors, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.passthrough.iter().map(|n| self.view(self.all[n]))
    }

    /// A pass-through tensor by name.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.passthrough.binary_search_by(|n| n.as_str().cmp(name)).ok().map(|_| self.view(self.all[name]))
    }

    /// Any tensor by name, layer tensors included.
    pub fn raw_tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.all.get(name).map(|&r| self.view(r))
    }

    fn view(&self, r: TensorRef) -> TensorView<'_> {
        let f = &self.files[r.file];
        let e = self.entry(r);
        TensorView { name: &e.name, dtype: e.dtype, shape: &e.shape, data: f.data(e), file: &f.path }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Reads and parses a JSON file; a missing or unreadable file is an I/O error, bad JSON a format error.
pub(super) fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, "cannot read", &e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidFormat(format!("{}: not valid JSON ({e})", path.display())))
}

struct FoundConfig {
    /// The config and a description of where it came from.
    quant: Option<(GptqConfig, String)>,
    model_config: Option<Value>,
}

/// Looks for `config.json` (its `quantization_config`) and `quantize_config.json` in `dir`.
fn find_config(dir: &Path) -> Result<FoundConfig> {
    let model_path = dir.join("config.json");
    let model_config = if model_path.is_file() { Some(read_json(&model_path)?) } else { None };
    let from_model = match model_config.as_ref().and_then(|c| c.get("quantization_config")) {
        Some(q) => {
            let src = format!("{}: quantization_config", model_path.display());
            Some((GptqConfig::from_json(q, &src)?, src))
        }
        None => None,
    };
    let qc_path = dir.join(QUANTIZE_CONFIG_FILE);
    let from_file = if qc_path.is_file() {
        let src = qc_path.display().to_string();
        Some((GptqConfig::from_json(&read_json(&qc_path)?, &src)?, src))
    } else {
        None
    };
    // Engines read config.json; GPTQModel reads quantize_config.json. Both describe one set of
    // tensors: config.json's is used, but they must agree on what decides the tensors' layout (bits,
    // group size, checkpoint format). sym and desc_act do not change how stored tensors decode (the
    // zero points and g_idx are stored), and tools disagree on them in practice.
    let quant = match (from_model, from_file) {
        (Some((mut a, a_src)), Some((b, b_src))) => {
            let key = |c: &GptqConfig| (c.bits, c.group_size, format_name(c.checkpoint_format));
            if key(&a) != key(&b) {
                let show = |(bits, g, f): (u32, Option<usize>, &str)| {
                    format!("bits {bits}, group_size {}, checkpoint_format \"{f}\"", g.map_or(-1, |g| g as i64))
                };
                return Err(Error::InvalidFormat(format!(
                    "{a_src} and {b_src} disagree: {} vs {}",
                    show(key(&a)),
                    show(key(&b))
                )));
            }
            // GPTQModel writes `dynamic` to quantize_config.json; config.json may lack it.
            let mut src = a_src;
            if a.dynamic().is_none() {
                if let Some(d) = b.dynamic() {
                    a.set_dynamic(Some(d.clone()), &b_src)?;
                    src = format!("{src} with dynamic from {b_src}");
                }
            }
            Some((a, src))
        }
        (a, b) => a.or(b),
    };
    Ok(FoundConfig { quant, model_config })
}

/// The safetensors files of a model directory, and the index's weight map when sharded.
#[allow(clippy::type_complexity)]
fn find_weights(dir: &Path, cfg: Option<&GptqConfig>) -> Result<(Vec<PathBuf>, Option<(PathBuf, Vec<(String, String)>)>)> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let v = read_json(&index)?;
        let bad = |msg: &str| Error::InvalidFormat(format!("{}: {msg}", index.display()));
        let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no \"weight_map\" object"))?;
        let mut shards: Vec<String> = Vec::new();
        let mut pairs = Vec::with_capacity(map.len());
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| bad(&format!("weight_map[\"{name}\"] is not a file name")))?;
            // Shards live beside the index; a path could reach outside the model directory. Exactly one
            // normal component, and no separator or drive colon of any platform.
            let mut comps = Path::new(file).components();
            let plain = matches!((comps.next(), comps.next()), (Some(std::path::Component::Normal(_)), None));
            if !plain || file.contains(['/', '\\', ':']) {
                return Err(bad(&format!("weight_map[\"{name}\"] = \"{file}\" is not a plain file name")));
            }
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
            pairs.push((name.clone(), file.to_string()));
        }
        shards.sort();
        let mut paths = Vec::with_capacity(shards.len());
        for s in &shards {
            let p = dir.join(s);
            if !p.is_file() {
                return Err(Error::Io(format!(
                    "{}: names shard \"{s}\", but {} does not exist",
                    index.display(),
                    p.display()
                )));
            }
            paths.push(p);
        }
        return Ok((paths, Some((index, pairs))));
    }
    if let Some(base) = cfg.and_then(|c| c.to_json().get("model_file_base_name").and_then(Value::as_str).map(String::from)) {
        let p = dir.join(format!("{base}.safetensors"));
        if p.is_file() {
            return Ok((vec![p], None));
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, "cannot list", &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    match found.len() {
        1 => Ok((vec![found.remove(0)], None)),
        0 => Err(Error::Io(format!("{}: no {SINGLE_FILE}, {INDEX_FILE} or other .safetensors file", dir.display()))),
        n => Err(Error::InvalidFormat(format!(
            "{}: {n} .safetensors files but neither {SINGLE_FILE} nor {INDEX_FILE} to say which to load",
            dir.display()
        ))),
    }
}
