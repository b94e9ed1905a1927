//! Activation checkpointing: decoder layers whose activations are dropped after the forward and
//! recomputed in backward.
//!
//! A checkpointed forward runs the chosen layers without gradient tracking and keeps only each
//! checkpointed run's input rows (`[B * T, H]`); the layers between checkpoints run tracked as
//! usual. The final norm and everything after it (head, loss) see the last layer's output as a
//! fresh leaf. After `loss.backward()`, [`CausalLm::backward_recomputed`] walks the layers back:
//! for each run it rebuilds the graph (recomputing, for checkpointed runs) from the saved input,
//! backpropagates the gradient that arrived at the run's output, adds the weights' gradients to
//! the store and hands the input's gradient to the run before. In f32 on CPU the gradients are
//! bit-identical to a backward through the whole graph: the recomputation is the same function
//! on the same inputs, and every gradient is the same sum of the same terms.
//!
//! Cost: activations of the checkpointed layers are not stored (for every layer: memory for one
//! `[B * T, H]` input per layer instead of all of the layer's intermediates, about 20x less for
//! these decoders at long sequences), for one extra forward of those layers in backward (about
//! a third more compute per step).
//!
//! The same driver runs the explicit layer backward ([`super::layer_backward`],
//! `training.layer_backward`): kept layers keep a tape instead of a graph, recomputed layers
//! rebuild their tape, and the gradients are added by trainable name. With the explicit
//! backward a view has a [`Checkpointer`] even when checkpointing is off.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Result as CResult, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::layer_backward::{LayerBackward, NamedGrads, Tape};
use super::transformer::{CausalLm, LayerCtx};
use medrl_nn::ops;

/// Which decoder layers a training forward recomputes in backward (config key
/// `training.activation_checkpointing`: `off`, `every_layer` or `{every: k}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Repr", into = "Repr")]
pub enum ActivationCheckpointing {
    /// Keep every activation (fastest, most memory).
    #[default]
    Off,
    /// Recompute every layer: least memory, one extra forward of the decoder per step.
    EveryLayer,
    /// Recompute layers 0, k, 2k, ...: between the two in memory and compute.
    Every(usize),
}

/// The YAML/JSON spelling: a name or `{every: k}`.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum Repr {
    Name(Named),
    Every {
        /// Recompute layers 0, k, 2k, ... (1: every layer).
        every: usize,
    },
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Named {
    Off,
    EveryLayer,
}

impl From<ActivationCheckpointing> for Repr {
    fn from(c: ActivationCheckpointing) -> Self {
        match c {
            ActivationCheckpointing::Off => Repr::Name(Named::Off),
            ActivationCheckpointing::EveryLayer => Repr::Name(Named::EveryLayer),
            ActivationCheckpointing::Every(every) => Repr::Every { every },
        }
    }
}

impl TryFrom<Repr> for ActivationCheckpointing {
    type Error = String;
    fn try_from(r: Repr) -> Result<Self, String> {
        Ok(match r {
            Repr::Name(Named::Off) => Self::Off,
            Repr::Name(Named::EveryLayer) => Self::EveryLayer,
            Repr::Every { every: 0 } => return Err("activation_checkpointing: every must be at least 1 (1 recomputes every layer)".into()),
            Repr::Every { every } => Self::Every(every),
        })
    }
}

/// The command-line spelling: `off`, `every_layer`, or a layer stride `k` (`{every: k}`).
impl std::str::FromStr for ActivationCheckpointing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "every_layer" => Ok(Self::EveryLayer),
            k => match k.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Self::Every(k)),
                _ => Err(format!("{k:?}: expected off, every_layer or a layer stride >= 1")),
            },
        }
    }
}

impl schemars::JsonSchema for ActivationCheckpointing {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ActivationCheckpointing".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Repr::json_schema(generator)
    }
}

impl ActivationCheckpointing {
    pub fn is_off(&self) -> bool {
        *self == Self::Off
    }

    /// The layer stride, `None` when off.
    pub fn stride(&self) -> Option<usize> {
        match *self {
            Self::Off => None,
            Self::EveryLayer => Some(1),
            Self::Every(k) => Some(k),
        }
    }

    /// Range check; the error names the sub-key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match *self {
            Self::Every(0) => Err(("every".into(), "must be at least 1 (1 recomputes every layer)".into())),
            _ => Ok(()),
        }
    }

    /// The backward driver of a training view: `None` when every layer's backward is a plain
    /// autograd graph (checkpointing off, autograd backward).
    pub fn checkpointer(&self, backward: LayerBackward, device: &candle_core::Device) -> Option<Checkpointer> {
        let explicit = backward.explicit_on(device);
        match (self.stride(), explicit) {
            (None, false) => None,
            (stride, explicit) => Some(Checkpointer { stride, explicit, pending: Arc::new(Mutex::new(Vec::new())) }),
        }
    }
}

