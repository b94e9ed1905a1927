//! Writing datasets: JSON lines ([`super::read::write_jsonl`]) and Parquet.
//!
//! Parquet from JSON records infers an Arrow schema column by column: booleans, 64-bit integers,
//! doubles (integers and doubles mixed), strings, structs (the union of the keys, all fields
//! nullable) and lists, nested freely; `null` fits any type. A column whose values disagree
//! (a string in one row, an object in another) is an error naming the column. So VERL-style
//! rows (`prompt` list<struct<role, content>>, `reward_model` struct, `extra_info` struct) come
//! out as VERL writes them, and read back with [`super::read::read_records`] as the same JSON.
//!
//! medrl examples ([`write_examples`]) use a fixed schema that does not depend on the rows:
//! `messages` list<struct<role: utf8, content: utf8>>, `ground_truth_json` and `metadata_json`
//! (utf8: the JSON text of each value, since a ground truth may be a number in one row and an
//! object in the next), `data_source` utf8. The `messages` formatting decodes the two JSON
//! columns when reading (see [`super::formats`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, NullArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields};
use serde_json::Value;

use super::{DataError, Example};

/// Write medrl examples as JSON lines, a JSON array or Parquet (by extension), atomically.
pub fn write_examples(path: &Path, examples: &[Example]) -> Result<(), DataError> {
    match super::read::FileKind::of(path)? {
        super::read::FileKind::Parquet => {
            let rows: Vec<Value> = examples
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "messages": e.messages.iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
                        "ground_truth_json": e.ground_truth.to_string(),
                        "metadata_json": if e.metadata.is_null() { "{}".to_string() } else { e.metadata.to_string() },
                        "data_source": e.data_source,
                    })
                })
                .collect();
            let msg = DataType::Struct(Fields::from(vec![Field::new("role", DataType::Utf8, true), Field::new("content", DataType::Utf8, true)]));
            let schema = vec![
                ("messages".to_string(), DataType::List(Arc::new(Field::new("item", msg, true)))),
                ("ground_truth_json".to_string(), DataType::Utf8),
                ("metadata_json".to_string(), DataType::Utf8),
                ("data_source".to_string(), DataType::Utf8),
            ];
            write_parquet_with(path, &rows, schema)
        }
        super::read::FileKind::Jsonl => {
            let rows: Vec<Value> = examples.iter().map(|e| serde_json::to_value(e).expect("examples serialize")).collect();
            super::read::write_jsonl(path, &rows)
        }
        super::read::FileKind::Json => {
            let text = serde_json::to_string_pretty(examples).expect("examples serialize") + "\n";
            medrl_base::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| DataError::Io { path: path.into(), source: e })
        }
    }
}

/// Write JSON records (objects) as Parquet with an inferred schema (see the module docs).
pub fn write_parquet(path: &Path, rows: &[Value]) -> Result<(), DataError> {
    let err = |msg: String| DataError::File { path: path.into(), msg };
    let mut cols: Vec<String> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let o = r.as_object().ok_or_else(|| err(format!("row {}: not a JSON object", i + 1)))?;
        for k in o.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let mut schema = Vec::new();
    for c in cols {
        let vals: Vec<&Value> = rows.iter().map(|r| r.get(&c).unwrap_or(&Value::Null)).collect();
        let t = infer(&vals).map_err(|source| DataError::Column { path: path.into(), column: c.clone(), source })?;
        schema.push((c, t.to_arrow()));
    }
    write_parquet_with(path, rows, schema)
}

fn write_parquet_with(path: &Path, rows: &[Value], schema: Vec<(String, DataType)>) -> Result<(), DataError> {
    let err = |msg: String| DataError::File { path: path.into(), msg };
    let mut arrays = Vec::new();
    for (c, t) in &schema {
        let vals: Vec<&Value> = rows.iter().map(|r| r.get(c).unwrap_or(&Value::Null)).collect();
        let a = build(&vals, t).map_err(|source| DataError::Column { path: path.into(), column: c.clone(), source })?;
        arrays.push((c.clone(), a));
    }
    let batch = RecordBatch::try_from_iter(arrays).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    {
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).map_err(|e| err(e.to_string()))?;
        w.write(&batch).map_err(|e| err(e.to_string()))?;
        w.close().map_err(|e| err(e.to_string()))?;
    }
    medrl_base::fsutil::write_atomic(path, &buf).map_err(|e| DataError::Io { path: path.into(), source: e })
}

