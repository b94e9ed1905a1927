//! Text helpers shared by reward plugins. Plain Rust: they build and test natively as well as
//! inside a plugin, so reward logic can be unit-tested without a WebAssembly runtime.

/// Content of the LAST `<tag>...</tag>` pair (spanning newlines), trimmed; `None` if absent.
///
/// Matches the non-greedy `<tag>(.*?)</tag>` + "take the last match" idiom of reference reward
/// code: each opening tag pairs with the first closing tag after it.
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

/// Content of the FIRST `<tag>...</tag>` pair, trimmed.
pub fn first_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)?;
    Some(text[start..start + end].trim())
}

/// Number of non-overlapping occurrences of `needle` (e.g. `"<answer>"`).
pub fn count(text: &str, needle: &str) -> usize {
    if needle.is_empty() {
        return 0;
    }
    text.matches(needle).count()
}

/// Counts of `<tag>` and `</tag>`.
pub fn count_tag(text: &str, tag: &str) -> (usize, usize) {
    (
        count(text, &format!("<{tag}>")),
        count(text, &format!("</{tag}>")),
    )
}

/// True iff the listed markers each appear exactly once and in this order.
pub fn exactly_once_in_order(text: &str, markers: &[&str]) -> bool {
    let mut last = 0;
    for m in markers {
        // One pass per marker: position of the first match, and whether there is a second.
        let mut hits = text.match_indices(m);
        let Some((at, _)) = hits.next() else {
            return false;
        };
        if hits.next().is_some() || at < last {
            return false;
        }
        last = at;
    }
    true
}

/// First number (`\d+(\.\d+)?`) in `text` after removing commas and spaces, as reference
/// reward code does ("1,234 patients" -> 1234). Signs are ignored, like the reference regex.
pub fn first_number(text: &str) -> Option<f64> {
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
    HEADERS
        .iter()
        .filter_map(|h| text.find(h).map(|i| (i, h.len())))
        .min_by_key(|(i, _)| *i)
        .map(|(i, n)| &text[i + n..])
        .unwrap_or(text)
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
}
