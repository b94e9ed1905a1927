//! The RL plumbing GRPO and PPO share: prompts (from datasets or a task bundle), reward
//! plugins, run setup and resume, rollouts with rewards scored on CPU threads while the device
//! computes log-probs, the common part of each metrics line, validation, checkpoints and export.
//!
//! An algorithm (grpo.rs, ppo.rs) owns only what differs: advantages and the update. The order
//! of everything that draws randomness (prompt plan, rollout seeds, dropout masks) is fixed
//! here, so a resumed CPU run retraces an uninterrupted one for both.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::checkpoint::{self, TrainerState};
use super::metrics::MetricsLog;
use super::rewards::{load_rewards, RewardSpec};
use super::sft::{NonFinitePolicy, RunOptions, SftError};
use super::trainable::{LoraConfig, Mode, Trainable};
use super::{AdamW, AdamWConfig, LrSchedule, ScheduleKind};
use medrl_data::batch::{build_batch, Batch, Batcher, BatchingConfig, MicroBatch};
use medrl_data::registry::{resolve, DatasetRef};
use medrl_data::{load_examples, BadRowPolicy, Example, Origin, TokenizedExample};
use medrl_eval::run::{evaluate, AccuracySpec, EvalOptions, MetricSettings, RewardResult, Rewards};
use medrl_lm::generate::{generate, SamplingParams, StopConditions};
use medrl_lm::model::{load_model_dir, peft, CausalLm};
use medrl_task::{Split, Task};
use medrl_lm::tokenizer::TextTokenizer;

/// Where an RL run's prompts come from.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RlData {
    /// A task bundle: a name under the repository's `tasks/` (or `$MEDRL_TASKS_DIR`) or a path
    /// to a task folder. It supplies the training prompts (its `train` split), validation
    /// prompts (`validation`), system prompt, rewards (plugins, weights, configs, grants) and
    /// the accuracy metric; the explicit keys of this config override each of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default)]
    pub dataset_dir: Option<PathBuf>,
    /// Training datasets (default with `task`: the task's train split).
    #[serde(default)]
    pub train: Vec<DatasetRef>,
    /// Validation datasets. Unset with `task`: the task's validation split; `[]`: no validation.
    #[serde(default)]
    pub eval: Option<Vec<DatasetRef>>,
    /// A system prompt for examples without one (overrides the task's).
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_prompt_len")]
    pub max_prompt_len: usize,
    #[serde(default)]
    pub on_bad_row: BadRowPolicy,
    /// Validation prompts used (0 = all).
    #[serde(default)]
    pub eval_limit: usize,
    /// How validation responses are drawn (default: one greedy response per prompt).
    #[serde(default)]
    pub eval_sampling: EvalSampling,
}

/// How validation responses are drawn. `val_reward` is the mean over all `n` responses of every
/// prompt; `val_accuracy` counts each prompt's first response.
///
/// Greedy (the default) is what a deployed model usually answers with. Sampled validation
/// (`temperature` > 0, `n` > 1) estimates what GRPO and PPO optimize, the expected reward of the
/// sampling policy; its seed is fixed, so every validation of a run draws with the same random
/// streams and the before/after difference is not sampling noise of two different draws.
/// Cost: `n` times the greedy validation's generation.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSampling {
    /// Responses per validation prompt.
    pub n: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub seed: u64,
}

impl Default for EvalSampling {
    fn default() -> Self {
        Self { n: 1, temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }
    }
}

impl EvalSampling {
    /// The generation settings of one validation pass.
    pub fn params(&self, max_new_tokens: usize) -> SamplingParams {
        SamplingParams { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, repetition_penalty: 1.0, max_new_tokens, seed: self.seed }
    }
}

fn default_prompt_len() -> usize {
    512
}

impl RlData {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.train.is_empty() && self.task.is_none() {
            return Err(("data.train".into(), "give training datasets or a `task`".into()));
        }
        if self.eval_sampling.n == 0 {
            return Err(("data.eval_sampling.n".into(), "must be at least 1".into()));
        }
        self.eval_sampling.params(1).validate().map_err(|(k, m)| (format!("data.eval_sampling.{k}"), m))?;
        Ok(())
    }
}

/// Optimization settings shared by GRPO and PPO.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RlTraining {
    pub max_steps: u64,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub optimizer: AdamWConfig,
    pub seed: u64,
    pub eval_every: u64,
    pub save_every: u64,
    pub keep_last: usize,
    pub on_nonfinite: NonFinitePolicy,
    pub export_dtype: String,
}

impl Default for RlTraining {
    fn default() -> Self {
        Self {
            max_steps: 20,
            lr: 1e-6,
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            optimizer: AdamWConfig { weight_decay: 0.0, ..Default::default() },
            seed: 42,
            eval_every: 0,
            save_every: 0,
            keep_last: 2,
            on_nonfinite: NonFinitePolicy::Stop,
            export_dtype: "f32".into(),
        }
    }
}

pub fn default_rollout() -> SamplingParams {
    SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, max_new_tokens: 128, seed: 0 }
}

