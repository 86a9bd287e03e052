//! The safetensors container: an 8-byte little-endian header length, a JSON header, then the data.
//!
//! Parsed here rather than through `safetensors::SafeTensors` so that every error names the file and
//! the tensor, and so that validating a header reads only its bytes (the data of a memory-mapped file
//! is never touched). Written here so that shards can be streamed to a file and synced.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;

/// Headers larger than this are refused (the reference implementation's limit), so a corrupt length
/// cannot make the reader allocate gigabytes.
pub(crate) const MAX_HEADER_LEN: usize = 100 * 1024 * 1024;

/// Element type of a safetensors tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorDtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
}

/// Every dtype, for lookups by name. (Not an associated const: cbindgen would export the type.)
const ALL_DTYPES: [TensorDtype; 15] = [
    TensorDtype::Bool,
    TensorDtype::U8,
    TensorDtype::I8,
    TensorDtype::F8E5M2,
    TensorDtype::F8E4M3,
    TensorDtype::I16,
    TensorDtype::U16,
    TensorDtype::F16,
    TensorDtype::BF16,
    TensorDtype::I32,
    TensorDtype::U32,
    TensorDtype::F32,
    TensorDtype::I64,
    TensorDtype::U64,
    TensorDtype::F64,
];

impl TensorDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        use TensorDtype::*;
        match self {
            Bool | U8 | I8 | F8E5M2 | F8E4M3 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            I64 | U64 | F64 => 8,
        }
    }

    /// The name the safetensors header uses (`"F16"`, `"I32"`, ...).
    pub fn name(self) -> &'static str {
        use TensorDtype::*;
        match self {
            Bool => "BOOL",
            U8 => "U8",
            I8 => "I8",
            F8E5M2 => "F8_E5M2",
            F8E4M3 => "F8_E4M3",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            I64 => "I64",
            U64 => "U64",
            F64 => "F64",
        }
    }

    /// The dtype a header name denotes, if known.
    pub fn from_name(s: &str) -> Option<Self> {
        ALL_DTYPES.into_iter().find(|d| d.name() == s)
    }
}

/// One tensor of a header, with its byte range as an absolute offset into the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: TensorDtype,
    pub shape: Vec<usize>,
    /// Absolute offset of the first byte in the file.
    pub start: usize,
    /// Length in bytes (`product(shape) · dtype size`).
    pub len: usize,
}

/// A validated safetensors header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// In the order of their data in the file.
    pub tensors: Vec<TensorEntry>,
    /// The `__metadata__` string map (values are JSON strings).
    pub metadata: Map<String, Value>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::InvalidFormat(format!("{}: {msg}", path.display()))
}

