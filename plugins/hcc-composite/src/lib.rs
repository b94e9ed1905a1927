//! HCC-ClinReasoner composite reward.
//!
//! `reference` mode reproduces the public reward code (HCC-STAR,
//! `verl/utils/reward_score/hcc_reasoner.py`, `compute_score`), Python quirks included, on the
//! response after `str.strip()`: total = L + P + F + T + 1.5·S (weights configurable; the
//! defaults are the reference's).
//! - L (length, characters x): x ≤ min−w: 0.2·x/min; x < min+w: blend to x/max; x ≤ max−w:
//!   x/max; x < max+w: blend to 0.2·max/x; beyond: 0.2·max/x. Blends weight the upper piece by
//!   s(t) = 0.5 − 0.5·cos(πt), t = (x − (b − w)) / 2w. min 1536, max 2048, w 128.
//! - P (process): +1/6 for each of `<ps>`, `<child_pugh>`, `<metastasis>`, `<cancer_thrombus>`,
//!   `<num_tumor>`, `<tumor_size>` whose first match, stripped, equals `str(gt.get(tag, ""))`
//!   (so `1.0` must be written "1.0", and a missing field matches an empty tag).
//! - F (format): for each of 11 tags (the six above, treatment, treatment_not_recommended,
//!   hard_check, thinking, answer) present with both `<tag>` and `</tag>`: 1/11, or
//!   (1/11)·1/max(#open, #close) except for the two treatment tags, which may repeat.
//! - T (treatment): the first `<hard_check_treatment>` is unicode-escape decoded, its single
//!   quotes become double quotes, and it is read with `json.loads`; `scores` entries whose value
//!   `float()` accepts (numbers, numeric strings) and is > 0, sorted by score (ties keep their
//!   order), top 3; nDCG@3 (binary relevance, names stripped) against the distinct names among
//!   the first three `ground_truth.top3_treatments[].treatment`. Unparsable JSON: 0. A block that
//!   cannot be unicode-escape decoded, or malformed `top3_treatments`, is an error for the
//!   sample (the reference raises there).
//! - S (survival): the first `<hard_check_survival>` (unicode-escape + `json.loads`, else
//!   `ast.literal_eval`; `{"survival": {...}}` unnested), months as `int(float(x))` and 1/3/5-year
//!   flags as 0/1 (`1`, `1.0`, `true`, `"1"`, `"true"`; anything else, e.g. 0.9, is unknown).
//!   True flags: the ground truth's own `survival_1yr/3yr/5yr`, missing ones derived from
//!   `if_death` and `survival_months` (died: months ≥ 12/36/60; censored: 1 once passed).
//!   flags = 1 if every known true flag is predicted exactly (1 if none is known), else 0;
//!   months: died exp(−|pred − gt|/12), censored exp(−max(0, t_c − pred)/6) with t_c the true
//!   months (or the last passed threshold), 0.5 when that or the event is unknown, 0 without
//!   a predicted number. S = clip(0.5·flags + 0.5·months, 0, 1), 0 without a parsable block.
//! - The ground truth may be an object or a JSON string holding one (as VERL passes it); text
//!   that is not JSON scores P = T = S = 0, as in the reference.
//!
//! `extended` mode adds (each reported on its own, weighted in `weights`):
//! - `guideline`: share of the recommended treatments (the T list) that the patient's BCLC stage
//!   allows. Stage rules and allowed treatments are data (`guideline` config; the default
//!   stages follow one public calculator, the default allowed lists follow HCC-STAR's own
//!   evaluation map plus the TACE names) so clinicians can edit them.
//! - `safety`: −(number of recommended treatments contraindicated for the patient)
//!   (`contraindications` config; default: resection or transplant with Child-Pugh C or PS > 2,
//!   TACE-type treatments with Child-Pugh C).
//! - `evidence`: share of recommended treatments with a reason of at least
//!   `evidence_min_chars` characters in the block's `evidence` object ({name: reason}).
//! - `calibration`: 1 − Brier score of the predicted 1/3/5-year probabilities (`float()` of the
//!   values, clipped to [0, 1]) over the known true flags (a missing probability counts as
//!   error 1); 0 when no outcome is known.

