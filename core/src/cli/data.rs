//! `medrl data`: inspect and convert datasets.

use std::path::PathBuf;

use super::sft::load_sft_config;
use crate::train::sft;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Show how examples are rendered and which tokens are trained (marked [[...]]).
    Preview(PreviewArgs),
}

#[derive(clap::Args)]
pub struct PreviewArgs {
    /// An SFT run configuration (its model, datasets and tokenization settings are used).
    #[arg(long)]
    config: PathBuf,
    /// How many examples to show.
    #[arg(long, short, default_value_t = 2)]
    n: usize,
    overrides: Vec<String>,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Preview(a) => preview(a),
    }
}

fn preview(args: PreviewArgs) -> anyhow::Result<()> {
    let (cfg, _) = load_sft_config(&args.config, &args.overrides)?;
    let tok = crate::tokenizer::TextTokenizer::from_dir(&cfg.model)?;
    let prep = sft::prepare(&cfg, &tok)?;
    for (i, t) in prep.train.iter().take(args.n).enumerate() {
        println!("=== {} ({} tokens, {} trained{}) ===", prep.train_origins[i], t.ids.len(), t.trained_tokens(), if t.truncated { ", truncated" } else { "" });
        println!("{}", crate::data::tokenize::preview(&tok, t));
    }
    println!(
        "--- {} train / {} eval examples; {} rows read, {} skipped, {} truncated, {} dropped as too long, {} without assistant tokens",
        prep.train.len(),
        prep.eval.len(),
        prep.report.rows,
        prep.report.skipped_rows,
        prep.truncated,
        prep.dropped_too_long,
        prep.dropped_no_target
    );
    Ok(())
}
