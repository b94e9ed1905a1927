//! What can go wrong loading or scoring rewards.

/// Errors of [`crate::RewardSet`], [`crate::load_rewards`], [`crate::ToolSet`] and [`crate::host`].
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// The plugin host could not start (engine, compile cache).
    #[error("plugin host: {0}")]
    Host(#[source] Box<medrl_plugin::PluginError>),
    /// Loading or calling a plugin failed (with the `fail` policy, a failed call).
    #[error("reward `{name}`: {source}")]
    Plugin { name: String, source: Box<medrl_plugin::PluginError> },
    /// Loading or calling a tool failed (a call: under `on_failure: fail`). `name` is the tool's
    /// name, or its plugin path when loading failed before the name was known.
    #[error("tool `{name}`: {source}")]
    Tool { name: String, source: Box<medrl_plugin::PluginError> },
    /// Two tools of a set have the same name (the model calls tools by name).
    #[error("two tools are named `{name}`: {} and {}", .first.display(), .second.display())]
    DuplicateTool { name: String, first: std::path::PathBuf, second: std::path::PathBuf },
    /// `on_failure` is not `fail`, `drop` or `score:<value>`.
    #[error("reward `{name}`: on_failure: {source}")]
    Policy { name: String, source: medrl_plugin::ParsePolicyError },
    /// `timeout_s` is not a usable call deadline.
    #[error("reward `{name}`: {source}")]
    Deadline { name: String, source: BadTimeout },
    /// A reward set needs at least one plugin.
    #[error("at least one reward plugin is needed")]
    Empty,
}

/// A `timeout_s` outside (0, 86400] seconds.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("timeout_s {0} must be in (0, 86400] seconds")]
pub struct BadTimeout(pub f64);
