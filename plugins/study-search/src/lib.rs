//! Study-search reward, reproducing TrialPanorama's reference scoring
//! (`train/rlvr/reward_func/study_search.py`, `compute_score`).
//!
//! The model writes a literature search query for a systematic review. The prompt ends with
//! `<answer>`, so the response is scored as `"<answer>" + response` (config `prefix`); then, as
//! in the reference, everything up to an assistant header is dropped (`Assistant:`, else
//! `<|im_start|>assistant`, else the Llama-3 header; see [`after_assistant_header`]).
//!
//! - Format valid iff exactly one `<answer>` and one `</answer>`, open before close, and no
//!   `<think>` / `</think>`. Invalid: -2.0.
//! - Query = last `<answer>…</answer>`, trimmed. Empty query: 0.0.
//! - The query runs against the host's `search` capability (the run grants an index; PubMed
//!   relevance order in the reference). R = |relevant ∩ top-`top_k` hits| / |relevant|, over
//!   distinct PMIDs (0 when nothing is relevant). PMIDs are compared as strings; numeric ids in
//!   the ground truth are turned into strings (the reference would never match them). A failed
//!   search is an error for the sample (the reference silently scores it 0; here the run's
//!   failure policy decides).
//! - Score = 0.1 + R when R > 0, else 0.0.
//!
//! Components: `format` (1/0), `recall` (R), `retrieved` (number of hits returned).

use medrl_reward_sdk::config::{check_keys, f64_or, str_or, u64_or};
use medrl_reward_sdk::helpers::{count, last_tag};
use medrl_reward_sdk::{
    export_reward, host, serde_json::json, Capability, Manifest, Outcome, Reward, Sample, Value,
};

pub struct StudySearch;

const KEYS: &[&str] = &["mode", "prefix", "top_k", "format_penalty", "bonus"];

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub prefix: String,
    pub top_k: u32,
    pub format_penalty: f64,
    pub bonus: f64,
}

impl Config {
    pub fn parse(c: &Value) -> Result<Self, String> {
        check_keys(c, KEYS)?;
        let mode = str_or(c, "mode", "reference")?;
        if mode != "reference" {
            return Err(format!("config.mode must be \"reference\", got {mode:?}"));
        }
        let top_k = u64_or(c, "top_k", 100)?;
        if top_k == 0 || top_k > u32::MAX as u64 {
            return Err("config.top_k must be between 1 and 2^32-1".into());
        }
        Ok(Self {
            prefix: str_or(c, "prefix", "<answer>")?.to_string(),
            top_k: top_k as u32,
            format_penalty: f64_or(c, "format_penalty", -2.0)?,
            bonus: f64_or(c, "bonus", 0.1)?,
        })
    }
}

/// The reference's header handling: the text after the first `Assistant:` if there is one,
/// else after the first `<|im_start|>assistant`, else after the first Llama-3 assistant
/// header, trimmed; unchanged without a header. (A fixed priority, not the earliest header as
/// `helpers::strip_to_assistant` does; it runs after the prefix is prepended, as in the
/// reference, so a header inside the response also drops the prefix.)
pub fn after_assistant_header(text: &str) -> &str {
    for h in [
        "Assistant:",
        "<|im_start|>assistant",
        "<|start_header_id|>assistant<|end_header_id|>",
    ] {
        if let Some(i) = text.find(h) {
            return text[i + h.len()..].trim();
        }
    }
    text
}

/// Format check of the reference: one `<answer>`, one `</answer>` after it, no think tags.
pub fn valid_format(text: &str) -> bool {
    if count(text, "<answer>") != 1 || count(text, "</answer>") != 1 {
        return false;
    }
    if text.contains("<think>") || text.contains("</think>") {
        return false;
    }
    text.find("<answer>") < text.find("</answer>")
}

/// The query to run, or `Err(outcome)` when the response is scored without searching.
pub fn parse(cfg: &Config, response: &str) -> Result<String, Outcome> {
    let full = format!("{}{}", cfg.prefix, response);
    let text = after_assistant_header(&full);
    if !valid_format(text) {
        return Err(Outcome::score(cfg.format_penalty)
            .with("format", 0.0)
            .with("recall", 0.0)
            .with("retrieved", 0.0));
    }
    match last_tag(text, "answer") {
        Some(q) if !q.is_empty() => Ok(q.to_string()),
        _ => Err(Outcome::score(0.0)
            .with("format", 1.0)
            .with("recall", 0.0)
            .with("retrieved", 0.0)),
    }
}

/// One relevant id as the reference's set holds it: strings trimmed, numbers as their JSON
/// text (the reference would never match them; see the module docs), null and booleans as
/// Python's `str()` spells them (they never match a real id, but they count as relevant, as in
/// the reference's set); lists and objects are an error (unhashable: the reference raises).
fn pmid(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok("None".into()),
        Value::Bool(b) => Ok(if *b { "True" } else { "False" }.into()),
        other => Err(format!("relevant_pmids holds a non-id value {other}")),
    }
}

