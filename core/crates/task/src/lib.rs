//! Task bundles: a task is data, not code.
//!
//! `tasks/<name>/task.yaml` names the task's datasets per split (each a
//! [`DatasetRef`] resolved with the task folder as `dataset_dir`), its system prompt and an
//! optional prompt template, the reward plugins with weights, configs and the capabilities they
//! are granted, and the validation metrics. The file is a typed serde config
//! (`deny_unknown_fields`; errors name the file and the key path, as in [`medrl_base::config`]).
//!
//! Used by `medrl task list|show|validate`, and by training and evaluation:
//! [`Task::load`], [`Task::examples`], [`Task::reward_specs`], [`Task::reward_set_specs`] (the
//! rewards as medrl-reward loads them, for a trainer or `medrl eval`), [`Task::metrics`].
//!
//! ```yaml
//! name: trialpanorama-sample-size
//! description: ...
//! data:
//!   train: {path: data/train.parquet, formatting: verl}
//!   test: {path: data/test.jsonl, formatting: messages}
//! system_prompt: You are a biostatistician.
//! prompt_template: "{question}"      # optional: renders the user turn from metadata fields
//! rewards:
//!   - plugin: sample-size            # bundled name, or a path to a .wasm (relative to the task)
//!     weight: 1.0
//!     config: {tolerance: 0.2}
//!     grants: {}                     # judge / search, see GrantsSpec
//! metrics:
//!   answer: number                   # how evaluation reads the answer (AnswerKind; default text)
//!   answer_prefix: ""                # text the reward puts before the response (default "")
//!   accuracy: {component: accuracy, threshold: 1.0}
//!   text: [bleu, rouge]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use medrl_data::formats::{self, Formatting};
use medrl_data::read::read_records;
use medrl_data::registry::{self, DatasetRef, DatasetSpec};
use medrl_data::{DataError, Example, Origin};
use medrl_lm::tokenizer::ChatMessage;

pub mod validate;

pub use validate::{validate, CheckStatus, ValidationReport};

/// The search backend of a reward: `corpus`, `index` or `pubmed`.
pub use medrl_search::SearchGrant;

/// Where the task's reward reads the answer (`metrics.answer`).
pub use medrl_reward::AnswerKind;

/// Environment variable naming the tasks folder (the one holding `<name>/task.yaml`).
pub const TASKS_DIR_ENV: &str = "MEDRL_TASKS_DIR";
/// Environment variable naming the folder of bundled plugin `.wasm` files
/// (default: `<repo>/plugins/target/wasm32-wasip2/release`).
pub const PLUGIN_DIR_ENV: &str = "MEDRL_PLUGIN_DIR";

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{file}: {source}")]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}: YAML syntax error{}: {msg}", location.map(|(l, c)| format!(" at line {l}, column {c}")).unwrap_or_default())]
    Syntax { file: PathBuf, location: Option<(usize, usize)>, msg: String },
    #[error("{file}: key `{key}`: {msg}")]
    Invalid { file: PathBuf, key: String, msg: String },
    #[error("task `{name}` not found: {msg}")]
    NotFound { name: String, msg: String },
    #[error("task `{task}`, split `{split}`: {source}")]
    Data { task: String, split: Split, source: DataError },
    #[error("task `{task}`: {msg}")]
    Other { task: String, msg: String },
    /// The judge a reward's grant asks for could not be had; the message is the judge
    /// provider's own (it names the task and the reward).
    #[error("{source}")]
    Judge { task: String, reward: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// A reward's search backend (corpus, index, PubMed) could not be opened.
    #[error("task `{task}`: reward `{reward}`: search backend: {source}")]
    Search { task: String, reward: String, source: medrl_search::SearchError },
}

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

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "validation" | "val" | "valid" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split {s:?} (train, validation, test)")),
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
    #[serde(default)]
    pub metrics: MetricsSpec,
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

/// Capabilities granted to a plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsSpec {
    pub judge: Option<JudgeGrant>,
    pub search: Option<SearchGrant>,
}

