//! The generation loop: requests in, tokens out, through the scheduler and the paged cache.
//!
//! Each step the scheduler picks which sequences compute how many tokens; their tokens go
//! through the model as one flat batch ([`CausalLm::forward_tokens`]), keys and values land in
//! the paged cache, and every sequence that reached the end of what it knows samples its next
//! token on the device (only ids and log-probabilities come back). Identical prompts are
//! grouped: the first is prefilled, the others fork from it and share its blocks. A sequence
//! samples from its own seeded stream, one uniform per token, so its output does not depend on
//! the batch, the admission order or preemption.

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use rand_chacha::ChaCha8Rng;

use super::blocks::BlockPool;
use super::cache::{PagedKvCache, PagedStep, StepSeq};
use super::request::{FinishReason, Generation, Progress, StopConditions};
use super::sampling::{draw, sequence_rng, SamplingParams};
use super::scheduler::{Scheduler, SchedulerConfig, SeqId};
use crate::model::CausalLm;

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { block_size: 16, max_seqs: 512, max_tokens_per_step: 8192, memory_fraction: 0.9, num_blocks: None }
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

struct Live {
    out: Generation,
    rng: ChaCha8Rng,
    /// Distinct tokens of prompt and output, sorted (for the repetition penalty only).
    seen: Vec<u32>,
    done: bool,
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
    let max_new = params.max_new_tokens;
    let max_len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    if max_len + max_new > model.cfg.max_position_embeddings {
        tracing::warn!("prompt ({max_len}) + max_new_tokens ({max_new}) exceeds max_position_embeddings ({})", model.cfg.max_position_embeddings);
    }
    let device = model.device().clone();
    let bs = cfg.block_size;
    // Enough blocks for every sequence at full length, shared prompts counted once.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_prompt: HashMap<&[u32], usize> = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let g = *by_prompt.entry(p.as_slice()).or_insert_with(|| {
            groups.push(vec![]);
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let needed: usize = groups.iter().map(|g| prompts[g[0]].len().div_ceil(bs) + g.len() * (max_new.div_ceil(bs) + 1)).sum();
    let per_token = PagedKvCache::bytes_per_token(&model.cfg, model.dtype());
    let blocks = match (cfg.num_blocks, medrl_nn::device::free_memory_bytes(&device)) {
        (Some(n), _) => n,
        (None, Some(free)) => {
            let budget = BlockPool::from_budget(free, cfg.memory_fraction, per_token, bs)?;
            budget.num_blocks().min(needed)
        }
        (None, None) => needed,
    };
    let pool = BlockPool::new(blocks, bs)?;
    let mut sched = Scheduler::new(SchedulerConfig { max_seqs: cfg.max_seqs, max_tokens_per_step: cfg.max_tokens_per_step }, pool)?;
    for g in &groups {
        let ids: Vec<SeqId> = g.iter().map(|&i| i as SeqId).collect();
        sched.add_group(&ids, prompts[g[0]].len())?;
    }
    let cache = PagedKvCache::new(&model.cfg, blocks, bs, model.dtype(), &device)?;
    tracing::debug!("engine: {blocks} blocks of {bs} slots ({:.1} MiB), {} sequences in {} prompt groups", (blocks * bs) as f64 * per_token as f64 / 1048576.0, prompts.len(), groups.len());

