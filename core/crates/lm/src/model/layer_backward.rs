//! An explicit backward pass for one decoder layer.
//!
//! candle's autograd walks a graph of every primitive op and, for each, allocates a zero
//! gradient and adds into it; on the GPU that is a fill and an add per intermediate, on top of
//! the graph holding every intermediate until the whole backward is done. This module computes
//! a layer's gradients directly: [`CausalLm::layer_forward_taped`] runs the layer untracked and
//! keeps what the backward needs (a [`Tape`]); [`CausalLm::layer_backward`] turns the gradient
//! at the layer's output into the gradient at its input and the gradients of the layer's
//! trainable tensors (dense weights, biases, norms, LoRA adapters), named as the trainer names
//! them. The kernels are the ones the differentiable ops use (fused RMSNorm, SwiGLU, RoPE and
//! softmax backwards on CUDA); only the bookkeeping around them changes.
//!
//! The two paths compute the same function: `tests/layer_backward.rs` compares this backward
//! with autograd's and with finite differences (f64), and `medrl bench train-agreement` with
//! the CPU. It is chosen by `training.layer_backward` (see [`LayerBackward`]); activation
//! checkpointing recomputes a layer's tape instead of keeping it.

use candle_core::{DType, Module, Result as CResult, Tensor, D};

use super::lora::LoraAdapter;
use super::transformer::{Block, CausalLm, LayerCtx, Linear, Weight};
use medrl_nn::ops;

/// How a training view computes the decoder layers' gradients (config key
/// `training.layer_backward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LayerBackward {
    /// `explicit` on CUDA, `autograd` on CPU (where autograd is the reference the tests hold
    /// the explicit pass to, and where bit-identical checkpointed gradients are tested).
    #[default]
    Auto,
    /// candle's autograd through the layer's graph.
    Autograd,
    /// The hand-written backward of this module: no per-op zero-fill and add, intermediates
    /// freed as soon as their gradient is computed.
    Explicit,
}

impl LayerBackward {
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }

    /// Whether views on `device` use the explicit backward.
    pub fn explicit_on(&self, device: &candle_core::Device) -> bool {
        match self {
            Self::Auto => device.is_cuda(),
            Self::Autograd => false,
            Self::Explicit => true,
        }
    }
}

/// What one layer's backward needs from its forward (all untracked).
#[derive(Debug)]
pub(crate) struct Tape {
    /// The layer's input rows `[B * T, H]`.
    x: Tensor,
    /// The input norm's output (weight applied): the attention projections' input.
    h1: Tensor,
    /// Qwen3: the per-head queries and keys before their norm, `[B, T, heads, D]`.
    q_pre: Option<Tensor>,
    k_pre: Option<Tensor>,
    /// Queries and keys after RoPE, values, `[B, heads, T, D]`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention probabilities when small enough to keep (else recomputed from `q`, `k`).
    probs: Option<Tensor>,
    /// Attention output per head `[B, H, T, D]` and as rows `[B * T, H * D]`.
    o: Tensor,
    o_rows: Tensor,
    /// The residual stream after attention, and the post-attention norm's output.
    x2: Tensor,
    h2: Tensor,
    /// Gate and up projections, and their SwiGLU product (the down projection's input).
    gate: Tensor,
    up: Tensor,
    act: Tensor,
}

fn bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Gradients of one layer's trainable tensors, by trainer name.
pub(crate) type NamedGrads = Vec<(String, Tensor)>;

/// `Σ_rows (g * n)` in f32 (f64 stays f64), cast to `like`'s dtype: a norm weight's gradient.
fn weight_grad(g: &Tensor, n: &Tensor, like: &Tensor) -> CResult<Tensor> {
    let acc = if g.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let last = g.dim(D::Minus1)?;
    let prod = (g.to_dtype(acc)? * n.to_dtype(acc)?)?.reshape(((), last))?;
    prod.sum(0)?.to_dtype(like.dtype())
}

