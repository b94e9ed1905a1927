//! Engine integration tests: tiny models of each architecture are created, saved, loaded and
//! generate deterministically; cached decoding matches a full forward; bad input fails clearly;
//! logits match Hugging Face transformers (fixtures from scripts/reference/hf_reference.py).

use candle_core::{DType, Device, Tensor};
use medrl::generate::{generate, SamplingParams, StopConditions};
use medrl::model::{build_attention_mask, load_model_dir, Arch, KvCache, LoadedModel};
use medrl::tokenizer::ChatMessage;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/mod.rs"]
mod common;

const ARCHS: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

fn tiny(arch: Arch, dir: &Path) -> LoadedModel {
    common::peaked_tiny_model(arch, dir)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn medrl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_medrl")
}

#[test]
fn tiny_models_save_load_and_generate_deterministically() {
    for arch in ARCHS {
        let d = tempfile::tempdir().unwrap();
        let m = tiny(arch, d.path());
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            assert!(d.path().join(f).exists(), "{arch:?}: {f} missing");
        }
        let chat = m.tokenizer.encode_chat(&[ChatMessage::user("What is the BCLC stage?")], true).unwrap();
        let plain = m.tokenizer.encode("Child-Pugh class A, 3 cm tumor.", false).unwrap();
        let prompts = vec![chat.clone(), plain.clone()];
        let stop = StopConditions { eos_token_ids: m.generation.eos_token_ids.clone(), ..Default::default() };
        let greedy = SamplingParams { max_new_tokens: 12, ..Default::default() };
        let a = generate(&m.model, &prompts, &greedy, &stop, 0, None).unwrap();
        let b = generate(&m.model, &prompts, &greedy, &stop, 0, None).unwrap();
        assert_eq!(a[0].tokens, b[0].tokens, "{arch:?}: greedy not deterministic");
        assert!(!a[0].tokens.is_empty());
        // A prompt generates the same alone as inside a left-padded batch.
        let alone = generate(&m.model, &[plain.clone()], &greedy, &stop, 0, None).unwrap();
        assert_eq!(alone[0].tokens, a[1].tokens, "{arch:?}: batching changed greedy output");

        let sampled = SamplingParams { temperature: 1.0, top_p: 0.95, top_k: 50, max_new_tokens: 16, seed: 3, ..Default::default() };
        let s1 = generate(&m.model, &prompts, &sampled, &stop, 0, None).unwrap();
        let s2 = generate(&m.model, &prompts, &sampled, &stop, 0, None).unwrap();
        assert_eq!(s1[0].tokens, s2[0].tokens, "{arch:?}: same seed, different output");
        let other = SamplingParams { seed: 4, ..sampled.clone() };
        let s3 = generate(&m.model, &prompts, &other, &stop, 0, None).unwrap();
        assert_ne!((&s1[0].tokens, &s1[1].tokens), (&s3[0].tokens, &s3[1].tokens), "{arch:?}: seed ignored");

        // Reloading the saved folder gives bit-identical weights.
        let again = load_model_dir(d.path(), &Device::Cpu, DType::F32).unwrap();
        for ((n1, t1), (n2, t2)) in m.model.named_tensors().iter().zip(again.model.named_tensors()) {
            assert_eq!(n1, &n2);
            assert_eq!(max_abs_diff(t1, &t2), 0.0, "{arch:?}: {n1} changed on reload");
        }
    }
}

/// Large checkpoints: weights over the shard size are written as Hugging Face shards with an
/// index, load back bit for bit, and a later save in the other layout removes the stale files.
#[test]
fn sharded_saves_load_back_and_replace_each_other() {
    let d = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Llama, d.path());
    let out = d.path().join("sharded");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(d.path().join(f), out.join(f)).unwrap();
    }
    let total: usize = m.model.named_tensors().iter().map(|(_, t)| t.elem_count() * 4).sum();
    let largest = m.model.named_tensors().iter().map(|(_, t)| t.elem_count() * 4).max().unwrap();
    medrl::model::save_weights_sharded(&m.model, &out, largest).unwrap();
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total as u64));
    let files: std::collections::BTreeSet<&str> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() >= 3, "{files:?}");
    let n = files.len();
    for (k, f) in files.iter().enumerate() {
        assert_eq!(*f, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        assert!(out.join(f).exists());
    }
    assert!(!out.join("model.safetensors").exists());
    let check = |dir: &Path| {
        let again = load_model_dir(dir, &Device::Cpu, DType::F32).unwrap();
        for ((n1, t1), (n2, t2)) in m.model.named_tensors().iter().zip(again.model.named_tensors()) {
            assert_eq!(n1, &n2);
            assert_eq!(max_abs_diff(t1, &t2), 0.0, "{n1} changed through the shards");
        }
    };
    check(&out);
    // Back to one file: the shards and the index go.
    medrl::model::save_weights(&m.model, &out).unwrap();
    assert!(out.join("model.safetensors").exists() && !out.join("model.safetensors.index.json").exists());
    assert!(std::fs::read_dir(&out).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with("model-")));
    check(&out);
    // And to shards again: the single file goes (it would shadow the index).
    medrl::model::save_weights_sharded(&m.model, &out, total / 2).unwrap();
    assert!(!out.join("model.safetensors").exists() && out.join("model.safetensors.index.json").exists());
    check(&out);
}

