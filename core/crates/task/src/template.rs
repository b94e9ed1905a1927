//! Prompt templates (`prompt_template` in task.yaml): `{field}` placeholders filled from a
//! record's metadata (dotted paths allowed), `{{` / `}}` literal braces; and the injection of
//! the rendered user turn into records that have none.

use serde_json::Value;

use medrl_data::formats::{self, Formatting};
use medrl_data::registry::DatasetSpec;

/// A template that does not parse, or a field a record lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unmatched `}}` (write `}}}}` for a literal brace)")]
    UnmatchedClose,
    #[error("unclosed `{{` (write `{{{{` for a literal brace)")]
    Unclosed,
    #[error("bad field name {0:?}")]
    BadField(String),
    #[error("prompt_template field `{0}` is missing from the record's metadata")]
    MissingField(String),
}

/// Parts of a template: literal text and `{field}` names.
enum Part<'a> {
    Text(String),
    Field(&'a str),
}

fn template_parts(t: &str) -> Result<Vec<Part<'_>>, TemplateError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let c = &rest[i..];
        if let Some(r) = c.strip_prefix("{{") {
            text.push('{');
            rest = r;
        } else if let Some(r) = c.strip_prefix("}}") {
            text.push('}');
            rest = r;
        } else if c.starts_with('}') {
            return Err(TemplateError::UnmatchedClose);
        } else {
            let end = c.find('}').ok_or(TemplateError::Unclosed)?;
            let name = c[1..end].trim();
            if name.is_empty() || name.contains('{') {
                return Err(TemplateError::BadField(c[1..end].to_string()));
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Field(name));
            rest = &c[end + 1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// The field names a template uses (errors on bad syntax).
pub fn template_fields(t: &str) -> Result<Vec<String>, TemplateError> {
    Ok(template_parts(t)?
        .into_iter()
        .filter_map(|p| match p {
            Part::Field(f) => Some(f.to_string()),
            Part::Text(_) => None,
        })
        .collect())
}

/// Render `{field}` placeholders from `fields` (an object; dotted paths allowed). Strings are
/// inserted as they are, other values as JSON.
pub fn render_template(t: &str, fields: &Value) -> Result<String, TemplateError> {
    let mut out = String::new();
    for p in template_parts(t)? {
        match p {
            Part::Text(s) => out.push_str(&s),
            Part::Field(f) => match formats::lookup(fields, f) {
                Some(Value::String(s)) => out.push_str(s),
                Some(v) => out.push_str(&v.to_string()),
                None => return Err(TemplateError::MissingField(f.to_string())),
            },
        }
    }
    Ok(out)
}

/// Gives a record without a user turn one rendered from its metadata.
pub(crate) fn inject_prompt(record: &mut Value, template: &str, spec: &DatasetSpec) -> Result<(), TemplateError> {
    let Some(obj) = record.as_object_mut() else { return Ok(()) };
    let cols = &spec.columns;
    let col = |c: &Option<String>, d: &str| c.clone().unwrap_or_else(|| d.to_string());
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => !a.iter().any(|m| m.get("role").and_then(Value::as_str) == Some("user") || m.get(&spec.tags.role_tag).and_then(Value::as_str) == Some(spec.tags.user_tag.as_str())),
        _ => false,
    };
    let (target, default_meta) = match spec.formatting {
        Formatting::Messages => (col(&cols.messages, "messages"), "metadata"),
        Formatting::Verl => (col(&cols.prompt, "prompt"), "extra_info"),
        Formatting::Alpaca => (col(&cols.prompt, "instruction"), "metadata"),
        Formatting::Sharegpt => (col(&cols.messages, "conversations"), "metadata"),
    };
    if !empty(obj.get(&target)) {
        return Ok(());
    }
    let meta_col = col(&cols.metadata, default_meta);
    let meta = formats::lookup(&Value::Object(obj.clone()), &meta_col).cloned().unwrap_or(Value::Null);
    let text = render_template(template, &meta)?;
    let existing: Vec<Value> = obj.get(&target).and_then(Value::as_array).cloned().unwrap_or_default();
    let value = match spec.formatting {
        Formatting::Alpaca => Value::String(text),
        Formatting::Sharegpt => {
            let mut turn = serde_json::Map::new();
            turn.insert(spec.tags.role_tag.clone(), Value::String(spec.tags.user_tag.clone()));
            turn.insert(spec.tags.content_tag.clone(), Value::String(text));
            let mut v = existing;
            let at = v.iter().take_while(|m| m.get(&spec.tags.role_tag).and_then(Value::as_str) == Some(spec.tags.system_tag.as_str())).count();
            v.insert(at, Value::Object(turn));
            Value::Array(v)
        }
        Formatting::Messages | Formatting::Verl => {
            let mut v = existing;
            let at = v.iter().take_while(|m| m.get("role").and_then(Value::as_str) == Some("system")).count();
            v.insert(at, serde_json::json!({"role": "user", "content": text}));
            Value::Array(v)
        }
    };
    obj.insert(target, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_renders_and_rejects_bad_syntax() {
        assert_eq!(render_template("Q: {question} {{x}} {a.b}", &json!({"question": "n?", "a": {"b": 3}})).unwrap(), "Q: n? {x} 3");
        assert!(render_template("{missing}", &json!({})).unwrap_err().to_string().contains("missing"));
        assert!(template_fields("{open").is_err());
        assert!(template_fields("close}").is_err());
        assert_eq!(template_fields("{a} and {b}").unwrap(), ["a", "b"]);
    }

    #[test]
    fn template_errors_keep_their_wording() {
        assert_eq!(template_fields("close}").unwrap_err().to_string(), "unmatched `}` (write `}}` for a literal brace)");
        assert_eq!(template_fields("{open").unwrap_err().to_string(), "unclosed `{` (write `{{` for a literal brace)");
        assert_eq!(template_fields("{ }").unwrap_err().to_string(), "bad field name \" \"");
        assert_eq!(render_template("{q}", &json!({})).unwrap_err().to_string(), "prompt_template field `q` is missing from the record's metadata");
    }
}
