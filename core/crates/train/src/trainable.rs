//! What a training run updates: f32 master weights as `Var`s, and the model built from them.
//!
//! Full fine-tuning makes every model tensor a master `Var`; LoRA keeps the base frozen in the
//! compute dtype and makes only the adapters (and optionally the embeddings / LM head, PEFT's
//! `modules_to_save`) trainable. Each step builds a *view*: a [`CausalLm`] whose tensors are the
//! masters cast to the compute dtype. The cast is differentiable, so gradients land on the f32
//! masters, and the optimizer never touches bf16 copies.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::TrainError;
use medrl_lm::model::lora::LoraAdapter;
use medrl_lm::model::{ActivationCheckpointing, CausalLm, LayerBackward, Linear, MapSource};

/// The projections LoRA can target, by their HF module names.
pub const LORA_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`q_proj`, ..., `down_proj`) or `all-linear`.
    pub target_modules: Vec<String>,
    /// Extra fully trained modules: `embed_tokens` and/or `lm_head` (PEFT's modules_to_save).
    pub modules_to_save: Vec<String>,
    /// `nf4`: QLoRA. The frozen base's decoder projections are held as NF4 blocks with double
    /// quantization (bitsandbytes' `load_in_4bit` with `bnb_4bit_quant_type: nf4`,
    /// `bnb_4bit_use_double_quant: true`), about 0.52 bytes per weight instead of 2 (bf16), and
    /// dequantized for each product (one extra pass over each weight per forward and per
    /// backward). `none` (default): the base stays in the compute dtype.
    #[serde(skip_serializing_if = "BaseQuant::is_none")]
    pub quantize: BaseQuant,
}

/// How a LoRA run holds its frozen base weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BaseQuant {
    #[default]
    None,
    Nf4,
}

impl BaseQuant {
    pub fn is_none(&self) -> bool {
        *self == BaseQuant::None
    }
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, dropout: 0.05, target_modules: vec!["all-linear".into()], modules_to_save: vec![], quantize: BaseQuant::None }
    }
}

/// A `target_modules` list that names no module medrl can adapt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraTargetError {
    #[error("unknown LoRA target {0:?}; expected one of {LORA_MODULES:?} or \"all-linear\"")]
    Unknown(String),
    #[error("no LoRA target modules")]
    Empty,
}

impl LoraConfig {
    /// Resolved module names, validated.
    pub fn targets(&self) -> Result<Vec<String>, LoraTargetError> {
        let mut out = Vec::new();
        for m in &self.target_modules {
            if m == "all-linear" {
                out.extend(LORA_MODULES.iter().map(|s| s.to_string()));
            } else if LORA_MODULES.contains(&m.as_str()) {
                out.push(m.clone());
            } else {
                return Err(LoraTargetError::Unknown(m.clone()));
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(LoraTargetError::Empty);
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.rank == 0 {
            return Err(("rank".into(), "must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("dropout".into(), "must be in [0, 1)".into()));
        }
        self.targets().map_err(|e| ("target_modules".into(), e.to_string()))?;
        for m in &self.modules_to_save {
            if m != "embed_tokens" && m != "lm_head" {
                return Err(("modules_to_save".into(), format!("{m:?}: only embed_tokens and lm_head are supported")));
            }
        }
        Ok(())
    }
}

/// The dtype a run loads its model in, and whether the decoder projections are quantized as they
/// are read. Full fine-tuning, and LoRA with `modules_to_save`, load in the masters' dtype
/// (`master`: f32, or bf16 under `training.optimizer.master_weights: bf16`). Plain
/// LoRA only reads the frozen base, so it loads straight in the compute dtype (no f32 copy of
/// the model, the same values: a cast of the f32 load rounds as a direct load does); QLoRA also
/// quantizes each projection as it is read, so the dense model is never in memory at once.
pub fn load_plan(lora: Option<&LoraConfig>, compute: DType, master: DType) -> (DType, bool) {
    match lora {
        Some(l) if l.modules_to_save.is_empty() => (compute, l.quantize == BaseQuant::Nf4),
        _ => (master, false),
    }
}

/// The internal name of an adapter tensor: `model.layers.3.self_attn.q_proj.lora_A.weight`
/// (PEFT's file prefixes this with `base_model.model.`).
pub fn lora_name(layer: usize, module: &str, ab: char) -> String {
    let group = if module.ends_with("_proj") && ["gate_proj", "up_proj", "down_proj"].contains(&module) { "mlp" } else { "self_attn" };
    format!("model.layers.{layer}.{group}.{module}.lora_{ab}.weight")
}

fn linear_ref<'a>(m: &'a CausalLm, layer: usize, module: &str) -> &'a Linear {
    m.layers[layer].projections().into_iter().find(|(n, _)| *n == module).map(|(_, l)| l).unwrap_or_else(|| unreachable!("validated LoRA module {module}"))
}

fn linear_mut<'a>(m: &'a mut CausalLm, layer: usize, module: &str) -> &'a mut Linear {
    m.layers[layer].projections_mut().into_iter().find(|(n, _)| *n == module).map(|(_, l)| l).unwrap_or_else(|| unreachable!("validated LoRA module {module}"))
}

