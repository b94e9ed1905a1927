//! PubMed-style query text to a tantivy query, leniently: any text a policy model writes gives
//! a query (possibly one that matches nothing), never a parse error.
//!
//! What is understood, following PubMed's search syntax:
//! - `AND`, `OR`, `NOT` (uppercase, as PubMed requires; lowercase ones are ordinary words, and
//!   stop words). Terms next to each other are ANDed. Operators apply **left to right without
//!   precedence**, as in PubMed: `a OR b AND c` is `(a OR b) AND c`. `a NOT b` is a and not b.
//! - Parentheses group; a missing `)` closes at the end, a stray `)` is ignored.
//! - `"double quotes"` make a phrase (an unclosed quote runs to the end of the query). A single
//!   word that analyzes to several tokens (`covid-19`, `type-2`) is a phrase too.
//! - Field tags in brackets after a term, phrase or group: `[ti]` / `[title]` search the title
//!   only, `[ab]` / `[abstract]` the abstract only; every other tag (`[tiab]`, `[tw]`, `[mh]`,
//!   `[MeSH Terms]`, `[pt]`, ...) searches both, since the index has no MeSH or publication
//!   type fields and the words are the best evidence left.
//! - Lucene-style `title:word`, `abstract:word` (`ti:`, `ab:`, `tiab:`) scope one word the same
//!   way; other `x:y` words are split at the colon like any punctuation.
//! - A trailing `*` (truncation) is dropped: the stemmer already joins most word forms.
//! - Everything else (`^`, `+`, `~`, `/`, other punctuation) is a word separator.
//!
//! Dangling operators (`AND OR`, a leading `NOT`) are ignored. A negation alone matches
//! nothing (PubMed refuses it). To bound the work a hostile query can cause, a query keeps at
//! most [`MAX_TERMS`] terms and [`MAX_DEPTH`] levels of nesting (operators beyond that depth
//! join the enclosing group), its first [`MAX_QUERY_BYTES`] bytes, at most
//! [`MAX_PHRASE_TOKENS`] words of each phrase and [`MAX_TOKENS`] words in all: a term counts
//! once however many words its phrase holds, so the words are bounded on their own.

use tantivy::query::{BooleanQuery, BoostQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::Term;

use super::analyzer;

/// Terms (words and phrases) kept from one query.
pub const MAX_TERMS: usize = 256;
/// Nesting levels (parentheses and changes of operator) kept from one query.
pub const MAX_DEPTH: usize = 16;
/// Bytes of query text read; the rest is ignored (cut at a character boundary).
pub const MAX_QUERY_BYTES: usize = 64 << 10;
/// Words kept from one phrase (its first ones).
pub const MAX_PHRASE_TOKENS: usize = 32;
/// Words kept over all terms of one query; terms past it are dropped.
pub const MAX_TOKENS: usize = 1024;

/// Which fields a term searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Both,
    Title,
    Abstract,
}

impl Scope {
    fn from_tag(tag: &str) -> Scope {
        match tag.trim().to_ascii_lowercase().as_str() {
            "ti" | "title" => Scope::Title,
            "ab" | "abstract" => Scope::Abstract,
            _ => Scope::Both,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    And,
    Or,
    Not,
}

#[derive(Debug, Clone, PartialEq)]
enum Lex {
    Open,
    Close,
    Op(Op),
    Word(String),
    Phrase(String),
    Tag(String),
}

fn lex(q: &str) -> Vec<Lex> {
    let mut out = Vec::new();
    let mut chars = q.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            _ if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Lex::Open);
            }
            ')' => {
                chars.next();
                out.push(Lex::Close);
            }
            '"' | '[' => {
                chars.next();
                let close = if c == '"' { '"' } else { ']' };
                let start = i + 1;
                let mut end = q.len();
                for (j, d) in chars.by_ref() {
                    if d == close {
                        end = j;
                        break;
                    }
                }
                let inner = q[start..end].to_string();
                out.push(if c == '"' { Lex::Phrase(inner) } else { Lex::Tag(inner) });
            }
            _ => {
                let start = i;
                let mut end = q.len();
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_whitespace() || "()\"[".contains(d) {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                let w = &q[start..end];
                out.push(match w {
                    "AND" => Lex::Op(Op::And),
                    "OR" => Lex::Op(Op::Or),
                    "NOT" => Lex::Op(Op::Not),
                    _ => Lex::Word(w.trim_end_matches('*').to_string()),
                });
            }
        }
    }
    out
}

