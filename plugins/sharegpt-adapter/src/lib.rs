//! sharegpt conversations to chat examples: `{"conversations": [{"from": "human", "value": ...},
//! {"from": "gpt", "value": ...}], "system": ...}` (LLaMA-Factory's sharegpt defaults). The
//! role and content keys and the role names are configurable; the last assistant turn also
//! becomes `ground_truth.reference` (for rewards and metrics that compare with it).

use medrl_reward_sdk::{export_adapter, serde_json::json, Adapter, Example, Manifest, Message, Value};

pub struct Sharegpt;

fn s<'a>(c: &'a Value, k: &str, d: &'a str) -> &'a str {
    c.get(k).and_then(Value::as_str).unwrap_or(d)
}

impl Adapter for Sharegpt {
    fn manifest() -> Manifest {
        Manifest::new("sharegpt-adapter", env!("CARGO_PKG_VERSION"), "sharegpt {conversations: [{from, value}], system} -> chat example")
            .config_schema(json!({"type": "object", "properties": {
                "messages": {"type": "string", "default": "conversations"},
                "role_tag": {"type": "string", "default": "from"},
                "content_tag": {"type": "string", "default": "value"},
                "user_tag": {"type": "string", "default": "human"},
                "assistant_tag": {"type": "string", "default": "gpt"},
                "system_tag": {"type": "string", "default": "system"},
                "data_source": {"type": "string", "default": "sharegpt"}
            }, "additionalProperties": false}))
    }
    fn convert(c: &Value, r: &Value) -> Result<Example, String> {
        let col = s(c, "messages", "conversations");
        let (role_tag, content_tag) = (s(c, "role_tag", "from"), s(c, "content_tag", "value"));
        let (user, assistant, system) = (s(c, "user_tag", "human"), s(c, "assistant_tag", "gpt"), s(c, "system_tag", "system"));
        let turns = r.get(col).and_then(Value::as_array).ok_or(format!("missing `{col}` (a list of turns)"))?;
        let mut messages = Vec::new();
        if let Some(sys) = r.get("system").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) {
            messages.push(Message { role: "system".into(), content: sys.into() });
        }
        for (i, t) in turns.iter().enumerate() {
            let who = t.get(role_tag).and_then(Value::as_str).ok_or(format!("{col}[{i}]: missing `{role_tag}`"))?;
            let text = t.get(content_tag).and_then(Value::as_str).ok_or(format!("{col}[{i}]: `{content_tag}` must be a string"))?;
            let role = if who == user {
                "user"
            } else if who == assistant {
                "assistant"
            } else if who == system && messages.is_empty() {
                "system"
            } else {
                return Err(format!("{col}[{i}]: unknown role {who:?}"));
            };
            messages.push(Message { role: role.into(), content: text.into() });
        }
        if !messages.iter().any(|m| m.role == "user") {
            return Err("conversation has no user turn".into());
        }
        let reference = messages.last().filter(|m| m.role == "assistant").map(|m| m.content.clone());
        Ok(Example {
            messages,
            ground_truth: reference.map(|r| json!({"reference": r})).unwrap_or(Value::Null),
            metadata: json!({}),
            data_source: s(c, "data_source", "sharegpt").into(),
        })
    }
}

export_adapter!(Sharegpt);
