//! Supervised fine-tuning: configuration and the training loop.
//!
//! One optimizer step is `grad_accum` micro-batches. The loss of a step is the mean NLL over
//! every trained token of all its micro-batches (each micro-batch's sum is divided by the step's
//! token count before backward), so accumulation gives exactly the gradient of one big batch,
//! whatever the lengths. Everything that decides what happens next (data order, dropout masks)
//! is derived from the seed and saved in checkpoints, so a resumed CPU run retraces the same
//! loss curve.

use candle_core::DType;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::session::{SessionSpec, TrainSession};
use crate::trainable::{LoraConfig, Mode, Trainable};
use crate::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, TrainError};
use medrl_base::config::Validate;
use medrl_data::batch::{build_batch, split_by_tokens, trained_targets, Batcher, BatchingConfig, MicroBatch};
use medrl_data::registry::{resolve, DatasetRef};
use medrl_data::tokenize::{tokenize_example, Dropped, Overlong, Tokenizing, TrainOn};
use medrl_data::formats::check_trainable;
use medrl_data::{load_examples, BadRowPolicy, DataError, Example, LoadReport, Origin, TokenizedExample};
use medrl_lm::model::{load_model_dir_as, ActivationCheckpointing, LayerBackward};

// Shared with RL (crate::session); re-exported where SFT callers have always found them.
pub use crate::error::RunError as SftError;
pub use crate::session::{accumulate, export, NonFinitePolicy, RunOptions};

fn default_auto() -> String {
    "auto".into()
}

/// `medrl sft --config FILE.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Base model folder (Hugging Face layout).
    pub model: PathBuf,
    /// Run folder: checkpoints, metrics, plots, and the final model.
    pub output_dir: PathBuf,
    #[serde(default = "default_auto")]
    pub device: String,
    /// Compute dtype (`auto`: bf16 on CUDA, f32 on CPU). Master weights are always f32.
    #[serde(default = "default_auto")]
    pub dtype: String,
    pub data: SftData,
    #[serde(default)]
    pub training: SftTraining,
    /// LoRA instead of full fine-tuning.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Also validate by generating for the eval examples and scoring with reward plugins, through
    /// the same code as `medrl eval` and GRPO's validation (at every eval step).
    #[serde(default)]
    pub validation: Option<SftValidation>,
    /// Multi-stage runs: each entry is merged over this config (its keys override), must have a
    /// `name`, and starts from the previous stage's final model. Outputs go to
    /// `output_dir/<name>/`.
    #[serde(default)]
    pub stages: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftValidation {
    pub rewards: Vec<crate::rewards::RewardSpec>,
    #[serde(default = "default_val_tokens")]
    pub max_new_tokens: usize,
    /// Eval examples used (0 = all).
    #[serde(default)]
    pub limit: usize,
    #[serde(default)]
    pub accuracy_threshold: Option<f64>,
}

