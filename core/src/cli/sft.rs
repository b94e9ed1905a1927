//! `medrl sft`, `medrl export` and `medrl data preview`.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

use crate::config;
use crate::train::sft::{self, RunOptions, SftConfig};

#[derive(clap::Args)]
pub struct SftArgs {
    /// Run configuration (see `medrl schema sft` and configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in output_dir.
    #[arg(long)]
    resume: bool,
    /// Stop after this many optimizer steps of this invocation (the run stays resumable).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Configuration overrides, `key.sub=value` (e.g. training.lr=1e-4 lora.rank=16).
    overrides: Vec<String>,
}

/// Load a config file with overrides, keeping the merged tree (for multi-stage runs).
pub fn load_sft_config(path: &Path, overrides: &[String]) -> anyhow::Result<(SftConfig, serde_yaml::Value)> {
    Ok(config::load_with_tree(Some(path), overrides)?)
}

pub fn run(args: SftArgs) -> anyhow::Result<()> {
    let (cfg, tree) = load_sft_config(&args.config, &args.overrides)?;
    let outcome = sft::run(&cfg, &tree, &RunOptions { resume: args.resume, stop_after: args.stop_after })?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}

#[derive(clap::Args)]
pub struct RlArgs {
    /// Run configuration (see `medrl schema grpo|ppo` and configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in output_dir.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps of this invocation (the run stays resumable).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Grant the reward plugins a constant stand-in judge returning this score (rewards then
    /// measure format only: for wiring checks, not real training).
    #[arg(long)]
    test_judge: Option<f64>,
    /// Grant the reward plugins a judge backed by this model (on the run's device unless
    /// --judge-device says otherwise); see docs/judge.md.
    #[command(flatten)]
    judge: super::judge::JudgeArgs,
    /// Configuration overrides, `key.sub=value`.
    overrides: Vec<String>,
}

impl RlArgs {
    fn options(&self) -> RunOptions {
        RunOptions { resume: self.resume, stop_after: self.stop_after }
    }
}

fn log_judges(judges: &super::judge::JudgeProvider) {
    for j in judges.loaded() {
        tracing::info!(judge = %j.dir().display(), stats = ?j.stats(), "judge model");
    }
}

/// The judge an RL run grants its reward plugins: the flags' (`--judge-model`, `--test-judge`),
/// else, when the rewards are a task's, the task's own judge grant, resolved as `medrl eval`
/// resolves it (model path relative to the task folder, the grant's settings).
fn rl_judge(
    judges: &mut super::judge::JudgeProvider,
    data: &crate::train::rl::RlData,
    explicit_rewards: bool,
) -> anyhow::Result<Option<std::sync::Arc<dyn crate::plugin::Judge>>> {
    if let Some(j) = judges.from_flags()? {
        return Ok(Some(j));
    }
    let Some(name) = data.task.as_ref().filter(|_| !explicit_rewards) else { return Ok(None) };
    let task = crate::task::Task::load(name).with_context(|| format!("loading task {name}"))?;
    for spec in task.reward_specs() {
        if let Some(grant) = &spec.grants.judge {
            let who = format!("task `{}`: reward `{}`", task.name(), spec.name);
            return Ok(Some(judges.for_grant(grant, Some(&task.dir), &who)?));
        }
    }
    Ok(None)
}

pub fn grpo(args: RlArgs) -> anyhow::Result<()> {
    let cfg: crate::train::grpo::GrpoConfig = config::load(Some(&args.config), &args.overrides)?;
    let mut judges = super::judge::JudgeProvider::new(args.test_judge, args.judge.clone(), &cfg.device)?;
    let judge = rl_judge(&mut judges, &cfg.data, !cfg.rewards.is_empty())?;
    let mut grants = crate::plugin::Grants { judge, ..crate::plugin::Grants::none() };
    if let Some(g) = &cfg.search {
        grants = grants.with_search(g.open().context("search grant")?);
    }
    let outcome = crate::train::grpo::run(&cfg, grants, &args.options())?;
    log_judges(&judges);
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}

