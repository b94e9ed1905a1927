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

fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::Io { path: path.into(), source: e })
}

fn origin(path: &Path, row: usize) -> Origin {
    Origin { file: path.into(), row }
}

/// Where invalid UTF-8 starts, for a message: 1-based line and byte of that line.
fn utf8_position(bytes: &[u8], e: &std::str::Utf8Error) -> String {
    let at = e.valid_up_to();
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    format!("invalid UTF-8 at line {line}, byte {} of the line", at - line_start + 1)
}

/// A JSON file holding an array of records (LLaMA-Factory's usual layout). A JSON syntax error
/// (or invalid UTF-8) fails the whole file, since no row boundary can be trusted after it.
fn read_json(path: &Path) -> Result<Vec<Record>, DataError> {
    let bytes = read_bytes(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::File { path: path.into(), msg: utf8_position(&bytes, &e) })?;
    let value: Value = serde_json::from_str(text).map_err(|e| DataError::File {
        path: path.into(),
        msg: format!("invalid JSON at line {} column {}: {e}", e.line(), e.column()),
    })?;
    match value {
        Value::Array(items) => Ok(items.into_iter().enumerate().map(|(i, v)| Ok((origin(path, i + 1), v))).collect()),
        _ => Err(DataError::File { path: path.into(), msg: "expected a JSON array of records (use .jsonl for one record per line)".into() }),
    }
}

/// One record per line; blank lines are ignored but still counted for row numbers, so a
/// reported row is the line number in an editor. A line that is not valid UTF-8 is a row
/// error like malformed JSON (the other lines are still read), so `on_bad_row: skip` applies.
fn read_jsonl(path: &Path) -> Result<Vec<Record>, DataError> {
    let bytes = read_bytes(path)?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let o = origin(path, i + 1);
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            Err(e) => {
                out.push(Err(DataError::Row { origin: o, msg: format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1) }));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(text).map(|v| (o.clone(), v)).map_err(|e| DataError::Row { origin: o, msg: format!("invalid JSON: {e}") }));
    }
    Ok(out)
}

/// Parquet rows as JSON objects (nested lists and structs, as in VERL's `prompt` column, map to
/// JSON arrays and objects), read row group by row group.
///
/// Before a row group is decoded, the header of every page of every column chunk is checked
/// against the footer ([`check_pages`]): the decoder trusts the counts in page headers (a
/// scrambled dictionary page header makes it fill gigabytes of default values, a data page
/// claiming billions of levels feeds one list forever), so a file with an intact footer and
/// damaged pages would otherwise hang while memory grows. A row group whose pages or rows
/// cannot be decoded is a [`DataError::RowGroup`] naming the file and the row group, for the
/// whole file: the rows of a damaged row group cannot be told apart, so it is never skipped
/// row by row.
fn read_parquet(path: &Path) -> Result<Vec<Record>, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let data = bytes::Bytes::from(read_bytes(path)?);
    let reader = SerializedFileReader::new(data.clone())
        .map_err(|e| DataError::File { path: path.into(), msg: format!("not a readable Parquet file: {e}") })?;
    let groups = reader.metadata().num_row_groups();
    let mut out = Vec::new();
    let mut first_row = 1;
    for g in 0..groups {
        let meta = reader.metadata().row_group(g);
        let rows = usize::try_from(meta.num_rows()).unwrap_or(0);
        let fail = |fault: RowGroupFault| DataError::RowGroup { path: path.into(), row_group: g + 1, row_groups: groups, first_row, rows, fault };
        if meta.num_rows() < 0 {
            return Err(fail(RowGroupFault::NegativeRowCount { rows: meta.num_rows() }));
        }
        check_pages(&data, meta).map_err(|e| fail(e.into()))?;
        let group = reader.get_row_group(g).map_err(|e| fail(RowGroupFault::Open { detail: short(e) }))?;
        let iter = parquet::record::reader::RowIter::from_row_group(None, group.as_ref())
            .map_err(|e| fail(RowGroupFault::Decode { detail: short(e) }))?;
        let mut n = 0;
        for row in iter {
            let row = row.map_err(|e| fail(RowGroupFault::DecodeRow { row: first_row + n, detail: short(e) }))?;
            out.push(Ok((origin(path, first_row + n), row.to_json_value())));
            n += 1;
        }
        if n != rows {
            return Err(fail(RowGroupFault::RowCount { decoded: n, footer: rows }));
        }
        first_row += rows;
    }
    Ok(out)
}

