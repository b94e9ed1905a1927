//! Reward plugins: loading one, scoring a batch in parallel on a pool of stores (a store is
//! discarded after any failed call), the bisection that pins a failed chunk's error on the
//! samples that cause it, and the failure policy applied to the results.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::bindings::reward::RewardPre;
use super::bindings::{v02, v03};
use super::bindings::{Manifest, Sample, ScoreResult};
use super::checks::OutputCheck;
use super::engine::{read_component, PluginHost};
use super::error::{clone_error, PluginError, PluginId};
use super::limits::PluginOptions;
use super::policy::{FailurePolicy, MetricsSnapshot, Outcome};
use super::runner::{PooledReward, Runner};
use super::version::{expect_world, incompatible, AnyReward, AnyRewardPre, World};

impl PluginHost {
    /// Loads a reward plugin from a `.wasm` component file.
    pub fn load_reward(
        &self,
        path: &Path,
        opts: PluginOptions,
    ) -> Result<RewardPlugin, PluginError> {
        let (bytes, id) = read_component(path)?;
        self.load_reward_bytes(&bytes, id, opts)
    }

    /// Loads a reward plugin from component bytes; `id` names it until its manifest is read.
    pub fn load_reward_bytes(
        &self,
        bytes: &[u8],
        id: PluginId,
        opts: PluginOptions,
    ) -> Result<RewardPlugin, PluginError> {
        let (pre, version, world) = self.link(bytes, &id)?;
        expect_world(&id, World::Reward, world)?;
        let not_reward = |e: wasmtime::Error| PluginError::InvalidWasm {
            plugin: id.clone(),
            reason: format!("does not export the `reward` world of API {version}: {e:#}"),
        };
        let pre = match version.as_str() {
            "0.1.0" => AnyRewardPre::V01(RewardPre::new(pre).map_err(not_reward)?),
            "0.2.0" => AnyRewardPre::V02(v02::reward::RewardPre::new(pre).map_err(not_reward)?),
            "0.3.0" => AnyRewardPre::V03(v03::reward::RewardPre::new(pre).map_err(not_reward)?),
            // api_version() only returns supported versions; this arm is a version added to
            // SUPPORTED_API_VERSIONS without bindings.
            other => return Err(incompatible(&id, other)),
        };
        let runner = Runner::new(self.clone(), id, opts)?;
        let mut first = runner.instantiate_reward(&pre)?;
        let mut manifest = {
            let PooledReward { store, inst, .. } = &mut first;
            runner.guarded(store, |s| inst.manifest(s))?
        };
        let id = runner.adopt_manifest(&mut manifest, &version, &mut first.store)?;
        let runner = Runner { id, ..runner };
        runner.pool.lock().unwrap().push(first);
        Ok(RewardPlugin {
            runner,
            pre,
            manifest,
        })
    }
}

/// Per-sample results of a chunk (`Outcome::Scored` or `NotApplicable`), or the chunk's error.
type ChunkResult = Result<Vec<Result<Outcome, PluginError>>, PluginError>;

/// What the isolation of one chunk may still spend (see `Limits::max_isolation_calls` and
/// `max_chunk_deadlines`).
struct IsolationBudget {
    calls: usize,
    failed: usize,
    succeeded: bool,
    max_calls: usize,
    ends: Instant,
    /// Failed calls in a row, from the first, after which a chunk is given up: by then the
    /// depth-first bisection has tried a single sample and its neighbour (log2(n) + 2 calls,
    /// at least 8).
    give_up_after: usize,
    gave_up: bool,
}

