//! Tool plugins (API 0.3.0, `tool` world): the bundled `pubmed_search` over a granted index,
//! a hostile tool failing every way a sandboxed call can (each a typed error within the
//! deadline, the tool still working afterwards), spec checks at load, worlds not mixed up,
//! concurrent calls, `medrl plugin inspect`, and medrl-reward's `ToolSet` policies.
//!
//! The wasm plugins are built on first use, as in tests/plugins.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use medrl::plugin::*;
use medrl::reward::{ToolConfig, ToolFailure, ToolOutcome, ToolSet};
use serde_json::{json, Value};

mod common;
use common::wasm;

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

const SLACK: Duration = Duration::from_secs(5);

fn index() -> InMemoryIndex {
    InMemoryIndex::new([
        ("31000001".to_string(), "metformin in gestational diabetes randomized trial".to_string()),
        ("31000002".to_string(), "insulin versus metformin pregnancy".to_string()),
        ("31000003".to_string(), "statins and myopathy".to_string()),
    ])
}

fn opts(timeout_ms: u64, grants: Grants) -> PluginOptions {
    PluginOptions {
        limits: Limits {
            timeout: Duration::from_millis(timeout_ms),
            memory_bytes: 128 << 20,
            ..Limits::default()
        },
        grants,
        ..PluginOptions::default()
    }
}

fn hostile(timeout_ms: u64, grants: Grants) -> ToolPlugin {
    host()
        .load_tool(&wasm("hostile-tool"), &json!({}), opts(timeout_ms, grants))
        .unwrap()
}

fn echo(t: &ToolPlugin, text: &str) -> String {
    t.call(&json!({"mode": "echo", "text": text}).to_string())
        .unwrap()
}