/// The input gradient of `lin` at input `x` for output gradient `dy` (both `[rows, *]`); the
/// gradients of its tracked tensors (`tracked` is the view's linear, whose tensors say which
/// need one) go to `out` under `prefix`.
fn linear_backward(prefix: &str, tracked: &Linear, lin: &Linear, x: &Tensor, dy: &Tensor, out: &mut NamedGrads) -> CResult<Tensor> {
    let mut dx = match &lin.weight {
        Weight::Dense(w) => dy.matmul(w)?,
        Weight::Nf4(q) => dy.matmul(&q.dequantize_tensor(dy.dtype(), dy.device())?)?,
    };
    if let Weight::Dense(w) = &tracked.weight {
        if w.track_op() {
            out.push((format!("{prefix}.weight"), dy.t()?.matmul(x)?));
        }
    }
    if let Some(b) = &tracked.bias {
        if b.track_op() {
            let acc = if dy.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
            out.push((format!("{prefix}.bias"), dy.to_dtype(acc)?.sum(0)?.to_dtype(b.dtype())?));
        }
    }
    if let (Some(l), Some(tl)) = (&lin.lora, &tracked.lora) {
        dx = (dx + lora_backward(prefix, tl, l, x, dy, out)?)?;
    }
    Ok(dx)
}

/// LoRA's share of [`linear_backward`]: for `y += s (m ⊙ x) Aᵀ Bᵀ` (dropout mask `m`),
/// `dB = s dyᵀ u`, `dA = s (dy B)ᵀ (m ⊙ x)`, `dx = s m ⊙ ((dy B) A)` with `u = (m ⊙ x) Aᵀ`.
fn lora_backward(prefix: &str, tracked: &LoraAdapter, l: &LoraAdapter, x: &Tensor, dy: &Tensor, out: &mut NamedGrads) -> CResult<Tensor> {
    let dtype = x.dtype();
    let (a, b) = (l.a.to_dtype(dtype)?, l.b.to_dtype(dtype)?);
    let mask = l.dropout_mask.as_ref().map(|m| m.to_dtype(dtype)).transpose()?;
    let xd = match &mask {
        Some(m) => x.mul(m)?,
        None => x.clone(),
    };
    // The scale goes on the rank-r factors ([rows, r]), never on a full-width tensor.
    let t = (dy.matmul(&b)? * l.scale)?; // [rows, r]
    if tracked.b.track_op() {
        let u = (xd.matmul(&a.t()?)? * l.scale)?;
        out.push((format!("{prefix}.lora_B.weight"), dy.t()?.matmul(&u)?));
    }
    if tracked.a.track_op() {
        out.push((format!("{prefix}.lora_A.weight"), t.t()?.matmul(&xd)?));
    }
    let dx = t.matmul(&a)?;
    match &mask {
        Some(m) => dx.mul(m),
        None => Ok(dx),
    }
}

/// Backward of `w * normalize(x)` (`w`: the view's norm weight `tracked`) for output gradient
/// `g`: the input gradient; the weight's gradient goes to `out` as `name` when `tracked` tracks
/// one.
fn norm_backward(name: &str, tracked: &Tensor, x: &Tensor, g: &Tensor, eps: f64, out: &mut NamedGrads) -> CResult<Tensor> {
    let w = tracked.detach();
    if tracked.track_op() {
        let n = ops::rms_normalize(x, eps)?;
        out.push((name.to_string(), weight_grad(g, &n, &w)?));
    }
    ops::rms_norm_backward(x, &g.broadcast_mul(&w)?, eps)
}

impl CausalLm {
    /// Decoder layer `layer` on rows `x` `[B * T, H]`, untracked, with the [`Tape`] its
    /// [`CausalLm::layer_backward`] needs. Computes what [`CausalLm::layer_forward`] does, op
    /// for op. Attention probabilities larger than `keep_probs_bytes` are not kept (the
    /// backward recomputes them).
    /// `output: false` skips the last projection (a recomputation for backward needs only the
    /// tape).
    pub(crate) fn layer_forward_taped(&self, layer: &Block, x: Tensor, ctx: &LayerCtx, keep_probs_bytes: usize, output: bool) -> CResult<(Option<Tensor>, Tape)> {
        let cfg = &self.cfg;
        let eps = cfg.rms_norm_eps;
        let (b, t) = (ctx.b, ctx.t);
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let layer = layer.map_tensors(&|t| Ok(t.detach()), true)?;
        let x = x.detach();
        let h1 = ops::rms_normalize(&x, eps)?.broadcast_mul(&layer.input_layernorm)?;
        let a = &layer.self_attn;
        let heads = |lin: &Linear, n: usize, norm: &Option<Tensor>| -> CResult<(Tensor, Option<Tensor>)> {
            let y = lin.forward(&h1)?.reshape((b, t, n, hd))?;
            let (y, pre) = match norm {
                Some(w) => (ops::rms_normalize(&y, eps)?.broadcast_mul(w)?, Some(y)),
                None => (y, None),
            };
            Ok((y.transpose(1, 2)?.contiguous()?, pre))
        };
        let (q, q_pre) = heads(&a.q_proj, nh, &a.q_norm)?;
        let (k, k_pre) = heads(&a.k_proj, nkv, &a.k_norm)?;
        let (v, _) = heads(&a.v_proj, nkv, &None)?;
        let q = ops::rope(&q, &ctx.cos, &ctx.sin)?;
        let k = ops::rope(&k, &ctx.cos, &ctx.sin)?;
        let p = ops::attention_probs(&q, &k, ctx.mask.as_ref())?;
        let o = ops::attention_apply(&p, &v)?;
        let probs = (bytes(&p) <= keep_probs_bytes).then_some(p);
        let o_rows = o.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        let x2 = (&x + a.o_proj.forward(&o_rows)?)?;
        let h2 = ops::rms_normalize(&x2, eps)?.broadcast_mul(&layer.post_attention_layernorm)?;
        let m = &layer.mlp;
        let gate = m.gate_proj.forward(&h2)?;
        let up = m.up_proj.forward(&h2)?;
        let act = ops::swiglu(&gate, &up)?;
        let y = if output { Some((&x2 + m.down_proj.forward(&act)?)?) } else { None };
        Ok((y, Tape { x, h1, q_pre, k_pre, q, k, v, probs, o, o_rows, x2, h2, gate, up, act }))
    }

