//! The seam between the RL driver and an algorithm.
//!
//! [`drive`] owns the loop every algorithm shares (set-up and resume, prompt plan, rollouts and
//! rewards, the non-finite policy, metrics lines, validation, checkpoints, export); an
//! [`RlAlgorithm`] owns what differs: its extra pass over the rollouts (PPO's values), the
//! advantages and losses of its update, the extra state it checkpoints (PPO's critic), the
//! metric keys and charts it adds, and what it exports besides the policy.
//!
//! Adding an algorithm: a file in `rl/algos/` with its `algorithm:` config
//! ([`AlgorithmConfig`]) and an `RlAlgorithm` impl, and one line in [`super::algos::dispatch`]
//! (ARCHITECTURE.md walks through RLOO).

use candle_core::Tensor;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::{AlgorithmConfig, RlConfig};
use super::run::{add_prefix, strip_prefix, Rollout, RlRun, RolloutShape};
use super::validation::Validation;
use crate::error::RunError;
use crate::session::{NonFinitePolicy, RunOptions};
use crate::TrainError;
use medrl_data::batch::Batch;

/// What one update produced.
#[derive(Debug, Default)]
pub struct StepUpdate {
    /// The algorithm's own keys of this step's metrics line (see [`RlAlgorithm::METRIC_KEYS`]).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Set when a loss or gradient was NaN or infinite: the update stopped there with no
    /// optimizer step applied after it, and the run's `on_nonfinite` policy decides.
    pub nonfinite: Option<String>,
}

/// Tensors an algorithm adds to each checkpoint: (trainable, optimizer), names prefixed so they
/// cannot collide with the policy's (PPO: `critic/`).
pub type CheckpointExtra = (HashMap<String, Tensor>, HashMap<String, Tensor>);

/// One RL algorithm on the shared driver. See the module doc.
pub trait RlAlgorithm: Sized {
    /// Its `algorithm:` section of the run config.
    type Config: AlgorithmConfig;
    /// Its name: the CLI command, the checkpoint kind (a resume refuses another) and the
    /// progress bar's label.
    const NAME: &'static str;
    /// Keys it adds to each step's metrics line, beside the rollout keys every run writes
    /// (reward, reward/<plugin>, response_len, timings, memory; docs/grpo.md).
    const METRIC_KEYS: &'static [&'static str];

    /// Set up after the run is ready (and resumed: restore own state from `run.session.resumed`).
    fn new(cfg: &RlConfig<Self::Config>, run: &RlRun) -> Result<Self, RunError>;

    /// An extra pass over each rollout micro-batch, beside the old-policy log-probs (PPO: the
    /// critic's values). Its results arrive as [`Rollout::extra`]; [`RlAlgorithm::update`]
    /// follows the last call of a step.
    fn extra_pass(&mut self, _batch: &Batch) -> Result<Option<Tensor>, RunError> {
        Ok(None)
    }

    /// The update of one step from its rollouts: advantages, losses, optimizer steps.
    fn update(&mut self, cfg: &RlConfig<Self::Config>, run: &mut RlRun, rollout: &Rollout) -> Result<StepUpdate, RunError>;

    /// Extra tensors for each checkpoint.
    fn checkpoint_extra(&self) -> CheckpointExtra {
        Default::default()
    }

    /// After the last step: what the algorithm writes besides the policy, by outcome key
    /// (PPO: `final_critic`).
    fn export(&self, _cfg: &RlConfig<Self::Config>, _run: &RlRun) -> Result<BTreeMap<String, PathBuf>, RunError> {
        Ok(BTreeMap::new())
    }

    /// Redraw the run's charts into `run_dir/plots/`.
    fn write_plots(run_dir: &Path) -> Result<(), RunError> {
        super::pg::write_plots(run_dir)
    }
}

/// What a finished RL run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RlOutcome {
    pub output_dir: PathBuf,
    pub final_model: PathBuf,
    /// What the algorithm exported besides the policy (PPO: `final_critic`).
    #[serde(flatten)]
    pub outputs: BTreeMap<String, PathBuf>,
    pub steps: u64,
    pub validation_before: Option<Validation>,
    pub validation_after: Option<Validation>,
}

