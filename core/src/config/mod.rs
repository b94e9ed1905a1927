//! Run configurations: YAML files deserialized into typed structs, with `key.sub=value`
//! overrides from the command line (as VERL users pass them) and errors that name the file and
//! the key path.
//!
//! Loading is three steps: parse the YAML into a tree, apply overrides to the tree, then
//! deserialize with `serde_path_to_error` (unknown keys are rejected by `deny_unknown_fields`
//! on every struct) and run [`Validate`] for ranges and cross-field rules.

pub mod generate;

use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

pub use generate::GenerateConfig;

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
}

/// Range and consistency checks that serde's types cannot express.
pub trait Validate {
    /// Return `(key path, message)` for the first problem found.
    fn validate(&self) -> Result<(), (String, String)>;
}

/// Where a configuration came from, for error messages.
fn origin(file: Option<&Path>) -> PathBuf {
    file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("<defaults>"))
}

/// Load `file` (or start from `{}` when `None`), apply `overrides`, deserialize and validate.
pub fn load<T: DeserializeOwned + Validate>(file: Option<&Path>, overrides: &[String]) -> Result<T, ConfigError> {
    let name = origin(file);
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
    for arg in overrides {
        apply_override(&mut tree, arg)?;
    }
    from_tree(tree, &name)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("run.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_key_names_path_and_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  temprature: 0.5\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("run.yaml") && e.contains("sampling") && e.contains("temprature"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  max_new_tokens: lots\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("sampling.max_new_tokens") && e.contains("run.yaml"), "{e}");
    }

    #[test]
    fn out_of_range_names_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  top_p: 1.5\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("sampling.top_p") && e.contains("(0, 1]"), "{e}");
    }

    #[test]
    fn overrides_take_precedence_and_create_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  temperature: 0.5\n");
        let c: GenerateConfig =
            load(Some(&p), &["sampling.temperature=0.9".into(), "sampling.top_k=7".into(), "device=cpu".into()]).unwrap();
        assert_eq!(c.sampling.temperature, 0.9);
        assert_eq!(c.sampling.top_k, 7);
        let e = load::<GenerateConfig>(Some(&p), &["sampling".into()]).unwrap_err().to_string();
        assert!(e.contains("key.path=value"), "{e}");
        let e = load::<GenerateConfig>(Some(&p), &["model.x=1".into()]).unwrap_err().to_string();
        assert!(e.contains("not a mapping"), "{e}");
    }

    #[test]
    fn yaml_syntax_error_has_location() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: [unclosed\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("run.yaml") && e.contains("line"), "{e}");
    }
}
