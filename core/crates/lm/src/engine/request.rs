//! What a caller asks of the engine and what comes back: stop conditions, generated tokens with
//! their log-probabilities, and why each sequence ended.

use serde::Serialize;

use crate::tokenizer::TextTokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is included in `tokens`).
    Eos,
    /// A stop string appeared in the decoded output.
    Stop,
    /// `max_new_tokens` was reached (or the sequence outgrew the whole KV cache).
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token (temperature-scaled distribution).
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// What ends a sequence besides the token budget.
#[derive(Default)]
pub struct StopConditions<'a> {
    pub eos_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Needed only for `stop_strings`.
    pub tokenizer: Option<&'a TextTokenizer>,
}

/// Whether the decoded tail of `tokens` contains one of `stop_strings`.
pub(crate) fn hits_stop_string(stop_strings: &[String], tokenizer: Option<&TextTokenizer>, tokens: &[u32]) -> bool {
    let (Some(tok), false) = (tokenizer, stop_strings.is_empty()) else { return false };
    // A stop string spans few tokens; decoding a tail window keeps this O(1) per step.
    let tail = &tokens[tokens.len().saturating_sub(32)..];
    match tok.decode(tail, false) {
        Ok(text) => stop_strings.iter().any(|s| text.contains(s.as_str())),
        Err(_) => false,
    }
}

/// Per-step progress callback: (tokens generated so far in total, sequences not yet finished).
pub type Progress<'a> = &'a dyn Fn(usize, usize);