/// The parsed query: leaves are analyzed token lists (one token: a term; several: a phrase).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Leaf { tokens: Vec<(usize, String)>, scope: Scope },
    And(Vec<Node>),
    Or(Vec<Node>),
    /// Matches the first and not the second.
    AndNot(Box<Node>, Box<Node>),
}

impl Node {
    fn depth(&self) -> usize {
        match self {
            Node::Leaf { .. } => 0,
            Node::And(v) | Node::Or(v) => 1 + v.iter().map(Node::depth).max().unwrap_or(0),
            Node::AndNot(a, b) => 1 + a.depth().max(b.depth()),
        }
    }
    fn set_scope(&mut self, s: Scope) {
        match self {
            Node::Leaf { scope, .. } => *scope = s,
            Node::And(v) | Node::Or(v) => v.iter_mut().for_each(|n| n.set_scope(s)),
            Node::AndNot(a, b) => {
                a.set_scope(s);
                b.set_scope(s);
            }
        }
    }
}

struct Parser<'a> {
    toks: Vec<Lex>,
    pos: usize,
    terms: usize,
    tokens: usize,
    analyzer: &'a mut TextAnalyzer,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Lex> {
        self.toks.get(self.pos)
    }

    /// `operand (op? operand)*`, folded left to right, until `)` (when nested) or the end.
    fn sequence(&mut self, level: usize) -> Option<Node> {
        let mut acc: Option<Node> = None;
        let mut pending: Option<Op> = None;
        while let Some(t) = self.peek().cloned() {
            match t {
                Lex::Close if level > 0 => {
                    self.pos += 1;
                    break;
                }
                Lex::Close | Lex::Tag(_) => self.pos += 1, // stray: ignored
                Lex::Op(op) => {
                    self.pos += 1;
                    // The last of several operators in a row wins (`AND OR` is OR); a leading
                    // one has nothing on its left and is dropped, except NOT which then
                    // negates nothing and makes the operand match nothing below.
                    if acc.is_some() || op == Op::Not {
                        pending = Some(op);
                    }
                }
                Lex::Open | Lex::Word(_) | Lex::Phrase(_) => {
                    let operand = self.operand(level);
                    let op = pending.take().unwrap_or(Op::And);
                    acc = combine(acc, op, operand);
                }
            }
        }
        acc
    }

    /// A word, a phrase or a parenthesized group, with the field tags that follow it.
    fn operand(&mut self, level: usize) -> Option<Node> {
        let t = self.toks[self.pos].clone();
        self.pos += 1;
        let mut node = match t {
            Lex::Open if level < MAX_DEPTH => self.sequence(level + 1),
            // Too deep: the parenthesis is ignored and the group's contents join this level.
            Lex::Open => None,
            Lex::Word(w) => match field_prefix(&w) {
                Some((scope, rest)) => self.leaf(rest).map(|mut n| {
                    n.set_scope(scope);
                    n
                }),
                None => self.leaf(&w),
            },
            Lex::Phrase(w) => self.leaf(&w),
            _ => None,
        };
        while let Some(Lex::Tag(tag)) = self.peek().cloned() {
            self.pos += 1;
            if let Some(n) = node.as_mut() {
                n.set_scope(Scope::from_tag(&tag));
            }
        }
        node
    }

    fn leaf(&mut self, text: &str) -> Option<Node> {
        if self.terms >= MAX_TERMS {
            return None;
        }
        let mut tokens = analyzer::tokens(self.analyzer, text);
        tokens.truncate(MAX_PHRASE_TOKENS.min(MAX_TOKENS - self.tokens));
        if tokens.is_empty() {
            return None;
        }
        self.terms += 1;
        self.tokens += tokens.len();
        let first = tokens[0].0;
        let tokens = tokens.into_iter().map(|(p, t)| (p - first, t)).collect();
        Some(Node::Leaf { tokens, scope: Scope::Both })
    }
}

