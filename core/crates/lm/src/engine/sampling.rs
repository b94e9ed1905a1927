//! Sampling settings and per-sequence random streams.
//!
//! Order follows transformers: repetition penalty, temperature, top-k, top-p, then a draw.
//! Each sequence owns a seeded RNG, so its tokens do not depend on what else is in the batch,
//! on the order sequences are admitted in, or on preemption.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// >1 discourages tokens already in the prompt or the output (CTRL-style, as transformers).
    pub repetition_penalty: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, top_k: 0, repetition_penalty: 1.0, max_new_tokens: 128, seed: 0 }
    }
}

impl SamplingParams {
    /// Range checks, reported with the name of the offending field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", format!("{} must be >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", format!("{} must be > 0", self.repetition_penalty));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be at least 1".into());
        }
        Ok(())
    }
}

/// A per-sequence RNG derived from the run seed and the sequence's index.
pub fn sequence_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(index);
    r
}

/// The chosen token and its log-probability under the temperature-scaled distribution (before
/// top-k/top-p truncation; this is the quantity policy-gradient methods recompute).
#[derive(Debug, Clone, Copy)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
}

/// Pick the next token from raw `logits` given the tokens seen so far (`history`), on the host.
///
/// The arithmetic is [`medrl_nn::infer::sample_row`], the same the engine's batched device
/// sampler runs, so host and device draws agree up to float rounding. One uniform is drawn from
/// `rng` per sampled token (none for greedy): a sequence's stream advances the same way wherever
/// it is sampled.
pub fn sample(logits: &mut [f32], history: &[u32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> Sampled {
    let mut seen: Vec<u32> = if p.repetition_penalty != 1.0 { history.to_vec() } else { vec![] };
    seen.sort_unstable();
    seen.dedup();
    let u = draw(p, rng);
    let (token, logprob) = medrl_nn::infer::sample_row(logits, &seen, p.temperature as f32, p.top_k.min(u32::MAX as usize) as u32, p.top_p as f32, p.repetition_penalty as f32, u);
    Sampled { token, logprob }
}

/// The uniform a sampled token consumes from its sequence's stream (0 and no draw for greedy).
pub fn draw(p: &SamplingParams, rng: &mut ChaCha8Rng) -> f32 {
    if p.temperature > 0.0 {
        rng.gen::<f32>()
    } else {
        0.0
    }
}

/// The `n` most likely tokens and their log-probabilities under the distribution the sampled
/// token's log-probability refers to (repetition penalty and temperature applied, before
/// top-k/top-p truncation), most likely first; ties go to the lower id. For servers' `logprobs`.
pub fn top_logprobs(logits: &mut [f32], seen: &[u32], p: &SamplingParams, n: usize) -> Vec<(u32, f32)> {
    if p.repetition_penalty != 1.0 {
        for &id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / p.repetition_penalty as f32 } else { *l * p.repetition_penalty as f32 };
            }
        }
    }
    let t = if p.temperature > 0.0 { p.temperature as f32 } else { 1.0 };
    let max = logits.iter().map(|&l| l / t).fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l / t - max).exp()).sum::<f32>().ln();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(ids.len());
    let key = |i: &u32| (std::cmp::Reverse(ordered(logits[*i as usize])), *i);
    if n > 0 && n < ids.len() {
        ids.select_nth_unstable_by_key(n - 1, key);
    }
    ids.truncate(n);
    ids.sort_by_key(key);
    ids.into_iter().map(|i| (i, logits[i as usize] / t - lse)).collect()
}

/// A total order on floats for sorting logits (NaN last).
fn ordered(x: f32) -> i64 {
    if x.is_nan() {
        i64::MIN
    } else {
        let b = x.to_bits() as i32;
        (if b < 0 { !(b & i32::MAX) } else { b }) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_argmax() {
        let mut l = vec![0.1, 2.0, -1.0, 1.9];
        let s = sample(&mut l, &[], &SamplingParams::default(), &mut sequence_rng(0, 0));
        assert_eq!(s.token, 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut l = vec![0.1, 2.0, -1.0, 1.9];
        let p = SamplingParams { repetition_penalty: 1.2, ..Default::default() };
        assert_eq!(sample(&mut l, &[1], &p, &mut sequence_rng(0, 0)).token, 3);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_restricts_support() {
        let p = SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() };
        for s in 0..20 {
            let mut l = vec![0.0, 1.0, 0.5];
            assert_eq!(sample(&mut l, &[], &p, &mut sequence_rng(s, 0)).token, 1);
        }
        // p(0) ≈ 0.88 > top_p 0.5: only token 0 may ever be drawn.
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, ..Default::default() };
        for s in 0..50 {
            let mut l = vec![3.0, 1.0, 0.0];
            assert_eq!(sample(&mut l, &[], &p, &mut sequence_rng(s, 0)).token, 0);
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let p = SamplingParams { temperature: 1.0, ..Default::default() };
        let mut rng = sequence_rng(42, 0);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            let mut l = vec![0.0, (2.0f32).ln(), (3.0f32).ln()];
            counts[sample(&mut l, &[], &p, &mut rng).token as usize] += 1;
        }
        let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / 20_000.0).collect();
        for (f, want) in freq.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((f - want).abs() < 0.015, "{freq:?}");
        }
    }

    #[test]
    fn top_logprobs_are_the_largest_and_include_the_greedy_token() {
        let p = SamplingParams { temperature: 0.5, repetition_penalty: 2.0, ..Default::default() };
        let raw = vec![1.0f32, 3.0, -2.0, 3.0, 2.5];
        let top = top_logprobs(&mut raw.clone(), &[4], &p, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 4], "4 is penalized from 2.5 to 1.25, still above 0's 1.0; ties by id");
        // The sampled token's log-probability (sample_row) is the same quantity.
        let g = SamplingParams { temperature: 0.0, repetition_penalty: 2.0, ..Default::default() };
        let s = sample(&mut raw.clone(), &[4], &g, &mut sequence_rng(0, 0));
        let gtop = top_logprobs(&mut raw.clone(), &[4], &g, 1);
        assert_eq!(gtop[0].0, s.token);
        assert!((gtop[0].1 - s.logprob).abs() < 1e-6);
        let all = top_logprobs(&mut raw.clone(), &[], &p, 10);
        assert_eq!(all.len(), 5);
        assert!((all.iter().map(|t| t.1.exp()).sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn logprob_is_log_softmax() {
        let mut l = vec![1.0, 2.0, 3.0];
        let s = sample(&mut l, &[], &SamplingParams::default(), &mut sequence_rng(0, 0));
        let z: f32 = [1.0f32, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((s.logprob - (3.0f32.exp() / z).ln()).abs() < 1e-6);
    }
}
