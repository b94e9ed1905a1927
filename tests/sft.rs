//! SFT integration tests (CPU): a tiny model fine-tuned on the bundled medical dialogue sample
//! learns (train and eval loss drop, full and LoRA), resume retraces the same curve, exports load
//! back with the same outputs, and bad data / non-finite losses fail clearly without damage.

use candle_core::{DType, Device, Tensor};
use medrl::data::tokenize::{tokenize_example, Tokenizing};
use medrl::model::{load_model_dir, peft};
use medrl::tokenizer::ChatMessage;
use medrl::train::sft::{self, RunOptions, SftConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{assert_same_curve, metrics, repo, with_overrides};

/// The tiny model these tests train (seed 3).
fn tiny_model(dir: &Path) -> PathBuf {
    common::tiny_model(dir, 3)
}

/// A config for the bundled sample; `extra` is YAML merged as overrides (`key: value` lines).
fn config(model: &Path, out: &Path, extra: &[&str]) -> (SftConfig, serde_yaml::Value) {
    let yaml = format!(
        "model: {model:?}\noutput_dir: {out:?}\ndevice: cpu\n\
         data:\n  dataset_dir: {data:?}\n  train: [medical_dialogue]\n  eval: [medical_dialogue_eval]\n  cutoff_len: 256\n\
         training:\n  epochs: 1\n  micro_batch_size: 8\n  grad_accum: 2\n  lr: 3.0e-3\n  warmup_ratio: 0.1\n  seed: 11\n  eval_every: 5\n",
        data = repo().join("tasks/medical-dialogue/data"),
    );
    let tree = with_overrides(&yaml, extra);
    let cfg: SftConfig = medrl::config::from_tree(tree.clone(), Path::new("test.yaml")).unwrap();
    (cfg, tree)
}

fn run(cfg: &(SftConfig, serde_yaml::Value), opts: RunOptions) -> Result<sft::SftOutcome, sft::SftError> {
    sft::run(&cfg.0, &cfg.1, &opts)
}

fn logits(model_dir: &Path, adapter: Option<&Path>, ids: &[u32]) -> Tensor {
    let mut m = load_model_dir(model_dir, &Device::Cpu, DType::F32).unwrap();
    if let Some(a) = adapter {
        peft::load_peft_adapter(&mut m.model, a).unwrap();
    }
    let x = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.model.forward_causal(&x).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn probe_ids(model: &Path) -> Vec<u32> {
    let tok = medrl::tokenizer::TextTokenizer::from_dir(model).unwrap();
    tok.encode_chat(&[ChatMessage::user("I have a fever. What should I do?")], true).unwrap()
}

#[test]
fn full_sft_lowers_train_and_eval_loss_and_exports_a_loadable_model() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("full");
    let cfg = config(&base, &out, &["training.epochs=3", "training.lr=1.0e-2", "training.save_every=10"]);
    let o = run(&cfg, RunOptions::default()).unwrap();
    let (first, last) = (o.first_loss.unwrap(), o.last_loss.unwrap());
    let (eb, ea) = (o.eval_loss_before.unwrap(), o.eval_loss_after.unwrap());
    assert!(last < 0.5 * first, "train loss {first} -> {last}");
    assert!(ea < 0.5 * eb, "eval loss {eb} -> {ea}");
    // Metrics, plots, checkpoints (keep_last 2) and the final HF folder are all there.
    let m = metrics(&out);
    assert!(m.iter().any(|r| r.get("eval_loss").is_some()) && m.iter().all(|r| r.get("step").is_some()));
    for f in ["plots/loss.svg", "plots/lr.svg", "config.yaml", "final/config.json", "final/model.safetensors", "final/tokenizer.json", "final/tokenizer_config.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(medrl::train::checkpoint::list(&out).len(), 2);
    // The exported model differs from the base and equals `medrl export` of the last checkpoint.
    let ids = probe_ids(&base);
    let tuned = logits(&out.join("final"), None, &ids);
    assert!(max_diff(&tuned, &logits(&base, None, &ids)) > 1e-2);
    let exported = d.path().join("exported");
    let st = Command::new(env!("CARGO_BIN_EXE_medrl"))
        .args(["export", "--run", out.to_str().unwrap(), "--out", exported.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(max_diff(&tuned, &logits(&exported, None, &ids)), 0.0);
}

#[test]
fn lora_sft_learns_and_the_peft_adapter_matches_the_merged_model() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("lora");
    // A random tiny model's tied embeddings give logits too small to fit anything, so the head
    // is trained too (PEFT's modules_to_save), which also exercises that export path.
    let cfg = config(
        &base,
        &out,
        &["training.epochs=3", "training.lr=1.0e-2", "lora={rank: 8, alpha: 16, dropout: 0.05, target_modules: [all-linear], modules_to_save: [lm_head]}"],
    );
    let o = run(&cfg, RunOptions::default()).unwrap();
    let (eb, ea) = (o.eval_loss_before.unwrap(), o.eval_loss_after.unwrap());
    let (first, last) = (o.first_loss.unwrap(), o.last_loss.unwrap());
    assert!(last < 0.5 * first, "train loss {first} -> {last}");
    assert!(ea < 0.5 * eb, "eval loss {eb} -> {ea}");
    let adapter = o.adapter.expect("LoRA runs write an adapter");
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 8);
    let names = candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(names.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), "{:?}", names.keys().take(3).collect::<Vec<_>>());
    assert!(names.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert!(names.contains_key("base_model.model.lm_head.weight"));
    assert_eq!(cfg_json["modules_to_save"], serde_json::json!(["lm_head"]));
    // base + adapter (unmerged, as PEFT runs it) == merged export.
    let ids = probe_ids(&base);
    let merged = logits(&out.join("final"), None, &ids);
    let with_adapter = logits(&base, Some(&adapter), &ids);
    assert!(max_diff(&merged, &with_adapter) < 1e-4, "{}", max_diff(&merged, &with_adapter));
    assert!(max_diff(&merged, &logits(&base, None, &ids)) > 1e-3, "the adapter must change the model");
}

#[test]
fn resume_retraces_the_uninterrupted_curve() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    // LoRA with dropout: the RNG stream must be restored too, not only weights and data order.
    let extra = ["training.max_steps=9", "training.save_every=3", "training.eval_every=2", "lora={rank: 4, alpha: 8, dropout: 0.1}", "training.lr=5.0e-3"];
    let a = d.path().join("a");
    let oa = run(&config(&base, &a, &extra), RunOptions::default()).unwrap();
    let b = d.path().join("b");
    let cfg_b = config(&base, &b, &extra);
    // Interrupted after step 5: the last checkpoint is step 3, and steps 4-5 are redone.
    run(&cfg_b, RunOptions { resume: false, stop_after: Some(5) }).unwrap();
    assert_eq!(medrl::train::checkpoint::list(&b).last().unwrap().0, 3);
    let e = run(&cfg_b, RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("--resume"), "starting over a run with checkpoints must be refused: {e}");
    let ob = run(&cfg_b, RunOptions { resume: true, stop_after: None }).unwrap();
    // The resumed run reports the run's first loss (step 1, from its records), not step 4's.
    let (fa, fb) = (oa.first_loss.unwrap(), ob.first_loss.unwrap());
    assert!((fa - fb).abs() <= 1e-12 * fa.abs(), "first_loss {fa} vs {fb}");
    assert_eq!(oa.eval_loss_before.is_some(), ob.eval_loss_before.is_some());
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "loss", "lr", "grad_norm", "eval_loss", "trained_tokens"] {
            assert_eq!(x.get(k), y.get(k), "{k} differs: {x} vs {y}");
        }
    }
    // TensorBoard: every scalar of both runs' metrics, read back by the `tensorboard` package;
    // the resumed run's event file holds its metrics lines and nothing of the abandoned steps.
    if let Some(py) = python_with("tensorboard") {
        for dir in [&a, &b] {
            let out = std::process::Command::new(&py).arg(repo().join("tests/reference/tensorboard_readback.py")).arg(dir).output().unwrap();
            assert!(out.status.success(), "{}: {}{}", dir.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
    }
    // A changed training config is refused on resume.
    let cfg_c = config(&base, &b, &[&extra[..], &["training.lr=1.0e-3"]].concat());
    let e = run(&cfg_c, RunOptions { resume: true, stop_after: None }).unwrap_err().to_string();
    assert!(e.contains("different training config"), "{e}");
}

/// Issue 18: activation checkpointing changes memory and time, never the numbers: the same
/// curve and the same exported weights bit for bit (f32, CPU), full and LoRA with dropout; a
/// run may resume with it switched on.
#[test]
fn activation_checkpointing_retraces_the_same_run_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    for (name, extra) in [("full", vec!["training.max_steps=4"]), ("lora", vec!["training.max_steps=4", "lora={rank: 4, alpha: 8, dropout: 0.1}"])] {
        let plain = d.path().join(format!("{name}-off"));
        let op = run(&config(&base, &plain, &extra), RunOptions::default()).unwrap();
        let weights = |o: &sft::SftOutcome, dir: &Path| match &o.adapter {
            Some(a) => std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
            None => std::fs::read(dir.join("final/model.safetensors")).unwrap(),
        };
        for ckpt in ["every_layer", "{every: 2}"] {
            let out = d.path().join(format!("{name}-{}", ckpt.len()));
            let key = format!("training.activation_checkpointing={ckpt}");
            let o = [&extra[..], &[key.as_str()]].concat();
            let oc = run(&config(&base, &out, &o), RunOptions::default()).unwrap();
            assert_same_curve(&plain, &out);
            assert_eq!(op.adapter.is_some(), name == "lora");
            assert!(weights(&op, &plain) == weights(&oc, &out), "{name} {ckpt}: the trained weights differ");
        }
    }
    // Interrupted without, resumed with checkpointing: the same curve (the key is left out of
    // the resume check).
    let extra = ["training.max_steps=4", "training.save_every=2"];
    let a = d.path().join("resume-a");
    run(&config(&base, &a, &extra), RunOptions::default()).unwrap();
    let b = d.path().join("resume-b");
    run(&config(&base, &b, &extra), RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    let on = [&extra[..], &["training.activation_checkpointing=every_layer"]].concat();
    run(&config(&base, &b, &on), RunOptions { resume: true, stop_after: None }).unwrap();
    assert_same_curve(&a, &b);
    // A bad value is named.
    let mut bad = config(&base, &a, &extra).1;
    medrl::config::apply_override(&mut bad, "training.activation_checkpointing={every: 0}").unwrap();
    let e = medrl::config::from_tree::<SftConfig>(bad, Path::new("bad.yaml")).unwrap_err().to_string();
    assert!(e.contains("activation_checkpointing") && e.contains("at least 1"), "{e}");
}

/// Issue 17: a token budget per micro-batch (dynamic batch size) and the explicit layer
/// backward change how a step is computed, not what it computes: each run's losses, eval
/// losses and gradient norms follow the fixed-micro-batch autograd run to rounding.
#[test]
fn dynamic_batch_size_and_the_explicit_backward_train_as_the_plain_run() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let plain = d.path().join("plain");
    run(&config(&base, &plain, &["training.max_steps=4"]), RunOptions::default()).unwrap();
    for (name, extra) in [("budget", "training.micro_batch_tokens=700"), ("explicit", "training.layer_backward=explicit")] {
        let out = d.path().join(name);
        run(&config(&base, &out, &["training.max_steps=4", extra]), RunOptions::default()).unwrap();
        let (a, b) = (metrics(&plain), metrics(&out));
        assert_eq!(a.len(), b.len(), "{name}: metric rows");
        let mut compared = 0;
        for (x, y) in a.iter().zip(&b) {
            for k in ["loss", "eval_loss", "grad_norm", "trained_tokens", "tokens"] {
                if let (Some(u), Some(v)) = (x.get(k).and_then(|v| v.as_f64()), y.get(k).and_then(|v| v.as_f64())) {
                    assert!((u - v).abs() <= 1e-4 * u.abs().max(1e-6), "{name}: {k} {u} vs {v}");
                    compared += 1;
                }
            }
        }
        assert!(compared >= 12, "{name}: only {compared} values compared");
    }
    // A zero budget is refused, naming the key.
    let e = config_error(&base, &plain, &["training.micro_batch_tokens=0"]);
    assert!(e.contains("micro_batch_tokens") && e.contains("at least 1"), "{e}");
}