/// Run algorithm `A` as `cfg` says. `grants` are the capabilities (judge, search) the reward
/// and tool plugins may use.
pub fn drive<A: RlAlgorithm>(cfg: &RlConfig<A::Config>, grants: medrl_plugin::Grants, opts: &RunOptions) -> Result<RlOutcome, RunError> {
    drive_with_tools::<A>(cfg, grants, opts, None)
}

/// [`drive`] with multi-turn rollouts calling `tools` (see [`super::agent`]) instead of the
/// config's.
pub fn drive_with_tools<A: RlAlgorithm>(cfg: &RlConfig<A::Config>, grants: medrl_plugin::Grants, opts: &RunOptions, tools: Option<Box<dyn super::agent::ToolRunner + Send>>) -> Result<RlOutcome, RunError> {
    let a = &cfg.algorithm;
    let shape = RolloutShape { n: a.samples_per_prompt(), micro_batch_size: a.micro_batch_size(), micro_batch_tokens: a.micro_batch_tokens(), dynamic: a.dynamic_sampling(), free_bytes: None };
    let mut rl = RlRun::setup_with_tools(cfg, A::NAME, grants, opts, tools)?;
    let mut algo = A::new(cfg, &rl)?;
    if cfg.async_rollout {
        drive_async(cfg, &mut rl, &mut algo, shape)?;
    } else {
        while let Some(chosen) = rl.next_prompts() {
            let step_start = Instant::now();
            let r = rl.rollout(chosen, shape, |b| algo.extra_pass(b))?;
            let t_upd = Instant::now();
            let upd = algo.update(cfg, &mut rl, &r)?;
            let line = step_line(cfg, &mut rl, &r, upd, t_upd.elapsed().as_secs_f64(), step_start)?;
            rl.finish_step(line, || algo.checkpoint_extra(), A::write_plots)?;
        }
    }
    let final_model = rl.finish()?;
    let outputs = algo.export(cfg, &rl)?;
    Ok(RlOutcome { output_dir: rl.out().to_path_buf(), final_model, outputs, steps: rl.step(), validation_before: rl.validation_before.take(), validation_after: rl.validation_after.take() })
}

/// Prefix of the behavior-policy weights in an asynchronous run's checkpoints.
const BEHAVIOR: &str = "behavior/";

