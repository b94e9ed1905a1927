//! `medrl sft`.

use std::path::{Path, PathBuf};

use crate::config;
use crate::train::sft::{self, RunOptions, SftConfig};

#[derive(clap::Args)]
pub struct SftArgs {
    /// Run configuration (see `medrl schema sft` and configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in output_dir.
    #[arg(long)]
    resume: bool,
    /// Stop after this many optimizer steps of this invocation (the run stays resumable).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Configuration overrides, `key.sub=value` (e.g. training.lr=1e-4 lora.rank=16).
    overrides: Vec<String>,
}

/// Load a config file with overrides, keeping the merged tree (for multi-stage runs).
pub fn load_sft_config(path: &Path, overrides: &[String]) -> anyhow::Result<(SftConfig, serde_yaml::Value)> {
    Ok(config::load_with_tree(Some(path), overrides)?)
}

pub fn run(args: SftArgs) -> anyhow::Result<()> {
    let (cfg, tree) = load_sft_config(&args.config, &args.overrides)?;
    let outcome = sft::run(&cfg, &tree, &RunOptions { resume: args.resume, stop_after: args.stop_after })?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}
