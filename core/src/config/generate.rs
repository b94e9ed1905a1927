//! Configuration of `medrl generate`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::Validate;
use crate::generate::SamplingParams;

/// `medrl generate --config FILE.yaml`: every flag of the command has a key here.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Model folder (Hugging Face layout).
    pub model: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "default_auto")]
    pub device: String,
    /// `f32`, `bf16`, `f16` or `auto` (bf16 on CUDA, f32 on CPU).
    #[serde(default = "default_auto")]
    pub dtype: String,
    /// Apply the model's chat template to each prompt (as a user turn).
    #[serde(default)]
    pub chat: bool,
    /// System prompt for chat mode.
    #[serde(default)]
    pub system: Option<String>,
    /// Prompts generated together in one batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Strings that end a sequence when they appear in the output.
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub sampling: SamplingParams,
}

fn default_auto() -> String {
    "auto".into()
}
fn default_batch() -> usize {
    16
}

impl Validate for GenerateConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        self.sampling.validate().map_err(|(k, m)| (format!("sampling.{k}"), m))?;
        if self.batch_size == 0 {
            return Err(("batch_size".into(), "must be at least 1".into()));
        }
        super::check_device_dtype(&self.device, &self.dtype)
    }
}
