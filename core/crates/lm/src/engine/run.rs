//! The generation loop: requests in, tokens out, through the scheduler and the paged cache.
//!
//! Each step the scheduler picks which sequences compute how many tokens; their tokens go
//! through the model as one flat batch ([`CausalLm::forward_tokens`]), keys and values land in
//! the paged cache, and every sequence that reached the end of what it knows samples its next
//! token on the device (only ids and log-probabilities come back). Identical prompts are
//! grouped: the first is prefilled, the others fork from it and share its blocks. A sequence
//! samples from its own seeded stream, one uniform per token, so its output does not depend on
//! the batch, the admission order or preemption.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{Result, Tensor};
use rand_chacha::ChaCha8Rng;

use super::blocks::BlockPool;
use super::cache::{PagedKvCache, PagedStep, StepSeq};
use super::request::{FinishReason, Generation, Progress, StopConditions};
use super::sampling::{draw, sequence_rng, SamplingParams};
use super::scheduler::{Scheduler, SchedulerConfig, SeqId};
use super::EngineError;
use crate::model::CausalLm;
use crate::tokenizer::TextTokenizer;

/// How the engine sizes its cache and its steps (`engine:` in RL and generate configs). None of
/// these change what is generated, only when and in how much memory.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Token slots per cache block.
    pub block_size: usize,
    /// Sequences computed in one step at most.
    pub max_seqs: usize,
    /// Tokens computed in one step at most (prefill chunks plus one per decoding sequence).
    pub max_tokens_per_step: usize,
    /// On a GPU, the share of the memory still free after the weights that the KV cache may
    /// take (as vLLM's `gpu_memory_utilization`, but of free rather than total memory); the
    /// rest is left for activations. The cache is never larger than the requests need.
    pub memory_fraction: f64,
    /// A fixed number of blocks (tests of preemption, small machines), instead of sizing from
    /// the requests and the memory.
    pub num_blocks: Option<usize>,
    /// The free device memory `memory_fraction` applies to, measured by the caller instead of
    /// at each run: a rollout running beside a training update (`async: true`) budgets from
    /// what was free before the update started, not from whatever the update holds at that
    /// moment. Not a config key.
    #[serde(skip)]
    #[schemars(skip)]
    pub free_bytes: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { block_size: 16, max_seqs: 512, max_tokens_per_step: 8192, memory_fraction: 0.9, num_blocks: None, free_bytes: None }
    }
}

impl EngineConfig {
    /// Range checks, reported with the name of the offending field.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        if self.block_size == 0 || self.block_size > 1024 {
            return bad("block_size", format!("{} must be in 1..=1024", self.block_size));
        }
        if self.max_seqs == 0 {
            return bad("max_seqs", "must be at least 1".into());
        }
        if self.max_tokens_per_step == 0 {
            return bad("max_tokens_per_step", "must be at least 1".into());
        }
        if !(self.memory_fraction > 0.0 && self.memory_fraction <= 1.0) {
            return bad("memory_fraction", format!("{} must be in (0, 1]", self.memory_fraction));
        }
        if self.num_blocks == Some(0) {
            return bad("num_blocks", "must be at least 1 (or absent: sized from memory)".into());
        }
        Ok(())
    }
}

/// What a run did, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    /// Model steps.
    pub steps: usize,
    /// Cache blocks allocated, and the most in use at once.
    pub blocks: usize,
    pub peak_blocks_used: usize,
    /// Sequences that started from a shared prompt instead of prefilling it.
    pub forked: usize,
    /// Preemptions (each a later recompute).
    pub preemptions: usize,
    /// Token positions run through the model (prompts, recomputes, decodes), and tokens sampled.
    pub computed_tokens: usize,
    pub sampled_tokens: usize,
}

/// What one request asks for; its samples share it.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// Sampling settings; `seed` with each sample's stream picks its random numbers.
    pub params: SamplingParams,
    pub eos_token_ids: Vec<u32>,
    /// Decoded-text stop strings (they need the engine's tokenizer).
    pub stop_strings: Vec<String>,
    /// Alternatives returned with each sampled token ([`StepOutput::top`]); 0 for none. Each
    /// costs the step a copy of the row's logits to the host.
    pub top_logprobs: usize,
}

