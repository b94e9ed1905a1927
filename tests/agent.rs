//! Multi-turn rollouts with tools (issue 21), on CPU: a tiny model taught by SFT to call a tool,
//! rolled out by the agent loop against tools that answer, fail, drop or flood; the transcript,
//! the loss mask and the budgets are checked against a hand-written ChatML rendering, and GRPO
//! trains (and resumes identically) with tools in the loop.

use medrl::model::load_model_dir;
use medrl::train::grpo::{Grpo, GrpoConfig};
use medrl::train::rl::agent::{AgentLoop, MultiTurn, ToolReply, ToolRunner, TurnRenderer};
use medrl::train::sft::{self, RunOptions, SftConfig};
use medrl::generate::{EngineConfig, SamplingParams, StopConditions};
use medrl::tokenizer::tools::ToolCallFormat;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod common;
use common::{dialogue_reward, metrics, tiny_model, with_overrides};

const CALL: &str = "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"q\": \"statin\"}}\n</tool_call>";
const QUESTION: &str = "Find trials on statins.";

/// The system message a run with [`Mock`]'s tools gives a template without `tools` support.
fn tools_system() -> String {
    medrl::tokenizer::tools::tools_system_block(&mock("answer").specs(), ToolCallFormat::Hermes)
}

/// The tiny model after enough SFT on one conversation (the tools' system message, the
/// question, `CALL`) that its greedy first turn is `CALL`; and the question alone as a dataset.
fn tool_caller() -> (PathBuf, PathBuf) {
    // Made once for the tests of this file (SFT takes a while in a debug build).
    static MADE: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap())).path();
        make_tool_caller(dir)
    })
    .clone()
}

fn make_tool_caller(dir: &Path) -> (PathBuf, PathBuf) {
    sft_caller(dir, &tools_system(), &[(QUESTION, CALL.to_string())], "Statins lower LDL.")
}

/// SFT the tiny model on `(question, call)` conversations under `system` until its greedy first
/// turn is the call; also write the questions as RL prompts (with `reference` as the answer).
fn sft_caller(dir: &Path, system: &str, convs: &[(&str, String)], reference: &str) -> (PathBuf, PathBuf) {
    let base = tiny_model(dir, 7);
    let data = dir.join("calls.jsonl");
    let mut rows = String::new();
    let mut prompts = String::new();
    for (q, call) in convs {
        let row = serde_json::json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}, {"role": "assistant", "content": call}]});
        rows.push_str(&format!("{row}\n").repeat(8 / convs.len().min(8)));
        let p = serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reference}]});
        prompts.push_str(&format!("{p}\n"));
    }
    std::fs::write(&data, rows).unwrap();
    let out = dir.join("sft");
    let yaml = format!(
        "model: {base:?}\noutput_dir: {out:?}\ndevice: cpu\n\
         data:\n  train: [{{path: {data:?}, formatting: messages}}]\n  cutoff_len: 1024\n\
         training:\n  epochs: 150\n  micro_batch_size: 8\n  lr: 1.0e-2\n  seed: 1\n"
    );
    let tree = with_overrides(&yaml, &[]);
    let cfg: SftConfig = medrl::config::from_tree(tree.clone(), Path::new("sft.yaml")).unwrap();
    sft::run(&cfg, &tree, &RunOptions::default()).unwrap();
    // The RL prompts: the questions; the run adds the tools' system message.
    let prompts_path = dir.join("prompts.jsonl");
    std::fs::write(&prompts_path, prompts.repeat(4 / convs.len().clamp(1, 4))).unwrap();
    (out.join("final"), prompts_path)
}

/// A tool set in memory: `lookup` answers by `mode`; every call is recorded.
struct Mock {
    mode: &'static str,
    calls: Mutex<Vec<(String, serde_json::Value)>>,
}

