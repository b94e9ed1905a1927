//! Typed access to GGUF metadata and the HF `config.json` derived from it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;

use super::GgufImportError;

pub(crate) type Metadata = HashMap<String, Value>;

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("array[{}]", a.len()),
        Value::String(s) => format!("string {s:?}"),
        other => format!("{other:?}"),
    }
}

fn bad(path: &Path, key: &str, expected: &str, v: &Value) -> GgufImportError {
    GgufImportError::BadMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected: expected.to_string(),
        found: type_name(v),
    }
}

fn missing(path: &Path, key: &str) -> GgufImportError {
    GgufImportError::MissingMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
    }
}

/// Any non-negative integer value as u64 (writers disagree on u32 vs i32 vs u64).
pub(crate) fn value_as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

pub(crate) fn get_string<'a>(
    md: &'a Metadata,
    key: &str,
    path: &Path,
) -> Result<&'a str, GgufImportError> {
    match md.get(key) {
        None => Err(missing(path, key)),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(bad(path, key, "string", v)),
    }
}

pub(crate) fn opt_string<'a>(
    md: &'a Metadata,
    key: &str,
    path: &Path,
) -> Result<Option<&'a str>, GgufImportError> {
    match md.get(key) {
        None => Ok(None),
        Some(_) => get_string(md, key, path).map(Some),
    }
}

pub(crate) fn opt_u64(
    md: &Metadata,
    key: &str,
    path: &Path,
) -> Result<Option<u64>, GgufImportError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => value_as_u64(v)
            .map(Some)
            .ok_or_else(|| bad(path, key, "non-negative integer", v)),
    }
}

pub(crate) fn get_u64(md: &Metadata, key: &str, path: &Path) -> Result<u64, GgufImportError> {
    opt_u64(md, key, path)?.ok_or_else(|| missing(path, key))
}

/// Read a count/size and require it to be >= 1 (zero would make shapes degenerate).
fn get_positive(md: &Metadata, key: &str, path: &Path) -> Result<usize, GgufImportError> {
    let v = get_u64(md, key, path)?;
    // The cap keeps products of sizes (e.g. heads * head_dim) far from overflow.
    if v == 0 || v > (1 << 26) {
        return Err(bad(path, key, "positive integer", &Value::U64(v)));
    }
    Ok(v as usize)
}

pub(crate) fn opt_f64(
    md: &Metadata,
    key: &str,
    path: &Path,
) -> Result<Option<f64>, GgufImportError> {
    match md.get(key) {
        None => Ok(None),
        // GGUF floats are usually f32; print-then-parse gives 1e-5 rather than
        // 9.999999747378752e-6 in config.json.
        Some(Value::F32(x)) => Ok(Some(format!("{x}").parse().unwrap_or(*x as f64))),
        Some(Value::F64(x)) => Ok(Some(*x)),
        Some(v) => Err(bad(path, key, "float", v)),
    }
}

pub(crate) fn opt_bool(
    md: &Metadata,
    key: &str,
    path: &Path,
) -> Result<Option<bool>, GgufImportError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(path, key, "bool", v)),
    }
}

pub(crate) fn get_array<'a>(
    md: &'a Metadata,
    key: &str,
    path: &Path,
) -> Result<&'a [Value], GgufImportError> {
    match md.get(key) {
        None => Err(missing(path, key)),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(bad(path, key, "array", v)),
    }
}

pub(crate) fn string_array<'a>(
    md: &'a Metadata,
    key: &str,
    path: &Path,
) -> Result<Vec<&'a str>, GgufImportError> {
    get_array(md, key, path)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            v => Err(bad(path, &format!("{key}[{i}]"), "string", v)),
        })
        .collect()
}

