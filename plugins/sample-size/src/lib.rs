//! Sample-size estimation reward, reproducing TrialPanorama's reference scoring
//! (`train/rlvr/reward_func/sample_size_estimation.py`, `compute_score`), in this order:
//! - The ground truth must be an object: the reference calls `ground_truth.get("target")`, which
//!   raises for anything else; here that is an error for the sample.
//! - `target` missing, null, or not something Python's `float()` accepts (a list, an object,
//!   "120 patients", "1,000"): -2 (`invalid_target_score`) WHATEVER the response, as the
//!   reference returns before looking at it. Otherwise the target is `float(target)`: booleans
//!   are 1 and 0, numeric strings are read as Python reads them (surrounding whitespace, `_`
//!   between digits, digits of any script, `inf` and `nan`; see `helpers::py_float`).
//! - Format: after the assistant header (`Assistant:` if present, else `<|im_start|>assistant`,
//!   else the Llama-3 header: the reference's fixed priority, not the earliest header), each of
//!   `<think>`, `</think>`, `<answer>`, `</answer>` exactly once and in this order; -2
//!   (`format_penalty`) otherwise.
//! - 1.1 (`correct_score`) when the first number of the answer (`\d+(\.\d+)?` after removing
//!   commas and spaces, `\d` being any script's digit) lies in [0.8·target, 1.2·target]
//!   (`tolerance` 0.2, bounds included), else 0. A NaN, infinite, zero or negative target
//!   scores what that comparison gives (0 except a prediction of exactly 0 for target 0).
//!
//! Components: `format` (1/0, the format check; also reported when the target is invalid) and
//! `accuracy` (1/0).

use medrl_reward_sdk::helpers::{first_number, json_kind as kind, py_float};
use medrl_reward_sdk::serde_json::{self, json};
use medrl_reward_sdk::{export_reward, Manifest, Outcome, RawSample, Reward, Sample, Value};

pub struct SampleSize;

/// What the reference reads from a ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Truth {
    /// Not an object (the reference raises): the JSON kind, for the error message.
    NotObject(&'static str),
    /// `float(target)`, or `None` when the reference returns -2 for the target.
    Target(Option<f64>),
}

impl Truth {
    fn target(self) -> Result<Option<f64>, String> {
        match self {
            Truth::Target(t) => Ok(t),
            Truth::NotObject(kind) => Err(format!(
                "ground_truth must be an object with `target`, got {kind} (the reference raises on `ground_truth.get`)"
            )),
        }
    }
}

/// Python's `float(v)` of a JSON value; `None` where it raises (or for null).
fn py_float_of(v: &Value) -> Option<f64> {
    match v {
        Value::Null | Value::Array(_) | Value::Object(_) => None,
        Value::Bool(b) => Some(*b as u8 as f64),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => py_float(s),
    }
}

/// The ground truth as the reference reads it (`ground_truth.get("target")`, then `float()`).
fn truth(gt: &Value) -> Truth {
    match gt {
        Value::Object(m) => Truth::Target(m.get("target").and_then(py_float_of)),
        other => Truth::NotObject(kind(other)),
    }
}

