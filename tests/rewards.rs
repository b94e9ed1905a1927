//! Exactness tests of the bundled task reward plugins (plugins/sample-size, study-search,
//! medical-verifier, dialogue-quality, hcc-composite) in the real plugin host.
//!
//! Expected values come from an independent Python reimplementation of each reference formula,
//! `tests/reference/rewards.py`, which writes `tests/fixtures/rewards/<plugin>.jsonl`. Every
//! case's score and every component must match to 1e-9. The judge and search capabilities are
//! the host's in-memory test doubles: the judge answers each case's pinned P(True) for exactly
//! the verifier prompt the Python side built; the index holds `study-search-corpus.jsonl`.
//!
//! `python_reference_regenerates_fixtures` reruns the Python script (`$PYTHON`, default python3;
//! skipped without it,
//! a failure instead when `MEDRL_REQUIRE_PYREF=1`) and checks both that the committed fixtures
//! are what it writes and that the plugins match its fresh output.
//!
//! The plugins are built on first use, as in tests/plugins.rs (`cargo build --release --target
//! wasm32-wasip2 --manifest-path plugins/Cargo.toml`; scripts/setup-plugins.sh installs the
//! target).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use medrl::plugin::*;
use serde_json::{json, Value};

mod common;
use common::{repo, wasm};

const TOL: f64 = 1e-9;
const MIN_CASES: usize = 50;

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/rewards")
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        PluginHost::new(HostConfig {
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        })
        .unwrap()
    })
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

fn corpus_index(dir: &Path) -> InMemoryIndex {
    InMemoryIndex::new(
        read_jsonl(&dir.join("study-search-corpus.jsonl"))
            .into_iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_string(),
                    d["text"].as_str().unwrap().to_string(),
                )
            }),
    )
}

/// The grants a plugin's cases need: the corpus index, or a judge answering each case's prompt.
fn grants(plugin: &str, dir: &Path, cases: &[Value]) -> Grants {
    match plugin {
        "study-search" => Grants::none().with_search(Box::new(corpus_index(dir))),
        "medical-verifier" => {
            let scores = cases
                .iter()
                .filter_map(|c| c.get("judge"))
                .map(|j| {
                    (
                        j["prompt"].as_str().unwrap().to_string(),
                        j["p"].as_f64().unwrap(),
                    )
                })
                .collect();
            // A prompt the plugin builds differently gets 0, which no pinned case expects.
            Grants::none().with_judge(Box::new(InMemoryJudge {
                scores,
                default_score: 0.0,
                reply: String::new(),
            }))
        }
        _ => Grants::none(),
    }
}

fn to_sample(c: &Value) -> Sample {
    let s = &c["sample"];
    sample(
        s["prompt"].as_str().unwrap_or_default(),
        s["response"].as_str().unwrap(),
        &s["ground_truth"],
        &s["metadata"],
        s["data_source"].as_str().unwrap_or_default(),
    )
}

