//! A judge backed by a model medrl loads: the host side of the plugins' `judge` capability
//! ([`medrl_plugin::Judge`]). The plugin owns the prompt and the parsing; this module owns the
//! model.
//!
//! Two kinds (chosen in config, or read from `config.json`'s `architectures`):
//! - `classifier`: a `*ForSequenceClassification` checkpoint ([`medrl_lm::model::classifier`]);
//!   the score is `softmax(logits)[label]` (label by name from `id2label`, e.g. `True`, or by
//!   index; default index 1, as HuatuoGPT-o1's verifier is read). The prompt is tokenized as
//!   transformers' `tokenizer(text)` does (the post-processor's special tokens unless
//!   `add_special_tokens: false`; no chat template). `generate` is an error.
//! - `causal_lm`: a decoder LM; the score is P(`true_token`) of the next token after the prompt
//!   (rendered as one user turn through the chat template when the tokenizer has one, unless
//!   `chat_template: false`). `normalize: pair` (default) renormalizes over {`true_token`,
//!   `false_token`}: p = e^T / (e^T + e^F), a two-way probability comparable to a classifier's
//!   even when the LM puts most of its mass elsewhere (a newline, "The"); `normalize: vocab` is
//!   the plain softmax over the whole vocabulary. Each target must be one token of the judge's
//!   vocabulary (`"True"` and `" True"` are different tokens in byte-level BPE). `generate` is
//!   greedy decoding through [`medrl_lm::generate::generate`].
//!
//! Bounds: prompts longer than `max_length` tokens are truncated, by default from the left
//! (`truncation: left` keeps the end: the verifier's instruction and final token, where a
//! classifier reads its score, sit at the end; a leading BOS is kept). `generate` is capped at
//! `max_new_tokens`. Judge calls run on the host, outside the plugin's epoch deadline, so each
//! call has its own `timeout`, shortened to the calling plugin's deadline (`Judge::score_by`):
//! a call that has not started computing by then fails with a timeout error; a forward that has
//! started runs to completion (candle cannot interrupt one), its cost bounded by `max_length` x
//! `max_batch`.
//!
//! Concurrency: plugin worker threads call the judge at the same time. Requests go into a
//! queue; whichever caller finds the model free computes up to `max_batch` queued requests in
//! one padded forward (micro-batching) and hands each its result, then wakes the next waiting
//! caller. A request's score does not depend on its batch up to float rounding (padding is
//! masked, positions start at 0 in every row).
//!
//! medrl never downloads: `model` must be a local Hugging Face folder. A hub name
//! (`FreedomIntelligence/medical_o1_verifier_3B`) is refused with a message saying so.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::{Duration, Instant};

use medrl_lm::generate::{generate, SamplingParams, StopConditions};
use medrl_lm::model::classifier::{is_sequence_classifier, SequenceClassifier};
use medrl_lm::model::{build_attention_mask, load_classifier_dir, load_model_dir, CausalLm, ModelError};
use medrl_plugin::Judge;
use medrl_lm::tokenizer::{ChatMessage, TextTokenizer, TokenizerError};

/// What kind of model backs the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum JudgeKind {
    /// A `*ForSequenceClassification` checkpoint: P(label) from its score head.
    Classifier,
    /// A causal LM: P(true_token) from its next-token logits.
    CausalLm,
}

/// How a causal-LM judge turns next-token logits into a probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Normalize {
    /// Softmax over {true_token, false_token} only.
    #[default]
    Pair,
    /// Softmax over the whole vocabulary.
    Vocab,
}

/// Which end of an over-long prompt is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Truncation {
    /// Drop tokens from the start (keep the end, where the verdict is read).
    #[default]
    Left,
    /// Drop tokens from the end.
    Right,
}

