//! Benchmarks kept in the repo (numbers in docs/benchmarks.md come from these commands).

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

use crate::engine::EngineConfig;
use crate::generate::{generate, SamplingParams, StopConditions};
use crate::model::{load_model_dir, parse_device, parse_dtype};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// `medrl serve` under load: a server in this process and concurrent streaming clients at
    /// each --concurrency level (EOS ignored); output tokens/s, latency and time to first token.
    Serve(super::serve::BenchServeArgs),
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
    /// Rollout throughput through the engine as RL uses it: `prompts` x `samples` sequences
    /// (random prompt ids, each prompt's samples sharing its KV blocks), temperature 1, EOS
    /// ignored; tokens/s and peak memory. `--latency`: batch-1 greedy decode, ms per token.
    Rollout {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
        #[arg(long, default_value_t = 64)]
        prompts: usize,
        #[arg(long, default_value_t = 8)]
        samples: usize,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 512)]
        new_tokens: usize,
        /// Batch-1 greedy decode latency instead of throughput.
        #[arg(long)]
        latency: bool,
        /// Print one compact JSON line (for logs) instead of indented JSON.
        #[arg(long)]
        json: bool,
        /// Engine settings (see `medrl_lm::engine::EngineConfig`).
        #[arg(long, default_value_t = 16)]
        block_size: usize,
        #[arg(long, default_value_t = 512)]
        max_seqs: usize,
        #[arg(long, default_value_t = 8192)]
        max_tokens_per_step: usize,
        #[arg(long, default_value_t = 0.9)]
        memory_fraction: f64,
    },
    /// SFT training throughput and peak memory on a random-init model of a known shape (AdamW,
    /// f32 masters, compute in --dtype), random token batches, loss on every token; full
    /// fine-tuning, LoRA or QLoRA, with or without activation checkpointing.
    Sft {
        /// `tiny`, `smollm2-135m`, `qwen2.5-0.5b`, `qwen2.5-3b`, `llama-3-8b` or `qwen3-32b`.
        #[arg(long, default_value = "qwen2.5-0.5b")]
        shape: String,
        /// `full`, `lora` (rank 16, alpha 32, all linear projections) or `qlora` (the same on an
        /// NF4 base).
        #[arg(long, default_value = "full")]
        mode: String,
        /// `off`, `every_layer` or a layer stride k (recompute layers 0, k, 2k, ...).
        #[arg(long, default_value = "off")]
        checkpointing: String,
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
        /// Override the shape's number of decoder layers (e.g. 2, to profile one step's kernels
        /// with `ncu` in reasonable time; per-layer costs are unchanged).
        #[arg(long)]
        layers: Option<usize>,
        /// AdamW moments: `f32` or `int8` (blockwise 8-bit, `training.optimizer.state`).
        #[arg(long, default_value = "f32")]
        optimizer_state: String,
        /// Master weights under full fine-tuning: `f32` or `bf16` (stochastic rounding,
        /// `training.optimizer.master_weights`).
        #[arg(long, default_value = "f32")]
        master: String,
        /// `auto` (explicit on CUDA), `autograd` or `explicit`: how the decoder layers'
        /// gradients are computed (`training.layer_backward`).
        #[arg(long, default_value = "auto")]
        layer_backward: String,
        /// The device's dense bf16 peak in TFLOP/s, the MFU denominator (default: 989.4, an
        /// H100 or H200 SXM; scripts/reference/bench_sft_torch.py uses the same).
        #[arg(long, default_value_t = 989.4)]
        peak_tflops: f64,
    },
    /// The lean AdamW update (8-bit moments, bf16 masters with stochastic rounding) on --device
    /// against the host oracle on the CPU, from the same weights and gradients: how many bits of
    /// the weights, moment codes and block absmax differ after --steps updates (0 expected).
    OptimAgreement {
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value_t = 5)]
        steps: usize,
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
        /// The device runs' layer backward (`auto`: explicit on CUDA); the CPU run is autograd.
        #[arg(long, default_value = "auto")]
        layer_backward: String,
    },
    /// Each differentiable decoder op (RMSNorm, RoPE, SwiGLU, attention, output-head
    /// log-probs) on --device/--dtype against the CPU in f64 on random inputs: relative L2 error
    /// of the value and of every input's gradient. On CUDA this checks the fused kernels
    /// (`MEDRL_FUSED_KERNELS=0` gives the primitive-op path's figures for comparison).
    OpsAgreement {
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "bf16")]
        dtype: String,
    },
    /// The rollout engine's device ops (cache writes, paged attention, the batched sampler) on
    /// --device against their CPU references, on random inputs (see `medrl_nn::infer`).
    InferAgreement {
        #[arg(long, default_value = "cuda")]
        device: String,
    },
    /// Greedy generation through the engine on --device/--dtype against CPU f32, on clinical
    /// prompts (chat template applied): identical sequences, and for each divergence whether it
    /// is a near-tie (the CPU's margin between the two tokens at the first differing position).
    EngineAgreement {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Extra prompts (the built-in clinical ones are always used).
        #[arg(long)]
        prompt: Vec<String>,
        /// Largest CPU logit margin counted as a near-tie.
        #[arg(long, default_value_t = 0.1)]
        tie_margin: f32,
    },
    /// The model-backed judges (sequence classifiers and a causal LM's P(True)) on --device
    /// against the transformers values committed with the test fixtures
    /// (`tests/fixtures/judge/expected.json`): the largest |difference| per model and mode.
    JudgeAgreement {
        #[arg(long, default_value = "tests/fixtures/judge")]
        fixtures: PathBuf,
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
        // The seeds' models (published config.json architecture fields).
        "qwen2.5-3b" => serde_json::json!({
            "model_type": "qwen2", "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
            "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": true, "max_position_embeddings": 32768, "hidden_act": "silu"}),
        "llama-3-8b" => serde_json::json!({
            "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": false, "max_position_embeddings": 8192, "hidden_act": "silu"}),
        "qwen3-32b" => serde_json::json!({
            "model_type": "qwen3", "hidden_size": 5120, "intermediate_size": 25600, "num_hidden_layers": 64,
            "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": false, "max_position_embeddings": 40960, "hidden_act": "silu"}),
        other => anyhow::bail!("unknown shape {other:?}: expected tiny, smollm2-135m, qwen2.5-0.5b, qwen2.5-3b, llama-3-8b or qwen3-32b"),
    })
}

