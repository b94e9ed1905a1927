//! Raw records from files: a JSON array, JSON lines, or Parquet, each record a JSON value with
//! its [`Origin`]. A record that does not parse is an `Err` in place, so the caller can skip it
//! and still report the row; a file that cannot be opened at all is an error for the whole file.

use serde_json::Value;
use std::path::Path;

use super::{DataError, Origin};

pub type Record = Result<(Origin, Value), DataError>;

/// File kinds medrl reads, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Json,
    Jsonl,
    Parquet,
}

impl FileKind {
    pub fn of(path: &Path) -> Result<Self, DataError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "json" => Ok(Self::Json),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            "parquet" => Ok(Self::Parquet),
            _ => Err(DataError::File {
                path: path.into(),
                msg: format!("unsupported dataset extension {ext:?}: expected .json, .jsonl or .parquet"),
            }),
        }
    }
}

/// Read every record of `path`.
pub fn read_records(path: &Path) -> Result<Vec<Record>, DataError> {
    match FileKind::of(path)? {
        FileKind::Json => read_json(path),
        FileKind::Jsonl => read_jsonl(path),
        FileKind::Parquet => read_parquet(path),
    }
}

fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|e| DataError::Io { path: path.into(), source: e })
}

fn origin(path: &Path, row: usize) -> Origin {
    Origin { file: path.into(), row }
}

/// A JSON file holding an array of records (LLaMA-Factory's usual layout). A JSON syntax error
/// fails the whole file, since no row boundary can be trusted after it.
fn read_json(path: &Path) -> Result<Vec<Record>, DataError> {
    let text = read_text(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| DataError::File {
        path: path.into(),
        msg: format!("invalid JSON at line {} column {}: {e}", e.line(), e.column()),
    })?;
    match value {
        Value::Array(items) => Ok(items.into_iter().enumerate().map(|(i, v)| Ok((origin(path, i + 1), v))).collect()),
        _ => Err(DataError::File { path: path.into(), msg: "expected a JSON array of records (use .jsonl for one record per line)".into() }),
    }
}

/// One record per line; blank lines are ignored but still counted for row numbers, so a
/// reported row is the line number in an editor.
fn read_jsonl(path: &Path) -> Result<Vec<Record>, DataError> {
    let text = read_text(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map(|v| (origin(path, i + 1), v))
                .map_err(|e| DataError::Row { origin: origin(path, i + 1), msg: format!("invalid JSON: {e}") })
        })
        .collect())
}

/// Parquet rows as JSON objects (nested lists and structs, as in VERL's `prompt` column, map to
/// JSON arrays and objects).
fn read_parquet(path: &Path) -> Result<Vec<Record>, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| DataError::Io { path: path.into(), source: e })?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| DataError::File { path: path.into(), msg: format!("not a readable Parquet file: {e}") })?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| DataError::File { path: path.into(), msg: e.to_string() })?;
    Ok(rows
        .enumerate()
        .map(|(i, row)| {
            row.map(|r| (origin(path, i + 1), r.to_json_value()))
                .map_err(|e| DataError::Row { origin: origin(path, i + 1), msg: format!("cannot decode Parquet row: {e}") })
        })
        .collect())
}

/// Write records as JSON lines (atomically).
pub fn write_jsonl(path: &Path, records: &[Value]) -> Result<(), DataError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("JSON values serialize"));
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| DataError::Io { path: path.into(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reports_the_bad_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        std::fs::write(&p, "{\"a\":1}\n\n{oops\n{\"a\":2}\n").unwrap();
        let recs = read_records(&p).unwrap();
        assert_eq!(recs.len(), 3);
        let e = recs[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("x.jsonl row 3") && e.contains("invalid JSON"), "{e}");
        assert_eq!(recs[2].as_ref().unwrap().0.row, 4);
    }

    #[test]
    fn json_must_be_an_array() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        std::fs::write(&p, "{\"a\":1}").unwrap();
        assert!(read_records(&p).unwrap_err().to_string().contains("JSON array"));
        std::fs::write(&p, "[{\"a\":1},{\"a\":2}]").unwrap();
        assert_eq!(read_records(&p).unwrap()[1].as_ref().unwrap().0.row, 2);
        let e = read_records(&d.path().join("x.csv")).unwrap_err().to_string();
        assert!(e.contains("unsupported dataset extension"), "{e}");
    }
}