pub enum Mode {
    Full,
    Lora { cfg: LoraConfig, targets: Vec<String> },
}

pub struct Trainable {
    /// Full: a template for the view's structure. LoRA: the frozen base in the compute dtype.
    base: CausalLm,
    /// Trainable f32 masters by name (model names for full / modules_to_save, adapter names for LoRA).
    params: Vec<(String, Var)>,
    pub mode: Mode,
    pub compute_dtype: DType,
    /// Which layers tracked views recompute in backward (see [`Trainable::backward`]).
    pub checkpointing: ActivationCheckpointing,
    /// How tracked views compute the decoder layers' gradients.
    pub layer_backward: LayerBackward,
}

impl Trainable {
    /// `model` provides the masters: f32 for full fine-tuning and `modules_to_save`; plain LoRA
    /// takes it in any dtype, NF4 projections included ([`load_plan`]). The view computes in
    /// `compute_dtype`.
    pub fn new(model: CausalLm, mode: Mode, compute_dtype: DType, seed: u64) -> Result<Self, TrainError> {
        Self::with_masters(model, mode, compute_dtype, seed, DType::F32)
    }

    /// [`Trainable::new`] with the full-model masters (and `modules_to_save`) in `master`: f32,
    /// or bf16 for stochastically rounded updates (`training.optimizer.master_weights`). LoRA
    /// adapters stay f32.
    pub fn with_masters(model: CausalLm, mode: Mode, compute_dtype: DType, seed: u64, master: DType) -> Result<Self, TrainError> {
        if !matches!(master, DType::F32 | DType::BF16) {
            return Err(TrainError::Param { name: "<masters>".into(), msg: format!("master weights must be f32 or bf16, not {master:?}") });
        }
        let device = model.device().clone();
        let mut params = Vec::new();
        match &mode {
            Mode::Full => {
                for (name, t) in model.named_tensors() {
                    params.push((name, Var::from_tensor(&t.to_dtype(master)?)?));
                }
            }
            Mode::Lora { cfg, targets } => {
                let mut k = 0u64;
                for layer in 0..model.layers.len() {
                    for module in targets {
                        let (out_dim, in_dim) = linear_ref(&model, layer, module).weight.dims2()?;
                        // A distinct, reproducible stream per adapter.
                        k += 1;
                        let init = LoraAdapter::init(in_dim, out_dim, cfg.rank, cfg.alpha, seed.wrapping_add(k), &device)?;
                        params.push((lora_name(layer, module, 'A'), Var::from_tensor(&init.a)?));
                        params.push((lora_name(layer, module, 'B'), Var::from_tensor(&init.b)?));
                    }
                }
                for m in &cfg.modules_to_save {
                    let name = if m == "embed_tokens" { "model.embed_tokens.weight" } else { "lm_head.weight" };
                    let t = if m == "lm_head" { model.lm_head.clone().unwrap_or_else(|| model.embed_tokens.clone()) } else { model.embed_tokens.clone() };
                    params.push((name.to_string(), Var::from_tensor(&t.to_dtype(master)?)?));
                }
            }
        }
        let base = match &mode {
            // A template that shares the masters' storage: keeping the loaded tensors as well
            // would hold a second copy of the whole model for nothing.
            Mode::Full => {
                let (cfg, head) = (model.cfg.clone(), model.lm_head.is_some() || model.cfg.tie_word_embeddings);
                drop(model);
                let tensors = params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
                let mut src = MapSource::new(tensors, "<masters>");
                let built = if head { CausalLm::from_source(cfg, &mut src, master, &device) } else { CausalLm::body_from_source(cfg, &mut src, master, &device) };
                built.map_err(|e| TrainError::Param { name: "<masters>".into(), msg: e.to_string() })?
            }
            Mode::Lora { cfg, .. } => {
                let mut base = cast_model(&model, compute_dtype)?;
                if cfg.quantize == BaseQuant::Nf4 {
                    base.quantize_projections(&model)?;
                }
                base
            }
        };
        Ok(Self { base, params, mode, compute_dtype, checkpointing: ActivationCheckpointing::Off, layer_backward: LayerBackward::Auto })
    }

