//! Evaluating a model behind an OpenAI-compatible chat-completions server (`medrl eval
//! --server URL --model NAME`): vLLM, `medrl serve`, or any server speaking the same API. The
//! rewards, predictions, metrics and resuming are [`crate::run`]'s, unchanged; only the
//! responses come from the server.
//!
//! **Requests.** One `POST {base}/v1/chat/completions` per work unit (prompt, sample), with
//! `model`, `messages` (`role` and `content` of each prompt message), `n: 1`, `temperature`,
//! `top_p`, `max_tokens`, `seed`, `stop` (when there are stop strings), and vLLM's extra fields
//! `top_k` and `repetition_penalty` only when they differ from their defaults (0 and 1.0), so a
//! server without them still accepts a default request. Up to `concurrency` requests are in
//! flight at once (a continuous-batching server batches them); responses keep the units' order.
//! A bearer token is sent when an API key is given. Each request has a timeout; a failed
//! request fails the batch (no retry; a rerun resumes after the last finished batch).
//!
//! **Seeds.** Unit `(i, k)` sends `seed = unit_seed(seed, k·2³² + i)`: the local stream id
//! folded with the eval seed by SplitMix64, kept below 2³¹ so that servers with 32-bit seeds
//! take it. A rerun sends the same seeds, and a unit's seed does not depend on its batch, so
//! with a server that honours per-request seeds (vLLM does) resumed runs match uninterrupted
//! ones and sample 0 of `--n 4` is the `--n 1` response, as locally.
//!
//! **Prompt text.** There is no local tokenizer or chat template, so the prompt recorded in
//! `predictions.jsonl` and given to the reward plugins is [`render_messages`]: each message as
//! ChatML, `<|im_start|>{role}\n{content}<|im_end|>\n`, then `<|im_start|>assistant\n`. It is
//! deterministic (resuming compares it) but it is not necessarily the text the server's own
//! template produced.
//!
//! **Responses.** `response` is `choices[0].message.content` (null counts as empty: a server
//! started with a reasoning parser moves the reasoning out of `content`, so start it without
//! one to score the whole text). `finish_reason` is the server's: `stop` (an end-of-sequence
//! token or a stop string; unlike local generation, which says `eos` for the former and keeps a
//! stop string in the text, a server strips the stop string) or `length`. `tokens` is
//! `usage.completion_tokens`, exact since every request asks for one choice; 0 when the server
//! reports no usage.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::run::{EvalError, EvalOptions, Responder, Response, Unit};
use medrl_lm::tokenizer::ChatMessage;

/// Where and how to reach the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Base URL: `http://host:port` or `http://host:port/v1` (a full
    /// `.../v1/chat/completions` is accepted too).
    pub base_url: String,
    /// The served model name (`model` of every request).
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Whole-request deadline (connect, generate, read).
    pub request_timeout: Duration,
}

impl ServerConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self { base_url: base_url.into(), model: model.into(), api_key: None, concurrency: 8, request_timeout: Duration::from_secs(600) }
    }
}

/// The `.../v1` base of a server URL: a trailing `/`, `/chat/completions` and a missing `/v1`
/// are all accepted.
pub fn normalize_base_url(url: &str) -> Result<String, EvalError> {
    let u = url.trim().trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.split("://").nth(1).is_none_or(str::is_empty) {
        return Err(EvalError::Invalid(format!("server URL `{url}`: expected http://host:port or https://host/... (e.g. http://127.0.0.1:8000/v1)")));
    }
    let u = u.strip_suffix("/chat/completions").unwrap_or(u).trim_end_matches('/');
    Ok(if u.ends_with("/v1") { u.to_string() } else { format!("{u}/v1") })
}

/// The prompt text of a conversation in server mode: ChatML, ending with the assistant's turn.
pub fn render_messages(messages: &[ChatMessage]) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str("<|im_start|>");
        s.push_str(&m.role);
        s.push('\n');
        s.push_str(&m.content);
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The request seed of a work unit: its stream (`sample·2³² + index`) folded with the eval seed.
pub fn unit_seed(seed: u64, stream: u64) -> u64 {
    splitmix64(seed ^ splitmix64(stream)) & 0x7FFF_FFFF
}

/// A response body's `choices[0]` as a [`Response`]; `Err` says what is wrong with it.
pub fn parse_completion(body: &str) -> Result<Response, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("malformed response, not JSON ({e}): {}", excerpt(body)))?;
    let choice = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()).ok_or_else(|| format!("response has no `choices`: {}", excerpt(body)))?;
    let text = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None if choice.get("message").is_some() => String::new(),
        _ => return Err(format!("choice has no `message.content`: {}", excerpt(body))),
    };
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("unknown").to_string();
    let tokens = v.pointer("/usage/completion_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
    Ok(Response { text, finish_reason, tokens })
}

