//! Differentiable building blocks of the decoder.
//!
//! candle's fused kernels (`candle_nn::ops::rms_norm`, `softmax_last_dim`, `rotary_emb::rope`,
//! ...) record no backward pass: a gradient through them silently becomes `None`. This module
//! uses them only through [`attach`]: the fused kernel computes the value on detached inputs,
//! and a custom op re-attaches it to the graph with a hand-written backward. That keeps the
//! speed of one kernel and, as important for training, keeps the autograd graph from holding
//! every intermediate of a composite op (a primitive softmax over `[B, H, T, T]` scores retains
//! five full-size tensors per layer). Every backward is checked against finite differences
//! (see [`gradcheck`]); ops with no fused kernel (RoPE, SwiGLU) are composed of primitives.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

use crate::kernels;

type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// A custom op whose value is precomputed and whose gradient is `backward(input, output, grad)`.
struct Attach {
    name: &'static str,
    backward: Arc<Backward>,
}

impl CustomOp2 for Attach {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, value: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((value.try_clone(l)?, l.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        value: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((value.try_clone(l)?, l.shape().clone()))
    }
    fn bwd(&self, input: &Tensor, _value: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.backward)(input, res, grad)?), None))
    }
}

/// `value` detached, contiguous and at offset 0: the attach ops' forward copies its storage,
/// which must be exactly the tensor.
fn attachable(value: Tensor) -> Result<Tensor> {
    let value = value.detach().contiguous()?;
    // `Tensor::copy` keeps the layout (and so the offset): only an op that writes a new buffer
    // moves a view (e.g. one row of a kernel's stacked outputs) to offset 0.
    Ok(if value.layout().start_offset() != 0 { value.affine(1.0, 0.0)? } else { value })
}

/// `value` (computed without gradient tracking, e.g. by a fused kernel) as a function of
/// `input` in the autograd graph, with the given backward rule.
fn attach(name: &'static str, input: &Tensor, value: Tensor, backward: Arc<Backward>) -> Result<Tensor> {
    input.apply_op2(&attachable(value)?, Attach { name, backward })
}

/// Gradients of a two-input op: `backward(a, b, output, grad)`; `None` where an input needs none.
type Backward2 = dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync;

/// [`Attach`] for values that depend on two inputs.
struct Attach2 {
    name: &'static str,
    backward: Arc<Backward2>,
}

impl CustomOp3 for Attach2 {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, value: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((value.try_clone(l)?, l.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        value: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((value.try_clone(l)?, l.shape().clone()))
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _value: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (ga, gb) = (self.backward)(a, b, res, grad)?;
        Ok((ga, gb, None))
    }
}

/// `value` as a function of `a` and `b` in the autograd graph (see [`attach`]).
fn attach2(name: &'static str, a: &Tensor, b: &Tensor, value: Tensor, backward: Arc<Backward2>) -> Result<Tensor> {
    a.apply_op3(b, &attachable(value)?, Attach2 { name, backward })
}

/// The dtype reductions run in: f32 for half-precision inputs, the input's own otherwise (so
/// f64 gradient checks stay f64 end to end).
fn accum_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// RMSNorm as Llama/Qwen define it: statistics in f32, result cast back to the input dtype,
/// then scaled by `weight` (`weight * (x / sqrt(mean(x^2) + eps)).to(dtype)`).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    // The norm itself (fused kernel: statistics in f32), then the weight as a primitive multiply
    // so its gradient needs no custom rule.
    let normed = rms_normalize(x, eps)?;
    let backward: Arc<Backward> = Arc::new(move |x: &Tensor, _y: &Tensor, g: &Tensor| rms_norm_backward(x, g, eps));
    attach("medrl-rms-norm", x, normed, backward)?.broadcast_mul(weight)
}

/// `x / sqrt(mean(x^2) + eps)` over the last dimension, untracked (the weight is not applied):
/// the value [`rms_norm`] scales, for explicit backward passes that keep it.
pub fn rms_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() == DType::F64 {
        // candle's fused kernel has no f64 path; f64 is what gradient checks use.
        return rms_norm_composite(&x.detach(), eps);
    }
    let ones = Tensor::ones(x.dim(D::Minus1)?, x.dtype(), x.device())?;
    candle_nn::ops::rms_norm(&x.detach().contiguous()?, &ones, eps as f32)
}