impl ToolRunner for Mock {
    fn specs(&self) -> Vec<(String, String, serde_json::Value)> {
        vec![("lookup".into(), "Look up trials".into(), serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}}))]
    }
    fn call(&self, name: &str, arguments: &str) -> ToolReply {
        self.calls.lock().unwrap().push((name.into(), serde_json::from_str(arguments).unwrap()));
        match self.mode {
            "answer" => ToolReply::Output("PMID 1: statins trial".into()),
            "error" => ToolReply::Error { message: "error: the tool timed out".into(), drop: false },
            "drop" => ToolReply::Error { message: "error: the tool trapped".into(), drop: true },
            "flood" => ToolReply::Output("statin ".repeat(5_000)),
            _ => ToolReply::Fail("stop".into()),
        }
    }
}

fn mock(mode: &'static str) -> Mock {
    Mock { mode, calls: Mutex::new(Vec::new()) }
}

/// Segments of a trajectory's response: (trained?, tokens), maximal runs.
fn segments(ids: &[u32], trained: &[bool], from: usize) -> Vec<(bool, Vec<u32>)> {
    let mut out: Vec<(bool, Vec<u32>)> = Vec::new();
    for (&id, &t) in ids[from..].iter().zip(&trained[from..]) {
        match out.last_mut() {
            Some((lt, v)) if *lt == t => v.push(id),
            _ => out.push((t, vec![id])),
        }
    }
    out
}