#[test]
fn pubmed_search_returns_the_hits_of_the_granted_index() {
    let grants = Grants::none().with_search(Box::new(index()));
    let t = host()
        .load_tool(&wasm("pubmed-search-tool"), &json!({}), opts(5000, grants))
        .unwrap();
    assert_eq!(t.manifest().api_version, "0.3.0");
    assert_eq!(t.manifest().capabilities, vec![Capability::Search]);
    let spec = t.spec();
    assert_eq!(spec.name, "pubmed_search");
    assert!(spec.description.contains("PubMed"), "{}", spec.description);
    assert_eq!(spec.parameters["required"], json!(["query"]));
    assert_eq!(spec.parameters["properties"]["top_k"]["maximum"], 20);

    // The index's ranking (query terms found), best first, ties by id.
    let out = t.call(r#"{"query": "metformin gestational diabetes"}"#).unwrap();
    assert_eq!(out, "1. 31000001 (score 3.00)\n2. 31000002 (score 1.00)");
    let out = t.call(r#"{"query": "metformin", "top_k": 1}"#).unwrap();
    assert_eq!(out, "1. 31000001 (score 1.00)");
    assert_eq!(t.call(r#"{"query": "aspirin"}"#).unwrap(), "No results.");
    // The tool's own errors are for the model to read; the store stays in use.
    match t.call(r#"{"query": "x", "top_k": 50}"#) {
        Err(PluginError::GuestError { message, .. }) => {
            assert_eq!(message, "top_k must be an integer from 1 to 20, got 50")
        }
        r => panic!("{r:?}"),
    }
    let m = t.metrics();
    assert_eq!((m.samples, m.scored, m.stores_discarded), (4, 3, 0));
    assert_eq!(m.failures.get("guest_error"), Some(&1));

    // Not granted: the call fails with the capability named.
    let t = host()
        .load_tool(&wasm("pubmed-search-tool"), &json!({}), opts(5000, Grants::none()))
        .unwrap();
    let e = t.call(r#"{"query": "metformin"}"#).unwrap_err();
    assert!(matches!(&e, PluginError::CapabilityDenied { capability, .. } if capability == "search"), "{e}");
}

/// Each hostile mode fails with its kind, within the deadline; the store that ran it is
/// discarded (for the sandbox's failures) and the tool answers the next call.
#[test]
fn every_failure_is_typed_within_the_deadline_and_the_tool_keeps_working() {
    let t = hostile(400, Grants::none());
    let cases: [(Value, &str, bool); 9] = [
        (json!({"mode": "loop"}), "timeout", true),
        (json!({"mode": "sleep"}), "timeout", true),
        (json!({"mode": "panic"}), "trap", true),
        (json!({"mode": "unreachable"}), "trap", true),
        (json!({"mode": "alloc-bomb"}), "memory_limit", true),
        // Over the 64 KiB cap: refused after the copy, or while copying when far over it.
        (json!({"mode": "huge", "bytes": 100_000}), "bad_output", false),
        (json!({"mode": "huge", "bytes": 8 << 20}), "bad_output", true),
        // Ungranted judge: fails the call even though the guest ignored the error.
        (json!({"mode": "judge-ignore"}), "capability_denied", true),
        (json!({"mode": "err", "text": "that"}), "guest_error", false),
    ];
    let mut discarded = 0;
    for (args, kind, poisons) in cases {
        let before = t.metrics().stores_discarded;
        let start = Instant::now();
        let e = t.call(&args.to_string()).unwrap_err();
        let dt = start.elapsed();
        assert_eq!(e.kind(), kind, "{args}: {e}");
        assert!(dt < Duration::from_millis(400) + SLACK, "{args} took {dt:?}");
        assert_eq!(e.plugin().to_string(), "hostile-tool@0.1.0", "{e}");
        discarded += poisons as u64;
        assert_eq!(t.metrics().stores_discarded - before, poisons as u64, "{args}");
        assert_eq!(echo(&t, "still here"), "still here", "after {args}");
    }
    let m = t.metrics();
    assert_eq!(m.stores_discarded, discarded);
    assert_eq!(m.failures.get("timeout"), Some(&2));
    assert_eq!(m.failures.get("trap"), Some(&2));
    assert_eq!(m.capability_denied, 1);
    // The exact messages a caller logs.
    match t.call(r#"{"mode": "huge", "bytes": 65537}"#) {
        Err(PluginError::BadOutput { reason, .. }) => assert_eq!(
            reason,
            "tool output of 65537 bytes exceeds the limit of 65536 bytes (max_tool_output_bytes; output is never truncated)"
        ),
        r => panic!("{r:?}"),
    }
    assert_eq!(t.call(r#"{"mode": "huge", "bytes": 65536}"#).unwrap().len(), 65536);
    match t.call(r#"{"mode": "err", "text": "that"}"#) {
        Err(PluginError::GuestError { message, .. }) => assert_eq!(message, "cannot do `that`"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn fuel_limits_a_tool_call() {
    let h = PluginHost::new(HostConfig {
        cache_dir: Some(cache_dir()),
        fuel_metering: true,
        ..HostConfig::default()
    })
    .unwrap();
    let mut o = opts(60_000, Grants::none());
    o.limits.fuel = Some(50_000_000);
    let t = h.load_tool(&wasm("hostile-tool"), &json!({}), o).unwrap();
    let e = t.call(r#"{"mode": "loop"}"#).unwrap_err();
    assert!(matches!(e, PluginError::OutOfFuel { fuel: 50_000_000, .. }), "{e}");
    assert_eq!(echo(&t, "ok"), "ok");
}

#[test]
fn granted_capabilities_reach_a_tool() {
    let judge = InMemoryJudge {
        default_score: 0.5,
        ..Default::default()
    };
    let grants = Grants::none()
        .with_search(Box::new(index()))
        .with_judge(Box::new(judge));
    let t = hostile(5000, grants);
    let out = t.call(r#"{"mode": "search-ids", "text": "metformin"}"#).unwrap();
    assert_eq!(out, "31000001,31000002");
    assert_eq!(t.call(r#"{"mode": "judge-ignore"}"#).unwrap(), "carried on");
    assert_eq!(t.metrics().capability_denied, 0);
}

/// Patches the hostile tool's spec-mode marker (see its lib.rs) in its built bytes.
fn with_spec_mode(mode: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(wasm("hostile-tool")).unwrap();
    let marker = b"spec-mode:normal..........";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("spec-mode marker in the hostile tool");
    let patched = format!("spec-mode:{mode:.<16}");
    assert_eq!(patched.len(), marker.len());
    bytes[at..at + marker.len()].copy_from_slice(patched.as_bytes());
    bytes
}

#[test]
fn invalid_specs_are_refused_at_load() {
    for (mode, kind, needle) in [
        ("bad-name", "bad_manifest", "tool name contains 'H'"),
        ("long-name", "bad_manifest", "tool name is 65 bytes"),
        ("long-desc", "bad_manifest", "tool description is 5000 bytes (limit 4096)"),
        ("not-object", "bad_manifest", "tool parameters are not a JSON object: found a JSON array"),
        ("not-json", "bad_manifest", "tool parameters are not a JSON object"),
        // Far over every cap: stopped while it is copied out of the guest.
        ("huge-desc", "bad_output", "stopped while copying"),
    ] {
        let t = Instant::now();
        let e = host()
            .load_tool_bytes(
                &with_spec_mode(mode),
                PluginId {
                    name: "patched".into(),
                    version: "?".into(),
                },
                &json!({}),
                opts(5000, Grants::none()),
            )
            .err()
            .unwrap();
        assert_eq!(e.kind(), kind, "{mode}: {e}");
        assert!(e.to_string().contains(needle), "{mode}: {e}");
        assert!(e.to_string().len() < 400, "{mode}: the error never quotes the spec");
        assert!(t.elapsed() < SLACK, "{mode}");
    }
}

#[test]
fn rewards_adapters_and_tools_are_not_mixed_up() {
    let expect = |r: Result<(), PluginError>, found: &str, expected: &str| {
        let e = r.unwrap_err();
        match &e {
            PluginError::WrongWorld {
                found: f,
                expected: x,
                ..
            } => assert_eq!((*f, *x), (found, expected)),
            _ => panic!("expected WrongWorld, got {e}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("exports the `{found}` world"))
                && msg.contains(&format!("as a `{expected}` plugin")),
            "{msg}"
        );
    };
    let o = PluginOptions::default;
    let tool = |name: &str| host().load_tool(&wasm(name), &json!({}), o()).map(|_| ());
    // 0.3.0, 0.2.0 and 0.1.0 rewards, and an adapter, are not tools.
    expect(tool("sample-size"), "reward", "tool");
    expect(tool("hostile-v2"), "reward", "tool");
    expect(tool("hostile"), "reward", "tool");
    expect(tool("alpaca-adapter"), "data-adapter", "tool");
    // A tool is neither a reward nor an adapter.
    let t = wasm("pubmed-search-tool");
    expect(host().load_reward(&t, o()).map(|_| ()), "tool", "reward");
    expect(host().load_adapter(&t, o()).map(|_| ()), "tool", "data-adapter");
}

#[test]
fn concurrent_calls_each_get_their_own_store() {
    let t = hostile(5000, Grants::none());
    std::thread::scope(|s| {
        for i in 0..8 {
            let t = &t;
            s.spawn(move || {
                for j in 0..10 {
                    if (i + j) % 5 == 0 {
                        assert_eq!(t.call(r#"{"mode": "panic"}"#).unwrap_err().kind(), "trap");
                    } else {
                        let text = format!("{i}-{j}");
                        assert_eq!(echo(t, &text), text);
                    }
                }
            });
        }
    });
    let m = t.metrics();
    assert_eq!((m.samples, m.scored), (80, 64));
    assert_eq!(m.failures.get("trap"), Some(&16));
    assert_eq!(m.stores_discarded, 16);
}

#[test]
fn inspect_reports_a_tool_and_its_spec() {
    let i = host().inspect_plugin(&wasm("pubmed-search-tool")).unwrap();
    assert_eq!(i.world, World::Tool);
    assert_eq!(i.api_version, "0.3.0");
    assert_eq!(i.manifest.name, "pubmed-search-tool");
    assert_eq!(i.tool.as_ref().unwrap().name, "pubmed_search");
    let r = host().inspect_plugin(&wasm("sample-size")).unwrap();
    assert_eq!((r.world, r.tool.is_none()), (World::Reward, true));
    let a = host().inspect_plugin(&wasm("adapter-v01")).unwrap();
    assert_eq!((a.world, a.api_version.as_str()), (World::DataAdapter, "0.1.0"));

    let run = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrl"));
        c.env("MEDRL_CACHE_DIR", cache_dir())
            .args(["plugin", "inspect"])
            .arg(wasm("pubmed-search-tool"));
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(false);
    assert!(
        text.contains("kind:         tool")
            && text.contains("tool name:    pubmed_search")
            && text.contains("capabilities: search")
            && text.contains("\"top_k\""),
        "{text}"
    );
    let v: Value = serde_json::from_str(&run(true)).unwrap();
    assert_eq!((v["kind"].as_str(), v["api_version"].as_str()), (Some("tool"), Some("0.3.0")));
    assert_eq!(v["tool"]["name"], "pubmed_search");
    assert_eq!(v["tool"]["parameters"]["type"], "object");
}

fn tool_config(plugin: &str, on_failure: ToolFailure, timeout_s: f64) -> ToolConfig {
    ToolConfig {
        plugin: wasm(plugin),
        config: json!({}),
        on_failure,
        timeout_s,
    }
}

fn tool_set(hostile_policy: ToolFailure) -> ToolSet {
    let configs = [
        tool_config("pubmed-search-tool", ToolFailure::Fail, 5.0),
        tool_config("hostile-tool", hostile_policy, 0.4),
    ];
    let grants = Grants::none().with_search(Box::new(index()));
    ToolSet::load(host(), &configs, &grants, &Limits::default()).unwrap()
}

#[test]
fn a_tool_set_offers_specs_and_applies_failure_policies() {
    let set = tool_set(ToolFailure::Message);
    let names: Vec<String> = set.specs().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["pubmed_search", "hostile"]);
    assert_eq!(set.specs()[0].parameters["properties"]["query"]["type"], "string");

    match set.call("pubmed_search", r#"{"query": "statins"}"#) {
        ToolOutcome::Output(text) => assert_eq!(text, "1. 31000003 (score 1.00)"),
        o => panic!("{o:?}"),
    }
    // The model's mistakes are messages for it, whatever the policy.
    match set.call("pubmed", "{}") {
        ToolOutcome::Error { message, drop: false } => {
            assert_eq!(message, "unknown tool `pubmed` (available: pubmed_search, hostile)")
        }
        o => panic!("{o:?}"),
    }
    match set.call("pubmed_search", "{\"query\": \"statins\"") {
        ToolOutcome::Error { message, drop: false } => {
            assert!(message.starts_with("tool arguments are not valid JSON"), "{message}")
        }
        o => panic!("{o:?}"),
    }
    match set.call("pubmed_search", r#"["statins"]"#) {
        ToolOutcome::Error { message, drop: false } => assert!(message.contains("JSON object"), "{message}"),
        o => panic!("{o:?}"),
    }
    // The tool's own error reply, under `fail`: still a message.
    match set.call("pubmed_search", r#"{"query": ""}"#) {
        ToolOutcome::Error { message, drop: false } => assert_eq!(message, "query must not be empty"),
        o => panic!("{o:?}"),
    }
    // A plugin failure under `message`, within the tool's own deadline.
    let t = Instant::now();
    match set.call("hostile", r#"{"mode": "loop"}"#) {
        ToolOutcome::Error { message, drop: false } => {
            assert_eq!(message, "tool `hostile` did not answer within 0.4 s")
        }
        o => panic!("{o:?}"),
    }
    assert!(t.elapsed() < Duration::from_millis(400) + SLACK);
    match set.call("hostile", r#"{"mode": "echo", "text": "after"}"#) {
        ToolOutcome::Output(text) => assert_eq!(text, "after"),
        o => panic!("{o:?}"),
    }
    let stats = set.stats();
    assert_eq!(stats["pubmed_search"].calls, 4);
    assert_eq!(stats["pubmed_search"].failures, [("bad_arguments".to_string(), 2), ("guest_error".to_string(), 1)].into());
    assert_eq!(stats["hostile"].calls, 2);
    assert_eq!(stats["hostile"].failures, [("timeout".to_string(), 1)].into());
    assert_eq!(set.unknown_calls(), 1);

    match tool_set(ToolFailure::Drop).call("hostile", r#"{"mode": "panic"}"#) {
        ToolOutcome::Error { message, drop: true } => assert_eq!(message, "tool `hostile` failed (trap)"),
        o => panic!("{o:?}"),
    }
    match tool_set(ToolFailure::Fail).call("hostile", r#"{"mode": "panic"}"#) {
        ToolOutcome::Fail(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("tool `hostile`: plugin hostile-tool@0.1.0 trapped"), "{msg}")
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_tool_set_refuses_duplicate_names_and_rewards() {
    let configs = [
        tool_config("pubmed-search-tool", ToolFailure::Message, 5.0),
        tool_config("pubmed-search-tool", ToolFailure::Drop, 5.0),
    ];
    let e = ToolSet::load(host(), &configs, &Grants::none(), &Limits::default()).err().unwrap();
    assert!(e.to_string().starts_with("two tools are named `pubmed_search`"), "{e}");
    let configs = [tool_config("sample-size", ToolFailure::Message, 5.0)];
    let e = ToolSet::load(host(), &configs, &Grants::none(), &Limits::default()).err().unwrap();
    assert!(e.to_string().contains("exports the `reward` world"), "{e}");
}
