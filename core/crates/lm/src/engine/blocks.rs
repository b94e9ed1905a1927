//! Paged KV-cache bookkeeping: a pool of fixed-size blocks with reference counts, and a block
//! table per sequence.
//!
//! A sequence's keys and values live in blocks of `block_size` token slots anywhere in one
//! preallocated cache; its [`BlockTable`] lists them in order, so token `p` sits in slot
//! `table[p / block_size] * block_size + p % block_size`. Blocks are reference-counted: the `n`
//! samples of one prompt ([`BlockTable::fork`]) share the prompt's blocks, and a sample that
//! writes into a block someone else still holds first gets its own copy (copy on write: the
//! caller copies the slots the returned [`CopyOnWrite`] names). No tensor lives here: the same
//! tables drive the CPU reference path and the device kernels.

use super::EngineError;

/// Index of a block in the cache.
pub type BlockId = u32;

/// Copy block `src`'s slots into block `dst` before writing into `dst` (the writer's table
/// now holds `dst` where it held `src`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOnWrite {
    pub src: BlockId,
    pub dst: BlockId,
}

/// The cache's blocks: which are free, and how many tables hold each.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    free: Vec<BlockId>,
}

impl BlockPool {
    /// `num_blocks` blocks of `block_size` token slots each.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, EngineError> {
        if block_size == 0 || num_blocks == 0 {
            return Err(EngineError::Config(format!("a KV cache needs at least one block of at least one slot (got {num_blocks} blocks of {block_size})")));
        }
        if num_blocks > BlockId::MAX as usize {
            return Err(EngineError::Config(format!("{num_blocks} blocks: at most {} fit a block id", BlockId::MAX)));
        }
        // Handed out lowest id first (popped from the end).
        let free = (0..num_blocks as BlockId).rev().collect();
        Ok(Self { block_size, refs: vec![0; num_blocks], free })
    }

    /// As many blocks as `fraction` of `free_bytes` holds (vLLM's `gpu_memory_utilization`),
    /// at `bytes_per_token` of keys and values per token slot (2 x layers x KV heads x head dim
    /// x dtype size).
    pub fn from_budget(free_bytes: u64, fraction: f64, bytes_per_token: u64, block_size: usize) -> Result<Self, EngineError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(EngineError::Config(format!("memory fraction {fraction} must be in (0, 1]")));
        }
        if bytes_per_token == 0 {
            return Err(EngineError::Config("bytes_per_token must be positive".into()));
        }
        let per_block = bytes_per_token.saturating_mul(block_size as u64).max(1);
        let n = ((free_bytes as f64 * fraction) as u64 / per_block) as usize;
        if n == 0 {
            return Err(EngineError::Config(format!(
                "{fraction} of {free_bytes} bytes holds no block of {block_size} tokens at {bytes_per_token} bytes per token"
            )));
        }
        Self::new(n, block_size)
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// How many tables hold block `b`.
    pub fn refs(&self, b: BlockId) -> u32 {
        self.refs[b as usize]
    }

    fn alloc(&mut self) -> Option<BlockId> {
        let b = self.free.pop()?;
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn retain(&mut self, b: BlockId) {
        debug_assert!(self.refs[b as usize] > 0, "retaining free block {b}");
        self.refs[b as usize] += 1;
    }

    fn release(&mut self, b: BlockId) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "releasing free block {b}");
        *r -= 1;
        if *r == 0 {
            self.free.push(b);
        }
    }
}

/// The blocks of one sequence, in token order, and how many token slots it has claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    len: usize,
}

impl BlockTable {
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Token slots claimed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache slot of token position `pos` (< [`BlockTable::len`]).
    pub fn slot(&self, pos: usize, block_size: usize) -> usize {
        self.blocks[pos / block_size] as usize * block_size + pos % block_size
    }

    /// Blocks that claiming `n` more slots would take from the pool (new blocks, plus a copy
    /// of a shared last block that the first new slot falls into).
    pub fn blocks_needed(&self, pool: &BlockPool, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let bs = pool.block_size;
        let new = (self.len + n).div_ceil(bs) - self.len.div_ceil(bs);
        let cow = self.len % bs != 0 && self.blocks.last().is_some_and(|&b| pool.refs(b) > 1);
        new + cow as usize
    }

