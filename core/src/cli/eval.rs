//! `medrl eval` (evaluate a model on a task, resumable) and `medrl eval compare` (the HTML report).
//! The model is a local folder, or with `--server` a model behind an OpenAI-compatible server
//! (`eval::remote`); everything after the responses is the same code.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::eval::{self, EvalOptions, EvalTask, LocalModel, MetricSettings, OpenAiServer, Responder, RunConfig, RunControl, ServerConfig, SurvivalSettings};
use crate::generate::SamplingParams;
use crate::model::{load_model_dir, parse_device, parse_dtype};
use super::judge::JudgeProvider;
use crate::plugin::{FailurePolicy, Limits};
use crate::reward::RewardSet;
use crate::task::{Split, Task, TextMetric};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: Option<EvalCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum EvalCommand {
    /// Compare finished eval runs in one self-contained HTML report (plus the same numbers as JSON).
    Compare {
        /// Run folders written by `medrl eval --out`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The HTML file; the JSON goes beside it with the extension `.json`.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Model folder (Hugging Face layout); with --server, the served model name.
    #[arg(long, required = true)]
    model: Option<String>,
    /// Evaluate the model behind this OpenAI-compatible server instead of loading one
    /// (base URL: http://host:port or http://host:port/v1; vLLM, `medrl serve`).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Bearer token for --server (default: $MEDRL_API_KEY, else $OPENAI_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// With --server: requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// With --server: seconds one request may take (connect, generate, read).
    #[arg(long, default_value_t = 600.0)]
    request_timeout_s: f64,
    /// A LoRA adapter folder in PEFT's format, applied on top of the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Task name (`tasks/<name>`) or task folder.
    #[arg(long, required = true)]
    task: Option<String>,
    /// train, validation or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Responses per prompt (best-of-n and majority vote for n = 1..K).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Evaluate only the first N examples of the split.
    #[arg(long)]
    limit: Option<usize>,
    /// Run folder (predictions.jsonl, metrics.json). Rerunning into it resumes.
    /// Default: runs/eval/<task>-<split>-<model folder name, or served model name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (default auto).
    #[arg(long)]
    device: Option<String>,
    /// f32, bf16, f16 or auto (default auto).
    #[arg(long)]
    dtype: Option<String>,
    /// Responses generated per batch; predictions are written after each (default 8, or
    /// 4 × --concurrency with --server).
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling temperature (default: 0 = greedy for --n 1, 0.7 otherwise).
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after generating this many batches (to test or pause; rerun to resume).
    #[arg(long)]
    stop_after_batches: Option<usize>,
    /// Failure policy of every reward plugin: fail | drop | score:<value> (default: fail, as an
    /// evaluation should not hide a broken reward).
    #[arg(long, default_value = "fail")]
    reward_policy: FailurePolicy,
    /// Back the tasks' judge capability with a constant stand-in judge returning this score
    /// (instead of the judge model; the numbers then measure format only).
    #[arg(long)]
    test_judge: Option<f64>,
    /// The judge model (default: the task's grants.judge; it runs on --device unless
    /// --judge-device says otherwise).
    #[command(flatten)]
    judge: super::judge::JudgeArgs,
    /// Wall-clock deadline per reward plugin call, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    reward_timeout_ms: u64,
    /// Compiled-plugin cache (default: $MEDRL_CACHE_DIR or ~/.cache/medrl/plugins).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.command {
        Some(EvalCommand::Compare { runs, out }) => {
            let json = eval::report::compare(&runs, &out)?;
            println!("wrote {} and {}", out.display(), json.display());
            Ok(())
        }
        None => run_eval(args.run),
    }
}

/// Build what evaluation needs from a task bundle.
pub fn eval_task(task: &Task, split: Split, limit: Option<usize>, policy: FailurePolicy, judges: &mut JudgeProvider) -> Result<EvalTask> {
    let mut examples = task.examples(split)?;
    if let Some(l) = limit {
        examples.truncate(l);
    }
    if examples.is_empty() {
        bail!("task `{}`: split `{split}` has no examples", task.name());
    }
    let rewards = task.reward_set_specs(policy, |grant, who| judges.for_grant(grant, Some(&task.dir), who))?;
    if rewards.is_empty() {
        bail!("task `{}` declares no reward plugin", task.name());
    }
    let names: Vec<String> = rewards.iter().map(|s| s.name.clone()).collect();
    let spec = task.metrics();
    let metrics = MetricSettings {
        // Where the task says its reward reads the answer (task.yaml `metrics.answer`).
        answer: spec.answer,
        accuracy: spec.accuracy_for(&names),
        bleu: spec.text.contains(&TextMetric::Bleu),
        rouge: spec.text.contains(&TextMetric::Rouge),
        rouge_cjk: None,
        survival: spec.survival.as_ref().map(|s| SurvivalSettings {
            time_field: s.time_field.clone(),
            event_field: s.event_field.clone(),
            horizons: s.horizons.clone(),
            response_tag: s.response_tag.clone(),
        }),
        bootstrap: 1000,
        answer_prefix: spec.answer_prefix.clone(),
    };
    Ok(EvalTask { name: task.name().to_string(), examples, rewards, metrics })
}

