//! What to do when a plugin fails, the per-sample outcome once that was decided, and the
//! counters that make failures visible.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::error::PluginError;

/// Per-plugin reaction to a failed sample (trap, timeout, bad output, guest error...).
///
/// `Fail` is right for evaluation (a broken reward must stop the run); `Score` keeps training
/// going with a fixed reward, which biases the advantage estimate for that group; `Drop` removes
/// the sample (the trainer must then handle ragged groups). Every failure is counted either way.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    #[default]
    Fail,
    Score(f64),
    Drop,
}

/// A failure policy that does not parse; holds the text given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid failure policy `{0}`: expected fail, drop or score:<number>")]
pub struct ParsePolicyError(pub String);

impl std::str::FromStr for FailurePolicy {
    type Err = ParsePolicyError;
    /// `fail`, `drop`, or `score:<value>` (e.g. `score:-1`).
    fn from_str(s: &str) -> Result<Self, ParsePolicyError> {
        match s {
            "fail" => Ok(Self::Fail),
            "drop" => Ok(Self::Drop),
            _ => match s.strip_prefix("score:").map(str::parse::<f64>) {
                Some(Ok(v)) if v.is_finite() => Ok(Self::Score(v)),
                _ => Err(ParsePolicyError(s.to_string())),
            },
        }
    }
}

/// The result for one sample after the failure policy was applied.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Component names are shared (`Arc<str>`, interned per plugin): a batch holds one copy
    /// of each name, not one per sample.
    Scored {
        score: f64,
        components: Vec<(Arc<str>, f64)>,
    },
    /// The plugin declined the sample (not its task).
    NotApplicable,
    /// The plugin failed on this sample; the policy's score stands in.
    Substituted { score: f64, error: Arc<PluginError> },
    /// The plugin failed on this sample; the policy drops it.
    Dropped { error: Arc<PluginError> },
}

impl Outcome {
    /// The reward to train on, if any.
    pub fn reward(&self) -> Option<f64> {
        match self {
            Outcome::Scored { score, .. } | Outcome::Substituted { score, .. } => Some(*score),
            _ => None,
        }
    }
}

/// Live counters of one plugin. Cheap to update from many threads.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) calls: AtomicU64,
    pub(crate) samples: AtomicU64,
    pub(crate) scored: AtomicU64,
    pub(crate) not_applicable: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) substituted: AtomicU64,
    pub(crate) stores_discarded: AtomicU64,
    pub(crate) capability_denied: AtomicU64,
    pub(crate) failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub(crate) fn failure(&self, kind: &'static str, n: u64) {
        *self.failures.lock().unwrap().entry(kind).or_default() += n;
    }
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            calls: g(&self.calls),
            samples: g(&self.samples),
            scored: g(&self.scored),
            not_applicable: g(&self.not_applicable),
            dropped: g(&self.dropped),
            substituted: g(&self.substituted),
            stores_discarded: g(&self.stores_discarded),
            capability_denied: g(&self.capability_denied),
            failures: self
                .failures
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// Point-in-time copy of [`Metrics`], serializable for the run's metric logs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MetricsSnapshot {
    pub calls: u64,
    pub samples: u64,
    pub scored: u64,
    pub not_applicable: u64,
    pub dropped: u64,
    pub substituted: u64,
    pub stores_discarded: u64,
    pub capability_denied: u64,
    /// Failed samples by error kind (see [`super::PluginError::kind`]).
    pub failures: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_policy_names_itself_and_the_choices() {
        let e = "score:nan".parse::<FailurePolicy>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid failure policy `score:nan`: expected fail, drop or score:<number>"
        );
    }
}
