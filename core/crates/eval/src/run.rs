//! Evaluating a model on a task: generate for every prompt of a split (K samples each), score
//! each response with the task's reward plugins, keep one [`Prediction`] per response, and
//! compute [`EvalMetrics`] from the predictions alone.
//!
//! Two entry points share the same code:
//! - [`evaluate`]: in memory, for validation inside SFT/GRPO training;
//! - [`run_eval`]: `medrl eval`, writing `predictions.jsonl` (appended and flushed per finished
//!   batch) and `metrics.json` into a run folder, resumable.
//!
//! Both work on a local model; [`evaluate_with`] and [`run_eval_with`] take any [`Responder`]
//! instead (what renders a prompt and answers work units): [`LocalModel`] is the local model,
//! `remote::OpenAiServer` an OpenAI-compatible server. Everything after the responses (rewards,
//! predictions, metrics, resuming) is the same code for both.
//!
//! **Determinism and resuming.** Response k of prompt i samples from RNG stream
//! `k·2³² + i` of the seed ([`medrl_lm::generate::generate_streams`]), so it does not depend on the
//! batch it lands in, and sample 0 of a `--n 4` run is the response of a `--n 1` run. Work units
//! `(i, k)` are cut into fixed batches of `batch_size`; a rerun skips every unit already in
//! `predictions.jsonl` and regenerates only the missing ones, in the same batches (so an
//! interrupted run resumed reproduces an uninterrupted one exactly: same batches, same padding).
//! Metrics are always recomputed from the whole file.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::{self, AnswerParser, ReadAnswer};
use super::metrics::{self as m, RougeTokenizer};
use medrl_data::{Example, Origin};
use medrl_lm::agent::{prompt_with_tools, AgentLoop, MultiTurn, ToolRunner, TurnRenderer};
use medrl_lm::generate::{generate_streams, EngineConfig, SamplingParams, StopConditions};
use medrl_lm::model::CausalLm;
use medrl_lm::tokenizer::{ChatMessage, TextTokenizer};
use medrl_reward::{is_correct, RewardError};

/// The reward types evaluation scores with, from medrl-reward (here under their former paths:
/// `Rewards` is [`medrl_reward::RewardSet`]).
pub use medrl_reward::{host, AccuracySpec, RewardResult, RewardSet, RewardSet as Rewards, RewardSpec};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Multi-turn generation with tools failed.
    #[error(transparent)]
    Agent(#[from] medrl_lm::agent::AgentError),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("generation: {0}")]
    Generate(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] medrl_lm::tokenizer::TokenizerError),
    #[error(transparent)]
    Reward(#[from] RewardError),
    /// A request to an evaluated server failed (`url`: the endpoint; `id`: the example).
    #[error("{url}: example {id}: {msg}")]
    Server { url: String, id: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io { path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------------------------
// What a task tells evaluation

/// HCC prognosis metrics: where the truth and the prediction are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurvivalSettings {
    /// Ground-truth field with the observed time in months.
    pub time_field: String,
    /// Ground-truth field with the event indicator (1 died, 0 censored).
    pub event_field: String,
    /// Horizons (months) of the time-dependent AUC and the Brier score.
    pub horizons: Vec<f64>,
    /// Response tag holding the JSON prediction (`survival_months`, `survival_1yr`, ...).
    pub response_tag: String,
}

impl Default for SurvivalSettings {
    fn default() -> Self {
        Self {
            time_field: "survival_months".into(),
            event_field: "if_death".into(),
            horizons: m::HORIZONS_MONTHS.to_vec(),
            response_tag: "hard_check_survival".into(),
        }
    }
}

/// The metrics a task asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricSettings {
    /// How to read a response's answer (extract-failure rate, majority vote).
    pub answer: AnswerParser,
    pub accuracy: Option<AccuracySpec>,
    /// Corpus BLEU against the reference answer (when examples have one).
    pub bleu: bool,
    /// ROUGE-1/2/L against the reference answer.
    pub rouge: bool,
    /// `None`: character-level when any reference contains CJK text, else rouge-score's.
    pub rouge_cjk: Option<bool>,
    /// HCC prognosis metrics (C-index, time-dependent AUC, Brier, stages).
    pub survival: Option<SurvivalSettings>,
    /// Bootstrap resamples for the C-index interval.
    pub bootstrap: usize,
    /// Text the prompt ends with that belongs to the answer (study-search's prompts end with
    /// `<answer>`): put before the response when parsing it.
    pub answer_prefix: String,
}

impl MetricSettings {
    fn full_response(&self, response: &str) -> String {
        format!("{}{response}", self.answer_prefix)
    }
    /// The parsed answer of a response.
    pub fn parse_answer(&self, response: &str) -> Option<String> {
        self.answer.parse(&self.full_response(response))
    }
    /// The text compared with the reference (BLEU/ROUGE).
    pub fn answer_text(&self, response: &str) -> String {
        self.answer.answer_text(&self.full_response(response))
    }
}

impl Default for MetricSettings {
    fn default() -> Self {
        Self { answer: AnswerParser::Text, accuracy: None, bleu: false, rouge: false, rouge_cjk: None, survival: None, bootstrap: 1000, answer_prefix: String::new() }
    }
}

/// A task as evaluation needs it (built from a task bundle by the CLI, or by a trainer).
pub struct EvalTask {
    pub name: String,
    pub examples: Vec<(Origin, Example)>,
    pub rewards: Vec<RewardSpec>,
    pub metrics: MetricSettings,
}

// ---------------------------------------------------------------------------------------------
// Predictions

/// One response, as written to `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Index of the example in the evaluated split (after `--limit`).
    pub index: usize,
    /// Sample number, 0..K.
    pub sample: usize,
    /// Where the example came from (file and row).
    pub id: String,
    /// The prompt as the model saw it (chat template applied; for a server, the responder's
    /// rendering of the messages, see `remote`).
    pub prompt: String,
    pub response: String,
    pub finish_reason: String,
    pub tokens: usize,
    #[serde(flatten)]
    pub reward: RewardResult,
    /// The parsed answer (`None`: nothing parsable).
    pub answer: Option<String>,
    /// Correct under the task's accuracy rule (`None` when the task defines none).
    pub correct: Option<bool>,
    /// The reference answer text, when the example has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub ground_truth: Value,
}

