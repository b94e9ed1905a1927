//! Checks on guest output, each linear in the output's size: the manifest (every field capped
//! before anything uses it), and the results of a scoring call against the output contract of
//! its API version (shape, component names, finite scores within `Limits::max_abs_score`),
//! turned into per-sample outcomes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::bindings::v02;
use super::bindings::{Capability, Manifest, ScoreResult};
use super::error::{clip, PluginError, PluginId};
use super::limits::Limits;
use super::policy::Outcome;

/// Caps on manifest fields. A manifest is guest output: its name is copied into every error,
/// log line and metric, so it is checked before anything uses it.
pub const MAX_MANIFEST_NAME_BYTES: usize = 64;
pub const MAX_MANIFEST_VERSION_BYTES: usize = 64;
pub const MAX_MANIFEST_DESCRIPTION_BYTES: usize = 4 << 10;
pub const MAX_MANIFEST_SCHEMA_BYTES: usize = 64 << 10;
pub const MAX_MANIFEST_CAPABILITIES: usize = 64;

/// Caps on a tool's spec (`tool-spec()`): it is shown to the model in every prompt that offers
/// the tool, so it is kept short.
pub const MAX_TOOL_NAME_BYTES: usize = 64;
pub const MAX_TOOL_DESCRIPTION_BYTES: usize = 4 << 10;
pub const MAX_TOOL_PARAMETERS_BYTES: usize = 64 << 10;

/// Why a tool spec was refused. Names a field and a length or a character, never the content.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ToolSpecError {
    #[error("tool name is {len} bytes (must be 1 to {max})")]
    NameLength { len: usize, max: usize },
    #[error("tool name contains {0:?} (allowed: lowercase ASCII letters, digits, `_` and `-`)")]
    NameChar(char),
    #[error("tool {field} is {len} bytes (limit {max})")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("tool parameters are not a JSON object: {0}")]
    Parameters(String),
}

/// Checks a tool spec's fields against their caps (before parsing anything) and parses its
/// parameters schema, which must be a JSON object.
pub(crate) fn validate_tool_spec(
    name: &str,
    description: &str,
    parameters: &str,
) -> Result<serde_json::Value, ToolSpecError> {
    if name.is_empty() || name.len() > MAX_TOOL_NAME_BYTES {
        return Err(ToolSpecError::NameLength {
            len: name.len(),
            max: MAX_TOOL_NAME_BYTES,
        });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(ToolSpecError::NameChar(c));
    }
    for (field, v, max) in [
        ("description", description, MAX_TOOL_DESCRIPTION_BYTES),
        ("parameters", parameters, MAX_TOOL_PARAMETERS_BYTES),
    ] {
        if v.len() > max {
            return Err(ToolSpecError::TooLong {
                field,
                len: v.len(),
                max,
            });
        }
    }
    match serde_json::from_str::<serde_json::Value>(parameters) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(other) => Err(ToolSpecError::Parameters(format!(
            "found a JSON {}",
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "boolean",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::String(_) => "string",
                _ => "array",
            }
        ))),
        Err(e) => Err(ToolSpecError::Parameters(e.to_string())),
    }
}

/// Why a manifest was refused. Names a field and a length, never the field's content.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ManifestError {
    /// A name-like field (name, version, api_version) is empty or too long.
    #[error("{field} is {len} bytes (must be 1 to {max})")]
    TokenLength {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A name-like field holds a character outside its alphabet.
    #[error("{field} contains {c:?} (allowed: ASCII letters, digits and {allowed})")]
    TokenChar {
        field: &'static str,
        c: char,
        allowed: String,
    },
    /// A free-text field (description, config_schema) is over its cap.
    #[error("{field} is {len} bytes (limit {max})")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("lists {n} capabilities (limit {max})")]
    TooManyCapabilities { n: usize, max: usize },
}

