//! The model-backed judge against transformers (tests/fixtures/judge, written by
//! scripts/reference/make_judge_fixtures.py): sequence classifiers (Llama with a pad token,
//! batched with right padding; Qwen2 without one), a causal LM's P(True), and the
//! medical-verifier plugin scored end to end through the judge capability.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device};
use medrl::judge::{JudgeError, JudgeKind, JudgeSettings, ModelJudge, Normalize, Truncation};
use medrl::model::load_classifier_dir;
use medrl::plugin::{sample, FailurePolicy, Grants, HostConfig, Judge, Outcome, PluginError, PluginHost, PluginOptions, Sample};
use serde_json::{json, Value};

const TOL: f64 = 1e-5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn fixture_dir(name: &str) -> PathBuf {
    repo().join("tests/fixtures/judge").join(name)
}

fn expected() -> &'static Value {
    static E: OnceLock<Value> = OnceLock::new();
    E.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(fixture_dir("expected.json")).unwrap()).unwrap())
}

fn prompts() -> Vec<String> {
    serde_json::from_value(expected()["prompts"].clone()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= TOL, "{what}: medrl {got} vs transformers {want} (|diff| {})", (got - want).abs());
}

fn judge(dir: &str, f: impl FnOnce(&mut JudgeSettings)) -> ModelJudge {
    let mut s = JudgeSettings::new(fixture_dir(dir).to_string_lossy());
    f(&mut s);
    ModelJudge::load(s).unwrap()
}