/// Generation settings shared by [`evaluate`] and [`run_eval`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub sampling: SamplingParams,
    /// Responses per prompt (test-time scaling).
    pub n: usize,
    /// Work units (prompt, sample) per generation batch.
    pub batch_size: usize,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    pub stop_strings: Vec<String>,
    /// Show a progress bar.
    pub progress: bool,
}

impl EvalOptions {
    /// Options for a responder that knows its own end-of-sequence tokens (a server): no eos or
    /// padding token.
    pub fn new(sampling: SamplingParams) -> Self {
        Self { sampling, n: 1, batch_size: 8, eos_token_ids: vec![], pad_token_id: 0, stop_strings: vec![], progress: false }
    }

    /// Options with the model's end-of-sequence and padding tokens.
    pub fn for_model(generation: &medrl_lm::tokenizer::GenerationDefaults, sampling: SamplingParams) -> Self {
        Self {
            sampling,
            n: 1,
            batch_size: 8,
            eos_token_ids: generation.eos_token_ids.clone(),
            pad_token_id: generation.pad_token_id.or(generation.eos_token_ids.first().copied()).unwrap_or(0),
            stop_strings: vec![],
            progress: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responders: who answers the prompts

/// One response to produce: sample `sample` of example `index`.
#[derive(Debug, Clone, Copy)]
pub struct Unit<'a> {
    pub index: usize,
    pub sample: usize,
    /// Where the example came from (file and row), for messages.
    pub id: &'a str,
    /// The prompt messages (a trailing assistant turn removed).
    pub messages: &'a [ChatMessage],
    /// The prompt text, from [`Responder::prompt_text`].
    pub prompt: &'a str,
}

impl Unit<'_> {
    /// The unit's random stream, `sample·2³² + index`: it names the response whatever batch it
    /// lands in (local generation samples from this ChaCha stream of the seed; a server gets
    /// a seed derived from it).
    pub fn stream(&self) -> u64 {
        stream_of(self.index, self.sample)
    }
}

/// One generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub text: String,
    /// Why it ended: `eos`, `stop` or `length` (a server's own reasons are kept as it says them).
    pub finish_reason: String,
    /// Generated tokens; 0 when the responder cannot know them.
    pub tokens: usize,
}

/// What evaluation needs from a model: its prompt text for a conversation, and responses to
/// work units. [`LocalModel`] generates in process; `remote::OpenAiServer` asks a server.
pub trait Responder {
    /// The prompt text recorded in predictions and given to the reward plugins (resuming
    /// compares it, so it must be deterministic).
    fn prompt_text(&self, messages: &[ChatMessage]) -> Result<String, EvalError>;
    /// One response per unit, in the units' order. Response k of prompt i must not depend on
    /// the other units of the call, so that batches can change and resumed runs match.
    fn respond(&self, units: &[Unit<'_>], opts: &EvalOptions) -> Result<Vec<Response>, EvalError>;
}

/// A model in this process: the chat template renders the prompt, [`generate_streams`] answers.
pub struct LocalModel<'a> {
    pub model: &'a CausalLm,
    pub tokenizer: &'a TextTokenizer,
}

impl Responder for LocalModel<'_> {
    fn prompt_text(&self, messages: &[ChatMessage]) -> Result<String, EvalError> {
        Ok(self.tokenizer.apply_chat_template(messages, true)?)
    }

    fn respond(&self, units: &[Unit<'_>], opts: &EvalOptions) -> Result<Vec<Response>, EvalError> {
        let tok = self.tokenizer;
        let prompts: Vec<Vec<u32>> = units.iter().map(|u| tok.encode(u.prompt, false)).collect::<Result<_, _>>()?;
        let streams: Vec<u64> = units.iter().map(Unit::stream).collect();
        let stop = StopConditions { eos_token_ids: opts.eos_token_ids.clone(), stop_strings: opts.stop_strings.clone(), tokenizer: Some(tok) };
        let gens = generate_streams(self.model, &prompts, &streams, &opts.sampling, &stop, opts.pad_token_id, None)?;
        gens.into_iter()
            .map(|g| {
                Ok(Response {
                    text: tok.decode(&g.tokens, true)?,
                    finish_reason: serde_json::to_value(g.finish_reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                    tokens: g.tokens.len(),
                })
            })
            .collect()
    }
}

/// A model in this process that may call tools: prompts describe the tools, and each response
/// is a whole multi-turn trajectory ([`AgentLoop`]: turns, tool calls answered in the sandbox,
/// replies), its text everything after the prompt, as the RL rollouts' rewards see it.
pub struct LocalAgent<'a> {
    pub model: &'a CausalLm,
    pub tokenizer: &'a TextTokenizer,
    pub tools: &'a dyn ToolRunner,
    pub renderer: &'a TurnRenderer,
    pub settings: &'a MultiTurn,
    pub engine: EngineConfig,
}

impl Responder for LocalAgent<'_> {
    fn prompt_text(&self, messages: &[ChatMessage]) -> Result<String, EvalError> {
        Ok(prompt_with_tools(self.tokenizer, messages, &self.tools.specs(), self.renderer.format())?)
    }

    fn respond(&self, units: &[Unit<'_>], opts: &EvalOptions) -> Result<Vec<Response>, EvalError> {
        let tok = self.tokenizer;
        let prompts: Vec<Vec<u32>> = units.iter().map(|u| tok.encode(u.prompt, false)).collect::<Result<_, _>>()?;
        let streams: Vec<u64> = units.iter().map(Unit::stream).collect();
        let stop = StopConditions { eos_token_ids: opts.eos_token_ids.clone(), stop_strings: opts.stop_strings.clone(), tokenizer: Some(tok) };
        let agent = AgentLoop { policy: self.model, tok, stop: &stop, engine: &self.engine, params: opts.sampling.clone(), settings: self.settings, renderer: self.renderer, tools: self.tools };
        agent
            .run(&prompts, &streams)?
            .into_iter()
            .map(|t| {
                let reason = if t.dropped.is_some() { "tool_failed".to_string() } else { format!("turns:{}", t.turns) };
                Ok(Response { text: tok.decode(&t.ids[t.prompt_len..], true)?, finish_reason: reason, tokens: t.generated })
            })
            .collect()
    }
}

/// An example ready to generate: prompt messages (a trailing assistant turn removed and used as
/// the reference when the ground truth has none) and their prompt text.
struct Prepared<'a> {
    id: String,
    messages: &'a [ChatMessage],
    text: String,
    reference: Option<String>,
    ex: &'a Example,
}

