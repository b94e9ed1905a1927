//! medalpaca/medical_meadow_medical_flashcards records (`{"instruction": "Answer this question
//! truthfully", "input": <question>, "output": <answer>}`) to chat examples: the question is the
//! user turn, the answer the assistant turn and `ground_truth.reference`; the fixed instruction
//! becomes the system prompt (set `system_from_instruction: false` to join it to the question
//! as LLaMA-Factory's alpaca format does).

use medrl_reward_sdk::{export_adapter, serde_json::json, Adapter, Example, Manifest, Message, Value};

pub struct Flashcards;

impl Adapter for Flashcards {
    fn manifest() -> Manifest {
        Manifest::new("meadow-flashcards-adapter", env!("CARGO_PKG_VERSION"), "medical_meadow flashcards {instruction, input, output} -> chat example")
            .config_schema(json!({"type": "object", "properties": {
                "system_from_instruction": {"type": "boolean", "default": true},
                "data_source": {"type": "string", "default": "medical_meadow_flashcards"}
            }, "additionalProperties": false}))
    }
    fn convert(c: &Value, r: &Value) -> Result<Example, String> {
        let field = |k: &str| -> Result<String, String> {
            match r.get(k) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.trim().to_string()),
                Some(other) => Err(format!("`{k}` must be a string, got {other}")),
            }
        };
        let (instruction, question, answer) = (field("instruction")?, field("input")?, field("output")?);
        if question.is_empty() || answer.is_empty() {
            return Err("flashcard needs a non-empty `input` (question) and `output` (answer)".into());
        }
        let as_system = c.get("system_from_instruction").and_then(Value::as_bool).unwrap_or(true);
        let mut messages = Vec::new();
        let user = if as_system || instruction.is_empty() {
            if !instruction.is_empty() {
                messages.push(Message { role: "system".into(), content: instruction });
            }
            question
        } else {
            format!("{instruction}\n{question}")
        };
        messages.push(Message { role: "user".into(), content: user });
        messages.push(Message { role: "assistant".into(), content: answer.clone() });
        Ok(Example {
            messages,
            ground_truth: json!({"reference": answer}),
            metadata: json!({}),
            data_source: c.get("data_source").and_then(Value::as_str).unwrap_or("medical_meadow_flashcards").into(),
        })
    }
}

export_adapter!(Flashcards);
