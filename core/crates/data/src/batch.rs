//! Micro-batches: the order of examples in each epoch (shuffled, optionally grouped by length)
//! and the tensors of one micro-batch (padded rows, or packed rows whose attention never crosses
//! from one example into another).
//!
//! An epoch's plan is a pure function of `(seed, epoch)`, so a resumed run only needs the epoch
//! and the index of the next micro-batch to continue with exactly the same data.

use candle_core::{Device, Result as CResult, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::TokenizedExample;
use medrl_nn::MASK_VALUE;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Rows per micro-batch.
    pub micro_batch_size: usize,
    /// Pack several examples into each row of `cutoff_len` tokens (attention and positions
    /// restart at every example boundary).
    pub packing: bool,
    /// Group examples of similar length into the same micro-batch (less padding).
    pub group_by_length: bool,
    /// Shuffle the order of examples every epoch.
    pub shuffle: bool,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self { micro_batch_size: 4, packing: false, group_by_length: true, shuffle: true }
    }
}

/// One micro-batch: rows, each a list of example indices (one unless packing).
pub type MicroBatch = Vec<Vec<usize>>;

/// Plans epochs over a fixed set of tokenized examples.
#[derive(Debug, Clone)]
pub struct Batcher {
    lengths: Vec<usize>,
    cfg: BatchingConfig,
    row_capacity: usize,
    seed: u64,
}

impl Batcher {
    pub fn new(lengths: Vec<usize>, cfg: BatchingConfig, row_capacity: usize, seed: u64) -> Self {
        Self { lengths, cfg, row_capacity, seed }
    }

    /// Micro-batches of epoch `epoch`, deterministic in `(seed, epoch)`.
    pub fn plan_epoch(&self, epoch: u64) -> Vec<MicroBatch> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut rng);
        }
        let mb = self.cfg.micro_batch_size.max(1);
        if self.cfg.packing {
            // Next-fit packing in the shuffled order.
            let mut rows: Vec<Vec<usize>> = Vec::new();
            let mut used = usize::MAX;
            for i in order {
                let len = self.lengths[i];
                if used.saturating_add(len) > self.row_capacity {
                    rows.push(Vec::new());
                    used = 0;
                }
                rows.last_mut().unwrap().push(i);
                used += len;
            }
            return rows.chunks(mb).map(|c| c.to_vec()).collect();
        }
        if self.cfg.group_by_length {
            // As transformers' LengthGroupedSampler: sort within shuffled mega-batches, then
            // shuffle the resulting micro-batches so long ones are not all at the start.
            let mega = mb * 32;
            for chunk in order.chunks_mut(mega) {
                chunk.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            }
            let mut batches: Vec<MicroBatch> = order.chunks(mb).map(|c| c.iter().map(|&i| vec![i]).collect()).collect();
            if self.cfg.shuffle {
                batches.shuffle(&mut rng);
            }
            return batches;
        }
        order.chunks(mb).map(|c| c.iter().map(|&i| vec![i]).collect()).collect()
    }
}

/// Splits the rows of one optimizer step into micro-batches by a token budget instead of a row
/// count (VERL's dynamic batch size, `ppo_max_token_len_per_gpu`): rows sorted longest first,
/// each micro-batch as many rows as keep `rows x longest row` (its padded size) within
/// `max_tokens`; a row longer than the budget is a micro-batch of its own. The step's examples
/// do not change, only how they are cut, so the step's gradient is the same (the loss is
/// normalized by the step's trained tokens).
pub fn split_by_tokens(rows: Vec<Vec<usize>>, lengths: &[usize], max_tokens: usize) -> Vec<MicroBatch> {
    let row_len = |row: &Vec<usize>| row.iter().map(|&i| lengths[i]).sum::<usize>();
    let mut rows: Vec<(usize, Vec<usize>)> = rows.into_iter().map(|r| (row_len(&r), r)).collect();
    // Stable: rows of equal length keep the plan's order.
    rows.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    let mut out: Vec<MicroBatch> = Vec::new();
    let mut longest = 0;
    for (len, row) in rows {
        match out.last_mut() {
            // Sorted longest first: the micro-batch's longest row is its first.
            Some(mb) if (mb.len() + 1) * longest <= max_tokens => mb.push(row),
            _ => {
                longest = len;
                out.push(vec![row]);
            }
        }
    }
    out
}

/// The tensors of one micro-batch.
pub struct Batch {
    /// `[B, T]` u32.
    pub input_ids: Tensor,
    /// `[B, T]` u32, restarting at 0 at every packed example.
    pub positions: Tensor,
    /// `[B, 1, T, T]` additive attention mask.
    pub attention_mask: Tensor,
    /// `[B, T]` u32: the token each position predicts.
    pub targets: Tensor,
    /// `[B, T]` f32: 1 where that prediction is trained.
    pub loss_mask: Tensor,
    /// Trained target count (the denominator of the token-mean loss).
    pub trained_tokens: usize,
    /// Real (non-padding) tokens.
    pub tokens: usize,
}

/// Trained targets a micro-batch will have, without building its tensors.
pub fn trained_targets(examples: &[TokenizedExample], mb: &MicroBatch) -> usize {
    mb.iter().flatten().map(|&i| examples[i].trained[1..].iter().filter(|&&t| t).count()).sum()
}

