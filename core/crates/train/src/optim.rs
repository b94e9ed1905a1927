//! AdamW with f32 master weights, decoupled weight decay that skips norms and biases, and
//! gradient clipping by global norm; optionally lean (`state: int8`, `master_weights: bf16`,
//! see [`crate::lean_adamw`]).
//!
//! candle-nn's AdamW keeps its moments in the parameter's dtype, has no clipping and no
//! parameter groups; this one keeps every parameter's master copy and both moments in f32
//! whatever dtype the forward pass computes in (the model casts master weights to bf16 inside
//! its forward on CUDA; `to_dtype` has a backward rule, so gradients arrive at the master).
//! A step whose gradient norm is not finite is refused before any parameter is touched.

use candle_core::{backprop::GradStore, DType, Tensor, Var, D};
#[cfg(feature = "cuda")]
use candle_core::Device;
#[cfg(feature = "cuda")]
use medrl_nn::quant::{dynamic_map, dynamic_map_unsigned};
use std::collections::HashMap;

use super::TrainError;
use crate::lean_adamw::{self, Moment};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub max_grad_norm: f64,
    /// The moments' storage: `f32` (8 bytes per trained value), or `int8`, blockwise 8-bit
    /// as bitsandbytes' 8-bit AdamW (about 2 bytes; parameters under 4,096 values stay f32).
    pub state: StateDtype,
    /// The trained weights' dtype under full fine-tuning (and `modules_to_save`): `f32` (4 bytes
    /// per value, plus the forward's bf16 copy) or `bf16` with stochastic rounding (2 bytes, the
    /// forward reads them directly). LoRA adapters stay f32 either way (they are small).
    pub master_weights: MasterDtype,
}

/// Storage of AdamW's two moments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateDtype {
    #[default]
    F32,
    Int8,
}

/// Dtype of the master weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MasterDtype {
    #[default]
    F32,
    Bf16,
}

impl MasterDtype {
    pub fn dtype(self) -> DType {
        match self {
            MasterDtype::F32 => DType::F32,
            MasterDtype::Bf16 => DType::BF16,
        }
    }
}

impl AdamWConfig {
    /// Ranges under which an update stays finite: with beta1 = 1 the bias correction divides by
    /// zero and every weight becomes NaN after the first step; a negative eps or decay flips
    /// the update. Returns `(key, message)` with the key relative to this struct.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err((key.into(), format!("{v} is out of range: must be in [0, 1)")));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(("eps".into(), format!("{} is out of range: must be a positive number", self.eps)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(("weight_decay".into(), format!("{} is out of range: must be >= 0", self.weight_decay)));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err(("max_grad_norm".into(), format!("{} is out of range: must be > 0, or 0 to turn clipping off", self.max_grad_norm)));
        }
        Ok(())
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0, state: StateDtype::F32, master_weights: MasterDtype::F32 }
    }
}

/// Whether a parameter gets weight decay: matrices yes; norms, biases (any 1-D tensor) no.
pub fn decays(name: &str, rank: usize) -> bool {
    rank >= 2 && !name.ends_with("norm.weight") && !name.ends_with(".bias")
}

struct Slot {
    name: String,
    var: Var,
    m: Moment,
    v: Moment,
    decay: bool,
}

/// What one optimizer step saw.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were multiplied by (1 when not clipped).
    pub clip_scale: f64,
    pub lr: f64,
}

pub struct AdamW {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    step: u64,
    /// Use the one-kernel CUDA update where it applies (`MEDRL_FUSED_ADAMW=0` turns it off).
    fused: bool,
    /// Seeds the stochastic rounding of bf16 masters.
    seed: u64,
    /// The signed and unsigned dynamic maps on the parameters' CUDA device (8-bit kernel).
    #[cfg(feature = "cuda")]
    maps: Option<(Tensor, Tensor)>,
}

