//! medrl-lm: language models, from weights on disk to generated text.
//!
//! - [`tokenizer`]: `tokenizer.json`, chat templates (minijinja), generation defaults;
//! - [`model`]: the one decoder body with a file per concern (config, transformer, LoRA, PEFT
//!   folders, sequence classifiers, weights, random init); Hugging Face model folders in and out;
//! - [`generate`]: batched sampling with a KV cache, and `medrl generate`'s configuration;
//! - [`gguf`]: GGUF import (llama architecture) into Hugging Face folders;
//! - [`engine`]: the rollout engine's paged-KV bookkeeping and continuous-batching scheduler
//!   (not yet driving generation).
//!
//! Layer 2: imports medrl-base and medrl-nn only. Module order inside: tokenizer < model <
//! generate; gguf uses tokenizer and model.

pub mod engine;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod tokenizer;
