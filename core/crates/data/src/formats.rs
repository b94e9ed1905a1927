//! Record formats: how a raw JSON record becomes an [`Example`].
//!
//! The names and defaults follow LLaMA-Factory's `dataset_info.json` so registries work as they
//! are: `alpaca` (instruction/input/output/system/history columns), `sharegpt` (a list of turns
//! with configurable role and content tags), plus `messages` (medrl's own schema, which is also
//! what data adapter plugins emit) and `verl` (VERL's RL parquet: a `prompt` list of chat
//! messages, `data_source`, `reward_model.ground_truth`, `extra_info`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use medrl_reward_sdk::helpers::json_kind as kind;

use super::Example;
use medrl_lm::tokenizer::ChatMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Formatting {
    #[default]
    Alpaca,
    Sharegpt,
    Messages,
    Verl,
}

/// Column names (LLaMA-Factory's `columns`); unset ones take the format's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    pub prompt: Option<String>,
    pub query: Option<String>,
    pub response: Option<String>,
    pub history: Option<String>,
    pub system: Option<String>,
    pub messages: Option<String>,
    /// Ground truth for rewards (a dotted path such as `reward_model.ground_truth`).
    pub ground_truth: Option<String>,
    pub data_source: Option<String>,
    pub metadata: Option<String>,
    /// Accepted for compatibility with LLaMA-Factory registries; not used by SFT.
    pub tools: Option<String>,
    pub images: Option<String>,
}

/// Role and content tags of sharegpt turns (LLaMA-Factory's `tags`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Tags {
    pub role_tag: String,
    pub content_tag: String,
    pub user_tag: String,
    pub assistant_tag: String,
    pub observation_tag: String,
    pub function_tag: String,
    pub system_tag: String,
}

impl Default for Tags {
    fn default() -> Self {
        Self {
            role_tag: "from".into(),
            content_tag: "value".into(),
            user_tag: "human".into(),
            assistant_tag: "gpt".into(),
            observation_tag: "observation".into(),
            function_tag: "function_call".into(),
            system_tag: "system".into(),
        }
    }
}

/// Look up a dotted path (`reward_model.ground_truth`) in a record.
pub fn lookup<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = record;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    (!v.is_null()).then_some(v)
}

/// Why one record cannot be converted to an [`Example`] ([`to_example`]) or trained on
/// ([`check_trainable`], [`crate::tokenize::tokenize_example`]). The message names the column,
/// turn or message; the caller adds the file and row ([`crate::DataError::Record`]).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("expected a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("missing column `{column}`")]
    MissingColumn { column: String },
    #[error("column `{column}` must be a string, found {found}")]
    NotAString { column: String, found: &'static str },
    /// A `ground_truth_json` / `metadata_json` column of medrl's Parquet layout.
    #[error("column `{column}` is not JSON text: {source}")]
    NotJsonText { column: String, source: serde_json::Error },
    #[error("not a medrl example: {source}")]
    NotAnExample { source: serde_json::Error },
    #[error("record has no messages")]
    NoMessages,
    #[error("column `history` must be a list of [query, response] pairs")]
    HistoryNotAList,
    #[error("history[{index}] must be a [query, response] pair")]
    HistoryNotAPair { index: usize },
    /// `item`: 0 for the query, 1 for the response.
    #[error("history[{index}][{item}] must be a string")]
    HistoryNotAString { index: usize, item: usize },
    #[error("empty instruction")]
    EmptyInstruction,
    #[error("column `{column}` must be a list of turns")]
    NotAListOfTurns { column: String },
    #[error("column `{column}` must be a list of chat messages, found {found}")]
    NotAListOfMessages { column: String, found: &'static str },
    /// A turn of a sharegpt or VERL list without its role or content key.
    #[error("{column}[{index}]: missing `{key}`")]
    TurnKeyMissing { column: String, index: usize, key: String },
    #[error("{column}[{index}]: `{key}` must be a string")]
    TurnNotAString { column: String, index: usize, key: String },
    #[error(
        "{column}[{index}]: unknown role {role:?} (expected {user_tag:?}, {assistant_tag:?} or {system_tag:?}; set `tags` in dataset_info.json)"
    )]
    UnknownRoleTag { column: String, index: usize, role: String, user_tag: String, assistant_tag: String, system_tag: String },
    /// A role order error at a turn of the user's list (sharegpt).
    #[error("{column}[{index}]: {reason}")]
    TurnOrder { column: String, index: usize, reason: RoleError },
    /// A role order error at a message of the conversation.
    #[error("message {index}: {reason}")]
    MessageOrder { index: usize, reason: RoleError },
    #[error("no assistant turn: nothing to train on")]
    NoAssistantTurn,
    #[error("the conversation ends with a {role} turn; training data must end with an assistant turn")]
    EndsWithoutAssistant { role: String },
    #[error(transparent)]
    Tokenize(#[from] crate::tokenize::TokenizeError),
}

