//! Sandboxed WebAssembly plugins: reward functions, data adapters and tools.
//!
//! Plugins are WebAssembly components implementing the WIT worlds in `reward-sdk/wit/v0.3`
//! (`medrl:plugin@0.3.0`: 0.2.0's worlds plus the `tool` world), `reward-sdk/wit/v0.2`
//! (`medrl:plugin@0.2.0`, batch-shaped: one string plus offsets per call, flat results) or
//! `reward-sdk/wit/v0.1` (`medrl:plugin@0.1.0`, a record per sample). All are bound
//! (`bindings.rs`); 0.2.0 and 0.3.0 results are checked against their own contract and
//! converted into the 0.1.0 record types the rest of medrl uses, so callers never see the
//! difference. A component is loaded as the kind of plugin its world says ([`World`]); a
//! reward loaded as a tool (or any other mix) is refused before it runs. The host:
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
//! - applies a per-plugin [`FailurePolicy`] and counts failures by kind ([`MetricsSnapshot`]);
//! - runs tools ([`ToolPlugin`]) for a model, from many threads at once, with their spec
//!   checked at load and their output capped (`Limits::max_tool_output_bytes`).
//!
//! # What this crate owns, and what it must not import
//!
//! medrl-plugin owns running untrusted WebAssembly: the engine, the sandbox, the limits, the
//! checks on everything a guest returns and the failure policies. It imports no other medrl
//! crate; it knows nothing of models, data or tasks. Capabilities are traits ([`Judge`],
//! [`SearchIndex`]) implemented above it (a model judge in medrl-reward, indexes in
//! medrl-search), and samples arrive as plain strings ([`Sample`], [`sample`]).
//!
//! # Modules, bottom up
//!
//! Each module uses only modules before it in this list (tests/layering.rs refuses a cycle):
//! - `error`: [`PluginError`], [`PluginId`], clipping of guest text in errors;
//! - `bindings`: host bindings generated from the WIT, one module per API version;
//! - `capability`: the capability traits and [`Grants`];
//! - `policy`: [`FailurePolicy`] (parse errors: [`ParsePolicyError`]), [`Outcome`], the failure
//!   counters ([`MetricsSnapshot`]);
//! - `limits`: [`Limits`] of every call and [`PluginOptions`] of one plugin;
//! - `sandbox`: per-store state: deny-all WASI, captured stdio, memory cap, deadline-bound
//!   clock, the host functions (log, judge, search);
//! - `version`: API version and world detection ([`SUPPORTED_API_VERSIONS`], [`World`]) and
//!   per-version world handles;
//! - `engine`: [`PluginHost`]'s wasmtime engine, linker and epoch ticker ([`HostConfig`]),
//!   pre-compile checks, the compile deadline and the on-disk compile cache;
//! - `checks`: manifest and tool-spec caps and the output contract of scoring calls;
//! - `runner`: stores, guarded calls and error classification shared by every plugin kind;
//! - `pool`: [`RewardPlugin`]: the store pool, parallel scoring, bisection of failed chunks;
//! - `adapter`: [`AdapterPlugin`];
//! - `tool`: [`ToolPlugin`] and its [`ToolSpec`]: the tool world, its store pool and output cap;
//! - `host`: `PluginHost::inspect` and [`Inspection`], for a component of any kind.

mod adapter;
mod bindings;
mod capability;
mod checks;
mod engine;
mod error;
mod host;
mod limits;
mod policy;
mod pool;
mod runner;
mod sandbox;
mod tool;
mod version;

pub use adapter::AdapterPlugin;
pub use bindings::{Capability, Manifest, Sample, ScoreResult, Scored};
pub use capability::{Grants, InMemoryIndex, InMemoryJudge, Judge, SearchHit, SearchIndex};
pub use engine::{default_cache_dir, HostConfig, PluginHost};
pub use host::Inspection;
pub use error::{PluginError, PluginId};
pub use limits::{Limits, PluginOptions};
pub use policy::{FailurePolicy, MetricsSnapshot, Outcome, ParsePolicyError};
pub use pool::{sample, RewardPlugin};
pub use tool::{ToolPlugin, ToolSpec};
pub use version::{World, SUPPORTED_API_VERSIONS};