fn prepare<'a>(responder: &dyn Responder, examples: &'a [(Origin, Example)]) -> Result<Vec<Prepared<'a>>, EvalError> {
    examples
        .iter()
        .map(|(origin, ex)| {
            // The prompt and its reference, split as every other user of an example splits it.
            let messages = ex.prompt_messages();
            let reference = ex.reference().map(str::to_owned);
            if messages.is_empty() {
                return Err(EvalError::Invalid(format!("{origin}: no prompt message")));
            }
            let text = responder.prompt_text(messages)?;
            Ok(Prepared { id: origin.to_string(), messages, text, reference, ex })
        })
        .collect()
}

fn stream_of(index: usize, sample: usize) -> u64 {
    ((sample as u64) << 32) | index as u64
}

/// Generate and score one batch of work units.
fn run_batch(
    responder: &dyn Responder,
    prepared: &[Prepared<'_>],
    units: &[(usize, usize)],
    rewards: &RewardSet,
    settings: &MetricSettings,
    opts: &EvalOptions,
) -> Result<Vec<Prediction>, EvalError> {
    let work: Vec<Unit<'_>> = units
        .iter()
        .map(|&(i, k)| {
            let p = &prepared[i];
            Unit { index: i, sample: k, id: &p.id, messages: p.messages, prompt: &p.text }
        })
        .collect();
    let responses = responder.respond(&work, opts)?;
    if responses.len() != units.len() {
        return Err(EvalError::Invalid(format!("{} responses to {} prompts", responses.len(), units.len())));
    }
    let samples: Vec<_> = units
        .iter()
        .zip(&responses)
        .map(|(&(i, _), r)| {
            let p = &prepared[i];
            medrl_plugin::sample(&p.text, &r.text, &p.ex.ground_truth, &p.ex.metadata, &p.ex.data_source)
        })
        .collect();
    let scored = rewards.score(&samples)?;
    Ok(units
        .iter()
        .zip(responses)
        .zip(scored)
        .map(|((&(i, k), r), reward)| {
            let p = &prepared[i];
            let correct = settings.accuracy.as_ref().map(|a| is_correct(&reward, a));
            Prediction {
                index: i,
                sample: k,
                id: p.id.clone(),
                prompt: p.text.clone(),
                answer: settings.parse_answer(&r.text),
                response: r.text,
                finish_reason: r.finish_reason,
                tokens: r.tokens,
                reward,
                correct,
                reference: p.reference.clone(),
                ground_truth: p.ex.ground_truth.clone(),
            }
        })
        .collect())
}

fn all_units(n_examples: usize, k: usize) -> Vec<(usize, usize)> {
    (0..n_examples).flat_map(|i| (0..k).map(move |s| (i, s))).collect()
}

/// Evaluate in memory (validation during training): every example, `opts.n` responses each.
pub fn evaluate(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    examples: &[(Origin, Example)],
    rewards: &RewardSet,
    settings: &MetricSettings,
    opts: &EvalOptions,
) -> Result<(EvalMetrics, Vec<Prediction>), EvalError> {
    evaluate_with(&LocalModel { model, tokenizer }, examples, rewards, settings, opts)
}

/// [`evaluate`] with any responder.
pub fn evaluate_with(
    responder: &dyn Responder,
    examples: &[(Origin, Example)],
    rewards: &RewardSet,
    settings: &MetricSettings,
    opts: &EvalOptions,
) -> Result<(EvalMetrics, Vec<Prediction>), EvalError> {
    check_opts(opts)?;
    let prepared = prepare(responder, examples)?;
    let units = all_units(prepared.len(), opts.n);
    let mut preds = Vec::with_capacity(units.len());
    for batch in units.chunks(opts.batch_size) {
        preds.extend(run_batch(responder, &prepared, batch, rewards, settings, opts)?);
    }
    let metrics = compute_metrics(&preds, settings, opts.n)?;
    Ok((metrics, preds))
}

fn check_opts(opts: &EvalOptions) -> Result<(), EvalError> {
    if opts.n == 0 || opts.batch_size == 0 {
        return Err(EvalError::Invalid("n and batch_size must be at least 1".into()));
    }
    opts.sampling.validate().map_err(|(k, m)| EvalError::Invalid(format!("sampling.{k}: {m}")))
}

// ---------------------------------------------------------------------------------------------
// Run folders

pub const PREDICTIONS: &str = "predictions.jsonl";
pub const METRICS: &str = "metrics.json";
pub const RUN_CONFIG: &str = "eval_config.json";

/// What a run folder was made with; a rerun must match it to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Display name of the model (folder name, plus the adapter's).
    pub label: String,
    pub model: String,
    pub adapter: Option<String>,
    pub task: String,
    pub split: String,
    pub n: usize,
    pub limit: Option<usize>,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub metrics: MetricSettings,
}

/// How far [`run_eval`] got.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Responses generated by this call.
    pub generated: usize,
    /// Responses found in `predictions.jsonl` from earlier calls.
    pub resumed: usize,
    /// `None` when stopped early (`stop_after_batches`).
    pub metrics: Option<EvalMetrics>,
}

/// Read `predictions.jsonl`. A torn last line (the process was killed mid-write) is cut off the
/// file; any other unreadable line is an error.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>, EvalError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(EvalError::Io { path: path.into(), source: e }),
    };
    let mut out = Vec::new();
    let mut good_bytes = 0u64;
    let mut lines = std::io::BufReader::new(file).lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(io_err(path))?;
        let last = lines.peek().is_none();
        if line.trim().is_empty() {
            good_bytes += line.len() as u64 + 1;
            continue;
        }
        match serde_json::from_str::<Prediction>(&line) {
            Ok(p) => {
                out.push(p);
                good_bytes += line.len() as u64 + 1;
            }
            Err(_) if last => {
                tracing::warn!("{}: dropping a torn last line ({} bytes)", path.display(), line.len());
                let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                f.set_len(good_bytes).map_err(io_err(path))?;
            }
            Err(e) => return Err(EvalError::File { path: path.into(), msg: format!("line {}: {e}", i + 1) }),
        }
    }
    Ok(out)
}