/// What is wrong with a conversation's role order ([`role_order`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("unknown role {role:?}")]
    UnknownRole { role: String },
    #[error("a system message must come first")]
    SystemNotFirst,
    /// `prev`: the previous turn's role, `None` at the start of the conversation (or after the
    /// system message).
    #[error(
        "{} {role} turn {} (expected {}): turns must alternate user/assistant, starting with user",
        article(.role),
        after(.prev),
        .expected.join(" or ")
    )]
    OutOfOrder { role: String, prev: Option<String>, expected: &'static [&'static str] },
}

fn after(prev: &Option<String>) -> String {
    match prev {
        None => "at the start of the conversation".to_string(),
        Some(p) => format!("after {} {p} turn", article(p)),
    }
}

fn text_field(record: &Value, col: &str, required: bool) -> Result<String, RecordError> {
    match lookup(record, col) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(RecordError::NotAString { column: col.into(), found: kind(other) }),
        None if required => Err(RecordError::MissingColumn { column: col.into() }),
        None => Ok(String::new()),
    }
}


/// Convert one record. The error names the column or turn; the caller adds the file and row.
pub fn to_example(record: &Value, formatting: &Formatting, cols: &Columns, tags: &Tags) -> Result<Example, RecordError> {
    if !record.is_object() {
        return Err(RecordError::NotAnObject { found: kind(record) });
    }
    let col = |c: &Option<String>, default: &str| c.clone().unwrap_or_else(|| default.to_string());
    let mut ex = match formatting {
        Formatting::Alpaca => alpaca(record, cols)?,
        Formatting::Sharegpt => sharegpt(record, &col(&cols.messages, "conversations"), &cols.system, tags)?,
        Formatting::Messages => {
            // medrl's Parquet layout stores ground_truth and metadata as JSON text (data::write).
            let mut record = record.clone();
            for (col, key) in [("ground_truth_json", "ground_truth"), ("metadata_json", "metadata")] {
                if let Some(Value::String(text)) = record.get(col).cloned() {
                    let v: Value = serde_json::from_str(&text).map_err(|source| RecordError::NotJsonText { column: col.into(), source })?;
                    let o = record.as_object_mut().expect("checked above");
                    o.remove(col);
                    o.entry(key).or_insert(v);
                }
            }
            let mut ex: Example = serde_json::from_value(record).map_err(|source| RecordError::NotAnExample { source })?;
            check_roles(&ex.messages)?;
            ex.messages.iter_mut().for_each(|m| m.extra.clear());
            ex
        }
        Formatting::Verl => verl(record, cols)?,
    };
    if let Some(c) = &cols.ground_truth {
        ex.ground_truth = lookup(record, c).cloned().unwrap_or(Value::Null);
    }
    if let Some(c) = &cols.data_source {
        ex.data_source = text_field(record, c, false)?;
    }
    if let Some(c) = &cols.metadata {
        ex.metadata = lookup(record, c).cloned().unwrap_or(Value::Null);
    }
    if ex.messages.is_empty() {
        return Err(RecordError::NoMessages);
    }
    Ok(ex)
}