/// A judge model: the host's `judge` capability, backed by a model medrl loads
/// ([`medrl_reward::judge::ModelJudge`]; docs/judge.md). `medrl task validate` uses a constant
/// stand-in (`validate_score`) since it runs no model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeGrant {
    /// Local Hugging Face folder of the judge / verifier (relative to the task folder, or
    /// absolute). medrl never downloads: a hub name such as
    /// FreedomIntelligence/medical_o1_verifier_3B is refused with a message saying so;
    /// `--judge-model DIR` overrides it on the command line.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `classifier` (a *ForSequenceClassification checkpoint) or `causal_lm` (P(true_token)
    /// from next-token logits). Default: read from config.json's `architectures`.
    #[serde(default)]
    pub kind: Option<medrl_reward::judge::JudgeKind>,
    /// Classifier: the label whose probability is the score, by name (`id2label`) or index
    /// (default: index 1).
    #[serde(default)]
    pub label: Option<String>,
    /// Causal LM: the token whose probability is the score (default `True`; one token).
    #[serde(default)]
    pub true_token: Option<String>,
    /// Causal LM: the opposing token for `normalize: pair` (default `False`).
    #[serde(default)]
    pub false_token: Option<String>,
    /// Causal LM: `pair` (softmax over true/false tokens, default) or `vocab` (full softmax).
    #[serde(default)]
    pub normalize: Option<medrl_reward::judge::Normalize>,
    /// Causal LM: render the prompt as a user turn with the chat template (default: when the
    /// tokenizer has one).
    #[serde(default)]
    pub chat_template: Option<bool>,
    /// Apply the tokenizer's special tokens (e.g. a BOS) to a prompt that is not chat-rendered
    /// (default true, as transformers' `tokenizer(text)`; HuatuoGPT-o1's verifier uses false).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// Longest judge prompt in tokens (default 4096); longer prompts are truncated.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// `left` (default: keep the end of the prompt) or `right` (keep the start).
    #[serde(default)]
    pub truncation: Option<medrl_reward::judge::Truncation>,
    /// Most judge requests computed in one forward (default 8).
    #[serde(default)]
    pub max_batch: Option<usize>,
    /// Seconds a judge call may wait for the model before failing (default 120).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (default: the run's device; cpu for `medrl reward`).
    #[serde(default)]
    pub device: Option<String>,
    /// `f32`, `bf16`, `f16` or `auto` (default `auto`: bf16 on CUDA, f32 on CPU).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Score the stand-in judge returns during validation.
    #[serde(default = "half")]
    pub validate_score: f64,
}

impl JudgeGrant {
    /// Settings of the model-backed judge: this grant's values over the defaults; relative
    /// model paths resolve against `task_dir`; `device` is used when the grant names none.
    /// `None` when the grant names no model.
    pub fn settings(&self, task_dir: Option<&Path>, device: &str) -> Option<medrl_reward::judge::JudgeSettings> {
        let mut s = medrl_reward::judge::JudgeSettings::new(self.model.clone()?);
        s.base_dir = task_dir.map(Path::to_path_buf);
        self.apply(&mut s);
        s.device = self.device.clone().unwrap_or_else(|| device.to_string());
        Some(s)
    }

    /// Overwrite the settings this grant sets (all but `model` and `device`).
    pub fn apply(&self, s: &mut medrl_reward::judge::JudgeSettings) {
        if self.kind.is_some() {
            s.kind = self.kind;
        }
        if self.label.is_some() {
            s.label = self.label.clone();
        }
        if let Some(t) = &self.true_token {
            s.true_token = t.clone();
        }
        if let Some(t) = &self.false_token {
            s.false_token = t.clone();
        }
        if let Some(n) = self.normalize {
            s.normalize = n;
        }
        if self.chat_template.is_some() {
            s.chat_template = self.chat_template;
        }
        if let Some(a) = self.add_special_tokens {
            s.add_special_tokens = a;
        }
        if let Some(n) = self.max_length {
            s.max_length = n;
        }
        if let Some(t) = self.truncation {
            s.truncation = t;
        }
        if let Some(n) = self.max_batch {
            s.max_batch = n;
        }
        if let Some(t) = self.timeout_s {
            s.timeout = std::time::Duration::from_secs_f64(t.max(0.0));
        }
        if let Some(d) = &self.dtype {
            s.dtype = d.clone();
        }
    }
}

fn half() -> f64 {
    0.5
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
        let gt = validate::ground_truth_object(ground_truth);
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

/// A reward plugin of a loaded task, with paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    /// As written in task.yaml.
    pub name: String,
    /// The `.wasm` component.
    pub path: PathBuf,
    pub weight: f64,
    pub config: Value,
    /// Search corpus / index paths absolute.
    pub grants: GrantsSpec,
}