    /// The backward of layer `i` (`tracked`: the view's layer, whose tensors that track
    /// gradients are the trainable ones): returns the gradient at the layer's input for the
    /// gradient `dy` at its output, and appends each trainable tensor's gradient to `out`
    /// under its trainer name (`model.layers.{i}.self_attn.q_proj.weight`,
    /// `...q_proj.lora_A.weight`, ...), in the tensor's own dtype.
    pub(crate) fn layer_backward(&self, i: usize, tracked: &Block, tape: Tape, dy: &Tensor, ctx: &LayerCtx, out: &mut NamedGrads) -> CResult<Tensor> {
        let cfg = &self.cfg;
        let eps = cfg.rms_norm_eps;
        let (b, t) = (ctx.b, ctx.t);
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let layer = tracked.map_tensors(&|t| Ok(t.detach()), true)?;
        let p = format!("model.layers.{i}");
        let Tape { x, h1, q_pre, k_pre, q, k, v, probs, o, o_rows, x2, h2, gate, up, act } = tape;
        let dy = dy.detach();

        // MLP: y = x2 + down(swiglu(gate(h2), up(h2))).
        let (tm, m) = (&tracked.mlp, &layer.mlp);
        let d_act = linear_backward(&format!("{p}.mlp.down_proj"), &tm.down_proj, &m.down_proj, &act, &dy, out)?;
        drop(act);
        let (d_gate, d_up) = ops::swiglu_backward(&gate, &up, &d_act)?;
        drop((gate, up, d_act));
        let dh2 = (linear_backward(&format!("{p}.mlp.gate_proj"), &tm.gate_proj, &m.gate_proj, &h2, &d_gate, out)?
            + linear_backward(&format!("{p}.mlp.up_proj"), &tm.up_proj, &m.up_proj, &h2, &d_up, out)?)?;
        drop((h2, d_gate, d_up));
        let dx2 = norm_backward(&format!("{p}.post_attention_layernorm.weight"), &tracked.post_attention_layernorm, &x2, &dh2, eps, out)?;
        let dx2 = (dy + dx2)?;
        drop((x2, dh2));

        // Attention: x2 = x + o_proj(attn(rope(q), rope(k), v)).
        let (ta, a) = (&tracked.self_attn, &layer.self_attn);
        let d_o_rows = linear_backward(&format!("{p}.self_attn.o_proj"), &ta.o_proj, &a.o_proj, &o_rows, &dx2, out)?;
        drop(o_rows);
        let d_o = d_o_rows.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let probs = match probs {
            Some(p) => p,
            None => ops::attention_probs(&q, &k, ctx.mask.as_ref())?,
        };
        let (dq, dk, dv) = ops::attention_backward(&q, &k, &v, &probs, &o, &d_o)?;
        drop((q, k, v, probs, o, d_o));
        // Back through RoPE and the [B, heads, T, D] layout to rows, then the per-head norms.
        let rows = |g: Tensor, n: usize| -> CResult<Tensor> { g.transpose(1, 2)?.contiguous()?.reshape((b, t, n, hd)) };
        let dq = rows(ops::rope_inverse(&dq, &ctx.cos, &ctx.sin)?, nh)?;
        let dk = rows(ops::rope_inverse(&dk, &ctx.cos, &ctx.sin)?, nkv)?;
        let dv = rows(dv, nkv)?;
        let head_norm = |name: &str, g: Tensor, pre: Option<Tensor>, tw: &Option<Tensor>, out: &mut NamedGrads| -> CResult<Tensor> {
            match (pre, tw) {
                (Some(pre), Some(tw)) => norm_backward(&format!("{p}.self_attn.{name}.weight"), tw, &pre, &g, eps, out),
                _ => Ok(g),
            }
        };
        let dq = head_norm("q_norm", dq, q_pre, &ta.q_norm, out)?.reshape((b * t, nh * hd))?;
        let dk = head_norm("k_norm", dk, k_pre, &ta.k_norm, out)?.reshape((b * t, nkv * hd))?;
        let dv = dv.reshape((b * t, nkv * hd))?;
        let dh1 = linear_backward(&format!("{p}.self_attn.q_proj"), &ta.q_proj, &a.q_proj, &h1, &dq, out)?;
        let dh1 = (dh1 + linear_backward(&format!("{p}.self_attn.k_proj"), &ta.k_proj, &a.k_proj, &h1, &dk, out)?)?;
        let dh1 = (dh1 + linear_backward(&format!("{p}.self_attn.v_proj"), &ta.v_proj, &a.v_proj, &h1, &dv, out)?)?;
        drop((h1, dq, dk, dv));
        let dx = norm_backward(&format!("{p}.input_layernorm.weight"), &tracked.input_layernorm, &x, &dh1, eps, out)?;
        dx2 + dx
    }
}