/// Issue 18: QLoRA (NF4 base with double quantization) learns the sample as LoRA on the dense
/// base does, writes a PEFT adapter for the original base, and exports the adapter merged onto
/// the full-precision base (as PEFT's merge_and_unload on the unquantized model).
#[test]
fn qlora_sft_learns_like_lora_and_writes_a_peft_adapter_for_the_original_base() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let lora = |q: &str| format!("lora={{rank: 8, alpha: 16, dropout: 0.0{q}}}");
    let dense = run(&config(&base, &d.path().join("lora"), &["training.epochs=3", "training.lr=1.0e-2", &lora("")]), RunOptions::default()).unwrap();
    let out = d.path().join("qlora");
    let o = run(&config(&base, &out, &["training.epochs=3", "training.lr=1.0e-2", &lora(", quantize: nf4")]), RunOptions::default()).unwrap();
    let (eb, ea) = (o.eval_loss_before.unwrap(), o.eval_loss_after.unwrap());
    let (db, da) = (dense.eval_loss_before.unwrap(), dense.eval_loss_after.unwrap());
    assert!(ea < eb - 0.1 && da < db - 0.1, "eval loss: QLoRA {eb} -> {ea}, LoRA {db} -> {da}");
    // The NF4 base is a slightly different model: close to, not equal to, the dense curve.
    assert!(eb != db && (ea - da).abs() < 0.05 * da, "eval loss after: QLoRA {ea} vs LoRA {da}");
    let adapter = o.adapter.expect("QLoRA runs write an adapter");
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    // The merged export is the original (dense) base plus the adapter.
    let ids = probe_ids(&base);
    let merged = logits(&out.join("final"), None, &ids);
    let with_adapter = logits(&base, Some(&adapter), &ids);
    assert!(max_diff(&merged, &with_adapter) < 1e-4, "merged export vs base + adapter: {}", max_diff(&merged, &with_adapter));
    assert!(max_diff(&with_adapter, &logits(&base, None, &ids)) > 1e-2, "the adapter changes the model");
}

