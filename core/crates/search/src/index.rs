//! The local study index: tantivy, BM25 over title and abstract.
//!
//! Schema (version [`SCHEMA_VERSION`]): `pmid` (raw string, stored), `title` (analyzed, with
//! positions for phrases, stored so `medrl index search` can show it) and `abstract`
//! (analyzed, with positions, not stored: the abstract is the bulk of the corpus and nothing
//! reads it back). Both text fields use [`super::analyzer`].
//!
//! Ranking is tantivy's BM25 (k1 = 1.2, b = 0.75, per-field length normalization) summed over
//! the matching clauses, with title matches weighted [`TITLE_BOOST`] = 1.5: a title names what
//! a trial studied, while an abstract also mentions comparators and background, so a title
//! hit is better evidence, but not so much better that a title-only hit of one term beats a
//! study matching more of the query in its abstract. Hits are ordered by score, equal scores by
//! pmid, so results do not depend on how the index happens to be segmented.
//!
//! A folder index is written by [`build`]: the corpus is read and checked first, the index is
//! built in a sibling temporary folder, [`MANIFEST`] is written last, and the folder is renamed
//! into place (an old index is swapped out only after the new one is complete). A failed build
//! therefore leaves either nothing or the previous index.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument};

use super::corpus::{file_sha256, read_corpus, Corpus, Study};
use super::query::{self, Fields};
use super::{analyzer, SearchError};
use medrl_data::Origin;
use medrl_plugin::{SearchHit, SearchIndex};

/// Version of the schema and layout; an index of another version is refused.
pub const SCHEMA_VERSION: u32 = 1;
/// The manifest file in an index folder.
pub const MANIFEST: &str = "medrl-index.json";
const FORMAT: &str = "medrl-study-index";
/// Weight of title matches relative to abstract matches (see the module docs).
pub const TITLE_BOOST: f32 = 1.5;
/// Indexing memory per writer thread (tantivy needs at least 15 MB).
const WRITER_MEMORY: usize = 64 << 20;

/// `medrl-index.json`: what an index folder holds and how it was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub schema_version: u32,
    pub analyzer: String,
    pub medrl_version: String,
    /// The corpus file as given to the build (made absolute).
    pub corpus: PathBuf,
    pub corpus_sha256: String,
    pub documents: u64,
    pub skipped_rows: u64,
}

/// One hit with the study's title (for display).
#[derive(Debug, Clone, PartialEq)]
pub struct StudyHit {
    pub pmid: String,
    pub title: String,
    pub score: f64,
}

/// A searchable study index, in memory or opened from a folder. Cheap to share: searches take
/// a snapshot of the reader and run concurrently.
pub struct StudyIndex {
    reader: IndexReader,
    fields: Fields,
    pmid: Field,
    manifest: Option<Manifest>,
}

struct SchemaFields {
    schema: Schema,
    pmid: Field,
    title: Field,
    abstract_: Field,
}

fn schema() -> SchemaFields {
    let mut b = Schema::builder();
    let text = |stored: bool| {
        let idx = TextFieldIndexing::default().set_tokenizer(analyzer::ANALYZER).set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let o = TextOptions::default().set_indexing_options(idx);
        if stored {
            o.set_stored()
        } else {
            o
        }
    };
    let pmid = b.add_text_field("pmid", STRING | STORED);
    let title = b.add_text_field("title", text(true));
    let abstract_ = b.add_text_field("abstract", text(false));
    SchemaFields { schema: b.build(), pmid, title, abstract_ }
}

fn tantivy_err(what: impl Into<String>) -> impl FnOnce(tantivy::TantivyError) -> SearchError {
    let what = what.into();
    move |source| SearchError::Tantivy { what, source }
}

fn add_studies(index: &Index, f: &SchemaFields, studies: &[Study], threads: usize, progress: Option<&indicatif::ProgressBar>) -> Result<(), SearchError> {
    let what = "indexing";
    let mut w: IndexWriter = index.writer_with_num_threads(threads, WRITER_MEMORY * threads).map_err(tantivy_err(what))?;
    for s in studies {
        let mut d = TantivyDocument::default();
        d.add_text(f.pmid, &s.pmid);
        d.add_text(f.title, &s.title);
        d.add_text(f.abstract_, &s.abstract_text);
        w.add_document(d).map_err(tantivy_err(what))?;
        if let Some(p) = progress {
            p.inc(1);
        }
    }
    w.commit().map_err(tantivy_err(what))?;
    w.wait_merging_threads().map_err(tantivy_err(what))?;
    Ok(())
}

