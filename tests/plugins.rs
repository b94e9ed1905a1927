//! Plugin host tests: hostile guests, failure policies, capabilities, cache, scaffold, Python.
//!
//! The wasm plugins are built on first use (`cargo build --release --target wasm32-wasip2
//! --manifest-path plugins/Cargo.toml`), so a plain `cargo test` works on a machine that has
//! the wasm32-wasip2 target (scripts/setup-plugins.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use medrl::plugin::*;
use serde_json::{json, Value};

mod common;
use common::{repo, wasm};

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// One host for the whole process: every test also checks that it survives the others.
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

fn fuel_host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        PluginHost::new(HostConfig {
            cache_dir: Some(cache_dir()),
            fuel_metering: true,
            ..HostConfig::default()
        })
        .unwrap()
    })
}

fn s(prompt: &str, response: &str, gt: Value, source: &str) -> Sample {
    sample(prompt, response, &gt, &Value::Null, source)
}

fn opts(limits: Limits, policy: FailurePolicy) -> PluginOptions {
    PluginOptions {
        limits,
        policy,
        threads: 2,
        ..PluginOptions::default()
    }
}

fn limits(timeout_ms: u64) -> Limits {
    Limits {
        timeout: Duration::from_millis(timeout_ms),
        memory_bytes: 128 << 20,
        ..Limits::default()
    }
}

/// The healthy reward gives the reference scores (called after every hostile test).
fn assert_healthy() {
    let p = host()
        .load_reward(&wasm("sample-size"), PluginOptions::default())
        .unwrap();
    assert_eq!(p.manifest().name, "sample-size");
    let samples = vec![
        s(
            "q",
            "<think>t</think><answer>1,000</answer>",
            json!({"target": 1100}),
            "ss",
        ),
        s(
            "q",
            "<think>t</think><answer>700</answer>",
            json!({"target": 1000}),
            "ss",
        ),
        s("q", "<answer>1000</answer>", json!({"target": 1000}), "ss"),
        s(
            "q",
            "Assistant: <think>t</think><answer>80</answer>",
            json!({"target": "100"}),
            "ss",
        ),
    ];
    let out = p.score(&json!({}), &samples).unwrap();
    let rewards: Vec<f64> = out.iter().map(|o| o.reward().unwrap()).collect();
    assert_eq!(rewards, vec![1.1, 0.0, -2.0, 1.1]);
    match &out[0] {
        Outcome::Scored { components, .. } => {
            assert_eq!(
                components,
                &vec![("format".into(), 1.0), ("accuracy".into(), 1.0)]
            )
        }
        o => panic!("unexpected {o:?}"),
    }
}

/// The hostile plugins: `hostile` on API 0.1.0, `hostile-v2` on 0.2.0 (batch-shaped). Every
/// sandbox test runs against both, so the host's two call paths stay equally guarded.
const HOSTILES: [&str; 2] = ["hostile", "hostile-v2"];

/// Runs a hostile plugin in `mode` on `n` samples under `fail` policy.
fn hostile_with(
    h: &PluginHost,
    plugin: &str,
    mode: &str,
    extra: Value,
    limits: Limits,
    n: usize,
) -> (Result<Vec<Outcome>, PluginError>, Duration) {
    let p = h
        .load_reward(&wasm(plugin), opts(limits, FailurePolicy::Fail))
        .unwrap();
    let mut cfg = json!({ "mode": mode });
    cfg.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let samples: Vec<Sample> = (0..n)
        .map(|i| s(&format!("p{i}"), "response", json!(1), mode))
        .collect();
    let t = Instant::now();
    let r = p.score(&cfg, &samples);
    (r, t.elapsed())
}

fn hostile(
    plugin: &str,
    mode: &str,
    limits: Limits,
) -> (Result<Vec<Outcome>, PluginError>, Duration) {
    hostile_with(host(), plugin, mode, json!({}), limits, 3)
}

const SLACK: Duration = Duration::from_secs(5);

fn check_plugin_named(plugin: &str, e: &PluginError) {
    let id = format!("{plugin}@0.1.0");
    assert_eq!(
        e.plugin().to_string(),
        id,
        "error must name the plugin: {e}"
    );
    assert!(e.to_string().contains(&id), "{e}");
}

