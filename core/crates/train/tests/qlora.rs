//! QLoRA: a LoRA run whose frozen base projections are NF4 blocks. The quantized model computes
//! exactly what a dense model holding the dequantized weights computes, its adapters get the same
//! gradients, and activation checkpointing composes with it.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

use medrl_lm::model::config::Arch;
use medrl_lm::model::init::{preset_config, random_weights, InitOptions, Preset};
use medrl_lm::model::{build_attention_mask, ActivationCheckpointing, CausalLm, LayerBackward, MapSource, Weight};
use medrl_train::trainable::{BaseQuant, LoraConfig, Mode, Trainable};

fn weights(arch: Arch) -> (medrl_lm::model::ModelConfig, HashMap<String, Tensor>) {
    let mut cfg = preset_config(&InitOptions::new(arch, Preset::Tiny), 96, 1);
    cfg.num_hidden_layers = 3;
    let w = random_weights(&cfg, 5, 0.2).unwrap();
    (cfg, w)
}

fn load(cfg: &medrl_lm::model::ModelConfig, w: HashMap<String, Tensor>) -> CausalLm {
    CausalLm::from_source(cfg.clone(), &mut MapSource::new(w, "<test>"), DType::F32, &Device::Cpu).unwrap()
}

fn lora(quantize: BaseQuant) -> Mode {
    let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, quantize, ..Default::default() };
    Mode::Lora { targets: cfg.targets().unwrap(), cfg }
}

/// Adapters with nonzero B (so every adapter tensor gets a gradient).
fn perturb(tr: &Trainable) {
    let state: HashMap<String, Tensor> = tr.state().into_iter().map(|(n, t)| if n.contains("lora_B") { let s = t.dims().to_vec(); (n, Tensor::full(0.03f32, s, &Device::Cpu).unwrap()) } else { (n, t.copy().unwrap()) }).collect();
    tr.load_state(&state).unwrap();
}

