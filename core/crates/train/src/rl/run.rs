//! The RL run every algorithm drives: prompts, rewards, the trainable policy, its optimizer and
//! the [`TrainSession`] (run folder, resume, metrics, checkpoints); rollouts with rewards scored
//! on a CPU thread while the device computes log-probs; the common part of each metrics line;
//! validation; the final export.
//!
//! The order of everything that draws randomness (prompt plan, rollout seeds, dropout masks) is
//! fixed here, so a resumed CPU run retraces an uninterrupted one for every algorithm.

use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::agent::{AgentLoop, MultiTurn, ToolRunner, TurnRenderer};
use super::config::{AlgorithmConfig, DynamicSampling, EvalSampling, RlConfig, RlTraining};
use super::sources::load_sources;
use super::validation::{prompt_example, prompts_from_examples, validate_by, validate_with, RlPrompt, ToolPrompt, Validation};
use crate::error::RunError;
use crate::session::{RunOptions, SessionSpec, TrainSession};
use crate::trainable::{Mode, Trainable};
use crate::{AdamW, LrSchedule};
use medrl_data::batch::{build_batch, Batch, Batcher, BatchingConfig, MicroBatch};
use medrl_data::{Example, Origin, TokenizedExample};
use medrl_reward::{AccuracySpec, RewardResult, RewardSet as Rewards};
use medrl_lm::generate::{EngineConfig, SamplingParams, StopConditions};
use medrl_lm::model::{load_model_dir, load_model_dir_as, CausalLm};
use medrl_lm::tokenizer::TextTokenizer;

/// A running RL job: model, data, rewards, optimizer and bookkeeping.
pub struct RlRun {
    /// Run folder, resume, step count, metrics log, dropout stream, checkpoints.
    pub session: TrainSession,
    pub model_dir: PathBuf,
    /// What rollouts need (prompts, tokenizer, rewards, tools, reference); shared with the
    /// rollout thread of an asynchronous run.
    pub worker: Arc<RolloutWorker>,
    pub eval: Vec<(Origin, Example)>,
    pub accuracy: Option<AccuracySpec>,
    pub trainable: Trainable,
    pub opt: AdamW,
    pub schedule: LrSchedule,
    pub validation_before: Option<Validation>,
    pub validation_after: Option<Validation>,
    pub training: RlTraining,
    eval_sampling: EvalSampling,
    /// The prompt order; its cursor is mirrored in the run state (and so in checkpoints).
    pub plan: PromptPlan,
    pb: indicatif::ProgressBar,
}

/// Everything a rollout reads and no update changes: the training prompts, tokenizer, sampling
/// settings, rewards, tools and the frozen reference. `Send + Sync`, so the rollout of the next
/// step can run on its own thread while this step's update runs (`async: true`).
pub struct RolloutWorker {
    pub tok: TextTokenizer,
    pub eos: Vec<u32>,
    pub pad: u32,
    pub train: Vec<RlPrompt>,
    pub rewards: Rewards,
    pub reference: Option<CausalLm>,
    pub device: candle_core::Device,
    seed: u64,
    rollout: SamplingParams,
    engine: EngineConfig,
    stop: Vec<String>,
    /// Multi-turn rollouts: the tools and the template pieces their replies are rendered with.
    agent: Option<(Box<dyn ToolRunner + Send>, TurnRenderer)>,
    multi_turn: MultiTurn,
}

/// The prompt order of a run: epochs over the training prompts, `prompts_per_step` at a time,
/// shuffled per epoch from the seed. Cloned into an asynchronous rollout, which may draw more
/// (dynamic sampling); the run adopts the clone's cursor once the step before it is saved.
#[derive(Debug, Clone)]
pub struct PromptPlan {
    batcher: Batcher,
    epoch: u64,
    next: usize,
    batches: Vec<MicroBatch>,
}

impl PromptPlan {
    fn new(batcher: Batcher, epoch: u64, next: usize) -> Self {
        let batches = batcher.plan_epoch(epoch);
        Self { batcher, epoch, next, batches }
    }

    /// The next prompt batch (a new epoch's first after the last).
    pub fn draw(&mut self) -> Vec<usize> {
        if self.next >= self.batches.len() {
            self.epoch += 1;
            self.next = 0;
            self.batches = self.batcher.plan_epoch(self.epoch);
        }
        let chosen = self.batches[self.next].iter().flatten().copied().collect();
        self.next += 1;
        chosen
    }
}