/// Checks shared by the RL configs: rewards present (or from a task), steps, LoRA.
pub fn validate_common(
    device: &str,
    dtype: &str,
    data: &RlData,
    rewards: &[RewardSpec],
    training: &RlTraining,
    lora: Option<&LoraConfig>,
    rollout: &SamplingParams,
) -> Result<(), (String, String)> {
    medrl_base::config::check_device_dtype(device, dtype)?;
    rollout.validate().map_err(|(k, m)| (format!("rollout.{k}"), m))?;
    data.validate()?;
    if rewards.is_empty() && data.task.is_none() {
        return Err(("rewards".into(), "at least one reward plugin is needed (or a data.task that has rewards)".into()));
    }
    for (i, r) in rewards.iter().enumerate() {
        r.deadline().map_err(|m| (format!("rewards[{i}].timeout_s"), m))?;
        if !r.weight.is_finite() {
            return Err((format!("rewards[{i}].weight"), format!("{} must be finite", r.weight)));
        }
    }
    if training.max_steps == 0 {
        return Err(("training.max_steps".into(), "must be at least 1".into()));
    }
    if !(training.lr > 0.0 && training.lr.is_finite()) {
        return Err(("training.lr".into(), "must be a positive number".into()));
    }
    training.optimizer.validate().map_err(|(k, m)| (format!("training.optimizer.{k}"), m))?;
    if !["f32", "bf16", "f16"].contains(&training.export_dtype.as_str()) {
        return Err(("training.export_dtype".into(), "expected f32, bf16 or f16".into()));
    }
    if let Some(l) = lora {
        l.validate().map_err(|(k, m)| (format!("lora.{k}"), m))?;
    }
    Ok(())
}

/// A prompt to roll out: rendered ids plus what the rewards need.
#[derive(Debug, Clone)]
pub struct RlPrompt {
    pub ids: Vec<u32>,
    pub text: String,
    pub ground_truth: serde_json::Value,
    pub metadata: serde_json::Value,
    pub data_source: String,
}

/// An example as RL sees it: a trailing assistant turn is removed and becomes the ground truth
/// when the example has none (a reference answer, as dialogue rewards use); `system` is added to
/// examples without a system message.
pub fn prompt_example(mut ex: Example, system: Option<&str>) -> Example {
    if ex.messages.last().is_some_and(|m| m.role == "assistant") {
        let last = ex.messages.pop().expect("non-empty");
        if ex.ground_truth.is_null() {
            ex.ground_truth = serde_json::Value::String(last.content);
        }
    }
    if let Some(s) = system {
        if ex.messages.first().is_none_or(|m| m.role != "system") {
            ex.messages.insert(0, medrl_lm::tokenizer::ChatMessage::system(s));
        }
    }
    ex
}

/// Turn examples into prompts (see [`prompt_example`]); prompts longer than `max_len` tokens are
/// left out and counted.
pub fn prompts_from_examples(tok: &TextTokenizer, examples: Vec<Example>, system: Option<&str>, max_len: usize) -> Result<(Vec<RlPrompt>, usize), SftError> {
    let mut out = Vec::new();
    let mut too_long = 0;
    for ex in examples {
        let ex = prompt_example(ex, system);
        let text = tok.apply_chat_template(&ex.messages, true).map_err(|e| SftError::Setup(e.to_string()))?;
        let ids = tok.encode(&text, false).map_err(|e| SftError::Setup(e.to_string()))?;
        if ids.len() > max_len {
            too_long += 1;
            continue;
        }
        let user_text = ex.messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default();
        out.push(RlPrompt { ids, text: user_text, ground_truth: ex.ground_truth, metadata: ex.metadata, data_source: ex.data_source });
    }
    Ok((out, too_long))
}

/// Results of validating a policy on held-out prompts.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub mean_reward: f64,
    pub accuracy: Option<f64>,
    pub scored: usize,
    pub dropped: usize,
}

impl Validation {
    /// Add to a metrics line (`val_reward`, `val_accuracy`, `val_scored`, `val_dropped`).
    pub fn record(&self, line: &mut serde_json::Value) {
        line["val_reward"] = self.mean_reward.into();
        line["val_accuracy"] = self.accuracy.into();
        line["val_scored"] = self.scored.into();
        line["val_dropped"] = self.dropped.into();
    }

    /// Read back what [`Validation::record`] wrote (`None` for a line without validation;
    /// counts missing from lines of older runs read as 0).
    pub fn from_record(line: &serde_json::Value) -> Option<Self> {
        let count = |k: &str| line.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        Some(Self {
            mean_reward: line.get("val_reward")?.as_f64()?,
            accuracy: line.get("val_accuracy").and_then(|v| v.as_f64()),
            scored: count("val_scored"),
            dropped: count("val_dropped"),
        })
    }
}

/// Greedy responses to the validation examples, scored through `eval::evaluate` (the code path
/// of `medrl eval`); [`validate_with`] draws them as an [`EvalSampling`] says. `threshold`: accuracy is the share of responses whose plugin score reaches it.
#[allow(clippy::too_many_arguments)]
pub fn validate(
    model: &CausalLm,
    tok: &TextTokenizer,
    examples: &[(Origin, Example)],
    rewards: &Rewards,
    max_new_tokens: usize,
    stop: &[String],
    eos: &[u32],
    pad: u32,
    threshold: Option<f64>,
) -> Result<Validation, SftError> {
    let accuracy = threshold.map(|t| AccuracySpec { plugin: None, component: "score".into(), threshold: t });
    validate_with(model, tok, examples, rewards, &EvalSampling::default(), max_new_tokens, stop, eos, pad, accuracy)
}