/// Why a column cannot be written ([`DataError::Column`] adds the file and the column).
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    /// In a struct field (`key`), nested as deep as the values are.
    #[error("{key}: {source}")]
    Field { key: String, source: Box<ColumnError> },
    /// Values that disagree (named as in [`Ty`]: null, boolean, integer, ...).
    #[error("mixed types {first} and {second}")]
    MixedTypes { first: &'static str, second: &'static str },
    #[error("{source}")]
    Arrow { source: arrow_schema::ArrowError },
    #[error("unsupported type {data_type}")]
    Unsupported { data_type: DataType },
}

impl ColumnError {
    fn in_field(key: &str) -> impl FnOnce(ColumnError) -> ColumnError + '_ {
        move |e| ColumnError::Field { key: key.to_string(), source: Box::new(e) }
    }
}

/// Inferred JSON column type.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List(Box<Ty>),
    Struct(BTreeMap<String, Ty>),
}

impl Ty {
    fn to_arrow(&self) -> DataType {
        match self {
            // Parquet has no null-only or empty-struct columns: they are written as strings.
            Ty::Null | Ty::Str => DataType::Utf8,
            Ty::Bool => DataType::Boolean,
            Ty::Int => DataType::Int64,
            Ty::Float => DataType::Float64,
            Ty::List(t) => DataType::List(Arc::new(Field::new("item", t.to_arrow(), true))),
            Ty::Struct(f) if f.is_empty() => DataType::Utf8,
            Ty::Struct(f) => DataType::Struct(f.iter().map(|(k, t)| Field::new(k, t.to_arrow(), true)).collect::<Vec<_>>().into()),
        }
    }
}

fn ty_of(v: &Value) -> Result<Ty, ColumnError> {
    Ok(match v {
        Value::Null => Ty::Null,
        Value::Bool(_) => Ty::Bool,
        Value::Number(n) if n.is_i64() => Ty::Int,
        Value::Number(_) => Ty::Float,
        Value::String(_) => Ty::Str,
        Value::Array(a) => Ty::List(Box::new(infer(&a.iter().collect::<Vec<_>>())?)),
        Value::Object(o) => {
            let mut f = BTreeMap::new();
            for (k, v) in o {
                f.insert(k.clone(), ty_of(v).map_err(ColumnError::in_field(k))?);
            }
            Ty::Struct(f)
        }
    })
}

fn merge(a: Ty, b: Ty) -> Result<Ty, ColumnError> {
    Ok(match (a, b) {
        (Ty::Null, t) | (t, Ty::Null) => t,
        (Ty::Int, Ty::Float) | (Ty::Float, Ty::Int) => Ty::Float,
        (Ty::List(x), Ty::List(y)) => Ty::List(Box::new(merge(*x, *y)?)),
        (Ty::Struct(mut x), Ty::Struct(y)) => {
            for (k, t) in y {
                let cur = x.remove(&k).unwrap_or(Ty::Null);
                x.insert(k.clone(), merge(cur, t).map_err(ColumnError::in_field(&k))?);
            }
            Ty::Struct(x)
        }
        (x, y) if x == y => x,
        (x, y) => return Err(ColumnError::MixedTypes { first: name(&x), second: name(&y) }),
    })
}

fn name(t: &Ty) -> &'static str {
    match t {
        Ty::Null => "null",
        Ty::Bool => "boolean",
        Ty::Int => "integer",
        Ty::Float => "number",
        Ty::Str => "string",
        Ty::List(_) => "list",
        Ty::Struct(_) => "object",
    }
}

fn infer(vals: &[&Value]) -> Result<Ty, ColumnError> {
    let mut t = Ty::Null;
    for v in vals {
        t = merge(t, ty_of(v)?)?;
    }
    Ok(t)
}

fn nulls(vals: &[&Value]) -> Option<NullBuffer> {
    let valid: Vec<bool> = vals.iter().map(|v| !v.is_null()).collect();
    valid.iter().any(|v| !v).then(|| NullBuffer::from(valid))
}

