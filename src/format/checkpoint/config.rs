//! The GPTQ quantization config of a checkpoint: `quantize_config.json` (AutoGPTQ, GPTQModel) and the
//! `quantization_config` block of `config.json` (transformers, vLLM), including GPTQModel's `meta` and
//! per-module `dynamic` overrides.
//!
//! The whole JSON object is kept, so keys this library does not know survive a read-modify-write.

use super::context;
use crate::error::{Error, Result};
use crate::format::CheckpointFormat;
use crate::quant::config::{check_bits, QuantConfig};
use serde_json::{Map, Value};

/// The parameters that decide how one module's packed tensors are laid out and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleQuant {
    pub bits: u32,
    /// `None` = one group per row (`group_size = -1`).
    pub group_size: Option<usize>,
    pub desc_act: bool,
    pub sym: bool,
}

/// One entry of GPTQModel's `dynamic` map: `"+:regex"` (or a bare regex) overrides the config for
/// matching modules, `"-:regex"` marks them as not quantized.
#[derive(Debug, Clone)]
struct DynamicRule {
    /// The key as written, for messages.
    key: String,
    exclude: bool,
    /// Anchored at the start only, like Python's `re.match` that GPTQModel uses.
    regex: regex::Regex,
    overrides: ModuleOverrides,
}

#[derive(Debug, Clone, Copy, Default)]
struct ModuleOverrides {
    bits: Option<u32>,
    group_size: Option<Option<usize>>,
    desc_act: Option<bool>,
    sym: Option<bool>,
}

/// A GPTQ quantization config. Known keys are parsed into fields; [`GptqConfig::to_json`] writes the
/// fields back over the original object, so unknown keys are kept.
#[derive(Debug, Clone)]
pub struct GptqConfig {
    /// Always `"gptq"` (other methods are rejected when parsing).
    pub quant_method: String,
    pub bits: u32,
    /// `None` = one group per row (`group_size = -1`).
    pub group_size: Option<usize>,
    pub desc_act: bool,
    pub sym: bool,
    pub static_groups: bool,
    pub true_sequential: bool,
    pub damp_percent: f64,
    /// How `qzeros` stores zero points (`checkpoint_format`, `"gptq"` when absent).
    pub checkpoint_format: CheckpointFormat,
    /// GPTQModel's `meta` block (quantizer versions and solver settings), as written.
    pub meta: Option<Value>,
    /// GPTQModel's `dynamic` map as written, compiled into `rules`.
    dynamic: Option<Map<String, Value>>,
    rules: Vec<DynamicRule>,
    /// The object this config was read from, unknown keys included.
    raw: Map<String, Value>,
}

impl GptqConfig {
    /// A config for `bits`/`group_size`/`sym`/`desc_act` with the usual defaults for the rest
    /// (`damp_percent` 0.01, `true_sequential`, v1).
    pub fn new(bits: u32, group_size: Option<usize>, sym: bool, desc_act: bool) -> Result<Self> {
        check_bits(bits)?;
        let g = match group_size {
            None => -1,
            Some(g) => i32::try_from(g)
                .map_err(|_| Error::Unsupported(format!("group_size {g} (supported: {:?})", crate::quant::config::SUPPORTED_GROUP_SIZES)))?,
        };
        QuantConfig::group_size_from_i32(g)?;
        Ok(GptqConfig {
            quant_method: "gptq".into(),
            bits,
            group_size,
            desc_act,
            sym,
            static_groups: false,
            true_sequential: true,
            damp_percent: 0.01,
            checkpoint_format: CheckpointFormat::V1,
            meta: None,
            dynamic: None,
            rules: Vec::new(),
            raw: Map::new(),
        })
    }

    /// The config matching the options a layer was quantized with.
    pub fn from_quant_config(q: &QuantConfig) -> Result<Self> {
        let mut c = GptqConfig::new(q.bits, q.group_size, q.sym, q.desc_act)?;
        c.static_groups = q.static_groups;
        // The f32's shortest decimal form, so that 0.01 is written as 0.01, not 0.009999999776482582.
        c.damp_percent = q.damp_percent.to_string().parse::<f64>().unwrap_or(q.damp_percent as f64);
        Ok(c)
    }

