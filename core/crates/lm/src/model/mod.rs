//! Decoder models: configuration, weights, the transformer itself, KV cache, model folders, and
//! sequence classifiers (a decoder body with a score head, [`classifier`]).
//!
//! A *model folder* is a Hugging Face folder: `config.json`, `model.safetensors` (or a sharded
//! index), `tokenizer.json`, `tokenizer_config.json`, optionally `generation_config.json`.
//! Everything medrl writes (tiny random models, GGUF imports, SFT exports) is such a folder, so
//! `transformers` and medrl read each other's output.

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod init;
pub mod kv_cache;
pub mod layer_backward;
pub mod lora;
pub mod peft;
pub mod transformer;
pub mod weights;

use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

pub use checkpoint::{ActivationCheckpointing, Checkpointer};
pub use layer_backward::LayerBackward;
pub use classifier::{load_classifier_dir, LoadedClassifier, SequenceClassifier};
pub use config::{Arch, ModelConfig};
pub use kv_cache::KvCache;
pub use transformer::{build_attention_mask, AttentionBackend, CausalLm, Linear, Weight};
pub use weights::{MapSource, SafetensorsSource, TensorSource};
// Device parsing lives in the nn layer; re-exported where model loaders look for it.
pub use medrl_nn::device::{parse_device, parse_dtype};

use crate::tokenizer::{GenerationDefaults, TextTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: missing file ({hint})")]
    MissingFile { path: PathBuf, hint: String },
    #[error("{path}: invalid config{}: {msg}", if key.is_empty() { String::new() } else { format!(" key `{key}`") })]
    Config { path: PathBuf, key: String, msg: String },
    #[error("{path}: tensor `{tensor}` not found")]
    MissingTensor { tensor: String, path: PathBuf },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Weights { path: PathBuf, tensor: String, msg: String },
    /// A weights file as a whole (its header, its size, a write), not one tensor of it.
    #[error("{path}: {msg}")]
    WeightsFile { path: PathBuf, msg: String },
    #[error("{path}: tensor `{tensor}` holds NaN or infinite values; refusing to use this model (was it saved by a diverged run?)")]
    NonFinite { path: PathBuf, tensor: String },
    #[error("{context}: {source}")]
    Candle { context: String, source: candle_core::Error },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl ModelError {
    pub fn from_candle(context: &'static str) -> impl Fn(candle_core::Error) -> ModelError {
        move |source| ModelError::Candle { context: context.into(), source }
    }
}

/// A loaded model folder: weights, tokenizer and generation defaults.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub generation: GenerationDefaults,
}

/// The `config.json` of a model folder, with errors that say which of the two is missing.
pub fn read_model_config(dir: &Path) -> Result<ModelConfig, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::MissingFile { path: dir.into(), hint: "model folder not found".into() });
    }
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(ModelError::MissingFile { path: cfg_path, hint: "every model folder needs config.json".into() });
    }
    ModelConfig::from_file(&cfg_path)
}

/// Load a Hugging Face model folder.
pub fn load_model_dir(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel, ModelError> {
    load_model_dir_as(dir, device, dtype, false)
}

/// [`load_model_dir`], with the decoder projections quantized to NF4 as they are read when
/// `nf4` is set (QLoRA; [`CausalLm::from_source_nf4`]).
pub fn load_model_dir_as(dir: &Path, device: &Device, dtype: DType, nf4: bool) -> Result<LoadedModel, ModelError> {
    let cfg = read_model_config(dir)?;
    let tokenizer = TextTokenizer::from_dir(dir)?;
    let generation = GenerationDefaults::from_dir(dir, &cfg.eos_token_ids, cfg.bos_token_id, &tokenizer)?;
    let mut src = SafetensorsSource::open_dir(dir)?;
    let model = if nf4 { CausalLm::from_source_nf4(cfg, &mut src, dtype, device)? } else { CausalLm::from_source(cfg, &mut src, dtype, device)? };
    if tokenizer.vocab_size() > model.cfg.vocab_size {
        return Err(ModelError::Config {
            path: dir.join("tokenizer.json"),
            key: "vocab".into(),
            msg: format!(
                "tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                model.cfg.vocab_size
            ),
        });
    }
    Ok(LoadedModel { dir: dir.into(), model, tokenizer, generation })
}

/// Refuse a model with a NaN or infinite weight (naming the tensor): it would generate nothing
/// useful, and silently (an empty output with exit status 0). `dir` is where it was loaded from.
pub fn check_finite(model: &CausalLm, dir: &Path) -> Result<(), ModelError> {
    let named = model.named_tensors();
    let bad = weights::first_nonfinite(named.iter().map(|(n, t)| (n.as_str(), t))).map_err(ModelError::from_candle("checking weights"))?;
    match bad {
        Some(tensor) => Err(ModelError::NonFinite { path: dir.into(), tensor }),
        None => Ok(()),
    }
}

/// Save the model weights and `config.json` into `dir` (tokenizer files are the caller's), in
/// shards of Hugging Face's default 5 GB above that size ([`weights::save_model_safetensors`]).
pub fn save_weights(model: &CausalLm, dir: &Path) -> Result<(), ModelError> {
    save_weights_sharded(model, dir, weights::DEFAULT_SHARD_BYTES)
}

/// [`save_weights`] with shards of at most `max_shard_bytes`.
pub fn save_weights_sharded(model: &CausalLm, dir: &Path, max_shard_bytes: usize) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io { path: dir.into(), source: e })?;
    weights::save_model_safetensors(&model.named_tensors(), dir, max_shard_bytes)?;
    write_hf_config(&model.cfg, model.dtype(), dir)
}

/// `dir/config.json`: the architecture in Hugging Face's keys, with `torch_dtype` for `dtype`.
pub fn write_hf_config(cfg: &ModelConfig, dtype: DType, dir: &Path) -> Result<(), ModelError> {
    let mut json = cfg.to_hf_json();
    json["torch_dtype"] = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
    .into();
    let path = dir.join("config.json");
    medrl_base::fsutil::write_json_atomic(&path, &json).map_err(|e| ModelError::Io { path, source: e })
}
