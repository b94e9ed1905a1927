//! Accuracy: when a scored response counts as correct.

use serde::{Deserialize, Serialize};

use crate::set::RewardResult;

/// Accuracy: a response is correct when reward component `component` of plugin `plugin` (or,
/// with `component: score`, that plugin's score) is at least `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracySpec {
    /// Reward name; `None`: any plugin's component of that name.
    #[serde(default)]
    pub plugin: Option<String>,
    pub component: String,
    pub threshold: f64,
}

impl AccuracySpec {
    /// The value this rule reads from `r` ([`accuracy_value`]).
    pub fn value(&self, r: &RewardResult) -> Option<f64> {
        accuracy_value(r, self)
    }
    /// Whether `r` is correct under this rule ([`is_correct`]).
    pub fn is_correct(&self, r: &RewardResult) -> bool {
        is_correct(r, self)
    }
}

/// The value the accuracy rule reads. With a plugin: `score` is its score, else its component
/// (`component` or `plugin/component`). Without: a component by exact name, else one whose name
/// ends in `/<name>`, else a plugin's score of that name.
pub fn accuracy_value(r: &RewardResult, a: &AccuracySpec) -> Option<f64> {
    let name = a.component.as_str();
    if let Some(plugin) = &a.plugin {
        if name == "score" {
            return r.by_plugin.get(plugin).copied().flatten();
        }
        return r.components.get(&format!("{plugin}/{name}")).or_else(|| r.components.get(name).filter(|_| !r.components.keys().any(|k| k.contains('/')))).copied();
    }
    r.components
        .get(name)
        .copied()
        .or_else(|| r.components.iter().find(|(k, _)| k.rsplit('/').next() == Some(name)).map(|(_, v)| *v))
        .or_else(|| r.by_plugin.get(name).copied().flatten())
        // `score` with no plugin named: the weighted total (GRPO's `accuracy_threshold`).
        .or_else(|| (name == "score").then_some(r.total).flatten())
}

/// Correct: the value the rule reads exists and is at least its threshold.
pub fn is_correct(r: &RewardResult, a: &AccuracySpec) -> bool {
    accuracy_value(r, a).is_some_and(|v| v >= a.threshold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn accuracy_value_lookup() {
        let r = RewardResult {
            total: Some(1.0),
            by_plugin: BTreeMap::from([("verifier".into(), Some(1.0))]),
            components: BTreeMap::from([("sample-size/accuracy".into(), 1.0)]),
            failures: BTreeMap::new(),
        };
        let spec = |plugin: Option<&str>, c: &str| AccuracySpec { plugin: plugin.map(str::to_string), component: c.into(), threshold: 1.0 };
        assert_eq!(accuracy_value(&r, &spec(None, "accuracy")), Some(1.0));
        assert_eq!(accuracy_value(&r, &spec(None, "verifier")), Some(1.0));
        assert_eq!(accuracy_value(&r, &spec(None, "nope")), None);
        assert_eq!(accuracy_value(&r, &spec(Some("verifier"), "score")), Some(1.0));
        assert_eq!(accuracy_value(&r, &spec(Some("sample-size"), "accuracy")), Some(1.0));
        assert_eq!(accuracy_value(&r, &spec(Some("verifier"), "accuracy")), None);
        // No plugin and no component called `score`: the total (this read None before, so
        // GRPO's `accuracy_threshold` reported 0 accuracy whatever the answers).
        let total = RewardResult { total: Some(1.1), ..r.clone() };
        assert_eq!(accuracy_value(&total, &spec(None, "score")), Some(1.1));
        assert!(is_correct(&total, &spec(None, "score")));
        assert!(!is_correct(&r, &spec(None, "nope")));
        assert!(spec(None, "accuracy").is_correct(&r));
    }
}