/// Issue 18: the lean optimizer. 8-bit moments, and 8-bit moments with bf16 masters
/// (stochastic rounding), learn the bundled sample as f32 AdamW does; a lean run interrupted and
/// resumed retraces the uninterrupted one exactly (8-bit moments are checkpointed as codes and
/// absmax, and the rounding bits follow the step, not a stream); bad values are named.
#[test]
fn lean_optimizer_learns_like_f32_adamw_and_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    // At the sample's usual lr; at 1e-2 the f32 run itself is unstable on this tiny model and any
    // perturbation (even f32 rounding order) moves the end point by several percent.
    let common = ["training.epochs=2"];
    let mut after = Vec::new();
    for (name, extra) in [("f32", vec![]), ("int8", vec!["training.optimizer.state=int8"]), ("lean", vec!["training.optimizer.state=int8", "training.optimizer.master_weights=bf16"])] {
        let o = run(&config(&base, &d.path().join(name), &[&common[..], &extra[..]].concat()), RunOptions::default()).unwrap();
        let (b, a) = (o.eval_loss_before.unwrap(), o.eval_loss_after.unwrap());
        assert!(a < b - 0.3, "{name}: eval loss {b} -> {a}");
        after.push((name, a));
    }
    let f32_after = after[0].1;
    for (name, a) in &after[1..] {
        assert!((a - f32_after).abs() < 0.01 * f32_after, "{name}: eval loss after {a} vs f32 AdamW {f32_after}");
    }
    // The 8-bit moments are what the checkpoint holds.
    let ck = medrl::train::checkpoint::list(&d.path().join("lean")).last().unwrap().1.clone();
    let opt = candle_core::safetensors::load(ck.join("optimizer.safetensors"), &Device::Cpu).unwrap();
    let codes = opt.get("model.layers.0.mlp.up_proj.weight.exp_avg.codes").expect("8-bit codes in the checkpoint");
    assert_eq!(codes.dtype(), DType::U8);
    assert!(opt.contains_key("model.norm.weight.exp_avg"), "small tensors keep f32 moments");
    let trained = candle_core::safetensors::load(ck.join("trainable.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(trained["model.layers.0.mlp.up_proj.weight"].dtype(), DType::BF16, "bf16 masters are saved as they are");

    let extra = ["training.max_steps=6", "training.save_every=3", "training.optimizer.state=int8", "training.optimizer.master_weights=bf16"];
    let a = d.path().join("resume-a");
    run(&config(&base, &a, &extra), RunOptions::default()).unwrap();
    let b = d.path().join("resume-b");
    run(&config(&base, &b, &extra), RunOptions { resume: false, stop_after: Some(4) }).unwrap();
    run(&config(&base, &b, &extra), RunOptions { resume: true, stop_after: None }).unwrap();
    assert_same_curve(&a, &b);
    assert!(std::fs::read(a.join("final/model.safetensors")).unwrap() == std::fs::read(b.join("final/model.safetensors")).unwrap(), "the resumed lean run ends with other weights");

    for (key, value) in [("state", "int4"), ("master_weights", "fp8")] {
        let mut bad = config(&base, &a, &[]).1;
        medrl::config::apply_override(&mut bad, &format!("training.optimizer.{key}={value}")).unwrap();
        let e = medrl::config::from_tree::<SftConfig>(bad, Path::new("bad.yaml")).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(value), "{e}");
    }
}