#[allow(clippy::too_many_arguments)]
fn bench_sft(shape: &str, mode: &str, checkpointing: &str, seq: usize, mb: usize, steps: usize, warmup: usize, device: &str, dtype: &str, phases: bool, layers: Option<usize>, (state, master, layer_backward): (&str, &str, &str), peak_tflops: f64) -> anyhow::Result<serde_json::Value> {
    use crate::model::ActivationCheckpointing;
    use crate::train::trainable::{BaseQuant, LoraConfig, Mode, Trainable};
    let lora = |quantize| {
        let cfg = LoraConfig { rank: 16, alpha: 32.0, dropout: 0.0, quantize, ..Default::default() };
        Mode::Lora { targets: cfg.targets().expect("all-linear"), cfg }
    };
    let train_mode = match mode {
        "full" => Mode::Full,
        "lora" => lora(BaseQuant::None),
        "qlora" => lora(BaseQuant::Nf4),
        other => anyhow::bail!("--mode {other:?}: expected full, lora or qlora"),
    };
    let ckpt: ActivationCheckpointing = checkpointing.parse().map_err(|e| anyhow::anyhow!("--checkpointing {e}"))?;
    use crate::train::{AdamW, AdamWConfig};
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let dt = parse_dtype(dtype, &dev).map_err(anyhow::Error::msg)?;
    let mut config = shape_config(shape)?;
    if let Some(n) = layers {
        config["num_hidden_layers"] = n.into();
    }
    let cfg = crate::model::ModelConfig::from_json(config, std::path::Path::new(shape))?;
    let state: crate::train::StateDtype = serde_yaml::from_str(state).map_err(|_| anyhow::anyhow!("--optimizer-state {state:?}: expected f32 or int8"))?;
    let master: crate::train::MasterDtype = serde_yaml::from_str(master).map_err(|_| anyhow::anyhow!("--master {master:?}: expected f32 or bf16"))?;
    let t0 = Instant::now();
    // Drawn on the device tensor by tensor, straight in the dtype the run loads (LoRA: the
    // compute dtype; QLoRA: NF4 as each projection is drawn), as a checkpoint would load.
    let lora_cfg = match &train_mode {
        Mode::Lora { cfg, .. } => Some(cfg.clone()),
        Mode::Full => None,
    };
    let (load_dtype, nf4) = crate::train::trainable::load_plan(lora_cfg.as_ref(), dt, master.dtype());
    let mut src = crate::model::init::RandomSource::new(&cfg, dev.clone(), 0, 0.02)?;
    let model = if nf4 {
        crate::model::CausalLm::from_source_nf4(cfg.clone(), &mut src, load_dtype, &dev)?
    } else {
        crate::model::CausalLm::from_source(cfg.clone(), &mut src, load_dtype, &dev)?
    };
    let mut trainable = Trainable::with_masters(model, train_mode, dt, 0, master.dtype())?;
    trainable.checkpointing = ckpt;
    trainable.layer_backward = parse_layer_backward(layer_backward)?;
    let mut opt = AdamW::new(trainable.params().to_vec(), AdamWConfig { weight_decay: 0.01, state, master_weights: master, ..Default::default() })?;
    let build_s = t0.elapsed().as_secs_f64();
    tracing::info!("{shape}: {} trainable parameters, built in {build_s:.1}s", trainable.num_trainable());
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
        let grads = trainable.backward(&loss, &view)?;
        mark(2)?;
        // Activations and gradients are all alive here: the step's high-water mark.
        peak = peak.max(crate::device::device_memory_used_mb(&dev));
        if i + 1 == warmup {
            crate::device::reset_peak_memory(&dev);
        }
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
    // Model FLOPs utilization: full fine-tuning trains every weight, LoRA only the adapters.
    let trainable_weights = match mode {
        "full" => None,
        _ => Some(trainable.num_trainable()),
    };
    let flops_per_token = cfg.train_flops_per_token(seq, trainable_weights);
    let mfu = tokens / step_s * flops_per_token / (peak_tflops * 1e12);
    let out = serde_json::json!({
        "impl": "medrl", "shape": shape, "mode": mode, "checkpointing": checkpointing, "optimizer_state": state, "master_weights": master, "layer_backward": if trainable.layer_backward.explicit_on(&dev) { "explicit" } else { "autograd" }, "optimizer_state_mb": opt.state_bytes() as f64 / (1 << 20) as f64, "build_s": build_s, "layers": cfg.num_hidden_layers, "seq": seq, "micro_batch": mb, "dtype": format!("{dt:?}"), "device": device,
        "parameters": cfg.num_parameters(), "trainable_parameters": trainable.num_trainable(),
        "median_step_s": step_s, "tokens_per_s": tokens / step_s,
        "flops_per_token": flops_per_token, "peak_tflops": peak_tflops, "mfu": mfu,
        // What the process holds on the device (the memory pool keeps freed blocks, like
        // PyTorch's reserved memory) and, on CUDA, the peak actually allocated by tensors.
        "peak_memory_mb": peak,
        "peak_allocated_mb": crate::device::pool_memory_mb(&dev).map(|(high, _)| high),
        "losses": losses,
        "phases": phase_report,
    });
    Ok(out)
}

