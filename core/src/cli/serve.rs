//! `medrl serve`: load the model (and adapters), size the KV caches, start the server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::engine::EngineConfig;
use crate::model::{load_model_dir, parse_device, parse_dtype, CausalLm};
use crate::serve::{ServeOptions, ServedModel};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model folder (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// The name clients ask for (default: the model folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// A LoRA adapter in PEFT's format served as its own model, `NAME=DIR` (repeatable). It
    /// shares the base's weights; each adapter gets its own engine thread and KV cache.
    #[arg(long, value_parser = parse_adapter)]
    adapter: Vec<(String, PathBuf)>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also from MEDRL_API_KEY).
    #[arg(long, env = "MEDRL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16, f16 or auto.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Requests accepted and not yet finished, at most; more get HTTP 429.
    #[arg(long, default_value_t = 1024)]
    max_pending: usize,
    /// A request still running after this many seconds ends with an error (HTTP 504).
    #[arg(long, default_value_t = 600.0)]
    request_timeout_s: f64,
    /// KV-cache size in MiB over all served models (default on CPU: 1024; on a GPU the cache
    /// takes --memory-fraction of the memory left free after the weights).
    #[arg(long)]
    kv_cache_mib: Option<u64>,
    /// On a GPU, the share of free memory the KV caches take (vLLM's gpu_memory_utilization,
    /// of free memory).
    #[arg(long, default_value_t = 0.9)]
    memory_fraction: f64,
    /// Sequences computed per engine step at most.
    #[arg(long, default_value_t = 512)]
    max_seqs: usize,
    /// Tokens computed per engine step at most (prefill chunks plus one per decoding sequence).
    #[arg(long, default_value_t = 8192)]
    max_tokens_per_step: usize,
    /// KV-cache slots per block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
}

fn parse_adapter(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, d)) if !n.is_empty() && !d.is_empty() => Ok((n.to_string(), PathBuf::from(d))),
        _ => Err(format!("`{s}`: expected NAME=DIR")),
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    let (opts, served, names) = build(args)?;
    crate::serve::serve(opts, served, move |addr| {
        // The one line on stdout: scripts and tests read the address from it.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "medrl serve: listening on http://{addr} (models: {})", names.join(", "));
        let _ = out.flush();
    })?;
    Ok(())
}

/// Load the models and size the caches: what `serve` needs, and the served names.
fn build(args: ServeArgs) -> Result<(ServeOptions, Vec<ServedModel>, Vec<String>)> {
    let engine = EngineConfig {
        block_size: args.block_size,
        max_seqs: args.max_seqs,
        max_tokens_per_step: args.max_tokens_per_step,
        memory_fraction: args.memory_fraction,
        num_blocks: None,
        free_bytes: None,
    };
    engine.validate().map_err(|(k, m)| anyhow::anyhow!("--{}: {m}", k.replace('_', "-")))?;
    if !(args.request_timeout_s > 0.0 && args.request_timeout_s.is_finite()) {
        bail!("--request-timeout-s: {} must be > 0", args.request_timeout_s);
    }
    if args.max_pending == 0 {
        bail!("--max-pending: must be at least 1");
    }
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let dtype = parse_dtype(&args.dtype, &device).map_err(anyhow::Error::msg)?;
    let loaded = load_model_dir(&args.model, &device, dtype).with_context(|| format!("loading {}", args.model.display()))?;
    crate::model::check_finite(&loaded.model, &args.model)?;
    let base_name = match &args.served_model_name {
        Some(n) => n.clone(),
        None => args.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
    };
    let mut models: Vec<(String, Option<String>, CausalLm)> = Vec::new();
    for (name, dir) in &args.adapter {
        // A clone shares the base's tensors; the adapter's matrices are its own.
        let mut m = loaded.model.clone();
        crate::model::peft::load_peft_adapter(&mut m, dir).with_context(|| format!("loading adapter `{name}` from {}", dir.display()))?;
        models.push((name.clone(), Some(base_name.clone()), m));
    }
    models.insert(0, (base_name.clone(), None, loaded.model));

    // One KV-cache budget, split evenly between the served models.
    let per_token = crate::engine::cache::PagedKvCache::bytes_per_token(&models[0].2.cfg, dtype);
    let budget = match (args.kv_cache_mib, crate::device::free_memory_bytes(&device)) {
        (Some(mib), _) => mib << 20,
        (None, Some(free)) => (free as f64 * args.memory_fraction) as u64,
        (None, None) => 1024 << 20,
    };
    let blocks = (budget / models.len() as u64 / (per_token * args.block_size as u64)) as usize;
    if blocks == 0 {
        bail!("a KV cache of {} MiB over {} models holds no block of {} tokens ({per_token} bytes a token)", budget >> 20, models.len(), args.block_size);
    }
    let tokenizer = Arc::new(loaded.tokenizer);
    let eos = loaded.generation.eos_token_ids.clone();
    let names: Vec<String> = models.iter().map(|m| m.0.clone()).collect();
    tracing::info!("serving {} on {device:?} ({dtype:?}); KV cache {} blocks x {} tokens per model", names.join(", "), blocks, args.block_size);
    let served: Vec<ServedModel> = models
        .into_iter()
        .map(|(name, parent, model)| ServedModel { name, parent, model, tokenizer: tokenizer.clone(), eos_token_ids: eos.clone(), num_blocks: blocks })
        .collect();
    let loopback = matches!(args.host.as_str(), "127.0.0.1" | "localhost" | "::1");
    if !loopback && args.api_key.is_none() {
        tracing::warn!("listening on {} without an API key: anyone who can reach this address can use the models (pass --api-key or set MEDRL_API_KEY)", args.host);
    }
    let opts = ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        max_pending: args.max_pending,
        request_timeout: Duration::from_secs_f64(args.request_timeout_s),
        engine,
    };
    Ok((opts, served, names))
}