    /// Parses a config object; `source` names where it came from (a file, and the key inside it) and
    /// prefixes every error. Missing keys take transformers' defaults except `bits`, which is required.
    pub fn from_json(value: &Value, source: &str) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::InvalidFormat(format!("{source}: the quantization config is not a JSON object")))?;
        let method = match obj.get("quant_method") {
            None | Some(Value::Null) => "gptq".to_string(),
            Some(Value::String(s)) => s.to_ascii_lowercase(),
            Some(v) => return Err(bad_type(source, "quant_method", "a string", v)),
        };
        if method != "gptq" {
            return Err(Error::Unsupported(format!(
                "{source}: quant_method \"{method}\" is not GPTQ (only \"gptq\" checkpoints are read)"
            )));
        }
        // AutoGPTQ's Marlin re-packing is a different tensor layout, not readable as GPTQ.
        if get_bool(obj, "is_marlin_format", source)?.unwrap_or(false) {
            return Err(Error::Unsupported(format!("{source}: is_marlin_format checkpoints are not GPTQ-packed")));
        }
        let bits = get_u64(obj, "bits", source)?
            .ok_or_else(|| Error::InvalidFormat(format!("{source}: the key \"bits\" is missing")))?;
        let bits = u32::try_from(bits).unwrap_or(u32::MAX);
        check_bits(bits).map_err(|e| context(e, format!("{source}: key \"bits\"")))?;
        let group_size = match get_i64(obj, "group_size", source)? {
            None => Some(128),
            Some(g) => parse_group_size(g, source, "group_size")?,
        };
        let checkpoint_format = match obj.get("checkpoint_format") {
            None | Some(Value::Null) => CheckpointFormat::V1,
            Some(Value::String(s)) => parse_format(s, source)?,
            Some(v) => return Err(bad_type(source, "checkpoint_format", "a string", v)),
        };
        let damp_percent = match obj.get("damp_percent") {
            None | Some(Value::Null) => 0.01,
            Some(v) => v.as_f64().ok_or_else(|| bad_type(source, "damp_percent", "a number", v))?,
        };
        let mut cfg = GptqConfig {
            quant_method: method,
            bits,
            group_size,
            desc_act: get_bool(obj, "desc_act", source)?.unwrap_or(false),
            sym: get_bool(obj, "sym", source)?.unwrap_or(true),
            static_groups: get_bool(obj, "static_groups", source)?.unwrap_or(false),
            true_sequential: get_bool(obj, "true_sequential", source)?.unwrap_or(true),
            damp_percent,
            checkpoint_format,
            meta: obj.get("meta").filter(|v| !v.is_null()).cloned(),
            dynamic: None,
            rules: Vec::new(),
            raw: obj.clone(),
        };
        match obj.get("dynamic") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => cfg.set_dynamic(Some(m.clone()), source)?,
            Some(v) => return Err(bad_type(source, "dynamic", "an object", v)),
        }
        Ok(cfg)
    }

    /// GPTQModel's per-module overrides, as written.
    pub fn dynamic(&self) -> Option<&Map<String, Value>> {
        self.dynamic.as_ref()
    }

    /// Replaces the per-module overrides. Keys are `"+:regex"`, `"-:regex"` or a bare regex (an
    /// override); values are objects whose `bits`, `group_size`, `desc_act` and `sym` override the
    /// config for modules whose name the regex matches at its start. The first matching key wins, in
    /// the order written. `source` prefixes errors.
    pub fn set_dynamic(&mut self, dynamic: Option<Map<String, Value>>, source: &str) -> Result<()> {
        let mut rules = Vec::new();
        for (key, value) in dynamic.iter().flatten() {
            let (exclude, pattern) = match key.strip_prefix("-:") {
                Some(p) => (true, p),
                None => (false, key.strip_prefix("+:").unwrap_or(key)),
            };
            let regex = regex::Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
                Error::InvalidFormat(format!("{source}: dynamic key \"{key}\" is not a supported regex: {e}"))
            })?;
            let here = format!("{source}: dynamic[\"{key}\"]");
            let o = value
                .as_object()
                .ok_or_else(|| Error::InvalidFormat(format!("{here} is not a JSON object")))?;
            let bits = match get_u64(o, "bits", &here)? {
                Some(b) => {
                    let b = u32::try_from(b).unwrap_or(u32::MAX);
                    check_bits(b).map_err(|e| context(e, format!("{here}: key \"bits\"")))?;
                    Some(b)
                }
                None => None,
            };
            let group_size = match get_i64(o, "group_size", &here)? {
                Some(g) => Some(parse_group_size(g, &here, "group_size")?),
                None => None,
            };
            let overrides = ModuleOverrides {
                bits,
                group_size,
                desc_act: get_bool(o, "desc_act", &here)?,
                sym: get_bool(o, "sym", &here)?,
            };
            rules.push(DynamicRule { key: key.clone(), exclude, regex, overrides });
        }
        self.rules = rules;
        self.dynamic = dynamic;
        Ok(())
    }

    /// The base parameters, ignoring `dynamic`.
    pub fn base(&self) -> ModuleQuant {
        ModuleQuant { bits: self.bits, group_size: self.group_size, desc_act: self.desc_act, sym: self.sym }
    }

    /// The effective parameters of the module `name` (e.g. `model.layers.0.self_attn.q_proj`): the
    /// base config with the first matching `dynamic` override applied, or `None` when a `-:` rule
    /// excludes the module from quantization.
    pub fn effective(&self, name: &str) -> Option<ModuleQuant> {
        let mut m = self.base();
        if let Some(rule) = self.rules.iter().find(|r| r.regex.is_match(name)) {
            if rule.exclude {
                return None;
            }
            let o = rule.overrides;
            m.bits = o.bits.unwrap_or(m.bits);
            m.group_size = o.group_size.unwrap_or(m.group_size);
            m.desc_act = o.desc_act.unwrap_or(m.desc_act);
            m.sym = o.sym.unwrap_or(m.sym);
        }
        Some(m)
    }

    /// The key of the `dynamic` rule that decides `name`, if any (for messages).
    pub fn matching_rule(&self, name: &str) -> Option<&str> {
        self.rules.iter().find(|r| r.regex.is_match(name)).map(|r| r.key.as_str())
    }

    /// The config as a JSON object: the object it was read from with every known key written over.
    pub fn to_json(&self) -> Value {
        let mut o = self.raw.clone();
        o.insert("quant_method".into(), Value::from(self.quant_method.clone()));
        o.insert("bits".into(), Value::from(self.bits));
        o.insert("group_size".into(), Value::from(self.group_size.map_or(-1, |g| g as i64)));
        o.insert("desc_act".into(), Value::from(self.desc_act));
        o.insert("sym".into(), Value::from(self.sym));
        o.insert("static_groups".into(), Value::from(self.static_groups));
        o.insert("true_sequential".into(), Value::from(self.true_sequential));
        o.insert("damp_percent".into(), Value::from(self.damp_percent));
        o.insert("checkpoint_format".into(), Value::from(format_name(self.checkpoint_format)));
        match &self.meta {
            Some(m) => o.insert("meta".into(), m.clone()),
            None => o.remove("meta"),
        };
        match &self.dynamic {
            Some(d) => o.insert("dynamic".into(), Value::Object(d.clone())),
            None => o.remove("dynamic"),
        };
        Value::Object(o)
    }

    /// Reads the AutoGPTQ-style safetensors metadata (`gptq_bits`, `gptq_group_size`, `gptq_desc_act`,
    /// `gptq_sym`, `gptq_checkpoint_format`, string values as Python writes them), for a lone
    /// `.safetensors` file without a JSON config beside it. `None` when `gptq_bits` is absent.
    pub fn from_safetensors_metadata(meta: &Map<String, Value>, source: &str) -> Result<Option<Self>> {
        let Some(bits) = meta.get("gptq_bits") else { return Ok(None) };
        let mut obj = Map::new();
        let s = |v: &Value| v.as_str().unwrap_or_default().trim().to_string();
        let int = |key: &str, v: &Value| -> Result<Value> {
            s(v).parse::<i64>().map(Value::from).map_err(|_| {
                Error::InvalidFormat(format!("{source}: metadata \"{key}\" = {v} is not an integer"))
            })
        };
        let boolean = |key: &str, v: &Value| -> Result<Value> {
            match s(v).to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Value::from(true)),
                "false" | "0" => Ok(Value::from(false)),
                _ => Err(Error::InvalidFormat(format!("{source}: metadata \"{key}\" = {v} is not a boolean"))),
            }
        };
        obj.insert("bits".into(), int("gptq_bits", bits)?);
        if let Some(v) = meta.get("gptq_group_size") {
            obj.insert("group_size".into(), int("gptq_group_size", v)?);
        }
        for key in ["desc_act", "sym", "static_groups", "true_sequential"] {
            if let Some(v) = meta.get(&format!("gptq_{key}")) {
                obj.insert(key.into(), boolean(&format!("gptq_{key}"), v)?);
            }
        }
        if let Some(v) = meta.get("gptq_checkpoint_format") {
            obj.insert("checkpoint_format".into(), Value::from(s(v)));
        }
        if let Some(v) = meta.get("gptq_quant_method") {
            obj.insert("quant_method".into(), Value::from(s(v)));
        }
        Self::from_json(&Value::Object(obj), source).map(Some)
    }
}

