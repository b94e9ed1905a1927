//! Activation checkpointing gives the same gradients as a backward through the whole graph,
//! bit for bit in f32 on CPU, for every architecture, full fine-tuning and LoRA (with dropout),
//! tied and untied heads, and any stride.

mod common;

use candle_core::DType;

use common::{batch, grads, model, trainable};
use medrl_lm::model::config::Arch;
use medrl_lm::model::ActivationCheckpointing;
use medrl_train::trainable::{Mode, Trainable};

fn check(arch: Arch, layers: usize, tie: bool, lora: bool, logits: bool) {
    let mut tr = trainable(arch, layers, tie, lora);
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