/// See [`BenchCommand::OptimAgreement`]. Parameters of awkward sizes (a short last block, one
/// under the 8-bit threshold, one with zero rows) with every combination of moments and masters;
/// gradients of a fixed random tensor `G` through `sum(p * G)` (exactly `G`), no clipping (a
/// norm summed in another order could differ in its last bit).
fn optim_agreement(device: &str, steps: usize) -> anyhow::Result<serde_json::Value> {
    use crate::train::{AdamW, AdamWConfig, MasterDtype, StateDtype};
    use candle_core::Var;
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let shapes: [&[usize]; 4] = [&[300, 77], &[4096], &[1000], &[64, 512]];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut report = serde_json::Map::new();
    for (state, master) in [(StateDtype::Int8, MasterDtype::F32), (StateDtype::Int8, MasterDtype::Bf16), (StateDtype::F32, MasterDtype::Bf16)] {
        let cfg = AdamWConfig { weight_decay: 0.1, max_grad_norm: 0.0, state, master_weights: master, ..Default::default() };
        let dt = master.dtype();
        let mut init = Vec::new();
        let mut grads = Vec::new();
        for (k, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let w: Vec<f32> = (0..n).map(|_| rng.gen::<f32>() - 0.5).collect();
            init.push((format!("layers.{k}.proj.weight"), Tensor::from_vec(w, *shape, &Device::Cpu)?.to_dtype(dt)?));
            // Gradients over several orders of magnitude, so that many map codes are used.
            let per_step: Vec<Tensor> = (0..steps)
                .map(|_| {
                    let g: Vec<f32> = (0..n).map(|i| (rng.gen::<f32>() - 0.5) * 10f32.powi((i % 7) as i32 - 4)).collect();
                    Tensor::from_vec(g, *shape, &Device::Cpu)?.to_dtype(dt)
                })
                .collect::<candle_core::Result<_>>()?;
            grads.push(per_step);
        }
        let run = |on: &Device| -> anyhow::Result<(Vec<Tensor>, std::collections::HashMap<String, Tensor>)> {
            let params: Vec<(String, Var)> = init.iter().map(|(n, t)| Ok((n.clone(), Var::from_tensor(&t.to_device(on)?)?))).collect::<anyhow::Result<_>>()?;
            let mut opt = AdamW::new(params.clone(), cfg.clone())?.with_seed(17);
            for step in 0..steps {
                let mut loss = Tensor::zeros((), dt, on)?;
                for ((_, v), g) in params.iter().zip(&grads) {
                    loss = (loss + (v.as_tensor() * g[step].to_device(on)?)?.sum_all()?)?;
                }
                opt.step(&loss.backward()?, 1e-2)?;
            }
            let w = params.iter().map(|(_, v)| v.as_tensor().to_device(&Device::Cpu)).collect::<candle_core::Result<_>>()?;
            let state = opt.state().0.into_iter().map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?))).collect::<candle_core::Result<_>>()?;
            Ok((w, state))
        };
        let (host_w, host_s) = run(&Device::Cpu)?;
        let (dev_w, dev_s) = run(&dev)?;
        let bits = |t: &Tensor| -> candle_core::Result<Vec<u32>> {
            let t = t.flatten_all()?;
            Ok(match t.dtype() {
                DType::U8 => t.to_vec1::<u8>()?.into_iter().map(u32::from).collect(),
                _ => t.to_dtype(DType::F32)?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect(),
            })
        };
        // A parameter with f32 masters and f32 moments (here the one under the 8-bit threshold
        // when masters are f32) takes the f32 AdamW, whose CUDA kernel and CPU tensor ops round
        // (1 - beta) differently: `bench train-agreement` covers it with a tolerance. Reported
        // apart so the lean path's count means what it says.
        let mut per_path: std::collections::BTreeMap<&str, [usize; 4]> = Default::default();
        for ((name, init_t), (a, b)) in init.iter().zip(host_w.iter().zip(&dev_w)) {
            let n = a.elem_count();
            let lean = master == MasterDtype::Bf16 || (state == StateDtype::Int8 && crate::train::lean_adamw::takes_8bit_moments(name, n));
            let e = per_path.entry(if lean { "lean" } else { "f32_adamw" }).or_default();
            let (a, b, i) = (bits(a)?, bits(b)?, bits(init_t)?);
            e[0] += n;
            e[1] += a.iter().zip(&b).filter(|(x, y)| x != y).count();
            for key in [format!("{name}.exp_avg"), format!("{name}.exp_avg_sq")] {
                for suffix in ["", ".codes", ".absmax"] {
                    let full = format!("{key}{suffix}");
                    if let Some(x) = host_s.get(&full) {
                        let y = dev_s.get(&full).with_context(|| format!("the device state lacks {full}"))?;
                        let (x, y) = (bits(x)?, bits(y)?);
                        e[2] += x.len();
                        e[3] += x.iter().zip(&y).filter(|(p, q)| p != q).count();
                    }
                }
            }
            let moved = a.iter().zip(&i).filter(|(x, y)| x != y).count();
            anyhow::ensure!(moved > n / 2, "{name}: training changed only {moved} of {n} weights");
        }
        let entry: serde_json::Map<String, serde_json::Value> = per_path
            .into_iter()
            .map(|(path, [w, wd, s, sd])| (path.to_string(), serde_json::json!({"weights": w, "weights_differing": wd, "state_values": s, "state_values_differing": sd})))
            .collect();
        report.insert(format!("state {state:?}, masters {master:?}"), serde_json::Value::Object(entry));
    }
    Ok(serde_json::json!({"device": device, "steps": steps, "checks": report}))
}

