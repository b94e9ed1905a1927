//! Continuous batching: which sequences run in the next model step, and how many tokens each
//! computes there.
//!
//! Every step spends at most `max_tokens_per_step` tokens over at most `max_seqs` sequences.
//! Running sequences that are decoding get one token each first (oldest first); the rest of the
//! budget goes to prefill, in arrival order, chunked so a long prompt cannot stall everyone's
//! decoding. A sequence is admitted only while the block pool can hold its chunk. When a running
//! sequence cannot get a slot for its next token, the most recently admitted running sequence is
//! preempted: its blocks go back to the pool and it returns to the front of the queue, to
//! recompute its prompt and what it generated so far when it is admitted again (vLLM's
//! recompute preemption). Sampling does not depend on scheduling (each sequence draws from its
//! own seeded stream), so preemption and admission order change when a token is computed, never
//! which token.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use super::blocks::{BlockPool, BlockTable, CopyOnWrite};
use super::EngineError;

/// A caller's id for a sequence.
pub type SeqId = u64;

/// The step budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences computed in one step at most.
    pub max_seqs: usize,
    /// Tokens computed in one step at most (prefill chunks plus one per decoding sequence).
    pub max_tokens_per_step: usize,
}

#[derive(Debug, Clone)]
struct Seq {
    id: SeqId,
    /// Prompt plus generated tokens so far: what the cache must hold before the next token.
    tokens: usize,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    table: BlockTable,
    /// Further samples of the same prompt: they join when this sequence's prompt is computed,
    /// sharing its blocks ([`BlockTable::fork`]), and each samples its own first token from the
    /// same last-position logits.
    forks: Vec<SeqId>,
}

/// What one model step computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Sequences computing the positions `range` of their tokens (prompt chunks, or recompute
    /// after preemption); a plan whose range ends at the sequence's length samples a token.
    pub prefill: Vec<(SeqId, Range<usize>)>,
    /// Sequences computing their last token's position and sampling the next one.
    pub decode: Vec<SeqId>,
    /// Sequences whose blocks were taken back this step (they recompute later).
    pub preempted: Vec<SeqId>,
    /// Sequences that outgrew the whole cache (alone, still no slot for their next token): they
    /// are dropped from the scheduler, and the caller ends them as at a length limit.
    pub exhausted: Vec<SeqId>,
    /// Block copies to make before the step's cache writes.
    pub copies: Vec<CopyOnWrite>,
    /// Sequences whose prompt this step completes, with the samples that fork from them: each
    /// of those samples its first token from the same logits row as the parent.
    pub forks: Vec<(SeqId, Vec<SeqId>)>,
}

impl StepPlan {
    /// Tokens computed by this step.
    pub fn tokens(&self) -> usize {
        self.prefill.iter().map(|(_, r)| r.len()).sum::<usize>() + self.decode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefill.is_empty() && self.decode.is_empty()
    }
}

