//! Text helpers shared by reward plugins. Plain Rust: they build and test natively as well as
//! inside a plugin, so reward logic can be unit-tested without a WebAssembly runtime.

use memchr::{memchr2_iter, memchr3_iter, memchr_iter, memmem};
use serde_json::Value;

/// What a JSON value is, for error messages ("expected an object, found an array").
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Every occurrence of any of `needles` in `text`, in text order, in ONE pass: yields
/// `(byte offset, needle index)`. Overlapping occurrences are all reported; when several
/// needles match at the same offset they come in the order of `needles`. Empty needles never
/// match.
///
/// Candidates are found by a vectorized (`memchr`) search for the needles' first bytes, so the
/// cost is one scan of `text` plus a comparison at each candidate: cheap when the needles start
/// with a byte that is rare in the text, as tags (`<`) do in prose. Use it to look for all the
/// markers of a format at once instead of calling `find`/`count` once per marker.
#[inline]
pub fn find_all<'t, 'n>(text: &'t str, needles: &'n [&'n str]) -> FindAll<'t, 'n> {
    // Distinct first bytes of the needles (up to three use a vectorized memchr).
    let mut firsts = [0u8; 3];
    let mut n_firsts = 0;
    let mut seen = [0u64; 4]; // bit set of first bytes
    let mut prefixes = [(0u64, 0u64); PREFIXES];
    for (k, n) in needles.iter().enumerate() {
        let n = n.as_bytes();
        if k < PREFIXES {
            prefixes[k] = prefix(n);
        }
        if let Some(&b) = n.first() {
            let (word, bit) = ((b >> 6) as usize, 1u64 << (b & 63));
            if seen[word] & bit == 0 {
                seen[word] |= bit;
                if n_firsts < 3 {
                    firsts[n_firsts] = b;
                }
                n_firsts += 1;
            }
        }
    }
    let h = text.as_bytes();
    let candidates = match n_firsts {
        0 => Candidates::None,
        1 => Candidates::One(memchr_iter(firsts[0], h)),
        2 => Candidates::Two(memchr2_iter(firsts[0], firsts[1], h)),
        3 => Candidates::Three(memchr3_iter(firsts[0], firsts[1], firsts[2], h)),
        _ => Candidates::Scan(seen, 0),
    };
    FindAll {
        text: h,
        needles,
        prefixes,
        candidates,
        at: 0,
        window: 0,
        next_needle: needles.len(),
    }
}

/// Needles whose first (up to) 8 bytes are kept as a word, so that most candidates are
/// rejected with one masked compare instead of a byte loop.
const PREFIXES: usize = 16;

/// (word, mask) of the first min(8, len) bytes, little-endian.
fn prefix(n: &[u8]) -> (u64, u64) {
    let mut w = [0u8; 8];
    let k = n.len().min(8);
    w[..k].copy_from_slice(&n[..k]);
    let mask = if k == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * k)) - 1
    };
    (u64::from_le_bytes(w), mask)
}

