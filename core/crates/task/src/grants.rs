//! The capabilities a task grants a reward plugin (`rewards[].grants` in task.yaml): a judge
//! model ([`JudgeGrant`], turned into [`medrl_reward::judge::JudgeSettings`]) and a search
//! backend ([`SearchGrant`], owned by medrl-search).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The search backend of a reward: `corpus`, `index` or `pubmed`.
pub use medrl_search::SearchGrant;

/// Capabilities granted to a plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsSpec {
    pub judge: Option<JudgeGrant>,
    pub search: Option<SearchGrant>,
}

/// A judge model: the host's `judge` capability, backed by a model medrl loads
/// ([`medrl_reward::judge::ModelJudge`]; docs/judge.md). `medrl task validate` uses a constant
/// stand-in (`validate_score`) since it runs no model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeGrant {
    /// Local Hugging Face folder of the judge / verifier (relative to the task folder, or
    /// absolute). medrl never downloads: a hub name such as
    /// FreedomIntelligence/medical_o1_verifier_3B is refused with a message saying so;
    /// `--judge-model DIR` overrides it on the command line.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `classifier` (a *ForSequenceClassification checkpoint) or `causal_lm` (P(true_token)
    /// from next-token logits). Default: read from config.json's `architectures`.
    #[serde(default)]
    pub kind: Option<medrl_reward::judge::JudgeKind>,
    /// Classifier: the label whose probability is the score, by name (`id2label`) or index
    /// (default: index 1).
    #[serde(default)]
    pub label: Option<String>,
    /// Causal LM: the token whose probability is the score (default `True`; one token).
    #[serde(default)]
    pub true_token: Option<String>,
    /// Causal LM: the opposing token for `normalize: pair` (default `False`).
    #[serde(default)]
    pub false_token: Option<String>,
    /// Causal LM: `pair` (softmax over true/false tokens, default) or `vocab` (full softmax).
    #[serde(default)]
    pub normalize: Option<medrl_reward::judge::Normalize>,
    /// Causal LM: render the prompt as a user turn with the chat template (default: when the
    /// tokenizer has one).
    #[serde(default)]
    pub chat_template: Option<bool>,
    /// Apply the tokenizer's special tokens (e.g. a BOS) to a prompt that is not chat-rendered
    /// (default true, as transformers' `tokenizer(text)`; HuatuoGPT-o1's verifier uses false).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// Longest judge prompt in tokens (default 4096); longer prompts are truncated.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// `left` (default: keep the end of the prompt) or `right` (keep the start).
    #[serde(default)]
    pub truncation: Option<medrl_reward::judge::Truncation>,
    /// Most judge requests computed in one forward (default 8).
    #[serde(default)]
    pub max_batch: Option<usize>,
    /// Seconds a judge call may wait for the model before failing (default 120).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (default: the run's device; cpu for `medrl reward`).
    #[serde(default)]
    pub device: Option<String>,
    /// `f32`, `bf16`, `f16` or `auto` (default `auto`: bf16 on CUDA, f32 on CPU).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Score the stand-in judge returns during validation.
    #[serde(default = "half")]
    pub validate_score: f64,
}

impl JudgeGrant {
    /// Settings of the model-backed judge: this grant's values over the defaults; relative
    /// model paths resolve against `task_dir`; `device` is used when the grant names none.
    /// `None` when the grant names no model.
    pub fn settings(&self, task_dir: Option<&Path>, device: &str) -> Option<medrl_reward::judge::JudgeSettings> {
        let mut s = medrl_reward::judge::JudgeSettings::new(self.model.clone()?);
        s.base_dir = task_dir.map(Path::to_path_buf);
        self.apply(&mut s);
        s.device = self.device.clone().unwrap_or_else(|| device.to_string());
        Some(s)
    }

    /// Overwrite the settings this grant sets (all but `model` and `device`).
    pub fn apply(&self, s: &mut medrl_reward::judge::JudgeSettings) {
        if self.kind.is_some() {
            s.kind = self.kind;
        }
        if self.label.is_some() {
            s.label = self.label.clone();
        }
        if let Some(t) = &self.true_token {
            s.true_token = t.clone();
        }
        if let Some(t) = &self.false_token {
            s.false_token = t.clone();
        }
        if let Some(n) = self.normalize {
            s.normalize = n;
        }
        if self.chat_template.is_some() {
            s.chat_template = self.chat_template;
        }
        if let Some(a) = self.add_special_tokens {
            s.add_special_tokens = a;
        }
        if let Some(n) = self.max_length {
            s.max_length = n;
        }
        if let Some(t) = self.truncation {
            s.truncation = t;
        }
        if let Some(n) = self.max_batch {
            s.max_batch = n;
        }
        if let Some(t) = self.timeout_s {
            s.timeout = std::time::Duration::from_secs_f64(t.max(0.0));
        }
        if let Some(d) = &self.dtype {
            s.dtype = d.clone();
        }
    }
}

fn half() -> f64 {
    0.5
}
