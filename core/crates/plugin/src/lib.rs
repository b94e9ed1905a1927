//! Sandboxed WebAssembly plugins: reward functions and data adapters.
//!
//! Plugins are WebAssembly components implementing the WIT worlds in `reward-sdk/wit/v0.2`
//! (`medrl:plugin@0.2.0`, batch-shaped: one string plus offsets per call, flat results) or
//! `reward-sdk/wit/v0.1` (`medrl:plugin@0.1.0`, a record per sample). Both are bound
//! (`bindings.rs`); 0.2.0 results are checked against their own contract and converted into the
//! 0.1.0 record types the rest of medrl uses, so callers never see the difference. The host:
//! - compiles each component once and caches the machine code on disk (content hash + engine
//!   compatibility hash), so a restart does not pay Cranelift again;
//! - checks the plugin API version from the component's type before instantiating it;
//! - checks a component's size and function sizes before compiling it, and compiles under a
//!   deadline on a worker thread it can abandon;
//! - validates and caps every manifest field before using it;
//! - runs every call under a wall-clock deadline (epoch interruption, and a WASI clock whose
//!   sleeps cannot outlast it), optional fuel, a memory cap and an output cap, with WASI denied
//!   (no files, env, network; stdio into `tracing`);
//! - checks every result in linear time: shape, component names (capped, interned), scores
//!   (finite, within `Limits::max_abs_score`);
//! - scores batches in parallel on a pool of stores, discarding a store after any trap;
//! - grants capabilities (a judge model, a search index) only when the run configures them;
//! - applies a per-plugin [`FailurePolicy`] and counts failures by kind ([`MetricsSnapshot`]).

mod bindings;
mod capability;
mod error;
mod host;
mod policy;
mod sandbox;

pub use bindings::{Capability, Manifest, Sample, ScoreResult, Scored};
pub use capability::{Grants, InMemoryIndex, InMemoryJudge, Judge, SearchHit, SearchIndex};
pub use error::{PluginError, PluginId};
pub use host::{
    default_cache_dir, sample, AdapterPlugin, HostConfig, Limits, Outcome, PluginHost,
    PluginOptions, RewardPlugin, SUPPORTED_API_VERSIONS,
};
pub use policy::{FailurePolicy, MetricsSnapshot};
