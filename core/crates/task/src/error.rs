//! What can go wrong finding, loading and using a task.

use std::path::PathBuf;

use medrl_base::config::ConfigError;
use medrl_data::DataError;

use crate::schema::Split;

/// Errors of [`crate::Task`] and the functions that find tasks.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{file}: {source}")]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}: YAML syntax error{}: {msg}", location.map(|(l, c)| format!(" at line {l}, column {c}")).unwrap_or_default())]
    Syntax { file: PathBuf, location: Option<(usize, usize)>, msg: String },
    #[error("{file}: key `{key}`: {msg}")]
    Invalid { file: PathBuf, key: String, msg: String },
    #[error("task `{name}` not found: {msg}")]
    NotFound { name: String, msg: String },
    #[error("task `{task}`, split `{split}`: {source}")]
    Data { task: String, split: Split, source: DataError },
    #[error("task `{task}`: {msg}")]
    Other { task: String, msg: String },
    /// The judge a reward's grant asks for could not be had; the message is the judge
    /// provider's own (it names the task and the reward).
    #[error("{source}")]
    Judge { task: String, reward: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// A reward's search backend (corpus, index, PubMed) could not be opened.
    #[error("task `{task}`: reward `{reward}`: search backend: {source}")]
    Search { task: String, reward: String, source: medrl_search::SearchError },
    /// A config-loader error that is none of the above (a command-line override; task.yaml
    /// is loaded without any).
    #[error(transparent)]
    Config(ConfigError),
}

/// task.yaml is read by [`medrl_base::config`]: its file, syntax and key errors become the
/// task's own variants (same wording).
impl From<ConfigError> for TaskError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Io { file, source } => TaskError::Io { file, source },
            ConfigError::Syntax { file, location, msg } => TaskError::Syntax { file, location, msg },
            ConfigError::Invalid { file, key, msg } => TaskError::Invalid { file, key, msg },
            other => TaskError::Config(other),
        }
    }
}