/// Lucene-style `title:word` / `abstract:word` (models write it too): the scope and the rest.
fn field_prefix(word: &str) -> Option<(Scope, &str)> {
    let (field, rest) = word.split_once(':')?;
    match field.to_ascii_lowercase().as_str() {
        "title" | "ti" => Some((Scope::Title, rest)),
        "abstract" | "ab" => Some((Scope::Abstract, rest)),
        "tiab" | "text" | "all" => Some((Scope::Both, rest)),
        _ => None,
    }
}

/// `acc op operand`, flattening runs of the same operator; `None` operands drop out.
fn combine(acc: Option<Node>, op: Op, operand: Option<Node>) -> Option<Node> {
    let Some(acc) = acc else {
        // Nothing on the left: `NOT x` matches nothing, a plain operand stands alone.
        return if op == Op::Not { Some(Node::Or(vec![])) } else { operand };
    };
    let Some(rhs) = operand else { return Some(acc) };
    let op = if acc.depth() >= MAX_DEPTH {
        // Bound the nesting: join the top-level operator of `acc` instead of wrapping it.
        match &acc {
            Node::Or(_) => Op::Or,
            _ => Op::And,
        }
    } else {
        op
    };
    Some(match (op, acc) {
        (Op::And, Node::And(mut v)) => {
            v.push(rhs);
            Node::And(v)
        }
        (Op::And, a) => Node::And(vec![a, rhs]),
        (Op::Or, Node::Or(mut v)) if !v.is_empty() => {
            v.push(rhs);
            Node::Or(v)
        }
        (Op::Or, a) => Node::Or(vec![a, rhs]),
        (Op::Not, a) => Node::AndNot(Box::new(a), Box::new(rhs)),
    })
}

/// Parse `query` (see the module docs). `None` when it holds no searchable term.
pub fn parse(query: &str, analyzer: &mut TextAnalyzer) -> Option<Node> {
    let mut end = query.len().min(MAX_QUERY_BYTES);
    while !query.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Parser { toks: lex(&query[..end]), pos: 0, terms: 0, tokens: 0, analyzer };
    p.sequence(0)
}

/// The fields a query runs against and the title's weight.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub title: Field,
    pub abstract_: Field,
    pub title_boost: f32,
}

fn field_query(field: Field, tokens: &[(usize, String)]) -> Box<dyn Query> {
    if tokens.len() == 1 {
        let term = Term::from_field_text(field, &tokens[0].1);
        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))
    } else {
        let terms = tokens.iter().map(|(p, t)| (*p, Term::from_field_text(field, t))).collect();
        Box::new(PhraseQuery::new_with_offset(terms))
    }
}

