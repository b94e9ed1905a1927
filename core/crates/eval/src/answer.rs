//! Answer extraction: turning a model response into the canonical answer that accuracy, majority
//! vote and the extract-failure rate are computed on. `None` means "no parsable answer".
//!
//! Parsers mirror the reward plugins' own extraction, so the evaluation sees the answer the
//! reward saw. A task picks one by name (`metrics.answer` in task.yaml, a
//! [`medrl_reward::AnswerKind`], read here by [`ReadAnswer`]); nothing here knows plugin names:
//! - `final_response`: the text after the last `## Final Response` heading (medical-verifier);
//! - `answer_tag`: the last `<answer>…</answer>` (study-search);
//! - `number`: the first number inside the last `<answer>…</answer>` (sample-size), written in
//!   shortest form (`120.0` and `1,20` both become `120`);
//! - `hcc`: the `<hard_check_survival>` block of the HCC output format (hcc-composite), see
//!   [`HccPrediction`];
//! - `text`: the response itself, after the last `</think>`, trimmed (free-text tasks).
//!
//! Canonical answers collapse runs of whitespace, so majority vote does not split on line breaks.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How to read a response's answer (`answer` of [`crate::MetricSettings`], from a task's
/// `metrics.answer`): the task's answer kind itself, read by [`ReadAnswer`].
pub use medrl_reward::answer::UnknownAnswerKind as UnknownAnswerParser;
pub use medrl_reward::AnswerKind as AnswerParser;

/// Tag and number extraction: the SDK's helpers, which the bundled reward plugins use (one
/// implementation on both sides of the sandbox).
pub use medrl_reward_sdk::helpers::{first_number, first_tag, last_tag};

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The response after the last `</think>`, trimmed.
pub fn strip_think(response: &str) -> &str {
    match response.rfind("</think>") {
        Some(i) => response[i + "</think>".len()..].trim(),
        None => response.trim(),
    }
}

/// Shortest form of a number: integers without a decimal point.
pub fn fmt_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Reading an answer the way an [`AnswerParser`] (a task's answer kind) says.
pub trait ReadAnswer {
    /// The canonical answer of `response`, `None` when there is none.
    fn parse(self, response: &str) -> Option<String>;
    /// The text compared with the reference by BLEU/ROUGE: the parsed answer for parsers that
    /// isolate an answer, else the response after `</think>`. A response with no parsable answer
    /// gives the empty string (it is scored, as a miss).
    fn answer_text(self, response: &str) -> String;
}

impl ReadAnswer for AnswerParser {
    fn parse(self, response: &str) -> Option<String> {
        match self {
            AnswerParser::Text => non_empty(collapse_ws(strip_think(response))),
            AnswerParser::FinalResponse => {
                let i = response.rfind("## Final Response")?;
                non_empty(collapse_ws(&response[i + "## Final Response".len()..]))
            }
            AnswerParser::AnswerTag => last_tag(response, "answer").map(collapse_ws).and_then(non_empty),
            AnswerParser::Number => last_tag(response, "answer").and_then(first_number).map(fmt_number),
            AnswerParser::Hcc => HccPrediction::parse(response).and_then(|p| p.canonical()),
        }
    }

    fn answer_text(self, response: &str) -> String {
        match self {
            AnswerParser::Text | AnswerParser::Hcc => strip_think(response).to_string(),
            AnswerParser::FinalResponse => match response.rfind("## Final Response") {
                Some(i) => response[i + "## Final Response".len()..].trim().to_string(),
                None => String::new(),
            },
            AnswerParser::AnswerTag | AnswerParser::Number => last_tag(response, "answer").unwrap_or("").to_string(),
        }
    }
}

/// What an HCC response predicts, read from its survival JSON block (`<hard_check_survival>`
/// by default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HccPrediction {
    /// Predicted overall survival in months.
    pub months: Option<f64>,
    /// Predicted probability (or 0/1 flag) of being alive at `survival_<Y>yr` for Y = 1..=10,
    /// keyed by Y.
    pub surv_prob: std::collections::BTreeMap<u32, f64>,
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(*b as u8 as f64),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" => Some(1.0),
            "false" | "no" => Some(0.0),
            t => t.parse().ok(),
        },
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

