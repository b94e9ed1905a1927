//! Sample-size estimation reward, reproducing the TrialPanorama reference scoring:
//! -2 for a bad format, 1.1 when the answer is within ±20% of the target (bounds included),
//! 0 otherwise. Components: `format` (1/0) and `accuracy` (1/0).

use medrl_reward_sdk::helpers::{first_number, once_in_order, strip_to_assistant};
use medrl_reward_sdk::serde_json::{self, json};
use medrl_reward_sdk::{export_reward, Manifest, Outcome, RawSample, Reward, Sample, Value};

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

/// [`target`] read straight from the ground truth's JSON text, without building a `Value`
/// (no map, no key strings): the same result for every input, including text that is not
/// JSON (which the SDK treats as a JSON string).
fn target_from_json(text: &str) -> f64 {
    match serde_json::from_str::<Target>(text) {
        Ok(Target(t)) => t,
        Err(_) => text.trim().parse().unwrap_or(-2.0),
    }
}

/// Deserializes a ground truth to its target, like [`target`]: an object's `target` field (the
/// last one if repeated, as a JSON object keeps it), otherwise the value itself.
struct Target(f64);

/// The value of an object's `target` field: taken as is, never looked into further.
struct Leaf(f64);

/// Visits any JSON value: a number is the target, a string is parsed as one, anything else
/// is -2; an object is looked into for `target` when `top` (the ground truth itself).
struct TargetVisitor {
    top: bool,
}

impl<'de> serde::de::Visitor<'de> for TargetVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_str<E>(self, v: &str) -> Result<f64, E> {
        Ok(v.trim().parse().unwrap_or(-2.0))
    }
    fn visit_bool<E>(self, _: bool) -> Result<f64, E> {
        Ok(-2.0)
    }
    fn visit_unit<E>(self) -> Result<f64, E> {
        Ok(-2.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<f64, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(-2.0)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<f64, A::Error> {
        let mut found = None;
        while let Some(IsTarget(is_target)) = map.next_key::<IsTarget>()? {
            if is_target && self.top {
                found = Some(map.next_value::<Leaf>()?.0);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        // An object without `target` is itself the target: not a number, so -2.
        Ok(found.unwrap_or(-2.0))
    }
}

impl<'de> serde::Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TargetVisitor { top: true }).map(Target)
    }
}

impl<'de> serde::Deserialize<'de> for Leaf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TargetVisitor { top: false }).map(Leaf)
    }
}

/// Whether an object key is `target` (compared in place, without copying the key).
struct IsTarget(bool);

impl<'de> serde::Deserialize<'de> for IsTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<bool, E> {
                Ok(v == "target")
            }
        }
        d.deserialize_str(V).map(IsTarget)
    }
}

/// The reward for one response, given its target (computed only for well-formed responses).
fn score_response(config: &Value, response: &str, target: impl FnOnce() -> f64) -> Outcome {
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
    let text = strip_to_assistant(response);
    // One pass finds the four markers. With each exactly once and in order, the reference's
    // "last <answer>...</answer>" is the text between the two answer markers.
    let Some(at) = once_in_order(text, &["<think>", "</think>", "<answer>", "</answer>"]) else {
        return Outcome::score(penalty)
            .with("format", 0.0)
            .with("accuracy", 0.0);
    };
    let t = target();
    let pred = first_number(text[at[2] + "<answer>".len()..at[3]].trim());
    let hit = matches!(pred, Some(p) if (1.0 - tol) * t <= p && p <= (1.0 + tol) * t);
    Outcome::score(if hit { correct } else { 0.0 })
        .with("format", 1.0)
        .with("accuracy", hit as u8 as f64)
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
        Ok(score_response(config, &s.response, || target(&s.ground_truth)))
    }

    /// Same as `score`, reading only `target` from the ground truth's JSON text.
    fn score_raw(config: &Value, s: RawSample) -> Result<Outcome, String> {
        Ok(score_response(config, &s.response, || {
            target_from_json(&s.ground_truth)
        }))
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
    /// `score_raw` (target read from JSON text) agrees with `score` (SDK-parsed `Value`s).
    #[test]
    fn raw_path_matches_value_path() {
        let gts = [
            r#"{"target": 100}"#, r#"{"target":"100"}"#, r#"{"target": " 1e2 "}"#, "100",
            r#""100""#, r#"{"target": 100.0, "target": 50}"#, r#"{"target": {"target": 100}}"#,
            r#"{"x": [1, {"target": 3}], "target": -0}"#, r#"{"targ\u0065t": 100}"#,
            r#"{"other": 100}"#, "[100]", "true", "null", "not json 100", " 100 ",
            r#"{"target": 100"#, r#"{"target": 18446744073709551616}"#, r#"{"target": -7}"#,
            r#"{"target": null}"#, r#"{"target": [100]}"#, "", "{}", r#"{"target": "inf"}"#,
        ];
        let responses = [
            "<think>x</think><answer>100</answer>",
            "Assistant: <think>x</think>\n<answer> 90 participants</answer>",
            "<answer>100</answer>",
            "<think></think><answer>1,0 0</answer><answer>",
        ];
        for gt in gts {
            for r in responses {
                let raw = RawSample {
                    response: r.into(),
                    ground_truth: gt.into(),
                    metadata: "{}".into(),
                    ..Default::default()
                };
                let via_value = SampleSize::score(&json!({}), &raw.clone().parse());
                let via_raw = SampleSize::score_raw(&json!({}), raw);
                assert_eq!(via_raw, via_value, "{gt} {r}");
            }
            let parsed = RawSample { ground_truth: gt.into(), ..Default::default() }.parse();
            let (a, b) = (target_from_json(gt), target(&parsed.ground_truth));
            assert!(a == b || (a.is_nan() && b.is_nan()), "{gt}: {a} vs {b}");
        }
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
