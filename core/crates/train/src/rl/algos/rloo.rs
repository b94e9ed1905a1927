//! RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics";
//! TRL's `RLOOTrainer`).
//!
//! Each prompt gets `n` responses; a response's advantage is its reward minus the mean reward
//! of the *other* responses to the same prompt, `A_i = r_i - (sum_j r_j - r_i) / (k - 1)` with
//! `k` the responses that were scored (a response dropped by a reward's failure policy neither
//! gets an advantage nor enters its group's baseline; a group with fewer than two scored
//! responses has nothing to compare and gets advantage 0). Unlike GRPO, no division by the
//! group's standard deviation, so a group whose rewards barely differ is not amplified.
//! `normalize_advantages` whitens the step's advantages (TRL's option of the same name).
//!
//! The update is the clipped surrogate GRPO uses ([`crate::rl::pg::clipped_update`]), with the
//! same optional KL penalty (in the loss, or in the reward as TRL does) and entropy bonus.

use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::rl::algorithm::{drive, RlAlgorithm, RlOutcome, StepUpdate};
use crate::rl::config::{AlgorithmConfig, RlConfig};
use crate::rl::pg::{sequence_advantage_update, ClippedPg, KlEstimator, LossAgg, RatioLevel, CLIPPED_PG_METRICS};
use crate::rl::run::{Rollout, RlRun};
use crate::session::RunOptions;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RlooAlgo {
    /// Responses per prompt (TRL's `rloo_k`); at least 2.
    pub n: usize,
    pub prompts_per_step: usize,
    pub update_epochs: usize,
    pub micro_batch_size: usize,
    pub clip_low: f64,
    pub clip_high: f64,
    /// Whiten the step's advantages (mean 0, standard deviation 1) after the baseline.
    pub normalize_advantages: bool,
    /// KL coefficient (0 disables the reference model).
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// Put the KL penalty into the reward (TRL's RLOO) instead of the loss.
    pub kl_in_reward: bool,
    pub entropy_coef: f64,
    pub loss_agg: LossAgg,
    /// Dynamic batch size, as GRPO's `micro_batch_tokens` (docs/grpo.md). null: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch_tokens: Option<usize>,
}

impl Default for RlooAlgo {
    fn default() -> Self {
        Self {
            n: 4,
            prompts_per_step: 8,
            update_epochs: 1,
            micro_batch_size: 8,
            clip_low: 0.2,
            clip_high: 0.2,
            normalize_advantages: false,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K1,
            kl_in_reward: true,
            entropy_coef: 0.0,
            loss_agg: LossAgg::TokenMean,
            micro_batch_tokens: None,
        }
    }
}

/// `medrl rloo --config FILE.yaml`.
pub type RlooConfig = RlConfig<RlooAlgo>;

