//! Evaluation metrics, pure Rust, each matching a named reference implementation:
//!
//! - [`bleu`]: corpus and sentence BLEU as sacreBLEU 2.x computes them by default (13a tokenizer,
//!   exp smoothing, 4-grams);
//! - [`rouge`](mod@rouge): ROUGE-1/2/L as Google's `rouge-score` package computes them (no stemmer), plus a
//!   character-level variant for Chinese (and other CJK) text, which `rouge-score` drops;
//! - [`survival`]: Harrell's C-index (lifelines' tie handling) with a bootstrap interval, Brier
//!   score and cumulative/dynamic AUC at fixed horizons, extraction-failure rate;
//! - [`accuracy`]: exact match, majority vote, accuracy-vs-n curves.
//!
//! Bad input (empty lists, mismatched lengths, non-finite numbers, nothing to compare) is a
//! [`MetricError`], never a panic or a NaN. docs/metrics.md states every definition and trade-off.

pub mod accuracy;
pub mod bleu;
pub mod rouge;
pub mod survival;

pub use accuracy::{accuracy_curve, exact_match_accuracy, majority_vote, pass_at_k, CurvePoint};
pub use bleu::{corpus_bleu, sentence_bleu, tokenize_13a, BleuScore};
pub use rouge::{rouge, rouge_pair, RougePair, RougeReport, RougeTokenizer, Score};
pub use survival::{
    brier_score_at, concordance_index, concordance_index_ci, extract_failure_rate, percentile,
    time_dependent_auc, BrierAt, ConcordanceCi, TimeAuc, HORIZONS_MONTHS,
};

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("{what}: empty input")]
    Empty { what: &'static str },
    #[error("{what}: lengths differ ({left} vs {right})")]
    LengthMismatch { what: &'static str, left: usize, right: usize },
    #[error("{what}: value at index {index} is {value}, expected {expected}")]
    BadValue { what: &'static str, index: usize, value: f64, expected: &'static str },
    #[error("{what}: {msg}")]
    Undefined { what: &'static str, msg: String },
}

pub(crate) fn check_len(what: &'static str, left: usize, right: usize) -> Result<(), MetricError> {
    if left == 0 {
        return Err(MetricError::Empty { what });
    }
    if left != right {
        return Err(MetricError::LengthMismatch { what, left, right });
    }
    Ok(())
}

pub(crate) fn check_finite(what: &'static str, values: &[f64]) -> Result<(), MetricError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(MetricError::BadValue { what, index, value: values[index], expected: "a finite number" }),
        None => Ok(()),
    }
}

/// Python's `str.isspace()`, which `str.split()` / `str.rstrip()` use: Unicode White_Space
/// (Rust's `char::is_whitespace`) plus the ASCII separators U+001C..U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no argument.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_set() {
        // Every code point where CPython 3.11's str.isspace() is true.
        let py: Vec<u32> = [9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 133, 160, 5760]
            .into_iter()
            .chain(8192..=8202)
            .chain([8232, 8233, 8239, 8287, 12288])
            .collect();
        let ours: Vec<u32> = (0..=0x10FFFFu32).filter_map(char::from_u32).filter(|&c| is_py_space(c)).map(|c| c as u32).collect();
        assert_eq!(ours, py);
    }

    #[test]
    fn length_checks() {
        assert_eq!(check_len("x", 0, 0), Err(MetricError::Empty { what: "x" }));
        assert!(matches!(check_len("x", 2, 3), Err(MetricError::LengthMismatch { .. })));
        assert!(check_finite("x", &[1.0, f64::NAN]).is_err());
    }
}