/// The server's own words from an error body: OpenAI's `error.message`, vLLM's older top-level
/// `message`, FastAPI's `detail`; else the start of the body.
fn error_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let found = v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("detail")).or_else(|| v.get("error"));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(other) if !other.is_null() => other.to_string(),
        _ => excerpt(body),
    }
}

fn excerpt(body: &str) -> String {
    let s: String = body.chars().take(300).collect();
    if s.len() < body.len() { format!("{s}...") } else { s }
}

/// An OpenAI-compatible chat-completions server as a [`Responder`].
pub struct OpenAiServer {
    cfg: ServerConfig,
    /// `{base}/chat/completions`.
    url: String,
    agent: ureq::Agent,
}

impl OpenAiServer {
    pub fn new(cfg: ServerConfig) -> Result<Self, EvalError> {
        if cfg.concurrency == 0 {
            return Err(EvalError::Invalid("server concurrency must be at least 1".into()));
        }
        if cfg.model.trim().is_empty() {
            return Err(EvalError::Invalid("the served model name is empty".into()));
        }
        let url = format!("{}/chat/completions", normalize_base_url(&cfg.base_url)?);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.request_timeout))
            // Error bodies carry the server's message: read them rather than get a bare status.
            .http_status_as_error(false)
            .user_agent(format!("medrl/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self { cfg, url, agent })
    }

    /// The endpoint every request goes to.
    pub fn endpoint(&self) -> &str {
        &self.url
    }

    /// The JSON body of one unit's request.
    pub fn request_body(&self, unit: &Unit<'_>, opts: &EvalOptions) -> Value {
        let s = &opts.sampling;
        let messages: Vec<Value> = unit.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "n": 1,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
            "seed": unit_seed(s.seed, unit.stream()),
        });
        let o = body.as_object_mut().expect("an object");
        if !opts.stop_strings.is_empty() {
            o.insert("stop".into(), json!(opts.stop_strings));
        }
        // vLLM's extensions; servers without them may refuse unknown fields, so only when set.
        if s.top_k != 0 {
            o.insert("top_k".into(), json!(s.top_k));
        }
        if s.repetition_penalty != 1.0 {
            o.insert("repetition_penalty".into(), json!(s.repetition_penalty));
        }
        body
    }

    fn request(&self, unit: &Unit<'_>, opts: &EvalOptions) -> Result<Response, EvalError> {
        let fail = |msg: String| EvalError::Server { url: self.url.clone(), id: format!("{} (sample {})", unit.id, unit.sample), msg };
        let body = self.request_body(unit, opts).to_string();
        let mut req = self.agent.post(&self.url).header("Content-Type", "application/json");
        if let Some(key) = &self.cfg.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let mut resp = req.send(body).map_err(|e| {
            fail(match e {
                ureq::Error::Timeout(_) => format!("no answer within {:?} (the request timeout): {e}", self.cfg.request_timeout),
                ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!("connection refused: is the server running at this address? ({e})"),
                ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Io(_) => format!("cannot reach the server: {e}"),
                e => e.to_string(),
            })
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| fail(format!("reading the response (HTTP {status}): {e}")))?;
        if !(200..300).contains(&status) {
            return Err(fail(format!("HTTP {status}: {}", error_message(&text))));
        }
        parse_completion(&text).map_err(fail)
    }
}

impl Responder for OpenAiServer {
    fn prompt_text(&self, messages: &[ChatMessage]) -> Result<String, EvalError> {
        Ok(render_messages(messages))
    }

