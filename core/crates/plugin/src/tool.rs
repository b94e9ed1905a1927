//! Tool plugins (API 0.3.0, the `tool` world): loading one, checking its spec, and running
//! calls from any number of threads at once on a pool of stores (a store is discarded after any
//! failed call), under the same sandbox, limits and capability grants as rewards, plus a cap on
//! the output (`Limits::max_tool_output_bytes`).
//!
//! The host does not apply a failure policy here: a failed call is a typed error, counted by
//! kind in the metrics, and the caller (medrl-reward's tool set) decides what the model sees.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use wasmtime::Store;

use super::bindings::v03;
use super::bindings::Manifest;
use super::checks::validate_tool_spec;
use super::engine::{read_component, PluginHost};
use super::error::{clip, PluginError, PluginId};
use super::limits::PluginOptions;
use super::policy::MetricsSnapshot;
use super::runner::Runner;
use super::sandbox::HostState;
use super::version::{expect_world, World, SUPPORTED_API_VERSIONS};

/// The first API version with the `tool` world.
const TOOL_API: &str = "0.3.0";

/// What a tool tells the model about itself, checked (see `checks::validate_tool_spec`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolSpec {
    /// `[a-z0-9_-]{1,64}`: the name the model calls it by.
    pub name: String,
    /// At most 4 KiB.
    pub description: String,
    /// JSON Schema of the arguments object (a JSON object, at most 64 KiB as text).
    pub parameters: serde_json::Value,
}

/// One store of a tool's pool, with its instance.
struct PooledTool {
    store: Store<HostState>,
    inst: v03::tool::Tool,
}

impl PluginHost {
    /// Loads a tool plugin from a `.wasm` component file. `config` is passed to every call
    /// (the WIT's `config`: the same for every call of a run).
    pub fn load_tool(
        &self,
        path: &Path,
        config: &serde_json::Value,
        opts: PluginOptions,
    ) -> Result<ToolPlugin, PluginError> {
        let (bytes, id) = read_component(path)?;
        self.load_tool_bytes(&bytes, id, config, opts)
    }

    /// Loads a tool plugin from component bytes; `id` names it until its manifest is read.
    pub fn load_tool_bytes(
        &self,
        bytes: &[u8],
        id: PluginId,
        config: &serde_json::Value,
        mut opts: PluginOptions,
    ) -> Result<ToolPlugin, PluginError> {
        let (pre, version, world) = self.link(bytes, &id)?;
        expect_world(&id, World::Tool, world)?;
        if version != TOOL_API {
            return Err(PluginError::IncompatibleApi {
                plugin: id,
                found: format!("{version} (the `tool` world needs {TOOL_API})"),
                supported: SUPPORTED_API_VERSIONS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            });
        }
        let pre = v03::tool::ToolPre::new(pre).map_err(|e| PluginError::InvalidWasm {
            plugin: id.clone(),
            reason: format!("does not export the `tool` world of API {version}: {e:#}"),
        })?;
        // The store's host-call fuel (what a guest may hand back in one call) follows
        // `max_output_bytes`: bound it by the tool output cap, so a tool answering with
        // megabytes is stopped while its output is copied, not after.
        let l = &mut opts.limits;
        l.max_output_bytes = l.max_output_bytes.min(l.max_tool_output_bytes);
        let runner = Runner::new(self.clone(), id, opts)?;
        let mut first = instantiate(&runner, &pre)?;
        let mut manifest = {
            let PooledTool { store, inst } = &mut first;
            runner.guarded(store, |s| inst.call_manifest(s).map(v03::manifest))?
        };
        let id = runner.adopt_manifest(&mut manifest, &version, &mut first.store)?;
        let runner = Runner { id, ..runner };
        let raw = {
            let PooledTool { store, inst } = &mut first;
            runner.guarded(store, |s| inst.call_tool_spec(s))?
        };
        let parameters = validate_tool_spec(&raw.name, &raw.description, &raw.parameters)
            .map_err(|e| PluginError::BadManifest {
                plugin: runner.id.clone(),
                reason: e.to_string(),
            })?;
        Ok(ToolPlugin {
            spec: ToolSpec {
                name: raw.name,
                description: raw.description,
                parameters,
            },
            runner,
            pre,
            manifest,
            config: config.to_string(),
            pool: Mutex::new(vec![first]),
        })
    }
}

