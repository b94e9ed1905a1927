//! `medrl export`: a checkpoint of an SFT run as a Hugging Face folder or a PEFT adapter.

use anyhow::{bail, Context};
use std::path::PathBuf;

use super::sft::load_sft_config;
use crate::train::session;

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
        ExportFormat::Merged => session::export(&trainable, &cfg.model, &args.out, None, dtype)?,
        ExportFormat::Peft => {
            // Named as a temporary of this process, so a later export removes it after a crash.
            let tmp = args.out.join(format!(".merged.tmp-{}", std::process::id()));
            session::export(&trainable, &cfg.model, &tmp, Some(&args.out), dtype)?;
            std::fs::remove_dir_all(&tmp).ok();
        }
    }
    tracing::info!("exported {} ({:?}) to {}", ck.display(), args.format == ExportFormat::Merged, args.out.display());
    Ok(())
}


