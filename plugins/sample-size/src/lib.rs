//! Sample-size estimation reward, reproducing the TrialPanorama reference scoring:
//! -2 for a bad format, 1.1 when the answer is within ±20% of the target (bounds included),
//! 0 otherwise. Components: `format` (1/0) and `accuracy` (1/0).

use medrl_reward_sdk::helpers::first_number;
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
    if let Some(t) = plain_target(text) {
        return t;
    }
    match serde_json::from_str::<Target>(text) {
        Ok(Target(t)) => t,
        Err(_) => text.trim().parse().unwrap_or(-2.0),
    }
}

/// The common shape `{"target": <digits>}` (JSON whitespace allowed, no sign, no fraction, no
/// leading zero, at most 15 digits so the value is exact), read without a JSON parser; `None`
/// for anything else, which the full parser then handles.
fn plain_target(text: &str) -> Option<f64> {
    fn ws(b: &[u8]) -> &[u8] {
        let n = b
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        &b[n..]
    }
    let b = ws(text.as_bytes());
    let b = ws(b.strip_prefix(b"{")?);
    let b = ws(b.strip_prefix(b"\"target\"")?);
    let b = ws(b.strip_prefix(b":")?);
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 15 || (digits > 1 && b[0] == b'0') {
        return None;
    }
    let (num, rest) = b.split_at(digits);
    let rest = ws(rest);
    if rest.first() != Some(&b'}') || !ws(&rest[1..]).is_empty() {
        return None;
    }
    Some(num.iter().fold(0u64, |n, d| n * 10 + (d - b'0') as u64) as f64)
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

const HEADERS: [&str; 3] = [
    "<|start_header_id|>assistant<|end_header_id|>",
    "<|im_start|>assistant",
    "Assistant:",
];
const MARKERS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

/// The format check of the reference in ONE pass over the response: in the text after the
/// first assistant header (`helpers::strip_to_assistant`), each of `<think>`, `</think>`,
/// `<answer>`, `</answer>` must appear exactly once and in this order
/// (`helpers::exactly_once_in_order`). Returns the byte range of the answer, which is then the
/// reference's "last `<answer>...</answer>`" (`helpers::last_tag`); `None` for a bad format.
fn answer_span(response: &str) -> Option<std::ops::Range<usize>> {
    let h = response.as_bytes();
    // Start of the assistant text: after the first header, if any.
    let mut cut: Option<usize> = None;
    let mut first = [usize::MAX; 4];
    let mut repeated = false;
    // Every header starts with `<|` or `A`, every marker with `<t`, `<a`, `</t` or `</a`: one
    // vectorized scan for `<` and `A`, then the next byte or two say which needle can match.
    for at in memchr::memchr2_iter(b'<', b'A', h) {
        let rest = &h[at..];
        let k = match (rest.first(), rest.get(1), rest.get(2)) {
            (Some(b'A'), ..) => 2,
            (_, Some(b'|'), Some(b's')) => 0,
            (_, Some(b'|'), _) => 1,
            (_, Some(b't'), _) => 3,
            (_, Some(b'/'), Some(b't')) => 4,
            (_, Some(b'a'), _) => 5,
            (_, Some(b'/'), Some(b'a')) => 6,
            _ => continue,
        };
        let needle = if k < 3 { HEADERS[k] } else { MARKERS[k - 3] };
        if !rest.starts_with(needle.as_bytes()) {
            continue;
        }
        if k < 3 {
            if cut.is_none() {
                // Everything seen so far lies before the assistant text.
                cut = Some(at + needle.len());
                first = [usize::MAX; 4];
                repeated = false;
            }
            continue;
        }
        if cut.is_some_and(|c| at < c) || repeated {
            continue;
        }
        let m = k - 3;
        if first[m] == usize::MAX {
            first[m] = at;
        } else if at >= first[m] + MARKERS[m].len() {
            repeated = true; // a second, non-overlapping occurrence
        }
    }
    if repeated || first.contains(&usize::MAX) || !first.is_sorted() {
        return None;
    }
    Some(first[2] + MARKERS[2].len()..first[3])
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
    let Some(answer) = answer_span(response) else {
        return Outcome::score(penalty)
            .with("format", 0.0)
            .with("accuracy", 0.0);
    };
    let t = target();
    let pred = first_number(response[answer].trim());
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
        Ok(score_response(config, &s.response, || {
            target(&s.ground_truth)
        }))
    }

    /// Same as `score`, reading only `target` from the ground truth's JSON text.
    fn score_raw(config: &Value, s: RawSample<'_>) -> Result<Outcome, String> {
        Ok(score_response(config, s.response, || {
            target_from_json(s.ground_truth)
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
            r#"{"target": 100}"#,
            r#"{"target":"100"}"#,
            r#"{"target": " 1e2 "}"#,
            "100",
            r#""100""#,
            r#"{"target": 100.0, "target": 50}"#,
            r#"{"target": {"target": 100}}"#,
            r#"{"x": [1, {"target": 3}], "target": -0}"#,
            r#"{"targ\u0065t": 100}"#,
            r#"{"other": 100}"#,
            "[100]",
            "true",
            "null",
            "not json 100",
            " 100 ",
            r#"{"target": 100"#,
            r#"{"target": 18446744073709551616}"#,
            r#"{"target": -7}"#,
            r#"{"target": null}"#,
            r#"{"target": [100]}"#,
            "",
            "{}",
            r#"{"target": "inf"}"#,
            r#"{"target":0}"#,
            r#"{"target": 0123}"#,
            r#"{"target": 123} x"#,
            r#" { "target" : 42 } "#,
            r#"{"target": 1234567890123456}"#,
            r#"{"target": 12.}"#,
            r#"{"target": 12e1}"#,
            r#"{"target": 12,}"#,
            r#"{"target": 7}}"#,
            "{\"target\":\t9\n}",
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
            let parsed = RawSample {
                ground_truth: gt.into(),
                ..Default::default()
            }
            .parse();
            let (a, b) = (target_from_json(gt), target(&parsed.ground_truth));
            assert!(a == b || (a.is_nan() && b.is_nan()), "{gt}: {a} vs {b}");
        }
    }

    /// The one-pass format check agrees with the SDK helpers it replaces.
    #[test]
    fn answer_span_matches_helpers() {
        use medrl_reward_sdk::helpers::{exactly_once_in_order, last_tag, strip_to_assistant};
        const FRAGS: [&str; 16] = [
            "<think>",
            "</think>",
            "<answer>",
            "</answer>",
            "Assistant:",
            "<|im_start|>assistant",
            "<|start_header_id|>assistant<|end_header_id|>",
            "<|im_start|>",
            "x",
            " 12 ",
            "<",
            "/",
            "é",
            "<answer",
            "think>",
            "A",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let mut ok = 0;
        for _ in 0..200_000 {
            let mut junk = |n: usize| -> String {
                (0..next() % n)
                    .map(|_| FRAGS[next() % FRAGS.len()])
                    .collect()
            };
            let t = if junk(2).is_empty() {
                junk(14)
            } else {
                // A well-formed response with a few random fragments around the markers.
                let mut t = junk(3);
                for m in MARKERS {
                    t.push_str(m);
                    t.push_str(&junk(3));
                }
                t
            };
            let text = strip_to_assistant(&t);
            let want = exactly_once_in_order(text, &MARKERS).then(|| last_tag(text, "answer"));
            let got = answer_span(&t).map(|r| Some(t[r].trim()));
            assert_eq!(got, want, "{t:?}");
            ok += got.is_some() as usize;
        }
        assert!(ok > 100, "too few well-formed cases: {ok}");
        assert_eq!(plain_target(r#"{"target": 100}"#), Some(100.0));
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