/// Everything that configures a [`ModelJudge`] (from task.yaml's judge grant or CLI flags).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeSettings {
    /// A local Hugging Face folder, as written (relative paths resolve against `base_dir`).
    pub model: String,
    /// Folder relative model paths are resolved against (the task folder); `None`: the cwd.
    pub base_dir: Option<PathBuf>,
    /// `None`: `classifier` when config.json declares `*ForSequenceClassification`, else `causal_lm`.
    pub kind: Option<JudgeKind>,
    /// Classifier label: a name from `id2label` or an index (default: index 1).
    pub label: Option<String>,
    pub true_token: String,
    pub false_token: String,
    pub normalize: Normalize,
    /// Causal LM: render the prompt as a user turn with the chat template (`None`: when the
    /// tokenizer has one).
    pub chat_template: Option<bool>,
    /// Apply the tokenizer's post-processor (e.g. a BOS) to a prompt that is not chat-rendered,
    /// as transformers' `tokenizer(text)` does by default. HuatuoGPT-o1 tokenizes its verifier
    /// prompt with `add_special_tokens=False`; for Qwen tokenizers (no BOS) both are the same.
    pub add_special_tokens: bool,
    /// Longest prompt in tokens; longer ones are truncated.
    pub max_length: usize,
    pub truncation: Truncation,
    /// Most requests computed in one forward.
    pub max_batch: usize,
    /// A call that has not started computing within this fails.
    pub timeout: Duration,
    /// Cap on `generate`'s `max_tokens`.
    pub max_new_tokens: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// `f32`, `bf16`, `f16` or `auto` (bf16 on CUDA, f32 on CPU).
    pub dtype: String,
}

impl JudgeSettings {
    /// Defaults for a model path, on the CPU.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            base_dir: None,
            kind: None,
            label: None,
            true_token: "True".into(),
            false_token: "False".into(),
            normalize: Normalize::Pair,
            chat_template: None,
            add_special_tokens: true,
            max_length: 4096,
            truncation: Truncation::Left,
            max_batch: 8,
            timeout: Duration::from_secs(120),
            max_new_tokens: 512,
            device: "cpu".into(),
            dtype: "auto".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(
        "judge model {name:?} is not a local folder and looks like a model-hub name; medrl never downloads models. \
         Download it yourself (e.g. `huggingface-cli download {name} --local-dir DIR`) and set the judge's `model` \
         (task.yaml) or --judge-model to that folder"
    )]
    HubName { name: String },
    #[error("judge model folder {0} not found")]
    NotFound(PathBuf),
    #[error("judge model {path}: {msg}")]
    Setup { path: PathBuf, msg: String },
    #[error("judge model: {0}")]
    Model(#[from] ModelError),
    #[error("judge tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    /// A judge prompt could not be rendered or encoded (the tokenizer's own message).
    #[error("{0}")]
    Encode(TokenizerError),
    #[error("the judge prompt encodes to no tokens")]
    EmptyPrompt,
    /// A forward pass (scoring or generation) failed or panicked.
    #[error("judge model {dir}: {msg}")]
    Forward { dir: PathBuf, msg: String },
    /// `generate` on a classifier judge.
    #[error("judge model {dir} is a sequence classifier: it scores prompts but cannot generate text")]
    CannotGenerate { dir: PathBuf },
    /// The call waited for the model past the calling plugin's deadline.
    #[error("judge call timed out: the model did not become free before the plugin call's deadline")]
    PluginDeadline,
    /// The call waited for the model past the judge's own `timeout`.
    #[error("judge call timed out: the model did not become free within {secs:.1} s (judge timeout)")]
    Timeout { secs: f64 },
}

/// `owner/name` or `name` made of the characters hub ids allow.
fn looks_like_hub_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    !s.starts_with('.')
        && !s.starts_with('~')
        && parts.len() <= 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

/// The judge model's folder: `model` as a path (relative to `base` when given). A missing
/// folder whose name looks like a hub id gets [`JudgeError::HubName`].
pub fn resolve_model_dir(model: &str, base: Option<&Path>) -> Result<PathBuf, JudgeError> {
    let p = Path::new(model);
    let path = match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    };
    if path.is_dir() {
        return Ok(path);
    }
    if looks_like_hub_name(model) {
        return Err(JudgeError::HubName { name: model.into() });
    }
    Err(JudgeError::NotFound(path))
}

