//! The configuration every RL algorithm shares: one [`RlConfig`] whose `algorithm:` section is
//! the algorithm's own ([`AlgorithmConfig`]). Its keys are the YAML users write (`medrl schema
//! grpo|ppo|rloo`), so the shared keys cannot drift between algorithms.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::agent::MultiTurn;
use crate::rewards::RewardSpec;
use crate::session::NonFinitePolicy;
use crate::trainable::LoraConfig;
use crate::{AdamWConfig, ScheduleKind};
use medrl_base::config::Validate;
use medrl_data::registry::DatasetRef;
use medrl_data::BadRowPolicy;
use medrl_lm::generate::{EngineConfig, SamplingParams};
use medrl_lm::model::{ActivationCheckpointing, LayerBackward};

fn auto() -> String {
    "auto".into()
}

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

/// Optimization settings of an RL run.
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
    /// `off`, `every_layer` or `{every: k}`: decoder layers (policy and critic) whose
    /// activations are recomputed in the update's backward instead of stored.
    #[serde(skip_serializing_if = "ActivationCheckpointing::is_off")]
    pub activation_checkpointing: ActivationCheckpointing,
    /// `auto` (explicit on CUDA, autograd on CPU), `autograd` or `explicit`: how the decoder
    /// layers' gradients are computed (see docs/sft.md, "Layer backward"). Speed only: a run
    /// may resume with it switched.
    #[serde(skip_serializing_if = "LayerBackward::is_auto")]
    pub layer_backward: LayerBackward,
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
            activation_checkpointing: ActivationCheckpointing::Off,
            layer_backward: LayerBackward::Auto,
        }
    }
}

pub fn default_rollout() -> SamplingParams {
    SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, max_new_tokens: 128, seed: 0 }
}


/// The `algorithm:` section of an [`RlConfig`]: what the shared driver needs to know of it.
pub trait AlgorithmConfig: Clone + Default + std::fmt::Debug + Serialize + DeserializeOwned + JsonSchema {
    /// Whether the algorithm trains a critic (then the config's `critic:` key applies).
    const HAS_CRITIC: bool = false;
    /// Responses sampled per prompt.
    fn samples_per_prompt(&self) -> usize;
    /// Prompts per step.
    fn prompts_per_step(&self) -> usize;
    /// Sequences per forward pass (rollout log-probs and the update's micro-batches).
    fn micro_batch_size(&self) -> usize;
    /// Whether the frozen starting model is loaded as a KL reference.
    fn needs_reference(&self) -> bool;
    /// Ranges and cross-field rules; keys are full config paths (`algorithm.n`).
    fn validate(&self) -> Result<(), (String, String)>;
    /// DAPO's dynamic sampling, when the algorithm offers it and the config turns it on.
    fn dynamic_sampling(&self) -> Option<DynamicSampling> {
        None
    }
    /// Dynamic batch size: forward passes of at most this many tokens (sequences x longest)
    /// instead of `micro_batch_size` sequences, when the algorithm offers it and it is set.
    fn micro_batch_tokens(&self) -> Option<usize> {
        None
    }
}

/// DAPO's dynamic sampling (Yu et al. 2025, section 3.2): a prompt whose responses all got the
/// same reward has zero group advantage and trains nothing, so such groups are dropped and more
/// prompts are sampled (whole `prompts_per_step` batches, the next ones of the prompt plan)
/// until `prompts_per_step` groups with reward spread are in hand or `max_rounds` batches were
/// drawn; then the step trains on what it has (metrics `sampling_rounds`, `groups_kept`,
/// `groups_filtered`). Cost: up to `max_rounds` times the generation and scoring of a step;
/// the epochs over the prompts advance faster by the same factor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamicSampling {
    /// Prompt batches drawn per step at most (VERL's `max_num_gen_batches`).
    pub max_rounds: usize,
}

/// The value model of algorithms with a critic (PPO).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CriticConfig {
    /// Decoder of the value model (TRL's value model path). Default: a copy of `model`. It must
    /// use the policy's tokenizer (it reads the policy's token ids).
    pub model: Option<PathBuf>,
    /// LoRA on the critic's decoder (None: full fine-tuning of the critic).
    pub lora: Option<LoraConfig>,
    /// Critic learning rate (default: training.lr), on the same schedule.
    pub lr: Option<f64>,
    /// Standard deviation of the value head's initial weights (0: zero, so the first values
    /// are all 0 and the first advantages are the plain returns).
    pub head_init_std: f64,
}

