//! PPO integration tests (CPU): a few steps on a tiny model with a real reward plugin, exact
//! resume (critic included), hostile plugins under the drop and score policies, GRPO fed by a
//! task bundle, and every shipped config parsing and validating.

use medrl::train::grpo::{self, GrpoConfig};
use medrl::train::ppo::{self, PpoConfig};
use medrl::train::sft::RunOptions;
use std::path::Path;

mod common;
use common::{assert_same_curve, assert_same_step, dialogue_reward, first_step, metrics, repo, tiny_model, wasm, with_overrides};

fn ppo_config(model: &Path, out: &Path, rewards: &str, extra: &[&str]) -> PpoConfig {
    let yaml = format!(
        "model: {model:?}\noutput_dir: {out:?}\ndevice: cpu\n\
         data:\n  dataset_dir: {data:?}\n  train: [medical_dialogue]\n  eval: [medical_dialogue_eval]\n  eval_limit: 2\n\
         rewards: {rewards}\n\
         rollout: {{temperature: 1.0, max_new_tokens: 10}}\n\
         algorithm: {{n: 2, prompts_per_step: 2, micro_batch_size: 2, update_epochs: 2, mini_batches: 2, kl_coef: 0.05, lam: 0.95}}\n\
         critic: {{head_init_std: 0.02}}\n\
         training: {{max_steps: 4, lr: 1.0e-3, seed: 3, save_every: 2}}\n",
        data = repo().join("tasks/medical-dialogue/data"),
    );
    medrl::config::from_tree(with_overrides(&yaml, extra), Path::new("ppo.yaml")).unwrap()
}

#[test]
fn ppo_trains_with_a_plugin_reward_and_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let a = d.path().join("a");
    let o = ppo::run(&ppo_config(&base, &a, &dialogue_reward(), &[]), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 4);
    assert!(o.validation_before.is_some() && o.validation_after.is_some());
    let m = metrics(&a);
    let steps: Vec<&serde_json::Value> = m.iter().filter(|r| r.get("reward").is_some()).collect();
    assert_eq!(steps.len(), 4);
    for r in &steps {
        for k in [
            "loss", "policy_loss", "value_loss", "kl", "entropy", "clip_frac", "value_clip_frac", "explained_variance", "returns_mean", "values_mean", "grad_norm", "critic_grad_norm",
            "response_len", "time_generate_s", "time_logprob_s", "time_reward_s", "time_update_s", "rollout_tokens_per_s", "reward/dialogue-quality",
        ] {
            assert!(r.get(k).is_some_and(|v| !v.is_null()), "{k} missing in {r}");
        }
        assert!(r["entropy"].as_f64().unwrap() > 0.0 && r["value_loss"].as_f64().unwrap() > 0.0, "{r}");
    }
    // The first step's rollout is from the starting policy, so its KL is exactly 0; later steps
    // have moved away from the reference.
    assert_eq!(steps[0]["kl"].as_f64().unwrap(), 0.0);
    assert!(steps[3]["kl"].as_f64().unwrap().abs() > 0.0, "{}", steps[3]);
    // Several epochs over the same rollouts move the ratio away from 1: something gets clipped.
    assert!(steps.iter().any(|r| r["clip_frac"].as_f64().unwrap() > 0.0 || r["value_clip_frac"].as_f64().unwrap() > 0.0));
    assert!(a.join("final/model.safetensors").exists() && a.join("plots/value.svg").exists() && a.join("plots/reward.svg").exists());
    assert!(a.join("final_critic/model.safetensors").exists() && a.join("final_critic/value_head.safetensors").exists());
    let ck = medrl::train::checkpoint::load(&medrl::train::checkpoint::latest(&a).unwrap(), &candle_core::Device::Cpu).unwrap();
    assert!(ck.trainable.contains_key("critic/v_head.weight") && ck.optimizer.contains_key("critic/v_head.weight.exp_avg"));

    // Interrupted after step 3 (last checkpoint: step 2), then resumed: the same curve.
    let b = d.path().join("b");
    let cfg_b = ppo_config(&base, &b, &dialogue_reward(), &[]);
    ppo::run(&cfg_b, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    let ob = ppo::run(&cfg_b, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
    // Validation before training ran in the first invocation: reported from the run's records.
    let (x, y) = (o.validation_before.as_ref().unwrap(), ob.validation_before.as_ref().expect("validation_before after resume"));
    assert!((x.mean_reward - y.mean_reward).abs() < 1e-12 && x.scored == y.scored, "{x:?} vs {y:?}");
    assert!(ob.validation_after.is_some());
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "reward", "loss", "value_loss", "kl", "grad_norm", "critic_grad_norm", "explained_variance", "values_mean", "response_len", "val_reward"] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
    }
    // Resuming with another config is refused.
    let e = ppo::run(&ppo_config(&base, &b, &dialogue_reward(), &["algorithm.vf_coef=0.5"]), Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap_err().to_string();
    assert!(e.contains("different run config"), "{e}");
}

