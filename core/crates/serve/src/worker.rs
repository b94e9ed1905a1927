//! The engine thread of one served model: requests in over a channel, tokens out to each
//! request's own channel.
//!
//! The model and its KV cache belong to one OS thread (a model step blocks for milliseconds to
//! seconds; it must not run on the async runtime). Between steps the thread takes in new
//! requests, so concurrent requests share decode steps (continuous batching), and drops the
//! sequences of requests whose receiver is gone (the client disconnected) or whose deadline
//! passed, which frees their KV blocks at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use medrl_lm::engine::{Engine, EngineConfig, FinishReason, Request, SeqId};
use medrl_lm::model::CausalLm;
use medrl_lm::tokenizer::TextTokenizer;
use tokio::sync::mpsc as ampsc;

/// What a request's receiver gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Choice `choice` sampled `token`; `top` holds the alternatives when they were asked for.
    Token { choice: usize, token: u32, logprob: f32, top: Vec<(u32, f32)> },
    /// Choice `choice` ended.
    Done { choice: usize, reason: FinishReason },
    /// The request failed; nothing more comes.
    Failed { status: u16, message: String },
}

/// One request for the engine thread.
pub struct Job {
    pub request: Arc<Request>,
    /// Choices (samples of the one prompt); choice `i` draws from RNG stream `i`.
    pub n: usize,
    /// The index of choice 0 in the response (requests of several prompts share one channel).
    pub first_choice: usize,
    pub deadline: Instant,
    pub events: ampsc::UnboundedSender<Event>,
}

/// Gauges and counters a worker keeps for `/metrics` and the load tests.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub blocks_used: AtomicUsize,
    pub blocks_total: AtomicUsize,
    pub steps: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub aborted_requests: AtomicU64,
}

/// The sending side of a worker.
#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    pub stats: Arc<WorkerStats>,
}

impl Worker {
    /// Start the engine thread for `model` with a cache of `num_blocks` blocks.
    pub fn spawn(name: &str, model: CausalLm, tokenizer: Arc<TextTokenizer>, cfg: EngineConfig, num_blocks: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(WorkerStats::default());
        stats.blocks_total.store(num_blocks, Ordering::Relaxed);
        let st = stats.clone();
        let label = name.to_string();
        std::thread::Builder::new().name(format!("engine:{name}")).spawn(move || {
            if let Err(e) = run(&model, &tokenizer, &cfg, num_blocks, rx, &st) {
                tracing::error!("engine thread of `{label}` stopped: {e}");
            }
        })?;
        Ok(Self { jobs: tx, stats })
    }

    /// Hand a job to the engine thread; `false` if the thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }
}

struct Active {
    events: ampsc::UnboundedSender<Event>,
    deadline: Instant,
    /// Sequence ids of the choices still running.
    seqs: Vec<SeqId>,
}

fn run(model: &CausalLm, tok: &TextTokenizer, cfg: &EngineConfig, num_blocks: usize, rx: mpsc::Receiver<Job>, stats: &WorkerStats) -> candle_core::Result<()> {
    let mut engine = Engine::new(model, Some(tok), cfg, num_blocks)?;
    let mut next_seq: SeqId = 0;
    let mut next_job: u64 = 0;
    let mut jobs: HashMap<u64, Active> = HashMap::new();
    // Sequence -> (job, choice).
    let mut owner: HashMap<SeqId, (u64, usize)> = HashMap::new();
    loop {
        let mut incoming = Vec::new();
        if jobs.is_empty() {
            // Idle: sleep until a request comes (or the server shuts down).
            match rx.recv() {
                Ok(j) => incoming.push(j),
                Err(_) => return Ok(()),
            }
        }
        incoming.extend(rx.try_iter());
        for job in incoming {
            let ids: Vec<SeqId> = (next_seq..next_seq + job.n as u64).collect();
            next_seq += job.n as u64;
            let streams: Vec<u64> = (0..job.n as u64).collect();
            match engine.add(&ids, &streams, job.request) {
                Ok(()) => {
                    for (c, &id) in ids.iter().enumerate() {
                        owner.insert(id, (next_job, job.first_choice + c));
                    }
                    jobs.insert(next_job, Active { events: job.events, deadline: job.deadline, seqs: ids });
                    next_job += 1;
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed { status: 400, message: e.to_string() });
                }
            }
        }
        // Requests nobody waits for any more, or past their deadline, leave the engine now.
        let now = Instant::now();
        let gone: Vec<u64> = jobs.iter().filter(|(_, a)| a.events.is_closed() || now >= a.deadline).map(|(&k, _)| k).collect();
        for k in gone {
            let a = jobs.remove(&k).expect("listed above");
            if now >= a.deadline && !a.events.is_closed() {
                let _ = a.events.send(Event::Failed { status: 504, message: "the request's deadline passed before it finished (raise --request-timeout-s)".into() });
            }
            engine.abort(&a.seqs);
            for s in &a.seqs {
                owner.remove(s);
            }
            stats.aborted_requests.fetch_add(1, Ordering::Relaxed);
        }
        if engine.num_unfinished() > 0 {
            match engine.step() {
                Ok(outputs) => {
                    stats.steps.fetch_add(1, Ordering::Relaxed);
                    for o in outputs {
                        let Some(&(k, choice)) = owner.get(&o.seq) else { continue };
                        let Some(a) = jobs.get_mut(&k) else { continue };
                        if let Some((token, logprob)) = o.token {
                            stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
                            let _ = a.events.send(Event::Token { choice, token, logprob, top: o.top });
                        }
                        if let Some(g) = o.finished {
                            let _ = a.events.send(Event::Done { choice, reason: g.finish_reason });
                            owner.remove(&o.seq);
                            a.seqs.retain(|&s| s != o.seq);
                            if a.seqs.is_empty() {
                                jobs.remove(&k);
                            }
                        }
                    }
                }
                Err(e) => {
                    // A failed step (out of device memory, a kernel error) fails what was in
                    // flight; the engine starts clean for the next requests.
                    tracing::error!("engine step failed: {e}");
                    for (_, a) in jobs.drain() {
                        let _ = a.events.send(Event::Failed { status: 500, message: format!("generation failed: {e}") });
                        engine.abort(&a.seqs);
                    }
                    owner.clear();
                }
            }
        }
        let (waiting, running) = engine.queue();
        stats.waiting.store(waiting, Ordering::Relaxed);
        stats.running.store(running, Ordering::Relaxed);
        stats.blocks_used.store(engine.blocks_used(), Ordering::Relaxed);
    }
}
