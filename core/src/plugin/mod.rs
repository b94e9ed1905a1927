//! Sandboxed WebAssembly plugins: reward functions and data adapters.
//!
//! Plugins are WebAssembly components implementing the WIT worlds in `reward-sdk/wit/v0.1`
//! (`medrl:plugin@0.1.0`). The host:
//! - compiles each component once and caches the machine code on disk (content hash + engine
//!   compatibility hash), so a restart does not pay Cranelift again;
//! - checks the plugin API version from the component's type before instantiating it;
//! - runs every call under a wall-clock deadline (epoch interruption), optional fuel, a memory
//!   cap and an output cap, with WASI denied (no files, env, network; stdio into `tracing`);
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
