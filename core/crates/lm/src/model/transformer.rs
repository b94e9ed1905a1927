//! One decoder implementation for Llama, Qwen2/2.5 and Qwen3.
//!
//! The forward pass is written only with differentiable ops (see [`medrl_nn::ops`]), so training
//! and inference share it. Tensor names follow Hugging Face checkpoints exactly, which makes
//! loading, saving and PEFT export a matter of walking the same names.

use candle_core::{DType, Device, Module, Result as CResult, Tensor, D};
use std::sync::Arc;

use medrl_nn::quant::Nf4Tensor;

use super::config::{Arch, ModelConfig, RopeScaling};
use super::checkpoint::Checkpointer;
use super::kv_cache::KvCache;
use super::lora::LoraAdapter;
use super::weights::TensorSource;
use super::ModelError;
use medrl_nn::ops;

/// A projection `y = x W^T + b` with HF's `[out, in]` weight layout, optionally with a LoRA
/// adapter added on top of the (then frozen) weight.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

/// A projection's weight `[out, in]`: a tensor in the model's dtype, or NF4 blocks (QLoRA's
/// frozen base, [`CausalLm::quantize_projections`]) dequantized for each product.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Nf4(Arc<Nf4Tensor>),
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Self {
        Weight::Dense(t)
    }
}

impl Weight {
    /// `(out, in)`.
    pub fn dims2(&self) -> CResult<(usize, usize)> {
        match self {
            Weight::Dense(t) => t.dims2(),
            Weight::Nf4(q) => match q.shape() {
                [o, i] => Ok((*o, *i)),
                s => Err(candle_core::Error::Msg(format!("NF4 projection weight of shape {s:?}, expected [out, in]"))),
            },
        }
    }

    /// NF4 blocks of `w` (any dtype or device; read back to the host in f32).
    pub fn nf4(w: &Tensor) -> Result<Self, medrl_nn::quant::QuantError> {
        Ok(Weight::Nf4(Arc::new(Nf4Tensor::quantize_tensor(w)?)))
    }

    /// The values as a dense tensor in `dtype` on `device` (dequantized if NF4).
    pub fn to_dense(&self, dtype: DType, device: &Device) -> CResult<Tensor> {
        match self {
            Weight::Dense(t) => t.to_dtype(dtype)?.to_device(device),
            Weight::Nf4(q) => q.dequantize_tensor(dtype, device),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        if x.rank() == 2 {
            // The decoder keeps activations as [tokens, features]: no reshape nodes, whose
            // gradients autograd would otherwise copy once more in backward.
            return self.forward_2d(x);
        }
        // Fold leading dims into one so the product is a single GEMM.
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("rank >= 1");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = self.forward_2d(&x.reshape((rows, in_dim))?)?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dims2()?.0;
        y.reshape(out_dims)
    }
}

impl Linear {
    fn forward_2d(&self, x: &Tensor) -> CResult<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::Nf4(q) => ops::nf4_matmul(x, q)?,
        };
        let y = match &self.lora {
            Some(l) => (y + l.delta(x)?)?,
            None => y,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3 normalizes each head's queries and keys before RoPE.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
}

impl Block {
    /// The seven projections under their Hugging Face module names, in a fixed order.
    pub fn projections(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj), ("gate_proj", &m.gate_proj), ("up_proj", &m.up_proj), ("down_proj", &m.down_proj)]
    }

    /// [`Block::projections`], mutable.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [("q_proj", &mut a.q_proj), ("k_proj", &mut a.k_proj), ("v_proj", &mut a.v_proj), ("o_proj", &mut a.o_proj), ("gate_proj", &mut m.gate_proj), ("up_proj", &mut m.up_proj), ("down_proj", &mut m.down_proj)]
    }

    /// The same block with `f` applied to every dense tensor (NF4 weights kept); LoRA adapters
    /// go through `f` too when `adapters` is set, else they are kept as they are.
    pub fn map_tensors(&self, f: &dyn Fn(&Tensor) -> CResult<Tensor>, adapters: bool) -> CResult<Block> {
        let lin = |l: &Linear| -> CResult<Linear> {
            Ok(Linear {
                weight: match &l.weight {
                    Weight::Dense(w) => Weight::Dense(f(w)?),
                    q => q.clone(),
                },
                bias: l.bias.as_ref().map(f).transpose()?,
                lora: match &l.lora {
                    Some(a) if adapters => Some(LoraAdapter { a: f(&a.a)?, b: f(&a.b)?, scale: a.scale, dropout_mask: a.dropout_mask.clone() }),
                    other => other.clone(),
                },
            })
        };
        let opt = |t: &Option<Tensor>| t.as_ref().map(f).transpose();
        let (a, m) = (&self.self_attn, &self.mlp);
        Ok(Block {
            input_layernorm: f(&self.input_layernorm)?,
            self_attn: Attention { q_proj: lin(&a.q_proj)?, k_proj: lin(&a.k_proj)?, v_proj: lin(&a.v_proj)?, o_proj: lin(&a.o_proj)?, q_norm: opt(&a.q_norm)?, k_norm: opt(&a.k_norm)? },
            post_attention_layernorm: f(&self.post_attention_layernorm)?,
            mlp: Mlp { gate_proj: lin(&m.gate_proj)?, up_proj: lin(&m.up_proj)?, down_proj: lin(&m.down_proj)? },
        })
    }
}