enum Candidates<'t> {
    None,
    One(memchr::Memchr<'t>),
    Two(memchr::Memchr2<'t>),
    Three(memchr::Memchr3<'t>),
    /// More than three distinct first bytes: a byte-by-byte scan with a bit set.
    Scan([u64; 4], usize),
}

/// Iterator returned by [`find_all`].
pub struct FindAll<'t, 'n> {
    text: &'t [u8],
    needles: &'n [&'n str],
    prefixes: [(u64, u64); PREFIXES],
    candidates: Candidates<'t>,
    /// Current candidate offset, the (up to) 8 bytes of text there, and the next needle to try.
    at: usize,
    window: u64,
    next_needle: usize,
}

impl<'t, 'n> FindAll<'t, 'n> {
    #[inline]
    fn next_candidate(&mut self) -> Option<usize> {
        match &mut self.candidates {
            Candidates::None => None,
            Candidates::One(it) => it.next(),
            Candidates::Two(it) => it.next(),
            Candidates::Three(it) => it.next(),
            Candidates::Scan(seen, pos) => {
                let i = *pos
                    + self.text[*pos..]
                        .iter()
                        .position(|&b| seen[(b >> 6) as usize] & (1u64 << (b & 63)) != 0)?;
                *pos = i + 1;
                Some(i)
            }
        }
    }
}

impl Iterator for FindAll<'_, '_> {
    type Item = (usize, usize);

    #[inline]
    fn next(&mut self) -> Option<(usize, usize)> {
        loop {
            while self.next_needle < self.needles.len() {
                let k = self.next_needle;
                self.next_needle += 1;
                let n = self.needles[k].as_bytes();
                if n.is_empty() || self.text.len() - self.at < n.len() {
                    continue;
                }
                if k < PREFIXES {
                    let (word, mask) = self.prefixes[k];
                    if self.window & mask != word {
                        continue;
                    }
                    if n.len() <= 8 || starts_with(&self.text[self.at + 8..], &n[8..]) {
                        return Some((self.at, k));
                    }
                } else if starts_with(&self.text[self.at..], n) {
                    return Some((self.at, k));
                }
            }
            self.at = self.next_candidate()?;
            let rest = &self.text[self.at..];
            self.window = match rest.get(..8) {
                Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
                None => {
                    let mut w = [0u8; 8];
                    w[..rest.len()].copy_from_slice(rest);
                    u64::from_le_bytes(w)
                }
            };
            self.next_needle = 0;
        }
    }
}

/// `h.starts_with(n)` as an inline loop: needles are short, and inside a plugin a `memcmp`
/// call is a call into wasi-libc's byte loop.
#[inline]
fn starts_with(h: &[u8], n: &[u8]) -> bool {
    if h.len() < n.len() {
        return false;
    }
    for i in 0..n.len() {
        if h[i] != n[i] {
            return false;
        }
    }
    true
}

/// Offset of the first `<tag>` (or `</tag>` when `closing`) at or after `from`, without
/// building the needle: a `memchr` scan for `<` and a comparison at each one.
fn find_tag(h: &[u8], from: usize, tag: &[u8], closing: bool) -> Option<usize> {
    let skip = if closing { 2 } else { 1 };
    for i in memchr_iter(b'<', &h[from..]) {
        let at = from + i;
        let rest = &h[at + 1..];
        if (!closing || rest.first() == Some(&b'/'))
            && h.len() > at + skip + tag.len()
            && starts_with(&h[at + skip..], tag)
            && h[at + skip + tag.len()] == b'>'
        {
            return Some(at);
        }
    }
    None
}

/// Content of the LAST `<tag>...</tag>` pair (spanning newlines), trimmed; `None` if absent.
///
/// Matches the non-greedy `<tag>(.*?)</tag>` + "take the last match" idiom of reference reward
/// code: each opening tag pairs with the first closing tag after it.
pub fn last_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let (h, t) = (text.as_bytes(), tag.as_bytes());
    let (open_len, close_len) = (t.len() + 2, t.len() + 3);
    let mut last = None;
    let mut pos = 0;
    while let Some(i) = find_tag(h, pos, t, false) {
        let start = i + open_len;
        match find_tag(h, start, t, true) {
            Some(j) => {
                last = Some(text[start..j].trim());
                pos = j + close_len;
            }
            None => break,
        }
    }
    last
}

/// Content of the FIRST `<tag>...</tag>` pair, trimmed.
pub fn first_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let (h, t) = (text.as_bytes(), tag.as_bytes());
    let start = find_tag(h, 0, t, false)? + t.len() + 2;
    let end = find_tag(h, start, t, true)?;
    Some(text[start..end].trim())
}

/// Number of non-overlapping occurrences of `needle` (e.g. `"<answer>"`).
pub fn count(text: &str, needle: &str) -> usize {
    if needle.is_empty() {
        return 0;
    }
    memmem::find_iter(text.as_bytes(), needle.as_bytes()).count()
}

/// Counts of `<tag>` and `</tag>`.
pub fn count_tag(text: &str, tag: &str) -> (usize, usize) {
    // When the tag holds no `<` (and does not start with `/`), no occurrence of `<tag>` or
    // `</tag>` can overlap another one, and the byte after each `<` tells which of the two
    // could start there: count both in one pass. Otherwise two non-overlapping counts.
    if tag.contains('<') || tag.starts_with('/') {
        return (
            count(text, &format!("<{tag}>")),
            count(text, &format!("</{tag}>")),
        );
    }
    let (h, t) = (text.as_bytes(), tag.as_bytes());
    let (mut open, mut close) = (0, 0);
    for at in memchr_iter(b'<', h) {
        let (skip, closing) = if h.get(at + 1) == Some(&b'/') {
            (2, true)
        } else {
            (1, false)
        };
        if h.len() > at + skip + t.len()
            && starts_with(&h[at + skip..], t)
            && h[at + skip + t.len()] == b'>'
        {
            if closing {
                close += 1;
            } else {
                open += 1;
            }
        }
    }
    (open, close)
}