fn default_val_tokens() -> usize {
    128
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftData {
    /// Folder with `dataset_info.json`; names in `train`/`eval` are looked up there, and
    /// relative inline paths are relative to it.
    #[serde(default)]
    pub dataset_dir: Option<PathBuf>,
    pub train: Vec<DatasetRef>,
    /// Validation datasets; when empty, `val_fraction` of `train` is held out.
    #[serde(default)]
    pub eval: Vec<DatasetRef>,
    #[serde(default)]
    pub val_fraction: f64,
    #[serde(default)]
    pub on_bad_row: BadRowPolicy,
    #[serde(default = "default_cutoff")]
    pub cutoff_len: usize,
    #[serde(default)]
    pub overlong: Overlong,
    #[serde(default)]
    pub train_on: TrainOn,
}

fn default_cutoff() -> usize {
    1024
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SftTraining {
    pub epochs: u64,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<u64>,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    /// Dynamic batch size: when set, each step's `micro_batch_size x grad_accum` rows are cut
    /// into micro-batches of at most this many tokens (rows x longest row, padding included)
    /// instead of `micro_batch_size` rows each (VERL's `use_dynamic_bsz` with
    /// `ppo_max_token_len_per_gpu`). The step's examples and gradient are unchanged; short rows
    /// share a micro-batch and long ones get their own, so memory follows the budget and fewer
    /// padding tokens are computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch_tokens: Option<usize>,
    pub packing: bool,
    pub group_by_length: bool,
    pub shuffle: bool,
    pub lr: f64,
    pub schedule: ScheduleKind,
    /// Warmup steps; when unset, `warmup_ratio` of the total.
    pub warmup_steps: Option<u64>,
    pub warmup_ratio: f64,
    pub min_lr_ratio: f64,
    pub optimizer: AdamWConfig,
    pub seed: u64,
    /// Evaluate every N steps (0: only at the start and the end).
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: u64,
    /// Checkpoints kept (0: all).
    pub keep_last: usize,
    pub on_nonfinite: NonFinitePolicy,
    /// dtype of the exported model (`f32`, `bf16`, `f16`).
    pub export_dtype: String,
    /// `off`, `every_layer` or `{every: k}`: decoder layers whose activations are recomputed
    /// in backward instead of stored (less memory, about a third more compute at every_layer).
    #[serde(skip_serializing_if = "ActivationCheckpointing::is_off")]
    pub activation_checkpointing: ActivationCheckpointing,
    /// `auto` (explicit on CUDA, autograd on CPU), `autograd` or `explicit`: how the decoder
    /// layers' gradients are computed (see docs/sft.md, "Layer backward"). Speed only: a run
    /// may resume with it switched.
    #[serde(skip_serializing_if = "LayerBackward::is_auto")]
    pub layer_backward: LayerBackward,
}

impl Default for SftTraining {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: None,
            micro_batch_size: 4,
            grad_accum: 1,
            micro_batch_tokens: None,
            packing: false,
            group_by_length: true,
            shuffle: true,
            lr: 2e-5,
            schedule: ScheduleKind::Cosine,
            warmup_steps: None,
            warmup_ratio: 0.0,
            min_lr_ratio: 0.0,
            optimizer: AdamWConfig { weight_decay: 0.0, ..Default::default() },
            seed: 42,
            eval_every: 0,
            save_every: 0,
            keep_last: 2,
            on_nonfinite: NonFinitePolicy::Stop,
            export_dtype: "f32".into(),
            activation_checkpointing: ActivationCheckpointing::Off,
            layer_backward: LayerBackward::Auto,
        }
    }
}

impl Validate for SftConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        medrl_base::config::check_device_dtype(&self.device, &self.dtype)?;
        let t = &self.training;
        t.optimizer.validate().map_err(|(k, m)| (format!("training.optimizer.{k}"), m))?;
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(("training.min_lr_ratio".into(), format!("{} is out of range: must be in [0, 1]", t.min_lr_ratio)));
        }
        if t.micro_batch_size == 0 {
            return Err(("training.micro_batch_size".into(), "must be at least 1".into()));
        }
        if t.grad_accum == 0 {
            return Err(("training.grad_accum".into(), "must be at least 1".into()));
        }
        if t.micro_batch_tokens == Some(0) {
            return Err(("training.micro_batch_tokens".into(), "must be at least 1 (or absent for micro-batches of micro_batch_size rows)".into()));
        }
        t.activation_checkpointing.validate().map_err(|(k, m)| (format!("training.activation_checkpointing.{k}"), m))?;
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(("training.lr".into(), "must be a positive number".into()));
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return Err(("training.warmup_ratio".into(), "must be in [0, 1)".into()));
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return Err(("data.val_fraction".into(), "must be in [0, 1)".into()));
        }
        if self.data.train.is_empty() {
            return Err(("data.train".into(), "needs at least one dataset".into()));
        }
        if self.data.cutoff_len < 2 {
            return Err(("data.cutoff_len".into(), "must be at least 2".into()));
        }
        if t.epochs == 0 && t.max_steps.is_none() {
            return Err(("training.epochs".into(), "must be at least 1 (or set max_steps)".into()));
        }
        if !["f32", "bf16", "f16"].contains(&t.export_dtype.as_str()) {
            return Err(("training.export_dtype".into(), "expected f32, bf16 or f16".into()));
        }
        if let Some(l) = &self.lora {
            l.validate().map_err(|(k, m)| (format!("lora.{k}"), m))?;
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.get("name").and_then(|n| n.as_str()).is_none_or(|n| n.is_empty() || n.contains('/')) {
                return Err((format!("stages[{i}].name"), "every stage needs a `name` (a folder name)".into()));
            }
        }
        Ok(())
    }
}