/// Inverse frequencies of the rotary embedding, with the configured scaling applied.
pub fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    let scaled: Vec<f64> = match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|x| x as f32).collect()
}

/// A causal language model: embeddings, decoder blocks, final norm, LM head.
#[derive(Debug, Clone)]
pub struct CausalLm {
    pub cfg: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    /// `None` when the head is tied to the input embeddings.
    pub lm_head: Option<Tensor>,
    inv_freq: Tensor,
    dtype: DType,
    device: Device,
    /// Set on training views: recompute these layers' activations in backward (see
    /// [`super::checkpoint`]); `None` keeps every activation (and for inference).
    pub checkpointing: Option<Checkpointer>,
}

/// What every decoder layer of one forward shares: batch shape, rotary tables, mask.
#[derive(Debug, Clone)]
pub(crate) struct LayerCtx {
    pub b: usize,
    pub t: usize,
    pub cos: Tensor,
    pub sin: Tensor,
    pub mask: Option<Tensor>,
}

impl CausalLm {
    /// Build the model, pulling every tensor from `src` with its expected shape.
    pub fn from_source(cfg: ModelConfig, src: &mut dyn TensorSource, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let model = Self::load(cfg, src, dtype, device, true)?;
        let unused = src.unused();
        if !unused.is_empty() {
            // A tied checkpoint may still carry lm_head.weight; anything else is suspicious.
            let notable: Vec<_> = unused.iter().filter(|n| n.as_str() != "lm_head.weight").collect();
            if !notable.is_empty() {
                tracing::warn!("{} tensors in the checkpoint were not used, e.g. {:?}", notable.len(), &notable[..notable.len().min(3)]);
            }
        }
        Ok(model)
    }

    /// The decoder body only (embeddings, blocks, final norm), for models with another head on
    /// top (sequence classifiers: `score.weight`). Such a model has no LM head: use
    /// [`CausalLm::forward_hidden`], never [`CausalLm::lm_logits`]. Tensors `src` holds beyond
    /// the body are left for the caller (no unused-tensor warning here).
    pub fn body_from_source(cfg: ModelConfig, src: &mut dyn TensorSource, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        Self::load(cfg, src, dtype, device, false)
    }

    /// [`CausalLm::from_source`] with every decoder projection quantized to NF4 as it is read
    /// (QLoRA's base, see [`CausalLm::quantize_projections`]): each projection passes through
    /// host memory once, in f32, and only its NF4 blocks are kept, so a model larger than the
    /// device (or the host) in its checkpoint dtype loads. The other tensors load in `dtype`.
    pub fn from_source_nf4(cfg: ModelConfig, src: &mut dyn TensorSource, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        Self::load_with(cfg, src, dtype, device, true, true)
    }

    fn load(cfg: ModelConfig, src: &mut dyn TensorSource, dtype: DType, device: &Device, with_lm_head: bool) -> Result<Self, ModelError> {
        Self::load_with(cfg, src, dtype, device, with_lm_head, false)
    }

