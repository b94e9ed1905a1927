//! The OpenAI wire format: the request fields vLLM's clients send, checked field by field, and
//! the response and error bodies they expect back.
//!
//! Unknown fields are ignored (vLLM does the same; clients send vendor extras), but a known field
//! of the wrong type or out of range is a 400 naming the field. Fields medrl does not implement
//! (tools, penalties other than the repetition penalty, `echo`, `suffix`) are refused with a 400
//! when they ask for anything but the default, rather than silently ignored.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use axum::http::StatusCode;

/// An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}` with its status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = message.into();
        let message = if param.is_empty() { message } else { format!("{param}: {message}") };
        Self { status: StatusCode::BAD_REQUEST, message, param: (!param.is_empty()).then_some(param) }
    }

    pub fn status(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None }
    }

    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            504 => "timeout",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.status.as_u16()}})
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// A chat message's `content`: a string or a list of parts (only text parts are served).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling fields shared by both endpoints (`None`: absent or JSON null).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub n: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub max_tokens: Option<i64>,
    pub stop: Option<StopField>,
    pub seed: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// vLLM's extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Read from the same object by [`parse`] (not `flatten`: serde would lose the field
    /// names of its errors).
    #[serde(skip)]
    pub sampling: Sampling,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Value,
    #[serde(skip)]
    pub sampling: Sampling,
    /// Number of most likely tokens to return with each position's log-probability.
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
}

/// A request body with the shared sampling fields.
pub trait WithSampling: serde::de::DeserializeOwned {
    fn set_sampling(&mut self, s: Sampling);
}

impl WithSampling for ChatRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }
}

impl WithSampling for CompletionRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }
}

/// Parse a body, naming the field whose type is wrong (`temperature: invalid type: string ...`).
pub fn parse<T: WithSampling>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad("", "empty request body: expected a JSON object"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad("", format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad("", "the request body must be a JSON object"));
    }
    let sampling: Sampling = typed(value.clone())?;
    let mut req: T = typed(value)?;
    req.set_sampling(sampling);
    Ok(req)
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::bad("", inner)
        } else {
            ApiError::bad(path, inner)
        }
    })
}

/// What a request asks of the generator once its fields are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub n: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    /// `None`: up to the model's context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// Log-probabilities wanted, with this many alternatives per position.
    pub logprobs: Option<usize>,
}

/// The most choices one request may ask for, and stop strings, and alternatives per position.
pub const MAX_N: usize = 128;
pub const MAX_STOP: usize = 16;
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Sampling {
    /// Range checks (the defaults are OpenAI's: temperature 1, top_p 1, n 1).
    pub fn check(&self, logprobs: Option<usize>) -> Result<Checked, ApiError> {
        let n = match self.n {
            None => 1,
            Some(n) if n >= 1 && n as usize <= MAX_N => n as usize,
            Some(n) => return Err(ApiError::bad("n", format!("{n} must be in 1..={MAX_N}"))),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(ApiError::bad("temperature", format!("{temperature} must be >= 0")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad("top_p", format!("{top_p} must be in (0, 1]")));
        }
        // vLLM: -1 (or 0) means no top-k.
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => return Err(ApiError::bad("top_k", format!("{k} must be -1 (off) or positive"))),
        };
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
            return Err(ApiError::bad("repetition_penalty", format!("{repetition_penalty} must be > 0")));
        }
        let max_tokens = match self.max_tokens {
            None => None,
            Some(m) if m >= 1 => Some(m as usize),
            Some(m) => return Err(ApiError::bad("max_tokens", format!("{m} must be at least 1"))),
        };
        let stop = match &self.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::bad("stop", format!("{} stop strings; at most {MAX_STOP}", stop.len())));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad("stop", "stop strings must not be empty"));
        }
        for (k, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            match v {
                None => {}
                Some(x) if x == 0.0 => {}
                Some(x) => return Err(ApiError::bad(k, format!("{x}: not supported by medrl serve (only 0); use repetition_penalty"))),
            }
        }
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::bad("stream_options", "only allowed with stream: true"));
        }
        Ok(Checked {
            n,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            max_tokens,
            stop,
            // OpenAI's seed is a signed 64-bit integer; its bits are the stream seed.
            seed: self.seed.map(|s| s as u64),
            stream,
            include_usage,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs,
        })
    }
}

