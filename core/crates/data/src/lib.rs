//! Datasets: reading records from JSON, JSONL and Parquet files, mapping them from the formats
//! users already have (alpaca, sharegpt, VERL parquet, LLaMA-Factory's `dataset_info.json`)
//! into medrl's [`Example`], and turning examples into token ids with a loss mask.
//!
//! Every record keeps its origin (file and 1-based row), so a malformed row is reported where
//! the user can find it; the caller decides whether to stop or skip ([`BadRowPolicy`]).
//!
//! Errors are typed ([`DataError`]; a record's own fault is a [`formats::RecordError`], a damaged
//! Parquet row group a [`read::RowGroupFault`], a column that cannot be written a
//! [`write::ColumnError`]); their messages name the file, row, column or key.
//!
//! Layer 3: imports medrl-base, medrl-nn (`MASK_VALUE`), medrl-lm (tokenizer, chat messages) and
//! medrl-reward-sdk (JSON helpers shared with reward plugins); never plugin, search, reward,
//! task, eval or train. Module order inside: read < write; tokenize < formats < registry
//! (a record's errors include tokenizing's); tokenize < batch.

pub mod batch;
pub mod formats;
pub mod read;
pub mod registry;
pub mod synth;
pub mod tokenize;
pub mod write;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use medrl_lm::tokenizer::ChatMessage;

pub use batch::{Batch, Batcher, BatchingConfig};
pub use formats::Formatting;
pub use registry::{DatasetInfo, DatasetSpec};
pub use tokenize::{TokenizedExample, Tokenizing};

/// medrl's example schema, shared with data adapter plugins (see the WIT `data-adapter` world):
/// a conversation plus what a reward needs to score a response to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub ground_truth: serde_json::Value,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub data_source: String,
}

impl Example {
    /// The prompt: every message before the trailing assistant turn(s). SFT, RL rollouts,
    /// evaluation and task validation all split an example here: a conversation that ends with
    /// the assistant's answer is a prompt plus its reference.
    pub fn prompt_messages(&self) -> &[ChatMessage] {
        let mut end = self.messages.len();
        while end > 0 && self.messages[end - 1].role == "assistant" {
            end -= 1;
        }
        &self.messages[..end]
    }

    /// The reference turn: the last message, when it is the assistant's.
    pub fn reference_turn(&self) -> Option<&str> {
        self.messages.last().filter(|m| m.role == "assistant").map(|m| m.content.as_str())
    }

    /// The reference answer: the ground truth's reference text ([`reference_text`]), else a
    /// non-blank reference turn.
    pub fn reference(&self) -> Option<&str> {
        reference_text(&self.ground_truth).or_else(|| self.reference_turn().filter(|c| !c.trim().is_empty()))
    }
}

/// The reference text of a ground truth: a non-blank string, or an object's non-blank
/// `reference`, `answer`, `output`, `response` or `Ground-True Answer` (medical-o1's key).
pub fn reference_text(gt: &serde_json::Value) -> Option<&str> {
    use serde_json::Value;
    match gt {
        Value::String(s) if !s.trim().is_empty() => Some(s),
        Value::Object(m) => ["reference", "answer", "output", "response", "Ground-True Answer"].iter().find_map(|k| m.get(*k).and_then(Value::as_str)).filter(|s| !s.trim().is_empty()),
        _ => None,
    }
}

/// Where a record came from: file and 1-based row (line for JSONL, element for JSON arrays,
/// row for Parquet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    pub row: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row {}", self.file.display(), self.row)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// One record that cannot be used. Skippable under [`BadRowPolicy::Skip`].
    #[error("{origin}: {msg}")]
    Row { origin: Origin, msg: String },
    /// A record that cannot be converted, trained on or tokenized (the same message as
    /// [`DataError::Row`], typed). Skippable under [`BadRowPolicy::Skip`].
    #[error("{origin}: {source}")]
    Record { origin: Origin, source: formats::RecordError },
    #[error("dataset `{name}`: {msg}")]
    Registry { name: String, msg: String },
    #[error("{0}")]
    Tokenize(String),
    #[error("{msg}")]
    Empty { msg: String },
    /// A Parquet row group that cannot be decoded (damaged pages). Not skippable: the rows of a
    /// damaged row group cannot be told apart, so the file fails.
    #[error("{path} row group {row_group} of {row_groups} ({rows} rows from row {first_row}): {fault}")]
    RowGroup { path: PathBuf, row_group: usize, row_groups: usize, first_row: usize, rows: usize, fault: read::RowGroupFault },
    /// A column that cannot be written to Parquet (mixed types, ...).
    #[error("{path}: column `{column}`: {source}")]
    Column { path: PathBuf, column: String, source: write::ColumnError },
    /// A dataset file without a single record.
    #[error("{path}: the dataset file has no records (it is empty)")]
    EmptyFile { path: PathBuf },
    /// An error in the dataset a config key names (`data.train[0]`).
    #[error("{key}: {source}")]
    Dataset { key: String, source: Box<DataError> },
}