#[test]
fn multi_turn_rollouts_answer_tool_calls_in_the_template_and_mask_the_replies() {
    let (model_dir, _) = tool_caller();
    let loaded = load_model_dir(&model_dir, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let tok = &loaded.tokenizer;
    let eos = loaded.generation.eos_token_ids.clone();
    let stop = StopConditions { eos_token_ids: eos.clone(), stop_strings: vec![], tokenizer: Some(tok) };
    let engine = EngineConfig::default();
    let renderer = TurnRenderer::new(tok, None).unwrap();
    assert_eq!(renderer.format(), ToolCallFormat::Hermes);
    let prompt = tok.encode_chat(&[medrl::tokenizer::ChatMessage::system(tools_system()), medrl::tokenizer::ChatMessage::user(QUESTION)], true).unwrap();
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: 96, ..Default::default() };
    let settings = MultiTurn { max_turns: 3, max_tool_response_tokens: 32, ..Default::default() };
    let run = |tools: &dyn ToolRunner, settings: &MultiTurn, prompts: &[Vec<u32>], streams: &[u64]| {
        AgentLoop { policy: &loaded.model, tok, stop: &stop, engine: &engine, params: greedy.clone(), settings, renderer: &renderer, tools }.run(prompts, streams).unwrap()
    };

    // The tool answers: the call is answered with a ChatML tool turn, then the model goes on
    // (what it writes after a reply was never taught; it may call again or stop).
    let tools = mock("answer");
    let t = run(&tools, &settings, &[prompt.clone()], &[0]).remove(0);
    let first = tok.decode(&t.ids[t.prompt_len..], false).unwrap();
    assert!(first.starts_with(CALL), "SFT taught the call: {first}");
    let segs = segments(&t.ids, &t.trained, t.prompt_len);
    let rounds = segs.iter().filter(|s| !s.0).count();
    assert!(rounds >= 1 && t.turns == rounds + 1 && t.turns <= 3, "{first}");
    assert_eq!(segs.iter().map(|s| s.0).collect::<Vec<_>>(), (0..2 * rounds + 1).map(|k| k % 2 == 0).collect::<Vec<_>>(), "turn, reply, turn, ...");
    assert_eq!((t.tool_calls, t.tool_errors, t.dropped.clone()), (tools.calls.lock().unwrap().len(), 0, None));
    assert_eq!(tools.calls.lock().unwrap()[0], ("lookup".to_string(), serde_json::json!({"q": "statin"})));
    for (k, (_, reply)) in segs.iter().enumerate().filter(|(_, s)| !s.0) {
        // What ChatML writes after the assistant's content, less the <|im_end|> it generated.
        let ended_eos = eos.contains(segs[k - 1].1.last().unwrap());
        let want = format!("{}<|im_start|>tool\nPMID 1: statins trial<|im_end|>\n<|im_start|>assistant\n", if ended_eos { "\n" } else { "<|im_end|>\n" });
        assert_eq!(tok.decode(reply, false).unwrap(), want);
        assert_eq!(reply, &tok.encode(&want, false).unwrap(), "reply tokens are the template text's tokens");
    }
    assert_eq!(t.generated, segs.iter().filter(|s| s.0).map(|s| s.1.len()).sum::<usize>());

    // Failures: an error message is the reply; `drop` ends the trajectory and marks it; a flood
    // is cut to max_tool_response_tokens; `fail` stops the rollout with an error.
    let t = run(&mock("error"), &settings, &[prompt.clone()], &[0]).remove(0);
    assert!(t.tool_errors >= 1 && t.tool_errors == t.tool_calls && t.dropped.is_none(), "{t:?}");
    assert!(tok.decode(&t.ids, false).unwrap().contains("<|im_start|>tool\nerror: the tool timed out<|im_end|>"));
    let t = run(&mock("drop"), &settings, &[prompt.clone()], &[0]).remove(0);
    assert_eq!((t.turns, t.tool_errors, t.dropped.as_deref()), (1, 1, Some("error: the tool trapped")));
    let t = run(&mock("flood"), &settings, &[prompt.clone()], &[0]).remove(0);
    let text = tok.decode(&t.ids, false).unwrap();
    assert!(text.contains("[output truncated to 32 tokens]"), "{text}");
    let reply = segments(&t.ids, &t.trained, t.prompt_len).into_iter().find(|s| !s.0).unwrap().1;
    assert!(reply.len() < 32 + 40, "{}", reply.len());
    let e = AgentLoop { policy: &loaded.model, tok, stop: &stop, engine: &engine, params: greedy.clone(), settings: &settings, renderer: &renderer, tools: &mock("fail") }.run(&[prompt.clone()], &[0]).unwrap_err();
    assert!(e.to_string().contains("on_failure is `fail`"), "{e}");

    // Budgets: max_turns 1 answers nothing; max_total_tokens bounds the whole response.
    let one = MultiTurn { max_turns: 1, ..settings.clone() };
    let t = run(&mock("answer"), &one, &[prompt.clone()], &[0]).remove(0);
    assert_eq!((t.turns, t.tool_calls), (1, 0));
    let small = MultiTurn { max_total_tokens: 40, ..settings.clone() };
    let t = run(&mock("answer"), &small, &[prompt.clone()], &[0]).remove(0);
    assert!(t.ids.len() - t.prompt_len <= 40, "{}", t.ids.len() - t.prompt_len);

    // Evaluation (and RL validation) answers through the same loop: `LocalAgent` describes the
    // tools in the prompt and returns the whole trajectory as the response.
    let tools = mock("answer");
    let responder = medrl::eval::run::LocalAgent { model: &loaded.model, tokenizer: tok, tools: &tools, renderer: &renderer, settings: &settings, engine };
    let ex = medrl::data::Example {
        messages: vec![medrl::tokenizer::ChatMessage::user(QUESTION), medrl::tokenizer::ChatMessage::assistant("Statins lower LDL.")],
        ground_truth: serde_json::Value::Null,
        metadata: serde_json::Value::Null,
        data_source: String::new(),
    };
    let rewards: Vec<medrl::reward::RewardConfig> = serde_yaml::from_str(&dialogue_reward()).unwrap();
    let rewards = medrl::reward::load_rewards(&rewards, &Default::default()).unwrap();
    let opts = medrl::eval::run::EvalOptions { sampling: greedy.clone(), n: 1, batch_size: 4, eos_token_ids: eos.clone(), pad_token_id: 0, stop_strings: vec![], progress: false };
    let examples = vec![(medrl::data::Origin { file: "x.jsonl".into(), row: 1 }, ex)];
    let (_, preds) = medrl::eval::run::evaluate_with(&responder, &examples, &rewards, &Default::default(), &opts).unwrap();
    assert!(preds[0].prompt.contains("<tools>") && preds[0].response.starts_with("<tool_call>"), "{:?}", preds[0]);
    assert!(preds[0].response.contains("tool\nPMID 1: statins trial"), "{}", preds[0].response);
    assert!(!tools.calls.lock().unwrap().is_empty());

    // Sampling: a trajectory depends on its own stream only, not on the rest of the batch.
    let hot = SamplingParams { temperature: 1.0, max_new_tokens: 64, seed: 5, ..Default::default() };
    let other = tok.encode_chat(&[medrl::tokenizer::ChatMessage::user("Hello")], true).unwrap();
    let lp = |prompts: &[Vec<u32>], streams: &[u64]| AgentLoop { policy: &loaded.model, tok, stop: &stop, engine: &engine, params: hot.clone(), settings: &settings, renderer: &renderer, tools: &mock("answer") }.run(prompts, streams).unwrap();
    let both = lp(&[other, prompt.clone()], &[0, 1]);
    let alone = lp(&[prompt.clone()], &[1]);
    assert_eq!(both[1], alone[0]);
}

