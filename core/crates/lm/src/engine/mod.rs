//! The rollout engine's bookkeeping (issue 16, first part): a paged KV cache's blocks and block
//! tables ([`blocks`]) and the continuous-batching scheduler over them ([`scheduler`]).
//!
//! Both are pure logic on ids and counts, tested on CPU: the cache tensors, the attention that
//! reads keys and values through block tables, and the generation loop that drives the
//! scheduler come next and will replace `generate`'s contiguous per-batch cache. Nothing in
//! medrl runs through this module yet.

pub mod blocks;
pub mod scheduler;

/// A cache or scheduler setting, or a request, that cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("engine: {0}")]
    Config(String),
    #[error("{0}")]
    Request(String),
}
