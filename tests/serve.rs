//! `medrl serve` on CPU with a tiny model: the official `openai` Python client against it
//! (chat, completions, streaming, n > 1, seeds, stop strings, log-probabilities, adapters, bad
//! requests), and a bounded load test of concurrent streaming clients through the load
//! generator (no cross-talk, nothing lost, disconnects free their sequences).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo, tiny_model};
use medrl::serve::loadgen::{self, LoadSpec};
use serde_json::{json, Value};

/// A running server, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(model: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_medrl"))
        .args(["serve", "--device", "cpu", "--port", "0", "--model"])
        .arg(model)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no address in {line:?}")).to_string();
    Server { child, url }
}

/// A LoRA adapter in PEFT's format with random (non-zero) A and B for the tiny model.
fn adapter(dir: &Path) -> PathBuf {
    use candle_core::{DType, Device, Tensor};
    use medrl::model::peft::{save_peft_adapter, AdapterMeta};
    let cfg = medrl::model::read_model_config(&dir.join("base")).unwrap();
    let (h, q, kv) = (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
    let rank = 4;
    let mut tensors = std::collections::HashMap::new();
    for i in 0..cfg.num_hidden_layers {
        for (m, out) in [("q_proj", q), ("v_proj", kv)] {
            let name = format!("model.layers.{i}.self_attn.{m}");
            tensors.insert(format!("{name}.lora_A.weight"), Tensor::randn(0f32, 0.5, (rank, h), &Device::Cpu).unwrap());
            tensors.insert(format!("{name}.lora_B.weight"), Tensor::randn(0f32, 0.5, (out, rank), &Device::Cpu).unwrap());
        }
    }
    let meta = AdapterMeta { rank, alpha: 8.0, dropout: 0.0, target_modules: vec!["q_proj".into(), "v_proj".into()], modules_to_save: vec![], base_model: "base".into() };
    let out = dir.join("adapter");
    save_peft_adapter(&tensors, &meta, DType::F32, &out).unwrap();
    out
}

/// `medrl generate` greedy outputs, one JSON row per prompt.
fn generate(model: &Path, adapter: Option<&Path>, prompts: &[&str], chat: bool, max_tokens: usize, dir: &Path) -> Vec<Value> {
    let out = dir.join(format!("gen-{}-{chat}.jsonl", adapter.is_some()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medrl"));
    cmd.args(["generate", "--device", "cpu", "--temperature", "0", "--max-new-tokens", &max_tokens.to_string(), "--model"]).arg(model).arg("-o").arg(&out);
    if let Some(a) = adapter {
        cmd.arg("--adapter").arg(a);
    }
    if chat {
        cmd.arg("--chat");
    }
    for p in prompts {
        cmd.args(["--prompt", p]);
    }
    let st = cmd.output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let tok = medrl::tokenizer::TextTokenizer::from_dir(model).unwrap();
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let prompt_tokens = tok.encode(v["prompt"].as_str().unwrap(), !chat).unwrap().len();
            json!({"text": v["text"], "finish_reason": v["finish_reason"], "tokens": v["tokens"].as_array().unwrap().len(), "prompt_tokens": prompt_tokens})
        })
        .collect()
}

/// The Python that has the `openai` package (scripts/setup.sh puts it in .venv-ref/).
fn python_with_openai() -> Option<String> {
    let candidates = [std::env::var("MEDRL_PYREF_PYTHON").ok(), Some(repo().join(".venv-ref/bin/python").display().to_string()), Some("python3".into())];
    for py in candidates.into_iter().flatten() {
        if Command::new(&py).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success()) {
            return Some(py);
        }
    }
    let msg = "serve: no Python with the `openai` package; run scripts/setup.sh or set MEDRL_PYREF_PYTHON";
    if std::env::var("MEDRL_REQUIRE_PYREF").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {msg} !!!!!!!!\n");
    None
}

const PROMPTS: [&str; 3] = ["The patient reports chest pain", "What is the dose of amoxicillin?", "Summarize: fever, cough, fatigue."];

#[test]
fn the_openai_python_client_gets_what_medrl_generate_gives() {
    let Some(py) = python_with_openai() else { return };
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path(), 3);
    let adapter = adapter(d.path());
    let max_tokens = 12;
    let expected = json!({
        "model": "tiny", "adapter": "tiny-lora", "api_key": "sekret", "max_tokens": max_tokens, "prompts": PROMPTS,
        "chat": generate(&model, None, &PROMPTS, true, max_tokens, d.path()),
        "adapter_chat": generate(&model, Some(&adapter), &PROMPTS, true, max_tokens, d.path()),
        "completion": generate(&model, None, &PROMPTS, false, max_tokens, d.path()),
    });
    let exp_path = d.path().join("expected.json");
    std::fs::write(&exp_path, expected.to_string()).unwrap();
    let adapter_arg = format!("tiny-lora={}", adapter.display());
    let server = start(&model, &["--served-model-name", "tiny", "--adapter", &adapter_arg, "--api-key", "sekret"]);
    let out = Command::new(&py).arg(repo().join("tests/serve/openai_client.py")).arg(&server.url).arg(&exp_path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "openai client checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: "), "{stdout}");

    // Without the key: 401, OpenAI-shaped.
    let (status, body) = http(&server.url, "GET", "/v1/models", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("API key"));
    let (status, body) = http(&server.url, "GET", "/health", None, None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

/// A small blocking HTTP/1.1 request (the tests' own, independent of the server's stack).
fn http(url: &str, method: &str, path: &str, body: Option<&Value>, key: Option<&str>) -> (u16, Value) {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{payload}", payload.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status: u16 = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Prometheus text or JSON.
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_string())))
}

