//! PubMed through NCBI E-utilities ESearch, for users with network access (what
//! TrialPanorama's reference reward queries).
//!
//! One request per query: `esearch.fcgi` with `db=pubmed`, `term`, `retmax` (= top_k, at most
//! 10,000, ESearch's cap), `retmode=json`, `sort=relevance`, and `tool`, `email`, `api_key`
//! when set. The parameters go as an HTTP POST form rather than a GET query string, which
//! E-utilities accepts equally and which has no URL length limit for long model-written
//! queries.
//!
//! ESearch returns ids in relevance order but no scores, so a hit's score is `1 / rank`
//! (1, 0.5, 0.33, ...): higher is better and the order is PubMed's.
//!
//! NCBI allows 3 requests per second per client without an API key and 10 with one; all
//! searches of the process against the same base URL share one [`RateLimiter`] with that rate.
//! Each request has a timeout; HTTP 429 and 5xx answers and transport errors are retried with
//! exponential backoff (or the server's `Retry-After`), other errors are not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use medrl_plugin::{SearchHit, SearchIndex};

/// NCBI's E-utilities.
pub const DEFAULT_BASE_URL: &str = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils";
/// ESearch returns at most this many PubMed ids.
pub const MAX_RETMAX: u32 = 10_000;
/// Longest wait before a retry, whatever the server's `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PubMedError {
    #[error("empty query")]
    EmptyQuery,
    #[error("PubMed ESearch {url}: HTTP {status} after {attempts} attempt(s): {body}")]
    Status { url: String, status: u16, attempts: u32, body: String },
    #[error("PubMed ESearch {url}: {msg} (after {attempts} attempt(s))")]
    Transport { url: String, attempts: u32, msg: String },
    #[error("PubMed ESearch: {0}")]
    Api(String),
    #[error("PubMed ESearch: unexpected response: {0}")]
    Response(String),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct PubMedConfig {
    /// E-utilities base URL (`.../entrez/eutils`); tests point it at a local server.
    pub base_url: String,
    /// Contact address NCBI asks every client to send.
    pub email: Option<String>,
    pub tool: String,
    pub api_key: Option<String>,
    /// Per request, connecting to reading the body.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Wait before the first retry; doubles each time.
    pub backoff: Duration,
    /// Requests per second; default NCBI's limit (3, or 10 with an API key).
    pub requests_per_second: Option<f64>,
}

impl Default for PubMedConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            email: None,
            tool: "medrl".into(),
            api_key: None,
            timeout: Duration::from_secs(15),
            max_retries: 4,
            backoff: Duration::from_millis(500),
            requests_per_second: None,
        }
    }
}

impl PubMedConfig {
    fn rate(&self) -> f64 {
        self.requests_per_second.unwrap_or(if self.api_key.is_some() { 10.0 } else { 3.0 })
    }
}

/// Spaces calls at least `1 / rate` seconds apart, across threads. A caller reserves the next
/// slot under the lock and sleeps outside it.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> Self {
        let interval = if per_second.is_finite() && per_second > 0.0 { Duration::from_secs_f64(1.0 / per_second) } else { Duration::ZERO };
        Self { interval, next: Mutex::new(None) }
    }

    /// Block until this caller's slot.
    pub fn wait(&self) {
        let now = Instant::now();
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        std::thread::sleep(at.saturating_duration_since(now));
    }
}

/// The limiter shared by every client of `base_url` at `rate` in this process.
fn shared_limiter(base_url: &str, rate: f64) -> Arc<RateLimiter> {
    static LIMITERS: OnceLock<Mutex<HashMap<(String, u64), Arc<RateLimiter>>>> = OnceLock::new();
    let mut m = LIMITERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    m.entry((base_url.trim_end_matches('/').to_string(), rate.to_bits())).or_insert_with(|| Arc::new(RateLimiter::new(rate))).clone()
}

/// PubMed search through ESearch.
pub struct PubMed {
    cfg: PubMedConfig,
    url: String,
    agent: ureq::Agent,
    limiter: Arc<RateLimiter>,
}

