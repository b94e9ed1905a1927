//! Task bundles, the synthetic data generators and the data adapters, end to end through the
//! `medrl` binary:
//! - `medrl task validate` passes for every bundle in tasks/ (data loads, template renders,
//!   each reward plugin loads in the real host with exactly the grants it requests and scores
//!   one example per split), and fails with a clear report for a broken bundle;
//! - every data adapter converts its sample in tests/fixtures/adapters/, and every malformed row
//!   is reported with its file and row;
//! - the sample-size generator's solver matches the independent Python reference
//!   (tests/reference/sample_size_reference.py, SciPy/statsmodels) on the committed test set
//!   tests/fixtures/sample_size_cases.json; `python_reference_regenerates_sample_size_cases`
//!   reruns the script (`.venv-ref/bin/python` or `$MEDRL_PYREF_PYTHON`; skipped without it, a
//!   failure instead when `MEDRL_REQUIRE_PYREF=1`);
//! - the bundles' generated data is what the generators write for the documented seeds.
//!
//! The plugins are built on first use (`cargo build --release --target wasm32-wasip2
//! --manifest-path plugins/Cargo.toml`), as in tests/rewards.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use medrl::data::synth::{hcc, sample_size};
use medrl::task::{Split, Task};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Builds the plugins workspace once; returns the folder of the .wasm files.
fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let files = medrl::cli::plugin::build_plugin(&repo().join("plugins")).expect("building plugins/ for wasm32-wasip2 failed (run scripts/setup-plugins.sh)");
        files[0].parent().unwrap().to_path_buf()
    })
}

fn medrl(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_medrl"))
        .args(args)
        .env("MEDRL_TASKS_DIR", repo().join("tasks"))
        .env("MEDRL_PLUGIN_DIR", plugin_dir())
        .env("MEDRL_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"))
        .current_dir(repo())
        .output()
        .expect("running medrl");
    out
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const BUNDLES: [&str; 6] = ["hcc", "trialpanorama-sample-size", "trialpanorama-study-search", "trialpanorama-study-search-agentic", "medical-o1", "medical-dialogue"];

#[test]
fn every_bundle_validates() {
    let mut args = vec!["task", "validate"];
    args.extend(BUNDLES);
    let out = medrl(&args);
    let t = text(&out);
    assert!(out.status.success(), "medrl task validate failed:\n{t}");
    for b in BUNDLES {
        assert!(t.contains(&format!("task {b}: valid")), "{b} not reported valid:\n{t}");
    }
    assert!(!t.contains("FAIL"), "{t}");
    // Each reward plugin scored an example of every split.
    assert_eq!(t.matches("scores train").count(), 6, "{t}");
    assert_eq!(t.matches("scores test").count(), 6, "{t}");
    // The agentic task's tool loads, describes itself and gets the search it asks for.
    assert!(t.contains("tool pubmed-search-tool") && t.contains("`pubmed_search`"), "{t}");
}

