//! The `task.yaml` schema: [`TaskConfig`] and its parts (datasets per split, rewards, metrics),
//! serde types with `deny_unknown_fields` and a JSON Schema (`medrl schema task`), and the
//! [`Validate`] rules serde's types cannot express. Grants are in [`crate::grants`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use medrl_base::config::Validate;
use medrl_data::registry::DatasetRef;

use crate::example::ground_truth_object;
use crate::grants::GrantsSpec;
use crate::template::template_fields;

/// Where the task's reward reads the answer (`metrics.answer`).
pub use medrl_reward::AnswerKind;

/// Dataset splits of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A split name that is none of train, validation (val, valid), test.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown split {0:?} (train, validation, test)")]
pub struct UnknownSplit(pub String);

impl std::str::FromStr for Split {
    type Err = UnknownSplit;
    fn from_str(s: &str) -> Result<Self, UnknownSplit> {
        match s {
            "train" => Ok(Split::Train),
            "validation" | "val" | "valid" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            _ => Err(UnknownSplit(s.to_string())),
        }
    }
}

/// `task.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Must equal the folder name.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub data: DataSplits,
    /// Added as the first message of every example that has no system message.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Renders the user turn of records that have none (no `messages` / `prompt` /
    /// `instruction` / `conversations` column, or an empty one): `{field}` is replaced by the
    /// field of the record's metadata (dotted paths allowed: `{trial.phase}`); `{{` and `}}`
    /// are literal braces.
    #[serde(default)]
    pub prompt_template: Option<String>,
    /// For rewards that compare with the reference answer (dialogue): an example without a
    /// ground truth gets `{"reference": <its last assistant turn>}`.
    #[serde(default)]
    pub reference_as_ground_truth: bool,
    #[serde(default)]
    pub rewards: Vec<RewardEntry>,
    /// Tool plugins the model may call during RL rollouts (multi-turn; docs/grpo.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolEntry>,
    #[serde(default)]
    pub metrics: MetricsSpec,
}

/// One tool plugin of the task.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolEntry {
    /// A bundled plugin name (`pubmed-search-tool`) or a path to a `.wasm` component (relative
    /// to the task folder).
    pub plugin: String,
    /// The tool's config object.
    #[serde(default = "empty_object")]
    #[schemars(with = "serde_json::Value")]
    pub config: Value,
    /// `message` (the error goes back to the model), `drop` or `fail`.
    #[serde(default)]
    pub on_failure: medrl_reward::ToolFailure,
    /// Wall-clock limit of one call, in seconds.
    #[serde(default = "ten")]
    pub timeout_s: f64,
    /// Capabilities the run grants this tool (as a reward's).
    #[serde(default)]
    pub grants: GrantsSpec,
}

fn ten() -> f64 {
    10.0
}

/// Datasets per split; each is a registry name (in `<task>/dataset_info.json` or
/// `<task>/data/dataset_info.json`) or an inline file spec (paths relative to the task folder).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSplits {
    pub train: Option<DatasetRef>,
    pub validation: Option<DatasetRef>,
    pub test: Option<DatasetRef>,
    /// Folder of `dataset_info.json` for datasets given by name, relative to the task folder
    /// (default: the task folder itself).
    #[serde(default)]
    pub dataset_dir: Option<PathBuf>,
}

impl DataSplits {
    pub fn get(&self, split: Split) -> Option<&DatasetRef> {
        match split {
            Split::Train => self.train.as_ref(),
            Split::Validation => self.validation.as_ref(),
            Split::Test => self.test.as_ref(),
        }
    }
}

/// One reward plugin of the task; the task's reward is the weighted sum.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardEntry {
    /// A bundled plugin name (`sample-size` -> `plugins/target/wasm32-wasip2/release/sample_size.wasm`)
    /// or a path to a `.wasm` component (relative to the task folder).
    pub plugin: String,
    #[serde(default = "one")]
    pub weight: f64,
    /// The plugin's config object (see `medrl plugin inspect`).
    #[serde(default = "empty_object")]
    #[schemars(with = "serde_json::Value")]
    pub config: Value,
    /// Capabilities the run grants this plugin. They must match what the plugin requests.
    #[serde(default)]
    pub grants: GrantsSpec,
}