/// Issue 21: PPO with `async: true`. Step 1 is on-policy (the synchronous run's, values
/// included: the critic's pass runs after the previous update, as synchronously); an
/// interrupted and resumed asynchronous run retraces the uninterrupted one, critic included.
/// Issue 18: PPO with activation checkpointing (policy and critic) takes the same steps.
#[test]
fn activation_checkpointing_leaves_ppo_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let plain = d.path().join("off");
    ppo::run(&ppo_config(&base, &plain, &dialogue_reward(), &["training.max_steps=2"]), Default::default(), &RunOptions::default()).unwrap();
    let on = d.path().join("on");
    ppo::run(&ppo_config(&base, &on, &dialogue_reward(), &["training.max_steps=2", "training.activation_checkpointing=every_layer"]), Default::default(), &RunOptions::default()).unwrap();
    assert_same_curve(&plain, &on);
    // QLoRA policy and a QLoRA critic on the same NF4 base (shared, with the reference):
    // checkpointing still changes nothing, and the KL to the reference is 0 at step 1.
    let q = ["training.max_steps=2", "lora={rank: 4, alpha: 8, dropout: 0.0, quantize: nf4}", "critic.lora={rank: 4, alpha: 8, dropout: 0.0, quantize: nf4}"];
    let (qa, qb) = (d.path().join("q-off"), d.path().join("q-on"));
    ppo::run(&ppo_config(&base, &qa, &dialogue_reward(), &q), Default::default(), &RunOptions::default()).unwrap();
    ppo::run(&ppo_config(&base, &qb, &dialogue_reward(), &[&q[..], &["training.activation_checkpointing={every: 2}"]].concat()), Default::default(), &RunOptions::default()).unwrap();
    assert_same_curve(&qa, &qb);
    let first = first_step(&qa);
    assert_eq!(first["kl"].as_f64(), Some(0.0), "{first}");
    // The explicit layer backward (policy and critic, sharing the NF4 base) and a token budget
    // per forward pass (dynamic batch size, rollout passes and update): step 1 (the same
    // rollouts) has the plain run's losses and gradient norms to rounding.
    for (name, variant) in [("explicit", "training.layer_backward=explicit"), ("budget", "algorithm.micro_batch_tokens=40")] {
        let out = d.path().join(format!("q-{name}"));
        let q1 = [q[1], q[2], "training.max_steps=1", variant];
        ppo::run(&ppo_config(&base, &out, &dialogue_reward(), &q1), Default::default(), &RunOptions::default()).unwrap();
        assert_same_step(&first, &first_step(&out), &["policy_loss", "value_loss", "grad_norm", "critic_grad_norm"], name);
    }
}