use std::f64::consts::PI;

use medrl_reward_sdk::config::{check_keys, f64_or, str_or, u64_or};
use medrl_reward_sdk::helpers::count;
use medrl_reward_sdk::{export_reward, serde_json::json, Manifest, Outcome, Reward, Sample, Value};

pub mod py;
use py::{
    float_of, json_loads, literal_eval, py_str, py_strip, safe_to_01, safe_to_int, unicode_escape,
    Py,
};

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
            "0": ["Ablation", "Surgical_resection"],
            "A": ["Surgical_resection", "Ablation", "Liver_transplantation"],
            "B": ["Liver_transplantation", "Interventional_therapy", "TACE", "Systemic_anti-tumor_therapy"],
            "C": ["Systemic_anti-tumor_therapy"],
            "D": ["Symptomatic_support", "Palliative_care"]
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
        {"treatments": ["TACE", "TACE_plus_ablation", "Interventional_therapy", "Interventional_therapy_plus_ablation",
                        "Interventional_therapy_plus_systemic_anti-tumor_therapy"], "when": [
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
// Reference components (HCC-STAR verl/utils/reward_score/hcc_reasoner.py)

/// Raw content of the first `<tag>(.*?)</tag>` match (dot matches newline).
pub fn first_match<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)?;
    Some(&text[start..start + end])
}

/// The ground truth as the reference reads it: an object, or a JSON string holding one.
/// `Ok(None)`: not JSON, so process, treatment and survival score 0 (as in the reference);
/// `Err`: JSON that is not an object (the reference raises).
pub fn ground_truth(v: &Value) -> Result<Option<Py>, String> {
    match v {
        Value::Object(_) => Ok(Some(Py::from_json(v))),
        Value::String(s) => match json_loads(py_strip(s)) {
            Ok(p) if p.is_dict() => Ok(Some(p)),
            Ok(_) => Err("ground_truth JSON must be an object".into()),
            Err(()) => Ok(None),
        },
        Value::Null | Value::Bool(_) => Ok(None),
        other => Err(format!("ground_truth must be an object, got {other}")),
    }
}

pub fn length_score(cfg: &Config, x: f64) -> f64 {
    let (min, max, w) = (cfg.len_min, cfg.len_max, cfg.len_window);
    let low = |x: f64| 0.2 * (x / min);
    let mid = |x: f64| x / max;
    let high = |x: f64| 0.2 * (max / x);
    let s = |t: f64| 0.5 - 0.5 * (PI * t).cos();
    if x <= min - w {
        low(x)
    } else if x < min + w {
        let t = (x - (min - w)) / (2.0 * w);
        low(x) * (1.0 - s(t)) + mid(x) * s(t)
    } else if x <= max - w {
        mid(x)
    } else if x < max + w {
        let t = (x - (max - w)) / (2.0 * w);
        mid(x) * (1.0 - s(t)) + high(x) * s(t)
    } else {
        high(x)
    }
}

pub fn process_score(text: &str, gt: Option<&Py>) -> f64 {
    let Some(gt) = gt else { return 0.0 };
    let mut p = 0.0;
    for tag in PROCESS_TAGS {
        // str(gt.get(tag, "")): a missing field matches an empty tag.
        let want = gt.get(tag).map(py_str).unwrap_or_default();
        if first_match(text, tag).is_some_and(|got| py_strip(got) == want) {
            p += 1.0 / 6.0;
        }
    }
    p
}