/// How a step's rollouts are drawn: `n` samples per prompt, log-probs in micro-batches of
/// `micro_batch_size` sequences, and DAPO's dynamic sampling when set.
#[derive(Debug, Clone, Copy)]
pub struct RolloutShape {
    pub n: usize,
    pub micro_batch_size: usize,
    /// Cut the forward passes by this token budget instead (see `micro_batch_tokens`).
    pub micro_batch_tokens: Option<usize>,
    pub dynamic: Option<DynamicSampling>,
    /// Free device memory measured before a concurrent update started (async); the engine's
    /// `memory_fraction` applies to it. None: measured at each engine run.
    pub free_bytes: Option<u64>,
}

/// One step's rollouts: sequences, rewards, and the log-probs computed beside the scoring.
pub struct Rollout {
    /// Index into `RlRun::train` of each sequence's prompt.
    pub owners: Vec<usize>,
    /// Prompt + response tokens; `trained` marks the response.
    pub seqs: Vec<TokenizedExample>,
    pub responses: Vec<String>,
    pub scored: Vec<RewardResult>,
    /// Per rollout micro-batch (`chunks`): old-policy log-probs `[B, T]`, reference log-probs,
    /// and what the algorithm's extra pass returned (PPO: values).
    pub chunks: Vec<Vec<usize>>,
    pub old_lps: Vec<Tensor>,
    pub ref_lps: Vec<Option<Tensor>>,
    pub extra: Vec<Option<Tensor>>,
    pub rollout_tokens: usize,
    pub gen_s: f64,
    pub logprob_s: f64,
    pub reward_s: f64,
    /// What dynamic sampling did this step (None: it is off).
    pub filter: Option<FilterStats>,
    /// Per sequence of a multi-turn rollout: turns, tool calls, failed calls (empty without
    /// tools).
    pub agent: Vec<(usize, usize, usize)>,
}

/// Dynamic sampling's record of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Prompt batches drawn.
    pub rounds: usize,
    /// Groups trained on.
    pub kept: usize,
    /// Groups dropped because their responses' rewards were all equal (or fewer than two
    /// were scored).
    pub filtered: usize,
}

/// Sampled responses before their log-probs.
#[derive(Default)]
struct Sampled {
    owners: Vec<usize>,
    seqs: Vec<TokenizedExample>,
    responses: Vec<String>,
    rollout_tokens: usize,
    /// Multi-turn only: (turns, tool calls, failed calls) and the error of a sample a tool's
    /// `drop` policy removed.
    agent: Vec<(usize, usize, usize)>,
    dropped: Vec<Option<String>>,
}

/// A sample a tool's `drop` policy removed leaves the step like one a reward dropped.
fn drop_tool_failures(scored: &mut [RewardResult], dropped: &[Option<String>]) {
    for (r, d) in scored.iter_mut().zip(dropped) {
        if let Some(e) = d {
            r.total = None;
            r.failures.insert("tools".into(), format!("dropped:{e}"));
        }
    }
}

/// Whether a group's scored responses differ in total reward: fewer than two scored, or all
/// equal, leaves every advantage zero.
pub fn has_spread(group: &[RewardResult]) -> bool {
    let mut totals = group.iter().filter_map(|r| r.total);
    match totals.next() {
        Some(first) => totals.any(|t| t != first),
        None => false,
    }
}

impl Rollout {
    /// Total reward per sequence (`None`: dropped by a plugin's policy).
    pub fn totals(&self) -> Vec<Option<f64>> {
        self.scored.iter().map(|s| s.total).collect()
    }
}

/// Sequences `idx` of `seqs` cut into forward passes: `size` sequences each, or with a token
/// budget, [`medrl_data::batch::split_by_tokens`] of them (longest first).
pub fn micro_batches(seqs: &[TokenizedExample], idx: &[usize], size: usize, tokens: Option<usize>) -> Vec<Vec<usize>> {
    match tokens {
        None => idx.chunks(size.max(1)).map(|c| c.to_vec()).collect(),
        Some(budget) => {
            let lengths: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
            medrl_data::batch::split_by_tokens(idx.iter().map(|&i| vec![i]).collect(), &lengths, budget).into_iter().map(|mb| mb.into_iter().flatten().collect()).collect()
        }
    }
}