/// Counters of a judge's work, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JudgeStats {
    /// Requests computed.
    pub requests: u64,
    /// Forwards (batches) run.
    pub batches: u64,
    /// Largest batch run.
    pub largest_batch: u64,
    /// Requests that timed out before computing.
    pub timeouts: u64,
}

enum Engine {
    Classifier { model: SequenceClassifier, label: usize },
    Causal { model: CausalLm, true_id: u32, false_id: u32, eos: Vec<u32>, pad: u32 },
}

enum Work {
    Score(Vec<u32>),
    Generate(Vec<u32>, usize),
}

enum Reply {
    Score(f64),
    Text(String),
}

#[derive(Default)]
struct SlotState {
    result: Option<Result<Reply, JudgeError>>,
    /// Set by a caller leaving the model free: "try to compute the queue".
    wake: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

impl Slot {
    fn finish(&self, r: Result<Reply, JudgeError>) {
        lock(&self.state).result = Some(r);
        self.cv.notify_all();
    }
    fn wake(&self) {
        lock(&self.state).wake = true;
        self.cv.notify_all();
    }
}

struct Request {
    id: u64,
    work: Work,
    slot: Arc<Slot>,
}

/// A mutex guard that survives poisoning: the protected data (queues, counters) stay
/// consistent because every critical section here is short and does not panic midway.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A judge backed by a loaded model (see the module doc).
pub struct ModelJudge {
    engine: Engine,
    tokenizer: TextTokenizer,
    settings: JudgeSettings,
    dir: PathBuf,
    kind: JudgeKind,
    chat: bool,
    bos: Option<u32>,
    queue: Mutex<VecDeque<Request>>,
    busy: Mutex<()>,
    next_id: AtomicU64,
    stats: Mutex<JudgeStats>,
}

impl std::fmt::Debug for ModelJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelJudge").field("dir", &self.dir).field("kind", &self.kind).finish()
    }
}

/// The single token id of a target word: its encoding when that is one token, else a
/// vocabulary entry of that exact spelling.
fn single_token(tok: &TextTokenizer, word: &str, key: &str, dir: &Path) -> Result<u32, JudgeError> {
    let ids = tok.encode(word, false)?;
    match ids.as_slice() {
        [one] => Ok(*one),
        _ => tok.token_to_id(word).ok_or_else(|| JudgeError::Setup {
            path: dir.into(),
            msg: format!(
                "{key} {word:?} is {} tokens ({ids:?}) in this tokenizer; it must be a single token (try it with or without a leading space)",
                ids.len()
            ),
        }),
    }
}

