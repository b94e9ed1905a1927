//! Run configurations: YAML files deserialized into typed structs, with `key.sub=value`
//! overrides from the command line (as VERL users pass them) and errors that name the file and
//! the key path.
//!
//! Loading is three steps: parse the YAML into a tree, apply overrides to the tree, then
//! deserialize with `serde_path_to_error` (unknown keys are rejected by `deny_unknown_fields`
//! on every struct) and run [`Validate`] for ranges and cross-field rules.

use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}: YAML syntax error{}: {msg}", location.map(|(l, c)| format!(" at line {l}, column {c}")).unwrap_or_default())]
    Syntax { file: PathBuf, location: Option<(usize, usize)>, msg: String },
    #[error("{file}: key `{key}`: {msg}")]
    Invalid { file: PathBuf, key: String, msg: String },
    #[error("override `{arg}`: {msg}")]
    Override { arg: String, msg: String },
    /// A value set by a command-line override is invalid (the file is named for context only).
    #[error("override `{arg}` (applied over {file}): key `{key}`: {msg}")]
    OverrideInvalid { arg: String, file: PathBuf, key: String, msg: String },
}

/// Range and consistency checks that serde's types cannot express.
pub trait Validate {
    /// Return `(key path, message)` for the first problem found.
    fn validate(&self) -> Result<(), (String, String)>;
}

/// The `device` and `dtype` keys every run config has: checked with the config, so a typo is
/// reported with its file and key rather than when the device is opened.
pub fn check_device_dtype(device: &str, dtype: &str) -> Result<(), (String, String)> {
    let device_ok = ["cpu", "cuda", "auto"].contains(&device) || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
    if !device_ok {
        return Err(("device".into(), format!("invalid value {device:?}: expected cpu, cuda, cuda:N or auto")));
    }
    if !["f32", "bf16", "f16", "auto", "float32", "bfloat16", "float16"].contains(&dtype) {
        return Err(("dtype".into(), format!("invalid value {dtype:?}: expected f32, bf16, f16 or auto")));
    }
    Ok(())
}

/// Where a configuration came from, for error messages.
fn origin(file: Option<&Path>) -> PathBuf {
    file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("<defaults>"))
}

/// Load `file` (or start from `{}` when `None`), apply `overrides`, deserialize and validate.
pub fn load<T: DeserializeOwned + Validate>(file: Option<&Path>, overrides: &[String]) -> Result<T, ConfigError> {
    load_with_tree(file, overrides).map(|(v, _)| v)
}

/// [`load`], also returning the merged tree (multi-stage SFT merges stages over it).
///
/// An invalid key is blamed on the override that set it when there is one, and on the file
/// otherwise: a bad `training.lr=-1` on the command line is not the file's fault.
pub fn load_with_tree<T: DeserializeOwned + Validate>(file: Option<&Path>, overrides: &[String]) -> Result<(T, Value), ConfigError> {
    let name = origin(file);
    let base = read_tree(file)?;
    let mut tree = base.clone();
    for arg in overrides {
        apply_override(&mut tree, arg)?;
    }
    match from_tree(tree.clone(), &name) {
        Ok(v) => Ok((v, tree)),
        Err(ConfigError::Invalid { file, key, msg }) => Err(blame::<T>(&base, overrides, file, key, msg)),
        Err(e) => Err(e),
    }
}

/// Whether override key `a` and error key `b` touch the same setting: equal, or one inside the
/// other (`training` contains `training.lr`; `data.train` contains `data.train[0]`).
fn related(a: &str, b: &str) -> bool {
    let inside = |child: &str, parent: &str| child.strip_prefix(parent).is_some_and(|r| r.starts_with('.') || r.starts_with('['));
    a == b || inside(a, b) || inside(b, a)
}

/// The error for an invalid `key`: the last override that touches it, if the config without
/// that override does not fail the same way (then the file, or an earlier override, is at
/// fault: a coarse key such as `algorithm` covers several settings).
fn blame<T: DeserializeOwned + Validate>(base: &Value, overrides: &[String], file: PathBuf, key: String, msg: String) -> ConfigError {
    for (i, arg) in overrides.iter().enumerate().rev() {
        let Some((k, _)) = arg.split_once('=') else { continue };
        if !related(k.trim(), &key) {
            continue;
        }
        let mut without = base.clone();
        let rebuilt = overrides.iter().enumerate().filter(|(j, _)| *j != i).try_for_each(|(_, o)| apply_override(&mut without, o));
        let same = rebuilt.is_ok() && matches!(from_tree::<T>(without, &file), Err(ConfigError::Invalid { key: k2, msg: m2, .. }) if k2 == key && m2 == msg);
        if !same {
            return ConfigError::OverrideInvalid { arg: arg.clone(), file, key, msg };
        }
    }
    ConfigError::Invalid { file, key, msg }
}

/// The YAML tree of `file` (`{}` for none or an empty file).
fn read_tree(file: Option<&Path>) -> Result<Value, ConfigError> {
    let mut tree = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io { file: path.into(), source: e })?;
            parse_yaml(&text, path)?
        }
        None => Value::Mapping(Default::default()),
    };
    if tree.is_null() {
        tree = Value::Mapping(Default::default());
    }
    Ok(tree)
}

fn parse_yaml(text: &str, path: &Path) -> Result<Value, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: path.into(),
        location: e.location().map(|l| (l.line(), l.column())),
        msg: e.to_string(),
    })
}

/// Deserialize an already-built tree (used by [`load`] and by tests).
pub fn from_tree<T: DeserializeOwned + Validate>(tree: Value, file: &Path) -> Result<T, ConfigError> {
    let value: T = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_yaml appends its own (meaningless here) position; keep the message itself.
        let msg = inner.split(" at line ").next().unwrap_or(&inner).to_string();
        ConfigError::Invalid { file: file.into(), key: if key == "." { "<root>".into() } else { key }, msg }
    })?;
    value
        .validate()
        .map_err(|(key, msg)| ConfigError::Invalid { file: file.into(), key, msg })?;
    Ok(value)
}

/// Apply one `a.b.c=value` override. The value is parsed as YAML, so `lr=1e-5`, `lora.enabled=true`
/// and `stop=["</answer>"]` get their natural types; intermediate mappings are created.
pub fn apply_override(tree: &mut Value, arg: &str) -> Result<(), ConfigError> {
    let err = |msg: &str| ConfigError::Override { arg: arg.into(), msg: msg.into() };
    let (key, raw) = arg.split_once('=').ok_or_else(|| err("expected key.path=value"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err("empty key segment"));
    }
    let value: Value = serde_yaml::from_str(raw).map_err(|e| err(&format!("value is not valid YAML: {e}")))?;
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            Value::Mapping(m) => m,
            Value::Null => {
                *node = Value::Mapping(Default::default());
                node.as_mapping_mut().unwrap()
            }
            _ => return Err(err(&format!("`{}` is not a mapping", parts[..i].join(".")))),
        };
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    unreachable!("loop returns on the last segment")
}

/// JSON Schema of a configuration type, for editors.
pub fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("schema serializes")
}