#[test]
fn cached_decoding_matches_full_forward() {
    for arch in ARCHS {
        let d = tempfile::tempdir().unwrap();
        let m = tiny(arch, d.path());
        let ids: Vec<u32> = m.tokenizer.encode("The hazard ratio was 0.75 with a 95% confidence interval.", false).unwrap();
        let t = ids.len();
        let full = m.model.forward_causal(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
        let cfg = &m.model.cfg;
        let mut cache = KvCache::new(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, cfg.head_dim, t, DType::F32, &Device::Cpu).unwrap();
        let split = t / 2;
        let mut pieces = vec![];
        for (start, len) in [(0, split), (split, 1), (split + 1, t - split - 1)] {
            let input = Tensor::new(&ids[start..start + len], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let pos = Tensor::arange(start as u32, (start + len) as u32, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let mask = build_attention_mask(&[vec![true; start + len]], start, len, &Device::Cpu).unwrap();
            let h = m.model.forward_hidden(&input, &pos, Some(&mask), Some(&mut cache)).unwrap();
            pieces.push(m.model.lm_logits(&h).unwrap());
        }
        let inc = Tensor::cat(&pieces, 1).unwrap();
        let diff = max_abs_diff(&full, &inc);
        assert!(diff < 1e-4, "{arch:?}: cached logits differ by {diff}");
    }
}

#[test]
fn model_gradients_reach_every_parameter() {
    // The whole forward must be differentiable: every weight gets a non-zero gradient.
    let d = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Qwen3, d.path());
    let vars: Vec<(String, candle_core::Var)> = m
        .model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, candle_core::Var::from_tensor(&t).unwrap()))
        .collect();
    let map = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let mut src = medrl::model::MapSource::new(map, "vars");
    let model = medrl::model::CausalLm::from_source(m.model.cfg.clone(), &mut src, DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 17, 33, 2]], &Device::Cpu).unwrap();
    let logits = model.forward_causal(&ids).unwrap();
    let targets = Tensor::new(&[[9u32, 17, 33, 2, 40]], &Device::Cpu).unwrap();
    let loss = medrl::generate::token_logprobs(&logits, &targets).unwrap().mean_all().unwrap().neg().unwrap();
    let grads = loss.backward().unwrap();
    for (name, v) in &vars {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
    }
}

fn run_medrl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(medrl_bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn cli_init_and_generate_are_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("m");
    let dir_s = dir.to_str().unwrap();
    let (ok, _, err) = run_medrl(&["model", "init", "--arch", "qwen2", "--preset", "tiny", dir_s]);
    assert!(ok, "{err}");
    let gen = |seed: &str| {
        let (ok, out, err) = run_medrl(&[
            "generate", "--model", dir_s, "--chat", "--prompt", "Hello doctor", "--prompt", "肝癌分期",
            "--temperature", "0.8", "--top-p", "0.9", "--seed", seed, "--max-new-tokens", "10",
        ]);
        assert!(ok, "{err}");
        out
    };
    assert_eq!(gen("1"), gen("1"));
    let (ok, out, _) = run_medrl(&["schema", "generate"]);
    assert!(ok && out.contains("\"sampling\""), "{out}");
}

#[test]
fn cli_config_errors_name_key_and_file() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("gen.yaml");
    std::fs::write(&cfg, "model: nowhere\nsampling:\n  temperature: -1\n").unwrap();
    let (ok, _, err) = run_medrl(&["generate", "--config", cfg.to_str().unwrap(), "--prompt", "x"]);
    assert!(!ok);
    assert!(err.contains("gen.yaml") && err.contains("sampling.temperature"), "{err}");
    std::fs::write(&cfg, "model: nowhere\nbatchsize: 4\n").unwrap();
    let (ok, _, err) = run_medrl(&["generate", "--config", cfg.to_str().unwrap(), "--prompt", "x"]);
    assert!(!ok && err.contains("batchsize") && err.contains("gen.yaml"), "{err}");
    // Range errors from overrides name the key too.
    std::fs::write(&cfg, "model: nowhere\n").unwrap();
    let (ok, _, err) = run_medrl(&["generate", "--config", cfg.to_str().unwrap(), "--prompt", "x", "sampling.top_p=2"]);
    assert!(!ok && err.contains("top_p"), "{err}");
    // The rollout engine's settings are checked the same way.
    let (ok, _, err) = run_medrl(&["generate", "--config", cfg.to_str().unwrap(), "--prompt", "x", "engine.memory_fraction=1.5"]);
    assert!(!ok && err.contains("engine.memory_fraction") && err.contains("(0, 1]"), "{err}");
    let (ok, _, err) = run_medrl(&["generate", "--config", cfg.to_str().unwrap(), "--prompt", "x", "engine.block_sise=8"]);
    assert!(!ok && err.contains("block_sise"), "{err}");
}

