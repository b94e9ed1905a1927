//! medrl-nn: the differentiable tensor layer under the models.
//!
//! - [`ops`]: ops with hand-written backward passes (RMSNorm, softmax, log-sum-exp, token
//!   log-probabilities, fused linear cross-entropy, ...), each with a finite-difference check
//!   ([`ops::gradcheck`]);
//! - [`kernels`]: the CUDA kernels behind them (`cuda` feature), values only;
//! - [`infer`]: inference-only ops for the paged-KV rollout engine (cache writes, paged decode
//!   attention, per-row sampling), a CPU reference and a CUDA kernel each;
//! - [`device`]: `cpu` / `cuda:N` / `auto` and dtype parsing, CUDA memory-pool readings;
//! - [`quant`]: NF4 with double quantization (QLoRA base weights), bit for bit as bitsandbytes
//!   stores it, and the blockwise 8-bit dynamic-map quantizer under it.
//!
//! Layer 1: imports no other medrl crate. Knows tensors, not models or tokens.

#[cfg(feature = "cuda")]
pub mod cuda_util;
pub mod device;
pub mod infer;
pub mod kernels;
pub mod ops;
pub mod quant;

/// Value used for blocked attention positions (additive mask). Finite, so a row with every key
/// blocked (a pad query) yields a uniform softmax instead of NaN; such rows are never read.
/// Lives here so that batching (medrl-data) and the models (medrl-lm) agree without one
/// importing the other.
pub const MASK_VALUE: f32 = -1e30;