pub fn format_score(text: &str) -> f64 {
    let mut f = 0.0;
    for tag in FORMAT_TAGS {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        if !(text.contains(&open) && text.contains(&close)) {
            continue;
        }
        if tag == "treatment" || tag == "treatment_not_recommended" {
            f += 1.0 / 11.0;
        } else {
            let n = count(text, &open).max(count(text, &close));
            f += (1.0 / 11.0) * (1.0 / n as f64);
        }
    }
    f
}

/// The `<hard_check_treatment>` block as the reference parses it: unicode-escape decoding,
/// single quotes turned into double quotes, `json.loads`. `Ok(None)`: no block, or not JSON;
/// `Err`: the decoding raises (the reference does not catch that).
pub fn treatment_json(text: &str) -> Result<Option<Py>, String> {
    let Some(raw) = first_match(text, "hard_check_treatment") else {
        return Ok(None);
    };
    let fixed = unicode_escape(py_strip(raw))
        .map_err(|e| format!("<hard_check_treatment> cannot be unicode-escape decoded: {e}"))?;
    Ok(json_loads(&fixed.replace('\'', "\"")).ok())
}

/// Top 3 (key, name stripped) with a valid score > 0, by score (descending, ties in order).
pub fn recommendations(block: &Py) -> Vec<(String, String)> {
    let Some(Py::Dict(scores)) = block.get("scores") else {
        return vec![];
    };
    let mut items: Vec<(String, f64)> = scores
        .iter()
        .filter_map(|(k, v)| {
            let f = float_of(v).filter(|f| !f.is_nan())?;
            let Py::Str(k) = k else { return None };
            (f > 0.0).then(|| (k.clone(), f))
        })
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1)); // stable: ties keep their order
    items
        .into_iter()
        .take(3)
        .map(|(k, _)| {
            let name = py_strip(&k).to_string();
            (k, name)
        })
        .collect()
}

/// nDCG@3 of the recommendations against the ground truth's first three treatments.
pub fn treatment_score(text: &str, gt: Option<&Py>) -> Result<f64, String> {
    let Some(gt) = gt else { return Ok(0.0) };
    let Some(list) = gt.get("top3_treatments") else {
        return Ok(0.0);
    };
    let Py::List(entries) = list else {
        return Err("ground_truth.top3_treatments must be a list of {treatment, score}".into());
    };
    let mut names = Vec::with_capacity(entries.len());
    for e in entries {
        let name = e
            .get("treatment")
            .ok_or("ground_truth.top3_treatments entries need a `treatment`")?;
        names.push(name.clone());
    }
    let mut truth: Vec<Py> = Vec::new();
    for n in names.into_iter().take(3) {
        if matches!(n, Py::List(_) | Py::Dict(_)) {
            return Err("a treatment name must be text".into());
        }
        if !truth.contains(&n) {
            truth.push(n);
        }
    }
    let Some(block) = treatment_json(text)? else {
        return Ok(0.0);
    };
    let rec = recommendations(&block);
    let mut dcg = 0.0;
    for (i, (_, name)) in rec.iter().enumerate() {
        if truth.contains(&Py::Str(name.clone())) {
            dcg += 1.0 / ((i + 2) as f64).log2();
        }
    }
    let ideal: f64 = (0..truth.len().min(3))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    Ok(if ideal > 0.0 { dcg / ideal } else { 0.0 })
}

const YEARS: [(&str, f64); 3] = [
    ("survival_1yr", 12.0),
    ("survival_3yr", 36.0),
    ("survival_5yr", 60.0),
];

/// The parsed `<hard_check_survival>` object (after `{"survival": {...}}` unnesting).
pub fn survival_json(text: &str) -> Option<Py> {
    let raw = py_strip(first_match(text, "hard_check_survival")?);
    let obj = match unicode_escape(raw).ok().and_then(|f| json_loads(&f).ok()) {
        Some(o) => o,
        None => literal_eval(raw).ok()?,
    };
    if !obj.is_dict() {
        return None;
    }
    if obj.get("survival_months").is_none() {
        if let Some(inner @ Py::Dict(_)) = obj.get("survival") {
            return Some(inner.clone());
        }
    }
    Some(obj)
}

