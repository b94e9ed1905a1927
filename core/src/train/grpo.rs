//! GRPO: group-relative policy optimization with sandboxed plugin rewards.
//!
//! A step: take `prompts_per_step` prompts, sample `n` responses each with the current policy
//! (the same batched, KV-cached generation as `medrl generate`), score them with the reward
//! plugins (on CPU threads, while the device computes the old-policy and reference log-probs),
//! turn rewards into advantages relative to each prompt's group, then run `update_epochs` passes
//! of the clipped surrogate loss (separate low/high clip, as DAPO) with an optional KL penalty to
//! the frozen starting model (k1, k2 or k3 estimators) and entropy bonus.
//!
//! Rollout seeds are derived from `(seed, step)`, so a resumed run samples the same responses
//! as an uninterrupted one; with the checkpointed weights, optimizer and data position the CPU
//! curve after resume is identical.

use candle_core::{DType, Tensor, D};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::checkpoint::{self, TrainerState};
use super::metrics::MetricsLog;
use super::rewards::{load_rewards, RewardSpec};
use crate::eval::run::{evaluate, AccuracySpec, EvalOptions, MetricSettings, Rewards};
use super::sft::{SftError, NonFinitePolicy};
use super::trainable::{LoraConfig, Mode, Trainable};
use super::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, TrainError};
use crate::config::Validate;
use crate::data::batch::{build_batch, Batcher, BatchingConfig};
use crate::data::registry::{resolve, DatasetRef};
use crate::data::{load_examples, BadRowPolicy, Example, Origin, TokenizedExample};
use crate::generate::{generate, SamplingParams, StopConditions};
use crate::model::{load_model_dir, peft, CausalLm};
use crate::tokenizer::TextTokenizer;