/// Options of [`run_eval`] beyond [`EvalOptions`].
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Stop after generating this many batches (to test resuming); metrics are not written.
    pub stop_after_batches: Option<usize>,
}

/// `medrl eval`: evaluate into run folder `out`, resuming from its `predictions.jsonl`.
#[allow(clippy::too_many_arguments)]
pub fn run_eval(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    task: &EvalTask,
    rewards: &RewardSet,
    config: &RunConfig,
    opts: &EvalOptions,
    control: &RunControl,
    out: &Path,
) -> Result<RunOutcome, EvalError> {
    run_eval_with(&LocalModel { model, tokenizer }, task, rewards, config, opts, control, out)
}

/// [`run_eval`] with any responder (`medrl eval --server`).
#[allow(clippy::too_many_arguments)]
pub fn run_eval_with(
    responder: &dyn Responder,
    task: &EvalTask,
    rewards: &RewardSet,
    config: &RunConfig,
    opts: &EvalOptions,
    control: &RunControl,
    out: &Path,
) -> Result<RunOutcome, EvalError> {
    check_opts(opts)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let cfg_path = out.join(RUN_CONFIG);
    let cfg_json = serde_json::to_value(config).map_err(|e| EvalError::Invalid(e.to_string()))?;
    if cfg_path.exists() {
        let old: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?)
            .map_err(|e| EvalError::File { path: cfg_path.clone(), msg: e.to_string() })?;
        if old != cfg_json {
            let diff: Vec<String> = match (&old, &cfg_json) {
                (Value::Object(a), Value::Object(b)) => {
                    b.iter().filter(|(k, v)| a.get(*k) != Some(v)).map(|(k, v)| format!("{k}: {} -> {v}", a.get(k).unwrap_or(&Value::Null))).collect()
                }
                _ => vec![],
            };
            return Err(EvalError::File {
                path: cfg_path,
                msg: format!("this run folder was made with other settings ({}); use a new --out folder", diff.join(", ")),
            });
        }
    } else {
        medrl_base::fsutil::write_json_atomic(&cfg_path, &cfg_json).map_err(io_err(&cfg_path))?;
    }

    let prepared = prepare(responder, &task.examples)?;
    let pred_path = out.join(PREDICTIONS);
    let existing = read_predictions(&pred_path)?;
    let mut done: HashSet<(usize, usize)> = HashSet::new();
    for p in &existing {
        let Some(prep) = prepared.get(p.index) else {
            return Err(EvalError::File { path: pred_path, msg: format!("prediction for example {} but the split has {}", p.index, prepared.len()) });
        };
        if prep.text != p.prompt {
            return Err(EvalError::File {
                path: pred_path,
                msg: format!("example {} ({}) has a different prompt now: the task data changed; use a new --out folder", p.index, prep.id),
            });
        }
        done.insert((p.index, p.sample));
    }
    let units = all_units(prepared.len(), opts.n);
    let todo = units.iter().filter(|u| !done.contains(u)).count();
    if !existing.is_empty() {
        tracing::info!("resuming {}: {} responses done, {todo} to generate", out.display(), done.len());
    }
    let pb = opts.progress.then(|| medrl_base::progress::bar(todo as u64, "evaluating", "responses"));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&pred_path).map_err(io_err(&pred_path))?;
    let mut generated = 0;
    let mut batches = 0;
    for batch in units.chunks(opts.batch_size) {
        let missing: Vec<(usize, usize)> = batch.iter().copied().filter(|u| !done.contains(u)).collect();
        if missing.is_empty() {
            continue;
        }
        if control.stop_after_batches.is_some_and(|s| batches >= s) {
            if let Some(pb) = &pb {
                pb.finish_and_clear();
            }
            tracing::info!("stopped after {batches} batches ({generated} responses); rerun the same command to resume");
            return Ok(RunOutcome { generated, resumed: existing.len(), metrics: None });
        }
        let preds = run_batch(responder, &prepared, &missing, rewards, &task.metrics, opts)?;
        let mut buf = Vec::new();
        for p in &preds {
            serde_json::to_writer(&mut buf, p).map_err(|e| EvalError::Invalid(e.to_string()))?;
            buf.push(b'\n');
        }
        file.write_all(&buf).map_err(io_err(&pred_path))?;
        file.flush().map_err(io_err(&pred_path))?;
        file.sync_data().map_err(io_err(&pred_path))?;
        generated += preds.len();
        batches += 1;
        if let Some(pb) = &pb {
            pb.inc(preds.len() as u64);
        }
    }
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let all = read_predictions(&pred_path)?;
    let metrics = compute_metrics(&all, &task.metrics, opts.n)?;
    let path = out.join(METRICS);
    let v = serde_json::to_value(&metrics).map_err(|e| EvalError::Invalid(e.to_string()))?;
    medrl_base::fsutil::write_json_atomic(&path, &v).map_err(io_err(&path))?;
    Ok(RunOutcome { generated, resumed: existing.len(), metrics: Some(metrics) })
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Mean, standard deviation (population), min, max and count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self { n: values.len(), mean, std: var.sqrt(), min, max })
    }
}

/// Plugin failures over all responses (after the failure policy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureCounts {
    pub not_applicable: usize,
    pub substituted: usize,
    pub dropped: usize,
    /// Substituted and dropped samples by error kind.
    pub by_kind: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrfScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl From<m::Score> for PrfScore {
    fn from(s: m::Score) -> Self {
        Self { precision: s.precision, recall: s.recall, f1: s.fmeasure }
    }
}

/// Corpus BLEU and mean ROUGE of the first response of each prompt against its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextMetrics {
    /// Prompts with a reference answer.
    pub n: usize,
    /// sacreBLEU-compatible corpus BLEU, 0..100.
    pub bleu: Option<f64>,
    pub rouge1: Option<PrfScore>,
    pub rouge2: Option<PrfScore>,
    pub rouge_l: Option<PrfScore>,
    /// `rouge_score` or `cjk_chars`.
    pub rouge_tokenizer: String,
}

