//! Medical dialogue quality reward (the medical-dialogue tutorial's GRPO reward).
//!
//! The tutorial names its factors (response length, coherence, similarity to the reference
//! answer, linguistic quality) but publishes no code, so the formula below is ours; `reference`
//! mode is this documented formula, reimplemented independently in `tests/reference/rewards.py`.
//!
//! Text: the response after the last `</think>` (when `strip_think`), trimmed. Units: each CJK
//! character (U+4E00–9FFF, U+3400–4DBF, U+F900–FAFF, U+3040–30FF, U+AC00–D7AF) is one unit; other
//! text splits on whitespace (and on punctuation, ASCII and CJK, when `strip_punctuation`) into
//! lowercased words. Components:
//! - `length`: n units; 0 if n = 0, n/min below `min_units`, 1 inside [min, max], max/n above.
//! - `rouge_l`: ROUGE-L F1 (LCS) between the units of the response and of the reference answer.
//! - `repetition_penalty`: 1 - distinct-n over units (0 when there are fewer than n units).
//! - `completeness`: 1 if the text ends a sentence (`.!?。！？…`, closing quotes/brackets allowed
//!   after it), else 0.
//!
//! Score = w.length·length + w.rouge_l·rouge_l + w.completeness·completeness
//!       − w.repetition·repetition_penalty.
//! Ground truth: the reference answer, a string or an object with `reference`, `answer`,
//! `output` or `response`.

use medrl_reward_sdk::config::{bool_or, check_keys, f64_or, str_or, u64_or};
use medrl_reward_sdk::helpers::lcs_len;
use medrl_reward_sdk::{export_reward, serde_json::json, Manifest, Outcome, Reward, Sample, Value};

pub struct DialogueQuality;

const KEYS: &[&str] = &[
    "mode",
    "weights",
    "min_units",
    "max_units",
    "repetition_n",
    "strip_think",
    "strip_punctuation",
];
const WEIGHT_KEYS: &[&str] = &["length", "rouge_l", "repetition", "completeness"];

#[derive(Debug, Clone)]
pub struct Config {
    pub w_length: f64,
    pub w_rouge: f64,
    pub w_repetition: f64,
    pub w_completeness: f64,
    pub min_units: f64,
    pub max_units: f64,
    pub repetition_n: usize,
    pub strip_think: bool,
    pub strip_punctuation: bool,
}

impl Config {
    pub fn parse(c: &Value) -> Result<Self, String> {
        check_keys(c, KEYS)?;
        let mode = str_or(c, "mode", "reference")?;
        if mode != "reference" {
            return Err(format!("config.mode must be \"reference\", got {mode:?}"));
        }
        let w = c.get("weights").cloned().unwrap_or(Value::Null);
        check_keys(&w, WEIGHT_KEYS).map_err(|e| format!("weights: {e}"))?;
        let min_units = u64_or(c, "min_units", 20)? as f64;
        let max_units = u64_or(c, "max_units", 300)? as f64;
        if min_units < 1.0 || max_units < min_units {
            return Err("config needs 1 <= min_units <= max_units".into());
        }
        let repetition_n = u64_or(c, "repetition_n", 2)? as usize;
        if repetition_n == 0 {
            return Err("config.repetition_n must be >= 1".into());
        }
        Ok(Self {
            w_length: f64_or(&w, "length", 0.25)?,
            w_rouge: f64_or(&w, "rouge_l", 0.5)?,
            w_repetition: f64_or(&w, "repetition", 0.5)?,
            w_completeness: f64_or(&w, "completeness", 0.25)?,
            min_units,
            max_units,
            repetition_n,
            strip_think: bool_or(c, "strip_think", true)?,
            strip_punctuation: bool_or(c, "strip_punctuation", true)?,
        })
    }
}

pub fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}' | '\u{3040}'..='\u{30FF}' | '\u{AC00}'..='\u{D7AF}')
}

const CJK_PUNCT: &str = "，。！？；：、“”‘’（）《》【】…—·「」『』";

fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation() || CJK_PUNCT.contains(c)
}

/// Units: CJK characters one by one, other words lowercased.
pub fn units(text: &str, strip_punctuation: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(word.to_lowercase());
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_whitespace() || (strip_punctuation && is_punct(c)) {
            flush(&mut word, &mut out);
        } else if is_cjk(c) {
            flush(&mut word, &mut out);
            out.push(c.to_string());
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The scored text: after the last `</think>` (if asked), trimmed.
pub fn body<'a>(cfg: &Config, response: &'a str) -> &'a str {
    let t = if cfg.strip_think {
        response
            .rfind("</think>")
            .map(|i| &response[i + "</think>".len()..])
            .unwrap_or(response)
    } else {
        response
    };
    t.trim()
}

pub fn length_score(cfg: &Config, n: usize) -> f64 {
    let n = n as f64;
    if n == 0.0 {
        0.0
    } else if n < cfg.min_units {
        n / cfg.min_units
    } else if n <= cfg.max_units {
        1.0
    } else {
        cfg.max_units / n
    }
}

