//! Study corpora: JSON lines, a JSON array or Parquet, one study per row.
//!
//! A row is an object with an id (`pmid`, else `id`: a string or an integer), a `title` and an
//! `abstract` (or `text`, the older `{"id", "text"}` layout, taken as the abstract); at least
//! one of title and abstract must hold text. Other keys (year, journal, ...) are ignored. A
//! row that breaks these rules, or repeats an id, is a [`SearchError::BadRow`] naming the file
//! and row, or is skipped and counted when the caller asks for that.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::SearchError;
use medrl_data::read::read_records;
use medrl_data::{DataError, Origin};

/// One study of the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Study {
    pub pmid: String,
    pub title: String,
    pub abstract_text: String,
}

/// The studies of a corpus file and what was skipped.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub file: PathBuf,
    pub studies: Vec<Study>,
    /// Rows left out (only with `skip_bad_rows`), with the reason.
    pub skipped: Vec<(Origin, String)>,
    /// sha256 of the file's bytes (hex), recorded in index manifests.
    pub sha256: String,
}

/// sha256 (hex) of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, SearchError> {
    let io = |source| SearchError::Io { path: path.into(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Why a corpus row is unusable ([`SearchError::BadRow`] adds the file and row).
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("expected an object with pmid, title, abstract; got {got}")]
    NotAnObject { got: Value },
    #[error("missing `pmid` (or `id`)")]
    MissingId,
    /// `key`: `pmid` or `id`, whichever the row has.
    #[error("`{key}` must be a string or an integer, got {got}")]
    BadId { key: &'static str, got: Value },
    #[error("`{key}` is empty")]
    EmptyId { key: &'static str },
    #[error("`{key}` must be a string, got {got}")]
    NotAString { key: &'static str, got: Value },
    #[error("no text: `title` and `abstract` (or `text`) are both missing or empty")]
    NoText,
    #[error("duplicate pmid {pmid:?} (first at row {first_row})")]
    Duplicate { pmid: String, first_row: usize },
    /// A row the reader could not parse (invalid JSON or UTF-8): medrl-data's message.
    #[error("{msg}")]
    Unreadable { msg: String },
}

fn text_field(row: &serde_json::Map<String, Value>, keys: &[&'static str]) -> Result<String, StudyError> {
    for &key in keys {
        match row.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(s.trim().to_string()),
            Some(other) => return Err(StudyError::NotAString { key, got: other.clone() }),
        }
    }
    Ok(String::new())
}

/// The study of one row, or why the row is unusable.
pub fn study(row: &Value) -> Result<Study, StudyError> {
    let Value::Object(o) = row else { return Err(StudyError::NotAnObject { got: row.clone() }) };
    let (key, id) = match (o.get("pmid"), o.get("id")) {
        (Some(v), _) if !v.is_null() => ("pmid", v),
        (_, Some(v)) if !v.is_null() => ("id", v),
        _ => return Err(StudyError::MissingId),
    };
    let pmid = match id {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        other => return Err(StudyError::BadId { key, got: other.clone() }),
    };
    if pmid.is_empty() {
        return Err(StudyError::EmptyId { key });
    }
    let title = text_field(o, &["title"])?;
    let abstract_text = text_field(o, &["abstract", "text"])?;
    if title.is_empty() && abstract_text.is_empty() {
        return Err(StudyError::NoText);
    }
    Ok(Study { pmid, title, abstract_text })
}

/// Read a corpus file (.jsonl, .json or .parquet). Any bad row is an error naming the file and
/// row, unless `skip_bad_rows`, which leaves it out and records it in [`Corpus::skipped`]. A
/// corpus without any usable row is an error either way.
pub fn read_corpus(path: &Path, skip_bad_rows: bool) -> Result<Corpus, SearchError> {
    let data = |e: DataError| match e {
        DataError::Row { origin, msg } => SearchError::BadRow { origin, source: StudyError::Unreadable { msg } },
        other => SearchError::Corpus { file: path.into(), msg: other.to_string() },
    };
    let sha256 = file_sha256(path)?;
    let mut studies = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for rec in read_records(path).map_err(data)? {
        let (origin, result) = match rec {
            Ok((origin, v)) => {
                let r = study(&v).and_then(|s| match seen.get(&s.pmid) {
                    Some(&first_row) => Err(StudyError::Duplicate { pmid: s.pmid, first_row }),
                    None => Ok(s),
                });
                (origin, r)
            }
            Err(DataError::Row { origin, msg }) => (origin, Err(StudyError::Unreadable { msg })),
            Err(e) => return Err(data(e)),
        };
        match result {
            Ok(s) => {
                seen.insert(s.pmid.clone(), origin.row);
                studies.push(s);
            }
            Err(e) if skip_bad_rows => skipped.push((origin, e.to_string())),
            Err(source) => return Err(SearchError::BadRow { origin, source }),
        }
    }
    if studies.is_empty() {
        return Err(SearchError::Corpus { file: path.into(), msg: format!("no usable study ({} rows skipped)", skipped.len()) });
    }
    Ok(Corpus { file: path.into(), studies, skipped, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn row_rules() {
        let s = study(&json!({"pmid": 123, "title": "T", "abstract": "A", "year": 2020})).unwrap();
        assert_eq!(s, Study { pmid: "123".into(), title: "T".into(), abstract_text: "A".into() });
        assert_eq!(study(&json!({"id": "9", "text": "x"})).unwrap().abstract_text, "x");
        assert!(study(&json!({"title": "T"})).unwrap_err().to_string().contains("pmid"));
        assert!(study(&json!({"pmid": 1.5, "title": "T"})).unwrap_err().to_string().contains("integer"));
        assert!(study(&json!({"pmid": "1", "title": ""})).unwrap_err().to_string().contains("no text"));
        assert!(study(&json!({"pmid": "1", "title": 3})).unwrap_err().to_string().contains("`title` must be a string"));
        assert!(study(&json!([1])).is_err());
    }
}
