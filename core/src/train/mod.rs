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
    #[error("parameter `{name}`: {msg}")]
    Param { name: String, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