/// The tantivy query of a parsed node: a leaf searches its fields (title boosted), AND is all
/// must, OR all should (a document matching more alternatives scores higher), NOT a must-not.
pub fn to_query(node: &Node, f: &Fields) -> Box<dyn Query> {
    match node {
        Node::Leaf { tokens, scope } => {
            let title = || -> Box<dyn Query> { Box::new(BoostQuery::new(field_query(f.title, tokens), f.title_boost)) };
            match scope {
                Scope::Title => title(),
                Scope::Abstract => field_query(f.abstract_, tokens),
                Scope::Both => Box::new(BooleanQuery::new(vec![(Occur::Should, title()), (Occur::Should, field_query(f.abstract_, tokens))])),
            }
        }
        Node::And(v) => Box::new(BooleanQuery::new(v.iter().map(|n| (Occur::Must, to_query(n, f))).collect())),
        // An empty OR (a lone negation) is a boolean query without clauses: it matches nothing.
        Node::Or(v) => Box::new(BooleanQuery::new(v.iter().map(|n| (Occur::Should, to_query(n, f))).collect())),
        Node::AndNot(a, b) => Box::new(BooleanQuery::new(vec![(Occur::Must, to_query(a, f)), (Occur::MustNot, to_query(b, f))])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Option<Node> {
        parse(q, &mut analyzer::analyzer())
    }
    fn leaf(words: &[&str]) -> Node {
        let tokens = words.iter().enumerate().map(|(i, w)| (i, w.to_string())).collect();
        Node::Leaf { tokens, scope: Scope::Both }
    }

    #[test]
    fn pubmed_syntax() {
        // Left to right, no precedence.
        assert_eq!(p("iron OR ferrous AND pregnancy"), Some(Node::And(vec![Node::Or(vec![leaf(&["iron"]), leaf(&["ferrous"])]), leaf(&["pregnanc"])])));
        assert_eq!(p("iron NOT anaemia"), Some(Node::AndNot(Box::new(leaf(&["iron"])), Box::new(leaf(&["anaemia"])))));
        assert_eq!(p("\"heart failure\" trials"), Some(Node::And(vec![leaf(&["heart", "failur"]), leaf(&["trial"])])));
        let mut t = leaf(&["aspirin"]);
        t.set_scope(Scope::Title);
        assert_eq!(p("aspirin[ti]"), Some(t));
        let g = p("(aspirin OR clopidogrel)[ab] stroke[tiab]").unwrap();
        let Node::And(v) = g else { panic!() };
        assert!(matches!(&v[0], Node::Or(o) if o.iter().all(|n| matches!(n, Node::Leaf { scope: Scope::Abstract, .. }))));
        assert!(matches!(&v[1], Node::Leaf { scope: Scope::Both, .. }));
        // Truncation is dropped, a hyphenated word is a phrase.
        assert_eq!(p("diabet*"), Some(leaf(&["diabet"])));
        assert_eq!(p("covid-19"), Some(leaf(&["covid", "19"])));
        let mut t = leaf(&["aspirin"]);
        t.set_scope(Scope::Title);
        assert_eq!(p("title:aspirin"), Some(t));
        assert_eq!(p("dose:response"), Some(leaf(&["dose", "respons"])));
    }

    #[test]
    fn hostile_text_parses() {
        for q in ["\"", "(((", ")))", "AND OR", "NOT", "title:", "[tiab]", "*", "the of"] {
            let n = p(q);
            assert!(n.is_none() || n == Some(Node::Or(vec![])), "{q}: {n:?}");
        }
        assert_eq!(p("AND OR aspirin"), Some(leaf(&["aspirin"])));
        assert_eq!(p("aspirin AND"), Some(leaf(&["aspirin"])));
        assert_eq!(p("(aspirin"), Some(leaf(&["aspirin"])));
        assert_eq!(p("aspirin)"), Some(leaf(&["aspirin"])));
        assert_eq!(p("NOT aspirin"), Some(Node::Or(vec![])));
        // Deep nesting and alternating operators stay bounded.
        let deep = format!("{}x{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(p(&deep), Some(leaf(&["x"])));
        let alt = (0..3000).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" OR a AND ");
        let n = p(&alt).unwrap();
        assert!(n.depth() <= MAX_DEPTH + 1, "{}", n.depth());
        let mut leaves = 0;
        fn count(n: &Node, c: &mut usize) {
            match n {
                Node::Leaf { .. } => *c += 1,
                Node::And(v) | Node::Or(v) => v.iter().for_each(|m| count(m, c)),
                Node::AndNot(a, b) => {
                    count(a, c);
                    count(b, c)
                }
            }
        }
        count(&n, &mut leaves);
        assert_eq!(leaves, MAX_TERMS);
    }

    /// A term counts once however many words its phrase holds: a 300,000-word phrase (issue
    /// 14: 86 s and 1.2 GiB in one `search` call) keeps its first MAX_PHRASE_TOKENS words, and
    /// many long phrases stop at MAX_TOKENS words in all.
    #[test]
    fn phrase_words_are_bounded() {
        fn words(n: &Node) -> usize {
            match n {
                Node::Leaf { tokens, .. } => tokens.len(),
                Node::And(v) | Node::Or(v) => v.iter().map(words).sum(),
                Node::AndNot(a, b) => words(a) + words(b),
            }
        }
        let phrase = |n: usize, tag: &str| format!("\"{}\"", (0..n).map(|i| format!("{tag}{i}x")).collect::<Vec<_>>().join(" "));
        let t = std::time::Instant::now();
        let n = p(&phrase(300_000, "w")).unwrap();
        assert_eq!(words(&n), MAX_PHRASE_TOKENS);
        let many = (0..200).map(|i| phrase(40, &format!("p{i}w"))).collect::<Vec<_>>().join(" OR ");
        let n = p(&many).unwrap();
        assert_eq!(words(&n), MAX_TOKENS);
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{:?}", t.elapsed());
    }
}