fn loss_and_grads(tr: &Trainable) -> (Tensor, HashMap<String, Vec<f32>>) {
    let dev = &Device::Cpu;
    let ids = Tensor::from_vec(vec![3u32, 44, 17, 9, 60, 17, 2, 81, 5, 5, 70, 12], (2, 6), dev).unwrap();
    let targets = Tensor::from_vec(vec![44u32, 17, 9, 60, 17, 2, 81, 5, 5, 70, 12, 1], (2, 6), dev).unwrap();
    let positions = Tensor::from_vec((0..12u32).map(|i| i % 6).collect::<Vec<_>>(), (2, 6), dev).unwrap();
    let mask = build_attention_mask(&vec![vec![true; 6]; 2], 0, 6, dev).unwrap();
    let view = tr.view(false, None).unwrap();
    let lp = view.target_logprobs(&ids, &positions, Some(&mask), &targets).unwrap();
    let loss = lp.sum_all().unwrap().neg().unwrap();
    let g = tr.backward(&loss, &view).unwrap();
    let grads = tr.params().iter().map(|(n, v)| (n.clone(), g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    (lp, grads)
}

#[test]
fn the_nf4_base_computes_what_its_dequantized_weights_compute() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let (cfg, w) = weights(arch);
        let q = Trainable::new(load(&cfg, w.clone()), lora(BaseQuant::Nf4), DType::F32, 3).unwrap();
        perturb(&q);
        // The same model with each projection replaced by its dequantized NF4 values, dense.
        let view = q.view(true, None).unwrap();
        let mut deq = w.clone();
        for (i, l) in view.layers.iter().enumerate() {
            for (name, lin) in [("self_attn.q_proj", &l.self_attn.q_proj), ("self_attn.k_proj", &l.self_attn.k_proj), ("self_attn.v_proj", &l.self_attn.v_proj), ("self_attn.o_proj", &l.self_attn.o_proj), ("mlp.gate_proj", &l.mlp.gate_proj), ("mlp.up_proj", &l.mlp.up_proj), ("mlp.down_proj", &l.mlp.down_proj)] {
                let Weight::Nf4(nf4) = &lin.weight else { panic!("{arch:?} layer {i} {name} is not quantized") };
                let dense = nf4.dequantize_tensor(DType::F32, &Device::Cpu).unwrap();
                let orig = &w[&format!("model.layers.{i}.{name}.weight")];
                // NF4 is lossy but close: 4 bits per value, scaled per block of 64.
                let rel = ((&dense - orig).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() / orig.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sqrt();
                assert!(rel > 0.0 && rel < 0.15, "{arch:?} {name}: relative error {rel}");
                deq.insert(format!("model.layers.{i}.{name}.weight"), dense);
            }
        }
        let d = Trainable::new(load(&cfg, deq), lora(BaseQuant::None), DType::F32, 3).unwrap();
        perturb(&d);
        let (lq, gq) = loss_and_grads(&q);
        let (ld, gd) = loss_and_grads(&d);
        let diff = (lq - ld).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{arch:?}: log-probs through NF4 differ from the dequantized dense model");
        for (n, a) in &gq {
            let b = &gd[n];
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(scale > 0.0 && err <= 1e-5 * scale, "{arch:?} {n}: gradient differs by {err} (scale {scale})");
        }
    }
}

#[test]
fn qlora_with_activation_checkpointing_gives_the_same_gradients() {
    let (cfg, w) = weights(Arch::Llama);
    let mut q = Trainable::new(load(&cfg, w), lora(BaseQuant::Nf4), DType::F32, 3).unwrap();
    perturb(&q);
    let (l0, g0) = loss_and_grads(&q);
    q.checkpointing = ActivationCheckpointing::EveryLayer;
    let (l1, g1) = loss_and_grads(&q);
    assert_eq!((l0 - l1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    for (n, a) in &g0 {
        assert!(a == &g1[n], "{n}: checkpointed QLoRA gradient differs");
    }
}

/// The explicit layer backward on an NF4 base (dequantized for the input gradient) gives
/// autograd's adapter gradients, with and without checkpointing.
#[test]
fn qlora_with_the_explicit_backward_gives_autograds_gradients() {
    for arch in [Arch::Llama, Arch::Qwen3] {
        let (cfg, w) = weights(arch);
        let mut q = Trainable::new(load(&cfg, w), lora(BaseQuant::Nf4), DType::F32, 3).unwrap();
        perturb(&q);
        q.layer_backward = LayerBackward::Autograd;
        let (l0, g0) = loss_and_grads(&q);
        q.layer_backward = LayerBackward::Explicit;
        for ckpt in [ActivationCheckpointing::Off, ActivationCheckpointing::EveryLayer] {
            q.checkpointing = ckpt;
            let (l1, g1) = loss_and_grads(&q);
            let dl = (&l0 - &l1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(dl < 1e-5, "{arch:?} {ckpt:?}: log-probs differ by {dl}");
            for (n, a) in &g0 {
                let b = &g1[n];
                let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
                let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                assert!(den > 0.0 && num / den < 1e-5, "{arch:?} {ckpt:?} {n}: relative difference {}", num / den);
            }
        }
    }
}

#[test]
fn the_quantized_base_is_about_a_quarter_of_bf16() {
    let (cfg, w) = weights(Arch::Qwen2);
    let q = Trainable::new(load(&cfg, w), lora(BaseQuant::Nf4), DType::F32, 3).unwrap();
    let view = q.view(true, None).unwrap();
    let (mut values, mut bytes) = (0usize, 0usize);
    for l in &view.layers {
        for lin in [&l.self_attn.q_proj, &l.self_attn.k_proj, &l.self_attn.v_proj, &l.self_attn.o_proj, &l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj] {
            let Weight::Nf4(nf4) = &lin.weight else { panic!("not quantized") };
            values += nf4.numel();
            bytes += nf4.bytes();
        }
    }
    let per_value = bytes as f64 / values as f64;
    // 0.5 bytes of codes + 1 byte of absmax code per 64 values + 4 bytes per 256 blocks.
    assert!((0.5..0.53).contains(&per_value), "{per_value} bytes per weight");
}

#[test]
fn quantizing_at_load_equals_quantizing_the_loaded_model() {
    use medrl_lm::model::init::{init_model_dir, InitOptions};
    use medrl_lm::model::load_model_dir_as;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("m");
    init_model_dir(&dir, &InitOptions::new(Arch::Qwen3, Preset::Tiny)).unwrap();
    let (load_dtype, nf4) = medrl_train::trainable::load_plan(Some(&LoraConfig { quantize: BaseQuant::Nf4, ..Default::default() }), DType::F32, DType::F32);
    assert_eq!((load_dtype, nf4), (DType::F32, true));
    // modules_to_save needs f32 masters: no quantization at load, f32.
    let with_saved = LoraConfig { quantize: BaseQuant::Nf4, modules_to_save: vec!["lm_head".into()], ..Default::default() };
    assert_eq!(medrl_train::trainable::load_plan(Some(&with_saved), DType::BF16, DType::F32), (DType::F32, false));
    assert_eq!(medrl_train::trainable::load_plan(None, DType::BF16, DType::F32), (DType::F32, false));
    // Full fine-tuning with bf16 masters loads straight in bf16 (no f32 copy).
    assert_eq!(medrl_train::trainable::load_plan(None, DType::BF16, DType::BF16), (DType::BF16, false));
    let at_load = Trainable::new(load_model_dir_as(&dir, &Device::Cpu, DType::F32, true).unwrap().model, lora(BaseQuant::Nf4), DType::F32, 3).unwrap();
    let after = Trainable::new(load_model_dir_as(&dir, &Device::Cpu, DType::F32, false).unwrap().model, lora(BaseQuant::Nf4), DType::F32, 3).unwrap();
    let (a, b) = (at_load.view(true, None).unwrap(), after.view(true, None).unwrap());
    for (la, lb) in a.layers.iter().zip(&b.layers) {
        for (x, y) in [(&la.self_attn.q_proj, &lb.self_attn.q_proj), (&la.mlp.down_proj, &lb.mlp.down_proj), (&la.self_attn.v_proj, &lb.self_attn.v_proj)] {
            match (&x.weight, &y.weight) {
                (Weight::Nf4(p), Weight::Nf4(q)) => assert!(p == q, "NF4 blocks differ"),
                _ => panic!("not quantized"),
            }
        }
    }
    let (l0, _) = loss_and_grads(&at_load);
    let (l1, _) = loss_and_grads(&after);
    assert_eq!((l0 - l1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}
