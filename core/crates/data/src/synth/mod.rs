//! Synthetic, verifiable training data: problems whose exact answers follow from documented
//! rules, so a task can be trained and tested without private records.
//! - [`sample_size`]: two-arm trial sample sizes from the closed-form formulas;
//! - [`hcc`]: HCC EMR narratives (English, Chinese, mixed) with BCLC stage, treatments and
//!   survival as the `hcc-composite` reward expects them.

pub mod hcc;
pub mod sample_size;