/// Why a Parquet row group cannot be read ([`DataError::RowGroup`] adds the file and the row
/// group). `detail` is the Parquet crate's message, shortened ([`short`]).
#[derive(Debug, thiserror::Error)]
pub enum RowGroupFault {
    #[error("the footer gives a negative row count {rows}")]
    NegativeRowCount { rows: i64 },
    #[error(transparent)]
    Page(#[from] PageError),
    #[error("{detail}")]
    Open { detail: String },
    #[error("cannot decode: {detail}")]
    Decode { detail: String },
    #[error("cannot decode row {row}: {detail}")]
    DecodeRow { row: usize, detail: String },
    #[error("decoded {decoded} rows, the footer says {footer}")]
    RowCount { decoded: usize, footer: usize },
}

/// A page of a column chunk that disagrees with the footer ([`check_pages`]).
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {fault}")]
pub struct PageError {
    pub column: String,
    pub fault: PageFault,
}

/// What is wrong with a page; `at` is the page header's byte offset in the file.
#[derive(Debug, thiserror::Error)]
pub enum PageFault {
    #[error("the footer places its {len} bytes at offset {start}, outside the file ({file_len} bytes)")]
    OutsideFile { len: i64, start: i64, file_len: usize },
    #[error("unreadable page header at byte {at}: {source}")]
    Header { at: usize, source: ThriftError },
    #[error("the page at byte {at} claims {size} bytes, the column chunk has {left} left")]
    PastChunk { at: usize, size: i32, left: usize },
    #[error("the page at byte {at} claims a negative size {size}")]
    NegativeSize { at: usize, size: i32 },
    /// `page`: "data" or "dictionary".
    #[error("the {page} page at byte {at} has no valid value count ({num_values:?})")]
    NoValueCount { at: usize, page: &'static str, num_values: Option<i32> },
    #[error("the pages up to byte {at} claim {values} values, the footer gives the column chunk {total}")]
    TooManyValues { at: usize, values: i64, total: i64 },
    #[error("the page at byte {at} claims {num_rows:?} rows, the row group has {rows}")]
    TooManyRows { at: usize, num_rows: Option<i32>, rows: i64 },
    #[error("the dictionary page at byte {at} claims {entries} entries in {bytes} bytes")]
    DictionaryTooLarge { at: usize, entries: u64, bytes: i32 },
    #[error("the page at byte {at} has an unknown page type {page_type}")]
    UnknownPageType { at: usize, page_type: i32 },
}

/// Why a page header (Thrift compact protocol) cannot be parsed ([`page_header`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThriftError {
    #[error("truncated")]
    Truncated,
    #[error("varint too long")]
    VarintTooLong,
    #[error("i32 out of range")]
    I32OutOfRange,
    #[error("field id out of range")]
    FieldIdOutOfRange,
    #[error("nested too deep")]
    TooDeep,
    #[error("unknown Thrift type {0}")]
    UnknownType(u8),
    #[error("a required field (type, sizes) is missing")]
    MissingField,
}

/// A decoder error for a message: the Parquet crate's can quote a whole value, twice, as bytes.
fn short(e: impl std::fmt::Display) -> String {
    const MAX: usize = 300;
    let s = e.to_string();
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}... ({} more characters)", &s[..at], s[at..].chars().count()),
        None => s,
    }
}