fn auto() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageNorm {
    /// (r - mean) / std within each prompt's group (GRPO).
    #[default]
    Group,
    /// (r - group mean) / std over the whole batch.
    Batch,
    /// r - group mean (Dr. GRPO).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// log(pi/ref).
    K1,
    /// 0.5 * log(pi/ref)^2.
    K2,
    /// ref/pi - log(ref/pi) - 1 (VERL's `low_var_kl`).
    #[default]
    K3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossAgg {
    /// Mean over every response token of the step.
    #[default]
    TokenMean,
    /// Mean over sequences of each sequence's token mean.
    SeqMeanTokenMean,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoAlgo {
    /// Responses per prompt (VERL's `rollout.n`).
    pub n: usize,
    pub prompts_per_step: usize,
    pub update_epochs: usize,
    pub micro_batch_size: usize,
    pub clip_low: f64,
    pub clip_high: f64,
    pub advantage: AdvantageNorm,
    /// KL coefficient (0 disables the reference model).
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// Put the KL penalty into the reward instead of the loss.
    pub kl_in_reward: bool,
    pub entropy_coef: f64,
    pub loss_agg: LossAgg,
}

impl Default for GrpoAlgo {
    fn default() -> Self {
        Self {
            n: 4,
            prompts_per_step: 8,
            update_epochs: 1,
            micro_batch_size: 8,
            clip_low: 0.2,
            clip_high: 0.28,
            advantage: AdvantageNorm::Group,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            kl_in_reward: false,
            entropy_coef: 0.0,
            loss_agg: LossAgg::TokenMean,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpoData {
    #[serde(default)]
    pub dataset_dir: Option<PathBuf>,
    pub train: Vec<DatasetRef>,
    #[serde(default)]
    pub eval: Vec<DatasetRef>,
    /// A system prompt for examples without one.
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_prompt_len")]
    pub max_prompt_len: usize,
    #[serde(default)]
    pub on_bad_row: BadRowPolicy,
    /// Validation prompts used (0 = all).
    #[serde(default)]
    pub eval_limit: usize,
}

fn default_prompt_len() -> usize {
    512
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoTraining {
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

impl Default for GrpoTraining {
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

/// `medrl grpo --config FILE.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    pub model: PathBuf,
    pub output_dir: PathBuf,
    #[serde(default = "auto")]
    pub device: String,
    #[serde(default = "auto")]
    pub dtype: String,
    pub data: GrpoData,
    pub rewards: Vec<RewardSpec>,
    /// The `search` capability granted to the reward plugins (study search): `{corpus: FILE}`,
    /// `{index: DIR}` or `{pubmed: {email: ...}}`, paths relative to the working directory
    /// (docs/search.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<crate::search::SearchGrant>,
    /// Validation accuracy: the fraction of responses whose total reward reaches this.
    #[serde(default)]
    pub accuracy_threshold: Option<f64>,
    /// Sampling for rollouts (`seed` is ignored: rollout seeds derive from training.seed and the step).
    #[serde(default = "default_rollout")]
    pub rollout: SamplingParams,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub algorithm: GrpoAlgo,
    #[serde(default)]
    pub training: GrpoTraining,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

fn default_rollout() -> SamplingParams {
    SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, max_new_tokens: 128, seed: 0 }
}

impl Validate for GrpoConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        self.rollout.validate().map_err(|(k, m)| (format!("rollout.{k}"), m))?;
        let a = &self.algorithm;
        if a.n < 2 {
            return Err(("algorithm.n".into(), "GRPO needs at least 2 responses per prompt".into()));
        }
        if a.prompts_per_step == 0 || a.micro_batch_size == 0 || a.update_epochs == 0 {
            return Err(("algorithm".into(), "prompts_per_step, micro_batch_size and update_epochs must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&a.clip_low) || a.clip_high < 0.0 {
            return Err(("algorithm.clip_low".into(), "clip_low must be in [0, 1) and clip_high >= 0".into()));
        }
        if self.rewards.is_empty() {
            return Err(("rewards".into(), "at least one reward plugin is needed".into()));
        }
        if self.training.max_steps == 0 {
            return Err(("training.max_steps".into(), "must be at least 1".into()));
        }
        if let Some(g) = &self.search {
            g.check().map_err(|m| ("search".to_string(), m))?;
        }
        if let Some(l) = &self.lora {
            l.validate().map_err(|(k, m)| (format!("lora.{k}"), m))?;
        }
        Ok(())
    }
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
            ex.messages.insert(0, crate::tokenizer::ChatMessage::system(s));
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

/// Group-relative advantages. `rewards[i]` is `None` for dropped samples (advantage 0, and
/// excluded from the group statistics). Groups are consecutive runs of `n`.
pub fn advantages(rewards: &[Option<f64>], n: usize, norm: AdvantageNorm) -> Vec<f64> {
    let eps = 1e-6;
    let mut centered = vec![0.0; rewards.len()];
    let mut group_std = vec![0.0; rewards.len()];
    for (g, chunk) in rewards.chunks(n).enumerate() {
        let vals: Vec<f64> = chunk.iter().flatten().copied().collect();
        if vals.is_empty() {
            continue;
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        // Unbiased std, as torch.std in VERL's GRPO.
        let var = if vals.len() > 1 { vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (vals.len() - 1) as f64 } else { 0.0 };
        for (i, r) in chunk.iter().enumerate() {
            if let Some(r) = r {
                centered[g * n + i] = r - mean;
                group_std[g * n + i] = var.sqrt();
            }
        }
    }
    match norm {
        AdvantageNorm::Group => centered.iter().zip(&group_std).map(|(c, s)| c / (s + eps)).collect(),
        AdvantageNorm::None => centered,
        AdvantageNorm::Batch => {
            let vals: Vec<f64> = centered.iter().zip(rewards).filter(|(_, r)| r.is_some()).map(|(c, _)| *c).collect();
            let m = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
            let sd = (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len().max(2) - 1) as f64).sqrt();
            centered.iter().map(|c| c / (sd + eps)).collect()
        }
    }
}

/// Per-token KL estimate between the policy and the reference, from their log-probs.
pub fn kl_term(lp: &Tensor, ref_lp: &Tensor, est: KlEstimator) -> candle_core::Result<Tensor> {
    let log_ratio = (lp - ref_lp)?;
    match est {
        KlEstimator::K1 => Ok(log_ratio),
        KlEstimator::K2 => log_ratio.sqr()? * 0.5,
        KlEstimator::K3 => {
            let d = log_ratio.neg()?;
            (d.exp()? - d)? - 1.0
        }
    }
}

/// Results of validating a policy on held-out prompts.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub mean_reward: f64,
    pub accuracy: Option<f64>,
    pub scored: usize,
    pub dropped: usize,
}

/// Greedy responses to the validation examples, scored through `eval::evaluate` (the code path
/// of `medrl eval`). `threshold`: accuracy is the share of responses whose plugin score reaches it.
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
    let settings = MetricSettings {
        accuracy: threshold.map(|t| AccuracySpec { plugin: None, component: "score".into(), threshold: t }),
        ..Default::default()
    };
    let opts = EvalOptions {
        sampling: SamplingParams { temperature: 0.0, max_new_tokens, ..Default::default() },
        n: 1,
        batch_size: 64,
        eos_token_ids: eos.to_vec(),
        pad_token_id: pad,
        stop_strings: stop.to_vec(),
        progress: false,
    };
    let (m, preds) = evaluate(model, tok, examples, rewards, &settings, &opts).map_err(setup)?;
    let scored = preds.iter().filter(|p| p.reward.total.is_some()).count();
    Ok(Validation {
        mean_reward: m.reward.as_ref().map(|s| s.mean).unwrap_or(0.0),
        accuracy: m.accuracy,
        scored,
        dropped: preds.len() - scored,
    })
}

/// What a finished run produced.
#[derive(Debug, Clone, Serialize)]
pub struct GrpoOutcome {
    pub output_dir: PathBuf,
    pub final_model: PathBuf,
    pub steps: u64,
    pub validation_before: Option<Validation>,
    pub validation_after: Option<Validation>,
}

fn hash_config(cfg: &GrpoConfig) -> String {
    use sha2::Digest;
    let mut c = cfg.clone();
    c.training.eval_every = 0;
    c.training.save_every = 0;
    c.training.keep_last = 0;
    c.training.max_steps = 0;
    format!("{:x}", sha2::Sha256::digest(serde_json::to_vec(&c).expect("serializes")))[..16].to_string()
}

fn setup<E: std::fmt::Display>(e: E) -> SftError {
    SftError::Setup(e.to_string())
}

/// Run GRPO. `grants` are the capabilities (judge, search) the reward plugins may use.
pub fn run(cfg: &GrpoConfig, grants: crate::plugin::Grants, opts: &super::sft::RunOptions) -> Result<GrpoOutcome, SftError> {
    let device = crate::model::parse_device(&cfg.device).map_err(SftError::Setup)?;
    let compute = crate::model::parse_dtype(&cfg.dtype, &device).map_err(SftError::Setup)?;
    let out = &cfg.output_dir;
    let existing = checkpoint::latest(out);
    if existing.is_some() && !opts.resume {
        return Err(SftError::Setup(format!("{} already has checkpoints; pass --resume or choose another output_dir", out.display())));
    }
    std::fs::create_dir_all(out).map_err(|e| SftError::Io { path: out.clone(), source: e })?;
    crate::fsutil::write_atomic(&out.join("config.yaml"), serde_yaml::to_string(cfg).expect("serializes").as_bytes())
        .map_err(|e| SftError::Io { path: out.join("config.yaml"), source: e })?;

    let loaded = load_model_dir(&cfg.model, &device, DType::F32)?;
    let tok = loaded.tokenizer;
    let eos = loaded.generation.eos_token_ids.clone();
    let pad = loaded.generation.pad_token_id.or(eos.first().copied()).unwrap_or(0);
    let load = |refs: &[DatasetRef]| -> Result<Vec<(Origin, Example)>, SftError> {
        let mut v = Vec::new();
        for r in refs {
            let spec = resolve(r, cfg.data.dataset_dir.as_deref())?;
            v.extend(load_examples(&spec, cfg.data.on_bad_row)?.0);
        }
        Ok(v)
    };
    let train_examples = load(&cfg.data.train)?.into_iter().map(|(_, e)| e).collect();
    let (train, too_long) = prompts_from_examples(&tok, train_examples, cfg.data.system.as_deref(), cfg.data.max_prompt_len)?;
    let mut eval: Vec<(Origin, Example)> =
        load(&cfg.data.eval)?.into_iter().map(|(o, e)| (o, prompt_example(e, cfg.data.system.as_deref()))).collect();
    if cfg.data.eval_limit > 0 {
        eval.truncate(cfg.data.eval_limit);
    }
    if train.is_empty() {
        return Err(SftError::Setup("no training prompts".into()));
    }
    tracing::info!(train = train.len(), eval = eval.len(), too_long, "prompts ready");
    let rewards = load_rewards(&cfg.rewards, &grants).map_err(setup)?;

    let mode = match &cfg.lora {
        Some(l) => Mode::Lora { cfg: l.clone(), targets: l.targets().map_err(SftError::Setup)? },
        None => Mode::Full,
    };
    let t = &cfg.training;
    let a = &cfg.algorithm;
    let reference = if a.kl_coef > 0.0 { Some(load_model_dir(&cfg.model, &device, compute)?.model) } else { None };
    let trainable = Trainable::new(loaded.model, mode, compute, t.seed)?;
    let mut opt = AdamW::new(trainable.params().to_vec(), t.optimizer.clone())?;
    let schedule = LrSchedule { peak_lr: t.lr, warmup_steps: t.warmup_steps, total_steps: t.max_steps, kind: t.schedule, min_lr_ratio: 0.0 };
    // Prompt order: epochs over the training prompts, `prompts_per_step` at a time.
    let batcher = Batcher::new(vec![1; train.len()], BatchingConfig { micro_batch_size: a.prompts_per_step, packing: false, group_by_length: false, shuffle: true }, 1, t.seed);
    let config_hash = hash_config(cfg);
    let mut state = TrainerState {
        step: 0,
        epoch: 0,
        next_micro_batch: 0,
        rng_word_pos: "0".into(),
        optimizer_steps: 0,
        metrics_lines: 0,
        skipped_steps: 0,
        tokens_seen: 0,
        kind: "grpo".into(),
        config_hash: config_hash.clone(),
    };
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"))?;
    let mut dropout_rng = rand_chacha::ChaCha8Rng::seed_from_u64(t.seed.wrapping_add(1));
    if let (true, Some(dir)) = (opts.resume, &existing) {
        let ck = checkpoint::load(dir, &device)?;
        if ck.state.config_hash != config_hash || ck.state.kind != "grpo" {
            return Err(SftError::Setup(format!("{}: written by a different run config; resume with the same config", dir.display())));
        }
        trainable.load_state(&ck.trainable)?;
        opt.load_state(&ck.optimizer, ck.state.optimizer_steps)?;
        dropout_rng.set_word_pos(ck.state.rng_word_pos.parse().unwrap_or(0));
        metrics.truncate(ck.state.metrics_lines)?;
        state = ck.state;
        tracing::info!(step = state.step, "resumed from {}", dir.display());
    } else {
        metrics.truncate(0)?;
    }
    let do_validate = |tr: &Trainable| -> Result<Option<Validation>, SftError> {
        if eval.is_empty() {
            return Ok(None);
        }
        let m = tr.view(true, None)?;
        Ok(Some(validate(&m, &tok, &eval, &rewards, cfg.rollout.max_new_tokens, &cfg.stop, &eos, pad, cfg.accuracy_threshold)?))
    };
    let mut validation_before = None;
    if state.step == 0 {
        validation_before = do_validate(&trainable)?;
        if let Some(v) = &validation_before {
            metrics.write(&serde_json::json!({"step": 0, "val_reward": v.mean_reward, "val_accuracy": v.accuracy}))?;
        }
    }
    let mut plan = batcher.plan_epoch(state.epoch);
    let pb = crate::progress::bar(t.max_steps, "grpo", "steps");
    pb.set_position(state.step);
    let mut validation_after = None;
    let mut steps_this_run = 0;
    let stopc = StopConditions { eos_token_ids: eos.clone(), stop_strings: cfg.stop.clone(), tokenizer: Some(&tok) };
    while state.step < t.max_steps {
        if opts.stop_after.is_some_and(|n| steps_this_run >= n) {
            break;
        }
        let step_start = Instant::now();
        if state.next_micro_batch >= plan.len() {
            state.epoch += 1;
            state.next_micro_batch = 0;
            plan = batcher.plan_epoch(state.epoch);
        }
        let chosen: Vec<usize> = plan[state.next_micro_batch].iter().flatten().copied().collect();
        state.next_micro_batch += 1;

        // 1. Rollout: n responses per prompt, from the current policy.
        let t_gen = Instant::now();
        let policy = trainable.view(true, None)?;
        let mut ids: Vec<Vec<u32>> = Vec::new();
        let mut owners = Vec::new();
        for &i in &chosen {
            for _ in 0..a.n {
                ids.push(train[i].ids.clone());
                owners.push(i);
            }
        }
        let params = SamplingParams { seed: t.seed.wrapping_mul(1_000_003).wrapping_add(state.step), ..cfg.rollout.clone() };
        let gens = generate(&policy, &ids, &params, &stopc, pad, None)?;
        let gen_s = t_gen.elapsed().as_secs_f64();
        let rollout_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
        let responses: Vec<String> = gens.iter().map(|g| tok.decode(&g.tokens, true).unwrap_or_default()).collect();

        // 2. Rewards on CPU threads while the device computes old-policy and reference log-probs.
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
        let (scored, (old_lps, ref_lps, logprob_s), reward_s) = std::thread::scope(|s| -> Result<_, SftError> {
            let handle = s.spawn(|| {
                let t0 = Instant::now();
                let batch: Vec<crate::plugin::Sample> = owners
                    .iter()
                    .zip(&responses)
                    .map(|(&i, r)| crate::plugin::sample(&train[i].text, r, &train[i].ground_truth, &train[i].metadata, &train[i].data_source))
                    .collect();
                (rewards.score(&batch), t0.elapsed().as_secs_f64())
            });
            let t0 = Instant::now();
            let mut old = Vec::new();
            let mut refs = Vec::new();
            for chunk in (0..seqs.len()).collect::<Vec<_>>().chunks(a.micro_batch_size) {
                let mb: Vec<Vec<usize>> = chunk.iter().map(|&i| vec![i]).collect();
                let b = build_batch(&seqs, &mb, pad, &device)?;
                let lp = crate::generate::token_logprobs(&policy.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?, &b.targets)?;
                old.push(lp.detach());
                if let Some(r) = &reference {
                    let rl = crate::generate::token_logprobs(&r.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?, &b.targets)?;
                    refs.push(Some(rl.detach()));
                } else {
                    refs.push(None);
                }
            }
            let lp_s = t0.elapsed().as_secs_f64();
            let (scored, reward_s) = handle.join().expect("reward thread");
            Ok((scored.map_err(setup)?, (old, refs, lp_s), reward_s))
        })?;
        let mut totals: Vec<Option<f64>> = scored.iter().map(|s| s.total).collect();
        // KL in the reward: subtract kl_coef * sum of per-token KL from each sequence's reward.
        let mut mean_kl_seq = 0.0;
        if a.kl_in_reward && a.kl_coef > 0.0 {
            for (c, chunk) in (0..seqs.len()).collect::<Vec<_>>().chunks(a.micro_batch_size).enumerate() {
                let mb: Vec<Vec<usize>> = chunk.iter().map(|&i| vec![i]).collect();
                let b = build_batch(&seqs, &mb, pad, &device)?;
                let k = (kl_term(&old_lps[c], ref_lps[c].as_ref().expect("reference"), a.kl_estimator)? * &b.loss_mask)?.sum(D::Minus1)?;
                for (j, v) in k.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().enumerate() {
                    mean_kl_seq += v / seqs.len() as f64;
                    if let Some(tot) = totals[chunk[j]].as_mut() {
                        *tot -= a.kl_coef * v;
                    }
                }
            }
        }
        let adv = advantages(&totals, a.n, a.advantage);

        // 3. Update: update_epochs passes over the batch, one optimizer step each.
        let t_upd = Instant::now();
        let total_tokens: usize = seqs.iter().zip(&totals).filter(|(_, r)| r.is_some()).map(|(s, _)| s.trained_tokens()).sum();
        let kept = totals.iter().filter(|r| r.is_some()).count();
        let (mut loss_v, mut kl_v, mut ent_v, mut clipfrac_v, mut stats_last) = (0.0, 0.0, 0.0, 0.0, None);
        let mut nonfinite = None;
        for _epoch in 0..a.update_epochs {
            let mut grads: Option<candle_core::backprop::GradStore> = None;
            let (mut l_sum, mut kl_sum, mut ent_sum, mut clip_sum) = (0.0, 0.0, 0.0, 0.0);
            for (c, chunk) in (0..seqs.len()).collect::<Vec<_>>().chunks(a.micro_batch_size).enumerate() {
                let mb: Vec<Vec<usize>> = chunk.iter().map(|&i| vec![i]).collect();
                let b = build_batch(&seqs, &mb, pad, &device)?;
                let (bsz, tlen) = b.input_ids.dims2()?;
                // Dropped samples are masked out of the loss entirely.
                let keep: Vec<f32> = chunk.iter().map(|&i| if totals[i].is_some() { 1.0 } else { 0.0 }).collect();
                let mask = b.loss_mask.broadcast_mul(&Tensor::from_vec(keep, (bsz, 1), &device)?)?;
                let advt = Tensor::from_vec(chunk.iter().map(|&i| adv[i] as f32).collect::<Vec<_>>(), (bsz, 1), &device)?;
                let model = trainable.view(false, Some((bsz * tlen, &mut dropout_rng)))?;
                let logits = model.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?;
                let lp = crate::generate::token_logprobs(&logits, &b.targets)?;
                let ratio = (&lp - &old_lps[c])?.exp()?;
                let pg1 = ratio.broadcast_mul(&advt)?.neg()?;
                let pg2 = ratio.clamp(1.0 - a.clip_low, 1.0 + a.clip_high)?.broadcast_mul(&advt)?.neg()?;
                let pg = pg1.maximum(&pg2)?;
                let clipped = pg2.gt(&pg1)?.to_dtype(DType::F32)?;
                let mut per_token = pg;
                if let (Some(r), false) = (&ref_lps[c], a.kl_in_reward) {
                    let kl = kl_term(&lp, r, a.kl_estimator)?;
                    kl_sum += (kl.detach() * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
                    per_token = (per_token + (kl * a.kl_coef)?)?;
                }
                // Entropy of the policy at each position, H = logsumexp(x) - sum(softmax(x) * x).
                let ent = {
                    let x = if a.entropy_coef > 0.0 { logits.clone() } else { logits.detach() };
                    let p = crate::ops::softmax_last(&x)?;
                    (crate::ops::logsumexp_last(&x)?.squeeze(D::Minus1)? - (p * &x)?.sum(D::Minus1)?)?
                };
                ent_sum += (ent.detach() * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
                if a.entropy_coef > 0.0 {
                    per_token = (per_token - (ent * a.entropy_coef)?)?;
                }
                clip_sum += (clipped * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
                let loss = match a.loss_agg {
                    LossAgg::TokenMean => ((per_token * &mask)?.sum_all()? / total_tokens.max(1) as f64)?,
                    LossAgg::SeqMeanTokenMean => {
                        let per_seq = (per_token * &mask)?.sum(D::Minus1)?;
                        let lens = mask.sum(D::Minus1)?.maximum(1.0)?;
                        ((per_seq / lens)?.sum_all()? / kept.max(1) as f64)?
                    }
                };
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    nonfinite = Some(format!("loss {lv} at step {}", state.step + 1));
                    break;
                }
                l_sum += lv;
                super::sft::accumulate(&mut grads, loss.backward()?, trainable.params())?;
            }
            if nonfinite.is_some() {
                break;
            }
            let lr = schedule.lr_at(state.step);
            match grads {
                Some(g) if kept > 0 => match opt.step(&g, lr) {
                    Ok(s) => stats_last = Some(s),
                    Err(TrainError::NonFinite { detail, .. }) => {
                        nonfinite = Some(detail);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                },
                _ => {}
            }
            (loss_v, kl_v, ent_v, clipfrac_v) = (l_sum, kl_sum / total_tokens.max(1) as f64, ent_sum / total_tokens.max(1) as f64, clip_sum / total_tokens.max(1) as f64);
        }
        if let Some(detail) = nonfinite {
            match t.on_nonfinite {
                NonFinitePolicy::Stop => {
                    return Err(TrainError::NonFinite { what: "loss or gradient", step: state.step + 1, detail: format!("{detail}; the last checkpoint is intact") }.into())
                }
                NonFinitePolicy::Skip => state.skipped_steps += 1,
            }
        }
        let upd_s = t_upd.elapsed().as_secs_f64();
        state.step += 1;
        steps_this_run += 1;
        state.optimizer_steps = opt.steps();
        state.tokens_seen += rollout_tokens as u64;

        let vals: Vec<f64> = scored.iter().filter_map(|s| s.total).collect();
        let mean_r = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
        let mut comps: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
        for s in &scored {
            let plugin_scores = s.by_plugin.iter().filter_map(|(k, v)| v.map(|v| (k, v)));
            for (k, v) in s.components.iter().map(|(k, v)| (k, *v)).chain(plugin_scores) {
                let e = comps.entry(k.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        let mut line = serde_json::json!({
            "step": state.step,
            "reward": mean_r,
            "reward_std": (vals.iter().map(|v| (v - mean_r).powi(2)).sum::<f64>() / vals.len().max(1) as f64).sqrt(),
            "loss": loss_v,
            "kl": if a.kl_in_reward { mean_kl_seq } else { kl_v },
            "entropy": ent_v,
            "clip_frac": clipfrac_v,
            "grad_norm": stats_last.map(|s| s.grad_norm),
            "lr": schedule.lr_at(state.step - 1),
            "response_len": rollout_tokens as f64 / gens.len().max(1) as f64,
            "dropped": scored.iter().filter(|s| s.total.is_none()).count(),
            "reward_failures": scored.iter().map(|s| s.failures.values().filter(|f| f.as_str() != "not_applicable").count()).sum::<usize>(),
            "time_generate_s": gen_s,
            "time_logprob_s": logprob_s,
            "time_reward_s": reward_s,
            "time_update_s": upd_s,
            "time_step_s": step_start.elapsed().as_secs_f64(),
            "rollout_tokens_per_s": rollout_tokens as f64 / gen_s.max(1e-9),
            "memory_mb": crate::progress::memory_mb(&device),
            "skipped_steps": state.skipped_steps,
        });
        for (k, (sum, n)) in comps {
            line[format!("reward/{k}")] = (sum / n.max(1) as f64).into();
        }
        if state.step == t.max_steps || (t.eval_every > 0 && state.step % t.eval_every == 0) {
            if let Some(v) = do_validate(&trainable)? {
                line["val_reward"] = v.mean_reward.into();
                line["val_accuracy"] = v.accuracy.into();
                validation_after = Some(v);
            }
        }
        metrics.write(&line)?;
        pb.set_message(format!("grpo reward {mean_r:.3}"));
        pb.inc(1);
        if state.step == t.max_steps || (t.save_every > 0 && state.step % t.save_every == 0) {
            state.rng_word_pos = dropout_rng.get_word_pos().to_string();
            state.metrics_lines = metrics.lines();
            checkpoint::save(out, &state, &trainable.state(), &opt.state().0, t.keep_last)?;
            write_plots(out)?;
        }
    }
    pb.finish_and_clear();
    let (final_dir, adapter_dir) = peft::run_outputs(out);
    if state.step >= t.max_steps {
        let dtype = crate::model::parse_dtype(&t.export_dtype, &candle_core::Device::Cpu).map_err(SftError::Setup)?;
        super::sft::export(&trainable, &cfg.model, &final_dir, Some(&adapter_dir), dtype)?;
    }
    Ok(GrpoOutcome { output_dir: out.clone(), final_model: final_dir, steps: state.step, validation_before, validation_after })
}

/// `reward.svg`, `kl.svg` and validation curves for an RL run folder.
pub fn write_plots(run_dir: &Path) -> Result<(), SftError> {
    use crate::plot::{line_chart_svg, Series};
    let rows = super::metrics::read_metrics(run_dir)?;
    let s = |name: &'static str, key: &str| Series { name, points: rows.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?))).collect() };
    let charts = [
        ("reward.svg", line_chart_svg("Reward", "step", "mean reward", &[s("train (rollouts)", "reward"), s("validation (greedy)", "val_reward")])),
        ("kl_entropy.svg", line_chart_svg("KL to reference and entropy", "step", "nats per token", &[s("kl", "kl"), s("entropy", "entropy")])),
        ("timing.svg", line_chart_svg("Time per step", "step", "seconds", &[s("generate", "time_generate_s"), s("log-probs", "time_logprob_s"), s("reward", "time_reward_s"), s("update", "time_update_s")])),
    ];
    for (file, svg) in charts {
        let p = run_dir.join("plots").join(file);
        crate::fsutil::write_atomic(&p, svg.as_bytes()).map_err(|e| SftError::Io { path: p.clone(), source: e })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_advantages_are_normalized_within_groups_and_skip_dropped() {
        let r = [Some(1.0), Some(0.0), Some(1.0), Some(0.0), Some(5.0), Some(5.0), None, Some(2.0)];
        let a = advantages(&r, 4, AdvantageNorm::Group);
        let sd = (4.0f64 * 0.25 / 3.0).sqrt();
        assert!((a[0] - 0.5 / (sd + 1e-6)).abs() < 1e-9);
        assert!((a[1] + 0.5 / (sd + 1e-6)).abs() < 1e-9);
        assert_eq!(a[6], 0.0, "a dropped sample has no advantage");
        assert!((a[4] - 1.0 / 3f64.sqrt()).abs() < 1e-5, "{}", a[4]);
        let none = advantages(&r, 4, AdvantageNorm::None);
        assert!((none[0] - 0.5).abs() < 1e-12 && (none[7] + 2.0).abs() < 1e-12);
    }

    #[test]
    fn kl_estimators_match_their_definitions() {
        let dev = candle_core::Device::Cpu;
        let lp = Tensor::new(&[-1.0f64, -2.0], &dev).unwrap();
        let rf = Tensor::new(&[-1.5f64, -1.0], &dev).unwrap();
        let k3: Vec<f64> = kl_term(&lp, &rf, KlEstimator::K3).unwrap().to_vec1().unwrap();
        for (i, (l, r)) in [(-1.0f64, -1.5f64), (-2.0, -1.0)].iter().enumerate() {
            let d = r - l;
            assert!((k3[i] - (d.exp() - d - 1.0)).abs() < 1e-12);
        }
        let k1: Vec<f64> = kl_term(&lp, &rf, KlEstimator::K1).unwrap().to_vec1().unwrap();
        assert!((k1[0] - 0.5).abs() < 1e-12);
        let r = crate::ops::gradcheck::check(&[lp.clone()], |t| kl_term(&t[0], &rf, KlEstimator::K3), 2, 1e-6).unwrap();
        assert!(r.max_rel_err < 1e-6, "{r:?}");
    }
}