/// What a step did to one sequence: the token it sampled (and its log-probability), and, when
/// the sequence ended there, everything it generated.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub seq: SeqId,
    pub token: Option<(u32, f32)>,
    /// The most likely tokens at this position when the request asked for them
    /// ([`super::sampling::top_logprobs`]).
    pub top: Vec<(u32, f32)>,
    pub finished: Option<Generation>,
}

struct Live {
    req: Arc<Request>,
    out: Generation,
    rng: ChaCha8Rng,
    /// Distinct tokens of prompt and output, sorted (for the repetition penalty only).
    seen: Vec<u32>,
}

impl Live {
    fn len(&self) -> usize {
        self.req.prompt.len() + self.out.tokens.len()
    }

    fn token_at(&self, p: usize) -> u32 {
        let prompt = &self.req.prompt;
        if p < prompt.len() {
            prompt[p]
        } else {
            self.out.tokens[p - prompt.len()]
        }
    }

    fn stop_hit(&self, tokenizer: Option<&TextTokenizer>) -> bool {
        super::request::hits_stop_string(&self.req.stop_strings, tokenizer, &self.out.tokens)
    }
}

/// The engine over one model and one KV cache: requests can be added and dropped between steps
/// (a server's continuous batching); [`run`] is the batch entry point over it.
pub struct Engine<'m> {
    model: &'m CausalLm,
    tokenizer: Option<&'m TextTokenizer>,
    cache: PagedKvCache,
    sched: Scheduler,
    live: HashMap<SeqId, Live>,
    use_kernel: bool,
    stats: EngineStats,
    warned_length: bool,
}

impl<'m> Engine<'m> {
    /// An engine with a cache of `num_blocks` blocks of `cfg.block_size` slots. `tokenizer` is
    /// needed only by requests with stop strings.
    pub fn new(model: &'m CausalLm, tokenizer: Option<&'m TextTokenizer>, cfg: &EngineConfig, num_blocks: usize) -> Result<Self> {
        cfg.validate().map_err(|(k, m)| EngineError::Config(format!("{k}: {m}")))?;
        let pool = BlockPool::new(num_blocks, cfg.block_size)?;
        let sched = Scheduler::new(SchedulerConfig { max_seqs: cfg.max_seqs, max_tokens_per_step: cfg.max_tokens_per_step }, pool)?;
        let cache = PagedKvCache::new(&model.cfg, num_blocks, cfg.block_size, model.dtype(), model.device())?;
        let per_token = PagedKvCache::bytes_per_token(&model.cfg, model.dtype());
        tracing::debug!("engine: {num_blocks} blocks of {} slots ({:.1} MiB)", cfg.block_size, (num_blocks * cfg.block_size) as f64 * per_token as f64 / 1048576.0);
        let use_kernel = model.device().is_cuda() && std::env::var("MEDRL_PAGED_ATTENTION").map(|v| v != "0").unwrap_or(true);
        Ok(Self { model, tokenizer, cache, sched, live: HashMap::new(), use_kernel, stats: EngineStats { blocks: num_blocks, ..Default::default() }, warned_length: false })
    }