/// Tokenized data of a run with the load statistics that go into its metrics.
pub struct PreparedData {
    pub train: Vec<TokenizedExample>,
    pub train_origins: Vec<Origin>,
    pub eval: Vec<TokenizedExample>,
    pub report: LoadReport,
    pub truncated: usize,
    pub dropped_too_long: usize,
    pub dropped_no_target: usize,
}

/// Load, convert and split the run's examples (before tokenization).
pub fn load_split(cfg: &SftConfig) -> Result<(Vec<(Origin, Example)>, Vec<(Origin, Example)>, LoadReport), SftError> {
    let dir = cfg.data.dataset_dir.as_deref();
    let mut report = LoadReport::default();
    // Errors name the config key of the dataset (`data.train[0]`) besides its file and row.
    let mut load = |key: &str, refs: &[DatasetRef]| -> Result<Vec<(Origin, Example)>, SftError> {
        let mut out = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let in_key = |e: DataError| DataError::Dataset { key: format!("{key}[{i}]"), source: Box::new(e) };
            let spec = resolve(r, dir).map_err(in_key)?;
            let (exs, mut rep) = load_examples(&spec, cfg.data.on_bad_row).map_err(in_key)?;
            // A conversation that cannot be trained on is a bad row (it used to be dropped
            // silently at tokenization).
            for (origin, ex) in exs {
                match check_trainable(&ex.messages) {
                    Ok(()) => out.push((origin, ex)),
                    Err(source) => {
                        let e = DataError::Record { origin, source };
                        match cfg.data.on_bad_row {
                            BadRowPolicy::Skip => rep.skip(&e),
                            BadRowPolicy::Fail => return Err(in_key(e).into()),
                        }
                    }
                }
            }
            report.merge(rep);
        }
        Ok(out)
    };
    let mut train = load("data.train", &cfg.data.train)?;
    let mut eval = load("data.eval", &cfg.data.eval)?;
    if eval.is_empty() && cfg.data.val_fraction > 0.0 {
        use rand::seq::SliceRandom;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.training.seed.wrapping_add(0x5eed));
        train.shuffle(&mut rng);
        let n_eval = ((train.len() as f64 * cfg.data.val_fraction).round() as usize).clamp(1, train.len().saturating_sub(1).max(1));
        eval = train.split_off(train.len() - n_eval);
        // Keep the training set in file order; the epoch plan shuffles it.
        train.sort_by(|a, b| (a.0.file.clone(), a.0.row).cmp(&(b.0.file.clone(), b.0.row)));
    }
    if train.is_empty() {
        return Err(SftError::Data(DataError::Empty { msg: format!("no training examples were loaded from data.train ({} rows read, {} skipped)", report.rows, report.skipped_rows) }));
    }
    Ok((train, eval, report))
}

/// Tokenize examples with the model's chat template; rows that fail follow `on_bad_row`.
pub fn prepare(cfg: &SftConfig, tok: &medrl_lm::tokenizer::TextTokenizer) -> Result<PreparedData, SftError> {
    let (train, eval, mut report) = load_split(cfg)?;
    let tcfg = Tokenizing { cutoff_len: cfg.data.cutoff_len, overlong: cfg.data.overlong, train_on: cfg.data.train_on };
    let mut prep = PreparedData { train: vec![], train_origins: vec![], eval: vec![], report: LoadReport::default(), truncated: 0, dropped_too_long: 0, dropped_no_target: 0 };
    for (is_train, set) in [(true, train), (false, eval)] {
        for (origin, ex) in set {
            match tokenize_example(tok, &ex, &tcfg) {
                Ok(Ok(t)) => {
                    prep.truncated += t.truncated as usize;
                    if is_train {
                        prep.train.push(t);
                        prep.train_origins.push(origin);
                    } else {
                        prep.eval.push(t);
                    }
                }
                Ok(Err(Dropped::TooLong)) => prep.dropped_too_long += 1,
                Ok(Err(Dropped::NothingToTrain)) => prep.dropped_no_target += 1,
                Err(e) => {
                    let e = DataError::Record { origin, source: e.into() };
                    match cfg.data.on_bad_row {
                        BadRowPolicy::Skip => report.skip(&e),
                        BadRowPolicy::Fail => return Err(e.into()),
                    }
                }
            }
        }
    }
    if prep.train.is_empty() {
        return Err(SftError::Data(DataError::Empty {
            msg: format!(
                "no trainable examples after tokenization ({} too long, {} without assistant tokens)",
                prep.dropped_too_long, prep.dropped_no_target
            ),
        }));
    }
    prep.report = report;
    Ok(prep)
}