impl RolloutShape {
    /// The log-prob passes over all of `seqs` (see [`micro_batches`]).
    fn passes(&self, seqs: &[TokenizedExample]) -> Vec<Vec<usize>> {
        micro_batches(seqs, &(0..seqs.len()).collect::<Vec<_>>(), self.micro_batch_size, self.micro_batch_tokens)
    }
}

impl RlRun {
    /// Prepare (or resume) a run: output folder, model, prompts, rewards, trainable policy,
    /// optimizer, metrics, and validation before training when starting fresh. `kind` names the
    /// algorithm in checkpoints (a resume refuses another).
    pub fn setup<A: AlgorithmConfig>(cfg: &RlConfig<A>, kind: &'static str, grants: medrl_plugin::Grants, opts: &RunOptions) -> Result<RlRun, RunError> {
        Self::setup_with_tools(cfg, kind, grants, opts, None)
    }

    /// [`RlRun::setup`] with multi-turn rollouts calling `tools` (default: the config's or the
    /// task's tools, if any): prompts describe the tools, and the model's tool calls are
    /// answered (see [`super::agent`]).
    pub fn setup_with_tools<A: AlgorithmConfig>(cfg: &RlConfig<A>, kind: &'static str, grants: medrl_plugin::Grants, opts: &RunOptions, tools: Option<Box<dyn ToolRunner + Send>>) -> Result<RlRun, RunError> {
        let t = &cfg.training;
        let mut session = TrainSession::open(
            SessionSpec {
                kind,
                output_dir: &cfg.output_dir,
                device: &cfg.device,
                dtype: &cfg.dtype,
                config_yaml: serde_yaml::to_string(cfg).expect("serializes"),
                config_hash: cfg.resume_hash(),
                seed: t.seed,
            },
            opts,
        )?;
        let (device, compute) = (session.device.clone(), session.compute);

        let (load_dtype, nf4) = crate::trainable::load_plan(cfg.lora.as_ref(), compute, t.optimizer.master_weights.dtype());
        let loaded = load_model_dir_as(&cfg.model, &device, load_dtype, nf4)?;
        let tok = loaded.tokenizer;
        let eos = loaded.generation.eos_token_ids.clone();
        let pad = loaded.generation.pad_token_id.or(eos.first().copied()).unwrap_or(0);
        let mut src = load_sources(cfg, &grants)?;
        let tools = tools.or_else(|| src.tools.take().map(|t| Box::new(t) as Box<dyn ToolRunner + Send>));
        let agent = match tools {
            Some(t) => {
                let r = TurnRenderer::new(&tok, cfg.multi_turn.format)?;
                tracing::info!(tools = t.specs().len(), format = ?r.format(), "multi-turn rollouts with tools");
                Some((t, r))
            }
            None => None,
        };
        let specs = agent.as_ref().map(|(t, _)| t.specs()).unwrap_or_default();
        let tool_prompt = agent.as_ref().map(|(_, r)| ToolPrompt { specs: &specs, format: r.format() });
        let (train, too_long) = prompts_from_examples(&tok, src.train, src.system.as_deref(), cfg.data.max_prompt_len, tool_prompt.as_ref())?;
        let mut eval: Vec<(Origin, Example)> = src.eval.into_iter().map(|(o, e)| (o, prompt_example(e, src.system.as_deref()))).collect();
        if cfg.data.eval_limit > 0 {
            eval.truncate(cfg.data.eval_limit);
        }
        if train.is_empty() {
            return Err(RunError::NoPrompts);
        }
        tracing::info!(train = train.len(), eval = eval.len(), too_long, "prompts ready");

        let mode = match &cfg.lora {
            Some(l) => Mode::Lora { cfg: l.clone(), targets: l.targets().map_err(|source| RunError::LoraTargets { key: "lora.targets", source })? },
            None => Mode::Full,
        };
        let mut trainable = Trainable::with_masters(loaded.model, mode, compute, t.seed, t.optimizer.master_weights.dtype())?;
        trainable.checkpointing = t.activation_checkpointing;
        trainable.layer_backward = t.layer_backward;
        // Under LoRA the reference is the frozen base with the adapters off, sharing its
        // tensors (QLoRA: its NF4 blocks): one base in memory, as PEFT's disable_adapter().
        let reference = match (cfg.algorithm.needs_reference(), trainable.frozen_base()) {
            (false, _) => None,
            (true, Some(base)) => Some(base),
            (true, None) => Some(load_model_dir(&cfg.model, &device, compute)?.model),
        };
        let mut opt = AdamW::new(trainable.params().to_vec(), t.optimizer.clone())?.with_seed(t.seed);
        opt.log_setup("policy");
        let schedule = LrSchedule { peak_lr: t.lr, warmup_steps: t.warmup_steps, total_steps: t.max_steps, kind: t.schedule, min_lr_ratio: 0.0 };
        // Prompt order: epochs over the training prompts, `prompts_per_step` at a time.
        let batcher = Batcher::new(vec![1; train.len()], BatchingConfig { micro_batch_size: cfg.algorithm.prompts_per_step(), packing: false, group_by_length: false, shuffle: true }, 1, t.seed);
        session.resume(&trainable, &mut opt)?;
        let plan = PromptPlan::new(batcher, session.state.epoch, session.state.next_micro_batch);
        let pb = medrl_base::progress::bar(t.max_steps, kind, "steps");
        pb.set_position(session.state.step);
        let worker = RolloutWorker {
            tok,
            eos,
            pad,
            train,
            rewards: src.rewards,
            reference,
            device,
            seed: t.seed,
            rollout: cfg.rollout.clone(),
            engine: cfg.engine,
            stop: cfg.stop.clone(),
            agent,
            multi_turn: cfg.multi_turn.clone(),
        };
        let mut run = RlRun {
            session,
            model_dir: cfg.model.clone(),
            worker: Arc::new(worker),
            eval,
            accuracy: src.accuracy,
            trainable,
            opt,
            schedule,
            validation_before: None,
            validation_after: None,
            training: t.clone(),
            eval_sampling: cfg.data.eval_sampling.clone(),
            plan,
            pb,
        };
        if run.session.state.step == 0 {
            run.validation_before = run.validate_now()?;
            if let Some(v) = &run.validation_before {
                let mut line = serde_json::json!({"step": 0});
                v.record(&mut line);
                run.session.metrics.write(&line)?;
            }
        }
        Ok(run)
    }

