use anyhow::Context;
use std::path::PathBuf;

use crate::model::{init::{init_model_dir, InitOptions, Preset}, Arch};

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Write a random-init model folder (weights, config, trained BPE tokenizer, chat template).
    Init {
        #[arg(long, value_enum)]
        arch: ArchArg,
        #[arg(long, value_enum, default_value = "tiny")]
        preset: Preset,
        /// Seed of the weight initialization (the tokenizer is deterministic).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Standard deviation of weight matrices.
        #[arg(long, default_value_t = 0.02)]
        init_std: f64,
        /// Output folder.
        out_dir: PathBuf,
    },
    /// Turn a llama-architecture GGUF file (F32/F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q2_K..Q6_K) into
    /// a Hugging Face folder: dequantized f32 safetensors, config.json, tokenizer.json built from
    /// the GGUF's tokenizer metadata, tokenizer_config.json with its chat template.
    ImportGguf {
        /// The .gguf file.
        file: PathBuf,
        /// Output folder.
        out_dir: PathBuf,
    },
    /// Print a model folder's architecture, size and tokenizer facts.
    Info { model: PathBuf },
    /// Logits of every position for a chat prompt, as JSON (for checks against other stacks).
    Logits {
        #[arg(long)]
        model: PathBuf,
        /// A LoRA adapter in PEFT's format applied on top (unmerged).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The user message (rendered with the model's chat template and generation prompt).
        #[arg(long)]
        prompt: String,
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ArchArg {
    Llama,
    Qwen2,
    Qwen3,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Self {
        match a {
            ArchArg::Llama => Arch::Llama,
            ArchArg::Qwen2 => Arch::Qwen2,
            ArchArg::Qwen3 => Arch::Qwen3,
        }
    }
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init { arch, preset, seed, init_std, out_dir } => {
            let mut opts = InitOptions::new(arch.into(), preset);
            opts.seed = seed;
            opts.init_std = init_std;
            let report = init_model_dir(&out_dir, &opts).with_context(|| format!("initializing {}", out_dir.display()))?;
            tracing::info!(
                "wrote {} ({:?}, {} parameters, vocab {})",
                out_dir.display(),
                report.arch,
                report.parameters,
                report.vocab_size
            );
            Ok(())
        }
        ModelCommand::ImportGguf { file, out_dir } => {
            let t0 = std::time::Instant::now();
            let spinner = crate::progress::spinner(&format!("importing {}", file.display()));
            let report = crate::gguf::import_gguf(&file, &out_dir)
                .with_context(|| format!("importing {} into {}", file.display(), out_dir.display()))?;
            spinner.finish_and_clear();
            tracing::info!("wrote {} in {:.1}s", out_dir.display(), t0.elapsed().as_secs_f64());
            let summary = serde_json::json!({
                "arch": report.arch, "tensors": report.n_tensors, "parameters": report.n_params,
                "source_types": report.tensor_types,
                "files": report.files_written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        ModelCommand::Logits { model, adapter, prompt, out } => {
            let dev = candle_core::Device::Cpu;
            let mut m = crate::model::load_model_dir(&model, &dev, candle_core::DType::F32)?;
            if let Some(a) = &adapter {
                crate::model::peft::load_peft_adapter(&mut m.model, a).with_context(|| format!("loading adapter {}", a.display()))?;
            }
            let ids = m.tokenizer.encode_chat(&[crate::tokenizer::ChatMessage::user(prompt)], true)?;
            let x = candle_core::Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
            let logits: Vec<Vec<f32>> = m.model.forward_causal(&x)?.squeeze(0)?.to_vec2()?;
            let v = serde_json::json!({"ids": ids, "logits": logits});
            crate::fsutil::write_json_atomic(&out, &v).with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
        ModelCommand::Info { model } => {
            let cfg = crate::model::read_model_config(&model)?;
            let tok = crate::tokenizer::TextTokenizer::from_dir(&model)?;
            // The weights' headers (not their data): a truncated file, a missing tensor or a
            // shape that disagrees with config.json fails here rather than at the first load.
            let weights = crate::model::SafetensorsSource::open_dir(&model)?;
            weights.check_shapes(&cfg.expected_tensors())?;
            let (n_tensors, n_files) = weights.counts();
            let info = serde_json::json!({
                "arch": cfg.arch,
                "parameters": cfg.num_parameters(),
                "hidden_size": cfg.hidden_size,
                "layers": cfg.num_hidden_layers,
                "heads": cfg.num_attention_heads,
                "kv_heads": cfg.num_key_value_heads,
                "head_dim": cfg.head_dim,
                "vocab_size": cfg.vocab_size,
                "tokenizer_vocab": tok.vocab_size(),
                "tied_embeddings": cfg.tie_word_embeddings,
                "rope_theta": cfg.rope_theta,
                "rope_scaling": cfg.rope_scaling,
                "chat_template": tok.chat_template.is_some(),
                "eos_token": tok.eos_token,
                "weight_files": n_files,
                "weight_tensors": n_tensors,
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
    }
}