/// What a finished run produced.
#[derive(Debug, Clone, Serialize)]
pub struct SftOutcome {
    pub output_dir: PathBuf,
    pub final_model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
}

fn hash_config(cfg: &SftConfig) -> String {
    use sha2::Digest;
    // What determines the curve; bookkeeping keys (eval/save cadence) may change on resume.
    let mut c = cfg.clone();
    c.training.eval_every = 0;
    c.training.save_every = 0;
    c.training.keep_last = 0;
    c.training.max_steps = None;
    // Speed and memory only: a run may resume with it switched.
    c.training.activation_checkpointing = ActivationCheckpointing::Off;
    c.training.layer_backward = LayerBackward::Auto;
    c.training.micro_batch_tokens = None;
    c.stages.clear();
    let bytes = serde_json::to_vec(&c).expect("config serializes");
    format!("{:x}", sha2::Sha256::digest(bytes))[..16].to_string()
}

/// Mean NLL per trained token over `examples`, without gradients.
pub fn eval_loss(model: &medrl_lm::model::CausalLm, examples: &[TokenizedExample], micro_batch: usize, pad: u32) -> Result<Option<f64>, SftError> {
    if examples.is_empty() {
        return Ok(None);
    }
    let (mut total, mut count) = (0f64, 0usize);
    let idx: Vec<usize> = (0..examples.len()).collect();
    for chunk in idx.chunks(micro_batch) {
        let mb: MicroBatch = chunk.iter().map(|&i| vec![i]).collect();
        let b = build_batch(examples, &mb, pad, model.device())?;
        let lp = model.target_logprobs(&b.input_ids, &b.positions, Some(&b.attention_mask), &b.targets)?;
        total -= (lp * &b.loss_mask)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += b.trained_tokens;
    }
    Ok(Some(total / count.max(1) as f64))
}

/// Run SFT as configured, one stage or several.
pub fn run(cfg: &SftConfig, cfg_tree: &serde_yaml::Value, opts: &RunOptions) -> Result<SftOutcome, SftError> {
    if cfg.stages.is_empty() {
        return run_stage(cfg, opts);
    }
    let mut model = cfg.model.clone();
    let mut last = None;
    for (i, stage) in cfg.stages.iter().enumerate() {
        let name = stage["name"].as_str().expect("validated").to_string();
        let mut tree = cfg_tree.clone();
        if let serde_yaml::Value::Mapping(m) = &mut tree {
            m.remove("stages");
        }
        let mut overlay: serde_yaml::Value = serde_json::from_value(stage.clone()).map_err(|e| SftError::Config { key: format!("stages[{i}]"), msg: e.to_string() })?;
        if let serde_yaml::Value::Mapping(m) = &mut overlay {
            m.remove("name");
        }
        merge_yaml(&mut tree, overlay);
        let out = cfg.output_dir.join(&name);
        tree["model"] = serde_yaml::Value::String(model.to_string_lossy().into_owned());
        tree["output_dir"] = serde_yaml::Value::String(out.to_string_lossy().into_owned());
        let stage_cfg: SftConfig = medrl_base::config::from_tree(tree, Path::new(&format!("stages[{i}] ({name})")))
?;
        tracing::info!(stage = %name, model = %model.display(), "starting stage {}/{}", i + 1, cfg.stages.len());
        // A finished stage is not retrained when the whole run is resumed.
        let done = out.join("final").join("config.json");
        let outcome = if opts.resume && done.exists() && crate::checkpoint::latest(&out).is_some() {
            tracing::info!(stage = %name, "already finished; skipping");
            let rec = crate::metrics::loss_summary(&crate::metrics::read_metrics(&out)?);
            SftOutcome {
                output_dir: out.clone(),
                final_model: out.join("final"),
                adapter: None,
                steps: 0,
                first_loss: rec.first_loss,
                last_loss: rec.last_loss,
                eval_loss_before: rec.eval_loss_before,
                eval_loss_after: rec.eval_loss_after,
            }
        } else {
            run_stage(&stage_cfg, opts)?
        };
        model = outcome.final_model.clone();
        last = Some(outcome);
    }
    Ok(last.expect("at least one stage"))
}