impl Default for CriticConfig {
    fn default() -> Self {
        Self { model: None, lora: None, lr: None, head_init_std: 0.0 }
    }
}

/// `medrl grpo|ppo|rloo --config FILE.yaml`: one run of an RL algorithm.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, bound = "A: AlgorithmConfig")]
pub struct RlConfig<A: AlgorithmConfig> {
    pub model: PathBuf,
    pub output_dir: PathBuf,
    #[serde(default = "auto")]
    pub device: String,
    #[serde(default = "auto")]
    pub dtype: String,
    pub data: RlData,
    /// Reward plugins (default with `data.task`: the task's rewards, under the `drop` policy).
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    /// The `search` capability granted to the reward plugins (study search): `{corpus: FILE}`,
    /// `{index: DIR}` or `{pubmed: {email: ...}}`, paths relative to the working directory
    /// (docs/search.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<medrl_search::SearchGrant>,
    /// Validation accuracy: the fraction of responses whose total reward reaches this (default
    /// with `data.task`: the task's accuracy component and threshold).
    #[serde(default)]
    pub accuracy_threshold: Option<f64>,
    /// Sampling for rollouts (`seed` is ignored: rollout seeds derive from training.seed and the step).
    #[serde(default = "default_rollout")]
    pub rollout: SamplingParams,
    #[serde(default)]
    pub stop: Vec<String>,
    /// The rollout engine's cache and step sizes (docs/grpo.md); they change speed and memory,
    /// never the samples, so a resumed run may change them.
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub algorithm: A,
    /// The value model (PPO only; default: a copy of `model` with a zero value head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critic: Option<CriticConfig>,
    #[serde(default)]
    pub training: RlTraining,
    /// LoRA for the policy (None: full fine-tuning).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Tool plugins the policy may call during rollouts (API 0.3.0 `tool` components): with any,
    /// rollouts are multi-turn conversations (docs/grpo.md, "Tools and multi-turn rollouts").
    /// They get the run's capability grants (`search:`, the judge).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<medrl_reward::ToolConfig>,
    /// Multi-turn rollouts: turn and token budgets, the tool-call format (used when the run
    /// has tools; docs/grpo.md, "Tools and multi-turn rollouts").
    #[serde(default, skip_serializing_if = "MultiTurn::is_default")]
    pub multi_turn: MultiTurn,
    /// One-step asynchronous training: the rollout of step k+1 runs on its own thread, from
    /// a copy of the weights before update k, while update k runs; the clipped ratio against
    /// that behavior policy's log-probs is the off-policy correction. Costs one copy of the
    /// trainable weights in the compute dtype (LoRA: the adapters) in memory and in every
    /// checkpoint, which keeps it so a resumed run retraces an uninterrupted one. See
    /// docs/grpo.md ("Asynchronous training").
    #[serde(default, rename = "async", skip_serializing_if = "std::ops::Not::not")]
    pub async_rollout: bool,
}

impl<A: AlgorithmConfig> RlConfig<A> {
    /// The hash a resumed run must match: the config without the keys a resumed run may change
    /// (evaluation and checkpoint cadence, the step budget).
    pub fn resume_hash(&self) -> String {
        let mut c = self.clone();
        c.training.eval_every = 0;
        c.training.save_every = 0;
        c.training.keep_last = 0;
        c.training.max_steps = 0;
        c.engine = EngineConfig::default();
        c.training.activation_checkpointing = ActivationCheckpointing::Off;
        c.training.layer_backward = LayerBackward::Auto;
        crate::session::hash_json(&c)
    }

    /// The critic settings (defaults when the key is absent).
    pub fn critic(&self) -> CriticConfig {
        self.critic.clone().unwrap_or_default()
    }
}

