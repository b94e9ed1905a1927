//! Where a task's reward reads the answer of a response: the parser evaluation must use so that
//! it sees the answer the reward saw (extract-failure rate, majority vote, BLEU/ROUGE text).
//!
//! Only the *kind* lives here, as data a task declares (`metrics.answer` in task.yaml); the
//! parsing itself is evaluation's (`medrl_eval::answer::ReadAnswer`, implemented for this type).

use serde::{Deserialize, Serialize};

/// How a response's answer is read (`metrics.answer` in task.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// Free text: the response after the last `</think>`, trimmed.
    #[default]
    Text,
    /// The text after the last `## Final Response` heading (medical-verifier).
    FinalResponse,
    /// The last `<answer>…</answer>` (study-search).
    AnswerTag,
    /// The first number inside the last `<answer>…</answer>` (sample-size).
    Number,
    /// The `<hard_check_survival>` JSON block of the HCC output format (hcc-composite).
    Hcc,
}

impl AnswerKind {
    pub const ALL: [AnswerKind; 5] = [AnswerKind::Text, AnswerKind::FinalResponse, AnswerKind::AnswerTag, AnswerKind::Number, AnswerKind::Hcc];

    /// The name written in task.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Text => "text",
            AnswerKind::FinalResponse => "final_response",
            AnswerKind::AnswerTag => "answer_tag",
            AnswerKind::Number => "number",
            AnswerKind::Hcc => "hcc",
        }
    }
}

/// A name that is no [`AnswerKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown answer parser `{0}`: expected text, final_response, answer_tag, number or hcc")]
pub struct UnknownAnswerKind(pub String);

impl std::str::FromStr for AnswerKind {
    type Err = UnknownAnswerKind;
    fn from_str(s: &str) -> Result<Self, UnknownAnswerKind> {
        AnswerKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownAnswerKind(s.to_string()))
    }
}

impl std::fmt::Display for AnswerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for k in AnswerKind::ALL {
            let v = serde_json::to_value(k).unwrap();
            assert_eq!(v, serde_json::Value::String(k.as_str().into()));
            assert_eq!(serde_json::from_value::<AnswerKind>(v).unwrap(), k);
        }
        assert_eq!(AnswerKind::default(), AnswerKind::Text);
    }
}
