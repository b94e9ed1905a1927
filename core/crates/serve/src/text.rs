//! Token ids to streamed text: incremental detokenization and stop strings.
//!
//! Decoding each token alone breaks multi-byte characters and the tokenizer's spacing rules, and
//! decoding the whole output every token is quadratic. As TGI and vLLM do, a window of a few
//! tokens before the new ones is decoded and only what it adds is emitted, once it no longer ends
//! in an incomplete character. Text that could be the start of a stop string is held back until
//! it is clear it is not; the stop string itself is never sent (OpenAI's semantics).

use medrl_lm::tokenizer::TextTokenizer;

/// One choice's text as its tokens arrive.
#[derive(Debug, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Decoded so far, in full (sent or held back).
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
    /// Where a stop string begins, once one has appeared; `text` ends there.
    stopped: bool,
}

impl TextStream {
    /// Add a token; returns the text that may be sent now.
    pub fn push(&mut self, tok: &TextTokenizer, token: u32, stop: &[String]) -> String {
        if self.stopped {
            return String::new();
        }
        self.tokens.push(token);
        let prefix = tok.decode(&self.tokens[self.prefix_offset..self.read_offset], true).unwrap_or_default();
        let all = tok.decode(&self.tokens[self.prefix_offset..], true).unwrap_or_default();
        if all.len() > prefix.len() && !all.ends_with('\u{FFFD}') {
            if let Some(new) = all.get(prefix.len()..) {
                self.text.push_str(new);
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
        }
        self.release(stop, false)
    }

    /// The end of the sequence: whatever was held back (minus a stop string) goes out.
    pub fn finish(&mut self, tok: &TextTokenizer, stop: &[String]) -> String {
        if !self.stopped && self.read_offset < self.tokens.len() {
            // Trailing bytes of an incomplete character: send what the tokenizer makes of them.
            let prefix = tok.decode(&self.tokens[self.prefix_offset..self.read_offset], true).unwrap_or_default();
            let all = tok.decode(&self.tokens[self.prefix_offset..], true).unwrap_or_default();
            if let Some(new) = all.get(prefix.len()..) {
                self.text.push_str(new);
            }
            self.read_offset = self.tokens.len();
        }
        self.release(stop, true)
    }

    /// Whether a stop string has appeared (the caller ends the choice there).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The whole text (what has been and will be sent).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    fn release(&mut self, stop: &[String], end: bool) -> String {
        if !stop.is_empty() {
            // Search only where a new match can start.
            let longest = stop.iter().map(String::len).max().unwrap_or(0);
            let mut from = self.sent.saturating_sub(longest);
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            let hit = stop.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
            if let Some(at) = hit {
                // Never before what was sent (the hold-back above makes that impossible anyway).
                self.text.truncate(at.max(self.sent));
                self.stopped = true;
            }
        }
        let mut upto = self.text.len();
        if !self.stopped && !end {
            // Hold back a tail that a stop string starts with.
            let held = stop.iter().map(|s| partial_suffix(&self.text[self.sent..], s)).max().unwrap_or(0);
            upto -= held;
        }
        let upto = upto.max(self.sent);
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        out
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max).rev().find(|&k| text.is_char_boundary(text.len() - k) && stop.is_char_boundary(k) && text.ends_with(&stop[..k])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_suffixes() {
        assert_eq!(partial_suffix("abc</ans", "</answer>"), 5);
        assert_eq!(partial_suffix("abc", "</answer>"), 0);
        assert_eq!(partial_suffix("a<", "<"), 0, "a whole stop string is a match, not a partial one");
        assert_eq!(partial_suffix("é<", "<b"), 1);
    }
}
