//! `pubmed_search`: a tool a model calls to search the literature during a rollout.
//!
//! Arguments `{"query": string, "top_k": integer 1..20 (default 5)}`. The search itself is the
//! host's `search` capability (a tantivy index of PubMed abstracts or PubMed's ESearch, as the
//! run grants it), so the tool owns only the argument checks and the reply: a numbered list, one
//! hit per line (`1. <id> (score 7.23)`), short and regular so a small model can read it.
//! Argument errors say what to fix, since the model reads them and may try again.

use medrl_reward_sdk::serde_json::{json, Value};
use medrl_reward_sdk::{export_tool, helpers::json_kind, host, Capability, Tool};

pub struct PubmedSearch;

/// Hits a call may ask for: enough to choose from, few enough to fit a prompt.
pub const MAX_TOP_K: u64 = 20;
pub const DEFAULT_TOP_K: u64 = 5;

/// The checked arguments: the query (trimmed, non-empty) and the number of hits.
pub fn parse_args(args: &Value) -> Result<(String, u32), String> {
    let obj = args.as_object().ok_or("arguments must be a JSON object")?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "query" | "top_k")) {
        return Err(format!("unknown argument {k:?} (known: query, top_k)"));
    }
    let query = match obj.get("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.trim().to_string(),
        Some(Value::String(_)) => return Err("query must not be empty".into()),
        Some(v) => return Err(format!("query must be a string, got {}", json_kind(v))),
        None => return Err("missing argument: query".into()),
    };
    let top_k = match obj.get("top_k") {
        None | Some(Value::Null) => DEFAULT_TOP_K,
        Some(v) => v
            .as_u64()
            .filter(|k| (1..=MAX_TOP_K).contains(k))
            .ok_or_else(|| format!("top_k must be an integer from 1 to {MAX_TOP_K}, got {v}"))?,
    };
    Ok((query, top_k as u32))
}

/// The reply: one numbered line per hit, best first.
pub fn format_hits(hits: &[host::Hit]) -> String {
    if hits.is_empty() {
        return "No results.".into();
    }
    let mut out = String::new();
    for (i, h) in hits.iter().enumerate() {
        out.push_str(&format!("{}. {} (score {:.2})\n", i + 1, h.id, h.score));
    }
    out.pop();
    out
}

impl Tool for PubmedSearch {
    const NAME: &'static str = "pubmed_search";
    const DESCRIPTION: &'static str = "Search PubMed for studies relevant to a query. Returns a numbered list of PubMed IDs (PMIDs) with relevance scores, best first.";

    fn parameters() -> Value {
        json!({
            "type": "object",
            "properties": {
                "query": { "type": "string", "description": "Search terms, e.g. \"metformin gestational diabetes randomized\"" },
                "top_k": { "type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K, "description": "Number of results" }
            },
            "required": ["query"],
            "additionalProperties": false
        })
    }

    fn capabilities() -> Vec<Capability> {
        vec![Capability::Search]
    }

    fn call(config: &Value, args: &Value) -> Result<String, String> {
        medrl_reward_sdk::config::check_keys(config, &[])?;
        let (query, top_k) = parse_args(args)?;
        let hits = host::search(&query, top_k).map_err(|e| format!("search failed: {e}"))?;
        Ok(format_hits(&hits))
    }
}

export_tool!(PubmedSearch);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_with_messages_a_model_can_act_on() {
        assert_eq!(parse_args(&json!({"query": " statins "})), Ok(("statins".into(), 5)));
        assert_eq!(parse_args(&json!({"query": "x", "top_k": 20})), Ok(("x".into(), 20)));
        for (args, needle) in [
            (json!({}), "missing argument: query"),
            (json!({"query": "  "}), "must not be empty"),
            (json!({"query": 3}), "query must be a string, got a number"),
            (json!({"query": "x", "top_k": 0}), "top_k must be an integer from 1 to 20, got 0"),
            (json!({"query": "x", "top_k": 21}), "got 21"),
            (json!({"query": "x", "top_k": 2.5}), "got 2.5"),
            (json!({"query": "x", "k": 2}), "unknown argument \"k\""),
        ] {
            let e = parse_args(&args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
    }

    #[test]
    fn hits_are_one_numbered_line_each() {
        let hits = [
            host::Hit { id: "31415926".into(), score: 7.234 },
            host::Hit { id: "27182818".into(), score: 1.0 },
        ];
        assert_eq!(format_hits(&hits), "1. 31415926 (score 7.23)\n2. 27182818 (score 1.00)");
        assert_eq!(format_hits(&[]), "No results.");
    }

    #[test]
    fn natively_the_search_capability_is_an_error() {
        let e = medrl_reward_sdk::tool_call::<PubmedSearch>("{}", r#"{"query": "x"}"#).unwrap_err();
        assert!(e.starts_with("search failed:"), "{e}");
    }
}
