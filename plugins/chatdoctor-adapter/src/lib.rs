//! ChatDoctor HealthCareMagic-100k records (`{"instruction": "If you are a doctor, please answer
//! the medical questions based on the patient's description.", "input": <patient message>,
//! "output": <doctor's answer>}`) to chat examples: the instruction is the system prompt, the
//! patient's message the user turn, the doctor's answer the assistant turn and
//! `ground_truth.reference`. Answers shorter than `min_answer_chars` (default 20) are rejected;
//! the site's sign-offs ("Hope this helps... Take care", "Regards, Dr. ...") are kept unless
//! `strip_signoff` is true.

use medrl_reward_sdk::{export_adapter, serde_json::json, Adapter, Example, Manifest, Message, Value};

pub struct ChatDoctor;

fn strip_signoff(text: &str) -> String {
    let lower = text.to_lowercase();
    let cut = ["regards", "take care", "hope this helps", "wish you good health"]
        .iter()
        .filter_map(|m| lower.rfind(m))
        .filter(|&i| i > text.len() / 2)
        .min();
    match cut {
        Some(i) if text.is_char_boundary(i) => text[..i].trim_end().to_string(),
        _ => text.to_string(),
    }
}

impl Adapter for ChatDoctor {
    fn manifest() -> Manifest {
        Manifest::new("chatdoctor-adapter", env!("CARGO_PKG_VERSION"), "ChatDoctor HealthCareMagic {instruction, input, output} -> chat example")
            .config_schema(json!({"type": "object", "properties": {
                "min_answer_chars": {"type": "integer", "default": 20},
                "strip_signoff": {"type": "boolean", "default": false},
                "data_source": {"type": "string", "default": "chatdoctor_healthcaremagic"}
            }, "additionalProperties": false}))
    }
    fn convert(c: &Value, r: &Value) -> Result<Example, String> {
        let get = |k: &str| r.get(k).and_then(Value::as_str).map(|s| s.trim().to_string()).unwrap_or_default();
        let (instruction, patient, mut answer) = (get("instruction"), get("input"), get("output"));
        if patient.is_empty() {
            return Err("missing the patient's message (`input`)".into());
        }
        if c.get("strip_signoff").and_then(Value::as_bool).unwrap_or(false) {
            answer = strip_signoff(&answer);
        }
        let min = c.get("min_answer_chars").and_then(Value::as_u64).unwrap_or(20) as usize;
        if answer.chars().count() < min {
            return Err(format!("answer (`output`) shorter than {min} characters"));
        }
        let mut messages = Vec::new();
        if !instruction.is_empty() {
            messages.push(Message { role: "system".into(), content: instruction });
        }
        messages.push(Message { role: "user".into(), content: patient });
        messages.push(Message { role: "assistant".into(), content: answer.clone() });
        Ok(Example {
            messages,
            ground_truth: json!({"reference": answer}),
            metadata: json!({}),
            data_source: c.get("data_source").and_then(Value::as_str).unwrap_or("chatdoctor_healthcaremagic").into(),
        })
    }
}

export_adapter!(ChatDoctor);
