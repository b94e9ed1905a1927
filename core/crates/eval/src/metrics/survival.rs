//! Survival metrics for prognosis tasks (times in months; `events[i]` true = the event was
//! observed at `times[i]`, false = censored then).
//!
//! **Sign convention.** Every function here takes *risk scores*: higher = worse prognosis
//! (earlier event), like a Cox partial hazard. lifelines' `concordance_index` takes the opposite
//! (higher = longer survival), so [`concordance_index`]`(t, risk, e)` equals
//! `lifelines.utils.concordance_index(t, -risk, e)`.
//!
//! - [`concordance_index`]: Harrell's C with lifelines' (0.30) handling of ties. A pair (i, j) is
//!   admissible when i had the event and `t_i < t_j`, or `t_i == t_j` and j is censored (two
//!   events at the same time are not compared). It is concordant when `risk_i > risk_j`, and
//!   counts 1/2 when the risks are equal. C = (concordant + tied / 2) / admissible. No admissible
//!   pair (e.g. everything censored) is an error, as in lifelines. O(n log n) time.
//! - [`concordance_index_ci`]: percentile bootstrap interval of C (subjects resampled with
//!   replacement from a seeded ChaCha8 stream; resamples with no admissible pair are skipped and
//!   counted; percentiles interpolated linearly, as `numpy.percentile`).
//! - [`brier_score_at`]: mean of `(S_hat(t) - 1[T > t])^2` over subjects whose status at t is
//!   known: events at `T <= t` (dead, outcome 0) and everyone with `T > t` (alive, outcome 1).
//!   Subjects censored at or before t are **left out**, not reweighted: there is no inverse-
//!   probability-of-censoring weighting (IPCW, as in scikit-survival's `brier_score`), so the
//!   score is biased when censoring is heavy before t or depends on prognosis. The number of
//!   subjects used is returned with it.
//! - [`time_dependent_auc`]: cumulative/dynamic AUC at t: cases are events at `T <= t`, controls
//!   are subjects with `T > t`; AUC = P(risk_case > risk_control), ties 1/2. Unweighted (no
//!   IPCW, unlike scikit-survival's `cumulative_dynamic_auc`), with the same censoring caveat.
//! - [`extract_failure_rate`]: fraction of predictions the answer parser could not read.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{check_finite, check_len, MetricError};

/// The horizons (months) reported by the prognosis tasks.
pub const HORIZONS_MONTHS: [f64; 3] = [12.0, 36.0, 60.0];

fn check_survival(what: &'static str, times: &[f64], events: &[bool], scores: &[f64]) -> Result<(), MetricError> {
    check_len(what, times.len(), events.len())?;
    check_len(what, times.len(), scores.len())?;
    check_finite(what, times)?;
    check_finite(what, scores)
}

/// (concordant, tied, admissible) with lifelines' rules, for the subjects listed in `idx`
/// (a bootstrap resample may list a subject several times). O(n log n), lifelines' own scheme:
/// walk the subjects by time; each group of equal times first compares its events with the
/// earlier events, then adds its events to a Fenwick tree of event risks, then compares its
/// censored subjects with all events so far (the same-time events included).
fn concordance_counts(times: &[f64], risk: &[f64], events: &[bool], idx: &[usize]) -> (u64, u64, u64) {
    let mut order: Vec<usize> = idx.to_vec();
    order.sort_by(|&a, &b| times[a].total_cmp(&times[b]));
    // Risk ranks (1-based for the Fenwick tree) over the distinct risks of this sample.
    let mut levels: Vec<f64> = order.iter().map(|&i| risk[i]).collect();
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    let rank = |r: f64| levels.partition_point(|&x| x < r) + 1;
    let mut tree = vec![0u64; levels.len() + 1];
    let add = |tree: &mut [u64], mut k: usize| {
        while k < tree.len() {
            tree[k] += 1;
            k += k & k.wrapping_neg();
        }
    };
    let prefix = |tree: &[u64], mut k: usize| {
        let mut s = 0;
        while k > 0 {
            s += tree[k];
            k -= k & k.wrapping_neg();
        }
        s
    };
    let (mut correct, mut tied, mut pairs, mut inserted) = (0u64, 0u64, 0u64, 0u64);
    // An earlier event i and a later subject j: concordant when risk_i > risk_j.
    let mut compare = |tree: &[u64], inserted: u64, j: usize| {
        let k = rank(risk[j]);
        let at_or_below = prefix(tree, k);
        pairs += inserted;
        correct += inserted - at_or_below;
        tied += at_or_below - prefix(tree, k - 1);
    };
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end < order.len() && times[order[end]] == times[order[start]] {
            end += 1;
        }
        let group = &order[start..end];
        for &j in group.iter().filter(|&&j| events[j]) {
            compare(&tree, inserted, j);
        }
        for &j in group.iter().filter(|&&j| events[j]) {
            add(&mut tree, rank(risk[j]));
            inserted += 1;
        }
        for &j in group.iter().filter(|&&j| !events[j]) {
            compare(&tree, inserted, j);
        }
        start = end;
    }
    (correct, tied, pairs)
}