/// `--layer-backward`.
fn parse_layer_backward(s: &str) -> anyhow::Result<crate::model::LayerBackward> {
    serde_yaml::from_str(s).map_err(|_| anyhow::anyhow!("--layer-backward {s:?}: expected auto, autograd or explicit"))
}

/// Train `steps` full-SFT steps of a random-init `shape` model on `device`; returns the losses
/// and the final master weights (on the CPU).
#[allow(clippy::too_many_arguments)]
fn train_steps(shape: &str, seq: usize, mb: usize, steps: usize, device: &str, dtype: &str, fused: bool, layer_backward: crate::model::LayerBackward) -> anyhow::Result<(Vec<f64>, Vec<(String, Tensor)>)> {
    use crate::train::trainable::{Mode, Trainable};
    use crate::train::{AdamW, AdamWConfig};
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let dt = parse_dtype(dtype, &dev).map_err(anyhow::Error::msg)?;
    let cfg = crate::model::ModelConfig::from_json(shape_config(shape)?, std::path::Path::new(shape))?;
    let weights = crate::model::init::random_weights(&cfg, 0, 0.02)?;
    let mut src = crate::model::MapSource::new(weights, shape);
    let model = crate::model::CausalLm::from_source(cfg.clone(), &mut src, DType::F32, &dev)?;
    let mut trainable = Trainable::new(model, Mode::Full, dt, 0)?;
    trainable.layer_backward = layer_backward;
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
        let grads = trainable.backward(&loss, &view)?;
        opt.step(&grads, 1e-3)?;
        losses.push(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    }
    let params = trainable.params().iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?))).collect::<anyhow::Result<_>>()?;
    Ok((losses, params))
}

/// Relative L2 distance between two sets of named tensors.
fn judge_agreement(fixtures: &std::path::Path, device: &str, dtype: &str) -> anyhow::Result<serde_json::Value> {
    use crate::judge::{JudgeSettings, ModelJudge, Normalize};
    use crate::plugin::Judge as _;
    let file = fixtures.join("expected.json");
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?)?;
    let prompts: Vec<String> = serde_json::from_value(e["prompts"].clone())?;
    let load = |dir: &str, f: &dyn Fn(&mut JudgeSettings)| -> anyhow::Result<ModelJudge> {
        let mut s = JudgeSettings::new(fixtures.join(dir).to_string_lossy());
        s.device = device.into();
        s.dtype = dtype.into();
        f(&mut s);
        ModelJudge::load(s).with_context(|| format!("loading the {dir} fixture"))
    };
    let worst = |pairs: Vec<(f64, f64)>| -> f64 { pairs.iter().map(|(g, w)| (g - w).abs()).fold(0.0, f64::max) };
    let mut report = serde_json::Map::new();
    for (dir, key) in [("llama-cls", "llama_cls"), ("qwen2-cls", "qwen2_cls")] {
        let want: Vec<Vec<f64>> = serde_json::from_value(e[key]["probs_single"].clone())?;
        let j = load(dir, &|_| {})?;
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let single = prompts.iter().map(|p| j.score(p).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<f64>>>()?;
        let batched = j.score_many(&refs).map_err(anyhow::Error::msg)?;
        report.insert(
            format!("{dir} P(label 1)"),
            serde_json::json!({
                "max_abs_diff_single": worst(single.iter().zip(&want).map(|(g, w)| (*g, w[1])).collect()),
                "max_abs_diff_batched": worst(batched.iter().zip(&want).map(|(g, w)| (*g, w[1])).collect()),
                "prompts": prompts.len(),
            }),
        );
    }
    let cases = e["llama_lm"]["cases"].as_array().context("llama_lm.cases")?;
    for norm in [Normalize::Pair, Normalize::Vocab] {
        let key = if norm == Normalize::Pair { "p_true_pair" } else { "p_true_vocab" };
        let mut pairs = Vec::new();
        for chat in [false, true] {
            let j = load("llama-lm", &|s: &mut JudgeSettings| {
                s.normalize = norm;
                s.chat_template = Some(chat);
            })?;
            for c in cases.iter().filter(|c| c["chat"] == chat) {
                let got = j.score(c["prompt"].as_str().context("case prompt")?).map_err(anyhow::Error::msg)?;
                pairs.push((got, c[key].as_f64().context("case value")?));
            }
        }
        report.insert(format!("llama-lm {key}"), serde_json::json!({"max_abs_diff": worst(pairs.clone()), "cases": pairs.len()}));
    }
    Ok(serde_json::json!({"device": device, "dtype": dtype, "reference": format!("transformers {}", e["versions"]["transformers"]), "checks": report}))
}