impl RewardSpec {
    /// The search grant's backend (None when not granted): the corpus indexed in memory (tantivy),
    /// a prebuilt index folder, or PubMed.
    pub fn search_index(&self) -> Result<Option<Box<dyn medrl_plugin::SearchIndex>>, medrl_search::SearchError> {
        self.grants.search.as_ref().map(|s| s.open()).transpose()
    }
}

/// A loaded task bundle.
#[derive(Debug, Clone)]
pub struct Task {
    pub config: TaskConfig,
    /// The task folder.
    pub dir: PathBuf,
    /// `task.yaml`.
    pub file: PathBuf,
    /// Where bundled plugin names are looked up.
    pub plugin_dir: PathBuf,
}

/// The tasks folder: `$MEDRL_TASKS_DIR`, else the first `tasks/` found walking up from the
/// current directory.
pub fn tasks_dir() -> Result<PathBuf, TaskError> {
    if let Some(d) = std::env::var_os(TASKS_DIR_ENV) {
        return Ok(PathBuf::from(d));
    }
    let cwd = std::env::current_dir().map_err(|e| TaskError::Io { file: ".".into(), source: e })?;
    for dir in cwd.ancestors() {
        let t = dir.join("tasks");
        if t.is_dir() {
            return Ok(t);
        }
    }
    Err(TaskError::NotFound {
        name: String::new(),
        msg: format!("no `tasks/` folder in {} or its parents; set {TASKS_DIR_ENV}", cwd.display()),
    })
}

