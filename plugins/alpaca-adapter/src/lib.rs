//! Alpaca records (medical_meadow flashcards, ChatDoctor) to chat examples. As LLaMA-Factory
//! does, the user turn is `instruction + "\n" + input` (just `instruction` when input is empty).

use medrl_reward_sdk::{
    export_adapter, serde_json::json, Adapter, Example, Manifest, Message, Value,
};

pub struct Alpaca;

impl Adapter for Alpaca {
    fn manifest() -> Manifest {
        Manifest::new(
            "alpaca-adapter",
            env!("CARGO_PKG_VERSION"),
            "alpaca {instruction,input,output} -> chat example",
        )
        .config_schema(json!({"type":"object","properties":{"data_source":{"type":"string"}}}))
    }
    fn convert(config: &Value, r: &Value) -> Result<Example, String> {
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let (instruction, input, output) = (field("instruction"), field("input"), field("output"));
        if instruction.is_empty() || output.is_empty() {
            return Err("record needs non-empty `instruction` and `output`".into());
        }
        let user = if input.is_empty() {
            instruction
        } else {
            format!("{instruction}\n{input}")
        };
        Ok(Example {
            messages: vec![
                Message {
                    role: "user".into(),
                    content: user,
                },
                Message {
                    role: "assistant".into(),
                    content: output.clone(),
                },
            ],
            ground_truth: Value::String(output),
            metadata: json!({}),
            data_source: config
                .get("data_source")
                .and_then(Value::as_str)
                .unwrap_or("alpaca")
                .into(),
        })
    }
}

export_adapter!(Alpaca);
