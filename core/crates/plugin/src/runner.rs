//! What both plugin kinds share once loaded: stores created under the plugin's limits, the
//! manifest's adoption, guarded calls (deadline, fuel, memory cap) and the classification of a
//! failed call into a typed error.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, WasmBacktrace};

use super::bindings::v02;
use super::bindings::{Capability, Manifest};
use super::checks::validate_manifest;
use super::engine::PluginHost;
use super::error::{clip, PluginError, PluginId};
use super::limits::PluginOptions;
use super::policy::Metrics;
use super::sandbox::HostState;
use super::version::{AnyReward, AnyRewardPre, SUPPORTED_API_VERSIONS};

/// One store of a reward plugin's pool, with its instance.
pub(crate) struct PooledReward {
    pub(crate) store: Store<HostState>,
    pub(crate) inst: AnyReward,
    /// The 0.2.0 batch buffers, reused from call to call on this store.
    pub(crate) batch: v02::SampleBatch,
}

/// Store creation, guarded calls and error classification shared by both plugin kinds.
pub(crate) struct Runner {
    pub(crate) host: PluginHost,
    pub(crate) id: PluginId,
    pub(crate) opts: PluginOptions,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: Mutex<Vec<PooledReward>>,
    /// Component names seen from this plugin, one shared copy each (see `checks::intern`).
    pub(crate) names: Mutex<std::collections::HashSet<Arc<str>>>,
}

impl Runner {
    pub(crate) fn new(
        host: PluginHost,
        id: PluginId,
        opts: PluginOptions,
    ) -> Result<Self, PluginError> {
        if opts.limits.fuel.is_some() && !host.inner.cfg.fuel_metering {
            return Err(PluginError::Config {
                plugin: id,
                reason: "a fuel limit needs HostConfig::fuel_metering = true".into(),
            });
        }
        Ok(Self {
            host,
            id,
            opts,
            metrics: Arc::new(Metrics::default()),
            pool: Mutex::new(Vec::new()),
            names: Mutex::new(Default::default()),
        })
    }

