//! The paged KV cache's tensors, and the attention of one engine step over them.
//!
//! Each layer keeps keys and values as `[slots, kv_heads, head_dim]` with `slots = blocks x
//! block_size`; a sequence's block table (from [`super::blocks`]) says which slots hold its
//! positions. A step writes its new tokens' keys and values into their slots, then attends:
//! - decode steps (one new token per sequence) on CUDA read the cache through the block tables
//!   in one kernel ([`medrl_nn::infer::paged_attention`]);
//! - every other step, and every step on CPU, gathers each sequence's slots into a padded
//!   `[seqs, kv_heads, context, head_dim]` batch and runs the training attention
//!   ([`medrl_nn::ops::attention`]) with a causal mask. This path is built from primitive ops:
//!   it is the reference the kernel is checked against, and CI runs it.

use candle_core::{DType, Device, Result, Tensor};

use super::blocks::{BlockId, CopyOnWrite};
use crate::model::{AttentionBackend, ModelConfig};
use medrl_nn::MASK_VALUE;

pub struct PagedKvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    block_size: usize,
    num_blocks: usize,
}

impl PagedKvCache {
    /// Bytes of keys and values one token slot takes across all layers.
    pub fn bytes_per_token(cfg: &ModelConfig, dtype: DType) -> u64 {
        (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype.size_in_bytes()) as u64
    }

    pub fn new(cfg: &ModelConfig, num_blocks: usize, block_size: usize, dtype: DType, device: &Device) -> Result<Self> {
        let slots = num_blocks * block_size;
        // Zeroed, not uninitialized: a masked-out slot is still multiplied by zero weights, and
        // garbage there could be NaN.
        let mk = || Tensor::zeros((slots, cfg.num_key_value_heads, cfg.head_dim), dtype, device);
        let layers = cfg.num_hidden_layers;
        Ok(Self {
            k: (0..layers).map(|_| mk()).collect::<Result<_>>()?,
            v: (0..layers).map(|_| mk()).collect::<Result<_>>()?,
            block_size,
            num_blocks,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Make the copies copy-on-write asked for (all layers; before the step writes).
    pub fn copy_blocks(&self, copies: &[CopyOnWrite]) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let bs = self.block_size as u32;
        let slots = |pick: fn(&CopyOnWrite) -> BlockId| -> Vec<u32> { copies.iter().flat_map(|c| (0..bs).map(move |i| pick(c) * bs + i)).collect() };
        let device = self.k[0].device();
        let src = Tensor::new(slots(|c| c.src), device)?;
        let dst = Tensor::new(slots(|c| c.dst), device)?;
        for (k, v) in self.k.iter().zip(&self.v) {
            medrl_nn::infer::write_kv(k, v, &k.index_select(&src, 0)?, &v.index_select(&src, 0)?, &dst)?;
        }
        Ok(())
    }
}

/// One sequence's part of a step: its block table, the position of its first new token and how
/// many new tokens it computes (they are `new` consecutive rows of the step's batch).
pub struct StepSeq<'a> {
    pub blocks: &'a [BlockId],
    pub start: usize,
    pub new: usize,
}

enum Plan {
    /// One new token per sequence, read through block tables by the kernel.
    Paged { block_tables: Tensor, context_lens: Tensor },
    /// Gathered into a padded batch `[seqs, ., max_context, .]` with queries `[seqs, ., max_new, .]`.
    Gather { keys: Tensor, mask: Tensor, seqs: usize, max_new: usize, max_ctx: usize, rows: Option<(Tensor, Tensor)> },
}

/// The attention of one step: new keys/values go to `slots`, then each sequence attends over
/// its positions `0..start + new`.
pub struct PagedStep<'a> {
    cache: &'a PagedKvCache,
    slots: Tensor,
    plan: Plan,
}