/// Checks the page headers of a row group's column chunks against the footer, reading only the
/// headers (Thrift compact protocol, [`page_header`]): each page lies inside its column chunk;
/// the data pages together hold no more values than the footer gives the column chunk (which
/// bounds every list and every value the decoder reads); a dictionary holds no more entries
/// than its page's bytes can encode (which bounds the decoder's dictionary allocation); a v2
/// page holds no more rows than the row group.
fn check_pages(data: &[u8], meta: &parquet::file::metadata::RowGroupMetaData) -> Result<(), PageError> {
    use parquet::basic::Type;
    let rows = meta.num_rows();
    for c in meta.columns() {
        let name = c.column_path().string();
        let err = |fault: PageFault| PageError { column: name.clone(), fault };
        let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
        let len = c.compressed_size();
        let chunk = usize::try_from(start)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(s, l)| data.get(s..s.checked_add(l)?))
            .ok_or_else(|| err(PageFault::OutsideFile { len, start, file_len: data.len() }))?;
        let total = c.num_values();
        // Fewest bytes one dictionary entry takes in PLAIN encoding (booleans: one bit).
        let (entry_bytes, entries_per_byte) = match c.column_type() {
            Type::BOOLEAN => (1, 8),
            Type::INT32 | Type::FLOAT | Type::BYTE_ARRAY => (4, 1),
            Type::INT64 | Type::DOUBLE => (8, 1),
            Type::INT96 => (12, 1),
            Type::FIXED_LEN_BYTE_ARRAY => (c.column_descr().type_length().max(1) as u64, 1),
        };
        let mut pos = 0usize;
        let mut values: i64 = 0;
        while pos < chunk.len() {
            let at = start as usize + pos;
            let (h, header_len) = page_header(&chunk[pos..]).map_err(|source| err(PageFault::Header { at, source }))?;
            pos += header_len;
            let left = chunk.len() - pos;
            if h.compressed_size < 0 || h.compressed_size as usize > left {
                return Err(err(PageFault::PastChunk { at, size: h.compressed_size, left }));
            }
            if h.uncompressed_size < 0 {
                return Err(err(PageFault::NegativeSize { at, size: h.uncompressed_size }));
            }
            pos += h.compressed_size as usize;
            let count = |n: Option<i32>, page: &'static str| {
                n.filter(|n| *n >= 0).map(i64::from).ok_or_else(|| err(PageFault::NoValueCount { at, page, num_values: n }))
            };
            match h.page_type {
                // DATA_PAGE, DATA_PAGE_V2
                0 | 3 => {
                    values += count(h.num_values, "data")?;
                    if values > total {
                        return Err(err(PageFault::TooManyValues { at, values, total }));
                    }
                    if h.page_type == 3 && h.num_rows.is_none_or(|r| r < 0 || i64::from(r) > rows) {
                        return Err(err(PageFault::TooManyRows { at, num_rows: h.num_rows, rows }));
                    }
                }
                // DICTIONARY_PAGE
                2 => {
                    let n = count(h.num_values, "dictionary")? as u64;
                    if n.div_ceil(entries_per_byte) * entry_bytes > h.uncompressed_size as u64 {
                        return Err(err(PageFault::DictionaryTooLarge { at, entries: n, bytes: h.uncompressed_size }));
                    }
                }
                // INDEX_PAGE: skipped by the reader too
                1 => {}
                t => return Err(err(PageFault::UnknownPageType { at, page_type: t })),
            }
        }
    }
    Ok(())
}

/// What [`check_pages`] reads of a page header.
#[derive(Debug, Default)]
struct PageHeader {
    page_type: i32,
    uncompressed_size: i32,
    compressed_size: i32,
    /// The data page's (v1 or v2) or the dictionary page's `num_values`.
    num_values: Option<i32>,
    /// A v2 data page's `num_rows`.
    num_rows: Option<i32>,
}