/// A copy of the model folder `src` at `dst` whose config.json has `key` set to `value`.
fn with_config_key(src: &Path, dst: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    copy_dir(src, dst);
    let path = dst.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
    dst.to_path_buf()
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_model_folders_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good");
    let _ = tiny(Arch::Llama, &good);
    let load = |p: &PathBuf| load_model_dir(p, &Device::Cpu, DType::F32).err().expect("must fail").to_string();

    // Missing file.
    let missing = d.path().join("missing");
    copy_dir(&good, &missing);
    std::fs::remove_file(missing.join("model.safetensors")).unwrap();
    let e = load(&missing);
    assert!(e.contains("model.safetensors") && e.contains("missing"), "{e}");

    // Unsupported architecture.
    let arch = with_config_key(&good, &d.path().join("arch"), "model_type", "gpt_neox".into());
    let e = load(&arch);
    assert!(e.contains("config.json") && e.contains("model_type") && e.contains("gpt_neox"), "{e}");

    // A tensor of the wrong shape: the config promises a wider MLP than the weights have.
    let shape = with_config_key(&good, &d.path().join("shape"), "intermediate_size", 96.into());
    let e = load(&shape);
    assert!(e.contains("model.safetensors") && e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[96, 64]"), "{e}");

    // Truncated weights file.
    let trunc = d.path().join("trunc");
    copy_dir(&good, &trunc);
    let bytes = std::fs::read(trunc.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load(&trunc);
    assert!(e.contains("model.safetensors"), "{e}");

    // The CLI reports the same without panicking.
    let (ok, _, err) = run_medrl(&["generate", "--model", arch.to_str().unwrap(), "--prompt", "x"]);
    assert!(!ok && err.contains("gpt_neox") && !err.contains("panicked"), "{err}");
}

fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn logits_match_hugging_face_transformers() {
    for arch in ARCHS {
        let name = arch.model_type();
        let fx = fixture(&format!("hf_logits_{name}.json"));
        let d = tempfile::tempdir().unwrap();
        let m = tiny(arch, d.path());
        // Same weights as the reference run (it loaded a folder written by this same init).
        let emb_sum = m.model.embed_tokens.to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let want_sum = fx["embed_sum"].as_f64().unwrap();
        assert!((emb_sum - want_sum).abs() < 1e-3, "{name}: init changed ({emb_sum} vs {want_sum}); regenerate fixtures");
        let ids: Vec<Vec<u32>> = serde_json::from_value(fx["input_ids"].clone()).unwrap();
        let want: Vec<Vec<f32>> = serde_json::from_value(fx["logits"].clone()).unwrap();
        let input = Tensor::new(ids, &Device::Cpu).unwrap();
        let got = m.model.forward_causal(&input).unwrap().squeeze(0).unwrap();
        let want = Tensor::new(want, &Device::Cpu).unwrap();
        let diff = max_abs_diff(&got, &want);
        let scale = want.abs().unwrap().max_keepdim(1).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.1, "{name}: reference logits too small to be a meaningful check");
        assert!(diff <= 1e-4, "{name}: max |medrl - transformers| = {diff}");
    }
}

#[test]
fn chat_template_matches_transformers_apply_chat_template() {
    let fx = fixture("chat_template_tiny_chatml.json");
    let d = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Qwen2, d.path());
    for case in fx["cases"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(m.tokenizer.apply_chat_template(&msgs, agp).unwrap(), case["text"].as_str().unwrap());
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(m.tokenizer.encode_chat(&msgs, agp).unwrap(), ids);
    }
}

