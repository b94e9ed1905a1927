//! The HTTP side: routes, authentication, admission (429), and turning engine events into
//! OpenAI responses, whole or as server-sent events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medrl_lm::engine::{EngineConfig, FinishReason, Request};
use medrl_lm::generate::SamplingParams;
use medrl_lm::model::CausalLm;
use medrl_lm::tokenizer::{ChatMessage, TextTokenizer};
use serde_json::{json, Value};
use tokio::sync::mpsc as ampsc;

use crate::metrics::Metrics;
use crate::protocol::{parse, ApiError, ChatRequest, Checked, CompletionRequest, Prompt, Usage};
use crate::text::TextStream;
use crate::worker::{Event, Job, Worker};
use crate::ServeError;

/// A model to serve: the base, or the base with a LoRA adapter attached (it shares the base's
/// weight tensors; only the adapter's matrices and its own KV cache are extra).
pub struct ServedModel {
    pub name: String,
    /// The base's name, for an adapter.
    pub parent: Option<String>,
    pub model: CausalLm,
    pub tokenizer: Arc<TextTokenizer>,
    pub eos_token_ids: Vec<u32>,
    /// KV-cache blocks of `engine.block_size` slots for this model.
    pub num_blocks: usize,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Required as `Authorization: Bearer <key>` on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Requests accepted and not finished at most; beyond it a request gets 429.
    pub max_pending: usize,
    /// A request still running after this long is ended with an error (504).
    pub request_timeout: Duration,
    pub engine: EngineConfig,
}

struct Model {
    name: String,
    parent: Option<String>,
    worker: Worker,
    tokenizer: Arc<TextTokenizer>,
    eos: Vec<u32>,
    context: usize,
    /// KV-cache token slots: no single sequence can be longer.
    capacity: usize,
}

struct AppState {
    models: Vec<Model>,
    opts: ServeOptions,
    pending: AtomicUsize,
    metrics: Metrics,
    started: u64,
}

type Shared = Arc<AppState>;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Start the engine threads, bind, and serve until Ctrl-C or SIGTERM. `on_ready` gets the bound
/// address (the port when 0 was asked for) once requests are accepted.
pub fn serve(opts: ServeOptions, models: Vec<ServedModel>, on_ready: impl FnOnce(SocketAddr) + Send + 'static) -> Result<(), ServeError> {
    if models.is_empty() {
        return Err(ServeError::Config("no model to serve".into()));
    }
    let mut served = Vec::with_capacity(models.len());
    for m in models {
        if served.iter().any(|s: &Model| s.name == m.name) {
            return Err(ServeError::Config(format!("two models are named `{}`", m.name)));
        }
        let context = m.model.cfg.max_position_embeddings;
        let capacity = m.num_blocks * opts.engine.block_size;
        let worker = Worker::spawn(&m.name, m.model, m.tokenizer.clone(), opts.engine, m.num_blocks).map_err(ServeError::Io)?;
        served.push(Model { name: m.name, parent: m.parent, worker, tokenizer: m.tokenizer, eos: m.eos_token_ids, context, capacity });
    }
    let state = Arc::new(AppState { models: served, opts: opts.clone(), pending: AtomicUsize::new(0), metrics: Metrics::default(), started: now_secs() });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("medrl-http").build().map_err(ServeError::Io)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port)).await.map_err(|e| ServeError::Bind(format!("{}:{}", opts.host, opts.port), e))?;
        let addr = listener.local_addr().map_err(ServeError::Io)?;
        on_ready(addr);
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown()).await.map_err(ServeError::Io)
    })
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "no such route; medrl serves /v1/models, /v1/chat/completions, /v1/completions, /health and /metrics") })
        // Prompts are checked in tokens against the context; bytes only need a generous cap.
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(st): State<Shared>) -> Response {
    let mut gauges = Vec::new();
    let l = |m: &Model| format!("{{model=\"{}\"}}", m.name);
    for (name, help, f) in [
        ("medrl_requests_waiting", "Sequences queued for the engine (preempted ones included).", (|w: &crate::worker::WorkerStats| w.waiting.load(Ordering::Relaxed)) as fn(&crate::worker::WorkerStats) -> usize),
        ("medrl_requests_running", "Sequences in the engine's running batch.", |w| w.running.load(Ordering::Relaxed)),
        ("medrl_kv_cache_blocks_used", "KV-cache blocks in use.", |w| w.blocks_used.load(Ordering::Relaxed)),
        ("medrl_kv_cache_blocks_total", "KV-cache blocks allocated.", |w| w.blocks_total.load(Ordering::Relaxed)),
    ] {
        for m in &st.models {
            gauges.push((name, help, l(m), f(&m.worker.stats) as f64));
        }
    }
    gauges.push(("medrl_requests_pending", "Requests accepted and not finished (the 429 bound counts these).", String::new(), st.pending.load(Ordering::Relaxed) as f64));
    let body = st.metrics.render(&gauges);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.opts.api_key else { return Ok(()) };
    let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::status(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)"))
    }
}

