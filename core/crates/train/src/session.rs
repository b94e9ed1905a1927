//! One training session: what SFT and every RL algorithm share around their steps.
//!
//! A [`TrainSession`] owns the run folder (locked for the session's life, stale temporary files
//! removed, `config.yaml` written), resume (the newest intact checkpoint, refused when another
//! config or algorithm wrote it), the metrics log, the dropout random stream, the step count
//! and the stop-after budget, the checkpoint cadence and the export of the final model. The
//! loops (sft.rs, rl/) own only their steps.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, TrainerState};
use crate::error::RunError;
use crate::metrics::MetricsLog;
use crate::run_dir::RunLock;
use crate::trainable::{Mode, Trainable};
use crate::{AdamW, TrainError};
use medrl_lm::model::peft;
use medrl_lm::model::weights::TensorSource;

/// Options of a run that are not part of its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// Stop after this many steps of this invocation (tests use it to simulate an interruption).
    pub stop_after: Option<u64>,
}

/// What to do when a loss or gradient is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Stop with an error; the last checkpoint is left as it was.
    #[default]
    Stop,
    /// Skip the step (no update), count it, and go on.
    Skip,
}

impl NonFinitePolicy {
    /// Apply the policy to a non-finite `what` at `step`: an error for `stop`, a warning for
    /// `skip` (the caller then skips the update and counts the step as skipped).
    pub fn apply(self, what: &'static str, step: u64, detail: &str) -> Result<(), RunError> {
        match self {
            NonFinitePolicy::Stop => Err(TrainError::NonFinite { what, step, detail: format!("{detail}; no update was applied and the last checkpoint is intact (set training.on_nonfinite: skip to skip such steps)") }.into()),
            NonFinitePolicy::Skip => {
                tracing::warn!("skipping step {step}: non-finite {what}: {detail}");
                Ok(())
            }
        }
    }
}

/// Hash of a run config (resume refuses a checkpoint written under another hash).
pub fn hash_json(v: &impl Serialize) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(serde_json::to_vec(v).expect("serializes")))[..16].to_string()
}

/// Add `g` to the running sum `acc`, keeping only the gradients of `params`.
///
/// Only the parameters' gradients are kept, detached: candle computes a leaf's gradient from
/// forward tensors (`grad * rhs`) and leaves it tracked, so a kept gradient would hold the whole
/// micro-batch's graph alive (and, through AdamW's moments, every step's graph after it).
pub fn accumulate(acc: &mut Option<GradStore>, mut g: GradStore, params: &[(String, candle_core::Var)]) -> Result<(), RunError> {
    let mut sums = Vec::with_capacity(params.len());
    for (_, v) in params {
        if let Some(new) = g.remove(v.as_tensor()) {
            let sum = match acc.as_ref().and_then(|a| a.get(v.as_tensor())) {
                Some(old) => (old + new)?,
                None => new,
            };
            sums.push((v.as_tensor(), sum.detach()));
        }
    }
    let a = acc.get_or_insert(g);
    for (v, t) in sums {
        a.insert(v, t);
    }
    Ok(())
}

