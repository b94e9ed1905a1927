//! GRPO integration tests (CPU): a few steps on a tiny model with a real reward plugin, exact
//! resume, and hostile plugins in the reward set that must not stop training.

use medrl::train::grpo::{self, GrpoConfig};
use medrl::train::sft::RunOptions;
use std::path::Path;

mod common;
use common::{assert_same_curve, assert_same_step, dialogue_reward, first_step, metrics, repo, tiny_model, wasm, with_overrides};

/// The test run's config tree: the keys every RL algorithm shares, and an `algorithm:` section
/// GRPO and RLOO both read.
fn tree(model: &Path, out: &Path, rewards: &str, extra: &[&str]) -> serde_yaml::Value {
    let yaml = format!(
        "model: {model:?}\noutput_dir: {out:?}\ndevice: cpu\n\
         data:\n  dataset_dir: {data:?}\n  train: [medical_dialogue]\n  eval: [medical_dialogue_eval]\n  eval_limit: 4\n\
         rewards: {rewards}\n\
         rollout: {{temperature: 1.0, max_new_tokens: 12}}\n\
         algorithm: {{n: 4, prompts_per_step: 2, micro_batch_size: 4, kl_coef: 0.05}}\n\
         training: {{max_steps: 4, lr: 1.0e-3, seed: 3, save_every: 2}}\n",
        data = repo().join("tasks/medical-dialogue/data"),
    );
    with_overrides(&yaml, extra)
}

fn config(model: &Path, out: &Path, rewards: &str, extra: &[&str]) -> GrpoConfig {
    medrl::config::from_tree(tree(model, out, rewards, extra), Path::new("grpo.yaml")).unwrap()
}

#[test]
fn grpo_trains_with_a_plugin_reward_and_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let a = d.path().join("a");
    let o = grpo::run(&config(&base, &a, &dialogue_reward(), &[]), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 4);
    assert!(o.validation_before.is_some() && o.validation_after.is_some());
    let m = metrics(&a);
    let steps: Vec<&serde_json::Value> = m.iter().filter(|r| r.get("reward").is_some()).collect();
    assert_eq!(steps.len(), 4);
    for r in &steps {
        for k in ["loss", "kl", "entropy", "clip_frac", "grad_norm", "response_len", "time_generate_s", "time_reward_s", "time_update_s", "rollout_tokens_per_s", "reward/dialogue-quality"] {
            assert!(r.get(k).is_some_and(|v| !v.is_null()), "{k} missing in {r}");
        }
        assert!(r["entropy"].as_f64().unwrap() > 0.0);
    }
    assert!(a.join("final/model.safetensors").exists() && a.join("plots/reward.svg").exists());
    // Interrupted after step 3 (last checkpoint: step 2), then resumed: the same curve.
    let b = d.path().join("b");
    let cfg_b = config(&base, &b, &dialogue_reward(), &[]);
    grpo::run(&cfg_b, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    let ob = grpo::run(&cfg_b, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
    // Validation before training ran in the first invocation; the resumed one reports it from
    // the run's records, and so does one resumed after the last step (which validates nothing).
    let again = grpo::run(&cfg_b, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
    assert_eq!(again.steps, 4);
    for out in [&ob, &again] {
        for (x, y) in [(&o.validation_before, &out.validation_before), (&o.validation_after, &out.validation_after)] {
            let (x, y) = (x.as_ref().unwrap(), y.as_ref().expect("validation reported after resume"));
            let same_acc = match (x.accuracy, y.accuracy) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-12,
                (a, b) => a == b,
            };
            assert!((x.mean_reward - y.mean_reward).abs() < 1e-12 && same_acc && x.scored == y.scored, "{x:?} vs {y:?}");
        }
    }
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "reward", "loss", "kl", "grad_norm", "response_len", "val_reward"] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
    }
}