/// How an input of an op under test is prepared.
#[derive(Clone, Copy)]
enum OpInput {
    /// Cast to the compute dtype (f64 on the reference side) and differentiated.
    Param,
    /// Moved to the device as is (masks, tables, token ids): no gradient.
    Aux,
}

type OpFn = dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// Value and parameter gradients of `f` on `device`/`dtype`, as f64 CPU tensors, for the
/// objective `sum(f(inputs) * r)`.
fn op_value_and_grads(inputs: &[(Tensor, OpInput)], f: &OpFn, r: &Tensor, dev: &Device, dt: DType) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
    let mut vars = Vec::new();
    let mut xs = Vec::new();
    for (t, kind) in inputs {
        let t = t.to_device(dev)?;
        match kind {
            OpInput::Param => {
                let v = candle_core::Var::from_tensor(&t.to_dtype(dt)?)?;
                xs.push(v.as_tensor().clone());
                vars.push(v);
            }
            OpInput::Aux => xs.push(t),
        }
    }
    let out = f(&xs)?;
    let grads = (out.to_dtype(DType::F32)? * r.to_device(dev)?)?.sum_all()?.backward()?;
    let value = out.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let g = vars
        .iter()
        .map(|v| -> anyhow::Result<Tensor> {
            let g = grads.get(v.as_tensor()).context("an input received no gradient")?;
            Ok(g.to_dtype(DType::F64)?.to_device(&Device::Cpu)?)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((value, g))
}

fn ops_agreement(device: &str, dtype: &str) -> anyhow::Result<serde_json::Value> {
    use crate::ops;
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let dt = parse_dtype(dtype, &dev).map_err(anyhow::Error::msg)?;
    let cpu = Device::Cpu;
    let mut seed = 11u64;
    let mut randn = |shape: &[usize]| -> anyhow::Result<Tensor> {
        seed += 1;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0) + rng.gen_range(-1.0f32..1.0)).collect();
        Ok(Tensor::from_vec(v, shape, &cpu)?)
    };
    let (b, t, hidden, heads, kv, hd, vocab, inter) = (2usize, 64usize, 128usize, 4usize, 2usize, 32usize, 1000usize, 256usize);
    // Padding in the second sequence's first 5 positions, causal everywhere.
    let valid: Vec<Vec<bool>> = vec![vec![true; t], (0..t).map(|i| i >= 5).collect()];
    let mask = crate::model::build_attention_mask(&valid, 0, t, &cpu)?;
    let angles = (randn(&[b, 1, t, hd / 2])? * 3.0)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    let targets = Tensor::from_vec((0..b * t).map(|i| ((i * 7919) % vocab) as u32).collect::<Vec<_>>(), b * t, &cpu)?;
    // q, k, v (grouped-query: `kv` heads serve `heads`) and the causal + padding mask.
    let attention_inputs = |randn: &mut dyn FnMut(&[usize]) -> anyhow::Result<Tensor>| -> anyhow::Result<Vec<(Tensor, OpInput)>> {
        Ok(vec![(randn(&[b, heads, t, hd])?, OpInput::Param), (randn(&[b, kv, t, hd])?, OpInput::Param), (randn(&[b, kv, t, hd])?, OpInput::Param), (mask.clone(), OpInput::Aux)])
    };
    let cases: Vec<(&str, Vec<(Tensor, OpInput)>, Box<OpFn>)> = vec![
        ("rms_norm", vec![(randn(&[b, t, hidden])?, OpInput::Param), (randn(&[hidden])?.affine(0.5, 1.0)?, OpInput::Param)], Box::new(|x: &[Tensor]| ops::rms_norm(&x[0], &x[1], 1e-6))),
        ("rope", vec![(randn(&[b, heads, t, hd])?, OpInput::Param), (cos, OpInput::Aux), (sin, OpInput::Aux)], Box::new(|x: &[Tensor]| ops::rope(&x[0], &x[1], &x[2]))),
        ("swiglu", vec![((randn(&[b * t, inter])? * 2.0)?, OpInput::Param), (randn(&[b * t, inter])?, OpInput::Param)], Box::new(|x: &[Tensor]| ops::swiglu(&x[0], &x[1]))),
        (
            "attention",
            attention_inputs(&mut randn)?,
            Box::new(|x: &[Tensor]| ops::attention(&x[0], &x[1], &x[2], Some(&x[3]))),
        ),
        (
            // The backward that recomputes the probabilities (long sequences).
            "attention_recompute",
            attention_inputs(&mut randn)?,
            Box::new(|x: &[Tensor]| ops::attention_keeping(&x[0], &x[1], &x[2], Some(&x[3]), 0)),
        ),
        (
            "embedding",
            vec![(randn(&[vocab, hidden])?, OpInput::Param), (Tensor::from_vec((0..b * t).map(|i| ((i * 31) % 97) as u32).collect::<Vec<_>>(), b * t, &cpu)?, OpInput::Aux)],
            // Repeated ids: their gradients must add up.
            Box::new(|x: &[Tensor]| ops::embedding(&x[0], &x[1])),
        ),
        (
            "head_logprobs",
            vec![(randn(&[b * t, hidden])?, OpInput::Param), ((randn(&[vocab, hidden])? * 0.2)?, OpInput::Param), (targets, OpInput::Aux)],
            // Chunks of 40 rows: several chunks, the last one partial.
            Box::new(|x: &[Tensor]| ops::head_logprobs(&x[0], &x[1], &x[2], 40)),
        ),
    ];
    let rel = |a: &Tensor, b: &Tensor| -> anyhow::Result<f64> {
        let num = (a - b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
        let den = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
        Ok(num / den.max(1e-300))
    };
    let mut report = serde_json::Map::new();
    for (name, inputs, f) in &cases {
        let probe = f(&inputs.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>())?;
        let r = randn(probe.dims())?;
        let (want, want_g) = op_value_and_grads(inputs, f.as_ref(), &r, &cpu, DType::F64).with_context(|| format!("{name} on the CPU"))?;
        let (got, got_g) = op_value_and_grads(inputs, f.as_ref(), &r, &dev, dt).with_context(|| format!("{name} on {device}"))?;
        let grads: Vec<f64> = got_g.iter().zip(&want_g).map(|(g, w)| rel(g, w)).collect::<anyhow::Result<_>>()?;
        report.insert(name.to_string(), serde_json::json!({"value_rel_err": rel(&got, &want)?, "grad_rel_err": grads}));
    }
    // NF4 dequantization (QLoRA's base): the device's result against the CPU's, bit for bit,
    // on a weight whose size is not a multiple of the block sizes (ragged last blocks).
    let w = (randn(&[4099, 263])? * 0.05)?;
    let q = std::sync::Arc::new(crate::quant::Nf4Tensor::quantize_tensor(&w)?);
    let want = q.dequantize_tensor(dt, &cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let got = q.dequantize_tensor(dt, &dev)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let differing = want.iter().zip(&got).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    // And the product the QLoRA forward takes through it, against the dense dequantized weight.
    let x = randn(&[64, 263])?;
    let dense = q.dequantize_tensor(DType::F64, &cpu)?;
    let want_y = x.to_dtype(DType::F64)?.matmul(&dense.t()?)?;
    let got_y = crate::ops::nf4_matmul(&x.to_dtype(dt)?.to_device(&dev)?, &q)?.to_device(&cpu)?.to_dtype(DType::F64)?;
    report.insert("nf4_dequantize".into(), serde_json::json!({"values": want.len(), "bits_differing": differing}));
    // NF4 quantization on the device (QLoRA loads quantize there) against the host's, part for
    // part: packed codes, absmax codes, nested absmax and offset. A zero block and a value
    // exactly at a block's absmax are included.
    let mut wv = w.flatten_all()?.to_vec1::<f32>()?;
    wv[64..128].iter_mut().for_each(|v| *v = 0.0);
    let wz = Tensor::from_vec(wv, w.dims(), &cpu)?;
    let host_q = crate::quant::Nf4Tensor::quantize_tensor(&wz)?;
    let dev_q = crate::quant::Nf4Tensor::quantize_tensor(&wz.to_device(&dev)?)?;
    let bytes_differing = host_q.packed().iter().zip(dev_q.packed()).filter(|(a, b)| a != b).count() + host_q.packed().len().abs_diff(dev_q.packed().len());
    let codes_differing = host_q.absmax_codes().iter().zip(dev_q.absmax_codes()).filter(|(a, b)| a != b).count();
    let nested_differing = host_q.nested_absmax().iter().zip(dev_q.nested_absmax()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    report.insert(
        "nf4_quantize".into(),
        serde_json::json!({"values": wz.elem_count(), "packed_bytes_differing": bytes_differing, "absmax_codes_differing": codes_differing,
            "nested_absmax_differing": nested_differing, "offset_equal": host_q.offset().to_bits() == dev_q.offset().to_bits()}),
    );
    report.insert("nf4_matmul".into(), serde_json::json!({"value_rel_err": rel(&got_y, &want_y)?}));
    Ok(serde_json::json!({
        "device": device, "dtype": format!("{dt:?}"), "fused_kernels": crate::kernels::enabled(&Tensor::zeros(1, dt, &dev)?),
        "reference": "cpu f64 (primitive-op path)", "ops": report,
    }))
}

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
        BenchCommand::Serve(args) => super::serve::bench(args),
        BenchCommand::JudgeAgreement { fixtures, device, dtype } => {
            println!("{}", serde_json::to_string_pretty(&judge_agreement(&fixtures, &device, &dtype)?)?);
            Ok(())
        }
        BenchCommand::InferAgreement { device } => {
            let dev = parse_device(&device).map_err(anyhow::Error::msg)?;
            println!("{}", crate::infer::agreement_report(&dev)?);
            Ok(())
        }
        BenchCommand::EngineAgreement { model, device, dtype, new_tokens, prompt, tie_margin } => {
            println!("{}", serde_json::to_string_pretty(&engine_agreement(&model, &device, &dtype, new_tokens, &prompt, tie_margin)?)?);
            Ok(())
        }
        BenchCommand::OpsAgreement { device, dtype } => {
            println!("{}", serde_json::to_string_pretty(&ops_agreement(&device, &dtype)?)?);
            Ok(())
        }
        BenchCommand::OptimAgreement { device, steps } => {
            let report = optim_agreement(&device, steps)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCommand::TrainAgreement { shape, seq, micro_batch, steps, device, dtype, layer_backward } => {
            let lb = parse_layer_backward(&layer_backward)?;
            let autograd = crate::model::LayerBackward::Autograd;
            let (cpu_losses, cpu_w) = train_steps(&shape, seq, micro_batch, steps, "cpu", "f32", false, autograd)?;
            let (dev_losses, dev_w) = train_steps(&shape, seq, micro_batch, steps, &device, &dtype, true, lb)?;
            let (plain_losses, plain_w) = train_steps(&shape, seq, micro_batch, steps, &device, &dtype, false, lb)?;
            let report = serde_json::json!({
                "shape": shape, "device": device, "dtype": dtype, "seq": seq, "micro_batch": micro_batch, "layer_backward": layer_backward,
                "cpu_f32_losses": cpu_losses, "device_losses_fused_adamw": dev_losses, "device_losses_tensor_adamw": plain_losses,
                "weights_rel_diff_device_vs_cpu": rel_diff(&cpu_w, &dev_w)?,
                "weights_rel_diff_fused_vs_tensor_adamw": rel_diff(&plain_w, &dev_w)?,
                "weights_rel_change_cpu": rel_diff(&cpu_w, &train_steps(&shape, seq, micro_batch, 0, "cpu", "f32", false, autograd)?.1)?,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCommand::Sft { shape, mode, checkpointing, seq, micro_batch, steps, warmup, device, dtype, json, phases, layers, optimizer_state, master, layer_backward, peak_tflops } => {
            let lean = (optimizer_state.as_str(), master.as_str(), layer_backward.as_str());
            let r = bench_sft(&shape, &mode, &checkpointing, seq, micro_batch, steps, warmup, &device, &dtype, phases, layers, lean, peak_tflops)?;
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
        BenchCommand::Rollout { model, device, dtype, prompts, samples, prompt_len, new_tokens, latency, json, block_size, max_seqs, max_tokens_per_step, memory_fraction } => {
            let r = bench_rollout(&model, &device, &dtype, (prompts, samples, prompt_len, new_tokens), latency, EngineConfig { block_size, max_seqs, max_tokens_per_step, memory_fraction, num_blocks: None, free_bytes: None })?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
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

/// `medrl bench rollout`: one warm-up run on the same shapes with few new tokens (kernels load
/// and compile), then the timed run.
fn bench_rollout(model: &std::path::Path, device: &str, dtype: &str, shape: (usize, usize, usize, usize), latency: bool, cfg: EngineConfig) -> anyhow::Result<serde_json::Value> {
    let (n_prompts, samples, prompt_len, new_tokens) = shape;
    anyhow::ensure!(n_prompts > 0 && samples > 0 && prompt_len > 0 && new_tokens > 1, "prompts, samples and prompt_len must be positive and new_tokens at least 2");
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let dt = parse_dtype(dtype, &dev).map_err(anyhow::Error::msg)?;
    let m = load_model_dir(model, &dev, dt).with_context(|| format!("loading {}", model.display()))?;
    let vocab = m.model.cfg.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (n_prompts, samples) = if latency { (1, 1) } else { (n_prompts, samples) };
    let unique: Vec<Vec<u32>> = (0..n_prompts).map(|_| (0..prompt_len).map(|_| rng.gen_range(0..vocab)).collect()).collect();
    let prompts: Vec<Vec<u32>> = unique.iter().flat_map(|p| std::iter::repeat_n(p.clone(), samples)).collect();
    let streams: Vec<u64> = (0..prompts.len() as u64).collect();
    let temperature = if latency { 0.0 } else { 1.0 };
    let stop = StopConditions::default();
    let warm = SamplingParams { max_new_tokens: 4, temperature, seed: 1, ..Default::default() };
    crate::engine::run(&m.model, &prompts, &streams, &warm, &stop, &cfg, None)?;
    dev.synchronize()?;
    crate::device::reset_peak_memory(&dev);
    let params = SamplingParams { max_new_tokens: new_tokens, temperature, seed: 2, ..Default::default() };
    let t0 = Instant::now();
    let first = std::cell::Cell::new(None);
    let cb = |n: usize, _| {
        if first.get().is_none() && n >= prompts.len() {
            first.set(Some(t0.elapsed().as_secs_f64()));
        }
    };
    let out = crate::engine::run(&m.model, &prompts, &streams, &params, &stop, &cfg, Some(&cb))?;
    dev.synchronize()?;
    let wall = t0.elapsed().as_secs_f64();
    let produced: usize = out.iter().map(|g| g.tokens.len()).sum();
    anyhow::ensure!(produced == prompts.len() * new_tokens, "expected {} tokens, got {produced}", prompts.len() * new_tokens);
    let ttft = first.get().unwrap_or(wall);
    let params_count: usize = m.model.named_tensors().iter().map(|(_, t)| t.elem_count()).sum();
    let peak_gib = crate::device::pool_memory_mb(&dev).map(|(high, _)| high / 1024.0);
    let mut r = serde_json::json!({
        "impl": "medrl", "mode": if latency { "engine-latency" } else { "engine" },
        "model": model.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
        "params": params_count, "device": format!("{dev:?}"), "dtype": format!("{dt:?}"),
        "prompts": n_prompts, "samples": samples, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "tokens_per_s": produced as f64 / wall, "wall_s": wall, "time_to_first_token_s": ttft,
        "peak_gib": peak_gib,
        "engine": {"block_size": cfg.block_size, "max_seqs": cfg.max_seqs, "max_tokens_per_step": cfg.max_tokens_per_step, "memory_fraction": cfg.memory_fraction},
    });
    if latency {
        r["ms_per_token"] = serde_json::json!((wall - ttft) * 1000.0 / (new_tokens - 1) as f64);
    }
    Ok(r)
}

/// Clinical prompts for `bench engine-agreement` (the kinds of question the bundled tasks ask).
const CLINICAL_PROMPTS: [&str; 8] = [
    "A 62-year-old man with cirrhosis has a 3 cm liver lesion with arterial enhancement and washout. What is the BCLC stage and the first-line treatment?",
    "Child-Pugh class A, single 4 cm hepatocellular carcinoma, ECOG 0. Is resection or ablation preferred?",
    "How many patients per arm are needed to detect a difference of 10 mmHg in systolic blood pressure with SD 20, alpha 0.05 and 80% power?",
    "Summarize the inclusion criteria of a phase III trial of atezolizumab plus bevacizumab in unresectable HCC.",
    "AFP 450 ng/mL, portal vein tumor thrombus, Child-Pugh B7. What are the treatment options?",
    "What is the hazard ratio and what does a 95% confidence interval of 0.62 to 0.91 mean for overall survival?",
    "A patient asks whether she should stop metformin before a contrast CT. Explain clearly.",
    "肝细胞癌患者，肿瘤直径5厘米，无血管侵犯，肝功能Child-Pugh A级，应如何治疗？",
];

fn engine_agreement(model: &std::path::Path, device: &str, dtype: &str, new_tokens: usize, extra: &[String], tie_margin: f32) -> anyhow::Result<serde_json::Value> {
    use crate::tokenizer::ChatMessage;
    let cpu = load_model_dir(model, &Device::Cpu, DType::F32).with_context(|| format!("loading {}", model.display()))?;
    let prompts: Vec<Vec<u32>> = CLINICAL_PROMPTS
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .map(|q| cpu.tokenizer.encode_chat(&[ChatMessage::user(&q)], true))
        .collect::<Result<_, _>>()?;
    let streams: Vec<u64> = (0..prompts.len() as u64).collect();
    let params = SamplingParams { max_new_tokens: new_tokens, ..Default::default() };
    let stop = StopConditions::default();
    let cfg = EngineConfig::default();
    let want = crate::engine::run(&cpu.model, &prompts, &streams, &params, &stop, &cfg, None)?;
    let dev = parse_device(device).map_err(anyhow::Error::msg)?;
    let dt = parse_dtype(dtype, &dev).map_err(anyhow::Error::msg)?;
    let other = load_model_dir(model, &dev, dt)?;
    let got = crate::engine::run(&other.model, &prompts, &streams, &params, &stop, &cfg, None)?;
    let mut rows = Vec::new();
    let (mut identical, mut near_ties) = (0, 0);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let first = w.tokens.iter().zip(&g.tokens).position(|(a, b)| a != b);
        let Some(k) = first else {
            identical += 1;
            rows.push(serde_json::json!({"prompt": i, "identical": true}));
            continue;
        };
        // The CPU's logits at the first differing position: how far apart were the two tokens?
        let mut seq = prompts[i].clone();
        seq.extend(&w.tokens[..k]);
        let input = Tensor::new(seq.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits: Vec<f32> = cpu.model.forward_causal(&input)?.squeeze(0)?.get(seq.len() - 1)?.to_vec1()?;
        let margin = logits[w.tokens[k] as usize] - logits[g.tokens[k] as usize];
        let tie = margin <= tie_margin;
        near_ties += tie as usize;
        rows.push(serde_json::json!({"prompt": i, "identical": false, "first_difference": k, "cpu_margin": margin, "near_tie": tie}));
    }
    Ok(serde_json::json!({
        "model": model, "device": format!("{dev:?}"), "dtype": format!("{dt:?}"), "new_tokens": new_tokens,
        "prompts": prompts.len(), "identical": identical, "diverged_at_near_tie": near_ties,
        "diverged_otherwise": prompts.len() - identical - near_ties, "tie_margin": tie_margin, "per_prompt": rows,
    }))
}
