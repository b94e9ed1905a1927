//! HuatuoGPT-o1 data to examples for the `medical-verifier` reward:
//! - verifiable problems (`{"Open-ended Verifiable Question", "Ground-True Answer"}`): the
//!   question is the user turn, `ground_truth.answer` the reference; rows missing either are
//!   rejected (as HuatuoGPT-o1's RL script drops them);
//! - SFT rows (`{"Question", "Complex_CoT", "Response"}`, or the verifiable fields plus
//!   `Complex_CoT` and `Response`): the assistant turn is
//!   `"## Thinking\n\n{Complex_CoT}\n\n## Final Response\n\n{Response}"`.

use medrl_reward_sdk::{export_adapter, serde_json::json, Adapter, Example, Manifest, Message, Value};

pub struct HuatuoO1;

fn text(r: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| r.get(*k).and_then(Value::as_str)).map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Adapter for HuatuoO1 {
    fn manifest() -> Manifest {
        Manifest::new("huatuo-o1-adapter", env!("CARGO_PKG_VERSION"), "HuatuoGPT-o1 verifiable problems / SFT rows -> examples for medical-verifier")
            .config_schema(json!({"type": "object", "properties": {
                "data_source": {"type": "string", "default": "medical_o1_verifiable"}
            }, "additionalProperties": false}))
    }
    fn convert(c: &Value, r: &Value) -> Result<Example, String> {
        let question = text(r, &["Open-ended Verifiable Question", "Question"]).ok_or("missing `Open-ended Verifiable Question` (or `Question`)")?;
        let cot = text(r, &["Complex_CoT"]);
        let response = text(r, &["Response"]);
        let answer = text(r, &["Ground-True Answer"]);
        if answer.is_none() && response.is_none() {
            return Err("missing `Ground-True Answer` (and no SFT `Response`)".into());
        }
        let mut messages = vec![Message { role: "user".into(), content: question }];
        if let (Some(cot), Some(resp)) = (&cot, &response) {
            messages.push(Message { role: "assistant".into(), content: format!("## Thinking\n\n{cot}\n\n## Final Response\n\n{resp}") });
        }
        Ok(Example {
            messages,
            ground_truth: answer.map(|a| json!({"answer": a})).unwrap_or(Value::Null),
            metadata: json!({}),
            data_source: c.get("data_source").and_then(Value::as_str).unwrap_or("medical_o1_verifiable").into(),
        })
    }
}

export_adapter!(HuatuoO1);