/// Issue 18: GRPO with the lean optimizer (8-bit moments, bf16 masters with stochastic
/// rounding) trains with finite losses, checkpoints 8-bit moments, and an interrupted run
/// resumed retraces the uninterrupted one.
#[test]
fn lean_optimizer_grpo_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let extra = ["training.optimizer.state=int8", "training.optimizer.master_weights=bf16"];
    let a = d.path().join("a");
    grpo::run(&config(&base, &a, &dialogue_reward(), &extra), Default::default(), &RunOptions::default()).unwrap();
    let b = d.path().join("b");
    let cfg_b = config(&base, &b, &dialogue_reward(), &extra);
    grpo::run(&cfg_b, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    let ck = medrl::train::checkpoint::list(&b).last().unwrap().1.clone();
    let opt = candle_core::safetensors::load(ck.join("optimizer.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(opt.keys().any(|k| k.ends_with(".exp_avg.codes")), "8-bit moments in the checkpoint");
    grpo::run(&cfg_b, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
    assert_same_curve(&a, &b);
    let steps: Vec<serde_json::Value> = metrics(&a).into_iter().filter(|r| r.get("reward").is_some()).collect();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|r| r["loss"].as_f64().is_some_and(f64::is_finite) && r["grad_norm"].as_f64().is_some_and(|g| g > 0.0)), "{steps:?}");
}

/// Issue 18: GRPO with activation checkpointing (every layer, every second layer under LoRA with
/// dropout, and QLoRA on an NF4 base) draws the same rollouts and takes the same steps as without.
#[test]
fn activation_checkpointing_leaves_grpo_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    for (name, extra, ckpt) in [("full", vec!["training.max_steps=2"], "every_layer"), ("lora", vec!["training.max_steps=2", "lora={rank: 4, alpha: 8, dropout: 0.1}", "training.lr=1.0e-2"], "{every: 2}"), ("qlora", vec!["training.max_steps=2", "lora={rank: 4, alpha: 8, quantize: nf4}", "training.lr=1.0e-2"], "every_layer")] {
        let plain = d.path().join(format!("{name}-off"));
        grpo::run(&config(&base, &plain, &dialogue_reward(), &extra), Default::default(), &RunOptions::default()).unwrap();
        let on = d.path().join(format!("{name}-on"));
        let key = format!("training.activation_checkpointing={ckpt}");
            let o = [&extra[..], &[key.as_str()]].concat();
        grpo::run(&config(&base, &on, &dialogue_reward(), &o), Default::default(), &RunOptions::default()).unwrap();
        assert_same_curve(&plain, &on);
        if name != "full" {
            // The KL reference is the frozen base with the adapters off (shared, NF4 blocks
            // included): at step 1 (B = 0) the policy is that model exactly.
            let first = first_step(&on);
            assert_eq!(first["kl"].as_f64(), Some(0.0), "{name}: {first}");
        }
    }
}

/// Issue 17: a token budget per forward pass (dynamic batch size) and the explicit layer
/// backward change how the step is computed, not what: step 1 (same rollouts) has the plain
/// run's reward, loss, KL and gradient norm to rounding, for full fine-tuning and LoRA.
#[test]
fn dynamic_batch_size_and_the_explicit_backward_leave_grpo_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    for (name, extra) in [("full", vec!["training.max_steps=1"]), ("lora", vec!["training.max_steps=1", "lora={rank: 4, alpha: 8, dropout: 0.0}", "training.lr=1.0e-2"])] {
        // (No LoRA dropout: its masks are drawn per forward pass, so another cut draws others.)
        let plain = d.path().join(format!("{name}-plain"));
        grpo::run(&config(&base, &plain, &dialogue_reward(), &extra), Default::default(), &RunOptions::default()).unwrap();
        let want = first_step(&plain);
        for variant in ["algorithm.micro_batch_tokens=90", "training.layer_backward=explicit"] {
            let out = d.path().join(format!("{name}-{}", variant.len()));
            let o = [&extra[..], &[variant]].concat();
            grpo::run(&config(&base, &out, &dialogue_reward(), &o), Default::default(), &RunOptions::default()).unwrap();
            assert_same_step(&want, &first_step(&out), &["loss", "kl", "grad_norm", "entropy"], &format!("{name} {variant}"));
        }
    }
    let e = medrl::config::from_tree::<GrpoConfig>(tree(&base, d.path(), &dialogue_reward(), &["algorithm.micro_batch_tokens=0"]), Path::new("bad.yaml")).unwrap_err().to_string();
    assert!(e.contains("micro_batch_tokens"), "{e}");
}