/// Write the merged model (HF folder) and, for LoRA, the PEFT adapter. `base_model` is the
/// folder the run started from (the full-precision base for merging, tokenizer files).
///
/// Streamed, one shard at a time (`save_model_safetensors_streamed`): each weight is made when
/// its shard is written, from the trained masters (full fine-tuning) or from the base checkpoint
/// read in f32 plus `scale * B @ A` (LoRA/QLoRA: the adapter merged onto the unquantized base,
/// as PEFT's `merge_and_unload`), then cast to `dtype` on the host. Neither the f32 model nor the
/// whole merged model exists at once, so models larger than host or device memory export.
pub fn export(trainable: &Trainable, base_model: &Path, merged_dir: &Path, adapter_dir: Option<&Path>, dtype: DType) -> Result<(), RunError> {
    let io = |e: std::io::Error| RunError::from(medrl_lm::model::ModelError::Io { path: merged_dir.into(), source: e });
    std::fs::create_dir_all(merged_dir).map_err(io)?;
    let params: HashMap<&str, &candle_core::Var> = trainable.params().iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut cfg = trainable.config().clone();
    if params.contains_key("lm_head.weight") {
        // A tied head trained as its own module is untied (as PEFT does).
        cfg.tie_word_embeddings = false;
    }
    let plan: Vec<(String, Vec<usize>, DType)> = cfg.tensor_shapes().into_iter().map(|(n, s)| (n, s, dtype)).collect();
    let host = |t: &Tensor| -> candle_core::Result<Tensor> { t.detach().to_device(&Device::Cpu)?.to_dtype(DType::F32) };
    // LoRA: the base checkpoint, and each adapted weight's (A, B). Full fine-tuning trains every
    // tensor, so every name is a master.
    let mut base = None;
    let mut adapters: HashMap<String, (&candle_core::Var, &candle_core::Var)> = HashMap::new();
    let mut scale = 0.0;
    if let Mode::Lora { cfg: l, targets } = &trainable.mode {
        base = Some(medrl_lm::model::SafetensorsSource::open_dir(base_model)?);
        scale = l.alpha / l.rank as f64;
        for layer in 0..cfg.num_hidden_layers {
            for module in targets {
                let a = crate::trainable::lora_name(layer, module, 'A');
                let b = crate::trainable::lora_name(layer, module, 'B');
                if let (Some(va), Some(vb)) = (params.get(a.as_str()), params.get(b.as_str())) {
                    adapters.insert(a.replace(".lora_A.weight", ".weight"), (va, vb));
                }
            }
        }
    }
    let shapes: HashMap<String, Vec<usize>> = plan.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let mut fetch = |name: &str| -> Result<Tensor, medrl_lm::model::ModelError> {
        let err = medrl_lm::model::ModelError::from_candle("merging the adapter for export");
        let merged = match (params.get(name), base.as_mut()) {
            (Some(v), _) => host(v.as_tensor()).map_err(err)?,
            (None, Some(src)) => {
                let w = src.get(name, &shapes[name], DType::F32, &Device::Cpu)?;
                match adapters.get(name) {
                    Some((a, b)) => (|| {
                        let adapter = medrl_lm::model::lora::LoraAdapter { a: host(a.as_tensor())?, b: host(b.as_tensor())?, scale, dropout_mask: None };
                        &w + adapter.merged_delta()?
                    })()
                    .map_err(err)?,
                    None => w,
                }
            }
            (None, None) => return Err(medrl_lm::model::ModelError::MissingTensor { tensor: name.into(), path: "<trained masters>".into() }),
        };
        merged.to_dtype(dtype).map_err(medrl_lm::model::ModelError::from_candle("export"))
    };
    medrl_lm::model::weights::save_model_safetensors_streamed(&plan, &mut fetch, merged_dir, medrl_lm::model::weights::DEFAULT_SHARD_BYTES)?;
    medrl_lm::model::write_hf_config(&cfg, dtype, merged_dir)?;
    peft::copy_tokenizer_files(base_model, merged_dir)?;
    if let (Some(dir), Mode::Lora { cfg: l, targets }) = (adapter_dir, &trainable.mode) {
        let meta = peft::AdapterMeta {
            rank: l.rank,
            alpha: l.alpha,
            dropout: l.dropout,
            target_modules: targets.clone(),
            modules_to_save: l.modules_to_save.clone(),
            base_model: std::fs::canonicalize(base_model).unwrap_or(base_model.to_path_buf()).to_string_lossy().into_owned(),
        };
        let tensors: HashMap<String, Tensor> = trainable.state();
        peft::save_peft_adapter(&tensors, &meta, dtype, dir)?;
        peft::copy_tokenizer_files(base_model, dir)?;
    }
    Ok(())
}

/// What a session needs from its config.
pub struct SessionSpec<'a> {
    /// `sft`, `grpo`, `ppo`, `rloo`: written into checkpoints and checked on resume.
    pub kind: &'static str,
    pub output_dir: &'a Path,
    pub device: &'a str,
    pub dtype: &'a str,
    /// The whole config as YAML (written to `output_dir/config.yaml`).
    pub config_yaml: String,
    /// The config's resume hash (without the keys a resumed run may change).
    pub config_hash: String,
    /// Seeds the dropout stream (`seed + 1`, as every loop has drawn it).
    pub seed: u64,
}

/// A run folder opened for training; see the module doc.
pub struct TrainSession {
    pub device: Device,
    /// The compute dtype of the config (`auto`: bf16 on CUDA, f32 on CPU).
    pub compute: DType,
    pub out: PathBuf,
    pub state: TrainerState,
    pub metrics: MetricsLog,
    /// Dropout masks (checkpointed by its word position, so a resumed run draws the same masks).
    pub rng: rand_chacha::ChaCha8Rng,
    /// The checkpoint resumed from (algorithms restore their own extra state from it).
    pub resumed: Option<checkpoint::Loaded>,
    /// The step the session started at (0 for a fresh run).
    pub start_step: u64,
    pub steps_this_run: u64,
    stop_after: Option<u64>,
    resume: bool,
    /// The run folder's lock, held for the session's life.
    _lock: RunLock,
}