/// The ground truth's event, months and 1/3/5-year flags (given flags first, the missing ones
/// derived from event and months).
pub struct Truth {
    pub event: Option<u8>,
    pub months: Option<f64>,
    pub flags: [Option<u8>; 3],
}

pub fn truth(gt: &Py) -> Truth {
    let event = safe_to_01(gt.get("if_death"));
    let base = match gt.get("survival_months") {
        Some(d @ Py::Dict(_)) => d,
        _ => gt,
    };
    let months = safe_to_int(base.get("survival_months"));
    let mut flags = [None; 3];
    for (k, (key, m)) in YEARS.iter().enumerate() {
        flags[k] = safe_to_01(base.get(key)).or(match (event, months) {
            (Some(1), Some(mo)) => Some((mo >= *m) as u8),
            (Some(_), Some(mo)) if mo >= *m => Some(1),
            _ => None,
        });
    }
    Truth {
        event,
        months,
        flags,
    }
}

pub fn survival_score(pred: Option<&Py>, gt: Option<&Py>) -> f64 {
    let (Some(pred), Some(gt)) = (pred, gt) else {
        return 0.0;
    };
    let t = truth(gt);
    let flags_ok = YEARS
        .iter()
        .zip(t.flags)
        .all(|((key, _), want)| want.is_none() || safe_to_01(pred.get(key)) == want);
    let flags = if flags_ok { 1.0 } else { 0.0 };
    let months = match (safe_to_int(pred.get("survival_months")), t.event) {
        (None, _) => 0.0,
        (Some(p), Some(1)) => match t.months {
            None => 0.0,
            Some(g) => (-(p - g).abs() / 12.0).exp(),
        },
        (Some(p), Some(_)) => {
            let passed = YEARS
                .iter()
                .zip(t.flags)
                .filter(|(_, f)| *f == Some(1))
                .map(|((_, m), _)| *m)
                .next_back();
            match t.months.or(passed) {
                None => 0.5,
                Some(tc) => (-(tc - p).max(0.0) / 6.0).exp(),
            }
        }
        (Some(_), None) => 0.5,
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

pub fn evidence_score(cfg: &Config, rec: &[(String, String)], block: Option<&Py>) -> f64 {
    let ev = block.and_then(|b| b.get("evidence"));
    let n = rec
        .iter()
        .filter(|(key, _)| {
            matches!(ev.and_then(|e| e.get(key)), Some(Py::Str(s)) if py_strip(s).chars().count() >= cfg.evidence_min_chars)
        })
        .count();
    share(n, rec.len())
}

/// 1 − Brier score of the predicted 1/3/5-year probabilities over the known outcomes.
pub fn calibration_score(pred: Option<&Py>, gt: Option<&Py>) -> f64 {
    let Some(gt) = gt else { return 0.0 };
    let t = truth(gt);
    let mut sum = 0.0;
    let mut n = 0;
    for ((key, _), want) in YEARS.iter().zip(t.flags) {
        let Some(y) = want else { continue };
        let p = pred
            .and_then(|p| p.get(key))
            .and_then(float_of)
            .filter(|p| !p.is_nan());
        sum += match p {
            Some(p) => (p.clamp(0.0, 1.0) - y as f64).powi(2),
            None => 1.0,
        };
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        1.0 - sum / n as f64
    }
}

pub fn score_response(cfg: &Config, response: &str, gt_value: &Value) -> Result<Outcome, String> {
    // The reference strips the response first; lengths and matches are on the stripped text.
    let text = py_strip(response);
    let gt = ground_truth(gt_value)?;
    let l = length_score(cfg, text.chars().count() as f64);
    let p = process_score(text, gt.as_ref());
    let f = format_score(text);
    let t = treatment_score(text, gt.as_ref())?;
    let surv = survival_json(text);
    let s = survival_score(surv.as_ref(), gt.as_ref());
    let w = &cfg.w;
    let mut total = w.length * l + w.process * p + w.format * f + w.treatment * t + w.survival * s;
    let mut o = Outcome::score(0.0)
        .with("length", l)
        .with("process", p)
        .with("format", f)
        .with("treatment", t)
        .with("survival", s);
    if cfg.mode == Mode::Extended {
        let block = treatment_json(text).ok().flatten();
        let rec = block.as_ref().map(recommendations).unwrap_or_default();
        let names: Vec<String> = rec.iter().map(|(_, n)| n.clone()).collect();
        let patient = gt.as_ref().map(Py::to_json).unwrap_or(Value::Null);
        let g = guideline_score(cfg, &names, &patient)?;
        let sa = safety_score(cfg, &names, &patient)?;
        let e = evidence_score(cfg, &rec, block.as_ref());
        let c = calibration_score(surv.as_ref(), gt.as_ref());
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
        score_response(&cfg, &s.response, &s.ground_truth)
    }
}

export_reward!(HccComposite);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(c: Value) -> Config {
        Config::parse(&c).unwrap()
    }

    #[test]
    fn length_is_continuous() {
        let c = cfg(json!({}));
        for b in [1408.0, 1664.0, 1920.0, 2176.0] {
            let (lo, hi) = (length_score(&c, b - 1e-9), length_score(&c, b + 1e-9));
            assert!((lo - hi).abs() < 1e-9, "{b}: {lo} vs {hi}");
        }
        assert!((length_score(&c, 1800.0) - 1800.0 / 2048.0).abs() < 1e-15);
        assert!((length_score(&c, 768.0) - 0.1).abs() < 1e-15);
    }

    #[test]
    fn format_counts_like_the_reference() {
        // An unclosed extra <thinking> halves its credit; <treatment> may repeat.
        let t = "<thinking>a</thinking><thinking><treatment>x</treatment><treatment>y</treatment>";
        assert!((format_score(t) - (0.5 / 11.0 + 1.0 / 11.0)).abs() < 1e-15);
    }

    #[test]
    fn treatment_like_the_reference() {
        let gt = Py::from_json(&json!({"top3_treatments": [
            {"treatment": "Ablation"}, {"treatment": "Palliative_care"}]}));
        let r = "<hard_check_treatment>{'scores': {'TACE': '0.5', 'Ablation': 0.9, ' Palliative_care ': 0.5, 'X': 'high', 'Y': 0}}</hard_check_treatment>";
        let block = treatment_json(r).unwrap().unwrap();
        let names: Vec<String> = recommendations(&block)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(names, vec!["Ablation", "TACE", "Palliative_care"]);
        let want = (1.0 + 1.0 / 2.0) / (1.0 + 1.0 / 3f64.log2());
        assert!((treatment_score(r, Some(&gt)).unwrap() - want).abs() < 1e-12);
        assert!(treatment_score(
            "<hard_check_treatment>x\\</hard_check_treatment>",
            Some(&gt)
        )
        .is_err());
    }

    #[test]
    fn survival_like_the_reference() {
        let gt = Py::from_json(&json!({"survival_months": 40, "if_death": "1"}));
        let pred = survival_json("<hard_check_survival>{'survival': {'survival_months': '40.9', 'survival_1yr': True, 'survival_3yr': 1.0, 'survival_5yr': 'false'}}</hard_check_survival>").unwrap();
        assert!((survival_score(Some(&pred), Some(&gt)) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn bclc_default_table() {
        let c = cfg(json!({"mode": "extended"}));
        let st = |p: Value| stage(&c, &p).unwrap().unwrap();
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
        assert_eq!(safety_score(&c, &rec, &p).unwrap(), -1.0);
        assert_eq!(guideline_score(&c, &rec, &p).unwrap(), 0.5);
    }
}
