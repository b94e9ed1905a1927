//! Reinforcement learning from plugin rewards.
//!
//! - [`agent`]: multi-turn rollouts with tools ([`agent::AgentLoop`], [`agent::ToolRunner`]);
//! - [`config`]: the one [`RlConfig`] every algorithm reads, its `algorithm:` section typed by
//!   the algorithm ([`AlgorithmConfig`]);
//! - [`run`]: [`RlRun`], the run an algorithm drives (model, prompts, rewards, optimizer, the
//!   [`crate::session::TrainSession`]) and its rollouts;
//! - [`algorithm`]: the [`RlAlgorithm`] trait and [`drive`], the loop every algorithm shares;
//! - [`pg`]: policy-gradient pieces (KL estimators, entropy, the clipped surrogate update);
//! - [`validation`]: prompts and validation on held-out prompts (also used by SFT);
//! - [`algos`]: GRPO, PPO, RLOO, and the registry ([`algos::dispatch`]).
//!
//! Module order: agent < config < validation < sources < run < pg < algorithm < algos.

pub mod agent;
pub mod algorithm;
pub mod algos;
pub mod config;
pub mod pg;
pub mod run;
mod sources;
pub mod validation;

pub use algorithm::{drive, drive_with_tools, RlAlgorithm, RlOutcome, StepUpdate};
pub use config::{default_rollout, AlgorithmConfig, CriticConfig, EvalSampling, RlConfig, RlData, RlTraining};
pub use run::{micro_batches, Rollout, RlRun};
pub use validation::{prompt_example, prompts_from_examples, validate, validate_by, validate_with, RlPrompt, Validation};