#[cfg(test)]
mod tests {
    //! One decoder layer's explicit backward against central finite differences in f64: the
    //! input's gradient and every trainable tensor's (weights, biases, norms, Qwen3's head
    //! norms, LoRA adapters under dropout).
    use super::*;
    use crate::model::config::Arch;
    use crate::model::init::{preset_config, random_weights, InitOptions, Preset};
    use crate::model::{build_attention_mask, MapSource};
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn tensor(shape: &[usize], seed: u64, scale: f64) -> Tensor {
        Tensor::from_vec(values(shape.iter().product(), seed, scale), shape, &Device::Cpu).unwrap()
    }

    /// Every tensor of layer `i` under the trainer's names (adapters included).
    fn named(i: usize, l: &Block) -> Vec<(String, Tensor)> {
        let p = format!("model.layers.{i}");
        let mut out = vec![(format!("{p}.input_layernorm.weight"), l.input_layernorm.clone()), (format!("{p}.post_attention_layernorm.weight"), l.post_attention_layernorm.clone())];
        for (name, n) in [("q_norm", &l.self_attn.q_norm), ("k_norm", &l.self_attn.k_norm)] {
            if let Some(n) = n {
                out.push((format!("{p}.self_attn.{name}.weight"), n.clone()));
            }
        }
        for (module, lin) in l.projections() {
            let group = if ["gate_proj", "up_proj", "down_proj"].contains(&module) { "mlp" } else { "self_attn" };
            let q = format!("{p}.{group}.{module}");
            if let Weight::Dense(w) = &lin.weight {
                out.push((format!("{q}.weight"), w.clone()));
            }
            if let Some(b) = &lin.bias {
                out.push((format!("{q}.bias"), b.clone()));
            }
            if let Some(a) = &lin.lora {
                out.push((format!("{q}.lora_A.weight"), a.a.clone()));
                out.push((format!("{q}.lora_B.weight"), a.b.clone()));
            }
        }
        out
    }