    pub fn device(&self) -> &Device {
        self.base.device()
    }

    /// LoRA: the frozen base model without adapters, sharing the base's tensors (no copy), in
    /// the compute dtype and with the original embeddings and head (modules_to_save train
    /// copies). What the model was before training: the KL reference. `None` for full
    /// fine-tuning, whose weights all move.
    pub fn frozen_base(&self) -> Option<CausalLm> {
        match self.mode {
            Mode::Lora { .. } => Some(self.base.clone()),
            Mode::Full => None,
        }
    }

    /// The model's architecture (as loaded; LoRA views may untie the head).
    pub fn config(&self) -> &medrl_lm::model::ModelConfig {
        &self.base.cfg
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn num_trainable(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The model to run forward. `detach` builds it without gradient tracking (evaluation).
    /// `dropout_rows`: for LoRA with dropout, the number of rows of the coming forward
    /// (batch * seq) and an RNG to draw the masks from.
    pub fn view(&self, detach: bool, dropout: Option<(usize, &mut rand_chacha::ChaCha8Rng)>) -> Result<CausalLm, TrainError> {
        let tensors = self.params.iter().map(|(n, v)| Ok((n.clone(), self.view_tensor(n, v, detach)?))).collect::<Result<HashMap<_, _>, TrainError>>()?;
        let mut m = self.assemble(tensors, detach, dropout)?;
        if !detach {
            m.checkpointing = self.checkpointing.checkpointer(self.layer_backward, self.device());
        }
        Ok(m)
    }

    /// `loss.backward()` for a loss computed through `view` (a tracked [`Trainable::view`]),
    /// with the checkpointed layers' share of the gradients added (see
    /// [`CausalLm::backward_recomputed`]). Use this, not `loss.backward()`, in training steps.
    pub fn backward(&self, loss: &Tensor, view: &CausalLm) -> Result<GradStore, TrainError> {
        let mut grads = loss.backward()?;
        self.finish_backward(view, &mut grads)?;
        Ok(grads)
    }

    /// The checkpointed layers' backward for `view` into `grads` (one `loss.backward()` through
    /// several trainables' views: call it for each).
    pub fn finish_backward(&self, view: &CausalLm, grads: &mut GradStore) -> Result<(), TrainError> {
        if view.checkpointing.is_some() {
            let leaves: Vec<(String, Tensor)> = self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            view.backward_recomputed(grads, &leaves)?;
        }
        Ok(())
    }

    /// A deep copy of the tensors a detached [`Trainable::view`] holds (compute dtype; LoRA
    /// adapters in f32), so that later optimizer steps do not change it: the behavior policy
    /// of an asynchronous rollout. Costs one copy of the trainable weights in the compute dtype
    /// (full fine-tuning: the whole model; LoRA: the adapters).
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::new();
        for (n, v) in &self.params {
            let t = self.view_tensor(n, v, true)?;
            // `to_dtype` to the same dtype shares the master's storage, which the optimizer
            // overwrites in place.
            let t = if t.dtype() == v.dtype() { t.copy()? } else { t };
            out.insert(n.clone(), t);
        }
        Ok(out)
    }

    /// A detached model on the weights of a [`Trainable::snapshot`] (the frozen LoRA base is
    /// shared). Every trainable tensor must be present with its shape; the dtype is the view's.
    pub fn view_of(&self, snapshot: &HashMap<String, Tensor>) -> Result<CausalLm, TrainError> {
        let mut tensors = HashMap::new();
        for (name, var) in &self.params {
            let t = snapshot.get(name).ok_or_else(|| TrainError::Param { name: name.clone(), msg: "missing from the behavior-policy snapshot".into() })?;
            if t.dims() != var.dims() {
                return Err(TrainError::Param { name: name.clone(), msg: format!("snapshot shape {:?} != {:?}", t.dims(), var.dims()) });
            }
            tensors.insert(name.clone(), t.to_dtype(self.view_dtype(name))?.to_device(var.device())?);
        }
        self.assemble(tensors, true, None)
    }

    /// The dtype the view holds trainable `name` in: the compute dtype, except LoRA adapters,
    /// which stay f32.
    fn view_dtype(&self, name: &str) -> DType {
        let adapter = matches!(self.mode, Mode::Lora { .. }) && name != "model.embed_tokens.weight" && name != "lm_head.weight";
        if adapter {
            DType::F32
        } else {
            self.compute_dtype
        }
    }

    /// What the view holds for trainable `name` (see [`Trainable::view_dtype`]).
    fn view_tensor(&self, name: &str, v: &Var, detach: bool) -> Result<Tensor, TrainError> {
        let t = if detach { v.as_tensor().detach() } else { v.as_tensor().clone() };
        Ok(t.to_dtype(self.view_dtype(name))?)
    }

    /// The model from the view tensors of every trainable (see [`Trainable::view_tensor`]).
    fn assemble(&self, mut tensors: HashMap<String, Tensor>, detach: bool, dropout: Option<(usize, &mut rand_chacha::ChaCha8Rng)>) -> Result<CausalLm, TrainError> {
        match &self.mode {
            Mode::Full => {
                let mut src = MapSource::new(tensors, "<trainer>");
                CausalLm::from_source(self.base.cfg.clone(), &mut src, self.compute_dtype, self.device())
                    .map_err(|e| TrainError::Param { name: "<view>".into(), msg: e.to_string() })
            }
            Mode::Lora { cfg, targets } => {
                let mut m = self.base.clone();
                let mut dropout = dropout.filter(|_| cfg.dropout > 0.0 && !detach);
                for layer in 0..m.layers.len() {
                    for module in targets {
                        let a = tensors.remove(&lora_name(layer, module, 'A')).expect("every adapter has a view tensor");
                        let b = tensors.remove(&lora_name(layer, module, 'B')).expect("every adapter has a view tensor");
                        let lin = linear_mut(&mut m, layer, module);
                        let in_dim = lin.weight.dims2()?.1;
                        let dropout_mask = match dropout.as_mut() {
                            Some((rows, rng)) => Some(dropout_mask(*rows, in_dim, cfg.dropout, rng, self.device())?),
                            None => None,
                        };
                        lin.lora = Some(LoraAdapter { a, b, scale: cfg.alpha / cfg.rank as f64, dropout_mask });
                    }
                }
                if let Some(t) = tensors.remove("model.embed_tokens.weight") {
                    m.embed_tokens = t;
                }
                if let Some(t) = tensors.remove("lm_head.weight") {
                    if m.lm_head.is_none() {
                        // A tied head trained as its own module is untied, as PEFT does for
                        // modules_to_save.
                        m.cfg.tie_word_embeddings = false;
                    }
                    m.lm_head = Some(t);
                }
                Ok(m)
            }
        }
    }

    /// Trainable tensors by name (f32 masters), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Restore masters from a checkpoint; every trainable tensor must be present with its shape.
    pub fn load_state(&self, state: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        for (name, var) in &self.params {
            let t = state.get(name).ok_or_else(|| TrainError::Param { name: name.clone(), msg: "missing from the checkpoint".into() })?;
            if t.dims() != var.dims() {
                return Err(TrainError::Param { name: name.clone(), msg: format!("checkpoint shape {:?} != {:?}", t.dims(), var.dims()) });
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// A copy of `m` with every dense tensor in `dtype` (LoRA adapters and NF4 weights as they are).
pub fn cast_model(m: &CausalLm, dtype: DType) -> Result<CausalLm, TrainError> {
    Ok(m.map_tensors(dtype, &|t| t.to_dtype(dtype))?)
}

/// Inverted dropout mask `[rows, cols]`: 0 with probability `p`, else `1/(1-p)`. On CPU it is
/// drawn from the run's RNG so runs are reproducible and resumable; on CUDA it is drawn on the
/// device (the host would be the bottleneck), which is not bit-reproducible across resumes.
fn dropout_mask(rows: usize, cols: usize, p: f64, rng: &mut rand_chacha::ChaCha8Rng, device: &Device) -> Result<Tensor, TrainError> {
    let keep = (1.0 / (1.0 - p)) as f32;
    if device.is_cuda() {
        let u = Tensor::rand(0f32, 1f32, (rows, cols), device)?;
        return Ok((u.ge(p as f32)?.to_dtype(DType::F32)? * keep as f64)?);
    }
    let v: Vec<f32> = (0..rows * cols).map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep }).collect();
    Ok(Tensor::from_vec(v, (rows, cols), device)?)
}
