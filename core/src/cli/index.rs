//! `medrl index build|search|info`: local study indexes for the `search` capability.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::search::{self, BuildOptions, StudyIndex};

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Build a full-text index (tantivy, BM25 over title and abstract) from a corpus of studies:
    /// .jsonl, .json or .parquet rows {pmid (or id), title, abstract (or text)}. The folder is
    /// written atomically; a task grants it with `grants: {search: {index: DIR}}`.
    Build {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Replace an existing index folder.
        #[arg(long)]
        force: bool,
        /// Leave malformed rows out (each is logged with its file and row) instead of stopping.
        #[arg(long)]
        skip_bad_rows: bool,
    },
    /// Run a query (PubMed-style: AND/OR/NOT, "phrases", (groups), [ti]/[ab]/[tiab] tags)
    /// against an index folder and print the hits.
    Search {
        dir: PathBuf,
        query: String,
        #[arg(long, default_value_t = 10)]
        top_k: u32,
        /// One JSON object per hit instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an index folder's manifest.
    Info { dir: PathBuf },
}

pub fn run(cmd: IndexCommand) -> Result<()> {
    match cmd {
        IndexCommand::Build { corpus, output, force, skip_bad_rows } => {
            let t = std::time::Instant::now();
            let opts = BuildOptions { force, skip_bad_rows, progress: true };
            let r = search::build(&corpus, &output, &opts).with_context(|| format!("building index {} from {}", output.display(), corpus.display()))?;
            for (origin, msg) in r.skipped.iter().take(20) {
                tracing::warn!("skipped {origin}: {msg}");
            }
            if r.skipped.len() > 20 {
                tracing::warn!("... and {} more skipped rows", r.skipped.len() - 20);
            }
            println!(
                "indexed {} studies of {} into {} in {:.1?}{} (corpus sha256 {})",
                r.manifest.documents,
                corpus.display(),
                r.dir.display(),
                t.elapsed(),
                if r.skipped.is_empty() { String::new() } else { format!(", {} bad rows skipped", r.skipped.len()) },
                &r.manifest.corpus_sha256[..16]
            );
            Ok(())
        }
        IndexCommand::Search { dir, query, top_k, json } => {
            let idx = StudyIndex::open(&dir)?;
            let hits = idx.search_studies(&query, top_k)?;
            for (i, h) in hits.iter().enumerate() {
                if json {
                    println!("{}", serde_json::json!({"rank": i + 1, "pmid": h.pmid, "score": h.score, "title": h.title}));
                } else {
                    println!("{:>4}  {:>9.4}  {:<10}  {}", i + 1, h.score, h.pmid, h.title);
                }
            }
            if !json {
                eprintln!("{} hits of {} studies", hits.len(), idx.num_docs());
            }
            Ok(())
        }
        IndexCommand::Info { dir } => {
            let m = search::index::read_manifest(&dir)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
    }
}