fn grpo_config(model: &Path, prompts: &Path, out: &Path, extra: &[&str]) -> GrpoConfig {
    let yaml = format!(
        "model: {model:?}\noutput_dir: {out:?}\ndevice: cpu\n\
         data:\n  train: [{{path: {prompts:?}, formatting: messages}}]\n  eval: []\n  max_prompt_len: 1024\n\
         rewards: {rewards}\n\
         rollout: {{temperature: 1.0, max_new_tokens: 96}}\n\
         multi_turn: {{max_turns: 3, max_tool_response_tokens: 16}}\n\
         algorithm: {{n: 4, prompts_per_step: 2, micro_batch_size: 4}}\n\
         training: {{max_steps: 4, lr: 1.0e-3, seed: 3, save_every: 2}}\n",
        rewards = dialogue_reward(),
    );
    medrl::config::from_tree(with_overrides(&yaml, extra), Path::new("grpo.yaml")).unwrap()
}

/// GRPO with tools in the loop: a tool that drops samples or errors does not stop training,
/// the metrics count turns, calls and errors, and an interrupted run resumes identically,
/// synchronous or asynchronous.
#[test]
fn grpo_trains_with_tools_in_the_loop_and_resumes_identically() {
    use medrl::train::rl::drive_with_tools;
    let d = tempfile::tempdir().unwrap();
    let (model, prompts) = tool_caller();
    let boxed = |m: &'static str| -> Option<Box<dyn ToolRunner + Send>> { Some(Box::new(mock(m))) };
    let a = d.path().join("a");
    let o = drive_with_tools::<Grpo>(&grpo_config(&model, &prompts, &a, &[]), Default::default(), &RunOptions::default(), boxed("answer")).unwrap();
    assert_eq!(o.steps, 4);
    let rows: Vec<serde_json::Value> = metrics(&a).into_iter().filter(|r| r.get("reward").is_some()).collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().any(|r| r["tool_calls"].as_f64().unwrap() > 0.0), "{rows:?}");
    for r in &rows {
        assert!(r["turns"].as_f64().unwrap() >= 1.0 && r["loss"].as_f64().unwrap().is_finite(), "{r}");
    }
    let b = d.path().join("b");
    let cfg = grpo_config(&model, &prompts, &b, &[]);
    drive_with_tools::<Grpo>(&cfg, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }, boxed("answer")).unwrap();
    drive_with_tools::<Grpo>(&cfg, Default::default(), &RunOptions { resume: true, stop_after: None }, boxed("answer")).unwrap();
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "reward", "loss", "grad_norm", "response_len", "turns", "tool_calls"] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
    }
    // Asynchronous: the next step's conversations run on the rollout thread (tools included)
    // while the update runs; step 1 is the synchronous run's, and an interrupted run resumes
    // identically.
    let on = ["async=true"];
    let (e, f) = (d.path().join("e"), d.path().join("f"));
    drive_with_tools::<Grpo>(&grpo_config(&model, &prompts, &e, &on), Default::default(), &RunOptions::default(), boxed("answer")).unwrap();
    let cfg_f = grpo_config(&model, &prompts, &f, &on);
    drive_with_tools::<Grpo>(&cfg_f, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }, boxed("answer")).unwrap();
    drive_with_tools::<Grpo>(&cfg_f, Default::default(), &RunOptions { resume: true, stop_after: None }, boxed("answer")).unwrap();
    let (me, mf) = (metrics(&e), metrics(&f));
    let first = |m: &[serde_json::Value]| m.iter().find(|r| r.get("reward").is_some()).cloned().unwrap();
    for k in ["reward", "loss", "turns", "tool_calls"] {
        assert_eq!(first(&ma)[k], first(&me)[k], "async step 1 {k}");
    }
    assert_eq!(me.len(), mf.len());
    for (x, y) in me.iter().zip(&mf) {
        for k in ["step", "reward", "loss", "grad_norm", "response_len", "turns", "tool_calls", "off_policy_kl"] {
            assert_eq!(x.get(k), y.get(k), "async {k}: {x} vs {y}");
        }
    }
    // A tool that always drops: every sample that called it leaves the step; training goes on.
    let c = d.path().join("c");
    drive_with_tools::<Grpo>(&grpo_config(&model, &prompts, &c, &[]), Default::default(), &RunOptions::default(), boxed("drop")).unwrap();
    let rows: Vec<serde_json::Value> = metrics(&c).into_iter().filter(|r| r.get("reward").is_some()).collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().any(|r| r["dropped"].as_u64().unwrap() > 0 && r["tool_errors"].as_u64().unwrap() > 0), "{rows:?}");
}

