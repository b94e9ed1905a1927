//! medrl: post-training clinical language models in one Rust program.
//!
//! Layers, bottom up (see ARCHITECTURE.md):
//! - [`ops`]: differentiable tensor ops (each with a finite-difference gradient check);
//! - [`model`]: Llama / Qwen2 / Qwen3 decoders, HF model folders, KV cache, random init;
//! - [`tokenizer`]: `tokenizer.json`, chat templates, generation defaults;
//! - [`generate`]: batched sampling with a KV cache;
//! - [`gguf`]: GGUF import (llama architecture) into Hugging Face folders;
//! - [`data`]: datasets (JSON/JSONL/Parquet; alpaca, sharegpt, VERL), loss masks, batching;
//! - [`config`]: typed YAML run configurations with command-line overrides;
//! - [`eval`]: evaluation metrics (BLEU, ROUGE, survival, accuracy), each matching a reference package;
//! - [`train`]: optimizer (AdamW, f32 master weights, clipping), LR schedules, losses;
//! - [`judge`]: the plugins' `judge` capability backed by a loaded model (classifier or causal LM);
//! - [`plugin`]: the WebAssembly plugin host (wasmtime, component model, sandbox, policies);
//! - [`search`]: study search backends of the `search` capability (tantivy index, PubMed);
//! - [`task`]: task bundles (`tasks/<name>/task.yaml`): datasets, prompts, rewards, metrics;
//! - [`cli`]: the `medrl` command line (the only place that uses `anyhow`);
//! - [`progress`]: logging and progress bars shared by every long-running command.

pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod judge;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod plot;
pub mod plugin;
pub mod progress;
pub mod search;
pub mod task;
pub mod tokenizer;
pub mod train;