impl ModelJudge {
    /// Load the judge model `settings` names.
    pub fn load(settings: JudgeSettings) -> Result<Self, JudgeError> {
        let dir = resolve_model_dir(&settings.model, settings.base_dir.as_deref())?;
        let setup = |msg: String| JudgeError::Setup { path: dir.clone(), msg };
        if settings.max_length == 0 || settings.max_batch == 0 {
            return Err(setup("max_length and max_batch must be at least 1".into()));
        }
        let device = medrl_lm::model::parse_device(&settings.device).map_err(|e| setup(e.to_string()))?;
        let dtype = medrl_lm::model::parse_dtype(&settings.dtype, &device).map_err(|e| setup(e.to_string()))?;
        let cfg_path = dir.join("config.json");
        let raw: serde_json::Value = std::fs::read_to_string(&cfg_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| setup("config.json is missing or not JSON".into()))?;
        let declared_classifier = is_sequence_classifier(&raw);
        let kind = settings.kind.unwrap_or(if declared_classifier { JudgeKind::Classifier } else { JudgeKind::CausalLm });
        match (kind, declared_classifier) {
            (JudgeKind::CausalLm, true) => {
                return Err(setup("config.json declares a *ForSequenceClassification model; use kind: classifier".into()))
            }
            (JudgeKind::Classifier, false) => {
                return Err(setup(format!(
                    "kind classifier needs a *ForSequenceClassification checkpoint, but config.json declares {}",
                    raw.get("architectures").cloned().unwrap_or_default()
                )))
            }
            _ => {}
        }
        let (engine, tokenizer, bos) = match kind {
            JudgeKind::Classifier => {
                let c = load_classifier_dir(&dir, &device, dtype)?;
                let label = match &settings.label {
                    None => 1,
                    Some(l) => c.model.label_index(l).ok_or_else(|| setup(format!("label {l:?} is not one of {:?} (or an index)", c.model.labels)))?,
                };
                if label >= c.model.num_labels() {
                    return Err(setup(format!("label index {label} but the classifier has {} labels", c.model.num_labels())));
                }
                let bos = c.model.body.cfg.bos_token_id;
                (Engine::Classifier { model: c.model, label }, c.tokenizer, bos)
            }
            JudgeKind::CausalLm => {
                let m = load_model_dir(&dir, &device, dtype)?;
                let true_id = single_token(&m.tokenizer, &settings.true_token, "true_token", &dir)?;
                let false_id = single_token(&m.tokenizer, &settings.false_token, "false_token", &dir)?;
                if true_id == false_id {
                    return Err(setup("true_token and false_token are the same token".into()));
                }
                let eos = m.generation.eos_token_ids.clone();
                let pad = m.generation.pad_token_id.or(eos.first().copied()).unwrap_or(0);
                let bos = m.generation.bos_token_id;
                (Engine::Causal { model: m.model, true_id, false_id, eos, pad }, m.tokenizer, bos)
            }
        };
        let chat = kind == JudgeKind::CausalLm && settings.chat_template.unwrap_or(tokenizer.chat_template.is_some());
        if chat && tokenizer.chat_template.is_none() {
            return Err(setup("chat_template: true but the tokenizer has no chat template".into()));
        }
        tracing::info!(dir = %dir.display(), ?kind, chat, device = ?device, ?dtype, "judge model loaded");
        Ok(Self {
            engine,
            tokenizer,
            settings,
            dir,
            kind,
            chat,
            bos,
            queue: Mutex::new(VecDeque::new()),
            busy: Mutex::new(()),
            next_id: AtomicU64::new(0),
            stats: Mutex::new(JudgeStats::default()),
        })
    }

    pub fn kind(&self) -> JudgeKind {
        self.kind
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn settings(&self) -> &JudgeSettings {
        &self.settings
    }
    pub fn stats(&self) -> JudgeStats {
        *lock(&self.stats)
    }
    /// Label names of a classifier judge (empty for a causal LM).
    pub fn labels(&self) -> &[String] {
        match &self.engine {
            Engine::Classifier { model, .. } => &model.labels,
            Engine::Causal { .. } => &[],
        }
    }

    /// The token ids the model sees for a prompt: rendered, encoded and truncated.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, JudgeError> {
        let ids = if self.chat {
            self.tokenizer.encode_chat(&[ChatMessage::user(prompt)], true)
        } else {
            self.tokenizer.encode(prompt, self.settings.add_special_tokens)
        }
        .map_err(JudgeError::Encode)?;
        if ids.is_empty() {
            return Err(JudgeError::EmptyPrompt);
        }
        Ok(truncate(ids, self.settings.max_length, self.settings.truncation, self.bos))
    }