fn build(vals: &[&Value], t: &DataType) -> Result<ArrayRef, ColumnError> {
    let arrow = |source| ColumnError::Arrow { source };
    Ok(match t {
        DataType::Null => Arc::new(NullArray::new(vals.len())),
        DataType::Boolean => Arc::new(vals.iter().map(|v| v.as_bool()).collect::<BooleanArray>()),
        DataType::Int64 => Arc::new(vals.iter().map(|v| v.as_i64()).collect::<Int64Array>()),
        DataType::Float64 => Arc::new(vals.iter().map(|v| v.as_f64()).collect::<Float64Array>()),
        DataType::Utf8 => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
                .collect::<StringArray>(),
        ),
        DataType::List(field) => {
            let mut items: Vec<&Value> = Vec::new();
            let mut lens = Vec::with_capacity(vals.len());
            for v in vals {
                match v {
                    Value::Array(a) => {
                        lens.push(a.len());
                        items.extend(a.iter());
                    }
                    _ => lens.push(0),
                }
            }
            let child = build(&items, field.data_type())?;
            Arc::new(ListArray::try_new(field.clone(), OffsetBuffer::from_lengths(lens), child, nulls(vals)).map_err(arrow)?)
        }
        DataType::Struct(fields) => {
            let mut children = Vec::new();
            for f in fields.iter() {
                let sub: Vec<&Value> = vals.iter().map(|v| v.get(f.name()).unwrap_or(&Value::Null)).collect();
                children.push(build(&sub, f.data_type()).map_err(ColumnError::in_field(f.name()))?);
            }
            Arc::new(StructArray::try_new(fields.clone(), children, nulls(vals)).map_err(arrow)?)
        }
        other => return Err(ColumnError::Unsupported { data_type: other.clone() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use medrl_lm::tokenizer::ChatMessage;
    use serde_json::json;

    #[test]
    fn verl_rows_round_trip_through_parquet() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.parquet");
        let rows = vec![
            json!({"data_source": "ss", "prompt": [{"role": "user", "content": "n?"}], "reward_model": {"style": "rule", "ground_truth": {"target": "120"}}, "extra_info": {"index": 0, "x": 1.5}}),
            json!({"data_source": "ss", "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "m?"}], "reward_model": {"style": "rule", "ground_truth": {"target": "7", "pmid": null}}, "extra_info": {"index": 1, "x": 2}}),
        ];
        write_parquet(&p, &rows).unwrap();
        let back: Vec<Value> = super::super::read::read_records(&p).unwrap().into_iter().map(|r| r.unwrap().1).collect();
        assert_eq!(back[0]["prompt"], rows[0]["prompt"]);
        assert_eq!(back[1]["prompt"], rows[1]["prompt"]);
        assert_eq!(back[0]["reward_model"]["ground_truth"]["target"], "120");
        assert_eq!(back[1]["extra_info"]["index"], 1);
        assert_eq!(back[1]["extra_info"]["x"], 2.0);
        let e = write_parquet(&p, &[json!({"a": 1}), json!({"a": "x"})]).unwrap_err().to_string();
        assert!(e.contains("column `a`") && e.contains("mixed"), "{e}");
    }

    #[test]
    fn examples_round_trip_through_parquet_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let ex = vec![
            Example { messages: vec![ChatMessage::user("q"), ChatMessage::assistant("a")], ground_truth: json!(12), metadata: json!({"k": [1]}), data_source: "t".into() },
            Example { messages: vec![ChatMessage::system("s"), ChatMessage::user("q2")], ground_truth: json!({"target": "x"}), metadata: Value::Null, data_source: "t".into() },
        ];
        for f in ["e.parquet", "e.jsonl", "e.json"] {
            let p = d.path().join(f);
            write_examples(&p, &ex).unwrap();
            let spec = crate::DatasetSpec {
                name: "e".into(),
                path: p,
                formatting: crate::Formatting::Messages,
                columns: Default::default(),
                tags: Default::default(),
                system: None,
                num_samples: None,
            };
            let (back, _) = crate::load_examples(&spec, crate::BadRowPolicy::Fail).unwrap();
            assert_eq!(back[0].1, ex[0], "{f}");
            assert_eq!(back[1].1.ground_truth, ex[1].ground_truth, "{f}");
            assert_eq!(back[1].1.messages, ex[1].messages, "{f}");
        }
    }
}
