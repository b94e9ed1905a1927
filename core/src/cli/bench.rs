//! Benchmarks kept in the repo (numbers in docs/benchmarks.md come from these commands).

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

use crate::generate::{generate, SamplingParams, StopConditions};
use crate::model::{load_model_dir, parse_device, parse_dtype};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Prompt (prefill) and decode throughput of batched generation.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Sequences per batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Prompt length in tokens (random ids).
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// Tokens generated per sequence (EOS ignored).
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Timed repetitions after one warm-up; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Logits of a device/dtype against CPU f32 on the same prompt (e.g. CUDA bf16 vs CPU f32).
    CompareDevices {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long, default_value = "A 62-year-old man with hepatitis B cirrhosis has a single 3.2 cm liver lesion. What is the BCLC stage and the recommended treatment?")]
        prompt: String,
    },
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Generate { model, device, dtype, batch, prompt_len, new_tokens, repeats } => {
            let dev = parse_device(&device).map_err(anyhow::Error::msg)?;
            let dt = parse_dtype(&dtype, &dev).map_err(anyhow::Error::msg)?;
            let m = load_model_dir(&model, &dev, dt).with_context(|| format!("loading {}", model.display()))?;
            let vocab = m.tokenizer.vocab_size().min(m.model.cfg.vocab_size) as u32;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let prompts: Vec<Vec<u32>> = (0..batch).map(|_| (0..prompt_len).map(|_| rng.gen_range(0..vocab)).collect()).collect();
            let params = SamplingParams { max_new_tokens: new_tokens, temperature: 0.0, ..Default::default() };
            let stop = StopConditions::default();
            let (mut prefill, mut decode) = (vec![], vec![]);
            for rep in 0..=repeats {
                // Prefill time = time to the first sampled token (includes one sampling step).
                let t0 = Instant::now();
                let first = std::cell::Cell::new(None);
                let cb = |n: usize, _| {
                    if n == batch && first.get().is_none() {
                        first.set(Some(t0.elapsed().as_secs_f64()));
                    }
                };
                let out = generate(&m.model, &prompts, &params, &stop, 0, Some(&cb))?;
                dev.synchronize()?;
                let total = t0.elapsed().as_secs_f64();
                let produced: usize = out.iter().map(|g| g.tokens.len()).sum();
                anyhow::ensure!(produced == batch * new_tokens, "expected {} tokens, got {produced}", batch * new_tokens);
                let tp = first.get().unwrap_or(total);
                if rep > 0 {
                    prefill.push((batch * prompt_len) as f64 / tp);
                    decode.push((batch * (new_tokens - 1)) as f64 / (total - tp));
                }
            }
            let report = serde_json::json!({
                "model": model, "device": format!("{dev:?}"), "dtype": format!("{dt:?}"),
                "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
                "prompt_tokens_per_s": median(prefill), "decode_tokens_per_s": median(decode),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCommand::CompareDevices { model, device, dtype, prompt } => {
            let dev = parse_device(&device).map_err(anyhow::Error::msg)?;
            let dt = parse_dtype(&dtype, &dev).map_err(anyhow::Error::msg)?;
            let reference = load_model_dir(&model, &Device::Cpu, DType::F32)?;
            let ids = reference.tokenizer.encode(&prompt, true)?;
            let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let want = reference.model.forward_causal(&input)?.squeeze(0)?;
            drop(reference);
            let other = load_model_dir(&model, &dev, dt)?;
            let got = other.model.forward_causal(&input.to_device(&dev)?)?.squeeze(0)?.to_device(&Device::Cpu)?;
            let diff = (&got - &want)?;
            let rel = (diff.sqr()?.sum_all()?.sqrt()? / want.sqr()?.sum_all()?.sqrt()?)?.to_scalar::<f32>()?;
            let max_abs = diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let top_want: Vec<u32> = want.argmax(1)?.to_vec1()?;
            let top_got: Vec<u32> = got.argmax(1)?.to_vec1()?;
            let agree = top_want.iter().zip(&top_got).filter(|(a, b)| a == b).count() as f64 / top_want.len() as f64;
            let report = serde_json::json!({
                "model": model, "device": format!("{dev:?}"), "dtype": format!("{dt:?}"), "positions": ids.len(),
                "rel_l2_error": rel, "max_abs_diff": max_abs, "top1_agreement": agree,
                "logit_range": [want.min_all()?.to_scalar::<f32>()?, want.max_all()?.to_scalar::<f32>()?],
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