/// Input gradient of [`rms_normalize`] for output gradient `g` (statistics in f32 for 16-bit
/// inputs; one fused kernel on CUDA).
pub fn rms_norm_backward(x: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::enabled(x) {
        return kernels::rms_norm_backward(x, &g.contiguous()?, eps);
    }
    // y = x * r, r = (mean(x^2) + eps)^-1/2:  dx = r * (g - x * r^2 * mean(g * x)).
    let dtype = x.dtype();
    let (xf, gf) = (x.to_dtype(accum_dtype(dtype))?, g.to_dtype(accum_dtype(dtype))?);
    let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let gx = (&gf * &xf)?.mean_keepdim(D::Minus1)?;
    let inner = (gf - xf.broadcast_mul(&(r.sqr()? * gx)?)?)?;
    inner.broadcast_mul(&r)?.to_dtype(dtype)
}

/// RMS normalization (without the weight) from primitives, for dtypes the fused kernel lacks.
fn rms_norm_composite(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(accum_dtype(dtype))?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    xf.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)
}

/// Softmax over the last dimension. The max is detached: shifting by a constant does not change
/// the result, so its gradient is exactly zero and need not be traced.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    let backward: Arc<Backward> = Arc::new(|_x: &Tensor, y: &Tensor, g: &Tensor| {
        // dx = y * (g - sum(g * y)).
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        y * g.broadcast_sub(&dot)?
    });
    attach("medrl-softmax", x, y, backward)
}

/// `log(sum(exp(x)))` over the last dimension, keeping it (`[..., 1]`). Only the small result is
/// retained for backward, not the exponentials: for vocabulary-sized logits this is the
/// difference between one and several copies of `[B, T, V]` held until backward.
pub fn logsumexp_last(x: &Tensor) -> Result<Tensor> {
    let xd = x.detach();
    let max = xd.max_keepdim(D::Minus1)?;
    let lse = (xd.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
    let backward: Arc<Backward> = Arc::new(|x: &Tensor, lse: &Tensor, g: &Tensor| {
        // d lse / dx = softmax(x) = exp(x - lse).
        x.broadcast_sub(lse)?.exp()?.broadcast_mul(g)
    });
    attach("medrl-logsumexp", x, lse, backward)
}

/// log-softmax over the last dimension (used by losses and log-prob computations).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Rotary position embedding in the "rotate half" layout used by Hugging Face checkpoints.
///
/// `x` is `[B, H, T, D]`; `cos`/`sin` are `[B, 1, T, D/2]` (one row per position of each
/// sequence, so left-padded batches can carry their own positions).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if kernels::enabled(x) && !cos.track_op() && !sin.track_op() {
        // One kernel each way; the backward of a rotation is the inverse rotation.
        let value = kernels::rope(&x.detach(), cos, sin, false)?;
        if !x.track_op() {
            return Ok(value);
        }
        let (c, s) = (cos.clone(), sin.clone());
        let backward: Arc<Backward> = Arc::new(move |_x: &Tensor, _y: &Tensor, g: &Tensor| rope_inverse(g, &c, &s));
        return attach("medrl-rope", x, value, backward);
    }
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let cos = cos.to_dtype(x.dtype())?;
    let sin = sin.to_dtype(x.dtype())?;
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[r1, r2], D::Minus1)
}

/// The inverse rotation of [`rope`] (untracked): the input gradient of a rotation is its
/// output gradient rotated back.
pub fn rope_inverse(g: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if kernels::enabled(g) {
        return kernels::rope(&g.contiguous()?, cos, sin, true);
    }
    rope(&g.detach(), cos, &sin.neg()?)
}

/// Gradients `(d gate, d up)` of [`swiglu`] for output gradient `dy` (untracked; one fused
/// kernel on CUDA).
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    if kernels::enabled(gate) && gate.dtype() == up.dtype() {
        return kernels::swiglu_backward(gate, up, &dy.contiguous()?);
    }
    // silu(g) = g s, s = sigmoid(g):  d silu / dg = s (1 + g (1 - s)).
    let dtype = gate.dtype();
    let acc = accum_dtype(dtype);
    let (g, u, dy) = (gate.to_dtype(acc)?, up.to_dtype(acc)?, dy.to_dtype(acc)?);
    let s = candle_nn::ops::sigmoid(&g)?;
    let silu = (&g * &s)?;
    let dsilu = (&s * ((&g * (1.0 - &s)?)? + 1.0)?)?;
    let dg = ((&dy * &u)? * dsilu)?.to_dtype(dtype)?;
    let du = (dy * silu)?.to_dtype(dtype)?;
    Ok((dg, du))
}