/// A C-index with its bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CIndex {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
    pub n_boot: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AucAt {
    pub months: f64,
    pub auc: f64,
    pub n_cases: usize,
    pub n_controls: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrierAtHorizon {
    pub months: f64,
    pub score: f64,
    /// Subjects whose status at the horizon is known and who gave a probability.
    pub n_used: usize,
}

/// HCC prognosis metrics over the first response of each prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurvivalMetrics {
    /// Prompts whose ground truth has survival months and an event flag.
    pub n_with_truth: usize,
    /// Of those, responses with a parsable predicted survival (months).
    pub n_predicted: usize,
    /// 1 - n_predicted / n_with_truth.
    pub extract_failure_rate: f64,
    /// Harrell's C-index of risk = -predicted months.
    pub c_index: Option<CIndex>,
    pub time_auc: Vec<AucAt>,
    pub brier: Vec<BrierAtHorizon>,
    /// Predicted prognosis group (from predicted months) -> count of responses.
    pub risk_groups: BTreeMap<String, usize>,
    /// BCLC stage from the response's clinical tags -> count.
    pub predicted_stage: BTreeMap<String, usize>,
    /// BCLC stage from the ground truth's clinical fields -> count.
    pub true_stage: BTreeMap<String, usize>,
    /// Share of responses whose stage equals the ground truth's (both known).
    pub stage_agreement: Option<f64>,
    /// Metrics that could not be computed, and why.
    pub notes: Vec<String>,
}

/// Test-time scaling: accuracy (and reward) using the first n responses of each prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingPoint {
    pub n: usize,
    /// Mean total reward of the response the reward selects (best-of-n).
    pub best_of_n_reward: Option<f64>,
    /// Accuracy of the reward-selected response.
    pub best_of_n_accuracy: Option<f64>,
    /// Accuracy of majority vote over parsed answers (a voted answer is correct when the
    /// first response giving it is).
    pub majority_accuracy: Option<f64>,
    /// Any of the n responses correct (pass@n; an upper bound).
    pub oracle_accuracy: Option<f64>,
}

/// Everything `metrics.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub n_prompts: usize,
    /// Responses per prompt (K).
    pub n_samples: usize,
    pub n_responses: usize,
    /// Total reward of the first response of each prompt (responses a plugin dropped excluded).
    pub reward: Option<Summary>,
    /// Total reward over all K responses.
    pub reward_all_samples: Option<Summary>,
    /// Each plugin's own score (first responses).
    pub reward_by_plugin: BTreeMap<String, Summary>,
    /// Each reward component (first responses).
    pub components: BTreeMap<String, Summary>,
    pub reward_failures: BTreeMap<String, FailureCounts>,
    /// Responses whose total reward is missing because a plugin dropped them.
    pub dropped_responses: usize,
    /// Share of first responses that are correct (when the task defines accuracy).
    pub accuracy: Option<f64>,
    /// Share of first responses without a parsable answer.
    pub extract_failure_rate: f64,
    /// Same over all K responses.
    pub extract_failure_rate_all_samples: f64,
    pub text: Option<TextMetrics>,
    pub survival: Option<SurvivalMetrics>,
    pub scaling: Vec<ScalingPoint>,
    /// Why a response ended: eos, stop, length -> count (all responses).
    pub finish_reasons: BTreeMap<String, usize>,
    pub mean_response_tokens: f64,
}

fn has_cjk(s: &str) -> bool {
    s.chars().any(|c| matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF))
}

/// Compute every metric from predictions (any order; K = `n_samples`).
pub fn compute_metrics(preds: &[Prediction], settings: &MetricSettings, n_samples: usize) -> Result<EvalMetrics, EvalError> {
    // Group by prompt, samples in order.
    let mut by_prompt: BTreeMap<usize, Vec<&Prediction>> = BTreeMap::new();
    for p in preds {
        by_prompt.entry(p.index).or_default().push(p);
    }
    for v in by_prompt.values_mut() {
        v.sort_by_key(|p| p.sample);
        v.dedup_by_key(|p| p.sample);
    }
    let firsts: Vec<&Prediction> = by_prompt.values().filter_map(|v| v.first().copied().filter(|p| p.sample == 0)).collect();
    let all: Vec<&Prediction> = by_prompt.values().flatten().copied().collect();

    let totals = |ps: &[&Prediction]| ps.iter().filter_map(|p| p.reward.total).collect::<Vec<_>>();
    let mut reward_by_plugin: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut components: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in &firsts {
        for (k, v) in &p.reward.by_plugin {
            if let Some(v) = v {
                reward_by_plugin.entry(k.clone()).or_default().push(*v);
            }
        }
        for (k, v) in &p.reward.components {
            components.entry(k.clone()).or_default().push(*v);
        }
    }
    let mut reward_failures: BTreeMap<String, FailureCounts> = BTreeMap::new();
    for p in &all {
        for (plugin, what) in &p.reward.failures {
            let c = reward_failures.entry(plugin.clone()).or_default();
            let (head, kind) = what.split_once(':').unwrap_or((what.as_str(), ""));
            match head {
                "not_applicable" => c.not_applicable += 1,
                "substituted" => c.substituted += 1,
                "dropped" => c.dropped += 1,
                _ => {}
            }
            if !kind.is_empty() {
                *c.by_kind.entry(kind.to_string()).or_default() += 1;
            }
        }
    }
    let rate = |ps: &[&Prediction]| if ps.is_empty() { 0.0 } else { ps.iter().filter(|p| p.answer.is_none()).count() as f64 / ps.len() as f64 };
    let accuracy = settings.accuracy.as_ref().and_then(|_| {
        (!firsts.is_empty()).then(|| firsts.iter().filter(|p| p.correct == Some(true)).count() as f64 / firsts.len() as f64)
    });

    let mut finish_reasons = BTreeMap::new();
    for p in &all {
        *finish_reasons.entry(p.finish_reason.clone()).or_insert(0) += 1;
    }
    let mean_response_tokens = if all.is_empty() { 0.0 } else { all.iter().map(|p| p.tokens as f64).sum::<f64>() / all.len() as f64 };

    Ok(EvalMetrics {
        n_prompts: by_prompt.len(),
        n_samples,
        n_responses: all.len(),
        reward: Summary::of(&totals(&firsts)),
        reward_all_samples: Summary::of(&totals(&all)),
        reward_by_plugin: reward_by_plugin.into_iter().filter_map(|(k, v)| Summary::of(&v).map(|s| (k, s))).collect(),
        components: components.into_iter().filter_map(|(k, v)| Summary::of(&v).map(|s| (k, s))).collect(),
        reward_failures,
        dropped_responses: all.iter().filter(|p| p.reward.total.is_none()).count(),
        accuracy,
        extract_failure_rate: rate(&firsts),
        extract_failure_rate_all_samples: rate(&all),
        text: text_metrics(&firsts, settings)?,
        survival: settings.survival.as_ref().map(|sv| survival_metrics(&firsts, sv, settings.bootstrap)),
        scaling: scaling(&by_prompt, settings, n_samples),
        finish_reasons,
        mean_response_tokens,
    })
}