impl ChatRequest {
    /// Messages as (role, text) and the checked settings.
    pub fn check(&mut self) -> Result<(Vec<(String, String)>, Checked), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad("messages", "must contain at least one message"));
        }
        let mut msgs = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer") {
                return Err(ApiError::bad(format!("messages[{i}].role"), format!("`{}` is not served (system, user, assistant or developer)", m.role)));
            }
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut t = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(s)) => t.push_str(s),
                            _ => return Err(ApiError::bad(format!("messages[{i}].content[{j}]"), format!("only text parts are served, not `{}`", p.kind))),
                        }
                    }
                    t
                }
            };
            // The developer role is the newer name of system.
            let role = if m.role == "developer" { "system".to_string() } else { m.role.clone() };
            msgs.push((role, text));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(ApiError::bad("tools", "tool calling is not served yet"));
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(Value::as_str).is_some_and(|t| t != "text") {
                return Err(ApiError::bad("response_format", "only {\"type\": \"text\"} is served"));
            }
        }
        if let Some(m) = self.max_completion_tokens {
            if self.sampling.max_tokens.is_some_and(|t| t != m) {
                return Err(ApiError::bad("max_completion_tokens", "differs from max_tokens; give one of them"));
            }
            self.sampling.max_tokens = Some(m);
        }
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(k)) if k < 0 || k as usize > MAX_TOP_LOGPROBS => {
                return Err(ApiError::bad("top_logprobs", format!("{k} must be in 0..={MAX_TOP_LOGPROBS}")));
            }
            (false, Some(k)) if k > 0 => return Err(ApiError::bad("top_logprobs", "needs logprobs: true")),
            (true, k) => Some(k.unwrap_or(0) as usize),
            (false, _) => None,
        };
        Ok((msgs, self.sampling.check(logprobs)?))
    }
}

/// A completions prompt: text, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl CompletionRequest {
    pub fn check(&self) -> Result<(Vec<Prompt>, Checked), ApiError> {
        let prompts = parse_prompt(&self.prompt)?;
        if self.echo.unwrap_or(false) {
            return Err(ApiError::bad("echo", "not supported by medrl serve"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad("suffix", "not supported by medrl serve"));
        }
        let logprobs = match self.logprobs {
            None => None,
            Some(k) if k >= 0 && k as usize <= MAX_TOP_LOGPROBS => Some(k as usize),
            Some(k) => return Err(ApiError::bad("logprobs", format!("{k} must be in 0..={MAX_TOP_LOGPROBS}"))),
        };
        let mut checked = self.sampling.check(logprobs)?;
        // OpenAI's completions default.
        if self.sampling.max_tokens.is_none() {
            checked.max_tokens = Some(16);
        }
        Ok((prompts, checked))
    }
}