/// How a training view's decoder layers get their gradients: which layers are recomputed in
/// backward (activation checkpointing), and whether each layer's backward is candle's autograd
/// or the explicit one ([`super::layer_backward`]). Holds the forwards waiting for their
/// layers' backward; clones share the queue.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    /// Recompute layers `0, k, 2k, ...`; `None`: recompute none (explicit backward only).
    stride: Option<usize>,
    explicit: bool,
    pending: Arc<Mutex<Vec<Pending>>>,
}

/// One checkpointed forward, waiting for backward.
#[derive(Debug)]
struct Pending {
    /// The embedding output, tracked (its graph reaches the embedding weights).
    x0: Tensor,
    /// The flat token ids the embedding looked up.
    ids: Tensor,
    /// The leaf the final norm was applied to.
    top: Tensor,
    runs: Vec<Run>,
    ctx: LayerCtx,
}

/// Consecutive layers handled alike.
#[derive(Debug)]
struct Run {
    layers: Range<usize>,
    kind: RunKind,
}

#[derive(Debug)]
enum RunKind {
    /// Recomputed in backward from these detached input rows.
    Recompute(Tensor),
    /// Autograd: the leaf the run's graph starts from and its tracked output (the graph lives
    /// until backward).
    Graph { input: Tensor, output: Tensor },
    /// Explicit backward: each layer's tape, in layer order.
    Taped(Vec<Tape>),
}

impl Checkpointer {
    /// Recompute layers `0, stride, 2 * stride, ...` (stride 1: every layer), autograd backward.
    pub fn new(stride: usize) -> Self {
        Self { stride: Some(stride.max(1)), explicit: false, pending: Arc::new(Mutex::new(Vec::new())) }
    }

    /// The recompute stride; `None` when no layer is recomputed.
    pub fn stride(&self) -> Option<usize> {
        self.stride
    }

    /// Whether layers use the explicit backward.
    pub fn explicit(&self) -> bool {
        self.explicit
    }

    /// Forwards recorded and not yet backpropagated.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("checkpoint queue").len()
    }

    /// `(layers, recompute)` runs covering `0..n`.
    fn runs(&self, n: usize) -> Vec<(Range<usize>, bool)> {
        let mut out: Vec<(Range<usize>, bool)> = Vec::new();
        for i in 0..n {
            let recompute = self.stride.is_some_and(|s| i % s == 0);
            match out.last_mut() {
                Some((r, rc)) if *rc == recompute && !recompute => r.end = i + 1,
                // Each checkpointed layer is its own run: recomputing several at once would
                // hold all their activations together.
                _ => out.push((i..i + 1, recompute)),
            }
        }
        out
    }
}

/// Adds the gradients `sub` holds for `leaves` into `grads`.
fn merge(grads: &mut GradStore, mut sub: GradStore, leaves: &[Tensor]) -> CResult<()> {
    for leaf in leaves {
        if let Some(g) = sub.remove(leaf) {
            let g = match grads.remove(leaf) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            grads.insert(leaf, g);
        }
    }
    Ok(())
}

impl CausalLm {
    /// The decoder with `ckpt`'s layers run untracked (see the module docs); returns the final
    /// hidden rows, tracked from a leaf that [`CausalLm::backward_recomputed`] picks up.
    pub(crate) fn forward_checkpointed(&self, ids: Tensor, x0: Tensor, ctx: LayerCtx, ckpt: &Checkpointer) -> CResult<Tensor> {
        let mut x = x0.detach();
        let mut runs = Vec::new();
        for (layers, recompute) in ckpt.runs(self.layers.len()) {
            let kind = if recompute {
                let input = x.clone();
                for i in layers.clone() {
                    // The layer's weights without gradient tracking (sharing storage).
                    let untracked = self.layers[i].map_tensors(&|t| Ok(t.detach()), true)?;
                    x = self.layer_forward(i, &untracked, x, &ctx, None)?;
                }
                RunKind::Recompute(input)
            } else if ckpt.explicit {
                let (y, tapes) = self.forward_taped_run(layers.clone(), x, &ctx, ops::KEEP_PROBS_MAX_BYTES, true)?;
                x = y.expect("asked for the output");
                RunKind::Taped(tapes)
            } else {
                let input = Var::from_tensor(&x)?.as_tensor().clone();
                let mut y = input.clone();
                for i in layers.clone() {
                    y = self.layer_forward(i, &self.layers[i], y, &ctx, None)?;
                }
                x = y.detach();
                RunKind::Graph { input, output: y }
            };
            runs.push(Run { layers, kind });
        }
        let top = Var::from_tensor(&x)?.as_tensor().clone();
        let out = ops::rms_norm(&top, &self.norm, self.cfg.rms_norm_eps)?;
        ckpt.pending.lock().expect("checkpoint queue").push(Pending { x0, ids, top, runs, ctx });
        Ok(out)
    }

