//! Evaluation (issue 7, `medrl eval`).
//!
//! - [`metrics`]: BLEU, ROUGE, survival metrics and accuracy from strings and numbers, each
//!   checked against the Python package it reproduces (`tests/metrics.rs`, docs/metrics.md);
//! - [`answer`]: reading the answer out of a response (the extract-failure rate, majority vote);
//! - [`run`]: generating for a task's split, scoring with its reward plugins, metrics from the
//!   predictions ([`evaluate`] in memory for trainers, [`run_eval`] for resumable run folders);
//!   the rewards themselves (loading, scoring, accuracy rules) are medrl-reward's, re-exported
//!   here under their former names ([`Rewards`] = [`medrl_reward::RewardSet`]);
//! - [`report`]: the comparison report (`medrl eval compare`): one self-contained HTML file and
//!   `report.json`.
//!
//! docs/eval.md describes the command, every metric and the report.
//!
//! Layer 8: imports medrl-base, medrl-lm (generation), medrl-data (examples), medrl-plugin and
//! medrl-reward (scoring); never tasks or training (the CLI maps a task onto an [`EvalTask`];
//! the trainers call [`evaluate`]). Module order: metrics, answer < run < report.

pub mod answer;
pub mod metrics;
pub mod report;
pub mod run;

pub use answer::{AnswerParser, ReadAnswer};
pub use run::{
    compute_metrics, evaluate, read_predictions, run_eval, AccuracySpec, EvalError, SurvivalSettings, EvalMetrics, EvalOptions, EvalTask,
    MetricSettings, Prediction, RewardResult, RewardSet, RewardSpec, Rewards, RunConfig, RunControl, RunOutcome,
};