/// [`truth`] read straight from the ground truth's JSON text, without building a `Value`
/// (no map, no key strings): the same result for every input, including text that is not
/// JSON (which the SDK treats as a JSON string).
fn truth_from_json(text: &str) -> Truth {
    if let Some(t) = plain_target(text) {
        return Truth::Target(Some(t));
    }
    match serde_json::from_str::<TruthDe>(text) {
        Ok(TruthDe(t)) => t,
        Err(_) => Truth::NotObject("a string"),
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

/// Deserializes a ground truth to its [`Truth`], like [`truth`]: an object's `target` field
/// (the last one if repeated, as a JSON object keeps it).
struct TruthDe(Truth);

/// The value of an object's `target` field, `float()`ed: taken as is, never looked into.
struct Leaf(Option<f64>);

/// Visits any JSON value: at the top (the ground truth itself) an object is looked into for
/// `target` and anything else is [`Truth::NotObject`]; as the target, a value is `float()`ed.
struct TruthVisitor {
    top: bool,
}

impl TruthVisitor {
    fn leaf(&self, v: Option<f64>, kind: &'static str) -> Truth {
        if self.top {
            Truth::NotObject(kind)
        } else {
            Truth::Target(v)
        }
    }
}

impl<'de> serde::de::Visitor<'de> for TruthVisitor {
    type Value = Truth;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Truth, E> {
        Ok(self.leaf(Some(v as f64), "a number"))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Truth, E> {
        Ok(self.leaf(Some(v as f64), "a number"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Truth, E> {
        Ok(self.leaf(Some(v), "a number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Truth, E> {
        Ok(self.leaf(py_float(v), "a string"))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Truth, E> {
        Ok(self.leaf(Some(v as u8 as f64), "a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Truth, E> {
        Ok(self.leaf(None, "null"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Truth, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(self.leaf(None, "an array"))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Truth, A::Error> {
        if !self.top {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(Truth::Target(None));
        }
        let mut found = None;
        while let Some(IsTarget(is_target)) = map.next_key::<IsTarget>()? {
            if is_target {
                found = map.next_value::<Leaf>()?.0;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Truth::Target(found))
    }
}

impl<'de> serde::Deserialize<'de> for TruthDe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TruthVisitor { top: true }).map(TruthDe)
    }
}

impl<'de> serde::Deserialize<'de> for Leaf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(TruthVisitor { top: false })? {
            Truth::Target(t) => Ok(Leaf(t)),
            Truth::NotObject(_) => unreachable!("only the top level is an object check"),
        }
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

/// The reference's header priority: `Assistant:`, else `<|im_start|>assistant`, else Llama 3.
const HEADERS: [&str; 3] = [
    "Assistant:",
    "<|im_start|>assistant",
    "<|start_header_id|>assistant<|end_header_id|>",
];
const MARKERS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

/// Where the reference's `processed_str` starts: after the first occurrence of the first
/// header (in [`HEADERS`] order) that occurs at all; 0 without a header.
fn assistant_start(response: &str) -> usize {
    HEADERS
        .iter()
        .find_map(|h| memchr::memmem::find(response.as_bytes(), h.as_bytes()).map(|i| i + h.len()))
        .unwrap_or(0)
}

/// The format check of the reference in one pass over the assistant text: each of `<think>`,
/// `</think>`, `<answer>`, `</answer>` exactly once and in this order. Returns the byte range
/// of the answer (the reference's last `<answer>...</answer>`, the only one here); `None` for
/// a bad format.
fn answer_span(response: &str) -> Option<std::ops::Range<usize>> {
    let cut = assistant_start(response);
    let h = &response.as_bytes()[cut..];
    let mut first = [usize::MAX; 4];
    // Every marker starts with `<t`, `<a`, `</t` or `</a`: a vectorized scan for `<`, then the
    // next byte or two say which marker can match. (No marker overlaps itself, so a second
    // match is a second occurrence for `str.count` too.)
    for at in memchr::memchr_iter(b'<', h) {
        let rest = &h[at..];
        let m = match (rest.get(1), rest.get(2)) {
            (Some(b't'), _) => 0,
            (Some(b'/'), Some(b't')) => 1,
            (Some(b'a'), _) => 2,
            (Some(b'/'), Some(b'a')) => 3,
            _ => continue,
        };
        if !rest.starts_with(MARKERS[m].as_bytes()) {
            continue;
        }
        if first[m] != usize::MAX {
            return None; // a second occurrence
        }
        first[m] = at;
    }
    if first.contains(&usize::MAX) || !first.is_sorted() {
        return None;
    }
    Some(cut + first[2] + MARKERS[2].len()..cut + first[3])
}

/// The reward for one response, given what the ground truth holds.
fn score_response(config: &Value, response: &str, truth: Truth) -> Result<Outcome, String> {
    let num = |k: &str, d: f64| config.get(k).and_then(Value::as_f64).unwrap_or(d);
    let target = truth.target()?;
    let answer = answer_span(response);
    let format = answer.is_some() as u8 as f64;
    let Some(t) = target else {
        // The reference returns -2 before it looks at the response.
        return Ok(Outcome::score(num("invalid_target_score", -2.0))
            .with("format", format)
            .with("accuracy", 0.0));
    };
    let Some(answer) = answer else {
        return Ok(Outcome::score(num("format_penalty", -2.0))
            .with("format", 0.0)
            .with("accuracy", 0.0));
    };
    let tol = num("tolerance", 0.2);
    let pred = first_number(response[answer].trim());
    let hit = matches!(pred, Some(p) if (1.0 - tol) * t <= p && p <= (1.0 + tol) * t);
    Ok(
        Outcome::score(if hit { num("correct_score", 1.1) } else { 0.0 })
            .with("format", 1.0)
            .with("accuracy", hit as u8 as f64),
    )
}

impl Reward for SampleSize {
    fn manifest() -> Manifest {
        Manifest::new("sample-size", env!("CARGO_PKG_VERSION"), "TrialPanorama sample-size reward: 1.1 if within ±tolerance of ground_truth.target, -2 on bad format or an invalid target")
            .config_schema(json!({
                "type": "object",
                "properties": {
                    "tolerance": {"type": "number", "default": 0.2, "description": "relative tolerance (reference: 0.2)"},
                    "correct_score": {"type": "number", "default": 1.1},
                    "format_penalty": {"type": "number", "default": -2.0},
                    "invalid_target_score": {"type": "number", "default": -2.0, "description": "score when ground_truth.target is missing, null or not a number, whatever the response (reference: -2)"}
                },
                "additionalProperties": false
            }))
    }

    fn score(config: &Value, s: &Sample) -> Result<Outcome, String> {
        score_response(config, &s.response, truth(&s.ground_truth))
    }

    /// Same as `score`, reading only `target` from the ground truth's JSON text.
    fn score_raw(config: &Value, s: RawSample<'_>) -> Result<Outcome, String> {
        score_response(config, s.response, truth_from_json(s.ground_truth))
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
    fn same(a: Truth, b: Truth) -> bool {
        match (a, b) {
            (Truth::Target(Some(x)), Truth::Target(Some(y))) => {
                x == y || (x.is_nan() && y.is_nan())
            }
            (a, b) => a == b,
        }
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
            r#"{"target": true}"#,
            r#"{"target": "1_000"}"#,
            r#"{"target": "１２０"}"#,
            r#"{"target": "nan"}"#,
            r#"{"target": 100, "target": null}"#,
            r#"{"target": null, "target": "90"}"#,
            r#"{"target": {"x": [1, {"target": 2}]}}"#,
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
            let (a, b) = (truth_from_json(gt), truth(&parsed.ground_truth));
            assert!(same(a, b), "{gt}: {a:?} vs {b:?}");
        }
    }

    /// The one-pass format check agrees with the SDK helpers it replaces, after the
    /// reference's header split (fixed priority).
    #[test]
    fn answer_span_matches_helpers() {
        use medrl_reward_sdk::helpers::{exactly_once_in_order, last_tag};
        fn strip_to_assistant(t: &str) -> &str {
            for h in HEADERS {
                if let Some(i) = t.find(h) {
                    return &t[i + h.len()..];
                }
            }
            t
        }
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
        // A missing or non-numeric target is -2 whatever the response, as in the reference.
        assert_eq!(
            score("<think>x</think><answer>5</answer>", Value::Null),
            -2.0
        );
        assert_eq!(
            score("<think>x</think><answer>5</answer>", json!("five")),
            -2.0
        );
        assert_eq!(
            score("<think>x</think><answer>1</answer>", json!(true)),
            1.1
        );
        // The reference splits at `Assistant:` even when a ChatML header comes first.
        assert_eq!(
            score(
                "<|im_start|>assistant\n<think>x</think><answer>100</answer> Assistant: done",
                json!(100)
            ),
            -2.0
        );
        // A ground truth that is not an object is an error (the reference raises).
        let bare = Sample {
            response: "<think>x</think><answer>100</answer>".into(),
            ground_truth: json!(100),
            ..Default::default()
        };
        assert!(SampleSize::score(&json!({}), &bare).is_err());
    }
}