#[test]
fn list_and_show() {
    let out = medrl(&["task", "list"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for b in BUNDLES {
        assert!(t.contains(b), "{b} missing from task list:\n{t}");
    }
    let out = medrl(&["task", "show", "trialpanorama-study-search"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("study_search.wasm") && t.contains("search(") && t.contains("recall"), "{t}");
}

#[test]
fn broken_bundle_fails_with_a_clear_report() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("broken");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::copy(repo().join("tasks/trialpanorama-study-search/data/test.jsonl"), t.join("test.jsonl")).unwrap();
    std::fs::write(
        t.join("task.yaml"),
        "name: broken\ndata:\n  test: {path: test.jsonl, formatting: verl}\nrewards:\n  - plugin: study-search\n    config: {top_k: 10}\n  - plugin: hcc-composite\n    config: {mode: bogus}\n  - plugin: no-such-plugin\nmetrics:\n  accuracy: {component: nope, threshold: 1}\n",
    )
    .unwrap();
    let out = medrl(&["task", "validate", t.to_str().unwrap()]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("reward study-search capabilities") && s.contains("requests [\"search\"]"), "{s}");
    assert!(s.contains("reward hcc-composite scores test") && s.contains("bogus"), "{s}");
    assert!(s.contains("no_such_plugin.wasm not found"), "{s}");
    assert!(s.contains("metric accuracy") && s.contains("nope"), "{s}");
    assert!(s.contains("task broken: INVALID"), "{s}");

    // A bad row is reported with its file and row.
    std::fs::write(t.join("test.jsonl"), "{\"prompt\": \"x\"}\n{\"nope\": 1}\n").unwrap();
    std::fs::write(t.join("task.yaml"), "name: broken\ndata:\n  test: {path: test.jsonl, formatting: verl}\n").unwrap();
    let s = text(&medrl(&["task", "validate", t.to_str().unwrap()]));
    assert!(s.contains("test.jsonl row 2") && s.contains("missing column `prompt`"), "{s}");

    // Unknown keys name the file and the key.
    std::fs::write(t.join("task.yaml"), "name: broken\ndata:\n  test: {path: test.jsonl, formatting: verl}\nrewards:\n  - plugin: x\n    wieght: 2\n").unwrap();
    let s = text(&medrl(&["task", "validate", t.to_str().unwrap()]));
    assert!(s.contains("broken/task.yaml") && s.contains("rewards[0]") && s.contains("wieght"), "{s}");
}

#[test]
fn task_api_examples_and_reward_specs() {
    std::env::set_var("MEDRL_TASKS_DIR", repo().join("tasks"));
    let t = Task::load("trialpanorama-sample-size").unwrap();
    let ex = t.examples(Split::Validation).unwrap();
    assert!(ex.len() >= 10);
    let e = &ex[0].1;
    assert_eq!(e.messages[0].role, "system");
    assert!(e.messages[1].content.contains("participants"));
    assert!(e.ground_truth["target"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(ex[0].0.to_string().contains("trialpanorama_style.jsonl row 1"));
    let specs = t.reward_specs();
    assert_eq!(specs[0].path.file_name().unwrap(), "sample_size.wasm");
    assert_eq!(specs[0].config["tolerance"], 0.2);

    let t = Task::load(repo().join("tasks/medical-dialogue")).unwrap();
    let ex = t.examples(Split::Test).unwrap();
    assert!(ex[0].1.ground_truth["reference"].as_str().is_some());
    let t = Task::load("trialpanorama-study-search").unwrap();
    let s = &t.reward_specs()[0];
    assert!(s.grants.search.as_ref().unwrap().corpus.as_ref().unwrap().is_absolute());
    assert!(s.search_index().unwrap().is_some());
    assert!(Task::load("no-such-task").unwrap_err().to_string().contains("known tasks"));
}

/// Each bundled task declares where its reward reads the answer (`metrics.answer`), as the
/// engine used to guess it from plugin names; the engine no longer looks at those names.
#[test]
fn bundled_tasks_declare_their_answer_parser() {
    use medrl::task::AnswerKind;
    let expected = [
        ("hcc", AnswerKind::Hcc, ""),
        ("medical-dialogue", AnswerKind::Text, ""),
        ("medical-o1", AnswerKind::FinalResponse, ""),
        ("trialpanorama-sample-size", AnswerKind::Number, ""),
        ("trialpanorama-study-search", AnswerKind::AnswerTag, "<answer>"),
        ("trialpanorama-study-search-agentic", AnswerKind::AnswerTag, ""),
    ];
    for (name, kind, prefix) in expected {
        let t = Task::load(repo().join("tasks").join(name)).unwrap();
        assert_eq!((t.metrics().answer, t.metrics().answer_prefix.as_str()), (kind, prefix), "{name}");
    }
    // study-search's prefix is the one its reward prepends.
    let t = Task::load(repo().join("tasks/trialpanorama-study-search")).unwrap();
    assert_eq!(t.reward_specs()[0].config["prefix"], t.metrics().answer_prefix.as_str());
    // The task's rewards as a reward set loads them: search opened, the task's policy.
    let specs = t.reward_set_specs(medrl::plugin::FailurePolicy::Drop, |_, who| Err(format!("{who}: no judge here"))).unwrap();
    assert_eq!((specs[0].name.as_str(), specs[0].policy, specs[0].timeout), ("study-search", medrl::plugin::FailurePolicy::Drop, None));
    assert!(specs[0].grants.search.is_some() && specs[0].grants.judge.is_none());
    // The agentic task's tools: the bundled pubmed_search, its search opened from the corpus,
    // and the reward reads the whole trajectory (no prefix).
    let t = Task::load(repo().join("tasks/trialpanorama-study-search-agentic")).unwrap();
    let tools = t.tool_configs().unwrap();
    assert_eq!(tools.len(), 1);
    assert!(tools[0].0.plugin.ends_with("pubmed_search_tool.wasm") && tools[0].1.search.is_some(), "{:?}", tools[0].0);
    assert_eq!(t.reward_specs()[0].config["prefix"], "");
    // A judge grant goes through the caller's resolver, whose message is kept.
    let t = Task::load(repo().join("tasks/medical-o1")).unwrap();
    let e = t.reward_set_specs(medrl::plugin::FailurePolicy::Fail, |_, who| Err(format!("{who} needs a judge"))).unwrap_err().to_string();
    assert_eq!(e, "task `medical-o1`: reward `medical-verifier` needs a judge");
}

/// (adapter, fixture, converted rows, rejected rows)
const ADAPTERS: &[(&str, &str, usize, &[usize])] = &[
    ("sharegpt-adapter", "sharegpt.jsonl", 4, &[3, 5, 6]),
    ("meadow-flashcards-adapter", "meadow_flashcards.json", 4, &[3, 5]),
    ("chatdoctor-adapter", "chatdoctor.jsonl", 4, &[3, 4]),
    ("huatuo-o1-adapter", "huatuo_o1.json", 4, &[3, 5]),
    ("trialpanorama-adapter", "trialpanorama_sample_size.parquet", 4, &[3, 4]),
    ("trialpanorama-adapter", "trialpanorama_study_search.jsonl", 3, &[3, 4]),
    ("hcc-records-adapter", "hcc_records.jsonl", 3, &[3, 4, 6]),
];

#[test]
fn adapters_convert_their_samples_and_report_rejected_rows() {
    let d = tempfile::tempdir().unwrap();
    for (i, (adapter, file, good, bad)) in ADAPTERS.iter().enumerate() {
        let input = repo().join("tests/fixtures/adapters").join(file);
        for ext in ["jsonl", "parquet"] {
            let output = d.path().join(format!("{i}.{ext}"));
            let out = medrl(&["data", "convert", "--adapter", adapter, "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
            let s = text(&out);
            assert!(out.status.success(), "{adapter} on {file}:\n{s}");
            assert!(s.contains(&format!("converted {good} of {}", good + bad.len())), "{adapter} on {file}:\n{s}");
            for row in *bad {
                assert!(s.contains(&format!("rejected {} row {row}:", input.display())), "{adapter}: row {row} of {file} not reported:\n{s}");
            }
            assert_eq!(s.matches("rejected ").count(), bad.len(), "{s}");
            // The output reads back as medrl examples.
            let spec = medrl::data::DatasetSpec {
                name: "x".into(),
                path: output.clone(),
                formatting: medrl::data::Formatting::Messages,
                columns: Default::default(),
                tags: Default::default(),
                system: None,
                num_samples: None,
            };
            let (ex, _) = medrl::data::load_examples(&spec, medrl::data::BadRowPolicy::Fail).unwrap();
            assert_eq!(ex.len(), *good, "{adapter} {ext}");
            assert!(ex.iter().all(|(_, e)| e.messages.iter().any(|m| m.role == "user")));
        }
        let strict = medrl(&["data", "convert", "--strict", "--adapter", adapter, "--input", input.to_str().unwrap(), "--output", d.path().join("s.jsonl").to_str().unwrap()]);
        assert!(!strict.status.success(), "--strict must fail with rejected rows");
    }
    // Spot checks of what the adapters produce.
    let out = d.path().join("hcc.jsonl");
    let input = repo().join("tests/fixtures/adapters/hcc_records.jsonl");
    assert!(medrl(&["data", "convert", "--adapter", "hcc-records-adapter", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]).status.success());
    let rows: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows[1]["ground_truth"]["tumor_size"], 62);
    assert_eq!(rows[1]["ground_truth"]["child_pugh"], "B");
    assert_eq!(rows[1]["ground_truth"]["cancer_thrombus"], "present");
    assert_eq!(rows[1]["ground_truth"]["ps"], 1);
}

#[test]
fn convert_without_adapter_copies_records_between_formats() {
    let d = tempfile::tempdir().unwrap();
    let src = repo().join("tests/fixtures/adapters/trialpanorama_sample_size.jsonl");
    let pq = d.path().join("x.parquet");
    let out = medrl(&["data", "convert", "--input", src.to_str().unwrap(), "--output", pq.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let a: Vec<Value> = medrl::data::read::read_records(&src).unwrap().into_iter().map(|r| r.unwrap().1).collect();
    let b: Vec<Value> = medrl::data::read::read_records(&pq).unwrap().into_iter().map(|r| r.unwrap().1).collect();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["prompt"], y["prompt"]);
        assert_eq!(x["reward_model"], y["reward_model"]);
    }
    // The committed Parquet fixture is this conversion.
    let committed: Vec<Value> = medrl::data::read::read_records(&repo().join("tests/fixtures/adapters/trialpanorama_sample_size.parquet")).unwrap().into_iter().map(|r| r.unwrap().1).collect();
    assert_eq!(committed, b);
}

/// Values as they read back from a file: serde_json's float parsing is not bit-exact for every
/// value it prints, so generated examples are compared after the same text round trip.
fn json_round_trip(v: &Vec<medrl::data::Example>) -> Vec<medrl::data::Example> {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn sample_size_solver_matches_the_python_reference_fixture() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/sample_size_cases.json")).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "{}", cases.len());
    let mut designs = std::collections::BTreeSet::new();
    for c in cases {
        let p: sample_size::Problem = serde_json::from_value(c.clone()).unwrap_or_else(|e| panic!("{c}: {e}"));
        designs.insert(c["design"].as_str().unwrap().to_string());
        let want = &c["expected"];
        let za = sample_size::norm_ppf(1.0 - p.alpha / 2.0);
        let zb = sample_size::norm_ppf(p.power);
        assert!(close(za, want["z_a"].as_f64().unwrap(), 1e-14), "z_a {za} vs {}", want["z_a"]);
        assert!(close(zb, want["z_b"].as_f64().unwrap(), 1e-14), "z_b {zb} vs {}", want["z_b"]);
        let s = sample_size::solve(&p);
        assert!(close(s.raw, want["raw"].as_f64().unwrap(), 1e-12), "case {}: raw {} vs {}", c["id"], s.raw, want["raw"]);
        assert_eq!(s.per_group_or_events, want["per_group_or_events"].as_u64().unwrap(), "case {}", c["id"]);
        assert_eq!(s.total, want["total"].as_u64().unwrap(), "case {}", c["id"]);
    }
    assert_eq!(designs.len(), 3);
}

fn python() -> String {
    if let Ok(p) = std::env::var("MEDRL_PYREF_PYTHON") {
        return p;
    }
    let venv = repo().join(".venv-ref/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}

#[test]
fn python_reference_regenerates_sample_size_cases() {
    let py = python();
    let ok = Command::new(&py).args(["-c", "import scipy, statsmodels"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        let msg = format!("python_reference_regenerates_sample_size_cases: {py} cannot import scipy/statsmodels; run scripts/setup.sh or set MEDRL_PYREF_PYTHON");
        if std::env::var("MEDRL_REQUIRE_PYREF").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {msg} !!!!!!!!\n");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("cases.json");
    let o = Command::new(&py).arg(repo().join("tests/reference/sample_size_reference.py")).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let fresh: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/sample_size_cases.json")).unwrap()).unwrap();
    assert_eq!(fresh, committed, "tests/fixtures/sample_size_cases.json is stale: rerun tests/reference/sample_size_reference.py");
    for c in fresh["cases"].as_array().unwrap() {
        let p: sample_size::Problem = serde_json::from_value(c.clone()).unwrap();
        assert_eq!(sample_size::solve(&p).total, c["expected"]["total"].as_u64().unwrap());
    }
}

#[test]
fn synth_cli_writes_what_the_library_generates() {
    let d = tempfile::tempdir().unwrap();
    for ext in ["jsonl", "parquet"] {
        let p = d.path().join(format!("s.{ext}"));
        let out = medrl(&["data", "synth", "sample-size", "--n", "12", "--seed", "5", "--output", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let spec = medrl::data::DatasetSpec { name: "s".into(), path: p, formatting: medrl::data::Formatting::Messages, columns: Default::default(), tags: Default::default(), system: None, num_samples: None };
        let (ex, _) = medrl::data::load_examples(&spec, medrl::data::BadRowPolicy::Fail).unwrap();
        let want = sample_size::generate(12, 5);
        let got: Vec<_> = ex.into_iter().map(|(_, e)| e).collect();
        assert_eq!(got, json_round_trip(&want), "{ext}");
        for e in &want {
            let p: sample_size::Problem = serde_json::from_value(e.metadata["problem"].clone()).unwrap();
            assert_eq!(serde_json::json!(sample_size::solve(&p).total), e.ground_truth["target"]);
        }
    }
    let p = d.path().join("h.jsonl");
    let out = medrl(&["data", "synth", "hcc", "--n", "6", "--seed", "2", "--lang", "zh", "--output", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<Value> = std::fs::read_to_string(&p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0], serde_json::from_str::<Value>(&serde_json::to_string(&hcc::generate(6, 2, hcc::Lang::Zh)[0]).unwrap()).unwrap());
}

/// The bundles' generated files are reproducible from the commands in tasks/README.md.
#[test]
fn bundle_data_is_what_the_generators_write() {
    std::env::set_var("MEDRL_TASKS_DIR", repo().join("tasks"));
    let t = Task::load("hcc").unwrap();
    for (split, n, seed) in [(Split::Train, 120, 1), (Split::Validation, 30, 2), (Split::Test, 30, 3)] {
        let got: Vec<_> = t.examples(split).unwrap().into_iter().map(|(_, mut e)| {
            e.messages.remove(0); // the task's system prompt
            e
        }).collect();
        assert_eq!(got, json_round_trip(&hcc::generate(n, seed, hcc::Lang::Mixed)), "hcc {split}");
    }
    let t = Task::load("trialpanorama-sample-size").unwrap();
    for (split, n, seed) in [(Split::Train, 200, 1), (Split::Test, 50, 2)] {
        let got = t.examples(split).unwrap();
        let want = sample_size::generate(n, seed);
        assert_eq!(got.len(), n);
        for ((_, g), w) in got.iter().zip(&want) {
            assert_eq!(g.messages[1].content, w.messages[0].content);
            assert_eq!(g.ground_truth["target"], Value::String(w.ground_truth["target"].to_string()));
        }
    }
}

/// A VERL Parquet file whose pages are scrambled behind an intact footer: `data convert` fails
/// within a minute (it used to hang while its memory grew), naming the file and the row group.
#[test]
fn convert_fails_promptly_on_scrambled_parquet_pages() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("scrambled.parquet");
    let rows: Vec<Value> = (0..200)
        .map(|i| serde_json::json!({"data_source": "sample_size", "prompt": [{"role": "user", "content": format!("Trial {i}: how many participants?")}], "reward_model": {"ground_truth": {"target": format!("{}", 100 + i)}}}))
        .collect();
    medrl::data::write::write_parquet(&p, &rows).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    let r = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for c in r.metadata().row_group(0).columns() {
        let (start, len) = c.byte_range();
        for b in &mut bytes[start as usize..(start + len) as usize] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
    }
    std::fs::write(&p, &bytes).unwrap();
    let out = d.path().join("out.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_medrl"))
        .args(["data", "convert", "--input", p.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("medrl data convert still running after 60 s on a scrambled Parquet file");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let s = text(&o);
    assert!(!o.status.success(), "{s}");
    assert!(s.contains(&format!("{} row group 1 of 1", p.display())), "{s}");
    assert!(!out.exists(), "nothing is written from a damaged file");
}

/// The agentic study-search data is the single-turn task's (make_data.py): the same reviews,
/// ground truth and reference queries, with the instruction that offers the tool and a prompt
/// that no longer ends inside the answer tag.
#[test]
fn agentic_study_search_data_is_derived_from_the_single_turn_task() {
    const OLD: &str = "Write a PubMed search query that retrieves the randomized trials eligible for this review. Return only the query between <answer> and </answer>, with no reasoning.";
    const NEW: &str = "Find the randomized trials eligible for this review. You may call the pubmed_search tool to try a query and read its top hits, and refine the query until the hits look right. Then give your final PubMed query between <answer> and </answer>.";
    let single = Task::load(repo().join("tasks/trialpanorama-study-search")).unwrap();
    let agentic = Task::load(repo().join("tasks/trialpanorama-study-search-agentic")).unwrap();
    for split in [Split::Train, Split::Validation, Split::Test] {
        let (a, b) = (single.examples(split).unwrap(), agentic.examples(split).unwrap());
        assert_eq!(a.len(), b.len(), "{split}");
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(x.ground_truth, y.ground_truth);
            let user = |e: &medrl::data::Example| e.messages.iter().find(|m| m.role == "user").unwrap().content.clone();
            let want = user(x).replace(OLD, NEW);
            assert_eq!(user(y), want.strip_suffix("\n\n<answer>").unwrap(), "{split}");
            let reference = |e: &medrl::data::Example| e.messages.iter().rev().find(|m| m.role == "assistant").unwrap().content.clone();
            assert_eq!(reference(y), format!("<answer>{}", reference(x)));
        }
    }
}