    fn check_layer(arch: Arch, lora: bool) {
        let mut cfg = preset_config(&InitOptions::new(arch, Preset::Tiny), 64, 1);
        cfg.num_hidden_layers = 1;
        let w = random_weights(&cfg, 5, 0.3).unwrap();
        let model = CausalLm::from_source(cfg.clone(), &mut MapSource::new(w, "<test>"), DType::F64, &Device::Cpu).unwrap();
        let (b, t, h) = (2, 5, cfg.hidden_size);
        let mut block = model.layers[0].clone();
        if lora {
            // Nonzero B so that A's gradient is not trivially zero; dropout on the input.
            let mut k = 0;
            for (_, lin) in block.projections_mut() {
                let (out_dim, in_dim) = lin.weight.dims2().unwrap();
                k += 1;
                let mask = tensor(&[b * t, in_dim], 100 + k, 1.0).ge(-0.6).unwrap().to_dtype(DType::F64).unwrap();
                lin.lora = Some(LoraAdapter { a: tensor(&[3, in_dim], 200 + k, 0.3), b: tensor(&[out_dim, 3], 300 + k, 0.3), scale: 1.5, dropout_mask: Some((mask * 1.25).unwrap()) });
            }
        }
        // Tracked copies: what a training view holds for trainable tensors.
        let tracked = block.map_tensors(&|t| Ok(Var::from_tensor(t)?.as_tensor().clone()), true).unwrap();
        let positions = Tensor::from_vec(vec![0u32, 1, 2, 3, 4, 0, 0, 0, 1, 2], (b, t), &Device::Cpu).unwrap();
        let (cos, sin) = model.rope_tables(&positions).unwrap();
        let valid = vec![vec![true; 5], vec![false, false, true, true, true]];
        let mask = build_attention_mask(&valid, 0, t, &Device::Cpu).unwrap();
        let ctx = LayerCtx { b, t, cos, sin, mask: Some(mask) };
        let x = tensor(&[b * t, h], 7, 1.0);
        // The two padded queries (sequence 1, slots 0 and 1) see only masked keys: their
        // outputs are never trained, and finite differences cannot see through a mask value
        // that swallows the scores, so they carry no gradient here.
        let keep: Vec<f64> = (0..b * t).map(|row| if row == 5 || row == 6 { 0.0 } else { 1.0 }).collect();
        let r = tensor(&[b * t, h], 8, 1.0).broadcast_mul(&Tensor::from_vec(keep, (b * t, 1), &Device::Cpu).unwrap()).unwrap();

        let (y, tape) = model.layer_forward_taped(&tracked, x.clone(), &ctx, usize::MAX, true).unwrap();
        let plain = model.layer_forward(0, &block, x.clone(), &ctx, None).unwrap();
        let same = (y.unwrap() - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(same < 1e-12, "the taped forward computes the layer ({same})");
        let mut grads = Vec::new();
        let dx = model.layer_backward(0, &tracked, tape, &r, &ctx, &mut grads).unwrap();
        let names = named(0, &block);
        assert_eq!(grads.len(), names.len(), "a gradient for every tensor: got {:?}", grads.iter().map(|g| &g.0).collect::<Vec<_>>());

        let objective = |blk: &Block, x: &Tensor| -> f64 { (model.layer_forward(0, blk, x.clone(), &ctx, None).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() };
        let eps = 1e-5;
        let mut worst = 0f64;
        let mut compare = |what: &str, analytic: f64, plus: f64, minus: f64| {
            let numeric = (plus - minus) / (2.0 * eps);
            let rel = (numeric - analytic).abs() / numeric.abs().max(analytic.abs()).max(1e-4);
            assert!(rel < 1e-5, "{arch:?} lora {lora}: {what}: analytic {analytic}, numeric {numeric}");
            worst = worst.max(rel);
        };
        let xs: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let gx: Vec<f64> = dx.flatten_all().unwrap().to_vec1().unwrap();
        for j in (0..xs.len()).step_by(xs.len() / 7) {
            let at = |d: f64| {
                let mut v = xs.clone();
                v[j] += d;
                objective(&block, &Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap())
            };
            compare(&format!("input[{j}]"), gx[j], at(eps), at(-eps));
        }
        for (name, g) in &grads {
            let target = &names.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} is not a tensor of the layer")).1;
            assert_eq!(g.dims(), target.dims(), "{name}");
            let base: Vec<f64> = target.flatten_all().unwrap().to_vec1().unwrap();
            let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(gv.iter().any(|v| *v != 0.0), "{name}: all-zero gradient checks nothing");
            for j in (0..base.len()).step_by((base.len() / 3).max(1)) {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[j] += d;
                    let moved = Tensor::from_vec(v, target.shape(), &Device::Cpu).unwrap();
                    let blk = block.map_tensors(&|t| Ok(if t.id() == target.id() { moved.clone() } else { t.clone() }), true).unwrap();
                    objective(&blk, &x)
                };
                compare(&format!("{name}[{j}]"), gv[j], at(eps), at(-eps));
            }
        }
        assert!(worst > 0.0);
    }

    #[test]
    fn llama_layer_gradients_match_finite_differences() {
        check_layer(Arch::Llama, false);
    }

    #[test]
    fn qwen2_layer_with_biases_and_lora_under_dropout_matches_finite_differences() {
        check_layer(Arch::Qwen2, false);
        check_layer(Arch::Qwen2, true);
    }

    #[test]
    fn qwen3_layer_with_head_norms_matches_finite_differences() {
        check_layer(Arch::Qwen3, false);
        check_layer(Arch::Qwen3, true);
    }
}