/// True iff the listed markers each appear exactly once and in this order.
///
/// One pass over `text` for all markers ([`find_all`]). Occurrences of one marker are counted
/// without overlaps, as `str::matches` does.
pub fn exactly_once_in_order(text: &str, markers: &[&str]) -> bool {
    if markers.len() > 64 {
        return once_in_order_slow(text, markers, &mut vec![0; markers.len()]);
    }
    once_in_order_into(text, markers, &mut [0; 64][..markers.len()])
}

/// Offsets of the listed markers when each appears exactly once and in this order (the test
/// of [`exactly_once_in_order`]), `None` otherwise. One pass over `text`. With the offsets, a
/// reward can slice the parts between markers without searching again: e.g. for
/// `["<answer>", "</answer>"]`, `text[at[0] + 8..at[1]]` is the answer.
pub fn once_in_order<const N: usize>(text: &str, markers: &[&str; N]) -> Option<[usize; N]> {
    let mut at = [0; N];
    let ok = if N > 64 {
        once_in_order_slow(text, markers, &mut at)
    } else {
        once_in_order_into(text, markers, &mut at)
    };
    ok.then_some(at)
}

/// Fills `first` (one slot per marker, at most 64) with the offset of each marker; false
/// unless each appears exactly once, in order.
fn once_in_order_into(text: &str, markers: &[&str], first: &mut [usize]) -> bool {
    if markers.iter().any(|m| m.is_empty()) {
        return once_in_order_slow(text, markers, first);
    }
    first.fill(usize::MAX);
    for (at, k) in find_all(text, markers) {
        if first[k] == usize::MAX {
            first[k] = at;
        } else if at >= first[k] + markers[k].len() {
            return false; // a second, non-overlapping occurrence
        }
    }
    let mut last = 0;
    for &at in first.iter() {
        if at == usize::MAX || at < last {
            return false;
        }
        last = at;
    }
    true
}

fn once_in_order_slow(text: &str, markers: &[&str], first: &mut [usize]) -> bool {
    let mut last = 0;
    for (m, slot) in markers.iter().zip(first) {
        let mut hits = text.match_indices(m);
        let Some((at, _)) = hits.next() else {
            return false;
        };
        if hits.next().is_some() || at < last {
            return false;
        }
        last = at;
        *slot = at;
    }
    true
}

/// First number (`\d+(\.\d+)?`) in `text` after removing commas and spaces, as reference
/// reward code does ("1,234 patients" -> 1234). Signs are ignored, like the reference regex.
/// `\d` is Python's: any Unicode decimal digit ([`decimal_digit`]), so "１２０" (full-width)
/// and "١٢٠" (Arabic-Indic) read as 120, as `float(re.search(r"\d+...", s).group())` does.
pub fn first_number(text: &str) -> Option<f64> {
    if !text.is_ascii() {
        return first_number_unicode(text);
    }
    // Work on the bytes with ',' and ' ' skipped (both ASCII, so this is the same as removing
    // those chars first), without allocating the cleaned string.
    let mut it = text
        .as_bytes()
        .iter()
        .copied()
        .filter(|&c| c != b',' && c != b' ')
        .skip_while(|c| !c.is_ascii_digit())
        .peekable();
    let mut buf = [0u8; 64];
    let mut len = 0;
    let mut int: u64 = 0;
    let mut push = |buf: &mut [u8; 64], c: u8| {
        if len < buf.len() {
            buf[len] = c;
        }
        len += 1;
    };
    let mut digits = 0;
    while let Some(&c) = it.peek() {
        if !c.is_ascii_digit() {
            break;
        }
        push(&mut buf, c);
        int = int.wrapping_mul(10).wrapping_add((c - b'0') as u64);
        digits += 1;
        it.next();
    }
    if digits == 0 {
        return None;
    }
    let mut fraction = false;
    if it.peek() == Some(&b'.') {
        it.next();
        if let Some(&c) = it.peek() {
            if c.is_ascii_digit() {
                fraction = true;
                push(&mut buf, b'.');
                while let Some(&c) = it.peek() {
                    if !c.is_ascii_digit() {
                        break;
                    }
                    push(&mut buf, c);
                    it.next();
                }
            }
        }
    }
    if !fraction && digits <= 15 {
        return Some(int as f64); // exact: below 2^53
    }
    if len <= buf.len() {
        return std::str::from_utf8(&buf[..len]).ok()?.parse().ok();
    }
    first_number_slow(text)
}

