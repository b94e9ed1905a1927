//! Medical verifier reward of HuatuoGPT-o1 (its PPO trainer's `get_reward_o1`; Doctor-Agent uses
//! the same verifier for PPO and GRPO).
//!
//! - Format ok iff `"## Final Response\n\n"` and `"## Thinking"` each appear exactly once;
//!   the final answer is the text after `"## Final Response\n\n"`, trimmed.
//! - The plugin builds the verifier input (below) and asks the host's `judge` capability for
//!   P("True") (the reference: softmax of a 2-label sequence classifier, index 1).
//! - Score: 0.0 on a bad format (the judge is not called); 1.0 if p > 0.4; else 0.1.
//!
//! The ground truth is the "Ground-True Answer": a string, or an object with `answer` (or
//! `Ground-True Answer`). Components: `format` (1/0), `verifier_p` (p; 0 when not called),
//! `correct` (1/0).
//!
//! The judge must be granted (`--test-judge` with `medrl reward score`, `Grants::with_judge` in
//! Rust); without it every well-formatted sample fails with the host's error.

use medrl_reward_sdk::config::{check_keys, f64_or, str_or};
use medrl_reward_sdk::{
    export_reward, host, serde_json::json, Capability, Manifest, Outcome, Reward, Sample, Value,
};

pub struct MedicalVerifier;

const KEYS: &[&str] = &[
    "mode",
    "eos",
    "threshold",
    "correct_score",
    "incorrect_score",
    "format_score",
];

/// The reference verifier template; `{final}`, `{gt}` and `{eos}` are filled in.
pub const TEMPLATE: &str = "<Model Response>\n{final}\n</Model Response>\n\n<Reference Answer>\n{gt}\n</Reference Answer>\n\nYour task is to evaluate the model response by comparing it to the reference answer. If the model response is correct and aligns with the reference answer, output \"True\" . If it is incorrect or fails to select the correct option (if options are provided), output \"False\" . {eos}";

pub const FINAL: &str = "## Final Response\n\n";
pub const THINKING: &str = "## Thinking";

#[derive(Debug, Clone)]
pub struct Config {
    pub eos: String,
    pub threshold: f64,
    pub correct: f64,
    pub incorrect: f64,
    pub format: f64,
}

impl Config {
    pub fn parse(c: &Value) -> Result<Self, String> {
        check_keys(c, KEYS)?;
        let mode = str_or(c, "mode", "reference")?;
        if mode != "reference" {
            return Err(format!("config.mode must be \"reference\", got {mode:?}"));
        }
        Ok(Self {
            eos: str_or(c, "eos", "<|endoftext|>")?.to_string(),
            threshold: f64_or(c, "threshold", 0.4)?,
            correct: f64_or(c, "correct_score", 1.0)?,
            incorrect: f64_or(c, "incorrect_score", 0.1)?,
            format: f64_or(c, "format_score", 0.0)?,
        })
    }
}

/// The final response when the format is valid.
pub fn final_response(response: &str) -> Option<&str> {
    if response.matches(FINAL).count() != 1 || response.matches(THINKING).count() != 1 {
        return None;
    }
    let at = response.find(FINAL)? + FINAL.len();
    Some(response[at..].trim())
}

/// The reference answer text.
pub fn reference_answer(gt: &Value) -> Result<String, String> {
    let v = match gt {
        Value::Object(m) => m
            .get("answer")
            .or_else(|| m.get("Ground-True Answer"))
            .ok_or("ground_truth has no `answer` (or `Ground-True Answer`)")?,
        v => v,
    };
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Err("ground_truth is missing".into()),
        other => Err(format!("ground_truth answer must be text, got {other}")),
    }
}

/// The verifier input for one sample.
pub fn verifier_prompt(cfg: &Config, final_response: &str, gt: &str) -> String {
    // Replace the placeholders in one left-to-right pass, so braces inside the texts are kept.
    let mut out = String::with_capacity(TEMPLATE.len() + final_response.len() + gt.len());
    let mut rest = TEMPLATE;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (value, n) = if tail.starts_with("{final}") {
            (final_response, 7)
        } else if tail.starts_with("{gt}") {
            (gt, 4)
        } else if tail.starts_with("{eos}") {
            (cfg.eos.as_str(), 5)
        } else {
            ("{", 1)
        };
        out.push_str(value);
        rest = &tail[n..];
    }
    out.push_str(rest);
    out
}

/// Score from the judge's probability.
pub fn score_p(cfg: &Config, p: f64) -> Outcome {
    let ok = p > cfg.threshold;
    Outcome::score(if ok { cfg.correct } else { cfg.incorrect })
        .with("format", 1.0)
        .with("verifier_p", p)
        .with("correct", ok as u8 as f64)
}

impl Reward for MedicalVerifier {
    fn manifest() -> Manifest {
        Manifest::new(
            "medical-verifier",
            env!("CARGO_PKG_VERSION"),
            "HuatuoGPT-o1 verifier reward: 1.0 if the judge's P(True) > 0.4, 0.1 otherwise, 0 on bad format (needs the judge grant)",
        )
        .capability(Capability::Judge)
        .config_schema(json!({
            "type": "object",
            "properties": {
                "mode": {"enum": ["reference"], "default": "reference"},
                "eos": {"type": "string", "default": "<|endoftext|>", "description": "the verifier tokenizer's EOS token, appended to the prompt as in the reference"},
                "threshold": {"type": "number", "default": 0.4},
                "correct_score": {"type": "number", "default": 1.0},
                "incorrect_score": {"type": "number", "default": 0.1},
                "format_score": {"type": "number", "default": 0.0}
            },
            "additionalProperties": false
        }))
    }

    fn score(config: &Value, s: &Sample) -> Result<Outcome, String> {
        let cfg = Config::parse(config)?;
        let gt = reference_answer(&s.ground_truth)?;
        let Some(fin) = final_response(&s.response) else {
            return Ok(Outcome::score(cfg.format)
                .with("format", 0.0)
                .with("verifier_p", 0.0)
                .with("correct", 0.0));
        };
        let p = host::judge_score(&verifier_prompt(&cfg, fin, &gt))
            .map_err(|e| format!("judge failed: {e}"))?;
        if !p.is_finite() {
            return Err(format!("judge returned a non-finite score {p}"));
        }
        Ok(score_p(&cfg, p))
    }
}

export_reward!(MedicalVerifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_prompt() {
        let r = "## Thinking\n\nx\n\n## Final Response\n\n  Aspirin {eos} \n";
        assert_eq!(final_response(r), Some("Aspirin {eos}"));
        assert_eq!(final_response("## Final Response\n\nA"), None);
        assert_eq!(
            final_response("## Thinking ## Thinking ## Final Response\n\nA"),
            None
        );
        let cfg = Config::parse(&json!({"eos": "</s>"})).unwrap();
        let p = verifier_prompt(&cfg, "Aspirin {gt}", "aspirin");
        assert!(p.starts_with(
            "<Model Response>\nAspirin {gt}\n</Model Response>\n\n<Reference Answer>\naspirin\n"
        ));
        assert!(p.ends_with("output \"False\" . </s>"));
        assert_eq!(score_p(&cfg, 0.4).value(), Some(0.1));
        assert_eq!(score_p(&cfg, 0.41).value(), Some(1.0));
        assert_eq!(reference_answer(&json!({"answer": "x"})).unwrap(), "x");
        assert_eq!(reference_answer(&json!("y")).unwrap(), "y");
    }
}
