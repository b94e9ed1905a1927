//! Preallocated key/value cache for incremental decoding.
//!
//! Buffers are sized once for the whole generation (prompt + max new tokens), and new keys are
//! written in place with `slice_set`; concatenating per step would copy the whole history on
//! every token (quadratic traffic).

use candle_core::{DType, Device, Result, Tensor};

pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Buffers of `[batch, kv_heads, capacity, head_dim]` for each layer.
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mk = || Tensor::zeros((batch, kv_heads, capacity, head_dim), dtype, device);
        Ok(Self {
            k: (0..layers).map(|_| mk()).collect::<Result<_>>()?,
            v: (0..layers).map(|_| mk()).collect::<Result<_>>()?,
            len: 0,
            capacity,
        })
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Write `k`/`v` (`[B, H, T, D]`) of `layer` after the cached positions and return views of
    /// everything cached so far, new positions included. [`KvCache::advance`] commits the step
    /// once every layer has appended.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity {
            candle_core::bail!("kv cache overflow: {} cached + {} new > capacity {}", self.len, t, self.capacity);
        }
        self.k[layer].slice_set(&k.contiguous()?, 2, self.len)?;
        self.v[layer].slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((self.k[layer].narrow(2, 0, self.len + t)?, self.v[layer].narrow(2, 0, self.len + t)?))
    }

    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
