pub mod cli;
pub mod plugin;