/// Issue 13.1: the quickstart's own configs (SFT, then GRPO from the same SFT model with seeds
/// 1-5) raise the held-out reward for at least 4 of 5 seeds. Validation draws the same 4 sampled
/// responses per prompt before and after (`data.eval_sampling`), so the two are comparable.
#[test]
fn quickstart_grpo_gains_on_held_out_prompts_for_most_seeds() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 0); // `medrl model init --arch qwen2 --preset tiny --seed 0`
    let data = format!("data.dataset_dir={:?}", repo().join("tasks/medical-dialogue/data"));
    let read = |name: &str| std::fs::read_to_string(repo().join("configs").join(name)).unwrap();
    let sft_out = d.path().join("sft");
    let tree = with_overrides(&read("sft-tiny-dialogue.yaml"), &[&format!("model={base:?}"), &format!("output_dir={sft_out:?}"), &data]);
    let sft_cfg: medrl::train::sft::SftConfig = medrl::config::from_tree(tree.clone(), Path::new("sft-tiny-dialogue.yaml")).unwrap();
    medrl::train::sft::run(&sft_cfg, &tree, &RunOptions::default()).unwrap();
    let mut gains = Vec::new();
    let mut before = Vec::new();
    for seed in 1..=5 {
        let extra = [
            format!("model={:?}", sft_out.join("final")),
            format!("output_dir={:?}", d.path().join(format!("grpo{seed}"))),
            data.clone(),
            format!("rewards=[{{plugin: {:?}, weight: 1.0, on_failure: drop}}]", wasm("dialogue-quality")),
            format!("training.seed={seed}"),
            "training.save_every=0".into(),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let cfg: GrpoConfig = medrl::config::from_tree(with_overrides(&read("grpo-tiny-dialogue.yaml"), &extra), Path::new("grpo-tiny-dialogue.yaml")).unwrap();
        assert_eq!(cfg.data.eval_sampling.n, 4, "the quickstart validates with sampled responses");
        let o = grpo::run(&cfg, Default::default(), &RunOptions::default()).unwrap();
        let (b, a) = (o.validation_before.unwrap(), o.validation_after.unwrap());
        assert_eq!(b.scored + b.dropped, 32 * 4);
        before.push(b.mean_reward);
        gains.push(a.mean_reward - b.mean_reward);
    }
    assert!(before.windows(2).all(|w| w[0] == w[1]), "validation before training must draw the same responses: {before:?}");
    let positive = gains.iter().filter(|g| **g > 0.0).count();
    assert!(positive >= 4, "held-out gain positive for {positive} of 5 seeds: {gains:?}");
}

#[test]
fn hostile_plugins_in_the_reward_set_do_not_stop_training() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    // A panicking plugin scored as 0, and an infinite loop (deadline 0.2 s) whose samples are dropped.
    let rewards = format!(
        "[{{plugin: {dq:?}}}, {{plugin: {h:?}, config: {{mode: panic}}, on_failure: \"score:0\"}}, \
          {{plugin: {h:?}, config: {{mode: loop}}, on_failure: drop, timeout_s: 0.2}}]",
        dq = wasm("dialogue-quality"),
        h = wasm("hostile"),
    );
    let out = d.path().join("run");
    let o = grpo::run(&config(&base, &out, &rewards, &["training.max_steps=2", "data.eval=[]"]), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 2);
    let m = metrics(&out);
    let last = m.last().unwrap();
    assert_eq!(last["dropped"], 8, "every sample hits the looping plugin: {last}");
    assert!(last["reward_failures"].as_u64().unwrap() >= 16, "{last}");
    // Under `fail`, the same hostile plugin stops the run with a typed error naming it.
    let rewards = format!("[{{plugin: {h:?}, config: {{mode: panic}}, on_failure: fail}}]", h = wasm("hostile"));
    let e = grpo::run(&config(&base, &d.path().join("fail"), &rewards, &["data.eval=[]"]), Default::default(), &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("hostile"), "{e}");
}

#[test]
fn sft_validation_scores_generations_with_the_same_eval_code() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let out = d.path().join("sft");
    let yaml = format!(
        "model: {base:?}\noutput_dir: {out:?}\ndevice: cpu\n\
         data: {{dataset_dir: {data:?}, train: [medical_dialogue], eval: [medical_dialogue_eval], cutoff_len: 256}}\n\
         training: {{max_steps: 4, micro_batch_size: 8, lr: 1.0e-2, eval_every: 2}}\n\
         validation: {{rewards: [{{plugin: {dq:?}}}], max_new_tokens: 8, limit: 4, accuracy_threshold: 0.5}}\n",
        data = repo().join("tasks/medical-dialogue/data"),
        dq = wasm("dialogue-quality"),
    );
    let tree: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let cfg: medrl::train::sft::SftConfig = medrl::config::from_tree(tree.clone(), Path::new("sft.yaml")).unwrap();
    medrl::train::sft::run(&cfg, &tree, &RunOptions::default()).unwrap();
    let m = metrics(&out);
    let vals: Vec<&serde_json::Value> = m.iter().filter(|r| r.get("val_reward").is_some()).collect();
    assert_eq!(vals.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 2, 4], "{m:?}");
    assert!(vals.iter().all(|r| r["val_reward"].as_f64().is_some_and(f64::is_finite) && r.get("val_accuracy").is_some()));
}

