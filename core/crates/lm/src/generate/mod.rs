//! Batched autoregressive generation: the convenience entry points over the rollout engine
//! ([`crate::engine`]), and the `medrl generate` config file.
//!
//! Prompts go through the engine's paged KV cache and continuous batching; positions start at
//! each prompt's first token (as transformers does with left padding), so a prompt generates the
//! same tokens alone or in a batch, up to float rounding. The same code serves `medrl generate`,
//! evaluation, RL rollouts and judges.

pub mod config;

pub use config::GenerateConfig;
pub use crate::engine::request::{FinishReason, Generation, Progress, StopConditions};
pub use crate::engine::sampling::{sample, sequence_rng, Sampled, SamplingParams};
pub use crate::engine::EngineConfig;
// Differentiable, so it lives with the ops; re-exported where generation users look for it.
pub use medrl_nn::ops::token_logprobs;

use crate::model::CausalLm;

/// Generate for every prompt in `prompts` (each a list of token ids). Sequence `i` samples with
/// RNG stream `i` of `params.seed`. `pad_token_id` is unused since generation stopped padding
/// (kept so callers need not change).
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
    _pad_token_id: u32,
    progress: Option<Progress<'_>>,
) -> candle_core::Result<Vec<Generation>> {
    crate::engine::run(model, prompts, streams, params, stop, &EngineConfig::default(), progress)
}