    fn respond(&self, units: &[Unit<'_>], opts: &EvalOptions) -> Result<Vec<Response>, EvalError> {
        let results: Mutex<Vec<Option<Result<Response, EvalError>>>> = Mutex::new((0..units.len()).map(|_| None).collect());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..self.cfg.concurrency.min(units.len()) {
                scope.spawn(|| {
                    // After a failure, send nothing new: the batch fails anyway.
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(unit) = units.get(i) else { break };
                        let r = self.request(unit, opts);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                    }
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        // The first failure in unit order, so the error does not depend on thread timing more
        // than it must.
        if let Some(e) = results.iter().position(|r| matches!(r, Some(Err(_)))) {
            let Some(Some(Err(e))) = results.into_iter().nth(e) else { unreachable!() };
            return Err(e);
        }
        results.into_iter().map(|r| r.ok_or_else(|| EvalError::Invalid("a request was never sent".into()))?).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{read_predictions, run_eval_with, EvalTask, MetricSettings, RunConfig, RunControl};
    use medrl_data::{Example, Origin};
    use medrl_lm::generate::SamplingParams;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    /// What the mock server saw: (request line, lowercase headers, body).
    type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>, Value)>>>;

    /// A tiny HTTP/1.1 server on a free port answering every request with `answer(body)` =
    /// (status, response body). Keep-alive connections are served in their own threads.
    fn mock(answer: impl Fn(&Value) -> (u16, String) + Send + Sync + 'static) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let (answer, seen2) = (Arc::new(answer), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (answer, seen) = (answer.clone(), seen2.clone());
                std::thread::spawn(move || serve(conn, &*answer, &seen));
            }
        });
        (base, seen)
    }

