//! `medrl eval` (evaluate a model on a task, resumable) and `medrl eval compare` (the HTML report).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::eval::{self, EvalOptions, EvalTask, MetricSettings, RunConfig, RunControl, SurvivalSettings};
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
    /// Model folder (Hugging Face layout).
    #[arg(long, required = true)]
    model: Option<PathBuf>,
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
    /// Default: runs/eval/<task>-<split>-<model folder name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16, f16 or auto.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Responses generated per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
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

fn run_eval(a: RunArgs) -> Result<()> {
    let (Some(model_dir), Some(task_name)) = (a.model.clone(), a.task.clone()) else { bail!("--model and --task are required") };
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let split: Split = a.split.parse().map_err(anyhow::Error::msg)?;
    let task = Task::load(&task_name)?;
    let mut judges = JudgeProvider::new(a.test_judge, a.judge.clone(), &a.device)?;
    let etask = eval_task(&task, split, a.limit, a.reward_policy, &mut judges)?;
    let temperature = a.temperature.unwrap_or(if a.n > 1 { 0.7 } else { 0.0 });
    if a.n > 1 && temperature == 0.0 {
        tracing::warn!("--n {} with temperature 0: every sample of a prompt is the same greedy response", a.n);
    }
    let sampling = SamplingParams { temperature, top_p: a.top_p, top_k: a.top_k, repetition_penalty: a.repetition_penalty, max_new_tokens: a.max_new_tokens, seed: a.seed };
    let lbl = label(&model_dir, a.adapter.as_deref());
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/eval").join(format!("{}-{split}-{}", task.name(), lbl.replace(['/', ' ', '+'], "_"))));
    let config = RunConfig {
        label: lbl,
        model: model_dir.canonicalize().unwrap_or(model_dir.clone()).display().to_string(),
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

    let device = parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let dtype = parse_dtype(&a.dtype, &device).map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    let mut loaded = load_model_dir(&model_dir, &device, dtype).with_context(|| format!("loading {}", model_dir.display()))?;
    if let Some(ad) = &a.adapter {
        crate::model::peft::load_peft_adapter(&mut loaded.model, ad).with_context(|| format!("loading adapter {}", ad.display()))?;
    }
    crate::model::check_finite(&loaded.model, &model_dir)?;
    tracing::info!("loaded {} in {:.2}s", model_dir.display(), t0.elapsed().as_secs_f64());

    let host = crate::reward::host(a.cache_dir.clone())?;
    let limits = Limits { timeout: Duration::from_millis(a.reward_timeout_ms), ..Limits::default() };
    let rewards = RewardSet::load(&host, etask.rewards.clone(), &limits)?;
    let mut opts = EvalOptions::for_model(&loaded.generation, sampling);
    opts.n = a.n;
    opts.batch_size = a.batch_size;
    opts.progress = !a.quiet;
    let control = RunControl { stop_after_batches: a.stop_after_batches };
    let t0 = Instant::now();
    let outcome = eval::run_eval(&loaded.model, &loaded.tokenizer, &etask, &rewards, &config, &opts, &control, &out)?;
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