impl HccPrediction {
    /// Parse the first `<tag>` block: JSON (single quotes accepted), optionally nested as
    /// `{"survival": {...}}`; keys `survival_months` and `survival_1yr`, `survival_3yr`, ...
    /// Probabilities outside [0, 1] and negative months are treated as missing. `None` when
    /// there is no block or it is not JSON.
    pub fn parse_tag(response: &str, tag: &str) -> Option<Self> {
        let block = first_tag(response, tag)?;
        let v: Value = serde_json::from_str(block).or_else(|_| serde_json::from_str(&block.replace('\'', "\""))).ok()?;
        let v = match v.get("survival") {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => v,
        };
        let months = v.get("survival_months").and_then(num).filter(|m| *m >= 0.0);
        let surv_prob = (1..=10u32)
            .filter_map(|y| v.get(format!("survival_{y}yr")).and_then(num).filter(|p| (0.0..=1.0).contains(p)).map(|p| (y, p)))
            .collect();
        Some(Self { months, surv_prob })
    }

    /// [`Self::parse_tag`] with `hard_check_survival`.
    pub fn parse(response: &str) -> Option<Self> {
        Self::parse_tag(response, "hard_check_survival")
    }

    /// Probability of being alive at `months` (a whole number of years), if predicted.
    pub fn prob_at(&self, months: f64) -> Option<f64> {
        let y = months / 12.0;
        (y.fract() == 0.0 && y >= 1.0).then(|| self.surv_prob.get(&(y as u32)).copied()).flatten()
    }

    /// Canonical answer for majority vote: the predicted months and yearly values.
    pub fn canonical(&self) -> Option<String> {
        if self.months.is_none() && self.surv_prob.is_empty() {
            return None;
        }
        let mut s = format!("months={}", self.months.map(fmt_number).unwrap_or_else(|| "?".into()));
        for (y, p) in &self.surv_prob {
            s.push_str(&format!(" {y}y={}", fmt_number(*p)));
        }
        Some(s)
    }
}

/// Prognosis group from predicted survival months (the "risk stage" the report tabulates).
pub fn risk_group(months: Option<f64>) -> &'static str {
    match months {
        None => "no prediction",
        Some(m) if m < 12.0 => "high (<12 mo)",
        Some(m) if m < 36.0 => "intermediate (12-36 mo)",
        Some(m) if m < 60.0 => "low (36-60 mo)",
        Some(_) => "very low (>=60 mo)",
    }
}

/// Order of [`risk_group`] labels for tables.
pub const RISK_GROUPS: [&str; 5] = ["high (<12 mo)", "intermediate (12-36 mo)", "low (36-60 mo)", "very low (>=60 mo)", "no prediction"];

/// BCLC stage (0, A, B, C, D) from the six clinical fields, with the default rules of the
/// hcc-composite reward (one public calculator): D if PS > 2 or Child-Pugh C; C if tumor thrombus,
/// metastasis or PS >= 1; 0 if one tumor < 20 mm with Child-Pugh A; A if one tumor <= 50 mm or up
/// to three <= 30 mm; else B. `None` when a field the decision needs is missing or unreadable.
/// `field` returns the raw text of a field (a tag's content, or a ground-truth value as text).
pub fn bclc_stage(field: &dyn Fn(&str) -> Option<String>) -> Option<&'static str> {
    let number = |k: &str| field(k).and_then(|s| first_number(&s));
    let present = |k: &str| field(k).map(|s| matches!(s.trim().to_ascii_lowercase().as_str(), "present" | "yes" | "true" | "1"));
    let ps = number("ps")?;
    let cp = field("child_pugh")?.trim().to_ascii_uppercase();
    let cp = cp.chars().next()?;
    if ps > 2.0 || cp == 'C' {
        return Some("D");
    }
    if present("cancer_thrombus")? || present("metastasis")? || ps >= 1.0 {
        return Some("C");
    }
    let (n, size) = (number("num_tumor")?, number("tumor_size")?);
    if n == 1.0 && size < 20.0 && cp == 'A' {
        return Some("0");
    }
    if (n == 1.0 && size <= 50.0) || (n <= 3.0 && size <= 30.0) {
        return Some("A");
    }
    Some("B")
}

