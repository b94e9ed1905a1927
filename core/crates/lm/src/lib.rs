//! medrl-lm: language models, from weights on disk to generated text.
//!
//! - [`tokenizer`]: `tokenizer.json`, chat templates (minijinja), generation defaults;
//! - [`model`]: the one decoder body with a file per concern (config, transformer, LoRA, PEFT
//!   folders, sequence classifiers, weights, random init); Hugging Face model folders in and out;
//! - [`engine`]: the rollout engine every generation goes through: paged KV cache, continuous
//!   batching, shared prompt blocks, batched sampling on the device;
//! - [`generate`]: the convenience entry points over the engine, and `medrl generate`'s
//!   configuration;
//! - [`gguf`]: GGUF import (llama architecture) into Hugging Face folders.
//!
//! Layer 2: imports medrl-base and medrl-nn only. Module order inside: tokenizer < model <
//! engine < generate; gguf uses tokenizer and model.

pub mod agent;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod tokenizer;
