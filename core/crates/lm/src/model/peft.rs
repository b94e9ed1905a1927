//! Exchange formats for fine-tuned models: a merged Hugging Face folder, and a LoRA adapter in
//! PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`, tensor names prefixed
//! `base_model.model.`), which `peft.PeftModel.from_pretrained` loads and medrl loads back.

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::lora::LoraAdapter;
use super::{save_weights, CausalLm, ModelError};

/// Tokenizer and generation files copied from the base model folder into exports.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "added_tokens.json",
];

const PEFT_PREFIX: &str = "base_model.model.";

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.into(), source }
}

/// Write `model` as a Hugging Face folder: config.json, model.safetensors, and the tokenizer
/// files (with the chat template) of `tokenizer_from`.
pub fn save_model_dir(model: &CausalLm, tokenizer_from: &Path, out: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    save_weights(model, out)?;
    copy_tokenizer_files(tokenizer_from, out)
}

pub fn copy_tokenizer_files(from: &Path, out: &Path) -> Result<(), ModelError> {
    for f in TOKENIZER_FILES {
        let src = from.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(io(&src))?;
            let dest = out.join(f);
            medrl_base::fsutil::write_atomic(&dest, &bytes).map_err(io(&dest))?;
        }
    }
    Ok(())
}

/// What `adapter_config.json` records.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterMeta {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
    pub modules_to_save: Vec<String>,
    pub base_model: String,
}

/// Save a LoRA adapter in PEFT's format. `tensors` uses medrl's internal names
/// (`model.layers.0.self_attn.q_proj.lora_A.weight`, and `model.embed_tokens.weight` /
/// `lm_head.weight` for modules_to_save).
pub fn save_peft_adapter(tensors: &HashMap<String, Tensor>, meta: &AdapterMeta, dtype: DType, out: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let renamed: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((format!("{PEFT_PREFIX}{k}"), v.to_dtype(dtype)?)))
        .collect::<candle_core::Result<_>>()
        .map_err(ModelError::from_candle("adapter dtype"))?;
    super::weights::save_safetensors_atomic(&renamed, &out.join("adapter_model.safetensors"))?;
    let cfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": meta.base_model,
        "r": meta.rank,
        "lora_alpha": meta.alpha,
        "lora_dropout": meta.dropout,
        "target_modules": meta.target_modules,
        "modules_to_save": if meta.modules_to_save.is_empty() { Value::Null } else { json!(meta.modules_to_save) },
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null
    });
    let path = out.join("adapter_config.json");
    medrl_base::fsutil::write_json_atomic(&path, &cfg).map_err(io(&path))
}

fn config_err(path: &Path, key: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Config { path: path.into(), key: key.into(), msg: msg.into() }
}

