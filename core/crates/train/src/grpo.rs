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
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::rewards::RewardSpec;
use super::rl::{default_rollout, validate_common, write_charts, RlData, RlRun, RlTraining};
use super::sft::{NonFinitePolicy, SftError};
use super::trainable::LoraConfig;
use super::TrainError;
use medrl_base::config::Validate;
use medrl_lm::generate::SamplingParams;

// Moved to the shared RL module; re-exported where callers found them.
pub use super::rl::{prompt_example, prompts_from_examples, validate, RlPrompt, Validation};

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

/// Prompts of a GRPO run (shared with PPO, see [`super::rl::RlData`]).
pub type GrpoData = RlData;
/// Optimization settings of a GRPO run (shared with PPO).
pub type GrpoTraining = RlTraining;

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
    #[serde(default)]
    pub algorithm: GrpoAlgo,
    #[serde(default)]
    pub training: GrpoTraining,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

impl Validate for GrpoConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        validate_common(&self.device, &self.dtype, &self.data, &self.rewards, &self.training, self.lora.as_ref(), &self.rollout)?;
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
        if let Some(g) = &self.search {
            g.check().map_err(|m| ("search".to_string(), m))?;
        }
        Ok(())
    }
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
    super::rl::rl_config_hash!(cfg)
}

/// Run GRPO. `grants` are the capabilities (judge, search) the reward plugins may use.
pub fn run(cfg: &GrpoConfig, grants: medrl_plugin::Grants, opts: &super::sft::RunOptions) -> Result<GrpoOutcome, SftError> {
    let a = &cfg.algorithm;
    let t = &cfg.training;
    let spec = super::rl::rl_spec!("grpo", cfg, hash_config(cfg));
    let mut rl = RlRun::setup(&spec, grants, opts)?;
    let device = rl.device.clone();
    while let Some(chosen) = rl.next_prompts() {
        let step_start = Instant::now();
        // 1-2. Rollouts, rewards and log-probs.
        let r = rl.rollout(&chosen, a.n, a.micro_batch_size, |_| Ok(None))?;
        let (seqs, old_lps, ref_lps) = (&r.seqs, &r.old_lps, &r.ref_lps);
        let mut totals = r.totals();
        // KL in the reward: subtract kl_coef * sum of per-token KL from each sequence's reward.
        let mut mean_kl_seq = 0.0;
        if a.kl_in_reward && a.kl_coef > 0.0 {
            for (c, chunk) in r.chunks.iter().enumerate() {
                let b = rl.batch(seqs, chunk)?;
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
            for (c, chunk) in r.chunks.iter().enumerate() {
                let b = rl.batch(seqs, chunk)?;
                let (bsz, tlen) = b.input_ids.dims2()?;
                // Dropped samples are masked out of the loss entirely.
                let keep: Vec<f32> = chunk.iter().map(|&i| if totals[i].is_some() { 1.0 } else { 0.0 }).collect();
                let mask = b.loss_mask.broadcast_mul(&Tensor::from_vec(keep, (bsz, 1), &device)?)?;
                let advt = Tensor::from_vec(chunk.iter().map(|&i| adv[i] as f32).collect::<Vec<_>>(), (bsz, 1), &device)?;
                let model = rl.trainable.view(false, Some((bsz * tlen, &mut rl.dropout_rng)))?;
                let logits = model.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?;
                let lp = medrl_lm::generate::token_logprobs(&logits, &b.targets)?;
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
                let ent = token_entropy(&logits, a.entropy_coef > 0.0)?;
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
                    nonfinite = Some(format!("loss {lv} at step {}", rl.state.step + 1));
                    break;
                }
                l_sum += lv;
                super::sft::accumulate(&mut grads, loss.backward()?, rl.trainable.params())?;
            }
            if nonfinite.is_some() {
                break;
            }
            let lr = rl.schedule.lr_at(rl.state.step);
            match grads {
                Some(g) if kept > 0 => match rl.opt.step(&g, lr) {
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
                    return Err(TrainError::NonFinite { what: "loss or gradient", step: rl.state.step + 1, detail: format!("{detail}; the last checkpoint is intact") }.into())
                }
                NonFinitePolicy::Skip => rl.state.skipped_steps += 1,
            }
        }
        let upd_s = t_upd.elapsed().as_secs_f64();
        rl.end_update(r.rollout_tokens);
        let mut line = rl.rollout_line(&r, upd_s, step_start);
        line["loss"] = loss_v.into();
        line["kl"] = (if a.kl_in_reward { mean_kl_seq } else { kl_v }).into();
        line["entropy"] = ent_v.into();
        line["clip_frac"] = clipfrac_v.into();
        line["grad_norm"] = stats_last.map(|s| s.grad_norm).into();
        rl.finish_step(line, Default::default, write_plots)?;
    }
    let final_model = rl.finish()?;
    Ok(GrpoOutcome { output_dir: rl.out.clone(), final_model, steps: rl.state.step, validation_before: rl.validation_before.take(), validation_after: rl.validation_after.take() })
}