fn alpaca(record: &Value, cols: &Columns) -> Result<Example, RecordError> {
    let col = |c: &Option<String>, default: &str| c.clone().unwrap_or_else(|| default.to_string());
    let instruction = text_field(record, &col(&cols.prompt, "instruction"), true)?;
    let input = text_field(record, &col(&cols.query, "input"), false)?;
    let output = text_field(record, &col(&cols.response, "output"), false)?;
    let system = text_field(record, &col(&cols.system, "system"), false)?;
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(ChatMessage::system(system));
    }
    if let Some(h) = lookup(record, &col(&cols.history, "history")) {
        let turns = h.as_array().ok_or(RecordError::HistoryNotAList)?;
        for (i, t) in turns.iter().enumerate() {
            let pair = t.as_array().filter(|p| p.len() == 2).ok_or(RecordError::HistoryNotAPair { index: i })?;
            let q = pair[0].as_str().ok_or(RecordError::HistoryNotAString { index: i, item: 0 })?;
            let a = pair[1].as_str().ok_or(RecordError::HistoryNotAString { index: i, item: 1 })?;
            messages.push(ChatMessage::user(q));
            messages.push(ChatMessage::assistant(a));
        }
    }
    // LLaMA-Factory joins instruction and input with a newline.
    let user = if input.is_empty() { instruction } else { format!("{instruction}\n{input}") };
    if user.trim().is_empty() {
        return Err(RecordError::EmptyInstruction);
    }
    messages.push(ChatMessage::user(user));
    if !output.is_empty() {
        messages.push(ChatMessage::assistant(output));
    }
    Ok(Example { messages, ground_truth: Value::Null, metadata: Value::Null, data_source: String::new() })
}

fn sharegpt(record: &Value, col: &str, system_col: &Option<String>, tags: &Tags) -> Result<Example, RecordError> {
    let turns = lookup(record, col).ok_or_else(|| RecordError::MissingColumn { column: col.into() })?;
    let turns = turns.as_array().ok_or_else(|| RecordError::NotAListOfTurns { column: col.into() })?;
    let mut messages = Vec::new();
    let system = text_field(record, system_col.as_deref().unwrap_or("system"), false)?;
    if !system.is_empty() {
        messages.push(ChatMessage::system(system));
    }
    for (i, t) in turns.iter().enumerate() {
        let role = t
            .get(&tags.role_tag)
            .and_then(Value::as_str)
            .ok_or_else(|| RecordError::TurnKeyMissing { column: col.into(), index: i, key: tags.role_tag.clone() })?;
        let content = match t.get(&tags.content_tag) {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(RecordError::TurnNotAString { column: col.into(), index: i, key: tags.content_tag.clone() }),
        };
        let role = if role == tags.user_tag {
            "user"
        } else if role == tags.assistant_tag {
            "assistant"
        } else if role == tags.system_tag {
            "system"
        } else if role == tags.observation_tag {
            "tool"
        } else if role == tags.function_tag {
            "assistant"
        } else {
            return Err(RecordError::UnknownRoleTag {
                column: col.into(),
                index: i,
                role: role.into(),
                user_tag: tags.user_tag.clone(),
                assistant_tag: tags.assistant_tag.clone(),
                system_tag: tags.system_tag.clone(),
            });
        };
        messages.push(ChatMessage::new(role, content));
    }
    // Report the turn as the user's file has it (a system column is not one of the turns).
    let offset = messages.len() - turns.len();
    role_order(&messages).map_err(|(i, reason)| match i.checked_sub(offset) {
        Some(t) => RecordError::TurnOrder { column: col.into(), index: t, reason },
        None => RecordError::MessageOrder { index: i, reason },
    })?;
    Ok(Example { messages, ground_truth: Value::Null, metadata: Value::Null, data_source: String::new() })
}