    pub fn device(&self) -> &candle_core::Device {
        &self.session.device
    }

    /// The compute dtype (bf16 on CUDA under `auto`).
    pub fn compute(&self) -> DType {
        self.session.compute
    }

    /// The run folder.
    pub fn out(&self) -> &Path {
        &self.session.out
    }

    /// Steps done so far (including those of the runs this one resumed).
    pub fn step(&self) -> u64 {
        self.session.state.step
    }

    /// Validation of the current policy as `data.eval_sampling` says (None without validation prompts).
    pub fn validate_now(&self) -> Result<Option<Validation>, RunError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let m = self.trainable.view(true, None)?;
        let w = &*self.worker;
        let v = match &w.agent {
            // With tools, validation answers as the rollouts do: whole multi-turn trajectories.
            Some((tools, renderer)) => {
                let responder = medrl_eval::run::LocalAgent { model: &m, tokenizer: &w.tok, tools: tools.as_ref(), renderer, settings: &w.multi_turn, engine: w.engine };
                validate_by(&responder, &self.eval, &w.rewards, &self.eval_sampling, w.rollout.max_new_tokens, &w.stop, &w.eos, w.pad, self.accuracy.clone())?
            }
            None => validate_with(&m, &w.tok, &self.eval, &w.rewards, &self.eval_sampling, w.rollout.max_new_tokens, &w.stop, &w.eos, w.pad, self.accuracy.clone())?,
        };
        Ok(Some(v))
    }

    /// The prompts of the next step, or `None` when the run is done (or told to stop).
    pub fn next_prompts(&mut self) -> Option<Vec<usize>> {
        if self.session.done(self.training.max_steps) {
            return None;
        }
        let chosen = self.plan.draw();
        self.adopt_plan(None);
        Some(chosen)
    }

    /// Mirror the prompt plan's cursor into the run state (after replacing the plan by `plan`,
    /// an asynchronous rollout's advanced copy).
    pub fn adopt_plan(&mut self, plan: Option<PromptPlan>) {
        if let Some(p) = plan {
            self.plan = p;
        }
        self.session.state.epoch = self.plan.epoch;
        self.session.state.next_micro_batch = self.plan.next;
    }

    /// A padded batch of sequences `idx`.
    pub fn batch(&self, seqs: &[TokenizedExample], idx: &[usize]) -> Result<Batch, RunError> {
        self.worker.batch(seqs, idx)
    }

    /// The step's rollouts from the current policy (see [`RolloutWorker::rollout`]), with
    /// `extra`, the algorithm's own pass over each micro-batch (PPO: values), beside the
    /// log-probs.
    pub fn rollout(&mut self, chosen: Vec<usize>, shape: RolloutShape, extra: impl FnMut(&Batch) -> Result<Option<Tensor>, RunError>) -> Result<Rollout, RunError> {
        let policy = self.trainable.view(true, None)?;
        self.rollout_from(&policy, chosen, shape, extra)
    }

    /// [`RlRun::rollout`] from `policy` (an asynchronous run's behavior policy).
    pub fn rollout_from(&mut self, policy: &CausalLm, chosen: Vec<usize>, shape: RolloutShape, extra: impl FnMut(&Batch) -> Result<Option<Tensor>, RunError>) -> Result<Rollout, RunError> {
        let step = self.step();
        let r = self.worker.rollout(policy, chosen, step, &mut self.plan, shape, extra)?;
        self.adopt_plan(None);
        Ok(r)
    }

    /// The algorithm's own pass over each micro-batch of `r` (PPO: values), for rollouts drawn
    /// without it (on an asynchronous run's rollout thread).
    pub fn extra_pass(&self, r: &mut Rollout, mut extra: impl FnMut(&Batch) -> Result<Option<Tensor>, RunError>) -> Result<(), RunError> {
        r.extra = r.chunks.iter().map(|c| extra(&self.batch(&r.seqs, c)?)).collect::<Result<_, _>>()?;
        Ok(())
    }
}

