//! medrl-train: training, as a kit and the loops built from it.
//!
//! The kit, bottom up: [`optim`] (AdamW with f32 master weights, decoupled weight decay,
//! global-norm clipping; a fused CUDA step), [`schedule`] (learning-rate schedules), [`loss`],
//! [`trainable`] (full or LoRA views of a model), [`checkpoint`] and [`run_dir`] (atomic,
//! locked run folders), [`metrics`] (JSON lines and plots), [`error`], and [`session`] (a
//! [`session::TrainSession`]: run folder, resume, non-finite policy, checkpoint cadence, export).
//!
//! The loops: [`sft`], and [`rl`] (one [`rl::RlConfig`], the [`rl::RlAlgorithm`] trait and its
//! driver; GRPO, PPO and RLOO in `rl/algos/`).
//!
//! Layer 9: imports base, nn, lm, data, plugin, search, task and eval; nothing above (the CLI).
//! Module order: the kit < sft, rl; sft uses rl's validation; rl never imports sft.

pub mod checkpoint;
pub mod error;
#[cfg(feature = "cuda")]
mod fused_adamw;
pub mod lean_adamw;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod rewards;
pub mod rl;
pub mod run_dir;
pub mod schedule;
pub mod session;
pub mod sft;
pub mod trainable;

// The algorithms where callers have always found them (`medrl::train::grpo`).
pub use rl::algos::{grpo, ppo, rloo};

pub use error::RunError;
pub use loss::masked_token_nll;
pub use optim::{AdamW, AdamWConfig, MasterDtype, StateDtype, StepStats};
pub use schedule::{LrSchedule, ScheduleKind};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A NaN or infinite loss or gradient: the step is not applied, parameters are untouched.
    #[error("non-finite {what} at step {step}: {detail}")]
    NonFinite { what: &'static str, step: u64, detail: String },
    /// An update left a parameter NaN or infinite. It was applied in memory, so the run must
    /// stop; nothing of it was written.
    #[error("step {step}: the update made parameter `{tensor}` NaN or infinite (check training.lr and training.optimizer); the run stopped before writing anything, so the last checkpoint is intact")]
    NonFiniteWeights { step: u64, tensor: String },
    #[error("parameter `{name}`: {msg}")]
    Param { name: String, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