/// SwiGLU feed-forward activation: `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if kernels::enabled(gate) && gate.dtype() == up.dtype() {
        let value = kernels::swiglu(&gate.detach(), &up.detach())?;
        if !gate.track_op() && !up.track_op() {
            return Ok(value);
        }
        let backward: Arc<Backward2> = Arc::new(|g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor| {
            let (dg, du) = swiglu_backward(g, u, dy)?;
            Ok((Some(dg), Some(du)))
        });
        return attach2("medrl-swiglu", gate, up, value, backward);
    }
    gate.silu()? * up
}

/// Scaled dot-product attention with an additive mask, for grouped-query attention.
///
/// `q` is `[B, H, T, D]`, `k`/`v` are `[B, KV, S, D]` with `H` a multiple of `KV` (each key/value
/// head serves `H / KV` query heads), `mask` broadcasts to `[B, H, T, S]` with 0 for allowed and
/// a large negative value for blocked positions. The softmax accumulates in f32.
///
/// Memory: the f32 scores and their intermediates are never kept for backward. The
/// probabilities are kept (in the compute dtype) only up to [`KEEP_PROBS_MAX_BYTES`] per call;
/// above it the backward recomputes them from `q`, `k` and `v` (one extra `Q K^T` matmul and
/// softmax per layer), the trade FlashAttention makes, so long sequences hold `O(T * D)` per
/// head and layer instead of `O(T^2)`.
/// Largest attention-probability tensor (`[B, H, T, S]`, one layer) that [`attention`] keeps
/// for backward instead of recomputing it.
pub const KEEP_PROBS_MAX_BYTES: usize = 256 << 20;

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    attention_keeping(q, k, v, mask, KEEP_PROBS_MAX_BYTES)
}

/// [`attention`] with the size up to which the probabilities are kept for backward (0: always
/// recompute them, as for long sequences; tests and `bench ops-agreement` check both paths).
pub fn attention_keeping(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, keep_max_bytes: usize) -> Result<Tensor> {
    let mask = mask.map(|m| m.detach());
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let p = attention_probs(&qd, &kd, mask.as_ref())?;
    let out = attention_apply(&p, &vd)?;
    if !q.track_op() && !k.track_op() && !v.track_op() {
        return Ok(out);
    }
    // Small probability tensors are kept for backward rather than recomputed (a matmul and a
    // softmax saved per layer); large ones, whose size grows with the square of the sequence,
    // are recomputed. At the Qwen2.5-0.5B shape (seq 1024, micro-batch 8) a layer's are 235 MB.
    let kept = (p.elem_count() * p.dtype().size_in_bytes() <= keep_max_bytes).then_some(p);
    // Two graph inputs: q, and k|v concatenated on the feature axis (small: [B, KV, S, 2D]).
    let d = k.dim(D::Minus1)?;
    let kv = Tensor::cat(&[k, v], D::Minus1)?;
    let backward: Arc<Backward2> = Arc::new(move |q: &Tensor, kv: &Tensor, o: &Tensor, g: &Tensor| {
        let k = kv.narrow(D::Minus1, 0, d)?.contiguous()?;
        let v = kv.narrow(D::Minus1, d, d)?.contiguous()?;
        let p = match &kept {
            Some(p) => p.clone(),
            None => attention_probs(q, &k, mask.as_ref())?,
        };
        let (dq, dk, dv) = attention_backward(q, &k, &v, &p, o, g)?;
        let dkv = Tensor::cat(&[dk, dv], D::Minus1)?;
        Ok((Some(dq), Some(dkv)))
    });
    attach2("medrl-attention", q, &kv, out, backward)
}

/// The attention probabilities `softmax(Q K^T / sqrt(D) + M)` `[B, H, T, S]` (untracked; the
/// softmax in f32), for `q` `[B, H, T, D]` and `k` `[B, KV, S, D]` (see [`attention`]).
pub fn attention_probs(q: &Tensor, k: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    // Scale the (small) queries rather than the (T x S) scores.
    let k = repeat_kv(&k.detach(), n_rep)?.contiguous()?;
    let scores = (q.detach() * scale)?.matmul(&k.t()?)?;
    if kernels::enabled(q) {
        // Mask add and softmax in one pass over the scores (f32 mask, f32 arithmetic).
        return kernels::masked_softmax(&scores, mask);
    }
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores.contiguous()?)
}