    /// Claim `n` more slots. Returns the copies to make first (a shared, partly filled last
    /// block the new slots continue), or `None`, with nothing changed, when the pool has too
    /// few free blocks.
    pub fn append(&mut self, pool: &mut BlockPool, n: usize) -> Option<Vec<CopyOnWrite>> {
        if self.blocks_needed(pool, n) > pool.num_free() {
            return None;
        }
        let bs = pool.block_size;
        let mut copies = Vec::new();
        if n > 0 && self.len % bs != 0 {
            let last = self.blocks.last_mut().expect("a partly filled block");
            if pool.refs(*last) > 1 {
                let dst = pool.alloc().expect("counted above");
                pool.release(*last);
                copies.push(CopyOnWrite { src: *last, dst });
                *last = dst;
            }
        }
        let need = (self.len + n).div_ceil(bs);
        while self.blocks.len() < need {
            self.blocks.push(pool.alloc().expect("counted above"));
        }
        self.len += n;
        Some(copies)
    }

    /// A table sharing every block of this one (the next sample of the same prompt).
    pub fn fork(&self, pool: &mut BlockPool) -> BlockTable {
        for &b in &self.blocks {
            pool.retain(b);
        }
        self.clone()
    }

    /// Give every block back (a finished or preempted sequence).
    pub fn release(&mut self, pool: &mut BlockPool) {
        for b in self.blocks.drain(..) {
            pool.release(b);
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        let mut pool = BlockPool::new(8, 4).unwrap();
        let mut t = BlockTable::default();
        assert_eq!(t.append(&mut pool, 6), Some(vec![]));
        assert_eq!(t.blocks(), &[0, 1]);
        assert_eq!((t.slot(0, 4), t.slot(3, 4), t.slot(4, 4), t.slot(5, 4)), (0, 3, 4, 5));
        // Another sequence takes block 2, so this one's third block is 3.
        let mut other = BlockTable::default();
        other.append(&mut pool, 1).unwrap();
        t.append(&mut pool, 3).unwrap();
        assert_eq!(t.blocks(), &[0, 1, 3]);
        assert_eq!(t.slot(8, 4), 12);
        assert_eq!(pool.num_free(), 4);
    }

    #[test]
    fn a_forked_prompt_is_stored_once_and_copied_only_where_written() {
        let mut pool = BlockPool::new(16, 4).unwrap();
        let mut prompt = BlockTable::default();
        prompt.append(&mut pool, 10).unwrap(); // blocks 0, 1, 2 (the last half full)
        let mut samples: Vec<BlockTable> = (0..3).map(|_| prompt.fork(&mut pool)).collect();
        prompt.release(&mut pool);
        assert_eq!(pool.num_free(), 13, "three samples share the prompt's 3 blocks");
        assert_eq!(pool.refs(0), 3);
        // Each sample's first new token lands in the shared half-full block: the first two
        // writers copy it, the last one holds it alone and writes in place.
        let c0 = samples[0].append(&mut pool, 1).unwrap();
        let c1 = samples[1].append(&mut pool, 1).unwrap();
        let c2 = samples[2].append(&mut pool, 1).unwrap();
        assert_eq!((c0.len(), c1.len(), c2.len()), (1, 1, 0));
        assert_eq!(c0[0].src, 2);
        assert_eq!(samples[2].blocks()[2], 2);
        assert_ne!(samples[0].blocks()[2], samples[1].blocks()[2]);
        // The full blocks stay shared.
        assert_eq!((pool.refs(0), pool.refs(1)), (3, 3));
        for s in &mut samples {
            s.release(&mut pool);
        }
        assert_eq!(pool.num_free(), 16, "no block leaks");
    }

    #[test]
    fn a_claim_the_pool_cannot_meet_changes_nothing() {
        let mut pool = BlockPool::new(2, 4).unwrap();
        let mut a = BlockTable::default();
        a.append(&mut pool, 5).unwrap();
        let mut b = a.fork(&mut pool);
        // b's next slot needs a copy of the shared half-full block, and none is free.
        assert_eq!(b.blocks_needed(&pool, 1), 1);
        assert_eq!(b.append(&mut pool, 1), None);
        assert_eq!((b.len(), b.blocks()), (5, &[0u32, 1][..]));
        a.release(&mut pool);
        assert_eq!(b.append(&mut pool, 3), Some(vec![]), "alone again: writes in place");
        assert_eq!(b.len(), 8);
    }

    #[test]
    fn a_memory_budget_becomes_a_block_count() {
        // Qwen2.5-0.5B: 24 layers x 2 KV heads x 64 dims x (K, V) x 2 bytes = 12 KiB per token.
        let per_token = 24 * 2 * 64 * 2 * 2;
        let pool = BlockPool::from_budget(10 << 30, 0.9, per_token, 16).unwrap();
        assert_eq!(pool.num_blocks(), ((10u64 << 30) as f64 * 0.9) as usize / (per_token as usize * 16));
        assert!(BlockPool::from_budget(1 << 20, 0.0, per_token, 16).is_err());
        assert!(BlockPool::from_budget(100, 0.9, per_token, 16).unwrap_err().to_string().contains("holds no block"));
        assert!(BlockPool::new(4, 0).is_err());
    }
}