    /// Queue `ids.len()` samples of `req`; sample `i` draws from RNG stream `streams[i]` of
    /// `req.params.seed`. The prompt is computed once and the samples share its blocks.
    pub fn add(&mut self, ids: &[SeqId], streams: &[u64], req: Arc<Request>) -> std::result::Result<(), EngineError> {
        if streams.len() != ids.len() {
            return Err(EngineError::Request(format!("{} RNG streams for {} samples", streams.len(), ids.len())));
        }
        if req.prompt.is_empty() {
            return Err(EngineError::Request("empty prompt: at least one token is needed".into()));
        }
        req.params.validate().map_err(|(k, m)| EngineError::Request(format!("{k}: {m}")))?;
        if !req.stop_strings.is_empty() && self.tokenizer.is_none() {
            return Err(EngineError::Request("stop strings need the engine's tokenizer".into()));
        }
        if let Some(id) = ids.iter().find(|id| self.live.contains_key(id)) {
            return Err(EngineError::Request(format!("sequence {id} is already in the engine")));
        }
        let limit = self.model.cfg.max_position_embeddings;
        if req.prompt.len() + req.params.max_new_tokens > limit && !std::mem::replace(&mut self.warned_length, true) {
            tracing::warn!("prompt ({}) + max_new_tokens ({}) exceeds max_position_embeddings ({limit})", req.prompt.len(), req.params.max_new_tokens);
        }
        self.sched.add_group(ids, req.prompt.len())?;
        let mut seen = if req.params.repetition_penalty != 1.0 { req.prompt.clone() } else { vec![] };
        seen.sort_unstable();
        seen.dedup();
        for (&id, &stream) in ids.iter().zip(streams) {
            let out = Generation { tokens: vec![], logprobs: vec![], finish_reason: FinishReason::Length };
            self.live.insert(id, Live { req: req.clone(), out, rng: sequence_rng(req.params.seed, stream), seen: seen.clone() });
        }
        Ok(())
    }

    /// Drop sequences (finished ones and unknown ids are ignored); their blocks are freed.
    pub fn abort(&mut self, ids: &[SeqId]) {
        let ids: HashSet<SeqId> = ids.iter().copied().filter(|id| self.live.remove(id).is_some()).collect();
        if !ids.is_empty() {
            self.sched.abort(&ids);
        }
    }

    /// Sequences queued or running.
    pub fn num_unfinished(&self) -> usize {
        self.live.len()
    }

    /// (waiting, running) sequences.
    pub fn queue(&self) -> (usize, usize) {
        (self.sched.num_waiting(), self.sched.num_running())
    }

