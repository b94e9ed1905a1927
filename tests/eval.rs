//! `medrl eval` integration tests (CPU, tiny random models, a few prompts, 16 new tokens):
//! every bundled task evaluates into predictions.jsonl + metrics.json and compares into an HTML
//! report; an interrupted eval (stopped after one batch, plus a torn last line) resumes without
//! regenerating finished prompts and ends with the metrics of an uninterrupted run; the library
//! entry point trainers use gives the same numbers as the command; the report escapes model text.
//! The headless-browser check of the report runs only where Chromium is installed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use medrl::data::{Example, Origin};
use medrl::eval::{self, AccuracySpec, AnswerParser, EvalOptions, EvalTask, MetricSettings, Prediction, RewardSpec, RunConfig, RunControl};
use medrl::generate::SamplingParams;
use medrl::model::init::{init_model_dir, InitOptions, Preset};
use medrl::model::{load_model_dir, Arch};
use medrl::plugin::{FailurePolicy, Grants, HostConfig, Limits, PluginHost};
use medrl::tokenizer::ChatMessage;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// One tiny random model per test process.
fn tiny_model() -> PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("tiny-qwen2");
        let mut opts = InitOptions::new(Arch::Qwen2, Preset::Tiny);
        opts.seed = 5;
        init_model_dir(&m, &opts).unwrap();
        (t, m)
    })
    .1
    .clone()
}

/// Builds the plugins workspace once (incremental); returns the folder of the `.wasm` files.
fn plugins_built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let files = medrl::cli::plugin::build_plugin(&repo().join("plugins")).expect("building plugins/ for wasm32-wasip2 failed (run scripts/setup-plugins.sh)");
            files[0].parent().unwrap().to_path_buf()
        })
        .clone()
}

/// The binary with the repo's tasks and the plugins just built (CI builds them into its own
/// CARGO_TARGET_DIR, not plugins/target).
fn medrl_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medrl"));
    c.args(args).env("MEDRL_TASKS_DIR", repo().join("tasks")).env("MEDRL_PLUGIN_DIR", plugins_built());
    c
}

