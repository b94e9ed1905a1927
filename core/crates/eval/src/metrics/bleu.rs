//! BLEU exactly as sacreBLEU 2.x computes it with its defaults:
//! `sacrebleu.corpus_bleu(hyps, [refs])` and `sacrebleu.sentence_bleu(hyp, [ref])`.
//!
//! - Tokenizer "13a" (mteval-v13a as sacreBLEU implements it, [`tokenize_13a`]): strips
//!   `<skipped>`, joins `-\n` line breaks, unescapes `&quot; &amp; &lt; &gt;`, splits off ASCII
//!   punctuation, splits `.`/`,` except between digits (so `1,000.5` stays one token), splits a
//!   `-` after a digit. Non-ASCII punctuation (`，。“”…—`) is **not** split and non-ASCII text is
//!   not segmented: a Chinese sentence without spaces is one token. That is sacreBLEU's 13a
//!   behaviour too (its `zh` tokenizer exists for Chinese); use character-level ROUGE
//!   ([`super::rouge::RougeTokenizer::CjkChars`]) for Chinese.
//! - Case-sensitive, trailing whitespace stripped (`str.rstrip()`), tokens split on Python's
//!   whitespace set.
//! - Clipped n-gram counts for n = 1..4, summed over the corpus; brevity penalty
//!   `exp(1 - r/c)` when `c < r` (0 when `c = 0`); smoothing "exp" (mteval's: the k-th order with
//!   zero matches gets precision `100 / (2^k * total)`); score in 0..100.
//! - Effective order: off for the corpus score (sacreBLEU's corpus default), on for the sentence
//!   score (its `sentence_bleu` default): orders with no hypothesis n-grams are then left out of
//!   the geometric mean instead of making it 0.
//! - If no n-gram of any order matches, the score is 0 (sacreBLEU's early stop).

use std::collections::HashMap;

use super::{check_len, is_py_space, py_split, MetricError};

pub const MAX_NGRAM_ORDER: usize = 4;

/// A BLEU score and its sufficient statistics (names as in sacreBLEU's `BLEUScore`).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    /// 0..100.
    pub score: f64,
    /// Clipped matching n-grams per order (sacreBLEU `counts`).
    pub counts: [u64; MAX_NGRAM_ORDER],
    /// Hypothesis n-grams per order (sacreBLEU `totals`).
    pub totals: [u64; MAX_NGRAM_ORDER],
    /// Smoothed precisions in percent (0 for orders not reached).
    pub precisions: [f64; MAX_NGRAM_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
}