    fn load_with(cfg: ModelConfig, src: &mut dyn TensorSource, dtype: DType, device: &Device, with_lm_head: bool, nf4: bool) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        let mut get = |name: &str, shape: &[usize], dtype: DType, device: &Device| src.get(name, shape, dtype, device);
        let embed_tokens = get("model.embed_tokens.weight", &[cfg.vocab_size, h], dtype, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear, ModelError> {
                let wname = format!("{p}.{name}.weight");
                let weight = if nf4 {
                    // Once in f32, on the GPU when it can quantize there (the same bits, and only
                    // the codes come back to the host), else through the host; only the NF4
                    // blocks are kept.
                    let at = if medrl_nn::kernels::enabled_on(device, DType::F32) { device } else { &Device::Cpu };
                    let w = get(&wname, &[out, inp], DType::F32, at)?;
                    Weight::nf4(&w).map_err(|e| ModelError::Weights { path: "<NF4 quantization at load>".into(), tensor: wname.clone(), msg: e.to_string() })?
                } else {
                    Weight::Dense(get(&wname, &[out, inp], dtype, device)?)
                };
                let bias = if bias { Some(get(&format!("{p}.{name}.bias"), &[out], dtype, device)?) } else { None };
                Ok(Linear { weight, bias, lora: None })
            };
            let ab = cfg.attention_bias;
            let q_proj = lin("self_attn.q_proj", q_dim, h, ab)?;
            let k_proj = lin("self_attn.k_proj", kv_dim, h, ab)?;
            let v_proj = lin("self_attn.v_proj", kv_dim, h, ab)?;
            // o_proj has no bias in any supported family.
            let o_proj = lin("self_attn.o_proj", h, q_dim, false)?;
            let gate_proj = lin("mlp.gate_proj", cfg.intermediate_size, h, false)?;
            let up_proj = lin("mlp.up_proj", cfg.intermediate_size, h, false)?;
            let down_proj = lin("mlp.down_proj", h, cfg.intermediate_size, false)?;
            let (q_norm, k_norm) = if cfg.arch == Arch::Qwen3 {
                (
                    Some(get(&format!("{p}.self_attn.q_norm.weight"), &[cfg.head_dim], dtype, device)?),
                    Some(get(&format!("{p}.self_attn.k_norm.weight"), &[cfg.head_dim], dtype, device)?),
                )
            } else {
                (None, None)
            };
            layers.push(Block {
                input_layernorm: get(&format!("{p}.input_layernorm.weight"), &[h], dtype, device)?,
                self_attn: Attention { q_proj, k_proj, v_proj, o_proj, q_norm, k_norm },
                post_attention_layernorm: get(&format!("{p}.post_attention_layernorm.weight"), &[h], dtype, device)?,
                mlp: Mlp { gate_proj, up_proj, down_proj },
            });
        }
        let norm = get("model.norm.weight", &[h], dtype, device)?;
        let lm_head = if cfg.tie_word_embeddings || !with_lm_head {
            None
        } else {
            Some(get("lm_head.weight", &[cfg.vocab_size, h], dtype, device)?)
        };
        let inv_freq = Tensor::new(rope_inv_freq(&cfg), device).map_err(ModelError::from_candle("rope"))?;
        Ok(Self { cfg, embed_tokens, layers, norm, lm_head, inv_freq, dtype, device: device.clone(), checkpointing: None })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The same model (adapters, quantized weights and checkpointing kept) with `f` applied to
    /// every dense tensor: casts, device moves, detaching. `dtype` is the result's compute dtype.
    pub fn map_tensors(&self, dtype: DType, f: &dyn Fn(&Tensor) -> CResult<Tensor>) -> CResult<CausalLm> {
        let layers = self.layers.iter().map(|b| b.map_tensors(f, false)).collect::<CResult<Vec<_>>>()?;
        Ok(CausalLm {
            cfg: self.cfg.clone(),
            embed_tokens: f(&self.embed_tokens)?,
            layers,
            norm: f(&self.norm)?,
            lm_head: self.lm_head.as_ref().map(f).transpose()?,
            inv_freq: self.inv_freq.clone(),
            dtype,
            device: self.device.clone(),
            checkpointing: self.checkpointing.clone(),
        })
    }

