//! Tool calls in a model's own format: finding them in generated text, and describing tools to
//! a model whose chat template has no `tools` support.
//!
//! Two formats cover the seeds' families:
//! - **Hermes** (Qwen2.5, Qwen3, SmolLM3 and most ChatML models): each call is a JSON object
//!   `{"name": ..., "arguments": {...}}` between `<tool_call>` and `</tool_call>`; several may
//!   follow each other in one turn.
//! - **Llama 3.x** (JSON tool calling): the turn is a JSON object `{"name": ..., "parameters":
//!   {...}}`, optionally after `<|python_tag|>`; several are separated by `;`.
//!
//! A turn that looks like a call but does not parse is a [`ToolCallError`] whose text is meant
//! for the model (it goes back as the tool's reply), never a crash.

use serde_json::Value;

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallFormat {
    /// `<tool_call>{"name", "arguments"}</tool_call>` (Qwen, Hermes, ChatML models).
    #[default]
    Hermes,
    /// `{"name", "parameters"}` as the whole turn, optionally after `<|python_tag|>`.
    Llama3,
}

impl ToolCallFormat {
    /// The format a chat template implies: Llama 3.x templates mention `ipython` or
    /// `<|python_tag|>`; everything else is treated as Hermes.
    pub fn detect(template_source: &str) -> Self {
        if template_source.contains("<|python_tag|>") || template_source.contains("ipython") {
            Self::Llama3
        } else {
            Self::Hermes
        }
    }

    /// The role of a tool's reply message in this format's templates.
    pub fn tool_role(self) -> &'static str {
        match self {
            Self::Hermes => "tool",
            Self::Llama3 => "ipython",
        }
    }
}

/// One call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// A JSON object.
    pub arguments: Value,
}

/// A turn that tried to call a tool and failed to say how; the message is for the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolCallError(pub String);

/// Most calls read from one turn; more is an error (a loop that emits calls forever).
pub const MAX_CALLS_PER_TURN: usize = 8;

/// The tool calls in one generated turn: `Ok(vec![])` when the turn is a plain answer.
pub fn parse_tool_calls(text: &str, format: ToolCallFormat) -> Result<Vec<ToolCall>, ToolCallError> {
    match format {
        ToolCallFormat::Hermes => parse_hermes(text),
        ToolCallFormat::Llama3 => parse_llama3(text),
    }
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

fn parse_hermes(text: &str) -> Result<Vec<ToolCall>, ToolCallError> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let body_start = at + OPEN.len();
        // An unclosed last call (the turn hit its token limit) runs to the end of the text.
        let (body, next) = match rest[body_start..].find(CLOSE) {
            Some(end) => (&rest[body_start..body_start + end], &rest[body_start + end + CLOSE.len()..]),
            None => (&rest[body_start..], ""),
        };
        if calls.len() == MAX_CALLS_PER_TURN {
            return Err(ToolCallError(format!("error: more than {MAX_CALLS_PER_TURN} tool calls in one turn")));
        }
        calls.push(call_from_json(body.trim(), "arguments")?);
        rest = next;
    }
    Ok(calls)
}

fn parse_llama3(text: &str) -> Result<Vec<ToolCall>, ToolCallError> {
    let tagged = text.trim_start().starts_with("<|python_tag|>");
    let body = text.trim().trim_start_matches("<|python_tag|>").trim();
    let body = body.strip_suffix("<|eom_id|>").or_else(|| body.strip_suffix("<|eot_id|>")).unwrap_or(body).trim();
    // Without the tag, only a turn that is a JSON object naming a function is a call.
    if !tagged && !(body.starts_with('{') && body.contains("\"name\"")) {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = split_top_level(body);
    if parts.len() > MAX_CALLS_PER_TURN {
        return Err(ToolCallError(format!("error: more than {MAX_CALLS_PER_TURN} tool calls in one turn")));
    }
    parts.into_iter().map(|p| call_from_json(p, "parameters")).collect()
}

/// `a; b; c` split at semicolons outside JSON strings and brackets.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut in_str, mut esc, mut start) = (0i32, false, false, 0);
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ';' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.retain(|p| !p.is_empty());
    out
}

fn call_from_json(body: &str, args_key: &str) -> Result<ToolCall, ToolCallError> {
    let clip = |s: &str| -> String { s.chars().take(200).collect() };
    let v: Value = serde_json::from_str(body).map_err(|e| ToolCallError(format!("error: the tool call is not valid JSON ({e}): {}", clip(body))))?;
    let obj = v.as_object().ok_or_else(|| ToolCallError(format!("error: a tool call must be a JSON object with \"name\" and \"{args_key}\": {}", clip(body))))?;
    let name = obj.get("name").and_then(Value::as_str).ok_or_else(|| ToolCallError("error: the tool call has no \"name\" string".into()))?;
    // Models of both families use either key; a missing one means no arguments.
    let arguments = obj.get(args_key).or_else(|| obj.get(if args_key == "arguments" { "parameters" } else { "arguments" })).cloned().unwrap_or(Value::Object(Default::default()));
    // Some models write the arguments as a JSON string holding the object.
    let arguments = match arguments {
        Value::String(s) => serde_json::from_str(&s).map_err(|e| ToolCallError(format!("error: the arguments of `{name}` are not a JSON object ({e})")))?,
        other => other,
    };
    if !arguments.is_object() {
        return Err(ToolCallError(format!("error: the arguments of `{name}` must be a JSON object")));
    }
    Ok(ToolCall { name: name.to_string(), arguments })
}