/// Issue 18: the streamed export reads a sharded base checkpoint (how large models ship) tensor
/// by tensor: a LoRA run on a base saved in shards exports a merged model equal to base +
/// adapter, and a full run with bf16 masters exports a model that loads and computes.
#[test]
fn streamed_export_reads_a_sharded_base_and_bf16_masters() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let sharded = d.path().join("sharded");
    let m = load_model_dir(&base, &Device::Cpu, DType::F32).unwrap();
    medrl::model::save_weights_sharded(&m.model, &sharded, 40_000).unwrap();
    medrl::model::peft::copy_tokenizer_files(&base, &sharded).unwrap();
    assert!(sharded.join("model.safetensors.index.json").exists() && !sharded.join("model.safetensors").exists());
    let out = d.path().join("lora");
    let o = run(&config(&sharded, &out, &["training.max_steps=3", "training.lr=1.0e-2", "lora={rank: 4, alpha: 8}"]), RunOptions::default()).unwrap();
    let ids = probe_ids(&base);
    let merged = logits(&out.join("final"), None, &ids);
    let with_adapter = logits(&sharded, Some(&o.adapter.unwrap()), &ids);
    assert!(max_diff(&merged, &with_adapter) < 1e-4, "merged export vs sharded base + adapter: {}", max_diff(&merged, &with_adapter));
    assert!(max_diff(&merged, &logits(&base, None, &ids)) > 1e-4, "the adapter must change the model");
    let full = d.path().join("full-bf16");
    run(&config(&base, &full, &["training.max_steps=2", "training.optimizer.master_weights=bf16"]), RunOptions::default()).unwrap();
    let y = logits(&full.join("final"), None, &ids);
    let finite = y.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite());
    assert!(finite && max_diff(&y, &logits(&base, None, &ids)) > 0.0, "the bf16-master export loads and differs from the base");
}

#[test]
fn assistant_mask_covers_exactly_the_assistant_turns() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let tok = medrl::tokenizer::TextTokenizer::from_dir(&base).unwrap();
    let ex = medrl::data::Example {
        messages: vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("I have a cough."),
            ChatMessage::assistant("Drink warm fluids."),
            ChatMessage::user("Is it serious?"),
            ChatMessage::assistant("Usually not."),
        ],
        ground_truth: serde_json::Value::Null,
        metadata: serde_json::Value::Null,
        data_source: String::new(),
    };
    let t = tokenize_example(&tok, &ex, &Tokenizing::default()).unwrap().unwrap();
    let preview = medrl::data::tokenize::preview(&tok, &t);
    assert_eq!(
        preview,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nI have a cough.<|im_end|>\n<|im_start|>assistant\n[[Drink warm fluids.<|im_end|>\n]]\
         <|im_start|>user\nIs it serious?<|im_end|>\n<|im_start|>assistant\n[[Usually not.<|im_end|>\n]]"
    );
    let last_only = Tokenizing { train_on: medrl::data::tokenize::TrainOn::LastAssistant, ..Default::default() };
    let t2 = tokenize_example(&tok, &ex, &last_only).unwrap().unwrap();
    assert!(medrl::data::tokenize::preview(&tok, &t2).matches("[[").count() == 1);
    // Cutoff: truncation keeps the head; `drop` removes the example (both are counted by SFT).
    let short = Tokenizing { cutoff_len: 12, ..Default::default() };
    let r = tokenize_example(&tok, &ex, &short).unwrap();
    assert!(matches!(r, Err(medrl::data::tokenize::Dropped::NothingToTrain)) || r.as_ref().unwrap().truncated);
    let drop = Tokenizing { cutoff_len: 12, overlong: medrl::data::tokenize::Overlong::Drop, ..Default::default() };
    assert!(matches!(tokenize_example(&tok, &ex, &drop).unwrap(), Err(medrl::data::tokenize::Dropped::TooLong)));
    // Every token of the assistant's text is trained, lone space tokens included (the tiny
    // ByteLevel tokenizer trims their offsets to an empty range): the trained tokens decode to
    // the text itself.
    let call = "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"q\": \"statin 2\"}}\n</tool_call>";
    let json = medrl::data::Example { messages: vec![ChatMessage::user("Find trials."), ChatMessage::assistant(call)], ..ex.clone() };
    let t = tokenize_example(&tok, &json, &Tokenizing::default()).unwrap().unwrap();
    let trained: Vec<u32> = t.ids.iter().zip(&t.trained).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&trained, false).unwrap(), format!("{call}<|im_end|>\n"));
}

#[test]
fn malformed_rows_are_reported_with_file_and_row_or_skipped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let data = d.path().join("data.jsonl");
    let good = r#"{"instruction": "I have a fever.", "output": "Rest and drink fluids."}"#;
    let rows = [good, good, "{not json", r#"{"output": "no instruction"}"#, good, good, good, good];
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let inline = format!("data.train=[{{path: {data:?}, formatting: alpaca}}]");
    let out = d.path().join("fail");
    let cfg = config(&base, &out, &[&inline, "data.eval=[]", "training.max_steps=1"]);
    let e = run(&cfg, RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("data.jsonl row 3") && e.contains("invalid JSON"), "{e}");
    let out = d.path().join("skip");
    let cfg = config(&base, &out, &[&inline, "data.eval=[]", "data.on_bad_row=skip", "training.max_steps=1", "training.micro_batch_size=2", "training.grad_accum=1"]);
    run(&cfg, RunOptions::default()).unwrap();
    let m = metrics(&out);
    assert_eq!(m.last().unwrap()["skipped_rows"], 2, "{m:?}");
}

