//! ROUGE-1, ROUGE-2 and ROUGE-L, computed as Google's `rouge-score` package (0.1.2) computes them
//! with `RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=False).score(reference, hypothesis)`.
//!
//! - Tokenizer ([`RougeTokenizer::RougeScore`]): lowercase, replace every run of characters
//!   outside `[a-z0-9]` by a space, split. **Everything else is dropped**, including all Chinese,
//!   Japanese and Korean text and accented letters: a Chinese pair scores 0 (or only on its
//!   ASCII words and digits). Use this variant to compare with published English numbers.
//! - ROUGE-N: clipped n-gram overlap; precision = overlap / max(hyp n-grams, 1), recall =
//!   overlap / max(ref n-grams, 1). ROUGE-L: longest common subsequence; precision = LCS / hyp
//!   tokens, recall = LCS / ref tokens, all 0 when either side has no tokens.
//!   F = 2PR / (P + R), 0 when P + R = 0.
//! - The corpus figure ([`RougeReport::mean`]) is the plain mean of the per-pair scores
//!   (`rouge-score`'s `BootstrapAggregator` reports a bootstrap estimate of the same mean).
//!
//! [`RougeTokenizer::CjkChars`] is medrl's variant for Chinese clinical text: each CJK character
//! (Han, kana, Hangul) is a token and ASCII words/numbers are tokens as above, after folding
//! full-width forms (`Ａ１，` -> `A1,`). So ROUGE-1 is character overlap and ROUGE-2 character-
//! bigram overlap, the usual convention for Chinese (no word segmenter, hence no dependency on
//! one, at the cost of giving credit for characters shared across different words). Scores are not
//! comparable with `rouge-score` numbers, or with ROUGE on jieba-segmented words.

use std::collections::HashMap;

use super::{check_len, MetricError};

/// How text is split into tokens before counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RougeTokenizer {
    /// `rouge-score`'s default tokenizer (no stemmer): ASCII `[a-z0-9]+` words only.
    #[default]
    RougeScore,
    /// ASCII words plus one token per CJK character (see the module doc).
    CjkChars,
}

/// Precision, recall and F1, each in 0..1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Self {
        // rouge_score.scoring.fmeasure
        let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Score { precision, recall, fmeasure }
    }
}

/// The three scores of one hypothesis/reference pair.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RougePair {
    pub rouge1: Score,
    pub rouge2: Score,
    pub rouge_l: Score,
}

/// Per-pair scores and their mean.
#[derive(Debug, Clone, PartialEq)]
pub struct RougeReport {
    pub pairs: Vec<RougePair>,
    pub mean: RougePair,
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3005 | 0x3007    // 々 〇
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F) // Extensions B..F, Compatibility Supplement
}

/// Full-width ASCII variants U+FF01..U+FF5E to ASCII, the ideographic space to a space.
fn fold_fullwidth(c: char) -> char {
    match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        0x3000 => ' ',
        _ => c,
    }
}

/// Tokens of `text` under `tok`.
pub fn tokenize(text: &str, tok: RougeTokenizer) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, tokens: &mut Vec<String>| {
        if !word.is_empty() {
            tokens.push(std::mem::take(word));
        }
    };
    // Python's str.lower() and Rust's to_lowercase both apply Unicode's full case mapping, so
    // non-ASCII letters that lowercase to ASCII (KELVIN SIGN -> 'k', 'İ' -> "i\u{307}") agree.
    let lowered = match tok {
        RougeTokenizer::RougeScore => text.to_lowercase(),
        RougeTokenizer::CjkChars => text.chars().map(fold_fullwidth).collect::<String>().to_lowercase(),
    };
    for c in lowered.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            word.push(c);
        } else {
            flush(&mut word, &mut tokens);
            if tok == RougeTokenizer::CjkChars && is_cjk(c) {
                tokens.push(c.to_string());
            }
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], u64> {
    let mut m = HashMap::new();
    for w in tokens.windows(n) {
        *m.entry(w).or_insert(0) += 1;
    }
    m
}