fn label(model: &Path, adapter: Option<&Path>) -> String {
    let name = |p: &Path| {
        let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        // `.../run/final` is a poor name: use `run/final`.
        let last = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match p.parent().and_then(|q| q.file_name()) {
            Some(parent) if ["final", "model", "merged"].contains(&last.as_str()) || last.starts_with("checkpoint") => format!("{}/{last}", parent.to_string_lossy()),
            _ => last,
        }
    };
    match adapter {
        Some(a) => format!("{} + {}", name(model), name(a)),
        None => name(model),
    }
}

/// A served model name as a folder name: anything but letters, digits, `.`, `-`, `_` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect()
}

/// The bearer token for --server: the flag, else $MEDRL_API_KEY, else $OPENAI_API_KEY.
fn api_key(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("MEDRL_API_KEY").ok())
        .or_else(|| std::env::var("OPENAI_API_KEY").ok())
        .filter(|k| !k.trim().is_empty())
}

fn run_eval(a: RunArgs) -> Result<()> {
    let (Some(model), Some(task_name)) = (a.model.clone(), a.task.clone()) else { bail!("--model and --task are required") };
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    if a.server.is_some() {
        // The server owns the weights and the hardware: these would silently do nothing.
        for (flag, set) in [("--adapter", a.adapter.is_some()), ("--device", a.device.is_some()), ("--dtype", a.dtype.is_some())] {
            if set {
                bail!("{flag} cannot be used with --server: the server loads the model (and any adapter) on its own device; --model names the served model");
            }
        }
        if a.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if !(a.request_timeout_s > 0.0 && Duration::try_from_secs_f64(a.request_timeout_s).is_ok()) {
            bail!("--request-timeout-s must be a positive number of seconds");
        }
    } else if a.api_key.is_some() {
        bail!("--api-key is for --server");
    }
    let server_base = a.server.as_deref().map(eval::remote::normalize_base_url).transpose()?;
    let device = a.device.clone().unwrap_or_else(|| "auto".into());
    let split: Split = a.split.parse().map_err(anyhow::Error::msg)?;
    let task = Task::load(&task_name)?;
    let mut judges = JudgeProvider::new(a.test_judge, a.judge.clone(), &device)?;
    let etask = eval_task(&task, split, a.limit, a.reward_policy, &mut judges)?;
    let temperature = a.temperature.unwrap_or(if a.n > 1 { 0.7 } else { 0.0 });
    if a.n > 1 && temperature == 0.0 {
        tracing::warn!("--n {} with temperature 0: every sample of a prompt is the same greedy response", a.n);
    }
    let sampling = SamplingParams { temperature, top_p: a.top_p, top_k: a.top_k, repetition_penalty: a.repetition_penalty, max_new_tokens: a.max_new_tokens, seed: a.seed };
    let model_dir = PathBuf::from(&model);
    // Server mode: the label names the model and where it is served (a different server or
    // model is a different run folder's settings); `model` records the endpoint base.
    let (lbl, model_id, out_name) = match &server_base {
        Some(base) => (format!("{model} @ {base}"), base.clone(), sanitize(&model)),
        None => {
            let lbl = label(&model_dir, a.adapter.as_deref());
            let name = lbl.replace(['/', ' ', '+'], "_");
            (lbl, model_dir.canonicalize().unwrap_or(model_dir.clone()).display().to_string(), name)
        }
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/eval").join(format!("{}-{split}-{out_name}", task.name())));
    let config = RunConfig {
        label: lbl,
        model: model_id,
        adapter: a.adapter.as_ref().map(|p| p.canonicalize().unwrap_or(p.clone()).display().to_string()),
        task: task.name().to_string(),
        split: split.to_string(),
        n: a.n,
        limit: a.limit,
        temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        repetition_penalty: a.repetition_penalty,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        metrics: etask.metrics.clone(),
    };

    let host = crate::reward::host(a.cache_dir.clone())?;
    let limits = Limits { timeout: Duration::from_millis(a.reward_timeout_ms), ..Limits::default() };
    let rewards = RewardSet::load(&host, etask.rewards.clone(), &limits)?;
    let control = RunControl { stop_after_batches: a.stop_after_batches };

    // Each arm keeps what the responder borrows alive here.
    let (loaded, local, server);
    let (responder, mut opts): (&dyn Responder, EvalOptions) = match &server_base {
        Some(base) => {
            let mut cfg = ServerConfig::new(base.clone(), model.clone());
            cfg.api_key = api_key(a.api_key.as_deref());
            cfg.concurrency = a.concurrency;
            cfg.request_timeout = Duration::from_secs_f64(a.request_timeout_s);
            server = OpenAiServer::new(cfg)?;
            tracing::info!("evaluating `{model}` served at {}", server.endpoint());
            let mut opts = EvalOptions::new(sampling);
            // Batches are the unit of writing: several per round of requests keeps the server fed.
            opts.batch_size = a.batch_size.unwrap_or(a.concurrency.saturating_mul(4));
            if opts.batch_size < a.concurrency {
                tracing::warn!("--batch-size {} < --concurrency {}: at most {} requests are in flight", opts.batch_size, a.concurrency, opts.batch_size);
            }
            (&server, opts)
        }
        None => {
            let device = parse_device(&device).map_err(anyhow::Error::msg)?;
            let dtype = parse_dtype(a.dtype.as_deref().unwrap_or("auto"), &device).map_err(anyhow::Error::msg)?;
            let t0 = Instant::now();
            let mut m = load_model_dir(&model_dir, &device, dtype).with_context(|| format!("loading {}", model_dir.display()))?;
            if let Some(ad) = &a.adapter {
                crate::model::peft::load_peft_adapter(&mut m.model, ad).with_context(|| format!("loading adapter {}", ad.display()))?;
            }
            crate::model::check_finite(&m.model, &model_dir)?;
            tracing::info!("loaded {} in {:.2}s", model_dir.display(), t0.elapsed().as_secs_f64());
            loaded = m;
            let mut opts = EvalOptions::for_model(&loaded.generation, sampling);
            opts.batch_size = a.batch_size.unwrap_or(8);
            local = LocalModel { model: &loaded.model, tokenizer: &loaded.tokenizer };
            (&local, opts)
        }
    };
    opts.n = a.n;
    opts.progress = !a.quiet;
    let t0 = Instant::now();
    let outcome = eval::run_eval_with(responder, &etask, &rewards, &config, &opts, &control, &out)?;
    tracing::info!("{} responses generated ({} resumed) in {:.1}s", outcome.generated, outcome.resumed, t0.elapsed().as_secs_f64());
    for j in judges.loaded() {
        tracing::info!(judge = %j.dir().display(), stats = ?j.stats(), "judge model");
    }
    match outcome.metrics {
        None => println!("stopped early; rerun the same command to resume ({})", out.display()),
        Some(m) => {
            let mut line = format!("{}: {} prompts × {}", task.name(), m.n_prompts, m.n_samples);
            if let Some(r) = &m.reward {
                line += &format!(", mean reward {:.4}", r.mean);
            }
            if let Some(acc) = m.accuracy {
                line += &format!(", accuracy {:.1}%", acc * 100.0);
            }
            line += &format!(", no parsable answer {:.1}%", m.extract_failure_rate * 100.0);
            println!("{line}\nwrote {}", out.join(eval::run::METRICS).display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn eval(args: &[&str]) -> Result<()> {
        let cli = Cli::try_parse_from(std::iter::once("eval").chain(args.iter().copied()))?;
        run(cli.eval)
    }

    #[test]
    fn server_mode_refuses_local_model_flags() {
        let base = ["--server", "http://127.0.0.1:9/v1", "--model", "qwen", "--task", "no-such-task"];
        for extra in [["--adapter", "a"], ["--device", "cpu"], ["--dtype", "bf16"]] {
            let args: Vec<&str> = base.iter().copied().chain(extra).collect();
            let e = eval(&args).unwrap_err().to_string();
            assert!(e.contains(&format!("{} cannot be used with --server", extra[0])), "{e}");
        }
        let e = eval(&["--model", "m", "--task", "t", "--api-key", "k"]).unwrap_err().to_string();
        assert!(e.contains("--api-key is for --server"), "{e}");
        let e = eval(&[&base[..], &["--concurrency", "0"]].concat()).unwrap_err().to_string();
        assert!(e.contains("--concurrency"), "{e}");
        let e = eval(&["--server", "localhost:8000", "--model", "qwen", "--task", "t"]).unwrap_err().to_string();
        assert!(e.contains("server URL `localhost:8000`"), "{e}");
        // --model stays required in server mode.
        assert!(eval(&["--server", "http://127.0.0.1:9", "--task", "t"]).is_err());
    }

    #[test]
    fn served_model_names_become_folder_names() {
        assert_eq!(sanitize("Qwen/Qwen2.5-7B-Instruct"), "Qwen_Qwen2.5-7B-Instruct");
        assert_eq!(sanitize("my model:latest"), "my_model_latest");
    }
}