/// The `checkpoint_format` string of a format.
pub fn format_name(f: CheckpointFormat) -> &'static str {
    match f {
        CheckpointFormat::V1 => "gptq",
        CheckpointFormat::V2 => "gptq_v2",
    }
}

fn parse_format(s: &str, source: &str) -> Result<CheckpointFormat> {
    match s.to_ascii_lowercase().as_str() {
        "gptq" => Ok(CheckpointFormat::V1),
        "gptq_v2" => Ok(CheckpointFormat::V2),
        other => Err(Error::Unsupported(format!(
            "{source}: checkpoint_format \"{other}\" (supported: \"gptq\", \"gptq_v2\")"
        ))),
    }
}

fn parse_group_size(g: i64, source: &str, key: &str) -> Result<Option<usize>> {
    // `0` is sometimes written for "no groups" by older tools; everything negative means per row.
    let g = if g <= 0 { -1 } else { i32::try_from(g).unwrap_or(i32::MAX) };
    QuantConfig::group_size_from_i32(g).map_err(|e| context(e, format!("{source}: key \"{key}\"")))
}

fn bad_type(source: &str, key: &str, want: &str, got: &Value) -> Error {
    Error::InvalidFormat(format!("{source}: key \"{key}\" must be {want}, got {got}"))
}