/// [`validate`] with any accuracy spec (a task's component and threshold).
#[allow(clippy::too_many_arguments)]
pub fn validate_with(
    model: &CausalLm,
    tok: &TextTokenizer,
    examples: &[(Origin, Example)],
    rewards: &Rewards,
    sampling: &EvalSampling,
    max_new_tokens: usize,
    stop: &[String],
    eos: &[u32],
    pad: u32,
    accuracy: Option<AccuracySpec>,
) -> Result<Validation, SftError> {
    let settings = MetricSettings { accuracy, ..Default::default() };
    let opts = EvalOptions {
        sampling: sampling.params(max_new_tokens),
        n: sampling.n,
        batch_size: 64,
        eos_token_ids: eos.to_vec(),
        pad_token_id: pad,
        stop_strings: stop.to_vec(),
        progress: false,
    };
    let (m, preds) = evaluate(model, tok, examples, rewards, &settings, &opts).map_err(setup_err)?;
    let scored = preds.iter().filter(|p| p.reward.total.is_some()).count();
    Ok(Validation { mean_reward: m.reward_all_samples.as_ref().map(|s| s.mean).unwrap_or(0.0), accuracy: m.accuracy, scored, dropped: preds.len() - scored })
}

pub(crate) fn setup_err<E: std::fmt::Display>(e: E) -> SftError {
    SftError::Setup(e.to_string())
}

/// Hash of a run config without its bookkeeping keys (those may change on resume).
pub fn hash_json(v: &impl Serialize) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(serde_json::to_vec(v).expect("serializes")))[..16].to_string()
}

/// The parts of a GRPO or PPO config the shared setup reads.
pub struct RlSpec<'a> {
    /// `grpo` or `ppo`: written into checkpoints and checked on resume.
    pub kind: &'static str,
    pub model: &'a Path,
    pub output_dir: &'a Path,
    pub device: &'a str,
    pub dtype: &'a str,
    pub data: &'a RlData,
    pub rewards: &'a [RewardSpec],
    pub accuracy_threshold: Option<f64>,
    pub rollout: &'a SamplingParams,
    pub stop: &'a [String],
    pub training: &'a RlTraining,
    pub lora: Option<&'a LoraConfig>,
    pub prompts_per_step: usize,
    /// Load the starting model a second time as the frozen KL reference.
    pub reference: bool,
    /// The whole config as YAML (written to `output_dir/config.yaml`) and its hash.
    pub config_yaml: String,
    pub config_hash: String,
}

/// The [`RlSpec`] of a GRPO or PPO config, whose shared fields have the same names in both.
///
/// A macro rather than a trait: the two config types stay plain serde structs (their YAML and
/// JSON Schema are the user-facing format), and one expansion lists every field once.
/// `$hash` is the config's resume hash (which zeroes the fields a resume may change).
macro_rules! rl_spec {
    ($kind:literal, $cfg:expr, $hash:expr) => {{
        let cfg = $cfg;
        $crate::rl::RlSpec {
            kind: $kind,
            model: &cfg.model,
            output_dir: &cfg.output_dir,
            device: &cfg.device,
            dtype: &cfg.dtype,
            data: &cfg.data,
            rewards: &cfg.rewards,
            accuracy_threshold: cfg.accuracy_threshold,
            rollout: &cfg.rollout,
            stop: &cfg.stop,
            training: &cfg.training,
            lora: cfg.lora.as_ref(),
            prompts_per_step: cfg.algorithm.prompts_per_step,
            reference: cfg.algorithm.kl_coef > 0.0,
            config_yaml: serde_yaml::to_string(cfg).expect("serializes"),
            config_hash: $hash,
        }
    }};
}
pub(crate) use rl_spec;

/// The resume hash of a GRPO or PPO config: the config without the keys a resumed run may
/// change (evaluation and checkpoint cadence, the step budget).
macro_rules! rl_config_hash {
    ($cfg:expr) => {{
        let mut c = $cfg.clone();
        c.training.eval_every = 0;
        c.training.save_every = 0;
        c.training.keep_last = 0;
        c.training.max_steps = 0;
        $crate::rl::hash_json(&c)
    }};
}
pub(crate) use rl_config_hash;

/// What a task bundle contributes to a run, after the config's overrides.
struct Sources {
    train: Vec<Example>,
    eval: Vec<(Origin, Example)>,
    system: Option<String>,
    rewards: Rewards,
    accuracy: Option<AccuracySpec>,
}