/// `P V` for probabilities `p` `[B, H, T, S]` and values `v` `[B, KV, S, D]` (untracked).
pub fn attention_apply(p: &Tensor, v: &Tensor) -> Result<Tensor> {
    let n_rep = p.dim(1)? / v.dim(1)?;
    p.matmul(&repeat_kv(&v.detach(), n_rep)?.contiguous()?)
}

/// Gradients `(dq, dk, dv)` of attention with probabilities `p` and output `o` (from
/// [`attention_probs`] / [`attention_apply`]) for output gradient `g` `[B, H, T, D]`; `dk` and
/// `dv` are summed over the query heads each key/value head serves.
pub fn attention_backward(q: &Tensor, k: &Tensor, v: &Tensor, p: &Tensor, o: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let (kr, vr) = (repeat_kv(k, n_rep)?.contiguous()?, repeat_kv(v, n_rep)?.contiguous()?);
    let g = g.contiguous()?;
    // O = P V:  dV = P^T dO,  dP = dO V^T.
    let dv = p.t()?.matmul(&g)?;
    let dp = g.matmul(&vr.t()?)?;
    // Softmax backward: dS = P * (dP - rowsum(dO * O)), the row term in f32.
    let acc = accum_dtype(g.dtype());
    let row = (g.to_dtype(acc)? * o.to_dtype(acc)?)?.sum_keepdim(D::Minus1)?;
    let ds = if kernels::enabled(p) {
        kernels::softmax_backward(p, &dp, &row)?
    } else {
        (p.to_dtype(acc)? * dp.to_dtype(acc)?.broadcast_sub(&row)?)?.to_dtype(g.dtype())?
    };
    // S = scale * Q K^T + M:  dQ = scale * dS K,  dK = scale * dS^T Q.
    let dq = (ds.matmul(&kr)? * scale)?;
    let dk = (ds.t()?.matmul(q)? * scale)?;
    // Each key/value head served n_rep query heads: sum their gradients.
    let fold = |x: Tensor| -> Result<Tensor> {
        if n_rep == 1 {
            return Ok(x);
        }
        let (b, h, s, dd) = x.dims4()?;
        x.reshape((b, h / n_rep, n_rep, s, dd))?.sum(2)
    };
    Ok((dq, fold(dk)?, fold(dv)?))
}