/// Tool descriptions as `tools` for a chat template: OpenAI's function-tool objects.
pub fn template_tools(specs: &[(String, String, Value)]) -> Value {
    Value::Array(
        specs
            .iter()
            .map(|(name, description, parameters)| serde_json::json!({"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}))
            .collect(),
    )
}

/// A system-prompt block describing the tools, for chat templates that ignore `tools`: the
/// Hermes instructions (what Qwen2.5's template writes), or Llama 3.x's JSON instructions.
pub fn tools_system_block(specs: &[(String, String, Value)], format: ToolCallFormat) -> String {
    let list: Vec<String> = template_tools(specs).as_array().expect("array").iter().map(|t| t.to_string()).collect();
    match format {
        ToolCallFormat::Hermes => format!(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\n\
             For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n\
             <tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>",
            list.join("\n")
        ),
        ToolCallFormat::Llama3 => format!(
            "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n\
             Respond in the format {{\"name\": function name, \"parameters\": dictionary of argument name and its value}}. Do not use variables.\n\n{}",
            list.join("\n\n")
        ),
    }
}

/// Whether a chat template renders the `tools` variable itself.
pub fn template_renders_tools(template_source: &str) -> bool {
    template_source.contains("tools")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hermes_calls_are_read_in_order_and_plain_answers_have_none() {
        let t = "Let me search.\n<tool_call>\n{\"name\": \"pubmed_search\", \"arguments\": {\"query\": \"sorafenib HCC\", \"top_k\": 3}}\n</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>";
        let c = parse_tool_calls(t, ToolCallFormat::Hermes).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0], ToolCall { name: "pubmed_search".into(), arguments: json!({"query": "sorafenib HCC", "top_k": 3}) });
        assert_eq!(c[1].arguments, json!({"x": 1}), "string-encoded arguments are decoded");
        assert!(parse_tool_calls("The answer is 42.", ToolCallFormat::Hermes).unwrap().is_empty());
        // Cut off by the token limit: the unclosed call still parses when its JSON is whole.
        let c = parse_tool_calls("<tool_call>{\"name\": \"a\"}", ToolCallFormat::Hermes).unwrap();
        assert_eq!(c[0].arguments, json!({}));
    }

    #[test]
    fn malformed_calls_are_messages_for_the_model() {
        for (t, want) in [
            ("<tool_call>{\"name\": \"a\", \"arguments\": {</tool_call>", "not valid JSON"),
            ("<tool_call>[1, 2]</tool_call>", "must be a JSON object"),
            ("<tool_call>{\"arguments\": {}}</tool_call>", "no \"name\""),
            ("<tool_call>{\"name\": \"a\", \"arguments\": 3}</tool_call>", "must be a JSON object"),
        ] {
            let e = parse_tool_calls(t, ToolCallFormat::Hermes).unwrap_err();
            assert!(e.0.starts_with("error: ") && e.0.contains(want), "{t}: {e}");
        }
        let many = "<tool_call>{\"name\": \"a\"}</tool_call>".repeat(MAX_CALLS_PER_TURN + 1);
        assert!(parse_tool_calls(&many, ToolCallFormat::Hermes).unwrap_err().0.contains("more than"));
        // Huge garbage is clipped in the message.
        let e = parse_tool_calls(&format!("<tool_call>{}</tool_call>", "x".repeat(100_000)), ToolCallFormat::Hermes).unwrap_err();
        assert!(e.0.len() < 600, "{}", e.0.len());
    }

    #[test]
    fn llama3_calls_with_and_without_the_python_tag() {
        let c = parse_tool_calls("<|python_tag|>{\"name\": \"s\", \"parameters\": {\"q\": \"a;b\"}}; {\"name\": \"t\", \"parameters\": {}}<|eom_id|>", ToolCallFormat::Llama3).unwrap();
        assert_eq!(c.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["s", "t"]);
        assert_eq!(c[0].arguments, json!({"q": "a;b"}), "a semicolon inside a string does not split");
        let c = parse_tool_calls(" {\"name\": \"s\", \"parameters\": {\"q\": 1}}", ToolCallFormat::Llama3).unwrap();
        assert_eq!(c[0].arguments, json!({"q": 1}));
        assert!(parse_tool_calls("The study is NCT01.", ToolCallFormat::Llama3).unwrap().is_empty());
        assert!(parse_tool_calls("{\"answer\": 3}", ToolCallFormat::Llama3).unwrap().is_empty(), "JSON without a name is an answer");
        assert!(parse_tool_calls("<|python_tag|>print(1)", ToolCallFormat::Llama3).is_err());
    }

    #[test]
    fn detection_and_system_blocks() {
        assert_eq!(ToolCallFormat::detect("{% if message.role == 'ipython' %}"), ToolCallFormat::Llama3);
        assert_eq!(ToolCallFormat::detect("<|im_start|>{{ tools }}"), ToolCallFormat::Hermes);
        let specs = vec![("pubmed_search".to_string(), "Search PubMed".to_string(), json!({"type": "object"}))];
        let h = tools_system_block(&specs, ToolCallFormat::Hermes);
        assert!(h.contains("<tools>\n{") && h.contains("\"name\":\"pubmed_search\"") && h.contains("<tool_call>"), "{h}");
        assert!(tools_system_block(&specs, ToolCallFormat::Llama3).contains("\"parameters\""));
    }
}
