//! Decoder models: configuration, weights, the transformer itself, KV cache, model folders, and
//! sequence classifiers (a decoder body with a score head, [`classifier`]).
//!
//! A *model folder* is a Hugging Face folder: `config.json`, `model.safetensors` (or a sharded
//! index), `tokenizer.json`, `tokenizer_config.json`, optionally `generation_config.json`.
//! Everything medrl writes (tiny random models, GGUF imports, SFT exports) is such a folder, so
//! `transformers` and medrl read each other's output.

pub mod classifier;
pub mod config;
pub mod init;
pub mod kv_cache;
pub mod lora;
pub mod peft;
pub mod transformer;
pub mod weights;

use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

pub use classifier::{load_classifier_dir, LoadedClassifier, SequenceClassifier};
pub use config::{Arch, ModelConfig};
pub use kv_cache::KvCache;
pub use transformer::{build_attention_mask, CausalLm, Linear};
pub use weights::{MapSource, SafetensorsSource, TensorSource};

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
    pub(crate) fn from_candle(context: &'static str) -> impl Fn(candle_core::Error) -> ModelError {
        move |source| ModelError::Candle { context: context.into(), source }
    }
}

/// Compute device selection from a user string: `cpu`, `cuda`, `cuda:N`, or `auto`.
/// Keep memory freed into the device's default pool instead of returning it to the driver at
/// every synchronization (the default release threshold is 0). cudarc allocates with
/// `cuMemAllocAsync` from that pool; a training step frees and re-allocates tens of GB, and with
/// threshold 0 each step after a sync (reading the loss) maps all of it afresh. PyTorch's caching
/// allocator keeps freed blocks the same way. `MEDRL_POOL_RELEASE=1` restores the driver default.
#[cfg(feature = "cuda")]
fn keep_freed_memory_pooled(d: &candle_core::CudaDevice) {
    use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute;
    if std::env::var("MEDRL_POOL_RELEASE").is_ok_and(|v| v == "1") {
        return;
    }
    if let Err(r) = mem_pool_attribute(d, CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, Some(u64::MAX)) {
        tracing::warn!("could not raise the CUDA memory pool's release threshold ({r:?}); allocations may be slower");
    }
}

/// Read (`set: None`) or write a u64 attribute of the device's default memory pool, the one
/// cudarc's `cuMemAllocAsync` allocates from. Returns the value read (or written).
#[cfg(feature = "cuda")]
pub(crate) fn mem_pool_attribute(
    d: &candle_core::CudaDevice,
    attr: candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute,
    set: Option<u64>,
) -> Result<u64, candle_core::cuda_backend::cudarc::driver::sys::CUresult> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let dev = d.cuda_stream().context().cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut value = set.unwrap_or(0);
    let ptr = &mut value as *mut u64 as *mut std::ffi::c_void;
    // SAFETY: driver calls on a valid device handle, with out-pointers to locals that outlive
    // them; every pool attribute used here is a u64 (cuuint64_t).
    let r = unsafe {
        match sys::cuDeviceGetDefaultMemPool(&mut pool, dev) {
            sys::CUresult::CUDA_SUCCESS if set.is_some() => sys::cuMemPoolSetAttribute(pool, attr, ptr),
            sys::CUresult::CUDA_SUCCESS => sys::cuMemPoolGetAttribute(pool, attr, ptr),
            err => err,
        }
    };
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(value)
    } else {
        Err(r)
    }
}

pub fn parse_device(spec: &str) -> Result<Device, String> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").map(|n| n.parse::<usize>()).transpose().map_err(|_| {
                format!("invalid device {s:?}: expected cuda:N")
            })?;
            let dev = Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| {
                if cfg!(feature = "cuda") {
                    format!("cannot open {s}: {e}")
                } else {
                    format!("cannot open {s}: this medrl was built without the `cuda` feature (see docs/cuda.md)")
                }
            })?;
            #[cfg(feature = "cuda")]
            if let Device::Cuda(d) = &dev {
                // SAFETY: medrl issues all work of a device on that device's one stream, so the
                // per-tensor CUDA events cudarc records to order work across streams are never
                // needed; they cost two event creations per allocation and event waits/records
                // on every kernel launch, which dominated small-kernel training steps.
                unsafe { d.disable_event_tracking() };
                keep_freed_memory_pooled(d);
            }
            Ok(dev)
        }
        other => Err(format!("invalid device {other:?}: expected cpu, cuda, cuda:N or auto")),
    }
}

/// Parse a dtype name; `auto` is bf16 on CUDA and f32 on CPU.
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType, String> {
    match spec {
        "auto" => Ok(if device.is_cuda() { DType::BF16 } else { DType::F32 }),
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(format!("invalid dtype {other:?}: expected f32, bf16, f16 or auto")),
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
    let cfg = read_model_config(dir)?;
    let tokenizer = TextTokenizer::from_dir(dir)?;
    let generation = GenerationDefaults::from_dir(dir, &cfg, &tokenizer)?;
    let mut src = SafetensorsSource::open_dir(dir)?;
    let model = CausalLm::from_source(cfg, &mut src, dtype, device)?;
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

/// Save the model weights and `config.json` into `dir` (tokenizer files are the caller's).
pub fn save_weights(model: &CausalLm, dir: &Path) -> Result<(), ModelError> {
    let tensors: std::collections::HashMap<_, _> = model.named_tensors().into_iter().collect();
    weights::save_safetensors_atomic(&tensors, &dir.join("model.safetensors"))?;
    let mut cfg = model.cfg.to_hf_json();
    cfg["torch_dtype"] = match model.dtype() {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
    .into();
    let path = dir.join("config.json");
    crate::fsutil::write_json_atomic(&path, &cfg).map_err(|e| ModelError::Io { path, source: e })
}