fn verl(record: &Value, cols: &Columns) -> Result<Example, RecordError> {
    let col = |c: &Option<String>, default: &str| c.clone().unwrap_or_else(|| default.to_string());
    let pcol = col(&cols.prompt, "prompt");
    let prompt = lookup(record, &pcol).ok_or_else(|| RecordError::MissingColumn { column: pcol.clone() })?;
    let mut messages: Vec<ChatMessage> = match prompt {
        Value::String(s) => vec![ChatMessage::user(s.clone())],
        // Parquet list<struct> rows arrive as arrays of objects; keep only role and content.
        Value::Array(raw) => raw
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let missing = |key: &str| RecordError::TurnKeyMissing { column: pcol.clone(), index: i, key: key.into() };
                let role = m.get("role").and_then(Value::as_str).ok_or_else(|| missing("role"))?;
                let content = m.get("content").and_then(Value::as_str).ok_or_else(|| missing("content"))?;
                Ok(ChatMessage::new(role, content))
            })
            .collect::<Result<_, RecordError>>()?,
        other => return Err(RecordError::NotAListOfMessages { column: pcol, found: kind(other) }),
    };
    if let Some(rc) = &cols.response {
        let response = text_field(record, rc, true)?;
        messages.push(ChatMessage::assistant(response));
    }
    check_roles(&messages)?;
    Ok(Example {
        messages,
        ground_truth: lookup(record, "reward_model.ground_truth").cloned().unwrap_or(Value::Null),
        metadata: lookup(record, "extra_info").cloned().unwrap_or(Value::Null),
        data_source: text_field(record, "data_source", false)?,
    })
}

/// Checks the roles and their order (see [`role_order`]); the error names the message.
fn check_roles(messages: &[ChatMessage]) -> Result<(), RecordError> {
    role_order(messages).map_err(|(index, reason)| RecordError::MessageOrder { index, reason })
}

/// The role order of a conversation: an optional `system` message first, then turns starting
/// with `user`; a `user` turn is answered by `assistant`; an `assistant` turn is followed by
/// `user`, or by `tool` results (sharegpt's observations, after a function call), which are
/// followed by more results or by the `assistant`. This is LLaMA-Factory's sharegpt rule (user
/// and observation turns on one side, assistant and function-call turns on the other) with
/// consecutive tool results allowed. `Err((index of the offending message, why))`.
pub fn role_order(messages: &[ChatMessage]) -> Result<(), (usize, RoleError)> {
    let mut prev: Option<&str> = None;
    for (i, m) in messages.iter().enumerate() {
        let role = m.role.as_str();
        if !matches!(role, "system" | "user" | "assistant" | "tool") {
            return Err((i, RoleError::UnknownRole { role: role.into() }));
        }
        if role == "system" {
            if i != 0 {
                return Err((i, RoleError::SystemNotFirst));
            }
            prev = Some(role);
            continue;
        }
        let expected: &'static [&'static str] = match prev {
            None | Some("system") => &["user"],
            Some("user") => &["assistant"],
            Some("assistant") => &["user", "tool"],
            _ => &["tool", "assistant"],
        };
        if !expected.contains(&role) {
            let prev = prev.filter(|p| *p != "system").map(str::to_string);
            return Err((i, RoleError::OutOfOrder { role: role.into(), prev, expected }));
        }
        prev = Some(role);
    }
    Ok(())
}

fn article(role: &str) -> &'static str {
    if role.starts_with('a') {
        "an"
    } else {
        "a"
    }
}