#[test]
fn infinite_loop_times_out() {
    for plugin in HOSTILES {
        let (r, dt) = hostile(plugin, "loop", limits(300));
        let e = r.unwrap_err();
        assert!(matches!(e, PluginError::Timeout { .. }), "{e}");
        check_plugin_named(plugin, &e);
        assert!(dt < Duration::from_millis(300) + SLACK, "took {dt:?}");
        assert!(
            dt >= Duration::from_millis(300),
            "deadline fired early: {dt:?}"
        );
    }
    assert_healthy();
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    for plugin in HOSTILES {
        let l = Limits {
            fuel: Some(50_000_000),
            ..limits(60_000)
        };
        let (r, dt) = hostile_with(fuel_host(), plugin, "loop", json!({}), l, 1);
        let e = r.unwrap_err();
        assert!(
            matches!(
                e,
                PluginError::OutOfFuel {
                    fuel: 50_000_000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(dt < SLACK * 4, "took {dt:?}");
        // Fuel metering on the engine does not break normal plugins.
        let l = Limits {
            fuel: Some(1_000_000_000),
            ..limits(10_000)
        };
        let (r, _) = hostile_with(fuel_host(), plugin, "ok", json!({}), l, 3);
        assert_eq!(r.unwrap().len(), 3);
    }
    assert_healthy();
}

#[test]
fn fuel_limit_requires_fuel_metering() {
    for plugin in HOSTILES {
        let l = Limits {
            fuel: Some(1000),
            ..limits(1000)
        };
        let e = host()
            .load_reward(&wasm(plugin), opts(l, FailurePolicy::Fail))
            .err()
            .unwrap();
        assert!(matches!(e, PluginError::Config { .. }), "{e}");
    }
}

#[test]
fn allocation_bomb_hits_memory_limit() {
    for plugin in HOSTILES {
        let (r, dt) = hostile(
            plugin,
            "alloc-bomb",
            Limits {
                memory_bytes: 64 << 20,
                ..limits(20_000)
            },
        );
        let e = r.unwrap_err();
        match &e {
            PluginError::MemoryLimit {
                limit_bytes,
                requested_bytes,
                ..
            } => {
                assert_eq!(*limit_bytes, 64 << 20);
                assert!(*requested_bytes > 64 << 20);
            }
            _ => panic!("expected MemoryLimit, got {e}"),
        }
        check_plugin_named(plugin, &e);
        assert!(dt < Duration::from_secs(20) + SLACK, "took {dt:?}");
    }
    assert_healthy();
}

#[test]
fn panic_is_a_trap_with_message_and_backtrace() {
    for plugin in HOSTILES {
        let (r, _) = hostile(plugin, "panic", limits(5000));
        match r.unwrap_err() {
            PluginError::Trap {
                message,
                backtrace,
                plugin: who,
            } => {
                assert!(
                    message.contains("panics on purpose"),
                    "panic message from guest stderr missing: {message}"
                );
                assert!(
                    !backtrace.trim().is_empty() && backtrace != "<none>",
                    "no backtrace"
                );
                assert_eq!(who.name, plugin);
            }
            e => panic!("expected Trap, got {e}"),
        }
    }
    assert_healthy();
}

#[test]
fn unreachable_is_a_trap() {
    for plugin in HOSTILES {
        let (r, _) = hostile(plugin, "unreachable", limits(5000));
        match r.unwrap_err() {
            PluginError::Trap { message, .. } => {
                assert!(message.contains("unreachable"), "{message}")
            }
            e => panic!("expected Trap, got {e}"),
        }
    }
    assert_healthy();
}

#[test]
fn stack_overflow_is_a_trap() {
    for plugin in HOSTILES {
        let (r, dt) = hostile(plugin, "stack-overflow", limits(10_000));
        match r.unwrap_err() {
            PluginError::Trap { message, .. } => assert!(message.contains("stack"), "{message}"),
            e => panic!("expected Trap, got {e}"),
        }
        assert!(dt < Duration::from_secs(10) + SLACK);
    }
    assert_healthy();
}

#[test]
fn huge_output_is_rejected() {
    for plugin in HOSTILES {
        for mode in ["huge-output", "huge-components"] {
            let (r, dt) = hostile(
                plugin,
                mode,
                Limits {
                    memory_bytes: 512 << 20,
                    max_output_bytes: 1 << 20,
                    ..limits(20_000)
                },
            );
            let e = r.unwrap_err();
            match &e {
                PluginError::BadOutput { reason, .. } => {
                    assert!(reason.contains("exceeds the limit"), "{reason}")
                }
                _ => panic!("{mode}: expected BadOutput, got {e}"),
            }
            assert!(dt < Duration::from_secs(20) + SLACK);
        }
    }
    assert_healthy();
}

#[test]
fn wrong_number_of_results_is_bad_output() {
    for mode in ["wrong-count", "empty"] {
        let (r, _) = hostile("hostile", mode, limits(5000));
        match r.unwrap_err() {
            // After isolation each sample is retried alone: "returned 2 results for 1 samples".
            PluginError::BadOutput { reason, .. } => {
                assert!(
                    reason.starts_with("returned") && reason.contains("results for 1 samples"),
                    "{reason}"
                )
            }
            e => panic!("{mode}: expected BadOutput, got {e}"),
        }
    }
    assert_healthy();
}

#[test]
fn non_finite_scores_are_bad_output() {
    for plugin in HOSTILES {
        for (mode, word) in [("nan", "NaN"), ("inf", "inf")] {
            let (r, _) = hostile(plugin, mode, limits(5000));
            match r.unwrap_err() {
                PluginError::BadOutput { reason, .. } => assert!(reason.contains(word), "{reason}"),
                e => panic!("{mode}: expected BadOutput, got {e}"),
            }
        }
    }
    assert_healthy();
}

/// API 0.2.0 returns flat lists; every way of getting their shape wrong is bad output, pinned
/// on single samples by bisection, and leaves the store in use.
#[test]
fn broken_batch_shapes_are_bad_output() {
    for (mode, needle) in [
        ("wrong-count", "returned 2 scores for 1 samples"),
        ("empty", "returned 0 scores for 1 samples"),
        (
            "components-not-multiple",
            "returned 3 component values for 1 samples and 2 component names (expected 2)",
        ),
        ("duplicate-names", "component name `probe` appears twice"),
        (
            "error-index-out-of-range",
            "error index 1 is out of range for 1 samples",
        ),
        (
            "not-applicable-out-of-range",
            "not-applicable index 1 is out of range for 1 samples",
        ),
        ("absent-out-of-range", "absent position 1 is out of range"),
        ("duplicate-error", "sample 0 appears more than once"),
        (
            "error-and-not-applicable",
            "sample 0 appears more than once",
        ),
    ] {
        let p = host()
            .load_reward(&wasm("hostile-v2"), opts(limits(5000), FailurePolicy::Drop))
            .unwrap();
        let samples: Vec<Sample> = (0..3)
            .map(|i| s(&format!("p{i}"), "r", json!(1), "x"))
            .collect();
        let out = p.score(&json!({ "mode": mode }), &samples).unwrap();
        for o in &out {
            match o {
                Outcome::Dropped { error } => match &**error {
                    PluginError::BadOutput { reason, .. } => {
                        assert!(reason.contains(needle), "{mode}: {reason}")
                    }
                    e => panic!("{mode}: expected BadOutput, got {e}"),
                },
                o => panic!("{mode}: expected a dropped sample, got {o:?}"),
            }
        }
        let m = p.metrics();
        assert_eq!(m.failures.get("bad_output"), Some(&3), "{mode}: {m:?}");
        assert_eq!(
            m.stores_discarded, 0,
            "{mode}: bad output does not poison the store"
        );
    }
    assert_healthy();
}

/// 0.2.0 results become the same per-sample outcomes as 0.1.0's: fields sliced at the right
/// offsets (multi-byte text), components in name order with absent ones skipped.
#[test]
fn batch_results_convert_to_per_sample_outcomes() {
    let p = host()
        .load_reward(&wasm("hostile-v2"), opts(limits(5000), FailurePolicy::Fail))
        .unwrap();
    assert_eq!(p.manifest().api_version, "0.2.0");
    let samples: Vec<Sample> = (0..5)
        .map(|i| s(&"ü".repeat(3 * i), &"é".repeat(i), json!({"t": "ß"}), "ok"))
        .collect();
    let out = p.score(&json!({"mode": "by-source"}), &samples).unwrap();
    let r: Vec<f64> = out.iter().map(|o| o.reward().unwrap()).collect();
    assert_eq!(r, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
    let out = p.score(&json!({"mode": "absent"}), &samples).unwrap();
    for (i, o) in out.iter().enumerate() {
        let f = i as f64;
        let mut want: Vec<(std::sync::Arc<str>, f64)> = vec![("probe".into(), f)];
        if i % 2 == 0 {
            want.push(("even".into(), 2.0 * f));
        }
        match o {
            Outcome::Scored { score, components } => {
                assert_eq!((*score, components), (f, &want), "{i}")
            }
            o => panic!("{i}: {o:?}"),
        }
    }
}

/// The probes return `err(what happened)` when denied and a score when they got through.
fn expect_denied_probe(mode: &str, extra: Value, needle: &str) {
    for plugin in HOSTILES {
        let (r, dt) = hostile_with(host(), plugin, mode, extra.clone(), limits(10_000), 1);
        match r {
            Err(PluginError::GuestError { message, .. }) => {
                assert!(message.contains(needle), "{plugin} {mode}: {message}");
            }
            Err(e) => panic!("{plugin} {mode}: expected GuestError (probe denied), got {e}"),
            Ok(out) => panic!("{plugin} {mode}: SANDBOX LEAK, the probe succeeded: {out:?}"),
        }
        assert!(dt < Duration::from_secs(10) + SLACK);
    }
}

#[test]
fn filesystem_is_not_reachable() {
    expect_denied_probe("read-file", json!({"path": "/etc/passwd"}), "/etc/passwd");
    let here = repo().join("Cargo.toml");
    expect_denied_probe(
        "read-file",
        json!({"path": here.to_string_lossy()}),
        "Cargo.toml",
    );
    expect_denied_probe("list-dir", json!({}), "read_dir");
    assert_healthy();
}

#[test]
fn environment_is_empty() {
    // The test process has plenty of variables (CARGO_*, PATH); none may leak.
    assert!(std::env::vars().count() > 0);
    expect_denied_probe("env", json!({}), "environment is empty");
    assert_healthy();
}

#[test]
fn sockets_are_denied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    expect_denied_probe(
        "socket",
        json!({"port": port}),
        &format!("127.0.0.1:{port}"),
    );
    assert!(
        listener.accept().is_err(),
        "the plugin reached a host socket"
    );
    assert_healthy();
}

#[test]
fn non_granted_capability_is_denied_and_counted() {
    for plugin in HOSTILES {
        for mode in ["judge", "judge-unwrap", "search"] {
            let p = host()
                .load_reward(&wasm(plugin), opts(limits(5000), FailurePolicy::Drop))
                .unwrap();
            let out = p
                .score(
                    &json!({"mode": mode}),
                    &[s("p", "query text", json!(1), "x")],
                )
                .unwrap();
            match &out[0] {
                Outcome::Dropped { error } => {
                    assert!(
                        matches!(**error, PluginError::CapabilityDenied { .. }),
                        "{mode}: {error}"
                    );
                    let cap = if mode == "search" { "search" } else { "judge" };
                    assert!(error.to_string().contains(cap), "{error}");
                }
                o => panic!("{mode}: expected a denied capability, got {o:?}"),
            }
            let m = p.metrics();
            assert_eq!(m.capability_denied, 1, "{mode}: {m:?}");
            assert_eq!(
                m.failures.get("capability_denied"),
                Some(&1),
                "{mode}: {m:?}"
            );
            assert_eq!(m.dropped, 1);
        }
    }
    assert_healthy();
}

#[test]
fn granted_capabilities_work() {
    for plugin in HOSTILES {
        let judge = InMemoryJudge {
            scores: [("good answer".to_string(), 0.9)].into(),
            default_score: 0.2,
            reply: String::new(),
        };
        let index = InMemoryIndex::new([
            ("pmid1".to_string(), "metformin in diabetes".to_string()),
            ("pmid2".to_string(), "metformin".to_string()),
        ]);
        let grants = Grants::none()
            .with_judge(Box::new(judge))
            .with_search(Box::new(index));
        let p = host()
            .load_reward(
                &wasm(plugin),
                PluginOptions {
                    grants,
                    limits: limits(5000),
                    ..PluginOptions::default()
                },
            )
            .unwrap();
        let judged = p
            .score(
                &json!({"mode": "judge"}),
                &[
                    s("p", "good answer", json!(1), "x"),
                    s("p", "other", json!(1), "x"),
                ],
            )
            .unwrap();
        let r: Vec<f64> = judged.iter().map(|o| o.reward().unwrap()).collect();
        assert_eq!(r, vec![0.9, 0.2]);
        let found = p
            .score(
                &json!({"mode": "search"}),
                &[s("p", "metformin diabetes", json!(1), "x")],
            )
            .unwrap();
        assert_eq!(found[0].reward(), Some(2.0)); // pmid1 matches both terms
        assert_eq!(p.metrics().capability_denied, 0);
    }
}

#[test]
fn malformed_and_truncated_wasm_are_invalid() {
    let id = PluginId {
        name: "bytes".into(),
        version: "?".into(),
    };
    let good = std::fs::read(wasm("sample-size")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\0asm\x0d\0\x01\0this is not wasm".to_vec()),
        ("empty", vec![]),
        ("text", b"fn main() {}".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("truncated-header", good[..6].to_vec()),
        // A core module is valid wasm but not a component.
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
    ];
    for (what, bytes) in cases {
        let t = Instant::now();
        let e = host()
            .load_reward_bytes(&bytes, id.clone(), PluginOptions::default())
            .err()
            .unwrap();
        assert!(matches!(e, PluginError::InvalidWasm { .. }), "{what}: {e}");
        assert!(e.to_string().contains("bytes@?"), "{e}");
        assert!(t.elapsed() < SLACK);
    }
    // A plugin file that is not a component also names the file.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.wasm");
    std::fs::write(&f, &good[..good.len() - 100]).unwrap();
    let e = host()
        .load_reward(&f, PluginOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(e, PluginError::InvalidWasm { .. }) && e.to_string().contains("broken.wasm"),
        "{e}"
    );
    assert_healthy();
}

#[test]
fn wrong_api_version_is_refused_before_instantiation() {
    let e = host()
        .load_reward(&wasm("wrong-api"), PluginOptions::default())
        .err()
        .unwrap();
    match &e {
        PluginError::IncompatibleApi {
            found, supported, ..
        } => {
            assert_eq!(found, "9.0.0");
            assert_eq!(supported, &["0.1.0", "0.2.0", "0.3.0"].map(String::from).to_vec());
        }
        _ => panic!("expected IncompatibleApi, got {e}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("9.0.0") && msg.contains("0.1.0, 0.2.0, 0.3.0") && msg.contains("wrong_api.wasm"),
        "{msg}"
    );
    assert_healthy();
}

/// A batch mixing good and failing samples, one sample per call so a trap costs one sample.
fn mixed(
    plugin: &str,
    policy: FailurePolicy,
) -> (Result<Vec<Outcome>, PluginError>, MetricsSnapshot) {
    let l = Limits {
        max_batch_per_call: 1,
        ..limits(5000)
    };
    let p = host().load_reward(&wasm(plugin), opts(l, policy)).unwrap();
    let samples = vec![
        s("a", "four", json!(1), "ok"),
        s("b", "x", json!(1), "panic"),
        s("c", "sixsix", json!(1), "ok"),
        s("d", "x", json!(1), "guest-error"),
        s("e", "x", json!(1), "not-applicable"),
        s("f", "x", json!(1), "nan"),
    ];
    let r = p.score(&json!({"mode": "by-source"}), &samples);
    (r, p.metrics())
}

#[test]
fn policy_drop_counts_and_keeps_good_samples() {
    for plugin in HOSTILES {
        let (r, m) = mixed(plugin, FailurePolicy::Drop);
        let out = r.unwrap();
        assert_eq!(out[0].reward(), Some(4.0));
        assert!(
            matches!(&out[1], Outcome::Dropped { error } if matches!(**error, PluginError::Trap { .. }))
        );
        assert_eq!(out[2].reward(), Some(6.0));
        assert!(
            matches!(&out[3], Outcome::Dropped { error } if matches!(**error, PluginError::GuestError { .. }))
        );
        assert!(matches!(out[4], Outcome::NotApplicable));
        assert!(
            matches!(&out[5], Outcome::Dropped { error } if matches!(**error, PluginError::BadOutput { .. }))
        );
        assert_eq!(m.dropped, 3);
        assert_eq!(m.substituted, 0);
        assert_eq!(m.scored, 2);
        assert_eq!(m.not_applicable, 1);
        assert_eq!(
            m.stores_discarded, 1,
            "the trapped store must be discarded: {m:?}"
        );
        let expect: std::collections::BTreeMap<String, u64> = [
            ("trap".to_string(), 1),
            ("guest_error".to_string(), 1),
            ("bad_output".to_string(), 1),
        ]
        .into();
        assert_eq!(m.failures, expect);
    }
}

#[test]
fn policy_score_substitutes() {
    for plugin in HOSTILES {
        let (r, m) = mixed(plugin, FailurePolicy::Score(-1.0));
        let rewards: Vec<Option<f64>> = r.unwrap().iter().map(Outcome::reward).collect();
        assert_eq!(
            rewards,
            vec![
                Some(4.0),
                Some(-1.0),
                Some(6.0),
                Some(-1.0),
                None,
                Some(-1.0)
            ]
        );
        assert_eq!(m.substituted, 3);
        assert_eq!(m.dropped, 0);
    }
}

#[test]
fn policy_fail_returns_first_error() {
    for plugin in HOSTILES {
        let (r, m) = mixed(plugin, FailurePolicy::Fail);
        assert!(matches!(r.unwrap_err(), PluginError::Trap { .. }));
        assert_eq!(m.failures.values().sum::<u64>(), 3);
    }
}

#[test]
fn one_bad_sample_does_not_sink_its_batch() {
    for plugin in HOSTILES {
        // Default chunking (up to 512 samples per call): the trap is isolated by bisection.
        let p = host()
            .load_reward(
                &wasm(plugin),
                PluginOptions {
                    policy: FailurePolicy::Drop,
                    threads: 1,
                    ..PluginOptions::default()
                },
            )
            .unwrap();
        let mut samples: Vec<Sample> = (0..40)
            .map(|i| s("p", &"y".repeat(i), json!(1), "ok"))
            .collect();
        samples[17] = s("p", "x", json!(1), "panic");
        samples[30] = s("p", "x", json!(1), "unreachable");
        let out = p.score(&json!({"mode": "by-source"}), &samples).unwrap();
        for (i, o) in out.iter().enumerate() {
            match i {
                17 | 30 => assert!(
                    matches!(o, Outcome::Dropped { error } if matches!(**error, PluginError::Trap { .. })),
                    "{i}: {o:?}"
                ),
                _ => assert_eq!(o.reward(), Some(i as f64), "{i}"),
            }
        }
        let m = p.metrics();
        assert_eq!(m.failures.get("trap"), Some(&2), "{m:?}");
        assert_eq!(m.dropped, 2);
        assert_eq!(m.scored, 38);
        // Without isolation the whole chunk is lost.
        let p = host()
            .load_reward(
                &wasm(plugin),
                PluginOptions {
                    policy: FailurePolicy::Drop,
                    threads: 1,
                    isolate_failures: false,
                    ..PluginOptions::default()
                },
            )
            .unwrap();
        let out = p.score(&json!({"mode": "by-source"}), &samples).unwrap();
        assert!(out.iter().all(|o| matches!(o, Outcome::Dropped { .. })));
        assert_eq!(p.metrics().failures.get("trap"), Some(&40));
    }
}

#[test]
fn failure_policy_parses() {
    assert_eq!(
        "drop".parse::<FailurePolicy>().unwrap(),
        FailurePolicy::Drop
    );
    assert_eq!(
        "score:-0.5".parse::<FailurePolicy>().unwrap(),
        FailurePolicy::Score(-0.5)
    );
    assert!("score:nan".parse::<FailurePolicy>().is_err());
    assert!("retry".parse::<FailurePolicy>().is_err());
}

#[test]
fn parallel_scoring_matches_sequential() {
    let samples: Vec<Sample> = (0..2000)
        .map(|i| {
            s(
                "q",
                &format!("<think>x</think><answer>{}</answer>", 900 + i % 400),
                json!({"target": 1000}),
                "ss",
            )
        })
        .collect();
    let run = |threads, batch| {
        let l = Limits {
            max_batch_per_call: batch,
            ..Limits::default()
        };
        let p = host()
            .load_reward(
                &wasm("sample-size"),
                PluginOptions {
                    threads,
                    limits: l,
                    ..PluginOptions::default()
                },
            )
            .unwrap();
        p.score(&json!({}), &samples)
            .unwrap()
            .iter()
            .map(|o| o.reward().unwrap())
            .collect::<Vec<f64>>()
    };
    let seq = run(1, 2000);
    assert_eq!(seq, run(4, 37));
    assert_eq!(seq.iter().filter(|r| **r == 1.1).count(), 2000 / 400 * 301);
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn guest_output_goes_to_logs_not_the_terminal() {
    for plugin in HOSTILES {
        let buf = Captured::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        // One thread, so the guest runs on this thread and the scoped subscriber sees its output.
        let p = host()
            .load_reward(
                &wasm(plugin),
                PluginOptions {
                    threads: 1,
                    limits: limits(5000),
                    ..PluginOptions::default()
                },
            )
            .unwrap();
        let out = tracing::subscriber::with_default(subscriber, || {
            p.score(
                &json!({"mode": "log"}),
                &[s("p0", "r", json!(1), "x"), s("p1", "r", json!(1), "x")],
            )
            .unwrap()
        });
        assert_eq!(out.len(), 2);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        for needle in [
            "stdout line from hostile plugin",
            "stderr line from hostile plugin",
            "scoring p0",
            "scoring p1",
            &format!("{plugin}@0.1.0"),
        ] {
            assert!(
                text.contains(needle),
                "missing {needle:?} in captured log:\n{text}"
            );
        }
    }
}

#[test]
fn compile_cache_is_used_and_survives_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let path = wasm("sample-size");
    let h1 = PluginHost::new(cfg.clone()).unwrap();
    h1.load_reward(&path, PluginOptions::default()).unwrap();
    assert_eq!(h1.cache_stats(), (0, 1));
    let entries: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].extension().unwrap(), "cwasm");

    // A new host (as after a restart) loads from the cache.
    let h2 = PluginHost::new(cfg.clone()).unwrap();
    let p = h2.load_reward(&path, PluginOptions::default()).unwrap();
    assert_eq!(h2.cache_stats(), (1, 0));
    assert_eq!(
        p.score(
            &json!({}),
            &[s(
                "q",
                "<think></think><answer>5</answer>",
                json!({"target": 5}),
                ""
            )]
        )
        .unwrap()[0]
            .reward(),
        Some(1.1)
    );

    // A corrupted entry is recompiled, not trusted.
    std::fs::write(&entries[0], b"garbage").unwrap();
    let h3 = PluginHost::new(cfg.clone()).unwrap();
    h3.load_reward(&path, PluginOptions::default()).unwrap();
    assert_eq!(h3.cache_stats(), (0, 1));

    // Different bytes, different key.
    let h4 = PluginHost::new(cfg).unwrap();
    h4.load_reward(&wasm("hostile"), PluginOptions::default())
        .unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn data_adapter_converts_records() {
    let a = host()
        .load_adapter(&wasm("alpaca-adapter"), PluginOptions::default())
        .unwrap();
    assert_eq!(a.manifest().name, "alpaca-adapter");
    let recs = vec![
        json!({"instruction": "What is HbA1c?", "input": "", "output": "Glycated haemoglobin."})
            .to_string(),
        json!({"instruction": "Dose?", "input": "metformin", "output": "500 mg"}).to_string(),
        json!({"instruction": "", "output": "x"}).to_string(),
        "not json".to_string(),
    ];
    let out = a
        .convert(&json!({"data_source": "flashcards"}), &recs)
        .unwrap();
    let ex = out[1].as_ref().unwrap();
    assert_eq!(ex["messages"][0]["content"], "Dose?\nmetformin");
    assert_eq!(ex["messages"][1]["role"], "assistant");
    assert_eq!(ex["data_source"], "flashcards");
    assert_eq!(
        out[0].as_ref().unwrap()["messages"][0]["content"],
        "What is HbA1c?"
    );
    assert!(matches!(out[2], Err(PluginError::GuestError { .. })));
    assert!(matches!(out[3], Err(PluginError::GuestError { .. })));
    // inspect falls back to the adapter world.
    let (m, api) = host().inspect(&wasm("alpaca-adapter")).unwrap();
    assert_eq!((m.name.as_str(), api.as_str()), ("alpaca-adapter", "0.3.0"));
}

/// The host still runs data adapters built against API 0.1.0.
#[test]
fn data_adapter_on_api_0_1_converts_records() {
    let a = host()
        .load_adapter(&wasm("adapter-v01"), PluginOptions::default())
        .unwrap();
    let out = a
        .convert(&json!({}), &["\"hello\"".to_string(), "42".to_string()])
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap()["messages"][0]["content"], "hello");
    match &out[1] {
        Err(PluginError::GuestError { message, .. }) => {
            assert!(message.contains("42"), "{message}")
        }
        o => panic!("expected a guest error, got {o:?}"),
    }
    let (m, api) = host().inspect(&wasm("adapter-v01")).unwrap();
    assert_eq!((m.name.as_str(), api.as_str()), ("adapter-v01", "0.1.0"));
}

fn medrl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medrl"));
    c.env("MEDRL_CACHE_DIR", cache_dir());
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn scaffold_builds_tests_inspects_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dose-check");
    ok(medrl()
        .args(["plugin", "new", "dose-check", "--dir"])
        .arg(&dir));
    // Share compiled dependencies with the plugins workspace to keep this test fast.
    let target = repo().join("plugins/target");
    ok(
        Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .args(["test", "--quiet", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target),
    );
    let built = ok(medrl()
        .args(["plugin", "build"])
        .arg(&dir)
        .env("CARGO_TARGET_DIR", &target));
    let wasm_path = PathBuf::from(built.lines().last().unwrap().trim());
    assert!(wasm_path.ends_with("dose_check.wasm"), "{built}");
    let info = ok(medrl().args(["plugin", "inspect"]).arg(&wasm_path));
    assert!(
        info.contains("dose-check")
            && info.contains("api version:  0.3.0")
            && info.contains("capabilities: none"),
        "{info}"
    );
    let out = dir.join("scores.jsonl");
    ok(medrl()
        .args(["reward", "score", "--plugin"])
        .arg(&wasm_path)
        .arg("--input")
        .arg(dir.join("samples.jsonl"))
        .arg("--output")
        .arg(&out));
    let scores: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let r: Vec<f64> = scores
        .iter()
        .map(|v| v["score"].as_f64().unwrap())
        .collect();
    assert_eq!(r, vec![1.0, 0.0, 0.0]);
    assert_eq!(scores[0]["components"]["correct"], 1.0);
}

#[test]
fn cli_score_with_policy_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        [
            json!({"prompt": "q", "response": "<think>a</think><answer>95</answer>", "reward_model": {"ground_truth": {"target": 100}}}),
            json!({"prompt": "q", "completion": "<think>a</think><answer>85</answer>", "ground_truth": {"target": 100}}),
        ]
        .iter()
        .map(|v| v.to_string() + "\n")
        .collect::<String>(),
    )
    .unwrap();
    let cfg = tmp.path().join("cfg.json");
    std::fs::write(&cfg, r#"{"tolerance": 0.1}"#).unwrap();
    let out = ok(medrl()
        .args(["reward", "score", "--plugin"])
        .arg(wasm("sample-size"))
        .arg("--input")
        .arg(&input)
        .arg("--config")
        .arg(&cfg));
    let r: Vec<f64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["score"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(r, vec![1.1, 0.0]);
}

/// Whether componentize-py is installed; prints SKIPPED for `test` when it is not (CI installs
/// it: scripts/setup-plugins.sh).
fn has_componentize_py(test: &str) -> bool {
    let has = Command::new("componentize-py")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has {
        println!("SKIPPED {test}: componentize-py is not installed (pip install componentize-py==0.25.1, or scripts/setup-plugins.sh)");
    }
    has
}

/// Builds a Python plugin folder for `world` with scripts/build-python-plugin.sh.
fn build_python(dir: &Path, world: &str, out_name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(out_name);
    ok(Command::new("bash")
        .arg(repo().join("scripts/build-python-plugin.sh"))
        .arg(&out)
        .arg(dir)
        .arg(world));
    out
}

/// Python components take ~1 s to instantiate; the deadline covers that once.
fn python_opts() -> PluginOptions {
    PluginOptions {
        limits: limits(30_000),
        ..PluginOptions::default()
    }
}

/// An outcome as (score, components), to compare two plugins' results exactly.
fn scored(o: &Outcome) -> (f64, Vec<(String, f64)>) {
    match o {
        Outcome::Scored { score, components } => (
            *score,
            components.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        ),
        other => panic!("not scored: {other:?}"),
    }
}

/// The Python sample-size reward (API 0.3.0, through plugins/python/medrl_sdk.py) gives the
/// Rust plugin's scores and components, also for batches with non-ASCII text (the batch's
/// offsets are UTF-8 byte offsets, which the helper maps onto Python strings).
#[test]
fn python_plugin_scores_like_the_rust_one() {
    if !has_componentize_py("python_plugin_scores_like_the_rust_one") {
        return;
    }
    let out = build_python(&repo().join("plugins/python/sample-size-py"), "reward", "sample_size_py.wasm");
    // Drop: a sample that fails (a ground truth that is not an object) is compared too.
    let drop = |o: PluginOptions| PluginOptions {
        policy: FailurePolicy::Drop,
        ..o
    };
    let p = host().load_reward(&out, drop(python_opts())).unwrap();
    assert_eq!(p.manifest().name, "sample-size-py");
    assert_eq!(p.manifest().api_version, "0.3.0");
    let samples = vec![
        s(
            "q",
            "<think>t</think><answer>1,000</answer>",
            json!({"target": 1100}),
            "ss",
        ),
        s(
            "q",
            "<think>t</think><answer>700</answer>",
            json!({"target": 1000}),
            "ss",
        ),
        s("q", "<answer>1000</answer>", json!({"target": 1000}), "ss"),
        s(
            "q",
            "Assistant: <think>t</think><answer>80</answer>",
            json!({"target": "100"}),
            "ss",
        ),
        s(
            "q",
            "<think>t</think><answer>80</answer>",
            json!({"nothing": 1}),
            "ss",
        ),
    ];
    let mut unicode = samples.clone();
    unicode.push(s(
        "Größe der Studie? ≈",
        "<think>n ≈ 1 000 (μ, σ)</think><answer>1 050 Patienten</answer>",
        json!({"target": 1000, "note": "é"}),
        "ss-ü",
    ));
    unicode.push(s("", "", Value::Null, ""));
    let run = |p: &RewardPlugin, batch: &[Sample]| -> Vec<Outcome> {
        p.score(&json!({}), batch).unwrap()
    };
    let rs = host()
        .load_reward(&wasm("sample-size"), drop(PluginOptions::default()))
        .unwrap();
    let py = run(&p, &samples);
    let rewards: Vec<Option<f64>> = py.iter().map(Outcome::reward).collect();
    assert_eq!(rewards[..4], [Some(1.1), Some(0.0), Some(-2.0), Some(1.1)]);
    for batch in [&samples, &unicode] {
        let (py, rust) = (run(&p, batch), run(&rs, batch));
        assert_eq!(py.len(), batch.len());
        let py_rewards: Vec<Option<f64>> = py.iter().map(Outcome::reward).collect();
        let rust_rewards: Vec<Option<f64>> = rust.iter().map(Outcome::reward).collect();
        assert_eq!(py_rewards, rust_rewards);
        for (i, (a, b)) in py.iter().zip(&rust).enumerate() {
            match b {
                Outcome::Scored { .. } => assert_eq!(scored(a), scored(b), "sample {i}"),
                _ => assert!(matches!(a, Outcome::Dropped { .. }), "sample {i}: {a:?} vs {b:?}"),
            }
        }
    }
    let py = run(&p, &unicode);
    assert_eq!(scored(&py[5]).0, 1.1);
    assert!(matches!(py[6], Outcome::Dropped { .. }), "{:?}", py[6]);
    // Settings from the config, read once per call.
    let cfg = json!({"tolerance": 0.5, "correct_score": 3.0});
    let r: Vec<Option<f64>> = p.score(&cfg, &samples[..2]).unwrap().iter().map(Outcome::reward).collect();
    assert_eq!(r, vec![Some(3.0), Some(3.0)]);
}

/// The Python tool example (plugins/python/dose-calc-py, `tool` world of API 0.3.0) through the
/// host: its spec, a correct call, the config, and bad arguments answered with an `err` the
/// model reads (the instance is kept).
#[test]
fn python_tool_plugin_answers_through_the_host() {
    if !has_componentize_py("python_tool_plugin_answers_through_the_host") {
        return;
    }
    let out = build_python(&repo().join("plugins/python/dose-calc-py"), "tool", "dose_calc_py.wasm");
    let t = host().load_tool(&out, &json!({}), python_opts()).unwrap();
    assert_eq!(t.manifest().name, "dose-calc-py");
    assert_eq!(t.manifest().api_version, "0.3.0");
    assert!(t.manifest().capabilities.is_empty());
    let spec = t.spec();
    assert_eq!(spec.name, "dose_calc");
    assert!(spec.description.contains("weight-based"), "{}", spec.description);
    assert_eq!(spec.parameters["required"], json!(["weight_kg", "dose_mg_per_kg"]));
    assert_eq!(spec.parameters["properties"]["doses_per_day"]["maximum"], 24);

    let reply = t
        .call(r#"{"weight_kg": 30, "dose_mg_per_kg": 15, "doses_per_day": 3}"#)
        .unwrap();
    assert_eq!(reply, "dose: 450 mg per dose (15 mg/kg x 30 kg = 450 mg)\ndaily: 1350 mg in 3 doses");
    let reply = t
        .call(r#"{"weight_kg": 80, "dose_mg_per_kg": 15, "max_dose_mg": 1000}"#)
        .unwrap();
    assert_eq!(
        reply,
        "dose: 1000 mg per dose (15 mg/kg x 80 kg = 1200 mg, capped at 1000 mg)\ndaily: 1000 mg in 1 dose"
    );
    let bad = [
        (r#"{"weight_kg": "70 kg", "dose_mg_per_kg": 1}"#, r#"weight_kg must be a number, got "70 kg""#),
        (r#"{"weight_kg": 700, "dose_mg_per_kg": 1}"#, "weight_kg must be from 0.3 to 400, got 700"),
        (r#"{"weight_kg": 70}"#, "dose_mg_per_kg is required"),
    ];
    for (args, want) in bad {
        match t.call(args) {
            Err(PluginError::GuestError { message, .. }) => assert_eq!(message, want, "{args}"),
            r => panic!("{args}: {r:?}"),
        }
    }
    let m = t.metrics();
    assert_eq!((m.samples, m.scored, m.stores_discarded), (5, 2, 0));
    assert_eq!(m.failures.get("guest_error"), Some(&3));

    // The run's config reaches every call.
    let t = host()
        .load_tool(&out, &json!({"round_to_mg": 10}), python_opts())
        .unwrap();
    let reply = t.call(r#"{"weight_kg": 23, "dose_mg_per_kg": 15, "doses_per_day": 4}"#).unwrap();
    assert_eq!(reply, "dose: 350 mg per dose (15 mg/kg x 23 kg = 345 mg)\ndaily: 1400 mg in 4 doses");
}

/// medrl_sdk's contract for tools: a `ToolError` is the `err` reply, any other exception is a
/// bug that traps (a plugin failure for the run's `on_failure`; the instance is discarded) and
/// the tool answers the next call.
#[test]
fn python_tool_exceptions_other_than_tool_error_trap() {
    if !has_componentize_py("python_tool_exceptions_other_than_tool_error_trap") {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("buggy-tool-py");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.py"),
        r#"import wit_world
import medrl_sdk


def call(cfg, args):
    if args.get("mode") == "bug":
        return str(1 / 0)
    if args.get("mode") == "error":
        raise medrl_sdk.ToolError("asked for an error")
    return "ok"


class WitWorld(wit_world.WitWorld):
    def manifest(self):
        return medrl_sdk.manifest("buggy-tool-py", "0.1.0", "test tool")

    def tool_spec(self):
        return medrl_sdk.tool_spec("buggy", "test tool", {"type": "object"})

    def call(self, config, arguments):
        return medrl_sdk.tool_call(config, arguments, call)
"#,
    )
    .unwrap();
    let out = build_python(&dir, "tool", "buggy_tool_py.wasm");
    let t = host().load_tool(&out, &json!({}), python_opts()).unwrap();
    assert_eq!(t.call("{}").unwrap(), "ok");
    match t.call(r#"{"mode": "error"}"#) {
        Err(PluginError::GuestError { message, .. }) => assert_eq!(message, "asked for an error"),
        r => panic!("{r:?}"),
    }
    let e = t.call(r#"{"mode": "bug"}"#).unwrap_err();
    assert!(matches!(e, PluginError::Trap { .. }), "{e}");
    assert_eq!(t.call("{}").unwrap(), "ok");
    let m = t.metrics();
    assert_eq!((m.samples, m.scored, m.stores_discarded), (4, 2, 1));
}

/// The helpers and both examples in plain CPython (plugins/python/test_medrl_sdk.py).
#[test]
fn python_sdk_unit_tests_pass_in_cpython() {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&py).arg("--version").output().is_err() {
        println!("SKIPPED python_sdk_unit_tests_pass_in_cpython: no {py}");
        return;
    }
    let out = Command::new(&py)
        .args(["-B", "-m", "unittest", "discover", "-s"])
        .arg(repo().join("plugins/python"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 14: time the deadline did not bound, output the limits did not bound, what reaches the
// trainer. Each test below failed on the host before the fix.

/// Log lines captured while `f` runs on this thread.
fn captured_log<R>(f: impl FnOnce() -> R) -> (R, String) {
    let buf = Captured::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (r, text)
}

/// A WASI sleep blocks inside `poll`, where epoch interruption cannot reach: it used to run
/// for as long as the guest asked (an hour). Now a wait past the deadline is a timeout at once,
/// and a loop of short sleeps ends at the deadline; a short sleep within it is fine.
#[test]
fn wasi_sleep_respects_the_deadline() {
    for plugin in HOSTILES {
        for mode in ["sleep", "sleep-loop"] {
            let (r, dt) = hostile_with(host(), plugin, mode, json!({}), limits(300), 2);
            let e = r.unwrap_err();
            assert!(matches!(e, PluginError::Timeout { .. }), "{plugin} {mode}: {e}");
            check_plugin_named(plugin, &e);
            assert!(dt < Duration::from_millis(3000), "{plugin} {mode}: took {dt:?}");
        }
        let (r, _) = hostile_with(host(), plugin, "sleep-short", json!({"ms": 10}), limits(5000), 2);
        let rewards: Vec<_> = r.unwrap().iter().map(Outcome::reward).collect();
        assert_eq!(rewards, vec![Some(2.0), Some(2.0)]);
    }
    assert_healthy();
}

/// One `search` with a quoted phrase of 300,000 words took 86 s: the query term limit counted
/// the phrase once. Now the host refuses capability input over its cap (the guest gets an
/// error back) and the parser bounds the words of each phrase.
#[test]
fn capability_input_is_bounded() {
    use medrl::search::{Study, StudyIndex};
    let studies: Vec<Study> = (0..50)
        .map(|i| Study {
            pmid: format!("{i}"),
            title: format!("w{i} trial"),
            abstract_text: (0..200).map(|j| format!("w{} ", i + j)).collect(),
        })
        .collect();
    for plugin in HOSTILES {
        let grants = Grants::none().with_search(Box::new(StudyIndex::in_memory(&studies).unwrap()));
        let p = host()
            .load_reward(
                &wasm(plugin),
                PluginOptions { grants, threads: 1, ..opts(limits(2000), FailurePolicy::Drop) },
            )
            .unwrap();
        let one = [s("p", "r", json!(1), "x")];
        let t = Instant::now();
        let out = p.score(&json!({"mode": "search-phrase", "words": 300_000}), &one).unwrap();
        let dt = t.elapsed();
        match &out[0] {
            Outcome::Dropped { error } => match &**error {
                PluginError::GuestError { message, .. } => {
                    assert!(message.contains("exceeds the limit of 65536 bytes"), "{message}")
                }
                e => panic!("{plugin}: expected the guest to get the refusal, got {e}"),
            },
            o => panic!("{plugin}: {o:?}"),
        }
        assert!(dt < Duration::from_secs(20), "{plugin}: took {dt:?}");
        // Under the byte cap, a long phrase still searches, its words bounded by the parser.
        let t = Instant::now();
        let out = p.score(&json!({"mode": "search-phrase", "words": 6000}), &one).unwrap();
        assert!(out[0].reward().is_some(), "{plugin}: {:?}", out[0]);
        assert!(t.elapsed() < Duration::from_secs(20), "{plugin}: took {:?}", t.elapsed());
    }
    assert_healthy();
}

/// A core module wrapped in a component: one function of `ops` × 4 instructions.
fn component_with_function(ops: usize) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len(), out);
        out.extend_from_slice(body);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 1, 0x7f, 0], &mut m); // type 0: (i32) -> ()
    section(3, &[1, 0], &mut m); // one function of type 0
    let mut body = vec![0]; // no locals beyond the parameter
    for _ in 0..ops {
        // local.get 0; i32.const 1; i32.add; local.set 0
        body.extend_from_slice(&[0x20, 0, 0x41, 1, 0x6a, 0x21, 0]);
    }
    body.push(0x0b);
    let mut code = vec![1];
    leb(body.len(), &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut m);
    let mut c = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &m, &mut c); // a core module section of the component
    c
}

/// A component with one huge function (never called) took 185 s to load with a fresh cache.
/// Now size and shape are checked before Cranelift runs, and compilation has a deadline past
/// which it is abandoned (and the same bytes are refused at once afterwards).
#[test]
fn compilation_is_bounded() {
    let id = PluginId { name: "compile-bomb".into(), version: "?".into() };
    let limited = |f: fn(&mut HostConfig)| {
        let mut cfg = HostConfig { cache_dir: None, ..HostConfig::default() };
        f(&mut cfg);
        PluginHost::new(cfg).unwrap()
    };
    let expect_refused = |h: &PluginHost, bytes: &[u8], needle: &str, within: Duration| {
        let t = Instant::now();
        let e = h.load_reward_bytes(bytes, id.clone(), PluginOptions::default()).err().unwrap();
        let dt = t.elapsed();
        match &e {
            PluginError::CompileLimit { plugin, reason } => {
                assert_eq!(plugin, &id);
                assert!(reason.contains(needle), "{reason}");
            }
            _ => panic!("expected CompileLimit, got {e}"),
        }
        assert!(e.to_string().contains("compile-bomb@?"), "{e}");
        assert!(dt < within, "took {dt:?}");
    };
    let bomb = component_with_function(200_000); // a 1.4 MB function body
    // Size checks, before any compilation.
    let h = limited(|c| c.max_function_bytes = 64 << 10);
    expect_refused(&h, &bomb, "function body of 1400002 bytes exceeds the limit of 65536", SLACK);
    let h = limited(|c| c.max_component_bytes = 64 << 10);
    let plugin = std::fs::read(wasm("sample-size")).unwrap();
    expect_refused(&h, &plugin, "exceeds the limit of 65536 bytes", SLACK);
    let h = limited(|c| c.max_functions = 10);
    expect_refused(&h, &plugin, "over the limit of 10", SLACK);
    // The default function cap stops this one too.
    expect_refused(host(), &bomb, "exceeds the limit of 1048576", SLACK);
    // The compile deadline: a function under the size cap that takes longer than 50 ms.
    let slow = component_with_function(100_000);
    let h = limited(|c| c.compile_timeout = Duration::from_millis(50));
    expect_refused(&h, &slow, "did not finish within 50ms", Duration::from_millis(500) + SLACK);
    expect_refused(&h, &slow, "earlier compile of these bytes", Duration::from_millis(500));
    assert_healthy();
}

/// Replaces the hostile plugins' manifest-mode marker (see probes.rs) in their built bytes.
fn with_manifest_mode(plugin: &str, mode: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(wasm(plugin)).unwrap();
    let marker = b"manifest-mode:normal..........";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("manifest-mode marker in the hostile plugin");
    let patched = format!("manifest-mode:{mode:.<16}");
    assert_eq!(patched.len(), marker.len());
    bytes[at..at + marker.len()].copy_from_slice(patched.as_bytes());
    bytes
}

/// A 4 MiB plugin name was copied into every error, log line and row; 16 million listed
/// capabilities made one warning each. Every manifest field is now checked before use.
#[test]
fn manifest_floods_are_refused() {
    for plugin in HOSTILES {
        let id = PluginId { name: format!("{plugin}-patched"), version: "?".into() };
        for (mode, needle) in [
            ("huge-name", "name is 4194304 bytes (must be 1 to 64)"),
            ("bad-name", "name contains '\\n'"),
            ("huge-version", "version is 1048576 bytes"),
            ("huge-desc", "description is 4194304 bytes (limit 4096)"),
            ("huge-schema", "config_schema is 4194304 bytes (limit 65536)"),
            ("many-caps", "lists 100000 capabilities (limit 64)"),
        ] {
            let bytes = with_manifest_mode(plugin, mode);
            let (r, log) = captured_log(|| {
                host().load_reward_bytes(&bytes, id.clone(), opts(limits(5000), FailurePolicy::Fail))
            });
            let e = r.err().unwrap_or_else(|| panic!("{plugin} {mode}: loaded"));
            match &e {
                PluginError::BadManifest { plugin: who, reason } => {
                    assert_eq!(who, &id);
                    assert!(reason.contains(needle), "{plugin} {mode}: {reason}");
                }
                _ => panic!("{plugin} {mode}: expected BadManifest, got {e}"),
            }
            assert!(e.to_string().len() < 1024, "{plugin} {mode}: {} bytes of error", e.to_string().len());
            assert!(log.len() < 16 << 10, "{plugin} {mode}: {} bytes of log", log.len());
        }
        // Repeated capabilities fold into one of each, with one warning each at most.
        let bytes = with_manifest_mode(plugin, "dup-caps");
        let (p, log) = captured_log(|| host().load_reward_bytes(&bytes, id.clone(), PluginOptions::default()));
        let p = p.unwrap();
        assert_eq!(p.manifest().capabilities, vec![Capability::Judge, Capability::Search]);
        assert_eq!(log.matches("which is not granted").count(), 2, "{log}");
        // `plugin inspect` reads the manifest through the same checks.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("many-caps.wasm");
        std::fs::write(&f, with_manifest_mode(plugin, "many-caps")).unwrap();
        let (r, log) = captured_log(|| host().inspect(&f));
        assert!(matches!(r, Err(PluginError::BadManifest { .. })), "{r:?}");
        assert!(log.len() < 16 << 10, "{} bytes of log", log.len());
    }
    assert_healthy();
}

/// 50,000 distinct 100-byte component names per result passed the output cap and were cloned
/// into every sample. Names are now capped in number and length (a sample, or a 0.2.0 batch,
/// over the cap is bad output), and shared by the samples of a plugin.
#[test]
fn component_name_floods_are_refused() {
    for (plugin, n) in [("hostile", 1), ("hostile-v2", 3)] {
        let p = host()
            .load_reward(&wasm(plugin), opts(limits(10_000), FailurePolicy::Drop))
            .unwrap();
        let samples: Vec<Sample> = (0..n).map(|i| s(&format!("p{i}"), "r", json!(1), "x")).collect();
        let t = Instant::now();
        let out = p.score(&json!({"mode": "many-names"}), &samples).unwrap();
        for o in &out {
            match o {
                Outcome::Dropped { error } => match &**error {
                    PluginError::BadOutput { reason, .. } => assert!(
                        reason.contains("50000 component names exceed the limit of 256"),
                        "{plugin}: {reason}"
                    ),
                    e => panic!("{plugin}: expected BadOutput, got {e}"),
                },
                o => panic!("{plugin}: expected a dropped sample, got {o:?}"),
            }
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{plugin}: took {:?}", t.elapsed());
        // A name longer than the cap.
        let l = Limits { max_component_name_bytes: 50, ..limits(10_000) };
        let p = host().load_reward(&wasm(plugin), opts(l, FailurePolicy::Drop)).unwrap();
        let out = p.score(&json!({"mode": "many-names", "names": 3}), &samples).unwrap();
        assert!(
            matches!(&out[0], Outcome::Dropped { error } if error.to_string().contains("name of 100 bytes exceeds the limit of 50 bytes")),
            "{plugin}: {:?}",
            out[0]
        );
    }
    // Names are interned per plugin: every sample, of every call, shares one copy.
    let p = host().load_reward(&wasm("hostile-v2"), opts(limits(5000), FailurePolicy::Fail)).unwrap();
    let samples: Vec<Sample> = (0..4).map(|i| s("p", "r", json!(1), &format!("{i}"))).collect();
    let names = |out: Vec<Outcome>| -> Vec<std::sync::Arc<str>> {
        out.into_iter()
            .map(|o| match o {
                Outcome::Scored { components, .. } => components[0].0.clone(),
                o => panic!("{o:?}"),
            })
            .collect()
    };
    let first = names(p.score(&json!({"mode": "ok"}), &samples).unwrap());
    let again = names(p.score(&json!({"mode": "ok"}), &samples).unwrap());
    for n in first.iter().chain(&again) {
        assert!(std::sync::Arc::ptr_eq(n, &first[0]), "component names are not shared");
    }
    assert_healthy();
}

/// The duplicate-name check was quadratic (9 s per call at 50,000 names, on the host, outside
/// the deadline). With the name cap raised to let 50,000 through, a duplicate in last place is
/// still found in linear time.
#[test]
fn duplicate_component_names_are_found_in_linear_time() {
    let l = Limits { max_components: 100_000, ..limits(10_000) };
    let p = host().load_reward(&wasm("hostile-v2"), opts(l, FailurePolicy::Fail)).unwrap();
    let t = Instant::now();
    let e = p
        .score(&json!({"mode": "many-names", "dup_last": 1}), &[s("p", "r", json!(1), "x")])
        .unwrap_err();
    let dt = t.elapsed();
    match &e {
        PluginError::BadOutput { reason, .. } => assert!(reason.contains("appears twice"), "{reason}"),
        _ => panic!("expected BadOutput, got {e}"),
    }
    assert!(dt < Duration::from_secs(3), "took {dt:?}");
    assert_healthy();
}

/// Finite but absurd scores (±1e308) passed through, and a GRPO group mean of two of them is
/// infinite. A score beyond `max_abs_score` (default 1e6) now fails its sample.
#[test]
fn absurd_scores_are_bad_output() {
    assert_eq!(Limits::default().max_abs_score, 1e6);
    for plugin in HOSTILES {
        for mode in ["huge-score", "neg-huge-score"] {
            let (r, _) = hostile(plugin, mode, limits(5000));
            match r.unwrap_err() {
                PluginError::BadOutput { reason, .. } => {
                    assert!(reason.contains("beyond the bound of ±1e6"), "{plugin} {mode}: {reason}")
                }
                e => panic!("{plugin} {mode}: expected BadOutput, got {e}"),
            }
        }
        // The bound is a limit like the others: raised, the same score passes.
        let l = Limits { max_abs_score: f64::MAX, ..limits(5000) };
        let (r, _) = hostile(plugin, "huge-score", l);
        assert_eq!(r.unwrap()[0].reward(), Some(1e308));
    }
    assert_healthy();
}

/// When every call spun most of its deadline and then trapped, bisection re-ran the batch in
/// halves: 127 calls for 64 samples, 51 s for a 0.5 s deadline. A chunk's isolation now has a
/// time and call budget and stops when every call failed.
#[test]
fn slow_traps_do_not_multiply_the_deadline() {
    for plugin in HOSTILES {
        let p = host()
            .load_reward(
                &wasm(plugin),
                PluginOptions { threads: 1, ..opts(limits(500), FailurePolicy::Drop) },
            )
            .unwrap();
        let samples: Vec<Sample> = (0..64).map(|i| s(&format!("p{i}"), "r", json!(1), "x")).collect();
        let t = Instant::now();
        let out = p.score(&json!({"mode": "spin-then-panic", "spin_ms": 400}), &samples).unwrap();
        let dt = t.elapsed();
        assert!(out.iter().all(|o| matches!(o, Outcome::Dropped { error } if matches!(**error, PluginError::Trap { .. }))));
        // The chunk's budget is 3 deadlines; the call running when it ends finishes.
        assert!(dt < Duration::from_millis(500 * 10), "{plugin}: took {dt:?}");
        assert_eq!(p.metrics().dropped, 64);
    }
    // Fast traps on every sample: given up after max(8, log2(n) + 2) failed calls, not 2n - 1.
    for plugin in HOSTILES {
        let p = host()
            .load_reward(
                &wasm(plugin),
                PluginOptions { threads: 1, ..opts(limits(5000), FailurePolicy::Drop) },
            )
            .unwrap();
        let before = p.metrics().calls;
        let samples: Vec<Sample> = (0..512).map(|i| s(&format!("p{i}"), "r", json!(1), "x")).collect();
        let out = p.score(&json!({"mode": "panic"}), &samples).unwrap();
        assert!(out.iter().all(|o| matches!(o, Outcome::Dropped { .. })));
        // Each failed call also instantiates a fresh store (a guarded call too).
        let calls = p.metrics().calls - before;
        assert!(calls <= 2 * 11 + 2, "{plugin}: {calls} guarded calls");
    }
    assert_healthy();
}

/// A neighbour of the manifest floods: per-sample error messages (1 MiB each, under the output
/// cap) and trap backtraces are guest-controlled text copied into every log line and row of
/// the samples they fail; errors keep at most 4 KiB of it.
#[test]
fn long_guest_errors_are_clipped() {
    for plugin in HOSTILES {
        let (r, _) = hostile(plugin, "long-error", limits(5000));
        match r.unwrap_err() {
            PluginError::GuestError { message, .. } => {
                assert!(message.len() < 4200, "{plugin}: {} bytes", message.len());
                assert!(message.ends_with("[... cut, 1048576 bytes in all]"), "{plugin}");
            }
            e => panic!("{plugin}: expected GuestError, got {e}"),
        }
        let (r, _) = hostile(plugin, "stack-overflow", limits(10_000));
        match r.unwrap_err() {
            PluginError::Trap { backtrace, .. } => assert!(backtrace.len() < 4200, "{plugin}: {}", backtrace.len()),
            e => panic!("{plugin}: expected Trap, got {e}"),
        }
    }
    assert_healthy();
}

/// The issue's two CLI reports: `reward score` with a 2 s deadline on a plugin that sleeps for
/// an hour (still running at 30 s), and a 4 MiB plugin name copied into every stderr line and
/// row. Now: a timeout row per sample within a few deadlines, and a short refusal.
#[test]
fn cli_survives_sleeping_and_flooding_plugins() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, (0..4).map(|i| format!("{}\n", json!({"prompt": format!("p{i}"), "response": "r"}))).collect::<String>()).unwrap();
    let cfg = tmp.path().join("cfg.json");
    std::fs::write(&cfg, r#"{"mode": "sleep"}"#).unwrap();
    let t = Instant::now();
    let out = ok(medrl()
        .args(["reward", "score", "--timeout-ms", "2000", "--policy", "drop", "--plugin"])
        .arg(wasm("hostile-v2"))
        .arg("--input")
        .arg(&input)
        .arg("--config")
        .arg(&cfg));
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    let rows: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["error_kind"] == "timeout"), "{rows:?}");

    let flood = tmp.path().join("flood.wasm");
    std::fs::write(&flood, with_manifest_mode("hostile-v2", "huge-name")).unwrap();
    let o = medrl()
        .args(["reward", "score", "--plugin"])
        .arg(&flood)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad manifest") && err.contains("flood.wasm"), "{err}");
    assert!(o.stderr.len() < 4096, "{} bytes of stderr", o.stderr.len());
}

/// Each plugin of a reward set keeps its own `timeout_s`: a set used to run every plugin under
/// the smallest deadline of the set, so a short deadline for a looping plugin timed out a
/// healthy slow one beside it.
#[test]
fn each_reward_in_a_set_keeps_its_own_deadline() {
    use medrl::train::rewards::{load_rewards, RewardSpec};
    let spec = |mode: Value, timeout_s: f64| RewardSpec { plugin: wasm("hostile"), weight: 1.0, config: mode, on_failure: "drop".into(), timeout_s };
    let specs = [spec(json!({"mode": "sleep-short", "ms": 150}), 30.0), spec(json!({"mode": "loop"}), 0.1)];
    let rewards = load_rewards(&specs, &Grants::none()).unwrap();
    let samples = [s("p", "a", json!(null), "t"), s("p", "b", json!(null), "t")];
    let out = rewards.score(&samples).unwrap();
    for r in &out {
        assert_eq!(r.by_plugin.get("hostile"), Some(&Some(2.0)), "the sleeping plugin scores within its own 30 s: {r:?}");
        assert!(r.failures.get("hostile#2").is_some_and(|f| f.contains("timeout")), "the looping one times out: {r:?}");
    }
    // A deadline that no Duration holds is a typed error naming the plugin, not a panic.
    let e = match load_rewards(&[spec(json!({"mode": "ok"}), f64::INFINITY)], &Grants::none()) {
        Ok(_) => panic!("an infinite timeout_s was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("hostile") && e.contains("timeout_s"), "{e}");
}