/// Data faults name the config key, the file and the row, and follow `on_bad_row`: invalid
/// UTF-8 in one JSONL line, impossible role orders, a conversation without an assistant turn
/// (or ending with a user turn), and an empty file.
#[test]
fn data_faults_name_key_file_and_row() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("no-model-needed");
    let load = |file: &Path, formatting: &str, extra: &[&str]| {
        let inline = format!("data.train=[{{path: {file:?}, formatting: {formatting}}}]");
        let mut o = vec![inline.as_str(), "data.eval=[]", "data.val_fraction=0"];
        o.extend(extra.iter().copied());
        sft::load_split(&config(&model, &d.path().join("out"), &o).0)
    };
    // Invalid UTF-8 in row 2.
    let utf8 = d.path().join("utf8.jsonl");
    let good = br#"{"instruction": "I have a fever.", "output": "Rest and drink fluids."}"#;
    std::fs::write(&utf8, [&good[..], &b"\n{\"instruction\": \"\xff\xfe\", \"output\": \"x\"}\n"[..], &good[..], &b"\n"[..]].concat()).unwrap();
    let e = load(&utf8, "alpaca", &[]).unwrap_err().to_string();
    assert!(e.contains("data.train[0]") && e.contains("utf8.jsonl row 2") && e.contains("invalid UTF-8"), "{e}");
    let (train, _, report) = load(&utf8, "alpaca", &["data.on_bad_row=skip"]).unwrap();
    assert_eq!((train.len(), report.skipped_rows), (2, 1));

    // Role orders: rows 2 to 5 cannot be trained on.
    let sg = d.path().join("sharegpt.jsonl");
    let conv = |roles: &[&str]| serde_json::json!({"conversations": roles.iter().map(|r| serde_json::json!({"from": r, "value": format!("{r} text")})).collect::<Vec<_>>()}).to_string();
    let rows = [conv(&["human", "gpt"]), conv(&["gpt", "human", "gpt"]), conv(&["human", "human", "gpt"]), conv(&["human"]), conv(&["human", "gpt", "human"])];
    std::fs::write(&sg, rows.join("\n") + "\n").unwrap();
    let e = load(&sg, "sharegpt", &[]).unwrap_err().to_string();
    assert!(e.contains("data.train[0]") && e.contains("sharegpt.jsonl row 2") && e.contains("conversations[0]: an assistant turn at the start"), "{e}");
    let (train, _, report) = load(&sg, "sharegpt", &["data.on_bad_row=skip"]).unwrap();
    assert_eq!((train.len(), report.skipped_rows), (1, 4), "{:?}", report.skipped_examples);
    let why = report.skipped_examples.join("\n");
    for (row, msg) in [(2, "an assistant turn at the start"), (3, "conversations[1]: a user turn after a user turn"), (4, "no assistant turn"), (5, "ends with a user turn")] {
        assert!(why.contains(&format!("sharegpt.jsonl row {row}: ")) && why.contains(msg), "row {row}: {why}");
    }

    // An empty file is named, with its key, even under `skip`.
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    for policy in ["data.on_bad_row=fail", "data.on_bad_row=skip"] {
        let e = load(&empty, "alpaca", &[policy]).unwrap_err().to_string();
        assert!(e.contains("data.train[0]") && e.contains(&empty.display().to_string()) && e.contains("no records"), "{e}");
    }
}

#[test]
fn verl_parquet_and_dataset_info_registries_load() {
    use arrow_array::{ArrayRef, RecordBatch, StringArray, StructArray, ListArray};
    use arrow_schema::{DataType, Field, Fields};
    use std::sync::Arc;
    let d = tempfile::tempdir().unwrap();
    // A VERL-style parquet: prompt = list<struct<role, content>>, reward_model struct, answer column.
    let msg_fields = Fields::from(vec![Field::new("role", DataType::Utf8, false), Field::new("content", DataType::Utf8, false)]);
    let roles = StringArray::from(vec!["system", "user", "user"]);
    let contents = StringArray::from(vec!["Be brief.", "Sample size for 80% power?", "Sample size for 90% power?"]);
    let structs = StructArray::new(msg_fields.clone(), vec![Arc::new(roles) as ArrayRef, Arc::new(contents) as ArrayRef], None);
    let list = ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(msg_fields), true)),
        arrow_buffer::OffsetBuffer::from_lengths([2, 1]),
        Arc::new(structs),
        None,
    );
    let gt_fields = Fields::from(vec![Field::new("ground_truth", DataType::Utf8, false)]);
    let gt = StructArray::new(gt_fields, vec![Arc::new(StringArray::from(vec!["128", "172"])) as ArrayRef], None);
    let batch = RecordBatch::try_from_iter(vec![
        ("data_source", Arc::new(StringArray::from(vec!["trialpanorama", "trialpanorama"])) as ArrayRef),
        ("prompt", Arc::new(list) as ArrayRef),
        ("reward_model", Arc::new(gt) as ArrayRef),
        ("answer", Arc::new(StringArray::from(vec!["<answer>128</answer>", "<answer>172</answer>"])) as ArrayRef),
    ])
    .unwrap();
    let path = d.path().join("train.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::write(
        d.path().join("dataset_info.json"),
        r#"{"ss": {"file_name": "train.parquet", "formatting": "verl", "columns": {"response": "answer"}}}"#,
    )
    .unwrap();
    let spec = medrl::data::registry::resolve(&medrl::data::registry::DatasetRef::Name("ss".into()), Some(d.path())).unwrap();
    let (exs, rep) = medrl::data::load_examples(&spec, medrl::data::BadRowPolicy::Fail).unwrap();
    assert_eq!(rep.rows, 2);
    assert_eq!(exs[0].0.row, 1);
    let ex = &exs[0].1;
    assert_eq!(ex.messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant"]);
    assert_eq!(ex.ground_truth, serde_json::json!("128"));
    assert_eq!(ex.data_source, "trialpanorama");
    assert_eq!(exs[1].1.messages.len(), 2);
}