impl RolloutWorker {
    /// A padded batch of sequences `idx`.
    pub fn batch(&self, seqs: &[TokenizedExample], idx: &[usize]) -> Result<Batch, RunError> {
        let mb: MicroBatch = idx.iter().map(|&i| vec![i]).collect();
        Ok(build_batch(seqs, &mb, self.pad, &self.device)?)
    }

    /// Sample `shape.n` responses per chosen prompt from `policy` (seeded by `step`, the steps
    /// done before the update these rollouts feed), then score them on a CPU thread while the
    /// device computes the sampling policy's and the reference's log-probs and `extra` (the
    /// algorithm's own pass over each micro-batch). With dynamic sampling, further prompt
    /// batches come from `plan`.
    pub fn rollout(
        &self,
        policy: &CausalLm,
        chosen: Vec<usize>,
        step: u64,
        plan: &mut PromptPlan,
        shape: RolloutShape,
        mut extra: impl FnMut(&Batch) -> Result<Option<Tensor>, RunError>,
    ) -> Result<Rollout, RunError> {
        if let Some(ds) = shape.dynamic {
            return self.rollout_dynamic(policy, chosen, step, plan, shape, ds, extra);
        }
        let t_gen = Instant::now();
        let s = self.sample(policy, &chosen, shape, step, 0)?;
        let gen_s = t_gen.elapsed().as_secs_f64();
        let chunks = shape.passes(&s.seqs);
        let (scored, (old_lps, ref_lps, extras, logprob_s), reward_s) = std::thread::scope(|sc| -> Result<_, RunError> {
            let handle = sc.spawn(|| self.score(&s.owners, &s.responses));
            let lps = self.logprob_pass(policy, &s.seqs, &chunks, &mut extra)?;
            let (scored, reward_s) = handle.join().expect("reward thread");
            Ok((scored?, lps, reward_s))
        })?;
        let mut scored = scored;
        drop_tool_failures(&mut scored, &s.dropped);
        Ok(Rollout { owners: s.owners, seqs: s.seqs, responses: s.responses, scored, chunks, old_lps, ref_lps, extra: extras, rollout_tokens: s.rollout_tokens, gen_s, logprob_s, reward_s, filter: None, agent: s.agent })
    }

