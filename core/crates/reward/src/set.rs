//! A loaded reward set: the plugins of a task or a run config, each with its weight, config,
//! grants, failure policy and call deadline, scored together into one [`RewardResult`] per
//! sample. Training rewards, validation during training and `medrl eval` all score through
//! [`RewardSet::score`], so they compute the same numbers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use medrl_plugin::{FailurePolicy, Grants, Limits, Outcome, PluginHost, PluginOptions, RewardPlugin, Sample};

use crate::error::RewardError;

/// One reward plugin ready to load: what a task bundle or a run config declares, with names
/// given, paths resolved and capabilities granted.
#[derive(Clone, Debug)]
pub struct RewardSpec {
    /// Name used for this reward's score and as the prefix of its components.
    pub name: String,
    /// The `.wasm` component.
    pub plugin: PathBuf,
    pub weight: f64,
    /// The plugin's own configuration.
    pub config: Value,
    /// Live capabilities (judge, search) the plugin may call.
    pub grants: Grants,
    pub policy: FailurePolicy,
    /// This plugin's call deadline (`None`: the one of the `Limits` the set is loaded with).
    pub timeout: Option<Duration>,
}

/// Loaded reward plugins, with their weights.
pub struct RewardSet {
    items: Vec<(RewardSpec, RewardPlugin)>,
}

/// One response's scores after the failure policies were applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardResult {
    /// Σ weight·score over plugins that scored (a not-applicable plugin adds nothing);
    /// `None` when a plugin dropped the sample.
    pub total: Option<f64>,
    /// Each plugin's score (`None`: not applicable or dropped).
    pub by_plugin: BTreeMap<String, Option<f64>>,
    /// Components, named `component` with one plugin, `plugin/component` with several.
    pub components: BTreeMap<String, f64>,
    /// Plugin -> what went wrong: `not_applicable`, `substituted:<kind>`, `dropped:<kind>`.
    pub failures: BTreeMap<String, String>,
}

impl RewardSet {
    /// Compile and instantiate every plugin (the host caches compiled code on disk). Each
    /// plugin runs under `limits`, with its own `timeout` when it has one.
    pub fn load(host: &PluginHost, specs: Vec<RewardSpec>, limits: &Limits) -> Result<Self, RewardError> {
        let mut items = Vec::with_capacity(specs.len());
        for spec in specs {
            let limits = Limits { timeout: spec.timeout.unwrap_or(limits.timeout), ..limits.clone() };
            let opts = PluginOptions { limits, grants: spec.grants.clone(), policy: spec.policy, ..Default::default() };
            let plugin = host.load_reward(&spec.plugin, opts).map_err(|source| RewardError::Plugin { name: spec.name.clone(), source: Box::new(source) })?;
            items.push((spec, plugin));
        }
        Ok(Self { items })
    }

    /// The rewards' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.items.iter().map(|(s, _)| s.name.clone()).collect()
    }

    /// The specs the set was loaded from.
    pub fn specs(&self) -> impl Iterator<Item = &RewardSpec> {
        self.items.iter().map(|(s, _)| s)
    }

    /// Score `samples` with every plugin. `Err` when a plugin with the `fail` policy fails.
    pub fn score(&self, samples: &[Sample]) -> Result<Vec<RewardResult>, RewardError> {
        let mut out = vec![RewardResult { total: Some(0.0), ..Default::default() }; samples.len()];
        let single = self.items.len() == 1;
        for (spec, plugin) in &self.items {
            let outcomes = plugin.score(&spec.config, samples).map_err(|source| RewardError::Plugin { name: spec.name.clone(), source: Box::new(source) })?;
            for (r, o) in out.iter_mut().zip(outcomes) {
                let score = match o {
                    Outcome::Scored { score, components } => {
                        for (k, v) in components {
                            let key = if single { k.to_string() } else { format!("{}/{k}", spec.name) };
                            r.components.insert(key, v);
                        }
                        Some(score)
                    }
                    Outcome::NotApplicable => {
                        r.failures.insert(spec.name.clone(), "not_applicable".into());
                        None
                    }
                    Outcome::Substituted { score, error } => {
                        r.failures.insert(spec.name.clone(), format!("substituted:{}", error.kind()));
                        Some(score)
                    }
                    Outcome::Dropped { error } => {
                        r.failures.insert(spec.name.clone(), format!("dropped:{}", error.kind()));
                        r.total = None;
                        r.by_plugin.insert(spec.name.clone(), None);
                        continue;
                    }
                };
                if let (Some(t), Some(s)) = (r.total.as_mut(), score) {
                    *t += spec.weight * s;
                }
                r.by_plugin.insert(spec.name.clone(), score);
            }
        }
        Ok(out)
    }
}

/// A plugin host to share across reward sets, compiling into `cache_dir` (default: the
/// host's, `$MEDRL_CACHE_DIR` or `~/.cache/medrl/plugins`).
pub fn host(cache_dir: Option<PathBuf>) -> Result<Arc<PluginHost>, RewardError> {
    let mut cfg = medrl_plugin::HostConfig::default();
    if cache_dir.is_some() {
        cfg.cache_dir = cache_dir;
    }
    PluginHost::new(cfg).map(Arc::new).map_err(|e| RewardError::Host(Box::new(e)))
}