impl AdamW {
    /// `params` are the master weights: f32, or bf16 (stochastically rounded updates). Each
    /// takes 8-bit moments when `cfg.state` is int8 and it has at least
    /// [`lean_adamw::MIN_8BIT_SIZE`] values.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self, TrainError> {
        let mut slots = Vec::with_capacity(params.len());
        for (name, var) in params {
            if !matches!(var.dtype(), DType::F32 | DType::BF16) {
                return Err(TrainError::Param { name, msg: format!("master weights must be f32 or bf16, found {:?}", var.dtype()) });
            }
            let int8 = cfg.state == StateDtype::Int8 && lean_adamw::takes_8bit_moments(&name, var.elem_count());
            let m = Moment::zeros(var.dims(), int8, var.device())?;
            let v = Moment::zeros(var.dims(), int8, var.device())?;
            let decay = decays(&name, var.rank());
            slots.push(Slot { name, var, m, v, decay });
        }
        let fused = std::env::var("MEDRL_FUSED_ADAMW").map_or(true, |v| v != "0");
        Ok(Self {
            slots,
            cfg,
            step: 0,
            fused,
            seed: 0,
            #[cfg(feature = "cuda")]
            maps: None,
        })
    }

    /// Seed of the stochastic rounding (the run's seed, so a rerun rounds the same way).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Log what the optimizer holds, and say so when `master_weights: bf16` cannot apply (LoRA
    /// adapters stay f32, so a user expecting the saving does not silently miss it).
    pub fn log_setup(&self, what: &str) {
        let bf16 = self.slots.iter().filter(|s| s.var.dtype() == DType::BF16).count();
        let int8 = self.slots.iter().filter(|s| s.m.is_int8()).count();
        if self.cfg.master_weights == MasterDtype::Bf16 && bf16 == 0 {
            tracing::warn!("{what}: training.optimizer.master_weights is bf16 but every trained tensor is an f32 LoRA adapter; the setting saves nothing here");
        }
        tracing::info!(parameters = self.slots.len(), bf16_masters = bf16, int8_moments = int8, state_mb = self.state_bytes() as f64 / (1 << 20) as f64, "{what}: optimizer ready");
    }

    /// Device bytes held by the moments (the optimizer's state; masters not included).
    pub fn state_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.m.bytes() + s.v.bytes()).sum()
    }

    /// Choose the fused CUDA update (default) or the tensor-op one (for comparisons).
    pub fn with_fused(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Global L2 norm of the gradients of all parameters (missing gradients count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64, TrainError> {
        // One device-to-host read for all parameters: a read per parameter would stall the
        // device queue hundreds of times per step.
        let sums: Vec<Tensor> = self
            .slots
            .iter()
            .filter_map(|s| grads.get(s.var.as_tensor()))
            .map(|g| {
                let sq = g.to_dtype(DType::F32)?.sqr()?;
                // Reduce the last axis first: a whole-tensor sum runs in one GPU thread block,
                // which for a [vocab, hidden] gradient took milliseconds.
                if sq.rank() >= 2 { sq.sum(D::Minus1)?.sum_all() } else { sq.sum_all() }
            })
            .collect::<candle_core::Result<_>>()?;
        if sums.is_empty() {
            return Ok(0.0);
        }
        let sq: f64 = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?.iter().map(|&x| x as f64).sum();
        Ok(sq.sqrt())
    }

    /// Apply one update with learning rate `lr`. Parameters without a gradient are skipped
    /// (frozen base weights under LoRA, for instance).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepStats, TrainError> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            let bad: Vec<&str> = self
                .slots
                .iter()
                .filter(|s| {
                    grads.get(s.var.as_tensor()).is_some_and(|g| {
                        g.sqr().and_then(|x| x.sum_all()).and_then(|x| x.to_dtype(DType::F32)).and_then(|x| x.to_scalar::<f32>()).map(|x| !x.is_finite()).unwrap_or(true)
                    })
                })
                .map(|s| s.name.as_str())
                .take(3)
                .collect();
            return Err(TrainError::NonFinite { what: "gradient", step: self.step, detail: format!("global norm {grad_norm}; e.g. {bad:?}") });
        }
        let clip_scale = if self.cfg.max_grad_norm > 0.0 && grad_norm > self.cfg.max_grad_norm {
            self.cfg.max_grad_norm / (grad_norm + 1e-6)
        } else {
            1.0
        };
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        #[cfg(feature = "cuda")]
        let fused = self.fused;
        for (k, s) in self.slots.iter_mut().enumerate() {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let decay = if s.decay && self.cfg.weight_decay > 0.0 { 1.0 - lr * self.cfg.weight_decay } else { 1.0 };
            let u = lean_adamw::Update {
                lr: lr as f32,
                beta1: b1 as f32,
                beta2: b2 as f32,
                bias_correction1: bc1 as f32,
                bias_correction2: bc2 as f32,
                eps: self.cfg.eps as f32,
                decay: decay as f32,
                clip: clip_scale as f32,
                key: lean_adamw::rounding_key(self.seed, k, self.step),
            };
            if s.m.is_int8() || s.var.dtype() == DType::BF16 {
                // The lean update: 8-bit moments and/or bf16 masters.
                let g = if g.dtype() == s.var.dtype() { g.clone() } else { g.to_dtype(s.var.dtype())? };
                #[cfg(feature = "cuda")]
                if let Device::Cuda(_) = s.var.device() {
                    if self.maps.is_none() {
                        let dev = s.var.device();
                        self.maps = Some((Tensor::new(&dynamic_map()[..], dev)?, Tensor::new(&dynamic_map_unsigned()[..], dev)?));
                    }
                    let maps = self.maps.as_ref().expect("set above");
                    super::fused_adamw::lean_step(s.var.as_tensor(), &g, &s.m, &s.v, maps, u)?;
                    continue;
                }
                lean_adamw::step_tensors_host(&s.var, &g.detach(), &mut s.m, &mut s.v, u)?;
                continue;
            }
            let (Moment::F32(m), Moment::F32(v)) = (&mut s.m, &mut s.v) else { unreachable!("8-bit moments took the lean update") };
            #[cfg(feature = "cuda")]
            if fused {
                let g = g.contiguous()?;
                let p = s.var.as_tensor();
                if super::fused_adamw::applies(p, &g, m, v) {
                    super::fused_adamw::step(p, &g, m, v, u)?;
                    continue;
                }
            }
            // Detached: candle leaves a leaf's gradient tracked (it is computed from forward
            // tensors), and moments built from it would chain every step's graph together.
            let g = (g.detach().to_dtype(DType::F32)? * clip_scale)?;
            *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + self.cfg.eps)?)?;
            let mut p = s.var.as_tensor().detach();
            if s.decay && self.cfg.weight_decay > 0.0 {
                p = (p * (1.0 - lr * self.cfg.weight_decay))?;
            }
            s.var.set(&(p - (update * lr)?)?)?;
        }
        // Finite gradients can still give non-finite weights (an extreme lr, overflow). Such
        // weights must stop the run here: saved, they would poison every later resume and export.
        let updated = self.slots.iter().filter(|s| grads.get(s.var.as_tensor()).is_some()).map(|s| (s.name.as_str(), s.var.as_tensor()));
        if let Some(tensor) = medrl_lm::model::weights::first_nonfinite(updated)? {
            return Err(TrainError::NonFiniteWeights { step: self.step, tensor });
        }
        Ok(StepStats { grad_norm, clip_scale, lr })
    }

    /// Optimizer state for checkpoints: `{name}.exp_avg` and `{name}.exp_avg_sq` (f32, the
    /// parameter's shape) or, for 8-bit moments, `{name}.exp_avg.codes` (u8) and
    /// `{name}.exp_avg.absmax` (f32, one per 256 values) and the same for `exp_avg_sq`; and the step.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for s in &self.slots {
            for (suffix, m) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                match m {
                    Moment::F32(t) => {
                        out.insert(format!("{}.{suffix}", s.name), t.clone());
                    }
                    Moment::Int8 { codes, absmax } => {
                        out.insert(format!("{}.{suffix}.codes", s.name), codes.clone());
                        out.insert(format!("{}.{suffix}.absmax", s.name), absmax.clone());
                    }
                }
            }
        }
        (out, self.step)
    }

    /// Restore what [`AdamW::state`] returned. Either form of a moment loads into either
    /// storage (f32 moments are quantized into 8-bit ones, 8-bit ones dequantized).
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<(), TrainError> {
        for s in &mut self.slots {
            let n = s.var.elem_count();
            for (suffix, dst, signed) in [("exp_avg", &mut s.m, true), ("exp_avg_sq", &mut s.v, false)] {
                let key = format!("{}.{suffix}", s.name);
                let bad = |msg: String| TrainError::Param { name: s.name.clone(), msg };
                let dev = s.var.device();
                if let Some(t) = state.get(&key) {
                    if t.dims() != s.var.dims() {
                        return Err(bad(format!("state `{key}` has shape {:?}, the parameter {:?}", t.dims(), s.var.dims())));
                    }
                    let t = t.to_dtype(DType::F32)?;
                    *dst = if dst.is_int8() { Moment::from_values(&t.flatten_all()?.to_vec1()?, s.var.dims(), true, signed, dev)? } else { Moment::F32(t.to_device(dev)?) };
                    continue;
                }
                let (ck, ak) = (format!("{key}.codes"), format!("{key}.absmax"));
                let (Some(c), Some(a)) = (state.get(&ck), state.get(&ak)) else {
                    return Err(bad(format!("optimizer state has no `{key}` (nor `{ck}` and `{ak}`)")));
                };
                if c.dtype() != DType::U8 || c.dims() != [n] || a.dims() != [n.div_ceil(lean_adamw::STATE_BLOCK)] {
                    return Err(bad(format!("8-bit state `{key}`: codes {:?} {:?} and absmax {:?} do not fit {n} values", c.dtype(), c.dims(), a.dims())));
                }
                let a = a.to_dtype(DType::F32)?;
                if a.to_vec1::<f32>()?.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    return Err(bad(format!("8-bit state `{ak}` holds a negative or non-finite absmax")));
                }
                *dst = if dst.is_int8() {
                    Moment::Int8 { codes: c.to_device(dev)?, absmax: a.to_device(dev)? }
                } else {
                    let vals = lean_adamw::dequantize_moment(&c.to_vec1()?, &a.to_vec1()?, signed);
                    Moment::from_values(&vals, s.var.dims(), false, signed, dev)?
                };
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn first_step_matches_pytorch_formula() {
        // After one step AdamW moves each weight by lr * g/|g| (bias-corrected m/sqrt(v)).
        let w = var(&[1.0, -2.0, 3.0, 0.5], &[2, 2]);
        let mut opt = AdamW::new(vec![("layer.weight".into(), w.clone())], AdamWConfig { weight_decay: 0.1, max_grad_norm: 0.0, ..Default::default() }).unwrap();
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap(); // grad = w
        let grads = loss.backward().unwrap();
        let stats = opt.step(&grads, 0.01).unwrap();
        assert!((stats.grad_norm - (1.0f64 + 4.0 + 9.0 + 0.25).sqrt()).abs() < 1e-5);
        let got: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for (g, w0) in got.iter().zip([1.0f32, -2.0, 3.0, 0.5]) {
            let want = w0 * (1.0 - 0.01 * 0.1) - 0.01 * w0.signum() * (w0.abs() / (w0.abs() + 1e-8));
            assert!((g - want).abs() < 1e-6, "{g} vs {want}");
        }
    }

    /// candle leaves a leaf's gradient tracked (here `grad * x`, with `x` a forward tensor):
    /// moments built from it would hold each step's graph and chain the steps (issue 13.2).
    #[test]
    fn moments_hold_no_graph() {
        let w = var(&[1.0, -2.0], &[2]);
        let x = (w.as_tensor() * 3.0).unwrap();
        let loss = (w.as_tensor() * &x).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(w.as_tensor()).unwrap().track_op(), "candle changed: the leaf's gradient is no longer tracked");
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        opt.step(&grads, 0.01).unwrap();
        let (state, _) = opt.state();
        for (k, t) in &state {
            assert!(!t.track_op(), "optimizer state {k} keeps a graph");
        }
        assert!(!w.as_tensor().detach().track_op());
    }

    #[test]
    fn decay_skips_norms_and_biases_and_clipping_scales() {
        assert!(decays("model.layers.0.mlp.up_proj.weight", 2));
        assert!(!decays("model.layers.0.input_layernorm.weight", 1));
        assert!(!decays("model.layers.0.self_attn.q_proj.bias", 1));
        let w = var(&[3.0, 4.0], &[2]);
        let mut opt = AdamW::new(vec![("norm.weight".into(), w.clone())], AdamWConfig { max_grad_norm: 1.0, weight_decay: 0.5, ..Default::default() }).unwrap();
        let grads = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap().backward().unwrap();
        let s = opt.step(&grads, 0.1).unwrap();
        assert!((s.grad_norm - 5.0).abs() < 1e-6);
        assert!((s.clip_scale - 0.2).abs() < 1e-6);
        // No decay on a norm weight: the step is exactly lr * sign.
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        assert!((got[0] - 2.9).abs() < 1e-5 && (got[1] - 3.9).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn converges_on_a_quadratic() {
        let w = var(&[5.0, -3.0, 2.0], &[3, 1]);
        let mut opt = AdamW::new(vec![("w.weight".into(), w.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..300 {
            let grads = (w.as_tensor().sqr().unwrap().sum_all().unwrap()).backward().unwrap();
            opt.step(&grads, 0.05).unwrap();
        }
        let n = w.as_tensor().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(n < 1e-2, "did not converge: {n}");
    }

    #[test]
    fn non_finite_gradient_is_refused_without_touching_weights() {
        let w = var(&[1.0, 2.0], &[2, 1]);
        let mut opt = AdamW::new(vec![("w.weight".into(), w.clone())], AdamWConfig::default()).unwrap();
        let nan = Tensor::new(&[[f32::NAN], [1.0]], &Device::Cpu).unwrap();
        let grads = (w.as_tensor() * nan).unwrap().sum_all().unwrap().backward().unwrap();
        let e = opt.step(&grads, 0.1).unwrap_err().to_string();
        assert!(e.contains("non-finite gradient") && e.contains("w.weight"), "{e}");
        assert_eq!(w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(opt.steps(), 0);
    }

    #[test]
    fn out_of_range_settings_are_refused_by_key() {
        assert!(AdamWConfig::default().validate().is_ok());
        assert!(AdamWConfig { max_grad_norm: 0.0, beta1: 0.0, ..Default::default() }.validate().is_ok(), "0 turns clipping off; beta1 0 is plain RMSprop-like");
        for (cfg, key) in [
            (AdamWConfig { beta1: 1.5, ..Default::default() }, "beta1"),
            (AdamWConfig { beta1: 1.0, ..Default::default() }, "beta1"),
            (AdamWConfig { beta2: 1.0, ..Default::default() }, "beta2"),
            (AdamWConfig { beta2: -0.1, ..Default::default() }, "beta2"),
            (AdamWConfig { eps: -1.0, ..Default::default() }, "eps"),
            (AdamWConfig { eps: 0.0, ..Default::default() }, "eps"),
            (AdamWConfig { max_grad_norm: -5.0, ..Default::default() }, "max_grad_norm"),
            (AdamWConfig { weight_decay: -3.0, ..Default::default() }, "weight_decay"),
            (AdamWConfig { weight_decay: f64::NAN, ..Default::default() }, "weight_decay"),
        ] {
            assert_eq!(cfg.validate().unwrap_err().0, key);
        }
    }

    #[test]
    fn an_update_that_makes_weights_nonfinite_is_an_error_naming_the_tensor() {
        // beta1 = 1 (refused by validation, here built directly): the bias correction is 0.
        let w = var(&[1.0, 2.0], &[2, 1]);
        let mut opt = AdamW::new(vec![("w.weight".into(), w.clone())], AdamWConfig { beta1: 1.0, ..Default::default() }).unwrap();
        let grads = w.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let e = opt.step(&grads, 0.1).unwrap_err();
        assert!(matches!(&e, TrainError::NonFiniteWeights { step: 1, tensor } if tensor == "w.weight"), "{e}");
        assert!(e.to_string().contains("w.weight") && e.to_string().contains("training.optimizer"), "{e}");
    }

    #[test]
    fn state_round_trips() {
        let w = var(&[1.0, 2.0], &[2, 1]);
        let mut a = AdamW::new(vec![("w.weight".into(), w.clone())], AdamWConfig::default()).unwrap();
        let grads = w.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        a.step(&grads, 0.1).unwrap();
        let (state, step) = a.state();
        let w2 = var(&[1.0, 2.0], &[2, 1]);
        let mut b = AdamW::new(vec![("w.weight".into(), w2)], AdamWConfig::default()).unwrap();
        b.load_state(&state, step).unwrap();
        assert_eq!(b.steps(), 1);
        let (s2, _) = b.state();
        assert_eq!(s2["w.weight.exp_avg"].to_vec2::<f32>().unwrap(), state["w.weight.exp_avg"].to_vec2::<f32>().unwrap());
    }

    /// 8-bit moments and bf16 masters through `AdamW`: the checkpoint holds codes and absmax,
    /// they restore into a fresh optimizer (and convert to and from f32 moments), and a damaged
    /// 8-bit state is refused naming the parameter.
    #[test]
    fn lean_state_round_trips_converts_and_refuses_damage() {
        let vals: Vec<f32> = (0..5000).map(|i| ((i as f32) * 0.01).sin()).collect();
        let mk = |dt: DType| Var::from_tensor(&Tensor::from_vec(vals.clone(), (50, 100), &Device::Cpu).unwrap().to_dtype(dt).unwrap()).unwrap();
        let lean = AdamWConfig { state: StateDtype::Int8, master_weights: MasterDtype::Bf16, ..Default::default() };
        let w = mk(DType::BF16);
        let mut a = AdamW::new(vec![("l.weight".into(), w.clone())], lean.clone()).unwrap().with_seed(3);
        for _ in 0..3 {
            let grads = (w.as_tensor().to_dtype(DType::F32).unwrap().sqr().unwrap().sum_all().unwrap()).backward().unwrap();
            a.step(&grads, 1e-2).unwrap();
        }
        assert_ne!(w.as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vals, "the bf16 weights moved");
        let (state, step) = a.state();
        assert_eq!(state["l.weight.exp_avg.codes"].dtype(), DType::U8);
        assert_eq!(state["l.weight.exp_avg_sq.absmax"].dims(), &[20]);
        assert!(!state.contains_key("l.weight.exp_avg"));
        // Into another 8-bit optimizer: the same bytes.
        let mut b = AdamW::new(vec![("l.weight".into(), mk(DType::BF16))], lean.clone()).unwrap();
        b.load_state(&state, step).unwrap();
        assert_eq!(b.state().0["l.weight.exp_avg.codes"].to_vec1::<u8>().unwrap(), state["l.weight.exp_avg.codes"].to_vec1::<u8>().unwrap());
        // Into f32 moments: the dequantized values.
        let mut c = AdamW::new(vec![("l.weight".into(), mk(DType::F32))], AdamWConfig::default()).unwrap();
        c.load_state(&state, step).unwrap();
        let m = c.state().0["l.weight.exp_avg"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = lean_adamw::dequantize_moment(&state["l.weight.exp_avg.codes"].to_vec1().unwrap(), &state["l.weight.exp_avg.absmax"].to_vec1().unwrap(), true);
        assert_eq!(m, want);
        // A negative absmax, or codes of the wrong length, are refused by name.
        let mut bad = state.clone();
        bad.insert("l.weight.exp_avg.absmax".into(), Tensor::full(-1f32, 20, &Device::Cpu).unwrap());
        let e = b.load_state(&bad, step).unwrap_err().to_string();
        assert!(e.contains("l.weight") && e.contains("absmax"), "{e}");
        let mut bad = state.clone();
        bad.insert("l.weight.exp_avg_sq.codes".into(), Tensor::zeros(10, DType::U8, &Device::Cpu).unwrap());
        let e = b.load_state(&bad, step).unwrap_err().to_string();
        assert!(e.contains("l.weight") && e.contains("exp_avg_sq"), "{e}");
        let mut bad = state;
        bad.remove("l.weight.exp_avg.codes");
        let e = b.load_state(&bad, step).unwrap_err().to_string();
        assert!(e.contains("exp_avg"), "{e}");
    }
}