/// Comparison whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn list_models(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        st.metrics.request("models", e.status.as_u16());
        return e.into_response();
    }
    st.metrics.request("models", 200);
    let data: Vec<Value> = st
        .models
        .iter()
        .map(|m| {
            json!({"id": m.name, "object": "model", "created": st.started, "owned_by": "medrl",
                   "root": m.parent.as_deref().unwrap_or(&m.name), "parent": m.parent, "max_model_len": m.context})
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Holds a place in the pending count for as long as a request runs.
struct Admission(Shared);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn admit(st: &Shared) -> Result<Admission, ApiError> {
    let before = st.pending.fetch_add(1, Ordering::AcqRel);
    let guard = Admission(st.clone());
    if before >= st.opts.max_pending {
        return Err(ApiError::status(StatusCode::TOO_MANY_REQUESTS, format!("the server is at its limit of {} pending requests; retry later", st.opts.max_pending)));
    }
    Ok(guard)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Completion => "completions",
        }
    }
}

/// A checked request, ready for the engine.
struct Prepared {
    model: usize,
    prompts: Vec<Vec<u32>>,
    checked: Checked,
    max_tokens: usize,
}

fn find_model(st: &AppState, name: &str) -> Result<usize, ApiError> {
    st.models.iter().position(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = st.models.iter().map(|m| m.name.as_str()).collect();
        ApiError { status: StatusCode::NOT_FOUND, message: format!("the model `{name}` does not exist; served: {}", names.join(", ")), param: Some("model".into()) }
    })
}

/// Context and cache checks, and the token budget when `max_tokens` is absent (what is left of
/// the context, as vLLM).
fn budget(m: &Model, prompts: &[Vec<u32>], c: &Checked, field: &str) -> Result<usize, ApiError> {
    let limit = m.context.min(m.capacity);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + 1 > limit {
        let what = if m.capacity < m.context { format!("the KV cache holds {} tokens (raise --kv-cache-mib)", m.capacity) } else { format!("the model's context is {} tokens", m.context) };
        return Err(ApiError::bad(field, format!("the prompt has {longest} tokens; {what}, so none would be left to generate")));
    }
    match c.max_tokens {
        Some(t) if longest + t > limit => {
            let what = if m.capacity < m.context { format!("the KV cache holds {} tokens", m.capacity) } else { format!("this model's maximum context length is {} tokens", m.context) };
            Err(ApiError::bad("max_tokens", format!("{what}; this request asks for {} ({longest} in the prompt, {t} to generate)", longest + t)))
        }
        Some(t) => Ok(t),
        None => Ok(limit - longest),
    }
}

fn prepare_chat(st: &AppState, body: &[u8]) -> Result<(Prepared, String), ApiError> {
    let mut req: ChatRequest = parse(body)?;
    let (msgs, checked) = req.check()?;
    let model = find_model(st, &req.model)?;
    let m = &st.models[model];
    let messages: Vec<ChatMessage> = msgs.into_iter().map(|(r, c)| ChatMessage::new(r, c)).collect();
    let text = m.tokenizer.apply_chat_template(&messages, true).map_err(|e| ApiError::bad("messages", format!("the chat template failed: {e}")))?;
    let ids = m.tokenizer.encode(&text, false).map_err(|e| ApiError::bad("messages", e.to_string()))?;
    let prompts = vec![ids];
    let max_tokens = budget(m, &prompts, &checked, "messages")?;
    Ok((Prepared { model, prompts, checked, max_tokens }, req.model))
}