/// `log p(targets[i])` for each row of `hidden` `[N, H]` under the output head `weight` `[V, H]`
/// (logits = hidden @ weight^T, log-softmax in f32), computed `chunk_rows` rows at a time.
///
/// Memory: neither the `[N, V]` logits nor their gradient ever exist whole; forward keeps only
/// the per-row log-sum-exp, and backward recomputes each chunk's logits (one extra head matmul).
/// For a 152k vocabulary at 8k tokens that is ~15 GB of f32 logits and gradients not held.
/// Returns f32 (f64 for f64 inputs) `[N]`.
pub fn head_logprobs(hidden: &Tensor, weight: &Tensor, targets: &Tensor, chunk_rows: usize) -> Result<Tensor> {
    let (n, _h) = hidden.dims2()?;
    let acc = accum_dtype(hidden.dtype());
    let chunk_rows = chunk_rows.max(1);
    let (hd, wd) = (hidden.detach(), weight.detach());
    let targets = targets.detach().to_dtype(DType::U32)?;
    let mut lps = Vec::new();
    let mut lses = Vec::new();
    let fused = kernels::enabled(hidden);
    for start in (0..n).step_by(chunk_rows) {
        let len = chunk_rows.min(n - start);
        if fused {
            // The log-sum-exp and the target's logit in one pass over the chunk's logits, which
            // stay in the compute dtype (no f32 copy of [rows, V]).
            let logits = hd.narrow(0, start, len)?.matmul(&wd.t()?)?;
            let (lse, lp) = kernels::lse_target(&logits, &targets.narrow(0, start, len)?)?;
            lps.push(lp);
            lses.push(lse);
            continue;
        }
        let logits = hd.narrow(0, start, len)?.matmul(&wd.t()?)?.to_dtype(acc)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
        let t = targets.narrow(0, start, len)?.unsqueeze(D::Minus1)?.contiguous()?;
        lps.push((logits.gather(&t, D::Minus1)? - &lse)?.squeeze(D::Minus1)?);
        lses.push(lse.squeeze(D::Minus1)?);
    }
    let lp = Tensor::cat(&lps, 0)?;
    if !hidden.track_op() && !weight.track_op() {
        return Ok(lp);
    }
    let lse = Tensor::cat(&lses, 0)?;
    let weight_needs_grad = weight.track_op();
    let backward: Arc<Backward2> = Arc::new(move |h: &Tensor, w: &Tensor, _lp: &Tensor, g: &Tensor| {
        let (n, _) = h.dims2()?;
        let mut dh = Vec::new();
        let mut dw: Option<Tensor> = None;
        for start in (0..n).step_by(chunk_rows) {
            let len = chunk_rows.min(n - start);
            let hc = h.narrow(0, start, len)?;
            let dlogits = if fused {
                let logits = hc.matmul(&w.t()?)?;
                kernels::head_dlogits(&logits, &lse.narrow(0, start, len)?, &g.narrow(0, start, len)?, &targets.narrow(0, start, len)?)?
            } else {
                let logits = hc.matmul(&w.t()?)?.to_dtype(acc)?;
                let gc = g.narrow(0, start, len)?.to_dtype(acc)?.unsqueeze(D::Minus1)?;
                // d lp / d logits = onehot(target) - softmax(logits), times the incoming gradient.
                let p = logits.broadcast_sub(&lse.narrow(0, start, len)?.unsqueeze(D::Minus1)?)?.exp()?;
                let t = targets.narrow(0, start, len)?.unsqueeze(D::Minus1)?.contiguous()?;
                p.broadcast_mul(&gc)?.neg()?.scatter_add(&t, &gc.contiguous()?, D::Minus1)?.to_dtype(h.dtype())?
            };
            dh.push(dlogits.matmul(w)?);
            if weight_needs_grad {
                let part = dlogits.t()?.matmul(&hc)?;
                dw = Some(match dw {
                    // Several chunks: accumulate in f32 (a single chunk needs no accumulator).
                    Some(acc_w) => (acc_w.to_dtype(acc)? + part.to_dtype(acc)?)?,
                    None => part,
                });
            }
        }
        let dw = dw.map(|d| d.to_dtype(w.dtype())).transpose()?;
        let dh = if dh.len() == 1 { dh.pop().expect("one chunk") } else { Tensor::cat(&dh, 0)? };
        Ok((Some(dh), dw))
    });
    attach2("medrl-head-logprobs", hidden, weight, lp, backward)
}

/// Embedding lookup: rows `ids` (`[N]` u32) of `weight` (`[vocab, H]`).
///
/// On CUDA, when `weight` needs a gradient, the backward is one scatter-add kernel with f32
/// atomics instead of candle's `index_add`, which runs on a single thread block (milliseconds
/// for a 152k-row table).
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if kernels::enabled(weight) && weight.track_op() {
        let value = weight.detach().index_select(ids, 0)?;
        let (ids, vocab) = (ids.detach(), weight.dim(0)?);
        let backward: Arc<Backward> = Arc::new(move |_w: &Tensor, _y: &Tensor, g: &Tensor| kernels::embedding_backward(&ids, g, vocab));
        return attach("medrl-embedding", weight, value, backward);
    }
    weight.index_select(ids, 0)
}

/// `x W^T` (`x`: `[rows, in]`) for a frozen weight `W` `[out, in]` stored in NF4 (QLoRA's base):
/// the weight is dequantized into `x`'s dtype for the product and again in backward, so the
/// graph keeps the packed weight (0.5 bytes per value plus its block scales) and never a dense
/// copy. Only `x` gets a gradient. Cost: one dequantization per forward and one per backward.
pub fn nf4_matmul(x: &Tensor, w: &Arc<crate::quant::Nf4Tensor>) -> Result<Tensor> {
    let dense = w.dequantize_tensor(x.dtype(), x.device())?;
    let value = x.detach().matmul(&dense.t()?)?;
    drop(dense);
    if !x.track_op() {
        return Ok(value);
    }
    let w = w.clone();
    let backward: Arc<Backward> = Arc::new(move |x: &Tensor, _y: &Tensor, g: &Tensor| g.matmul(&w.dequantize_tensor(x.dtype(), x.device())?));
    attach("medrl-nf4-matmul", x, value, backward)
}

/// Repeat key/value heads `n_rep` times along the head axis (grouped-query attention).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, h, n_rep, s, d))?
        .reshape((b, h * n_rep, s, d))
}

