//! Batched autoregressive generation with a KV cache.
//!
//! Prompts of different lengths are left-padded into one batch; padding is excluded by the
//! attention mask and positions restart at each sequence's first real token (as transformers
//! does), so a prompt generates the same tokens alone or in a batch, up to float rounding.
//! The same code serves `medrl generate`, evaluation and RL rollouts.

pub mod config;
pub mod sampling;

use candle_core::Tensor;
use serde::Serialize;

pub use config::GenerateConfig;
// Differentiable, so it lives with the ops; re-exported where generation users look for it.
pub use medrl_nn::ops::token_logprobs;
pub use sampling::{sample, sequence_rng, Sampled, SamplingParams};

use crate::model::{build_attention_mask, CausalLm, KvCache};
use crate::tokenizer::TextTokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is included in `tokens`).
    Eos,
    /// A stop string appeared in the decoded output.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token (temperature-scaled distribution).
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// What ends a sequence besides the token budget.
#[derive(Default)]
pub struct StopConditions<'a> {
    pub eos_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Needed only for `stop_strings`.
    pub tokenizer: Option<&'a TextTokenizer>,
}

impl StopConditions<'_> {
    fn hits_stop_string(&self, tokens: &[u32]) -> bool {
        let (Some(tok), false) = (self.tokenizer, self.stop_strings.is_empty()) else { return false };
        // A stop string spans few tokens; decoding a tail window keeps this O(1) per step.
        let tail = &tokens[tokens.len().saturating_sub(32)..];
        match tok.decode(tail, false) {
            Ok(text) => self.stop_strings.iter().any(|s| text.contains(s.as_str())),
            Err(_) => false,
        }
    }
}

/// Per-step progress callback: (tokens generated so far in total, sequences still running).
pub type Progress<'a> = &'a dyn Fn(usize, usize);

/// Generate for every prompt in `prompts` (each a list of token ids). Sequence `i` samples with
/// RNG stream `i` of `params.seed`.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    stop: &StopConditions<'_>,
    pad_token_id: u32,
    progress: Option<Progress<'_>>,
) -> candle_core::Result<Vec<Generation>> {
    let streams: Vec<u64> = (0..prompts.len() as u64).collect();
    generate_streams(model, prompts, &streams, params, stop, pad_token_id, progress)
}

/// [`generate`] with an explicit RNG stream per sequence (`streams[i]` of `params.seed`), so a
/// sequence's samples do not depend on which batch it lands in (evaluation resumes with batches
/// of different composition and still draws the same samples).
pub fn generate_streams(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    streams: &[u64],
    params: &SamplingParams,
    stop: &StopConditions<'_>,
    pad_token_id: u32,
    progress: Option<Progress<'_>>,
) -> candle_core::Result<Vec<Generation>> {
    if streams.len() != prompts.len() {
        candle_core::bail!("{} RNG streams for {} prompts", streams.len(), prompts.len());
    }
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        candle_core::bail!("prompt {i} is empty: at least one token is needed");
    }
    let device = model.device();
    let b = prompts.len();
    let max_len = prompts.iter().map(|p| p.len()).max().unwrap();
    let capacity = max_len + params.max_new_tokens;
    if capacity > model.cfg.max_position_embeddings {
        tracing::warn!(
            "prompt ({max_len}) + max_new_tokens ({}) exceeds max_position_embeddings ({})",
            params.max_new_tokens,
            model.cfg.max_position_embeddings
        );
    }
    let cfg = &model.cfg;
    let mut cache = KvCache::new(cfg.num_hidden_layers, b, cfg.num_key_value_heads, cfg.head_dim, capacity, model.dtype(), device)?;

    // Left-pad; `valid` grows by one slot per decoding step.
    let mut valid: Vec<Vec<bool>> = Vec::with_capacity(b);
    let mut ids = Vec::with_capacity(b * max_len);
    let mut pos = Vec::with_capacity(b * max_len);
    let mut next_pos = Vec::with_capacity(b);
    for p in prompts {
        let pad = max_len - p.len();
        let mut v = vec![false; pad];
        v.extend(std::iter::repeat_n(true, p.len()));
        valid.push(v);
        ids.extend(std::iter::repeat_n(pad_token_id, pad).chain(p.iter().copied()));
        // transformers: position_ids = cumsum(mask) - 1, with padded slots set to 1.
        pos.extend(std::iter::repeat_n(1u32, pad).chain(0..p.len() as u32));
        next_pos.push(p.len() as u32);
    }
    let any_padding = prompts.iter().any(|p| p.len() != max_len);
    let input = Tensor::from_vec(ids, (b, max_len), device)?;
    let positions = Tensor::from_vec(pos, (b, max_len), device)?;
    let mask = build_attention_mask(&valid, 0, max_len, device)?;
    let hidden = model.forward_hidden(&input, &positions, Some(&mask), Some(&mut cache))?;
    let mut logits = model.lm_logits(&hidden.narrow(1, max_len - 1, 1)?)?.squeeze(1)?;

    let mut rngs: Vec<_> = streams.iter().map(|&i| sequence_rng(params.seed, i)).collect();
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<Generation> =
        (0..b).map(|_| Generation { tokens: vec![], logprobs: vec![], finish_reason: FinishReason::Length }).collect();
    let mut done = vec![false; b];
    let mut produced = 0usize;
    for step in 0..params.max_new_tokens {
        let rows: Vec<Vec<f32>> = logits.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        let mut next = vec![pad_token_id; b];
        // Sequences sample in parallel: each owns its RNG stream, so the tokens do not depend
        // on thread scheduling.
        use rayon::prelude::*;
        let picked: Vec<Option<(u32, FinishReason, bool)>> = rows
            .into_par_iter()
            .zip(rngs.par_iter_mut())
            .zip(history.par_iter_mut())
            .zip(out.par_iter_mut())
            .zip(done.par_iter())
            .map(|((((mut row, rng), hist), o), &finished)| {
                if finished {
                    return None;
                }
                let s = sample(&mut row, hist, params, rng);
                hist.push(s.token);
                o.tokens.push(s.token);
                o.logprobs.push(s.logprob);
                if stop.eos_token_ids.contains(&s.token) {
                    Some((s.token, FinishReason::Eos, true))
                } else if stop.hits_stop_string(&o.tokens) {
                    Some((s.token, FinishReason::Stop, true))
                } else {
                    Some((s.token, FinishReason::Length, false))
                }
            })
            .collect();
        for (i, p) in picked.into_iter().enumerate() {
            let Some((token, reason, finished)) = p else { continue };
            next[i] = token;
            produced += 1;
            if finished {
                done[i] = true;
                out[i].finish_reason = reason;
            }
        }
        let running = done.iter().filter(|d| !**d).count();
        if let Some(cb) = progress {
            cb(produced, running);
        }
        if running == 0 || step + 1 == params.max_new_tokens {
            break;
        }
        for v in valid.iter_mut() {
            v.push(true);
        }
        let input = Tensor::from_vec(next, (b, 1), device)?;
        let positions = Tensor::from_vec(next_pos.clone(), (b, 1), device)?;
        for p in next_pos.iter_mut() {
            *p += 1;
        }
        // Without padding a single new token may see every cached slot: no mask needed.
        let mask = if any_padding { Some(build_attention_mask(&valid, cache.len(), 1, device)?) } else { None };
        let hidden = model.forward_hidden(&input, &positions, mask.as_ref(), Some(&mut cache))?;
        logits = model.lm_logits(&hidden)?.squeeze(1)?;
    }
    Ok(out)
}