fn text_metrics(firsts: &[&Prediction], settings: &MetricSettings) -> Result<Option<TextMetrics>, EvalError> {
    if !settings.bleu && !settings.rouge {
        return Ok(None);
    }
    let pairs: Vec<(String, &str)> =
        firsts.iter().filter_map(|p| p.reference.as_deref().map(|r| (settings.answer_text(&p.response), r))).collect();
    if pairs.is_empty() {
        return Ok(None);
    }
    let hyps: Vec<&str> = pairs.iter().map(|(h, _)| h.as_str()).collect();
    let refs: Vec<&str> = pairs.iter().map(|(_, r)| *r).collect();
    let cjk = settings.rouge_cjk.unwrap_or_else(|| refs.iter().any(|r| has_cjk(r)));
    let tok = if cjk { RougeTokenizer::CjkChars } else { RougeTokenizer::RougeScore };
    let bleu = if settings.bleu { Some(m::corpus_bleu(&hyps, &refs).map_err(|e| EvalError::Invalid(e.to_string()))?.score) } else { None };
    let rouge = if settings.rouge { Some(m::rouge(&hyps, &refs, tok).map_err(|e| EvalError::Invalid(e.to_string()))?.mean) } else { None };
    Ok(Some(TextMetrics {
        n: pairs.len(),
        bleu,
        rouge1: rouge.map(|r| r.rouge1.into()),
        rouge2: rouge.map(|r| r.rouge2.into()),
        rouge_l: rouge.map(|r| r.rouge_l.into()),
        rouge_tokenizer: if cjk { "cjk_chars" } else { "rouge_score" }.into(),
    }))
}

fn survival_metrics(firsts: &[&Prediction], sv: &SurvivalSettings, bootstrap: usize) -> SurvivalMetrics {
    let mut notes = Vec::new();
    let mut risk_groups: BTreeMap<String, usize> = BTreeMap::new();
    let mut predicted_stage: BTreeMap<String, usize> = BTreeMap::new();
    let mut true_stage: BTreeMap<String, usize> = BTreeMap::new();
    let (mut agree, mut both) = (0usize, 0usize);
    // Subjects with truth: (time, event, prediction)
    let mut subjects = Vec::new();
    for p in firsts {
        let pred = answer::HccPrediction::parse_tag(&p.response, &sv.response_tag);
        let months = pred.as_ref().and_then(|x| x.months);
        *risk_groups.entry(answer::risk_group(months).to_string()).or_default() += 1;
        let ps = answer::predicted_stage(&p.response);
        let gt_obj = match &p.ground_truth {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            v => v.clone(),
        };
        let ts = answer::true_stage(&gt_obj);
        *predicted_stage.entry(ps.unwrap_or("unknown").to_string()).or_default() += 1;
        *true_stage.entry(ts.unwrap_or("unknown").to_string()).or_default() += 1;
        if let (Some(a), Some(b)) = (ps, ts) {
            both += 1;
            agree += (a == b) as usize;
        }
        if let Some((t, e)) = answer::survival_truth(&p.ground_truth, &sv.time_field, &sv.event_field) {
            subjects.push((t, e, pred));
        }
    }
    let with_months: Vec<(f64, bool, f64)> = subjects.iter().filter_map(|(t, e, p)| p.as_ref().and_then(|p| p.months).map(|mo| (*t, *e, -mo))).collect();
    let times: Vec<f64> = with_months.iter().map(|x| x.0).collect();
    let events: Vec<bool> = with_months.iter().map(|x| x.1).collect();
    let risk: Vec<f64> = with_months.iter().map(|x| x.2).collect();
    let c_index = if with_months.is_empty() {
        notes.push("C-index: no response predicted survival months".into());
        None
    } else {
        match m::concordance_index_ci(&times, &risk, &events, bootstrap, 0.95, 0) {
            Ok(c) => Some(CIndex { estimate: c.estimate, lower: c.lower, upper: c.upper, level: c.level, n_boot: c.n_boot }),
            Err(e) => {
                notes.push(format!("C-index: {e}"));
                None
            }
        }
    };
    let mut time_auc = Vec::new();
    let mut brier = Vec::new();
    for &t in &sv.horizons {
        if !with_months.is_empty() {
            match m::time_dependent_auc(&times, &events, &risk, t) {
                Ok(a) => time_auc.push(AucAt { months: t, auc: a.auc, n_cases: a.n_cases, n_controls: a.n_controls }),
                Err(e) => notes.push(format!("AUC at {t} months: {e}")),
            }
        }
        let rows: Vec<(f64, bool, f64)> = subjects.iter().filter_map(|(time, e, p)| p.as_ref().and_then(|p| p.prob_at(t)).map(|q| (*time, *e, q))).collect();
        if rows.is_empty() {
            notes.push(format!("Brier at {t} months: no response gave a probability of survival at {} years", t / 12.0));
            continue;
        }
        let tt: Vec<f64> = rows.iter().map(|x| x.0).collect();
        let ee: Vec<bool> = rows.iter().map(|x| x.1).collect();
        let qq: Vec<f64> = rows.iter().map(|x| x.2).collect();
        match m::brier_score_at(&tt, &ee, &qq, t) {
            Ok(b) => brier.push(BrierAtHorizon { months: t, score: b.score, n_used: b.n_used }),
            Err(e) => notes.push(format!("Brier at {t} months: {e}")),
        }
    }
    let n_with_truth = subjects.len();
    SurvivalMetrics {
        n_with_truth,
        n_predicted: with_months.len(),
        extract_failure_rate: if n_with_truth == 0 { 0.0 } else { 1.0 - with_months.len() as f64 / n_with_truth as f64 },
        c_index,
        time_auc,
        brier,
        risk_groups,
        predicted_stage,
        true_stage,
        stage_agreement: (both > 0).then(|| agree as f64 / both as f64),
        notes,
    }
}

