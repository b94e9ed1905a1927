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
    /// Full-SFT training throughput on a random-init model of a known shape (AdamW, f32 master
    /// weights, compute in --dtype), random token batches, loss on every token.
    Sft {
        /// `qwen2.5-0.5b`, `smollm2-135m` or `tiny`.
        #[arg(long, default_value = "qwen2.5-0.5b")]
        shape: String,
        #[arg(long, default_value_t = 1024)]
        seq: usize,
        #[arg(long, default_value_t = 8)]
        micro_batch: usize,
        /// Timed optimizer steps (after --warmup untimed ones).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Also write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also time weight cast / forward / backward / optimizer separately (synchronizing the
        /// device between them).
        #[arg(long)]
        phases: bool,
    },
    /// The same SFT steps (random-init model, random batch, AdamW) on CPU f32 and on --device:
    /// per-step losses and the final weights' relative difference, with the device's fused and
    /// tensor-op AdamW. Checks the GPU-only code paths (fused optimizer kernel, CUDA attention
    /// and head backward) against the CPU ones.
    TrainAgreement {
        #[arg(long, default_value = "tiny")]
        shape: String,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 2)]
        micro_batch: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
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

/// HF config.json of the benchmark shapes (the published configs' architecture fields).
pub fn shape_config(shape: &str) -> anyhow::Result<serde_json::Value> {
    Ok(match shape {
        "qwen2.5-0.5b" => serde_json::json!({
            "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": true, "max_position_embeddings": 32768, "hidden_act": "silu"}),
        "smollm2-135m" => serde_json::json!({
            "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true, "max_position_embeddings": 8192, "hidden_act": "silu"}),
        "tiny" => serde_json::json!({
            "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "tie_word_embeddings": true, "max_position_embeddings": 2048, "hidden_act": "silu"}),
        other => anyhow::bail!("unknown shape {other:?}: expected qwen2.5-0.5b, smollm2-135m or tiny"),
    })
}

#[allow(clippy::too_many_arguments)]
fn bench_sft(shape: &str, seq: usize, mb: usize, steps: usize, warmup: usize, device: &str, dtype: &str, phases: bool) -> anyhow::Result<serde_json::Value> {
    use crate::train::trainable::{Mode, Trainable};
    use crate::train::{AdamW, AdamWConfig};
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let dt = parse_dtype(dtype, &dev).map_err(anyhow::Error::msg)?;
    let cfg = crate::model::ModelConfig::from_json(shape_config(shape)?, std::path::Path::new(shape))?;
    let t0 = Instant::now();
    let weights = crate::model::init::random_weights(&cfg, 0, 0.02)?;
    let mut src = crate::model::MapSource::new(weights, shape);
    let model = crate::model::CausalLm::from_source(cfg.clone(), &mut src, DType::F32, &dev)?;
    let trainable = Trainable::new(model, Mode::Full, dt, 0)?;
    let mut opt = AdamW::new(trainable.params().to_vec(), AdamWConfig { weight_decay: 0.01, ..Default::default() })?;
    tracing::info!("{shape}: {} parameters, built in {:.1}s", trainable.num_trainable(), t0.elapsed().as_secs_f64());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let examples: Vec<crate::data::TokenizedExample> = (0..mb)
        .map(|_| crate::data::TokenizedExample {
            ids: (0..seq).map(|_| rng.gen_range(0..cfg.vocab_size as u32)).collect(),
            trained: vec![true; seq],
            truncated: false,
        })
        .collect();
    let plan: Vec<Vec<usize>> = (0..mb).map(|i| vec![i]).collect();
    let batch = crate::data::batch::build_batch(&examples, &plan, 0, &dev)?;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let mut peak = 0f64;
    // With --phases, the device is synchronized between phases so each one's time is its own
    // (the step is slightly slower than without: the host cannot run ahead).
    let mut phase_times: [Vec<f64>; 4] = Default::default();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let mut lap = Instant::now();
        let mut mark = |k: usize| -> anyhow::Result<()> {
            if phases {
                dev.synchronize()?;
                if i >= warmup {
                    phase_times[k].push(lap.elapsed().as_secs_f64());
                }
                lap = Instant::now();
            }
            Ok(())
        };
        let view = trainable.view(false, None)?;
        mark(0)?;
        let lp = view.target_logprobs(&batch.input_ids, &batch.positions, Some(&batch.attention_mask), &batch.targets)?;
        let loss = ((lp * &batch.loss_mask)?.sum_all()?.neg()? / batch.trained_tokens as f64)?;
        mark(1)?;
        let grads = loss.backward()?;
        mark(2)?;
        // Activations and gradients are all alive here: the step's high-water mark.
        peak = peak.max(crate::progress::memory_mb(&dev));
        opt.step(&grads, 1e-4)?;
        mark(3)?;
        // Reading the loss waits for the device, so the step time is real.
        losses.push(loss.to_scalar::<f32>()? as f64);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let step_s = median(times.clone());
    let phase_report = phases.then(|| {
        let [cast, fwd, bwd, opt] = phase_times.map(median);
        serde_json::json!({"cast_weights_s": cast, "forward_s": fwd, "backward_s": bwd, "optimizer_s": opt})
    });
    let tokens = (mb * seq) as f64;
    let out = serde_json::json!({
        "impl": "medrl", "shape": shape, "seq": seq, "micro_batch": mb, "dtype": format!("{dt:?}"), "device": device,
        "parameters": trainable.num_trainable(),
        "median_step_s": step_s, "tokens_per_s": tokens / step_s,
        "peak_memory_mb": peak,
        "losses": losses,
        "phases": phase_report,
    });
    Ok(out)
}

/// Train `steps` full-SFT steps of a random-init `shape` model on `device`; returns the losses
/// and the final master weights (on the CPU).
fn train_steps(shape: &str, seq: usize, mb: usize, steps: usize, device: &str, dtype: &str, fused: bool) -> anyhow::Result<(Vec<f64>, Vec<(String, Tensor)>)> {
    use crate::train::trainable::{Mode, Trainable};
    use crate::train::{AdamW, AdamWConfig};
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let dt = parse_dtype(dtype, &dev).map_err(anyhow::Error::msg)?;
    let cfg = crate::model::ModelConfig::from_json(shape_config(shape)?, std::path::Path::new(shape))?;
    let weights = crate::model::init::random_weights(&cfg, 0, 0.02)?;
    let mut src = crate::model::MapSource::new(weights, shape);
    let model = crate::model::CausalLm::from_source(cfg.clone(), &mut src, DType::F32, &dev)?;
    let trainable = Trainable::new(model, Mode::Full, dt, 0)?;
    let mut opt = AdamW::new(trainable.params().to_vec(), AdamWConfig { weight_decay: 0.01, max_grad_norm: 1.0, ..Default::default() })?.with_fused(fused);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    // Ragged lengths so that padding and the attention mask are exercised.
    let examples: Vec<crate::data::TokenizedExample> = (0..mb)
        .map(|i| {
            let len = seq - (i * seq / (2 * mb.max(1)));
            crate::data::TokenizedExample { ids: (0..len).map(|_| rng.gen_range(0..cfg.vocab_size as u32)).collect(), trained: vec![true; len], truncated: false }
        })
        .collect();
    let plan: Vec<Vec<usize>> = (0..mb).map(|i| vec![i]).collect();
    let batch = crate::data::batch::build_batch(&examples, &plan, 0, &dev)?;
    let mut losses = Vec::new();
    for _ in 0..steps {
        let view = trainable.view(false, None)?;
        let lp = view.target_logprobs(&batch.input_ids, &batch.positions, Some(&batch.attention_mask), &batch.targets)?;
        let loss = ((lp * &batch.loss_mask)?.sum_all()?.neg()? / batch.trained_tokens as f64)?;
        let grads = loss.backward()?;
        opt.step(&grads, 1e-3)?;
        losses.push(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    }
    let params = trainable.params().iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?))).collect::<anyhow::Result<_>>()?;
    Ok((losses, params))
}

/// Relative L2 distance between two sets of named tensors.
fn rel_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> anyhow::Result<f64> {
    let (mut num, mut den) = (0f64, 0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        anyhow::ensure!(na == nb, "parameter order differs: {na} vs {nb}");
        num += (ta - tb)?.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        den += ta.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok((num / den.max(1e-30)).sqrt())
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainAgreement { shape, seq, micro_batch, steps, device, dtype } => {
            let (cpu_losses, cpu_w) = train_steps(&shape, seq, micro_batch, steps, "cpu", "f32", false)?;
            let (dev_losses, dev_w) = train_steps(&shape, seq, micro_batch, steps, &device, &dtype, true)?;
            let (plain_losses, plain_w) = train_steps(&shape, seq, micro_batch, steps, &device, &dtype, false)?;
            let report = serde_json::json!({
                "shape": shape, "device": device, "dtype": dtype, "seq": seq, "micro_batch": micro_batch,
                "cpu_f32_losses": cpu_losses, "device_losses_fused_adamw": dev_losses, "device_losses_tensor_adamw": plain_losses,
                "weights_rel_diff_device_vs_cpu": rel_diff(&cpu_w, &dev_w)?,
                "weights_rel_diff_fused_vs_tensor_adamw": rel_diff(&plain_w, &dev_w)?,
                "weights_rel_change_cpu": rel_diff(&cpu_w, &train_steps(&shape, seq, micro_batch, 0, "cpu", "f32", false)?.1)?,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCommand::Sft { shape, seq, micro_batch, steps, warmup, device, dtype, json, phases } => {
            let r = bench_sft(&shape, seq, micro_batch, steps, warmup, &device, &dtype, phases)?;
            println!("{}", serde_json::to_string(&r)?);
            if let Some(p) = json {
                crate::fsutil::write_json_atomic(&p, &r).with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
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