/// [`first_number`] for text with non-ASCII characters: digits of any script.
fn first_number_unicode(text: &str) -> Option<f64> {
    let chars: Vec<char> = text.chars().filter(|c| *c != ',' && *c != ' ').collect();
    let digit = |i: usize| chars.get(i).copied().and_then(decimal_digit);
    let mut i = (0..chars.len()).find(|&i| digit(i).is_some())?;
    let mut number = String::new();
    while let Some(d) = digit(i) {
        number.push(char::from(b'0' + d as u8));
        i += 1;
    }
    if chars.get(i) == Some(&'.') && digit(i + 1).is_some() {
        number.push('.');
        i += 1;
        while let Some(d) = digit(i) {
            number.push(char::from(b'0' + d as u8));
            i += 1;
        }
    }
    number.parse().ok()
}

/// The first code point of each run of ten Unicode decimal digits (category Nd, values 0-9 in
/// order), as Python 3.11 knows them (Unicode 14.0; generated with `unicodedata.decimal`).
const DECIMAL_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of a Unicode decimal digit (category Nd: '7', '７', '٧', '७', ...), as Python's
/// `float()`, `int()` and the regex `\d` read it; `None` for anything else (including
/// superscripts and Roman numerals, which Python does not take as digits either).
pub fn decimal_digit(c: char) -> Option<u32> {
    let c = c as u32;
    let i = DECIMAL_ZEROS.partition_point(|&z| z <= c);
    let d = c - DECIMAL_ZEROS[i.checked_sub(1)?];
    (d < 10).then_some(d)
}

/// Python's `float(s)` for a `str`, `None` where Python raises `ValueError`: surrounding
/// whitespace (any Unicode space; of the ASCII controls only `\t\n\v\f\r`), an optional
/// sign, decimal digits of any script, `_` only between two digits, an optional fraction and
/// exponent, or `inf` / `infinity` / `nan` in any case. "  12 ", "1_000", "１２０", "1e3", "NaN"
/// and "-Infinity" are numbers; "1,000", "12 patients", "0x10", "" and "1\x1f" are not.
pub fn py_float(s: &str) -> Option<f64> {
    // As CPython: non-ASCII spaces become ' ', non-ASCII digits their ASCII digit, any other
    // non-ASCII character makes the text invalid.
    let mut t = String::with_capacity(s.len());
    for c in s.chars() {
        t.push(if (c as u32) < 127 {
            c
        } else if c.is_whitespace() {
            ' '
        } else {
            char::from(b'0' + decimal_digit(c)? as u8)
        });
    }
    // Underscores only between digits, then dropped.
    let b = t.as_bytes();
    if b.contains(&b'_') {
        for (i, &c) in b.iter().enumerate() {
            if c == b'_'
                && !(i > 0
                    && b[i - 1].is_ascii_digit()
                    && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            {
                return None;
            }
        }
        t.retain(|c| c != '_');
    }
    let t = t.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r'));
    let (sign, body) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(sign * f64::INFINITY);
    }
    if lower == "nan" {
        return Some(f64::NAN);
    }
    // digits [. digits] | . digits, then an optional exponent: checked here, so that Rust's
    // parser (which is correctly rounded, like Python's) only sees Python's grammar.
    let b = body.as_bytes();
    let int = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = int;
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac;
    }
    if int + frac == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    if i != b.len() {
        return None;
    }
    body.parse::<f64>().ok().map(|x| sign * x)
}