/// One-step asynchronous training (`async: true`). Update k trains on rollouts drawn from
/// the weights before update k-1 (the first step's from the initial weights): while update k
/// runs, a thread draws the rollouts of step k+1 from a copy of the weights update k starts
/// from. The rollouts' log-probs under that behavior policy are the old log-probs of the
/// clipped ratio, so the ratio is the importance weight of the off-policy sample and the clip
/// bounds how far one stale batch can push. A checkpoint after step k keeps the behavior
/// weights of step k+1 (and the prompt cursor before its draw), so a resumed run redraws the
/// same rollouts and retraces an uninterrupted one.
///
/// On CUDA each host thread launches on its own default stream (candle), so the hand-offs
/// synchronize; both threads still share the device's arithmetic (docs/grpo.md, "Asynchronous
/// training").
fn drive_async<A: RlAlgorithm>(cfg: &RlConfig<A::Config>, rl: &mut RlRun, algo: &mut A, shape: RolloutShape) -> Result<(), RunError> {
    let Some(chosen) = rl.next_prompts() else { return Ok(()) };
    // A step's time runs from the end of the one before (the first's: from its rollouts).
    let mut step_start = Instant::now();
    // The first rollouts: a fresh run's initial weights, or the behavior weights a checkpoint
    // kept for the step after it.
    let kept = rl.session.resumed.as_ref().map(|ck| strip_prefix(&ck.trainable, BEHAVIOR)).filter(|m| !m.is_empty());
    let first = match kept {
        Some(w) => rl.trainable.view_of(&w)?,
        None if rl.step() > 0 => return Err(RunError::NoBehavior { dir: rl.out().to_path_buf(), step: rl.step() }),
        None => rl.trainable.view(true, None)?,
    };
    let mut pending = rl.rollout_from(&first, chosen, shape, |b| algo.extra_pass(b))?;
    drop(first);
    loop {
        let max_steps = cfg.training.max_steps;
        // The weights this update starts from generate the next step's rollouts; a checkpoint
        // of this step keeps them whenever a next step exists.
        let behavior = if rl.step() + 1 < max_steps { Some(rl.trainable.snapshot()?) } else { None };
        let draw_next = behavior.is_some() && !rl.session.done_after_this_step(max_steps);
        let worker = std::sync::Arc::clone(&rl.worker);
        let mut plan = rl.plan.clone();
        let next_policy = match (&behavior, draw_next) {
            (Some(w), true) => Some(rl.trainable.view_of(w)?),
            _ => None,
        };
        let seed_step = rl.step() + 1;
        // Measured now: once the update runs, free memory says more about its activations of
        // the moment than about what the rollouts may take (the engine would shrink its cache
        // to that and crawl). The update and the rollouts then share what was free.
        let shape = RolloutShape { free_bytes: medrl_nn::device::free_memory_bytes(rl.device()), ..shape };
        // candle's CUDA device launches on each host thread's own default stream: the copies
        // that made the snapshot must be done before the rollout thread reads it, and that
        // thread's work before this one reads its rollouts (hence its own synchronize).
        rl.device().synchronize()?;
        let device = rl.device().clone();
        let t_upd = Instant::now();
        let (upd, upd_s, next, wait_s) = std::thread::scope(|sc| {
            let handle = next_policy.map(|policy| {
                let (worker, plan) = (&worker, &mut plan);
                let device = &device;
                sc.spawn(move || {
                    let chosen = plan.draw();
                    let r = worker.rollout(&policy, chosen, seed_step, plan, shape, |_| Ok(None));
                    drop(policy);
                    device.synchronize()?;
                    r
                })
            });
            let upd = algo.update(cfg, rl, &pending);
            let upd_s = t_upd.elapsed().as_secs_f64();
            let t_wait = Instant::now();
            let next = handle.map(|h| h.join().expect("the rollout thread panicked"));
            (upd, upd_s, next, t_wait.elapsed().as_secs_f64())
        });
        let mut line = step_line(cfg, rl, &pending, upd?, upd_s, step_start)?;
        line["time_rollout_wait_s"] = wait_s.into();
        let behavior = behavior.map(|w| add_prefix(w, BEHAVIOR)).unwrap_or_default();
        rl.finish_step(
            line,
            || {
                let (mut tr, op) = algo.checkpoint_extra();
                tr.extend(behavior);
                (tr, op)
            },
            A::write_plots,
        )?;
        step_start = Instant::now();
        let Some(next) = next else { return Ok(()) };
        // Saved: the run now moves its prompt cursor past the next step's draw.
        rl.adopt_plan(Some(plan));
        pending = next?;
        rl.extra_pass(&mut pending, |b| algo.extra_pass(b))?;
    }
}

/// The non-finite policy, the step count, and the step's metrics line (rollout keys, the
/// update's keys).
fn step_line<A: AlgorithmConfig>(cfg: &RlConfig<A>, rl: &mut RlRun, r: &Rollout, upd: StepUpdate, upd_s: f64, step_start: Instant) -> Result<serde_json::Value, RunError> {
    if let Some(detail) = upd.nonfinite {
        match cfg.training.on_nonfinite {
            NonFinitePolicy::Stop => return Err(TrainError::NonFinite { what: "loss or gradient", step: rl.step() + 1, detail: format!("{detail}; the last checkpoint is intact") }.into()),
            NonFinitePolicy::Skip => rl.session.state.skipped_steps += 1,
        }
    }
    rl.end_update(r.rollout_tokens);
    let mut line = rl.rollout_line(r, upd_s, step_start);
    for (k, v) in upd.metrics {
        line[k] = v;
    }
    Ok(line)
}