fn get_bool(o: &Map<String, Value>, key: &str, source: &str) -> Result<Option<bool>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad_type(source, key, "true or false", v)),
    }
}

fn get_i64(o: &Map<String, Value>, key: &str, source: &str) -> Result<Option<i64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| bad_type(source, key, "an integer", v)),
    }
}

fn get_u64(o: &Map<String, Value>, key: &str, source: &str) -> Result<Option<u64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| bad_type(source, key, "a non-negative integer", v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_survive_and_known_keys_parse() {
        let v = json!({"bits": 4, "group_size": 128, "desc_act": true, "sym": false,
                       "checkpoint_format": "gptq_v2", "meta": {"quantizer": ["gptqmodel:2.0"]},
                       "custom_key": [1, 2]});
        let c = GptqConfig::from_json(&v, "t").unwrap();
        assert_eq!((c.bits, c.group_size, c.desc_act, c.sym), (4, Some(128), true, false));
        assert_eq!(c.checkpoint_format, CheckpointFormat::V2);
        let back = c.to_json();
        assert_eq!(back["custom_key"], json!([1, 2]));
        assert_eq!(back["meta"]["quantizer"][0], "gptqmodel:2.0");
        assert_eq!(back["checkpoint_format"], "gptq_v2");
    }

    #[test]
    fn dynamic_rules_apply_in_order_and_exclude() {
        let v = json!({"bits": 4, "group_size": 128, "dynamic": {
            "-:.*\\.mlp\\.gate$": {},
            "+:.*\\.down_proj": {"bits": 8, "group_size": 32},
            "model\\.layers\\.1\\..*": {"sym": false},
        }});
        let c = GptqConfig::from_json(&v, "t").unwrap();
        assert_eq!(c.effective("model.layers.0.mlp.gate"), None);
        let d = c.effective("model.layers.1.mlp.down_proj").unwrap();
        assert_eq!((d.bits, d.group_size, d.sym), (8, Some(32), true));
        let q = c.effective("model.layers.1.self_attn.q_proj").unwrap();
        assert_eq!((q.bits, q.group_size, q.sym), (4, Some(128), false));
        // re.match anchors at the start only.
        assert_eq!(c.effective("xmodel.layers.1.self_attn.q_proj").unwrap().sym, true);
    }

    #[test]
    fn bad_values_name_the_source_and_key() {
        let e = GptqConfig::from_json(&json!({"bits": 5}), "cfg.json").unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)) && e.to_string().contains("cfg.json"), "{e}");
        let e = GptqConfig::from_json(&json!({"bits": "4"}), "cfg.json").unwrap_err();
        assert!(matches!(e, Error::InvalidFormat(_)) && e.to_string().contains("\"bits\""), "{e}");
        let e = GptqConfig::from_json(&json!({"bits": 4, "quant_method": "awq"}), "c").unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        let e = GptqConfig::from_json(&json!({"bits": 4, "dynamic": {"+:(?<=x)": {}}}), "c").unwrap_err();
        assert!(e.to_string().contains("dynamic key"), "{e}");
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn new_refuses_a_group_size_beyond_i32_instead_of_truncating() {
        // (1 << 32) + 128 truncates to 128, a supported size.
        let e = GptqConfig::new(4, Some((1usize << 32) + 128), true, false).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)) && e.to_string().contains("4294967424"), "{e}");
        assert!(GptqConfig::new(4, Some(128), true, false).is_ok());
    }

    #[test]
    fn damp_percent_from_an_f32_keeps_its_decimal_value() {
        let q = QuantConfig { damp_percent: 0.01, ..Default::default() };
        let c = GptqConfig::from_quant_config(&q).unwrap();
        assert_eq!(c.damp_percent, 0.01);
        assert_eq!(serde_json::to_string(&c.to_json()["damp_percent"]).unwrap(), "0.01");
    }
}
