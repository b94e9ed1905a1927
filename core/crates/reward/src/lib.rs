//! medrl-reward: rewards as trainers and evaluation score them.
//!
//! This crate owns everything between "a list of reward plugins" and "one score per response":
//! - [`RewardSpec`]: one reward ready to load (name, `.wasm` path, weight, config, granted
//!   capabilities, failure policy, call deadline); [`RewardSet`]: the loaded plugins of a task
//!   or run ([`RewardSet::load`], [`RewardSet::names`], [`RewardSet::score`]), whose
//!   [`RewardResult`] per response (weighted total, per-plugin scores, components, failures)
//!   is what GRPO/PPO train on, what validation reports and what `medrl eval` writes;
//!   [`host`] makes the plugin host to load them in;
//! - [`RewardConfig`] and [`load_rewards`]: rewards as a run config lists them (`rewards:` of
//!   the SFT/GRPO/PPO YAML: plugin path, weight, config, `on_failure`, `timeout_s`). It stays a
//!   type of its own because it cannot be merged with [`RewardSpec`]: a loaded spec holds live
//!   capability handles (`Arc<dyn Judge>`, `Arc<dyn SearchIndex>`) that have no serde shape or
//!   JSON Schema, a parsed [`medrl_plugin::FailurePolicy`] and a `Duration` where the file has
//!   strings and seconds, and its name, which the file does not carry
//!   ([`RewardConfig::to_spec`] converts);
//! - [`ToolConfig`], [`ToolSet`], [`ToolOutcome`] ([`tools`]): tool plugins a model calls during
//!   a multi-turn rollout, as a run config lists them (`tools:` entries: plugin, config,
//!   `on_failure` of `message`, `drop` or `fail`, `timeout_s`), loaded, offered to the model
//!   ([`ToolSpec`]) and called by name with the failure policy applied, with counters per tool;
//! - [`AccuracySpec`], [`accuracy_value`], [`is_correct`]: when a scored response is correct;
//! - [`AnswerKind`]: where a task's reward reads the answer (`metrics.answer` in task.yaml), so
//!   evaluation parses the answer the reward saw;
//! - [`judge`]: the plugins' `judge` capability backed by a loaded model (classifier or causal LM);
//! - [`RewardError`]: the typed errors of all of the above.
//!
//! It knows no plugin by name: what a task's rewards mean for parsing and accuracy is declared
//! in the task, never inferred from which plugins it uses.
//!
//! Layer 6 (counting medrl-base as 0; tests/layering.rs): imports medrl-base, medrl-nn, medrl-lm and medrl-plugin; never data, search,
//! tasks, evaluation or training (task bundles map their rewards onto [`RewardSpec`] in
//! medrl-task; evaluation and training import this crate).

pub mod accuracy;
pub mod answer;
pub mod config;
pub mod error;
pub mod judge;
pub mod set;
pub mod tools;

pub use accuracy::{accuracy_value, is_correct, AccuracySpec};
pub use answer::AnswerKind;
pub use config::{load_rewards, reward_names, RewardConfig};
pub use error::{BadTimeout, RewardError};
pub use medrl_plugin::ToolSpec;
pub use set::{host, RewardResult, RewardSet, RewardSpec};
pub use tools::{load_tools, load_tools_each, ToolConfig, ToolFailure, ToolOutcome, ToolSet, ToolStats};