/// BCLC stage from the response's `<ps>`, `<child_pugh>`, … tags.
pub fn predicted_stage(response: &str) -> Option<&'static str> {
    bclc_stage(&|k| first_tag(response, k).map(str::to_string))
}

/// BCLC stage from a ground-truth object with the same field names.
pub fn true_stage(gt: &Value) -> Option<&'static str> {
    bclc_stage(&|k| {
        gt.get(k).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
    })
}

/// Stage labels in table order (`unknown`: a field was missing).
pub const STAGES: [&str; 6] = ["0", "A", "B", "C", "D", "unknown"];

/// The reference text of a ground truth ([`medrl_data::reference_text`], owned).
pub fn reference_text(gt: &Value) -> Option<String> {
    medrl_data::reference_text(gt).map(str::to_string)
}

/// Survival ground truth: (months, event) from `time_field` and `event_field` (1 died, 0
/// censored; booleans and numeric strings accepted). The ground truth may be a JSON string
/// holding the object (as VERL passes it).
pub fn survival_truth(gt: &Value, time_field: &str, event_field: &str) -> Option<(f64, bool)> {
    let parsed;
    let gt = match gt {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).ok()?;
            &parsed
        }
        v => v,
    };
    let t = gt.get(time_field).and_then(num).filter(|t| *t >= 0.0)?;
    let e = gt.get(event_field).and_then(num)?;
    Some((t, e >= 0.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_task_answer_kind_is_the_parser_of_the_same_name() {
        for k in medrl_reward::AnswerKind::ALL {
            let p = AnswerParser::from(k);
            assert_eq!(serde_json::to_value(p).unwrap(), json!(k.as_str()), "{k}");
            assert_eq!(k.as_str().parse::<AnswerParser>().unwrap(), p);
        }
    }

    #[test]
    fn parsers() {
        assert_eq!(AnswerParser::Number.parse("<think>x</think><answer> 1,20.0 </answer>"), Some("120".into()));
        assert_eq!(AnswerParser::Number.parse("<answer>n/a</answer>"), None);
        assert_eq!(AnswerParser::AnswerTag.parse("<answer>a</answer><answer> b\n c </answer>"), Some("b c".into()));
        assert_eq!(AnswerParser::FinalResponse.parse("## Thinking\nx\n## Final Response\n\nAspirin.\n"), Some("Aspirin.".into()));
        assert_eq!(AnswerParser::FinalResponse.parse("no heading"), None);
        assert_eq!(AnswerParser::Text.parse("<think>a</think>  \n"), None);
        assert_eq!("final_response".parse::<AnswerParser>(), Ok(AnswerParser::FinalResponse));
        assert!("nope".parse::<AnswerParser>().is_err());
    }

    #[test]
    fn hcc_block_and_stage() {
        let r = "<ps>0</ps><child_pugh>A</child_pugh><metastasis>absent</metastasis><cancer_thrombus>absent</cancer_thrombus><num_tumor>1</num_tumor><tumor_size>15</tumor_size><hard_check_survival>{'survival': {'survival_months': '38', 'survival_1yr': 1, 'survival_3yr': 0.7, 'survival_5yr': 2}}</hard_check_survival>";
        let p = HccPrediction::parse(r).unwrap();
        assert_eq!(p.months, Some(38.0));
        assert_eq!(p.surv_prob, std::collections::BTreeMap::from([(1, 1.0), (3, 0.7)]));
        assert_eq!((p.prob_at(36.0), p.prob_at(60.0), p.prob_at(18.0)), (Some(0.7), None, None));
        assert_eq!(p.canonical().unwrap(), "months=38 1y=1 3y=0.7");
        assert_eq!(predicted_stage(r), Some("0"));
        assert_eq!(true_stage(&json!({"ps": 3, "child_pugh": "A"})), Some("D"));
        assert_eq!(true_stage(&json!({"ps": 0, "child_pugh": "A", "cancer_thrombus": "absent", "metastasis": "absent", "num_tumor": 2, "tumor_size": 35})), Some("B"));
        assert_eq!(true_stage(&json!({"ps": 0})), None);
        assert_eq!(survival_truth(&json!("{\"survival_months\": 40, \"if_death\": 1}"), "survival_months", "if_death"), Some((40.0, true)));
        assert_eq!(risk_group(Some(12.0)), "intermediate (12-36 mo)");
    }
}
