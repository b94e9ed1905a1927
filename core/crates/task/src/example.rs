//! What a task reads from an example: the prompt part of its conversation, its reference
//! answer, and its ground truth as an object (VERL stores it as a JSON string).

use serde_json::Value;

use medrl_data::Example;
use medrl_lm::tokenizer::ChatMessage;

/// The messages that make up the prompt: everything before the final assistant turn(s).
pub fn prompt_messages(ex: &Example) -> &[ChatMessage] {
    let mut end = ex.messages.len();
    while end > 0 && ex.messages[end - 1].role == "assistant" {
        end -= 1;
    }
    &ex.messages[..end]
}

/// The reference answer of an example: its last assistant message, if any.
pub fn reference_answer(ex: &Example) -> Option<&str> {
    ex.messages.last().filter(|m| m.role == "assistant").map(|m| m.content.as_str())
}

/// A ground truth that may be a JSON object or a string holding one (VERL passes strings).
pub fn ground_truth_object(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).ok().filter(Value::is_object).unwrap_or(Value::Null),
        Value::Object(_) => v.clone(),
        _ => Value::Null,
    }
}

/// Reference text in a ground truth: a string, or one of `reference` / `answer` / `output` / `response`.
pub fn reference_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => ["reference", "answer", "output", "response"].iter().find_map(|k| o.get(*k).and_then(Value::as_str)),
        _ => None,
    }
}