/// Parses and validates the header of a safetensors file whose bytes are `file`, reading only the
/// header bytes: the length prefix, UTF-8 JSON, known dtypes, shapes matching byte lengths, and data
/// ranges inside the file that do not overlap. Gaps between tensors are tolerated.
pub fn parse_header(file: &[u8], path: &Path) -> Result<Header> {
    let Some(prefix) = file.get(..8) else {
        return Err(bad(path, format!("truncated: {} bytes, too short for the 8-byte header length", file.len())));
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    let avail = file.len() - 8;
    if n > avail as u64 {
        return Err(bad(path, format!("header length {n} is larger than the {avail} bytes after it (truncated file?)")));
    }
    let n = n as usize;
    if n > MAX_HEADER_LEN {
        return Err(bad(path, format!("header length {n} exceeds the limit of {MAX_HEADER_LEN} bytes")));
    }
    let text = std::str::from_utf8(&file[8..8 + n])
        .map_err(|e| bad(path, format!("the JSON header is not valid UTF-8 ({e})")))?;
    let json: Value =
        serde_json::from_str(text).map_err(|e| bad(path, format!("the header is not valid JSON ({e})")))?;
    let Value::Object(obj) = json else {
        return Err(bad(path, "the header is not a JSON object"));
    };
    let data_start = 8 + n;
    let data_len = avail - n;
    let mut header = Header::default();
    for (name, info) in obj {
        if name == "__metadata__" {
            let Value::Object(m) = info else {
                return Err(bad(path, "__metadata__ is not an object"));
            };
            if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                return Err(bad(path, format!("__metadata__ value \"{k}\" is not a string")));
            }
            header.metadata = m;
            continue;
        }
        let t = |msg: String| bad(path, format!("tensor \"{name}\": {msg}"));
        let dtype_name = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| t("missing or non-string \"dtype\"".into()))?;
        let dtype = TensorDtype::from_name(dtype_name).ok_or_else(|| {
            Error::Unsupported(format!("{}: tensor \"{name}\": unknown dtype \"{dtype_name}\"", path.display()))
        })?;
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| t("missing or non-array \"shape\"".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| t("\"shape\" holds a value that is not a non-negative integer".into()))?;
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| t("\"data_offsets\" is not a pair of non-negative integers".into()))?;
        let (begin, end) = offsets;
        if begin > end || end > data_len as u64 {
            return Err(t(format!(
                "data_offsets [{begin}, {end}] are out of bounds of the {data_len} data bytes"
            )));
        }
        let len = (end - begin) as usize;
        let want = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| t(format!("shape {shape:?} overflows")))?;
        if want != len {
            return Err(t(format!(
                "shape {shape:?} of {} needs {want} bytes, but data_offsets [{begin}, {end}] hold {len}",
                dtype.name()
            )));
        }
        header.tensors.push(TensorEntry { name, dtype, shape, start: data_start + begin as usize, len });
    }
    header.tensors.sort_by_key(|e| (e.start, e.len));
    // Empty tensors occupy no bytes and cannot overlap anything.
    let mut last: Option<&TensorEntry> = None;
    for e in header.tensors.iter().filter(|e| e.len > 0) {
        if let Some(p) = last {
            if e.start < p.start + p.len {
                return Err(bad(
                    path,
                    format!("tensor \"{}\" overlaps tensor \"{}\" (data_offsets overlap)", e.name, p.name),
                ));
            }
        }
        last = Some(e);
    }
    Ok(header)
}

/// One tensor to write.
#[derive(Debug, Clone, Copy)]
pub struct TensorData<'a> {
    pub name: &'a str,
    pub dtype: TensorDtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// Serializes `tensors` and `metadata` into `out` as a safetensors file. Tensors are laid out by
/// decreasing element size, then by name, and the header is padded to 8 bytes, so every tensor's data
/// is aligned to its element size (readers can then view it without copying). Returns the bytes
/// written.
pub fn write_safetensors(out: &mut impl Write, tensors: &[TensorData<'_>], metadata: &Map<String, Value>) -> std::io::Result<u64> {
    let mut order: Vec<&TensorData<'_>> = tensors.iter().collect();
    order.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then(a.name.cmp(b.name)));
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), Value::Object(metadata.clone()));
    }
    let mut offset = 0u64;
    for t in &order {
        let end = offset + t.data.len() as u64;
        header.insert(
            t.name.to_string(),
            serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(header)).map_err(std::io::Error::other)?;
    // Spaces are valid JSON whitespace; the padding keeps the data section 8-byte aligned.
    text.resize(text.len().next_multiple_of(8), b' ');
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(&text)?;
    for t in &order {
        out.write_all(t.data)?;
    }
    Ok(8 + text.len() as u64 + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_parse_back_aligned() {
        let a = [1u8, 2, 3];
        let b = 7i32.to_le_bytes().repeat(4);
        let ts = [
            TensorData { name: "a", dtype: TensorDtype::U8, shape: &[3], data: &a },
            TensorData { name: "b", dtype: TensorDtype::I32, shape: &[2, 2], data: &b },
        ];
        let mut buf = Vec::new();
        let n = write_safetensors(&mut buf, &ts, &Map::new()).unwrap();
        assert_eq!(n as usize, buf.len());
        let h = parse_header(&buf, Path::new("x")).unwrap();
        assert_eq!(h.tensors[0].name, "b");
        assert_eq!(h.tensors[0].start % 8, 0);
        assert_eq!(&buf[h.tensors[1].start..][..3], &a);
        // The reference parser agrees.
        let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &b[..]);
    }
}