/// Parses a Parquet `PageHeader` (Thrift compact protocol) at the start of `b`; returns it and
/// its length in bytes. Every other field is skipped; nesting is limited, and every element
/// takes at least one byte, so garbage ends in an error, never in a long loop.
fn page_header(b: &[u8]) -> Result<(PageHeader, usize), ThriftError> {
    let mut t = Thrift { b, pos: 0 };
    let mut h = PageHeader::default();
    let (mut has_type, mut has_sizes) = (false, 0);
    t.fields(0, |t, id, ty| {
        match (id, ty) {
            (1, 5) => {
                h.page_type = t.i32()?;
                has_type = true;
            }
            (2, 5) => {
                h.uncompressed_size = t.i32()?;
                has_sizes |= 1;
            }
            (3, 5) => {
                h.compressed_size = t.i32()?;
                has_sizes |= 2;
            }
            // data_page_header, dictionary_page_header: num_values is field 1
            (5 | 7, 12) => t.fields(1, |t, id, ty| match (id, ty) {
                (1, 5) => {
                    h.num_values = Some(t.i32()?);
                    Ok(())
                }
                _ => t.skip(ty, 2),
            })?,
            // data_page_header_v2: num_values 1, num_rows 3
            (8, 12) => t.fields(1, |t, id, ty| match (id, ty) {
                (1, 5) => {
                    h.num_values = Some(t.i32()?);
                    Ok(())
                }
                (3, 5) => {
                    h.num_rows = Some(t.i32()?);
                    Ok(())
                }
                _ => t.skip(ty, 2),
            })?,
            _ => t.skip(ty, 1)?,
        }
        Ok(())
    })?;
    if !has_type || has_sizes != 3 {
        return Err(ThriftError::MissingField);
    }
    Ok((h, t.pos))
}

/// A Thrift compact-protocol reader over a byte slice.
struct Thrift<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Thrift<'_> {
    const MAX_DEPTH: usize = 16;

    fn byte(&mut self) -> Result<u8, ThriftError> {
        let v = *self.b.get(self.pos).ok_or(ThriftError::Truncated)?;
        self.pos += 1;
        Ok(v)
    }

    fn varint(&mut self) -> Result<u64, ThriftError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ThriftError::VarintTooLong)
    }

    fn zigzag(&mut self) -> Result<i64, ThriftError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, ThriftError> {
        i32::try_from(self.zigzag()?).map_err(|_| ThriftError::I32OutOfRange)
    }

    fn take(&mut self, n: u64) -> Result<(), ThriftError> {
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).filter(|&e| e <= self.b.len()).ok_or(ThriftError::Truncated)?;
        self.pos = end;
        Ok(())
    }

    /// Reads a struct's fields up to its stop byte, calling `f(self, field id, type)` for each.
    fn fields(&mut self, depth: usize, mut f: impl FnMut(&mut Self, i16, u8) -> Result<(), ThriftError>) -> Result<(), ThriftError> {
        if depth > Self::MAX_DEPTH {
            return Err(ThriftError::TooDeep);
        }
        let mut last: i16 = 0;
        loop {
            let b = self.byte()?;
            let ty = b & 0x0f;
            if ty == 0 {
                return Ok(());
            }
            let id = match b >> 4 {
                0 => i16::try_from(self.zigzag()?).map_err(|_| ThriftError::FieldIdOutOfRange)?,
                d => last.checked_add(i16::from(d)).ok_or(ThriftError::FieldIdOutOfRange)?,
            };
            last = id;
            f(self, id, ty)?;
        }
    }

    /// Skips one value of compact type `ty` (booleans as fields carry their value in the type).
    fn skip(&mut self, ty: u8, depth: usize) -> Result<(), ThriftError> {
        self.skip_value(ty, depth, false)
    }

    fn skip_value(&mut self, ty: u8, depth: usize, in_list: bool) -> Result<(), ThriftError> {
        if depth > Self::MAX_DEPTH {
            return Err(ThriftError::TooDeep);
        }
        match ty {
            1 | 2 if !in_list => Ok(()),
            1 | 2 | 3 => self.take(1),
            4..=6 => self.varint().map(|_| ()),
            7 => self.take(8),
            8 => {
                let n = self.varint()?;
                self.take(n)
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                for _ in 0..n {
                    self.skip_value(h & 0x0f, depth + 1, true)?;
                }
                Ok(())
            }
            11 => {
                let n = self.varint()?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.skip_value(kv >> 4, depth + 1, true)?;
                        self.skip_value(kv & 0x0f, depth + 1, true)?;
                    }
                }
                Ok(())
            }
            12 => self.fields(depth + 1, |t, _, ty| t.skip(ty, depth + 1)),
            13 => self.take(16),
            t => Err(ThriftError::UnknownType(t)),
        }
    }
}

