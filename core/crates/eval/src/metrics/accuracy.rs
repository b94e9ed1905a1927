//! Accuracy over parsed answers (`None` = the parser found no answer, which counts as wrong).
//!
//! Answers are compared as exact strings: normalising them (case, units, option letters) is the
//! answer parser's job, so that every metric sees the same canonical form.
//!
//! - [`exact_match_accuracy`]: fraction of predictions equal to the gold answer.
//! - [`majority_vote`]: the most frequent non-`None` answer. **Ties** go to the tied answer that
//!   appears first in the list (sample order), so the result is deterministic and does not depend
//!   on hashing; all-`None` gives `None`.
//! - [`accuracy_curve`]: for n = 1..=N, the accuracy of majority vote over the first n samples of
//!   each problem, and of oracle best-of-n (correct when any of the first n samples is correct,
//!   i.e. empirical pass@n on that prefix). N is the smallest candidate count over problems.
//!   Using prefixes makes the curve monotone in the data actually sampled; [`pass_at_k`] gives the
//!   unbiased pass@k estimate (Chen et al. 2021) from all n samples instead.

use std::collections::HashMap;

use super::{check_len, MetricError};

/// Fraction of `preds` equal to `golds` (`None` is wrong).
pub fn exact_match_accuracy<S: AsRef<str>>(preds: &[Option<String>], golds: &[S]) -> Result<f64, MetricError> {
    check_len("exact_match_accuracy: predictions vs gold answers", preds.len(), golds.len())?;
    let hits = preds.iter().zip(golds).filter(|(p, g)| p.as_deref() == Some(g.as_ref())).count();
    Ok(hits as f64 / preds.len() as f64)
}

/// The most frequent non-`None` answer; ties go to the one whose first occurrence is earliest.
pub fn majority_vote(answers: &[Option<String>]) -> Option<String> {
    // answer -> (count, first index)
    let mut tally: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        if let Some(a) = a {
            tally.entry(a.as_str()).or_insert((0, i)).0 += 1;
        }
    }
    tally
        .into_iter()
        .max_by(|(_, (ca, fa)), (_, (cb, fb))| ca.cmp(cb).then(fb.cmp(fa)))
        .map(|(a, _)| a.to_string())
}

/// One point of an accuracy-vs-n curve.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub n: usize,
    /// Oracle best-of-n: any of the first n samples is correct.
    pub best_of_n: f64,
    /// Majority vote over the first n samples is correct.
    pub majority: f64,
}

/// Accuracy vs number of samples, `candidates[p]` being problem p's samples in sampling order.
pub fn accuracy_curve<S: AsRef<str>>(candidates: &[Vec<Option<String>>], golds: &[S]) -> Result<Vec<CurvePoint>, MetricError> {
    const WHAT: &str = "accuracy_curve: problems vs gold answers";
    check_len(WHAT, candidates.len(), golds.len())?;
    let max_n = candidates.iter().map(Vec::len).min().unwrap_or(0);
    if max_n == 0 {
        return Err(MetricError::Empty { what: "accuracy_curve: a problem has no candidates" });
    }
    let problems = candidates.len() as f64;
    let mut curve = Vec::with_capacity(max_n);
    for n in 1..=max_n {
        let (mut best, mut maj) = (0usize, 0usize);
        for (cands, gold) in candidates.iter().zip(golds) {
            let prefix = &cands[..n];
            let gold = gold.as_ref();
            if prefix.iter().any(|c| c.as_deref() == Some(gold)) {
                best += 1;
            }
            if majority_vote(prefix).as_deref() == Some(gold) {
                maj += 1;
            }
        }
        curve.push(CurvePoint { n, best_of_n: best as f64 / problems, majority: maj as f64 / problems });
    }
    Ok(curve)
}

/// Unbiased pass@k from `n` samples of which `c` are correct: `1 - C(n-c, k) / C(n, k)`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Result<f64, MetricError> {
    if k == 0 || k > n || c > n {
        return Err(MetricError::Undefined { what: "pass_at_k", msg: format!("need 0 < k <= n and c <= n (n={n}, c={c}, k={k})") });
    }
    if n - c < k {
        return Ok(1.0);
    }
    // Product form, numerically stable: prod_{i=n-c+1}^{n} (1 - k/i).
    let prod: f64 = ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Ok(1.0 - prod)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|x| x.map(str::to_string)).collect()
    }

    #[test]
    fn vote_and_ties() {
        assert_eq!(majority_vote(&s(&[Some("B"), Some("A"), Some("A")])).as_deref(), Some("A"));
        assert_eq!(majority_vote(&s(&[Some("B"), Some("A"), Some("A"), Some("B")])).as_deref(), Some("B"));
        assert_eq!(majority_vote(&s(&[None, Some("C"), None, Some("D")])).as_deref(), Some("C"));
        assert_eq!(majority_vote(&s(&[None, None])), None);
        assert_eq!(majority_vote(&[]), None);
    }

    #[test]
    fn accuracy_and_curve() {
        let preds = s(&[Some("A"), None, Some("C")]);
        assert!((exact_match_accuracy(&preds, &["A", "B", "D"]).unwrap() - 1.0 / 3.0).abs() < 1e-15);
        assert!(exact_match_accuracy(&preds, &["A"]).is_err());
        let cands = vec![s(&[Some("B"), Some("A"), Some("A")]), s(&[None, Some("C"), Some("D")])];
        let curve = accuracy_curve(&cands, &["A", "D"]).unwrap();
        assert_eq!(curve.len(), 3);
        assert_eq!((curve[0].best_of_n, curve[0].majority), (0.0, 0.0));
        assert_eq!((curve[1].best_of_n, curve[1].majority), (0.5, 0.0));
        assert_eq!((curve[2].best_of_n, curve[2].majority), (1.0, 0.5));
    }

    #[test]
    fn pass_at_k_values() {
        assert_eq!(pass_at_k(10, 0, 3).unwrap(), 0.0);
        assert_eq!(pass_at_k(10, 10, 3).unwrap(), 1.0);
        assert!((pass_at_k(4, 1, 2).unwrap() - 0.5).abs() < 1e-15);
        assert!(pass_at_k(3, 1, 4).is_err());
    }
}
