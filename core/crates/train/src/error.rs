//! The error of a training run (SFT, GRPO, PPO, RLOO): what failed and where.

use std::path::PathBuf;

use crate::TrainError;
use medrl_data::DataError;
use medrl_lm::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    #[error(transparent)]
    ConfigFile(#[from] medrl_base::config::ConfigError),
    /// The config's device or dtype (`key`) cannot be used.
    #[error("config key `{key}`: {source}")]
    Device { key: &'static str, source: medrl_nn::device::DeviceError },
    #[error("config key `{key}`: {source}")]
    LoraTargets { key: &'static str, source: crate::trainable::LoraTargetError },
    /// A config value that cannot be used as given (`key` is its path in the config).
    #[error("config key `{key}`: {msg}")]
    Config { key: String, msg: String },
    /// `output_dir` holds a run and `--resume` was not given.
    #[error("{dir} already has checkpoints; pass --resume to continue that run, or choose another output_dir")]
    NotEmpty { dir: PathBuf },
    /// The checkpoint to resume was written by another config or algorithm.
    #[error("{dir}: this checkpoint was written by a different run config (a `{found_kind}` run, config hash {found_hash}; this is a `{kind}` run, hash {hash}): a different training config cannot resume it; resume with the same config, or choose another output_dir")]
    ConfigMismatch { dir: PathBuf, found_kind: String, found_hash: String, kind: String, hash: String },
    #[error(transparent)]
    Task(#[from] medrl_task::TaskError),
    #[error(transparent)]
    Rewards(#[from] medrl_reward::RewardError),
    #[error(transparent)]
    Plugin(#[from] medrl_plugin::PluginError),
    #[error(transparent)]
    Eval(#[from] medrl_eval::EvalError),
    #[error("task `{task}` declares no reward plugin; list `rewards` in the config")]
    NoRewards { task: String },
    /// Every training prompt was left out (none given, or all longer than `data.max_prompt_len`).
    #[error("no training prompts")]
    NoPrompts,
    /// A multi-turn rollout failed: a template that cannot carry tool replies, or a tool under
    /// its `fail` policy.
    #[error(transparent)]
    Agent(#[from] medrl_lm::agent::AgentError),
    #[error("critic {dir}: vocabulary size {critic} differs from the policy's {policy}; the critic must share the policy's tokenizer")]
    CriticVocab { dir: PathBuf, critic: usize, policy: usize },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An asynchronous run's checkpoint lacks the behavior-policy weights of its next step.
    #[error("{dir}: the checkpoint at step {step} has no behavior-policy weights (behavior/*), which an `async: true` run needs to redraw the next step's rollouts; resume with the config that wrote it, or start a fresh run")]
    NoBehavior { dir: PathBuf, step: u64 },
}

impl From<candle_core::Error> for RunError {
    fn from(e: candle_core::Error) -> Self {
        RunError::Train(TrainError::Candle(e))
    }
}

impl RunError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
        move |source| RunError::Io { path: path.to_path_buf(), source }
    }
}