fn ratio(correct: u64, tied: u64, pairs: u64) -> f64 {
    // lifelines: (num_correct + num_tied / 2) / num_pairs
    (correct as f64 + tied as f64 / 2.0) / pairs as f64
}

/// Harrell's C-index of `risk` (higher = worse) against observed `times`/`events`.
pub fn concordance_index(times: &[f64], risk: &[f64], events: &[bool]) -> Result<f64, MetricError> {
    check_survival("concordance_index", times, events, risk)?;
    let idx: Vec<usize> = (0..times.len()).collect();
    let (c, t, p) = concordance_counts(times, risk, events, &idx);
    if p == 0 {
        return Err(MetricError::Undefined { what: "concordance_index", msg: "no admissible pairs (need an event before another subject's time)".into() });
    }
    Ok(ratio(c, t, p))
}

/// A point estimate with a bootstrap percentile interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcordanceCi {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
    /// Resamples that produced a value.
    pub n_boot: usize,
    /// Resamples skipped because they had no admissible pair.
    pub n_skipped: usize,
}

/// [`concordance_index`] with a percentile bootstrap interval at `level` (e.g. 0.95) from
/// `n_boot` resamples drawn from `ChaCha8Rng::seed_from_u64(seed)`: same inputs and seed, same
/// interval.
pub fn concordance_index_ci(times: &[f64], risk: &[f64], events: &[bool], n_boot: usize, level: f64, seed: u64) -> Result<ConcordanceCi, MetricError> {
    const WHAT: &str = "concordance_index_ci";
    let estimate = concordance_index(times, risk, events)?;
    if n_boot == 0 || !(level > 0.0 && level < 1.0) {
        return Err(MetricError::Undefined { what: WHAT, msg: format!("need n_boot > 0 and 0 < level < 1 (got {n_boot}, {level})") });
    }
    let n = times.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(n_boot);
    let mut idx = vec![0usize; n];
    for _ in 0..n_boot {
        for k in idx.iter_mut() {
            *k = rng.gen_range(0..n);
        }
        let (c, t, p) = concordance_counts(times, risk, events, &idx);
        if p > 0 {
            values.push(ratio(c, t, p));
        }
    }
    if values.is_empty() {
        return Err(MetricError::Undefined { what: WHAT, msg: "no bootstrap resample had an admissible pair".into() });
    }
    let alpha = (1.0 - level) / 2.0;
    Ok(ConcordanceCi {
        estimate,
        lower: percentile(&values, 100.0 * alpha)?,
        upper: percentile(&values, 100.0 * (1.0 - alpha))?,
        level,
        n_boot: values.len(),
        n_skipped: n_boot - values.len(),
    })
}

