//! Activation checkpointing gives the same gradients as a backward through the whole graph,
//! bit for bit in f32 on CPU, for every architecture, full fine-tuning and LoRA (with dropout),
//! tied and untied heads, and any stride.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;

use medrl_lm::model::config::Arch;
use medrl_lm::model::init::{preset_config, random_weights, InitOptions, Preset};
use medrl_lm::model::{build_attention_mask, ActivationCheckpointing, CausalLm, MapSource};
use medrl_train::trainable::{LoraConfig, Mode, Trainable};

fn model(arch: Arch, layers: usize, tie: bool) -> CausalLm {
    let mut cfg = preset_config(&InitOptions::new(arch, Preset::Tiny), 96, 1);
    cfg.num_hidden_layers = layers;
    cfg.tie_word_embeddings = tie;
    let w = random_weights(&cfg, 7, 0.2).unwrap();
    CausalLm::from_source(cfg, &mut MapSource::new(w, "<test>"), DType::F32, &Device::Cpu).unwrap()
}

struct Batch {
    ids: Tensor,
    positions: Tensor,
    mask: Tensor,
    targets: Tensor,
    weights: Tensor,
}

/// Two sequences, the second left-padded by two.
fn batch() -> Batch {
    let dev = &Device::Cpu;
    let ids: Vec<u32> = vec![5, 17, 33, 17, 90, 5, 8, 0, 0, 12, 17, 77, 5, 60];
    let targets: Vec<u32> = vec![17, 33, 17, 90, 5, 8, 9, 0, 12, 17, 77, 5, 60, 4];
    let positions: Vec<u32> = vec![0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 1, 2, 3, 4];
    let valid = vec![vec![true; 7], vec![false, false, true, true, true, true, true]];
    // Unequal token weights, so every position's gradient is distinct.
    let weights: Vec<f32> = (0..14).map(|i| if i == 7 || i == 8 { 0.0 } else { 0.5 + (i % 5) as f32 * 0.25 }).collect();
    Batch {
        ids: Tensor::from_vec(ids, (2, 7), dev).unwrap(),
        positions: Tensor::from_vec(positions, (2, 7), dev).unwrap(),
        mask: build_attention_mask(&valid, 0, 7, dev).unwrap(),
        targets: Tensor::from_vec(targets, (2, 7), dev).unwrap(),
        weights: Tensor::from_vec(weights, (2, 7), dev).unwrap(),
    }
}

/// Loss and every trainable's gradient after one backward (`logits`: through the full-logits
/// forward RL uses; otherwise the chunked target log-probabilities SFT uses).
fn grads(tr: &Trainable, logits: bool) -> (f32, HashMap<String, Vec<f32>>) {
    let b = batch();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let view = tr.view(false, Some((14, &mut rng))).unwrap();
    let lp = if logits {
        medrl_nn::ops::token_logprobs(&view.forward(&b.ids, &b.positions, Some(&b.mask)).unwrap(), &b.targets).unwrap()
    } else {
        view.target_logprobs(&b.ids, &b.positions, Some(&b.mask), &b.targets).unwrap()
    };
    let loss = (lp * &b.weights).unwrap().sum_all().unwrap().neg().unwrap();
    let g = tr.backward(&loss, &view).unwrap();
    if let Some(c) = &view.checkpointing {
        assert_eq!(c.pending(), 0, "backward consumes every recorded forward");
    }
    let out = tr
        .params()
        .iter()
        .map(|(n, v)| {
            let g = g.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {n}"));
            (n.clone(), g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), out)
}

fn check(arch: Arch, layers: usize, tie: bool, lora: bool, logits: bool) {
    let mode = || if lora { Mode::Lora { cfg: LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, modules_to_save: vec!["embed_tokens".into()], ..Default::default() }, targets: LoraConfig::default().targets().unwrap() } } else { Mode::Full };
    let mut tr = Trainable::new(model(arch, layers, tie), mode(), DType::F32, 11).unwrap();
    if lora {
        // Nonzero B, so the adapters' A matrices get gradients too.
        let state: HashMap<String, Tensor> = tr.state().into_iter().map(|(n, t)| if n.contains("lora_B") { let s = t.dims().to_vec(); (n, Tensor::full(0.05f32, s, &Device::Cpu).unwrap()) } else { (n, t.copy().unwrap()) }).collect();
        tr.load_state(&state).unwrap();
    }
    let (loss, reference) = grads(&tr, logits);
    for ckpt in [ActivationCheckpointing::EveryLayer, ActivationCheckpointing::Every(2), ActivationCheckpointing::Every(3)] {
        tr.checkpointing = ckpt;
        let (l, g) = grads(&tr, logits);
        assert_eq!(l.to_bits(), loss.to_bits(), "{arch:?} {ckpt:?}: loss");
        for (name, want) in &reference {
            let got = &g[name];
            let diff = want.iter().zip(got).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 0, "{arch:?} layers {layers} tie {tie} lora {lora} {ckpt:?}: {name}: {diff} of {} gradient values differ", want.len());
            assert!(want.iter().any(|v| *v != 0.0), "{name}: gradient is all zero, the test checks nothing");
        }
    }
}

