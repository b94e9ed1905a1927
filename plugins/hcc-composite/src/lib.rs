//! HCC-ClinReasoner composite reward.
//!
//! `reference` mode reproduces the public reward code: total = L + P + F + T + 1.5·S (weights
//! configurable, defaults are the reference's).
//! - L (length, characters x of the response): x < min: 0.2·x/min; min ≤ x ≤ max: x/max;
//!   x > max: 0.2·max/x. Within ±window of min (checked first) and of max the two neighbouring
//!   pieces blend with s(t) = 0.5 − 0.5·cos(πt), t = (x − (b − window)) / (2·window).
//! - P (process): +1/6 for each of `<ps>`, `<child_pugh>`, `<metastasis>`, `<cancer_thrombus>`,
//!   `<num_tumor>`, `<tumor_size>` whose first match, trimmed, equals Python's `str()` of the
//!   ground-truth value (a missing ground-truth value earns nothing).
//! - F (format): each of 11 tags with n ≥ 1 `<tag>…</tag>` pairs earns (1/11)/n.
//! - T (treatment): first `<hard_check_treatment>{"scores": {name: score}}</…>`; names sorted by
//!   score (descending, ties in JSON order), those with score > 0, top 3; nDCG@3 with binary
//!   relevance against the first 3 `ground_truth.top3_treatments`. Invalid JSON or a
//!   non-numeric score: 0.
//! - S (survival): first `<hard_check_survival>{...}</…>` object; S = clip(0.5·flags +
//!   0.5·months, 0, 1), 0 without a parsable prediction. The true 1/3/5-year flags come from
//!   `survival_months` and `if_death` (died: flag = months ≥ 12/36/60; censored: 1 once the
//!   threshold is passed, else unknown); flags = 1 iff every known flag equals the predicted one
//!   (a prediction ≥ 0.5 counts as 1). months: died exp(−|pred − gt|/12); censored
//!   exp(−max(0, gt − pred)/6); 0.5 when the true months are unknown; 0 without a predicted
//!   number.
//!
//! `extended` mode adds (each reported on its own, weighted in `weights`):
//! - `guideline`: share of the recommended treatments (the T list) that the ground-truth
//!   patient's BCLC stage allows. Stage rules and allowed treatments are data (`guideline`
//!   config, default below) so clinicians can edit them.
//! - `safety`: −(number of recommended treatments contraindicated for the patient)
//!   (`contraindications` config).
//! - `evidence`: share of recommended treatments with a reason of at least
//!   `evidence_min_chars` characters in the JSON's `evidence` object ({name: reason}).
//! - `calibration`: 1 − Brier score of the predicted 1/3/5-year survival probabilities over the
//!   known outcomes (a missing probability counts as error 1); 0 when no outcome is known.

use std::f64::consts::PI;

use medrl_reward_sdk::config::{check_keys, f64_or, str_or, u64_or};
use medrl_reward_sdk::helpers::first_tag;
use medrl_reward_sdk::{
    export_reward, serde_json, serde_json::json, Manifest, Outcome, Reward, Sample, Value,
};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

pub struct HccComposite;

pub const PROCESS_TAGS: [&str; 6] = [
    "ps",
    "child_pugh",
    "metastasis",
    "cancer_thrombus",
    "num_tumor",
    "tumor_size",
];

pub const FORMAT_TAGS: [&str; 11] = [
    "ps",
    "child_pugh",
    "metastasis",
    "cancer_thrombus",
    "num_tumor",
    "tumor_size",
    "treatment",
    "treatment_not_recommended",
    "hard_check",
    "thinking",
    "answer",
];

const KEYS: &[&str] = &[
    "mode",
    "weights",
    "length",
    "guideline",
    "contraindications",
    "evidence_min_chars",
];
const WEIGHT_KEYS: &[&str] = &[
    "length",
    "process",
    "format",
    "treatment",
    "survival",
    "guideline",
    "safety",
    "evidence",
    "calibration",
];