/// Waiting and running sequences over one block pool.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    waiting: VecDeque<Seq>,
    /// In admission order.
    running: Vec<Seq>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, pool: BlockPool) -> Result<Self, EngineError> {
        if cfg.max_seqs == 0 || cfg.max_tokens_per_step == 0 {
            return Err(EngineError::Config(format!("max_seqs ({}) and max_tokens_per_step ({}) must be at least 1", cfg.max_seqs, cfg.max_tokens_per_step)));
        }
        Ok(Self { cfg, pool, waiting: VecDeque::new(), running: Vec::new() })
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Queue a sequence with a prompt of `prompt_len` tokens. A prompt the whole pool could not
    /// hold is refused now rather than waiting forever.
    pub fn add(&mut self, id: SeqId, prompt_len: usize) -> Result<(), EngineError> {
        if prompt_len == 0 {
            return Err(EngineError::Request(format!("sequence {id}: empty prompt")));
        }
        let capacity = self.pool.num_blocks() * self.pool.block_size();
        if prompt_len + 1 > capacity {
            return Err(EngineError::Request(format!("sequence {id}: a prompt of {prompt_len} tokens does not fit a KV cache of {capacity} token slots")));
        }
        self.waiting.push_back(Seq { id, tokens: prompt_len, computed: 0, table: BlockTable::default(), forks: vec![] });
        Ok(())
    }

    /// Queue `ids.len()` samples of one prompt: the first is prefilled, and the others fork from
    /// it when its prompt is computed (the prompt's blocks are stored once, copy on write).
    pub fn add_group(&mut self, ids: &[SeqId], prompt_len: usize) -> Result<(), EngineError> {
        let Some((&first, rest)) = ids.split_first() else {
            return Err(EngineError::Request("a group of no sequences".into()));
        };
        self.add(first, prompt_len)?;
        self.waiting.back_mut().expect("just queued").forks = rest.to_vec();
        Ok(())
    }

    /// Sequences queued or running (forks not yet split off included).
    pub fn num_unfinished(&self) -> usize {
        self.waiting.iter().chain(&self.running).map(|s| 1 + s.forks.len()).sum()
    }

    /// The block table of a running sequence.
    pub fn table(&self, id: SeqId) -> Option<&BlockTable> {
        self.running.iter().find(|s| s.id == id).map(|s| &s.table)
    }

    /// Every running sequence's block table.
    pub fn tables(&self) -> HashMap<SeqId, &BlockTable> {
        self.running.iter().map(|s| (s.id, &s.table)).collect()
    }

    /// Plan the next step.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        loop {
            self.plan_into(&mut plan);
            if !plan.is_empty() || self.running.is_empty() {
                return plan;
            }
            // Every running sequence is mid-prompt and none can claim its next chunk: free the
            // newest one's blocks so the older ones can go on.
            self.preempt_newest(&mut plan);
        }
    }

    fn preempt_newest(&mut self, plan: &mut StepPlan) {
        let mut victim = self.running.pop().expect("running is not empty");
        victim.table.release(&mut self.pool);
        victim.computed = 0;
        plan.preempted.push(victim.id);
        plan.decode.retain(|&d| d != victim.id);
        plan.prefill.retain(|(p, _)| *p != victim.id);
        plan.forks.retain(|(p, _)| *p != victim.id);
        self.waiting.push_front(victim);
    }

    fn plan_into(&mut self, plan: &mut StepPlan) {
        let mut budget = self.cfg.max_tokens_per_step - plan.tokens();
        // Decoding sequences first, oldest first; each needs one slot.
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].computed < self.running[i].tokens - 1 {
                i += 1; // still prefilling: below
                continue;
            }
            if budget == 0 || plan.decode.len() + plan.prefill.len() >= self.cfg.max_seqs {
                break;
            }
            match self.running[i].table.append(&mut self.pool, 1) {
                Some(c) => {
                    plan.copies.extend(c);
                    let s = &self.running[i];
                    plan.decode.push(s.id);
                    // A prompt whose last chunk is one token completes here, as a decode.
                    if !s.forks.is_empty() {
                        plan.forks.push((s.id, s.forks.clone()));
                    }
                    budget -= 1;
                    i += 1;
                }
                None if self.running.len() == 1 => {
                    // Alone with the whole pool and still no slot: it has outgrown the cache.
                    let mut s = self.running.pop().expect("one running");
                    s.table.release(&mut self.pool);
                    plan.exhausted.push(s.id);
                }
                None => {
                    // Take the newest running sequence's blocks (possibly this one's); its
                    // planned decode, if any, gives its token back to the budget.
                    let planned = plan.decode.contains(&self.running.last().expect("running").id);
                    self.preempt_newest(plan);
                    budget += planned as usize;
                }
            }
        }
        // Prefill: running sequences mid-prompt first, then admissions in arrival order.
        for s in self.running.iter_mut() {
            // Decoding sequences (planned above, or left out by the budget) are not prefilled.
            if s.computed >= s.tokens - 1 {
                continue;
            }
            if budget == 0 || plan.decode.len() + plan.prefill.len() >= self.cfg.max_seqs {
                break;
            }
            let n = (s.tokens - s.computed).min(budget);
            match s.table.append(&mut self.pool, n) {
                Some(c) => {
                    plan.copies.extend(c);
                    plan.prefill.push((s.id, s.computed..s.computed + n));
                    if s.computed + n == s.tokens && !s.forks.is_empty() {
                        plan.forks.push((s.id, s.forks.clone()));
                    }
                    budget -= n;
                }
                None => break,
            }
        }
        while let Some(front) = self.waiting.front() {
            if budget == 0 || plan.decode.len() + plan.prefill.len() >= self.cfg.max_seqs {
                break;
            }
            let n = front.tokens.min(budget);
            if front.table.blocks_needed(&self.pool, n) > self.pool.num_free() {
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            plan.copies.extend(s.table.append(&mut self.pool, n).expect("checked above"));
            plan.prefill.push((s.id, 0..n));
            if n == s.tokens && !s.forks.is_empty() {
                plan.forks.push((s.id, s.forks.clone()));
            }
            budget -= n;
            self.running.push(s);
        }
    }

    /// Apply a computed step: what each planned sequence computed, and for each that sampled a
    /// token (a decode, or a prefill that reached its end) whether it finished there.
    pub fn complete(&mut self, plan: &StepPlan, finished: &[SeqId]) {
        // Positions by id: a step of hundreds of sequences would otherwise search per sequence.
        let at: HashMap<SeqId, usize> = self.running.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        let mut forked = Vec::new();
        for (id, r) in &plan.prefill {
            if let Some(s) = at.get(id).map(|&i| &mut self.running[i]) {
                s.computed = r.end;
                if r.end == s.tokens {
                    // The prompt's last position sampled the first new token (for every fork).
                    s.tokens += 1;
                    for child in std::mem::take(&mut s.forks) {
                        let table = s.table.fork(&mut self.pool);
                        forked.push(Seq { id: child, tokens: s.tokens, computed: s.computed, table, forks: vec![] });
                    }
                }
            }
        }
        for id in &plan.decode {
            if let Some(s) = at.get(id).map(|&i| &mut self.running[i]) {
                s.computed = s.tokens;
                s.tokens += 1;
                for child in std::mem::take(&mut s.forks) {
                    let table = s.table.fork(&mut self.pool);
                    forked.push(Seq { id: child, tokens: s.tokens, computed: s.computed, table, forks: vec![] });
                }
            }
        }
        self.running.extend(forked);
        let finished: HashSet<SeqId> = finished.iter().copied().collect();
        let pool = &mut self.pool;
        self.running.retain_mut(|s| {
            let done = finished.contains(&s.id);
            if done {
                s.table.release(pool);
            }
            !done
        });
    }
}