fn logits_of(dir: &Path, ids: &[Vec<u32>], dtype: DType) -> Tensor {
    let m = load_model_dir(dir, &Device::Cpu, dtype).unwrap();
    let input = Tensor::new(ids.to_vec(), &Device::Cpu).unwrap();
    m.model.forward_causal(&input).unwrap().squeeze(0).unwrap()
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    let fx = fixture("hf_logits_llama3scaled.json");
    let d = tempfile::tempdir().unwrap();
    let _ = tiny(Arch::Llama, d.path());
    let cfg_path = d.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    cfg["rope_theta"] = 500000.0.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(fx["input_ids"].clone()).unwrap();
    let want = Tensor::new(serde_json::from_value::<Vec<Vec<f32>>>(fx["logits"].clone()).unwrap(), &Device::Cpu).unwrap();
    let got = logits_of(d.path(), &ids, DType::F32);
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 1e-4, "llama3 rope scaling: max diff {diff}");
    // And the scaling matters: the unscaled model is measurably different.
    let plain = fixture("hf_logits_llama.json");
    let unscaled = Tensor::new(serde_json::from_value::<Vec<Vec<f32>>>(plain["logits"].clone()).unwrap(), &Device::Cpu).unwrap();
    assert!(max_abs_diff(&unscaled, &want) > 1e-3);
}

#[test]
fn half_precision_logits_track_f32() {
    let d = tempfile::tempdir().unwrap();
    let _ = tiny(Arch::Qwen3, d.path());
    let ids = vec![vec![5u32, 77, 130, 9, 250, 31, 64, 2]];
    let f32_logits = logits_of(d.path(), &ids, DType::F32);
    let norm = f32_logits.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    for (dtype, tol) in [(DType::BF16, 3e-2), (DType::F16, 5e-3)] {
        let got = logits_of(d.path(), &ids, dtype);
        let err = (&got - &f32_logits).unwrap().sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap() / norm;
        assert!(err < tol, "{dtype:?}: relative L2 error {err}");
        assert!(err > 0.0, "{dtype:?}: suspiciously exact; was the dtype applied?");
    }
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let d = tempfile::tempdir().unwrap();
    let single = d.path().join("single");
    let m = tiny(Arch::Qwen2, &single);
    let sharded = d.path().join("sharded");
    copy_dir(&single, &sharded);
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    // Two shards, split by layer, with an index as transformers writes it.
    let mut shards: [std::collections::HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in m.model.named_tensors() {
        let i = usize::from(name.contains("layers.1") || name.starts_with("lm_head"));
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        weight_map.insert(name.clone(), file.into());
        shards[i].insert(name, t);
    }
    for (i, s) in shards.iter().enumerate() {
        candle_core::safetensors::save(s, sharded.join(format!("model-0000{}-of-00002.safetensors", i + 1))).unwrap();
    }
    std::fs::write(sharded.join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string()).unwrap();
    let ids = vec![vec![3u32, 14, 15, 92, 65]];
    assert_eq!(max_abs_diff(&logits_of(&single, &ids, DType::F32), &logits_of(&sharded, &ids, DType::F32)), 0.0);
    // A shard listed in the index but absent is named in the error.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_model_dir(&sharded, &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn model_info_checks_the_weights_and_bad_dimensions_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good");
    let _ = tiny(Arch::Qwen2, &good);
    let info = |dir: &Path| run_medrl(&["model", "info", dir.to_str().unwrap()]);
    let (ok, out, err) = info(&good);
    assert!(ok && out.contains("\"weight_tensors\""), "{err}");

    // Truncated weights: named as truncated, with the file, never an empty tensor name.
    let trunc = d.path().join("trunc");
    copy_dir(&good, &trunc);
    let bytes = std::fs::read(trunc.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let (ok, _, err) = info(&trunc);
    assert!(!ok && err.contains("model.safetensors") && err.contains("truncated"), "{err}");
    let e = load_model_dir(&trunc, &Device::Cpu, DType::F32).err().expect("must fail").to_string();
    assert!(e.contains("model.safetensors") && e.contains("truncated") && !e.contains("tensor ``"), "{e}");

    // Weights that disagree with config.json.
    let shape = with_config_key(&good, &d.path().join("shape"), "intermediate_size", 96.into());
    let (ok, _, err) = info(&shape);
    assert!(!ok && err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[96, 64]"), "{err}");

    // A zero layer count is refused, naming the key, by info and by loading.
    let zero = with_config_key(&good, &d.path().join("zero"), "num_hidden_layers", 0.into());
    let (ok, _, err) = info(&zero);
    assert!(!ok && err.contains("config.json") && err.contains("num_hidden_layers"), "{err}");
    let e = load_model_dir(&zero, &Device::Cpu, DType::F32).err().expect("must fail").to_string();
    assert!(e.contains("num_hidden_layers"), "{e}");
}

#[test]
fn expected_tensors_are_what_the_model_loads() {
    for arch in ARCHS {
        let d = tempfile::tempdir().unwrap();
        let m = tiny(arch, d.path());
        let loaded: Vec<(String, Vec<usize>)> = m.model.named_tensors().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
        assert_eq!(m.model.cfg.expected_tensors(), loaded, "{arch:?}");
    }
}