/// Default BCLC table (one public calculator's rules; sources disagree at the edges).
pub fn default_guideline() -> Value {
    let present = json!(["present", "yes", "true", 1]);
    json!({
        "stages": [
            {"stage": "D", "when": [
                [{"field": "ps", "op": ">", "value": 2}],
                [{"field": "child_pugh", "op": "in", "value": ["C"]}]
            ]},
            {"stage": "C", "when": [
                [{"field": "cancer_thrombus", "op": "in", "value": present}],
                [{"field": "metastasis", "op": "in", "value": present}],
                [{"field": "ps", "op": ">=", "value": 1}]
            ]},
            {"stage": "0", "when": [
                [{"field": "num_tumor", "op": "==", "value": 1},
                 {"field": "tumor_size", "op": "<", "value": 20},
                 {"field": "child_pugh", "op": "in", "value": ["A"]}]
            ]},
            {"stage": "A", "when": [
                [{"field": "num_tumor", "op": "==", "value": 1},
                 {"field": "tumor_size", "op": "<=", "value": 50}],
                [{"field": "num_tumor", "op": "<=", "value": 3},
                 {"field": "tumor_size", "op": "<=", "value": 30}]
            ]},
            {"stage": "B"}
        ],
        "allowed": {
            "0": ["Ablation", "Surgical_resection", "Liver_transplantation"],
            "A": ["Surgical_resection", "Ablation", "Liver_transplantation", "TACE_plus_ablation"],
            "B": ["TACE", "TACE_plus_ablation", "Liver_transplantation", "Systemic_anti-tumor_therapy"],
            "C": ["Systemic_anti-tumor_therapy"],
            "D": ["Palliative_care"]
        }
    })
}

/// Default contraindications (treatments that must not be recommended when a rule holds).
pub fn default_contraindications() -> Value {
    json!([
        {"treatments": ["Surgical_resection", "Liver_transplantation"], "when": [
            [{"field": "child_pugh", "op": "in", "value": ["C"]}],
            [{"field": "ps", "op": ">", "value": 2}]
        ]},
        {"treatments": ["TACE", "TACE_plus_ablation"], "when": [
            [{"field": "child_pugh", "op": "in", "value": ["C"]}]
        ]}
    ])
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Reference,
    Extended,
}

#[derive(Debug, Clone)]
pub struct Weights {
    pub length: f64,
    pub process: f64,
    pub format: f64,
    pub treatment: f64,
    pub survival: f64,
    pub guideline: f64,
    pub safety: f64,
    pub evidence: f64,
    pub calibration: f64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub w: Weights,
    pub len_min: f64,
    pub len_max: f64,
    pub len_window: f64,
    pub guideline: Value,
    pub contraindications: Value,
    pub evidence_min_chars: usize,
}

