//! The explicit layer backward (`training.layer_backward: explicit`) gives the gradients
//! autograd gives, through the trainer: every architecture, full fine-tuning and LoRA (with
//! dropout and `modules_to_save`), tied and untied heads, with and without activation
//! checkpointing. f32 on CPU; the two sum the same terms in different orders, so they agree to
//! rounding, not bit for bit (the layer's own finite-difference check is in medrl-lm).

mod common;

use candle_core::Device;

use common::{grads, trainable};
use medrl_lm::model::config::Arch;
use medrl_lm::model::{ActivationCheckpointing, LayerBackward};

fn check(arch: Arch, layers: usize, tie: bool, lora: bool, logits: bool) {
    let mut tr = trainable(arch, layers, tie, lora);
    tr.layer_backward = LayerBackward::Autograd;
    let (loss, reference) = grads(&tr, logits);
    tr.layer_backward = LayerBackward::Explicit;
    for ckpt in [ActivationCheckpointing::Off, ActivationCheckpointing::EveryLayer, ActivationCheckpointing::Every(2)] {
        tr.checkpointing = ckpt;
        let (l, g) = grads(&tr, logits);
        assert!((l - loss).abs() <= 1e-6 * loss.abs(), "{arch:?} {ckpt:?}: loss {l} vs {loss}");
        for (name, want) in &reference {
            let got = &g[name];
            let num: f64 = want.iter().zip(got).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
            let den: f64 = want.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            assert!(den > 0.0, "{name}: gradient is all zero, the test checks nothing");
            assert!(num / den < 1e-5, "{arch:?} layers {layers} tie {tie} lora {lora} {ckpt:?}: {name}: relative difference {}", num / den);
        }
    }
}

#[test]
fn full_fine_tuning_gradients_equal_autograds() {
    check(Arch::Llama, 3, true, false, false);
    check(Arch::Qwen2, 3, false, false, true);
    check(Arch::Qwen3, 3, true, false, false);
}

#[test]
fn lora_gradients_with_dropout_equal_autograds() {
    check(Arch::Llama, 3, true, true, true);
    check(Arch::Qwen3, 2, false, true, false);
}

#[test]
fn auto_is_explicit_on_cuda_only_and_the_key_is_checked() {
    assert!(!LayerBackward::Auto.explicit_on(&Device::Cpu));
    assert!(LayerBackward::Explicit.explicit_on(&Device::Cpu));
    let e = serde_yaml::from_str::<LayerBackward>("fast").unwrap_err().to_string();
    assert!(e.contains("auto") && e.contains("explicit"), "{e}");
    // Off + autograd needs no driver; explicit gets one even with checkpointing off.
    assert!(ActivationCheckpointing::Off.checkpointer(LayerBackward::Autograd, &Device::Cpu).is_none());
    let c = ActivationCheckpointing::Off.checkpointer(LayerBackward::Explicit, &Device::Cpu).unwrap();
    assert!(c.explicit() && c.stride().is_none());
}

/// Packed rows (several examples in one row, positions restarting, attention block-diagonal)
/// and padded rows (one example each) give the same summed loss and the same gradients, with
/// either layer backward.
#[test]
fn packed_and_padded_batches_give_the_same_loss_and_gradients() {
    use medrl_data::batch::build_batch;
    use medrl_data::TokenizedExample;
    let examples: Vec<TokenizedExample> = [(5usize, 1u32), (9, 2), (4, 3)]
        .iter()
        .map(|&(n, s)| TokenizedExample { ids: (0..n as u32).map(|i| (i * 7 + s * 13) % 90 + 2).collect(), trained: (0..n).map(|i| i % 3 != 0).collect(), truncated: false })
        .collect();
    for lb in [LayerBackward::Autograd, LayerBackward::Explicit] {
        let mut tr = trainable(Arch::Qwen3, 2, false, false);
        tr.layer_backward = lb;
        let run = |plan: Vec<Vec<usize>>| {
            let b = build_batch(&examples, &plan, 0, &Device::Cpu).unwrap();
            let view = tr.view(false, None).unwrap();
            let lp = view.target_logprobs(&b.input_ids, &b.positions, Some(&b.attention_mask), &b.targets).unwrap();
            let loss = (lp * &b.loss_mask).unwrap().sum_all().unwrap().neg().unwrap();
            let g = tr.backward(&loss, &view).unwrap();
            let grads: Vec<Vec<f32>> = tr.params().iter().map(|(_, v)| g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
            (loss.to_scalar::<f32>().unwrap(), b.trained_tokens, grads)
        };
        let (lp, tp, gp) = run(vec![vec![0, 1, 2]]);
        let (lq, tq, gq) = run(vec![vec![0], vec![1], vec![2]]);
        assert_eq!(tp, tq, "{lb:?}: trained tokens");
        assert!((lp - lq).abs() <= 1e-5 * lq.abs(), "{lb:?}: packed loss {lp} vs padded {lq}");
        for (((name, _), a), b) in tr.params().iter().zip(&gp).zip(&gq) {
            let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
            let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
            assert!(den > 0.0 && num / den < 1e-5, "{lb:?}: {name}: relative difference {}", num / den);
        }
    }
}
