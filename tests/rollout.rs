//! The rollout engine (paged KV cache, continuous batching, shared prompts, batched sampling)
//! against independent references: greedy decoding by full forwards with no cache at all, and
//! the same sequences generated alone. Whatever the engine's schedule (block size, step budget,
//! cache size forcing preemption, admission order, prompt sharing), each sequence's tokens are
//! the same.

use candle_core::{Device, Tensor};
use medrl::engine::{run, run_with_stats, EngineConfig, FinishReason, Generation, StopConditions};
use medrl::generate::SamplingParams;
use medrl::model::{Arch, CausalLm, LoadedModel};
use std::path::Path;

#[path = "common/mod.rs"]
mod common;

const ARCHS: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

fn tiny(arch: Arch, dir: &Path) -> LoadedModel {
    common::peaked_tiny_model(arch, dir)
}

/// Greedy decoding with a full forward over the whole sequence for every token: no cache, no
/// batching, nothing shared with the engine but the weights.
fn naive_greedy(model: &CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let input = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward_causal(&input).unwrap().squeeze(0).unwrap();
        let last: Vec<f32> = logits.get(seq.len() - 1).unwrap().to_vec1().unwrap();
        let best = last.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b }).0;
        seq.push(best as u32);
    }
    seq[prompt.len()..].to_vec()
}

fn prompts(m: &LoadedModel) -> Vec<Vec<u32>> {
    let texts = ["What is the BCLC stage?", "Child-Pugh class A, 3 cm tumor.", "AFP 400", "Sample size for a two-arm trial with 80% power and a hazard ratio of 0.75"];
    texts.iter().map(|t| m.tokenizer.encode(t, false).unwrap()).collect()
}

/// Schedules that exercise every engine path: tiny blocks, chunked prefill, few sequences per
/// step, a cache so small that sequences are preempted and recomputed.
fn schedules() -> Vec<(&'static str, EngineConfig)> {
    let d = EngineConfig::default();
    vec![
        ("default", d),
        ("blocks of 1", EngineConfig { block_size: 1, ..d }),
        ("chunked prefill", EngineConfig { block_size: 4, max_tokens_per_step: 5, ..d }),
        ("two at a time", EngineConfig { block_size: 4, max_seqs: 2, ..d }),
        ("preempting", EngineConfig { block_size: 4, num_blocks: Some(12), ..d }),
    ]
}

fn streams(n: usize) -> Vec<u64> {
    (0..n as u64).collect()
}

fn tokens(g: &[Generation]) -> Vec<Vec<u32>> {
    g.iter().map(|g| g.tokens.clone()).collect()
}

#[test]
fn greedy_equals_full_forward_decoding_under_every_schedule() {
    for arch in ARCHS {
        let d = tempfile::tempdir().unwrap();
        let m = tiny(arch, d.path());
        let ps = prompts(&m);
        let params = SamplingParams { max_new_tokens: 10, ..Default::default() };
        let want: Vec<Vec<u32>> = ps.iter().map(|p| naive_greedy(&m.model, p, 10)).collect();
        for (name, cfg) in schedules() {
            let got = run(&m.model, &ps, &streams(ps.len()), &params, &StopConditions::default(), &cfg, None).unwrap();
            assert_eq!(tokens(&got), want, "{arch:?}, {name}");
            assert!(got.iter().all(|g| g.finish_reason == FinishReason::Length && g.logprobs.len() == 10));
        }
    }
}

#[test]
fn a_sequence_samples_the_same_whatever_the_batch_order_size_or_schedule() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Qwen2, d.path());
    let ps = prompts(&m);
    let params = SamplingParams { temperature: 1.0, top_p: 0.9, top_k: 20, repetition_penalty: 1.2, max_new_tokens: 12, seed: 5 };
    let stop = StopConditions::default();
    let base = run(&m.model, &ps, &streams(ps.len()), &params, &stop, &EngineConfig::default(), None).unwrap();
    // Reversed order, each sequence keeping its stream.
    let rev_p: Vec<Vec<u32>> = ps.iter().rev().cloned().collect();
    let rev_s: Vec<u64> = streams(ps.len()).into_iter().rev().collect();
    let rev = run(&m.model, &rev_p, &rev_s, &params, &stop, &EngineConfig::default(), None).unwrap();
    assert_eq!(tokens(&rev).into_iter().rev().collect::<Vec<_>>(), tokens(&base), "batch order changed samples");
    // Alone.
    for (i, p) in ps.iter().enumerate() {
        let alone = run(&m.model, std::slice::from_ref(p), &[i as u64], &params, &stop, &EngineConfig::default(), None).unwrap();
        assert_eq!(alone[0].tokens, base[i].tokens, "sequence {i} alone");
        for (a, b) in alone[0].logprobs.iter().zip(&base[i].logprobs) {
            assert!((a - b).abs() < 1e-4, "sequence {i}: log-prob {a} alone, {b} in the batch");
        }
    }
    // Every schedule, preemption included.
    for (name, cfg) in schedules() {
        let (got, stats) = run_with_stats(&m.model, &ps, &streams(ps.len()), &params, &stop, &cfg, None).unwrap();
        assert_eq!(tokens(&got), tokens(&base), "{name}");
        assert_eq!(name == "preempting", stats.preemptions > 0, "{name}: {stats:?}");
    }
    // A different seed changes the samples.
    let other = run(&m.model, &ps, &streams(ps.len()), &SamplingParams { seed: 6, ..params.clone() }, &stop, &EngineConfig::default(), None).unwrap();
    assert_ne!(tokens(&other), tokens(&base));
}