fn first_number_slow(text: &str) -> Option<f64> {
    let cleaned: String = text.chars().filter(|c| *c != ',' && *c != ' ').collect();
    let b = cleaned.as_bytes();
    let start = b.iter().position(|c| c.is_ascii_digit())?;
    let mut end = start;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    if end + 1 < b.len() && b[end] == b'.' && b[end + 1].is_ascii_digit() {
        end += 1;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
    }
    cleaned[start..end].parse().ok()
}

/// Length of the longest common subsequence (O(n·m) time, O(m) memory).
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut prev_diag = 0;
        for (j, y) in b.iter().enumerate() {
            let tmp = row[j + 1];
            row[j + 1] = if x == y {
                prev_diag + 1
            } else {
                row[j + 1].max(row[j])
            };
            prev_diag = tmp;
        }
    }
    row[b.len()]
}

fn f1_from_lcs(lcs: usize, n_cand: usize, n_ref: usize) -> f64 {
    if lcs == 0 || n_cand == 0 || n_ref == 0 {
        return 0.0;
    }
    let p = lcs as f64 / n_cand as f64;
    let r = lcs as f64 / n_ref as f64;
    2.0 * p * r / (p + r)
}

/// ROUGE-L F1 over whitespace tokens (lowercased). Quadratic in length: fine for responses of
/// a few hundred tokens; for long texts prefer a cheaper proxy.
pub fn rouge_l_tokens(candidate: &str, reference: &str) -> f64 {
    let c: Vec<String> = candidate
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let r: Vec<String> = reference
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    f1_from_lcs(lcs_len(&c, &r), c.len(), r.len())
}

/// ROUGE-L F1 over characters (useful for languages written without spaces).
pub fn rouge_l_chars(candidate: &str, reference: &str) -> f64 {
    let c: Vec<char> = candidate.chars().collect();
    let r: Vec<char> = reference.chars().collect();
    f1_from_lcs(lcs_len(&c, &r), c.len(), r.len())
}

/// distinct-n: unique n-grams / total n-grams over whitespace tokens (1.0 for no n-grams, so
/// a short answer is not penalized as repetitive).
pub fn distinct_n(text: &str, n: usize) -> f64 {
    let toks: Vec<&str> = text.split_whitespace().collect();
    if n == 0 || toks.len() < n {
        return 1.0;
    }
    let grams: Vec<&[&str]> = toks.windows(n).collect();
    let mut uniq = grams.clone();
    uniq.sort();
    uniq.dedup();
    uniq.len() as f64 / grams.len() as f64
}