    /// `layers` run from `x` untracked, with each layer's [`Tape`] (in layer order); the last
    /// layer's output only when `output` is set.
    fn forward_taped_run(&self, layers: Range<usize>, mut x: Tensor, ctx: &LayerCtx, keep_probs_bytes: usize, output: bool) -> CResult<(Option<Tensor>, Vec<Tape>)> {
        let mut tapes = Vec::new();
        let last = layers.end - 1;
        for i in layers {
            let (y, tape) = self.layer_forward_taped(&self.layers[i], x, ctx, keep_probs_bytes, output || i < last)?;
            tapes.push(tape);
            match y {
                Some(y) => x = y,
                None => return Ok((None, tapes)),
            }
        }
        Ok((Some(x), tapes))
    }

    /// Completes a backward pass through a training view with a [`Checkpointer`]: `grads` is
    /// what `loss.backward()` returned; the layers' share of the gradients of `leaves` (the
    /// trainable tensors, under the trainer's names) is added to it. Every forward recorded
    /// since the last call is consumed; without a checkpointer this does nothing. Forwards the
    /// loss did not depend on contribute nothing.
    pub fn backward_recomputed(&self, grads: &mut GradStore, leaves: &[(String, Tensor)]) -> CResult<()> {
        let Some(ckpt) = &self.checkpointing else { return Ok(()) };
        let pending = std::mem::take(&mut *ckpt.pending.lock().expect("checkpoint queue"));
        let by_name: HashMap<&str, &Tensor> = leaves.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let leaf_tensors: Vec<Tensor> = leaves.iter().map(|(_, t)| t.clone()).collect();
        for p in pending.into_iter().rev() {
            let Some(mut g) = grads.remove(&p.top) else { continue };
            for run in p.runs.into_iter().rev() {
                let tapes = match run.kind {
                    RunKind::Taped(tapes) => Some(tapes),
                    // The tapes live only for this run's backward, so the probabilities are
                    // always kept (recomputing them would be a third pass).
                    RunKind::Recompute(input) if ckpt.explicit => Some(self.forward_taped_run(run.layers.clone(), input, &p.ctx, usize::MAX, false)?.1),
                    kind => {
                        let (input, output) = match kind {
                            RunKind::Graph { input, output } => (input, output),
                            RunKind::Recompute(saved) => {
                                let input = Var::from_tensor(&saved)?.as_tensor().clone();
                                let mut y = input.clone();
                                for i in run.layers.clone() {
                                    y = self.layer_forward(i, &self.layers[i], y, &p.ctx, None)?;
                                }
                                (input, y)
                            }
                            RunKind::Taped(_) => unreachable!("handled above"),
                        };
                        // d/d(output) of sum(output * g) is g exactly: the seed of this run's backward.
                        let mut sub = (output * &g)?.sum_all()?.backward()?;
                        g = sub.remove(&input).ok_or_else(|| candle_core::Error::Msg(format!("activation checkpointing: layers {:?} produced no input gradient", run.layers)))?;
                        merge(grads, sub, &leaf_tensors)?;
                        None
                    }
                };
                if let Some(tapes) = tapes {
                    let mut named = Vec::new();
                    for (i, tape) in run.layers.clone().zip(tapes).rev() {
                        g = self.layer_backward(i, &self.layers[i], tape, &g, &p.ctx, &mut named)?;
                    }
                    add_named(grads, named, &by_name)?;
                }
            }
            let e = &self.embed_tokens;
            if e.is_variable() && !medrl_nn::kernels::enabled(e) {
                // candle's own embedding backward (an index_add), onto the share a tied head
                // already put in `grads`: the same sum in the same order as one backward
                // through the whole graph, so a token seen several times gets the same bits.
                let acc = match grads.remove(e) {
                    Some(prev) => prev,
                    None => e.zeros_like()?,
                };
                grads.insert(e, acc.index_add(&p.ids, &g, 0)?);
            } else if p.x0.track_op() {
                merge(grads, (&p.x0 * &g)?.sum_all()?.backward()?, &leaf_tensors)?;
            }
        }
        Ok(())
    }
}

/// Adds the explicit backward's gradients (by trainer name, in the view's dtype) to `grads`,
/// cast to their leaf's dtype as the view's cast would in autograd.
fn add_named(grads: &mut GradStore, named: NamedGrads, by_name: &HashMap<&str, &Tensor>) -> CResult<()> {
    for (name, g) in named {
        let leaf = by_name.get(name.as_str()).ok_or_else(|| candle_core::Error::Msg(format!("explicit layer backward: {name} tracks a gradient but is not a trainable tensor")))?;
        if g.dims() != leaf.dims() {
            return Err(candle_core::Error::Msg(format!("explicit layer backward: gradient of {name} has shape {:?}, the tensor {:?}", g.dims(), leaf.dims())));
        }
        let g = g.to_dtype(leaf.dtype())?;
        let g = match grads.remove(leaf) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        grads.insert(leaf, g);
    }
    Ok(())
}