impl Config {
    pub fn parse(c: &Value) -> Result<Self, String> {
        check_keys(c, KEYS)?;
        let mode = match str_or(c, "mode", "reference")? {
            "reference" => Mode::Reference,
            "extended" => Mode::Extended,
            m => {
                return Err(format!(
                    "config.mode must be \"reference\" or \"extended\", got {m:?}"
                ))
            }
        };
        let w = c.get("weights").cloned().unwrap_or(Value::Null);
        check_keys(&w, WEIGHT_KEYS).map_err(|e| format!("weights: {e}"))?;
        let l = c.get("length").cloned().unwrap_or(Value::Null);
        check_keys(&l, &["min", "max", "window"]).map_err(|e| format!("length: {e}"))?;
        let (len_min, len_max, len_window) = (
            f64_or(&l, "min", 1536.0)?,
            f64_or(&l, "max", 2048.0)?,
            f64_or(&l, "window", 128.0)?,
        );
        if !(len_min > 0.0 && len_max >= len_min && len_window >= 0.0) {
            return Err("length needs 0 < min <= max and window >= 0".into());
        }
        let guideline = c
            .get("guideline")
            .cloned()
            .unwrap_or_else(default_guideline);
        check_table(&guideline)?;
        let contraindications = c
            .get("contraindications")
            .cloned()
            .unwrap_or_else(default_contraindications);
        check_contraindications(&contraindications)?;
        Ok(Self {
            mode,
            w: Weights {
                length: f64_or(&w, "length", 1.0)?,
                process: f64_or(&w, "process", 1.0)?,
                format: f64_or(&w, "format", 1.0)?,
                treatment: f64_or(&w, "treatment", 1.0)?,
                survival: f64_or(&w, "survival", 1.5)?,
                guideline: f64_or(&w, "guideline", 0.5)?,
                safety: f64_or(&w, "safety", 1.0)?,
                evidence: f64_or(&w, "evidence", 0.5)?,
                calibration: f64_or(&w, "calibration", 0.5)?,
            },
            len_min,
            len_max,
            len_window,
            guideline,
            contraindications,
            evidence_min_chars: u64_or(c, "evidence_min_chars", 10)? as usize,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Python semantics the reference relies on

/// Python's `str()` of a JSON value as `json.loads` returns it (`1` -> "1", `1.0` -> "1.0",
/// `true` -> "True", `null` -> "None"). Lists and objects fall back to JSON text.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                py_float_repr(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        other => other.to_string(),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let e = format!("{x:e}");
    let (mant, exp) = e.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let s = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point >= n {
            format!("{}{}.0", digits, "0".repeat((point - n) as usize))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{s}")
    } else {
        let m = if n > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let es = if exp < 0 { "-" } else { "+" };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

/// A JSON number, or a bool (Python's `True` is 1); `None` for anything else.
fn py_num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(*b as u8 as f64),
        _ => None,
    }
}

/// An object deserialized in source order; a repeated key keeps its first position and its
/// last value, as a Python dict does.
#[derive(Debug, Clone, Default)]
pub struct Ordered(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v: Value = m.next_value()?;
                    match out.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The `<hard_check_treatment>` JSON: `scores` in source order, the rest as values.
#[derive(Debug, Clone, Default)]
pub struct TreatmentJson {
    pub scores: Option<Ordered>,
    pub rest: serde_json::Map<String, Value>,
}

impl<'de> Deserialize<'de> for TreatmentJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TreatmentJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<TreatmentJson, A::Error> {
                let mut t = TreatmentJson::default();
                while let Some(k) = m.next_key::<String>()? {
                    if k == "scores" {
                        t.scores = Some(m.next_value::<Ordered>()?);
                    } else {
                        let v: Value = m.next_value()?;
                        t.rest.insert(k, v);
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Reference components

/// Non-overlapping `<tag>(.*?)</tag>` matches (dot matches newline).
pub fn count_pairs(text: &str, tag: &str) -> usize {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let (mut n, mut pos) = (0, 0);
    while let Some(i) = text[pos..].find(&open) {
        let start = pos + i + open.len();
        match text[start..].find(&close) {
            Some(j) => {
                n += 1;
                pos = start + j + close.len();
            }
            None => break,
        }
    }
    n
}

pub fn length_score(cfg: &Config, x: f64) -> f64 {
    let (min, max, w) = (cfg.len_min, cfg.len_max, cfg.len_window);
    let below = |x: f64| 0.2 * x / min;
    let mid = |x: f64| x / max;
    let above = |x: f64| 0.2 * max / x;
    let s = |t: f64| 0.5 - 0.5 * (PI * t).cos();
    if w > 0.0 && (x - min).abs() <= w {
        let t = (x - (min - w)) / (2.0 * w);
        (1.0 - s(t)) * below(x) + s(t) * mid(x)
    } else if w > 0.0 && (x - max).abs() <= w {
        let t = (x - (max - w)) / (2.0 * w);
        (1.0 - s(t)) * mid(x) + s(t) * above(x)
    } else if x < min {
        below(x)
    } else if x <= max {
        mid(x)
    } else {
        above(x)
    }
}

pub fn process_score(text: &str, gt: &Value) -> f64 {
    let mut p = 0.0;
    for tag in PROCESS_TAGS {
        let (Some(got), Some(want)) = (first_tag(text, tag), gt.get(tag)) else {
            continue;
        };
        if !want.is_null() && got == py_str(want) {
            p += 1.0 / 6.0;
        }
    }
    p
}

pub fn format_score(text: &str) -> f64 {
    let mut f = 0.0;
    for tag in FORMAT_TAGS {
        let n = count_pairs(text, tag);
        if n > 0 {
            f += (1.0 / 11.0) / n as f64;
        }
    }
    f
}

/// The parsed treatment block: recommended names (top 3, score > 0) and the JSON's other keys.
pub fn treatment_block(text: &str) -> Option<(Vec<String>, serde_json::Map<String, Value>)> {
    let raw = first_tag(text, "hard_check_treatment")?;
    let t: TreatmentJson = serde_json::from_str(raw).ok()?;
    let scores = t.scores?;
    let mut items: Vec<(String, f64)> = Vec::with_capacity(scores.0.len());
    for (k, v) in scores.0 {
        items.push((k, py_num(&v)?));
    }
    // Stable sort, descending: ties keep JSON order (Python's sorted(..., reverse=True)).
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    let names = items
        .into_iter()
        .filter(|(_, s)| *s > 0.0)
        .take(3)
        .map(|(k, _)| k)
        .collect();
    Some((names, t.rest))
}

/// The first three ground-truth treatment names.
pub fn gt_treatments(gt: &Value) -> Vec<String> {
    gt.get("top3_treatments")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|e| match e {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(m) => m
                        .get("treatment")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    _ => None,
                })
                .take(3)
                .collect()
        })
        .unwrap_or_default()
}

pub fn ndcg3(pred: &[String], truth: &[String]) -> f64 {
    let idcg: f64 = (0..truth.len().min(3))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 {
        return 0.0;
    }
    let dcg: f64 = pred
        .iter()
        .take(3)
        .enumerate()
        .filter(|(_, p)| truth.contains(p))
        .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
        .sum();
    dcg / idcg
}

/// Known true 1/3/5-year survival flags (None = unknown).
pub fn true_flags(gt: &Value) -> [Option<bool>; 3] {
    let months = gt.get("survival_months").and_then(|v| match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    });
    let died = matches!(gt.get("if_death"), Some(v) if py_num(v) == Some(1.0));
    let mut out = [None; 3];
    if let Some(m) = months {
        for (k, thr) in [12.0, 36.0, 60.0].into_iter().enumerate() {
            out[k] = if died {
                Some(m >= thr)
            } else if m >= thr {
                Some(true)
            } else {
                None
            };
        }
    }
    out
}

pub fn survival_json(text: &str) -> Option<serde_json::Map<String, Value>> {
    let raw = first_tag(text, "hard_check_survival")?;
    match serde_json::from_str::<Value>(raw).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

const YEAR_KEYS: [&str; 3] = ["survival_1yr", "survival_3yr", "survival_5yr"];

pub fn survival_score(pred: Option<&serde_json::Map<String, Value>>, gt: &Value) -> f64 {
    let Some(pred) = pred else { return 0.0 };
    let truth = true_flags(gt);
    let flags_ok = truth.iter().zip(YEAR_KEYS).all(|(t, key)| match t {
        None => true,
        Some(t) => pred
            .get(key)
            .and_then(py_num)
            .is_some_and(|p| (p >= 0.5) == *t),
    });
    let flags = if flags_ok { 1.0 } else { 0.0 };
    let gt_months = gt.get("survival_months").and_then(|v| match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    });
    let died = matches!(gt.get("if_death"), Some(v) if py_num(v) == Some(1.0));
    let pm = pred.get("survival_months").and_then(py_num);
    let months = match (gt_months, pm) {
        (None, _) => 0.5,
        (Some(_), None) => 0.0,
        (Some(m), Some(p)) if died => (-(p - m).abs() / 12.0).exp(),
        (Some(m), Some(p)) => (-(m - p).max(0.0) / 6.0).exp(),
    };
    (0.5 * flags + 0.5 * months).clamp(0.0, 1.0)
}

// ---------------------------------------------------------------------------------------------
// Extended components: a small rule language over ground-truth fields

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            let body = t.strip_prefix(['+', '-']).unwrap_or(t);
            let (int, frac) = body.split_once('.').unwrap_or((body, "1"));
            let ok = !int.is_empty()
                && int.bytes().all(|b| b.is_ascii_digit())
                && !frac.is_empty()
                && frac.bytes().all(|b| b.is_ascii_digit());
            if ok {
                t.parse().ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return x == y;
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.trim().to_lowercase(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    s(a) == s(b)
}

const OPS: [&str; 8] = [">", ">=", "<", "<=", "==", "!=", "in", "not_in"];

/// One condition `{"field", "op", "value"}` on the patient; false when the field is missing.
pub fn condition(c: &Value, patient: &Value) -> Result<bool, String> {
    let field = c
        .get("field")
        .and_then(Value::as_str)
        .ok_or("condition without a field")?;
    let op = c
        .get("op")
        .and_then(Value::as_str)
        .ok_or("condition without an op")?;
    let want = c.get("value").ok_or("condition without a value")?;
    if !OPS.contains(&op) {
        return Err(format!("unknown op {op:?} (known: {})", OPS.join(" ")));
    }
    if matches!(op, "in" | "not_in") && !want.is_array() {
        return Err(format!("op {op:?} needs a list value, got {want}"));
    }
    let got = match patient.get(field) {
        None | Some(Value::Null) => return Ok(false),
        Some(v) => v,
    };
    let num = || as_number(got).zip(as_number(want));
    Ok(match op {
        ">" => num().is_some_and(|(a, b)| a > b),
        ">=" => num().is_some_and(|(a, b)| a >= b),
        "<" => num().is_some_and(|(a, b)| a < b),
        "<=" => num().is_some_and(|(a, b)| a <= b),
        "==" => loose_eq(got, want),
        "!=" => !loose_eq(got, want),
        "in" | "not_in" => {
            let list = want.as_array().ok_or("`in` needs a list value")?;
            let hit = list.iter().any(|w| loose_eq(got, w));
            hit == (op == "in")
        }
        other => return Err(format!("unknown op {other:?}")),
    })
}

/// `when`: a list of alternatives, each a list of conditions that must all hold. Absent: true.
pub fn when(rule: &Value, patient: &Value) -> Result<bool, String> {
    let Some(w) = rule.get("when") else {
        return Ok(true);
    };
    let alts = w.as_array().ok_or("`when` must be a list of lists")?;
    for alt in alts {
        let conds = alt.as_array().ok_or("`when` must be a list of lists")?;
        let mut all = true;
        for c in conds {
            if !condition(c, patient)? {
                all = false;
                break;
            }
        }
        if all {
            return Ok(true);
        }
    }
    Ok(false)
}

fn check_table(g: &Value) -> Result<(), String> {
    check_keys(g, &["stages", "allowed"]).map_err(|e| format!("guideline: {e}"))?;
    let stages = g
        .get("stages")
        .and_then(Value::as_array)
        .ok_or("guideline.stages must be a list")?;
    for s in stages {
        s.get("stage")
            .and_then(Value::as_str)
            .ok_or("guideline.stages[].stage must be a string")?;
        when(s, &json!({}))?;
    }
    let allowed = g
        .get("allowed")
        .and_then(Value::as_object)
        .ok_or("guideline.allowed must be an object")?;
    for v in allowed.values() {
        if !v.as_array().is_some_and(|l| l.iter().all(Value::is_string)) {
            return Err("guideline.allowed values must be lists of treatment names".into());
        }
    }
    Ok(())
}

fn check_contraindications(c: &Value) -> Result<(), String> {
    for r in c.as_array().ok_or("contraindications must be a list")? {
        if !r
            .get("treatments")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().all(Value::is_string))
        {
            return Err("contraindications[].treatments must be a list of names".into());
        }
        when(r, &json!({}))?;
    }
    Ok(())
}

/// The patient's stage: the first rule that holds.
pub fn stage(cfg: &Config, patient: &Value) -> Result<Option<String>, String> {
    for s in cfg.guideline["stages"].as_array().into_iter().flatten() {
        if when(s, patient)? {
            return Ok(s["stage"].as_str().map(str::to_string));
        }
    }
    Ok(None)
}

fn share(hits: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        hits as f64 / of as f64
    }
}

pub fn guideline_score(cfg: &Config, rec: &[String], patient: &Value) -> Result<f64, String> {
    let Some(st) = stage(cfg, patient)? else {
        return Ok(0.0);
    };
    let allowed: Vec<&str> = cfg.guideline["allowed"]
        .get(&st)
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Ok(share(
        rec.iter().filter(|r| allowed.contains(&r.as_str())).count(),
        rec.len(),
    ))
}

pub fn safety_score(cfg: &Config, rec: &[String], patient: &Value) -> Result<f64, String> {
    let mut bad: Vec<&str> = Vec::new();
    for rule in cfg.contraindications.as_array().into_iter().flatten() {
        if !when(rule, patient)? {
            continue;
        }
        for t in rule["treatments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if rec.iter().any(|r| r == t) && !bad.contains(&t) {
                bad.push(t);
            }
        }
    }
    Ok(0.0 - bad.len() as f64)
}

pub fn evidence_score(cfg: &Config, rec: &[String], rest: &serde_json::Map<String, Value>) -> f64 {
    let ev = rest.get("evidence").and_then(Value::as_object);
    let n = rec
        .iter()
        .filter(|r| {
            ev.and_then(|e| e.get(r.as_str()))
                .and_then(Value::as_str)
                .is_some_and(|s| s.trim().chars().count() >= cfg.evidence_min_chars)
        })
        .count();
    share(n, rec.len())
}

pub fn calibration_score(pred: Option<&serde_json::Map<String, Value>>, gt: &Value) -> f64 {
    let truth = true_flags(gt);
    let mut sum = 0.0;
    let mut n = 0;
    for (t, key) in truth.iter().zip(YEAR_KEYS) {
        let Some(t) = t else { continue };
        let y = if *t { 1.0 } else { 0.0 };
        let err = match pred.and_then(|p| p.get(key)).and_then(py_num) {
            Some(p) => (p.clamp(0.0, 1.0) - y).powi(2),
            None => 1.0,
        };
        sum += err;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        1.0 - sum / n as f64
    }
}

pub fn score_response(cfg: &Config, text: &str, gt: &Value) -> Result<Outcome, String> {
    let l = length_score(cfg, text.chars().count() as f64);
    let p = process_score(text, gt);
    let f = format_score(text);
    let block = treatment_block(text);
    let t = block
        .as_ref()
        .map(|(names, _)| ndcg3(names, &gt_treatments(gt)))
        .unwrap_or(0.0);
    let surv = survival_json(text);
    let s = survival_score(surv.as_ref(), gt);
    let w = &cfg.w;
    let mut total = w.length * l + w.process * p + w.format * f + w.treatment * t + w.survival * s;
    let mut o = Outcome::score(0.0)
        .with("length", l)
        .with("process", p)
        .with("format", f)
        .with("treatment", t)
        .with("survival", s);
    if cfg.mode == Mode::Extended {
        let empty = serde_json::Map::new();
        let (rec, rest) = match &block {
            Some((names, rest)) => (names.as_slice(), rest),
            None => (&[][..], &empty),
        };
        let g = guideline_score(cfg, rec, gt)?;
        let sa = safety_score(cfg, rec, gt)?;
        let e = evidence_score(cfg, rec, rest);
        let c = calibration_score(surv.as_ref(), gt);
        total += w.guideline * g + w.safety * sa + w.evidence * e + w.calibration * c;
        o = o
            .with("guideline", g)
            .with("safety", sa)
            .with("evidence", e)
            .with("calibration", c);
    }
    if let Outcome::Scored { score, .. } = &mut o {
        *score = total;
    }
    Ok(o)
}

impl Reward for HccComposite {
    fn manifest() -> Manifest {
        let w = |d: f64| json!({"type": "number", "default": d});
        let cond = json!({
            "type": "object",
            "properties": {
                "field": {"type": "string", "description": "ground-truth field: ps, child_pugh, metastasis, cancer_thrombus, num_tumor, tumor_size, ..."},
                "op": {"enum": [">", ">=", "<", "<=", "==", "!=", "in", "not_in"]},
                "value": {}
            },
            "required": ["field", "op", "value"]
        });
        let when = json!({"type": "array", "items": {"type": "array", "items": cond}, "description": "alternatives (any), each a list of conditions (all); absent = always"});
        Manifest::new(
            "hcc-composite",
            env!("CARGO_PKG_VERSION"),
            "HCC-ClinReasoner reward: reference sum L + P + F + T + 1.5*S (length, process, format, treatment nDCG@3, survival); extended mode adds guideline consistency (BCLC), safety, evidence and calibration",
        )
        .config_schema(json!({
            "type": "object",
            "properties": {
                "mode": {"enum": ["reference", "extended"], "default": "reference"},
                "weights": {
                    "type": "object",
                    "properties": {
                        "length": w(1.0), "process": w(1.0), "format": w(1.0), "treatment": w(1.0),
                        "survival": w(1.5), "guideline": w(0.5), "safety": w(1.0),
                        "evidence": w(0.5), "calibration": w(0.5)
                    },
                    "additionalProperties": false
                },
                "length": {
                    "type": "object",
                    "properties": {"min": w(1536.0), "max": w(2048.0), "window": w(128.0)},
                    "additionalProperties": false
                },
                "guideline": {
                    "type": "object",
                    "description": "BCLC table (replaces the default as a whole): first matching stage rule wins",
                    "properties": {
                        "stages": {"type": "array", "items": {"type": "object", "properties": {"stage": {"type": "string"}, "when": when.clone()}, "required": ["stage"]}},
                        "allowed": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}
                    },
                    "default": default_guideline()
                },
                "contraindications": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"treatments": {"type": "array", "items": {"type": "string"}}, "when": when}, "required": ["treatments"]},
                    "default": default_contraindications()
                },
                "evidence_min_chars": {"type": "integer", "minimum": 0, "default": 10}
            },
            "additionalProperties": false
        }))
    }

    fn score(config: &Value, s: &Sample) -> Result<Outcome, String> {
        let cfg = Config::parse(config)?;
        if !s.ground_truth.is_object() {
            return Err(
                "ground_truth must be an object (ps, child_pugh, ..., top3_treatments)".into(),
            );
        }
        score_response(&cfg, &s.response, &s.ground_truth)
    }
}

