//! Sequence classifiers: Hugging Face `LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification` and `Qwen3ForSequenceClassification` checkpoints.
//!
//! Such a checkpoint is the decoder body ([`CausalLm::body_from_source`], same tensor names as
//! the causal LM) plus `score.weight` `[num_labels, hidden]` (no bias) in place of the LM head.
//! The logits of a sequence are the score head applied to the final hidden state of one token,
//! chosen as transformers does: the rightmost token whose id is not `pad_token_id` (from
//! `config.json`), or the last token when the config has no pad token. A prompt that ends with
//! the pad token (Qwen's `<|endoftext|>` is often both the pad and the EOS) is therefore read at
//! the token before it, exactly as the reference implementation reads it.
//!
//! Batches are right-padded with positions starting at 0 in every row, which is what
//! transformers computes for a right-padded batch with an attention mask; padding is masked, so
//! a sequence scores the same alone or in a batch, up to float rounding.

use candle_core::{DType, Device, Module, Result as CResult, Tensor};
use std::path::{Path, PathBuf};

use super::transformer::{build_attention_mask, CausalLm, Linear};
use super::weights::{SafetensorsSource, TensorSource};
use super::{ModelConfig, ModelError};
use crate::tokenizer::TextTokenizer;

/// Whether a `config.json` object declares a `*ForSequenceClassification` architecture.
pub fn is_sequence_classifier(config: &serde_json::Value) -> bool {
    config
        .get("architectures")
        .and_then(|a| a.as_array())
        .is_some_and(|a| a.iter().filter_map(|x| x.as_str()).any(|x| x.ends_with("ForSequenceClassification")))
}

/// A decoder with a linear classification head.
#[derive(Debug, Clone)]
pub struct SequenceClassifier {
    /// The decoder body; it has no LM head (see [`CausalLm::body_from_source`]).
    pub body: CausalLm,
    /// `score.weight`, `[num_labels, hidden]`.
    pub score: Tensor,
    /// Label names by index (`id2label`; `LABEL_i` where the config names none).
    pub labels: Vec<String>,
    pub pad_token_id: Option<u32>,
}

impl SequenceClassifier {
    /// Build from a parsed config (its `raw` JSON supplies `id2label` / `num_labels` and
    /// `pad_token_id`) and a tensor source. `path` names the config in errors.
    pub fn from_source(cfg: ModelConfig, src: &mut dyn TensorSource, dtype: DType, device: &Device, path: &Path) -> Result<Self, ModelError> {
        let (labels, pad_token_id) = parse_head_config(&cfg.raw, path)?;
        let hidden = cfg.hidden_size;
        let body = CausalLm::body_from_source(cfg, src, dtype, device)?;
        let score = src.get("score.weight", &[labels.len(), hidden], dtype, device)?;
        let unused: Vec<String> = src.unused().into_iter().filter(|n| n != "lm_head.weight").collect();
        if !unused.is_empty() {
            tracing::warn!("{} tensors in the classifier checkpoint were not used, e.g. {:?}", unused.len(), &unused[..unused.len().min(3)]);
        }
        Ok(Self { body, score, labels, pad_token_id })
    }

    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }

    /// Index of a label given by name (`id2label`) or by number.
    pub fn label_index(&self, label: &str) -> Option<usize> {
        self.labels
            .iter()
            .position(|l| l == label)
            .or_else(|| label.parse::<usize>().ok().filter(|&i| i < self.labels.len()))
    }

    /// The token whose hidden state is classified (transformers' rule, see the module doc).
    pub fn pooled_index(&self, ids: &[u32]) -> usize {
        match self.pad_token_id {
            None => ids.len().saturating_sub(1),
            // argmax over (index * not_pad): the last non-pad token, or 0 when every token is pad.
            Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
        }
    }

    /// Label logits `[B, num_labels]` (f32) of a batch of token sequences (each non-empty).
    pub fn logits(&self, batch: &[Vec<u32>]) -> CResult<Tensor> {
        let device = self.body.device();
        if batch.is_empty() {
            return Tensor::zeros((0, self.num_labels()), DType::F32, device);
        }
        if let Some(i) = batch.iter().position(|s| s.is_empty()) {
            candle_core::bail!("sequence {i} is empty: at least one token is needed");
        }
        let b = batch.len();
        let t = batch.iter().map(Vec::len).max().expect("non-empty batch");
        // The pad id of filler slots does not matter: they are masked and never pooled.
        let fill = self.pad_token_id.unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        let mut pos = Vec::with_capacity(b * t);
        let mut valid = Vec::with_capacity(b);
        let mut pooled = Vec::with_capacity(b);
        for (row, s) in batch.iter().enumerate() {
            ids.extend(s.iter().copied().chain(std::iter::repeat_n(fill, t - s.len())));
            pos.extend(0..t as u32);
            valid.push((0..t).map(|i| i < s.len()).collect::<Vec<bool>>());
            pooled.push((row * t + self.pooled_index(s)) as u32);
        }
        let input = Tensor::from_vec(ids, (b, t), device)?;
        let positions = Tensor::from_vec(pos, (b, t), device)?;
        let mask = build_attention_mask(&valid, 0, t, device)?;
        let hidden = self.body.forward_hidden(&input, &positions, Some(&mask), None)?;
        let h = hidden.dim(2)?;
        let picked = hidden.reshape((b * t, h))?.index_select(&Tensor::new(pooled, device)?, 0)?;
        Linear { weight: self.score.clone().into(), bias: None, lora: None }.forward(&picked)?.to_dtype(DType::F32)
    }

    /// Label probabilities (softmax of the logits), one row per sequence.
    pub fn probabilities(&self, batch: &[Vec<u32>]) -> CResult<Vec<Vec<f64>>> {
        let logits: Vec<Vec<f32>> = self.logits(batch)?.to_vec2()?;
        Ok(logits.iter().map(|row| softmax(row)).collect())
    }
}