impl AlgorithmConfig for RlooAlgo {
    fn samples_per_prompt(&self) -> usize {
        self.n
    }
    fn prompts_per_step(&self) -> usize {
        self.prompts_per_step
    }
    fn micro_batch_size(&self) -> usize {
        self.micro_batch_size
    }
    fn micro_batch_tokens(&self) -> Option<usize> {
        self.micro_batch_tokens
    }
    fn needs_reference(&self) -> bool {
        self.kl_coef > 0.0
    }
    fn validate(&self) -> Result<(), (String, String)> {
        if self.micro_batch_tokens == Some(0) {
            return Err(("algorithm.micro_batch_tokens".into(), "must be at least 1 (or null for micro-batches of micro_batch_size sequences)".into()));
        }
        if self.n < 2 {
            return Err(("algorithm.n".into(), "RLOO needs at least 2 responses per prompt (the baseline is the others' mean)".into()));
        }
        if self.prompts_per_step == 0 || self.micro_batch_size == 0 || self.update_epochs == 0 {
            return Err(("algorithm".into(), "prompts_per_step, micro_batch_size and update_epochs must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.clip_low) || self.clip_high < 0.0 {
            return Err(("algorithm.clip_low".into(), "clip_low must be in [0, 1) and clip_high >= 0".into()));
        }
        if self.kl_coef < 0.0 || self.entropy_coef < 0.0 {
            return Err(("algorithm.kl_coef".into(), "kl_coef and entropy_coef must be >= 0".into()));
        }
        Ok(())
    }
}

/// Leave-one-out advantages over consecutive groups of `n` (see the module doc). `None` marks a
/// dropped response: advantage 0, outside its group's baseline.
pub fn advantages(rewards: &[Option<f64>], n: usize, normalize: bool) -> Vec<f64> {
    let mut adv = vec![0.0; rewards.len()];
    for (g, chunk) in rewards.chunks(n).enumerate() {
        let k = chunk.iter().flatten().count();
        if k < 2 {
            continue;
        }
        let sum: f64 = chunk.iter().flatten().sum();
        for (i, r) in chunk.iter().enumerate() {
            if let Some(r) = r {
                adv[g * n + i] = r - (sum - r) / (k - 1) as f64;
            }
        }
    }
    if normalize {
        let kept: Vec<f64> = adv.iter().zip(rewards).filter(|(_, r)| r.is_some()).map(|(a, _)| *a).collect();
        if kept.len() > 1 {
            let mean = kept.iter().sum::<f64>() / kept.len() as f64;
            let sd = (kept.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (kept.len() - 1) as f64).sqrt();
            for (a, r) in adv.iter_mut().zip(rewards) {
                if r.is_some() {
                    *a = (*a - mean) / (sd + 1e-8);
                }
            }
        }
    }
    adv
}

/// RLOO on the RL driver.
pub struct Rloo;

impl RlAlgorithm for Rloo {
    type Config = RlooAlgo;
    const NAME: &'static str = "rloo";
    const METRIC_KEYS: &'static [&'static str] = CLIPPED_PG_METRICS;

    fn new(_cfg: &RlooConfig, _run: &RlRun) -> Result<Self, RunError> {
        Ok(Rloo)
    }

    fn update(&mut self, cfg: &RlooConfig, run: &mut RlRun, r: &Rollout) -> Result<StepUpdate, RunError> {
        let a = &cfg.algorithm;
        let pg = ClippedPg {
            update_epochs: a.update_epochs,
            clip_low: a.clip_low,
            clip_high: a.clip_high,
            kl_coef: a.kl_coef,
            kl_estimator: a.kl_estimator,
            kl_in_reward: a.kl_in_reward,
            entropy_coef: a.entropy_coef,
            loss_agg: a.loss_agg,
            ratio: RatioLevel::Token,
            overlong: None,
        };
        sequence_advantage_update(run, r, &pg, |totals| advantages(totals, a.n, a.normalize_advantages))
    }
}

/// Run RLOO. `grants` are the capabilities (judge, search) the reward plugins may use.
pub fn run(cfg: &RlooConfig, grants: medrl_plugin::Grants, opts: &RunOptions) -> Result<RlOutcome, RunError> {
    drive::<Rloo>(cfg, grants, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two groups of three, worked by hand.
    /// Group 1: r = (1, 0, 2): baselines (0+2)/2 = 1, (1+2)/2 = 1.5, (1+0)/2 = 0.5, so
    /// A = (0, -1.5, 1.5). Group 2: r = (3, dropped, 5): k = 2, baselines 5 and 3, A = (-2, 0, 2).
    #[test]
    fn leave_one_out_advantages_match_a_hand_computation() {
        let r = [Some(1.0), Some(0.0), Some(2.0), Some(3.0), None, Some(5.0)];
        let a = advantages(&r, 3, false);
        let want = [0.0, -1.5, 1.5, -2.0, 0.0, 2.0];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {want:?}");
        }
        // Equivalent form: k / (k - 1) * (r - group mean).
        assert!((a[1] - 3.0 / 2.0 * (0.0 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn a_group_with_one_scored_response_has_no_advantage_and_equal_rewards_give_zero() {
        assert_eq!(advantages(&[Some(4.0), None, None], 3, false), vec![0.0, 0.0, 0.0]);
        assert_eq!(advantages(&[Some(0.7), Some(0.7)], 2, false), vec![0.0, 0.0]);
        // Unlike GRPO, no division by the group's spread: a tiny difference stays tiny.
        let a = advantages(&[Some(0.5), Some(0.5 + 1e-6)], 2, false);
        assert!((a[1] - 1e-6).abs() < 1e-12 && (a[0] + 1e-6).abs() < 1e-12, "{a:?}");
    }

    #[test]
    fn normalized_advantages_are_whitened_over_scored_responses() {
        let r = [Some(1.0), Some(0.0), Some(2.0), Some(3.0), None, Some(5.0)];
        let a = advantages(&r, 3, true);
        let kept: Vec<f64> = a.iter().zip(&r).filter(|(_, r)| r.is_some()).map(|(a, _)| *a).collect();
        let mean = kept.iter().sum::<f64>() / kept.len() as f64;
        let var = kept.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (kept.len() - 1) as f64;
        assert!(mean.abs() < 1e-12 && (var.sqrt() - 1.0).abs() < 1e-6, "{kept:?}");
        assert_eq!(a[4], 0.0);
    }

    #[test]
    fn config_needs_two_responses_and_takes_the_shared_keys() {
        use medrl_base::config::Validate;
        let cfg: RlooConfig = serde_yaml::from_str("model: m\noutput_dir: o\ndata: {train: [x]}\nrewards: [{plugin: a.wasm}]\nalgorithm: {n: 1}").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "algorithm.n");
        let cfg: RlooConfig = serde_yaml::from_str("model: m\noutput_dir: o\ndata: {train: [x]}\nrewards: [{plugin: a.wasm}]\ncritic: {}").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "critic", "only PPO has a critic");
        assert!(serde_yaml::from_str::<RlooConfig>("model: m\noutput_dir: o\ndata: {train: [x]}\nalgorithm: {advantage: group}").is_err(), "GRPO's key is not RLOO's");
    }
}
