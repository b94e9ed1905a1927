//! The text analyzer shared by indexing and querying: split on non-alphanumeric characters,
//! drop tokens over 40 bytes, lowercase, fold accents to ASCII, remove a fixed English stop
//! word list, Porter-style English stemming ("trials" and "trial" match).
//!
//! The stop words are medrl's own list (Lucene's English set), not tantivy's, so that the
//! analyzer only changes when medrl changes it: its name ([`ANALYZER`]) is recorded in every
//! index manifest, and an index built with another analyzer is refused instead of silently
//! returning nothing.
//!
//! CJK text is not segmented: a run of Chinese characters is one token, so such a query
//! matches only the same run; it never errors.

use tantivy::tokenizer::{AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer, Token, TokenStream};

/// Name under which the analyzer is registered, and its version.
pub const ANALYZER: &str = "medrl_en_v1";

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
];

/// A fresh analyzer (cheap; tantivy clones one per thread anyway).
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(StopWordFilter::remove(STOP_WORDS.iter().map(|s| s.to_string())))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// The analyzed tokens of `text` with their positions (gaps where stop words were).
pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        let t: &Token = stream.token();
        out.push((t.position, t.text.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_folds_and_drops_stop_words() {
        let mut a = analyzer();
        let t = tokens(&mut a, "Trials of Anémie in the Elderly; type-2");
        let words: Vec<&str> = t.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(words, ["trial", "anemi", "elder", "type", "2"]);
        // Positions keep the gaps of the removed stop words (for phrase queries).
        assert_eq!(t.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [0, 2, 5, 6, 7]);
        assert!(tokens(&mut a, "the of and").is_empty());
    }
}
