//! Evaluation (issue 7, `medrl eval`).
//!
//! - [`metrics`]: BLEU, ROUGE, survival metrics and accuracy from strings and numbers, each
//!   checked against the Python package it reproduces (`tests/metrics.rs`, docs/metrics.md);
//! - [`answer`]: reading the answer out of a response (the extract-failure rate, majority vote);
//! - [`run`]: generating for a task's split, scoring with its reward plugins, metrics from the
//!   predictions ([`evaluate`] in memory for trainers, [`run_eval`] for resumable run folders);
//!   the rewards themselves (loading, scoring, accuracy rules) are medrl-reward's, re-exported
//!   here under their former names ([`Rewards`] = [`medrl_reward::RewardSet`]); a
//!   [`Responder`] answers the prompts: [`LocalModel`] in process, or
//! - [`remote`]: [`remote::OpenAiServer`], any OpenAI-compatible chat-completions server
//!   (`medrl eval --server`, vLLM, `medrl serve`);
//! - [`report`]: the comparison report (`medrl eval compare`): one self-contained HTML file and
//!   `report.json`.
//!
//! docs/eval.md describes the command, every metric and the report.
//!
//! Layer 8: imports medrl-base, medrl-lm (generation), medrl-data (examples), medrl-plugin and
//! medrl-reward (scoring), and ureq (the server client of [`remote`]); never tasks or training (the CLI maps a task onto an [`EvalTask`];
//! the trainers call [`evaluate`]). Module order: metrics, answer < run < remote, report.

pub mod answer;
pub mod metrics;
pub mod remote;
pub mod report;
pub mod run;

pub use answer::{AnswerParser, ReadAnswer};
pub use remote::{OpenAiServer, ServerConfig};
pub use run::{
    compute_metrics, evaluate, evaluate_with, read_predictions, run_eval, run_eval_with, AccuracySpec, EvalError, SurvivalSettings, EvalMetrics,
    EvalOptions, EvalTask, LocalModel, MetricSettings, Prediction, Responder, Response, RewardResult, RewardSet, RewardSpec, Rewards, RunConfig,
    RunControl, RunOutcome, Unit,
};