fn merge_yaml(base: &mut serde_yaml::Value, overlay: serde_yaml::Value) {
    match (base, overlay) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_yaml(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn run_stage(cfg: &SftConfig, opts: &RunOptions) -> Result<SftOutcome, SftError> {
    let t = &cfg.training;
    let mut session = TrainSession::open(
        SessionSpec {
            kind: "sft",
            output_dir: &cfg.output_dir,
            device: &cfg.device,
            dtype: &cfg.dtype,
            config_yaml: serde_yaml::to_string(cfg).expect("config serializes"),
            config_hash: hash_config(cfg),
            seed: t.seed,
        },
        opts,
    )?;
    let (device, compute) = (session.device.clone(), session.compute);
    let out = &cfg.output_dir;
    let (load_dtype, nf4) = crate::trainable::load_plan(cfg.lora.as_ref(), compute, t.optimizer.master_weights.dtype());
    let loaded = load_model_dir_as(&cfg.model, &device, load_dtype, nf4)?;
    let tok = loaded.tokenizer;
    let prep = prepare(cfg, &tok)?;
    let pad = tok.pad_token.as_deref().and_then(|p| tok.token_to_id(p)).or_else(|| tok.eos_token.as_deref().and_then(|p| tok.token_to_id(p))).unwrap_or(0);
    let batching = BatchingConfig { micro_batch_size: t.micro_batch_size, packing: t.packing, group_by_length: t.group_by_length, shuffle: t.shuffle };
    let train_lengths: Vec<usize> = prep.train.iter().map(|e| e.ids.len()).collect();
    let batcher = Batcher::new(train_lengths.clone(), batching, cfg.data.cutoff_len, t.seed);
    let mbs_per_epoch = batcher.plan_epoch(0).len();
    let steps_per_epoch = mbs_per_epoch.div_ceil(t.grad_accum) as u64;
    let total_steps = t.max_steps.unwrap_or(steps_per_epoch * t.epochs).max(1);
    let warmup = t.warmup_steps.unwrap_or((t.warmup_ratio * total_steps as f64).round() as u64);
    let schedule = LrSchedule { peak_lr: t.lr, warmup_steps: warmup, total_steps, kind: t.schedule, min_lr_ratio: t.min_lr_ratio };
    tracing::info!(
        train = prep.train.len(),
        eval = prep.eval.len(),
        skipped_rows = prep.report.skipped_rows,
        truncated = prep.truncated,
        dropped_too_long = prep.dropped_too_long,
        "data ready: {total_steps} steps ({steps_per_epoch} per epoch)"
    );

    let mode = match &cfg.lora {
        Some(l) => Mode::Lora { cfg: l.clone(), targets: l.targets().map_err(|source| SftError::LoraTargets { key: "lora.targets", source })? },
        None => Mode::Full,
    };
    let mut trainable = Trainable::with_masters(loaded.model, mode, compute, t.seed, t.optimizer.master_weights.dtype())?;
    trainable.checkpointing = t.activation_checkpointing;
    trainable.layer_backward = t.layer_backward;
    let mut opt = AdamW::new(trainable.params().to_vec(), t.optimizer.clone())?.with_seed(t.seed);
    tracing::info!(params = trainable.num_trainable(), lora = cfg.lora.is_some(), "trainable parameters");
    opt.log_setup("sft");
    session.resume(&trainable, &mut opt)?;

    let micro = t.micro_batch_size;
    let eval_now = |tr: &Trainable| -> Result<Option<f64>, SftError> { eval_loss(&tr.view(true, None)?, &prep.eval, micro, pad) };
    // Generation-based validation with reward plugins (optional), as GRPO and `medrl eval` do it.
    let reward_validation = match &cfg.validation {
        Some(v) => {
            let rewards = crate::rewards::load_rewards(&v.rewards, &medrl_plugin::Grants::none())?;
            let (_, eval_examples, _) = load_split(cfg)?;
            let mut examples: Vec<(Origin, Example)> = eval_examples.into_iter().map(|(o, e)| (o, crate::rl::validation::prompt_example(e, None))).collect();
            if v.limit > 0 {
                examples.truncate(v.limit);
            }
            let gen = { let mc = &trainable.view(true, None)?.cfg; medrl_lm::tokenizer::GenerationDefaults::from_dir(&cfg.model, &mc.eos_token_ids, mc.bos_token_id, &tok) }.map_err(|e| SftError::Model(e.into()))?;
            Some((rewards, examples, gen.eos_token_ids, v.clone()))
        }
        None => None,
    };
    let validate_rewards = |tr: &Trainable| -> Result<Option<crate::rl::validation::Validation>, SftError> {
        let Some((rewards, examples, eos, v)) = &reward_validation else { return Ok(None) };
        let m = tr.view(true, None)?;
        Ok(Some(crate::rl::validation::validate(&m, &tok, examples, rewards, v.max_new_tokens, &[], eos, pad, v.accuracy_threshold)?))
    };
    let mut eval_before = None;
    if session.state.step == 0 {
        eval_before = eval_now(&trainable)?;
        let mut line = serde_json::json!({"step": 0});
        if let Some(l) = eval_before {
            line["eval_loss"] = l.into();
        }
        if let Some(v) = validate_rewards(&trainable)? {
            line["val_reward"] = v.mean_reward.into();
            line["val_accuracy"] = v.accuracy.into();
        }
        if line.as_object().is_some_and(|o| o.len() > 1) {
            session.metrics.write(&line)?;
        }
    }
    let pb = medrl_base::progress::bar(total_steps, "sft", "steps");
    pb.set_position(session.state.step);
    let mut plan = batcher.plan_epoch(session.state.epoch);
    let started = Instant::now();
    let mut first_loss = None;
    let mut last_loss = None;
    let mut eval_after = None;
    let mut peak_mem = 0f64;
    while !session.done(total_steps) {
        let step_start = Instant::now();
        // The step's micro-batches, continuing across epoch boundaries.
        let mut mbs = Vec::with_capacity(t.grad_accum);
        while mbs.len() < t.grad_accum {
            let st = &mut session.state;
            if st.next_micro_batch >= plan.len() {
                st.epoch += 1;
                st.next_micro_batch = 0;
                plan = batcher.plan_epoch(st.epoch);
            }
            mbs.push(plan[st.next_micro_batch].clone());
            st.next_micro_batch += 1;
        }
        if let Some(budget) = t.micro_batch_tokens {
            mbs = split_by_tokens(mbs.into_iter().flatten().collect(), &train_lengths, budget);
        }
        let step_tokens: usize = mbs.iter().map(|mb| trained_targets(&prep.train, mb)).sum();
        let mut grads = None;
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        let mut nonfinite: Option<String> = None;
        for mb in &mbs {
            let b = build_batch(&prep.train, mb, pad, &device)?;
            tokens += b.tokens;
            let (bsz, seq) = b.input_ids.dims2()?;
            let model = trainable.view(false, Some((bsz * seq, &mut session.rng)))?;
            let lp = model.target_logprobs(&b.input_ids, &b.positions, Some(&b.attention_mask), &b.targets)?;
            let loss = ((lp * &b.loss_mask)?.sum_all()?.neg()? / step_tokens.max(1) as f64)?;
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                let rows: Vec<String> = mb.iter().flatten().take(4).map(|&i| prep.train_origins[i].to_string()).collect();
                nonfinite = Some(format!("loss {lv} on a micro-batch with {}", rows.join(", ")));
                break;
            }
            loss_sum += lv;
            accumulate(&mut grads, trainable.backward(&loss, &model)?, trainable.params())?;
        }
        let lr = schedule.lr_at(session.state.step);
        let stats = match (nonfinite, grads) {
            (None, Some(g)) => match opt.step(&g, lr) {
                Ok(s) => Some(s),
                Err(TrainError::NonFinite { detail, .. }) => {
                    t.on_nonfinite.apply("gradient", session.state.step + 1, &detail)?;
                    None
                }
                Err(e) => return Err(e.into()),
            },
            (Some(detail), _) => {
                t.on_nonfinite.apply("loss", session.state.step + 1, &detail)?;
                None
            }
            (None, None) => None,
        };
        if stats.is_none() {
            session.state.skipped_steps += 1;
        }
        session.end_step(tokens, &opt);
        let state = &session.state;
        let dt = step_start.elapsed().as_secs_f64();
        let mem = medrl_nn::device::memory_mb(&device);
        peak_mem = peak_mem.max(mem);
        if stats.is_some() {
            first_loss.get_or_insert(loss_sum);
            last_loss = Some(loss_sum);
        }
        let mut line = serde_json::json!({
            "step": state.step,
            "epoch": state.epoch as f64 + state.next_micro_batch as f64 / plan.len().max(1) as f64,
            "loss": if stats.is_some() { serde_json::json!(loss_sum) } else { serde_json::Value::Null },
            "lr": lr,
            "grad_norm": stats.map(|s| s.grad_norm),
            "clip_scale": stats.map(|s| s.clip_scale),
            "tokens": tokens,
            "trained_tokens": step_tokens,
            "tokens_per_s": tokens as f64 / dt.max(1e-9),
            "step_time_s": dt,
            "memory_mb": mem,
            "skipped_rows": prep.report.skipped_rows,
            "skipped_steps": state.skipped_steps,
        });
        if session.due(t.eval_every, total_steps) {
            let l = eval_now(&trainable)?;
            if let Some(l) = l {
                line["eval_loss"] = l.into();
            }
            eval_after = l;
            if let Some(v) = validate_rewards(&trainable)? {
                line["val_reward"] = v.mean_reward.into();
                line["val_accuracy"] = v.accuracy.into();
            }
        }
        session.metrics.write(&line)?;
        pb.set_message(format!("sft loss {loss_sum:.4}"));
        pb.inc(1);
        if session.due(t.save_every, total_steps) {
            session.save(&trainable, &opt, Default::default(), t.keep_last)?;
            crate::metrics::write_plots(out)?;
        }
    }
    pb.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    tracing::info!(steps = session.steps_this_run, elapsed_s = elapsed, peak_memory_mb = peak_mem, "training stopped at step {}", session.state.step);
    let (final_dir, adapter_dir) = session.outputs();
    let mut adapter = None;
    if session.export_final(&trainable, &cfg.model, &t.export_dtype, total_steps)? {
        if cfg.lora.is_some() {
            adapter = Some(adapter_dir);
        }
        crate::metrics::write_plots(out)?;
    }
    // A resumed run computed only part of these (none when resumed after its last step); the
    // run's records hold them all.
    let rec = crate::metrics::loss_summary(&crate::metrics::read_metrics(out)?);
    Ok(SftOutcome {
        output_dir: out.clone(),
        final_model: final_dir,
        adapter,
        steps: session.state.step,
        first_loss: if session.start_step == 0 { first_loss } else { rec.first_loss },
        last_loss: last_loss.or(rec.last_loss),
        eval_loss_before: eval_before.or(rec.eval_loss_before),
        eval_loss_after: eval_after.or(rec.eval_loss_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

    /// Accumulated gradients are the sum over micro-batches and hold no graph (issue 13.2).
    #[test]
    fn accumulate_sums_detached_gradients() {
        let w = Var::from_tensor(&Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let mut acc = None;
        for scale in [3.0, 5.0] {
            let x = (w.as_tensor() * scale).unwrap();
            let loss = (w.as_tensor() * &x).unwrap().sum_all().unwrap(); // d/dw = 2 * scale * w
            accumulate(&mut acc, loss.backward().unwrap(), &params).unwrap();
        }
        let g = acc.unwrap().get(w.as_tensor()).unwrap().clone();
        assert!(!g.track_op());
        assert_eq!(g.to_vec1::<f32>().unwrap(), vec![16.0, -32.0]);
    }
}
