//! `medrl reward score|bench`.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::plugin::{
    sample, FailurePolicy, Grants, HostConfig, Limits, Outcome, PluginHost,
    PluginOptions, Sample,
};
use crate::search::StudyIndex;

/// Sandbox limits and grants shared by the reward subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// What to do with a failed sample: fail | drop | score:<value>.
    #[arg(long, default_value = "fail")]
    pub policy: FailurePolicy,
    /// Wall-clock deadline per guest call, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Memory cap per plugin instance, in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_mib: usize,
    /// Fuel per call (enables fuel metering, which slows execution).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Samples per guest call.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Largest |score| (and |component|) accepted; a sample beyond it fails (bad output).
    #[arg(long, default_value_t = 1e6)]
    pub max_abs_score: f64,
    /// Most component names per result.
    #[arg(long, default_value_t = 256)]
    pub max_components: usize,
    /// Wall-clock bound on compiling a plugin that is not in the cache, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub compile_timeout_s: f64,
    /// Grant the `search` capability backed by a tantivy index built in memory from this
    /// corpus file (.jsonl/.json/.parquet rows {pmid|id, title, abstract|text}).
    #[arg(long, conflicts_with = "search_index")]
    pub search_docs: Option<PathBuf>,
    /// Grant the `search` capability backed by an index folder from `medrl index build`.
    #[arg(long)]
    pub search_index: Option<PathBuf>,
    /// Grant the `judge` capability with a constant test judge returning this score.
    #[arg(long)]
    pub test_judge: Option<f64>,
    /// Grant the `judge` capability backed by a model (`--judge-model DIR`, CPU unless
    /// --judge-device says otherwise).
    #[command(flatten)]
    pub judge: super::judge::JudgeArgs,
    /// Directory of the compiled-plugin cache (default: $MEDRL_CACHE_DIR or ~/.cache/medrl/plugins).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

// Parsed once per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RewardCommand {
    /// Score samples (JSONL: prompt, response, ground_truth, metadata, data_source) with a
    /// reward plugin; writes one JSON line per sample.
    Score {
        #[arg(long)]
        plugin: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// JSON file with the plugin's config object.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output JSONL (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Score N synthetic sample-size samples (~700-char responses) single-threaded and with
    /// all cores; prints µs/sample.
    Bench {
        #[arg(long)]
        plugin: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        /// Characters of filler reasoning per response.
        #[arg(long, default_value_t = 700)]
        response_chars: usize,
        /// Also write the samples as JSONL (for the CPython baseline, scripts/bench_reward.py).
        #[arg(long)]
        write_samples: Option<PathBuf>,
        #[arg(long, default_value_t = 512)]
        batch: usize,
        /// Timed rounds per mode; the best and the median are reported (timings on a shared
        /// machine vary by 2x from one round to the next).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

pub fn run(cmd: RewardCommand) -> Result<()> {
    match cmd {
        RewardCommand::Score {
            plugin,
            input,
            config,
            output,
            run,
        } => score(&plugin, &input, config.as_deref(), output.as_deref(), &run),
        RewardCommand::Bench {
            plugin,
            n,
            response_chars,
            write_samples,
            batch,
            rounds,
        } => bench(
            &plugin,
            n,
            response_chars,
            write_samples.as_deref(),
            batch,
            rounds,
        ),
    }
}

fn host(cache_dir: Option<PathBuf>, fuel: bool, compile_timeout_s: Option<f64>) -> Result<PluginHost> {
    let mut cfg = HostConfig::default();
    if cache_dir.is_some() {
        cfg.cache_dir = cache_dir;
    }
    cfg.fuel_metering = fuel;
    if let Some(s) = compile_timeout_s {
        cfg.compile_timeout = Duration::try_from_secs_f64(s).context("--compile-timeout-s")?;
    }
    Ok(PluginHost::new(cfg)?)
}

fn options(run: &RunArgs) -> Result<PluginOptions> {
    let mut grants = Grants::none();
    if let Some(path) = &run.search_docs {
        let index = StudyIndex::from_corpus(path).context("--search-docs")?;
        grants = grants.with_search(Box::new(index));
    }
    if let Some(dir) = &run.search_index {
        let index = StudyIndex::open(dir).context("--search-index")?;
        grants = grants.with_search(Box::new(index));
    }
    let mut judges = super::judge::JudgeProvider::new(run.test_judge, run.judge.clone(), "cpu")?;
    grants.judge = judges.from_flags()?;
    Ok(PluginOptions {
        limits: Limits {
            timeout: Duration::from_millis(run.timeout_ms),
            fuel: run.fuel,
            memory_bytes: run.memory_mib << 20,
            max_batch_per_call: run.batch.max(1),
            max_abs_score: run.max_abs_score,
            max_components: run.max_components,
            ..Limits::default()
        },
        grants,
        policy: run.policy,
        threads: run.threads,
        isolate_failures: true,
    })
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if !line.trim().is_empty() {
            out.push(line);
        }
    }
    Ok(out)
}

/// Parses one input line. `response` may also be given as `completion`; `ground_truth` may
/// sit under `reward_model.ground_truth` (VERL rows).
fn parse_sample(line: &str) -> Result<Sample> {
    let v: Value = serde_json::from_str(line)?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let response = if v.get("response").is_some() {
        s("response")
    } else {
        s("completion")
    };
    let gt = v
        .get("ground_truth")
        .or_else(|| v.pointer("/reward_model/ground_truth"))
        .cloned()
        .unwrap_or(Value::Null);
    let prompt = match v.get("prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Ok(sample(
        &prompt,
        response,
        &gt,
        v.get("metadata").unwrap_or(&Value::Null),
        s("data_source"),
    ))
}