impl<'a> PagedStep<'a> {
    /// `seqs` in the order of the step's rows. `use_kernel`: decode steps take the CUDA kernel.
    pub fn new(cache: &'a PagedKvCache, seqs: &[StepSeq<'_>], use_kernel: bool) -> Result<Self> {
        let device = cache.k[0].device();
        let bs = cache.block_size;
        let slot = |s: &StepSeq<'_>, p: usize| s.blocks[p / bs] * bs as u32 + (p % bs) as u32;
        let slots: Vec<u32> = seqs.iter().flat_map(|s| (s.start..s.start + s.new).map(move |p| slot(s, p))).collect();
        let slots = Tensor::new(slots, device)?;
        let decode = seqs.iter().all(|s| s.new == 1);
        let plan = if decode && use_kernel {
            let width = seqs.iter().map(|s| s.blocks.len()).max().unwrap_or(1).max(1);
            let mut tables = vec![0u32; seqs.len() * width];
            for (i, s) in seqs.iter().enumerate() {
                tables[i * width..i * width + s.blocks.len()].copy_from_slice(s.blocks);
            }
            let lens: Vec<u32> = seqs.iter().map(|s| (s.start + 1) as u32).collect();
            Plan::Paged { block_tables: Tensor::from_vec(tables, (seqs.len(), width), device)?, context_lens: Tensor::new(lens, device)? }
        } else {
            let n_seqs = seqs.len();
            let max_new = seqs.iter().map(|s| s.new).max().unwrap_or(1);
            let max_ctx = seqs.iter().map(|s| s.start + s.new).max().unwrap_or(1);
            // Padding keys read slot 0 and are masked; padding queries are computed and dropped.
            let mut keys = vec![0u32; n_seqs * max_ctx];
            let mut mask = vec![MASK_VALUE; n_seqs * max_new * max_ctx];
            for (i, s) in seqs.iter().enumerate() {
                for p in 0..s.start + s.new {
                    keys[i * max_ctx + p] = slot(s, p);
                }
                for j in 0..max_new {
                    let row = &mut mask[(i * max_new + j) * max_ctx..(i * max_new + j + 1) * max_ctx];
                    // Query j sits at position start + j and sees positions up to itself.
                    let visible = if j < s.new { s.start + j + 1 } else { 1 };
                    row[..visible].fill(0.0);
                }
            }
            // Row maps between the step's packed rows and the padded query batch.
            let rows = if seqs.iter().all(|s| s.new == max_new) {
                None
            } else {
                let mut gather = Vec::with_capacity(n_seqs * max_new);
                let mut scatter = Vec::new();
                let mut first = 0u32;
                for (i, s) in seqs.iter().enumerate() {
                    for j in 0..max_new {
                        gather.push(first + j.min(s.new - 1) as u32);
                    }
                    scatter.extend((0..s.new as u32).map(|j| (i * max_new) as u32 + j));
                    first += s.new as u32;
                }
                Some((Tensor::new(gather, device)?, Tensor::new(scatter, device)?))
            };
            Plan::Gather {
                keys: Tensor::new(keys, device)?,
                mask: Tensor::from_vec(mask, (n_seqs, 1, max_new, max_ctx), device)?,
                seqs: n_seqs,
                max_new,
                max_ctx,
                rows,
            }
        };
        Ok(Self { cache, slots, plan })
    }
}

impl AttentionBackend for PagedStep<'_> {
    fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (kc, vc) = (&self.cache.k[layer], &self.cache.v[layer]);
        medrl_nn::infer::write_kv(kc, vc, &k.contiguous()?, &v.contiguous()?, &self.slots)?;
        let (n, heads, hd) = q.dims3()?;
        match &self.plan {
            Plan::Paged { block_tables, context_lens } => {
                medrl_nn::infer::paged_attention(&q.contiguous()?, kc, vc, block_tables, context_lens, self.cache.block_size)?.reshape((n, heads * hd))
            }
            Plan::Gather { keys, mask, seqs, max_new, max_ctx, rows } => {
                let kv_heads = kc.dim(1)?;
                let gather = |c: &Tensor| -> Result<Tensor> { c.index_select(keys, 0)?.reshape((*seqs, *max_ctx, kv_heads, hd))?.transpose(1, 2)?.contiguous() };
                let q = match rows {
                    Some((g, _)) => q.index_select(g, 0)?,
                    None => q.clone(),
                };
                let q = q.reshape((*seqs, *max_new, heads, hd))?.transpose(1, 2)?.contiguous()?;
                let o = medrl_nn::ops::attention(&q, &gather(kc)?, &gather(vc)?, Some(mask))?;
                let o = o.transpose(1, 2)?.reshape((*seqs * *max_new, heads * hd))?;
                match rows {
                    Some((_, s)) => o.index_select(s, 0),
                    None => Ok(o),
                }
            }
        }
    }
}
