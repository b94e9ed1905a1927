//! Evaluation (issue 7, `medrl eval`). So far only the metric layer: [`metrics`] computes BLEU,
//! ROUGE, survival metrics and accuracy from strings and numbers, with no model involved. Each
//! metric documents the reference implementation it reproduces; `tests/metrics.rs` checks them
//! against values computed by those Python packages (docs/metrics.md).

pub mod metrics;