    fn serve(conn: TcpStream, answer: &dyn Fn(&Value) -> (u16, String), seen: &Seen) {
        let mut out = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (status, text) = answer(&body);
            seen.lock().unwrap().push((line.trim_end().to_string(), headers, body));
            let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", text.len());
            if out.write_all(head.as_bytes()).and_then(|_| out.write_all(text.as_bytes())).is_err() {
                return;
            }
        }
    }

    /// A chat completion whose content echoes the last message and the seed.
    fn echo(body: &Value) -> (u16, String) {
        let msgs = body["messages"].as_array().unwrap();
        let last = msgs.last().unwrap()["content"].as_str().unwrap();
        // Scramble completion order across threads.
        std::thread::sleep(Duration::from_millis((last.len() % 4) as u64 * 15));
        let reason = if body["max_tokens"] == 7 { "length" } else { "stop" };
        let content = format!("re: {last} #{}", body["seed"]);
        (200, json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": reason}], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}).to_string())
    }

    fn msgs(q: &str) -> Vec<ChatMessage> {
        vec![ChatMessage::system("Be brief."), ChatMessage::user(q)]
    }

    fn opts(max_new_tokens: usize) -> EvalOptions {
        EvalOptions::new(SamplingParams { temperature: 0.5, top_p: 0.9, max_new_tokens, seed: 11, ..Default::default() })
    }

    fn server(base: &str, key: Option<&str>) -> OpenAiServer {
        let mut cfg = ServerConfig::new(base, "served-model");
        cfg.api_key = key.map(str::to_string);
        cfg.concurrency = 3;
        cfg.request_timeout = Duration::from_secs(20);
        OpenAiServer::new(cfg).unwrap()
    }

    #[test]
    fn base_urls_are_normalized() {
        for u in ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", "http://h:8000/v1/chat/completions", " http://h:8000/v1 "] {
            assert_eq!(normalize_base_url(u).unwrap(), "http://h:8000/v1", "{u}");
        }
        assert_eq!(normalize_base_url("https://api.example.com/openai/v1").unwrap(), "https://api.example.com/openai/v1");
        assert!(normalize_base_url("h:8000").unwrap_err().to_string().contains("http://host:port"));
        assert!(normalize_base_url("http://").is_err());
    }

    #[test]
    fn prompt_rendering_and_seeds_are_fixed() {
        let m = vec![ChatMessage::system("S"), ChatMessage::user("Q?")];
        assert_eq!(render_messages(&m), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n");
        // Pinned: a changed fold would silently change every server eval's samples.
        assert_eq!(unit_seed(0, 0), splitmix64(splitmix64(0)) & 0x7FFF_FFFF);
        let seeds: std::collections::HashSet<u64> = (0..4u64).flat_map(|k| (0..50u64).map(move |i| unit_seed(3, (k << 32) | i))).collect();
        assert_eq!(seeds.len(), 200, "distinct units get distinct seeds");
        assert!(seeds.iter().all(|&s| s < 1 << 31));
        assert_ne!(unit_seed(3, 5), unit_seed(4, 5));
    }

    #[test]
    fn sends_one_request_per_unit_and_keeps_unit_order() {
        let (base, seen) = mock(echo);
        let s = server(&base, None);
        assert_eq!(s.endpoint(), format!("{base}/v1/chat/completions"));
        let questions: Vec<String> = (0..7).map(|i| format!("question {}{}", i, "?".repeat(i))).collect();
        let convs: Vec<Vec<ChatMessage>> = questions.iter().map(|q| msgs(q)).collect();
        let prompts: Vec<String> = convs.iter().map(|c| s.prompt_text(c).unwrap()).collect();
        let units: Vec<Unit<'_>> = (0..7).map(|i| Unit { index: i, sample: i % 2, id: "t.jsonl row 1", messages: &convs[i], prompt: &prompts[i] }).collect();
        let mut o = opts(32);
        o.stop_strings = vec!["</answer>".into()];
        let out = s.respond(&units, &o).unwrap();
        assert_eq!(out.len(), 7);
        for (u, r) in units.iter().zip(&out) {
            let seed = unit_seed(11, u.stream());
            assert_eq!(r.text, format!("re: {} #{seed}", questions[u.index]), "responses in unit order");
            assert_eq!((r.finish_reason.as_str(), r.tokens), ("stop", 4));
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 7, "one request per unit");
        for (line, headers, body) in seen.iter() {
            assert_eq!(line, "POST /v1/chat/completions HTTP/1.1");
            assert!(headers.iter().any(|(k, v)| k == "content-type" && v == "application/json"));
            assert!(!headers.iter().any(|(k, _)| k == "authorization"), "no key, no bearer header");
            let q = body["messages"][1]["content"].as_str().unwrap();
            let i = questions.iter().position(|x| x == q).unwrap();
            assert_eq!(body["messages"], json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": questions[i]}]));
            assert_eq!(body["model"], "served-model");
            assert_eq!((body["n"].clone(), body["max_tokens"].clone(), body["temperature"].clone(), body["top_p"].clone()), (json!(1), json!(32), json!(0.5), json!(0.9)));
            assert_eq!(body["seed"], unit_seed(11, units[i].stream()));
            assert_eq!(body["stop"], json!(["</answer>"]));
            assert!(body.get("top_k").is_none() && body.get("repetition_penalty").is_none(), "defaults are not sent: {body}");
        }
    }

    #[test]
    fn sends_vllm_extras_and_the_bearer_token_when_set() {
        let (base, seen) = mock(echo);
        let s = server(&base, Some("sk-test"));
        let conv = msgs("q");
        let mut o = opts(7);
        o.sampling.top_k = 20;
        o.sampling.repetition_penalty = 1.1;
        let r = s.respond(&[Unit { index: 0, sample: 0, id: "x row 1", messages: &conv, prompt: "p" }], &o).unwrap();
        assert_eq!(r[0].finish_reason, "length");
        let seen = seen.lock().unwrap();
        let (_, headers, body) = &seen[0];
        assert!(headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer sk-test"), "{headers:?}");
        assert_eq!((body["top_k"].clone(), body["repetition_penalty"].clone()), (json!(20), json!(1.1)));
        assert!(body.get("stop").is_none());
    }

    fn one_error(answer: impl Fn(&Value) -> (u16, String) + Send + Sync + 'static) -> String {
        let (base, _) = mock(answer);
        let conv = msgs("q");
        let e = server(&base, None).respond(&[Unit { index: 0, sample: 1, id: "data/test.jsonl row 4", messages: &conv, prompt: "p" }], &opts(8)).unwrap_err();
        assert!(matches!(e, EvalError::Server { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("{base}/v1/chat/completions")) && msg.contains("data/test.jsonl row 4 (sample 1)"), "names the URL and the example: {msg}");
        msg
    }

    #[test]
    fn http_errors_carry_the_servers_message() {
        let body = json!({"object": "error", "error": {"message": "This model's maximum context length is 2048 tokens", "type": "BadRequestError", "code": 400}}).to_string();
        let msg = one_error(move |_| (400, body.clone()));
        assert!(msg.contains("HTTP 400") && msg.contains("maximum context length is 2048"), "{msg}");
        let msg = one_error(|_| (503, "Service Unavailable".into()));
        assert!(msg.contains("HTTP 503: Service Unavailable"), "{msg}");
        let msg = one_error(|_| (404, json!({"detail": "Not Found"}).to_string()));
        assert!(msg.contains("HTTP 404: Not Found"), "{msg}");
    }

    #[test]
    fn malformed_answers_are_clear_errors() {
        let msg = one_error(|_| (200, "<html>gateway</html>".into()));
        assert!(msg.contains("not JSON") && msg.contains("<html>gateway"), "{msg}");
        let msg = one_error(|_| (200, json!({"object": "chat.completion", "usage": {}}).to_string()));
        assert!(msg.contains("no `choices`"), "{msg}");
        let msg = one_error(|_| (200, json!({"choices": [{"text": "legacy completion"}]}).to_string()));
        assert!(msg.contains("no `message.content`"), "{msg}");
    }

    #[test]
    fn connection_refused_is_a_clear_error() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = server(&format!("http://127.0.0.1:{port}"), None);
        let conv = msgs("q");
        let e = s.respond(&[Unit { index: 2, sample: 0, id: "t row 3", messages: &conv, prompt: "p" }], &opts(8)).unwrap_err().to_string();
        assert!(e.contains(&format!("http://127.0.0.1:{port}/v1/chat/completions")) && e.contains("t row 3"), "{e}");
        assert!(e.contains("connection refused") || e.contains("cannot reach the server"), "{e}");
    }

    #[test]
    fn parses_null_content_and_missing_usage() {
        let r = parse_completion(&json!({"choices": [{"message": {"role": "assistant", "content": null}, "finish_reason": "length"}]}).to_string()).unwrap();
        assert_eq!(r, Response { text: String::new(), finish_reason: "length".into(), tokens: 0 });
    }

    /// A whole `run_eval_with` against the mock: predictions carry the rendered prompt and the
    /// server's answers, an interrupted run resumes to the uninterrupted one, and a finished run
    /// sends nothing more.
    #[test]
    fn run_eval_through_a_server_resumes_like_a_local_run() {
        let (base, seen) = mock(echo);
        let s = server(&base, None);
        let host = medrl_plugin::PluginHost::new(medrl_plugin::HostConfig { cache_dir: None, ..Default::default() }).unwrap();
        let rewards = crate::run::RewardSet::load(&host, vec![], &medrl_plugin::Limits::default()).unwrap();
        let ex = |i: usize| {
            let ex = Example { messages: msgs(&format!("case {i}")), ground_truth: json!({"answer": format!("a{i}")}), metadata: json!({}), data_source: "mock".into() };
            (Origin { file: "mock.jsonl".into(), row: i + 1 }, ex)
        };
        let task = EvalTask { name: "mock".into(), examples: (0..3).map(ex).collect(), rewards: vec![], metrics: MetricSettings::default() };
        let cfg = RunConfig {
            label: format!("served-model @ {base}/v1"),
            model: format!("{base}/v1"),
            adapter: None,
            task: "mock".into(),
            split: "test".into(),
            n: 2,
            limit: None,
            temperature: 0.5,
            top_p: 0.9,
            top_k: 0,
            repetition_penalty: 1.0,
            max_new_tokens: 16,
            seed: 11,
            metrics: task.metrics.clone(),
        };
        let mut o = opts(16);
        o.n = 2;
        o.batch_size = 4;
        let (full, part) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let done = run_eval_with(&s, &task, &rewards, &cfg, &o, &RunControl::default(), full.path()).unwrap();
        assert_eq!(done.generated, 6);
        let preds = read_predictions(&full.path().join(crate::run::PREDICTIONS)).unwrap();
        assert_eq!(preds.len(), 6);
        for p in &preds {
            assert_eq!(p.prompt, render_messages(&msgs(&format!("case {}", p.index))));
            assert_eq!(p.response, format!("re: case {} #{}", p.index, unit_seed(11, ((p.sample as u64) << 32) | p.index as u64)));
            assert_eq!((p.finish_reason.as_str(), p.tokens, p.reference.clone()), ("stop", 4, Some(format!("a{}", p.index))));
        }
        let m = done.metrics.unwrap();
        assert_eq!((m.n_prompts, m.n_responses, m.mean_response_tokens), (3, 6, 4.0));

        let stopped = run_eval_with(&s, &task, &rewards, &cfg, &o, &RunControl { stop_after_batches: Some(1) }, part.path()).unwrap();
        assert!(stopped.metrics.is_none());
        assert_eq!(stopped.generated, 4);
        // Smaller batches on resume: a server's responses do not depend on their batch.
        o.batch_size = 1;
        let resumed = run_eval_with(&s, &task, &rewards, &cfg, &o, &RunControl::default(), part.path()).unwrap();
        assert_eq!((resumed.generated, resumed.resumed), (2, 4));
        let key = |d: &std::path::Path| {
            let mut v = read_predictions(&d.join(crate::run::PREDICTIONS)).unwrap();
            v.sort_by_key(|p| (p.index, p.sample));
            v
        };
        assert_eq!(key(part.path()), key(full.path()));
        assert_eq!(resumed.metrics, Some(m));

        let before = seen.lock().unwrap().len();
        assert_eq!(before, 12);
        let again = run_eval_with(&s, &task, &rewards, &cfg, &o, &RunControl::default(), full.path()).unwrap();
        assert_eq!((again.generated, seen.lock().unwrap().len()), (0, before), "a finished run sends no request");
    }
}