    /// QLoRA's base: every decoder projection's weight replaced by its NF4 blocks (with double
    /// quantization, as bitsandbytes stores them), quantized from `source`'s weights (the same
    /// model, e.g. in f32 while `self` holds the compute dtype). Embeddings, norms, biases and
    /// the LM head stay dense, as in bitsandbytes' 4-bit models. Memory of a projection drops
    /// from 2 bytes (bf16) per value to about 0.52.
    pub fn quantize_projections(&mut self, source: &CausalLm) -> CResult<()> {
        for (l, s) in self.layers.iter_mut().zip(&source.layers) {
            for ((_, dst), (_, src)) in l.projections_mut().into_iter().zip(s.projections()) {
                dst.weight = match &src.weight {
                    // Quantized at load (from_source_nf4).
                    Weight::Nf4(done) => Weight::Nf4(done.clone()),
                    Weight::Dense(w) => Weight::nf4(w).map_err(|e| candle_core::Error::Msg(format!("NF4 quantization: {e}")))?,
                };
            }
        }
        Ok(())
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every parameter under its Hugging Face name, in a stable order. NF4-quantized projection
    /// weights are not tensors of the model and are left out (see [`CausalLm::map_tensors`]).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, lin: &Linear| {
                if let Weight::Dense(w) = &lin.weight {
                    out.push((format!("{p}.{name}.weight"), w.clone()));
                }
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.{name}.bias"), b.clone()));
                }
            };
            lin("self_attn.q_proj", &l.self_attn.q_proj);
            lin("self_attn.k_proj", &l.self_attn.k_proj);
            lin("self_attn.v_proj", &l.self_attn.v_proj);
            lin("self_attn.o_proj", &l.self_attn.o_proj);
            lin("mlp.gate_proj", &l.mlp.gate_proj);
            lin("mlp.up_proj", &l.mlp.up_proj);
            lin("mlp.down_proj", &l.mlp.down_proj);
            if let Some(n) = &l.self_attn.q_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), n.clone()));
            }
            if let Some(n) = &l.self_attn.k_norm {
                out.push((format!("{p}.self_attn.k_norm.weight"), n.clone()));
            }
            out.push((format!("{p}.input_layernorm.weight"), l.input_layernorm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.post_attention_layernorm.clone()));
        }
        out.push(("model.norm.weight".into(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h.clone()));
        }
        out
    }

    /// cos/sin tables `[B, 1, T, D/2]` for the given positions `[B, T]`.
    pub(crate) fn rope_tables(&self, positions: &Tensor) -> CResult<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // [B,T,1]
        let freqs = pos.broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?; // [B,T,D/2]
        let freqs = freqs.unsqueeze(1)?;
        Ok((freqs.cos()?, freqs.sin()?))
    }

    /// Final hidden states `[B, T, H]` (after the last norm).
    ///
    /// * `input_ids`: `[B, T]` u32.
    /// * `positions`: `[B, T]` u32 absolute positions (left padding shifts them per sequence).
    /// * `mask`: additive attention mask broadcastable to `[B, 1, T, S]`, where `S` is the cached
    ///   length plus `T`; `None` means no masking at all (a single new token with no padding).
    /// * `cache`: key/value cache, appended to in place.
    pub fn forward_hidden(&self, input_ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> CResult<Tensor> {
        let (b, t) = input_ids.dims2()?;
        self.forward_hidden_rows(input_ids, positions, mask, cache)?.reshape((b, t, self.cfg.hidden_size))
    }

    /// [`Self::forward_hidden`] as `[B * T, H]` rows, the layout the decoder computes in.
    fn forward_hidden_rows(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> CResult<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let ids = input_ids.flatten_all()?;
        let x = ops::embedding(&self.embed_tokens, &ids)?;
        let (cos, sin) = self.rope_tables(positions)?;
        let mask = match mask {
            Some(m) => Some(m.to_dtype(DType::F32)?),
            None => None,
        };
        let ctx = LayerCtx { b, t, cos, sin, mask };
        if let (Some(ckpt), None) = (&self.checkpointing, &cache) {
            // Training with activation checkpointing: see [`super::checkpoint`].
            return self.forward_checkpointed(ids, x, ctx, ckpt);
        }
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(i, layer, x, &ctx, cache.as_deref_mut())?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)
    }

    /// Decoder layer `i` (weights `layer`) on rows `x` `[B * T, H]`. Training, evaluation and
    /// activation checkpointing's recomputation all run this one function, so a recomputed
    /// layer is the same computation as the first one.
    pub(crate) fn layer_forward(&self, i: usize, layer: &Block, x: Tensor, ctx: &LayerCtx, cache: Option<&mut KvCache>) -> CResult<Tensor> {
        let cfg = &self.cfg;
        let (b, t) = (ctx.b, ctx.t);
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let residual = x.clone();
        let hs = ops::rms_norm(&x, &layer.input_layernorm, cfg.rms_norm_eps)?;
        let a = &layer.self_attn;
        let heads = |lin: &Linear, n: usize, norm: &Option<Tensor>| -> CResult<Tensor> {
            let y = lin.forward(&hs)?.reshape((b, t, n, hd))?;
            let y = match norm {
                Some(w) => ops::rms_norm(&y, w, cfg.rms_norm_eps)?,
                None => y,
            };
            y.transpose(1, 2)?.contiguous()
        };
        let q = ops::rope(&heads(&a.q_proj, nh, &a.q_norm)?, &ctx.cos, &ctx.sin)?;
        let k = ops::rope(&heads(&a.k_proj, nkv, &a.k_norm)?, &ctx.cos, &ctx.sin)?;
        let v = heads(&a.v_proj, nkv, &None)?;
        let (k, v) = match cache {
            Some(c) => c.append(i, &k, &v)?,
            None => (k, v),
        };
        let o = ops::attention(&q, &k, &v, ctx.mask.as_ref())?;
        let o = o.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        let x = (residual + a.o_proj.forward(&o)?)?;
        let residual = x.clone();
        let hs = ops::rms_norm(&x, &layer.post_attention_layernorm, cfg.rms_norm_eps)?;
        let m = &layer.mlp;
        let act = ops::swiglu(&m.gate_proj.forward(&hs)?, &m.up_proj.forward(&hs)?)?;
        residual + m.down_proj.forward(&act)?
    }

    /// Project hidden states to vocabulary logits, in f32.
    pub fn lm_logits(&self, hidden: &Tensor) -> CResult<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        Linear { weight: head.clone().into(), bias: None, lora: None }.forward(hidden)?.to_dtype(DType::F32)
    }

    /// Logits `[B, T, V]` (f32) for a full forward without cache.
    /// Log-probabilities `[B, T]` (f32) of `targets` `[B, T]` at each position, without
    /// materializing the `[B, T, V]` logits (see [`ops::head_logprobs`]): what training losses
    /// need, at a fraction of the memory of [`Self::forward`] for large vocabularies.
    pub fn target_logprobs(&self, input_ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, targets: &Tensor) -> CResult<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.forward_hidden_rows(input_ids, positions, mask, None)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        // Chunks of ~2^27 logits (512 MB in f32) bound the transient memory of the head. The
        // fused kernels keep no f32 copies: their chunks hold up to 2 GiB of logits (and as
        // much of their gradient), which for 8k tokens of a 152k vocabulary is one chunk, so
        // the head's weight gradient is one GEMM with no accumulation.
        let budget = if medrl_nn::kernels::enabled(&h) { (2usize << 30) / h.dtype().size_in_bytes() } else { 1usize << 27 };
        let rows = (budget / self.cfg.vocab_size.max(1)).max(1);
        ops::head_logprobs(&h, head, &targets.flatten_all()?, rows)?.reshape((b, t))
    }

    pub fn forward(&self, input_ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>) -> CResult<Tensor> {
        let h = self.forward_hidden(input_ids, positions, mask, None)?;
        self.lm_logits(&h)
    }

    /// Convenience: logits of unpadded sequences of equal length, with a causal mask.
    pub fn forward_causal(&self, input_ids: &Tensor) -> CResult<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, &self.device)?.unsqueeze(0)?.repeat((b, 1))?;
        let mask = build_attention_mask(&vec![vec![true; t]; b], 0, t, &self.device)?;
        self.forward(input_ids, &positions, Some(&mask))
    }
}