    /// Scores of several prompts in one call (batched by `max_batch`), in order. Runs on the
    /// caller's thread once the model is free, without the per-call timeout.
    pub fn score_many(&self, prompts: &[&str]) -> Result<Vec<f64>, JudgeError> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.prompt_ids(p)).collect::<Result<_, _>>()?;
        let guard = lock(&self.busy);
        let mut out = Vec::with_capacity(prompts.len());
        let mut result = Ok(());
        for chunk in ids.chunks(self.settings.max_batch) {
            match self.score_ids(chunk) {
                Ok(p) => out.extend(p),
                Err(e) => {
                    result = Err(JudgeError::Forward { dir: self.dir.clone(), msg: e.to_string() });
                    break;
                }
            }
        }
        self.release(guard);
        result.map(|_| out)
    }

    /// Free the model and let the oldest queued caller compute what is waiting.
    fn release(&self, guard: std::sync::MutexGuard<'_, ()>) {
        let next = lock(&self.queue).front().map(|r| r.slot.clone());
        drop(guard);
        if let Some(s) = next {
            s.wake();
        }
    }

    /// One forward over a batch of prompts: the probability of each.
    fn score_ids(&self, batch: &[Vec<u32>]) -> candle_core::Result<Vec<f64>> {
        match &self.engine {
            Engine::Classifier { model, label } => Ok(model.probabilities(batch)?.into_iter().map(|p| p[*label]).collect()),
            Engine::Causal { model, true_id, false_id, pad, .. } => {
                let logits = next_token_logits(model, batch, *pad)?;
                let rows: Vec<Vec<f32>> = logits.to_vec2()?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        let (t, f) = (row[*true_id as usize] as f64, row[*false_id as usize] as f64);
                        match self.settings.normalize {
                            Normalize::Pair => 1.0 / (1.0 + (f - t).exp()),
                            Normalize::Vocab => {
                                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                                let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
                                (t - m).exp() / z
                            }
                        }
                    })
                    .collect())
            }
        }
    }

    fn generate_ids(&self, batch: &[(Vec<u32>, usize)]) -> candle_core::Result<Vec<String>> {
        let Engine::Causal { model, eos, pad, .. } = &self.engine else {
            candle_core::bail!("a classifier cannot generate");
        };
        let prompts: Vec<Vec<u32>> = batch.iter().map(|(p, _)| p.clone()).collect();
        let longest = batch.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let params = SamplingParams { temperature: 0.0, max_new_tokens: longest, ..Default::default() };
        let stop = StopConditions { eos_token_ids: eos.clone(), ..Default::default() };
        let gens = generate(model, &prompts, &params, &stop, *pad, None)?;
        // Greedy decoding of a row does not depend on the others: cutting a row at its own
        // budget equals generating it alone with that budget.
        gens.into_iter()
            .zip(batch)
            .map(|(g, (_, n))| {
                let mut toks: Vec<u32> = g.tokens.into_iter().take(*n).collect();
                if toks.last().is_some_and(|t| eos.contains(t)) {
                    toks.pop();
                }
                self.tokenizer.decode(&toks, true).map_err(|e| candle_core::Error::Msg(e.to_string()))
            })
            .collect()
    }

    /// Run queued requests (up to `max_batch`), handing each its result.
    fn run_batch(&self, batch: Vec<Request>) {
        let mut scores = Vec::new();
        let mut gens = Vec::new();
        for r in batch {
            match r.work {
                Work::Score(ids) => scores.push((ids, r.slot)),
                Work::Generate(ids, n) => gens.push(((ids, n), r.slot)),
            }
        }
        let n = (scores.len() + gens.len()) as u64;
        let mut forwards = 0;
        // A panic inside candle must not leave callers waiting for results that never come.
        let caught = |f: &mut dyn FnMut() -> candle_core::Result<Vec<Reply>>| -> Result<Vec<Reply>, BatchFailure> {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(r) => r.map_err(|e| BatchFailure { dir: self.dir.clone(), msg: e.to_string() }),
                Err(_) => Err(BatchFailure { dir: self.dir.clone(), msg: "the forward pass panicked".into() }),
            }
        };
        if !scores.is_empty() {
            forwards += 1;
            let ids: Vec<Vec<u32>> = scores.iter().map(|(i, _)| i.clone()).collect();
            let r = caught(&mut || Ok(self.score_ids(&ids)?.into_iter().map(Reply::Score).collect()));
            deliver(r, scores.into_iter().map(|(_, s)| s));
        }
        if !gens.is_empty() {
            forwards += 1;
            let reqs: Vec<(Vec<u32>, usize)> = gens.iter().map(|(r, _)| r.clone()).collect();
            let r = caught(&mut || Ok(self.generate_ids(&reqs)?.into_iter().map(Reply::Text).collect()));
            deliver(r, gens.into_iter().map(|(_, s)| s));
        }
        let mut st = lock(&self.stats);
        st.requests += n;
        st.batches += forwards;
        st.largest_batch = st.largest_batch.max(n);
    }

    /// Queue one request and wait for its result, computing queued work while the model is free.
    /// It stops waiting for the model at the judge timeout, or at `by` (the calling plugin's
    /// deadline) if that comes first.
    fn submit(&self, work: Work, by: Option<Instant>) -> Result<Reply, JudgeError> {
        let own = Instant::now() + self.settings.timeout;
        let deadline = by.map_or(own, |b| b.min(own));
        let slot = Arc::new(Slot::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.queue).push_back(Request { id, work, slot: slot.clone() });
        loop {
            {
                let mut st = lock(&slot.state);
                if let Some(r) = st.result.take() {
                    return r;
                }
                st.wake = false;
            }
            let guard = match self.busy.try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(g) = guard {
                let batch: Vec<Request> = {
                    let mut q = lock(&self.queue);
                    let n = q.len().min(self.settings.max_batch);
                    q.drain(..n).collect()
                };
                if !batch.is_empty() {
                    self.run_batch(batch);
                }
                self.release(g);
                continue;
            }
            let mut st = lock(&slot.state);
            while st.result.is_none() && !st.wake {
                let now = Instant::now();
                if now < deadline {
                    st = slot.cv.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
                    continue;
                }
                drop(st);
                let mut q = lock(&self.queue);
                if let Some(i) = q.iter().position(|r| r.id == id) {
                    q.remove(i);
                    // A wake meant for this request would be lost: pass it on to the next one.
                    let next = q.front().map(|r| r.slot.clone());
                    drop(q);
                    if let Some(s) = next {
                        s.wake();
                    }
                    lock(&self.stats).timeouts += 1;
                    if deadline < own {
                        return Err(JudgeError::PluginDeadline);
                    }
                    return Err(JudgeError::Timeout { secs: self.settings.timeout.as_secs_f64() });
                }
                drop(q);
                // Already taken into a batch: the forward is bounded, wait for its result.
                st = lock(&slot.state);
                while st.result.is_none() {
                    st = slot.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}

/// A failed forward, handed to every request of its batch as [`JudgeError::Forward`].
#[derive(Debug, Clone)]
struct BatchFailure {
    dir: PathBuf,
    msg: String,
}

fn deliver(r: Result<Vec<Reply>, BatchFailure>, slots: impl Iterator<Item = Arc<Slot>>) {
    match r {
        Ok(replies) => {
            for (reply, s) in replies.into_iter().zip(slots) {
                s.finish(Ok(reply));
            }
        }
        Err(BatchFailure { dir, msg }) => {
            for s in slots {
                s.finish(Err(JudgeError::Forward { dir: dir.clone(), msg: msg.clone() }));
            }
        }
    }
}

/// Keep at most `max` tokens: the end (`Left`, keeping a leading BOS) or the start (`Right`).
pub fn truncate(ids: Vec<u32>, max: usize, side: Truncation, bos: Option<u32>) -> Vec<u32> {
    if ids.len() <= max {
        return ids;
    }
    match side {
        Truncation::Right => ids[..max].to_vec(),
        Truncation::Left => match bos {
            Some(b) if ids[0] == b && max > 1 => std::iter::once(b).chain(ids[ids.len() - (max - 1)..].iter().copied()).collect(),
            _ => ids[ids.len() - max..].to_vec(),
        },
    }
}

/// Next-token logits `[B, V]` (f32) after each prompt: right-padded, positions from 0, and only
/// the last real position of each row projected to the vocabulary.
fn next_token_logits(model: &CausalLm, batch: &[Vec<u32>], pad: u32) -> candle_core::Result<Tensor> {
    let device = model.device();
    let b = batch.len();
    let t = batch.iter().map(Vec::len).max().unwrap_or(0);
    if t == 0 || batch.iter().any(Vec::is_empty) {
        candle_core::bail!("empty prompt");
    }
    let mut ids = Vec::with_capacity(b * t);
    let mut last = Vec::with_capacity(b);
    let mut valid = Vec::with_capacity(b);
    for (row, s) in batch.iter().enumerate() {
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad, t - s.len())));
        last.push((row * t + s.len() - 1) as u32);
        valid.push((0..t).map(|i| i < s.len()).collect::<Vec<bool>>());
    }
    let input = Tensor::from_vec(ids, (b, t), device)?;
    let positions = Tensor::arange(0u32, t as u32, device)?.unsqueeze(0)?.repeat((b, 1))?;
    let mask = build_attention_mask(&valid, 0, t, device)?;
    let hidden = model.forward_hidden(&input, &positions, Some(&mask), None)?;
    let h = hidden.dim(2)?;
    let picked = hidden.reshape((b * t, h))?.index_select(&Tensor::new(last, device)?, 0)?;
    model.lm_logits(&picked)
}

