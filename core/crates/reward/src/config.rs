//! Rewards as a run config file lists them (`rewards:` of SFT validation, GRPO and PPO
//! configs), and [`load_rewards`], which turns that list into a [`RewardSet`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use medrl_plugin::{FailurePolicy, Grants, Limits};

use crate::error::{BadTimeout, RewardError};
use crate::set::{host, RewardSet, RewardSpec};

/// One reward of a run config: which plugin, with what weight, config, failure policy and
/// call deadline. [`RewardConfig::to_spec`] makes it a [`RewardSpec`].
///
/// (Named `RewardSpec` in the configs' JSON Schema and as `medrl_train::rewards::RewardSpec`,
/// its name before the reward types moved here.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RewardSpec")]
pub struct RewardConfig {
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

impl RewardConfig {
    /// `timeout_s` as a call deadline: in (0, 86400] seconds (a Duration cannot hold an
    /// infinite or NaN one).
    pub fn deadline(&self) -> Result<Duration, BadTimeout> {
        Some(self.timeout_s).filter(|t| *t > 0.0 && *t <= 86_400.0).map(Duration::from_secs_f64).ok_or(BadTimeout(self.timeout_s))
    }

    /// The loaded-reward spec of this entry, named `name`, with `grants`.
    pub fn to_spec(&self, name: String, grants: Grants) -> Result<RewardSpec, RewardError> {
        let policy: FailurePolicy = self.on_failure.parse().map_err(|source| RewardError::Policy { name: name.clone(), source })?;
        let timeout = self.deadline().map_err(|source| RewardError::Deadline { name: name.clone(), source })?;
        Ok(RewardSpec { name, plugin: self.plugin.clone(), weight: self.weight, config: self.config.clone(), grants, policy, timeout: Some(timeout) })
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

/// The names of the rewards of a config: each plugin file's stem (`_` as `-`), numbered
/// `stem#2`, `stem#3`, ... when repeated.
pub fn reward_names(configs: &[RewardConfig]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    configs
        .iter()
        .map(|c| {
            let stem = c.plugin.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default();
            let k = seen.entry(stem.clone()).or_default();
            *k += 1;
            if *k == 1 {
                stem
            } else {
                format!("{stem}#{k}")
            }
        })
        .collect()
}

/// Load the plugins of `configs` (names: [`reward_names`]), each with its own `timeout_s` as
/// its call deadline and all with `grants`, in a fresh host.
pub fn load_rewards(configs: &[RewardConfig], grants: &Grants) -> Result<RewardSet, RewardError> {
    let specs = configs
        .iter()
        .zip(reward_names(configs))
        .map(|(c, name)| c.to_spec(name, grants.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        return Err(RewardError::Empty);
    }
    RewardSet::load(&*host(None)?, specs, &Limits::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (The trainers read configs from YAML; JSON has the same serde shape.)
    fn cfg(json: &str) -> RewardConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_names_and_typed_errors() {
        let c = cfg(r#"{"plugin": "p/sample_size.wasm"}"#);
        assert_eq!((c.weight, c.on_failure.as_str(), c.timeout_s), (1.0, "drop", 10.0));
        assert!(serde_json::from_str::<RewardConfig>(r#"{"plugin": "a.wasm", "wieght": 2}"#).is_err());
        let names = reward_names(&[c.clone(), cfg(r#"{"plugin": "q/other.wasm"}"#), c.clone()]);
        assert_eq!(names, ["sample-size", "other", "sample-size#2"]);
        let s = c.to_spec("x".into(), Grants::none()).unwrap();
        assert_eq!((s.policy, s.timeout), (FailurePolicy::Drop, Some(Duration::from_secs(10))));
        let bad = RewardConfig { on_failure: "ignore".into(), ..c.clone() };
        assert!(matches!(bad.to_spec("x".into(), Grants::none()), Err(RewardError::Policy { .. })));
        let bad = RewardConfig { timeout_s: f64::NAN, ..c.clone() };
        let e = bad.to_spec("hostile".into(), Grants::none()).unwrap_err();
        assert!(matches!(e, RewardError::Deadline { .. }));
        assert!(e.to_string().contains("hostile") && e.to_string().contains("timeout_s"), "{e}");
        assert!(matches!(load_rewards(&[], &Grants::none()), Err(RewardError::Empty)));
    }

    #[test]
    fn the_configs_json_schema_keeps_the_name_reward_spec() {
        let schema = schemars::schema_for!(RewardConfig);
        assert_eq!(schema.as_value()["title"], "RewardSpec");
    }
}
