//! Configuration of `medrl generate`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use medrl_base::config::Validate;
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
    /// The rollout engine's cache and step sizes (speed and memory only).
    #[serde(default)]
    pub engine: crate::engine::EngineConfig,
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
        self.engine.validate().map_err(|(k, m)| (format!("engine.{k}"), m))?;
        if self.batch_size == 0 {
            return Err(("batch_size".into(), "must be at least 1".into()));
        }
        medrl_base::config::check_device_dtype(&self.device, &self.dtype)
    }
}

#[cfg(test)]
mod loader_tests {
    //! The base config loader, exercised through a real configuration.
    use super::*;
    use medrl_base::config::load;
    use std::path::PathBuf;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("run.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_key_names_path_and_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  temprature: 0.5\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("run.yaml") && e.contains("sampling") && e.contains("temprature"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  max_new_tokens: lots\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("sampling.max_new_tokens") && e.contains("run.yaml"), "{e}");
    }

    #[test]
    fn out_of_range_names_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  top_p: 1.5\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("sampling.top_p") && e.contains("(0, 1]"), "{e}");
    }

    #[test]
    fn overrides_take_precedence_and_create_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  temperature: 0.5\n");
        let c: GenerateConfig =
            load(Some(&p), &["sampling.temperature=0.9".into(), "sampling.top_k=7".into(), "device=cpu".into()]).unwrap();
        assert_eq!(c.sampling.temperature, 0.9);
        assert_eq!(c.sampling.top_k, 7);
        let e = load::<GenerateConfig>(Some(&p), &["sampling".into()]).unwrap_err().to_string();
        assert!(e.contains("key.path=value"), "{e}");
        let e = load::<GenerateConfig>(Some(&p), &["model.x=1".into()]).unwrap_err().to_string();
        assert!(e.contains("not a mapping"), "{e}");
    }

    #[test]
    fn invalid_override_values_are_blamed_on_the_override_not_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: m\nsampling:\n  top_p: 0.9\n");
        let e = load::<GenerateConfig>(Some(&p), &["sampling.top_p=2".into()]).unwrap_err().to_string();
        assert!(e.starts_with("override `sampling.top_p=2`") && e.contains("sampling.top_p"), "{e}");
        // A mapping set whole, and an unknown key, by override.
        let e = load::<GenerateConfig>(Some(&p), &["sampling={top_p: 3}".into()]).unwrap_err().to_string();
        assert!(e.starts_with("override `sampling={top_p: 3}`"), "{e}");
        let e = load::<GenerateConfig>(Some(&p), &["sampling.topp=0.5".into()]).unwrap_err().to_string();
        assert!(e.starts_with("override `sampling.topp=0.5`") && e.contains("topp"), "{e}");
        // The file's own error stays the file's, even beside a valid override of a related key.
        let p = write(&d, "model: m\nsampling:\n  top_p: 1.5\n");
        let e = load::<GenerateConfig>(Some(&p), &["sampling.temperature=0.5".into()]).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()) && e.contains("sampling.top_p") && !e.contains("override"), "{e}");
        // A device or dtype typo names the key.
        let p = write(&d, "model: m\n");
        let e = load::<GenerateConfig>(Some(&p), &["device=tpu".into()]).unwrap_err().to_string();
        assert!(e.contains("override `device=tpu`") && e.contains("key `device`") && e.contains("run.yaml"), "{e}");
        let e = load::<GenerateConfig>(Some(&p), &["dtype=f64".into()]).unwrap_err().to_string();
        assert!(e.contains("key `dtype`"), "{e}");
    }

    #[test]
    fn yaml_syntax_error_has_location() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "model: [unclosed\n");
        let e = load::<GenerateConfig>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("run.yaml") && e.contains("line"), "{e}");
    }
}