/// Training and validation examples, system prompt, rewards and accuracy: from the config's
/// datasets and rewards, else from its task. `grants` serve explicit rewards whole; for a
/// task's rewards only its judge is used (search grants come from the task's corpus).
fn load_sources(spec: &RlSpec, grants: &medrl_plugin::Grants) -> Result<Sources, SftError> {
    let data = spec.data;
    let task = match &data.task {
        Some(t) => {
            let mut task = Task::load(t).map_err(setup_err)?;
            if let Some(s) = &data.system {
                task.config.system_prompt = Some(s.clone());
            }
            Some(task)
        }
        None => None,
    };
    let load = |refs: &[DatasetRef]| -> Result<Vec<(Origin, Example)>, SftError> {
        let mut v = Vec::new();
        for r in refs {
            let rs = resolve(r, data.dataset_dir.as_deref())?;
            v.extend(load_examples(&rs, data.on_bad_row)?.0);
        }
        Ok(v)
    };
    let task_split = |split: Split| -> Result<Vec<(Origin, Example)>, SftError> {
        match &task {
            Some(t) if t.splits().contains(&split) => t.examples(split).map_err(setup_err),
            _ => Ok(Vec::new()),
        }
    };
    let train = if data.train.is_empty() { task_split(Split::Train)? } else { load(&data.train)? };
    let eval = match &data.eval {
        Some(refs) => load(refs)?,
        None => task_split(Split::Validation)?,
    };
    let system = data.system.clone().or_else(|| task.as_ref().and_then(|t| t.config.system_prompt.clone()));
    let (rewards, names) = if !spec.rewards.is_empty() || task.is_none() {
        let r = load_rewards(spec.rewards, grants).map_err(setup_err)?;
        let names = r.names();
        (r, names)
    } else {
        task_rewards(task.as_ref().expect("task"), grants)?
    };
    let accuracy = match (spec.accuracy_threshold, task.as_ref().and_then(|t| t.metrics().accuracy.clone())) {
        (Some(t), _) => Some(AccuracySpec { plugin: None, component: "score".into(), threshold: t }),
        // As `medrl eval` reads a task's accuracy: `score` or several rewards name the plugin.
        (None, Some(a)) => Some(AccuracySpec {
            plugin: a.plugin.clone().or_else(|| (names.len() > 1 || a.component == "score").then(|| names[0].clone())),
            component: a.component,
            threshold: a.threshold,
        }),
        (None, None) => None,
    };
    Ok(Sources { train: train.into_iter().map(|(_, e)| e).collect(), eval, system, rewards, accuracy })
}

/// The task's reward plugins under the `drop` policy (a failed sample leaves the loss; list
/// `rewards` explicitly for another policy). A search grant is an in-memory index over the
/// task's corpus; a judge grant is the run's judge, which must be given (the CLI resolves the
/// task's own judge grant when no judge flag is set).
fn task_rewards(task: &Task, grants: &medrl_plugin::Grants) -> Result<(Rewards, Vec<String>), SftError> {
    use medrl_eval::run::RewardSpec as EvalRewardSpec;
    let specs = task.reward_specs();
    if specs.is_empty() {
        return Err(SftError::Setup(format!("task `{}` declares no reward plugin; list `rewards` in the config", task.name())));
    }
    let mut out = Vec::new();
    for s in &specs {
        let mut g = medrl_plugin::Grants::none();
        if s.grants.judge.is_some() {
            g.judge = Some(grants.judge.clone().ok_or_else(|| {
                SftError::Setup(format!("task `{}`: reward `{}` needs a judge model; set grants.judge.model in task.yaml or pass one to the run (CLI: --judge-model DIR, or --test-judge SCORE for a constant stand-in)", task.name(), s.name))
            })?);
        }
        if let Some(index) = s.search_index().map_err(|e| SftError::Setup(format!("reward `{}`: search corpus: {e}", s.name)))? {
            g = g.with_search(index);
        }
        out.push(EvalRewardSpec { name: s.name.clone(), plugin: s.path.clone(), weight: s.weight, config: s.config.clone(), grants: g, policy: medrl_plugin::FailurePolicy::Drop, timeout: None });
    }
    let names = out.iter().map(|s| s.name.clone()).collect();
    let host = medrl_plugin::PluginHost::new(Default::default()).map_err(setup_err)?;
    let rewards = Rewards::load(&host, out, &medrl_plugin::Limits::default()).map_err(setup_err)?;
    Ok((rewards, names))
}

/// A running RL job: model, data, rewards, optimizer and bookkeeping.
pub struct RlRun {
    pub device: Device,
    pub compute: DType,
    pub out: PathBuf,
    pub model_dir: PathBuf,
    pub tok: TextTokenizer,
    pub eos: Vec<u32>,
    pub pad: u32,
    pub train: Vec<RlPrompt>,
    pub eval: Vec<(Origin, Example)>,
    pub rewards: Rewards,
    pub accuracy: Option<AccuracySpec>,
    pub trainable: Trainable,
    pub reference: Option<CausalLm>,
    pub opt: AdamW,
    pub schedule: LrSchedule,
    pub state: TrainerState,
    pub metrics: MetricsLog,
    pub dropout_rng: rand_chacha::ChaCha8Rng,
    /// The checkpoint resumed from (algorithms restore their own extra state from it).
    pub resumed: Option<checkpoint::Loaded>,
    pub validation_before: Option<Validation>,
    pub validation_after: Option<Validation>,
    pub training: RlTraining,
    rollout: SamplingParams,
    eval_sampling: EvalSampling,
    stop: Vec<String>,
    batcher: Batcher,
    plan: Vec<MicroBatch>,
    pb: indicatif::ProgressBar,
    steps_this_run: u64,
    stop_after: Option<u64>,
    /// The run folder's lock, held for the run's life.
    _lock: super::run_dir::RunLock,
}