/// mteval-v13a's first regex: `[\{-\~\[-\` -\&\(-\+\:-\@\/]`.
fn is_13a_punct(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Emulates Python's `re.sub` of a two-character pattern `(A)(B)` (leftmost, non-overlapping,
/// scanning left to right) where `hit(a, b)` tells whether a pair matches.
fn sub_pair(input: &[char], hit: impl Fn(char, char) -> bool, repl: impl Fn(char, char, &mut Vec<char>)) -> Vec<char> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 2);
    let mut i = 0;
    while i < input.len() {
        if i + 1 < input.len() && hit(input[i], input[i + 1]) {
            repl(input[i], input[i + 1], &mut out);
            i += 2;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's `Tokenizer13a` (with its `TokenizerRegexp` post-tokenizer): returns the tokens
/// joined by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut s = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if s.contains('&') {
        s = s.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let padded: Vec<char> = format!(" {s} ").chars().collect();
    // 1. ASCII punctuation (and, harmlessly, the space) gets spaces around it.
    let mut a = Vec::with_capacity(padded.len() * 2);
    for c in padded {
        if is_13a_punct(c) {
            a.extend([' ', c, ' ']);
        } else {
            a.push(c);
        }
    }
    let is_digit = |c: char| c.is_ascii_digit();
    let is_pc = |c: char| c == '.' || c == ',';
    // 2. Period and comma unless preceded by a digit: ([^0-9])([\.,]) -> "\1 \2 ".
    let b = sub_pair(&a, |x, y| !is_digit(x) && is_pc(y), |x, y, o| o.extend([x, ' ', y, ' ']));
    // 3. Period and comma unless followed by a digit: ([\.,])([^0-9]) -> " \1 \2".
    let c = sub_pair(&b, |x, y| is_pc(x) && !is_digit(y), |x, y, o| o.extend([' ', x, ' ', y]));
    // 4. Dash preceded by a digit: ([0-9])(-) -> "\1 \2 ".
    let d = sub_pair(&c, |x, y| is_digit(x) && y == '-', |x, y, o| o.extend([x, ' ', y, ' ']));
    let joined: String = d.into_iter().collect();
    py_split(&joined).collect::<Vec<_>>().join(" ")
}

/// What sacreBLEU does to each segment before counting: `tokenize_13a(s.rstrip())`.
fn preprocess(s: &str) -> String {
    tokenize_13a(s.trim_end_matches(is_py_space))
}

fn ngram_counts<'a>(tokens: &'a [&'a str]) -> HashMap<&'a [&'a str], u64> {
    let mut m = HashMap::new();
    for n in 1..=MAX_NGRAM_ORDER {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// Sufficient statistics of one segment: `[hyp_len, ref_len, correct x4, total x4]`.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    sys_len: u64,
    ref_len: u64,
    correct: [u64; MAX_NGRAM_ORDER],
    total: [u64; MAX_NGRAM_ORDER],
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_NGRAM_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

fn segment_stats(hyp: &str, reference: &str) -> Stats {
    let h = preprocess(hyp);
    let r = preprocess(reference);
    let ht: Vec<&str> = py_split(&h).collect();
    let rt: Vec<&str> = py_split(&r).collect();
    let hc = ngram_counts(&ht);
    let rc = ngram_counts(&rt);
    let mut st = Stats { sys_len: ht.len() as u64, ref_len: rt.len() as u64, ..Default::default() };
    for (g, &cnt) in &hc {
        let n = g.len() - 1;
        st.total[n] += cnt;
        if let Some(&rcnt) = rc.get(g) {
            st.correct[n] += cnt.min(rcnt);
        }
    }
    st
}

/// sacreBLEU's `BLEU.compute_bleu` with `smooth_method='exp'`.
fn compute(st: &Stats, effective_order: bool) -> BleuScore {
    let (sys_len, ref_len) = (st.sys_len, st.ref_len);
    let bp = if sys_len < ref_len {
        if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 }
    } else {
        1.0
    };
    let mut precisions = [0.0f64; MAX_NGRAM_ORDER];
    let mut out = BleuScore { score: 0.0, counts: st.correct, totals: st.total, precisions, bp, sys_len, ref_len };
    if st.correct.iter().all(|&c| c == 0) {
        return out;
    }
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = MAX_NGRAM_ORDER;
    for n in 1..=MAX_NGRAM_ORDER {
        let (correct, total) = (st.correct[n - 1], st.total[n - 1]);
        if total == 0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        precisions[n - 1] = if correct == 0 {
            smooth_mteval *= 2.0;
            100.0 / (smooth_mteval * total as f64)
        } else {
            100.0 * correct as f64 / total as f64
        };
    }
    // Python's my_log: log(0) is -9999999999 (so such a score underflows to 0).
    let log_sum: f64 = precisions[..eff_order].iter().map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() }).sum();
    out.precisions = precisions;
    out.score = bp * (log_sum / eff_order as f64).exp();
    out
}

/// Corpus BLEU of `hyps` against one reference per hypothesis, as
/// `sacrebleu.corpus_bleu(hyps, [refs]).score` (effective order off).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[R]) -> Result<BleuScore, MetricError> {
    check_len("corpus_bleu: hypotheses vs references", hyps.len(), refs.len())?;
    let mut total = Stats::default();
    for (h, r) in hyps.iter().zip(refs) {
        total.add(&segment_stats(h.as_ref(), r.as_ref()));
    }
    Ok(compute(&total, false))
}

/// Sentence BLEU, as `sacrebleu.sentence_bleu(hyp, [reference]).score` (effective order on).
pub fn sentence_bleu(hyp: &str, reference: &str) -> BleuScore {
    compute(&segment_stats(hyp, reference), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_cases() {
        // Expected strings from sacrebleu 2.6.0's Tokenizer13a.
        assert_eq!(tokenize_13a("Hello, world."), "Hello , world .");
        assert_eq!(tokenize_13a("1,000.50 mg"), "1,000.50 mg");
        assert_eq!(tokenize_13a("3-5 days"), "3 - 5 days");
        assert_eq!(tokenize_13a("well-known"), "well-known");
        assert_eq!(tokenize_13a("&quot;a&quot; &amp;lt;"), "\" a \" <");
        assert_eq!(tokenize_13a("it's"), "it's");
        assert_eq!(tokenize_13a("end.5 a.b"), "end . 5 a . b");
        assert_eq!(tokenize_13a(""), "");
    }

    #[test]
    fn identical_is_100_and_empty_is_0() {
        let s = corpus_bleu(&["the patient was discharged home today"], &["the patient was discharged home today"]).unwrap();
        assert!((s.score - 100.0).abs() < 1e-12);
        let e = corpus_bleu(&[""], &["the patient"]).unwrap();
        assert_eq!(e.score, 0.0);
        assert_eq!(e.bp, 0.0);
    }

    #[test]
    fn bad_input() {
        let none: [&str; 0] = [];
        assert!(matches!(corpus_bleu(&none, &none), Err(MetricError::Empty { .. })));
        assert!(matches!(corpus_bleu(&["a"], &["a", "b"]), Err(MetricError::LengthMismatch { .. })));
    }
}