impl IsolationBudget {
    /// Whether bisection must stop; says why once, in the log.
    fn over(&mut self, p: &RewardPlugin) -> bool {
        if self.gave_up {
            return true;
        }
        let why = if self.calls >= self.max_calls {
            "its retry budget (max_isolation_calls) is spent"
        } else if Instant::now() >= self.ends {
            "it used its time budget (max_chunk_deadlines)"
        } else if !self.succeeded && self.failed >= self.give_up_after {
            "every call failed"
        } else {
            return false;
        };
        self.gave_up = true;
        tracing::warn!(target: "medrl::plugin", plugin = %p.runner.id, calls = self.calls, "stopped isolating failures in a chunk: {why}; its remaining samples fail with the error at hand");
        true
    }
}

/// What a guest call returned, before the output contract of its API version is checked (the
/// WIT types: a 0.1.0 sample's error is the guest's own text).
enum RawOutput {
    V01(Vec<Result<ScoreResult, String>>),
    V02(v02::BatchScores),
}

/// A batch whose text does not fit the `u32` offsets of a 0.2.0 `sample-batch`.
#[derive(Debug, thiserror::Error)]
#[error("a batch of {samples} samples holds {bytes} bytes of text, over the 4 GiB a plugin call can take; lower max_batch_per_call")]
struct BatchTooLarge {
    samples: usize,
    bytes: usize,
}

/// Lays `samples` out as a 0.2.0 `sample-batch` (see the WIT), reusing the buffers. `Err` when
/// the text does not fit the `u32` offsets (4 GiB: more than a wasm32 guest can hold anyway).
fn fill_batch(batch: &mut v02::SampleBatch, samples: &[Sample]) -> Result<(), BatchTooLarge> {
    let len: usize = samples
        .iter()
        .map(|s| {
            s.prompt.len()
                + s.response.len()
                + s.ground_truth.len()
                + s.metadata.len()
                + s.data_source.len()
        })
        .sum();
    if u32::try_from(len).is_err() {
        return Err(BatchTooLarge {
            samples: samples.len(),
            bytes: len,
        });
    }
    let (text, offsets) = (&mut batch.text, &mut batch.offsets);
    text.clear();
    offsets.clear();
    text.reserve(len);
    offsets.reserve(5 * samples.len() + 1);
    offsets.push(0);
    for s in samples {
        for field in [
            &s.prompt,
            &s.response,
            &s.ground_truth,
            &s.metadata,
            &s.data_source,
        ] {
            text.push_str(field);
            // Fits: the total was checked above.
            offsets.push(text.len() as u32);
        }
    }
    Ok(())
}

/// A loaded reward plugin. `Sync`: score from any thread; batches are split over worker
/// threads, each using its own pooled `Store` (a trap discards that store only).
pub struct RewardPlugin {
    runner: Runner,
    pre: AnyRewardPre,
    manifest: Manifest,
}

impl RewardPlugin {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn id(&self) -> &PluginId {
        &self.runner.id
    }
    pub fn metrics(&self) -> MetricsSnapshot {
        self.runner.metrics.snapshot()
    }

    /// Scores a batch and applies the failure policy. `Err` only under `FailurePolicy::Fail`
    /// (the first failure, in sample order).
    pub fn score(
        &self,
        config: &serde_json::Value,
        samples: &[Sample],
    ) -> Result<Vec<Outcome>, PluginError> {
        let raw = self.score_raw(&config.to_string(), samples);
        let r = &self.runner;
        r.metrics
            .samples
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let mut out = Vec::with_capacity(samples.len());
        let mut first_err = None;
        for item in raw {
            let o = match item {
                Ok(o @ Outcome::Scored { .. }) => {
                    r.metrics.scored.fetch_add(1, Ordering::Relaxed);
                    o
                }
                Ok(o) => {
                    r.metrics.not_applicable.fetch_add(1, Ordering::Relaxed);
                    o
                }
                Err(e) => match r.opts.policy {
                    FailurePolicy::Fail => {
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                        continue;
                    }
                    FailurePolicy::Score(v) => {
                        r.metrics.substituted.fetch_add(1, Ordering::Relaxed);
                        Outcome::Substituted { score: v, error: e }
                    }
                    FailurePolicy::Drop => {
                        r.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                        Outcome::Dropped { error: e }
                    }
                },
            };
            out.push(o);
        }
        match first_err {
            Some(e) => Err(Arc::try_unwrap(e).unwrap_or_else(|e| clone_error(&e))),
            None => Ok(out),
        }
    }