impl ModelJudge {
    fn score_within(&self, prompt: &str, by: Option<Instant>) -> Result<f64, JudgeError> {
        let ids = self.prompt_ids(prompt)?;
        match self.submit(Work::Score(ids), by)? {
            Reply::Score(p) => Ok(p),
            Reply::Text(_) => unreachable!("a score request gets a score"),
        }
    }

    fn generate_within(&self, prompt: &str, max_tokens: u32, by: Option<Instant>) -> Result<String, JudgeError> {
        if self.kind == JudgeKind::Classifier {
            return Err(JudgeError::CannotGenerate { dir: self.dir.clone() });
        }
        let n = (max_tokens as usize).min(self.settings.max_new_tokens);
        if n == 0 {
            return Ok(String::new());
        }
        let ids = self.prompt_ids(prompt)?;
        match self.submit(Work::Generate(ids, n), by)? {
            Reply::Text(t) => Ok(t),
            Reply::Score(_) => unreachable!("a generate request gets text"),
        }
    }
}

/// Plugin calls pass their deadline (`*_by`): a judge call then waits for the model at most
/// until the plugin's call would time out anyway, so judge time counts against it.
///
/// The trait is medrl-plugin's: its errors are the text handed to the WebAssembly guest, so
/// [`JudgeError`] becomes a `String` here, and only here.
impl Judge for ModelJudge {
    fn score(&self, prompt: &str) -> Result<f64, String> {
        self.score_within(prompt, None).map_err(|e| e.to_string())
    }
    fn generate(&self, prompt: &str, max_tokens: u32) -> Result<String, String> {
        self.generate_within(prompt, max_tokens, None).map_err(|e| e.to_string())
    }
    fn score_by(&self, prompt: &str, deadline: Instant) -> Result<f64, String> {
        self.score_within(prompt, Some(deadline)).map_err(|e| e.to_string())
    }
    fn generate_by(&self, prompt: &str, max_tokens: u32, deadline: Instant) -> Result<String, String> {
        self.generate_within(prompt, max_tokens, Some(deadline)).map_err(|e| e.to_string())
    }
}