/// A gauge's value summed over its label sets.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn two_hundred_concurrent_streams_get_their_own_answers_and_disconnects_free_their_sequences() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path(), 5);
    // A small cache, so the load also exercises preemption.
    let server = start(&model, &["--served-model-name", "tiny", "--kv-cache-mib", "1", "--max-pending", "512"]);
    let prompts: Vec<String> = (0..8).map(|i| format!("Case {i}: the patient is {} years old and reports {}.", 20 + 7 * i, ["pain", "fever", "cough", "nausea"][i % 4])).collect();
    let url = server.url.clone();
    let spec = |requests: usize, concurrency: usize| LoadSpec {
        url: url.clone(),
        model: "tiny".into(),
        api_key: None,
        prompts: prompts.clone(),
        requests,
        concurrency,
        max_tokens: 24,
        temperature: 0.0,
        seed: None,
        stream: true,
        ignore_eos: false,
        disconnect_every: None,
        timeout: Duration::from_secs(300),
    };
    // Each prompt served alone: the reference.
    let (_, alone) = loadgen::run(&spec(prompts.len(), 1)).unwrap();
    assert!(alone.iter().all(|o| o.error.is_none()), "{alone:?}");
    // 200 clients at once.
    let (report, outcomes) = loadgen::run(&spec(200, 200)).unwrap();
    assert_eq!((report.ok, report.failed, outcomes.len()), (200, 0, 200), "{report:?}");
    for o in &outcomes {
        let want = &alone[o.prompt];
        assert_eq!((&o.text, &o.finish_reason, o.completion_tokens), (&want.text, &want.finish_reason, want.completion_tokens), "request {} (prompt {})", o.index, o.prompt);
    }
    assert!(report.output_tokens_per_s > 0.0 && report.latency_p99_s >= report.latency_p50_s);
    eprintln!("200 streaming clients on CPU: {report:?}");

    // A third of the clients hang up after their first words; the rest are unaffected.
    let mut s = spec(60, 60);
    s.max_tokens = 200;
    s.ignore_eos = true;
    s.disconnect_every = Some(3);
    let (report, outcomes) = loadgen::run(&s).unwrap();
    assert_eq!((report.disconnected, report.ok, report.failed), (20, 40, 0), "{report:?}");
    assert!(outcomes.iter().filter(|o| !o.disconnected).all(|o| o.completion_tokens == 200));
    // Nothing stays behind: no pending request, no sequence, no KV block.
    let t0 = Instant::now();
    loop {
        let (_, m) = http(&server.url, "GET", "/metrics", None, None);
        let m = m.as_str().unwrap_or_default().to_string();
        let left = ["medrl_requests_pending", "medrl_requests_running", "medrl_requests_waiting", "medrl_kv_cache_blocks_used"].map(|g| gauge(&m, g));
        if left == [0.0; 4] {
            assert!(gauge(&m, "medrl_kv_cache_blocks_total") > 0.0);
            assert!(m.contains("medrl_request_latency_seconds_count") && m.contains("medrl_requests_total{endpoint=\"chat\",status=\"200\"}"), "{m}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "sequences leaked after the clients left: {left:?}\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // 429 past the pending bound.
    drop(server);
    let server = start(&model, &["--served-model-name", "tiny", "--max-pending", "2"]);
    let mut s = spec(12, 12);
    s.url = server.url.clone();
    s.max_tokens = 100;
    s.ignore_eos = true;
    s.stream = false;
    let (report, outcomes) = loadgen::run(&s).unwrap();
    let limited = outcomes.iter().filter(|o| o.status == 429).count();
    assert!(limited >= 1 && report.ok >= 2 && report.ok + limited == 12, "{report:?} {outcomes:?}");
}

#[test]
fn a_request_past_its_deadline_ends_with_504_and_frees_its_sequence() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path(), 9);
    let server = start(&model, &["--served-model-name", "tiny", "--request-timeout-s", "0.3"]);
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4000, "ignore_eos": true});
    let (status, err) = http(&server.url, "POST", "/v1/chat/completions", Some(&body), None);
    assert_eq!(status, 504, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("deadline"), "{err}");
    // Streamed: an error event, then the end of the stream.
    let mut s = LoadSpec {
        url: server.url.clone(),
        model: "tiny".into(),
        api_key: None,
        prompts: vec!["hello".into()],
        requests: 1,
        concurrency: 1,
        max_tokens: 4000,
        temperature: 0.0,
        seed: None,
        stream: true,
        ignore_eos: true,
        disconnect_every: None,
        timeout: Duration::from_secs(60),
    };
    let (_, outcomes) = loadgen::run(&s).unwrap();
    assert!(outcomes[0].error.as_deref().is_some_and(|e| e.contains("deadline")), "{outcomes:?}");
    let (_, m) = http(&server.url, "GET", "/metrics", None, None);
    let m = m.as_str().unwrap_or_default().to_string();
    assert_eq!(gauge(&m, "medrl_kv_cache_blocks_used"), 0.0, "{m}");
    assert!(m.contains("medrl_requests_total{endpoint=\"chat\",status=\"504\"} 1"), "{m}");
    // A short request still fits.
    s.max_tokens = 4;
    s.stream = false;
    let (report, _) = loadgen::run(&s).unwrap();
    assert_eq!(report.ok, 1);
}
