//! Capabilities: host services a plugin may call only when the run grants them.
//!
//! The traits are object-safe and `Send + Sync` so the engine can hand in a model-backed judge
//! or a full-text index (e.g. tantivy) without the plugin host knowing about either. They run
//! on the host, where the plugin's epoch deadline cannot interrupt them. The host caps their
//! input (`Limits::max_capability_input_bytes`, `top_k`, `max_tokens`) and does not start one
//! once the call's deadline has passed, but a call that has started runs to completion: an
//! implementation must bound its own time for inputs within those caps (the model judge has
//! its own timeout and length bounds; the study index bounds the words of a query).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A model the plugin can ask to judge or generate text.
// String errors on purpose: they are handed to the guest as its error text (WIT `result<_, string>`), the guest ABI's shape.
pub trait Judge: Send + Sync {
    /// Probability-like score in [0, 1] for a prompt the plugin built.
    fn score(&self, prompt: &str) -> Result<f64, String>;
    /// Text generated for `prompt`, at most `max_tokens` tokens.
    fn generate(&self, prompt: &str, max_tokens: u32) -> Result<String, String>;
    /// `score` for a plugin call that ends at `deadline`: a judge that waits (for a model, a
    /// queue) should stop waiting by then. The default ignores the deadline.
    fn score_by(&self, prompt: &str, deadline: Instant) -> Result<f64, String> {
        let _ = deadline;
        self.score(prompt)
    }
    /// `generate` for a plugin call that ends at `deadline` (see `score_by`).
    fn generate_by(
        &self,
        prompt: &str,
        max_tokens: u32,
        deadline: Instant,
    ) -> Result<String, String> {
        let _ = deadline;
        self.generate(prompt, max_tokens)
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub id: String,
    pub score: f64,
}

/// A document index the plugin can query.
// String errors on purpose: they are handed to the guest as its error text (WIT `result<_, string>`), the guest ABI's shape.
pub trait SearchIndex: Send + Sync {
    fn search(&self, query: &str, top_k: u32) -> Result<Vec<SearchHit>, String>;
}

/// Capabilities granted to one plugin. `None` means "not granted": calls from the guest get an
/// error and are counted in the plugin's metrics.
#[derive(Clone, Default)]
pub struct Grants {
    pub judge: Option<Arc<dyn Judge>>,
    pub search: Option<Arc<dyn SearchIndex>>,
}

impl Grants {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn with_judge(mut self, judge: Box<dyn Judge>) -> Self {
        self.judge = Some(Arc::from(judge));
        self
    }
    pub fn with_search(mut self, search: Box<dyn SearchIndex>) -> Self {
        self.search = Some(Arc::from(search));
        self
    }
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("judge", &self.judge.is_some())
            .field("search", &self.search.is_some())
            .finish()
    }
}

/// Test judge: fixed answers keyed by exact prompt, `default` otherwise; `generate` echoes a
/// canned reply truncated to `max_tokens` whitespace tokens.
#[derive(Debug, Clone, Default)]
pub struct InMemoryJudge {
    pub scores: HashMap<String, f64>,
    pub default_score: f64,
    pub reply: String,
}

impl Judge for InMemoryJudge {
    fn score(&self, prompt: &str) -> Result<f64, String> {
        Ok(*self.scores.get(prompt).unwrap_or(&self.default_score))
    }
    fn generate(&self, _prompt: &str, max_tokens: u32) -> Result<String, String> {
        Ok(self
            .reply
            .split_whitespace()
            .take(max_tokens as usize)
            .collect::<Vec<_>>()
            .join(" "))
    }
}

/// Test double: scores documents by the number of query terms (lowercased, whitespace split)
/// they contain. Not a real ranking function; runs use [`medrl_search`] (tantivy or PubMed).
/// Kept because the reward exactness fixtures (tests/reference/rewards.py) reimplement this
/// exact ranking in Python, which a BM25 index could not be checked against to 1e-9.
#[derive(Debug, Clone, Default)]
pub struct InMemoryIndex {
    docs: Vec<(String, String)>,
}

impl InMemoryIndex {
    pub fn new(docs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            docs: docs
                .into_iter()
                .map(|(id, text)| (id, text.to_lowercase()))
                .collect(),
        }
    }
}

impl SearchIndex for InMemoryIndex {
    fn search(&self, query: &str, top_k: u32) -> Result<Vec<SearchHit>, String> {
        let terms: Vec<String> = query.split_whitespace().map(|t| t.to_lowercase()).collect();
        if terms.is_empty() {
            return Err("empty query".into());
        }
        let mut hits: Vec<SearchHit> = self
            .docs
            .iter()
            .filter_map(|(id, text)| {
                let n = terms.iter().filter(|t| text.contains(t.as_str())).count();
                (n > 0).then(|| SearchHit {
                    id: id.clone(),
                    score: n as f64,
                })
            })
            .collect();
        // Stable order for ties so tests are deterministic.
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        hits.truncate(top_k as usize);
        Ok(hits)
    }
}