/// Write records as JSON lines (atomically).
pub fn write_jsonl(path: &Path, records: &[Value]) -> Result<(), DataError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("JSON values serialize"));
        text.push('\n');
    }
    medrl_base::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| DataError::Io { path: path.into(), source: e })
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

    /// Runs `f` on its own thread and fails the test if it takes more than `secs`: a reader that
    /// hangs must fail CI, not stall it.
    fn within<T: Send + 'static>(secs: u64, what: String, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
            Ok(v) => v,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {secs} s"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the reader panicked"),
        }
    }

    /// A VERL-style Parquet file (list<struct> prompt, nested struct, strings, integers) with
    /// enough rows for dictionary and data pages in every column.
    fn verl_parquet(path: &Path, rows: usize) {
        let rows: Vec<Value> = (0..rows)
            .map(|i| {
                serde_json::json!({
                    "data_source": format!("sample_size_{}", i % 3),
                    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": format!("How many participants for trial {i}?")}],
                    "reward_model": {"style": "rule", "ground_truth": {"target": format!("{}", 100 + i * 7)}},
                    "extra_info": {"index": i as i64, "split": "train"},
                })
            })
            .collect();
        super::super::write::write_parquet(path, &rows).unwrap();
    }

    /// Byte ranges of every column chunk (the pages), which the footer describes.
    fn chunk_ranges(path: &Path) -> Vec<(usize, u64, u64)> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let mut out = Vec::new();
        for g in 0..r.metadata().num_row_groups() {
            for c in r.metadata().row_group(g).columns() {
                let (start, len) = c.byte_range();
                out.push((g, start, len));
            }
        }
        out
    }

    fn xorshift(mut s: u64) -> impl FnMut() -> u64 {
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// Scrambled pages behind an intact footer: every read ends promptly; a failure names the
    /// file and the row group, and is an error for the whole file (never rows silently decoded
    /// from garbage). Fully scrambled pages always fail.
    #[test]
    fn parquet_with_scrambled_pages_fails_promptly_naming_the_row_group() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("good.parquet");
        verl_parquet(&good, 300);
        let clean = std::fs::read(&good).unwrap();
        let ranges = chunk_ranges(&good);
        assert!(ranges.len() >= 6, "{ranges:?}");
        assert_eq!(read_records(&good).unwrap().len(), 300);
        // (seed, bytes changed per column chunk: 0 = all of them)
        let cases: Vec<(u64, usize)> = (1..=40).map(|s| (s, 0)).chain((1..=400).map(|s| (1000 + s, 1 + (s as usize % 8)))).collect();
        let mut failed_full = 0;
        for (seed, n) in cases {
            let mut bytes = clean.clone();
            let mut rng = xorshift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            for &(_, start, len) in &ranges {
                let (start, len) = (start as usize, len as usize);
                if n == 0 {
                    for b in &mut bytes[start..start + len] {
                        *b = rng() as u8;
                    }
                } else {
                    for _ in 0..n {
                        let at = start + (rng() as usize % len);
                        bytes[at] = rng() as u8;
                    }
                }
            }
            let p = d.path().join(format!("bad{seed}.parquet"));
            std::fs::write(&p, &bytes).unwrap();
            let q = p.clone();
            let got = within(20, format!("seed {seed} ({n} bytes per chunk)"), move || read_records(&q).map(|v| v.into_iter().map(|r| r.map(|_| ()).map_err(|e| e.to_string())).collect::<Vec<_>>()).map_err(|e| e.to_string()));
            match got {
                Err(e) => {
                    assert!(e.contains(&p.display().to_string()) && e.contains("row group 1"), "seed {seed}: {e}");
                    failed_full += (n == 0) as usize;
                }
                Ok(rows) => {
                    assert!(n != 0, "seed {seed}: fully scrambled pages read as {} rows", rows.len());
                    assert_eq!(rows.len(), 300, "seed {seed}");
                    // Decoding errors are not row errors: a row group read out of step is garbage.
                    assert!(rows.iter().all(|r| r.is_ok()), "seed {seed}: {:?}", rows.iter().find(|r| r.is_err()));
                }
            }
        }
        assert_eq!(failed_full, 40);
    }

    /// Invalid UTF-8 in one line is that row's error (like malformed JSON): the other rows are
    /// read, the row is named, and `skip` skips it.
    #[test]
    fn jsonl_invalid_utf8_is_a_row_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        let mut bytes = b"{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"caf".to_vec();
        bytes.extend_from_slice(&[0xE9, b'"', b'}', b'\r', b'\n']);
        bytes.extend_from_slice(b"{\"instruction\": \"c\", \"output\": \"d\"}\r\n");
        std::fs::write(&p, &bytes).unwrap();
        let recs = read_records(&p).unwrap();
        assert_eq!(recs.len(), 3);
        let e = recs[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("x.jsonl row 3") && e.contains("invalid UTF-8 at byte 21"), "{e}");
        assert_eq!(recs[2].as_ref().unwrap().0.row, 4);
        let spec = alpaca_spec(&p);
        let (ex, report) = crate::load_examples(&spec, crate::BadRowPolicy::Skip).unwrap();
        assert_eq!((ex.len(), report.skipped_rows), (2, 1));
        let e = crate::load_examples(&spec, crate::BadRowPolicy::Fail).unwrap_err().to_string();
        assert!(e.contains("x.jsonl row 3") && e.contains("invalid UTF-8"), "{e}");
        // A JSON array file fails as a whole, but says where.
        let j = d.path().join("y.json");
        std::fs::write(&j, [b"[\n{\"a\": 1},\n{\"a\": \"".as_slice(), &[0xFF], b"\"}\n]"].concat()).unwrap();
        let e = read_records(&j).unwrap_err().to_string();
        assert!(e.contains("y.json") && e.contains("invalid UTF-8 at line 3, byte 8"), "{e}");
    }

    /// An alpaca-format dataset of one file.
    fn alpaca_spec(p: &std::path::Path) -> crate::DatasetSpec {
        crate::DatasetSpec {
            name: "x".into(),
            path: p.to_path_buf(),
            formatting: crate::Formatting::Alpaca,
            columns: Default::default(),
            tags: Default::default(),
            system: None,
            num_samples: None,
        }
    }

    /// Page header errors render as they always have.
    #[test]
    fn page_errors_keep_their_messages() {
        assert_eq!(page_header(&[]).unwrap_err(), ThriftError::Truncated);
        assert_eq!(page_header(&[0x00]).unwrap_err().to_string(), "a required field (type, sizes) is missing");
        let e = PageError { column: "prompt.list.element.role".into(), fault: PageFault::Header { at: 4, source: ThriftError::UnknownType(14) } };
        assert_eq!(e.to_string(), "column `prompt.list.element.role`: unreadable page header at byte 4: unknown Thrift type 14");
        let f: RowGroupFault = PageError { column: "a".into(), fault: PageFault::NoValueCount { at: 9, page: "data", num_values: None } }.into();
        assert_eq!(f.to_string(), "column `a`: the data page at byte 9 has no valid value count (None)");
    }

    #[test]
    fn decoder_errors_are_shortened() {
        assert_eq!(short("abc"), "abc");
        let long = "é".repeat(1000);
        let s = short(&long);
        assert!(s.starts_with(&"é".repeat(300)) && s.ends_with("... (700 more characters)"), "{s}");
    }

    /// An empty dataset file (or one with only blank lines, or `[]`) is an error naming it.
    #[test]
    fn empty_dataset_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in [("e.jsonl", ""), ("b.jsonl", "\n  \n"), ("a.json", "[]")] {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            let spec = alpaca_spec(&p);
            let e = crate::load_examples(&spec, crate::BadRowPolicy::Skip).unwrap_err();
            assert!(matches!(e, DataError::EmptyFile { .. }), "{e}");
            assert!(e.to_string().contains(&p.display().to_string()) && e.to_string().contains("no records"), "{e}");
        }
    }
}
