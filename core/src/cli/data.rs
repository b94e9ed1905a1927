//! `medrl data`: inspect and convert datasets.

use std::path::PathBuf;

use super::sft::load_sft_config;
use crate::train::sft;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Show how examples are rendered and which tokens are trained (marked [[...]]).
    Preview(PreviewArgs),
    /// Generate synthetic, verifiable training data.
    #[command(subcommand)]
    Synth(SynthCommand),
    /// Convert raw records (JSON, JSONL, Parquet) to medrl examples with a data adapter plugin;
    /// reports the file and row of every rejected record.
    Convert(ConvertArgs),
}

#[derive(clap::Subcommand)]
pub enum SynthCommand {
    /// Two-arm trial sample-size problems with exact answers (closed-form formulas; see
    /// `medrl::data::synth::sample_size`).
    SampleSize {
        #[arg(long, default_value_t = 100)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// .jsonl or .parquet (default: JSON lines on stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write TrialPanorama's VERL layout (prompt, data_source, ability, reward_model,
        /// extra_info) instead of medrl examples.
        #[arg(long)]
        verl: bool,
        /// The split recorded in VERL's extra_info and data_source.
        #[arg(long, default_value = "train")]
        split: String,
    },
    /// HCC EMR narratives with BCLC stage, top-3 treatments and survival (the hcc-composite
    /// ground truth).
    Hcc {
        #[arg(long, default_value_t = 100)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "mixed")]
        lang: crate::data::synth::hcc::Lang,
        /// .jsonl or .parquet (default: JSON lines on stdout).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// A bundled adapter name (e.g. `sharegpt-adapter`) or a `.wasm` file. Without it, records
    /// are copied as they are (JSON <-> Parquet).
    #[arg(long)]
    adapter: Option<String>,
    #[arg(long)]
    input: PathBuf,
    /// .jsonl or .parquet; see `medrl::data::write` for the Parquet layout.
    #[arg(long)]
    output: PathBuf,
    /// The adapter's config as a JSON object.
    #[arg(long, default_value = "{}")]
    config: String,
    /// Exit with an error if any record is rejected.
    #[arg(long)]
    strict: bool,
    /// Directory of the compiled-plugin cache (default: $MEDRL_CACHE_DIR or ~/.cache/medrl/plugins).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
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
        DataCommand::Synth(c) => synth(c),
        DataCommand::Convert(a) => convert(a),
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

fn write_out(output: Option<&std::path::Path>, examples: &[crate::data::Example]) -> anyhow::Result<()> {
    match output {
        Some(p) => {
            crate::data::write::write_examples(p, examples)?;
            eprintln!("wrote {} examples to {}", examples.len(), p.display());
        }
        None => {
            for e in examples {
                println!("{}", serde_json::to_string(e)?);
            }
        }
    }
    Ok(())
}

fn synth(cmd: SynthCommand) -> anyhow::Result<()> {
    use crate::data::synth;
    match cmd {
        SynthCommand::SampleSize { n, seed, output, verl, split } => {
            let ex = synth::sample_size::generate(n, seed);
            if !verl {
                return write_out(output.as_deref(), &ex);
            }
            let rows: Vec<serde_json::Value> = ex.iter().enumerate().map(|(i, e)| sample_size_verl(e, &split, i)).collect();
            match output.as_deref() {
                Some(p) if crate::data::read::FileKind::of(p)? == crate::data::read::FileKind::Parquet => crate::data::write::write_parquet(p, &rows)?,
                Some(p) => crate::data::read::write_jsonl(p, &rows)?,
                None => {
                    for r in &rows {
                        println!("{r}");
                    }
                }
            }
            Ok(())
        }
        SynthCommand::Hcc { n, seed, lang, output } => write_out(output.as_deref(), &synth::hcc::generate(n, seed, lang)),
    }
}

/// TrialPanorama's VERL row for a generated problem (see /work/shared/notes: prompt, ability,
/// reward_model {style, ground_truth {target, answer_type, trial_id, pmid}}, extra_info).
pub fn sample_size_verl(e: &crate::data::Example, split: &str, index: usize) -> serde_json::Value {
    let q = e.messages.iter().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default();
    let gt = &e.ground_truth;
    serde_json::json!({
        "data_source": format!("sample_size_estimation_{split}"),
        "prompt": [{"role": "user", "content": q}],
        "ability": "sample_size_estimation",
        "reward_model": {"style": "rule", "ground_truth": {
            "target": gt["target"].to_string(), "answer_type": "integer",
            "trial_id": gt["trial_id"].as_str().unwrap_or(""), "pmid": ""}},
        "extra_info": {"split": split, "index": index as i64, "question": q,
            "answer": e.messages.iter().rev().find(|m| m.role == "assistant").map(|m| m.content.clone()).unwrap_or_default()},
    })
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use crate::data::read::{read_records, FileKind};
    let config: serde_json::Value = serde_json::from_str(&a.config).context("--config must be a JSON object")?;
    let records = read_records(&a.input)?;
    let total = records.len();
    let mut rejected: Vec<String> = Vec::new();
    let mut good: Vec<(crate::data::Origin, serde_json::Value)> = Vec::new();
    for r in records {
        match r {
            Ok(x) => good.push(x),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    let mut out_rows: Vec<serde_json::Value> = Vec::new();
    let mut examples: Vec<crate::data::Example> = Vec::new();
    match &a.adapter {
        None => out_rows = good.into_iter().map(|(_, v)| v).collect(),
        Some(name) => {
            let path = adapter_path(name)?;
            let mut cfg = crate::plugin::HostConfig::default();
            if a.cache_dir.is_some() {
                cfg.cache_dir = a.cache_dir.clone();
            }
            let host = crate::plugin::PluginHost::new(cfg)?;
            let adapter = host
                .load_adapter(&path, crate::plugin::PluginOptions::default())
                .with_context(|| format!("loading adapter {}", path.display()))?;
            for chunk in good.chunks(256) {
                let texts: Vec<String> = chunk.iter().map(|(_, v)| v.to_string()).collect();
                let results = adapter.convert(&config, &texts).with_context(|| format!("adapter failed on {} rows {}-{}", a.input.display(), chunk[0].0.row, chunk[chunk.len() - 1].0.row))?;
                for ((origin, _), res) in chunk.iter().zip(results) {
                    let checked = res.map_err(|e| match e {
                        crate::plugin::PluginError::GuestError { message, .. } => message,
                        other => other.to_string(),
                    }).and_then(|v| {
                        crate::data::formats::to_example(&v, &crate::data::Formatting::Messages, &Default::default(), &Default::default())
                            .map_err(|m| format!("adapter output is not a valid example: {m}"))
                    });
                    match checked {
                        Ok(ex) => examples.push(ex),
                        Err(msg) => rejected.push(format!("{origin}: {msg}")),
                    }
                }
            }
        }
    }
    let written = if a.adapter.is_some() {
        crate::data::write::write_examples(&a.output, &examples)?;
        examples.len()
    } else {
        match FileKind::of(&a.output)? {
            FileKind::Parquet => crate::data::write::write_parquet(&a.output, &out_rows)?,
            FileKind::Jsonl => crate::data::read::write_jsonl(&a.output, &out_rows)?,
            FileKind::Json => crate::fsutil::write_atomic(&a.output, serde_json::to_string_pretty(&out_rows)?.as_bytes())
                .with_context(|| a.output.display().to_string())?,
        }
        out_rows.len()
    };
    for r in &rejected {
        eprintln!("rejected {r}");
    }
    eprintln!("converted {written} of {total} records from {} to {} ({} rejected)", a.input.display(), a.output.display(), rejected.len());
    if a.strict && !rejected.is_empty() {
        anyhow::bail!("{} records rejected", rejected.len());
    }
    if written == 0 && total > 0 {
        anyhow::bail!("no record converted");
    }
    Ok(())
}

/// A bundled adapter name (`plugins/target/wasm32-wasip2/release/<name>.wasm`) or a path.
fn adapter_path(name: &str) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(name);
    if name.ends_with(".wasm") || name.contains('/') {
        anyhow::ensure!(p.is_file(), "adapter {} not found", p.display());
        return Ok(p);
    }
    let file = format!("{}.wasm", name.replace('-', "_"));
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os(crate::task::PLUGIN_DIR_ENV) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(t) = crate::task::tasks_dir() {
        if let Some(repo) = t.parent() {
            dirs.push(repo.join("plugins/target/wasm32-wasip2/release"));
        }
    }
    for d in &dirs {
        if d.join(&file).is_file() {
            return Ok(d.join(&file));
        }
    }
    anyhow::bail!("bundled adapter {name:?} not found in {dirs:?} (build plugins/: scripts/setup-plugins.sh)")
}