    /// DAPO's dynamic sampling: sample and score `chosen`, keep the groups whose scored
    /// responses differ in reward, and draw further prompt batches from `plan` (each a new
    /// round with its own seeds) until as many groups as `chosen` has are kept or
    /// `ds.max_rounds` rounds ran; the first kept groups, in draw order, then get their
    /// log-probs. Scoring cannot overlap the log-prob pass here: it decides which sequences
    /// get one.
    #[allow(clippy::too_many_arguments)]
    fn rollout_dynamic(
        &self,
        policy: &CausalLm,
        chosen: Vec<usize>,
        step: u64,
        plan: &mut PromptPlan,
        shape: RolloutShape,
        ds: DynamicSampling,
        mut extra: impl FnMut(&Batch) -> Result<Option<Tensor>, RunError>,
    ) -> Result<Rollout, RunError> {
        let (n, want) = (shape.n, chosen.len());
        let (mut gen_s, mut reward_s, mut tokens) = (0.0, 0.0, 0);
        let mut kept = Sampled::default();
        let mut scored = Vec::new();
        let mut stats = FilterStats::default();
        let mut chosen = chosen;
        for round in 0..ds.max_rounds.max(1) {
            let t0 = Instant::now();
            let mut s = self.sample(policy, &chosen, shape, step, round)?;
            gen_s += t0.elapsed().as_secs_f64();
            let (sc, rs) = self.score(&s.owners, &s.responses);
            let mut sc = sc?;
            drop_tool_failures(&mut sc, &s.dropped);
            reward_s += rs;
            tokens += s.rollout_tokens;
            stats.rounds = round + 1;
            for g in 0..s.owners.len() / n.max(1) {
                let range = g * n..(g + 1) * n;
                if !has_spread(&sc[range.clone()]) {
                    stats.filtered += 1;
                    continue;
                }
                if kept.owners.len() / n.max(1) >= want {
                    continue;
                }
                for i in range {
                    if let Some(a) = s.agent.get(i) {
                        kept.agent.push(*a);
                    }
                    kept.owners.push(s.owners[i]);
                    kept.seqs.push(std::mem::take(&mut s.seqs[i]));
                    kept.responses.push(std::mem::take(&mut s.responses[i]));
                    scored.push(sc[i].clone());
                }
            }
            if kept.owners.len() / n.max(1) >= want || round + 1 == ds.max_rounds {
                break;
            }
            chosen = plan.draw();
        }
        stats.kept = kept.owners.len() / n.max(1);
        let t0 = Instant::now();
        let chunks = shape.passes(&kept.seqs);
        let (old_lps, ref_lps, extras, _) = self.logprob_pass(policy, &kept.seqs, &chunks, &mut extra)?;
        let logprob_s = t0.elapsed().as_secs_f64();
        Ok(Rollout {
            owners: kept.owners,
            seqs: kept.seqs,
            responses: kept.responses,
            scored,
            chunks,
            old_lps,
            ref_lps,
            extra: extras,
            rollout_tokens: tokens,
            gen_s,
            logprob_s,
            reward_s,
            filter: Some(stats),
            agent: kept.agent,
        })
    }

    /// `n` responses per prompt of `chosen` from `policy`; `round` > 0 (dynamic sampling's later
    /// draws of a step) gets seeds of its own.
    fn sample(&self, policy: &CausalLm, chosen: &[usize], shape: RolloutShape, step: u64, round: usize) -> Result<Sampled, RunError> {
        let (n, engine) = (shape.n, EngineConfig { free_bytes: shape.free_bytes.or(self.engine.free_bytes), ..self.engine });
        let mut ids: Vec<Vec<u32>> = Vec::new();
        let mut owners = Vec::new();
        for &i in chosen {
            for _ in 0..n {
                ids.push(self.train[i].ids.clone());
                owners.push(i);
            }
        }
        let stopc = StopConditions { eos_token_ids: self.eos.clone(), stop_strings: self.stop.clone(), tokenizer: Some(&self.tok) };
        let seed = self.seed.wrapping_mul(1_000_003).wrapping_add(step).wrapping_add((round as u64) << 40);
        let params = SamplingParams { seed, ..self.rollout.clone() };
        // Sequence i draws from stream i; the n copies of a prompt share its KV blocks.
        let streams: Vec<u64> = (0..ids.len() as u64).collect();
        if let Some((tools, renderer)) = &self.agent {
            let agent = AgentLoop { policy, tok: &self.tok, stop: &stopc, engine: &engine, params, settings: &self.multi_turn, renderer, tools: tools.as_ref() };
            let trajs = agent.run(&ids, &streams)?;
            let rollout_tokens = trajs.iter().map(|t| t.generated).sum();
            let responses = trajs.iter().map(|t| self.tok.decode(&t.ids[t.prompt_len..], true).unwrap_or_default()).collect();
            let agent_stats = trajs.iter().map(|t| (t.turns, t.tool_calls, t.tool_errors)).collect();
            let dropped = trajs.iter().map(|t| t.dropped.clone()).collect();
            let seqs = trajs.into_iter().map(|t| TokenizedExample { ids: t.ids, trained: t.trained, truncated: false }).collect();
            return Ok(Sampled { owners, seqs, responses, rollout_tokens, agent: agent_stats, dropped });
        }
        let gens = medrl_lm::engine::run(policy, &ids, &streams, &params, &stopc, &engine, None)?;
        let rollout_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
        let responses: Vec<String> = gens.iter().map(|g| self.tok.decode(&g.tokens, true).unwrap_or_default()).collect();
        let seqs: Vec<TokenizedExample> = ids
            .iter()
            .zip(&gens)
            .map(|(p, g)| {
                let mut all = p.clone();
                all.extend(&g.tokens);
                let mut trained = vec![false; p.len()];
                trained.extend(std::iter::repeat_n(true, g.tokens.len()));
                TokenizedExample { ids: all, trained, truncated: false }
            })
            .collect();
        Ok(Sampled { owners, seqs, responses, rollout_tokens, ..Default::default() })
    }