/// Checks every manifest field against its cap (linear in the manifest's size) and folds
/// repeated capabilities.
pub(crate) fn validate_manifest(m: &mut Manifest) -> Result<(), ManifestError> {
    fn token(
        field: &'static str,
        v: &str,
        max: usize,
        extra: &[char],
    ) -> Result<(), ManifestError> {
        if v.is_empty() || v.len() > max {
            return Err(ManifestError::TokenLength {
                field,
                len: v.len(),
                max,
            });
        }
        if let Some(c) = v
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
        {
            return Err(ManifestError::TokenChar {
                field,
                c,
                allowed: extra.iter().collect::<String>(),
            });
        }
        Ok(())
    }
    token("name", &m.name, MAX_MANIFEST_NAME_BYTES, &['-', '_', '.'])?;
    token(
        "version",
        &m.version,
        MAX_MANIFEST_VERSION_BYTES,
        &['-', '_', '.', '+'],
    )?;
    token("api_version", &m.api_version, 16, &['.'])?;
    for (field, v, max) in [
        (
            "description",
            &m.description,
            MAX_MANIFEST_DESCRIPTION_BYTES,
        ),
        ("config_schema", &m.config_schema, MAX_MANIFEST_SCHEMA_BYTES),
    ] {
        if v.len() > max {
            return Err(ManifestError::TooLong {
                field,
                len: v.len(),
                max,
            });
        }
    }
    if m.capabilities.len() > MAX_MANIFEST_CAPABILITIES {
        return Err(ManifestError::TooManyCapabilities {
            n: m.capabilities.len(),
            max: MAX_MANIFEST_CAPABILITIES,
        });
    }
    let mut folded: Vec<Capability> = Vec::with_capacity(2);
    for c in m.capabilities.drain(..) {
        if !folded.contains(&c) {
            folded.push(c);
        }
    }
    m.capabilities = folded;
    Ok(())
}

/// The output contract of one reward plugin's calls: who it is (named in errors), its limits,
/// and the component names it has used so far (interned).
pub(crate) struct OutputCheck<'a> {
    pub(crate) plugin: &'a PluginId,
    pub(crate) limits: &'a Limits,
    pub(crate) names: &'a Mutex<HashSet<Arc<str>>>,
}

/// Distinct component names kept per plugin; names past it are allocated per call (still
/// shared by the samples of that call), so a plugin inventing names cannot grow the set.
const MAX_INTERNED_NAMES: usize = 4096;

/// One shared copy of `name` from the plugin's set (added while the set is under
/// `MAX_INTERNED_NAMES`).
fn intern(set: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(a) = set.get(name) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(name);
    if set.len() < MAX_INTERNED_NAMES {
        set.insert(a.clone());
    }
    a
}

/// A 0.2.0 sample the guest listed among errors (with its message) or not-applicable.
#[derive(Clone)]
enum Fate {
    NotApplicable,
    Failed(String),
}