fn parse_prompt(v: &Value) -> Result<Vec<Prompt>, ApiError> {
    let ids = |a: &[Value], at: &str| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|x| x.as_u64().filter(|&t| t <= u32::MAX as u64).map(|t| t as u32).ok_or_else(|| ApiError::bad(at, "token ids must be non-negative integers")))
            .collect()
    };
    let out = match v {
        Value::String(s) => vec![Prompt::Text(s.clone())],
        Value::Array(a) if a.is_empty() => return Err(ApiError::bad("prompt", "must not be empty")),
        Value::Array(a) if a.iter().all(Value::is_string) => a.iter().map(|s| Prompt::Text(s.as_str().unwrap_or_default().to_string())).collect(),
        Value::Array(a) if a.iter().all(Value::is_number) => vec![Prompt::Ids(ids(a, "prompt")?)],
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .enumerate()
            .map(|(i, x)| ids(x.as_array().map(Vec::as_slice).unwrap_or_default(), &format!("prompt[{i}]")).map(Prompt::Ids))
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::bad("prompt", "must be a string, a list of strings, or token ids")),
    };
    if out.iter().any(|p| matches!(p, Prompt::Text(t) if t.is_empty()) || matches!(p, Prompt::Ids(i) if i.is_empty())) {
        return Err(ApiError::bad("prompt", "must not be empty"));
    }
    Ok(out)
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_type_names_its_field() {
        let e = parse::<ChatRequest>(br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.starts_with("temperature: "), "{}", e.message);
        let e = parse::<ChatRequest>(br#"{"model": "m", "messages": [{"role": "user", "content": 3}]}"#).unwrap_err();
        assert!(e.message.contains("messages[0]"), "{}", e.message);
        assert!(parse::<ChatRequest>(b"{not json").unwrap_err().message.starts_with("malformed JSON"));
        assert!(parse::<ChatRequest>(b"[1]").unwrap_err().message.contains("JSON object"));
        let e = parse::<ChatRequest>(br#"{"messages": []}"#).unwrap_err();
        assert!(e.message.contains("model"), "{}", e.message);
    }

    #[test]
    fn ranges_and_unknown_fields() {
        let mut r: ChatRequest = parse(br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3, "vendor_extra": {"x": 1}}"#).unwrap();
        assert_eq!(r.check().unwrap_err().param.as_deref(), Some("max_tokens"));
        let mut r: ChatRequest = parse(br#"{"model": "m", "messages": []}"#).unwrap();
        assert_eq!(r.check().unwrap_err().param.as_deref(), Some("messages"));
        let mut r: ChatRequest = parse(br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "top_k": -1, "stop": "x", "logprobs": true, "top_logprobs": 2, "seed": -1}"#).unwrap();
        let (m, c) = r.check().unwrap();
        assert_eq!(m, vec![("user".to_string(), "ab".to_string())]);
        assert_eq!((c.top_k, c.stop.clone(), c.logprobs, c.seed, c.n, c.temperature), (0, vec!["x".to_string()], Some(2), Some(u64::MAX), 1, 1.0));
        let mut r: ChatRequest = parse(br#"{"model": "m", "messages": [{"role": "tool", "content": "x"}]}"#).unwrap();
        assert!(r.check().unwrap_err().message.contains("messages[0].role"));
        let mut r: ChatRequest = parse(br#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}"#).unwrap();
        assert_eq!(r.check().unwrap_err().param.as_deref(), Some("n"));
        let mut r: ChatRequest = parse(br#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "frequency_penalty": 0.5}"#).unwrap();
        assert_eq!(r.check().unwrap_err().param.as_deref(), Some("frequency_penalty"));
    }

    #[test]
    fn completion_prompts() {
        let r: CompletionRequest = parse(br#"{"model": "m", "prompt": ["a", "b"]}"#).unwrap();
        let (p, c) = r.check().unwrap();
        assert_eq!(p, vec![Prompt::Text("a".into()), Prompt::Text("b".into())]);
        assert_eq!(c.max_tokens, Some(16));
        let r: CompletionRequest = parse(br#"{"model": "m", "prompt": [1, 2, 3], "logprobs": 3}"#).unwrap();
        assert_eq!(r.check().unwrap().0, vec![Prompt::Ids(vec![1, 2, 3])]);
        for bad in [&br#"{"model": "m", "prompt": ""}"#[..], br#"{"model": "m", "prompt": [-1]}"#, br#"{"model": "m", "prompt": 5}"#, br#"{"model": "m", "prompt": "a", "logprobs": 50}"#] {
            let r: CompletionRequest = parse(bad).unwrap();
            assert_eq!(r.check().unwrap_err().status, StatusCode::BAD_REQUEST);
        }
    }
}
