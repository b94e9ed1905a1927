//! What a task reads from an example: the prompt part of its conversation, its reference
//! answer, and its ground truth as an object (VERL stores it as a JSON string).

use serde_json::Value;

use medrl_data::Example;
use medrl_lm::tokenizer::ChatMessage;

/// The messages that make up the prompt: everything before the final assistant turn(s)
/// ([`Example::prompt_messages`], the split every user of an example makes).
pub fn prompt_messages(ex: &Example) -> &[ChatMessage] {
    ex.prompt_messages()
}

/// The reference answer of an example: its last assistant message, if any
/// ([`Example::reference_turn`]).
pub fn reference_answer(ex: &Example) -> Option<&str> {
    ex.reference_turn()
}

/// A ground truth that may be a JSON object or a string holding one (VERL passes strings).
pub fn ground_truth_object(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).ok().filter(Value::is_object).unwrap_or(Value::Null),
        Value::Object(_) => v.clone(),
        _ => Value::Null,
    }
}

/// Reference text in a ground truth, as evaluation reads it.
pub use medrl_data::reference_text;