fn prepare_completion(st: &AppState, body: &[u8]) -> Result<(Prepared, String), ApiError> {
    let req: CompletionRequest = parse(body)?;
    let (prompts, checked) = req.check()?;
    let model = find_model(st, &req.model)?;
    let m = &st.models[model];
    let vocab = m.tokenizer.vocab_size().max(m.eos.iter().map(|&e| e as usize + 1).max().unwrap_or(0));
    let mut ids = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.into_iter().enumerate() {
        ids.push(match p {
            // As `medrl generate` encodes a plain prompt.
            Prompt::Text(t) => m.tokenizer.encode(&t, true).map_err(|e| ApiError::bad("prompt", e.to_string()))?,
            Prompt::Ids(v) => {
                if let Some(bad) = v.iter().find(|&&t| t as usize >= vocab) {
                    return Err(ApiError::bad(format!("prompt[{i}]"), format!("token id {bad} is outside the vocabulary ({vocab})")));
                }
                v
            }
        });
    }
    let max_tokens = budget(m, &ids, &checked, "prompt")?;
    Ok((Prepared { model, prompts: ids, checked, max_tokens }, req.model))
}

async fn chat(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    handle(st, headers, body, Kind::Chat).await
}

async fn completions(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    handle(st, headers, body, Kind::Completion).await
}

async fn handle(st: Shared, headers: HeaderMap, body: Bytes, kind: Kind) -> Response {
    let arrived = Instant::now();
    let out = start(&st, &headers, &body, kind, arrived).await;
    match out {
        Ok(r) => r,
        Err(e) => {
            st.metrics.request(kind.endpoint(), e.status.as_u16());
            e.into_response()
        }
    }
}

async fn start(st: &Shared, headers: &HeaderMap, body: &[u8], kind: Kind, arrived: Instant) -> Result<Response, ApiError> {
    authorize(st, headers)?;
    // Tokenizing a long prompt is CPU work: keep it off the async workers.
    let (p, model_name) = {
        let st2 = st.clone();
        let body = body.to_vec();
        tokio::task::spawn_blocking(move || match kind {
            Kind::Chat => prepare_chat(&st2, &body),
            Kind::Completion => prepare_completion(&st2, &body),
        })
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, format!("request preparation failed: {e}")))??
    };
    let admission = admit(st)?;
    let m = &st.models[p.model];
    let c = &p.checked;
    let seed = c.seed.unwrap_or_else(rand::random);
    let (tx, rx) = ampsc::unbounded_channel();
    let deadline = arrived + st.opts.request_timeout;
    let prompt_tokens: usize = p.prompts.iter().map(Vec::len).sum();
    for (i, prompt) in p.prompts.iter().enumerate() {
        let request = Arc::new(Request {
            prompt: prompt.clone(),
            params: SamplingParams {
                temperature: c.temperature,
                top_p: c.top_p,
                top_k: c.top_k,
                repetition_penalty: c.repetition_penalty,
                max_new_tokens: p.max_tokens,
                // Prompt i of a batch draws from its own seed, so it samples as it would alone
                // only when it is the first; OpenAI gives no rule here.
                seed: seed.wrapping_add(i as u64),
            },
            eos_token_ids: if c.ignore_eos { vec![] } else { m.eos.clone() },
            stop_strings: c.stop.clone(),
            top_logprobs: c.logprobs.unwrap_or(0),
        });
        let job = Job { request, n: c.n, first_choice: i * c.n, deadline, events: tx.clone() };
        if !m.worker.submit(job) {
            return Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, format!("the engine of `{}` has stopped (see the server log)", m.name)));
        }
    }
    drop(tx);
    st.metrics.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    let resp = Responder {
        st: st.clone(),
        model: p.model,
        model_name,
        kind,
        id: format!("{}-{:024x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand::random::<u128>() >> 32),
        created: now_secs(),
        choices: (0..p.prompts.len() * c.n).map(|_| Choice::default()).collect(),
        stop: c.stop.clone(),
        logprobs: c.logprobs,
        prompt_tokens,
        arrived,
        first_token: false,
    };
    if c.stream {
        st.metrics.request(kind.endpoint(), 200);
        Ok(resp.stream(rx, admission, c.include_usage))
    } else {
        let r = resp.collect(rx).await;
        drop(admission);
        // Errors are counted by `handle`.
        if r.is_ok() {
            st.metrics.request(kind.endpoint(), 200);
        }
        r
    }
}