    /// Cache blocks in use now, of [`EngineStats::blocks`].
    pub fn blocks_used(&self) -> usize {
        self.stats.blocks - self.sched.pool().num_free()
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// One model step over whatever the scheduler picks. Sequences that end here come back with
    /// their whole generation and leave the engine.
    pub fn step(&mut self) -> Result<Vec<StepOutput>> {
        let mut outputs = Vec::new();
        let plan = self.sched.schedule();
        let stats = &mut self.stats;
        stats.preemptions += plan.preempted.len();
        stats.forked += plan.forks.iter().map(|(_, c)| c.len()).sum::<usize>();
        stats.peak_blocks_used = stats.peak_blocks_used.max(stats.blocks - self.sched.pool().num_free());
        for id in &plan.exhausted {
            // Alone in the whole cache and still no room for its next token.
            if let Some(s) = self.live.remove(id) {
                outputs.push(StepOutput { seq: *id, token: None, top: vec![], finished: Some(s.out) });
            }
        }
        if plan.is_empty() {
            return Ok(outputs);
        }
        let device = self.model.device().clone();
        self.cache.copy_blocks(&plan.copies)?;
        stats.steps += 1;
        stats.computed_tokens += plan.tokens();
        let forks: HashMap<SeqId, &Vec<SeqId>> = plan.forks.iter().map(|(p, c)| (*p, c)).collect();
        let mut ids = Vec::with_capacity(plan.tokens());
        let mut pos = Vec::with_capacity(plan.tokens());
        // (row of the step's batch, sequence sampling from it)
        let mut samplers: Vec<(u32, SeqId)> = Vec::new();
        let live = &self.live;
        let seq = |id: &SeqId| live.get(id).ok_or_else(|| candle_core::Error::Msg(format!("engine bug: scheduled sequence {id} is unknown")));
        let hidden = {
            let tables = self.sched.tables();
            let mut seqs = Vec::with_capacity(plan.prefill.len() + plan.decode.len());
            for (id, r) in &plan.prefill {
                let s = seq(id)?;
                for p in r.clone() {
                    ids.push(s.token_at(p));
                    pos.push(p as u32);
                }
                seqs.push(StepSeq { blocks: tables[id].blocks(), start: r.start, new: r.len() });
                if r.end == s.len() {
                    let row = (ids.len() - 1) as u32;
                    samplers.push((row, *id));
                    for &c in forks.get(id).map(|c| c.as_slice()).unwrap_or(&[]) {
                        samplers.push((row, c));
                    }
                }
            }
            for id in &plan.decode {
                let s = seq(id)?;
                let p = s.len() - 1;
                ids.push(s.token_at(p));
                pos.push(p as u32);
                seqs.push(StepSeq { blocks: tables[id].blocks(), start: p, new: 1 });
                let row = (ids.len() - 1) as u32;
                samplers.push((row, *id));
                // A prompt whose last chunk is a single token completes as a decode.
                for &c in forks.get(id).map(|c| c.as_slice()).unwrap_or(&[]) {
                    samplers.push((row, c));
                }
            }
            let mut step = PagedStep::new(&self.cache, &seqs, self.use_kernel)?;
            let n = ids.len();
            self.model.forward_tokens(&Tensor::from_vec(std::mem::take(&mut ids), n, &device)?, &Tensor::from_vec(std::mem::take(&mut pos), n, &device)?, &mut step)?
        };
        let rows = Tensor::new(samplers.iter().map(|&(r, _)| r).collect::<Vec<u32>>(), &device)?;
        let logits = self.model.lm_logits(&hidden.index_select(&rows, 0)?)?;
        let mut uniform = Vec::with_capacity(samplers.len());
        for (_, id) in &samplers {
            let s = self.live.get_mut(id).ok_or_else(|| candle_core::Error::Msg(format!("engine bug: sampling sequence {id} is unknown")))?;
            uniform.push(draw(&s.req.params, &mut s.rng));
        }
        let (tokens, logprobs) = {
            let params: Vec<&SamplingParams> = samplers.iter().map(|(_, id)| &self.live[id].req.params).collect();
            let seen: Vec<&[u32]> = samplers.iter().map(|(_, id)| self.live[id].seen.as_slice()).collect();
            let args = medrl_nn::infer::SampleArgs {
                temperature: &params.iter().map(|p| p.temperature as f32).collect::<Vec<_>>(),
                top_k: &params.iter().map(|p| p.top_k.min(u32::MAX as usize) as u32).collect::<Vec<_>>(),
                top_p: &params.iter().map(|p| p.top_p as f32).collect::<Vec<_>>(),
                repetition_penalty: &params.iter().map(|p| p.repetition_penalty as f32).collect::<Vec<_>>(),
                uniform: &uniform,
                seen: &seen,
            };
            medrl_nn::infer::sample_rows(&logits, &args)?
        };
        let mut tops: Vec<Vec<(u32, f32)>> = vec![vec![]; samplers.len()];
        for (k, (_, id)) in samplers.iter().enumerate() {
            let s = &self.live[id];
            if s.req.top_logprobs > 0 {
                let mut row = logits.get(k)?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                // The penalty's seen set is the prompt and output before this token.
                let seen: Vec<u32> = if s.req.params.repetition_penalty != 1.0 { s.seen.clone() } else { vec![] };
                tops[k] = super::sampling::top_logprobs(&mut row, &seen, &s.req.params, s.req.top_logprobs);
            }
        }
        let mut finished = Vec::new();
        for (k, &(_, id)) in samplers.iter().enumerate() {
            let s = self.live.get_mut(&id).expect("checked above");
            let token = tokens[k];
            s.out.tokens.push(token);
            s.out.logprobs.push(logprobs[k]);
            if s.req.params.repetition_penalty != 1.0 {
                if let Err(at) = s.seen.binary_search(&token) {
                    s.seen.insert(at, token);
                }
            }
            self.stats.sampled_tokens += 1;
            let reason = if s.req.eos_token_ids.contains(&token) {
                Some(FinishReason::Eos)
            } else if s.stop_hit(self.tokenizer) {
                Some(FinishReason::Stop)
            } else if s.out.tokens.len() >= s.req.params.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            let done = reason.map(|r| {
                let mut s = self.live.remove(&id).expect("present");
                s.out.finish_reason = r;
                finished.push(id);
                s.out
            });
            outputs.push(StepOutput { seq: id, token: Some((token, logprobs[k])), top: std::mem::take(&mut tops[k]), finished: done });
        }
        self.sched.complete(&plan, &finished);
        Ok(outputs)
    }
}

/// Generate for every prompt; sequence `i` samples with RNG stream `streams[i]` of
/// `params.seed`. Results come back in the order of `prompts`.
pub fn run(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    streams: &[u64],
    params: &SamplingParams,
    stop: &StopConditions<'_>,
    cfg: &EngineConfig,
    progress: Option<Progress<'_>>,
) -> Result<Vec<Generation>> {
    Ok(run_with_stats(model, prompts, streams, params, stop, cfg, progress)?.0)
}

/// The cache blocks a batch needs at most: every sequence at full length, shared prompts once;
/// on a GPU no more than `cfg.memory_fraction` of free memory holds.
pub fn blocks_for(model: &CausalLm, prompt_lens_by_group: &[(usize, usize)], max_new: usize, cfg: &EngineConfig) -> Result<usize> {
    let bs = cfg.block_size;
    let needed: usize = prompt_lens_by_group.iter().map(|&(len, n)| len.div_ceil(bs) + n * (max_new.div_ceil(bs) + 1)).sum();
    let per_token = PagedKvCache::bytes_per_token(&model.cfg, model.dtype());
    Ok(match (cfg.num_blocks, cfg.free_bytes.or_else(|| medrl_nn::device::free_memory_bytes(model.device()))) {
        (Some(n), _) => n,
        (None, Some(free)) => BlockPool::from_budget(free, cfg.memory_fraction, per_token, bs)?.num_blocks().min(needed),
        (None, None) => needed,
    })
}

/// [`run`], also returning what the engine did.
pub fn run_with_stats(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    streams: &[u64],
    params: &SamplingParams,
    stop: &StopConditions<'_>,
    cfg: &EngineConfig,
    progress: Option<Progress<'_>>,
) -> Result<(Vec<Generation>, EngineStats)> {
    if streams.len() != prompts.len() {
        candle_core::bail!("{} RNG streams for {} prompts", streams.len(), prompts.len());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        candle_core::bail!("prompt {i} is empty: at least one token is needed");
    }
    if prompts.is_empty() {
        return Ok((vec![], EngineStats::default()));
    }
    // Identical prompts form a group: prefilled once, the other samples fork from it.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_prompt: HashMap<&[u32], usize> = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let g = *by_prompt.entry(p.as_slice()).or_insert_with(|| {
            groups.push(vec![]);
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let lens: Vec<(usize, usize)> = groups.iter().map(|g| (prompts[g[0]].len(), g.len())).collect();
    let blocks = blocks_for(model, &lens, params.max_new_tokens, cfg)?;
    let mut engine = Engine::new(model, stop.tokenizer, cfg, blocks)?;
    for g in &groups {
        let req = Arc::new(Request {
            prompt: prompts[g[0]].clone(),
            params: params.clone(),
            eos_token_ids: stop.eos_token_ids.clone(),
            stop_strings: stop.stop_strings.clone(),
            top_logprobs: 0,
        });
        let ids: Vec<SeqId> = g.iter().map(|&i| i as SeqId).collect();
        let streams: Vec<u64> = g.iter().map(|&i| streams[i]).collect();
        engine.add(&ids, &streams, req)?;
    }
    tracing::debug!("engine: {} sequences in {} prompt groups", prompts.len(), groups.len());
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut produced = 0usize;
    while engine.num_unfinished() > 0 {
        for o in engine.step()? {
            produced += o.token.is_some() as usize;
            if let Some(g) = o.finished {
                results[o.seq as usize] = Some(g);
            }
        }
        if let Some(cb) = progress {
            cb(produced, engine.num_unfinished());
        }
    }
    let stats = engine.stats();
    let out = results.into_iter().enumerate().map(|(i, g)| g.ok_or_else(|| candle_core::Error::Msg(format!("engine bug: sequence {i} was dropped unfinished")))).collect::<Result<Vec<_>>>()?;
    Ok((out, stats))
}
