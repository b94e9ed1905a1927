//! The rollout engine: one inference path for `medrl generate`, evaluation, RL rollouts and
//! judges.
//!
//! - [`blocks`]: the paged KV cache's bookkeeping (block pool with reference counts, block
//!   tables with copy on write for shared prompts);
//! - [`scheduler`]: continuous batching over those blocks (token budget, chunked prefill,
//!   recompute preemption, prompt groups that fork);
//! - [`cache`]: the cache's tensors and the attention of one step over them (a CUDA kernel for
//!   decode steps, primitive ops elsewhere: the reference);
//! - [`sampling`]: settings and per-sequence random streams; the arithmetic is
//!   [`medrl_nn::infer::sample_row`], batched on the device by [`medrl_nn::infer::sample_rows`];
//! - [`run`]: [`Engine`], which drives them with the model's inference forward one step at a
//!   time (requests added and dropped between steps, as a server needs), and the batch entry
//!   point [`run()`] over it.

pub mod blocks;
pub mod cache;
pub mod request;
pub mod run;
pub mod sampling;
pub mod scheduler;

pub use request::{FinishReason, Generation, Progress, StopConditions};
pub use run::{blocks_for, run, run_with_stats, Engine, EngineConfig, EngineStats, Request, StepOutput};
pub use scheduler::SeqId;

/// A cache or scheduler setting, or a request, that cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("engine: {0}")]
    Config(String),
    #[error("{0}")]
    Request(String),
}

/// The engine's loop runs on candle's `Result`; its errors keep their message there.
impl From<EngineError> for candle_core::Error {
    fn from(e: EngineError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}
