//! Policy-gradient pieces the algorithms share: KL estimators, token entropy, loss aggregation,
//! the clipped surrogate update of sequence-level advantages (GRPO, RLOO), and the charts every
//! RL run draws.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::algorithm::StepUpdate;
use super::run::{write_charts, Rollout, RlRun};
use crate::error::RunError;
use crate::session::accumulate;
use crate::TrainError;

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

/// Which importance ratio the clipped surrogate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RatioLevel {
    /// pi(y_t) / pi_old(y_t) per token (PPO, GRPO, DAPO).
    #[default]
    Token,
    /// GSPO (Zheng et al. 2025): one ratio per sequence, the geometric mean of its token ratios,
    /// `exp(mean_t log(pi/pi_old))`, clipped per sequence; its gradient reaches every token
    /// through the mean. Use with `loss_agg: seq_mean_token_mean` and small clip ranges (the
    /// paper: 3e-4 low, 4e-4 high).
    Sequence,
}

impl RatioLevel {
    pub fn is_token(&self) -> bool {
        *self == Self::Token
    }
}

/// DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): a response longer than
/// `max_len - buffer` tokens loses `penalty * (len - (max_len - buffer)) / buffer`, growing to
/// `penalty` at `max_len` (and `penalty` beyond).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overlong {
    /// Tokens before the length limit where the penalty starts (DAPO's L_cache).
    pub buffer: usize,
    /// The penalty at the limit.
    #[serde(default = "one")]
    pub penalty: f64,
}

fn one() -> f64 {
    1.0
}

impl Overlong {
    /// The reward added to a response of `len` tokens when at most `max_len` may be generated.
    pub fn shaping(&self, len: usize, max_len: usize) -> f64 {
        let start = max_len.saturating_sub(self.buffer);
        if len <= start {
            0.0
        } else if len <= max_len && self.buffer > 0 {
            -self.penalty * (len - start) as f64 / self.buffer as f64
        } else {
            -self.penalty
        }
    }
}

/// The clipped surrogate per token, `max(-ratio * A, -clip(ratio, 1 - low, 1 + high) * A)`, and
/// where the clipped side won (1.0). `lp`, `old_lp`, `mask`: `[B, T]`; `adv`: `[B, 1]`. With
/// [`RatioLevel::Sequence`] every token of a sequence carries the sequence's ratio (masked
/// positions do not enter it).
pub fn surrogate(lp: &Tensor, old_lp: &Tensor, adv: &Tensor, mask: &Tensor, clip_low: f64, clip_high: f64, level: RatioLevel) -> candle_core::Result<(Tensor, Tensor)> {
    let log_ratio = (lp - old_lp)?;
    let ratio = match level {
        RatioLevel::Token => log_ratio.exp()?,
        RatioLevel::Sequence => {
            let len = mask.sum_keepdim(D::Minus1)?.maximum(1.0)?;
            let mean = (log_ratio * mask)?.sum_keepdim(D::Minus1)?.broadcast_div(&len)?;
            mean.exp()?.broadcast_as(lp.shape())?.contiguous()?
        }
    };
    let pg1 = ratio.broadcast_mul(adv)?.neg()?;
    let pg2 = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)?.broadcast_mul(adv)?.neg()?;
    let clipped = pg2.gt(&pg1)?.to_dtype(lp.dtype())?;
    Ok((pg1.maximum(&pg2)?, clipped))
}

