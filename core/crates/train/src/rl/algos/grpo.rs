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

use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::rl::algorithm::{drive, RlAlgorithm, StepUpdate};
use crate::rl::config::{AlgorithmConfig, DynamicSampling, RlConfig, RlData, RlTraining};
use crate::rl::pg::{sequence_advantage_update, ClippedPg, Overlong, RatioLevel, CLIPPED_PG_METRICS};
use crate::rl::run::{Rollout, RlRun};
use crate::session::RunOptions;

// Where callers have found these since GRPO was the only algorithm.
pub use crate::rl::algorithm::RlOutcome as GrpoOutcome;
pub use crate::rl::pg::{kl_term, token_entropy, write_plots, KlEstimator, LossAgg};
pub use crate::rl::validation::{prompt_example, prompts_from_examples, validate, RlPrompt, Validation};

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
    /// (r - batch mean) / std over the whole batch, no per-prompt baseline (REINFORCE++, Hu
    /// 2025; with `kl_in_reward: true` and `kl_estimator: k1` as the paper). `batch` above is
    /// its REINFORCE++-baseline variant.
    ReinforcePp,
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
    /// `token` (GRPO, DAPO) or `sequence` (GSPO) importance ratios.
    // Keys added after runs existed are left out of the config hash at their defaults, so
    // those runs still resume.
    #[serde(skip_serializing_if = "RatioLevel::is_token")]
    pub ratio: RatioLevel,
    /// DAPO's soft overlong punishment, `{buffer: TOKENS, penalty: 1.0}` (null: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlong: Option<Overlong>,
    /// DAPO's dynamic sampling, `{max_rounds: N}` (null: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_sampling: Option<DynamicSampling>,
    /// Dynamic batch size (VERL's `use_dynamic_bsz` with `ppo_max_token_len_per_gpu`): the
    /// log-prob pass and the update run on micro-batches of at most this many tokens
    /// (sequences x longest, padding included), longest sequences first, instead of
    /// `micro_batch_size` sequences. The step's loss is unchanged (it is normalized over the
    /// whole step); memory follows the budget, and short responses share a pass. null: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch_tokens: Option<usize>,
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
            ratio: RatioLevel::Token,
            overlong: None,
            dynamic_sampling: None,
            micro_batch_tokens: None,
        }
    }
}

/// Prompts of a GRPO run (the shared [`RlData`]).
pub type GrpoData = RlData;
/// Optimization settings of a GRPO run (the shared [`RlTraining`]).
pub type GrpoTraining = RlTraining;
/// `medrl grpo --config FILE.yaml`.
pub type GrpoConfig = RlConfig<GrpoAlgo>;

impl AlgorithmConfig for GrpoAlgo {
    fn samples_per_prompt(&self) -> usize {
        self.n
    }
    fn prompts_per_step(&self) -> usize {
        self.prompts_per_step
    }
    fn micro_batch_size(&self) -> usize {
        self.micro_batch_size
    }
    fn needs_reference(&self) -> bool {
        self.kl_coef > 0.0
    }
    fn validate(&self) -> Result<(), (String, String)> {
        let a = self;
        if a.n < 2 && !(a.n == 1 && a.advantage == AdvantageNorm::ReinforcePp) {
            return Err(("algorithm.n".into(), "GRPO needs at least 2 responses per prompt (1 only with advantage: reinforce_pp)".into()));
        }
        if a.prompts_per_step == 0 || a.micro_batch_size == 0 || a.update_epochs == 0 {
            return Err(("algorithm".into(), "prompts_per_step, micro_batch_size and update_epochs must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&a.clip_low) || a.clip_high < 0.0 {
            return Err(("algorithm.clip_low".into(), "clip_low must be in [0, 1) and clip_high >= 0".into()));
        }
        if a.micro_batch_tokens == Some(0) {
            return Err(("algorithm.micro_batch_tokens".into(), "must be at least 1 (or null for micro-batches of micro_batch_size sequences)".into()));
        }
        if a.dynamic_sampling.is_some_and(|d| d.max_rounds == 0) {
            return Err(("algorithm.dynamic_sampling.max_rounds".into(), "max_rounds must be at least 1".into()));
        }
        if let Some(o) = &a.overlong {
            if o.buffer == 0 || !(o.penalty.is_finite() && o.penalty >= 0.0) {
                return Err(("algorithm.overlong".into(), "buffer must be at least 1 and penalty a finite number >= 0".into()));
            }
        }
        Ok(())
    }
    fn micro_batch_tokens(&self) -> Option<usize> {
        self.micro_batch_tokens
    }
    fn dynamic_sampling(&self) -> Option<DynamicSampling> {
        self.dynamic_sampling
    }
}

impl GrpoAlgo {
    /// The clipped-surrogate settings of this config (overlong shaping needs the rollout's
    /// `max_new_tokens`: see [`GrpoAlgo::clipped_pg_for`]).
    pub fn clipped_pg(&self) -> ClippedPg {
        ClippedPg {
            update_epochs: self.update_epochs,
            clip_low: self.clip_low,
            clip_high: self.clip_high,
            kl_coef: self.kl_coef,
            kl_estimator: self.kl_estimator,
            kl_in_reward: self.kl_in_reward,
            entropy_coef: self.entropy_coef,
            loss_agg: self.loss_agg,
            ratio: self.ratio,
            overlong: None,
        }
    }

    /// [`GrpoAlgo::clipped_pg`] with overlong shaping against `max_new_tokens`.
    pub fn clipped_pg_for(&self, max_new_tokens: usize) -> ClippedPg {
        ClippedPg { overlong: self.overlong.map(|o| (o, max_new_tokens)), ..self.clipped_pg() }
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
        AdvantageNorm::ReinforcePp => {
            let vals: Vec<f64> = rewards.iter().flatten().copied().collect();
            let m = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
            let sd = (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len().max(2) - 1) as f64).sqrt();
            rewards.iter().map(|r| r.map(|r| (r - m) / (sd + eps)).unwrap_or(0.0)).collect()
        }
    }
}

/// GRPO on the RL driver.
pub struct Grpo;

impl RlAlgorithm for Grpo {
    type Config = GrpoAlgo;
    const NAME: &'static str = "grpo";
    const METRIC_KEYS: &'static [&'static str] = CLIPPED_PG_METRICS;