#[test]
fn async_ppo_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let (s, a, b) = (d.path().join("s"), d.path().join("a"), d.path().join("b"));
    ppo::run(&ppo_config(&base, &s, &dialogue_reward(), &[]), Default::default(), &RunOptions::default()).unwrap();
    let on = ["async=true"];
    ppo::run(&ppo_config(&base, &a, &dialogue_reward(), &on), Default::default(), &RunOptions::default()).unwrap();
    let cfg_b = ppo_config(&base, &b, &dialogue_reward(), &on);
    ppo::run(&cfg_b, Default::default(), &RunOptions { resume: false, stop_after: Some(3) }).unwrap();
    ppo::run(&cfg_b, Default::default(), &RunOptions { resume: true, stop_after: None }).unwrap();
    let (ms, ma, mb) = (metrics(&s), metrics(&a), metrics(&b));
    let first = |m: &[serde_json::Value]| m.iter().find(|r| r.get("reward").is_some()).cloned().unwrap();
    for k in ["reward", "values_mean", "loss", "grad_norm", "critic_grad_norm"] {
        assert_eq!(first(&ms)[k], first(&ma)[k], "step 1 {k}");
    }
    assert_eq!(ma.len(), mb.len());
    assert!(ma.iter().filter(|r| r.get("reward").is_some()).skip(1).all(|r| r["time_rollout_wait_s"].as_f64().is_some()));
    for (x, y) in ma.iter().zip(&mb) {
        for k in ["step", "reward", "loss", "value_loss", "kl", "grad_norm", "critic_grad_norm", "values_mean", "approx_kl", "response_len", "val_reward"] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
    }
}

#[test]
fn hostile_plugins_do_not_stop_ppo_under_drop_and_score_policies() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let lora = ["lora={rank: 4, alpha: 8, dropout: 0.1}", "critic.lora={rank: 4, alpha: 8, dropout: 0.0}", "training.max_steps=2", "data.eval=[]"];
    // A panicking plugin scored as 0: every sample still trains (LoRA policy and critic).
    let rewards = format!("[{{plugin: {dq:?}}}, {{plugin: {h:?}, config: {{mode: panic}}, on_failure: \"score:0\"}}]", dq = wasm("dialogue-quality"), h = wasm("hostile"));
    let out = d.path().join("score");
    let o = ppo::run(&ppo_config(&base, &out, &rewards, &lora), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 2);
    let last = metrics(&out).last().unwrap().clone();
    assert_eq!(last["dropped"], 0, "{last}");
    assert!(last["reward_failures"].as_u64().unwrap() >= 4, "{last}");
    assert!(last["grad_norm"].as_f64().is_some_and(|g| g > 0.0), "{last}");
    assert!(d.path().join("score/adapter/adapter_model.safetensors").exists());
    // An infinite loop (deadline 0.2 s) under `drop`: its samples leave the update, the run goes on.
    let rewards = format!("[{{plugin: {dq:?}}}, {{plugin: {h:?}, config: {{mode: loop}}, on_failure: drop, timeout_s: 0.2}}]", dq = wasm("dialogue-quality"), h = wasm("hostile"));
    let out = d.path().join("drop");
    let o = ppo::run(&ppo_config(&base, &out, &rewards, &lora), Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 2);
    let last = metrics(&out).last().unwrap().clone();
    assert_eq!(last["dropped"], 4, "every sample hits the looping plugin: {last}");
    assert_eq!(last["response_tokens_trained"], 0, "{last}");
    assert!(last["grad_norm"].is_null(), "nothing to train on: {last}");
}