impl<A: AlgorithmConfig> Validate for RlConfig<A> {
    fn validate(&self) -> Result<(), (String, String)> {
        let (device, dtype, data, rewards, training, lora, rollout) = (&self.device, &self.dtype, &self.data, &self.rewards, &self.training, self.lora.as_ref(), &self.rollout);
    medrl_base::config::check_device_dtype(device, dtype)?;
        rollout.validate().map_err(|(k, m)| (format!("rollout.{k}"), m))?;
        self.engine.validate().map_err(|(k, m)| (format!("engine.{k}"), m))?;
        data.validate()?;
        if rewards.is_empty() && data.task.is_none() {
            return Err(("rewards".into(), "at least one reward plugin is needed (or a data.task that has rewards)".into()));
        }
        for (i, r) in rewards.iter().enumerate() {
            r.deadline().map_err(|e| (format!("rewards[{i}].timeout_s"), e.to_string()))?;
            if !r.weight.is_finite() {
                return Err((format!("rewards[{i}].weight"), format!("{} must be finite", r.weight)));
            }
        }
        training.activation_checkpointing.validate().map_err(|(k, m)| (format!("training.activation_checkpointing.{k}"), m))?;
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
        self.algorithm.validate()?;
        self.multi_turn.validate()?;
        for (i, t) in self.tools.iter().enumerate() {
            t.deadline().map_err(|e| (format!("tools[{i}].timeout_s"), e.to_string()))?;
        }
        match &self.critic {
            Some(_) if !A::HAS_CRITIC => return Err(("critic".into(), "this algorithm trains no critic; remove the key (PPO has one)".into())),
            Some(c) => {
                if let Some(l) = &c.lora {
                    l.validate().map_err(|(k, m)| (format!("critic.lora.{k}"), m))?;
                }
                if !(c.head_init_std >= 0.0 && c.head_init_std.is_finite()) || c.lr.is_some_and(|l| !(l > 0.0 && l.is_finite())) {
                    return Err(("critic".into(), "head_init_std must be >= 0 and lr > 0".into()));
                }
            }
            None => {}
        }
        if let Some(g) = &self.search {
            g.check().map_err(|e| ("search".to_string(), e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut cfg: RlConfig<crate::rl::algos::grpo::GrpoAlgo> = serde_yaml::from_str("model: m\noutput_dir: o\ndata: {train: [x]}").unwrap();
            cfg.rewards = r;
            assert_eq!(cfg.data.train.len(), data.train.len());
            cfg.validate().err().map(|e| e.0)
        };
        assert_eq!(check("[{plugin: a.wasm}]"), None);
        assert_eq!(check("[{plugin: a.wasm}, {plugin: b.wasm, timeout_s: 0}]").as_deref(), Some("rewards[1].timeout_s"));
        assert_eq!(check("[{plugin: a.wasm, timeout_s: .inf}]").as_deref(), Some("rewards[0].timeout_s"));
        assert_eq!(check("[{plugin: a.wasm, weight: .nan}]").as_deref(), Some("rewards[0].weight"));
    }

    #[test]
    fn engine_settings_are_checked_and_a_resumed_run_may_change_them() {
        let cfg = |extra: &str| -> RlConfig<crate::rl::algos::grpo::GrpoAlgo> {
            serde_yaml::from_str(&format!("model: m\noutput_dir: o\ndata: {{train: [x]}}\nrewards: [{{plugin: a.wasm}}]\n{extra}")).unwrap()
        };
        let base = cfg("");
        assert_eq!(base.engine, EngineConfig::default());
        let small = cfg("engine: {block_size: 32, max_seqs: 64, memory_fraction: 0.5, num_blocks: 100}");
        assert!(small.validate().is_ok());
        assert_eq!(small.resume_hash(), base.resume_hash(), "engine settings change speed and memory, not samples");
        assert_ne!(cfg("rollout: {max_new_tokens: 7}").resume_hash(), base.resume_hash());
        for (yaml, key) in [
            ("engine: {memory_fraction: 0}", "engine.memory_fraction"),
            ("engine: {block_size: 0}", "engine.block_size"),
            ("engine: {max_seqs: 0}", "engine.max_seqs"),
            ("engine: {max_tokens_per_step: 0}", "engine.max_tokens_per_step"),
            ("engine: {num_blocks: 0}", "engine.num_blocks"),
        ] {
            assert_eq!(cfg(yaml).validate().unwrap_err().0, key, "{yaml}");
        }
        assert!(serde_yaml::from_str::<RlConfig<crate::rl::algos::grpo::GrpoAlgo>>("model: m\noutput_dir: o\ndata: {train: [x]}\nengine: {blocks: 3}").is_err());
    }
}