pub fn ppo(args: RlArgs) -> anyhow::Result<()> {
    let cfg: crate::train::ppo::PpoConfig = config::load(Some(&args.config), &args.overrides)?;
    let mut judges = super::judge::JudgeProvider::new(args.test_judge, args.judge.clone(), &cfg.device)?;
    let judge = rl_judge(&mut judges, &cfg.data, !cfg.rewards.is_empty())?;
    let grants = crate::plugin::Grants { judge, ..crate::plugin::Grants::none() };
    let outcome = crate::train::ppo::run(&cfg, grants, &args.options())?;
    log_judges(&judges);
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run folder (output_dir of `medrl sft`).
    #[arg(long)]
    run: PathBuf,
    /// Which checkpoint: a step number, or `latest`.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
    /// Where to write the export.
    #[arg(long, short)]
    out: PathBuf,
    /// `merged`: a Hugging Face model folder; `peft`: the LoRA adapter in PEFT's format.
    #[arg(long, value_enum, default_value = "merged")]
    format: ExportFormat,
    /// dtype of the exported weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum ExportFormat {
    Merged,
    Peft,
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    use crate::train::checkpoint;
    use crate::train::trainable::{Mode, Trainable};
    let cfg_path = args.run.join("config.yaml");
    let (cfg, _) = load_sft_config(&cfg_path, &[])?;
    let ck = if args.checkpoint == "latest" {
        checkpoint::latest(&args.run).with_context(|| format!("{}: no checkpoints", args.run.display()))?
    } else {
        let step: u64 = args.checkpoint.parse().context("--checkpoint must be a step number or `latest`")?;
        checkpoint::list(&args.run)
            .into_iter()
            .find(|(s, _)| *s == step)
            .map(|(_, p)| p)
            .with_context(|| format!("{}: no checkpoint for step {step} (have {:?})", args.run.display(), checkpoint::list(&args.run).iter().map(|(s, _)| s).collect::<Vec<_>>()))?
    };
    if args.format == ExportFormat::Peft && cfg.lora.is_none() {
        bail!("{} is a full fine-tuning run; only --format merged applies", args.run.display());
    }
    let device = candle_core::Device::Cpu;
    let dtype = crate::model::parse_dtype(&args.dtype, &device).map_err(anyhow::Error::msg)?;
    let loaded = crate::model::load_model_dir(&cfg.model, &device, candle_core::DType::F32)?;
    let mode = match &cfg.lora {
        Some(l) => Mode::Lora { cfg: l.clone(), targets: l.targets().map_err(anyhow::Error::msg)? },
        None => Mode::Full,
    };
    let trainable = Trainable::new(loaded.model, mode, candle_core::DType::F32, cfg.training.seed)?;
    // Refuses a checkpoint with NaN or infinite weights, naming the tensor.
    let state = checkpoint::load(&ck, &device)?;
    trainable.load_state(&state.trainable)?;
    // Temporaries of an earlier export into the same folder that was killed mid-write (no lock
    // here: only those whose process is gone).
    crate::fsutil::remove_stale_temps(&args.out, false).with_context(|| format!("cleaning {}", args.out.display()))?;
    match args.format {
        ExportFormat::Merged => sft::export(&trainable, &cfg.model, &args.out, None, dtype)?,
        ExportFormat::Peft => {
            // Named as a temporary of this process, so a later export removes it after a crash.
            let tmp = args.out.join(format!(".merged.tmp-{}", std::process::id()));
            sft::export(&trainable, &cfg.model, &tmp, Some(&args.out), dtype)?;
            std::fs::remove_dir_all(&tmp).ok();
        }
    }
    tracing::info!("exported {} ({:?}) to {}", ck.display(), args.format == ExportFormat::Merged, args.out.display());
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rl::RlData;

    /// A task folder `<tmp>/judged` whose one reward asks for a judge backed by `model`.
    fn judged_task(tmp: &Path, model: &str) -> PathBuf {
        let dir = tmp.join("judged");
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = format!(
            "name: judged\ndescription: a task whose reward needs a judge\n\
             data:\n  train: {{path: train.jsonl, formatting: messages}}\n\
             rewards:\n  - plugin: medical-verifier\n    grants:\n      judge: {{model: {model:?}, kind: classifier}}\n"
        );
        std::fs::write(dir.join("task.yaml"), yaml).unwrap();
        dir
    }

    fn data(task: &Path) -> RlData {
        serde_yaml::from_str(&format!("task: {:?}", task.display().to_string())).unwrap()
    }

    #[test]
    fn rl_runs_use_the_tasks_judge_unless_flags_or_explicit_rewards_say_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/judge/qwen2-cls").canonicalize().unwrap();
        let task = judged_task(tmp.path(), &fixture.to_string_lossy());
        let mut judges = super::super::judge::JudgeProvider::new(None, Default::default(), "cpu").unwrap();
        // The task's grant, resolved as `medrl eval` does: the fixture classifier is loaded.
        assert!(rl_judge(&mut judges, &data(&task), false).unwrap().is_some());
        assert_eq!(judges.loaded().count(), 1);
        // Rewards listed in the config: the task's judge is not the run's business.
        let mut fresh = super::super::judge::JudgeProvider::new(None, Default::default(), "cpu").unwrap();
        assert!(rl_judge(&mut fresh, &data(&task), true).unwrap().is_none());
        assert_eq!(fresh.loaded().count(), 0);
        // A flag wins over the grant (here the constant stand-in: no model loaded).
        let mut flagged = super::super::judge::JudgeProvider::new(Some(0.7), Default::default(), "cpu").unwrap();
        assert!(rl_judge(&mut flagged, &data(&task), false).unwrap().is_some());
        assert_eq!(flagged.loaded().count(), 0);
        // A hub name in the grant and no flag: a clear error naming the task and reward.
        let hub = judged_task(&tmp.path().join("hub"), "FreedomIntelligence/medical_o1_verifier_3B");
        let err = match rl_judge(&mut fresh, &data(&hub), false) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("a hub-name judge must not load"),
        };
        assert!(err.contains("task `judged`") && err.contains("medical-verifier"), "{err}");
    }
}