/// One step's rollouts: sequences, rewards, and the log-probs computed beside the scoring.
pub struct Rollout {
    /// Index into `RlRun::train` of each sequence's prompt.
    pub owners: Vec<usize>,
    /// Prompt + response tokens; `trained` marks the response.
    pub seqs: Vec<TokenizedExample>,
    pub responses: Vec<String>,
    pub scored: Vec<RewardResult>,
    /// Per rollout micro-batch (`chunks`): old-policy log-probs `[B, T]`, reference log-probs,
    /// and what the algorithm's extra pass returned (PPO: values).
    pub chunks: Vec<Vec<usize>>,
    pub old_lps: Vec<Tensor>,
    pub ref_lps: Vec<Option<Tensor>>,
    pub extra: Vec<Option<Tensor>>,
    pub rollout_tokens: usize,
    pub gen_s: f64,
    pub logprob_s: f64,
    pub reward_s: f64,
}

impl Rollout {
    /// Total reward per sequence (`None`: dropped by a plugin's policy).
    pub fn totals(&self) -> Vec<Option<f64>> {
        self.scored.iter().map(|s| s.total).collect()
    }
}

/// Consecutive index chunks of `0..n`.
pub fn chunks(n: usize, size: usize) -> Vec<Vec<usize>> {
    (0..n).collect::<Vec<_>>().chunks(size.max(1)).map(|c| c.to_vec()).collect()
}

impl RlRun {
    /// Prepare (or resume) a run: output folder, model, prompts, rewards, trainable policy,
    /// optimizer, metrics, and validation before training when starting fresh.
    pub fn setup(spec: &RlSpec, grants: medrl_plugin::Grants, opts: &RunOptions) -> Result<RlRun, SftError> {
        let device = medrl_lm::model::parse_device(spec.device).map_err(|e| SftError::Setup(format!("config key `device`: {e}")))?;
        let compute = medrl_lm::model::parse_dtype(spec.dtype, &device).map_err(|e| SftError::Setup(format!("config key `dtype`: {e}")))?;
        let out = spec.output_dir.to_path_buf();
        // Locked before anything in the folder is read or written, for the whole run.
        let lock = super::run_dir::RunLock::acquire(&out)?;
        lock.remove_stale_temps()?;
        let existing = checkpoint::latest(&out);
        if existing.is_some() && !opts.resume {
            return Err(SftError::Setup(format!("{} already has checkpoints; pass --resume or choose another output_dir", out.display())));
        }
        std::fs::create_dir_all(&out).map_err(|e| SftError::Io { path: out.clone(), source: e })?;
        medrl_base::fsutil::write_atomic(&out.join("config.yaml"), spec.config_yaml.as_bytes()).map_err(|e| SftError::Io { path: out.join("config.yaml"), source: e })?;

        let loaded = load_model_dir(spec.model, &device, DType::F32)?;
        let tok = loaded.tokenizer;
        let eos = loaded.generation.eos_token_ids.clone();
        let pad = loaded.generation.pad_token_id.or(eos.first().copied()).unwrap_or(0);
        let src = load_sources(spec, &grants)?;
        let (train, too_long) = prompts_from_examples(&tok, src.train, src.system.as_deref(), spec.data.max_prompt_len)?;
        let mut eval: Vec<(Origin, Example)> = src.eval.into_iter().map(|(o, e)| (o, prompt_example(e, src.system.as_deref()))).collect();
        if spec.data.eval_limit > 0 {
            eval.truncate(spec.data.eval_limit);
        }
        if train.is_empty() {
            return Err(SftError::Setup("no training prompts".into()));
        }
        tracing::info!(train = train.len(), eval = eval.len(), too_long, "prompts ready");

        let mode = match spec.lora {
            Some(l) => Mode::Lora { cfg: l.clone(), targets: l.targets().map_err(SftError::Setup)? },
            None => Mode::Full,
        };
        let t = spec.training;
        let reference = if spec.reference { Some(load_model_dir(spec.model, &device, compute)?.model) } else { None };
        let trainable = Trainable::new(loaded.model, mode, compute, t.seed)?;
        let mut opt = AdamW::new(trainable.params().to_vec(), t.optimizer.clone())?;
        let schedule = LrSchedule { peak_lr: t.lr, warmup_steps: t.warmup_steps, total_steps: t.max_steps, kind: t.schedule, min_lr_ratio: 0.0 };
        // Prompt order: epochs over the training prompts, `prompts_per_step` at a time.
        let batcher = Batcher::new(vec![1; train.len()], BatchingConfig { micro_batch_size: spec.prompts_per_step, packing: false, group_by_length: false, shuffle: true }, 1, t.seed);
        let mut state = TrainerState::start(spec.kind, spec.config_hash.clone());
        let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"))?;
        let mut dropout_rng = rand_chacha::ChaCha8Rng::seed_from_u64(t.seed.wrapping_add(1));
        let mut resumed = None;
        let resumable = if opts.resume { checkpoint::load_latest_intact(&out, &device)? } else { None };
        if let Some(checkpoint::Resumed { dir, loaded: ck, .. }) = resumable {
            if ck.state.config_hash != spec.config_hash || ck.state.kind != spec.kind {
                return Err(SftError::Setup(format!("{}: written by a different run config; resume with the same config", dir.display())));
            }
            trainable.load_state(&ck.trainable)?;
            opt.load_state(&ck.optimizer, ck.state.optimizer_steps)?;
            dropout_rng.set_word_pos(ck.state.rng_word_pos.parse().unwrap_or(0));
            metrics.truncate(ck.state.metrics_lines)?;
            state = ck.state.clone();
            tracing::info!(step = state.step, "resumed from {}", dir.display());
            resumed = Some(ck);
        } else {
            metrics.truncate(0)?;
        }
        let plan = batcher.plan_epoch(state.epoch);
        let pb = medrl_base::progress::bar(t.max_steps, spec.kind, "steps");
        pb.set_position(state.step);
        let mut run = RlRun {
            device,
            compute,
            out,
            model_dir: spec.model.to_path_buf(),
            tok,
            eos,
            pad,
            train,
            eval,
            rewards: src.rewards,
            accuracy: src.accuracy,
            trainable,
            reference,
            opt,
            schedule,
            state,
            metrics,
            dropout_rng,
            resumed,
            validation_before: None,
            validation_after: None,
            training: t.clone(),
            rollout: spec.rollout.clone(),
            eval_sampling: spec.data.eval_sampling.clone(),
            stop: spec.stop.to_vec(),
            batcher,
            plan,
            pb,
            steps_this_run: 0,
            stop_after: opts.stop_after,
            _lock: lock,
        };
        if run.state.step == 0 {
            run.validation_before = run.validate_now()?;
            if let Some(v) = &run.validation_before {
                let mut line = serde_json::json!({"step": 0});
                v.record(&mut line);
                run.metrics.write(&line)?;
            }
        }
        Ok(run)
    }

