//! The batch layout of API 0.2.0 (`sample-batch` and `batch-scores` in `wit/v0.2`), used by
//! the export glue. It is plain Rust (no bindings), so it builds and is tested natively.
//!
//! In: the host's one string plus 5·n + 1 offsets, sliced into [`RawSample`]s that borrow
//! from it. Out: [`BatchResults`], the flat lists the host expects, built one outcome at a
//! time. The common case (every sample reports the same components in the same order) costs
//! one comparison of names per sample; other shapes are handled too, just more slowly.

use serde_json::Value;

use crate::{Outcome, RawSample, Reward};

/// Fields per sample in a `sample-batch`: prompt, response, ground-truth, metadata, data-source.
pub const FIELDS: usize = 5;

/// Number of samples a batch with `offsets` claims to hold (also when the layout is invalid,
/// so that every sample can get an error).
pub fn sample_count(offsets: &[u32]) -> usize {
    offsets.len().saturating_sub(1) / FIELDS
}

/// Checks the layout promised by the host and returns the samples, borrowing from `text`.
/// `Err` describes the first violation (wrong count, out of range, decreasing, or not on a
/// character boundary).
pub fn samples<'a>(
    text: &'a str,
    offsets: &'a [u32],
) -> Result<impl ExactSizeIterator<Item = RawSample<'a>> + 'a, String> {
    if offsets.len() % FIELDS != 1 {
        return Err(format!(
            "malformed batch: {} offsets (expected 5 per sample + 1)",
            offsets.len()
        ));
    }
    if offsets[0] != 0 || offsets[offsets.len() - 1] as usize != text.len() {
        return Err(format!(
            "malformed batch: offsets run from {} to {}, text is {} bytes",
            offsets[0],
            offsets[offsets.len() - 1],
            text.len()
        ));
    }
    for (i, w) in offsets.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(format!("malformed batch: offset {} decreases", i + 1));
        }
        if !text.is_char_boundary(w[1] as usize) {
            return Err(format!(
                "malformed batch: offset {} is not on a character boundary",
                i + 1
            ));
        }
    }
    // Sample i spans offsets[5i ..= 5i + 5]; windows of 6 stepped by 5 give exactly those.
    Ok(offsets.windows(FIELDS + 1).step_by(FIELDS).map(move |o| {
        // Checked above: in range, non-decreasing, on boundaries.
        let f = |k: usize| &text[o[k] as usize..o[k + 1] as usize];
        RawSample {
            prompt: f(0),
            response: f(1),
            ground_truth: f(2),
            metadata: f(3),
            data_source: f(4),
        }
    }))
}

/// The flat results of one call (`batch-scores`); see the WIT for the contract.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchResults {
    pub scores: Vec<f64>,
    pub component_names: Vec<String>,
    pub components: Vec<f64>,
    pub absent: Vec<u32>,
    pub errors: Vec<(u32, String)>,
    pub not_applicable: Vec<u32>,
    /// Which samples were scored (their rows in `components` are real).
    scored: Vec<bool>,
}

impl BatchResults {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            scores: Vec::with_capacity(n),
            scored: Vec::with_capacity(n),
            ..Self::default()
        }
    }

    /// Samples pushed so far.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Appends the next sample's outcome.
    pub fn push(&mut self, outcome: Result<Outcome, String>) {
        let i = self.len() as u32;
        let k = self.component_names.len();
        let (score, parts) = match outcome {
            Ok(Outcome::Scored { score, components }) => (score, components),
            Ok(Outcome::NotApplicable) => {
                self.not_applicable.push(i);
                return self.push_unscored();
            }
            Err(message) => {
                self.errors.push((i, message));
                return self.push_unscored();
            }
        };
        // Fast path: the same names in the same order as the batch's.
        if parts.len() == k
            && parts
                .iter()
                .zip(&self.component_names)
                .all(|((a, _), b)| a == b)
        {
            self.components.extend(parts.iter().map(|(_, v)| *v));
            self.scores.push(score);
            self.scored.push(true);
            return;
        }
        for (j, (name, _)) in parts.iter().enumerate() {
            if parts[..j].iter().any(|(other, _)| other == name) {
                self.errors.push((
                    i,
                    format!("component `{name}` is reported twice for one sample"),
                ));
                return self.push_unscored();
            }
        }
        let new: Vec<String> = parts
            .iter()
            .filter(|(name, _)| !self.component_names.contains(name))
            .map(|(name, _)| name.clone())
            .collect();
        if !new.is_empty() {
            self.widen(new);
        }
        let k = self.component_names.len();
        let row = self.components.len();
        self.components.resize(row + k, 0.0);
        let mut present = vec![false; k];
        for (name, v) in &parts {
            let j = self
                .component_names
                .iter()
                .position(|n| n == name)
                .expect("added above");
            self.components[row + j] = *v;
            present[j] = true;
        }
        self.absent
            .extend((0..k).filter(|&j| !present[j]).map(|j| (row + j) as u32));
        self.scores.push(score);
        self.scored.push(true);
    }

    /// An errored or not-applicable sample: a placeholder row the host ignores.
    fn push_unscored(&mut self) {
        self.scores.push(0.0);
        self.scored.push(false);
        let k = self.component_names.len();
        self.components.extend(std::iter::repeat_n(0.0, k));
    }

    /// Adds component columns; earlier scored samples do not have them (absent).
    fn widen(&mut self, new: Vec<String>) {
        let (k0, n) = (self.component_names.len(), self.len());
        self.component_names.extend(new);
        let k = self.component_names.len();
        let mut components = Vec::with_capacity(n * k);
        let mut absent = Vec::with_capacity(self.absent.len());
        let mut old_absent = self.absent.iter().peekable();
        for i in 0..n {
            for j in 0..k {
                let missing = if j < k0 {
                    components.push(self.components[i * k0 + j]);
                    old_absent.next_if(|&&a| a as usize == i * k0 + j).is_some()
                } else {
                    components.push(0.0);
                    self.scored[i]
                };
                if missing {
                    absent.push((i * k + j) as u32);
                }
            }
        }
        self.components = components;
        self.absent = absent;
    }
}