/// The hostile tool plugin, as the run config lists it.
fn hostile_tools(on_failure: &str) -> String {
    format!("[{{plugin: {:?}, on_failure: {on_failure}, timeout_s: 0.5}}]", common::wasm("hostile-tool"))
}

/// Issue 21: hostile tool plugins in the loop (an endless loop, a panic, a reply over the output
/// cap, a capability the run does not grant) end the turn with an error message to the model, or
/// drop the sample under `on_failure: drop`; training continues either way.
#[test]
fn hostile_tool_plugins_answer_with_errors_or_drop_and_training_continues() {
    let d = tempfile::tempdir().unwrap();
    let tool_yaml: Vec<medrl::reward::ToolConfig> = serde_yaml::from_str(&hostile_tools("message")).unwrap();
    let set = medrl::reward::load_tools(&tool_yaml, &Default::default()).unwrap();
    let system = medrl::tokenizer::tools::tools_system_block(&ToolRunner::specs(&set), ToolCallFormat::Hermes);
    let convs: Vec<(&str, String)> = ["loop", "panic", "huge", "judge-ignore"]
        .iter()
        .map(|m| (*m, format!("<tool_call>\n{{\"name\": \"hostile\", \"arguments\": {{\"mode\": \"{m}\"}}}}\n</tool_call>")))
        .collect();
    let (model, prompts) = sft_caller(d.path(), &system, &convs, "done");
    for (policy, out) in [("message", "m"), ("drop", "x")] {
        let o = d.path().join(out);
        let cfg = grpo_config(&model, &prompts, &o, &[&format!("tools={}", hostile_tools(policy)), "algorithm.n=2", "algorithm.prompts_per_step=4", "training.max_steps=2", "multi_turn.max_turns=2"]);
        let outcome = medrl::train::grpo::run(&cfg, Default::default(), &RunOptions::default()).unwrap();
        assert_eq!(outcome.steps, 2, "{policy}");
        let rows: Vec<serde_json::Value> = metrics(&o).into_iter().filter(|r| r.get("reward").is_some()).collect();
        let errors: u64 = rows.iter().map(|r| r["tool_errors"].as_u64().unwrap()).sum();
        let dropped: u64 = rows.iter().map(|r| r["dropped"].as_u64().unwrap()).sum();
        assert!(errors >= 4, "{policy}: {rows:?}");
        match policy {
            "message" => assert_eq!(dropped, 0, "{rows:?}"),
            _ => assert!(dropped >= 4, "{rows:?}"),
        }
        for r in &rows {
            assert!(r["loss"].as_f64().unwrap().is_finite(), "{r}");
        }
    }
}
