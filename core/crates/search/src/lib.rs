//! Study search: the backends of the host's `search` capability (see
//! [`medrl_plugin::SearchIndex`]), which the study-search reward queries with the search
//! string a policy model wrote.
//!
//! - [`index`]: a local full-text index (tantivy, BM25 over title and abstract), built in memory
//!   from a corpus file or opened from a folder written by `medrl index build`;
//! - [`pubmed`]: PubMed itself through NCBI E-utilities ESearch, for users with network;
//! - [`query`]: the lenient PubMed-style query parser of the local index;
//! - [`corpus`]: corpus files (one study per row: pmid, title, abstract);
//! - [`analyzer`]: the tokenizer shared by indexing and querying.
//!
//! A task grants one backend per reward ([`SearchGrant`]: `corpus`, `index` or `pubmed`).
//! docs/search.md is the user guide.
//!
//! Errors are typed: [`SearchError`] (a bad corpus row carries a [`corpus::StudyError`], a grant
//! that is not exactly one sane backend a [`GrantError`]) and [`PubMedError`]. The one
//! exception is the [`SearchIndex`] implementations, whose `String` error the plugin trait
//! fixes (it goes to the WebAssembly guest as text).
//!
//! Layer 5: imports medrl-base, medrl-data (corpus files through its record reader) and
//! medrl-plugin (the `SearchIndex` trait the backends implement); never reward, task, eval or
//! train. Module order inside: analyzer < query < index; corpus < index; pubmed stands alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use medrl_data::Origin;
use medrl_plugin::SearchIndex;

pub mod analyzer;
pub mod corpus;
pub mod index;
pub mod pubmed;
pub mod query;

pub use corpus::{read_corpus, Corpus, Study, StudyError};
pub use index::{build, BuildOptions, BuildReport, Manifest, StudyHit, StudyIndex};
pub use pubmed::{PubMed, PubMedConfig, PubMedError};

/// Environment variable read for the NCBI API key when a `pubmed` grant gives none.
pub const NCBI_API_KEY_ENV: &str = "NCBI_API_KEY";

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {source}")]
    BadRow { origin: Origin, source: corpus::StudyError },
    #[error("{file}: {msg}")]
    Corpus { file: PathBuf, msg: String },
    #[error("{dir} is not a medrl study index: {reason}")]
    NotAnIndex { dir: PathBuf, reason: String },
    #[error("index {dir} cannot be used: {msg}")]
    Incompatible { dir: PathBuf, msg: String },
    #[error("{dir} already exists (pass --force to replace it)")]
    Exists { dir: PathBuf },
    #[error("{what}: {source}")]
    Tantivy { what: String, source: tantivy::TantivyError },
    #[error("empty query")]
    EmptyQuery,
    #[error("search grant: {0}")]
    Grant(#[from] GrantError),
}

/// A `grants.search` that is not exactly one backend with sane settings ([`SearchGrant::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("give exactly one of `corpus`, `index`, `pubmed` (got {got})")]
    NotOneBackend { got: usize },
    #[error("pubmed.email must not be empty (NCBI asks every client for a contact address)")]
    EmptyEmail,
    #[error("pubmed.timeout_s must be a positive number")]
    BadTimeout,
}

/// `grants.search` of a task reward: exactly one backend.
///
/// ```yaml
/// grants:
///   search: {corpus: corpus.jsonl}          # indexed in memory when the run starts
///   # or  search: {index: study-index}      # a folder from `medrl index build`
///   # or  search: {pubmed: {email: you@example.org}}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchGrant {
    /// A corpus file (.jsonl, .json or .parquet; rows `{pmid|id, title, abstract|text}`),
    /// indexed in memory each time a run starts. Relative to the task folder in task.yaml, to
    /// the working directory in a run config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<PathBuf>,
    /// An index folder written by `medrl index build` (relative like `corpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<PathBuf>,
    /// PubMed through NCBI E-utilities (needs network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubmed: Option<PubMedGrant>,
}

/// NCBI E-utilities settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PubMedGrant {
    /// Contact address sent with every request, as NCBI asks.
    pub email: String,
    /// NCBI API key (10 requests/s instead of 3). Default: $NCBI_API_KEY; better there than
    /// in a task file that gets committed.
    #[serde(default)]
    pub api_key: Option<String>,
    /// E-utilities base URL (default: https://eutils.ncbi.nlm.nih.gov/entrez/eutils).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

fn default_timeout_s() -> f64 {
    15.0
}

impl SearchGrant {
    /// Exactly one backend, with sane settings.
    pub fn check(&self) -> Result<(), GrantError> {
        let n = [self.corpus.is_some(), self.index.is_some(), self.pubmed.is_some()].iter().filter(|b| **b).count();
        if n != 1 {
            return Err(GrantError::NotOneBackend { got: n });
        }
        if let Some(p) = &self.pubmed {
            if p.email.trim().is_empty() {
                return Err(GrantError::EmptyEmail);
            }
            if !(p.timeout_s.is_finite() && p.timeout_s > 0.0) {
                return Err(GrantError::BadTimeout);
            }
        }
        Ok(())
    }

    /// Make `corpus` / `index` paths relative to `dir` (absolute paths stay).
    pub fn resolve(&mut self, dir: &Path) {
        for p in [&mut self.corpus, &mut self.index].into_iter().flatten() {
            *p = dir.join(&*p);
        }
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match (&self.corpus, &self.index, &self.pubmed) {
            (Some(c), _, _) => format!("corpus {}", c.display()),
            (_, Some(i), _) => format!("index {}", i.display()),
            (_, _, Some(p)) => format!("pubmed {}", p.base_url.as_deref().unwrap_or(pubmed::DEFAULT_BASE_URL)),
            _ => "no backend".into(),
        }
    }

    /// The backend: the corpus indexed in memory, the index folder opened, or a PubMed client.
    pub fn open(&self) -> Result<Box<dyn SearchIndex>, SearchError> {
        self.check().map_err(SearchError::Grant)?;
        if let Some(c) = &self.corpus {
            return Ok(Box::new(StudyIndex::from_corpus(c)?));
        }
        if let Some(i) = &self.index {
            return Ok(Box::new(StudyIndex::open(i)?));
        }
        let p = self.pubmed.as_ref().expect("checked: one backend");
        let cfg = PubMedConfig {
            base_url: p.base_url.clone().unwrap_or_else(|| pubmed::DEFAULT_BASE_URL.into()),
            email: Some(p.email.clone()),
            api_key: p.api_key.clone().or_else(|| std::env::var(NCBI_API_KEY_ENV).ok().filter(|k| !k.trim().is_empty())),
            timeout: Duration::from_secs_f64(p.timeout_s),
            ..PubMedConfig::default()
        };
        Ok(Box::new(PubMed::new(cfg)))
    }
}