#[test]
fn nonfinite_loss_stops_with_a_clear_error_and_leaves_the_checkpoint_intact() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("run");
    let extra = ["training.max_steps=6", "training.save_every=2", "lora={rank: 4, alpha: 8, dropout: 0.0}"];
    let cfg = config(&base, &out, &extra);
    run(&cfg, RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    let ck = medrl::train::checkpoint::latest(&out).unwrap();
    let before = std::fs::read(ck.join("trainable.safetensors")).unwrap();
    // Poison the frozen base: every forward now produces NaN.
    let w = base.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let n = tensors["model.norm.weight"].dims()[0];
    tensors.insert("model.norm.weight".into(), Tensor::new(vec![f32::NAN; n], &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let e = run(&cfg, RunOptions { resume: true, stop_after: None }).unwrap_err().to_string();
    assert!(e.contains("non-finite loss") && e.contains("step 3") && e.contains("row"), "{e}");
    assert_eq!(std::fs::read(ck.join("trainable.safetensors")).unwrap(), before, "checkpoint changed");
    assert_eq!(medrl::train::checkpoint::latest(&out).unwrap(), ck);
    // Under `skip` the run goes on and counts the skipped steps.
    let cfg = config(&base, &d.path().join("skip"), &[&extra[..], &["training.on_nonfinite=skip"]].concat());
    run(&cfg, RunOptions::default()).unwrap();
    let m = metrics(&d.path().join("skip"));
    assert_eq!(m.last().unwrap()["skipped_steps"], 6);
}

#[test]
fn multi_stage_runs_chain_models() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("stages");
    let cfg = config(
        &base,
        &out,
        &["stages=[{name: s1, training: {max_steps: 2}}, {name: s2, data: {train: [medical_qa_alpaca]}, training: {max_steps: 2, lr: 1.0e-3}}]"],
    );
    let o = run(&cfg, RunOptions::default()).unwrap();
    assert_eq!(o.final_model, out.join("s2/final"));
    let s2: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(out.join("s2/config.yaml")).unwrap()).unwrap();
    assert_eq!(s2["model"].as_str().unwrap(), out.join("s1/final").to_str().unwrap());
    assert!(out.join("s1/final/model.safetensors").exists() && out.join("s2/final/model.safetensors").exists());
}

/// Issue 13.2: resident memory stays flat over a 50-step CPU SFT. Before the fix every step's
/// graph stayed alive through AdamW's moments (about 100 MB more per step for this config, and a
/// slower step each time). Run as its own process so that `memory_mb` (its resident set) is
/// not shared with the other tests of this binary.
#[test]
fn cpu_sft_memory_stays_flat_over_50_steps() {
    const BOUND_MB: f64 = 100.0;
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("flat");
    let cfg = d.path().join("sft.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model: {base:?}\noutput_dir: {out:?}\ndevice: cpu\n\
             data:\n  dataset_dir: {data:?}\n  train: [medical_dialogue]\n  cutoff_len: 256\n\
             training:\n  epochs: 10\n  max_steps: 50\n  micro_batch_size: 8\n  grad_accum: 2\n  lr: 3.0e-3\n  seed: 11\n  eval_every: 0\n  save_every: 0\n",
            data = repo().join("tasks/medical-dialogue/data"),
        ),
    )
    .unwrap();
    // One malloc arena: with glibc's per-thread arenas the resident set jumps by tens of MB at
    // whichever step a worker thread first allocates a large block, a plateau that is not a leak
    // (a 160-step run shows no trend either way) but lands in either window at random.
    let st = Command::new(env!("CARGO_BIN_EXE_medrl")).args(["sft", "--config"]).arg(&cfg).env("MALLOC_ARENA_MAX", "1").output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let lines = metrics(&out);
    let mem: Vec<(u64, f64)> = lines.iter().filter_map(|l| Some((l["step"].as_u64()?, l["memory_mb"].as_f64()?))).filter(|(s, _)| *s > 0).collect();
    assert_eq!(mem.len(), 50, "{lines:?}");
    // A leak grows with every step; the allocator's spikes come and go, and even with one arena
    // the resident set can rise once to a new plateau (a larger batch's blocks kept by the
    // heap: 105 -> 148 MB at step 14 in one CI run, flat before and after). So the test bounds
    // the trend, not the difference of two windows: the least-squares slope over steps 11-50.
    // A plateau of h MB at the worst place (the middle) gives a slope of 0.038 h per step, so a
    // one-time rise below ~65 MB passes; a leak of BOUND_MB / 40 MB per step fails (the leak
    // this guards against was about 100 MB a step).
    let tail: Vec<(f64, f64)> = mem.iter().filter(|(s, _)| *s > 10).map(|(s, m)| (*s as f64, *m)).collect();
    let n = tail.len() as f64;
    let (mx, my) = (tail.iter().map(|p| p.0).sum::<f64>() / n, tail.iter().map(|p| p.1).sum::<f64>() / n);
    let slope = tail.iter().map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / tail.iter().map(|(x, _)| (x - mx).powi(2)).sum::<f64>();
    let growth = slope * 40.0;
    assert!(growth < BOUND_MB, "resident memory trends up {slope:.2} MB a step over steps 11-50 ({growth:.0} MB over 40 steps, bound {BOUND_MB} MB): {mem:?}");
}