fn score(
    plugin: &Path,
    input: &Path,
    config: Option<&Path>,
    output: Option<&Path>,
    run: &RunArgs,
) -> Result<()> {
    let config: Value = match config {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not JSON", p.display()))?,
        None => json!({}),
    };
    let mut samples = Vec::new();
    for (i, line) in read_lines(input)?.iter().enumerate() {
        samples.push(parse_sample(line).with_context(|| format!("{}:{}", input.display(), i + 1))?);
    }
    let host = host(run.cache_dir.clone(), run.fuel.is_some(), Some(run.compile_timeout_s))?;
    let p = host.load_reward(plugin, options(run)?)?;
    let outcomes = p.score(&config, &samples)?;
    let mut w: Box<dyn Write> = match output {
        Some(o) => Box::new(BufWriter::new(
            std::fs::File::create(o).with_context(|| format!("creating {}", o.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    for (i, o) in outcomes.iter().enumerate() {
        let line = match o {
            Outcome::Scored { score, components } => json!({
                "index": i, "status": "scored", "score": score,
                "components": components.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            }),
            Outcome::NotApplicable => {
                json!({"index": i, "status": "not_applicable", "score": null})
            }
            Outcome::Substituted { score, error } => {
                json!({"index": i, "status": "substituted", "score": score, "error": error.to_string(), "error_kind": error.kind()})
            }
            Outcome::Dropped { error } => {
                json!({"index": i, "status": "dropped", "score": null, "error": error.to_string(), "error_kind": error.kind()})
            }
        };
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    eprintln!("{} {}", p.id(), serde_json::to_string(&p.metrics())?);
    Ok(())
}

/// Deterministic synthetic sample-size samples: varied filler reasoning, an answer that is
/// within ±20% of the target about half of the time, and some malformed formats.
pub fn synthetic_samples(n: usize, response_chars: usize) -> Vec<Sample> {
    const WORDS: [&str; 16] = [
        "alpha",
        "power",
        "effect",
        "size",
        "two-sided",
        "arm",
        "dropout",
        "variance",
        "hazard",
        "ratio",
        "events",
        "proportion",
        "assume",
        "patients",
        "per",
        "group",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..n)
        .map(|i| {
            let mut think = String::with_capacity(response_chars + 16);
            while think.len() < response_chars {
                think.push_str(WORDS[next() % WORDS.len()]);
                think.push(' ');
            }
            let target = 50 + next() % 2000;
            let pred = target * (60 + next() % 80) / 100;
            let response = match i % 10 {
                0 => format!("{think}<answer>{pred}</answer>"),
                _ => format!(
                    "<think>{think}</think>\n<answer>{} participants</answer>",
                    pred
                ),
            };
            sample(
                "Estimate the sample size.",
                &response,
                &json!({"target": target}),
                &Value::Null,
                "sample_size_test",
            )
        })
        .collect()
}

fn bench(
    plugin: &Path,
    n: usize,
    response_chars: usize,
    write: Option<&Path>,
    batch: usize,
    rounds: usize,
) -> Result<()> {
    let samples = synthetic_samples(n, response_chars);
    if let Some(path) = write {
        let mut w = BufWriter::new(std::fs::File::create(path)?);
        for s in &samples {
            let gt: Value = serde_json::from_str(&s.ground_truth)?;
            writeln!(
                w,
                "{}",
                json!({"prompt": s.prompt, "response": s.response, "ground_truth": gt, "data_source": s.data_source})
            )?;
        }
        w.flush()?;
    }
    let host = host(None, false, None)?;
    let t0 = Instant::now();
    let mk = |threads| PluginOptions {
        limits: Limits {
            timeout: Duration::from_secs(60),
            max_batch_per_call: batch,
            ..Limits::default()
        },
        threads,
        ..PluginOptions::default()
    };
    let single = host.load_reward(plugin, mk(1))?;
    let load = t0.elapsed();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let all = Arc::new(host.load_reward(plugin, mk(cores))?);
    // Warm-up: instantiate the pooled stores and fault in memory.
    single.score(&json!({}), &samples[..samples.len().min(2048)])?;
    all.score(&json!({}), &samples[..samples.len().min(2048 * cores)])?;
    let mut report = Vec::new();
    let mut total = 0.0;
    for (label, p, threads) in [("1 thread", &single, 1), ("all cores", &*all, cores)] {
        let mut us = Vec::new();
        for _ in 0..rounds.max(1) {
            let t = Instant::now();
            let out = p.score(&json!({}), &samples)?;
            let dt = t.elapsed();
            total = out.iter().filter_map(Outcome::reward).sum::<f64>();
            us.push(dt.as_secs_f64() * 1e6 / n as f64);
            drop(out);
        }
        let mut sorted = us.clone();
        sorted.sort_by(f64::total_cmp);
        let (best, median) = (sorted[0], sorted[sorted.len() / 2]);
        report.push(json!({"mode": label, "threads": threads, "us_per_sample_rounds": us, "us_per_sample_best": best, "us_per_sample_median": median}));
        println!(
            "{label:>10} ({threads} threads): {n} samples, best {best:.2} µs/sample, median {median:.2} ({} rounds: {})",
            us.len(),
            us.iter().map(|u| format!("{u:.2}")).collect::<Vec<_>>().join(" ")
        );
    }
    if total.is_nan() {
        bail!("non-finite total");
    }
    println!(
        "compile/load: {:.3} s; sum of rewards: {total}",
        load.as_secs_f64()
    );
    println!(
        "{}",
        json!({"n": n, "response_chars": response_chars, "batch": batch, "rounds": rounds, "results": report, "sum_rewards": total})
    );
    Ok(())
}