    /// Validation of the current policy as `data.eval_sampling` says (None without validation prompts).
    pub fn validate_now(&self) -> Result<Option<Validation>, SftError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let m = self.trainable.view(true, None)?;
        Ok(Some(validate_with(&m, &self.tok, &self.eval, &self.rewards, &self.eval_sampling, self.rollout.max_new_tokens, &self.stop, &self.eos, self.pad, self.accuracy.clone())?))
    }

    /// The prompts of the next step, or `None` when the run is done (or told to stop).
    pub fn next_prompts(&mut self) -> Option<Vec<usize>> {
        if self.state.step >= self.training.max_steps || self.stop_after.is_some_and(|n| self.steps_this_run >= n) {
            return None;
        }
        if self.state.next_micro_batch >= self.plan.len() {
            self.state.epoch += 1;
            self.state.next_micro_batch = 0;
            self.plan = self.batcher.plan_epoch(self.state.epoch);
        }
        let chosen: Vec<usize> = self.plan[self.state.next_micro_batch].iter().flatten().copied().collect();
        self.state.next_micro_batch += 1;
        Some(chosen)
    }

    /// A padded batch of sequences `idx`.
    pub fn batch(&self, seqs: &[TokenizedExample], idx: &[usize]) -> Result<Batch, SftError> {
        let mb: MicroBatch = idx.iter().map(|&i| vec![i]).collect();
        Ok(build_batch(seqs, &mb, self.pad, &self.device)?)
    }

    /// Sample `n` responses per chosen prompt with the current policy (seeded by the step), then
    /// score them on a CPU thread while the device computes old-policy and reference log-probs
    /// and `extra` (the algorithm's own pass over each micro-batch, e.g. PPO's values).
    pub fn rollout(&self, chosen: &[usize], n: usize, micro_batch_size: usize, mut extra: impl FnMut(&Batch) -> Result<Option<Tensor>, SftError>) -> Result<Rollout, SftError> {
        let t_gen = Instant::now();
        let policy = self.trainable.view(true, None)?;
        let mut ids: Vec<Vec<u32>> = Vec::new();
        let mut owners = Vec::new();
        for &i in chosen {
            for _ in 0..n {
                ids.push(self.train[i].ids.clone());
                owners.push(i);
            }
        }
        let stopc = StopConditions { eos_token_ids: self.eos.clone(), stop_strings: self.stop.clone(), tokenizer: Some(&self.tok) };
        let params = SamplingParams { seed: self.training.seed.wrapping_mul(1_000_003).wrapping_add(self.state.step), ..self.rollout.clone() };
        let gens = generate(&policy, &ids, &params, &stopc, self.pad, None)?;
        let gen_s = t_gen.elapsed().as_secs_f64();
        let rollout_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
        let responses: Vec<String> = gens.iter().map(|g| self.tok.decode(&g.tokens, true).unwrap_or_default()).collect();
        let seqs: Vec<TokenizedExample> = ids
            .iter()
            .zip(&gens)
            .map(|(p, g)| {
                let mut all = p.clone();
                all.extend(&g.tokens);
                let mut trained = vec![false; p.len()];
                trained.extend(std::iter::repeat_n(true, g.tokens.len()));
                TokenizedExample { ids: all, trained, truncated: false }
            })
            .collect();
        let chunks = chunks(seqs.len(), micro_batch_size);
        let train = &self.train;
        let (scored, old_lps, ref_lps, extras, logprob_s, reward_s) = std::thread::scope(|s| -> Result<_, SftError> {
            let handle = s.spawn(|| {
                let t0 = Instant::now();
                let batch: Vec<medrl_plugin::Sample> =
                    owners.iter().zip(&responses).map(|(&i, r)| medrl_plugin::sample(&train[i].text, r, &train[i].ground_truth, &train[i].metadata, &train[i].data_source)).collect();
                (self.rewards.score(&batch), t0.elapsed().as_secs_f64())
            });
            let t0 = Instant::now();
            let (mut old, mut refs, mut extras) = (Vec::new(), Vec::new(), Vec::new());
            for chunk in &chunks {
                let b = self.batch(&seqs, chunk)?;
                let lp = medrl_lm::generate::token_logprobs(&policy.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?, &b.targets)?;
                old.push(lp.detach());
                refs.push(match &self.reference {
                    Some(r) => Some(medrl_lm::generate::token_logprobs(&r.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?, &b.targets)?.detach()),
                    None => None,
                });
                extras.push(extra(&b)?);
            }
            let lp_s = t0.elapsed().as_secs_f64();
            let (scored, reward_s) = handle.join().expect("reward thread");
            Ok((scored.map_err(setup_err)?, old, refs, extras, lp_s, reward_s))
        })?;
        Ok(Rollout { owners, seqs, responses, scored, chunks, old_lps, ref_lps, extra: extras, rollout_tokens, gen_s, logprob_s, reward_s })
    }

    /// Count a finished update: step, optimizer steps, tokens.
    pub fn end_update(&mut self, rollout_tokens: usize) {
        self.state.step += 1;
        self.steps_this_run += 1;
        self.state.optimizer_steps = self.opt.steps();
        self.state.tokens_seen += rollout_tokens as u64;
    }

    /// The part of a step's metrics line every RL algorithm writes: rewards (total, per plugin
    /// and component), failures, response length, timings and throughput.
    pub fn rollout_line(&self, r: &Rollout, update_s: f64, step_start: Instant) -> serde_json::Value {
        let vals: Vec<f64> = r.scored.iter().filter_map(|s| s.total).collect();
        let mean_r = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
        let mut comps: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
        for s in &r.scored {
            let plugin_scores = s.by_plugin.iter().filter_map(|(k, v)| v.map(|v| (k, v)));
            for (k, v) in s.components.iter().map(|(k, v)| (k, *v)).chain(plugin_scores) {
                let e = comps.entry(k.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        let mut line = serde_json::json!({
            "step": self.state.step,
            "reward": mean_r,
            "reward_std": (vals.iter().map(|v| (v - mean_r).powi(2)).sum::<f64>() / vals.len().max(1) as f64).sqrt(),
            "lr": self.schedule.lr_at(self.state.step.saturating_sub(1)),
            "response_len": r.rollout_tokens as f64 / r.seqs.len().max(1) as f64,
            "dropped": r.scored.iter().filter(|s| s.total.is_none()).count(),
            "reward_failures": r.scored.iter().map(|s| s.failures.values().filter(|f| f.as_str() != "not_applicable").count()).sum::<usize>(),
            "time_generate_s": r.gen_s,
            "time_logprob_s": r.logprob_s,
            "time_reward_s": r.reward_s,
            "time_update_s": update_s,
            "time_step_s": step_start.elapsed().as_secs_f64(),
            "rollout_tokens_per_s": r.rollout_tokens as f64 / r.gen_s.max(1e-9),
            "memory_mb": medrl_nn::device::memory_mb(&self.device),
            "skipped_steps": self.state.skipped_steps,
        });
        for (k, (sum, n)) in comps {
            line[format!("reward/{k}")] = (sum / n.max(1) as f64).into();
        }
        line
    }

    /// Finish a step: validation when due (added to `line`), the metrics line, and a checkpoint
    /// when due. `extra` adds the algorithm's own tensors to the checkpoint's trainable and
    /// optimizer files (PPO: the critic, under `critic/`); `plots` redraws the run's charts.
    pub fn finish_step(
        &mut self,
        mut line: serde_json::Value,
        extra: impl FnOnce() -> (HashMap<String, Tensor>, HashMap<String, Tensor>),
        plots: fn(&Path) -> Result<(), SftError>,
    ) -> Result<(), SftError> {
        let t = &self.training;
        let step = self.state.step;
        if step == t.max_steps || (t.eval_every > 0 && step % t.eval_every == 0) {
            if let Some(v) = self.validate_now()? {
                v.record(&mut line);
                self.validation_after = Some(v);
            }
        }
        self.metrics.write(&line)?;
        if let Some(r) = line.get("reward").and_then(|v| v.as_f64()) {
            self.pb.set_message(format!("{} reward {r:.3}", self.state.kind));
        }
        self.pb.inc(1);
        let t = &self.training;
        if step == t.max_steps || (t.save_every > 0 && step % t.save_every == 0) {
            self.state.rng_word_pos = self.dropout_rng.get_word_pos().to_string();
            self.state.metrics_lines = self.metrics.lines();
            let (mut tr, mut op) = (self.trainable.state(), self.opt.state().0);
            let (xt, xo) = extra();
            tr.extend(xt);
            op.extend(xo);
            checkpoint::save(&self.out, &self.state, &tr, &op, t.keep_last)?;
            plots(&self.out)?;
        }
        Ok(())
    }

    /// After the loop: the final model (and LoRA adapter) when the run reached `max_steps`.
    /// Returns the final model folder.
    pub fn finish(&mut self) -> Result<PathBuf, SftError> {
        self.pb.finish_and_clear();
        let (final_dir, adapter_dir) = peft::run_outputs(&self.out);
        if self.state.step >= self.training.max_steps {
            let dtype = medrl_lm::model::parse_dtype(&self.training.export_dtype, &Device::Cpu).map_err(SftError::Setup)?;
            super::sft::export(&self.trainable, &self.model_dir, &final_dir, Some(&adapter_dir), dtype)?;
        }
        // A resumed run validated only part of the time (never, when resumed after its last
        // step); the run's records hold the rest.
        if self.validation_before.is_none() || self.validation_after.is_none() {
            let rows = super::metrics::read_metrics(&self.out)?;
            let (before, after) = super::metrics::before_and_after(&rows, Validation::from_record);
            self.validation_before = self.validation_before.take().or(before);
            self.validation_after = self.validation_after.take().or(after);
        }
        Ok(final_dir)
    }
}

/// Tensors of `map` whose names start with `prefix`, with the prefix removed (the algorithm's
/// own part of a checkpoint).
pub fn strip_prefix(map: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone()))).collect()
}