    let penalize = params.repetition_penalty != 1.0;
    let mut live: Vec<Live> = prompts
        .iter()
        .zip(streams)
        .map(|(p, &s)| {
            let mut seen = if penalize { p.clone() } else { vec![] };
            seen.sort_unstable();
            seen.dedup();
            Live { out: Generation { tokens: vec![], logprobs: vec![], finish_reason: FinishReason::Length }, rng: sequence_rng(params.seed, s), seen, done: false }
        })
        .collect();
    let use_kernel = device.is_cuda() && std::env::var("MEDRL_PAGED_ATTENTION").map(|v| v != "0").unwrap_or(true);
    let token_at = |live: &[Live], id: usize, p: usize| -> u32 {
        let prompt = &prompts[id];
        if p < prompt.len() {
            prompt[p]
        } else {
            live[id].out.tokens[p - prompt.len()]
        }
    };
    let len_of = |live: &[Live], id: usize| prompts[id].len() + live[id].out.tokens.len();
    let mut produced = 0usize;
    let mut unfinished = prompts.len();
    let mut stats = EngineStats { blocks, ..Default::default() };
    while sched.num_unfinished() > 0 {
        let plan = sched.schedule();
        stats.preemptions += plan.preempted.len();
        stats.forked += plan.forks.iter().map(|(_, c)| c.len()).sum::<usize>();
        stats.peak_blocks_used = stats.peak_blocks_used.max(blocks - sched.pool().num_free());
        for &id in &plan.exhausted {
            // Alone in the whole cache and still no room for its next token.
            live[id as usize].done = true;
            unfinished -= 1;
        }
        if plan.is_empty() {
            continue;
        }
        cache.copy_blocks(&plan.copies)?;
        stats.steps += 1;
        stats.computed_tokens += plan.tokens();
        let forks: HashMap<SeqId, &Vec<SeqId>> = plan.forks.iter().map(|(p, c)| (*p, c)).collect();
        let mut ids = Vec::with_capacity(plan.tokens());
        let mut pos = Vec::with_capacity(plan.tokens());
        // (row of the step's batch, sequence sampling from it)
        let mut samplers: Vec<(u32, usize)> = Vec::new();
        let hidden = {
            let tables = sched.tables();
            let mut seqs = Vec::with_capacity(plan.prefill.len() + plan.decode.len());
            for (id, r) in &plan.prefill {
                let i = *id as usize;
                for p in r.clone() {
                    ids.push(token_at(&live, i, p));
                    pos.push(p as u32);
                }
                seqs.push(StepSeq { blocks: tables[id].blocks(), start: r.start, new: r.len() });
                if r.end == len_of(&live, i) {
                    let row = (ids.len() - 1) as u32;
                    samplers.push((row, i));
                    for &c in forks.get(id).map(|c| c.as_slice()).unwrap_or(&[]) {
                        samplers.push((row, c as usize));
                    }
                }
            }
            for id in &plan.decode {
                let i = *id as usize;
                let p = len_of(&live, i) - 1;
                ids.push(token_at(&live, i, p));
                pos.push(p as u32);
                seqs.push(StepSeq { blocks: tables[id].blocks(), start: p, new: 1 });
                let row = (ids.len() - 1) as u32;
                samplers.push((row, i));
                // A prompt whose last chunk is a single token completes as a decode.
                for &c in forks.get(id).map(|c| c.as_slice()).unwrap_or(&[]) {
                    samplers.push((row, c as usize));
                }
            }
            let mut step = PagedStep::new(&cache, &seqs, use_kernel)?;
            let n = ids.len();
            model.forward_tokens(&Tensor::from_vec(std::mem::take(&mut ids), n, &device)?, &Tensor::from_vec(std::mem::take(&mut pos), n, &device)?, &mut step)?
        };
        let rows = Tensor::new(samplers.iter().map(|&(r, _)| r).collect::<Vec<u32>>(), &device)?;
        let logits = model.lm_logits(&hidden.index_select(&rows, 0)?)?;
        let r = samplers.len();
        let uniform: Vec<f32> = samplers.iter().map(|&(_, i)| draw(params, &mut live[i].rng)).collect();
        let seen: Vec<&[u32]> = samplers.iter().map(|&(_, i)| live[i].seen.as_slice()).collect();
        let args = medrl_nn::infer::SampleArgs {
            temperature: &vec![params.temperature as f32; r],
            top_k: &vec![params.top_k.min(u32::MAX as usize) as u32; r],
            top_p: &vec![params.top_p as f32; r],
            repetition_penalty: &vec![params.repetition_penalty as f32; r],
            uniform: &uniform,
            seen: &seen,
        };
        let (tokens, logprobs) = medrl_nn::infer::sample_rows(&logits, &args)?;
        let mut finished = Vec::new();
        for (k, &(_, i)) in samplers.iter().enumerate() {
            let s = &mut live[i];
            let token = tokens[k];
            s.out.tokens.push(token);
            s.out.logprobs.push(logprobs[k]);
            if penalize {
                if let Err(at) = s.seen.binary_search(&token) {
                    s.seen.insert(at, token);
                }
            }
            produced += 1;
            let reason = if stop.eos_token_ids.contains(&token) {
                Some(FinishReason::Eos)
            } else if stop.hits_stop_string(&s.out.tokens) {
                Some(FinishReason::Stop)
            } else if s.out.tokens.len() >= max_new {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                s.out.finish_reason = reason;
                s.done = true;
                unfinished -= 1;
                finished.push(i as SeqId);
            }
        }
        sched.complete(&plan, &finished);
        if let Some(cb) = progress {
            cb(produced, unfinished);
        }
    }
    if let Some(i) = live.iter().position(|s| !s.done) {
        candle_core::bail!("engine bug: sequence {i} was dropped unfinished ({} tokens)", live[i].out.tokens.len());
    }
    stats.sampled_tokens = produced;
    Ok((live.into_iter().map(|s| s.out).collect(), stats))
}
