//! Random-init model folders (`medrl model init`): tiny models for tests and the CPU
//! quickstart, with a BPE tokenizer trained on text medrl ships and a ChatML chat template.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

use super::config::{Arch, ModelConfig};
use super::transformer::CausalLm;
use super::weights::{MapSource, TensorSource};
use super::ModelError;
use crate::tokenizer::train::{train_bpe, CHATML_SPECIALS, TINY_CORPUS};

/// ChatML, as Qwen uses it, with no default system prompt.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Named model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// ~0.2M parameters: unit tests and reference checks.
    Tiny,
    /// ~3M parameters: the CPU quickstart (learns a small task in minutes on 2 cores).
    Small,
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub arch: Arch,
    pub preset: Preset,
    pub seed: u64,
    /// Standard deviation of weight matrices (HF uses 0.02).
    pub init_std: f64,
    pub vocab_size: usize,
}

impl InitOptions {
    pub fn new(arch: Arch, preset: Preset) -> Self {
        let vocab_size = match preset {
            Preset::Tiny => 512,
            Preset::Small => 2048,
        };
        Self { arch, preset, seed: 0, init_std: 0.02, vocab_size }
    }
}

/// The architecture hyper-parameters of a preset, before the vocabulary is known.
pub fn preset_config(opts: &InitOptions, vocab_size: usize, eos: u32) -> ModelConfig {
    let (hidden, inter, layers, heads, kv, head_dim) = match opts.preset {
        Preset::Tiny => (64, 128, 2, 4, 2, 16),
        Preset::Small => (192, 512, 4, 6, 2, 32),
    };
    let raw = serde_json::json!({});
    ModelConfig {
        arch: opts.arch,
        vocab_size,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 4096,
        // Cover both layouts: Llama and Qwen3 tie (as SmolLM2 and Qwen3-0.6B do), Qwen2 not.
        tie_word_embeddings: opts.arch != Arch::Qwen2,
        attention_bias: opts.arch == Arch::Qwen2,
        bos_token_id: None,
        eos_token_ids: vec![eos],
        raw,
    }
}

fn normal(rng: &mut ChaCha8Rng, n: usize, mean: f64, std: f64) -> Vec<f32> {
    // Box-Muller: deterministic across platforms for a given seed, unlike platform libm tricks.
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen::<f64>().max(1e-12);
            let u2: f64 = rng.gen::<f64>();
            (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Random weights for `cfg`. Norm weights are drawn around 1 (not exactly 1 as HF does) so that
/// reference comparisons also exercise them.
pub fn random_weights(cfg: &ModelConfig, seed: u64, std: f64) -> Result<HashMap<String, Tensor>, ModelError> {
    // In a stable order: the RNG stream depends on it.
    let shapes = cfg.tensor_shapes();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let v = if is_norm { normal(&mut rng, n, 1.0, 0.1) } else { normal(&mut rng, n, 0.0, std) };
        let t = Tensor::from_vec(v, shape, &Device::Cpu).map_err(ModelError::from_candle("random init"))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Summary of what `init_model_dir` wrote.
#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    pub arch: Arch,
    pub parameters: usize,
    pub vocab_size: usize,
}

/// Write a complete random-init model folder into `dir`.
pub fn init_model_dir(dir: &Path, opts: &InitOptions) -> Result<InitReport, ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io { path: dir.into(), source: e })?;
    let tok = train_bpe(TINY_CORPUS, opts.vocab_size, &CHATML_SPECIALS)?;
    let im_end = tok.token_to_id("<|im_end|>").expect("special token");
    let endoftext = tok.token_to_id("<|endoftext|>").expect("special token");
    // Pad the embedding table to a multiple of 64, as released checkpoints do.
    let vocab = tok.get_vocab_size(true).div_ceil(64) * 64;
    let cfg = preset_config(opts, vocab, im_end);
    let tok_path = dir.join("tokenizer.json");
    let tok_json = tok.to_string(true).map_err(|e| crate::tokenizer::TokenizerError::Encode(e.to_string()))?;
    medrl_base::fsutil::write_atomic(&tok_path, tok_json.as_bytes()).map_err(|e| ModelError::Io { path: tok_path, source: e })?;
    let tcfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHATML_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": null,
        "unk_token": null,
        "add_bos_token": false,
        "model_max_length": cfg.max_position_embeddings,
    });
    let gcfg = serde_json::json!({
        "eos_token_id": [im_end, endoftext],
        "pad_token_id": endoftext,
        "do_sample": false,
    });
    for (name, v) in [("tokenizer_config.json", &tcfg), ("generation_config.json", &gcfg)] {
        let p = dir.join(name);
        medrl_base::fsutil::write_json_atomic(&p, v).map_err(|e| ModelError::Io { path: p, source: e })?;
    }
    let weights = random_weights(&cfg, opts.seed, opts.init_std)?;
    let mut src = MapSource::new(weights, dir.join("model.safetensors"));
    let model = CausalLm::from_source(cfg.clone(), &mut src, candle_core::DType::F32, &Device::Cpu)?;
    super::save_weights(&model, dir)?;
    Ok(InitReport { arch: opts.arch, parameters: cfg.num_parameters(), vocab_size: vocab })
}

/// Random weights drawn tensor by tensor as a model is built (a [`TensorSource`]): each one on
/// `generator` (CUDA's generator draws a 32B model in seconds, where the host's Box-Muller in
/// [`random_weights`] would take many minutes and hold the whole model in f32), then cast and
/// moved to where the loader wants it. Only what the model keeps is ever held. Values follow
/// [`random_weights`]' distributions (norms around 1, the rest `N(0, std)`) but not its exact
/// stream: for benchmarks of the seeds' model sizes, not for reproducible fixtures.
pub struct RandomSource {
    generator: Device,
    seed: u64,
    std: f64,
    tied: bool,
}

impl RandomSource {
    /// Draws on `generator`, seeded with `seed` (a CUDA generator is reseeded here, so the same
    /// model comes out for the same call order; on the CPU each tensor has its own stream).
    pub fn new(cfg: &ModelConfig, generator: Device, seed: u64, std: f64) -> Result<Self, ModelError> {
        if !generator.is_cpu() {
            generator.set_seed(seed).map_err(ModelError::from_candle("seeding the device generator"))?;
        }
        Ok(Self { generator, seed, std, tied: cfg.tie_word_embeddings })
    }
}

impl TensorSource for RandomSource {
    fn get(&mut self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let (mean, std) = if name.ends_with("norm.weight") { (1.0, 0.1) } else { (0.0, self.std) };
        let t = if self.generator.is_cpu() {
            // FNV-1a of the name: a stream per tensor, independent of the order of requests.
            let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ self.seed, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
            let n = shape.iter().product();
            Tensor::from_vec(normal(&mut ChaCha8Rng::seed_from_u64(h), n, mean, std), shape, &Device::Cpu)
        } else {
            Tensor::randn(mean as f32, std as f32, shape, &self.generator)
        };
        t.and_then(|t| t.to_dtype(dtype)).and_then(|t| t.to_device(device)).map_err(ModelError::from_candle("random init"))
    }
    fn contains(&self, name: &str) -> bool {
        name != "lm_head.weight" || !self.tied
    }
    fn unused(&self) -> Vec<String> {
        Vec::new()
    }
}
