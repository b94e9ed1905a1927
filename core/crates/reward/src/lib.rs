//! medrl-reward: rewards as trainers and evaluation score them.
//!
//! - [`judge`]: the plugins' `judge` capability backed by a loaded model (classifier or causal LM).
//!
//! Layer 4: imports medrl-base, medrl-nn, medrl-lm and medrl-plugin; never data, tasks,
//! evaluation or training.

pub mod judge;