/// Drops everything before the first assistant header, as reference parsers do
/// (`Assistant:`, `<|im_start|>assistant`, Llama-3 header). Unchanged if none is present.
pub fn strip_to_assistant(text: &str) -> &str {
    const HEADERS: [&str; 3] = [
        "<|start_header_id|>assistant<|end_header_id|>",
        "<|im_start|>assistant",
        "Assistant:",
    ];
    // One pass for the three headers; the first occurrence of any of them is the earliest.
    match find_all(text, &HEADERS).next() {
        Some((i, k)) => &text[i + HEADERS[k].len()..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let t = "<think>a</think><answer> 1 </answer> x <answer>\n2\n</answer>";
        assert_eq!(last_tag(t, "answer"), Some("2"));
        assert_eq!(first_tag(t, "answer"), Some("1"));
        assert_eq!(last_tag(t, "missing"), None);
        assert_eq!(last_tag("<answer>unclosed", "answer"), None);
        assert_eq!(count_tag(t, "answer"), (2, 2));
        assert!(exactly_once_in_order(
            "<think>x</think><answer>1</answer>",
            &["<think>", "</think>", "<answer>", "</answer>"]
        ));
        assert!(!exactly_once_in_order(
            "<answer>1</answer><think>x</think>",
            &["<think>", "</think>", "<answer>", "</answer>"]
        ));
        assert!(!exactly_once_in_order(t, &["<answer>"]));
    }

    #[test]
    fn numbers() {
        assert_eq!(first_number("about 1,234 patients"), Some(1234.0));
        assert_eq!(first_number("n = 12 .5"), Some(12.5));
        assert_eq!(first_number("3.25.15"), Some(3.25));
        assert_eq!(first_number("7."), Some(7.0));
        assert_eq!(first_number("-40"), Some(40.0));
        assert_eq!(first_number("none"), None);
        // Python's \d: digits of any script (values from Python 3.11's re and float()).
        assert_eq!(first_number("about ١٢٠ participants"), Some(120.0));
        assert_eq!(first_number("n = １,２０.５"), Some(120.5));
        assert_eq!(first_number("总计 1٢3 例"), Some(123.0));
        assert_eq!(first_number("²3"), Some(3.0));
        assert_eq!(first_number("约 ۸۰ 人"), Some(80.0));
        assert_eq!(first_number("无"), None);
    }

    #[test]
    fn python_float() {
        // (text, Python 3.11's float(text) or None where it raises ValueError)
        for (t, want) in [
            ("12", Some(12.0)),
            ("  12.5\n", Some(12.5)),
            ("1_000", Some(1000.0)),
            ("1__0", None),
            ("_1", None),
            ("1_", None),
            ("1e3", Some(1000.0)),
            ("1.e3", Some(1000.0)),
            (".5", Some(0.5)),
            ("-.e5", None),
            ("+7", Some(7.0)),
            ("１２０", Some(120.0)),
            ("١٢٣", Some(123.0)),
            ("1_٢", Some(12.0)),
            ("\u{3000}12\u{a0}", Some(12.0)),
            ("1\x1f", None),
            ("1\x0b", Some(1.0)),
            ("inf", Some(f64::INFINITY)),
            ("-Infinity", Some(f64::NEG_INFINITY)),
            ("infinit", None),
            ("1e400", Some(f64::INFINITY)),
            ("1,000", None),
            ("12 patients", None),
            ("0x10", None),
            ("", None),
            ("   ", None),
            ("²", None),
            ("Ⅳ", None),
            ("1\x00", None),
        ] {
            assert_eq!(py_float(t), want, "{t:?}");
        }
        assert!(py_float(" NaN ").unwrap().is_nan() && py_float("-nan").unwrap().is_nan());
        assert_eq!(py_float("-0").map(f64::to_bits), Some((-0.0f64).to_bits()));
        assert_eq!(decimal_digit('7'), Some(7));
        assert_eq!(decimal_digit('\u{1D7CE}'), Some(0));
        assert_eq!(decimal_digit('\u{1FBF9}'), Some(9));
        assert_eq!(decimal_digit('/'), None);
        assert_eq!(decimal_digit(':'), None);
    }

    #[test]
    fn rouge() {
        assert_eq!(rouge_l_tokens("the cat sat", "the cat sat"), 1.0);
        assert_eq!(rouge_l_tokens("", "x"), 0.0);
        // LCS("the cat on the mat","the cat sat on mat") = the cat on mat = 4; p=4/5, r=4/5.
        assert!((rouge_l_tokens("the cat on the mat", "the cat sat on mat") - 0.8).abs() < 1e-12);
        assert!((rouge_l_chars("abcd", "abed") - 0.75).abs() < 1e-12);
        assert_eq!(lcs_len(&[1, 2, 3], &[3, 2, 1]), 1);
    }

    #[test]
    fn distinct() {
        assert_eq!(distinct_n("a b c d", 1), 1.0);
        assert_eq!(distinct_n("a a a a", 1), 0.25);
        assert!((distinct_n("a b a b", 2) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(distinct_n("a", 2), 1.0);
    }

    #[test]
    fn assistant_header() {
        assert_eq!(strip_to_assistant("User: hi Assistant: yes"), " yes");
        assert_eq!(strip_to_assistant("<|im_start|>assistant\nok"), "\nok");
        assert_eq!(strip_to_assistant("plain"), "plain");
    }

    /// The straightforward implementations the fast helpers replaced; the fast ones must agree
    /// with them on every input.
    mod reference {
        pub fn last_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            let mut last = None;
            let mut pos = 0;
            while let Some(i) = text[pos..].find(&open) {
                let start = pos + i + open.len();
                match text[start..].find(&close) {
                    Some(j) => {
                        last = Some(text[start..start + j].trim());
                        pos = start + j + close.len();
                    }
                    None => break,
                }
            }
            last
        }
        pub fn first_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find(&close)?;
            Some(text[start..start + end].trim())
        }
        pub fn count(text: &str, needle: &str) -> usize {
            if needle.is_empty() {
                return 0;
            }
            text.matches(needle).count()
        }
        pub fn strip_to_assistant(text: &str) -> &str {
            const HEADERS: [&str; 3] = [
                "<|start_header_id|>assistant<|end_header_id|>",
                "<|im_start|>assistant",
                "Assistant:",
            ];
            HEADERS
                .iter()
                .filter_map(|h| text.find(h).map(|i| (i, h.len())))
                .min_by_key(|(i, _)| *i)
                .map(|(i, n)| &text[i + n..])
                .unwrap_or(text)
        }
    }

    /// Random texts built from fragments that stress the helpers: tags, partial tags, nested
    /// and overlapping markers, headers, numbers with commas and spaces, multi-byte chars.
    fn random_texts(n: usize) -> Vec<String> {
        const FRAGS: [&str; 34] = [
            "<think>",
            "</think>",
            "<answer>",
            "</answer>",
            "<answer",
            "</answer",
            "<",
            ">",
            "/",
            "<<answer>>",
            "</</answer>",
            "a",
            "b",
            " ",
            ",",
            ".",
            "1",
            "23",
            "4,5",
            " 6 .7",
            "é",
            "日本",
            "\n",
            "Assistant:",
            "<|im_start|>assistant",
            "<|start_header_id|>",
            "assistant<|end_header_id|>",
            "aa",
            "<a><a>",
            "<a>",
            "</a>",
            "<ab>",
            "x</ab>",
            "0.",
        ];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        (0..n)
            .map(|_| {
                let len = next() % 24;
                (0..len).map(|_| FRAGS[next() % FRAGS.len()]).collect()
            })
            .collect()
    }

    #[test]
    fn fast_helpers_match_reference() {
        let tags = ["answer", "think", "a", "a><a", "/a", "", "ab", "<a"];
        let needles = [
            "<answer>",
            "</answer>",
            "aa",
            "<a><a>",
            "a",
            ",",
            "<",
            "Assistant:",
            "",
        ];
        let marker_sets: [&[&str]; 5] = [
            &["<think>", "</think>", "<answer>", "</answer>"],
            &["<answer>"],
            &["aa", "<a>"],
            &["<a><a>", "a"],
            &["", "<"],
        ];
        for t in random_texts(20_000) {
            assert_eq!(
                strip_to_assistant(&t),
                reference::strip_to_assistant(&t),
                "{t:?}"
            );
            assert_eq!(first_number(&t), first_number_slow(&t), "{t:?}");
            for tag in tags {
                assert_eq!(
                    last_tag(&t, tag),
                    reference::last_tag(&t, tag),
                    "{t:?} {tag:?}"
                );
                assert_eq!(
                    first_tag(&t, tag),
                    reference::first_tag(&t, tag),
                    "{t:?} {tag:?}"
                );
                let want = (
                    reference::count(&t, &format!("<{tag}>")),
                    reference::count(&t, &format!("</{tag}>")),
                );
                assert_eq!(count_tag(&t, tag), want, "{t:?} {tag:?}");
            }
            for n in needles {
                assert_eq!(count(&t, n), reference::count(&t, n), "{t:?} {n:?}");
            }
            for m in marker_sets {
                let mut want = vec![0; m.len()];
                let ok = once_in_order_slow(&t, m, &mut want);
                assert_eq!(exactly_once_in_order(&t, m), ok, "{t:?} {m:?}");
                if m.len() == 4 {
                    let m4: &[&str; 4] = m.try_into().unwrap();
                    assert_eq!(
                        once_in_order(&t, m4).map(|a| a.to_vec()),
                        ok.then_some(want),
                        "{t:?}"
                    );
                }
            }
            // find_all reports exactly the (overlapping) occurrences of each needle, in order.
            let got: Vec<(usize, usize)> = find_all(&t, &needles).collect();
            let mut want = Vec::new();
            for at in 0..=t.len() {
                for (k, n) in needles.iter().enumerate() {
                    if !n.is_empty() && t.as_bytes()[at..].starts_with(n.as_bytes()) {
                        want.push((at, k));
                    }
                }
            }
            assert_eq!(got, want, "{t:?}");
        }
    }

    #[test]
    fn long_numbers() {
        assert_eq!(
            first_number("12345678901234567890"),
            Some(12345678901234567890.0)
        );
        assert_eq!(first_number("x 0.1"), Some(0.1));
        let long = format!("{}.5", "9".repeat(100));
        assert_eq!(first_number(&long), long.parse().ok());
    }
}