/// Scores every case of `<dir>/<plugin>.jsonl` and returns the mismatches, one line each.
fn mismatches(plugin: &str, dir: &Path) -> (usize, Vec<String>) {
    let cases = read_jsonl(&dir.join(format!("{plugin}.jsonl")));
    let p = host()
        .load_reward(
            &wasm(plugin),
            PluginOptions {
                grants: grants(plugin, dir, &cases),
                // Cases where the reference raises expect a failed (dropped) sample.
                policy: FailurePolicy::Drop,
                threads: 1,
                ..PluginOptions::default()
            },
        )
        .unwrap();
    assert_eq!(p.manifest().name, plugin);
    // One call per distinct config, the cases of that config as one batch.
    let mut by_config: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for c in &cases {
        by_config
            .entry(c["config"].to_string())
            .or_default()
            .push(c);
    }
    let mut bad = Vec::new();
    for group in by_config.values() {
        let config = &group[0]["config"];
        let samples: Vec<Sample> = group.iter().map(|c| to_sample(c)).collect();
        let out = match p.score(config, &samples) {
            Ok(o) => o,
            Err(e) => {
                bad.push(format!("config {config}: {e}"));
                continue;
            }
        };
        for (c, o) in group.iter().zip(out) {
            let name = c["name"].as_str().unwrap();
            if let Some(kind) = c["expected"].get("error") {
                match &o {
                    Outcome::Dropped { error }
                        if matches!(**error, PluginError::GuestError { .. }) => {}
                    other => bad.push(format!(
                        "{name}: the reference raises {kind}, the plugin gave {other:?}"
                    )),
                }
                continue;
            }
            let want = c["expected"]["score"].as_f64().unwrap();
            let want_c: BTreeMap<String, f64> = c["expected"]["components"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
                .collect();
            match o {
                Outcome::Scored { score, components } => {
                    let got_c: BTreeMap<String, f64> =
                        components.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                    let same_names = got_c.keys().eq(want_c.keys());
                    let close = (score - want).abs() <= TOL
                        && same_names
                        && want_c.iter().all(|(k, v)| (got_c[k] - v).abs() <= TOL);
                    if !close {
                        bad.push(format!(
                            "{name}: got {score} {got_c:?}, want {want} {want_c:?}"
                        ));
                    }
                }
                other => bad.push(format!("{name}: not scored: {other:?}")),
            }
        }
    }
    (cases.len(), bad)
}

fn check(plugin: &str, dir: &Path) {
    let (n, bad) = mismatches(plugin, dir);
    assert!(
        n >= MIN_CASES,
        "{plugin}: only {n} cases in {}",
        dir.display()
    );
    assert!(
        bad.is_empty(),
        "{plugin}: {} of {n} cases differ from tests/reference/rewards.py:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Includes invalid and odd ground truths (missing, null, non-numeric, list and object
/// targets; numeric strings as Python's `float()` reads them; non-object ground truths, for
/// which the reference raises) and empty responses.
#[test]
fn sample_size_matches_reference() {
    check("sample-size", &fixtures());
}

#[test]
fn study_search_matches_reference() {
    check("study-search", &fixtures());
}

#[test]
fn medical_verifier_matches_reference() {
    check("medical-verifier", &fixtures());
}

#[test]
fn dialogue_quality_matches_reference() {
    check("dialogue-quality", &fixtures());
}

#[test]
fn hcc_composite_matches_reference() {
    check("hcc-composite", &fixtures());
}

const PLUGINS: [&str; 5] = [
    "sample-size",
    "study-search",
    "medical-verifier",
    "dialogue-quality",
    "hcc-composite",
];

#[test]
fn python_reference_regenerates_fixtures() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has {
        let msg = format!("python_reference_regenerates_fixtures: {python} is not available");
        if std::env::var("MEDRL_REQUIRE_PYREF").as_deref() == Ok("1") {
            panic!("{msg} and MEDRL_REQUIRE_PYREF=1");
        }
        println!("SKIPPED {msg} (set MEDRL_REQUIRE_PYREF=1 to make this a failure)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .arg(repo().join("tests/reference/rewards.py"))
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/reference/rewards.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stale = Vec::new();
    for f in PLUGINS
        .iter()
        .map(|p| format!("{p}.jsonl"))
        .chain(["study-search-corpus.jsonl".to_string()])
    {
        if read_jsonl(&tmp.path().join(&f)) != read_jsonl(&fixtures().join(&f)) {
            stale.push(f);
        }
    }
    for p in PLUGINS {
        check(p, tmp.path());
    }
    assert!(
        stale.is_empty(),
        "committed fixtures differ from what tests/reference/rewards.py writes: {stale:?} (rerun: python3 tests/reference/rewards.py)"
    );
}

#[test]
fn manifests_declare_capabilities_and_schemas() {
    for (name, caps) in [
        ("study-search", vec![Capability::Search]),
        ("medical-verifier", vec![Capability::Judge]),
        ("dialogue-quality", vec![]),
        ("hcc-composite", vec![]),
    ] {
        let (m, api) = host().inspect(&wasm(name)).unwrap();
        assert_eq!((m.name.as_str(), api.as_str()), (name, "0.3.0"));
        assert_eq!(m.capabilities, caps, "{name}");
        let schema: Value = serde_json::from_str(&m.config_schema).unwrap();
        assert_eq!(schema["type"], "object", "{name}");
        assert!(schema["properties"]["mode"].is_object(), "{name}");
    }
}

fn one(
    plugin: &str,
    grants: Grants,
    config: Value,
    s: Sample,
) -> Result<Vec<Outcome>, PluginError> {
    host()
        .load_reward(
            &wasm(plugin),
            PluginOptions {
                grants,
                policy: FailurePolicy::Fail,
                threads: 1,
                ..PluginOptions::default()
            },
        )
        .unwrap()
        .score(&config, &[s])
}

#[test]
fn capabilities_must_be_granted() {
    let verifier = sample(
        "q",
        "## Thinking\n\nx\n\n## Final Response\n\nA",
        &json!("A"),
        &Value::Null,
        "",
    );
    let e = one("medical-verifier", Grants::none(), json!({}), verifier).unwrap_err();
    assert!(
        matches!(e, PluginError::CapabilityDenied { .. }) && e.to_string().contains("judge"),
        "{e}"
    );
    let search = sample(
        "q",
        "x</answer>",
        &json!({"relevant_pmids": ["1"]}),
        &Value::Null,
        "",
    );
    let e = one("study-search", Grants::none(), json!({}), search).unwrap_err();
    assert!(
        matches!(e, PluginError::CapabilityDenied { .. }) && e.to_string().contains("search"),
        "{e}"
    );
    // A bad format is scored without calling the capability.
    let s = sample("q", "no format", &json!("A"), &Value::Null, "");
    let out = one("medical-verifier", Grants::none(), json!({}), s).unwrap();
    assert_eq!(out[0].reward(), Some(0.0));
}

#[test]
fn bad_configs_are_rejected() {
    let s = || sample("q", "Rest.", &json!("Rest."), &Value::Null, "");
    for (plugin, config) in [
        ("dialogue-quality", json!({"wieghts": {}})),
        ("dialogue-quality", json!({"weights": {"rouge": 1}})),
        ("dialogue-quality", json!({"min_units": 10, "max_units": 5})),
        ("hcc-composite", json!({"mode": "fancy"})),
        ("hcc-composite", json!({"weights": {"survival": "high"}})),
        (
            "hcc-composite",
            json!({"guideline": {"stages": [{"when": []}], "allowed": {}}}),
        ),
        (
            "hcc-composite",
            json!({"contraindications": [{"treatments": ["TACE"], "when": [[{"field": "ps", "op": "~", "value": 1}]]}]}),
        ),
        ("medical-verifier", json!({"threshold": "0.4"})),
        ("study-search", json!({"top_k": 0})),
    ] {
        let gt_s = if plugin == "hcc-composite" {
            sample("q", "x", &json!({"ps": 0}), &Value::Null, "")
        } else {
            s()
        };
        let e = one(plugin, Grants::none(), config.clone(), gt_s).unwrap_err();
        assert!(
            matches!(e, PluginError::GuestError { .. }),
            "{plugin} {config}: {e}"
        );
    }
}

fn medrl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medrl"));
    c.env("MEDRL_CACHE_DIR", cache_dir());
    c
}

/// `medrl reward score` works on each plugin's committed sample file.
#[test]
fn cli_scores_the_committed_samples() {
    let samples = fixtures().join("samples");
    for plugin in PLUGINS {
        let mut c = medrl();
        c.args(["reward", "score", "--plugin"])
            .arg(wasm(plugin))
            .arg("--input")
            .arg(samples.join(format!("{plugin}.jsonl")));
        match plugin {
            "study-search" => {
                c.arg("--search-docs")
                    .arg(fixtures().join("study-search-corpus.jsonl"));
            }
            "medical-verifier" => {
                c.args(["--test-judge", "0.9"]);
            }
            _ => {}
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{plugin}: {c:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.len() >= 3, "{plugin}: {lines:?}");
        for l in &lines {
            assert_eq!(l["status"], "scored", "{plugin}: {l}");
            assert!(
                l["components"].as_object().is_some_and(|c| !c.is_empty()),
                "{plugin}: {l}"
            );
        }
    }
}