#[derive(Default)]
struct Choice {
    text: TextStream,
    /// (token, logprob, alternatives) of each generated token.
    logprobs: Vec<(u32, f32, Vec<(u32, f32)>)>,
    finish: Option<&'static str>,
}

/// Turns one request's engine events into its response.
struct Responder {
    st: Shared,
    model: usize,
    model_name: String,
    kind: Kind,
    id: String,
    created: u64,
    choices: Vec<Choice>,
    stop: Vec<String>,
    logprobs: Option<usize>,
    prompt_tokens: usize,
    arrived: Instant,
    first_token: bool,
}

/// What an event did to a choice: text to send, the token's log-probabilities, a finish reason.
struct Delta {
    choice: usize,
    /// A token was sampled (its log-probabilities are in `token` only when asked for).
    sampled: bool,
    text: String,
    token: Option<(u32, f32, Vec<(u32, f32)>)>,
    finish: Option<&'static str>,
}

impl Responder {
    fn tokenizer(&self) -> &TextTokenizer {
        &self.st.models[self.model].tokenizer
    }

    fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Apply an event; `Err` for a failed request.
    fn apply(&mut self, ev: Event) -> Result<Option<Delta>, ApiError> {
        match ev {
            Event::Failed { status, message } => Err(ApiError::status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), message)),
            Event::Token { choice, token, logprob, top } => {
                if !self.first_token {
                    self.first_token = true;
                    self.st.metrics.time_to_first_token.observe(self.arrived.elapsed().as_secs_f64());
                }
                self.st.metrics.completion_tokens.fetch_add(1, Ordering::Relaxed);
                let tok = self.st.models[self.model].tokenizer.clone();
                let Some(c) = self.choices.get_mut(choice) else { return Ok(None) };
                if c.finish.is_some() {
                    return Ok(None);
                }
                c.logprobs.push((token, logprob, top.clone()));
                let text = c.text.push(&tok, token, &self.stop);
                let finish = c.text.stopped().then_some("stop");
                c.finish = c.finish.or(finish);
                Ok(Some(Delta { choice, sampled: true, text, token: self.logprobs.map(|_| (token, logprob, top)), finish }))
            }
            Event::Done { choice, reason } => {
                let tok = self.st.models[self.model].tokenizer.clone();
                let Some(c) = self.choices.get_mut(choice) else { return Ok(None) };
                if c.finish.is_some() {
                    return Ok(None);
                }
                let text = c.text.finish(&tok, &self.stop);
                let finish = match reason {
                    FinishReason::Length if !c.text.stopped() => "length",
                    _ => "stop",
                };
                c.finish = Some(finish);
                Ok(Some(Delta { choice, sampled: false, text, token: None, finish: Some(finish) }))
            }
        }
    }

    fn usage(&self) -> Usage {
        Usage::new(self.prompt_tokens, self.choices.iter().map(|c| c.logprobs.len()).sum())
    }

    fn token_str(&self, id: u32) -> String {
        self.tokenizer().decode(&[id], false).unwrap_or_default()
    }

    fn chat_logprobs(&self, entries: &[(u32, f32, Vec<(u32, f32)>)]) -> Value {
        let k = self.logprobs.unwrap_or(0);
        let content: Vec<Value> = entries
            .iter()
            .map(|(t, lp, top)| {
                let s = self.token_str(*t);
                let alts: Vec<Value> = top.iter().take(k).map(|(a, alp)| {
                    let s = self.token_str(*a);
                    json!({"token": s, "logprob": alp, "bytes": s.as_bytes()})
                }).collect();
                json!({"token": s, "logprob": lp, "bytes": s.as_bytes(), "top_logprobs": alts})
            })
            .collect();
        json!({"content": content})
    }

    fn completion_logprobs(&self, entries: &[(u32, f32, Vec<(u32, f32)>)], mut offset: usize) -> Value {
        let k = self.logprobs.unwrap_or(0);
        let mut tokens = vec![];
        let mut lps = vec![];
        let mut tops = vec![];
        let mut offsets = vec![];
        for (t, lp, top) in entries {
            let s = self.token_str(*t);
            offsets.push(offset);
            offset += s.len();
            tokens.push(s);
            lps.push(*lp);
            let m: serde_json::Map<String, Value> = top.iter().take(k).map(|(a, alp)| (self.token_str(*a), json!(alp))).collect();
            tops.push(Value::Object(m));
        }
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": if k > 0 { json!(tops) } else { Value::Null }, "text_offset": offsets})
    }

    async fn collect(mut self, mut rx: ampsc::UnboundedReceiver<Event>) -> Result<Response, ApiError> {
        while !self.done() {
            let Some(ev) = rx.recv().await else {
                return Err(ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "the engine dropped the request"));
            };
            self.apply(ev)?;
        }
        let usage = self.usage();
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let lp = self.logprobs.map(|_| match self.kind {
                    Kind::Chat => self.chat_logprobs(&c.logprobs),
                    Kind::Completion => self.completion_logprobs(&c.logprobs, 0),
                });
                match self.kind {
                    Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text.text()}, "logprobs": lp, "finish_reason": c.finish}),
                    Kind::Completion => json!({"index": i, "text": c.text.text(), "logprobs": lp, "finish_reason": c.finish}),
                }
            })
            .collect();
        let object = if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        self.st.metrics.latency.observe(self.arrived.elapsed().as_secs_f64());
        Ok(Json(json!({"id": self.id, "object": object, "created": self.created, "model": self.model_name, "choices": choices, "usage": usage})).into_response())
    }

    fn chunk(&self, choices: Vec<Value>, include_usage: bool) -> SseEvent {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model_name, "choices": choices});
        if include_usage {
            v["usage"] = Value::Null;
        }
        SseEvent::default().data(v.to_string())
    }

    fn delta_choice(&self, d: &Delta, offsets: &mut HashMap<usize, usize>) -> Option<Value> {
        // Every token gets a chunk, even when its text is held back (an incomplete character,
        // a possible stop string): clients see progress and time to first token is honest.
        if d.text.is_empty() && d.token.is_none() && d.finish.is_none() && !d.sampled {
            return None;
        }
        let entries: Vec<_> = d.token.iter().cloned().collect();
        let offset = offsets.entry(d.choice).or_default();
        let lp = self.logprobs.map(|_| match self.kind {
            Kind::Chat => self.chat_logprobs(&entries),
            Kind::Completion => self.completion_logprobs(&entries, *offset),
        });
        *offset += d.text.len();
        Some(match self.kind {
            Kind::Chat => {
                let delta = if d.text.is_empty() && d.finish.is_some() { json!({}) } else { json!({"content": d.text}) };
                json!({"index": d.choice, "delta": delta, "logprobs": lp, "finish_reason": d.finish})
            }
            Kind::Completion => json!({"index": d.choice, "text": d.text, "logprobs": lp, "finish_reason": d.finish}),
        })
    }

    fn stream(mut self, mut rx: ampsc::UnboundedReceiver<Event>, admission: Admission, include_usage: bool) -> Response {
        // A bounded channel to the client: a slow reader holds the producer back, and a client
        // that goes away ends the task, which drops the engine's receiver and so the sequences.
        let (out, body) = ampsc::channel::<Result<SseEvent, Infallible>>(256);
        tokio::spawn(async move {
            let _admission = admission;
            let mut offsets = HashMap::new();
            if self.kind == Kind::Chat {
                // OpenAI's first chunk of each choice names the role.
                let first: Vec<Value> = (0..self.choices.len()).map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})).collect();
                if out.send(Ok(self.chunk(first, include_usage))).await.is_err() {
                    return;
                }
            }
            while !self.done() {
                let Some(ev) = rx.recv().await else { break };
                match self.apply(ev) {
                    Ok(Some(d)) => {
                        if let Some(c) = self.delta_choice(&d, &mut offsets) {
                            if out.send(Ok(self.chunk(vec![c], include_usage))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = out.send(Ok(SseEvent::default().data(e.body().to_string()))).await;
                        break;
                    }
                }
            }
            if include_usage && self.done() {
                let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
                let v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model_name, "choices": [], "usage": self.usage()});
                let _ = out.send(Ok(SseEvent::default().data(v.to_string()))).await;
            }
            self.st.metrics.latency.observe(self.arrived.elapsed().as_secs_f64());
            let _ = out.send(Ok(SseEvent::default().data("[DONE]"))).await;
        });
        let stream = futures_util::stream::unfold(body, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        Sse::new(stream).into_response()
    }
}