/// Scores a whole batch with `R`: what the export glue runs for `score-batch`. An invalid
/// config or a malformed batch fails every sample with the same message.
pub fn score<R: Reward>(config: &str, text: &str, offsets: &[u32]) -> BatchResults {
    let n = sample_count(offsets);
    let mut out = BatchResults::with_capacity(n);
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let failed = |out: &mut BatchResults, message: String| {
        for _ in 0..n {
            out.push(Err(message.clone()));
        }
    };
    let config = match serde_json::from_str::<Value>(config) {
        Ok(c) => c,
        Err(e) => {
            failed(&mut out, format!("config is not valid JSON: {e}"));
            return out;
        }
    };
    match samples(text, offsets) {
        Ok(samples) => {
            for s in samples {
                out.push(R::score_raw(&config, s));
            }
        }
        Err(message) => failed(&mut out, message),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Manifest, Sample};

    /// Lays samples out as the host does.
    fn layout(samples: &[[&str; FIELDS]]) -> (String, Vec<u32>) {
        let mut text = String::new();
        let mut offsets = vec![0];
        for s in samples {
            for f in s {
                text.push_str(f);
                offsets.push(text.len() as u32);
            }
        }
        (text, offsets)
    }

    /// Reads results back as the host does: per sample, Ok(Some(score, components)),
    /// Ok(None) for not applicable, Err for a failure.
    #[allow(clippy::type_complexity)]
    fn read(r: &BatchResults) -> Vec<Result<Option<(f64, Vec<(String, f64)>)>, String>> {
        let k = r.component_names.len();
        assert_eq!(r.components.len(), r.scores.len() * k);
        (0..r.scores.len())
            .map(|i| {
                if let Some((_, m)) = r.errors.iter().find(|(e, _)| *e as usize == i) {
                    return Err(m.clone());
                }
                if r.not_applicable.contains(&(i as u32)) {
                    return Ok(None);
                }
                let parts = (0..k)
                    .filter(|j| !r.absent.contains(&((i * k + j) as u32)))
                    .map(|j| (r.component_names[j].clone(), r.components[i * k + j]))
                    .collect();
                Ok(Some((r.scores[i], parts)))
            })
            .collect()
    }

    #[test]
    fn slices_fields_without_copying() {
        let rows = [
            ["p0", "résponse", "{\"target\":1}", "{}", "src"],
            ["", "", "", "", ""],
            ["p2", "r2", "2", "{\"a\":1}", "s2"],
        ];
        let (text, offsets) = layout(&rows);
        let got: Vec<RawSample> = samples(&text, &offsets).unwrap().collect();
        assert_eq!(got.len(), 3);
        for (s, row) in got.iter().zip(rows) {
            assert_eq!(
                [
                    s.prompt,
                    s.response,
                    s.ground_truth,
                    s.metadata,
                    s.data_source
                ],
                row
            );
        }
        // Borrowed from `text`, not copied.
        let range = text.as_bytes().as_ptr_range();
        assert!(range.contains(&got[0].response.as_ptr()));
        assert_eq!(samples("", &[0]).unwrap().len(), 0);
    }

    #[test]
    fn malformed_batches_are_refused() {
        let (text, offsets) = layout(&[["a", "bé", "c", "d", "e"]]);
        let mut cases: Vec<(Vec<u32>, &str)> =
            vec![(offsets[..5].to_vec(), "offsets"), (vec![], "offsets")];
        let mut past_end = offsets.clone();
        past_end[5] = 100;
        cases.push((past_end, "text is"));
        let mut decreasing = offsets.clone();
        decreasing[2] = 0;
        cases.push((decreasing, "decreases"));
        let mut mid_char = offsets.clone();
        mid_char[2] = 3; // inside "é"
        cases.push((mid_char, "boundary"));
        let mut late_start = offsets.clone();
        late_start[0] = 1;
        cases.push((late_start, "run from 1"));
        for (o, needle) in cases {
            let e = samples(&text, &o)
                .err()
                .unwrap_or_else(|| panic!("{o:?} accepted"));
            assert!(e.contains(needle), "{o:?}: {e}");
        }
    }

    #[test]
    fn results_round_trip_in_every_shape() {
        let outcomes = vec![
            Err("bad".to_string()),
            Ok(Outcome::NotApplicable),
            Ok(Outcome::score(1.0)
                .with("format", 1.0)
                .with("accuracy", 0.0)),
            Ok(Outcome::score(2.0)
                .with("format", 0.5)
                .with("accuracy", 1.0)),
            // Other order, a new name, one missing.
            Ok(Outcome::score(3.0).with("judge", 0.25).with("format", 0.0)),
            Ok(Outcome::score(4.0)),
            Ok(Outcome::score(5.0)
                .with("accuracy", 9.0)
                .with("format", 8.0)),
            Err("late".to_string()),
        ];
        let mut r = BatchResults::with_capacity(outcomes.len());
        for o in outcomes.clone() {
            r.push(o);
        }
        assert_eq!(r.component_names, ["format", "accuracy", "judge"]);
        let back = read(&r);
        for (i, (o, b)) in outcomes.iter().zip(&back).enumerate() {
            match (o, b) {
                (Err(a), Err(b)) => assert_eq!(a, b),
                (Ok(Outcome::NotApplicable), Ok(None)) => {}
                (Ok(Outcome::Scored { score, components }), Ok(Some((s, c)))) => {
                    assert_eq!(score, s, "{i}");
                    // The host reports components in batch-name order.
                    let mut want = components.clone();
                    want.sort_by_key(|(n, _)| r.component_names.iter().position(|m| m == n));
                    assert_eq!(&want, c, "{i}");
                }
                _ => panic!("{i}: {o:?} came back as {b:?}"),
            }
        }
        // Error and not-applicable rows are never listed as absent (the host ignores them).
        let k = r.component_names.len();
        assert!(r
            .absent
            .iter()
            .all(|&a| ![0, 1, 7].contains(&(a as usize / k))));
    }

    #[test]
    fn homogeneous_batches_have_no_absent_entries() {
        let mut r = BatchResults::default();
        for i in 0..100 {
            r.push(Ok(Outcome::score(i as f64).with("a", 1.0).with("b", 2.0)));
        }
        assert!(r.absent.is_empty() && r.errors.is_empty());
        assert_eq!(r.components.len(), 200);
    }

    #[test]
    fn a_name_reported_twice_fails_that_sample() {
        let mut r = BatchResults::default();
        r.push(Ok(Outcome::score(1.0).with("a", 1.0)));
        r.push(Ok(Outcome::score(1.0).with("b", 1.0).with("b", 2.0)));
        r.push(Ok(Outcome::score(1.0).with("a", 3.0)));
        let back = read(&r);
        assert!(back[1]
            .as_ref()
            .unwrap_err()
            .contains("`b` is reported twice"));
        assert_eq!(back[2], Ok(Some((1.0, vec![("a".to_string(), 3.0)]))));
    }

    struct Len;
    impl Reward for Len {
        fn manifest() -> Manifest {
            Manifest::new("len", "0", "")
        }
        fn score(config: &Value, s: &Sample) -> Result<Outcome, String> {
            if s.data_source == "x" {
                return Err(format!("no {}", config["k"]));
            }
            Ok(Outcome::score(s.response.len() as f64)
                .with("gt", s.ground_truth["t"].as_f64().unwrap_or(-1.0)))
        }
    }

    #[test]
    fn score_runs_the_reward_over_the_batch() {
        let (text, offsets) = layout(&[
            ["p", "abc", "{\"t\":4}", "{}", "s"],
            ["p", "", "7", "{}", "x"],
        ]);
        let r = score::<Len>("{\"k\":1}", &text, &offsets);
        assert_eq!(
            read(&r),
            vec![
                Ok(Some((3.0, vec![("gt".to_string(), 4.0)]))),
                Err("no 1".to_string())
            ]
        );
        let r = score::<Len>("{", &text, &offsets);
        assert_eq!(r.errors.len(), 2);
        assert!(r.errors[0].1.starts_with("config is not valid JSON"));
        let r = score::<Len>("", &text, &offsets[..5]);
        assert_eq!(
            (r.len(), r.errors.len()),
            (0, 0),
            "no whole sample, nothing to fail"
        );
        let mut bad = offsets.clone();
        bad[1] = 99;
        let r = score::<Len>("", &text, &bad);
        assert_eq!(r.errors.len(), 2);
        assert!(r.errors[1].1.contains("malformed batch"));
    }
}