/// `config` without unwrapping: the validation error, if any.
fn config_error(model: &Path, out: &Path, extra: &[&str]) -> String {
    let yaml = format!("model: {model:?}\noutput_dir: {out:?}\ndata:\n  train: [x]\n");
    match medrl::config::from_tree::<SftConfig>(with_overrides(&yaml, extra), Path::new("test.yaml")) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn out_of_range_optimizer_settings_are_refused_naming_the_key() {
    let (m, o) = (Path::new("m"), Path::new("o"));
    assert_eq!(config_error(m, o, &[]), "");
    for (arg, key) in [
        ("training.optimizer.beta1=1.5", "training.optimizer.beta1"),
        ("training.optimizer.beta1=1.0", "training.optimizer.beta1"),
        ("training.optimizer.beta2=1.0", "training.optimizer.beta2"),
        ("training.optimizer.eps=-1", "training.optimizer.eps"),
        ("training.optimizer.max_grad_norm=-5", "training.optimizer.max_grad_norm"),
        ("training.optimizer.weight_decay=-3", "training.optimizer.weight_decay"),
        ("training.min_lr_ratio=7", "training.min_lr_ratio"),
        ("training.lr=.nan", "training.lr"),
        ("device=tpu", "device"),
        ("dtype=f64", "dtype"),
    ] {
        let e = config_error(m, o, &[arg]);
        assert!(e.contains("test.yaml") && e.contains(&format!("key `{key}`")), "{arg}: {e}");
    }
    // 0 is the documented "no clipping".
    assert_eq!(config_error(m, o, &["training.optimizer.max_grad_norm=0"]), "");
}

#[test]
fn an_update_to_nonfinite_weights_stops_the_run_and_no_checkpoint_holds_them() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("run");
    let mut cfg = config(&base, &out, &["training.max_steps=3", "training.save_every=1"]);
    // What validation refuses (beta1 = 1 divides by a zero bias correction), set behind its back:
    // the optimizer's own check must still stop the run before anything is saved.
    cfg.0.training.optimizer.beta1 = 1.0;
    let e = run(&cfg, RunOptions::default()).unwrap_err().to_string();
    // The first parameter by name (all are NaN), so the message names a real tensor.
    assert!(e.contains("step 1") && e.contains("made parameter `lm_head.weight`") && e.contains("last checkpoint is intact"), "{e}");
    assert!(medrl::train::checkpoint::list(&out).is_empty(), "a checkpoint with NaN weights was written");
    assert!(!out.join("final").exists());
}

/// Replace one tensor of a safetensors file with NaNs.
fn poison(file: &Path, tensor: &str) {
    let mut t = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    let (shape, dtype) = (t[tensor].shape().clone(), t[tensor].dtype());
    let nan = (Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap() * f64::NAN).unwrap().to_dtype(dtype).unwrap();
    t.insert(tensor.into(), nan);
    candle_core::safetensors::save(&t, file).unwrap();
}

#[test]
fn export_and_generate_refuse_nonfinite_weights_naming_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("run");
    run(&config(&base, &out, &["training.max_steps=1"]), RunOptions::default()).unwrap();
    let medrl = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_medrl")).args(args).output().unwrap();
    // A checkpoint written by an older medrl with NaN weights.
    let tensor = "model.layers.1.mlp.up_proj.weight";
    poison(&medrl::train::checkpoint::latest(&out).unwrap().join("trainable.safetensors"), tensor);
    let exported = d.path().join("exported");
    let r = medrl(&["export", "--run", out.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains(tensor) && err.contains("trainable.safetensors") && err.contains("NaN"), "{err}");
    assert!(!exported.join("model.safetensors").exists());
    // A model folder with NaN weights: no silent empty output.
    poison(&out.join("final/model.safetensors"), tensor);
    let r = medrl(&["generate", "--model", out.join("final").to_str().unwrap(), "--prompt", "I have a fever."]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains(tensor) && err.contains("NaN"), "{err}");
}

#[test]
fn resume_removes_stale_temporaries_and_falls_back_past_an_unreadable_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let extra = ["training.max_steps=6", "training.save_every=2", "training.keep_last=0"];
    let a = d.path().join("a");
    run(&config(&base, &a, &extra), RunOptions::default()).unwrap();
    let b = d.path().join("b");
    let cfg = config(&base, &b, &extra);
    run(&cfg, RunOptions { resume: false, stop_after: Some(4) }).unwrap();
    // What `kill -9` during a checkpoint write and during the final export leaves (the PID may
    // even be alive again by now: containers reuse them), and a newest checkpoint whose
    // weights file was cut short.
    let stale = [b.join("checkpoints/.step-00000006.tmp-4242"), b.join(format!("final/.model.safetensors.tmp-{}", std::process::id())), b.join(".metrics.jsonl.tmp-4242")];
    std::fs::create_dir_all(&stale[0]).unwrap();
    std::fs::write(stale[0].join("trainable.safetensors"), b"partial").unwrap();
    std::fs::create_dir_all(b.join("final")).unwrap();
    std::fs::write(&stale[1], b"partial").unwrap();
    std::fs::write(&stale[2], b"partial").unwrap();
    let newest = b.join("checkpoints/step-00000004");
    let w = newest.join("trainable.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&cfg, RunOptions { resume: true, stop_after: None }).unwrap();
    assert_eq!(o.steps, 6);
    for p in &stale {
        assert!(!p.exists(), "{} was left behind", p.display());
    }
    // The bad checkpoint is kept aside, not lost; the run went on from step 2 exactly.
    assert!(b.join("checkpoints/step-00000004.unreadable/trainable.safetensors").exists());
    let steps: Vec<u64> = medrl::train::checkpoint::list(&b).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![2, 4, 6]);
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "loss", "grad_norm", "eval_loss"] {
            assert_eq!(x.get(k), y.get(k), "{k} differs: {x} vs {y}");
        }
    }
}

#[test]
fn a_second_run_into_a_locked_folder_fails_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("run");
    let cfg = config(&base, &out, &["training.max_steps=1"]);
    let held = medrl::train::run_dir::RunLock::acquire(&out).unwrap();
    let e = run(&cfg, RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("in use by another run") && e.contains(&format!("pid {}", std::process::id())) && e.contains("command: "), "{e}");
    assert!(!out.join("metrics.jsonl").exists() && !out.join("config.yaml").exists(), "the refused run wrote into the folder");
    drop(held);
    run(&cfg, RunOptions::default()).unwrap();
    assert_eq!(metrics(&out).iter().filter(|r| r.get("loss").is_some()).count(), 1, "one step, written once");
}