/// Finite-difference gradient checks for the ops above and for any op added later.
pub mod gradcheck {
    use candle_core::{DType, Device, Result, Tensor, Var};

    /// Outcome of a check: the worst relative error seen over the probed coordinates.
    #[derive(Debug, Clone, Copy)]
    pub struct GradCheck {
        pub max_rel_err: f64,
        pub max_abs_err: f64,
        pub probes: usize,
    }

    /// Compare the autograd gradient of `sum(f(inputs) * r)` (r a fixed random projection)
    /// with central finite differences, in f64, at up to `probes` coordinates of each input.
    ///
    /// Every input must get a gradient: a `None` (an op that dropped it) is an error, which is
    /// exactly the failure mode these checks exist to catch.
    pub fn check<F>(inputs: &[Tensor], f: F, probes: usize, eps: f64) -> Result<GradCheck>
    where
        F: Fn(&[Tensor]) -> Result<Tensor>,
    {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(DType::F64)?))
            .collect::<Result<_>>()?;
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&xs)?;
        // A fixed projection makes the scalar objective depend on every output element.
        let n = out.elem_count();
        let r: Vec<f64> = (0..n).map(|i| ((i * 7919 % 1000) as f64 / 1000.0) - 0.37).collect();
        let r = Tensor::from_vec(r, out.shape(), &Device::Cpu)?;
        let objective = |out: &Tensor| -> Result<f64> { (out * &r)?.sum_all()?.to_scalar::<f64>() };
        let grads = objective_backward(&out, &r)?;
        let mut worst = GradCheck { max_rel_err: 0.0, max_abs_err: 0.0, probes: 0 };
        for (i, var) in vars.iter().enumerate() {
            let g = grads.get(var.as_tensor()).ok_or_else(|| {
                candle_core::Error::Msg(format!("input {i} received no gradient (dropped by an op)"))
            })?;
            let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
            let base: Vec<f64> = xs[i].flatten_all()?.to_vec1()?;
            let stride = (base.len() / probes.max(1)).max(1);
            for j in (0..base.len()).step_by(stride).take(probes) {
                let eval_at = |delta: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[j] += delta;
                    let t = Tensor::from_vec(v, xs[i].shape(), &Device::Cpu)?;
                    let mut args = xs.clone();
                    args[i] = t;
                    objective(&f(&args)?)
                };
                let numeric = (eval_at(eps)? - eval_at(-eps)?) / (2.0 * eps);
                let abs = (numeric - g[j]).abs();
                let rel = abs / numeric.abs().max(g[j].abs()).max(1e-6);
                worst.max_abs_err = worst.max_abs_err.max(abs);
                worst.max_rel_err = worst.max_rel_err.max(rel);
                worst.probes += 1;
            }
        }
        Ok(worst)
    }

    fn objective_backward(out: &Tensor, r: &Tensor) -> Result<candle_core::backprop::GradStore> {
        (out * r)?.sum_all()?.backward()
    }
}

