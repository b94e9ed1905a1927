//! Learning-rate schedules: linear warmup, then constant, linear or cosine decay.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub kind: ScheduleKind,
    /// Floor of the decay, as a fraction of `peak_lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// Learning rate for optimizer step `step` (0-based): warmup ramps `(step+1)/warmup`, as
    /// transformers' schedulers do, so the first step is not taken at lr 0.
    pub fn lr_at(&self, step: u64) -> f64 {
        let peak = self.peak_lr;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let floor = peak * self.min_lr_ratio;
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).clamp(0.0, 1.0);
        match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Linear => floor + (peak - floor) * (1.0 - progress),
            ScheduleKind::Cosine => floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_and_linear() {
        let s = LrSchedule { peak_lr: 1.0, warmup_steps: 4, total_steps: 14, kind: ScheduleKind::Cosine, min_lr_ratio: 0.1 };
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(3), 1.0);
        assert!((s.lr_at(4) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(9) - 0.55).abs() < 1e-12, "halfway: floor + half the range");
        assert!((s.lr_at(14) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(100) - 0.1).abs() < 1e-12, "past the end stays at the floor");
        let l = LrSchedule { kind: ScheduleKind::Linear, min_lr_ratio: 0.0, ..s.clone() };
        assert!((l.lr_at(9) - 0.5).abs() < 1e-12);
        let c = LrSchedule { kind: ScheduleKind::Constant, ..s };
        assert_eq!(c.lr_at(13), 1.0);
    }
}
