#![allow(dead_code)] // each test binary uses its own subset
//! What the gradient tests share: a tiny model, a two-sequence batch (the second left-padded)
//! and every trainable's gradient after one backward through a trainer's view.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;

use medrl_lm::model::config::Arch;
use medrl_lm::model::init::{preset_config, random_weights, InitOptions, Preset};
use medrl_lm::model::{build_attention_mask, CausalLm, MapSource};
use medrl_train::trainable::{LoraConfig, Mode, Trainable};

pub fn model(arch: Arch, layers: usize, tie: bool) -> CausalLm {
    let mut cfg = preset_config(&InitOptions::new(arch, Preset::Tiny), 96, 1);
    cfg.num_hidden_layers = layers;
    cfg.tie_word_embeddings = tie;
    let w = random_weights(&cfg, 7, 0.2).unwrap();
    CausalLm::from_source(cfg, &mut MapSource::new(w, "<test>"), DType::F32, &Device::Cpu).unwrap()
}

pub struct Batch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub mask: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
}

/// Two sequences, the second left-padded by two.
pub fn batch() -> Batch {
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
pub fn grads(tr: &Trainable, logits: bool) -> (f32, HashMap<String, Vec<f32>>) {
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

/// A trainer on [`model`]: full fine-tuning, or LoRA on every projection (rank 4, dropout 0.1,
/// embeddings trained too) with nonzero B so that the A matrices get gradients.
pub fn trainable(arch: Arch, layers: usize, tie: bool, lora: bool) -> Trainable {
    let mode = if lora { Mode::Lora { cfg: LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, modules_to_save: vec!["embed_tokens".into()], ..Default::default() }, targets: LoraConfig::default().targets().unwrap() } } else { Mode::Full };
    let tr = Trainable::new(model(arch, layers, tie), mode, DType::F32, 11).unwrap();
    if lora {
        let state: HashMap<String, Tensor> = tr.state().into_iter().map(|(n, t)| if n.contains("lora_B") { let s = t.dims().to_vec(); (n, Tensor::full(0.05f32, s, &Device::Cpu).unwrap()) } else { (n, t.copy().unwrap()) }).collect();
        tr.load_state(&state).unwrap();
    }
    tr
}
