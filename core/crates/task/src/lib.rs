//! Task bundles: a task is data, not code.
//!
//! `tasks/<name>/task.yaml` names the task's datasets per split (each a
//! [`DatasetRef`] resolved with the task folder as `dataset_dir`), its system prompt and an
//! optional prompt template, the reward plugins with weights, configs and the capabilities they
//! are granted, and the validation metrics. The file is a typed serde config
//! (`deny_unknown_fields`; errors name the file and the key path, as in [`medrl_base::config`]).
//!
//! Used by `medrl task list|show|validate`, and by training and evaluation:
//! [`Task::load`], [`Task::examples`], [`Task::reward_specs`], [`Task::reward_set_specs`] (the
//! rewards as medrl-reward loads them, for a trainer or `medrl eval`), [`Task::metrics`].
//!
//! ```yaml
//! name: trialpanorama-sample-size
//! description: ...
//! data:
//!   train: {path: data/train.parquet, formatting: verl}
//!   test: {path: data/test.jsonl, formatting: messages}
//! system_prompt: You are a biostatistician.
//! prompt_template: "{question}"      # optional: renders the user turn from metadata fields
//! rewards:
//!   - plugin: sample-size            # bundled name, or a path to a .wasm (relative to the task)
//!     weight: 1.0
//!     config: {tolerance: 0.2}
//!     grants: {}                     # judge / search, see GrantsSpec
//! metrics:
//!   answer: number                   # how evaluation reads the answer (AnswerKind; default text)
//!   answer_prefix: ""                # text the reward puts before the response (default "")
//!   accuracy: {component: accuracy, threshold: 1.0}
//!   text: [bleu, rouge]
//! ```
//!
//! # Modules
//!
//! One concern each, in dependency order (a module imports only modules before it; unit tests
//! aside; `tests/layering.rs` checks there is no cycle):
//! 1. [`template`]: prompt templates (`{field}` rendering, injecting the user turn);
//! 2. [`grants`]: the judge / search capabilities a reward is granted ([`JudgeGrant`],
//!    [`GrantsSpec`]);
//! 3. [`example`]: what a task reads from an example (prompt, reference answer, ground truth);
//! 4. [`schema`]: the `task.yaml` types ([`TaskConfig`] and its parts) and their
//!    [`Validate`](medrl_base::config::Validate) rules;
//! 5. [`error`]: [`TaskError`];
//! 6. [`bundle`]: a loaded [`Task`] and its API (datasets, examples, rewards, metrics);
//! 7. [`load`]: finding and loading tasks ([`tasks_dir`], [`list`], [`Task::load`]; task.yaml
//!    goes through [`medrl_base::config::load`]);
//! 8. [`validate`]: `medrl task validate`.
//!
//! Every public item is re-exported here: `medrl_task::Task`, `medrl_task::JudgeGrant`, ...
//!
//! # Layering
//!
//! medrl-task owns the task bundle: its file format, its loading and validation, and the
//! mapping of its rewards onto medrl-reward's [`RewardSpec`](medrl_reward::RewardSpec). It
//! imports medrl-base, medrl-lm, medrl-data, medrl-plugin, medrl-search and medrl-reward, and
//! never medrl-eval or medrl-train (they import this crate).

pub mod template;
pub mod grants;
pub mod example;
pub mod schema;
pub mod error;
pub mod bundle;
pub mod load;
pub mod validate;

pub use bundle::{RewardSpec, Task};
pub use error::TaskError;
pub use example::{prompt_messages, reference_answer};
pub use grants::{GrantsSpec, JudgeGrant, SearchGrant};
pub use load::{list, tasks_dir, PLUGIN_DIR_ENV, TASKS_DIR_ENV};
pub use schema::{AccuracySpec, AnswerKind, DataSplits, MetricsSpec, RewardEntry, Split, SurvivalSpec, TaskConfig, TextMetric, UnknownSplit};
pub use template::{render_template, template_fields, TemplateError};
pub use validate::{validate, CheckStatus, ValidationReport};