/// Names of the tasks in [`tasks_dir`] (folders holding a `task.yaml`), sorted.
pub fn list() -> Result<Vec<String>, TaskError> {
    let dir = tasks_dir()?;
    let mut names = Vec::new();
    let rd = std::fs::read_dir(&dir).map_err(|e| TaskError::Io { file: dir.clone(), source: e })?;
    for e in rd.flatten() {
        if e.path().join("task.yaml").is_file() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn default_plugin_dir(task_dir: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os(PLUGIN_DIR_ENV) {
        return PathBuf::from(d);
    }
    let rel = Path::new("plugins/target/wasm32-wasip2/release");
    for dir in task_dir.ancestors() {
        if dir.join("plugins").is_dir() {
            return dir.join(rel);
        }
    }
    // `<repo>/tasks/<name>` layout.
    task_dir.join("../..").join(rel)
}

impl Task {
    /// Load a task by name (`tasks/<name>` under [`tasks_dir`]) or from a folder (or its
    /// `task.yaml`).
    pub fn load(name_or_dir: impl AsRef<Path>) -> Result<Task, TaskError> {
        let arg = name_or_dir.as_ref();
        let dir = if arg.is_file() {
            arg.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else if arg.join("task.yaml").is_file() {
            arg.to_path_buf()
        } else if arg.components().count() == 1 {
            let d = tasks_dir()?.join(arg);
            if !d.join("task.yaml").is_file() {
                let known = list().unwrap_or_default();
                return Err(TaskError::NotFound { name: arg.display().to_string(), msg: format!("no {} (known tasks: {known:?})", d.join("task.yaml").display()) });
            }
            d
        } else {
            return Err(TaskError::NotFound { name: arg.display().to_string(), msg: "no task.yaml there".into() });
        };
        let dir = dir.canonicalize().map_err(|e| TaskError::Io { file: dir.clone(), source: e })?;
        let file = dir.join("task.yaml");
        let text = std::fs::read_to_string(&file).map_err(|e| TaskError::Io { file: file.clone(), source: e })?;
        let config = parse(&text, &file)?;
        let folder = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if config.name != folder {
            return Err(TaskError::Invalid { file, key: "name".into(), msg: format!("{:?} must equal the folder name {folder:?}", config.name) });
        }
        let plugin_dir = default_plugin_dir(&dir);
        Ok(Task { config, dir, file, plugin_dir })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Splits that have a dataset.
    pub fn splits(&self) -> Vec<Split> {
        Split::ALL.into_iter().filter(|s| self.config.data.get(*s).is_some()).collect()
    }

    fn dataset_dir(&self) -> PathBuf {
        match &self.config.data.dataset_dir {
            Some(d) => self.dir.join(d),
            None => self.dir.clone(),
        }
    }

    /// The resolved dataset of a split.
    pub fn dataset(&self, split: Split) -> Result<DatasetSpec, TaskError> {
        let r = self.config.data.get(split).ok_or_else(|| TaskError::Other { task: self.name().into(), msg: format!("has no `{split}` split") })?;
        let ds_dir = self.dataset_dir();
        let mut spec = registry::resolve(r, Some(&ds_dir)).map_err(|source| TaskError::Data { task: self.name().into(), split, source })?;
        // Inline paths are relative to the task folder, whatever dataset_dir says.
        if let DatasetRef::Inline(i) = r {
            spec.path = self.dir.join(&i.path);
        }
        Ok(spec)
    }

    /// The examples of a split: the data's conversation with the task's system prompt applied
    /// (to examples without one) and the prompt template rendered (for records without a user
    /// turn); `ground_truth`, `metadata` and `data_source` (default: the task name) set.
    /// Any bad record is an error naming its file and row.
    pub fn examples(&self, split: Split) -> Result<Vec<(Origin, Example)>, TaskError> {
        let spec = self.dataset(split)?;
        let err = |source: DataError| TaskError::Data { task: self.name().to_string(), split, source };
        let records = read_records(&spec.path).map_err(err)?;
        if records.is_empty() {
            return Err(err(DataError::EmptyFile { path: spec.path.clone() }));
        }
        let mut out = Vec::new();
        for rec in records.into_iter().take(spec.num_samples.unwrap_or(usize::MAX)) {
            let (origin, mut value) = rec.map_err(err)?;
            let row_err = |msg: String| err(DataError::Row { origin: origin.clone(), msg });
            if let Some(t) = &self.config.prompt_template {
                inject_prompt(&mut value, t, &spec).map_err(row_err)?;
            }
            let mut ex = formats::to_example(&value, &spec.formatting, &spec.columns, &spec.tags)
                .map_err(|source| err(DataError::Record { origin: origin.clone(), source }))?;
            let system = spec.system.as_ref().or(self.config.system_prompt.as_ref());
            if let Some(system) = system {
                if ex.messages.first().map(|m| m.role.as_str()) != Some("system") {
                    ex.messages.insert(0, ChatMessage::system(system.clone()));
                }
            }
            if ex.data_source.is_empty() {
                ex.data_source = self.name().to_string();
            }
            if ex.metadata.is_null() {
                ex.metadata = Value::Object(Default::default());
            }
            if self.config.reference_as_ground_truth && ex.ground_truth.is_null() {
                if let Some(r) = reference_answer(&ex) {
                    ex.ground_truth = serde_json::json!({ "reference": r });
                }
            }
            out.push((origin, ex));
        }
        Ok(out)
    }

    /// Where a bundled plugin name or a path points.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        if plugin.ends_with(".wasm") || plugin.contains('/') {
            self.dir.join(plugin)
        } else {
            self.plugin_dir.join(format!("{}.wasm", plugin.replace('-', "_")))
        }
    }

    /// The reward plugins: path, weight, config JSON and grants (search paths resolved).
    pub fn reward_specs(&self) -> Vec<RewardSpec> {
        self.config
            .rewards
            .iter()
            .map(|r| {
                let mut grants = r.grants.clone();
                if let Some(s) = &mut grants.search {
                    s.resolve(&self.dir);
                }
                RewardSpec { name: r.plugin.clone(), path: self.plugin_path(&r.plugin), weight: r.weight, config: r.config.clone(), grants }
            })
            .collect()
    }

    /// The task's rewards as a [`medrl_reward::RewardSet`] loads them: each under `policy`
    /// (and the set's own call deadline), its search grant opened from the task's corpus /
    /// index / PubMed settings, its judge grant resolved by `judge(grant, who)`, where `who`
    /// is ``task `NAME`: reward `REWARD` `` for the caller's messages (the CLI backs it with a
    /// model or a constant stand-in, a trainer with the run's judge). Empty when the task
    /// declares no reward; callers that need one say so in their own terms.
    pub fn reward_set_specs<E>(
        &self,
        policy: medrl_plugin::FailurePolicy,
        mut judge: impl FnMut(&JudgeGrant, &str) -> Result<Arc<dyn medrl_plugin::Judge>, E>,
    ) -> Result<Vec<medrl_reward::RewardSpec>, TaskError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut out = Vec::new();
        for s in self.reward_specs() {
            let mut grants = medrl_plugin::Grants::none();
            if let Some(j) = &s.grants.judge {
                let who = format!("task `{}`: reward `{}`", self.name(), s.name);
                grants.judge = Some(judge(j, &who).map_err(|e| TaskError::Judge { task: self.name().into(), reward: s.name.clone(), source: e.into() })?);
            }
            let index = s.search_index().map_err(|source| TaskError::Search { task: self.name().into(), reward: s.name.clone(), source })?;
            if let Some(index) = index {
                grants = grants.with_search(index);
            }
            out.push(medrl_reward::RewardSpec { name: s.name, plugin: s.path, weight: s.weight, config: s.config, grants, policy, timeout: None });
        }
        Ok(out)
    }

    pub fn metrics(&self) -> &MetricsSpec {
        &self.config.metrics
    }
}

/// The messages that make up the prompt: everything before the final assistant turn(s).
pub fn prompt_messages(ex: &Example) -> &[ChatMessage] {
    let mut end = ex.messages.len();
    while end > 0 && ex.messages[end - 1].role == "assistant" {
        end -= 1;
    }
    &ex.messages[..end]
}

/// The reference answer of an example: its last assistant message, if any.
pub fn reference_answer(ex: &Example) -> Option<&str> {
    ex.messages.last().filter(|m| m.role == "assistant").map(|m| m.content.as_str())
}

fn parse(text: &str, file: &Path) -> Result<TaskConfig, TaskError> {
    let tree: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| TaskError::Syntax {
        file: file.into(),
        location: e.location().map(|l| (l.line(), l.column())),
        msg: e.to_string(),
    })?;
    let cfg: TaskConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        let msg = inner.split(" at line ").next().unwrap_or(&inner).to_string();
        TaskError::Invalid { file: file.into(), key: if key == "." { "<root>".into() } else { key }, msg }
    })?;
    let invalid = |key: String, msg: String| TaskError::Invalid { file: file.into(), key, msg };
    if cfg.name.trim().is_empty() {
        return Err(invalid("name".into(), "must not be empty".into()));
    }
    if cfg.data.train.is_none() && cfg.data.validation.is_none() && cfg.data.test.is_none() {
        return Err(invalid("data".into(), "needs at least one of train, validation, test".into()));
    }
    for (i, r) in cfg.rewards.iter().enumerate() {
        if !r.weight.is_finite() {
            return Err(invalid(format!("rewards[{i}].weight"), "must be finite".into()));
        }
        if !r.config.is_object() {
            return Err(invalid(format!("rewards[{i}].config"), "must be a mapping".into()));
        }
        if let Some(s) = &r.grants.search {
            s.check().map_err(|e| invalid(format!("rewards[{i}].grants.search"), e.to_string()))?;
        }
        if let Some(j) = &r.grants.judge {
            if !(0.0..=1.0).contains(&j.validate_score) {
                return Err(invalid(format!("rewards[{i}].grants.judge.validate_score"), "must be in [0, 1]".into()));
            }
            if j.max_length == Some(0) || j.max_batch == Some(0) {
                return Err(invalid(format!("rewards[{i}].grants.judge"), "max_length and max_batch must be at least 1".into()));
            }
            if j.timeout_s.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
                return Err(invalid(format!("rewards[{i}].grants.judge.timeout_s"), "must be a positive number of seconds".into()));
            }
        }
    }
    if let Some(t) = &cfg.prompt_template {
        template_fields(t).map_err(|m| invalid("prompt_template".into(), m))?;
    }
    if let Some(a) = &cfg.metrics.accuracy {
        if let Some(p) = &a.plugin {
            if !cfg.rewards.iter().any(|r| &r.plugin == p) {
                return Err(invalid("metrics.accuracy.plugin".into(), format!("{p:?} is not one of the task's rewards")));
            }
        } else if cfg.rewards.is_empty() {
            return Err(invalid("metrics.accuracy".into(), "the task has no rewards".into()));
        }
    }
    let mut seen = BTreeMap::new();
    for (i, r) in cfg.rewards.iter().enumerate() {
        if let Some(j) = seen.insert(r.plugin.clone(), i) {
            return Err(invalid(format!("rewards[{i}].plugin"), format!("{:?} is already rewards[{j}]", r.plugin)));
        }
    }
    Ok(cfg)
}