/// Per-token estimate of KL(behavior || policy) from the sampled tokens' log-probs under the
/// policy (`lp`) and under the policy that sampled them (`old_lp`): `r - 1 - log r` with
/// `r = pi / pi_old` (k3; unbiased and non-negative under samples from `pi_old`). Zero
/// before the first optimizer step of an on-policy update (without dropout); positive when the
/// rollouts are stale, as with `async: true`.
pub fn off_policy_kl(lp: &Tensor, old_lp: &Tensor) -> candle_core::Result<Tensor> {
    let log_r = (lp - old_lp)?;
    (log_r.exp()? - log_r)? - 1.0
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

/// Entropy of the policy at each position, H = logsumexp(x) - sum(softmax(x) * x), `[B, T]`.
/// `grad`: keep it differentiable (an entropy bonus), else computed on detached logits.
pub fn token_entropy(logits: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
    let x = if grad { logits.clone() } else { logits.detach() };
    let p = medrl_nn::ops::softmax_last(&x)?;
    medrl_nn::ops::logsumexp_last(&x)?.squeeze(D::Minus1)? - (p * &x)?.sum(D::Minus1)?
}

/// `reward.svg`, `kl_entropy.svg` and `timing.svg` for an RL run folder.
pub fn write_plots(run_dir: &Path) -> Result<(), RunError> {
    write_charts(
        run_dir,
        &[
            ("reward.svg", "Reward", "mean reward", &[("train (rollouts)", "reward"), ("validation (greedy)", "val_reward")]),
            ("kl_entropy.svg", "KL to reference and entropy", "nats per token", &[("kl", "kl"), ("entropy", "entropy")]),
            ("timing.svg", "Time per step", "seconds", &[("generate", "time_generate_s"), ("log-probs", "time_logprob_s"), ("reward", "time_reward_s"), ("update", "time_update_s")]),
        ],
    )
}

/// Subtract `coef` times each sequence's summed per-token KL (rollout log-probs against the
/// reference's) from its total reward. Returns the mean summed KL over the step's sequences.
pub fn kl_into_rewards(run: &RlRun, r: &Rollout, coef: f64, est: KlEstimator, totals: &mut [Option<f64>]) -> Result<f64, RunError> {
    let mut mean_kl_seq = 0.0;
    for (c, chunk) in r.chunks.iter().enumerate() {
        let b = run.batch(&r.seqs, chunk)?;
        let k = (kl_term(&r.old_lps[c], r.ref_lps[c].as_ref().expect("reference"), est)? * &b.loss_mask)?.sum(D::Minus1)?;
        for (j, v) in k.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().enumerate() {
            mean_kl_seq += v / r.seqs.len() as f64;
            if let Some(tot) = totals[chunk[j]].as_mut() {
                *tot -= coef * v;
            }
        }
    }
    Ok(mean_kl_seq)
}

/// The metric keys [`clipped_update`] writes.
pub const CLIPPED_PG_METRICS: &[&str] = &["loss", "kl", "entropy", "clip_frac", "grad_norm", "off_policy_kl"];

/// The update of a sequence-advantage algorithm (GRPO, RLOO): the step's total rewards, minus
/// the KL penalty when it goes into the reward, turned into one advantage per sequence by
/// `advantages`, then [`clipped_update`].
pub fn sequence_advantage_update(run: &mut RlRun, r: &Rollout, s: &ClippedPg, advantages: impl FnOnce(&[Option<f64>]) -> Vec<f64>) -> Result<StepUpdate, RunError> {
    let mut totals = r.totals();
    if let Some((o, max_len)) = s.overlong {
        for (t, seq) in totals.iter_mut().zip(&r.seqs) {
            if let Some(t) = t.as_mut() {
                *t += o.shaping(seq.trained_tokens(), max_len);
            }
        }
    }
    // KL in the reward: subtract kl_coef * sum of per-token KL from each sequence's reward.
    let kl_seq = if s.kl_in_reward && s.kl_coef > 0.0 { kl_into_rewards(run, r, s.kl_coef, s.kl_estimator, &mut totals)? } else { 0.0 };
    let adv = advantages(&totals);
    clipped_update(run, r, s, &totals, &adv, kl_seq)
}

/// The clipped surrogate settings of a sequence-advantage algorithm.
#[derive(Debug, Clone, Copy)]
pub struct ClippedPg {
    pub update_epochs: usize,
    pub clip_low: f64,
    pub clip_high: f64,
    /// KL penalty in the loss (0, or when the KL went into the reward: none).
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    pub kl_in_reward: bool,
    pub entropy_coef: f64,
    pub loss_agg: LossAgg,
    pub ratio: RatioLevel,
    /// Overlong shaping of the rewards, with the rollout's `max_new_tokens`.
    pub overlong: Option<(Overlong, usize)>,
}

/// `update_epochs` passes over the rollouts, one optimizer step each, of the clipped surrogate
/// `max(-ratio * A, -clip(ratio, 1 - clip_low, 1 + clip_high) * A)` per response token, with
/// the optional KL penalty and entropy bonus. `totals[i]` is `None` for a sequence dropped by a
/// reward's policy (masked out of the loss); `adv[i]` is sequence i's advantage. Writes `loss`,
/// `kl` (per token; when the KL went into the reward, `kl_seq_mean`, its mean sum per sequence),
/// `entropy`, `clip_frac` and `grad_norm`.
pub fn clipped_update(run: &mut RlRun, r: &Rollout, s: &ClippedPg, totals: &[Option<f64>], adv: &[f64], kl_seq_mean: f64) -> Result<StepUpdate, RunError> {
    let device = run.device().clone();
    let seqs = &r.seqs;
    let total_tokens: usize = seqs.iter().zip(totals).filter(|(_, r)| r.is_some()).map(|(s, _)| s.trained_tokens()).sum();
    let kept = totals.iter().filter(|r| r.is_some()).count();
    let (mut loss_v, mut kl_v, mut ent_v, mut clipfrac_v, mut stats_last) = (0.0, 0.0, 0.0, 0.0, None);
    let mut off_policy = 0.0;
    let mut nonfinite = None;
    for epoch in 0..s.update_epochs {
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let (mut l_sum, mut kl_sum, mut ent_sum, mut clip_sum) = (0.0, 0.0, 0.0, 0.0);
        for (c, chunk) in r.chunks.iter().enumerate() {
            let b = run.batch(seqs, chunk)?;
            let (bsz, tlen) = b.input_ids.dims2()?;
            // Dropped samples are masked out of the loss entirely.
            let keep: Vec<f32> = chunk.iter().map(|&i| if totals[i].is_some() { 1.0 } else { 0.0 }).collect();
            let mask = b.loss_mask.broadcast_mul(&Tensor::from_vec(keep, (bsz, 1), &device)?)?;
            let advt = Tensor::from_vec(chunk.iter().map(|&i| adv[i] as f32).collect::<Vec<_>>(), (bsz, 1), &device)?;
            let model = run.trainable.view(false, Some((bsz * tlen, &mut run.session.rng)))?;
            let logits = model.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?;
            let lp = medrl_nn::ops::token_logprobs(&logits, &b.targets)?;
            if epoch == 0 {
                off_policy += (off_policy_kl(&lp.detach(), &r.old_lps[c])? * &mask)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
            let (pg, clipped) = surrogate(&lp, &r.old_lps[c], &advt, &mask, s.clip_low, s.clip_high, s.ratio)?;
            let mut per_token = pg;
            if let (Some(rf), false) = (&r.ref_lps[c], s.kl_in_reward) {
                let kl = kl_term(&lp, rf, s.kl_estimator)?;
                kl_sum += (kl.detach() * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
                per_token = (per_token + (kl * s.kl_coef)?)?;
            }
            let ent = token_entropy(&logits, s.entropy_coef > 0.0)?;
            ent_sum += (ent.detach() * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
            if s.entropy_coef > 0.0 {
                per_token = (per_token - (ent * s.entropy_coef)?)?;
            }
            clip_sum += (clipped * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
            let loss = match s.loss_agg {
                LossAgg::TokenMean => ((per_token * &mask)?.sum_all()? / total_tokens.max(1) as f64)?,
                LossAgg::SeqMeanTokenMean => {
                    let per_seq = (per_token * &mask)?.sum(D::Minus1)?;
                    let lens = mask.sum(D::Minus1)?.maximum(1.0)?;
                    ((per_seq / lens)?.sum_all()? / kept.max(1) as f64)?
                }
            };
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                nonfinite = Some(format!("loss {lv} at step {}", run.step() + 1));
                break;
            }
            l_sum += lv;
            accumulate(&mut grads, run.trainable.backward(&loss, &model)?, run.trainable.params())?;
        }
        if nonfinite.is_some() {
            break;
        }
        let lr = run.schedule.lr_at(run.step());
        match grads {
            Some(g) if kept > 0 => match run.opt.step(&g, lr) {
                Ok(st) => stats_last = Some(st),
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
    let mut m = serde_json::Map::new();
    m.insert("loss".into(), loss_v.into());
    m.insert("kl".into(), (if s.kl_in_reward { kl_seq_mean } else { kl_v }).into());
    m.insert("entropy".into(), ent_v.into());
    m.insert("clip_frac".into(), clipfrac_v.into());
    m.insert("grad_norm".into(), stats_last.map(|st| st.grad_norm).into());
    m.insert("off_policy_kl".into(), (off_policy / total_tokens.max(1) as f64).into());
    Ok(StepUpdate { metrics: m, nonfinite })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// max(-s A, -clip(s) A), written out in f64 as the reference.
    fn reference(ratio: f64, adv: f64, low: f64, high: f64) -> (f64, bool) {
        let (a, b) = (-ratio * adv, -ratio.clamp(1.0 - low, 1.0 + high) * adv);
        (a.max(b), b > a)
    }

    fn inputs() -> (Tensor, Tensor, Tensor, Tensor) {
        let d = Device::Cpu;
        let lp = Tensor::new(&[[-1.0f64, -2.0, -0.5], [-1.0, -1.0, -3.0]], &d).unwrap();
        // The masked last position of row 1 has a wild old log-prob: it must not enter the ratio.
        let old = Tensor::new(&[[-1.1f64, -1.8, -0.5], [-1.2, -0.9, 9.0]], &d).unwrap();
        let adv = Tensor::new(&[[1.0f64], [-2.0]], &d).unwrap();
        let mask = Tensor::new(&[[1.0f64, 1.0, 1.0], [1.0, 1.0, 0.0]], &d).unwrap();
        (lp, old, adv, mask)
    }

    #[test]
    fn token_and_sequence_surrogates_match_the_written_out_formulas() {
        let (lp, old, adv, mask) = inputs();
        let lr = [[0.1f64, -0.2, 0.0], [0.2, -0.1, -12.0]];
        let advs = [1.0, -2.0];
        for (low, high) in [(0.2, 0.2), (0.01, 0.02), (3e-4, 4e-4)] {
            let (pg, clip) = surrogate(&lp, &old, &adv, &mask, low, high, RatioLevel::Token).unwrap();
            let (pg, clip): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (pg.to_vec2().unwrap(), clip.to_vec2().unwrap());
            for i in 0..2 {
                for t in 0..2 {
                    let (want, c) = reference(f64::exp(lr[i][t]), advs[i], low, high);
                    assert!((pg[i][t] - want).abs() < 1e-12, "token {i},{t}: {} vs {want}", pg[i][t]);
                    assert_eq!(clip[i][t] == 1.0, c);
                }
            }
            let (pg, clip) = surrogate(&lp, &old, &adv, &mask, low, high, RatioLevel::Sequence).unwrap();
            let (pg, clip): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (pg.to_vec2().unwrap(), clip.to_vec2().unwrap());
            // GSPO: s_i = exp(mean of the unmasked token log-ratios); row 1 has two tokens.
            let s = [f64::exp((0.1 - 0.2 + 0.0) / 3.0), f64::exp((0.2 - 0.1) / 2.0)];
            for i in 0..2 {
                let (want, c) = reference(s[i], advs[i], low, high);
                for t in 0..3 {
                    assert!((pg[i][t] - want).abs() < 1e-12, "sequence {i},{t}: {} vs {want}", pg[i][t]);
                    assert_eq!(clip[i][t] == 1.0, c);
                }
            }
        }
        // Both rows leave the tight range, but on the side where the pessimistic bound keeps the
        // unclipped term; with the advantages' signs flipped the clipped term binds.
        let (_, clip) = surrogate(&lp, &old, &adv, &mask, 3e-4, 4e-4, RatioLevel::Sequence).unwrap();
        let clip: Vec<Vec<f64>> = clip.to_vec2().unwrap();
        assert_eq!((clip[0][0], clip[1][0]), (0.0, 0.0));
        let (pg, clip) = surrogate(&lp, &old, &adv.neg().unwrap(), &mask, 3e-4, 4e-4, RatioLevel::Sequence).unwrap();
        let (pg, clip): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (pg.to_vec2().unwrap(), clip.to_vec2().unwrap());
        assert_eq!((clip[0][0], clip[1][0]), (1.0, 1.0));
        assert!((pg[0][0] - (1.0 - 3e-4)).abs() < 1e-12 && (pg[1][0] + 2.0 * (1.0 + 4e-4)).abs() < 1e-12, "{pg:?}");
    }

    #[test]
    fn sequence_ratio_gradient_matches_finite_differences() {
        let (lp, old, adv, mask) = inputs();
        for level in [RatioLevel::Sequence, RatioLevel::Token] {
            let r = medrl_nn::ops::gradcheck::check(&[lp.clone()], |t| Ok(surrogate(&t[0], &old, &adv, &mask, 0.2, 0.2, level)?.0), 6, 1e-6).unwrap();
            assert!(r.max_rel_err < 1e-6, "{level:?}: {r:?}");
        }
        // The masked token gets no gradient through the sequence ratio.
        let v = candle_core::Var::from_tensor(&lp).unwrap();
        let (pg, _) = surrogate(v.as_tensor(), &old, &adv, &mask, 0.2, 0.2, RatioLevel::Sequence).unwrap();
        let g = pg.sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f64>> = g.get(v.as_tensor()).unwrap().to_vec2().unwrap();
        assert_eq!(g[1][2], 0.0);
        // d/dlp_t of sum_t(-s A) over row 0's three positions = 3 * (-s A / 3) = -s A.
        let s0 = f64::exp(-0.1 / 3.0);
        assert!((g[0][0] + s0).abs() < 1e-12, "{g:?}");
    }

    #[test]
    fn off_policy_kl_is_k3_of_the_ratio() {
        let d = Device::Cpu;
        let lp = Tensor::new(&[-1.0f64, -2.0, -0.5], &d).unwrap();
        let old = Tensor::new(&[-1.0f64, -1.5, -0.9], &d).unwrap();
        let got: Vec<f64> = off_policy_kl(&lp, &old).unwrap().to_vec1().unwrap();
        for (i, (l, o)) in [(-1.0f64, -1.0f64), (-2.0, -1.5), (-0.5, -0.9)].into_iter().enumerate() {
            let r = f64::exp(l - o);
            assert!((got[i] - (r - 1.0 - (l - o))).abs() < 1e-12);
        }
        assert_eq!(got[0], 0.0);
        assert!(got[1] > 0.0 && got[2] > 0.0);
    }

    #[test]
    fn overlong_shaping_is_dapo_eq_13() {
        let o = Overlong { buffer: 20, penalty: 1.0 };
        assert_eq!(o.shaping(0, 100), 0.0);
        assert_eq!(o.shaping(80, 100), 0.0);
        assert!((o.shaping(90, 100) + 0.5).abs() < 1e-12);
        assert!((o.shaping(100, 100) + 1.0).abs() < 1e-12);
        assert_eq!(o.shaping(130, 100), -1.0);
        let half = Overlong { buffer: 4, penalty: 0.5 };
        assert!((half.shaping(9, 10) + 0.375).abs() < 1e-12);
        // A buffer longer than the limit starts the ramp at length 0.
        assert!((Overlong { buffer: 50, penalty: 1.0 }.shaping(10, 20) + 0.2).abs() < 1e-12);
    }
}
