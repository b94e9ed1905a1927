//! Reward configuration for RL runs: which plugins, with what weight, config and failure
//! policy. Scoring itself is `eval::Rewards`, shared with `medrl eval`, so training rewards,
//! validation and evaluation compute the same numbers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use medrl_eval::run::{RewardSpec as EvalRewardSpec, Rewards};
use medrl_plugin::{FailurePolicy, Grants, Limits, PluginHost};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    /// Path of the plugin's `.wasm` component.
    pub plugin: PathBuf,
    #[serde(default = "one")]
    pub weight: f64,
    /// The plugin's own configuration (validated by the plugin against its schema).
    #[serde(default)]
    pub config: serde_json::Value,
    /// `fail`, `drop` or `score:<value>`.
    #[serde(default = "default_policy")]
    pub on_failure: String,
    /// Wall-clock limit of one guest call, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
}

impl RewardSpec {
    /// `timeout_s` as a call deadline: in (0, 86400] seconds (a Duration cannot hold an
    /// infinite or NaN one).
    pub fn deadline(&self) -> Result<Duration, String> {
        Some(self.timeout_s)
            .filter(|t| *t > 0.0 && *t <= 86_400.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("timeout_s {} must be in (0, 86400] seconds", self.timeout_s))
    }
}

fn one() -> f64 {
    1.0
}
fn default_policy() -> String {
    "drop".into()
}
fn default_timeout() -> f64 {
    10.0
}

#[derive(Debug, thiserror::Error)]
#[error("reward `{plugin}`: {msg}")]
pub struct RewardError {
    pub plugin: String,
    pub msg: String,
}

/// Load the plugins of `specs` (names: file stems, numbered when repeated), each with its own
/// `timeout_s` as its call deadline.
pub fn load_rewards(specs: &[RewardSpec], grants: &Grants) -> Result<Rewards, RewardError> {
    let host = PluginHost::new(Default::default()).map_err(|e| RewardError { plugin: "<host>".into(), msg: e.to_string() })?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for spec in specs {
        let stem = spec.plugin.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default();
        let k = seen.entry(stem.clone()).or_default();
        *k += 1;
        let name = if *k == 1 { stem } else { format!("{stem}#{k}") };
        let policy: FailurePolicy = spec.on_failure.parse().map_err(|m| RewardError { plugin: name.clone(), msg: m })?;
        let timeout = spec.deadline().map_err(|msg| RewardError { plugin: name.clone(), msg })?;
        out.push(EvalRewardSpec { name, plugin: spec.plugin.clone(), weight: spec.weight, config: spec.config.clone(), grants: grants.clone(), policy, timeout: Some(timeout) });
    }
    if out.is_empty() {
        return Err(RewardError { plugin: "<none>".into(), msg: "at least one reward plugin is needed".into() });
    }
    Rewards::load(&host, out, &Limits::default()).map_err(|e| RewardError { plugin: "<load>".into(), msg: e.to_string() })
}