/// `medrl bench serve`: a server on a free loopback port in this process, then the load
/// generator at each concurrency level.
#[derive(clap::Args)]
pub struct BenchServeArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Concurrent clients, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// Requests per run: this many per client, at least 8.
    #[arg(long, default_value_t = 2)]
    requests_per_client: usize,
    /// Tokens generated per request (EOS ignored, as vLLM's benchmarks).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Words per prompt (clinical-sounding text; about 1.3 tokens a word).
    #[arg(long, default_value_t = 96)]
    prompt_words: usize,
    /// One compact JSON line per level instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn bench(args: BenchServeArgs) -> Result<()> {
    let mut serve_args = args.serve;
    serve_args.host = "127.0.0.1".into();
    serve_args.port = 0;
    serve_args.max_pending = serve_args.max_pending.max(args.concurrency.iter().copied().max().unwrap_or(1));
    let key = serve_args.api_key.clone();
    let (opts, served, names) = build(serve_args)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Err(e) = crate::serve::serve(opts, served, move |addr| {
            let _ = tx.send(addr);
        }) {
            tracing::error!("{e}");
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(600)).context("the server did not start")?;
    const WORDS: [&str; 16] = ["patient", "reports", "intermittent", "chest", "pain", "with", "dyspnea", "and", "fever", "history", "of", "hypertension", "treated", "daily", "since", "admission"];
    let prompts: Vec<String> = (0..64)
        .map(|i| {
            let words: Vec<&str> = (0..args.prompt_words).map(|k| WORDS[(k * 7 + i * 3 + k / 5) % WORDS.len()]).collect();
            format!("Case {i}: {}", words.join(" "))
        })
        .collect();
    for &c in &args.concurrency {
        let spec = crate::serve::loadgen::LoadSpec {
            url: format!("http://{addr}"),
            model: names[0].clone(),
            api_key: key.clone(),
            prompts: prompts.clone(),
            requests: (c * args.requests_per_client).max(8),
            concurrency: c,
            max_tokens: args.max_tokens,
            temperature: 1.0,
            seed: Some(0),
            stream: true,
            ignore_eos: true,
            disconnect_every: None,
            timeout: Duration::from_secs(900),
        };
        let (report, outcomes) = crate::serve::loadgen::run(&spec)?;
        if let Some(o) = outcomes.iter().find(|o| o.error.is_some()) {
            bail!("request {} failed: {}", o.index, o.error.as_deref().unwrap_or_default());
        }
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{:>4} clients: {:>6} requests, {:>9.0} output tokens/s, latency p50 {:.3}s p99 {:.3}s, first token p50 {:.3}s p99 {:.3}s",
                c, report.requests, report.output_tokens_per_s, report.latency_p50_s, report.latency_p99_s, report.ttft_p50_s, report.ttft_p99_s
            );
        }
    }
    Ok(())
}