/// Llama hyper-parameters from the `llama.*` metadata keys plus the token ids
/// needed for `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHParams {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Linear RoPE scaling factor (`llama.rope.scaling.type == "linear"`), if any.
    pub rope_linear_scaling: Option<f64>,
    pub max_position_embeddings: usize,
    /// Rows of `token_embd.weight` (may exceed the tokenizer's token count).
    pub vocab_size: usize,
    /// True when the file has no separate `output.weight`.
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl LlamaHParams {
    pub(crate) fn from_metadata(content: &Content, path: &Path) -> Result<Self, GgufImportError> {
        let md = &content.metadata;
        let hidden_size = get_positive(md, "llama.embedding_length", path)?;
        let intermediate_size = get_positive(md, "llama.feed_forward_length", path)?;
        let num_hidden_layers = get_positive(md, "llama.block_count", path)?;
        // Each block has 9 tensors; reject absurd counts before allocating per-layer plans.
        if num_hidden_layers > content.tensor_infos.len() / 9 {
            return Err(bad(
                path,
                "llama.block_count",
                &format!(
                    "at most {} (9 tensors per block in a file of {} tensors)",
                    content.tensor_infos.len() / 9,
                    content.tensor_infos.len()
                ),
                &Value::U64(num_hidden_layers as u64),
            ));
        }
        let num_attention_heads = get_positive(md, "llama.attention.head_count", path)?;
        let num_key_value_heads = match md.get("llama.attention.head_count_kv") {
            None => num_attention_heads,
            Some(_) => get_positive(md, "llama.attention.head_count_kv", path)?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(bad(
                path,
                "llama.attention.head_count_kv",
                &format!("a divisor of head_count {num_attention_heads}"),
                &Value::U64(num_key_value_heads as u64),
            ));
        }
        let head_dim = match md.get("llama.attention.key_length") {
            Some(_) => get_positive(md, "llama.attention.key_length", path)?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(bad(
                        path,
                        "llama.attention.head_count",
                        &format!("a divisor of embedding_length {hidden_size}"),
                        &Value::U64(num_attention_heads as u64),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad(
                path,
                "llama.attention.key_length",
                "even head size",
                &Value::U64(head_dim as u64),
            ));
        }
        if let Some(vl) = opt_u64(md, "llama.attention.value_length", path)? {
            if vl as usize != head_dim {
                return Err(GgufImportError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("value_length {vl} != key_length {head_dim}"),
                });
            }
        }
        // HF Llama rotates the full head; partial rotary would silently change the model.
        if let Some(rd) = opt_u64(md, "llama.rope.dimension_count", path)? {
            if rd as usize != head_dim {
                return Err(GgufImportError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!(
                        "llama.rope.dimension_count {rd} != head dim {head_dim} (partial rotary)"
                    ),
                });
            }
        }
        let rms_norm_eps = opt_f64(md, "llama.attention.layer_norm_rms_epsilon", path)?
            .ok_or_else(|| missing(path, "llama.attention.layer_norm_rms_epsilon"))?;
        let rope_theta = opt_f64(md, "llama.rope.freq_base", path)?.unwrap_or(10000.0);
        let rope_linear_scaling = match opt_string(md, "llama.rope.scaling.type", path)? {
            None | Some("none") => None,
            Some("linear") => {
                let f = opt_f64(md, "llama.rope.scaling.factor", path)?
                    .ok_or_else(|| missing(path, "llama.rope.scaling.factor"))?;
                (f != 1.0).then_some(f)
            }
            Some(other) => {
                return Err(GgufImportError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("llama.rope.scaling.type {other:?}"),
                })
            }
        };
        if content.tensor_infos.contains_key("rope_freqs.weight") {
            // Llama 3.1-style scaling: the HF parameters are not recoverable from metadata.
            return Err(GgufImportError::Unsupported {
                path: path.to_path_buf(),
                what: "rope_freqs.weight (llama3 rope scaling)".into(),
            });
        }
        let max_position_embeddings = get_positive(md, "llama.context_length", path)?;
        let vocab_size = match content.tensor_infos.get("token_embd.weight") {
            Some(ti) if ti.shape.dims().len() == 2 => ti.shape.dims()[0],
            Some(ti) => {
                return Err(GgufImportError::TensorShape {
                    path: path.to_path_buf(),
                    tensor: "token_embd.weight".into(),
                    expected: vec![0, hidden_size],
                    actual: ti.shape.dims().to_vec(),
                })
            }
            None => {
                return Err(GgufImportError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: "token_embd.weight".into(),
                })
            }
        };
        if let Some(v) = opt_u64(md, "llama.vocab_size", path)? {
            if v as usize != vocab_size {
                return Err(bad(
                    path,
                    "llama.vocab_size",
                    &format!("{vocab_size} (rows of token_embd.weight)"),
                    &Value::U64(v),
                ));
            }
        }
        let tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
        let tok_id = |key: &str| -> Result<Option<u32>, GgufImportError> {
            match opt_u64(md, key, path)? {
                None => Ok(None),
                Some(v) if (v as usize) < vocab_size => Ok(Some(v as u32)),
                Some(v) => Err(bad(
                    path,
                    key,
                    &format!("token id < {vocab_size}"),
                    &Value::U64(v),
                )),
            }
        };
        Ok(Self {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_linear_scaling,
            max_position_embeddings,
            vocab_size,
            tie_word_embeddings,
            bos_token_id: tok_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: tok_id("tokenizer.ggml.eos_token_id")?,
            pad_token_id: tok_id("tokenizer.ggml.padding_token_id")?,
        })
    }
}

/// HF `LlamaConfig` as JSON.
pub(crate) fn hf_config_json(hp: &LlamaHParams) -> serde_json::Value {
    let rope_scaling = match hp.rope_linear_scaling {
        Some(f) => json!({"type": "linear", "rope_type": "linear", "factor": f}),
        None => serde_json::Value::Null,
    };
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hp.hidden_size,
        "intermediate_size": hp.intermediate_size,
        "num_hidden_layers": hp.num_hidden_layers,
        "num_attention_heads": hp.num_attention_heads,
        "num_key_value_heads": hp.num_key_value_heads,
        "head_dim": hp.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": hp.rms_norm_eps,
        "rope_theta": hp.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": hp.max_position_embeddings,
        "vocab_size": hp.vocab_size,
        "tie_word_embeddings": hp.tie_word_embeddings,
        "bos_token_id": hp.bos_token_id,
        "eos_token_id": hp.eos_token_id,
        "pad_token_id": hp.pad_token_id,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "torch_dtype": "float32",
    })
}

pub(crate) fn generation_config_json(hp: &LlamaHParams) -> serde_json::Value {
    let mut v = json!({ "_from_model_config": true });
    if let Some(b) = hp.bos_token_id {
        v["bos_token_id"] = json!(b);
    }
    if let Some(e) = hp.eos_token_id {
        v["eos_token_id"] = json!(e);
    }
    if let Some(p) = hp.pad_token_id {
        v["pad_token_id"] = json!(p);
    }
    v
}