/// `map` with every name prefixed.
pub fn add_prefix(map: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect()
}

/// Draw `charts` (file, title, y label, [(series name, metrics key)]) from `metrics.jsonl`
/// into `run_dir/plots/`.
pub fn write_charts(run_dir: &Path, charts: &[(&str, &str, &str, &[(&'static str, &str)])]) -> Result<(), SftError> {
    use medrl_base::plot::{line_chart_svg, Series};
    let rows = super::metrics::read_metrics(run_dir)?;
    for (file, title, ylabel, keys) in charts {
        let series: Vec<Series> = keys
            .iter()
            .map(|(name, key)| Series { name, points: rows.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(*key)?.as_f64()?))).collect() })
            .collect();
        let svg = line_chart_svg(title, "step", ylabel, &series);
        let p = run_dir.join("plots").join(file);
        medrl_base::fsutil::write_atomic(&p, svg.as_bytes()).map_err(|e| SftError::Io { path: p.clone(), source: e })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_assistant_turn_becomes_the_reference_and_system_is_added() {
        let ex = Example {
            messages: vec![medrl_lm::tokenizer::ChatMessage::user("q"), medrl_lm::tokenizer::ChatMessage::assistant("a")],
            ground_truth: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            data_source: String::new(),
        };
        let p = prompt_example(ex, Some("sys"));
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[0].role, "system");
        assert_eq!(p.ground_truth, serde_json::json!("a"));
    }

    #[test]
    fn data_needs_train_or_task() {
        let d: RlData = serde_yaml::from_str("train: []").unwrap();
        assert!(d.validate().is_err());
        let d: RlData = serde_yaml::from_str("task: hcc").unwrap();
        assert!(d.validate().is_ok() && d.eval.is_none());
        let d: RlData = serde_yaml::from_str("task: hcc\neval: []").unwrap();
        assert_eq!(d.eval.map(|e| e.len()), Some(0));
    }

    #[test]
    fn eval_sampling_defaults_to_greedy_and_bad_values_name_their_key() {
        let d: RlData = serde_yaml::from_str("train: [x]").unwrap();
        assert_eq!(d.eval_sampling, EvalSampling::default());
        assert_eq!(d.eval_sampling.params(7).temperature, 0.0);
        let bad = |yaml: &str| serde_yaml::from_str::<RlData>(yaml).unwrap().validate().unwrap_err().0;
        assert_eq!(bad("train: [x]\neval_sampling: {n: 0}"), "data.eval_sampling.n");
        assert_eq!(bad("train: [x]\neval_sampling: {temperature: -1}"), "data.eval_sampling.temperature");
        assert_eq!(bad("train: [x]\neval_sampling: {top_p: 0}"), "data.eval_sampling.top_p");
        assert!(serde_yaml::from_str::<RlData>("train: [x]\neval_sampling: {m: 1}").is_err());
    }

    #[test]
    fn reward_deadlines_and_weights_are_checked() {
        let data: RlData = serde_yaml::from_str("train: [x]").unwrap();
        let check = |yaml: &str| {
            let r: Vec<RewardSpec> = serde_yaml::from_str(yaml).unwrap();
            validate_common("cpu", "f32", &data, &r, &RlTraining::default(), None, &default_rollout()).err().map(|e| e.0)
        };
        assert_eq!(check("[{plugin: a.wasm}]"), None);
        assert_eq!(check("[{plugin: a.wasm}, {plugin: b.wasm, timeout_s: 0}]").as_deref(), Some("rewards[1].timeout_s"));
        assert_eq!(check("[{plugin: a.wasm, timeout_s: .inf}]").as_deref(), Some("rewards[0].timeout_s"));
        assert_eq!(check("[{plugin: a.wasm, weight: .nan}]").as_deref(), Some("rewards[0].weight"));
    }
}
