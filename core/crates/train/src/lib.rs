//! Training building blocks shared by SFT, GRPO and PPO: the optimizer (AdamW with f32 master
//! weights, decoupled weight decay, global-norm clipping), learning-rate schedules, losses,
//! trainable views of a model (full or LoRA), checkpoints, metrics; and the SFT loop itself.

pub mod checkpoint;
#[cfg(feature = "cuda")]
mod fused_adamw;
pub mod grpo;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod rewards;
pub mod rl;
pub mod ppo;
pub mod run_dir;
pub mod schedule;
pub mod sft;
pub mod trainable;

pub use loss::masked_token_nll;
pub use optim::{AdamW, AdamWConfig, StepStats};
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
