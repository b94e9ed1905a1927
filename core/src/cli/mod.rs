//! Command-line handlers. `anyhow` is used only here; the library returns typed errors.

pub mod plugin;
pub mod reward;