/// The judge is shared by plugin worker threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ModelJudge>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_and_paths() {
        assert!(looks_like_hub_name("FreedomIntelligence/medical_o1_verifier_3B"));
        assert!(looks_like_hub_name("gpt2"));
        assert!(!looks_like_hub_name("./models/verifier"));
        assert!(!looks_like_hub_name("/abs/verifier"));
        assert!(!looks_like_hub_name("a/b/c"));
        let e = resolve_model_dir("FreedomIntelligence/medical_o1_verifier_3B", None).unwrap_err();
        assert!(matches!(e, JudgeError::HubName { .. }));
        assert!(e.to_string().contains("never downloads"), "{e}");
        assert!(matches!(resolve_model_dir("./no/such/dir", None).unwrap_err(), JudgeError::NotFound(_)));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("v")).unwrap();
        assert_eq!(resolve_model_dir("v", Some(d.path())).unwrap(), d.path().join("v"));
    }

    fn fixture_judge(f: impl FnOnce(&mut JudgeSettings)) -> ModelJudge {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures/judge/llama-cls");
        let mut s = JudgeSettings::new(dir.to_string_lossy());
        f(&mut s);
        ModelJudge::load(s).unwrap()
    }

    fn wait_for_queue(j: &ModelJudge, n: usize) {
        let t0 = Instant::now();
        while lock(&j.queue).len() < n {
            assert!(t0.elapsed() < Duration::from_secs(30), "requests never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn queued_requests_are_computed_in_one_batch() {
        let j = Arc::new(fixture_judge(|s| s.max_batch = 8));
        let prompts = ["The patient has a fever.", "What is the dose?", "A", "Is this correct? True or False"];
        let want: Vec<f64> = prompts.iter().map(|p| j.score_many(&[p]).unwrap()[0]).collect();
        // Hold the model so that calls pile up in the queue, then let one caller run them all.
        let busy = lock(&j.busy);
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let j = j.clone();
                let p = prompts[i % prompts.len()];
                std::thread::spawn(move || (i, j.score(p).unwrap()))
            })
            .collect();
        wait_for_queue(&j, 6);
        drop(busy);
        let last = j.score(prompts[0]).unwrap();
        assert!((last - want[0]).abs() < 1e-6);
        for h in handles {
            let (i, p) = h.join().unwrap();
            assert!((p - want[i % prompts.len()]).abs() < 1e-6, "request {i}: {p} batched vs {} alone", want[i % prompts.len()]);
        }
        let st = j.stats();
        assert_eq!((st.requests, st.batches, st.largest_batch), (7, 1, 7), "{st:?}");
    }

    #[test]
    fn a_call_that_cannot_start_times_out() {
        let j = Arc::new(fixture_judge(|s| s.timeout = Duration::from_millis(50)));
        let busy = lock(&j.busy);
        let j2 = j.clone();
        let h = std::thread::spawn(move || j2.score("What is the dose?"));
        let e = h.join().unwrap().unwrap_err();
        drop(busy);
        assert!(e.contains("timed out"), "{e}");
        assert_eq!(j.stats().timeouts, 1);
        assert!(lock(&j.queue).is_empty(), "a timed-out request leaves the queue");
        // The judge still works afterwards.
        assert!(j.score("What is the dose?").unwrap() > 0.0);
    }

    /// A plugin's judge call waits for the model only until the plugin call's deadline, not
    /// the judge's own (much longer) timeout: judge time counts against the plugin.
    #[test]
    fn a_call_gives_up_at_the_plugin_deadline() {
        let j = Arc::new(fixture_judge(|s| s.timeout = Duration::from_secs(600)));
        let busy = lock(&j.busy);
        let j2 = j.clone();
        let t = Instant::now();
        let h = std::thread::spawn(move || j2.score_by("What is the dose?", Instant::now() + Duration::from_millis(50)));
        let e = h.join().unwrap().unwrap_err();
        drop(busy);
        assert!(e.contains("before the plugin call's deadline"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(lock(&j.queue).is_empty(), "a timed-out request leaves the queue");
        assert!(j.score("What is the dose?").unwrap() > 0.0);
    }

    /// The typed errors render the text plugins and users have always seen.
    #[test]
    fn judge_error_wording() {
        let dir = PathBuf::from("/m/verifier");
        assert_eq!(JudgeError::EmptyPrompt.to_string(), "the judge prompt encodes to no tokens");
        assert_eq!(JudgeError::Forward { dir: dir.clone(), msg: "the forward pass panicked".into() }.to_string(), "judge model /m/verifier: the forward pass panicked");
        assert_eq!(
            JudgeError::CannotGenerate { dir }.to_string(),
            "judge model /m/verifier is a sequence classifier: it scores prompts but cannot generate text"
        );
        assert_eq!(JudgeError::PluginDeadline.to_string(), "judge call timed out: the model did not become free before the plugin call's deadline");
        assert_eq!(JudgeError::Timeout { secs: 120.0 }.to_string(), "judge call timed out: the model did not become free within 120.0 s (judge timeout)");
    }

    #[test]
    fn truncation_keeps_the_requested_end() {
        let ids: Vec<u32> = (1..=10).collect();
        assert_eq!(truncate(ids.clone(), 4, Truncation::Left, None), [7, 8, 9, 10]);
        assert_eq!(truncate(ids.clone(), 4, Truncation::Right, None), [1, 2, 3, 4]);
        assert_eq!(truncate(ids.clone(), 4, Truncation::Left, Some(1)), [1, 8, 9, 10]);
        assert_eq!(truncate(ids.clone(), 20, Truncation::Left, Some(1)), ids);
    }
}