/// The `q`-th percentile (0..=100) with linear interpolation between order statistics, as
/// `numpy.percentile(values, q)` (method "linear").
pub fn percentile(values: &[f64], q: f64) -> Result<f64, MetricError> {
    if values.is_empty() {
        return Err(MetricError::Empty { what: "percentile" });
    }
    check_finite("percentile", values)?;
    if !(0.0..=100.0).contains(&q) {
        return Err(MetricError::BadValue { what: "percentile", index: 0, value: q, expected: "q in 0..=100" });
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let frac = pos - lo as f64;
    // numpy's _lerp: a + (b - a) * t, evaluated from the upper end when t >= 0.5.
    let (a, b) = (v[lo], v[hi]);
    let diff = b - a;
    Ok(if frac >= 0.5 { b - diff * (1.0 - frac) } else { a + diff * frac })
}

/// Brier score at horizon `t` and the number of subjects it averages over.
#[derive(Debug, Clone, PartialEq)]
pub struct BrierAt {
    pub horizon: f64,
    pub score: f64,
    pub n_used: usize,
}

/// Brier score of predicted survival probabilities `surv_prob[i] = S_hat_i(t)` at horizon `t`,
/// over subjects whose status at `t` is known (see the module doc: no IPCW).
pub fn brier_score_at(times: &[f64], events: &[bool], surv_prob: &[f64], t: f64) -> Result<BrierAt, MetricError> {
    const WHAT: &str = "brier_score_at";
    check_survival(WHAT, times, events, surv_prob)?;
    if let Some(index) = surv_prob.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(MetricError::BadValue { what: WHAT, index, value: surv_prob[index], expected: "a probability in [0, 1]" });
    }
    let (mut sum, mut n) = (0.0, 0usize);
    for i in 0..times.len() {
        let outcome = if times[i] > t {
            1.0
        } else if events[i] {
            0.0
        } else {
            continue; // censored at or before t: status at t unknown
        };
        sum += (surv_prob[i] - outcome) * (surv_prob[i] - outcome);
        n += 1;
    }
    if n == 0 {
        return Err(MetricError::Undefined { what: WHAT, msg: format!("no subject has a known status at t = {t}") });
    }
    Ok(BrierAt { horizon: t, score: sum / n as f64, n_used: n })
}

/// Cumulative/dynamic AUC at horizon `t` and the case/control counts behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeAuc {
    pub horizon: f64,
    pub auc: f64,
    pub n_cases: usize,
    pub n_controls: usize,
}

/// Time-dependent (cumulative/dynamic) AUC of `risk` (higher = worse) at horizon `t`.
pub fn time_dependent_auc(times: &[f64], events: &[bool], risk: &[f64], t: f64) -> Result<TimeAuc, MetricError> {
    const WHAT: &str = "time_dependent_auc";
    check_survival(WHAT, times, events, risk)?;
    let cases: Vec<f64> = (0..times.len()).filter(|&i| events[i] && times[i] <= t).map(|i| risk[i]).collect();
    let controls: Vec<f64> = (0..times.len()).filter(|&i| times[i] > t).map(|i| risk[i]).collect();
    if cases.is_empty() || controls.is_empty() {
        return Err(MetricError::Undefined { what: WHAT, msg: format!("at t = {t}: {} cases, {} controls; need both", cases.len(), controls.len()) });
    }
    let mut wins = 0.0f64;
    for &c in &cases {
        for &k in &controls {
            if c > k {
                wins += 1.0;
            } else if c == k {
                wins += 0.5;
            }
        }
    }
    Ok(TimeAuc { horizon: t, auc: wins / (cases.len() * controls.len()) as f64, n_cases: cases.len(), n_controls: controls.len() })
}

