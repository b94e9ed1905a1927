//! The Python behaviour HCC-ClinReasoner's reference reward relies on, reproduced so that
//! `reference` mode scores what the Python code scores: `bytes.decode('unicode_escape')`,
//! `json.loads` (NaN/Infinity, dict order and duplicate keys), a subset of `ast.literal_eval`,
//! `float()` of strings, `str()` of values, and `str.strip()`.
//!
//! Known gaps (documented, not tested): `\N{NAME}` escapes and lone surrogates count as decode
//! errors; `ast.literal_eval` supports dicts, lists, tuples, sets, quoted strings (no triple
//! quotes or prefixes), ints (with `_`, 0x/0o/0b), floats, True/False/None and unary +/-;
//! integers beyond i64 become floats.

#![allow(clippy::result_unit_err)] // Python raises; which error does not matter here.

use medrl_reward_sdk::{serde_json, Value};

/// A Python value as `json.loads` / `ast.literal_eval` build it.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Py>),
    /// Tuples and sets are kept as lists (only dicts matter to the reward).
    Dict(Vec<(Py, Py)>),
}

impl Py {
    /// `d.get(key)` for a dict, `None` otherwise.
    pub fn get(&self, key: &str) -> Option<&Py> {
        match self {
            Py::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn is_dict(&self) -> bool {
        matches!(self, Py::Dict(_))
    }

    /// The value as JSON (non-finite floats become null; dict keys become their `str()`).
    pub fn to_json(&self) -> Value {
        match self {
            Py::None => Value::Null,
            Py::Bool(b) => Value::Bool(*b),
            Py::Int(i) => Value::from(*i),
            Py::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Py::Str(s) => Value::String(s.clone()),
            Py::List(l) => Value::Array(l.iter().map(Py::to_json).collect()),
            Py::Dict(d) => Value::Object(d.iter().map(|(k, v)| (py_str(k), v.to_json())).collect()),
        }
    }

    pub fn from_json(v: &Value) -> Py {
        match v {
            Value::Null => Py::None,
            Value::Bool(b) => Py::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Py::Int(i),
                None if n.is_u64() => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
                None => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Py::Str(s.clone()),
            Value::Array(a) => Py::List(a.iter().map(Py::from_json).collect()),
            Value::Object(m) => Py::Dict(
                m.iter()
                    .map(|(k, v)| (Py::Str(k.clone()), Py::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Python's `str.isspace()` for one character.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

// ---------------------------------------------------------------------------------------------
// str()

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let e = format!("{x:e}"); // shortest round-trip digits, e.g. "-1.2345e-7"
    let (mant, exp) = e.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let s = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point >= n {
            format!("{}{}.0", digits, "0".repeat((point - n) as usize))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{s}")
    } else {
        let m = if n > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let es = if exp < 0 { "-" } else { "+" };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

fn str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c)
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

fn repr(v: &Py) -> String {
    match v {
        Py::Str(s) => str_repr(s),
        other => py_str(other),
    }
}

/// Python's `str()`.
pub fn py_str(v: &Py) -> String {
    match v {
        Py::None => "None".into(),
        Py::Bool(b) => if *b { "True" } else { "False" }.into(),
        Py::Int(i) => i.to_string(),
        Py::Float(f) => float_repr(*f),
        Py::Str(s) => s.clone(),
        Py::List(l) => format!("[{}]", l.iter().map(repr).collect::<Vec<_>>().join(", ")),
        Py::Dict(d) => format!(
            "{{{}}}",
            d.iter()
                .map(|(k, v)| format!("{}: {}", repr(k), repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// float(), int(float()), and the reference's 0/1 flag parser

/// Python's `float(s)` for a string (digits of any script, `_` between digits, only ASCII
/// `\t\n\v\f\r` among the control characters stripped: see `helpers::py_float`).
pub fn float_of_str(s: &str) -> Option<f64> {
    medrl_reward_sdk::helpers::py_float(s)
}

/// Python's `float(v)`; `None` where Python raises.
pub fn float_of(v: &Py) -> Option<f64> {
    match v {
        Py::Bool(b) => Some(*b as u8 as f64),
        Py::Int(i) => Some(*i as f64),
        Py::Float(f) => Some(*f),
        Py::Str(s) => float_of_str(s),
        _ => None,
    }
}

/// The reference's `_safe_to_int`: `int(float(x))`, `None` on any failure.
pub fn safe_to_int(v: Option<&Py>) -> Option<f64> {
    match v {
        None | Some(Py::None) => None,
        Some(v) => float_of(v).filter(|f| f.is_finite()).map(f64::trunc),
    }
}

/// The reference's `_safe_to_01_or_none`.
pub fn safe_to_01(v: Option<&Py>) -> Option<u8> {
    match v? {
        Py::None => None,
        Py::Bool(b) => Some(*b as u8),
        Py::Int(i) => match i {
            0 => Some(0),
            1 => Some(1),
            _ => None,
        },
        Py::Float(f) => {
            if *f == 0.0 {
                Some(0)
            } else if *f == 1.0 {
                Some(1)
            } else {
                None
            }
        }
        Py::Str(s) => match py_strip(s).to_lowercase().as_str() {
            "0" | "false" => Some(0),
            "1" | "true" => Some(1),
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// bytes.decode('unicode_escape')

fn hex(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| s.bytes().all(|c| c.is_ascii_hexdigit()))
        .and_then(|s| u32::from_str_radix(s, 16).ok())
}

/// `s.encode().decode('unicode_escape')`: backslash escapes are interpreted and every other
/// byte of the UTF-8 text becomes the Latin-1 character of that byte (so non-ASCII text turns
/// into mojibake, as in the reference). `Err` where Python raises `UnicodeDecodeError`.
pub fn unicode_escape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        if c != b'\\' {
            out.push(c as char);
            continue;
        }
        let Some(&e) = b.get(i) else {
            return Err("\\ at end of string".into());
        };
        i += 1;
        let simple = match e {
            b'\n' => Some(None),
            b'\\' => Some(Some('\\')),
            b'\'' => Some(Some('\'')),
            b'"' => Some(Some('"')),
            b'a' => Some(Some('\u{7}')),
            b'b' => Some(Some('\u{8}')),
            b'f' => Some(Some('\u{c}')),
            b'n' => Some(Some('\n')),
            b'r' => Some(Some('\r')),
            b't' => Some(Some('\t')),
            b'v' => Some(Some('\u{b}')),
            _ => None,
        };
        if let Some(ch) = simple {
            out.extend(ch);
            continue;
        }
        match e {
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match b.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(char::from_u32(v).ok_or("bad octal escape")?);
            }
            b'x' | b'u' | b'U' => {
                let n = match e {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let v = b
                    .get(i..i + n)
                    .and_then(hex)
                    .ok_or_else(|| format!("truncated \\{} escape", e as char))?;
                i += n;
                out.push(char::from_u32(v).ok_or("illegal Unicode character (or surrogate)")?);
            }
            b'N' => return Err("\\N{...} escapes are not supported".into()),
            other => {
                out.push('\\');
                out.push(other as char);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// json.loads

struct Cursor<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            s: text.as_bytes(),
            text,
            i: 0,
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
    fn json_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
}

fn dict_insert(items: &mut Vec<(Py, Py)>, k: Py, v: Py) {
    match items.iter_mut().find(|(key, _)| *key == k) {
        Some(slot) => slot.1 = v,
        None => items.push((k, v)),
    }
}

/// Python's `json.loads` (strict mode, NaN/Infinity accepted).
pub fn json_loads(text: &str) -> Result<Py, ()> {
    let mut c = Cursor::new(text);
    c.json_ws();
    let v = json_value(&mut c, 0)?;
    c.json_ws();
    if c.i != c.s.len() {
        return Err(());
    }
    Ok(v)
}

fn json_value(c: &mut Cursor, depth: usize) -> Result<Py, ()> {
    if depth > 500 {
        return Err(());
    }
    match c.peek().ok_or(())? {
        b'{' => {
            c.i += 1;
            let mut items = Vec::new();
            c.json_ws();
            if c.eat("}") {
                return Ok(Py::Dict(items));
            }
            loop {
                c.json_ws();
                if c.peek() != Some(b'"') {
                    return Err(());
                }
                let k = json_string(c)?;
                c.json_ws();
                if !c.eat(":") {
                    return Err(());
                }
                c.json_ws();
                let v = json_value(c, depth + 1)?;
                dict_insert(&mut items, Py::Str(k), v);
                c.json_ws();
                if c.eat(",") {
                    continue;
                }
                if c.eat("}") {
                    return Ok(Py::Dict(items));
                }
                return Err(());
            }
        }
        b'[' => {
            c.i += 1;
            let mut items = Vec::new();
            c.json_ws();
            if c.eat("]") {
                return Ok(Py::List(items));
            }
            loop {
                c.json_ws();
                items.push(json_value(c, depth + 1)?);
                c.json_ws();
                if c.eat(",") {
                    continue;
                }
                if c.eat("]") {
                    return Ok(Py::List(items));
                }
                return Err(());
            }
        }
        b'"' => json_string(c).map(Py::Str),
        _ => {
            for (lit, v) in [
                ("null", Py::None),
                ("true", Py::Bool(true)),
                ("false", Py::Bool(false)),
                ("NaN", Py::Float(f64::NAN)),
                ("Infinity", Py::Float(f64::INFINITY)),
                ("-Infinity", Py::Float(f64::NEG_INFINITY)),
            ] {
                if c.eat(lit) {
                    return Ok(v);
                }
            }
            json_number(c)
        }
    }
}

fn json_number(c: &mut Cursor) -> Result<Py, ()> {
    let start = c.i;
    c.eat("-");
    match c.peek() {
        Some(b'0') => c.i += 1,
        Some(b'1'..=b'9') => {
            while matches!(c.peek(), Some(b'0'..=b'9')) {
                c.i += 1
            }
        }
        _ => return Err(()),
    }
    let mut is_float = false;
    if c.peek() == Some(b'.') && matches!(c.s.get(c.i + 1), Some(b'0'..=b'9')) {
        is_float = true;
        c.i += 1;
        while matches!(c.peek(), Some(b'0'..=b'9')) {
            c.i += 1
        }
    }
    if matches!(c.peek(), Some(b'e' | b'E')) {
        let save = c.i;
        c.i += 1;
        if matches!(c.peek(), Some(b'+' | b'-')) {
            c.i += 1;
        }
        if matches!(c.peek(), Some(b'0'..=b'9')) {
            is_float = true;
            while matches!(c.peek(), Some(b'0'..=b'9')) {
                c.i += 1
            }
        } else {
            c.i = save;
        }
    }
    let t = &c.text[start..c.i];
    if is_float {
        t.parse().map(Py::Float).map_err(|_| ())
    } else {
        Ok(t.parse::<i64>()
            .map(Py::Int)
            .unwrap_or_else(|_| Py::Float(t.parse().unwrap_or(f64::NAN))))
    }
}

fn json_string(c: &mut Cursor) -> Result<String, ()> {
    c.i += 1; // opening quote
    let mut out = String::new();
    loop {
        let rest = &c.text[c.i..];
        let ch = rest.chars().next().ok_or(())?;
        c.i += ch.len_utf8();
        match ch {
            '"' => return Ok(out),
            '\\' => {
                let e = c.peek().ok_or(())?;
                c.i += 1;
                match e {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'b' => out.push('\u{8}'),
                    b'f' => out.push('\u{c}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let hi = c.s.get(c.i..c.i + 4).and_then(hex).ok_or(())?;
                        c.i += 4;
                        let code =
                            if (0xD800..0xDC00).contains(&hi) && c.s[c.i..].starts_with(b"\\u") {
                                match c.s.get(c.i + 2..c.i + 6).and_then(hex) {
                                    Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                                        c.i += 6;
                                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                    }
                                    _ => hi,
                                }
                            } else {
                                hi
                            };
                        out.push(char::from_u32(code).ok_or(())?); // lone surrogate: error
                    }
                    _ => return Err(()),
                }
            }
            c if (c as u32) < 0x20 => return Err(()),
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ast.literal_eval (subset)

fn lit_ws(c: &mut Cursor) {
    loop {
        match c.peek() {
            Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') => c.i += 1,
            Some(b'\\') if c.s.get(c.i + 1) == Some(&b'\n') => c.i += 2,
            Some(b'#') => {
                while !matches!(c.peek(), None | Some(b'\n')) {
                    c.i += 1
                }
            }
            _ => return,
        }
    }
}

/// `ast.literal_eval` for the literals a model writes (see the module doc for the subset).
pub fn literal_eval(text: &str) -> Result<Py, ()> {
    let text = text.trim_start_matches([' ', '\t']);
    let mut c = Cursor::new(text);
    lit_ws(&mut c);
    let v = lit_value(&mut c, 0)?;
    lit_ws(&mut c);
    if c.i != c.s.len() {
        return Err(());
    }
    Ok(v)
}

fn lit_seq(c: &mut Cursor, close: u8, depth: usize) -> Result<(Vec<Py>, bool), ()> {
    // Returns the items and whether a comma was seen (a tuple of one needs it).
    let mut items = Vec::new();
    let mut comma = false;
    loop {
        lit_ws(c);
        if c.peek() == Some(close) {
            c.i += 1;
            return Ok((items, comma));
        }
        items.push(lit_value(c, depth + 1)?);
        lit_ws(c);
        if c.eat(",") {
            comma = true;
            continue;
        }
        lit_ws(c);
        if c.peek() == Some(close) {
            c.i += 1;
            return Ok((items, comma));
        }
        return Err(());
    }
}

fn lit_value(c: &mut Cursor, depth: usize) -> Result<Py, ()> {
    if depth > 100 {
        return Err(());
    }
    lit_ws(c);
    match c.peek().ok_or(())? {
        b'{' => {
            c.i += 1;
            lit_ws(c);
            if c.eat("}") {
                return Ok(Py::Dict(vec![]));
            }
            let first = lit_value(c, depth + 1)?;
            lit_ws(c);
            if !c.eat(":") {
                // A set literal: `{a, b}`.
                let mut items = vec![first];
                lit_ws(c);
                if c.eat(",") {
                    let (rest, _) = lit_seq(c, b'}', depth)?;
                    items.extend(rest);
                } else if !c.eat("}") {
                    return Err(());
                }
                return Ok(Py::List(items));
            }
            let mut items = Vec::new();
            let v = lit_value(c, depth + 1)?;
            dict_insert(&mut items, first, v);
            loop {
                lit_ws(c);
                if c.eat("}") {
                    return Ok(Py::Dict(items));
                }
                if !c.eat(",") {
                    return Err(());
                }
                lit_ws(c);
                if c.eat("}") {
                    return Ok(Py::Dict(items));
                }
                let k = lit_value(c, depth + 1)?;
                lit_ws(c);
                if !c.eat(":") {
                    return Err(());
                }
                let v = lit_value(c, depth + 1)?;
                if matches!(k, Py::List(_) | Py::Dict(_)) {
                    return Err(()); // unhashable key
                }
                dict_insert(&mut items, k, v);
            }
        }
        b'[' => {
            c.i += 1;
            Ok(Py::List(lit_seq(c, b']', depth)?.0))
        }
        b'(' => {
            c.i += 1;
            let (items, comma) = lit_seq(c, b')', depth)?;
            if items.len() == 1 && !comma {
                Ok(items.into_iter().next().unwrap()) // parenthesized value
            } else {
                Ok(Py::List(items))
            }
        }
        b'\'' | b'"' => {
            let mut s = lit_string(c)?;
            // Adjacent literals concatenate.
            loop {
                let save = c.i;
                lit_ws(c);
                if matches!(c.peek(), Some(b'\'' | b'"')) {
                    s.push_str(&lit_string(c)?);
                } else {
                    c.i = save;
                    return Ok(Py::Str(s));
                }
            }
        }
        b'-' | b'+' => {
            let neg = c.peek() == Some(b'-');
            c.i += 1;
            lit_ws(c);
            match lit_value(c, depth + 1)? {
                Py::Int(i) => Ok(Py::Int(if neg { -i } else { i })),
                Py::Float(f) => Ok(Py::Float(if neg { -f } else { f })),
                Py::Bool(b) => Ok(Py::Int(if neg { -(b as i64) } else { b as i64 })),
                _ => Err(()),
            }
        }
        b'0'..=b'9' | b'.' => lit_number(c),
        _ => {
            for (word, v) in [
                ("True", Py::Bool(true)),
                ("False", Py::Bool(false)),
                ("None", Py::None),
            ] {
                if c.eat(word) {
                    if c.peek()
                        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(());
                    }
                    return Ok(v);
                }
            }
            Err(())
        }
    }
}

fn lit_string(c: &mut Cursor) -> Result<String, ()> {
    let q = c.peek().ok_or(())?;
    if c.s[c.i..].starts_with(&[q, q, q]) {
        return Err(()); // triple quotes: not supported
    }
    c.i += 1;
    let start = c.i;
    loop {
        match c.peek().ok_or(())? {
            b'\\' => c.i += 2,
            b'\n' => return Err(()),
            b if b == q => break,
            _ => c.i += 1,
        }
        if c.i > c.s.len() {
            return Err(());
        }
    }
    let body = &c.text[start..c.i];
    c.i += 1;
    // Python string escapes on text (non-ASCII stays as it is, unlike unicode_escape on bytes).
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(p) = rest.find('\\') {
        out.push_str(&rest[..p]);
        let tail = &rest[p..];
        let next = tail[1..].chars().next().ok_or(())?;
        if next.is_ascii() {
            let bytes = tail.as_bytes();
            let n = match next {
                'x' => 4,
                'u' => 6,
                'U' => 10,
                '0'..='7' => {
                    let mut n = 2;
                    while n < 4 && bytes.get(n).is_some_and(|b| (b'0'..=b'7').contains(b)) {
                        n += 1;
                    }
                    n
                }
                _ => 2,
            };
            out.push_str(&unicode_escape(tail.get(..n).ok_or(())?).map_err(|_| ())?);
            rest = &tail[n..];
        } else {
            out.push('\\');
            out.push(next);
            rest = &tail[1 + next.len_utf8()..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn lit_number(c: &mut Cursor) -> Result<Py, ()> {
    let start = c.i;
    while c
        .peek()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        // Exponent signs belong to the number.
        if matches!(c.peek(), Some(b'e' | b'E'))
            && !c.text[start..c.i].starts_with("0x")
            && !c.text[start..c.i].starts_with("0X")
            && matches!(c.s.get(c.i + 1), Some(b'+' | b'-'))
        {
            c.i += 2;
            continue;
        }
        c.i += 1;
    }
    let raw = &c.text[start..c.i];
    let bad_underscores =
        raw.contains("__") || raw.ends_with('_') || raw.contains("_.") || raw.contains("._");
    if bad_underscores {
        return Err(());
    }
    let t: String = raw.chars().filter(|ch| *ch != '_').collect();
    let lower = t.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(d) = lower.strip_prefix(prefix) {
            return i64::from_str_radix(d, radix).map(Py::Int).map_err(|_| ());
        }
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        if t.len() > 1 && t.starts_with('0') && t.bytes().any(|b| b != b'0') {
            return Err(()); // leading zeros
        }
        return Ok(t
            .parse::<i64>()
            .map(Py::Int)
            .unwrap_or_else(|_| Py::Float(t.parse().unwrap_or(f64::NAN))));
    }
    if lower.ends_with('j') || lower.contains("inf") || lower.contains("nan") {
        return Err(());
    }
    t.parse::<f64>().map(Py::Float).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reprs() {
        for (x, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (-3.25e-7, "-3.25e-07"),
            (-0.0, "-0.0"),
        ] {
            assert_eq!(float_repr(x), s, "{x}");
        }
        assert_eq!(
            py_str(&Py::List(vec![Py::Str("a".into()), Py::Int(1)])),
            "['a', 1]"
        );
        assert_eq!(py_str(&Py::Str("it's".into())), "it's");
        assert_eq!(repr(&Py::Str("it's".into())), "\"it's\"");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            unicode_escape("a\\q\\777\\x41\\\n b").unwrap(),
            "a\\q\u{1ff}A b"
        );
        assert_eq!(unicode_escape("é").unwrap(), "Ã©");
        assert_eq!(unicode_escape("\\\"k\\\"").unwrap(), "\"k\"");
        assert!(unicode_escape("x\\").is_err());
        assert!(unicode_escape("\\x4").is_err());
    }

    #[test]
    fn json() {
        let v = json_loads(r#" {"b": 1, "a": [1.0, NaN, -Infinity], "b": 2e0} "#).unwrap();
        match &v {
            Py::Dict(items) => {
                assert_eq!(items[0], (Py::Str("b".into()), Py::Float(2.0)));
                assert_eq!(items.len(), 2);
            }
            _ => panic!(),
        }
        assert!(json_loads("{'a': 1}").is_err());
        assert!(json_loads("01").is_err());
        assert!(json_loads("[1,]").is_err());
        assert_eq!(json_loads("1e400").unwrap(), Py::Float(f64::INFINITY));
    }

    #[test]
    fn literals() {
        let v = literal_eval("{'a': 1_0, \"b\": -2.5e1, 'c': (1,), 'd': [True, None],}").unwrap();
        assert_eq!(v.get("a"), Some(&Py::Int(10)));
        assert_eq!(v.get("b"), Some(&Py::Float(-25.0)));
        assert!(literal_eval("01").is_err());
        assert_eq!(literal_eval("0x1F").unwrap(), Py::Int(31));
        assert_eq!(literal_eval("'a' \"b\"").unwrap(), Py::Str("ab".into()));
        assert_eq!(
            literal_eval("{'m': 'x\\ty'}").unwrap().get("m"),
            Some(&Py::Str("x\ty".into()))
        );
        assert!(literal_eval("{'a': foo}").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(float_of_str(" 1_000.5 "), Some(1000.5));
        assert_eq!(float_of_str("-InFinity"), Some(f64::NEG_INFINITY));
        assert_eq!(float_of_str("1__0"), None);
        assert_eq!(float_of_str("abc"), None);
        assert_eq!(safe_to_int(Some(&Py::Str("40.7".into()))), Some(40.0));
        assert_eq!(safe_to_int(Some(&Py::Float(-3.9))), Some(-3.0));
        assert_eq!(safe_to_int(Some(&Py::Str("inf".into()))), None);
        assert_eq!(safe_to_01(Some(&Py::Float(1.0))), Some(1));
        assert_eq!(safe_to_01(Some(&Py::Float(0.9))), None);
        assert_eq!(safe_to_01(Some(&Py::Str(" TRUE ".into()))), Some(1));
        assert_eq!(safe_to_01(Some(&Py::Str("1.0".into()))), None);
    }
}