#[test]
fn cli_override_and_device_errors_name_the_override_and_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.yaml");
    std::fs::write(&cfg, "model: m\noutput_dir: o\ndata: {train: [x]}\ntraining: {lr: 1.0e-5}\n").unwrap();
    let sft = |extra: &[&str]| {
        let r = Command::new(env!("CARGO_BIN_EXE_medrl")).args(["sft", "--config", cfg.to_str().unwrap()]).args(extra).output().unwrap();
        assert!(!r.status.success());
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let e = sft(&["training.lr=-1"]);
    assert!(e.contains("override `training.lr=-1`") && e.contains("key `training.lr`"), "{e}");
    let e = sft(&["training.optimizer.beta1=1.5"]);
    assert!(e.contains("override `training.optimizer.beta1=1.5`") && e.contains("[0, 1)"), "{e}");
    let e = sft(&["device=tpu"]);
    assert!(e.contains("key `device`") && e.contains("tpu"), "{e}");
    // The file's own mistake is still the file's.
    std::fs::write(&cfg, "model: m\noutput_dir: o\ndata: {train: [x]}\ndtype: f64\n").unwrap();
    let e = sft(&[]);
    assert!(e.contains("run.yaml") && e.contains("key `dtype`") && !e.contains("override"), "{e}");
}

#[test]
fn a_run_resumed_after_its_last_step_reports_its_losses() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path());
    let out = d.path().join("run");
    let cfg = config(&base, &out, &["training.max_steps=4", "training.save_every=2"]);
    let full = run(&cfg, RunOptions::default()).unwrap();
    let again = run(&cfg, RunOptions { resume: true, stop_after: None }).unwrap();
    assert_eq!(again.steps, 4);
    let close = |a: Option<f64>, b: Option<f64>| matches!((a, b), (Some(a), Some(b)) if (a - b).abs() <= 1e-12 * a.abs().max(1.0));
    assert!(close(full.first_loss, again.first_loss) && close(full.last_loss, again.last_loss), "{full:?} vs {again:?}");
    assert!(close(full.eval_loss_before, again.eval_loss_before) && close(full.eval_loss_after, again.eval_loss_after), "{full:?} vs {again:?}");
}

/// A Python that imports `module` (scripts/setup.sh installs the reference packages in
/// .venv-ref/); missing: a loud skip, or a failure when `MEDRL_REQUIRE_PYREF=1` (CI sets it).
fn python_with(module: &str) -> Option<String> {
    let candidates = [std::env::var("MEDRL_PYREF_PYTHON").ok(), Some(repo().join(".venv-ref/bin/python").display().to_string()), Some("python3".into())];
    for py in candidates.into_iter().flatten() {
        if Command::new(&py).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success()) {
            return Some(py);
        }
    }
    let msg = format!("no Python with `{module}`; run scripts/setup.sh or set MEDRL_PYREF_PYTHON");
    if std::env::var("MEDRL_REQUIRE_PYREF").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {msg} !!!!!!!!\n");
    None
}

/// `medrl bench sft` (the size ladder's command) runs full, LoRA and QLoRA with and without
/// activation checkpointing; checkpointing leaves the losses unchanged; the seeds' shapes are
/// known; bad flags are named.
#[test]
fn bench_sft_runs_every_mode_and_checkpointing_leaves_losses_unchanged() {
    let run = |args: &[&str]| -> Result<serde_json::Value, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_medrl")).args(["bench", "sft", "--shape", "tiny", "--device", "cpu", "--dtype", "f32", "--seq", "16", "--micro-batch", "2", "--steps", "2", "--warmup", "0"]).args(args).output().unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    };
    for mode in ["full", "lora", "qlora"] {
        let off = run(&["--mode", mode]).unwrap();
        let on = run(&["--mode", mode, "--checkpointing", "every_layer"]).unwrap();
        assert_eq!(off["losses"], on["losses"], "{mode}");
        assert_eq!((on["mode"].as_str(), on["checkpointing"].as_str()), (Some(mode), Some("every_layer")));
        let trainable = on["trainable_parameters"].as_u64().unwrap();
        assert!(if mode == "full" { trainable == on["parameters"].as_u64().unwrap() } else { trainable < on["parameters"].as_u64().unwrap() / 2 }, "{on}");
    }
    for shape in ["qwen2.5-3b", "llama-3-8b", "qwen3-32b"] {
        let cfg = medrl::model::ModelConfig::from_json(medrl::cli::bench::shape_config(shape).unwrap(), Path::new(shape)).unwrap();
        let billions = cfg.num_parameters() as f64 / 1e9;
        let want = match shape {
            "qwen2.5-3b" => 3.09,
            "llama-3-8b" => 8.03,
            _ => 32.76,
        };
        assert!((billions - want).abs() < 0.02 * want, "{shape}: {billions:.2}B parameters");
    }
    // The lean optimizer: 8-bit moments take about a quarter of f32's (the tiny shape's
    // embeddings, half its parameters, keep f32 moments).
    let f32s = run(&["--mode", "full"]).unwrap();
    let lean = run(&["--mode", "full", "--optimizer-state", "int8", "--master", "bf16"]).unwrap();
    let (a, b) = (f32s["optimizer_state_mb"].as_f64().unwrap(), lean["optimizer_state_mb"].as_f64().unwrap());
    assert!(b < 0.6 * a && b > 0.0, "optimizer state {a} MiB f32, {b} MiB int8");
    assert_eq!((lean["optimizer_state"].as_str(), lean["master_weights"].as_str()), (Some("int8"), Some("bf16")));
    // The agreement bench runs end to end (here the CPU against itself: every count 0).
    let out = Command::new(env!("CARGO_BIN_EXE_medrl")).args(["bench", "optim-agreement", "--device", "cpu", "--steps", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["checks"].as_object().unwrap().len(), 3, "{r}");
    for (combo, paths) in r["checks"].as_object().unwrap() {
        assert_eq!(paths["lean"]["weights_differing"], 0, "{combo}");
        assert!(paths["lean"]["weights"].as_u64().unwrap() > 0, "{combo}");
    }
    let e = run(&["--optimizer-state", "int4"]).unwrap_err();
    assert!(e.contains("--optimizer-state") && e.contains("int4"), "{e}");
    let e = run(&["--mode", "qlora4"]).unwrap_err();
    assert!(e.contains("--mode") && e.contains("qlora"), "{e}");
    let e = run(&["--checkpointing", "0"]).unwrap_err();
    assert!(e.contains("--checkpointing"), "{e}");
}