/// What a training (SFT) conversation needs besides a valid role order: an assistant turn to
/// learn from, and an assistant turn at the end (a trailing user or tool turn is never
/// trained on and usually means a truncated or misordered record).
pub fn check_trainable(messages: &[ChatMessage]) -> Result<(), RecordError> {
    match messages.last().map(|m| m.role.as_str()) {
        _ if !messages.iter().any(|m| m.role == "assistant") => Err(RecordError::NoAssistantTurn),
        Some("assistant") => Ok(()),
        Some(other) => Err(RecordError::EndsWithoutAssistant { role: other.into() }),
        None => Err(RecordError::NoMessages),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alpaca_joins_instruction_and_input_and_expands_history() {
        let r = json!({"instruction": "Define HCC.", "input": "Be brief.", "output": "Liver cancer.", "system": "You are a doctor.",
                       "history": [["Hi", "Hello"]]});
        let ex = to_example(&r, &Formatting::Alpaca, &Columns::default(), &Tags::default()).unwrap();
        let roles: Vec<_> = ex.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
        assert_eq!(ex.messages[3].content, "Define HCC.\nBe brief.");
        let e = to_example(&json!({"output": "x"}), &Formatting::Alpaca, &Columns::default(), &Tags::default()).unwrap_err().to_string();
        assert!(e.contains("missing column `instruction`"), "{e}");
    }

    #[test]
    fn sharegpt_with_default_and_openai_tags() {
        let r = json!({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]});
        let ex = to_example(&r, &Formatting::Sharegpt, &Columns::default(), &Tags::default()).unwrap();
        assert_eq!(ex.messages[1], ChatMessage::assistant("a"));
        let tags = Tags { role_tag: "role".into(), content_tag: "content".into(), user_tag: "user".into(), assistant_tag: "assistant".into(), ..Default::default() };
        let cols = Columns { messages: Some("messages".into()), ..Default::default() };
        let r = json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]});
        assert_eq!(to_example(&r, &Formatting::Sharegpt, &cols, &tags).unwrap().messages.len(), 2);
        let bad = json!({"conversations": [{"from": "doctor", "value": "q"}]});
        let e = to_example(&bad, &Formatting::Sharegpt, &Columns::default(), &Tags::default()).unwrap_err().to_string();
        assert!(e.contains("unknown role \"doctor\""), "{e}");
    }

    #[test]
    fn verl_reads_prompt_ground_truth_and_response_path() {
        let r = json!({"data_source": "trialpanorama", "prompt": [{"role": "user", "content": "n?"}],
                       "reward_model": {"ground_truth": "120", "style": "rule"}, "extra_info": {"answer": "<answer>120</answer>"}});
        let cols = Columns { response: Some("extra_info.answer".into()), ..Default::default() };
        let ex = to_example(&r, &Formatting::Verl, &cols, &Tags::default()).unwrap();
        assert_eq!(ex.ground_truth, json!("120"));
        assert_eq!(ex.data_source, "trialpanorama");
        assert_eq!(ex.messages.last().unwrap().content, "<answer>120</answer>");
    }
    fn turns(roles: &[&str]) -> Value {
        json!({"conversations": roles.iter().map(|r| json!({"from": r, "value": "x"})).collect::<Vec<_>>()})
    }

    /// Impossible role orders are row errors naming the turn; valid ones (system first, user
    /// and assistant alternating, function calls and observations in the assistant's and the
    /// user's place) still load.
    #[test]
    fn role_order_is_checked() {
        let sg = |roles: &[&str]| to_example(&turns(roles), &Formatting::Sharegpt, &Columns::default(), &Tags::default());
        for (roles, turn, what) in [
            (&["gpt", "human", "gpt"][..], 0, "an assistant turn at the start"),
            (&["human", "human", "gpt"][..], 1, "a user turn after a user turn"),
            (&["human", "gpt", "gpt"][..], 2, "an assistant turn after an assistant turn"),
            (&["human", "observation", "gpt"][..], 1, "a tool turn after a user turn"),
            (&["observation", "gpt"][..], 0, "a tool turn at the start"),
            (&["human", "gpt", "system", "human"][..], 2, "a system message must come first"),
        ] {
            let e = sg(roles).unwrap_err().to_string();
            assert!(e.starts_with(&format!("conversations[{turn}]: ")) && e.contains(what), "{roles:?}: {e}");
        }
        for roles in [&["human", "gpt"][..], &["system", "human", "gpt", "human", "gpt"], &["human", "function_call", "observation", "gpt"], &["human"], &["human", "gpt", "human"]] {
            sg(roles).unwrap_or_else(|e| panic!("{roles:?}: {e}"));
        }
        // A system column comes before the turns; the turn index stays the file's.
        let mut r = turns(&["gpt", "human"]);
        r["system"] = json!("Be brief.");
        let e = to_example(&r, &Formatting::Sharegpt, &Columns::default(), &Tags::default()).unwrap_err().to_string();
        assert!(e.starts_with("conversations[0]: an assistant turn at the start"), "{e}");
        // medrl messages and VERL prompts follow the same rule.
        let m = json!({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]});
        let e = to_example(&m, &Formatting::Messages, &Columns::default(), &Tags::default()).unwrap_err().to_string();
        assert!(e.contains("message 1: a user turn after a user turn"), "{e}");
        let v = json!({"prompt": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]});
        let e = to_example(&v, &Formatting::Verl, &Columns::default(), &Tags::default()).unwrap_err().to_string();
        assert!(e.contains("message 0: an assistant turn at the start"), "{e}");
        // OpenAI-style tool results may follow each other.
        let m = json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "call"}, {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}, {"role": "assistant", "content": "a"}]});
        to_example(&m, &Formatting::Messages, &Columns::default(), &Tags::default()).unwrap();
    }

    /// The typed errors render the messages users and tests have always seen, word for word.
    #[test]
    fn typed_errors_keep_their_messages() {
        let fmt = |r: Value, f: Formatting| to_example(&r, &f, &Columns::default(), &Tags::default()).unwrap_err().to_string();
        assert_eq!(fmt(json!([1]), Formatting::Alpaca), "expected a JSON object, found an array");
        assert_eq!(fmt(json!({"instruction": 3.5, "history": 1}), Formatting::Alpaca), "column `history` must be a list of [query, response] pairs");
        assert_eq!(fmt(json!({"instruction": "q", "history": [["a", 1]]}), Formatting::Alpaca), "history[0][1] must be a string");
        assert_eq!(fmt(json!({"instruction": " "}), Formatting::Alpaca), "empty instruction");
        assert_eq!(fmt(json!({"conversations": [{"from": "human"}]}), Formatting::Sharegpt), "conversations[0]: `value` must be a string");
        assert_eq!(fmt(json!({"prompt": [{"role": "user"}]}), Formatting::Verl), "prompt[0]: missing `content`");
        assert_eq!(fmt(json!({"prompt": 3}), Formatting::Verl), "column `prompt` must be a list of chat messages, found a number");
        assert_eq!(
            fmt(json!({"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]}), Formatting::Sharegpt),
            "conversations[1]: a user turn after a user turn (expected assistant): turns must alternate user/assistant, starting with user"
        );
        let m = json!({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]});
        assert_eq!(fmt(m, Formatting::Messages), "message 1: an assistant turn at the start of the conversation (expected user): turns must alternate user/assistant, starting with user");
        let e = check_trainable(&[ChatMessage::user("q"), ChatMessage::assistant("a"), ChatMessage::new("tool", "t")]).unwrap_err();
        assert_eq!(e.to_string(), "the conversation ends with a tool turn; training data must end with an assistant turn");
    }

    #[test]
    fn training_conversations_end_with_an_assistant_turn() {
        let msgs = |roles: &[&str]| roles.iter().map(|r| ChatMessage::new(*r, "x")).collect::<Vec<_>>();
        assert!(check_trainable(&msgs(&["system", "user", "assistant"])).is_ok());
        assert!(check_trainable(&msgs(&["user", "assistant", "tool", "assistant"])).is_ok());
        assert!(check_trainable(&msgs(&["system", "user"])).unwrap_err().to_string().contains("no assistant turn"));
        assert!(check_trainable(&msgs(&["user", "assistant", "user"])).unwrap_err().to_string().contains("ends with a user turn"));
        assert!(check_trainable(&msgs(&["user", "assistant", "tool"])).unwrap_err().to_string().contains("ends with a tool turn"));
    }
}