impl Scheduler {
    /// Drop sequences wherever they are (a client went away, a deadline passed); their blocks go
    /// back to the pool. A prompt still being computed for samples that are not dropped is
    /// handed to the first of them: nothing was sampled yet, so it is the same computation.
    pub fn abort(&mut self, ids: &HashSet<SeqId>) {
        let pool = &mut self.pool;
        let mut keep = |s: &mut Seq| -> bool {
            s.forks.retain(|f| !ids.contains(f));
            if !ids.contains(&s.id) {
                return true;
            }
            if !s.forks.is_empty() {
                s.id = s.forks.remove(0);
                return true;
            }
            s.table.release(pool);
            false
        };
        self.running.retain_mut(&mut keep);
        self.waiting.retain_mut(&mut keep);
    }

    /// Sequences waiting for admission (preempted ones included), and running.
    pub fn num_waiting(&self) -> usize {
        self.waiting.iter().map(|s| 1 + s.forks.len()).sum()
    }

    pub fn num_running(&self) -> usize {
        self.running.iter().map(|s| 1 + s.forks.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Drive the scheduler as an engine would: every step's sampled tokens count toward each
    /// sequence's `max_new`; returns the plans and each sequence's generated count.
    fn run(cfg: SchedulerConfig, blocks: usize, block_size: usize, prompts: &[(SeqId, usize, usize)]) -> (Vec<StepPlan>, HashMap<SeqId, usize>) {
        let mut s = Scheduler::new(cfg, BlockPool::new(blocks, block_size).unwrap()).unwrap();
        let want: HashMap<SeqId, usize> = prompts.iter().map(|&(id, _, m)| (id, m)).collect();
        let prompt_len: HashMap<SeqId, usize> = prompts.iter().map(|&(id, p, _)| (id, p)).collect();
        for &(id, p, _) in prompts {
            s.add(id, p).unwrap();
        }
        let mut generated: HashMap<SeqId, usize> = HashMap::new();
        let mut plans = Vec::new();
        while s.num_unfinished() > 0 {
            let plan = s.schedule();
            assert!(!plan.is_empty() || !plan.preempted.is_empty(), "a step with nothing to do while {} sequences wait", s.num_unfinished());
            assert!(plan.tokens() <= cfg.max_tokens_per_step && plan.decode.len() + plan.prefill.len() <= cfg.max_seqs);
            for id in &plan.preempted {
                // Recompute restarts from the prompt plus what was generated: nothing is lost.
                assert!(!plan.decode.contains(id));
            }
            let mut finished = Vec::new();
            let sampled = plan
                .decode
                .iter()
                .copied()
                .chain(plan.prefill.iter().filter(|(id, r)| r.end == prompt_len[id] + generated.get(id).copied().unwrap_or(0)).map(|(id, _)| *id));
            for id in sampled.collect::<Vec<_>>() {
                let g = generated.entry(id).or_default();
                *g += 1;
                if *g == want[&id] {
                    finished.push(id);
                }
            }
            s.complete(&plan, &finished);
            assert!(plan.exhausted.is_empty(), "no sequence here outgrows the cache");
            plans.push(plan);
            assert!(plans.len() < 10_000, "no progress");
        }
        assert_eq!(s.pool().num_free(), blocks, "every block is back in the pool");
        (plans, generated)
    }

    #[test]
    fn aborted_sequences_free_their_blocks_and_a_group_survives_its_first_sample() {
        let cfg = SchedulerConfig { max_seqs: 8, max_tokens_per_step: 4 };
        let mut s = Scheduler::new(cfg, BlockPool::new(32, 4).unwrap()).unwrap();
        s.add_group(&[1, 2, 3], 10).unwrap();
        s.add(4, 3).unwrap();
        s.add(5, 6).unwrap();
        // Sequence 1 is mid-prompt (4 of 10 positions), 4 and 5 wait.
        let plan = s.schedule();
        assert_eq!(plan.prefill, vec![(1, 0..4)]);
        s.complete(&plan, &[]);
        s.abort(&HashSet::from([1, 4]));
        assert_eq!((s.num_running(), s.num_waiting()), (2, 1), "2 took 1's place with 3 still forking from it; 5 waits");
        // 2 goes on from position 4, not from scratch, and 3 forks from it at the prompt's end.
        let plan = s.schedule();
        assert_eq!(plan.prefill, vec![(2, 4..8)]);
        s.complete(&plan, &[]);
        let plan = s.schedule();
        assert_eq!(plan.prefill[0], (2, 8..10));
        assert_eq!(plan.forks, vec![(2, vec![3])]);
        s.complete(&plan, &[]);
        s.abort(&HashSet::from([2, 3, 5]));
        assert_eq!(s.num_unfinished(), 0);
        assert_eq!(s.pool().num_free(), 32, "every block is back in the pool");
    }

    #[test]
    fn every_sequence_gets_its_tokens_within_the_step_budget() {
        let cfg = SchedulerConfig { max_seqs: 4, max_tokens_per_step: 16 };
        let prompts: Vec<(SeqId, usize, usize)> = (0..10).map(|i| (i, 3 + (i as usize * 7) % 20, 1 + (i as usize * 5) % 9)).collect();
        let (plans, generated) = run(cfg, 64, 4, &prompts);
        for &(id, _, m) in &prompts {
            assert_eq!(generated[&id], m, "sequence {id}");
        }
        // Continuous batching: a later sequence starts before an earlier one has finished.
        let first_prefill = |id| plans.iter().position(|p| p.prefill.iter().any(|(s, _)| *s == id)).unwrap();
        assert!(first_prefill(4) < plans.len() - 1);
        assert!(plans.iter().all(|p| p.preempted.is_empty()), "a large pool never preempts");
    }

    #[test]
    fn a_long_prompt_is_prefilled_in_chunks_beside_decoding() {
        let cfg = SchedulerConfig { max_seqs: 8, max_tokens_per_step: 8 };
        let (plans, generated) = run(cfg, 64, 4, &[(0, 2, 6), (1, 30, 2)]);
        assert_eq!((generated[&0], generated[&1]), (6, 2));
        let chunks: Vec<Range<usize>> = plans.iter().flat_map(|p| p.prefill.iter().filter(|(s, _)| *s == 1).map(|(_, r)| r.clone())).collect();
        assert!(chunks.len() >= 4, "{chunks:?}");
        assert_eq!(chunks.first().unwrap().start, 0);
        assert!(chunks.windows(2).all(|w| w[0].end == w[1].start), "contiguous: {chunks:?}");
        // Sequence 0 kept decoding while 1 was prefilled.
        assert!(plans.iter().any(|p| p.decode.contains(&0) && p.prefill.iter().any(|(s, _)| *s == 1)));
    }

    #[test]
    fn a_small_pool_preempts_and_recomputes_and_still_finishes_everyone() {
        let cfg = SchedulerConfig { max_seqs: 8, max_tokens_per_step: 32 };
        // 6 blocks of 4 slots: three sequences growing to 12 tokens each cannot all fit.
        let prompts = [(0, 4, 8), (1, 4, 8), (2, 4, 8)];
        let (plans, generated) = run(cfg, 6, 4, &prompts);
        assert!(plans.iter().any(|p| !p.preempted.is_empty()), "expected a preemption");
        for (id, _, m) in prompts {
            assert_eq!(generated[&id], m);
        }
        // A preempted sequence recomputes from position 0 when it comes back.
        let (k, p) = plans.iter().enumerate().find(|(_, p)| !p.preempted.is_empty()).unwrap();
        let victim = p.preempted[0];
        let back = plans[k + 1..].iter().flat_map(|p| p.prefill.iter()).find(|(s, _)| *s == victim).unwrap();
        assert_eq!(back.1.start, 0);
    }

    #[test]
    fn a_sequence_that_outgrows_the_whole_cache_is_handed_back() {
        let mut s = Scheduler::new(SchedulerConfig { max_seqs: 2, max_tokens_per_step: 16 }, BlockPool::new(2, 4).unwrap()).unwrap();
        s.add(7, 6).unwrap();
        let mut steps = 0;
        let exhausted = loop {
            let plan = s.schedule();
            if !plan.exhausted.is_empty() {
                break plan.exhausted;
            }
            s.complete(&plan, &[]);
            steps += 1;
            assert!(steps < 100);
        };
        assert_eq!(exhausted, vec![7]);
        assert_eq!((s.num_unfinished(), s.pool().num_free()), (0, 2));
        // Prefill of 6 (samples the 7th token), then decodes of positions 6 and 7: 8 slots.
        assert_eq!(steps, 3);
    }

    #[test]
    fn sequences_competing_for_a_full_pool_are_untangled_by_preemption() {
        // Two 12-token prompts over 4 blocks of 4 slots: the first prompt's next token needs the
        // block the second one's first chunk took.
        let cfg = SchedulerConfig { max_seqs: 4, max_tokens_per_step: 16 };
        let (plans, generated) = run(cfg, 4, 4, &[(0, 12, 2), (1, 12, 2)]);
        assert_eq!((generated[&0], generated[&1]), (2, 2));
        assert!(plans.iter().any(|p| !p.preempted.is_empty()));
    }

    #[test]
    fn a_prompt_group_is_prefilled_once_and_its_samples_fork() {
        let mut s = Scheduler::new(SchedulerConfig { max_seqs: 8, max_tokens_per_step: 64 }, BlockPool::new(16, 4).unwrap()).unwrap();
        s.add_group(&[10, 11, 12], 10).unwrap();
        assert_eq!(s.num_unfinished(), 3);
        let plan = s.schedule();
        assert_eq!(plan.prefill, vec![(10, 0..10)], "only the first sample computes the prompt");
        assert_eq!(plan.forks, vec![(10, vec![11, 12])]);
        s.complete(&plan, &[]);
        assert_eq!(s.pool().num_free(), 13, "the prompt's 3 blocks are held once");
        // Every sample decodes; the shared half-full block is copied for all writers but the last.
        let plan = s.schedule();
        assert_eq!(plan.decode, vec![10, 11, 12]);
        assert_eq!(plan.copies.len(), 2);
        s.complete(&plan, &[10, 11, 12]);
        assert_eq!((s.num_unfinished(), s.pool().num_free()), (0, 16));
        // A group whose sample finishes at its first token.
        s.add_group(&[1, 2], 3).unwrap();
        let plan = s.schedule();
        s.complete(&plan, &[2]);
        assert_eq!(s.num_unfinished(), 1);
        assert!(s.add_group(&[], 3).is_err());
        // A prompt whose last chunk is one token completes as a decode, and still forks.
        let mut s = Scheduler::new(SchedulerConfig { max_seqs: 8, max_tokens_per_step: 4 }, BlockPool::new(16, 4).unwrap()).unwrap();
        s.add_group(&[0, 1], 5).unwrap();
        let plan = s.schedule();
        assert_eq!((plan.prefill.clone(), plan.forks.len()), (vec![(0, 0..4)], 0));
        s.complete(&plan, &[]);
        let plan = s.schedule();
        assert_eq!((plan.decode.clone(), plan.forks.clone()), (vec![0], vec![(0, vec![1])]));
        s.complete(&plan, &[]);
        assert_eq!(s.schedule().decode, vec![0, 1]);
    }

    #[test]
    fn impossible_requests_are_refused_up_front() {
        let mut s = Scheduler::new(SchedulerConfig { max_seqs: 1, max_tokens_per_step: 4 }, BlockPool::new(2, 4).unwrap()).unwrap();
        assert!(s.add(0, 0).is_err());
        assert!(s.add(1, 8).unwrap_err().to_string().contains("does not fit"));
        assert!(s.add(2, 7).is_ok());
        assert!(Scheduler::new(SchedulerConfig { max_seqs: 0, max_tokens_per_step: 4 }, BlockPool::new(2, 4).unwrap()).is_err());
    }
}