fn one() -> f64 {
    1.0
}
fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Validation metrics of the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// How evaluation reads a response's answer (extract-failure rate, majority vote, the text
    /// BLEU/ROUGE compare): where the task's reward reads it. `text` (default: the response
    /// after the last `</think>`), `final_response` (after the last `## Final Response`),
    /// `answer_tag` (the last `<answer>…</answer>`), `number` (the first number in the last
    /// `<answer>…</answer>`) or `hcc` (the `<hard_check_survival>` JSON).
    #[serde(default)]
    pub answer: AnswerKind,
    /// Text the reward puts before the response when it reads it (a prompt that ends with
    /// `<answer>` leaves the opening tag out of the response): prepended before parsing.
    /// Default: none.
    #[serde(default)]
    pub answer_prefix: String,
    /// Which reward component counts as "accuracy", and from which value on a sample is correct.
    pub accuracy: Option<AccuracySpec>,
    /// Text-overlap metrics of the response against the reference answer.
    #[serde(default)]
    pub text: Vec<TextMetric>,
    /// Survival metrics (HCC): predicted months as the risk score vs the ground truth's time
    /// and event.
    pub survival: Option<SurvivalSpec>,
}

impl MetricsSpec {
    /// The accuracy rule against the task's loaded rewards `reward_names` (in task order): the
    /// plugin is the one named, else the first reward when the component is the total (`score`)
    /// or when several rewards could report the component. `medrl eval` and RL validation both
    /// read accuracy through this.
    pub fn accuracy_for(&self, reward_names: &[String]) -> Option<medrl_reward::AccuracySpec> {
        self.accuracy.as_ref().map(|a| medrl_reward::AccuracySpec {
            plugin: a.plugin.clone().or_else(|| (reward_names.len() > 1 || a.component == "score").then(|| reward_names.first().cloned()).flatten()),
            component: a.component.clone(),
            threshold: a.threshold,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccuracySpec {
    /// Plugin name of the reward (default: the first reward).
    #[serde(default)]
    pub plugin: Option<String>,
    /// A component name reported by the plugin, or `score` for the total.
    pub component: String,
    /// A sample is correct when the value is >= threshold.
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextMetric {
    Bleu,
    Rouge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SurvivalSpec {
    /// Ground-truth field with the observed time in months.
    #[serde(default = "survival_time")]
    pub time_field: String,
    /// Ground-truth field with the event indicator (1 died, 0 censored).
    #[serde(default = "survival_event")]
    pub event_field: String,
    /// Time points (months) of the time-dependent AUC.
    #[serde(default = "survival_horizons")]
    pub horizons: Vec<f64>,
    /// Where the prediction is read in the response: the tag holding a JSON object with
    /// `survival_months`.
    #[serde(default = "survival_tag")]
    pub response_tag: String,
}

fn survival_time() -> String {
    "survival_months".into()
}
fn survival_event() -> String {
    "if_death".into()
}
fn survival_horizons() -> Vec<f64> {
    vec![12.0, 36.0, 60.0]
}
fn survival_tag() -> String {
    "hard_check_survival".into()
}

impl AccuracySpec {
    /// The accuracy value of one scored sample: the total `score` or the named component.
    pub fn value(&self, score: f64, components: &[(String, f64)]) -> Option<f64> {
        if self.component == "score" {
            return Some(score);
        }
        components.iter().find(|(k, _)| *k == self.component).map(|(_, v)| *v)
    }
    /// Whether the sample counts as correct (`None` when the component is missing).
    pub fn correct(&self, score: f64, components: &[(String, f64)]) -> Option<bool> {
        self.value(score, components).map(|v| v >= self.threshold)
    }
}

impl SurvivalSpec {
    /// The observed (time in months, died) of a ground truth (an object or a JSON string).
    pub fn truth(&self, ground_truth: &Value) -> Option<(f64, bool)> {
        let gt = ground_truth_object(ground_truth);
        let t = gt.get(&self.time_field)?.as_f64()?;
        let e = match gt.get(&self.event_field)? {
            Value::Bool(b) => *b,
            v => v.as_f64()? != 0.0,
        };
        Some((t, e))
    }
    /// The predicted survival months in a response: the `survival_months` of the JSON object
    /// in the first `<response_tag>` block (numbers or numeric strings). `None` when absent.
    pub fn predicted_months(&self, response: &str) -> Option<f64> {
        let open = format!("<{}>", self.response_tag);
        let close = format!("</{}>", self.response_tag);
        let start = response.find(&open)? + open.len();
        let end = response[start..].find(&close)? + start;
        let v: Value = serde_json::from_str(response[start..end].trim()).ok()?;
        let v = if v.get("survival_months").is_none() { v.get("survival")?.clone() } else { v };
        match v.get("survival_months")? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|m: &f64| m.is_finite())
    }
}

/// The checks of a task.yaml beyond its types, as `(key path, message)`; the base loader adds
/// the file.
impl Validate for TaskConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let cfg = self;
        if cfg.name.trim().is_empty() {
            return Err(("name".into(), "must not be empty".into()));
        }
        if cfg.data.train.is_none() && cfg.data.validation.is_none() && cfg.data.test.is_none() {
            return Err(("data".into(), "needs at least one of train, validation, test".into()));
        }
        for (i, t) in cfg.tools.iter().enumerate() {
            if !(t.timeout_s > 0.0 && t.timeout_s <= 86_400.0) {
                return Err((format!("tools[{i}].timeout_s"), "must be in (0, 86400] seconds".into()));
            }
            if !t.config.is_object() {
                return Err((format!("tools[{i}].config"), "must be a mapping".into()));
            }
            if let Some(s) = &t.grants.search {
                s.check().map_err(|e| (format!("tools[{i}].grants.search"), e.to_string()))?;
            }
            if t.grants.judge.is_some() {
                return Err((format!("tools[{i}].grants.judge"), "task tools cannot be granted a judge yet; give the tool in the run config".into()));
            }
        }
        for (i, r) in cfg.rewards.iter().enumerate() {
            if !r.weight.is_finite() {
                return Err((format!("rewards[{i}].weight"), "must be finite".into()));
            }
            if !r.config.is_object() {
                return Err((format!("rewards[{i}].config"), "must be a mapping".into()));
            }
            if let Some(s) = &r.grants.search {
                s.check().map_err(|e| (format!("rewards[{i}].grants.search"), e.to_string()))?;
            }
            if let Some(j) = &r.grants.judge {
                if !(0.0..=1.0).contains(&j.validate_score) {
                    return Err((format!("rewards[{i}].grants.judge.validate_score"), "must be in [0, 1]".into()));
                }
                if j.max_length == Some(0) || j.max_batch == Some(0) {
                    return Err((format!("rewards[{i}].grants.judge"), "max_length and max_batch must be at least 1".into()));
                }
                if j.timeout_s.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
                    return Err((format!("rewards[{i}].grants.judge.timeout_s"), "must be a positive number of seconds".into()));
                }
            }
        }
        if let Some(t) = &cfg.prompt_template {
            template_fields(t).map_err(|e| ("prompt_template".to_string(), e.to_string()))?;
        }
        if let Some(a) = &cfg.metrics.accuracy {
            if let Some(p) = &a.plugin {
                if !cfg.rewards.iter().any(|r| &r.plugin == p) {
                    return Err(("metrics.accuracy.plugin".into(), format!("{p:?} is not one of the task's rewards")));
                }
            } else if cfg.rewards.is_empty() {
                return Err(("metrics.accuracy".into(), "the task has no rewards".into()));
            }
        }
        let mut seen = BTreeMap::new();
        for (i, r) in cfg.rewards.iter().enumerate() {
            if let Some(j) = seen.insert(r.plugin.clone(), i) {
                return Err((format!("rewards[{i}].plugin"), format!("{:?} is already rewards[{j}]", r.plugin)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metric_helpers() {
        let a = AccuracySpec { plugin: None, component: "accuracy".into(), threshold: 1.0 };
        assert_eq!(a.correct(1.1, &[("accuracy".into(), 1.0)]), Some(true));
        assert_eq!(a.correct(0.0, &[("accuracy".into(), 0.0)]), Some(false));
        assert_eq!(a.correct(0.0, &[]), None);
        let s: SurvivalSpec = serde_yaml::from_str("{}").unwrap();
        assert_eq!(s.truth(&json!({"survival_months": 14, "if_death": 1})), Some((14.0, true)));
        assert_eq!(s.truth(&json!("{\"survival_months\": 3.5, \"if_death\": 0}")), Some((3.5, false)));
        assert_eq!(s.predicted_months("x <hard_check_survival>{\"survival_months\": \"18\"}</hard_check_survival>"), Some(18.0));
        assert_eq!(s.predicted_months("<hard_check_survival>{\"survival\": {\"survival_months\": 7}}</hard_check_survival>"), Some(7.0));
        assert_eq!(s.predicted_months("no block"), None);
    }

    #[test]
    fn unknown_split_keeps_its_wording() {
        assert_eq!("val".parse::<Split>().unwrap(), Split::Validation);
        assert_eq!("dev".parse::<Split>().unwrap_err().to_string(), "unknown split \"dev\" (train, validation, test)");
    }
}
