//! Examples to token ids with a loss mask, computed from the rendered chat template.
//!
//! The trained spans are found in text, not in token ids: for each assistant message `i`, the
//! conversation up to `i` rendered with the generation prompt is a prefix of the conversation
//! up to and including `i`; the characters between the two are the assistant's turn (content and
//! the template's end-of-turn marker, so the model learns to stop). The full conversation is
//! tokenized once, and a token is trained when it starts inside such a span. This works for any
//! template whose renders are prefix-stable, with no per-template tables; a template that
//! rewrites earlier turns (Qwen3 drops old `<think>` blocks) is detected and reported.

use serde::{Deserialize, Serialize};

use super::Example;
use medrl_lm::tokenizer::{ChatMessage, TextTokenizer, TokenizerError};

/// Which tokens the loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Every assistant turn (the usual SFT choice).
    #[default]
    Assistant,
    /// Only the last assistant turn.
    LastAssistant,
    /// Every token (continued pre-training on chat-formatted text).
    All,
}

/// Sequences longer than the cutoff are cut or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    #[default]
    Truncate,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Tokenizing {
    /// Maximum tokens per example.
    pub cutoff_len: usize,
    pub overlong: Overlong,
    pub train_on: TrainOn,
}

impl Default for Tokenizing {
    fn default() -> Self {
        Self { cutoff_len: 1024, overlong: Overlong::Truncate, train_on: TrainOn::Assistant }
    }
}

/// Token ids and, per position, whether that token is a training target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizedExample {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
    pub truncated: bool,
}

impl TokenizedExample {
    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

/// Why an example produced no sequence (counted, not fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    TooLong,
    NothingToTrain,
}

/// Why an example cannot be tokenized (a row error: the caller adds the file and row).
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// The chat template failed to render the conversation.
    #[error(transparent)]
    Template(#[from] TokenizerError),
    /// `message`: index of the assistant message whose span cannot be located.
    #[error(
        "the chat template is not prefix-stable at message {message} (rendering later turns rewrites earlier text), so \
         assistant spans cannot be located; use single-turn examples or `train_on: all`"
    )]
    NotPrefixStable { message: usize },
    /// The tokenizer failed to encode the rendered text.
    #[error("tokenizer: {source}")]
    Encode { source: Box<dyn std::error::Error + Send + Sync> },
}

/// Character spans (byte offsets into `full`) of the trained turns, and the full rendering.
pub fn trained_spans(tok: &TextTokenizer, messages: &[ChatMessage], train_on: TrainOn) -> Result<(String, Vec<(usize, usize)>), TokenizeError> {
    let full = tok.apply_chat_template(messages, false)?;
    if train_on == TrainOn::All {
        return Ok((full.clone(), vec![(0, full.len())]));
    }
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = tok.apply_chat_template(&messages[..i], true)?;
        let after = tok.apply_chat_template(&messages[..=i], false)?;
        if !after.starts_with(&before) || !full.starts_with(&after) {
            return Err(TokenizeError::NotPrefixStable { message: i });
        }
        spans.push((before.len(), after.len()));
    }
    if train_on == TrainOn::LastAssistant {
        spans = spans.pop().into_iter().collect();
    }
    Ok((full, spans))
}

/// Tokenize one example. `Ok(Err(Dropped))` is an example that yields nothing to train on.
pub fn tokenize_example(tok: &TextTokenizer, ex: &Example, cfg: &Tokenizing) -> Result<Result<TokenizedExample, Dropped>, TokenizeError> {
    let (full, spans) = trained_spans(tok, &ex.messages, cfg.train_on)?;
    let enc = tok.inner().encode(full.as_str(), false).map_err(|source| TokenizeError::Encode { source })?;
    let ids = enc.get_ids().to_vec();
    // A token is trained when it starts inside a trained span. Tokens with an empty offset
    // range count too: a ByteLevel tokenizer with `trim_offsets` gives a lone space token
    // (`Ġ` before `"`) the empty range where the next character starts, and leaving it out
    // taught models to skip those spaces.
    let trained: Vec<bool> = enc.get_offsets().iter().map(|&(start, _)| spans.iter().any(|&(a, b)| start >= a && start < b)).collect();
    let mut out = TokenizedExample { ids, trained, truncated: false };
    if out.ids.len() > cfg.cutoff_len {
        if cfg.overlong == Overlong::Drop {
            return Ok(Err(Dropped::TooLong));
        }
        out.ids.truncate(cfg.cutoff_len);
        out.trained.truncate(cfg.cutoff_len);
        out.truncated = true;
    }
    // The first token is never a target (nothing predicts it).
    if let Some(t) = out.trained.first_mut() {
        *t = false;
    }
    if out.trained_tokens() == 0 {
        return Ok(Err(Dropped::NothingToTrain));
    }
    Ok(Ok(out))
}

/// A human-readable rendering with trained spans marked `[[...]]`, for `medrl data preview`.
pub fn preview(tok: &TextTokenizer, t: &TokenizedExample) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < t.ids.len() {
        let j = (i..t.ids.len()).find(|&k| t.trained[k] != t.trained[i]).unwrap_or(t.ids.len());
        let text = tok.decode(&t.ids[i..j], false).unwrap_or_else(|e| format!("<decode error: {e}>"));
        if t.trained[i] {
            out.push_str("[[");
            out.push_str(&text);
            out.push_str("]]");
        } else {
            out.push_str(&text);
        }
        i = j;
    }
    out
}