#[test]
fn a_second_run_into_a_locked_folder_fails_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    // Refused before the model or any plugin is loaded, so neither needs to exist.
    let cfg = config(Path::new("no-model"), &out, "[{plugin: no-plugin.wasm}]", &[]);
    let _held = medrl::train::run_dir::RunLock::acquire(&out).unwrap();
    let e = grpo::run(&cfg, Default::default(), &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("in use by another run") && e.contains(&format!("pid {}", std::process::id())), "{e}");
    assert!(!out.join("config.yaml").exists());
}

/// RLOO on the RL algorithm trait (issue 15): the shared driver trains it with a plugin reward,
/// writes its metric keys, resumes it identically, and refuses to resume a run folder another
/// algorithm wrote. Its advantages are checked against a hand computation in rl/algos/rloo.rs.
#[test]
fn rloo_trains_on_the_shared_driver_resumes_identically_and_refuses_a_grpo_folder() {
    use medrl::train::rl::RlAlgorithm;
    use medrl::train::rloo::{self, Rloo, RlooConfig};
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let cfg = |out: &Path| -> RlooConfig { medrl::config::from_tree(tree(&base, out, &dialogue_reward(), &[]), Path::new("rloo.yaml")).unwrap() };
    let a = d.path().join("a");
    let o = rloo::run(&cfg(&a), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 4);
    assert!(o.validation_before.is_some() && o.validation_after.is_some());
    let m = metrics(&a);
    let steps: Vec<&serde_json::Value> = m.iter().filter(|r| r.get("reward").is_some()).collect();
    assert_eq!(steps.len(), 4);
    for r in &steps {
        for k in Rloo::METRIC_KEYS.iter().copied().chain(["response_len", "time_update_s", "reward/dialogue-quality"]) {
            assert!(r.get(k).is_some_and(|v| !v.is_null()), "{k} missing in {r}");
        }
    }
    assert!(a.join("final/model.safetensors").exists() && a.join("plots/reward.svg").exists());
    let ck: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(medrl::train::checkpoint::latest(&a).unwrap().join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(ck["kind"], "rloo");

    // Interrupted after step 3 (last checkpoint: step 2), then resumed: the same curve.
    let b = d.path().join("b");
    rloo::run(&cfg(&b), Default::default(), &RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    rloo::run(&cfg(&b), Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "reward", "loss", "kl", "grad_norm", "response_len", "val_reward"] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
    }

    // A GRPO run cannot resume from RLOO's checkpoints, even with otherwise the same keys.
    let grpo_cfg = config(&base, &b, &dialogue_reward(), &[]);
    let e = grpo::run(&grpo_cfg, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap_err().to_string();
    assert!(e.contains("`rloo` run") && e.contains("`grpo` run"), "{e}");
}

/// Issue 21, DAPO's dynamic sampling: with rewards that always differ within a group it keeps
/// every group in one round and the run is the plain GRPO run, metric for metric; with rewards
/// that never differ (weight 0) every group is filtered, `max_rounds` prompt batches are drawn
/// per step and nothing trains; a run with it resumes identically. The GSPO/overlong settings
/// train alongside.
#[test]
fn dapo_dynamic_sampling_filters_groups_without_spread_and_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let plain = d.path().join("plain");
    grpo::run(&config(&base, &plain, &dialogue_reward(), &[]), Default::default(), &RunOptions::default()).unwrap();
    let dyn_on = ["algorithm.dynamic_sampling={max_rounds: 3}"];
    let a = d.path().join("a");
    grpo::run(&config(&base, &a, &dialogue_reward(), &dyn_on), Default::default(), &RunOptions::default()).unwrap();
    let (mp, ma) = (metrics(&plain), metrics(&a));
    assert_eq!(mp.len(), ma.len());
    for (x, y) in mp.iter().zip(&ma) {
        for k in ["step", "reward", "loss", "kl", "grad_norm", "response_len", "val_reward"] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
        if y.get("reward").is_some() {
            assert_eq!((&y["sampling_rounds"], &y["groups_kept"], &y["groups_filtered"]), (&1.into(), &2.into(), &0.into()), "{y}");
        }
    }

    let flat = format!("[{{plugin: {:?}, weight: 0.0}}]", wasm("dialogue-quality"));
    let z = d.path().join("z");
    let o = grpo::run(&config(&base, &z, &flat, &dyn_on), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 4);
    for r in metrics(&z).iter().filter(|r| r.get("reward").is_some()) {
        assert_eq!((&r["sampling_rounds"], &r["groups_kept"], &r["groups_filtered"]), (&3.into(), &0.into(), &6.into()), "{r}");
        assert_eq!(r["loss"], 0.0, "{r}");
    }
    // 4 steps x 3 rounds: 12 prompt batches drawn from the plan (the plain run: 4).
    let drawn = |dir: &Path| -> serde_json::Value {
        let ck = medrl::train::checkpoint::latest(dir).unwrap();
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(ck.join("trainer_state.json")).unwrap()).unwrap()["next_micro_batch"].clone()
    };
    assert_eq!((drawn(&z), drawn(&plain)), (12.into(), 4.into()));

    let dapo = ["algorithm.dynamic_sampling={max_rounds: 2}", "algorithm.overlong={buffer: 4}", "algorithm.ratio=sequence", "algorithm.loss_agg=seq_mean_token_mean", "rollout.max_new_tokens=3"];
    let (b, c) = (d.path().join("b"), d.path().join("c"));
    grpo::run(&config(&base, &b, &dialogue_reward(), &dapo), Default::default(), &RunOptions::default()).unwrap();
    let cfg_c = config(&base, &c, &dialogue_reward(), &dapo);
    grpo::run(&cfg_c, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    grpo::run(&cfg_c, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
    let (mb, mc) = (metrics(&b), metrics(&c));
    assert_eq!(mb.len(), mc.len());
    for (x, y) in mb.iter().zip(&mc) {
        for k in ["step", "reward", "loss", "kl", "grad_norm", "response_len", "val_reward", "sampling_rounds", "groups_kept"] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
        if x.get("reward").is_some() {
            assert!(x["loss"].as_f64().unwrap().is_finite() && x["clip_frac"].as_f64().is_some(), "{x}");
        }
    }
}

/// Issue 21: one-step asynchronous training. Step 1 is on-policy and equals the synchronous
/// run's; later steps train on rollouts drawn from the weights one update behind (positive
/// `off_policy_kl`, different rewards than the synchronous run's); the run resumes after an
/// interruption into exactly the same curve, because checkpoints keep the behavior weights.
/// The same holds with dynamic sampling (the rollout thread draws further prompt batches).
#[test]
fn async_grpo_trains_one_step_off_policy_and_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let sync = d.path().join("sync");
    grpo::run(&config(&base, &sync, &dialogue_reward(), &[]), Default::default(), &RunOptions::default()).unwrap();
    let a = d.path().join("a");
    let o = grpo::run(&config(&base, &a, &dialogue_reward(), &["async=true"]), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 4);
    assert!(a.join("final/model.safetensors").exists());
    let (ms, ma) = (metrics(&sync), metrics(&a));
    let steps = |m: &[serde_json::Value]| -> Vec<serde_json::Value> { m.iter().filter(|r| r.get("reward").is_some()).cloned().collect() };
    let (ss, sa) = (steps(&ms), steps(&ma));
    assert_eq!((ss.len(), sa.len()), (4, 4));
    // Validation before training and step 1 see the same weights and seeds.
    assert_eq!(ms[0], ma[0]);
    for k in ["reward", "response_len", "loss", "grad_norm"] {
        assert_eq!(ss[0][k], sa[0][k], "step 1 {k}: {} vs {}", ss[0], sa[0]);
    }
    for r in &ss {
        assert!(r["off_policy_kl"].as_f64().unwrap().abs() < 1e-6, "synchronous rollouts are on-policy: {r}");
        assert!(r.get("time_rollout_wait_s").is_none());
    }
    assert!(sa[0]["off_policy_kl"].as_f64().unwrap().abs() < 1e-6, "{}", sa[0]);
    for r in &sa[1..] {
        assert!(r["off_policy_kl"].as_f64().unwrap() > 1e-6, "stale rollouts: {r}");
        assert!(r["time_rollout_wait_s"].as_f64().unwrap() >= 0.0);
    }
    assert!(sa[1..].iter().zip(&ss[1..]).any(|(x, y)| x["reward"] != y["reward"] || x["response_len"] != y["response_len"]), "{sa:?} vs {ss:?}");
    // Checkpoints hold the behavior weights of the next step (none after the last).
    let cks: Vec<std::path::PathBuf> = medrl::train::checkpoint::list(&a).into_iter().map(|(_, p)| p).collect();
    let tensors = |dir: &Path| -> Vec<String> {
        let bytes = std::fs::read(dir.join("trainable.safetensors")).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect()
    };
    assert_eq!(cks.len(), 2, "{cks:?}");
    let (first, last) = (&cks[0], &cks[1]);
    assert!(tensors(first).iter().any(|n| n.starts_with("behavior/")), "{first:?}");
    assert!(!tensors(last).iter().any(|n| n.starts_with("behavior/")), "{last:?}");

    for extra in [&["async=true"][..], &["async=true", "algorithm.dynamic_sampling={max_rounds: 2}"][..]] {
        let full = d.path().join(format!("full{}", extra.len()));
        let b = d.path().join(format!("b{}", extra.len()));
        grpo::run(&config(&base, &full, &dialogue_reward(), extra), Default::default(), &RunOptions::default()).unwrap();
        let cfg_b = config(&base, &b, &dialogue_reward(), extra);
        // Interrupted after step 3 (last checkpoint: step 2), then resumed: the same curve.
        grpo::run(&cfg_b, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }).unwrap();
        grpo::run(&cfg_b, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
        let (mf, mb) = (metrics(&full), metrics(&b));
        assert_eq!(mf.len(), mb.len());
        for (x, y) in mf.iter().zip(&mb) {
            for k in ["step", "reward", "loss", "kl", "grad_norm", "response_len", "val_reward", "off_policy_kl", "groups_kept"] {
                assert_eq!(x.get(k), y.get(k), "{extra:?} {k}: {x} vs {y}");
            }
        }
        // A resumed run's prompt cursor matches the uninterrupted one's.
        let state = |dir: &Path| -> serde_json::Value {
            let ck = medrl::train::checkpoint::latest(dir).unwrap();
            let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ck.join("trainer_state.json")).unwrap()).unwrap();
            serde_json::json!([s["epoch"], s["next_micro_batch"]])
        };
        assert_eq!(state(&full), state(&b));
    }
    // A synchronous config cannot resume an asynchronous run's folder.
    let e = grpo::run(&config(&base, &a, &dialogue_reward(), &[]), Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap_err().to_string();
    assert!(e.contains("config") || e.contains("differ"), "{e}");
}