fn medrl(args: &[&str]) -> std::process::Output {
    let out = medrl_cmd(args).output().unwrap();
    if !out.status.success() {
        panic!("medrl {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    out
}

fn read_preds(dir: &Path) -> Vec<Prediction> {
    eval::read_predictions(&dir.join("predictions.jsonl")).unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn bundled_tasks() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("tasks"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("task.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn eval_args<'a>(model: &'a str, task: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "eval", "--model", model, "--task", task, "--out", out, "--device", "cpu", "--max-new-tokens", "16", "--batch-size", "4", "--test-judge", "0.7", "--quiet",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn every_bundled_task_evaluates_and_compares_into_a_report() {
    let tasks = bundled_tasks();
    assert!(!tasks.is_empty(), "no task bundles under tasks/");
    let model = tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    for task in &tasks {
        let out = tmp.path().join(task);
        let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
        medrl(&eval_args(m, task, o, &["--limit", "3"]));
        let preds = read_preds(&out);
        assert_eq!(preds.len(), 3, "{task}: one prediction per prompt");
        assert!(preds.iter().all(|p| !p.prompt.is_empty() && p.tokens <= 16), "{task}");
        let metrics = read_json(&out.join("metrics.json"));
        assert_eq!(metrics["n_prompts"], 3, "{task}");
        assert!(metrics["extract_failure_rate"].is_number(), "{task}");
        assert!(metrics["reward"]["mean"].is_number() || metrics["dropped_responses"].as_u64() > Some(0), "{task}: {metrics}");
        let spec = read_json(&out.join("eval_config.json"));
        if spec["metrics"]["survival"].is_object() {
            assert!(metrics["survival"].is_object(), "{task}: survival metrics requested");
        }
        if spec["metrics"]["bleu"] == true {
            assert!(metrics["text"]["bleu"].is_number(), "{task}: BLEU requested: {metrics}");
        }

        // A second "model": the same one with another seed and 2 samples per prompt.
        let out2 = tmp.path().join(format!("{task}-n2"));
        medrl(&eval_args(m, task, out2.to_str().unwrap(), &["--limit", "2", "--n", "2", "--seed", "1"]));
        let m2 = read_json(&out2.join("metrics.json"));
        assert_eq!(m2["scaling"].as_array().unwrap().len(), 2, "{task}: accuracy vs n for n = 1, 2");

        let html = tmp.path().join(format!("{task}-report.html"));
        medrl(&["eval", "compare", o, out2.to_str().unwrap(), "--out", html.to_str().unwrap()]);
        let text = std::fs::read_to_string(&html).unwrap();
        assert!(text.starts_with("<!DOCTYPE html>") && text.contains("<svg") && text.contains("Example responses"), "{task}");
        assert!(!text.contains("<script") && !text.contains("src=\"http") && !text.contains("href=\"http"), "{task}: report must be self-contained");
        let report = read_json(&html.with_extension("json"));
        assert_eq!(report["runs"].as_array().unwrap().len(), 2);
        assert_eq!(report["runs"][0]["metrics"], metrics, "{task}: report.json carries the run's numbers");
    }
}

#[test]
fn interrupted_eval_resumes_without_regenerating_and_matches_an_uninterrupted_run() {
    let task = bundled_tasks().into_iter().next().expect("a task bundle");
    let model = tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let m = model.to_str().unwrap();
    let extra = ["--limit", "5", "--n", "2", "--temperature", "0.9", "--seed", "7"];
    medrl(&eval_args(m, &task, full.to_str().unwrap(), &extra));

    let mut stop = extra.to_vec();
    stop.extend(["--stop-after-batches", "1"]);
    medrl(&eval_args(m, &task, part.to_str().unwrap(), &stop));
    assert!(!part.join("metrics.json").exists(), "no metrics for an unfinished run");
    let first = read_preds(&part);
    assert_eq!(first.len(), 4, "one batch of 4 responses");
    // A torn write (killed mid-line) is cut off on resume.
    let pred_file = part.join("predictions.jsonl");
    let before = std::fs::read_to_string(&pred_file).unwrap();
    std::fs::write(&pred_file, format!("{before}{{\"index\": 4, \"sam")).unwrap();

    // Settings that differ from the run folder's are refused.
    let other = eval_args(m, &task, part.to_str().unwrap(), &["--limit", "5", "--n", "2", "--temperature", "0.9", "--seed", "8"]);
    let refused = medrl_cmd(&other).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("other settings"), "{}", String::from_utf8_lossy(&refused.stderr));

    medrl(&eval_args(m, &task, part.to_str().unwrap(), &extra));
    let after = std::fs::read_to_string(&pred_file).unwrap();
    assert!(after.starts_with(&before), "finished batches are kept as they were, not regenerated");
    let resumed = read_preds(&part);
    assert_eq!(resumed.len(), 10);
    let keys: HashSet<(usize, usize)> = resumed.iter().map(|p| (p.index, p.sample)).collect();
    assert_eq!(keys.len(), 10, "no response generated twice");

    let key = |ps: Vec<Prediction>| ps.into_iter().map(|p| ((p.index, p.sample), p)).collect::<BTreeMap<_, _>>();
    assert_eq!(key(resumed), key(read_preds(&full)), "resumed predictions equal the uninterrupted run's");
    assert_eq!(read_json(&part.join("metrics.json")), read_json(&full.join("metrics.json")));

    // Rerunning a finished run generates nothing and rewrites the same metrics.
    medrl(&eval_args(m, &task, part.to_str().unwrap(), &extra));
    assert_eq!(std::fs::read_to_string(&pred_file).unwrap(), after);
}

/// A task assembled in code (no bundle): the sample-size reward, hand-written examples.
fn fixture_task() -> EvalTask {
    let dir = plugins_built();
    let ex = |q: &str, target: u64| {
        (
            Origin { file: "fixture.jsonl".into(), row: target as usize },
            Example {
                messages: vec![ChatMessage::system("Answer with <think></think><answer>N</answer>."), ChatMessage::user(q.to_string())],
                ground_truth: json!({ "target": target }),
                metadata: json!({}),
                data_source: "fixture".into(),
            },
        )
    };
    EvalTask {
        name: "fixture".into(),
        examples: vec![ex("Sample size for a two-arm trial?", 100), ex("How many patients for 80% power?", 250), ex("Total enrolment?", 40)],
        rewards: vec![RewardSpec {
            name: "sample-size".into(),
            plugin: dir.join("sample_size.wasm"),
            weight: 1.0,
            config: json!({}),
            grants: Grants::none(),
            policy: FailurePolicy::Fail,
            timeout: None,
        }],
        metrics: MetricSettings {
            answer: AnswerParser::Number,
            accuracy: Some(AccuracySpec { plugin: None, component: "accuracy".into(), threshold: 1.0 }),
            ..Default::default()
        },
    }
}

#[test]
fn library_evaluate_equals_the_run_folder_metrics() {
    let task = fixture_task();
    let loaded = load_model_dir(&tiny_model(), &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let rewards = eval::Rewards::load(&host, task.rewards.clone(), &Limits::default()).unwrap();
    let sampling = SamplingParams { temperature: 0.8, max_new_tokens: 12, seed: 3, ..Default::default() };
    let mut opts = EvalOptions::for_model(&loaded.generation, sampling.clone());
    opts.n = 3;
    opts.batch_size = 4;
    let (metrics, preds) = eval::evaluate(&loaded.model, &loaded.tokenizer, &task.examples, &rewards, &task.metrics, &opts).unwrap();
    assert_eq!(preds.len(), 9);
    assert_eq!(metrics.n_responses, 9);
    assert_eq!(metrics.scaling.len(), 3);
    assert!(metrics.accuracy.is_some());
    // Random tokens never give the <think><answer> format: the reward's penalty, and no answer.
    assert_eq!(metrics.extract_failure_rate_all_samples, 1.0);
    assert_eq!(metrics.reward.as_ref().unwrap().mean, -2.0);

    let tmp = tempfile::tempdir().unwrap();
    let cfg = RunConfig {
        label: "tiny".into(),
        model: "tiny".into(),
        adapter: None,
        task: "fixture".into(),
        split: "test".into(),
        n: 3,
        limit: None,
        temperature: 0.8,
        top_p: 1.0,
        top_k: 0,
        repetition_penalty: 1.0,
        max_new_tokens: 12,
        seed: 3,
        metrics: task.metrics.clone(),
    };
    // Another batch size: the same responses (each has its own RNG stream).
    opts.batch_size = 2;
    let out = eval::run_eval(&loaded.model, &loaded.tokenizer, &task, &rewards, &cfg, &opts, &RunControl::default(), tmp.path()).unwrap();
    assert_eq!(out.metrics.as_ref(), Some(&metrics));
    let responses = |ps: &[Prediction]| ps.iter().map(|p| ((p.index, p.sample), p.response.clone())).collect::<BTreeMap<_, _>>();
    assert_eq!(responses(&read_preds(tmp.path())), responses(&preds));
    // Sample 0 of an n = 3 run is the response an n = 1 run gives.
    opts.n = 1;
    let (_, single) = eval::evaluate(&loaded.model, &loaded.tokenizer, &task.examples, &rewards, &task.metrics, &opts).unwrap();
    for p in &single {
        assert_eq!(p.response, preds.iter().find(|q| q.index == p.index && q.sample == 0).unwrap().response);
    }
}

/// A finished run folder written by hand (no model), with hostile text in the response.
fn hand_made_run(dir: &Path, label: &str, response: &str, reward: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let settings = MetricSettings { answer: AnswerParser::AnswerTag, bleu: true, rouge: true, ..Default::default() };
    let preds: Vec<Prediction> = (0..3)
        .map(|i| {
            serde_json::from_value(json!({
                "index": i, "sample": 0, "id": format!("x.jsonl row {}", i + 1), "prompt": "<|im_start|>user\nQ & A?<|im_end|>",
                "response": response, "finish_reason": "eos", "tokens": 5,
                "total": reward + i as f64, "by_plugin": {"r": reward + i as f64}, "components": {"format": 1.0}, "failures": {},
                "answer": null, "correct": null, "reference": "<b>the reference</b>",
            }))
            .unwrap()
        })
        .collect();
    let metrics = eval::compute_metrics(&preds, &settings, 1).unwrap();
    let cfg = RunConfig {
        label: label.into(),
        model: format!("/models/{label}"),
        adapter: None,
        task: "demo".into(),
        split: "test".into(),
        n: 1,
        limit: None,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        repetition_penalty: 1.0,
        max_new_tokens: 16,
        seed: 0,
        metrics: settings,
    };
    let lines: String = preds.iter().map(|p| serde_json::to_string(p).unwrap() + "\n").collect();
    std::fs::write(dir.join("predictions.jsonl"), lines).unwrap();
    std::fs::write(dir.join("metrics.json"), serde_json::to_string(&metrics).unwrap()).unwrap();
    std::fs::write(dir.join("eval_config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
}

#[test]
fn report_escapes_model_text_and_needs_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    hand_made_run(&a, "model <A>", "<script>alert('x')</script><img src=x onerror=alert(1)>", 0.5);
    hand_made_run(&b, "model B", "a plain answer", 1.5);
    let html = tmp.path().join("r.html");
    eval::report::compare(&[a.clone(), b], &html).unwrap();
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(!text.contains("<script") && !text.contains("<img") && !text.contains("<b>the"), "model and data text is escaped");
    assert!(text.contains("&lt;script&gt;") && text.contains("model &lt;A&gt;"));
    assert!(text.contains("class=\"num best\""), "the better run is marked");
    let report = read_json(&tmp.path().join("r.json"));
    assert_eq!(report["runs"][1]["metrics"]["reward"]["mean"], 2.5);

    std::fs::remove_file(a.join("metrics.json")).unwrap();
    let err = eval::report::compare(&[a], &html).unwrap_err().to_string();
    assert!(err.contains("did not finish"), "{err}");
}

/// Renders a report in headless Chromium (scripts/report-screenshot.sh), failing on console
/// errors. Skips loudly where Chromium is not installed (CI does not install it).
#[test]
fn report_renders_in_headless_chromium() {
    let found = ["chromium", "chromium-browser", "google-chrome"].iter().any(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    if !found {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED report_renders_in_headless_chromium: chromium not installed (scripts/report-screenshot.sh installs it) !!!!!!!!\n");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    hand_made_run(&a, "model A", "<answer>42</answer>", 0.5);
    hand_made_run(&b, "model B", "<answer>41</answer>", 1.5);
    let html = tmp.path().join("report.html");
    eval::report::compare(&[a, b], &html).unwrap();
    let png = tmp.path().join("report.png");
    let out = Command::new("bash")
        .arg(repo().join("scripts/report-screenshot.sh"))
        .args([html.to_str().unwrap(), png.to_str().unwrap()])
        .env("MEDRL_NO_INSTALL", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "a real screenshot");
}

/// `medrl eval --server` against `medrl serve` of the same model: the same greedy responses as
/// evaluating the model folder directly (the server applies the same chat template and engine).
#[test]
fn eval_through_medrl_serve_gives_the_local_responses() {
    use std::io::{BufRead, BufReader};
    let model = tiny_model();
    let mut server = medrl_cmd(&["serve", "--device", "cpu", "--port", "0", "--served-model-name", "tiny", "--model", model.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no address in {line:?}")).to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (local, remote) = (tmp.path().join("local"), tmp.path().join("remote"));
    let m = model.to_str().unwrap();
    medrl(&eval_args(m, "trialpanorama-sample-size", local.to_str().unwrap(), &["--limit", "4"]));
    let mut args = eval_args("tiny", "trialpanorama-sample-size", remote.to_str().unwrap(), &["--limit", "4", "--server", &url]);
    // The server has no --device.
    let at = args.iter().position(|a| *a == "--device").unwrap();
    args.drain(at..at + 2);
    let out = medrl_cmd(&args).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (read_preds(&local), read_preds(&remote));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.index, &x.response, x.tokens), (y.index, &y.response, y.tokens), "example {}", x.index);
    }
}