/// Build a micro-batch; rows are right-padded with `pad_id` to the longest row.
pub fn build_batch(examples: &[TokenizedExample], mb: &MicroBatch, pad_id: u32, device: &Device) -> CResult<Batch> {
    let b = mb.len();
    let t = mb.iter().map(|row| row.iter().map(|&i| examples[i].ids.len()).sum::<usize>()).max().unwrap_or(1).max(1);
    let mut ids = vec![pad_id; b * t];
    let mut pos = vec![0u32; b * t];
    let mut tgt = vec![pad_id; b * t];
    let mut lm = vec![0f32; b * t];
    let mut mask = vec![MASK_VALUE; b * t * t];
    let (mut trained_tokens, mut tokens) = (0, 0);
    for (r, row) in mb.iter().enumerate() {
        let mut start = 0;
        for &i in row {
            let ex = &examples[i];
            let n = ex.ids.len();
            for k in 0..n {
                let at = r * t + start + k;
                ids[at] = ex.ids[k];
                pos[at] = k as u32;
                if k + 1 < n {
                    tgt[at] = ex.ids[k + 1];
                    if ex.trained[k + 1] {
                        lm[at] = 1.0;
                        trained_tokens += 1;
                    }
                }
                // Query start+k sees keys start..=start+k of its own example only.
                let q = (r * t + start + k) * t;
                mask[q + start..q + start + k + 1].fill(0.0);
            }
            start += n;
            tokens += n;
        }
        // Padding queries attend to themselves so their softmax rows stay finite; they are
        // never trained.
        for p in start..t {
            mask[(r * t + p) * t + p] = 0.0;
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        positions: Tensor::from_vec(pos, (b, t), device)?,
        attention_mask: Tensor::from_vec(mask, (b, 1, t, t), device)?,
        targets: Tensor::from_vec(tgt, (b, t), device)?,
        loss_mask: Tensor::from_vec(lm, (b, t), device)?,
        trained_tokens,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], trained: &[bool]) -> TokenizedExample {
        TokenizedExample { ids: ids.to_vec(), trained: trained.to_vec(), truncated: false }
    }

    #[test]
    fn plans_are_deterministic_and_cover_every_example_once() {
        let lengths: Vec<usize> = (0..37).map(|i| 5 + i * 7 % 23).collect();
        for cfg in [
            BatchingConfig { micro_batch_size: 4, packing: false, group_by_length: true, shuffle: true },
            BatchingConfig { micro_batch_size: 3, packing: true, group_by_length: false, shuffle: true },
            BatchingConfig { micro_batch_size: 5, packing: false, group_by_length: false, shuffle: false },
        ] {
            let b = Batcher::new(lengths.clone(), cfg.clone(), 64, 7);
            let p0 = b.plan_epoch(0);
            assert_eq!(p0, b.plan_epoch(0));
            let mut seen: Vec<usize> = p0.iter().flatten().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..37).collect::<Vec<_>>(), "{cfg:?}");
            if cfg.packing {
                for row in p0.iter().flatten() {
                    assert!(row.iter().map(|&i| lengths[i]).sum::<usize>() <= 64);
                }
            }
            if cfg.shuffle {
                assert_ne!(p0, b.plan_epoch(1));
            }
        }
    }

    #[test]
    fn token_budget_splits_keep_every_row_and_the_budget() {
        let lengths = vec![5, 30, 12, 12, 7, 64, 3, 20];
        let rows: Vec<Vec<usize>> = vec![vec![0], vec![1], vec![2], vec![3], vec![4], vec![5], vec![6, 7]];
        let mbs = split_by_tokens(rows.clone(), &lengths, 48);
        let mut seen: Vec<Vec<usize>> = mbs.iter().flatten().cloned().collect();
        seen.sort();
        let mut want = rows.clone();
        want.sort();
        assert_eq!(seen, want, "every row exactly once");
        for mb in &mbs {
            let longest = mb.iter().map(|r| r.iter().map(|&i| lengths[i]).sum::<usize>()).max().unwrap();
            assert!(mb.len() * longest <= 48 || mb.len() == 1, "{mb:?} exceeds the budget");
        }
        // Longest first: 64 alone (over the budget), 30 alone (2 x 30 > 48), then 23 + 12
        // (2 x 23 = 46), then 12 + 7 + 5 (3 x 12 = 36).
        assert_eq!(mbs, vec![vec![vec![5]], vec![vec![1]], vec![vec![6, 7], vec![2]], vec![vec![3], vec![4], vec![0]]]);
    }

    #[test]
    fn packed_rows_do_not_attend_across_examples() {
        let exs = vec![ex(&[1, 2, 3], &[false, true, true]), ex(&[4, 5], &[false, true])];
        let b = build_batch(&exs, &vec![vec![0, 1]], 0, &Device::Cpu).unwrap();
        assert_eq!(b.positions.to_vec2::<u32>().unwrap(), vec![vec![0, 1, 2, 0, 1]]);
        // The last token of example 0 predicts nothing (the next token belongs to example 1).
        assert_eq!(b.loss_mask.to_vec2::<f32>().unwrap(), vec![vec![1.0, 1.0, 0.0, 1.0, 0.0]]);
        assert_eq!(b.trained_tokens, 3);
        let m = b.attention_mask.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let allowed: Vec<Vec<bool>> = m.iter().map(|r| r.iter().map(|&x| x == 0.0).collect()).collect();
        assert_eq!(allowed[3], vec![false, false, false, true, false], "example 1 must not see example 0");
        assert_eq!(allowed[2], vec![true, true, true, false, false]);
        assert_eq!(trained_targets(&exs, &vec![vec![0, 1]]), 3);
    }
}