impl PubMed {
    pub fn new(cfg: PubMedConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .user_agent(format!("medrl/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let url = format!("{}/esearch.fcgi", cfg.base_url.trim_end_matches('/'));
        let limiter = shared_limiter(&cfg.base_url, cfg.rate());
        Self { cfg, url, agent, limiter }
    }

    /// PubMed ids for `query`, most relevant first, at most `top_k`.
    pub fn esearch(&self, query: &str, top_k: u32) -> Result<Vec<String>, PubMedError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(PubMedError::EmptyQuery);
        }
        let retmax = top_k.min(MAX_RETMAX).to_string();
        let mut form: Vec<(&str, &str)> = vec![("db", "pubmed"), ("term", query), ("retmax", &retmax), ("retmode", "json"), ("sort", "relevance"), ("tool", &self.cfg.tool)];
        if let Some(e) = &self.cfg.email {
            form.push(("email", e));
        }
        if let Some(k) = &self.cfg.api_key {
            form.push(("api_key", k));
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.limiter.wait();
            let retry_in = match self.agent.post(&self.url).send_form(form.iter().copied()) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok()).map(Duration::from_secs);
                    let body = resp.body_mut().read_to_string().map_err(|e| PubMedError::Transport { url: self.url.clone(), attempts, msg: format!("reading the response: {e}") });
                    if status == 200 {
                        return parse_esearch(&body?);
                    }
                    let retryable = status == 429 || status >= 500;
                    if !retryable || attempts > self.cfg.max_retries {
                        let body: String = body.unwrap_or_default().chars().take(300).collect();
                        return Err(PubMedError::Status { url: self.url.clone(), status, attempts, body });
                    }
                    retry_after
                }
                Err(e) => {
                    if attempts > self.cfg.max_retries {
                        return Err(PubMedError::Transport { url: self.url.clone(), attempts, msg: e.to_string() });
                    }
                    None
                }
            };
            let backoff = self.cfg.backoff.saturating_mul(1 << (attempts - 1).min(16));
            let wait = retry_in.unwrap_or(backoff).min(MAX_WAIT);
            tracing::debug!("PubMed ESearch: attempt {attempts} failed, retrying in {wait:.1?}");
            std::thread::sleep(wait);
        }
    }
}

/// The id list of an ESearch JSON answer; NCBI reports some errors in a 200 response.
pub fn parse_esearch(body: &str) -> Result<Vec<String>, PubMedError> {
    let v: Value = serde_json::from_str(body).map_err(|e| PubMedError::Response(format!("not JSON ({e}): {}", body.chars().take(200).collect::<String>())))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(PubMedError::Api(e.to_string()));
    }
    let r = v.get("esearchresult").ok_or_else(|| PubMedError::Response("no `esearchresult`".into()))?;
    if let Some(e) = r.get("ERROR").and_then(Value::as_str) {
        return Err(PubMedError::Api(e.to_string()));
    }
    let ids = r.get("idlist").and_then(Value::as_array).ok_or_else(|| PubMedError::Response("no `esearchresult.idlist`".into()))?;
    ids.iter()
        .map(|id| match id {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(PubMedError::Response(format!("non-id {other} in idlist"))),
        })
        .collect()
}

impl SearchIndex for PubMed {
    fn search(&self, query: &str, top_k: u32) -> Result<Vec<SearchHit>, String> {
        let ids = self.esearch(query, top_k).map_err(|e| e.to_string())?;
        Ok(ids.into_iter().enumerate().map(|(i, id)| SearchHit { id, score: 1.0 / (i + 1) as f64 }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_esearch_json() {
        let ok = r#"{"header":{"type":"esearch"},"esearchresult":{"count":"2","retmax":"2","idlist":["38011","12"],"querytranslation":"x"}}"#;
        assert_eq!(parse_esearch(ok).unwrap(), ["38011", "12"]);
        assert!(matches!(parse_esearch(r#"{"error":"API rate limit exceeded","count":"11"}"#), Err(PubMedError::Api(m)) if m.contains("rate limit")));
        assert!(matches!(parse_esearch(r#"{"esearchresult":{"ERROR":"Invalid query"}}"#), Err(PubMedError::Api(_))));
        assert!(matches!(parse_esearch("<html>"), Err(PubMedError::Response(_))));
    }

    #[test]
    fn limiter_spaces_calls() {
        let l = RateLimiter::new(20.0);
        let t = Instant::now();
        for _ in 0..5 {
            l.wait();
        }
        // Slots at 0, 50, 100, 150, 200 ms.
        assert!(t.elapsed() >= Duration::from_millis(195), "{:?}", t.elapsed());
    }
}
