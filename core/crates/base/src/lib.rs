//! medrl-base: what every other medrl crate may use and nothing in it knows about models,
//! data or plugins.
//!
//! - [`config`]: YAML run configurations with `key.path=value` overrides and [`config::Validate`];
//! - [`fsutil`]: atomic writes and durable renames (nothing already written is lost on a crash);
//! - [`plot`]: dependency-free SVG line charts for metrics;
//! - [`progress`]: logging set-up and progress bars.
//!
//! Layer 0: imports no other medrl crate.

pub mod config;
pub mod fsutil;
pub mod plot;
pub mod progress;
pub mod tensorboard;
