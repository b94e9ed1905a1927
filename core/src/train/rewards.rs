//! Rewards for RL: one or more sandboxed reward plugins with weights, scored together.
//!
//! Each plugin keeps its own failure policy (see [`crate::plugin::FailurePolicy`]); a sample a
//! plugin drops is dropped from the update, and every failure is counted in the metrics. The
//! total reward is the weighted sum of the plugins that scored the sample; components are kept
//! per plugin (`<plugin>/<component>`) so they can be logged separately.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::plugin::{FailurePolicy, Grants, Limits, Outcome, PluginHost, PluginOptions, RewardPlugin};

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

fn one() -> f64 {
    1.0
}
fn default_policy() -> String {
    "drop".into()
}
fn default_timeout() -> f64 {
    10.0
}

/// The outcome of scoring one sample with every plugin.
#[derive(Debug, Clone, Default)]
pub struct SampleReward {
    /// `None`: dropped (a plugin with the `drop` policy failed on it).
    pub total: Option<f64>,
    pub components: BTreeMap<String, f64>,
    pub failures: usize,
}

pub struct RewardSet {
    plugins: Vec<(String, RewardPlugin, RewardSpec)>,
}

#[derive(Debug, thiserror::Error)]
#[error("reward `{plugin}`: {msg}")]
pub struct RewardError {
    pub plugin: String,
    pub msg: String,
}

/// One sample to score.
pub struct ToScore<'a> {
    pub prompt: &'a str,
    pub response: &'a str,
    pub ground_truth: &'a serde_json::Value,
    pub metadata: &'a serde_json::Value,
    pub data_source: &'a str,
}

impl RewardSet {
    pub fn load(specs: &[RewardSpec], grants: Grants) -> Result<Self, RewardError> {
        let host = PluginHost::new(Default::default()).map_err(|e| RewardError { plugin: "<host>".into(), msg: e.to_string() })?;
        let mut plugins = Vec::new();
        for spec in specs {
            let name = spec.plugin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let policy: FailurePolicy = spec.on_failure.parse().map_err(|m| RewardError { plugin: name.clone(), msg: m })?;
            let opts = PluginOptions {
                limits: Limits { timeout: Duration::from_secs_f64(spec.timeout_s.max(0.001)), ..Default::default() },
                grants: grants.clone(),
                policy,
                ..Default::default()
            };
            let p = host.load_reward(&spec.plugin, opts).map_err(|e| RewardError { plugin: name.clone(), msg: e.to_string() })?;
            let name = p.manifest().name.clone();
            plugins.push((name, p, spec.clone()));
        }
        if plugins.is_empty() {
            return Err(RewardError { plugin: "<none>".into(), msg: "at least one reward plugin is needed".into() });
        }
        Ok(Self { plugins })
    }

    /// Score a batch with every plugin. `Err` only when a plugin with the `fail` policy fails.
    pub fn score(&self, batch: &[ToScore<'_>]) -> Result<Vec<SampleReward>, RewardError> {
        let samples: Vec<_> = batch
            .iter()
            .map(|s| crate::plugin::sample(s.prompt, s.response, s.ground_truth, s.metadata, s.data_source))
            .collect();
        let mut out = vec![SampleReward { total: Some(0.0), ..Default::default() }; batch.len()];
        for (name, plugin, spec) in &self.plugins {
            let outcomes = plugin.score(&spec.config, &samples).map_err(|e| RewardError { plugin: name.clone(), msg: e.to_string() })?;
            for (o, r) in outcomes.into_iter().zip(out.iter_mut()) {
                match o {
                    Outcome::Scored { score, components } => {
                        r.total = r.total.map(|t| t + spec.weight * score);
                        r.components.insert(format!("{name}/score"), score);
                        for (k, v) in components {
                            r.components.insert(format!("{name}/{k}"), v);
                        }
                    }
                    Outcome::NotApplicable => {}
                    Outcome::Substituted { score, .. } => {
                        r.failures += 1;
                        r.total = r.total.map(|t| t + spec.weight * score);
                        r.components.insert(format!("{name}/score"), score);
                    }
                    Outcome::Dropped { .. } => {
                        r.failures += 1;
                        r.total = None;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Per-plugin failure counters, for the metrics.
    pub fn failure_counts(&self) -> BTreeMap<String, serde_json::Value> {
        self.plugins
            .iter()
            .map(|(n, p, _)| (n.clone(), serde_json::to_value(p.metrics()).unwrap_or_default()))
            .collect()
    }
}