/// Parts of a template: literal text and `{field}` names.
enum Part<'a> {
    Text(String),
    Field(&'a str),
}

fn template_parts(t: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let c = &rest[i..];
        if let Some(r) = c.strip_prefix("{{") {
            text.push('{');
            rest = r;
        } else if let Some(r) = c.strip_prefix("}}") {
            text.push('}');
            rest = r;
        } else if c.starts_with('}') {
            return Err("unmatched `}` (write `}}` for a literal brace)".into());
        } else {
            let end = c.find('}').ok_or("unclosed `{` (write `{{` for a literal brace)")?;
            let name = c[1..end].trim();
            if name.is_empty() || name.contains('{') {
                return Err(format!("bad field name {:?}", &c[1..end]));
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Field(name));
            rest = &c[end + 1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// The field names a template uses (errors on bad syntax).
pub fn template_fields(t: &str) -> Result<Vec<String>, String> {
    Ok(template_parts(t)?
        .into_iter()
        .filter_map(|p| match p {
            Part::Field(f) => Some(f.to_string()),
            Part::Text(_) => None,
        })
        .collect())
}

/// Render `{field}` placeholders from `fields` (an object; dotted paths allowed). Strings are
/// inserted as they are, other values as JSON.
pub fn render_template(t: &str, fields: &Value) -> Result<String, String> {
    let mut out = String::new();
    for p in template_parts(t)? {
        match p {
            Part::Text(s) => out.push_str(&s),
            Part::Field(f) => match formats::lookup(fields, f) {
                Some(Value::String(s)) => out.push_str(s),
                Some(v) => out.push_str(&v.to_string()),
                None => return Err(format!("prompt_template field `{f}` is missing from the record's metadata")),
            },
        }
    }
    Ok(out)
}

/// Gives a record without a user turn one rendered from its metadata.
fn inject_prompt(record: &mut Value, template: &str, spec: &DatasetSpec) -> Result<(), String> {
    let Some(obj) = record.as_object_mut() else { return Ok(()) };
    let cols = &spec.columns;
    let col = |c: &Option<String>, d: &str| c.clone().unwrap_or_else(|| d.to_string());
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => !a.iter().any(|m| m.get("role").and_then(Value::as_str) == Some("user") || m.get(&spec.tags.role_tag).and_then(Value::as_str) == Some(spec.tags.user_tag.as_str())),
        _ => false,
    };
    let (target, default_meta) = match spec.formatting {
        Formatting::Messages => (col(&cols.messages, "messages"), "metadata"),
        Formatting::Verl => (col(&cols.prompt, "prompt"), "extra_info"),
        Formatting::Alpaca => (col(&cols.prompt, "instruction"), "metadata"),
        Formatting::Sharegpt => (col(&cols.messages, "conversations"), "metadata"),
    };
    if !empty(obj.get(&target)) {
        return Ok(());
    }
    let meta_col = col(&cols.metadata, default_meta);
    let meta = formats::lookup(&Value::Object(obj.clone()), &meta_col).cloned().unwrap_or(Value::Null);
    let text = render_template(template, &meta)?;
    let existing: Vec<Value> = obj.get(&target).and_then(Value::as_array).cloned().unwrap_or_default();
    let value = match spec.formatting {
        Formatting::Alpaca => Value::String(text),
        Formatting::Sharegpt => {
            let mut turn = serde_json::Map::new();
            turn.insert(spec.tags.role_tag.clone(), Value::String(spec.tags.user_tag.clone()));
            turn.insert(spec.tags.content_tag.clone(), Value::String(text));
            let mut v = existing;
            let at = v.iter().take_while(|m| m.get(&spec.tags.role_tag).and_then(Value::as_str) == Some(spec.tags.system_tag.as_str())).count();
            v.insert(at, Value::Object(turn));
            Value::Array(v)
        }
        Formatting::Messages | Formatting::Verl => {
            let mut v = existing;
            let at = v.iter().take_while(|m| m.get("role").and_then(Value::as_str) == Some("system")).count();
            v.insert(at, serde_json::json!({"role": "user", "content": text}));
            Value::Array(v)
        }
    };
    obj.insert(target, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_renders_and_rejects_bad_syntax() {
        assert_eq!(render_template("Q: {question} {{x}} {a.b}", &json!({"question": "n?", "a": {"b": 3}})).unwrap(), "Q: n? {x} 3");
        assert!(render_template("{missing}", &json!({})).unwrap_err().contains("missing"));
        assert!(template_fields("{open").is_err());
        assert!(template_fields("close}").is_err());
        assert_eq!(template_fields("{a} and {b}").unwrap(), ["a", "b"]);
    }

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
    fn task_yaml_errors_name_file_and_key() {
        let f = Path::new("t/task.yaml");
        let e = parse("name: t\ndata: {train: x}\nrewardz: []\n", f).unwrap_err().to_string();
        assert!(e.contains("t/task.yaml") && e.contains("rewardz"), "{e}");
        let e = parse("name: t\ndata: {train: x}\nrewards: [{plugin: a, weight: 1, grants: {judge: {modle: x}}}]\n", f).unwrap_err().to_string();
        assert!(e.contains("rewards[0].grants.judge") && e.contains("modle"), "{e}");
        let e = parse("name: t\ndata: {}\n", f).unwrap_err().to_string();
        assert!(e.contains("key `data`"), "{e}");
        let e = parse("name: t\ndata: {train: x}\nprompt_template: \"{q\"\n", f).unwrap_err().to_string();
        assert!(e.contains("prompt_template"), "{e}");
    }

    #[test]
    fn metrics_answer_defaults_to_text_and_names_bad_values() {
        let f = Path::new("t/task.yaml");
        let c = parse("name: t\ndata: {train: x}\n", f).unwrap();
        assert_eq!((c.metrics.answer, c.metrics.answer_prefix.as_str()), (AnswerKind::Text, ""));
        let c = parse("name: t\ndata: {train: x}\nmetrics: {answer: answer_tag, answer_prefix: \"<answer>\"}\n", f).unwrap();
        assert_eq!((c.metrics.answer, c.metrics.answer_prefix.as_str()), (AnswerKind::AnswerTag, "<answer>"));
        let e = parse("name: t\ndata: {train: x}\nmetrics: {answer: numbr}\n", f).unwrap_err().to_string();
        assert!(e.contains("metrics.answer") && e.contains("numbr"), "{e}");
        let e = parse("name: t\ndata: {train: x}\nmetrics: {answer_prefx: x}\n", f).unwrap_err().to_string();
        assert!(e.contains("answer_prefx"), "{e}");
    }

    #[test]
    fn examples_apply_system_prompt_and_template() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("demo");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(
            t.join("task.yaml"),
            "name: demo\ndata:\n  train: {path: train.jsonl, formatting: messages}\nsystem_prompt: Be exact.\nprompt_template: \"Q: {question}\"\n",
        )
        .unwrap();
        std::fs::write(
            t.join("train.jsonl"),
            "{\"metadata\": {\"question\": \"n?\"}, \"ground_truth\": {\"target\": 3}}\n{\"messages\": [{\"role\": \"user\", \"content\": \"given\"}], \"ground_truth\": 1}\n{\"metadata\": {}}\n",
        )
        .unwrap();
        let task = Task::load(&t).unwrap();
        let e = task.examples(Split::Train).unwrap_err().to_string();
        assert!(e.contains("train.jsonl row 3") && e.contains("question"), "{e}");
        std::fs::write(
            t.join("train.jsonl"),
            "{\"metadata\": {\"question\": \"n?\"}, \"ground_truth\": {\"target\": 3}}\n{\"messages\": [{\"role\": \"user\", \"content\": \"given\"}], \"ground_truth\": 1}\n",
        )
        .unwrap();
        let ex = task.examples(Split::Train).unwrap();
        assert_eq!(ex[0].1.messages, vec![ChatMessage::system("Be exact."), ChatMessage::user("Q: n?")]);
        assert_eq!(ex[0].1.ground_truth, json!({"target": 3}));
        assert_eq!(ex[0].1.data_source, "demo");
        assert_eq!(ex[1].1.messages[1], ChatMessage::user("given"));
        assert!(task.examples(Split::Test).is_err());
    }
}