#[test]
fn samples_of_one_prompt_share_its_blocks_and_equal_unshared_samples() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Llama, d.path());
    let ps = prompts(&m);
    // GRPO's layout: each prompt repeated n times, each copy its own stream.
    let n = 4;
    let grouped: Vec<Vec<u32>> = ps.iter().flat_map(|p| std::iter::repeat_n(p.clone(), n)).collect();
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 9, seed: 11, ..Default::default() };
    let stop = StopConditions::default();
    for (name, cfg) in schedules() {
        let (shared, stats) = run_with_stats(&m.model, &grouped, &streams(grouped.len()), &params, &stop, &cfg, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        if stats.preemptions == 0 {
            // Without recompute each prompt is computed once: n - 1 of every n samples forked.
            assert_eq!(stats.forked, ps.len() * (n - 1), "{name}: {stats:?}");
            // Each prompt once, then every sampled token but each sequence's last.
            let want = ps.iter().map(|p| p.len()).sum::<usize>() + shared.iter().map(|g| g.tokens.len() - 1).sum::<usize>();
            assert_eq!(stats.computed_tokens, want, "{name}: {stats:?}");
        }
        assert_eq!(name == "preempting", stats.preemptions > 0, "{name}: {stats:?}");
        for (i, p) in grouped.iter().enumerate() {
            let alone = run(&m.model, std::slice::from_ref(p), &[i as u64], &params, &stop, &EngineConfig::default(), None).unwrap();
            assert_eq!(alone[0].tokens, shared[i].tokens, "{name}: sample {i}");
        }
        // The samples of one prompt differ from each other (their own streams).
        assert!(shared[..n].windows(2).any(|w| w[0].tokens != w[1].tokens), "{name}");
    }
}

#[test]
fn eos_stops_a_sequence_and_others_go_on() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Qwen3, d.path());
    let ps = prompts(&m);
    let params = SamplingParams { max_new_tokens: 10, ..Default::default() };
    let free = run(&m.model, &ps, &streams(ps.len()), &params, &StopConditions::default(), &EngineConfig::default(), None).unwrap();
    // Make sequence 1's third greedy token an end-of-sequence token.
    let eos = free[1].tokens[2];
    let stop = StopConditions { eos_token_ids: vec![eos], ..Default::default() };
    let got = run(&m.model, &ps, &streams(ps.len()), &params, &stop, &EngineConfig { block_size: 4, max_seqs: 2, ..Default::default() }, None).unwrap();
    for (g, f) in got.iter().zip(&free) {
        let cut = f.tokens.iter().position(|&t| t == eos).map(|i| i + 1).unwrap_or(f.tokens.len());
        assert_eq!(g.tokens, f.tokens[..cut]);
        let want = if cut < f.tokens.len() || f.tokens.last() == Some(&eos) { FinishReason::Eos } else { FinishReason::Length };
        assert_eq!(g.finish_reason, want);
    }
    assert_eq!(got[1].tokens.len(), 3);
}

#[test]
fn a_cache_too_small_for_one_sequence_ends_it_at_its_length_and_bad_requests_fail() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Llama, d.path());
    let p = m.tokenizer.encode("AFP 400", false).unwrap();
    let params = SamplingParams { max_new_tokens: 50, ..Default::default() };
    let cfg = EngineConfig { block_size: 4, num_blocks: Some(p.len().div_ceil(4) + 1), ..Default::default() };
    let got = run(&m.model, std::slice::from_ref(&p), &[0], &params, &StopConditions::default(), &cfg, None).unwrap();
    assert_eq!(got[0].finish_reason, FinishReason::Length);
    assert!(!got[0].tokens.is_empty() && got[0].tokens.len() < 50, "{}", got[0].tokens.len());
    assert_eq!(got[0].tokens, naive_greedy(&m.model, &p, got[0].tokens.len()));
    let err = run(&m.model, &[vec![]], &[0], &params, &StopConditions::default(), &EngineConfig::default(), None).unwrap_err();
    assert!(err.to_string().contains("prompt 0 is empty"), "{err}");
    let err = run(&m.model, &[p.clone()], &[0, 1], &params, &StopConditions::default(), &EngineConfig::default(), None).unwrap_err();
    assert!(err.to_string().contains("2 RNG streams for 1 prompts"), "{err}");
    let tiny_cache = EngineConfig { block_size: 1, num_blocks: Some(2), ..Default::default() };
    let err = run(&m.model, &[p.clone()], &[0], &params, &StopConditions::default(), &tiny_cache, None).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn bench_commands_run_through_the_engine_on_cpu() {
    let d = tempfile::tempdir().unwrap();
    tiny(Arch::Qwen2, d.path());
    let dir = d.path().to_str().unwrap();
    let run = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_medrl")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let r = run(&["bench", "rollout", "--model", dir, "--device", "cpu", "--prompts", "2", "--samples", "3", "--prompt-len", "8", "--new-tokens", "5", "--json"]);
    assert_eq!((r["prompts"].as_u64(), r["samples"].as_u64(), r["new_tokens"].as_u64()), (Some(2), Some(3), Some(5)));
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
    let r = run(&["bench", "rollout", "--model", dir, "--device", "cpu", "--latency", "--prompt-len", "8", "--new-tokens", "5", "--json"]);
    assert!(r["ms_per_token"].as_f64().unwrap() > 0.0);
    // CPU f32 against itself: every prompt identical.
    let r = run(&["bench", "engine-agreement", "--model", dir, "--device", "cpu", "--dtype", "f32", "--new-tokens", "6", "--prompt", "AFP 400"]);
    assert_eq!(r["prompts"].as_u64(), Some(9));
    assert_eq!(r["identical"].as_u64(), Some(9), "{r}");
}