#[test]
fn llama_classifier_matches_transformers_batched_and_alone() {
    let e = &expected()["llama_cls"];
    let c = load_classifier_dir(&fixture_dir("llama-cls"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(c.model.labels, ["False", "True"]);
    assert_eq!(c.model.pad_token_id, Some(0));
    // Same tokens as the `tokenizers` library on the same file.
    let want_ids = ids(&e["ids"]);
    let got_ids: Vec<Vec<u32>> = prompts().iter().map(|p| c.tokenizer.encode(p, true).unwrap()).collect();
    assert_eq!(got_ids, want_ids);
    // One right-padded batch, as transformers ran it.
    let logits: Vec<Vec<f32>> = c.model.logits(&got_ids).unwrap().to_vec2().unwrap();
    for (i, (g, w)) in logits.iter().zip(rows(&e["logits_batched"])).enumerate() {
        for k in 0..2 {
            close(g[k] as f64, w[k], &format!("prompt {i} logit {k}"));
        }
    }
    let probs = c.model.probabilities(&got_ids).unwrap();
    for (i, (g, w)) in probs.iter().zip(rows(&e["probs_batched"])).enumerate() {
        close(g[1], w[1], &format!("prompt {i} P(True), batched"));
    }
    // Each alone.
    for (i, (s, w)) in got_ids.iter().zip(rows(&e["probs_single"])).enumerate() {
        let p = c.model.probabilities(std::slice::from_ref(s)).unwrap();
        close(p[0][1], w[1], &format!("prompt {i} P(True), alone"));
    }
}

#[test]
fn trailing_pad_token_is_skipped_as_transformers_does() {
    // Prompt 3 ends with <|endoftext|>, the pad token: transformers reads the token before it.
    let e = &expected()["llama_cls"];
    let c = load_classifier_dir(&fixture_dir("llama-cls"), &Device::Cpu, DType::F32).unwrap();
    let p3 = &ids(&e["ids"])[3];
    assert_eq!(*p3.last().unwrap(), 0);
    assert_eq!(c.model.pooled_index(p3), p3.len() - 2);
    let want = rows(&e["probs_single"])[3][1];
    close(c.model.probabilities(std::slice::from_ref(p3)).unwrap()[0][1], want, "P(True) of a prompt ending in the pad token");
    // Reading the last token instead would be measurably different: the fixture can tell.
    let mut last = c.model.clone();
    last.pad_token_id = None;
    let wrong = last.probabilities(std::slice::from_ref(p3)).unwrap()[0][1];
    assert!((wrong - want).abs() > 1e-3, "the pad rule is not exercised ({wrong} vs {want})");
}

#[test]
fn qwen2_classifier_without_pad_token_reads_the_last_token() {
    let e = &expected()["qwen2_cls"];
    let c = load_classifier_dir(&fixture_dir("qwen2-cls"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(c.model.pad_token_id, None);
    assert!(c.model.body.cfg.attention_bias);
    // Read from transformers 5's `rope_parameters` (the logits below depend on it).
    assert_eq!(c.model.body.cfg.rope_theta, 1e6);
    let want_ids = ids(&e["ids"]);
    let got_ids: Vec<Vec<u32>> = prompts().iter().map(|p| c.tokenizer.encode(p, true).unwrap()).collect();
    assert_eq!(got_ids, want_ids);
    // transformers cannot batch without a pad token; medrl knows the lengths and can.
    let batched: Vec<Vec<f32>> = c.model.logits(&got_ids).unwrap().to_vec2().unwrap();
    for (i, (g, w)) in batched.iter().zip(rows(&e["logits_single"])).enumerate() {
        for k in 0..2 {
            close(g[k] as f64, w[k], &format!("prompt {i} logit {k}"));
        }
    }
}

#[test]
fn classifier_judge_scores_label_probabilities() {
    let e = &expected()["llama_cls"];
    let want: Vec<f64> = rows(&e["probs_single"]).iter().map(|r| r[1]).collect();
    let j = judge("llama-cls", |_| {});
    assert_eq!(j.kind(), JudgeKind::Classifier);
    for (p, w) in prompts().iter().zip(&want) {
        close(j.score(p).unwrap(), *w, p);
    }
    // Label by name, and the other label.
    let by_name = judge("llama-cls", |s| s.label = Some("True".into()));
    let other = judge("llama-cls", |s| s.label = Some("False".into()));
    let p0 = &prompts()[0];
    close(by_name.score(p0).unwrap(), want[0], "label True");
    close(other.score(p0).unwrap(), 1.0 - want[0], "label False");
    let many = j.score_many(&prompts().iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    for (g, w) in many.iter().zip(&want) {
        close(*g, *w, "score_many");
    }
    // A classifier cannot generate.
    let err = j.generate("hello", 4).unwrap_err();
    assert!(err.contains("sequence classifier"), "{err}");
}

#[test]
fn causal_lm_judge_matches_transformers_p_true() {
    let e = &expected()["llama_lm"];
    let cases = e["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for norm in [Normalize::Pair, Normalize::Vocab] {
        for chat in [false, true] {
            let j = judge("llama-lm", |s| {
                s.normalize = norm;
                s.chat_template = Some(chat);
            });
            assert_eq!(j.kind(), JudgeKind::CausalLm);
            for c in cases.iter().filter(|c| c["chat"] == chat) {
                let p = c["prompt"].as_str().unwrap();
                let want_ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
                assert_eq!(j.prompt_ids(p).unwrap(), want_ids, "{p:?} chat={chat}");
                let key = if norm == Normalize::Pair { "p_true_pair" } else { "p_true_vocab" };
                let want = c[key].as_f64().unwrap();
                let got = j.score(p).unwrap();
                close(got, want, &format!("{p:?} chat={chat} {key}"));
                if norm == Normalize::Vocab {
                    assert!(((got - want) / want).abs() < 1e-3, "{p:?}: relative error of a small probability");
                }
            }
        }
    }
}

#[test]
fn causal_lm_judge_generates_greedy_text_like_transformers() {
    let cases = expected()["llama_lm"]["cases"].as_array().unwrap();
    let j = judge("llama-lm", |s| s.chat_template = Some(true));
    let tok = medrl::tokenizer::TextTokenizer::from_dir(&fixture_dir("llama-lm")).unwrap();
    for c in cases.iter().filter(|c| c["chat"] == true) {
        let mut want: Vec<u32> = serde_json::from_value(c["greedy_ids"].clone()).unwrap();
        if let Some(i) = want.iter().position(|&t| t == 2) {
            want.truncate(i);
        }
        let got = j.generate(c["prompt"].as_str().unwrap(), 6).unwrap();
        assert_eq!(got, tok.decode(&want, true).unwrap(), "{}", c["prompt"]);
    }
}

#[test]
fn settings_errors_are_clear() {
    // A hub name is refused: medrl never downloads.
    let e = ModelJudge::load(JudgeSettings::new("FreedomIntelligence/medical_o1_verifier_3B")).unwrap_err();
    assert!(matches!(e, JudgeError::HubName { .. }), "{e}");
    assert!(e.to_string().contains("never downloads"), "{e}");
    // Kind and checkpoint must agree.
    let mut s = JudgeSettings::new(fixture_dir("llama-cls").to_string_lossy());
    s.kind = Some(JudgeKind::CausalLm);
    assert!(ModelJudge::load(s).unwrap_err().to_string().contains("kind: classifier"));
    let mut s = JudgeSettings::new(fixture_dir("llama-lm").to_string_lossy());
    s.kind = Some(JudgeKind::Classifier);
    assert!(ModelJudge::load(s).unwrap_err().to_string().contains("ForSequenceClassification"));
    // Unknown label.
    let mut s = JudgeSettings::new(fixture_dir("llama-cls").to_string_lossy());
    s.label = Some("Maybe".into());
    assert!(ModelJudge::load(s).unwrap_err().to_string().contains("Maybe"));
    // " True" (leading space) is several tokens in this tokenizer; "True" is one (added token).
    let mut s = JudgeSettings::new(fixture_dir("llama-lm").to_string_lossy());
    s.true_token = " True".into();
    let e = ModelJudge::load(s).unwrap_err().to_string();
    assert!(e.contains("single token"), "{e}");
}

#[test]
fn long_prompts_keep_their_end() {
    let c = load_classifier_dir(&fixture_dir("llama-cls"), &Device::Cpu, DType::F32).unwrap();
    let p = &prompts()[0];
    let full = c.tokenizer.encode(p, true).unwrap();
    assert!(full.len() > 6);
    let tail = full[full.len() - 6..].to_vec();
    let j = judge("llama-cls", |s| s.max_length = 6);
    assert_eq!(j.prompt_ids(p).unwrap(), tail);
    let want = c.model.probabilities(&[tail]).unwrap()[0][1];
    close(j.score(p).unwrap(), want, "truncated prompt");
    let head = judge("llama-cls", |s| {
        s.max_length = 6;
        s.truncation = Truncation::Right;
    });
    assert_eq!(head.prompt_ids(p).unwrap(), full[..6].to_vec());
}

#[test]
fn concurrent_calls_give_the_sequential_numbers() {
    let ps = prompts();
    let seq_judge = judge("llama-cls", |s| s.max_batch = 1);
    let want: Vec<f64> = ps.iter().map(|p| seq_judge.score(p).unwrap()).collect();
    let shared = Arc::new(judge("llama-cls", |s| s.max_batch = 4));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let j = shared.clone();
            let ps = ps.clone();
            std::thread::spawn(move || {
                // Different orders per thread, several rounds.
                (0..4 * ps.len()).map(|k| (k + t) % ps.len()).map(|i| (i, j.score(&ps[i]).unwrap())).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut n = 0;
    for t in threads {
        for (i, p) in t.join().unwrap() {
            assert!((p - want[i]).abs() < 1e-6, "prompt {i}: {p} concurrently vs {} sequentially", want[i]);
            n += 1;
        }
    }
    let st = shared.stats();
    assert_eq!(st.requests, n);
    assert!(st.largest_batch <= 4 && st.batches <= st.requests && st.timeouts == 0, "{st:?}");
}

// ---- the medical-verifier plugin through the judge capability ----

/// Builds the plugins workspace once (incremental); returns the verifier's `.wasm`.
fn verifier_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let files = medrl::cli::plugin::build_plugin(&repo().join("plugins")).expect("building plugins/ for wasm32-wasip2 failed (run scripts/setup-plugins.sh)");
            files.into_iter().find(|p| p.file_stem().unwrap() == "medical_verifier").expect("medical_verifier.wasm built")
        })
        .clone()
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

fn verifier_samples() -> (Vec<Sample>, Vec<f64>) {
    let e = &expected()["llama_cls"];
    let cases = e["verifier_cases"].as_array().unwrap();
    let p = f64s(&e["verifier_p_true"]);
    let mut samples = Vec::new();
    let mut want = Vec::new();
    // Repeated so that several worker threads call the judge at once.
    for _ in 0..4 {
        for (c, p) in cases.iter().zip(&p) {
            let response = format!("## Thinking\n\nReasoning.\n\n## Final Response\n\n{}", c["final"].as_str().unwrap());
            samples.push(sample("question", &response, &c["gt"], &Value::Null, "medical_o1"));
            want.push(*p);
        }
    }
    (samples, want)
}

#[test]
fn medical_verifier_scores_through_the_model_judge() {
    let host = PluginHost::new(HostConfig { cache_dir: Some(cache_dir()), ..HostConfig::default() }).unwrap();
    let (samples, want) = verifier_samples();
    // The verifier prompts the plugin builds are the ones transformers scored.
    let c = load_classifier_dir(&fixture_dir("llama-cls"), &Device::Cpu, DType::F32).unwrap();
    let template = expected()["verifier_template"].as_str().unwrap();
    let first = &expected()["llama_cls"]["verifier_cases"][0];
    let text = template.replace("{final}", first["final"].as_str().unwrap()).replace("{gt}", first["gt"].as_str().unwrap()).replace("{eos}", "<|endoftext|>");
    assert_eq!(c.tokenizer.encode(&text, true).unwrap(), ids(&expected()["llama_cls"]["verifier_ids"])[0]);

    let judge = Arc::new(judge("llama-cls", |s| s.max_batch = 4));
    let grants = Grants { judge: Some(judge.clone()), ..Grants::none() };
    let opts = PluginOptions { grants, policy: FailurePolicy::Fail, threads: 4, limits: max_batch_per_call_hint(), ..PluginOptions::default() };
    let plugin = host.load_reward(&verifier_wasm(), opts).unwrap();
    let out = plugin.score(&json!({"mode": "reference", "threshold": 0.4}), &samples).unwrap();
    for (i, (o, w)) in out.iter().zip(&want).enumerate() {
        let Outcome::Scored { score, components } = o else { panic!("sample {i}: {o:?}") };
        let p = components.iter().find(|(k, _)| &**k == "verifier_p").unwrap().1;
        close(p, *w, &format!("sample {i} verifier_p"));
        assert_eq!(*score, if *w > 0.4 { 1.0 } else { 0.1 }, "sample {i}");
    }
    assert!(want.iter().any(|&p| p > 0.4) && want.iter().any(|&p| p <= 0.4), "fixture covers both verdicts");
    assert_eq!(judge.stats().requests, samples.len() as u64);

    // Not granted: every well-formatted sample fails with the host's error.
    let opts = PluginOptions { grants: Grants::none(), policy: FailurePolicy::Fail, threads: 1, ..PluginOptions::default() };
    let plugin = host.load_reward(&verifier_wasm(), opts).unwrap();
    let e = plugin.score(&json!({}), &samples[..1]).unwrap_err();
    assert!(matches!(e, PluginError::CapabilityDenied { .. }) && e.to_string().contains("judge"), "{e}");
}

/// Small guest batches, so the plugin's worker threads really run side by side.
fn max_batch_per_call_hint() -> medrl::plugin::Limits {
    medrl::plugin::Limits { max_batch_per_call: 2, ..medrl::plugin::Limits::default() }
}

fn medrl_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medrl"));
    c.env("MEDRL_CACHE_DIR", cache_dir()).env("MEDRL_TASKS_DIR", repo().join("tasks")).env("MEDRL_PLUGIN_DIR", verifier_wasm().parent().unwrap());
    c
}

#[test]
fn reward_score_cli_with_judge_model() {
    let (samples, want) = verifier_samples();
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.jsonl");
    let lines: Vec<String> = samples
        .iter()
        .map(|s| json!({"prompt": s.prompt, "response": s.response, "ground_truth": serde_json::from_str::<Value>(&s.ground_truth).unwrap()}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = medrl_cmd()
        .args(["reward", "score", "--threads", "3", "--batch", "2", "--plugin"])
        .arg(verifier_wasm())
        .arg("--input")
        .arg(&input)
        .arg("--judge-model")
        .arg(fixture_dir("llama-cls"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        close(g["components"]["verifier_p"].as_f64().unwrap(), *w, "CLI verifier_p");
    }
    // A hub name is refused before any scoring, saying why.
    let out = medrl_cmd()
        .args(["reward", "score", "--plugin"])
        .arg(verifier_wasm())
        .arg("--input")
        .arg(&input)
        .args(["--judge-model", "FreedomIntelligence/medical_o1_verifier_3B"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never downloads"), "{err}");
    // The constant stand-in and a model judge exclude each other.
    let out = medrl_cmd()
        .args(["reward", "score", "--test-judge", "0.5", "--plugin"])
        .arg(verifier_wasm())
        .arg("--input")
        .arg(&input)
        .arg("--judge-model")
        .arg(fixture_dir("llama-cls"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn eval_builds_the_judge_from_the_task_grant_or_the_flag() {
    use medrl::cli::eval::eval_task;
    use medrl::cli::judge::{JudgeArgs, JudgeProvider};
    use medrl::task::{Split, Task};
    std::env::set_var("MEDRL_PLUGIN_DIR", verifier_wasm().parent().unwrap());
    let task = Task::load(repo().join("tasks/medical-o1")).unwrap();
    // task.yaml names the hub model: refused with the reason and the way out.
    let mut none = JudgeProvider::new(None, JudgeArgs::default(), "cpu").unwrap();
    let e = format!("{:#}", eval_task(&task, Split::Test, Some(1), FailurePolicy::Fail, &mut none).err().unwrap());
    assert!(e.contains("never downloads") && e.contains("--judge-model"), "{e}");
    // --judge-model overrides the grant; the grant's kind and label still apply.
    let args = JudgeArgs { judge_model: Some(fixture_dir("llama-cls")), ..Default::default() };
    let mut flags = JudgeProvider::new(None, args, "cpu").unwrap();
    let et = eval_task(&task, Split::Test, Some(1), FailurePolicy::Fail, &mut flags).unwrap();
    let j = et.rewards[0].grants.judge.clone().expect("judge granted");
    let (_, want) = verifier_samples();
    let template = expected()["verifier_template"].as_str().unwrap();
    let c = &expected()["llama_cls"]["verifier_cases"][1];
    let prompt = template.replace("{final}", c["final"].as_str().unwrap()).replace("{gt}", c["gt"].as_str().unwrap()).replace("{eos}", "<|endoftext|>");
    close(j.score(&prompt).unwrap(), want[1], "eval's judge");
    assert_eq!(flags.loaded().count(), 1);
    let s = flags.settings(task.config.rewards[0].grants.judge.as_ref(), Some(&task.dir)).unwrap();
    assert_eq!((s.kind, s.label.as_deref(), s.max_length, s.add_special_tokens), (Some(JudgeKind::Classifier), Some("1"), 4000, false));
}

#[test]
fn grpo_cli_grants_the_judge_model() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("policy");
    let mut opts = medrl::model::init::InitOptions::new(medrl::model::Arch::Qwen2, medrl::model::init::Preset::Tiny);
    opts.seed = 5;
    medrl::model::init::init_model_dir(&model, &opts).unwrap();
    let cfg = d.path().join("grpo.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model: {model:?}\noutput_dir: {out:?}\ndevice: cpu\n\
             data:\n  train: [{{path: {data:?}, formatting: messages}}]\n\
             rewards: [{{plugin: {wasm:?}, weight: 1.0}}]\n\
             rollout: {{temperature: 1.0, max_new_tokens: 8}}\n\
             algorithm: {{n: 2, prompts_per_step: 2, micro_batch_size: 4}}\n\
             training: {{max_steps: 1, lr: 1.0e-4, seed: 3}}\n",
            out = d.path().join("run"),
            data = repo().join("tasks/medical-o1/data/train.jsonl"),
            wasm = verifier_wasm(),
        ),
    )
    .unwrap();
    // A hub name stops the run before training, saying why.
    let out = medrl_cmd().args(["grpo", "--config"]).arg(&cfg).args(["--judge-model", "FreedomIntelligence/medical_o1_verifier_3B"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never downloads"));
    assert!(!d.path().join("run").exists(), "nothing was written");
    // A local verifier is loaded and granted (on the run's device).
    let out = medrl_cmd().args(["grpo", "--config"]).arg(&cfg).arg("--judge-model").arg(fixture_dir("llama-cls")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("judge model loaded") && err.contains("Classifier"), "{err}");
    assert!(!err.contains("not granted"), "{err}");
}