/// Log-probabilities of `targets` under `logits` (`[B, T, V]` and `[B, T]`) -> `[B, T]`.
/// Differentiable: policy-gradient losses are built on it.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    // log p(t) = x_t - logsumexp(x): gathers one logit per position instead of materializing
    // (and retaining for backward) a full log-softmax over the vocabulary.
    let picked = logits.gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?;
    let lse = logsumexp_last(logits)?;
    (picked - lse)?.squeeze(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::gradcheck::check;
    use super::*;
    use candle_core::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic pseudo-random values without pulling an RNG into the op tests.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn assert_grad_ok(name: &str, r: gradcheck::GradCheck) {
        assert!(r.probes > 0, "{name}: nothing probed");
        assert!(r.max_rel_err < 1e-5, "{name}: gradient mismatch {r:?}");
    }

    #[test]
    fn rms_norm_gradient_matches_finite_differences() {
        let x = randn(&[2, 3, 8], 1);
        let w = randn(&[8], 2);
        let r = check(&[x, w], |t| rms_norm(&t[0], &t[1], 1e-6), 24, 1e-6).unwrap();
        assert_grad_ok("rms_norm", r);
    }

    #[test]
    fn nf4_matmul_gradient_and_value() {
        let w = randn(&[6, 128], 3).to_dtype(DType::F32).unwrap();
        let q = Arc::new(crate::quant::Nf4Tensor::quantize_tensor(&w).unwrap());
        let x = randn(&[3, 128], 4);
        assert_grad_ok("nf4_matmul", check(&[x.clone()], |t| nf4_matmul(&t[0], &q), 24, 1e-6).unwrap());
        // The value is the product with the dequantized weight, exactly.
        let dense = q.dequantize_tensor(DType::F64, &Device::Cpu).unwrap();
        let want = x.matmul(&dense.t().unwrap()).unwrap();
        let d = (nf4_matmul(&x, &q).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn logsumexp_gradient_and_value() {
        let x = randn(&[3, 7], 5);
        assert_grad_ok("logsumexp", check(&[x.clone()], |t| logsumexp_last(&t[0]), 21, 1e-6).unwrap());
        let want = x.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap();
        let got = logsumexp_last(&x).unwrap();
        assert!((want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() < 1e-12);
    }

    #[test]
    fn fused_forwards_match_the_composite_definitions_in_f32() {
        let x = randn(&[2, 5, 16], 9).to_dtype(DType::F32).unwrap();
        let w = randn(&[16], 10).to_dtype(DType::F32).unwrap();
        let fused = rms_norm(&x, &w, 1e-6).unwrap();
        let composite = rms_norm_composite(&x, 1e-6).unwrap().broadcast_mul(&w).unwrap();
        let d = (fused - composite).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "rms_norm fused vs composite: {d}");
        let e = x.exp().unwrap();
        let manual = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let d = (softmax_last(&x).unwrap() - manual).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "softmax fused vs definition: {d}");
        // Gradients reach the input through the attached fused value in f32 too.
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let g = softmax_last(v.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(v.as_tensor()).is_some());
    }

    #[test]
    fn softmax_and_log_softmax_gradients() {
        let x = randn(&[3, 7], 3);
        assert_grad_ok("softmax", check(&[x.clone()], |t| softmax_last(&t[0]), 21, 1e-6).unwrap());
        assert_grad_ok("log_softmax", check(&[x], |t| log_softmax_last(&t[0]), 21, 1e-6).unwrap());
    }

    #[test]
    fn softmax_matches_definition() {
        let x = randn(&[2, 5], 9);
        let ours: Vec<Vec<f64>> = softmax_last(&x).unwrap().to_vec2().unwrap();
        let raw: Vec<Vec<f64>> = x.to_vec2().unwrap();
        for (row, out) in raw.iter().zip(&ours) {
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            for (a, b) in row.iter().zip(out) {
                assert!((a.exp() / z - b).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn rope_gradient_and_rotation() {
        let x = randn(&[1, 2, 3, 8], 4);
        let cos = randn(&[1, 1, 3, 4], 5);
        let sin = randn(&[1, 1, 3, 4], 6);
        let r = check(&[x.clone(), cos.clone(), sin.clone()], |t| rope(&t[0], &t[1], &t[2]), 24, 1e-6)
            .unwrap();
        assert_grad_ok("rope", r);
        // A pure rotation (cos^2 + sin^2 = 1) preserves the norm of each pair.
        let angle = randn(&[1, 1, 3, 4], 7);
        let y = rope(&x, &angle.cos().unwrap(), &angle.sin().unwrap()).unwrap();
        let nx = x.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let ny = y.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((nx - ny).abs() < 1e-9);
    }

    #[test]
    fn swiglu_gradient() {
        let g = randn(&[4, 6], 8);
        let u = randn(&[4, 6], 9);
        assert_grad_ok("swiglu", check(&[g, u], |t| swiglu(&t[0], &t[1]), 24, 1e-6).unwrap());
    }

    /// The textbook definition, from primitives, with the heads expanded up front.
    fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let n_rep = q.dim(1)? / k.dim(1)?;
        let (k, v) = (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?);
        let scores = (q.matmul(&k.t()?)? / (q.dim(D::Minus1)? as f64).sqrt())?.broadcast_add(&mask.to_dtype(q.dtype())?)?;
        let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.matmul(&v)
    }

    fn causal_padded_mask() -> Tensor {
        // Batch of 2, T = S = 3: causal; the second sequence's first position is padding.
        let m = -1e30f32;
        Tensor::from_vec(vec![0.0, m, m, 0.0, 0.0, m, 0.0, 0.0, 0.0, 0.0, m, m, m, 0.0, m, m, 0.0, 0.0], (2, 1, 3, 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn attention_gradient_with_mask_and_gqa() {
        // Four query heads share two key/value heads; gradients flow to the unexpanded k and v.
        let q = randn(&[2, 4, 3, 4], 10);
        let k = randn(&[2, 2, 3, 4], 11);
        let v = randn(&[2, 2, 3, 4], 12);
        let mask = causal_padded_mask();
        // Both backward paths: probabilities kept, and recomputed (as for long sequences).
        for keep in [usize::MAX, 0] {
            let r = check(&[q.clone(), k.clone(), v.clone()], |t| attention_keeping(&t[0], &t[1], &t[2], Some(&mask), keep), 36, 1e-6).unwrap();
            assert_grad_ok("attention", r);
        }
        // Value and gradients equal the primitive definition's (which autograd differentiates).
        let (qv, kv, vv) = (candle_core::Var::from_tensor(&q).unwrap(), candle_core::Var::from_tensor(&k).unwrap(), candle_core::Var::from_tensor(&v).unwrap());
        let w = randn(&[2, 4, 3, 4], 13);
        let ours = attention(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), Some(&mask)).unwrap();
        let want = attention_reference(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), &mask).unwrap();
        let d = (&ours - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "attention value vs definition: {d}");
        let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (want * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&qv, &kv, &vv] {
            let a = g1.get(var.as_tensor()).unwrap();
            let b = g2.get(var.as_tensor()).unwrap();
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-12, "attention gradient vs definition: {d}");
        }
    }

    #[test]
    fn attention_in_f32_matches_definition_and_keeps_no_graph_when_detached() {
        let q = randn(&[1, 4, 5, 8], 20).to_dtype(DType::F32).unwrap();
        let k = randn(&[1, 2, 5, 8], 21).to_dtype(DType::F32).unwrap();
        let v = randn(&[1, 2, 5, 8], 22).to_dtype(DType::F32).unwrap();
        let mask = Tensor::zeros((1, 1, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let ours = attention(&q, &k, &v, Some(&mask)).unwrap();
        assert!(!ours.track_op(), "inference inputs must not build a graph");
        let want = attention_reference(&q, &k, &v, &mask).unwrap();
        let d = (ours - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn head_logprobs_match_full_logits_for_any_chunking() {
        let h = randn(&[5, 6], 30);
        let w = randn(&[11, 6], 31);
        let targets = Tensor::new(&[3u32, 0, 10, 7, 3], &Device::Cpu).unwrap();
        let full = token_logprobs(&h.matmul(&w.t().unwrap()).unwrap().unsqueeze(0).unwrap(), &targets.unsqueeze(0).unwrap()).unwrap().squeeze(0).unwrap();
        for chunk in [1, 2, 5, 64] {
            let ours = head_logprobs(&h, &w, &targets, chunk).unwrap();
            let d = (&ours - &full).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-12, "chunk {chunk}: {d}");
            let r = check(&[h.clone(), w.clone()], |t| head_logprobs(&t[0], &t[1], &targets, chunk), 30, 1e-6).unwrap();
            assert_grad_ok("head_logprobs", r);
        }
        // A frozen head (no gradient needed) still passes gradients to the hidden states.
        let hv = candle_core::Var::from_tensor(&h).unwrap();
        let g = head_logprobs(hv.as_tensor(), &w, &targets, 2).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(hv.as_tensor()).is_some());
    }

    #[test]
    fn attached_values_may_be_views_at_an_offset() {
        // A kernel returning stacked outputs hands out rows of one buffer; the attached value
        // must be the row itself, not the buffer's start (a bug the GPU path once had).
        let both = randn(&[2, 5], 40);
        let second = both.get(1).unwrap();
        assert!(second.layout().start_offset() != 0);
        let x = candle_core::Var::from_tensor(&randn(&[5], 41)).unwrap();
        let backward: Arc<Backward> = Arc::new(|_x: &Tensor, _y: &Tensor, g: &Tensor| Ok(g.clone()));
        let y = attach("test-offset", x.as_tensor(), second.clone(), backward).unwrap();
        let d = (y - second).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn gradcheck_detects_dropped_gradient() {
        // The fused softmax drops gradients; the checker must report it rather than pass.
        let x = randn(&[2, 4], 13);
        let res = check(&[x.to_dtype(DType::F32).unwrap()], |t| candle_nn::ops::softmax_last_dim(&t[0]), 4, 1e-6);
        assert!(res.is_err(), "a dropped gradient must be an error");
    }
}