/// Fraction of predictions that are `None` (the answer could not be extracted).
pub fn extract_failure_rate<T>(preds: &[Option<T>]) -> Result<f64, MetricError> {
    if preds.is_empty() {
        return Err(MetricError::Empty { what: "extract_failure_rate" });
    }
    Ok(preds.iter().filter(|p| p.is_none()).count() as f64 / preds.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_index_hand_cases() {
        // Perfect ordering by risk.
        let t = [1.0, 2.0, 3.0, 4.0];
        let e = [true, true, true, true];
        assert_eq!(concordance_index(&t, &[4.0, 3.0, 2.0, 1.0], &e).unwrap(), 1.0);
        assert_eq!(concordance_index(&t, &[1.0, 2.0, 3.0, 4.0], &e).unwrap(), 0.0);
        assert_eq!(concordance_index(&t, &[1.0, 1.0, 1.0, 1.0], &e).unwrap(), 0.5);
        // Tied event times are not compared; a censored subject at the same time is.
        let (c, ti, p) = concordance_counts(&[2.0, 2.0, 2.0], &[3.0, 2.0, 1.0], &[true, true, false], &[0, 1, 2]);
        assert_eq!((c, ti, p), (2, 0, 2));
        assert!(concordance_index(&[1.0, 2.0], &[1.0, 2.0], &[false, false]).is_err());
    }

    /// The pair-by-pair definition, O(n^2).
    fn naive_counts(times: &[f64], risk: &[f64], events: &[bool], idx: &[usize]) -> (u64, u64, u64) {
        let (mut correct, mut tied, mut pairs) = (0, 0, 0);
        for &i in idx.iter().filter(|&&i| events[i]) {
            for &j in idx {
                if times[i] < times[j] || (times[i] == times[j] && !events[j]) {
                    pairs += 1;
                    if risk[i] > risk[j] {
                        correct += 1;
                    } else if risk[i] == risk[j] {
                        tied += 1;
                    }
                }
            }
        }
        (correct, tied, pairs)
    }

    #[test]
    fn fast_counts_equal_pairwise_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for trial in 0..200 {
            let n = rng.gen_range(1..40);
            let times: Vec<f64> = (0..n).map(|_| rng.gen_range(0..8) as f64).collect();
            let risk: Vec<f64> = (0..n).map(|_| rng.gen_range(-3..4) as f64 * 0.5).collect();
            let events: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.6)).collect();
            let idx: Vec<usize> = if trial % 2 == 0 { (0..n).collect() } else { (0..n).map(|_| rng.gen_range(0..n)).collect() };
            assert_eq!(concordance_counts(&times, &risk, &events, &idx), naive_counts(&times, &risk, &events, &idx), "trial {trial}");
        }
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_estimate() {
        let n = 80;
        let t: Vec<f64> = (0..n).map(|i| (i % 17) as f64 + 1.0).collect();
        let e: Vec<bool> = (0..n).map(|i| i % 4 != 0).collect();
        let r: Vec<f64> = (0..n).map(|i| -((i % 17) as f64) + ((i * 7) % 5) as f64).collect();
        let a = concordance_index_ci(&t, &r, &e, 500, 0.95, 7).unwrap();
        let b = concordance_index_ci(&t, &r, &e, 500, 0.95, 7).unwrap();
        let c = concordance_index_ci(&t, &r, &e, 500, 0.95, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.lower, c.lower);
        assert!(a.lower < a.estimate && a.estimate < a.upper, "{a:?}");
        assert_eq!(a.n_boot + a.n_skipped, 500);
    }

    #[test]
    fn percentile_like_numpy() {
        let v = [3.0, 1.0, 2.0, 10.0];
        assert_eq!(percentile(&v, 0.0).unwrap(), 1.0);
        assert_eq!(percentile(&v, 100.0).unwrap(), 10.0);
        assert_eq!(percentile(&v, 50.0).unwrap(), 2.5);
        assert!((percentile(&v, 90.0).unwrap() - 7.9).abs() < 1e-12);
    }

    #[test]
    fn brier_auc_and_failures() {
        let t = [6.0, 12.0, 12.0, 20.0, 30.0];
        let e = [true, true, false, false, true];
        // Subject 2 (censored at 12) is excluded at t = 12.
        let b = brier_score_at(&t, &e, &[0.2, 0.4, 0.9, 0.8, 0.7], 12.0).unwrap();
        assert_eq!(b.n_used, 4);
        assert!((b.score - (0.04 + 0.16 + 0.04 + 0.09) / 4.0).abs() < 1e-12);
        let a = time_dependent_auc(&t, &e, &[5.0, 3.0, 9.0, 3.0, 1.0], 12.0).unwrap();
        assert_eq!((a.n_cases, a.n_controls), (2, 2));
        assert!((a.auc - 3.5 / 4.0).abs() < 1e-12);
        assert!(brier_score_at(&t, &e, &[0.2, 0.4, 1.5, 0.8, 0.7], 12.0).is_err());
        assert!(time_dependent_auc(&t, &e, &[1.0; 5], 1.0).is_err());
        assert_eq!(extract_failure_rate(&[Some(1), None, Some(2), None]).unwrap(), 0.5);
        assert!(extract_failure_rate::<u8>(&[]).is_err());
    }
}