impl StudyIndex {
    fn from_index(index: Index, f: &SchemaFields, manifest: Option<Manifest>, what: &str) -> Result<Self, SearchError> {
        index.tokenizers().register(analyzer::ANALYZER, analyzer::analyzer());
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(tantivy_err(what))?;
        Ok(Self { reader, fields: Fields { title: f.title, abstract_: f.abstract_, title_boost: TITLE_BOOST }, pmid: f.pmid, manifest })
    }

    /// An index held in memory (tantivy's RAM directory).
    pub fn in_memory(studies: &[Study]) -> Result<Self, SearchError> {
        let f = schema();
        let index = Index::create_in_ram(f.schema.clone());
        index.tokenizers().register(analyzer::ANALYZER, analyzer::analyzer());
        // One thread: document ids follow corpus order.
        add_studies(&index, &f, studies, 1, None)?;
        Self::from_index(index, &f, None, "in-memory index")
    }

    /// An in-memory index of a corpus file (bad rows are errors).
    pub fn from_corpus(path: &Path) -> Result<Self, SearchError> {
        let t = Instant::now();
        let c = read_corpus(path, false)?;
        let idx = Self::in_memory(&c.studies)?;
        tracing::debug!("indexed {} studies of {} in memory in {:.2?}", c.studies.len(), path.display(), t.elapsed());
        Ok(idx)
    }

    /// Open an index folder written by [`build`].
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        let m = read_manifest(dir)?;
        let f = schema();
        let what = format!("opening index {}", dir.display());
        let index = Index::open_in_dir(dir).map_err(tantivy_err(what.clone()))?;
        if index.schema() != f.schema {
            return Err(SearchError::Incompatible { dir: dir.into(), msg: "its tantivy schema differs from this medrl's (rebuild it with `medrl index build`)".into() });
        }
        let idx = Self::from_index(index, &f, Some(m.clone()), &what)?;
        let n = idx.reader.searcher().num_docs();
        if n != m.documents {
            return Err(SearchError::Incompatible { dir: dir.into(), msg: format!("holds {n} documents but its manifest says {} (rebuild it)", m.documents) });
        }
        warn_if_stale(dir, &m);
        Ok(idx)
    }

    /// The manifest of a folder index (`None` in memory).
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The `top_k` best studies for `query` (PubMed-style syntax, parsed leniently; see
    /// [`super::query`]). Only an empty query is an error; a query without any searchable word
    /// finds nothing.
    pub fn search_studies(&self, query: &str, top_k: u32) -> Result<Vec<StudyHit>, SearchError> {
        if query.trim().is_empty() {
            return Err(SearchError::EmptyQuery);
        }
        let Some(node) = query::parse(query, &mut analyzer::analyzer()) else { return Ok(vec![]) };
        let q = query::to_query(&node, &self.fields);
        let searcher = self.reader.searcher();
        let total = searcher.num_docs() as usize;
        let k = (top_k as usize).min(total);
        if k == 0 {
            return Ok(vec![]);
        }
        let what = "searching";
        // Collect past the k-th hit until every document tied with it is in, so that the cut
        // at k is decided by pmid and not by document order.
        let mut limit = (k + 1).min(total);
        let top: Vec<(f32, DocAddress)> = loop {
            let top = searcher.search(&*q, &TopDocs::with_limit(limit).order_by_score()).map_err(tantivy_err(what))?;
            if top.len() <= k || top.len() < limit || limit == total || top[limit - 1].0 < top[k - 1].0 {
                break top;
            }
            limit = (limit * 2).min(total);
        };
        let cut = top.get(k - 1).map(|t| t.0).unwrap_or(f32::MIN);
        let mut hits = Vec::new();
        for (score, addr) in top.into_iter().filter(|(s, _)| *s >= cut) {
            let doc: TantivyDocument = searcher.doc(addr).map_err(tantivy_err(what))?;
            let text = |f: Field| doc.get_first(f).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            hits.push(StudyHit { pmid: text(self.pmid), title: text(self.fields.title), score: score as f64 });
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.pmid.cmp(&b.pmid)));
        hits.truncate(k);
        Ok(hits)
    }
}

impl SearchIndex for StudyIndex {
    fn search(&self, query: &str, top_k: u32) -> Result<Vec<SearchHit>, String> {
        let hits = self.search_studies(query, top_k).map_err(|e| e.to_string())?;
        Ok(hits.into_iter().map(|h| SearchHit { id: h.pmid, score: h.score }).collect())
    }
}