/// Read a PEFT LoRA adapter folder and attach it to `model` (unmerged, so outputs are computed
/// as `base + adapter`, exactly as PEFT does).
pub fn load_peft_adapter(model: &mut CausalLm, dir: &Path) -> Result<AdapterMeta, ModelError> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| config_err(&cfg_path, "", e.to_string()))?;
    if cfg.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(config_err(&cfg_path, "peft_type", "only LORA adapters are supported"));
    }
    for (key, ok) in [("use_dora", false), ("use_rslora", false), ("fan_in_fan_out", false)] {
        if cfg.get(key).and_then(Value::as_bool).unwrap_or(false) != ok {
            return Err(config_err(&cfg_path, key, "not supported"));
        }
    }
    let rank = cfg.get("r").and_then(Value::as_u64).ok_or_else(|| config_err(&cfg_path, "r", "missing"))? as usize;
    let alpha = cfg.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| config_err(&cfg_path, "lora_alpha", "missing"))?;
    if cfg.get("rank_pattern").and_then(Value::as_object).is_some_and(|m| !m.is_empty())
        || cfg.get("alpha_pattern").and_then(Value::as_object).is_some_and(|m| !m.is_empty())
    {
        return Err(config_err(&cfg_path, "rank_pattern", "per-module ranks are not supported"));
    }
    let strings = |k: &str| -> Vec<String> {
        match cfg.get(k) {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => vec![],
        }
    };
    let meta = AdapterMeta {
        rank,
        alpha,
        dropout: cfg.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        target_modules: strings("target_modules"),
        modules_to_save: strings("modules_to_save"),
        base_model: cfg.get("base_model_name_or_path").and_then(Value::as_str).unwrap_or("").into(),
    };
    let wpath = dir.join("adapter_model.safetensors");
    if !wpath.exists() {
        return Err(ModelError::MissingFile { path: wpath, hint: "PEFT adapters need adapter_model.safetensors".into() });
    }
    let device = model.device().clone();
    let dtype = model.dtype();
    let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
        .map_err(|e| ModelError::WeightsFile { path: wpath.clone(), msg: format!("cannot read safetensors: {e}") })?;
    if let Some(tensor) = super::weights::first_nonfinite(tensors.iter().map(|(n, t)| (n.as_str(), t))).map_err(ModelError::from_candle("adapter"))? {
        return Err(ModelError::NonFinite { path: wpath, tensor });
    }
    let mut by_name: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in tensors {
        let name = k.strip_prefix(PEFT_PREFIX).unwrap_or(&k).replace(".default.weight", ".weight");
        by_name.insert(name, v);
    }
    let scale = alpha / rank as f64;
    let mut attached = 0;
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for (group, module, lin) in [
            ("self_attn", "q_proj", &mut layer.self_attn.q_proj),
            ("self_attn", "k_proj", &mut layer.self_attn.k_proj),
            ("self_attn", "v_proj", &mut layer.self_attn.v_proj),
            ("self_attn", "o_proj", &mut layer.self_attn.o_proj),
            ("mlp", "gate_proj", &mut layer.mlp.gate_proj),
            ("mlp", "up_proj", &mut layer.mlp.up_proj),
            ("mlp", "down_proj", &mut layer.mlp.down_proj),
        ] {
            let base = format!("model.layers.{i}.{group}.{module}");
            let (Some(a), Some(b)) = (by_name.remove(&format!("{base}.lora_A.weight")), by_name.remove(&format!("{base}.lora_B.weight"))) else {
                continue;
            };
            let (out_dim, in_dim) = lin.weight.dims2().map_err(ModelError::from_candle("adapter"))?;
            if a.dims() != [rank, in_dim] || b.dims() != [out_dim, rank] {
                return Err(ModelError::ShapeMismatch { path: wpath.clone(), tensor: format!("{base}.lora_A/B"), expected: vec![rank, in_dim, out_dim], found: [a.dims(), b.dims()].concat() });
            }
            let to = |t: Tensor| t.to_dtype(DType::F32).and_then(|t| t.to_device(&device));
            lin.lora = Some(LoraAdapter {
                a: to(a).map_err(ModelError::from_candle("adapter"))?,
                b: to(b).map_err(ModelError::from_candle("adapter"))?,
                scale,
                dropout_mask: None,
            });
            attached += 1;
        }
    }
    let to_model = |t: Tensor| t.to_dtype(dtype).and_then(|t| t.to_device(&device));
    if let Some(t) = by_name.remove("model.embed_tokens.weight") {
        model.embed_tokens = to_model(t).map_err(ModelError::from_candle("adapter"))?;
    }
    if let Some(t) = by_name.remove("lm_head.weight") {
        model.lm_head = Some(to_model(t).map_err(ModelError::from_candle("adapter"))?);
        model.cfg.tie_word_embeddings = false;
    }
    if attached == 0 {
        return Err(ModelError::WeightsFile { path: wpath, msg: "no LoRA tensor matches this model's layers".into() });
    }
    if let Some(k) = by_name.keys().next() {
        return Err(ModelError::Weights { path: wpath, tensor: k.clone(), msg: "adapter tensor does not match any module of this model".into() });
    }
    Ok(meta)
}

/// Where the PEFT adapter and the merged model of a finished run live.
pub fn run_outputs(output_dir: &Path) -> (PathBuf, PathBuf) {
    (output_dir.join("final"), output_dir.join("adapter"))
}