    fn new(_cfg: &GrpoConfig, _run: &RlRun) -> Result<Self, RunError> {
        Ok(Grpo)
    }

    fn update(&mut self, cfg: &GrpoConfig, run: &mut RlRun, r: &Rollout) -> Result<StepUpdate, RunError> {
        let a = &cfg.algorithm;
        sequence_advantage_update(run, r, &a.clipped_pg_for(cfg.rollout.max_new_tokens), |totals| advantages(totals, a.n, a.advantage))
    }
}

/// Run GRPO. `grants` are the capabilities (judge, search) the reward plugins may use.
pub fn run(cfg: &GrpoConfig, grants: medrl_plugin::Grants, opts: &RunOptions) -> Result<GrpoOutcome, RunError> {
    drive::<Grpo>(cfg, grants, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use crate::rl::pg::{kl_term, KlEstimator};

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
    fn reinforce_pp_normalizes_over_the_batch_without_group_baselines() {
        let r = [Some(1.0), Some(0.0), Some(1.0), None, Some(3.0), Some(3.0)];
        let a = advantages(&r, 3, AdvantageNorm::ReinforcePp);
        let m = 8.0 / 5.0;
        let sd = ([1.0f64, 0.0, 1.0, 3.0, 3.0].iter().map(|v| (v - m).powi(2)).sum::<f64>() / 4.0).sqrt();
        for (i, v) in [(0, 1.0), (1, 0.0), (4, 3.0)] {
            assert!((a[i] - (v - m) / (sd + 1e-6)).abs() < 1e-12, "{a:?}");
        }
        assert_eq!(a[3], 0.0);
        // The second group's rewards are all 3: GRPO gives them nothing, REINFORCE++ a positive push.
        let g = advantages(&r, 3, AdvantageNorm::Group);
        assert!(g[4].abs() < 1e-9 && a[4] > 0.5, "{g:?} {a:?}");
    }

    #[test]
    fn gspo_and_dapo_settings_parse_and_bad_values_name_their_key() {
        let a: GrpoAlgo = serde_yaml::from_str("ratio: sequence\nloss_agg: seq_mean_token_mean\nclip_low: 0.0003\nclip_high: 0.0004\noverlong: {buffer: 64}\nadvantage: reinforce_pp").unwrap();
        assert_eq!(a.ratio, RatioLevel::Sequence);
        assert_eq!(a.overlong, Some(Overlong { buffer: 64, penalty: 1.0 }));
        assert_eq!(a.advantage, AdvantageNorm::ReinforcePp);
        assert!(a.validate().is_ok());
        assert!(GrpoAlgo { n: 1, ..a.clone() }.validate().is_ok(), "REINFORCE++ needs no group");
        assert_eq!(GrpoAlgo { n: 1, advantage: AdvantageNorm::Group, ..a.clone() }.validate().unwrap_err().0, "algorithm.n");
        let pg = a.clipped_pg_for(512);
        assert_eq!(pg.overlong.map(|(o, m)| (o.buffer, m)), Some((64, 512)));
        let bad: GrpoAlgo = serde_yaml::from_str("overlong: {buffer: 0}").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "algorithm.overlong");
        assert!(serde_yaml::from_str::<GrpoAlgo>("ratio: per_token").unwrap_err().to_string().contains("ratio"));
        assert!(serde_yaml::from_str::<GrpoAlgo>("overlong: {buffer: 4, penalty: 1, cache: 2}").is_err());
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
