//! The Hugging Face `config.json` of a decoder model, reduced to what the engine needs.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::ModelError;

/// Decoder families medrl implements. They share one implementation ([`super::CausalLm`]);
/// the differences are data: attention biases (Qwen2), per-head q/k RMSNorm (Qwen3), tying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn from_model_type(s: &str) -> Option<Self> {
        match s {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// RoPE frequency scaling variants found in released checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RopeScaling {
    /// Llama 3.1+: low frequencies are divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
}

/// The subset of the HF configuration that determines the computation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (always on for Qwen2, optional for Llama/Qwen3).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The full original JSON, kept so that an export writes back every key it was given.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// Largest accepted size of any one dimension (layers, heads, widths, vocabulary): 2^24, far
/// above released models (vocabularies of ~256k, widths of ~30k, ~128 layers).
const MAX_DIM: usize = 1 << 24;

fn get<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    v.get(key).filter(|x| !x.is_null())
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.into(), source: e })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.into(),
            key: String::new(),
            msg: format!("not valid JSON: {e}"),
        })?;
        Self::from_json(v, path)
    }

    /// Parse an HF config object. `path` is only used in error messages.
    pub fn from_json(v: serde_json::Value, path: &Path) -> Result<Self, ModelError> {
        let err = |key: &str, msg: String| ModelError::Config { path: path.into(), key: key.into(), msg };
        let usize_key = |key: &str| -> Result<usize, ModelError> {
            get(&v, key)
                .ok_or_else(|| err(key, "missing".into()))?
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| err(key, "expected a non-negative integer".into()))
        };
        let f64_key = |key: &str, default: f64| -> Result<f64, ModelError> {
            match get(&v, key) {
                None => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| err(key, "expected a number".into())),
            }
        };
        let bool_key = |key: &str, default: bool| -> Result<bool, ModelError> {
            match get(&v, key) {
                None => Ok(default),
                Some(x) => x.as_bool().ok_or_else(|| err(key, "expected true or false".into())),
            }
        };
        let model_type = get(&v, "model_type")
            .and_then(|x| x.as_str())
            .ok_or_else(|| err("model_type", "missing".into()))?;
        let arch = Arch::from_model_type(model_type).ok_or_else(|| {
            err(
                "model_type",
                format!("unsupported architecture {model_type:?}; medrl supports llama, qwen2, qwen3"),
            )
        })?;
        let hidden_size = usize_key("hidden_size")?;
        let num_attention_heads = usize_key("num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size == 0 {
            return Err(err("num_attention_heads", "hidden_size and num_attention_heads must be positive".into()));
        }
        let num_key_value_heads = match get(&v, "num_key_value_heads") {
            None => num_attention_heads,
            Some(_) => usize_key("num_key_value_heads")?,
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads={num_attention_heads}"),
            ));
        }
        let head_dim = match get(&v, "head_dim") {
            Some(_) => usize_key("head_dim")?,
            None => hidden_size / num_attention_heads,
        };
        if head_dim % 2 != 0 {
            return Err(err("head_dim", format!("{head_dim} must be even for rotary embeddings")));
        }
        // transformers 5 writes `rope_parameters` ({rope_theta, rope_type, scaling keys}) where
        // earlier versions wrote `rope_theta` and `rope_scaling`.
        let rope_parameters = get(&v, "rope_parameters").filter(|p| p.is_object());
        let rope_theta = match (get(&v, "rope_theta"), rope_parameters.and_then(|p| get(p, "rope_theta"))) {
            (None, Some(t)) => t.as_f64().ok_or_else(|| err("rope_parameters.rope_theta", "expected a number".into()))?,
            _ => f64_key("rope_theta", 10_000.0)?,
        };
        let rope_scaling = match get(&v, "rope_scaling").or(rope_parameters) {
            None => None,
            Some(rs) => {
                let kind = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(|x| x.as_str())
                    .unwrap_or("default");
                let num = |k: &str| -> Result<f64, ModelError> {
                    rs.get(k)
                        .and_then(|x| x.as_f64())
                        .ok_or_else(|| err(&format!("rope_scaling.{k}"), "missing or not a number".into()))
                };
                match kind {
                    "default" => None,
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
                    }),
                    "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
                    other => {
                        return Err(err(
                            "rope_scaling.rope_type",
                            format!("unsupported rope scaling {other:?}; supported: default, linear, llama3"),
                        ))
                    }
                }
            }
        };
        if model_type == "qwen2" && bool_key("use_sliding_window", false)? {
            tracing::warn!("{}: use_sliding_window=true is ignored; attention is full", path.display());
        }
        let hidden_act = get(&v, "hidden_act").and_then(|x| x.as_str()).unwrap_or("silu");
        if hidden_act != "silu" {
            return Err(err("hidden_act", format!("unsupported activation {hidden_act:?}; only silu")));
        }
        let ids = |key: &str| -> Vec<u32> {
            match get(&v, key) {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
                _ => vec![],
            }
        };
        let vocab_size = usize_key("vocab_size")?;
        let intermediate_size = usize_key("intermediate_size")?;
        let num_hidden_layers = usize_key("num_hidden_layers")?;
        // A zero dimension builds a model that computes nothing (or divides by zero later);
        // a huge one is a typo that would only fail as an allocation far from its cause.
        for (key, value) in [
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("intermediate_size", intermediate_size),
            ("num_hidden_layers", num_hidden_layers),
            ("head_dim", head_dim),
        ] {
            if value == 0 {
                return Err(err(key, "must be at least 1".into()));
            }
            if value > MAX_DIM {
                return Err(err(key, format!("{value} is beyond any real model (at most {MAX_DIM})")));
            }
        }
        if num_attention_heads > MAX_DIM {
            return Err(err("num_attention_heads", format!("{num_attention_heads} is beyond any real model (at most {MAX_DIM})")));
        }
        let rms_norm_eps = f64_key("rms_norm_eps", 1e-6)?;
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(err("rms_norm_eps", format!("{rms_norm_eps} must be a positive number")));
        }
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            return Err(err("rope_theta", format!("{rope_theta} must be a positive number")));
        }
        Ok(ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: match get(&v, "max_position_embeddings") {
                Some(_) => Some(usize_key("max_position_embeddings")?).filter(|&n| n > 0).ok_or_else(|| err("max_position_embeddings", "must be at least 1".into()))?,
                None => 2048,
            },
            tie_word_embeddings: bool_key("tie_word_embeddings", false)?,
            attention_bias: arch == Arch::Qwen2 || bool_key("attention_bias", false)?,
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_ids: ids("eos_token_id"),
            raw: v,
        })
    }

    /// An HF-compatible `config.json` object for this configuration, preserving unknown keys
    /// of the original file.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = match &self.raw {
            serde_json::Value::Object(_) => self.raw.clone(),
            _ => serde_json::json!({}),
        };
        let o = v.as_object_mut().expect("object");
        let mut set = |k: &str, x: serde_json::Value| {
            o.insert(k.to_string(), x);
        };
        set("architectures", serde_json::json!([self.arch.hf_class()]));
        set("model_type", self.arch.model_type().into());
        set("vocab_size", self.vocab_size.into());
        set("hidden_size", self.hidden_size.into());
        set("intermediate_size", self.intermediate_size.into());
        set("num_hidden_layers", self.num_hidden_layers.into());
        set("num_attention_heads", self.num_attention_heads.into());
        set("num_key_value_heads", self.num_key_value_heads.into());
        set("head_dim", self.head_dim.into());
        set("rms_norm_eps", self.rms_norm_eps.into());
        set("rope_theta", self.rope_theta.into());
        set("max_position_embeddings", self.max_position_embeddings.into());
        set("tie_word_embeddings", self.tie_word_embeddings.into());
        set("hidden_act", "silu".into());
        if self.arch != Arch::Qwen2 {
            set("attention_bias", self.attention_bias.into());
        }
        if let Some(b) = self.bos_token_id {
            set("bos_token_id", b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => set("eos_token_id", (*one).into()),
            many => set("eos_token_id", serde_json::json!(many)),
        }
        v
    }

    /// Every tensor a causal LM of this configuration loads, with its shape, in the order
    /// [`super::CausalLm::named_tensors`] lists them (checked by a test). `model info` checks a
    /// folder's safetensors headers against it without reading the weights.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, o: usize, inp: usize, bias: bool| {
                out.push((format!("{p}.{name}.weight"), vec![o, inp]));
                if bias {
                    out.push((format!("{p}.{name}.bias"), vec![o]));
                }
            };
            let ab = self.attention_bias;
            lin("self_attn.q_proj", q, h, ab);
            lin("self_attn.k_proj", kv, h, ab);
            lin("self_attn.v_proj", kv, h, ab);
            lin("self_attn.o_proj", h, q, false);
            lin("mlp.gate_proj", self.intermediate_size, h, false);
            lin("mlp.up_proj", self.intermediate_size, h, false);
            lin("mlp.down_proj", h, self.intermediate_size, false);
            if self.arch == Arch::Qwen3 {
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![self.head_dim]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![self.head_dim]));
            }
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out.push(("model.norm.weight".into(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        out
    }

    /// Every tensor of the architecture, Hugging Face names and shapes, in checkpoint order
    /// (embeddings, each layer's attention, norms and MLP, final norm, an untied head).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut shapes = Vec::new();
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        shapes.push(("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h]));
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (n, o, inp) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)] {
                shapes.push((format!("{p}.self_attn.{n}.weight"), vec![o, inp]));
                if self.attention_bias && n != "o_proj" {
                    shapes.push((format!("{p}.self_attn.{n}.bias"), vec![o]));
                }
            }
            if self.arch == Arch::Qwen3 {
                shapes.push((format!("{p}.self_attn.q_norm.weight"), vec![self.head_dim]));
                shapes.push((format!("{p}.self_attn.k_norm.weight"), vec![self.head_dim]));
            }
            shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![self.intermediate_size, h]));
            shapes.push((format!("{p}.mlp.up_proj.weight"), vec![self.intermediate_size, h]));
            shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, self.intermediate_size]));
            shapes.push((format!("{p}.input_layernorm.weight"), vec![h]));
            shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        shapes.push(("model.norm.weight".into(), vec![h]));
        if !self.tie_word_embeddings {
            shapes.push(("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        shapes
    }

    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv;
        }
        if self.arch == Arch::Qwen3 {
            attn += 2 * self.head_dim;
        }
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + h + self.num_hidden_layers * layer
    }

    /// Weights that multiply activations in a forward pass: the decoder's projections and the
    /// LM head (tied or not); not the embedding lookup, norms or biases.
    pub fn matmul_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size;
        self.num_hidden_layers * layer + self.vocab_size * h
    }

    /// Model FLOPs of one training token at sequence length `seq` (the MFU numerator, as PaLM
    /// counts them, appendix B): `6 N` for the weights when they all train (forward, input and
    /// weight gradients), `4 N + 6 N_trainable` when only `trainable` parameters (LoRA
    /// adapters) get weight gradients, plus `12 L H D seq` for attention scores and values
    /// (causal masking not discounted). Recomputation (activation checkpointing) is not model
    /// work and is not counted.
    pub fn train_flops_per_token(&self, seq: usize, trainable: Option<usize>) -> f64 {
        let n = self.matmul_parameters() as f64;
        let weights = match trainable {
            None => 6.0 * n,
            Some(t) => 4.0 * n + 6.0 * t as f64,
        };
        let attention = 12.0 * (self.num_hidden_layers * self.num_attention_heads * self.head_dim * seq) as f64;
        weights + attention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_flops_per_token_count_weights_and_attention() {
        // Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads of 64, 2 KV heads, MLP 4864, vocab 151936.
        let cfg = ModelConfig::from_json(
            serde_json::json!({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": true}),
            std::path::Path::new("t"),
        )
        .unwrap();
        let layer = 896 * 896 + 2 * 896 * 128 + 896 * 896 + 3 * 896 * 4864;
        let n = 24 * layer + 151936 * 896;
        assert_eq!(cfg.matmul_parameters(), n);
        let attn = 12.0 * (24 * 14 * 64 * 1024) as f64;
        assert_eq!(cfg.train_flops_per_token(1024, None), 6.0 * n as f64 + attn);
        assert_eq!(cfg.train_flops_per_token(1024, Some(1000)), 4.0 * n as f64 + 6000.0 + attn);
    }

    fn base() -> serde_json::Value {
        serde_json::json!({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2})
    }

    /// The tensor list (what exports write and random init draws) and the parameter count
    /// agree for every family, bias, q/k norms and an untied head included.
    #[test]
    fn tensor_shapes_add_up_to_the_parameter_count() {
        let p = Path::new("m/config.json");
        for (model_type, tie, bias) in [("llama", true, false), ("llama", false, false), ("qwen2", true, true), ("qwen3", false, false)] {
            let mut j = base();
            j["model_type"] = model_type.into();
            j["tie_word_embeddings"] = tie.into();
            j["num_hidden_layers"] = 3.into();
            if bias {
                j["attention_bias"] = true.into();
            }
            let cfg = ModelConfig::from_json(j, p).unwrap();
            let shapes = cfg.tensor_shapes();
            let total: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            assert_eq!(total, cfg.num_parameters(), "{model_type} tie={tie}");
            assert_eq!(shapes.iter().any(|(n, _)| n == "lm_head.weight"), !tie);
            let names: std::collections::BTreeSet<_> = shapes.iter().map(|(n, _)| n).collect();
            assert_eq!(names.len(), shapes.len(), "names are unique");
        }
    }

    #[test]
    fn zero_and_absurd_dimensions_are_refused_naming_the_key() {
        let p = Path::new("m/config.json");
        assert!(ModelConfig::from_json(base(), p).is_ok());
        for (key, value) in [
            ("num_hidden_layers", serde_json::json!(0)),
            ("vocab_size", serde_json::json!(0)),
            ("intermediate_size", serde_json::json!(0)),
            ("head_dim", serde_json::json!(0)),
            ("max_position_embeddings", serde_json::json!(0)),
            ("num_hidden_layers", serde_json::json!(1u64 << 40)),
            ("rms_norm_eps", serde_json::json!(-1.0)),
            ("rope_theta", serde_json::json!(0.0)),
        ] {
            let mut v = base();
            v[key] = value.clone();
            let e = ModelConfig::from_json(v, p).unwrap_err().to_string();
            assert!(e.contains("m/config.json") && e.contains(&format!("`{key}`")), "{key}={value}: {e}");
        }
    }

    #[test]
    fn rope_parameters_of_transformers_5_are_read() {
        let p = Path::new("config.json");
        let mut v = base();
        v["rope_parameters"] = serde_json::json!({"rope_theta": 1e6, "rope_type": "default"});
        let c = ModelConfig::from_json(v, p).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (1e6, None));
        let mut v = base();
        v["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 5e5});
        let c = ModelConfig::from_json(v, p).unwrap();
        assert_eq!(c.rope_theta, 5e5);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
        // The older keys win when both are present.
        let mut v = base();
        v["rope_theta"] = 1e4.into();
        v["rope_parameters"] = serde_json::json!({"rope_theta": 1e6});
        assert_eq!(ModelConfig::from_json(v, p).unwrap().rope_theta, 1e4);
    }
}