impl OutputCheck<'_> {
    /// Enforces the output contract: one result per sample, finite numbers, bounded size.
    /// `out` is the 0.1.0 guest's return value as the WIT types it (`result<_, string>`).
    pub(crate) fn check_output(
        &self,
        n: usize,
        out: Vec<Result<ScoreResult, String>>,
        denied: Option<&'static str>,
    ) -> Result<Vec<Result<Outcome, PluginError>>, PluginError> {
        let plugin = self.plugin;
        let bad = |reason: String| PluginError::BadOutput {
            plugin: plugin.clone(),
            reason,
        };
        if out.len() != n {
            return Err(bad(format!(
                "returned {} results for {n} samples",
                out.len()
            )));
        }
        let size: usize = out
            .iter()
            .map(|r| match r {
                Ok(ScoreResult::Scored(s)) => {
                    s.components.iter().map(|(k, _)| k.len() + 8).sum::<usize>() + 8
                }
                Ok(ScoreResult::NotApplicable) => 1,
                Err(m) => m.len(),
            })
            .sum();
        let max = self.limits.max_output_bytes;
        if size > max {
            return Err(bad(format!(
                "output of {size} bytes exceeds the limit of {max} bytes"
            )));
        }
        let mut interned = self.names.lock().unwrap();
        Ok(out
            .into_iter()
            .map(|r| match r {
                Ok(ScoreResult::Scored(s)) => {
                    // 0.1.0 names components per sample: a bad name fails that sample only.
                    self.check_names(s.components.iter().map(|(k, _)| k.as_str()))?;
                    let components = s
                        .components
                        .into_iter()
                        .map(|(k, v)| (intern(&mut interned, &k), v))
                        .collect();
                    self.check_scored(s.score, components)
                }
                Ok(ScoreResult::NotApplicable) => Ok(Outcome::NotApplicable),
                Err(message) => Err(self.guest_error(message, denied)),
            })
            .collect())
    }

    /// Component names of one result: at most `max_components`, each at most
    /// `max_component_name_bytes`, all distinct. Linear in the names' total size.
    fn check_names<'a>(
        &self,
        names: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<(), PluginError> {
        let bad = |reason: String| PluginError::BadOutput {
            plugin: self.plugin.clone(),
            reason,
        };
        let l = self.limits;
        if names.len() > l.max_components {
            return Err(bad(format!(
                "{} component names exceed the limit of {}",
                names.len(),
                l.max_components
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        for name in names {
            if name.len() > l.max_component_name_bytes {
                return Err(bad(format!(
                    "a component name of {} bytes exceeds the limit of {} bytes",
                    name.len(),
                    l.max_component_name_bytes
                )));
            }
            if !seen.insert(name) {
                return Err(bad(format!("component name `{name}` appears twice")));
            }
        }
        Ok(())
    }

    /// Enforces the 0.2.0 output contract (see `batch-scores` in the WIT): list lengths that
    /// match the batch, in-range indices, each sample at most once among errors and
    /// not-applicable, distinct component names within the caps, bounded size; then converts
    /// to the same per-sample results as 0.1.0, the names shared by every sample (interned).
    /// Shape violations reject the whole call (so bisection pins them on samples); a number
    /// that is not finite or beyond `max_abs_score` fails only its sample. Every check is
    /// linear in the output's size.
    pub(crate) fn check_batch_output(
        &self,
        n: usize,
        out: v02::BatchScores,
        denied: Option<&'static str>,
    ) -> Result<Vec<Result<Outcome, PluginError>>, PluginError> {
        let bad = |reason: String| PluginError::BadOutput {
            plugin: self.plugin.clone(),
            reason,
        };
        let v02::BatchScores {
            scores,
            component_names: names,
            components,
            absent,
            errors,
            not_applicable,
        } = out;
        let size = names.iter().map(|k| k.len()).sum::<usize>()
            + errors.iter().map(|(_, m)| m.len() + 4).sum::<usize>()
            + 8 * (scores.len() + components.len())
            + 4 * (absent.len() + not_applicable.len());
        let max = self.limits.max_output_bytes;
        if size > max {
            return Err(bad(format!(
                "output of {size} bytes exceeds the limit of {max} bytes"
            )));
        }
        if scores.len() != n {
            return Err(bad(format!(
                "returned {} scores for {n} samples",
                scores.len()
            )));
        }
        let k = names.len();
        self.check_names(names.iter().map(String::as_str))?;
        if Some(components.len()) != n.checked_mul(k) {
            return Err(bad(format!(
                "returned {} component values for {n} samples and {k} component names (expected {})",
                components.len(),
                n * k
            )));
        }
        let names: Vec<Arc<str>> = {
            let mut interned = self.names.lock().unwrap();
            names
                .iter()
                .map(|name| intern(&mut interned, name))
                .collect()
        };
        // What each sample became: None = scored, else not applicable or failed.
        let mut fate: Vec<Option<Fate>> = vec![None; n];
        let mut mark = |i: u32, what: Fate, list: &str| {
            let slot = fate
                .get_mut(i as usize)
                .ok_or_else(|| bad(format!("{list} index {i} is out of range for {n} samples")))?;
            if slot.is_some() {
                return Err(bad(format!(
                    "sample {i} appears more than once in errors and not-applicable"
                )));
            }
            *slot = Some(what);
            Ok(())
        };
        for (i, message) in errors {
            mark(i, Fate::Failed(message), "error")?;
        }
        for i in not_applicable {
            mark(i, Fate::NotApplicable, "not-applicable")?;
        }
        let mut missing = vec![false; if absent.is_empty() { 0 } else { n * k }];
        for a in absent {
            *missing.get_mut(a as usize).ok_or_else(|| {
                bad(format!(
                    "absent position {a} is out of range for {n} samples and {k} component names"
                ))
            })? = true;
        }
        Ok(fate
            .into_iter()
            .enumerate()
            .map(|(i, f)| match f {
                None => {
                    let values = &components[i * k..(i + 1) * k];
                    let components = names
                        .iter()
                        .zip(values)
                        .enumerate()
                        .filter(|(j, _)| !missing.get(i * k + j).copied().unwrap_or(false))
                        .map(|(_, (name, v))| (name.clone(), *v))
                        .collect();
                    self.check_scored(scores[i], components)
                }
                Some(Fate::NotApplicable) => Ok(Outcome::NotApplicable),
                Some(Fate::Failed(message)) => Err(self.guest_error(message, denied)),
            })
            .collect())
    }

    /// A scored sample whose score or a component is not finite, or beyond `max_abs_score`,
    /// is bad output (for that sample).
    fn check_scored(
        &self,
        score: f64,
        components: Vec<(Arc<str>, f64)>,
    ) -> Result<Outcome, PluginError> {
        let bad = |reason: String| PluginError::BadOutput {
            plugin: self.plugin.clone(),
            reason,
        };
        let bound = self.limits.max_abs_score;
        if !score.is_finite() {
            return Err(bad(format!("score is {score} (scores must be finite)")));
        }
        if score.abs() > bound {
            return Err(bad(format!(
                "score {score:e} is beyond the bound of ±{bound:e} (max_abs_score)"
            )));
        }
        if let Some((k, v)) = components.iter().find(|(_, v)| !v.is_finite()) {
            return Err(bad(format!(
                "component `{k}` is {v} (components must be finite)"
            )));
        }
        if let Some((k, v)) = components.iter().find(|(_, v)| v.abs() > bound) {
            return Err(bad(format!(
                "component `{k}` = {v:e} is beyond the bound of ±{bound:e} (max_abs_score)"
            )));
        }
        Ok(Outcome::Scored { score, components })
    }

    /// A guest error after a denied capability call is reported as the denial.
    fn guest_error(&self, message: String, denied: Option<&'static str>) -> PluginError {
        let plugin = self.plugin.clone();
        match denied {
            Some(cap) => PluginError::CapabilityDenied {
                plugin,
                capability: cap.into(),
            },
            None => PluginError::GuestError {
                plugin,
                message: clip(message),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "dose-check".into(),
            version: "1.2.0+build.7".into(),
            description: "checks doses".into(),
            config_schema: "{}".into(),
            capabilities: vec![],
            api_version: "0.2.0".into(),
        }
    }

    #[test]
    fn manifests_are_capped_and_capabilities_folded() {
        let mut m = manifest();
        m.capabilities = vec![Capability::Search, Capability::Judge, Capability::Search];
        validate_manifest(&mut m).unwrap();
        assert_eq!(m.capabilities, vec![Capability::Search, Capability::Judge]);
        let bad: [(&str, fn(&mut Manifest)); 7] = [
            ("name is 0 bytes", |m| m.name.clear()),
            ("name is 65 bytes", |m| m.name = "n".repeat(65)),
            ("name contains ' '", |m| m.name = "dose check".into()),
            ("version contains '\\n'", |m| m.version = "1\nforged".into()),
            ("description is 4097 bytes", |m| {
                m.description = "d".repeat(4097)
            }),
            ("config_schema is 65537 bytes", |m| {
                m.config_schema = " ".repeat(65537)
            }),
            ("lists 65 capabilities", |m| {
                m.capabilities = vec![Capability::Judge; 65]
            }),
        ];
        for (needle, f) in bad {
            let mut m = manifest();
            f(&mut m);
            let e = validate_manifest(&mut m).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(e.len() < 200, "the reason never quotes the field: {e}");
        }
    }

    #[test]
    fn tool_specs_are_capped_and_parameters_must_be_an_object() {
        let params = r#"{"type":"object","properties":{"query":{"type":"string"}}}"#;
        let v = validate_tool_spec("pubmed_search", "Search PubMed.", params).unwrap();
        assert_eq!(v["type"], "object");
        validate_tool_spec("a-1_b", "", "{}").unwrap();
        let long_name = "n".repeat(65);
        let long_desc = "d".repeat(4097);
        let long_params = format!("{{\"x\":\"{}\"}}", "p".repeat(65536));
        for (name, desc, params, needle) in [
            ("", "d", "{}", "name is 0 bytes"),
            (long_name.as_str(), "d", "{}", "name is 65 bytes"),
            ("Search", "d", "{}", "contains 'S'"),
            ("pubmed search", "d", "{}", "contains ' '"),
            ("t", long_desc.as_str(), "{}", "description is 4097 bytes"),
            ("t", "d", long_params.as_str(), "parameters is 65544 bytes"),
            ("t", "d", "[1]", "found a JSON array"),
            ("t", "d", "{\"type\":", "not a JSON object"),
        ] {
            let e = validate_tool_spec(name, desc, params).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(e.len() < 200, "the reason never quotes the field: {e}");
        }
    }
}