/// Issue 21: synchronous and asynchronous GRPO both resume identically after `kill -9`. The
/// CLI run is killed as soon as its first checkpoint is complete, wherever it then is (a
/// rollout thread mid-flight, a checkpoint half written); `--resume` then retraces the
/// uninterrupted run metric for metric.
#[test]
fn sync_and_async_grpo_resume_identically_after_kill_9() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    for mode in ["false", "true"] {
        let extra = [format!("async={mode}"), "training.max_steps=12".to_string()];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let full = d.path().join(format!("full-{mode}"));
        grpo::run(&config(&base, &full, &dialogue_reward(), &extra), Default::default(), &RunOptions::default()).unwrap();

        let killed = d.path().join(format!("killed-{mode}"));
        let yaml = d.path().join(format!("grpo-{mode}.yaml"));
        std::fs::write(&yaml, serde_yaml::to_string(&tree(&base, &killed, &dialogue_reward(), &extra)).unwrap()).unwrap();
        let cli = |resume: bool| {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_medrl"));
            c.arg("grpo").arg("--config").arg(&yaml).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            if resume {
                c.arg("--resume");
            }
            c
        };
        let mut child = cli(false).spawn().unwrap();
        let first = killed.join("checkpoints/step-00000002/trainer_state.json");
        let t0 = std::time::Instant::now();
        while !first.exists() {
            assert!(t0.elapsed().as_secs() < 300, "no checkpoint after 300 s");
            assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!killed.join("final/model.safetensors").exists(), "async={mode}: the run finished before the kill");
        let st = cli(true).status().unwrap();
        assert!(st.success(), "async={mode}: resume failed");
        let (mf, mk) = (metrics(&full), metrics(&killed));
        assert_eq!(mf.len(), mk.len(), "async={mode}");
        for (x, y) in mf.iter().zip(&mk) {
            for k in ["step", "reward", "loss", "kl", "grad_norm", "response_len", "val_reward", "off_policy_kl"] {
                assert_eq!(x.get(k), y.get(k), "async={mode} {k}: {x} vs {y}");
            }
        }
    }
}
