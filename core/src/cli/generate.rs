use anyhow::{bail, Context};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::config;
use crate::generate::GenerateConfig;
use crate::generate::StopConditions;
use crate::model::{load_model_dir, parse_device, parse_dtype};
use crate::tokenizer::ChatMessage;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model folder (Hugging Face layout). Required unless the config file names one.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A LoRA adapter folder in PEFT's format, applied on top of the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// A prompt (repeatable).
    #[arg(long)]
    prompt: Vec<String>,
    /// JSON lines of prompts: {"prompt": "..."} or {"messages": [{"role","content"},...]}.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Apply the model's chat template (plain prompts become one user turn).
    #[arg(long)]
    chat: bool,
    /// System prompt for --chat.
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy.
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    repetition_penalty: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Prompts per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    device: Option<String>,
    /// f32, bf16, f16 or auto.
    #[arg(long)]
    dtype: Option<String>,
    /// YAML configuration (see `medrl schema generate`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write JSON lines (prompt, text, token ids, finish reason) here instead of text to stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Configuration overrides, `key.sub=value`.
    overrides: Vec<String>,
}

enum PromptSpec {
    Text(String),
    Messages(Vec<ChatMessage>),
}

fn read_prompts(path: &PathBuf) -> anyhow::Result<Vec<PromptSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = i + 1;
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: line {row}: not valid JSON", path.display()))?;
        if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
            out.push(PromptSpec::Text(p.to_string()));
        } else if let Some(m) = v.get("messages") {
            let msgs: Vec<ChatMessage> = serde_json::from_value(m.clone())
                .with_context(|| format!("{}: line {row}: `messages` must be a list of {{role, content}}", path.display()))?;
            out.push(PromptSpec::Messages(msgs));
        } else {
            bail!("{}: line {row}: expected a `prompt` string or a `messages` list", path.display());
        }
    }
    Ok(out)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Start from the config file (or defaults), then let explicit flags win.
    let mut overrides = args.overrides.clone();
    if args.config.is_none() && args.model.is_none() {
        bail!("--model is required (or a --config file with a `model` key)");
    }
    if let Some(m) = &args.model {
        overrides.push(format!("model={}", serde_json::to_string(&m.display().to_string())?));
    }
    let mut flag = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            overrides.push(format!("{k}={v}"));
        }
    };
    flag("sampling.max_new_tokens", args.max_new_tokens.map(|v| v.to_string()));
    flag("sampling.temperature", args.temperature.map(|v| v.to_string()));
    flag("sampling.top_p", args.top_p.map(|v| v.to_string()));
    flag("sampling.top_k", args.top_k.map(|v| v.to_string()));
    flag("sampling.repetition_penalty", args.repetition_penalty.map(|v| v.to_string()));
    flag("sampling.seed", args.seed.map(|v| v.to_string()));
    flag("batch_size", args.batch_size.map(|v| v.to_string()));
    flag("device", args.device.clone());
    flag("dtype", args.dtype.clone());
    if args.chat {
        overrides.push("chat=true".into());
    }
    if let Some(s) = &args.system {
        overrides.push(format!("system={}", serde_json::to_string(s)?));
    }
    if !args.stop.is_empty() {
        overrides.push(format!("stop={}", serde_json::to_string(&args.stop)?));
    }
    let cfg: GenerateConfig = config::load(args.config.as_deref(), &overrides)?;

    let mut prompts: Vec<PromptSpec> = args.prompt.iter().cloned().map(PromptSpec::Text).collect();
    if let Some(p) = &args.prompts {
        prompts.extend(read_prompts(p)?);
    }
    if prompts.is_empty() {
        bail!("no prompts: pass --prompt TEXT or --prompts FILE.jsonl");
    }

    let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
    let dtype = parse_dtype(&cfg.dtype, &device).map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    let mut loaded = load_model_dir(&cfg.model, &device, dtype).with_context(|| format!("loading {}", cfg.model.display()))?;
    if let Some(a) = &args.adapter {
        crate::model::peft::load_peft_adapter(&mut loaded.model, a).with_context(|| format!("loading adapter {}", a.display()))?;
    }
    crate::model::check_finite(&loaded.model, &cfg.model)?;
    tracing::info!("loaded {} ({:?}, {:?}, {:?}) in {:.2}s", cfg.model.display(), loaded.model.cfg.arch, device, dtype, t0.elapsed().as_secs_f64());
    let tok = &loaded.tokenizer;

    let mut texts = Vec::with_capacity(prompts.len());
    let mut ids = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let (text, enc) = match p {
            PromptSpec::Text(t) if !cfg.chat => (t.clone(), tok.encode(t, true)?),
            PromptSpec::Text(t) => {
                let mut msgs = vec![];
                if let Some(s) = &cfg.system {
                    msgs.push(ChatMessage::system(s.clone()));
                }
                msgs.push(ChatMessage::user(t.clone()));
                let rendered = tok.apply_chat_template(&msgs, true)?;
                let enc = tok.encode(&rendered, false)?;
                (rendered, enc)
            }
            PromptSpec::Messages(m) => {
                let rendered = tok.apply_chat_template(m, true)?;
                let enc = tok.encode(&rendered, false)?;
                (rendered, enc)
            }
        };
        texts.push(text);
        ids.push(enc);
    }

    let stop = StopConditions {
        eos_token_ids: loaded.generation.eos_token_ids.clone(),
        stop_strings: cfg.stop.clone(),
        tokenizer: Some(tok),
    };
    let total = (prompts.len() * cfg.sampling.max_new_tokens) as u64;
    let pb = crate::progress::bar(total, "generating", "tok");
    let t0 = Instant::now();
    let mut results = Vec::with_capacity(prompts.len());
    let mut done_before = 0u64;
    for (chunk_i, chunk) in ids.chunks(cfg.batch_size).enumerate() {
        // Seeds continue across chunks so a prompt's stream depends only on its index.
        let mut params = cfg.sampling.clone();
        params.seed = cfg.sampling.seed.wrapping_add((chunk_i * cfg.batch_size) as u64 * 0x9E37_79B9);
        let cb = |n: usize, _running: usize| pb.set_position(done_before + n as u64);
        let streams: Vec<u64> = (0..chunk.len() as u64).collect();
        let gens = crate::engine::run(&loaded.model, chunk, &streams, &params, &stop, &cfg.engine, Some(&cb))?;
        done_before += (chunk.len() * cfg.sampling.max_new_tokens) as u64;
        results.extend(gens);
    }
    pb.finish_and_clear();
    let n_tokens: usize = results.iter().map(|g| g.tokens.len()).sum();
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!("generated {n_tokens} tokens for {} prompts in {secs:.2}s ({:.1} tok/s)", prompts.len(), n_tokens as f64 / secs);

    let mut sink: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => Box::new(std::io::stdout().lock()),
    };
    for (i, (g, prompt)) in results.iter().zip(&texts).enumerate() {
        let text = tok.decode(&g.tokens, true)?;
        if args.output.is_some() {
            let row = serde_json::json!({
                "index": i, "prompt": prompt, "text": text, "tokens": g.tokens,
                "finish_reason": g.finish_reason,
            });
            writeln!(sink, "{row}")?;
        } else if results.len() == 1 {
            writeln!(sink, "{text}")?;
        } else {
            writeln!(sink, "### {i}\n{text}")?;
        }
    }
    Ok(())
}
