//! Sample-size estimation reward, reproducing the TrialPanorama reference scoring:
//! -2 for a bad format, 1.1 when the answer is within ±20% of the target (bounds included),
//! 0 otherwise. Components: `format` (1/0) and `accuracy` (1/0).

use medrl_reward_sdk::helpers::{
    exactly_once_in_order, first_number, last_tag, strip_to_assistant,
};
use medrl_reward_sdk::{export_reward, serde_json::json, Manifest, Outcome, Reward, Sample, Value};

pub struct SampleSize;

/// Parses `ground_truth.target` (number or numeric string); -2 when missing, as the reference.
fn target(gt: &Value) -> f64 {
    let t = gt.get("target").unwrap_or(gt);
    match t {
        Value::Number(n) => n.as_f64().unwrap_or(-2.0),
        Value::String(s) => s.trim().parse().unwrap_or(-2.0),
        _ => -2.0,
    }
}

impl Reward for SampleSize {
    fn manifest() -> Manifest {
        Manifest::new("sample-size", env!("CARGO_PKG_VERSION"), "TrialPanorama sample-size reward: 1.1 if within ±tolerance of ground_truth.target, -2 on bad format")
            .config_schema(json!({
                "type": "object",
                "properties": {
                    "tolerance": {"type": "number", "default": 0.2, "description": "relative tolerance (reference: 0.2)"},
                    "correct_score": {"type": "number", "default": 1.1},
                    "format_penalty": {"type": "number", "default": -2.0}
                },
                "additionalProperties": false
            }))
    }

    fn score(config: &Value, s: &Sample) -> Result<Outcome, String> {
        let tol = config
            .get("tolerance")
            .and_then(Value::as_f64)
            .unwrap_or(0.2);
        let correct = config
            .get("correct_score")
            .and_then(Value::as_f64)
            .unwrap_or(1.1);
        let penalty = config
            .get("format_penalty")
            .and_then(Value::as_f64)
            .unwrap_or(-2.0);
        let text = strip_to_assistant(&s.response);
        if !exactly_once_in_order(text, &["<think>", "</think>", "<answer>", "</answer>"]) {
            return Ok(Outcome::score(penalty)
                .with("format", 0.0)
                .with("accuracy", 0.0));
        }
        let t = target(&s.ground_truth);
        let pred = last_tag(text, "answer").and_then(first_number);
        let hit = matches!(pred, Some(p) if (1.0 - tol) * t <= p && p <= (1.0 + tol) * t);
        Ok(Outcome::score(if hit { correct } else { 0.0 })
            .with("format", 1.0)
            .with("accuracy", hit as u8 as f64))
    }
}

export_reward!(SampleSize);

#[cfg(test)]
mod tests {
    use super::*;
    fn s(resp: &str, target: Value) -> Sample {
        Sample {
            response: resp.into(),
            ground_truth: json!({ "target": target }),
            ..Default::default()
        }
    }
    fn score(resp: &str, target: Value) -> f64 {
        SampleSize::score(&json!({}), &s(resp, target))
            .unwrap()
            .value()
            .unwrap()
    }
    #[test]
    fn reference_cases() {
        assert_eq!(
            score("<think>x</think><answer>100</answer>", json!(100)),
            1.1
        );
        assert_eq!(
            score("<think>x</think><answer>120</answer>", json!("100")),
            1.1
        ); // bound included
        assert_eq!(
            score("<think>x</think><answer>1,21 0</answer>", json!(1000)),
            0.0
        );
        assert_eq!(score("<answer>100</answer>", json!(100)), -2.0);
        assert_eq!(
            score("<think>x</think><answer>n/a</answer>", json!(100)),
            0.0
        );
        assert_eq!(
            score("<think>x</think><answer>5</answer>", Value::Null),
            0.0
        );
    }
}