    /// The reward plugins' results for (prompt index, response) pairs, and the seconds taken.
    fn score(&self, owners: &[usize], responses: &[String]) -> (Result<Vec<RewardResult>, medrl_reward::RewardError>, f64) {
        let t0 = Instant::now();
        let train = &self.train;
        let batch: Vec<medrl_plugin::Sample> =
            owners.iter().zip(responses).map(|(&i, r)| medrl_plugin::sample(&train[i].text, r, &train[i].ground_truth, &train[i].metadata, &train[i].data_source)).collect();
        (self.rewards.score(&batch), t0.elapsed().as_secs_f64())
    }

    /// Sampling-policy and reference log-probs and the algorithm's extra pass, per chunk of
    /// `seqs`, and the seconds taken.
    #[allow(clippy::type_complexity)]
    fn logprob_pass(
        &self,
        policy: &CausalLm,
        seqs: &[TokenizedExample],
        chunks: &[Vec<usize>],
        extra: &mut impl FnMut(&Batch) -> Result<Option<Tensor>, RunError>,
    ) -> Result<(Vec<Tensor>, Vec<Option<Tensor>>, Vec<Option<Tensor>>, f64), RunError> {
        let t0 = Instant::now();
        let (mut old, mut refs, mut extras) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in chunks {
            let b = self.batch(seqs, chunk)?;
            let lp = medrl_lm::generate::token_logprobs(&policy.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?, &b.targets)?;
            old.push(lp.detach());
            refs.push(match &self.reference {
                Some(r) => Some(medrl_lm::generate::token_logprobs(&r.forward(&b.input_ids, &b.positions, Some(&b.attention_mask))?, &b.targets)?.detach()),
                None => None,
            });
            extras.push(extra(&b)?);
        }
        Ok((old, refs, extras, t0.elapsed().as_secs_f64()))
    }
}

impl RlRun {
    /// Count a finished update: step, optimizer steps, tokens.
    pub fn end_update(&mut self, rollout_tokens: usize) {
        self.session.end_step(rollout_tokens, &self.opt);
    }

