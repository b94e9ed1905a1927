//! Reading a plugin's JSON config object: typed getters with defaults that reject values of
//! the wrong type (a typo'd weight should fail loudly, not silently fall back to the default),
//! and a check for unknown keys.

use serde_json::Value;

/// `Err` naming the first key of `config` that is not in `allowed`, or if `config` is neither
/// an object nor null.
pub fn check_keys(config: &Value, allowed: &[&str]) -> Result<(), String> {
    match config {
        Value::Null => Ok(()),
        Value::Object(m) => match m.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "unknown config key {k:?} (known: {})",
                allowed.join(", ")
            )),
            None => Ok(()),
        },
        other => Err(format!("config must be a JSON object, got {other}")),
    }
}

/// `config[key]` as a number; `default` when absent or null.
pub fn f64_or(config: &Value, key: &str, default: f64) -> Result<f64, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("config.{key} must be a number, got {v}")),
    }
}

/// `config[key]` as a string; `default` when absent or null.
pub fn str_or<'a>(config: &'a Value, key: &str, default: &'a str) -> Result<&'a str, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_str()
            .ok_or_else(|| format!("config.{key} must be a string, got {v}")),
    }
}

/// `config[key]` as a boolean; `default` when absent or null.
pub fn bool_or(config: &Value, key: &str, default: bool) -> Result<bool, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("config.{key} must be true or false, got {v}")),
    }
}

/// `config[key]` as a non-negative integer; `default` when absent or null.
pub fn u64_or(config: &Value, key: &str, default: u64) -> Result<u64, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("config.{key} must be a non-negative integer, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn getters() {
        let c = json!({"w": 0.5, "mode": "reference", "on": true, "k": 3});
        assert_eq!(f64_or(&c, "w", 1.0), Ok(0.5));
        assert_eq!(f64_or(&c, "x", 1.0), Ok(1.0));
        assert!(f64_or(&c, "mode", 1.0).is_err());
        assert_eq!(str_or(&c, "mode", "x"), Ok("reference"));
        assert_eq!(bool_or(&c, "on", false), Ok(true));
        assert_eq!(u64_or(&c, "k", 1), Ok(3));
        assert!(u64_or(&c, "w", 1).is_err());
        assert!(check_keys(&c, &["w", "mode", "on", "k"]).is_ok());
        assert!(check_keys(&c, &["w", "on", "k"]).unwrap_err().contains("\"mode\""));
        assert!(check_keys(&Value::Null, &[]).is_ok());
        assert!(check_keys(&json!([1]), &[]).is_err());
    }
}