/// `ground_truth.relevant_pmids` as distinct strings, read as the reference reads it
/// (`set(relevant_pmids)` after `if not relevant_pmids: return 0.0`): missing, null, false,
/// 0, "" and empty collections mean nothing is relevant; a list's elements (see [`pmid`]), an
/// object's keys and a string's characters are the ids; another number or `true` is an error
/// (the reference raises).
pub fn relevant(list: Option<&Value>) -> Result<Vec<String>, String> {
    let ids: Vec<String> = match list {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(vec![]),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => return Ok(vec![]),
        Some(Value::Array(l)) => l.iter().map(pmid).collect::<Result<_, _>>()?,
        Some(Value::Object(m)) => m.keys().map(|k| k.trim().to_string()).collect(),
        Some(Value::String(s)) => s
            .chars()
            .map(|c| c.to_string().trim().to_string())
            .collect(),
        Some(other) => {
            return Err(format!(
                "ground_truth.relevant_pmids must be a list of ids, got {other}"
            ))
        }
    };
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Score from the retrieved ids (in rank order, already cut at `top_k`).
pub fn score_hits(cfg: &Config, relevant: &[String], hits: &[String]) -> Outcome {
    let found = relevant.iter().filter(|r| hits.contains(r)).count();
    let recall = if relevant.is_empty() {
        0.0
    } else {
        found as f64 / relevant.len() as f64
    };
    let score = if recall > 0.0 {
        cfg.bonus + recall
    } else {
        0.0
    };
    Outcome::score(score)
        .with("format", 1.0)
        .with("recall", recall)
        .with("retrieved", hits.len() as f64)
}

impl Reward for StudySearch {
    fn manifest() -> Manifest {
        Manifest::new(
            "study-search",
            env!("CARGO_PKG_VERSION"),
            "TrialPanorama study-search reward: 0.1 + recall of the review's relevant PMIDs in the top-100 hits of the model's query (host search capability); -2 on bad format",
        )
        .capability(Capability::Search)
        .config_schema(json!({
            "type": "object",
            "properties": {
                "mode": {"enum": ["reference"], "default": "reference"},
                "prefix": {"type": "string", "default": "<answer>", "description": "text the prompt ends with, prepended to the response before parsing"},
                "top_k": {"type": "integer", "minimum": 1, "default": 100, "description": "hits counted for recall (reference: 100)"},
                "format_penalty": {"type": "number", "default": -2.0},
                "bonus": {"type": "number", "default": 0.1, "description": "added to recall when recall > 0"}
            },
            "additionalProperties": false
        }))
    }

    fn score(config: &Value, s: &Sample) -> Result<Outcome, String> {
        let cfg = Config::parse(config)?;
        // The reference's first step is `ground_truth.get(...)`: anything but an object raises.
        let Value::Object(gt) = &s.ground_truth else {
            return Err(format!(
                "ground_truth must be an object with `relevant_pmids`, got {}",
                s.ground_truth
            ));
        };
        let query = match parse(&cfg, &s.response) {
            Ok(q) => q,
            Err(outcome) => return Ok(outcome),
        };
        let hits = host::search(&query, cfg.top_k).map_err(|e| format!("search failed: {e}"))?;
        let ids: Vec<String> = hits
            .into_iter()
            .take(cfg.top_k as usize)
            .map(|h| h.id)
            .collect();
        // As the reference: recall is only computed (relevant_pmids only read) when the search
        // returned something.
        let relevant = if ids.is_empty() {
            vec![]
        } else {
            relevant(gt.get("relevant_pmids"))?
        };
        Ok(score_hits(&cfg, &relevant, &ids))
    }
}

export_reward!(StudySearch);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(&json!({})).unwrap()
    }

    #[test]
    fn format() {
        let c = cfg();
        assert_eq!(
            parse(&c, "heart failure</answer>").unwrap(),
            "heart failure"
        );
        // The header drops the prepended "<answer>" too, as in the reference.
        assert!(parse(&c, "Assistant: x </answer>").is_err());
        assert_eq!(parse(&c, "Assistant: <answer>x </answer>").unwrap(), "x");
        assert!(parse(&c, "<answer>x</answer>").is_err()); // two <answer>
        assert!(parse(&c, "<think>a</think>x</answer>").is_err());
        assert!(parse(&c, "x").is_err());
        assert_eq!(parse(&c, "  </answer>").unwrap_err().value(), Some(0.0));
        assert_eq!(parse(&c, "x").unwrap_err().value(), Some(-2.0));
    }

    #[test]
    fn recall() {
        let c = cfg();
        let rel = relevant(Some(&json!([1, "2", "3", 3]))).unwrap();
        assert_eq!(rel, vec!["1", "2", "3"]);
        // Python's set() of what the reference holds, after its `if not relevant_pmids`.
        assert_eq!(relevant(Some(&json!("101"))).unwrap(), vec!["1", "0"]);
        assert_eq!(relevant(Some(&json!({"7": 1}))).unwrap(), vec!["7"]);
        assert_eq!(
            relevant(Some(&json!(["7", null]))).unwrap(),
            vec!["7", "None"]
        );
        for falsy in [
            json!(null),
            json!(0),
            json!(false),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(relevant(Some(&falsy)).unwrap().is_empty(), "{falsy}");
        }
        assert!(relevant(None).unwrap().is_empty());
        for bad in [json!(5), json!(true), json!([["1"]]), json!([{"a": 1}])] {
            assert!(relevant(Some(&bad)).is_err(), "{bad}");
        }
        let o = score_hits(&c, &rel, &["9".into(), "2".into(), "1".into()]);
        assert!((o.value().unwrap() - (0.1 + 2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(score_hits(&c, &rel, &["9".into()]).value(), Some(0.0));
        assert_eq!(score_hits(&c, &[], &["9".into()]).value(), Some(0.0));
    }
}