/// Read and check the manifest of an index folder.
pub fn read_manifest(dir: &Path) -> Result<Manifest, SearchError> {
    let not = |reason: String| SearchError::NotAnIndex { dir: dir.into(), reason };
    if !dir.is_dir() {
        return Err(not("no such folder".into()));
    }
    let file = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not(format!("no {MANIFEST} (build one with `medrl index build --corpus FILE --output DIR`)"))),
        Err(source) => return Err(SearchError::Io { path: file, source }),
    };
    let m: Manifest = serde_json::from_str(&text).map_err(|e| not(format!("{MANIFEST} is not a medrl index manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(not(format!("{MANIFEST} has format {:?}, expected {FORMAT:?}", m.format)));
    }
    if m.schema_version != SCHEMA_VERSION || m.analyzer != analyzer::ANALYZER {
        return Err(SearchError::Incompatible {
            dir: dir.into(),
            msg: format!(
                "built by medrl {} with schema {} and analyzer {}; this medrl ({}) reads schema {SCHEMA_VERSION} with analyzer {} (rebuild it with `medrl index build`)",
                m.medrl_version,
                m.schema_version,
                m.analyzer,
                env!("CARGO_PKG_VERSION"),
                analyzer::ANALYZER
            ),
        });
    }
    Ok(m)
}

/// Whether the corpus an index was built from has changed since the build: `None` when that
/// cannot be told cheaply (the file is gone, or over 64 MiB and so not hashed on every open).
pub fn corpus_changed(m: &Manifest) -> Option<bool> {
    const HASH_LIMIT: u64 = 64 << 20;
    let meta = std::fs::metadata(&m.corpus).ok()?;
    if meta.len() > HASH_LIMIT {
        return None;
    }
    file_sha256(&m.corpus).ok().map(|h| h != m.corpus_sha256)
}

fn warn_if_stale(dir: &Path, m: &Manifest) {
    if corpus_changed(m) == Some(true) {
        tracing::warn!("index {} was built from {}, which has changed since (rebuild it with `medrl index build --force`)", dir.display(), m.corpus.display());
    }
}

/// Options of [`build`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Replace an existing index folder (never a folder that is not a medrl index).
    pub force: bool,
    /// Leave bad rows out (counted in the report) instead of failing.
    pub skip_bad_rows: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// What [`build`] did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub skipped: Vec<(Origin, String)>,
}

/// Removes a temporary folder unless disarmed.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "index".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    out.with_file_name(format!(".{name}.{tag}-{}-{nanos}", std::process::id()))
}

/// Build the index of `corpus` into the folder `out` (see the module docs for atomicity).
pub fn build(corpus: &Path, out: &Path, opts: &BuildOptions) -> Result<BuildReport, SearchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SearchError::Io { path, source }
    };
    // Decide about the output before the (possibly long) corpus read.
    if out.exists() {
        if !opts.force {
            return Err(SearchError::Exists { dir: out.into() });
        }
        let empty_dir = out.is_dir() && std::fs::read_dir(out).map_err(io(out))?.next().is_none();
        if !empty_dir && !out.join(MANIFEST).is_file() {
            return Err(SearchError::NotAnIndex { dir: out.into(), reason: format!("refusing to replace it with --force: it has no {MANIFEST}") });
        }
    }
    let c: Corpus = read_corpus(corpus, opts.skip_bad_rows)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = sibling(out, "tmp");
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let mut guard = TempDir(Some(tmp.clone()));

    let f = schema();
    let index = Index::create_in_dir(&tmp, f.schema.clone()).map_err(tantivy_err(format!("creating index in {}", tmp.display())))?;
    index.tokenizers().register(analyzer::ANALYZER, analyzer::analyzer());
    let bar = opts.progress.then(|| medrl_base::progress::bar(c.studies.len() as u64, "indexing", "studies"));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    add_studies(&index, &f, &c.studies, threads, bar.as_ref())?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(index);

    let manifest = Manifest {
        format: FORMAT.into(),
        schema_version: SCHEMA_VERSION,
        analyzer: analyzer::ANALYZER.into(),
        medrl_version: env!("CARGO_PKG_VERSION").into(),
        corpus: std::path::absolute(corpus).unwrap_or_else(|_| corpus.to_path_buf()),
        corpus_sha256: c.sha256.clone(),
        documents: c.studies.len() as u64,
        skipped_rows: c.skipped.len() as u64,
    };
    let value = serde_json::to_value(&manifest).expect("manifest serializes");
    medrl_base::fsutil::write_json_atomic(&tmp.join(MANIFEST), &value).map_err(io(&tmp.join(MANIFEST)))?;

    if out.exists() {
        let old = sibling(out, "old");
        std::fs::rename(out, &old).map_err(io(out))?;
        if let Err(e) = std::fs::rename(&tmp, out) {
            let _ = std::fs::rename(&old, out);
            return Err(SearchError::Io { path: out.into(), source: e });
        }
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, out).map_err(io(out))?;
    }
    guard.0 = None;
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(BuildReport { dir: out.into(), manifest, skipped: c.skipped })
}