pub fn rouge_l(cand: &[String], reference: &[String]) -> f64 {
    if cand.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(cand, reference);
    if lcs == 0 {
        return 0.0;
    }
    let p = lcs as f64 / cand.len() as f64;
    let r = lcs as f64 / reference.len() as f64;
    2.0 * p * r / (p + r)
}

pub fn repetition_penalty(u: &[String], n: usize) -> f64 {
    if u.len() < n {
        return 0.0;
    }
    let grams: Vec<&[String]> = u.windows(n).collect();
    let mut uniq = grams.clone();
    uniq.sort();
    uniq.dedup();
    1.0 - uniq.len() as f64 / grams.len() as f64
}

pub fn completeness(text: &str) -> f64 {
    const CLOSERS: &str = "\"'”’)）」』]";
    const ENDS: &str = ".!?。！？…";
    let t = text.trim_end_matches(|c: char| CLOSERS.contains(c));
    match t.chars().last() {
        Some(c) if ENDS.contains(c) => 1.0,
        _ => 0.0,
    }
}

pub fn reference_answer(gt: &Value) -> Result<&str, String> {
    let v = match gt {
        Value::Object(m) => ["reference", "answer", "output", "response"]
            .iter()
            .find_map(|k| m.get(*k))
            .ok_or("ground_truth has no reference answer (reference/answer/output/response)")?,
        v => v,
    };
    v.as_str()
        .ok_or_else(|| format!("the reference answer must be a string, got {v}"))
}

pub fn score_text(cfg: &Config, response: &str, reference: &str) -> Outcome {
    let text = body(cfg, response);
    let u = units(text, cfg.strip_punctuation);
    let r = units(reference, cfg.strip_punctuation);
    let length = length_score(cfg, u.len());
    let rouge = rouge_l(&u, &r);
    let rep = repetition_penalty(&u, cfg.repetition_n);
    let comp = completeness(text);
    let score = cfg.w_length * length + cfg.w_rouge * rouge + cfg.w_completeness * comp
        - cfg.w_repetition * rep;
    Outcome::score(score)
        .with("length", length)
        .with("rouge_l", rouge)
        .with("repetition_penalty", rep)
        .with("completeness", comp)
}

impl Reward for DialogueQuality {
    fn manifest() -> Manifest {
        let w = |d: f64, what: &str| json!({"type": "number", "default": d, "description": what});
        Manifest::new(
            "dialogue-quality",
            env!("CARGO_PKG_VERSION"),
            "Medical dialogue quality: weighted length window, ROUGE-L F1 vs the reference answer, repetition penalty (distinct-n) and sentence completeness",
        )
        .config_schema(json!({
            "type": "object",
            "properties": {
                "mode": {"enum": ["reference"], "default": "reference"},
                "weights": {
                    "type": "object",
                    "properties": {
                        "length": w(0.25, "weight of the length window score"),
                        "rouge_l": w(0.5, "weight of ROUGE-L F1 against the reference"),
                        "repetition": w(0.5, "weight of the repetition penalty (subtracted)"),
                        "completeness": w(0.25, "weight of sentence completeness")
                    },
                    "additionalProperties": false
                },
                "min_units": {"type": "integer", "minimum": 1, "default": 20, "description": "length window start (words; a CJK character is one unit)"},
                "max_units": {"type": "integer", "minimum": 1, "default": 300},
                "repetition_n": {"type": "integer", "minimum": 1, "default": 2, "description": "n of distinct-n"},
                "strip_think": {"type": "boolean", "default": true, "description": "score only the text after the last </think>"},
                "strip_punctuation": {"type": "boolean", "default": true, "description": "punctuation separates units and is not counted"}
            },
            "additionalProperties": false
        }))
    }

    fn score(config: &Value, s: &Sample) -> Result<Outcome, String> {
        let cfg = Config::parse(config)?;
        let reference = reference_answer(&s.ground_truth)?;
        Ok(score_text(&cfg, &s.response, reference))
    }
}

export_reward!(DialogueQuality);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_parts() {
        assert_eq!(
            units("我有Fever, 3天!", true),
            vec!["我", "有", "fever", "3", "天"]
        );
        assert_eq!(units("a,b", false), vec!["a,b"]);
        assert_eq!(completeness("Rest well.\""), 1.0);
        assert_eq!(completeness("请休息。"), 1.0);
        assert_eq!(completeness("and then"), 0.0);
        assert_eq!(completeness(""), 0.0);
        let u = units("a b a b", true);
        assert!((repetition_penalty(&u, 2) - 1.0 / 3.0).abs() < 1e-12);
        let cfg = Config::parse(&json!({})).unwrap();
        assert_eq!(length_score(&cfg, 10), 0.5);
        assert_eq!(length_score(&cfg, 600), 0.5);
        let o = score_text(&cfg, "<think>x</think>Drink water.", "drink water.");
        assert_eq!(
            o,
            Outcome::score(0.25 * 0.1 + 0.5 + 0.25)
                .with("length", 0.1)
                .with("rouge_l", 1.0)
                .with("repetition_penalty", 0.0)
                .with("completeness", 1.0)
        );
    }
}