    pub(crate) fn new_store(&self) -> Store<HostState> {
        let l = &self.opts.limits;
        let state = HostState::new(
            self.id.to_string(),
            l.memory_bytes,
            l.max_log_bytes,
            l.max_capability_input_bytes,
            self.opts.grants.clone(),
            self.metrics.clone(),
        );
        let mut store = Store::new(&self.host.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        // wasmtime meters the bytes a guest hands to the host per call (return values, host
        // call arguments) while lifting them, so oversized output is refused before the host
        // allocates it. Headroom covers the fixed part of each result record.
        store.set_hostcall_fuel(l.max_output_bytes.saturating_add(1 << 20));
        store
    }

    pub(crate) fn instantiate_reward(
        &self,
        pre: &AnyRewardPre,
    ) -> Result<PooledReward, PluginError> {
        let mut store = self.new_store();
        let inst = self.guarded(&mut store, |s| match pre {
            AnyRewardPre::V01(p) => p.instantiate(s).map(AnyReward::V01),
            AnyRewardPre::V02(p) => p.instantiate(s).map(AnyReward::V02),
            AnyRewardPre::V03(p) => p.instantiate(s).map(AnyReward::V03),
        })?;
        Ok(PooledReward {
            store,
            inst,
            batch: v02::SampleBatch {
                text: String::new(),
                offsets: Vec::new(),
            },
        })
    }

    /// Validates the manifest (every field capped, capabilities folded) before any field is
    /// used, checks it against what the component declares, and renames the plugin.
    pub(crate) fn adopt_manifest(
        &self,
        m: &mut Manifest,
        version: &str,
        store: &mut Store<HostState>,
    ) -> Result<PluginId, PluginError> {
        validate_manifest(m).map_err(|e| PluginError::BadManifest {
            plugin: self.id.clone(),
            reason: e.to_string(),
        })?;
        let id = PluginId {
            name: m.name.clone(),
            version: m.version.clone(),
        };
        if m.api_version != version {
            return Err(PluginError::IncompatibleApi {
                plugin: id,
                found: format!(
                    "{} (manifest) vs {version} (component interfaces)",
                    m.api_version
                ),
                supported: SUPPORTED_API_VERSIONS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            });
        }
        store.data().io.set_label(id.to_string());
        // Folded by `validate_manifest`: one warning per capability at most.
        for cap in &m.capabilities {
            let granted = match cap {
                Capability::Judge => self.opts.grants.judge.is_some(),
                Capability::Search => self.opts.grants.search.is_some(),
            };
            if !granted {
                tracing::warn!(target: "medrl::plugin", plugin = %id, "plugin requests capability {cap:?}, which is not granted; its calls will fail");
            }
        }
        Ok(id)
    }

    /// Runs `f` under the call limits and turns a wasmtime error into a typed one.
    pub(crate) fn guarded<R>(
        &self,
        store: &mut Store<HostState>,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let l = &self.opts.limits;
        let tick = self.host.inner.cfg.epoch_tick;
        let ticks = (l.timeout.as_nanos() / tick.as_nanos().max(1)) as u64 + 1;
        store.set_epoch_deadline(ticks);
        if self.host.inner.cfg.fuel_metering {
            store
                .set_fuel(l.fuel.unwrap_or(u64::MAX))
                .expect("fuel metering is enabled");
        }
        store.data_mut().denied = None;
        store.data_mut().limiter.hit = None;
        let start = Instant::now();
        store.data_mut().deadline = Some(start + l.timeout);
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        f(store).map_err(|e| self.classify(store, e, start.elapsed()))
    }

    fn classify(
        &self,
        store: &mut Store<HostState>,
        e: wasmtime::Error,
        elapsed: Duration,
    ) -> PluginError {
        let plugin = self.id.clone();
        let l = &self.opts.limits;
        let stderr = store.data().io.take_stderr_tail();
        if e.downcast_ref::<super::sandbox::WaitPastDeadline>()
            .is_some()
        {
            return PluginError::Timeout {
                plugin,
                limit: l.timeout,
                elapsed,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                return PluginError::Timeout {
                    plugin,
                    limit: l.timeout,
                    elapsed,
                }
            }
            Some(Trap::OutOfFuel) => {
                return PluginError::OutOfFuel {
                    plugin,
                    fuel: l.fuel.unwrap_or(u64::MAX),
                }
            }
            _ => {}
        }
        // `HostcallFuelExhausted` is private in wasmtime 48; its message is the stable part.
        if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") {
            return PluginError::BadOutput {
                plugin,
                reason: format!("output exceeds the limit of {} bytes (stopped while copying it out of the guest)", l.max_output_bytes),
            };
        }
        if let Some(requested) = store.data().limiter.hit {
            return PluginError::MemoryLimit {
                plugin,
                limit_bytes: l.memory_bytes,
                requested_bytes: requested,
            };
        }
        if let Some(cap) = store.data().denied {
            return PluginError::CapabilityDenied {
                plugin,
                capability: cap.into(),
            };
        }
        let backtrace = e
            .downcast_ref::<WasmBacktrace>()
            .map(|b| b.to_string())
            .unwrap_or_else(|| "<none>".into());
        let mut message = match e.downcast_ref::<Trap>() {
            Some(t) => t.to_string(),
            None => format!("{e:#}"),
        };
        if !stderr.trim().is_empty() {
            message.push_str("\nguest stderr: ");
            message.push_str(stderr.trim());
        }
        PluginError::Trap {
            plugin,
            message: clip(message),
            // A deep recursion's backtrace has a frame per call.
            backtrace: clip(backtrace),
        }
    }

    pub(crate) fn threads(&self) -> usize {
        match self.opts.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    pub(crate) fn fail(&self, err: PluginError, n: usize) -> Arc<PluginError> {
        self.metrics.failure(err.kind(), n as u64);
        tracing::warn!(target: "medrl::plugin", plugin = %self.id, kind = err.kind(), samples = n, "{err}");
        Arc::new(err)
    }
}