impl DataError {
    /// One record's error ([`DataError::Row`], [`DataError::Record`]): skippable under
    /// [`BadRowPolicy::Skip`].
    pub fn is_row(&self) -> bool {
        matches!(self, DataError::Row { .. } | DataError::Record { .. })
    }
}

/// What to do with a record that cannot be parsed, converted or tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BadRowPolicy {
    /// Stop with an error naming the file and row.
    #[default]
    Fail,
    /// Log a warning with the file and row, count it in the metrics, and go on.
    Skip,
}

/// Rows seen and rows dropped while loading, for the run's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    pub rows: usize,
    pub skipped_rows: usize,
    /// Up to 20 skipped rows with the reason, to show the user.
    pub skipped_examples: Vec<String>,
}

impl LoadReport {
    pub fn skip(&mut self, err: &DataError) {
        self.skipped_rows += 1;
        if self.skipped_examples.len() < 20 {
            self.skipped_examples.push(err.to_string());
        }
        tracing::warn!("skipping {err}");
    }

    pub fn merge(&mut self, other: LoadReport) {
        self.rows += other.rows;
        self.skipped_rows += other.skipped_rows;
        for e in other.skipped_examples {
            if self.skipped_examples.len() < 20 {
                self.skipped_examples.push(e);
            }
        }
    }
}

/// Load examples from one dataset spec, applying `policy` to bad rows.
pub fn load_examples(spec: &DatasetSpec, policy: BadRowPolicy) -> Result<(Vec<(Origin, Example)>, LoadReport), DataError> {
    let records = read::read_records(&spec.path)?;
    if records.is_empty() {
        return Err(DataError::EmptyFile { path: spec.path.clone() });
    }
    let mut report = LoadReport::default();
    let mut out = Vec::new();
    let limit = spec.num_samples.unwrap_or(usize::MAX);
    for rec in records.into_iter().take(limit) {
        report.rows += 1;
        let converted = rec.and_then(|(origin, value)| {
            formats::to_example(&value, &spec.formatting, &spec.columns, &spec.tags)
                .map(|ex| (origin.clone(), ex))
                .map_err(|source| DataError::Record { origin, source })
        });
        match converted {
            Ok((origin, mut ex)) => {
                if let Some(system) = &spec.system {
                    if ex.messages.first().map(|m| m.role.as_str()) != Some("system") {
                        ex.messages.insert(0, ChatMessage::system(system.clone()));
                    }
                }
                if ex.data_source.is_empty() {
                    ex.data_source = spec.name.clone();
                }
                out.push((origin, ex))
            }
            Err(e) if e.is_row() && policy == BadRowPolicy::Skip => report.skip(&e),
            Err(e) => return Err(e),
        }
    }
    Ok((out, report))
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn an_example_splits_into_the_prompt_and_its_last_assistant_turn() {
        let ex = |m: Vec<ChatMessage>| Example { messages: m, ground_truth: serde_json::Value::Null, metadata: serde_json::Value::Null, data_source: String::new() };
        let e = ex(vec![ChatMessage::system("s"), ChatMessage::user("q"), ChatMessage::assistant("a1"), ChatMessage::assistant("a2")]);
        assert_eq!(e.prompt_messages().len(), 2);
        assert_eq!(e.reference_turn(), Some("a2"));
        let e = ex(vec![ChatMessage::user("q")]);
        assert_eq!((e.prompt_messages().len(), e.reference_turn()), (1, None));
        let e = ex(vec![ChatMessage::assistant("only")]);
        assert_eq!((e.prompt_messages().len(), e.reference_turn()), (0, Some("only")));
    }
}