export_reward!(HccComposite);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr() {
        for (x, s) in [
            (1.0, "1.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (-3.25e-7, "-3.25e-07"),
            (-0.0, "-0.0"),
            (30.0, "30.0"),
        ] {
            assert_eq!(py_float_repr(x), s, "{x}");
        }
        assert_eq!(py_str(&json!(3)), "3");
        assert_eq!(py_str(&json!(true)), "True");
    }

    #[test]
    fn length_is_continuous() {
        let cfg = Config::parse(&json!({})).unwrap();
        for b in [1408.0, 1664.0, 1920.0, 2176.0] {
            let a = length_score(&cfg, b - 1e-9);
            let c = length_score(&cfg, b + 1e-9);
            assert!((a - c).abs() < 1e-9, "{b}: {a} vs {c}");
        }
        assert!((length_score(&cfg, 1800.0) - 1800.0 / 2048.0).abs() < 1e-15);
        assert!((length_score(&cfg, 768.0) - 0.1).abs() < 1e-15);
    }

    #[test]
    fn treatment_order_and_ndcg() {
        let r = r#"<hard_check_treatment>{"scores": {"TACE": 0.5, "Ablation": 0.9, "Palliative_care": 0.5, "X": 0.5, "Y": 0}}</hard_check_treatment>"#;
        let (names, _) = treatment_block(r).unwrap();
        assert_eq!(names, vec!["Ablation", "TACE", "Palliative_care"]);
        let truth = vec!["Ablation".to_string(), "Palliative_care".to_string()];
        let want = (1.0 + 1.0 / 2.0) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg3(&names, &truth) - want).abs() < 1e-12);
        assert!(treatment_block(
            r#"<hard_check_treatment>{"scores": {"a": "x"}}</hard_check_treatment>"#
        )
        .is_none());
    }

    #[test]
    fn bclc_default_table() {
        let cfg = Config::parse(&json!({"mode": "extended"})).unwrap();
        let st = |p: Value| stage(&cfg, &p).unwrap().unwrap();
        assert_eq!(st(json!({"ps": 3, "child_pugh": "A"})), "D");
        assert_eq!(st(json!({"ps": 0, "child_pugh": "C"})), "D");
        assert_eq!(
            st(json!({"ps": 0, "child_pugh": "A", "cancer_thrombus": "present"})),
            "C"
        );
        assert_eq!(st(json!({"ps": "1", "child_pugh": "A"})), "C");
        assert_eq!(
            st(json!({"ps": 0, "child_pugh": "A", "num_tumor": 1, "tumor_size": 15})),
            "0"
        );
        assert_eq!(
            st(json!({"ps": 0, "child_pugh": "B", "num_tumor": 1, "tumor_size": 15})),
            "A"
        );
        assert_eq!(
            st(json!({"ps": 0, "child_pugh": "A", "num_tumor": 3, "tumor_size": 30})),
            "A"
        );
        assert_eq!(
            st(json!({"ps": 0, "child_pugh": "A", "num_tumor": 4, "tumor_size": 30})),
            "B"
        );
        let rec = vec![
            "Surgical_resection".to_string(),
            "Palliative_care".to_string(),
        ];
        let p = json!({"ps": 0, "child_pugh": "C"});
        assert_eq!(safety_score(&cfg, &rec, &p).unwrap(), -1.0);
        assert_eq!(guideline_score(&cfg, &rec, &p).unwrap(), 0.5);
    }
}