/// Softmax in f64 (a handful of labels: no need for a device kernel).
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Labels and pad token of a classifier config. `id2label` keys are stringified indices.
fn parse_head_config(raw: &serde_json::Value, path: &Path) -> Result<(Vec<String>, Option<u32>), ModelError> {
    let err = |key: &str, msg: String| ModelError::Config { path: path.into(), key: key.into(), msg };
    let id2label = raw.get("id2label").and_then(|v| v.as_object());
    let num_labels = match (raw.get("num_labels").and_then(|v| v.as_u64()), id2label) {
        (Some(n), _) => n as usize,
        (None, Some(m)) => m.len(),
        // transformers' default.
        (None, None) => 2,
    };
    if num_labels == 0 {
        return Err(err("num_labels", "a classifier needs at least one label".into()));
    }
    let mut labels: Vec<String> = (0..num_labels).map(|i| format!("LABEL_{i}")).collect();
    if let Some(m) = id2label {
        for (k, v) in m {
            let i: usize = k.parse().map_err(|_| err("id2label", format!("key {k:?} is not an index")))?;
            let name = v.as_str().ok_or_else(|| err("id2label", format!("label {k} is not a string")))?;
            let slot = labels
                .get_mut(i)
                .ok_or_else(|| err("id2label", format!("index {i} is out of range for {num_labels} labels")))?;
            *slot = name.to_string();
        }
    }
    let pad_token_id = match raw.get("pad_token_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| err("pad_token_id", "expected a non-negative integer".into()))? as u32),
    };
    Ok((labels, pad_token_id))
}

/// A loaded classifier folder: weights and tokenizer.
pub struct LoadedClassifier {
    pub dir: PathBuf,
    pub model: SequenceClassifier,
    pub tokenizer: TextTokenizer,
}

/// Load a Hugging Face `*ForSequenceClassification` folder.
pub fn load_classifier_dir(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedClassifier, ModelError> {
    let cfg = super::read_model_config(dir)?;
    let cfg_path = dir.join("config.json");
    if !is_sequence_classifier(&cfg.raw) {
        return Err(ModelError::Config {
            path: cfg_path,
            key: "architectures".into(),
            msg: format!("{:?} is not a *ForSequenceClassification model", cfg.raw.get("architectures").cloned().unwrap_or_default()),
        });
    }
    let tokenizer = TextTokenizer::from_dir(dir)?;
    let mut src = SafetensorsSource::open_dir(dir)?;
    let model = SequenceClassifier::from_source(cfg, &mut src, dtype, device, &cfg_path)?;
    if tokenizer.vocab_size() > model.body.cfg.vocab_size {
        return Err(ModelError::Config {
            path: dir.join("tokenizer.json"),
            key: "vocab".into(),
            msg: format!("tokenizer has {} tokens but the model's vocab_size is {}", tokenizer.vocab_size(), model.body.cfg.vocab_size),
        });
    }
    Ok(LoadedClassifier { dir: dir.into(), model, tokenizer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_config_labels_and_pad() {
        let p = Path::new("config.json");
        let (l, pad) = parse_head_config(&serde_json::json!({"id2label": {"1": "True", "0": "False"}, "pad_token_id": 7}), p).unwrap();
        assert_eq!(l, ["False", "True"]);
        assert_eq!(pad, Some(7));
        let (l, pad) = parse_head_config(&serde_json::json!({"num_labels": 3}), p).unwrap();
        assert_eq!(l, ["LABEL_0", "LABEL_1", "LABEL_2"]);
        assert_eq!(pad, None);
        assert!(parse_head_config(&serde_json::json!({"num_labels": 2, "id2label": {"2": "x"}}), p).is_err());
    }

    #[test]
    fn architectures_detected() {
        assert!(is_sequence_classifier(&serde_json::json!({"architectures": ["Qwen2ForSequenceClassification"]})));
        assert!(!is_sequence_classifier(&serde_json::json!({"architectures": ["Qwen2ForCausalLM"]})));
        assert!(!is_sequence_classifier(&serde_json::json!({})));
    }
}