fn instantiate(
    runner: &Runner,
    pre: &v03::tool::ToolPre<HostState>,
) -> Result<PooledTool, PluginError> {
    let mut store = runner.new_store();
    let inst = runner.guarded(&mut store, |s| pre.instantiate(s))?;
    Ok(PooledTool { store, inst })
}

/// A loaded tool plugin. `Send + Sync`: call it from any number of threads at once; each
/// concurrent call takes its own pooled store (so the pool grows to the number of calls in
/// flight, each store up to `Limits::memory_bytes`), and a failed call discards its store only.
pub struct ToolPlugin {
    runner: Runner,
    pre: v03::tool::ToolPre<HostState>,
    manifest: Manifest,
    spec: ToolSpec,
    /// The config as JSON text, serialized once.
    config: String,
    pool: Mutex<Vec<PooledTool>>,
}

// A rollout calls tools from several threads; keep that a compile-time guarantee.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<ToolPlugin>();
};

impl ToolPlugin {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn id(&self) -> &PluginId {
        &self.runner.id
    }
    /// The checked spec (name, description, parameters schema).
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    /// Counters: `samples` counts tool calls, `scored` those that returned output, `failures`
    /// the failed ones by kind (`guest_error` is the tool's own `err`); `calls` counts every
    /// guest call, instantiations included.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.runner.metrics.snapshot()
    }

    /// Runs the tool once on `arguments` (a JSON object as text; the tool checks it against its
    /// schema). `Ok` is the text for the model. Errors: `GuestError` (the tool's own `err`,
    /// clipped to 4 KiB), `BadOutput` (output over `Limits::max_tool_output_bytes`: an error,
    /// never truncated), `CapabilityDenied` (the call used a capability the run does not grant,
    /// even if the tool then answered), and the sandbox's `Trap`, `Timeout`, `OutOfFuel`,
    /// `MemoryLimit`. Every failure is counted by kind.
    pub fn call(&self, arguments: &str) -> Result<String, PluginError> {
        let m = &self.runner.metrics;
        m.samples.fetch_add(1, Ordering::Relaxed);
        let res = self.call_once(arguments);
        match &res {
            Ok(_) => {
                m.scored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                m.failure(e.kind(), 1);
                tracing::warn!(target: "medrl::plugin", plugin = %self.runner.id, kind = e.kind(), "tool call failed: {e}");
            }
        }
        res
    }

    fn call_once(&self, arguments: &str) -> Result<String, PluginError> {
        let r = &self.runner;
        let pooled = self.pool.lock().unwrap().pop();
        let mut p = match pooled {
            Some(p) => p,
            None => instantiate(r, &self.pre)?,
        };
        let res = {
            let PooledTool { store, inst } = &mut p;
            r.guarded(store, |s| inst.call_call(s, &self.config, arguments))
        };
        let denied = p.store.data().denied;
        let failed = match (res, denied) {
            (Ok(out), None) => {
                // The call completed: the store is sound whatever it answered.
                self.pool.lock().unwrap().push(p);
                return self.check(out);
            }
            (Err(e), _) => e,
            // A denied capability fails the call even when the guest carried on.
            (Ok(_), Some(cap)) => PluginError::CapabilityDenied {
                plugin: r.id.clone(),
                capability: cap.into(),
            },
        };
        // A failed call may leave the instance half-way through: never reuse its store.
        r.metrics.stores_discarded.fetch_add(1, Ordering::Relaxed);
        Err(failed)
    }

    /// The output contract of a completed call.
    fn check(&self, out: Result<String, String>) -> Result<String, PluginError> {
        let r = &self.runner;
        let max = r.opts.limits.max_tool_output_bytes;
        match out {
            Ok(text) if text.len() > max => Err(PluginError::BadOutput {
                plugin: r.id.clone(),
                reason: format!(
                    "tool output of {} bytes exceeds the limit of {max} bytes (max_tool_output_bytes; output is never truncated)",
                    text.len()
                ),
            }),
            Ok(text) => Ok(text),
            Err(message) => Err(PluginError::GuestError {
                plugin: r.id.clone(),
                message: clip(message),
            }),
        }
    }
}