/// Entropy of the policy at each position, H = logsumexp(x) - sum(softmax(x) * x), `[B, T]`.
/// `grad`: keep it differentiable (an entropy bonus), else computed on detached logits.
pub fn token_entropy(logits: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
    let x = if grad { logits.clone() } else { logits.detach() };
    let p = medrl_nn::ops::softmax_last(&x)?;
    medrl_nn::ops::logsumexp_last(&x)?.squeeze(D::Minus1)? - (p * &x)?.sum(D::Minus1)?
}
/// `reward.svg`, `kl_entropy.svg` and `timing.svg` for an RL run folder.
pub fn write_plots(run_dir: &Path) -> Result<(), SftError> {
    write_charts(
        run_dir,
        &[
            ("reward.svg", "Reward", "mean reward", &[("train (rollouts)", "reward"), ("validation (greedy)", "val_reward")]),
            ("kl_entropy.svg", "KL to reference and entropy", "nats per token", &[("kl", "kl"), ("entropy", "entropy")]),
            ("timing.svg", "Time per step", "seconds", &[("generate", "time_generate_s"), ("log-probs", "time_logprob_s"), ("reward", "time_reward_s"), ("update", "time_update_s")]),
        ],
    )
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

    /// The reward contract (issue 14): the plugin host fails any sample whose |score| exceeds
    /// `Limits::max_abs_score` (1e6 by default), because finite but absurd rewards overflow the
    /// group statistics. At the bound, advantages stay finite under every normalization; past
    /// it (1e308, which the host refuses) the group mean is infinite and the advantages NaN.
    #[test]
    fn advantages_stay_finite_at_the_reward_bound() {
        let b = medrl_plugin::Limits::default().max_abs_score;
        let r = [Some(b), Some(b), Some(-b), Some(b), Some(-b), Some(-b), None, Some(0.0)];
        for norm in [AdvantageNorm::Group, AdvantageNorm::None, AdvantageNorm::Batch] {
            let a = advantages(&r, 4, norm);
            assert!(a.iter().all(|x| x.is_finite()), "{norm:?}: {a:?}");
        }
        let a = advantages(&[Some(b), Some(-b)], 2, AdvantageNorm::Group);
        assert!((a[0] - 1.0 / 2f64.sqrt()).abs() < 1e-6, "{a:?}");
        let absurd = advantages(&[Some(1e308), Some(1e308)], 2, AdvantageNorm::Group);
        assert!(absurd.iter().any(|x| !x.is_finite()), "{absurd:?}");
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
        let r = medrl_nn::ops::gradcheck::check(&[lp.clone()], |t| kl_term(&t[0], &rf, KlEstimator::K3), 2, 1e-6).unwrap();
        assert!(r.max_rel_err < 1e-6, "{r:?}");
    }
}