    /// Scores a batch without applying the policy: one result per sample, `Outcome::Scored`
    /// or `Outcome::NotApplicable`. Failures are already counted in the metrics by kind.
    pub fn score_raw(
        &self,
        config: &str,
        samples: &[Sample],
    ) -> Vec<Result<Outcome, Arc<PluginError>>> {
        let r = &self.runner;
        let chunks: Vec<&[Sample]> = samples
            .chunks(r.opts.limits.max_batch_per_call.max(1))
            .collect();
        let next = AtomicUsize::new(0);
        let workers = r.threads().min(chunks.len()).max(1);
        let mut results: Vec<Option<ChunkResult>> = (0..chunks.len()).map(|_| None).collect();
        let work = |out: &mut Vec<(usize, ChunkResult)>| {
            let mut slot: Option<PooledReward> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { break };
                let mut budget = self.budget(chunk.len());
                let res = self.run_isolating(&mut slot, config, chunk, &mut budget);
                out.push((i, res));
            }
            if let Some(p) = slot {
                r.pool.lock().unwrap().push(p);
            }
        };
        if workers == 1 {
            let mut out = Vec::new();
            work(&mut out);
            for (i, res) in out {
                results[i] = Some(res);
            }
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        s.spawn(|| {
                            let mut out = Vec::new();
                            work(&mut out);
                            out
                        })
                    })
                    .collect();
                for h in handles {
                    for (i, res) in h.join().expect("plugin worker thread panicked") {
                        results[i] = Some(res);
                    }
                }
            });
        }
        let mut flat = Vec::with_capacity(samples.len());
        for (chunk, res) in chunks.iter().zip(results) {
            match res.expect("every chunk was processed") {
                Ok(v) => flat.extend(v.into_iter().map(|x| x.map_err(|e| r.fail(e, 1)))),
                Err(e) => {
                    let e = r.fail(e, chunk.len());
                    flat.extend(chunk.iter().map(|_| Err(e.clone())));
                }
            }
        }
        flat
    }

    fn budget(&self, n: usize) -> IsolationBudget {
        let l = &self.runner.opts.limits;
        IsolationBudget {
            calls: 0,
            failed: 0,
            succeeded: false,
            max_calls: l.max_isolation_calls.saturating_add(1),
            ends: Instant::now() + l.timeout.saturating_mul(l.max_chunk_deadlines.max(1)),
            // Small chunks (up to 4 samples: 7 calls) are always isolated completely.
            give_up_after: (n.max(1).next_power_of_two().trailing_zeros() as usize + 2).max(8),
            gave_up: false,
        }
    }

    /// Runs a chunk; if the call fails fast (trap, memory cap, bad output, denied capability),
    /// bisects it so the failure is pinned on the samples that cause it and the rest are still
    /// scored. Deadline and fuel failures are not retried: each retry could cost a full deadline.
    /// Bisection stops once the chunk's budget is spent (calls or wall time) or when every call
    /// so far failed, and what is left fails with the error at hand: slow traps cannot multiply
    /// the deadline, and a plugin that fails on every sample costs a few calls, not 2n.
    fn run_isolating(
        &self,
        slot: &mut Option<PooledReward>,
        config: &str,
        chunk: &[Sample],
        budget: &mut IsolationBudget,
    ) -> ChunkResult {
        let res = self.run_chunk(slot, config, chunk);
        budget.calls += 1;
        let err = match res {
            Ok(v) => {
                budget.succeeded = true;
                return Ok(v);
            }
            Err(e) => e,
        };
        budget.failed += 1;
        let retry = matches!(
            err,
            PluginError::Trap { .. }
                | PluginError::MemoryLimit { .. }
                | PluginError::BadOutput { .. }
                | PluginError::CapabilityDenied { .. }
        );
        if !(retry && self.runner.opts.isolate_failures && chunk.len() > 1) || budget.over(self) {
            return Err(err);
        }
        let (a, b) = chunk.split_at(chunk.len() / 2);
        let mut out = Vec::with_capacity(chunk.len());
        for half in [a, b] {
            // Checked again before the second half: no call starts once the budget is spent.
            let res = if budget.over(self) {
                Err(clone_error(&err))
            } else {
                self.run_isolating(slot, config, half, budget)
            };
            match res {
                Ok(v) => out.extend(v),
                Err(e) => {
                    out.extend((1..half.len()).map(|_| Err(clone_error(&e))));
                    out.push(Err(e));
                }
            }
        }
        Ok(out)
    }

    /// One guest call on a pooled (or fresh) store. A poisoning error discards the store.
    fn run_chunk(
        &self,
        slot: &mut Option<PooledReward>,
        config: &str,
        chunk: &[Sample],
    ) -> ChunkResult {
        let r = &self.runner;
        if slot.is_none() {
            let pooled = r.pool.lock().unwrap().pop();
            *slot = Some(match pooled {
                Some(p) => p,
                None => r.instantiate_reward(&self.pre)?,
            });
        }
        let PooledReward { store, inst, batch } = slot.as_mut().expect("filled above");
        let res = match inst {
            AnyReward::V01(inst) => r
                .guarded(store, |s| inst.call_score(s, config, chunk))
                .map(RawOutput::V01),
            AnyReward::V02(inst) => {
                fill_batch(batch, chunk).map_err(|e| PluginError::Config {
                    plugin: r.id.clone(),
                    reason: e.to_string(),
                })?;
                r.guarded(store, |s| inst.call_score_batch(s, config, batch))
                    .map(RawOutput::V02)
            }
            AnyReward::V03(inst) => {
                fill_batch(batch, chunk).map_err(|e| PluginError::Config {
                    plugin: r.id.clone(),
                    reason: e.to_string(),
                })?;
                // The 0.3.0 batch type is 0.2.0's under another package: lend it the buffers.
                let mut b3 = v03::SampleBatch {
                    text: std::mem::take(&mut batch.text),
                    offsets: std::mem::take(&mut batch.offsets),
                };
                let res = r.guarded(store, |s| inst.call_score_batch(s, config, &b3));
                batch.text = std::mem::take(&mut b3.text);
                batch.offsets = std::mem::take(&mut b3.offsets);
                res.map(|b| RawOutput::V02(v03::batch_scores(b)))
            }
        };
        let denied = store.data().denied;
        match res {
            Ok(RawOutput::V01(out)) => Ok(self.checks().check_output(chunk.len(), out, denied)?),
            Ok(RawOutput::V02(out)) => {
                Ok(self.checks().check_batch_output(chunk.len(), out, denied)?)
            }
            // Any failed call (trap, deadline, a lift error) may leave the instance half-way
            // through; never reuse it.
            Err(e) => {
                *slot = None;
                r.metrics.stores_discarded.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The output contract this plugin's results are checked against.
    fn checks(&self) -> OutputCheck<'_> {
        OutputCheck {
            plugin: &self.runner.id,
            limits: &self.runner.opts.limits,
            names: &self.runner.names,
        }
    }
}

/// Converts loosely-typed JSON fields into the WIT sample record.
pub fn sample(
    prompt: &str,
    response: &str,
    ground_truth: &serde_json::Value,
    metadata: &serde_json::Value,
    data_source: &str,
) -> Sample {
    Sample {
        prompt: prompt.to_string(),
        response: response.to_string(),
        ground_truth: ground_truth.to_string(),
        metadata: if metadata.is_null() {
            "{}".into()
        } else {
            metadata.to_string()
        },
        data_source: data_source.to_string(),
    }
}
