//! The explicit layer backward (`training.layer_backward: explicit`) gives the gradients
//! autograd gives, through the trainer: every architecture, full fine-tuning and LoRA (with
//! dropout and `modules_to_save`), tied and untied heads, with and without activation
//! checkpointing. f32 on CPU; the two sum the same terms in different orders, so they agree to
//! rounding, not bit for bit (the layer's own finite-difference check is in medrl-lm).

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;

use medrl_lm::model::config::Arch;
use medrl_lm::model::init::{preset_config, random_weights, InitOptions, Preset};
use medrl_lm::model::{build_attention_mask, ActivationCheckpointing, CausalLm, LayerBackward, MapSource};
use medrl_train::trainable::{LoraConfig, Mode, Trainable};

fn model(arch: Arch, layers: usize, tie: bool) -> CausalLm {
    let mut cfg = preset_config(&InitOptions::new(arch, Preset::Tiny), 96, 1);
    cfg.num_hidden_layers = layers;
    cfg.tie_word_embeddings = tie;
    let w = random_weights(&cfg, 7, 0.2).unwrap();
    CausalLm::from_source(cfg, &mut MapSource::new(w, "<test>"), DType::F32, &Device::Cpu).unwrap()
}

/// Loss and every trainable's gradient after one backward of a weighted NLL over two
/// sequences (the second left-padded), through the full logits (`logits`) or the chunked
/// target log-probabilities.
fn grads(tr: &Trainable, logits: bool) -> (f32, HashMap<String, Vec<f32>>) {
    let dev = &Device::Cpu;
    let ids = Tensor::from_vec(vec![5u32, 17, 33, 17, 90, 5, 8, 0, 0, 12, 17, 77, 5, 60], (2, 7), dev).unwrap();
    let targets = Tensor::from_vec(vec![17u32, 33, 17, 90, 5, 8, 9, 0, 12, 17, 77, 5, 60, 4], (2, 7), dev).unwrap();
    let positions = Tensor::from_vec(vec![0u32, 1, 2, 3, 4, 5, 6, 0, 0, 0, 1, 2, 3, 4], (2, 7), dev).unwrap();
    let mask = build_attention_mask(&[vec![true; 7], vec![false, false, true, true, true, true, true]], 0, 7, dev).unwrap();
    let weights: Vec<f32> = (0..14).map(|i| if i == 7 || i == 8 { 0.0 } else { 0.5 + (i % 5) as f32 * 0.25 }).collect();
    let weights = Tensor::from_vec(weights, (2, 7), dev).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let view = tr.view(false, Some((14, &mut rng))).unwrap();
    let lp = if logits {
        medrl_nn::ops::token_logprobs(&view.forward(&ids, &positions, Some(&mask)).unwrap(), &targets).unwrap()
    } else {
        view.target_logprobs(&ids, &positions, Some(&mask), &targets).unwrap()
    };
    let loss = (lp * &weights).unwrap().sum_all().unwrap().neg().unwrap();
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
        let state: HashMap<String, Tensor> = tr.state().into_iter().map(|(n, t)| if n.contains("lora_B") { let s = t.dims().to_vec(); (n, Tensor::full(0.05f32, s, &Device::Cpu).unwrap()) } else { (n, t.copy().unwrap()) }).collect();
        tr.load_state(&state).unwrap();
    }
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