/// rouge_scorer._score_ngrams(target=reference, prediction=hypothesis).
fn score_ngrams(reference: &[String], hyp: &[String], n: usize) -> Score {
    let r = ngrams(reference, n);
    let h = ngrams(hyp, n);
    let overlap: u64 = r.iter().map(|(g, &c)| c.min(h.get(g).copied().unwrap_or(0))).sum();
    let r_total: u64 = r.values().sum();
    let h_total: u64 = h.values().sum();
    Score::new(overlap as f64 / h_total.max(1) as f64, overlap as f64 / r_total.max(1) as f64)
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// rouge_scorer._score_lcs(target=reference, prediction=hypothesis).
fn score_lcs(reference: &[String], hyp: &[String]) -> Score {
    if reference.is_empty() || hyp.is_empty() {
        return Score::default();
    }
    let l = lcs_len(reference, hyp) as f64;
    Score::new(l / hyp.len() as f64, l / reference.len() as f64)
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one hypothesis against its reference.
pub fn rouge_pair(hyp: &str, reference: &str, tok: RougeTokenizer) -> RougePair {
    let h = tokenize(hyp, tok);
    let r = tokenize(reference, tok);
    RougePair { rouge1: score_ngrams(&r, &h, 1), rouge2: score_ngrams(&r, &h, 2), rouge_l: score_lcs(&r, &h) }
}

/// Per-pair ROUGE of `hyps` against `refs` and the mean of each field over pairs.
pub fn rouge<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[R], tok: RougeTokenizer) -> Result<RougeReport, MetricError> {
    check_len("rouge: hypotheses vs references", hyps.len(), refs.len())?;
    let pairs: Vec<RougePair> = hyps.iter().zip(refs).map(|(h, r)| rouge_pair(h.as_ref(), r.as_ref(), tok)).collect();
    let n = pairs.len() as f64;
    let mean_of = |f: &dyn Fn(&RougePair) -> Score| {
        let (mut p, mut r, mut f1) = (0.0, 0.0, 0.0);
        for s in pairs.iter().map(f) {
            p += s.precision;
            r += s.recall;
            f1 += s.fmeasure;
        }
        Score { precision: p / n, recall: r / n, fmeasure: f1 / n }
    };
    let mean = RougePair { rouge1: mean_of(&|p| p.rouge1), rouge2: mean_of(&|p| p.rouge2), rouge_l: mean_of(&|p| p.rouge_l) };
    Ok(RougeReport { pairs, mean })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizers() {
        assert_eq!(tokenize("Take 5mg, twice-daily!", RougeTokenizer::RougeScore), ["take", "5mg", "twice", "daily"]);
        assert!(tokenize("患者发热三天。", RougeTokenizer::RougeScore).is_empty());
        assert_eq!(tokenize("患者CT示３cm", RougeTokenizer::CjkChars), ["患", "者", "ct", "示", "3cm"]);
        assert_eq!(tokenize("Café", RougeTokenizer::RougeScore), ["caf"]);
    }

    #[test]
    fn known_values() {
        let p = rouge_pair("the cat sat on the mat", "the cat is on the mat", RougeTokenizer::RougeScore);
        assert!((p.rouge1.fmeasure - 5.0 / 6.0).abs() < 1e-12);
        assert!((p.rouge2.fmeasure - 3.0 / 5.0).abs() < 1e-12);
        assert!((p.rouge_l.fmeasure - 5.0 / 6.0).abs() < 1e-12);
        let z = rouge_pair("", "anything", RougeTokenizer::RougeScore);
        assert_eq!(z, RougePair::default());
        let zh = rouge_pair("患者发热", "患者发烧", RougeTokenizer::CjkChars);
        assert!((zh.rouge1.fmeasure - 0.75).abs() < 1e-12);
    }
}