fn scaling(by_prompt: &BTreeMap<usize, Vec<&Prediction>>, settings: &MetricSettings, k: usize) -> Vec<ScalingPoint> {
    // Only prompts with all K responses take part, so every n uses the same prompts.
    let full: Vec<&Vec<&Prediction>> = by_prompt.values().filter(|v| v.len() >= k && v.iter().take(k).enumerate().all(|(i, p)| p.sample == i)).collect();
    if full.is_empty() {
        return vec![];
    }
    let has_acc = settings.accuracy.is_some();
    let np = full.len() as f64;
    (1..=k)
        .map(|n| {
            let (mut reward_sum, mut reward_n, mut best_ok, mut maj_ok, mut any_ok) = (0.0, 0usize, 0usize, 0usize, 0usize);
            for v in &full {
                let first_n = &v[..n];
                // Best-of-n by total reward; ties and missing rewards go to the earliest sample.
                let best = first_n.iter().enumerate().max_by(|(ia, a), (ib, b)| {
                    let (x, y) = (a.reward.total.unwrap_or(f64::NEG_INFINITY), b.reward.total.unwrap_or(f64::NEG_INFINITY));
                    x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal).then(ib.cmp(ia))
                });
                if let Some((_, b)) = best {
                    if let Some(t) = b.reward.total {
                        reward_sum += t;
                        reward_n += 1;
                    }
                    best_ok += (b.correct == Some(true)) as usize;
                }
                let answers: Vec<Option<String>> = first_n.iter().map(|p| p.answer.clone()).collect();
                if let Some(voted) = m::majority_vote(&answers) {
                    let p = first_n.iter().find(|p| p.answer.as_deref() == Some(voted.as_str()));
                    maj_ok += p.is_some_and(|p| p.correct == Some(true)) as usize;
                }
                any_ok += first_n.iter().any(|p| p.correct == Some(true)) as usize;
            }
            ScalingPoint {
                n,
                best_of_n_reward: (reward_n > 0).then(|| reward_sum / reward_n as f64),
                best_of_n_accuracy: has_acc.then(|| best_ok as f64 / np),
                majority_accuracy: has_acc.then(|| maj_ok as f64 / np),
                oracle_accuracy: has_acc.then(|| any_ok as f64 / np),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(index: usize, sample: usize, total: f64, answer: Option<&str>, correct: bool) -> Prediction {
        Prediction {
            index,
            sample,
            id: format!("f row {index}"),
            prompt: "p".into(),
            response: answer.unwrap_or("").into(),
            finish_reason: "eos".into(),
            tokens: 3,
            reward: RewardResult { total: Some(total), by_plugin: BTreeMap::from([("r".into(), Some(total))]), components: BTreeMap::from([("acc".into(), correct as u8 as f64)]), failures: BTreeMap::new() },
            answer: answer.map(str::to_string),
            correct: Some(correct),
            reference: None,
            ground_truth: Value::Null,
        }
    }

    /// The local model through the [`Responder`] seam gives the predictions the code before the
    /// seam gave: chat-template prompt, stream `k·2³² + i`, decoded tokens, finish reason and
    /// token count, whatever the batch size (the pre-seam `prepare` + `run_batch` are inlined
    /// here as the reference).
    #[test]
    fn local_model_through_the_responder_matches_direct_generation() {
        use medrl_lm::model::init::{init_model_dir, InitOptions, Preset};
        use medrl_lm::model::{load_model_dir, Arch};
        let dir = tempfile::tempdir().unwrap();
        let mut init = InitOptions::new(Arch::Qwen2, Preset::Tiny);
        init.seed = 5;
        init_model_dir(dir.path(), &init).unwrap();
        let loaded = load_model_dir(dir.path(), &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let ex = |i: usize| {
            let msgs = vec![ChatMessage::system("Answer briefly."), ChatMessage::user(format!("Question {i}: what dose?")), ChatMessage::assistant("ref")];
            (Origin { file: "t.jsonl".into(), row: i + 1 }, Example { messages: msgs, ground_truth: Value::Null, metadata: serde_json::json!({}), data_source: "t".into() })
        };
        let examples: Vec<(Origin, Example)> = (0..3).map(ex).collect();
        let host = medrl_plugin::PluginHost::new(medrl_plugin::HostConfig { cache_dir: None, ..Default::default() }).unwrap();
        let rewards = RewardSet::load(&host, vec![], &medrl_plugin::Limits::default()).unwrap();
        let sampling = SamplingParams { temperature: 0.9, max_new_tokens: 10, seed: 4, ..Default::default() };
        let mut opts = EvalOptions::for_model(&loaded.generation, sampling.clone());
        opts.n = 2;
        opts.batch_size = 4;
        opts.stop_strings = vec!["</answer>".into()];
        let settings = MetricSettings::default();
        let (_, preds) = evaluate(&loaded.model, &loaded.tokenizer, &examples, &rewards, &settings, &opts).unwrap();

        let tok = &loaded.tokenizer;
        let units = all_units(3, 2);
        let texts: Vec<String> = examples.iter().map(|(_, e)| tok.apply_chat_template(&e.messages[..2], true).unwrap()).collect();
        let prompts: Vec<Vec<u32>> = units.iter().map(|&(i, _)| tok.encode(&texts[i], false).unwrap()).collect();
        let streams: Vec<u64> = units.iter().map(|&(i, k)| stream_of(i, k)).collect();
        let stop = StopConditions { eos_token_ids: opts.eos_token_ids.clone(), stop_strings: opts.stop_strings.clone(), tokenizer: Some(tok) };
        let gens = generate_streams(&loaded.model, &prompts, &streams, &sampling, &stop, opts.pad_token_id, None).unwrap();
        assert_eq!(preds.len(), gens.len());
        for ((p, &(i, k)), g) in preds.iter().zip(&units).zip(&gens) {
            assert_eq!((p.index, p.sample, p.prompt.as_str()), (i, k, texts[i].as_str()));
            assert_eq!(p.response, tok.decode(&g.tokens, true).unwrap());
            assert_eq!(p.finish_reason, serde_json::to_value(g.finish_reason).unwrap().as_str().unwrap());
            assert_eq!(p.tokens, g.tokens.len());
            assert_eq!((p.id.as_str(), p.reference.as_deref()), (format!("t.jsonl row {}", i + 1).as_str(), Some("ref")));
        }
        // Another batch size, the same predictions (each unit has its own stream).
        opts.batch_size = 3;
        let (_, again) = evaluate_with(&LocalModel { model: &loaded.model, tokenizer: tok }, &examples, &rewards, &settings, &opts).unwrap();
        assert_eq!(again, preds);
    }

    #[test]
    fn scaling_curves() {
        let settings = MetricSettings { accuracy: Some(AccuracySpec { plugin: None, component: "acc".into(), threshold: 1.0 }), ..Default::default() };
        // Prompt 0: wrong, right(high reward), wrong with the same answer as the first.
        // Prompt 1: right, wrong, wrong.
        let preds = vec![
            pred(0, 0, 0.1, Some("a"), false),
            pred(0, 1, 0.9, Some("b"), true),
            pred(0, 2, 0.2, Some("a"), false),
            pred(1, 0, 0.5, Some("x"), true),
            pred(1, 1, 0.4, Some("y"), false),
            pred(1, 2, 0.6, None, false),
        ];
        let m = compute_metrics(&preds, &settings, 3).unwrap();
        assert_eq!(m.accuracy, Some(0.5));
        assert_eq!(m.scaling.len(), 3);
        let p1 = &m.scaling[0];
        assert_eq!((p1.best_of_n_accuracy, p1.majority_accuracy, p1.oracle_accuracy), (Some(0.5), Some(0.5), Some(0.5)));
        let p2 = &m.scaling[1];
        // best-of-2: prompt 0 picks sample 1 (right), prompt 1 picks sample 0 (right).
        assert_eq!(p2.best_of_n_accuracy, Some(1.0));
        // majority of 2 with a tie: the earliest answer wins -> a (wrong), x (right).
        assert_eq!(p2.majority_accuracy, Some(0.5));
        assert_eq!(p2.oracle_accuracy, Some(1.0));
        let p3 = &m.scaling[2];
        // best-of-3: prompt 1 picks sample 2 (0.6, wrong); majority: a (wrong), x (tie, right).
        assert_eq!(p3.best_of_n_accuracy, Some(0.5));
        assert_eq!(p3.majority_accuracy, Some(0.5));
        assert!((p3.best_of_n_reward.unwrap() - 0.75).abs() < 1e-12);
        assert!((m.extract_failure_rate_all_samples - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.extract_failure_rate, 0.0);
    }

    #[test]
    fn survival_metrics_from_hcc_responses() {
        let settings = MetricSettings { answer: AnswerParser::Hcc, survival: Some(SurvivalSettings::default()), bootstrap: 50, ..Default::default() };
        // (true months, died, predicted months, 1y, 3y, 5y); the last one has no block.
        let rows = [(6.0, true, 8.0, 0.3, 0.1, 0.0), (20.0, true, 18.0, 0.9, 0.2, 0.1), (40.0, false, 50.0, 1.0, 0.8, 0.4), (70.0, false, 80.0, 1.0, 0.9, 0.7), (30.0, true, 25.0, 0.8, 0.3, 0.1)];
        let mut preds: Vec<Prediction> = rows
            .iter()
            .enumerate()
            .map(|(i, &(t, d, m, p1, p3, p5))| {
                let mut p = pred(i, 0, 0.0, None, false);
                p.response = format!("<ps>0</ps><child_pugh>A</child_pugh><metastasis>absent</metastasis><cancer_thrombus>absent</cancer_thrombus><num_tumor>1</num_tumor><tumor_size>15</tumor_size><hard_check_survival>{{\"survival_months\": {m}, \"survival_1yr\": {p1}, \"survival_3yr\": {p3}, \"survival_5yr\": {p5}}}</hard_check_survival>");
                p.answer = AnswerParser::Hcc.parse(&p.response);
                p.ground_truth = serde_json::json!({"survival_months": t, "if_death": d as u8, "ps": 0, "child_pugh": "A", "metastasis": "absent", "cancer_thrombus": "absent", "num_tumor": 1, "tumor_size": 15});
                p
            })
            .collect();
        let mut missing = pred(5, 0, 0.0, None, false);
        missing.ground_truth = serde_json::json!({"survival_months": 10, "if_death": 1, "ps": 3, "child_pugh": "A"});
        preds.push(missing);
        let m = compute_metrics(&preds, &settings, 1).unwrap();
        let s = m.survival.unwrap();
        assert_eq!((s.n_with_truth, s.n_predicted), (6, 5));
        assert!((s.extract_failure_rate - 1.0 / 6.0).abs() < 1e-12);
        // Predicted months order the patients perfectly.
        assert_eq!(s.c_index.as_ref().unwrap().estimate, 1.0);
        assert_eq!(s.time_auc.len(), 3);
        assert_eq!(s.time_auc[0].auc, 1.0);
        assert_eq!(s.brier.len(), 3);
        // At 12 months: died at 6 (p 0.3, outcome 0) and four alive after 12 (outcome 1).
        let b12 = (0.3f64.powi(2) + 0.1f64.powi(2) + 0.0 + 0.0 + 0.2f64.powi(2)) / 5.0;
        assert!((s.brier[0].score - b12).abs() < 1e-12, "{:?}", s.brier[0]);
        assert_eq!(s.risk_groups["high (<12 mo)"], 1);
        assert_eq!(s.risk_groups["no prediction"], 1);
        assert_eq!(s.predicted_stage["0"], 5);
        assert_eq!(s.true_stage["D"], 1);
        assert_eq!(s.stage_agreement, Some(1.0));
        assert!((m.extract_failure_rate - 1.0 / 6.0).abs() < 1e-12);
    }
}