impl TrainSession {
    /// Parse the device, lock `output_dir`, refuse a folder that holds a run unless resuming,
    /// and write `config.yaml`. The trainable state is restored by [`TrainSession::resume`].
    pub fn open(spec: SessionSpec, opts: &RunOptions) -> Result<Self, RunError> {
        let device = medrl_nn::device::parse_device(spec.device).map_err(|source| RunError::Device { key: "device", source })?;
        let compute = medrl_nn::device::parse_dtype(spec.dtype, &device).map_err(|source| RunError::Device { key: "dtype", source })?;
        let out = spec.output_dir.to_path_buf();
        // Locked before anything in the folder is read or written, for the whole run.
        let lock = RunLock::acquire(&out)?;
        lock.remove_stale_temps()?;
        let existing = checkpoint::latest(&out);
        if existing.is_some() && !opts.resume {
            return Err(RunError::NotEmpty { dir: out });
        }
        if existing.is_none() && opts.resume {
            tracing::warn!("--resume: no checkpoint in {}; starting from the beginning", out.display());
        }
        std::fs::create_dir_all(&out).map_err(RunError::io(&out))?;
        let cfg_path = out.join("config.yaml");
        medrl_base::fsutil::write_atomic(&cfg_path, spec.config_yaml.as_bytes()).map_err(RunError::io(&cfg_path))?;
        let metrics = MetricsLog::open(&out.join("metrics.jsonl"))?;
        Ok(Self {
            device,
            compute,
            state: TrainerState::start(spec.kind, spec.config_hash),
            metrics,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(1)),
            resumed: None,
            start_step: 0,
            steps_this_run: 0,
            stop_after: opts.stop_after,
            resume: opts.resume,
            out,
            _lock: lock,
        })
    }

    /// With `--resume`, restore the newest intact checkpoint into `trainable` and `opt` (and the
    /// step, data position, dropout stream and metrics log); else start the metrics afresh.
    pub fn resume(&mut self, trainable: &Trainable, opt: &mut AdamW) -> Result<(), RunError> {
        let resumable = if self.resume { checkpoint::load_latest_intact(&self.out, &self.device)? } else { None };
        let Some(checkpoint::Resumed { dir, loaded: ck, .. }) = resumable else {
            self.metrics.truncate(0)?;
            return Ok(());
        };
        if ck.state.config_hash != self.state.config_hash || ck.state.kind != self.state.kind {
            return Err(RunError::ConfigMismatch {
                dir,
                found_kind: ck.state.kind.clone(),
                found_hash: ck.state.config_hash.clone(),
                kind: self.state.kind.clone(),
                hash: self.state.config_hash.clone(),
            });
        }
        trainable.load_state(&ck.trainable)?;
        opt.load_state(&ck.optimizer, ck.state.optimizer_steps)?;
        self.rng.set_word_pos(ck.state.rng_word_pos.parse().unwrap_or(0));
        self.metrics.truncate(ck.state.metrics_lines)?;
        self.state = ck.state.clone();
        self.start_step = self.state.step;
        tracing::info!(step = self.state.step, "resumed from {}", dir.display());
        self.resumed = Some(ck);
        Ok(())
    }

    /// Whether the loop should stop before another step: the run is complete, or this
    /// invocation's `stop_after` budget is spent.
    pub fn done(&self, total_steps: u64) -> bool {
        self.state.step >= total_steps || self.stop_after.is_some_and(|n| self.steps_this_run >= n)
    }

    /// Whether the loop stops after the step now running (an asynchronous run draws no
    /// rollouts for a step that will not run).
    pub fn done_after_this_step(&self, total_steps: u64) -> bool {
        self.state.step + 1 >= total_steps || self.stop_after.is_some_and(|n| self.steps_this_run + 1 >= n)
    }

    /// Count a finished step (applied or skipped).
    pub fn end_step(&mut self, tokens: usize, opt: &AdamW) {
        self.state.step += 1;
        self.steps_this_run += 1;
        self.state.tokens_seen += tokens as u64;
        self.state.optimizer_steps = opt.steps();
    }

    /// Whether the step just finished is due for `every` (0: only the last step).
    pub fn due(&self, every: u64, total_steps: u64) -> bool {
        let step = self.state.step;
        step == total_steps || (every > 0 && step % every == 0)
    }

    /// Write a checkpoint: the trainable and optimizer state plus `extra` (an algorithm's own
    /// tensors, e.g. PPO's critic under `critic/`), keeping the newest `keep_last`.
    pub fn save(&mut self, trainable: &Trainable, opt: &AdamW, extra: (HashMap<String, Tensor>, HashMap<String, Tensor>), keep_last: usize) -> Result<(), RunError> {
        self.state.rng_word_pos = self.rng.get_word_pos().to_string();
        self.state.metrics_lines = self.metrics.lines();
        let (mut tr, mut op) = (trainable.state(), opt.state().0);
        tr.extend(extra.0);
        op.extend(extra.1);
        checkpoint::save(&self.out, &self.state, &tr, &op, keep_last)?;
        Ok(())
    }

    /// The final model folder and, for LoRA, the adapter folder of this run.
    pub fn outputs(&self) -> (PathBuf, PathBuf) {
        peft::run_outputs(&self.out)
    }

    /// Export the final model (and LoRA adapter) in `export_dtype`, when the run reached
    /// `total_steps`. Returns whether it did.
    pub fn export_final(&self, trainable: &Trainable, base_model: &Path, export_dtype: &str, total_steps: u64) -> Result<bool, RunError> {
        if self.state.step < total_steps {
            return Ok(false);
        }
        let dtype = medrl_nn::device::parse_dtype(export_dtype, &Device::Cpu).map_err(|source| RunError::Device { key: "training.export_dtype", source })?;
        let (final_dir, adapter_dir) = self.outputs();
        export(trainable, base_model, &final_dir, Some(&adapter_dir), dtype)?;
        Ok(true)
    }
}