    /// The part of a step's metrics line every RL algorithm writes: rewards (total, per plugin
    /// and component), failures, response length, timings and throughput.
    pub fn rollout_line(&self, r: &Rollout, update_s: f64, step_start: Instant) -> serde_json::Value {
        let vals: Vec<f64> = r.scored.iter().filter_map(|s| s.total).collect();
        let mean_r = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
        let mut comps: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
        for s in &r.scored {
            let plugin_scores = s.by_plugin.iter().filter_map(|(k, v)| v.map(|v| (k, v)));
            for (k, v) in s.components.iter().map(|(k, v)| (k, *v)).chain(plugin_scores) {
                let e = comps.entry(k.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        let mut line = serde_json::json!({
            "step": self.session.state.step,
            "reward": mean_r,
            "reward_std": (vals.iter().map(|v| (v - mean_r).powi(2)).sum::<f64>() / vals.len().max(1) as f64).sqrt(),
            "lr": self.schedule.lr_at(self.session.state.step.saturating_sub(1)),
            "response_len": r.seqs.iter().map(|s| s.trained_tokens()).sum::<usize>() as f64 / r.seqs.len().max(1) as f64,
            "dropped": r.scored.iter().filter(|s| s.total.is_none()).count(),
            "reward_failures": r.scored.iter().map(|s| s.failures.values().filter(|f| f.as_str() != "not_applicable").count()).sum::<usize>(),
            "time_generate_s": r.gen_s,
            "time_logprob_s": r.logprob_s,
            "time_reward_s": r.reward_s,
            "time_update_s": update_s,
            "time_step_s": step_start.elapsed().as_secs_f64(),
            "rollout_tokens_per_s": r.rollout_tokens as f64 / r.gen_s.max(1e-9),
            "memory_mb": medrl_nn::device::memory_mb(&self.session.device),
            "skipped_steps": self.session.state.skipped_steps,
        });
        for (k, (sum, n)) in comps {
            line[format!("reward/{k}")] = (sum / n.max(1) as f64).into();
        }
        if !r.agent.is_empty() {
            let n = r.agent.len() as f64;
            line["turns"] = (r.agent.iter().map(|a| a.0).sum::<usize>() as f64 / n).into();
            line["tool_calls"] = (r.agent.iter().map(|a| a.1).sum::<usize>() as f64 / n).into();
            line["tool_errors"] = r.agent.iter().map(|a| a.2).sum::<usize>().into();
        }
        if let Some(f) = r.filter {
            line["sampling_rounds"] = f.rounds.into();
            line["groups_kept"] = f.kept.into();
            line["groups_filtered"] = f.filtered.into();
        }
        line
    }

    /// Finish a step: validation when due (added to `line`), the metrics line, and a checkpoint
    /// when due. `extra` adds the algorithm's own tensors to the checkpoint's trainable and
    /// optimizer files (PPO: the critic, under `critic/`); `plots` redraws the run's charts.
    pub fn finish_step(
        &mut self,
        mut line: serde_json::Value,
        extra: impl FnOnce() -> (HashMap<String, Tensor>, HashMap<String, Tensor>),
        plots: fn(&Path) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let t = &self.training;
        if self.session.due(t.eval_every, t.max_steps) {
            if let Some(v) = self.validate_now()? {
                v.record(&mut line);
                self.validation_after = Some(v);
            }
        }
        self.session.metrics.write(&line)?;
        if let Some(r) = line.get("reward").and_then(|v| v.as_f64()) {
            self.pb.set_message(format!("{} reward {r:.3}", self.session.state.kind));
        }
        self.pb.inc(1);
        let t = &self.training;
        if self.session.due(t.save_every, t.max_steps) {
            self.session.save(&self.trainable, &self.opt, extra(), t.keep_last)?;
            plots(&self.session.out)?;
        }
        Ok(())
    }

    /// After the loop: the final model (and LoRA adapter) when the run reached `max_steps`.
    /// Returns the final model folder.
    pub fn finish(&mut self) -> Result<PathBuf, RunError> {
        self.pb.finish_and_clear();
        self.session.export_final(&self.trainable, &self.model_dir, &self.training.export_dtype, self.training.max_steps)?;
        // A resumed run validated only part of the time (never, when resumed after its last
        // step); the run's records hold the rest.
        if self.validation_before.is_none() || self.validation_after.is_none() {
            let rows = crate::metrics::read_metrics(&self.session.out)?;
            let (before, after) = crate::metrics::before_and_after(&rows, Validation::from_record);
            self.validation_before = self.validation_before.take().or(before);
            self.validation_after = self.validation_after.take().or(after);
        }
        Ok(self.session.outputs().0)
    }
}

/// Tensors of `map` whose names start with `prefix`, with the prefix removed (the algorithm's
/// own part of a checkpoint).
pub fn strip_prefix(map: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone()))).collect()
}

/// `map` with every name prefixed.
pub fn add_prefix(map: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect()
}

/// Draw `charts` (file, title, y label, [(series name, metrics key)]) from `metrics.jsonl`
/// into `run_dir/plots/`.
pub fn write_charts(run_dir: &Path, charts: &[(&str, &str, &str, &[(&'static str, &str)])]) -> Result<(), RunError> {
    use medrl_base::plot::{line_chart_svg, Series};
    let rows = crate::metrics::read_metrics(run_dir)?;
    for (file, title, ylabel, keys) in charts {
        let series: Vec<Series> = keys
            .iter()
            .map(|(name, key)| Series { name, points: rows.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(*key)?.as_f64()?))).collect() })
            .collect();
        let svg = line_chart_svg(title, "step", ylabel, &series);
        let p = run_dir.join("plots").join(file);
        medrl_base::fsutil::write_atomic(&p, svg.as_bytes()).map_err(|e| RunError::Io { path: p.clone(), source: e })?;
    }
    Ok(())
}