/// Where the inference forward ([`CausalLm::forward_tokens`]) keeps keys and values and how it
/// attends: the model computes projections, norms and rotary embeddings of a step's new tokens,
/// the backend stores their keys and values and attends over each sequence's history (the
/// rollout engine's paged cache implements it).
pub trait AttentionBackend {
    /// `q`: `[N, heads, head_dim]`, `k`/`v`: `[N, kv_heads, head_dim]`, the step's `N` new
    /// tokens after RoPE; returns the attention output `[N, heads * head_dim]`.
    fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> CResult<Tensor>;
}

impl CausalLm {
    /// Final hidden states `[N, H]` of a flat batch of `N` tokens (`ids`, `positions`: `[N]`
    /// u32) from any number of sequences, attention delegated to `attn`. Inference only: this
    /// is the engine's forward, kept apart from the training forward so neither constrains the
    /// other's layout. Rows stay `[tokens, features]` throughout; RoPE sees each token as a
    /// batch of one position (`[N, heads, 1, head_dim]`), so no transposes are needed.
    pub fn forward_tokens(&self, ids: &Tensor, positions: &Tensor, attn: &mut dyn AttentionBackend) -> CResult<Tensor> {
        let n = ids.dim(0)?;
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        // candle's fused norm with the weight folded in: one kernel where the differentiable
        // version takes three (no gradient is needed here).
        let eps = cfg.rms_norm_eps as f32;
        let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(&x.contiguous()?, w, eps);
        let mut x = self.embed_tokens.index_select(ids, 0)?;
        let (cos, sin) = self.rope_tables(&positions.reshape((n, 1))?)?; // [N, 1, 1, D/2]
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let hs = norm(&x, &layer.input_layernorm)?;
            let a = &layer.self_attn;
            let heads = |lin: &Linear, h: usize, qk_norm: &Option<Tensor>, rope: bool| -> CResult<Tensor> {
                let y = lin.forward(&hs)?.reshape((n, h, hd))?;
                let y = match qk_norm {
                    Some(w) => norm(&y, w)?,
                    None => y,
                };
                if rope {
                    ops::rope(&y.reshape((n, h, 1, hd))?, &cos, &sin)?.reshape((n, h, hd))
                } else {
                    Ok(y)
                }
            };
            let q = heads(&a.q_proj, nh, &a.q_norm, true)?;
            let k = heads(&a.k_proj, nkv, &a.k_norm, true)?;
            let v = heads(&a.v_proj, nkv, &None, false)?;
            let o = attn.attend(i, &q, &k, &v)?;
            x = (residual + a.o_proj.forward(&o)?)?;
            let residual = x.clone();
            let hs = norm(&x, &layer.post_attention_layernorm)?;
            let m = &layer.mlp;
            let act = ops::swiglu(&m.gate_proj.forward(&hs)?, &m.up_proj.forward(&hs)?)?;
            x = (residual + m.down_proj.forward(&act)?)?;
        }
        norm(&x, &self.norm)
    }
}

pub use medrl_nn::MASK_VALUE;

/// Additive mask `[B, 1, T, past + T]` for `T` new tokens after `past` cached ones.
///
/// `valid[b][s]` says whether key position `s` of sequence `b` is a real token (false for
/// padding); it must cover `past + T` positions. Query `t` sits at absolute slot `past + t` and
/// may attend to valid slots `<= past + t`.
pub fn build_attention_mask(valid: &[Vec<bool>], past: usize, t: usize, device: &Device) -> CResult<Tensor> {
    let b = valid.len();
    let s = past + t;
    let mut m = vec![0f32; b * t * s];
    for (bi, v) in valid.iter().enumerate() {
        for ti in 0..t {
            let row = &mut m[(bi * t + ti) * s..(bi * t + ti + 1) * s];
            for (si, slot) in row.iter_mut().enumerate() {
                let allowed = si <= past + ti && v.get(si).copied().unwrap_or(false);
                if !allowed {
                    *slot = MASK_VALUE;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, s), device)
}