#[test]
fn full_fine_tuning_gradients_are_bit_identical() {
    check(Arch::Llama, 4, true, false, false);
    check(Arch::Qwen2, 4, false, false, true);
    check(Arch::Qwen3, 3, true, false, false);
}

#[test]
fn lora_gradients_with_dropout_are_bit_identical() {
    check(Arch::Llama, 4, true, true, true);
    check(Arch::Qwen3, 2, false, true, false);
}

#[test]
fn a_forward_the_loss_ignores_contributes_nothing_and_eval_views_record_nothing() {
    let mut tr = Trainable::new(model(Arch::Llama, 2, true), Mode::Full, DType::F32, 1).unwrap();
    tr.checkpointing = ActivationCheckpointing::EveryLayer;
    let b = batch();
    let eval = tr.view(true, None).unwrap();
    assert!(eval.checkpointing.is_none(), "detached views never checkpoint");
    let view = tr.view(false, None).unwrap();
    let unused = view.target_logprobs(&b.ids, &b.positions, Some(&b.mask), &b.targets).unwrap();
    drop(unused);
    let lp = view.target_logprobs(&b.ids, &b.positions, Some(&b.mask), &b.targets).unwrap();
    assert_eq!(view.checkpointing.as_ref().unwrap().pending(), 2);
    let loss = lp.sum_all().unwrap().neg().unwrap();
    let g = tr.backward(&loss, &view).unwrap();
    assert_eq!(view.checkpointing.as_ref().unwrap().pending(), 0);
    tr.checkpointing = ActivationCheckpointing::Off;
    let plain = tr.view(false, None).unwrap();
    let lp = plain.target_logprobs(&b.ids, &b.positions, Some(&b.mask), &b.targets).unwrap();
    let want = tr.backward(&lp.sum_all().unwrap().neg().unwrap(), &plain).unwrap();
    for (n, v) in tr.params() {
        let a = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = want.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d: Vec<usize> = a.iter().zip(&w).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i).collect();
        assert!(d.is_empty(), "{n}: {} of {} differ, first {:?}: {} vs {}", d.len(), a.len(), &d[..d.len().min(5)], a[d[0]], w[d[0]]);
    }
}

#[test]
fn config_values_are_checked_and_named() {
    assert!(ActivationCheckpointing::Every(0).validate().is_err());
    let e = serde_yaml::from_str::<ActivationCheckpointing>("{every: 0}").unwrap_err().to_string();
    assert!(e.contains("at least 1"), "{e}");
    let c: ActivationCheckpointing = serde_yaml::from_str("every_layer").unwrap();
    assert_eq!(c, ActivationCheckpointing::EveryLayer);
    let c: ActivationCheckpointing = serde_yaml::from_str("{every: 2}").unwrap();
    assert_eq!(c.stride(), Some(2));
    let c: ActivationCheckpointing = serde_yaml::from_str("off").unwrap();
    assert!(c.is_off());
    assert!(serde_yaml::from_str::<ActivationCheckpointing>("sometimes").is_err());
}