#[test]
fn grpo_takes_prompts_rewards_and_accuracy_from_a_task() {
    wasm("sample-size"); // builds the workspace the task's bundled plugin names resolve into
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), 5);
    let out = d.path().join("grpo-task");
    let yaml = format!(
        "model: {base:?}\noutput_dir: {out:?}\ndevice: cpu\n\
         data: {{task: trialpanorama-sample-size, eval_limit: 2}}\n\
         rollout: {{max_new_tokens: 8}}\n\
         algorithm: {{n: 2, prompts_per_step: 2, micro_batch_size: 4}}\n\
         training: {{max_steps: 2, lr: 1.0e-3}}\n"
    );
    let cfg: GrpoConfig = medrl::config::from_tree(with_overrides(&yaml, &[]), Path::new("grpo.yaml")).unwrap();
    let o = grpo::run(&cfg, Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 2);
    let m = metrics(&out);
    let last = m.last().unwrap();
    // The task's reward (sample-size, its config) and its accuracy metric were used.
    assert!(last.get("reward/sample-size").is_some(), "{last}");
    assert!(last.get("reward/accuracy").is_some(), "component of the task's plugin: {last}");
    let v = o.validation_after.unwrap();
    assert_eq!(v.scored + v.dropped, 2);
    assert!(v.accuracy.is_some() && last["val_accuracy"].as_f64().is_some(), "the task's accuracy spec applies: {last}");
    // The task's system prompt is in the prompts the run saw (config.yaml keeps the task name).
    assert!(std::fs::read_to_string(out.join("config.yaml")).unwrap().contains("trialpanorama-sample-size"));
    // An explicit reward list and threshold override the task's (hostile's `ok` mode scores the
    // response length).
    let out2 = d.path().join("grpo-task-override");
    let yaml2 = yaml.replace(&format!("{out:?}"), &format!("{out2:?}")) + &format!("rewards: [{{plugin: {:?}, config: {{mode: ok}}}}]\naccuracy_threshold: 0.5\n", wasm("hostile"));
    let cfg: GrpoConfig = medrl::config::from_tree(with_overrides(&yaml2, &["training.max_steps=1"]), Path::new("grpo.yaml")).unwrap();
    grpo::run(&cfg, Default::default(), &RunOptions::default()).unwrap();
    let last = metrics(&out2).last().unwrap().clone();
    assert!(last.get("reward/hostile").is_some() && last.get("reward/sample-size").is_none(), "{last}");
    assert_eq!(last["dropped"], 0, "{last}");
    // A task whose reward needs a judge is refused without one, naming the task.
    let yaml3 = format!("model: {base:?}\noutput_dir: {:?}\ndevice: cpu\ndata: {{task: medical-o1}}\n", d.path().join("o1"));
    let cfg: PpoConfig = medrl::config::from_tree(with_overrides(&yaml3, &[]), Path::new("ppo.yaml")).unwrap();
    let e = ppo::run(&cfg, Default::default(), &RunOptions::default()).err().unwrap().to_string();
    assert!(e.contains("medical-o1") && e.contains("judge"), "{e}");
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let dir = repo().join("configs");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let files: Vec<String> = Vec::new();
        // The file name says which command runs it.
        let task = match name.split('-').next().unwrap() {
            "sft" => {
                medrl::config::load::<medrl::train::sft::SftConfig>(Some(&p), &files).unwrap_or_else(|e| panic!("{name}: {e}"));
                None
            }
            "grpo" => medrl::config::load::<GrpoConfig>(Some(&p), &files).unwrap_or_else(|e| panic!("{name}: {e}")).data.task,
            "ppo" => medrl::config::load::<PpoConfig>(Some(&p), &files).unwrap_or_else(|e| panic!("{name}: {e}")).data.task,
            "rloo" => medrl::config::load::<medrl::train::rloo::RlooConfig>(Some(&p), &files).unwrap_or_else(|e| panic!("{name}: {e}")).data.task,
            "generate" => {
                medrl::config::load::<medrl::generate::GenerateConfig>(Some(&p), &files).unwrap_or_else(|e| panic!("{name}: {e}"));
                None
            }
            other => panic!("{name}: unknown config kind {other:?} (name configs <command>-<what>.yaml)"),
        };
        if let Some(t) = task {
            medrl::task::Task::load(repo().join("tasks").join(&t)).unwrap_or_else(|e| panic!("{name}: task {t}: {e}"));
        }
        seen += 1;
    }
    assert!(seen >= 15, "only {seen} configs");
}
