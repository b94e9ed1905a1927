//! medrl: post-training clinical language models in one Rust program.
//!
//! This crate is the `medrl` command line ([`cli`]); everything else lives in the layer crates
//! under `core/crates/`, re-exported here under their module names so that tools and tests
//! reach the whole library through one path. Layers, bottom up (see ARCHITECTURE.md):
//! - medrl-base: [`config`], [`fsutil`], [`plot`], [`progress`];
//! - medrl-nn: [`ops`], [`kernels`], [`infer`], [`device`];
//! - medrl-lm: [`tokenizer`], [`model`], [`engine`], [`generate`], [`gguf`];
//! - medrl-data: [`data`];
//! - medrl-plugin: [`plugin`] (the WebAssembly host);
//! - medrl-search: [`search`] (study search backends);
//! - medrl-reward: [`reward`], [`judge`];
//! - medrl-task: [`task`];
//! - medrl-eval: [`eval`];
//! - medrl-train: [`train`];
//! - medrl-serve: [`serve`] (the OpenAI-compatible server and its load generator);
//! - this crate: [`cli`] (the only place that uses `anyhow`).

pub mod cli;

pub use medrl_base::{config, fsutil, plot, progress};
pub use medrl_data as data;
pub use medrl_eval as eval;
pub use medrl_lm::{engine, generate, gguf, model, tokenizer};
pub use medrl_nn::{device, infer, kernels, ops, quant};
pub use medrl_plugin as plugin;
pub use medrl_reward as reward;
pub use medrl_reward::judge;
pub use medrl_search as search;
pub use medrl_task as task;
pub use medrl_serve as serve;
pub use medrl_train as train;
