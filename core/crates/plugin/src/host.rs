//! The plugin host: one wasmtime `Engine`, an on-disk cache of compiled components, and loaded
//! plugins that score batches in parallel under per-call limits.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap, WasmBacktrace};

use super::bindings::adapter::{DataAdapter, DataAdapterPre};
use super::bindings::reward::{Reward, RewardPre};
use super::bindings::v02;
use super::bindings::{Capability, Manifest, Sample, ScoreResult};
use super::capability::Grants;
use super::error::{PluginError, PluginId};
use super::policy::{FailurePolicy, Metrics, MetricsSnapshot};
use super::sandbox::HostState;

/// API versions (WIT package `medrl:plugin@X.Y.Z`) this host can run.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];
const API_PACKAGE: &str = "medrl:plugin/";

/// Engine-wide settings. Changing `fuel_metering` changes the compiled code, so it is part of
/// the cache key (through wasmtime's compatibility hash).
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where compiled components are cached; `None` disables the cache (compile every load).
    pub cache_dir: Option<PathBuf>,
    /// Instrument code for fuel. Costs some speed on every call, so it is off unless a plugin
    /// needs a deterministic budget (`Limits::fuel`).
    pub fuel_metering: bool,
    /// Resolution of wall-clock deadlines: a ticker thread bumps the engine epoch this often.
    pub epoch_tick: Duration,
    /// Largest component file the host compiles, in bytes.
    pub max_component_bytes: usize,
    /// Largest function body in any core module of a component, in bytes. Cranelift's time
    /// grows faster than linearly in a function's size; CPython's interpreter loop (the largest
    /// legitimate function we know, in componentize-py plugins) is about 420 KB.
    pub max_function_bytes: usize,
    /// Most functions over all core modules of a component.
    pub max_functions: usize,
    /// Wall-clock bound on compiling one component (cache misses only). Cranelift cannot be
    /// interrupted, so a compile past it is abandoned: it finishes on its worker thread in the
    /// background and is thrown away, and this host refuses the same bytes at once afterwards.
    pub compile_timeout: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            fuel_metering: false,
            epoch_tick: Duration::from_millis(5),
            max_component_bytes: 128 << 20,
            max_function_bytes: 1 << 20,
            max_functions: 200_000,
            compile_timeout: Duration::from_secs(120),
        }
    }
}

/// `$MEDRL_CACHE_DIR`, else `$XDG_CACHE_HOME/medrl/plugins`, else `~/.cache/medrl/plugins`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MEDRL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("medrl").join("plugins"))
}

/// Limits applied to every guest call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline of one call (one chunk of at most `max_batch_per_call` samples).
    /// Time spent inside host capabilities (judge, search) counts toward it: a capability
    /// call is refused once the deadline has passed, and one that runs past it makes the call
    /// time out when it returns (a host call is never interrupted midway). A WASI sleep that
    /// would end past the deadline is a timeout at once.
    pub timeout: Duration,
    /// Fuel per call; requires `HostConfig::fuel_metering`.
    pub fuel: Option<u64>,
    /// Cap on each linear memory of the plugin, in bytes.
    pub memory_bytes: usize,
    /// Cap on strings returned by one call (error messages and component names), in bytes.
    pub max_output_bytes: usize,
    /// Bytes of stdout/stderr/log a store may emit before further output is discarded.
    pub max_log_bytes: usize,
    /// Samples per guest call. Smaller chunks make deadlines tighter and a trap costs fewer
    /// samples; larger ones amortize the per-call cost (~µs).
    pub max_batch_per_call: usize,
    /// Largest |score| (and |component|) accepted; a sample beyond it fails with `BadOutput`.
    /// Finite but absurd rewards (1e308) would overflow a GRPO group's mean to infinity.
    pub max_abs_score: f64,
    /// Most component names in one result (0.2.0: per batch; 0.1.0: per sample).
    pub max_components: usize,
    /// Longest component name, in bytes.
    pub max_component_name_bytes: usize,
    /// Largest input of one capability call (a search query, a judge prompt), in bytes;
    /// larger ones get an error back without reaching the capability.
    pub max_capability_input_bytes: usize,
    /// Most extra guest calls the bisection of one failed chunk may make.
    pub max_isolation_calls: usize,
    /// Wall time one chunk may take, first call and bisection together, in deadlines
    /// (`timeout`): no retry starts past it, so a chunk costs at most one deadline more.
    pub max_chunk_deadlines: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            fuel: None,
            memory_bytes: 512 << 20,
            max_output_bytes: 16 << 20,
            max_log_bytes: 1 << 20,
            max_batch_per_call: 512,
            max_abs_score: 1e6,
            max_components: 256,
            max_component_name_bytes: 256,
            max_capability_input_bytes: 64 << 10,
            max_isolation_calls: 256,
            max_chunk_deadlines: 3,
        }
    }
}

/// How one plugin is run.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    pub limits: Limits,
    pub grants: Grants,
    pub policy: FailurePolicy,
    /// Worker threads for a batch; 0 = all cores.
    pub threads: usize,
    /// When a call fails fast, re-run its chunk in halves so that only the samples that cause
    /// the failure are lost (default true). Costs about 2·log2(chunk) extra calls per bad
    /// sample, bounded by `Limits::max_isolation_calls` and `max_chunk_deadlines`; timeouts
    /// are never retried, and a chunk whose every probe fails is given up early.
    pub isolate_failures: bool,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            grants: Grants::default(),
            policy: FailurePolicy::default(),
            threads: 0,
            isolate_failures: true,
        }
    }
}

/// The result for one sample after the failure policy was applied.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Component names are shared (`Arc<str>`, interned per plugin): a batch holds one copy
    /// of each name, not one per sample.
    Scored {
        score: f64,
        components: Vec<(Arc<str>, f64)>,
    },
    /// The plugin declined the sample (not its task).
    NotApplicable,
    /// The plugin failed on this sample; the policy's score stands in.
    Substituted { score: f64, error: Arc<PluginError> },
    /// The plugin failed on this sample; the policy drops it.
    Dropped { error: Arc<PluginError> },
}

impl Outcome {
    /// The reward to train on, if any.
    pub fn reward(&self) -> Option<f64> {
        match self {
            Outcome::Scored { score, .. } | Outcome::Substituted { score, .. } => Some(*score),
            _ => None,
        }
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct HostInner {
    engine: Engine,
    linker: Linker<HostState>,
    cfg: HostConfig,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    /// Cache keys of components whose compilation ran past `compile_timeout`: loading the same
    /// bytes again fails at once instead of starting another abandoned compile.
    compile_refused: Mutex<std::collections::HashSet<String>>,
    _ticker: Ticker,
}

/// Loads plugins. Cheap to clone; plugins keep the engine (and its epoch ticker) alive.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

/// Feeds `Hash` output into SHA-256 so wasmtime's compatibility hash becomes a stable key.
struct ShaHasher(Sha256);
impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

fn file_id(path: &Path) -> PluginId {
    PluginId {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "<bytes>".into()),
        version: "?".into(),
    }
}

impl PluginHost {
    pub fn new(cfg: HostConfig) -> Result<Self, PluginError> {
        let id = PluginId {
            name: "<host>".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let cerr = |e: wasmtime::Error| PluginError::Config {
            plugin: id.clone(),
            reason: format!("{e:#}"),
        };
        let mut c = Config::new();
        c.wasm_component_model(true);
        c.epoch_interruption(true);
        c.consume_fuel(cfg.fuel_metering);
        if std::env::var_os("MEDRL_PERFMAP").is_some() {
            c.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&c).map_err(cerr)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(cerr)?;
        super::sandbox::clock::shadow(&mut linker).map_err(cerr)?;
        // Both worlds of a version import the same interfaces, so one linker serves both; the
        // versions' interfaces have different names (`...@0.1.0`, `...@0.2.0`), so they coexist.
        Reward::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(cerr)?;
        v02::reward::Reward::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(cerr)?;

        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (engine, stop, tick) = (engine.clone(), stop.clone(), cfg.epoch_tick);
            std::thread::Builder::new()
                .name("medrl-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Config {
                    plugin: id.clone(),
                    reason: format!("spawning epoch ticker: {e}"),
                })?
        };
        Ok(Self {
            inner: Arc::new(HostInner {
                engine,
                linker,
                cfg,
                cache_hits: AtomicU64::new(0),
                cache_misses: AtomicU64::new(0),
                compile_refused: Mutex::new(Default::default()),
                _ticker: Ticker {
                    stop,
                    handle: Some(handle),
                },
            }),
        })
    }

    /// (hits, misses) of the compiled-component cache since this host was created.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.inner.cache_hits.load(Ordering::Relaxed),
            self.inner.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// Cache key: content hash of the bytes + wasmtime's engine compatibility hash (version
    /// and codegen settings) + the medrl version.
    fn cache_key(&self, bytes: &[u8]) -> String {
        let mut h = ShaHasher(Sha256::new());
        h.0.update(bytes);
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut h);
        h.0.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Refuses components whose size or shape would make compiling them too costly. Linear in
    /// the bytes; malformed bytes pass through, for wasmtime to report as `InvalidWasm`.
    fn precheck(&self, bytes: &[u8], id: &PluginId) -> Result<(), PluginError> {
        let cfg = &self.inner.cfg;
        let refuse = |reason: String| PluginError::CompileLimit {
            plugin: id.clone(),
            reason,
        };
        if bytes.len() > cfg.max_component_bytes {
            return Err(refuse(format!(
                "component of {} bytes exceeds the limit of {} bytes",
                bytes.len(),
                cfg.max_component_bytes
            )));
        }
        let mut functions = 0usize;
        // `parse_all` walks nested core modules and components too.
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else { break };
            match payload {
                wasmparser::Payload::CodeSectionStart { count, .. } => {
                    functions = functions.saturating_add(count as usize);
                    if functions > cfg.max_functions {
                        return Err(refuse(format!(
                            "component has at least {functions} functions, over the limit of {}",
                            cfg.max_functions
                        )));
                    }
                }
                wasmparser::Payload::CodeSectionEntry(body) => {
                    let size = body.range().len();
                    if size > cfg.max_function_bytes {
                        return Err(refuse(format!(
                            "a function body of {size} bytes exceeds the limit of {} bytes",
                            cfg.max_function_bytes
                        )));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs a Cranelift compile on a worker thread and waits at most `compile_timeout`; a
    /// compile past it is abandoned (it cannot be interrupted) and its key remembered.
    fn compile_bounded<R: Send + 'static>(
        &self,
        key: &str,
        id: &PluginId,
        work: impl FnOnce() -> wasmtime::Result<R> + Send + 'static,
    ) -> Result<R, PluginError> {
        let limit = self.inner.cfg.compile_timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("medrl-compile".into())
            .spawn(move || {
                let _ = tx.send(work());
            })
            .map_err(|e| PluginError::Config {
                plugin: id.clone(),
                reason: format!("spawning a compile thread: {e}"),
            })?;
        match rx.recv_timeout(limit) {
            Ok(r) => r.map_err(|e| PluginError::InvalidWasm {
                plugin: id.clone(),
                reason: format!("{e:#}"),
            }),
            Err(_) => {
                self.inner
                    .compile_refused
                    .lock()
                    .unwrap()
                    .insert(key.to_string());
                tracing::warn!(target: "medrl::plugin", plugin = %id, "compilation abandoned after {limit:?}");
                Err(PluginError::CompileLimit {
                    plugin: id.clone(),
                    reason: format!(
                        "compilation did not finish within {limit:?} (compile timeout); abandoned"
                    ),
                })
            }
        }
    }

    /// Compiles `bytes` (or loads them from the cache) and checks the API version.
    fn compile(&self, bytes: &[u8], id: &PluginId) -> Result<(Component, String), PluginError> {
        let engine = &self.inner.engine;
        let invalid = |e: wasmtime::Error| PluginError::InvalidWasm {
            plugin: id.clone(),
            reason: format!("{e:#}"),
        };
        self.precheck(bytes, id)?;
        let key = self.cache_key(bytes);
        if self.inner.compile_refused.lock().unwrap().contains(&key) {
            return Err(PluginError::CompileLimit {
                plugin: id.clone(),
                reason: format!(
                    "an earlier compile of these bytes ran past the compile timeout ({:?})",
                    self.inner.cfg.compile_timeout
                ),
            });
        }
        let owned = || (engine.clone(), bytes.to_vec());
        let component = match &self.inner.cfg.cache_dir {
            None => {
                self.inner.cache_misses.fetch_add(1, Ordering::Relaxed);
                let (e, b) = owned();
                self.compile_bounded(&key, id, move || Component::new(&e, &b))?
            }
            Some(dir) => {
                let path = dir.join(format!("{key}.cwasm"));
                // Read into memory rather than `deserialize_file`: that one mmaps the file, and
                // anyone truncating a cache entry later would crash the host with SIGBUS.
                // SAFETY: the cache directory is written only by this host, and the key
                // includes the engine's compatibility hash; wasmtime still checks the header
                // and refuses artifacts from another version or configuration.
                let cached = std::fs::read(&path)
                    .ok()
                    .map(|b| unsafe { Component::deserialize(engine, &b) });
                match cached {
                    Some(Ok(c)) => {
                        self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                        c
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(target: "medrl::plugin", plugin = %id, "discarding unreadable cache entry {}: {e:#}", path.display());
                        }
                        self.inner.cache_misses.fetch_add(1, Ordering::Relaxed);
                        let (e, b) = owned();
                        let compiled =
                            self.compile_bounded(&key, id, move || e.precompile_component(&b))?;
                        // Write-then-rename so concurrent loaders never see a partial file. A
                        // failing cache is not fatal: we still have the compiled bytes.
                        static SEQ: AtomicU64 = AtomicU64::new(0);
                        let tmp = path.with_extension(format!(
                            "tmp{}-{}",
                            std::process::id(),
                            SEQ.fetch_add(1, Ordering::Relaxed)
                        ));
                        let written = std::fs::create_dir_all(dir)
                            .and_then(|_| std::fs::write(&tmp, &compiled))
                            .and_then(|_| std::fs::rename(&tmp, &path));
                        if let Err(e) = written {
                            tracing::warn!(target: "medrl::plugin", plugin = %id, "cannot write compile cache {}: {e}", path.display());
                        }
                        // SAFETY: these bytes were produced just now by this engine.
                        unsafe { Component::deserialize(engine, &compiled) }.map_err(invalid)?
                    }
                }
            }
        };
        let version = api_version(engine, &component, id)?;
        Ok((component, version))
    }

    /// Reads a component's manifest and API version without scoring anything.
    pub fn inspect(&self, path: &Path) -> Result<(Manifest, String), PluginError> {
        let plugin = self.load_reward(path, PluginOptions::default());
        match plugin {
            Ok(p) => Ok((p.manifest.clone(), p.manifest.api_version.clone())),
            // Not a reward world: maybe an adapter.
            Err(PluginError::InvalidWasm { .. })
                if self.load_adapter(path, PluginOptions::default()).is_ok() =>
            {
                let a = self.load_adapter(path, PluginOptions::default())?;
                Ok((a.manifest.clone(), a.manifest.api_version.clone()))
            }
            Err(e) => Err(e),
        }
    }

    /// Compiles (or loads from the cache) and links a component against the host imports;
    /// shared by reward and adapter loading. Returns the pre-instance and the API version.
    fn link(
        &self,
        bytes: &[u8],
        id: &PluginId,
    ) -> Result<(wasmtime::component::InstancePre<HostState>, String), PluginError> {
        let (component, version) = self.compile(bytes, id)?;
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            PluginError::InvalidWasm {
                plugin: id.clone(),
                reason: format!("{e:#}"),
            }
        })?;
        Ok((pre, version))
    }

    /// Loads a reward plugin from a `.wasm` component file.
    pub fn load_reward(
        &self,
        path: &Path,
        opts: PluginOptions,
    ) -> Result<RewardPlugin, PluginError> {
        let (bytes, id) = read_component(path)?;
        self.load_reward_bytes(&bytes, id, opts)
    }

    /// Loads a reward plugin from component bytes; `id` names it until its manifest is read.
    pub fn load_reward_bytes(
        &self,
        bytes: &[u8],
        id: PluginId,
        opts: PluginOptions,
    ) -> Result<RewardPlugin, PluginError> {
        let (pre, version) = self.link(bytes, &id)?;
        let not_reward = |e: wasmtime::Error| PluginError::InvalidWasm {
            plugin: id.clone(),
            reason: format!("does not export the `reward` world of API {version}: {e:#}"),
        };
        let pre = match version.as_str() {
            "0.1.0" => AnyRewardPre::V01(RewardPre::new(pre).map_err(not_reward)?),
            "0.2.0" => AnyRewardPre::V02(v02::reward::RewardPre::new(pre).map_err(not_reward)?),
            // api_version() only returns supported versions; this arm is a version added to
            // SUPPORTED_API_VERSIONS without bindings.
            other => return Err(incompatible(&id, other)),
        };
        let runner = Runner::new(self.clone(), id, opts)?;
        let mut first = runner.instantiate_reward(&pre)?;
        let mut manifest = {
            let PooledReward { store, inst, .. } = &mut first;
            runner.guarded(store, |s| inst.manifest(s))?
        };
        let id = runner.adopt_manifest(&mut manifest, &version, &mut first.store)?;
        let runner = Runner { id, ..runner };
        runner.pool.lock().unwrap().push(first);
        Ok(RewardPlugin {
            runner,
            pre,
            manifest,
        })
    }

    /// Loads a data-adapter plugin from a `.wasm` component file.
    pub fn load_adapter(
        &self,
        path: &Path,
        opts: PluginOptions,
    ) -> Result<AdapterPlugin, PluginError> {
        let (bytes, id) = read_component(path)?;
        let (pre, version) = self.link(&bytes, &id)?;
        let not_adapter = |e: wasmtime::Error| PluginError::InvalidWasm {
            plugin: id.clone(),
            reason: format!("does not export the `data-adapter` world of API {version}: {e:#}"),
        };
        let pre = match version.as_str() {
            "0.1.0" => AnyAdapterPre::V01(DataAdapterPre::new(pre).map_err(not_adapter)?),
            "0.2.0" => {
                AnyAdapterPre::V02(v02::adapter::DataAdapterPre::new(pre).map_err(not_adapter)?)
            }
            // api_version() only returns supported versions; this arm is a version added to
            // SUPPORTED_API_VERSIONS without bindings.
            other => return Err(incompatible(&id, other)),
        };
        let runner = Runner::new(self.clone(), id, opts)?;
        let mut store = runner.new_store();
        let inst = runner.guarded(&mut store, |s| pre.instantiate(s))?;
        let mut manifest = runner.guarded(&mut store, |s| inst.manifest(s))?;
        let id = runner.adopt_manifest(&mut manifest, &version, &mut store)?;
        let runner = Runner { id, ..runner };
        Ok(AdapterPlugin {
            runner,
            manifest,
            inst: Mutex::new(Some((store, inst))),
            pre,
        })
    }
}

/// Reads a `.wasm` file; the file name identifies the plugin until its manifest is read.
fn read_component(path: &Path) -> Result<(Vec<u8>, PluginId), PluginError> {
    let id = file_id(path);
    let bytes = std::fs::read(path).map_err(|e| PluginError::Io {
        plugin: id.clone(),
        path: path.display().to_string(),
        source: e,
    })?;
    Ok((bytes, id))
}

/// Finds the plugin API version from the component's imports and exports
/// (`medrl:plugin/<interface>@X.Y.Z`) before anything is instantiated.
fn api_version(
    engine: &Engine,
    component: &Component,
    id: &PluginId,
) -> Result<String, PluginError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()))
        .collect();
    let mut found: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix(API_PACKAGE))
        .map(|rest| {
            rest.split_once('@')
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| "unversioned".into())
        })
        .collect();
    found.sort();
    found.dedup();
    let supported: Vec<String> = SUPPORTED_API_VERSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    match found.as_slice() {
        [v] if SUPPORTED_API_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        [] => Err(PluginError::IncompatibleApi {
            plugin: id.clone(),
            found: format!(
                "none (the component uses no medrl:plugin interface; it imports [{}])",
                names.join(", ")
            ),
            supported,
        }),
        _ => Err(PluginError::IncompatibleApi {
            plugin: id.clone(),
            found: found.join(" + "),
            supported,
        }),
    }
}

fn incompatible(id: &PluginId, found: &str) -> PluginError {
    PluginError::IncompatibleApi {
        plugin: id.clone(),
        found: found.into(),
        supported: SUPPORTED_API_VERSIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

/// A reward world's pre-instance, by API version.
enum AnyRewardPre {
    V01(RewardPre<HostState>),
    V02(v02::reward::RewardPre<HostState>),
}

/// A reward world's instance, by API version.
enum AnyReward {
    V01(Reward),
    V02(v02::reward::Reward),
}

impl AnyReward {
    fn manifest(&self, store: &mut Store<HostState>) -> wasmtime::Result<Manifest> {
        match self {
            AnyReward::V01(i) => i.call_manifest(store),
            AnyReward::V02(i) => i.call_manifest(store).map(v02::manifest),
        }
    }
}

enum AnyAdapterPre {
    V01(DataAdapterPre<HostState>),
    V02(v02::adapter::DataAdapterPre<HostState>),
}

impl AnyAdapterPre {
    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<AnyAdapter> {
        Ok(match self {
            AnyAdapterPre::V01(p) => AnyAdapter::V01(p.instantiate(store)?),
            AnyAdapterPre::V02(p) => AnyAdapter::V02(p.instantiate(store)?),
        })
    }
}

enum AnyAdapter {
    V01(DataAdapter),
    V02(v02::adapter::DataAdapter),
}

impl AnyAdapter {
    fn manifest(&self, store: &mut Store<HostState>) -> wasmtime::Result<Manifest> {
        match self {
            AnyAdapter::V01(i) => i.call_manifest(store),
            AnyAdapter::V02(i) => i.call_manifest(store).map(v02::manifest),
        }
    }
    fn convert(
        &self,
        store: &mut Store<HostState>,
        config: &str,
        records: &[String],
    ) -> wasmtime::Result<Vec<Result<String, String>>> {
        match self {
            AnyAdapter::V01(i) => i.call_convert(store, config, records),
            AnyAdapter::V02(i) => i.call_convert(store, config, records),
        }
    }
}

struct PooledReward {
    store: Store<HostState>,
    inst: AnyReward,
    /// The 0.2.0 batch buffers, reused from call to call on this store.
    batch: v02::SampleBatch,
}

/// Caps on manifest fields. A manifest is guest output: its name is copied into every error,
/// log line and metric, so it is checked before anything uses it.
pub const MAX_MANIFEST_NAME_BYTES: usize = 64;
pub const MAX_MANIFEST_VERSION_BYTES: usize = 64;
pub const MAX_MANIFEST_DESCRIPTION_BYTES: usize = 4 << 10;
pub const MAX_MANIFEST_SCHEMA_BYTES: usize = 64 << 10;
pub const MAX_MANIFEST_CAPABILITIES: usize = 64;

/// Checks every manifest field against its cap (linear in the manifest's size) and folds
/// repeated capabilities. The reason names a field and a length, never the field's content.
fn validate_manifest(m: &mut Manifest) -> Result<(), String> {
    fn token(field: &str, v: &str, max: usize, extra: &[char]) -> Result<(), String> {
        if v.is_empty() || v.len() > max {
            return Err(format!("{field} is {} bytes (must be 1 to {max})", v.len()));
        }
        if let Some(c) = v
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
        {
            return Err(format!(
                "{field} contains {c:?} (allowed: ASCII letters, digits and {})",
                extra.iter().collect::<String>()
            ));
        }
        Ok(())
    }
    token("name", &m.name, MAX_MANIFEST_NAME_BYTES, &['-', '_', '.'])?;
    token(
        "version",
        &m.version,
        MAX_MANIFEST_VERSION_BYTES,
        &['-', '_', '.', '+'],
    )?;
    token("api_version", &m.api_version, 16, &['.'])?;
    for (field, v, max) in [
        (
            "description",
            &m.description,
            MAX_MANIFEST_DESCRIPTION_BYTES,
        ),
        ("config_schema", &m.config_schema, MAX_MANIFEST_SCHEMA_BYTES),
    ] {
        if v.len() > max {
            return Err(format!("{field} is {} bytes (limit {max})", v.len()));
        }
    }
    if m.capabilities.len() > MAX_MANIFEST_CAPABILITIES {
        return Err(format!(
            "lists {} capabilities (limit {MAX_MANIFEST_CAPABILITIES})",
            m.capabilities.len()
        ));
    }
    let mut folded: Vec<Capability> = Vec::with_capacity(2);
    for c in m.capabilities.drain(..) {
        if !folded.contains(&c) {
            folded.push(c);
        }
    }
    m.capabilities = folded;
    Ok(())
}

/// Store creation, guarded calls and error classification shared by both plugin kinds.
struct Runner {
    host: PluginHost,
    id: PluginId,
    opts: PluginOptions,
    metrics: Arc<Metrics>,
    pool: Mutex<Vec<PooledReward>>,
    /// Component names seen from this plugin, one shared copy each (see `intern`).
    names: Mutex<std::collections::HashSet<Arc<str>>>,
}

/// Distinct component names kept per plugin; names past it are allocated per call (still
/// shared by the samples of that call), so a plugin inventing names cannot grow the set.
const MAX_INTERNED_NAMES: usize = 4096;

impl Runner {
    fn new(host: PluginHost, id: PluginId, opts: PluginOptions) -> Result<Self, PluginError> {
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

    fn intern(&self, set: &mut std::collections::HashSet<Arc<str>>, name: &str) -> Arc<str> {
        if let Some(a) = set.get(name) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(name);
        if set.len() < MAX_INTERNED_NAMES {
            set.insert(a.clone());
        }
        a
    }

    fn new_store(&self) -> Store<HostState> {
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

    fn instantiate_reward(&self, pre: &AnyRewardPre) -> Result<PooledReward, PluginError> {
        let mut store = self.new_store();
        let inst = self.guarded(&mut store, |s| match pre {
            AnyRewardPre::V01(p) => p.instantiate(s).map(AnyReward::V01),
            AnyRewardPre::V02(p) => p.instantiate(s).map(AnyReward::V02),
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
    fn adopt_manifest(
        &self,
        m: &mut Manifest,
        version: &str,
        store: &mut Store<HostState>,
    ) -> Result<PluginId, PluginError> {
        validate_manifest(m).map_err(|reason| PluginError::BadManifest {
            plugin: self.id.clone(),
            reason,
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
    fn guarded<R>(
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

    fn threads(&self) -> usize {
        match self.opts.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    fn fail(&self, err: PluginError, n: usize) -> Arc<PluginError> {
        self.metrics.failure(err.kind(), n as u64);
        tracing::warn!(target: "medrl::plugin", plugin = %self.id, kind = err.kind(), samples = n, "{err}");
        Arc::new(err)
    }
}

/// Per-sample results of a chunk (`Outcome::Scored` or `NotApplicable`), or the chunk's error.
type ChunkResult = Result<Vec<Result<Outcome, PluginError>>, PluginError>;

/// What the isolation of one chunk may still spend (see `Limits::max_isolation_calls` and
/// `max_chunk_deadlines`).
struct IsolationBudget {
    calls: usize,
    failed: usize,
    succeeded: bool,
    max_calls: usize,
    ends: Instant,
    /// Failed calls in a row, from the first, after which a chunk is given up: by then the
    /// depth-first bisection has tried a single sample and its neighbour (log2(n) + 2 calls,
    /// at least 8).
    give_up_after: usize,
    gave_up: bool,
}

impl IsolationBudget {
    /// Whether bisection must stop; says why once, in the log.
    fn over(&mut self, p: &RewardPlugin) -> bool {
        if self.gave_up {
            return true;
        }
        let why = if self.calls >= self.max_calls {
            "its retry budget (max_isolation_calls) is spent"
        } else if Instant::now() >= self.ends {
            "it used its time budget (max_chunk_deadlines)"
        } else if !self.succeeded && self.failed >= self.give_up_after {
            "every call failed"
        } else {
            return false;
        };
        self.gave_up = true;
        tracing::warn!(target: "medrl::plugin", plugin = %p.runner.id, calls = self.calls, "stopped isolating failures in a chunk: {why}; its remaining samples fail with the error at hand");
        true
    }
}

/// What a guest call returned, before the output contract of its API version is checked.
enum RawOutput {
    V01(Vec<Result<ScoreResult, String>>),
    V02(v02::BatchScores),
}

/// Lays `samples` out as a 0.2.0 `sample-batch` (see the WIT), reusing the buffers. `Err` when
/// the text does not fit the `u32` offsets (4 GiB: more than a wasm32 guest can hold anyway).
fn fill_batch(batch: &mut v02::SampleBatch, samples: &[Sample]) -> Result<(), String> {
    let len: usize = samples
        .iter()
        .map(|s| {
            s.prompt.len()
                + s.response.len()
                + s.ground_truth.len()
                + s.metadata.len()
                + s.data_source.len()
        })
        .sum();
    if u32::try_from(len).is_err() {
        return Err(format!(
            "a batch of {} samples holds {len} bytes of text, over the 4 GiB a plugin call can take; lower max_batch_per_call",
            samples.len()
        ));
    }
    let (text, offsets) = (&mut batch.text, &mut batch.offsets);
    text.clear();
    offsets.clear();
    text.reserve(len);
    offsets.reserve(5 * samples.len() + 1);
    offsets.push(0);
    for s in samples {
        for field in [
            &s.prompt,
            &s.response,
            &s.ground_truth,
            &s.metadata,
            &s.data_source,
        ] {
            text.push_str(field);
            // Fits: the total was checked above.
            offsets.push(text.len() as u32);
        }
    }
    Ok(())
}

/// A loaded reward plugin. `Sync`: score from any thread; batches are split over worker
/// threads, each using its own pooled `Store` (a trap discards that store only).
pub struct RewardPlugin {
    runner: Runner,
    pre: AnyRewardPre,
    manifest: Manifest,
}

impl RewardPlugin {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn id(&self) -> &PluginId {
        &self.runner.id
    }
    pub fn metrics(&self) -> MetricsSnapshot {
        self.runner.metrics.snapshot()
    }

    /// Scores a batch and applies the failure policy. `Err` only under `FailurePolicy::Fail`
    /// (the first failure, in sample order).
    pub fn score(
        &self,
        config: &serde_json::Value,
        samples: &[Sample],
    ) -> Result<Vec<Outcome>, PluginError> {
        let raw = self.score_raw(&config.to_string(), samples);
        let r = &self.runner;
        r.metrics
            .samples
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let mut out = Vec::with_capacity(samples.len());
        let mut first_err = None;
        for item in raw {
            let o = match item {
                Ok(o @ Outcome::Scored { .. }) => {
                    r.metrics.scored.fetch_add(1, Ordering::Relaxed);
                    o
                }
                Ok(o) => {
                    r.metrics.not_applicable.fetch_add(1, Ordering::Relaxed);
                    o
                }
                Err(e) => match r.opts.policy {
                    FailurePolicy::Fail => {
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                        continue;
                    }
                    FailurePolicy::Score(v) => {
                        r.metrics.substituted.fetch_add(1, Ordering::Relaxed);
                        Outcome::Substituted { score: v, error: e }
                    }
                    FailurePolicy::Drop => {
                        r.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                        Outcome::Dropped { error: e }
                    }
                },
            };
            out.push(o);
        }
        match first_err {
            Some(e) => Err(Arc::try_unwrap(e).unwrap_or_else(|e| clone_error(&e))),
            None => Ok(out),
        }
    }

    /// Scores a batch without applying the policy: one result per sample, `Outcome::Scored`
    /// or `Outcome::NotApplicable`. Failures are already counted in the metrics by kind.
    pub fn score_raw(
        &self,
        config: &str,
        samples: &[Sample],
    ) -> Vec<Result<Outcome, Arc<PluginError>>> {
        let r = &self.runner;
        let chunks: Vec<&[Sample]> = samples
            .chunks(r.opts.limits.max_batch_per_call.max(1))
            .collect();
        let next = AtomicUsize::new(0);
        let workers = r.threads().min(chunks.len()).max(1);
        let mut results: Vec<Option<ChunkResult>> = (0..chunks.len()).map(|_| None).collect();
        let work = |out: &mut Vec<(usize, ChunkResult)>| {
            let mut slot: Option<PooledReward> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { break };
                let mut budget = self.budget(chunk.len());
                let res = self.run_isolating(&mut slot, config, chunk, &mut budget);
                out.push((i, res));
            }
            if let Some(p) = slot {
                r.pool.lock().unwrap().push(p);
            }
        };
        if workers == 1 {
            let mut out = Vec::new();
            work(&mut out);
            for (i, res) in out {
                results[i] = Some(res);
            }
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        s.spawn(|| {
                            let mut out = Vec::new();
                            work(&mut out);
                            out
                        })
                    })
                    .collect();
                for h in handles {
                    for (i, res) in h.join().expect("plugin worker thread panicked") {
                        results[i] = Some(res);
                    }
                }
            });
        }
        let mut flat = Vec::with_capacity(samples.len());
        for (chunk, res) in chunks.iter().zip(results) {
            match res.expect("every chunk was processed") {
                Ok(v) => flat.extend(v.into_iter().map(|x| x.map_err(|e| r.fail(e, 1)))),
                Err(e) => {
                    let e = r.fail(e, chunk.len());
                    flat.extend(chunk.iter().map(|_| Err(e.clone())));
                }
            }
        }
        flat
    }

    fn budget(&self, n: usize) -> IsolationBudget {
        let l = &self.runner.opts.limits;
        IsolationBudget {
            calls: 0,
            failed: 0,
            succeeded: false,
            max_calls: l.max_isolation_calls.saturating_add(1),
            ends: Instant::now() + l.timeout.saturating_mul(l.max_chunk_deadlines.max(1)),
            // Small chunks (up to 4 samples: 7 calls) are always isolated completely.
            give_up_after: (n.max(1).next_power_of_two().trailing_zeros() as usize + 2).max(8),
            gave_up: false,
        }
    }

    /// Runs a chunk; if the call fails fast (trap, memory cap, bad output, denied capability),
    /// bisects it so the failure is pinned on the samples that cause it and the rest are still
    /// scored. Deadline and fuel failures are not retried: each retry could cost a full deadline.
    /// Bisection stops once the chunk's budget is spent (calls or wall time) or when every call
    /// so far failed, and what is left fails with the error at hand: slow traps cannot multiply
    /// the deadline, and a plugin that fails on every sample costs a few calls, not 2n.
    fn run_isolating(
        &self,
        slot: &mut Option<PooledReward>,
        config: &str,
        chunk: &[Sample],
        budget: &mut IsolationBudget,
    ) -> ChunkResult {
        let res = self.run_chunk(slot, config, chunk);
        budget.calls += 1;
        let err = match res {
            Ok(v) => {
                budget.succeeded = true;
                return Ok(v);
            }
            Err(e) => e,
        };
        budget.failed += 1;
        let retry = matches!(
            err,
            PluginError::Trap { .. }
                | PluginError::MemoryLimit { .. }
                | PluginError::BadOutput { .. }
                | PluginError::CapabilityDenied { .. }
        );
        if !(retry && self.runner.opts.isolate_failures && chunk.len() > 1) || budget.over(self) {
            return Err(err);
        }
        let (a, b) = chunk.split_at(chunk.len() / 2);
        let mut out = Vec::with_capacity(chunk.len());
        for half in [a, b] {
            // Checked again before the second half: no call starts once the budget is spent.
            let res = if budget.over(self) {
                Err(clone_error(&err))
            } else {
                self.run_isolating(slot, config, half, budget)
            };
            match res {
                Ok(v) => out.extend(v),
                Err(e) => {
                    out.extend((1..half.len()).map(|_| Err(clone_error(&e))));
                    out.push(Err(e));
                }
            }
        }
        Ok(out)
    }

    /// One guest call on a pooled (or fresh) store. A poisoning error discards the store.
    fn run_chunk(
        &self,
        slot: &mut Option<PooledReward>,
        config: &str,
        chunk: &[Sample],
    ) -> ChunkResult {
        let r = &self.runner;
        if slot.is_none() {
            let pooled = r.pool.lock().unwrap().pop();
            *slot = Some(match pooled {
                Some(p) => p,
                None => r.instantiate_reward(&self.pre)?,
            });
        }
        let PooledReward { store, inst, batch } = slot.as_mut().expect("filled above");
        let res = match inst {
            AnyReward::V01(inst) => r
                .guarded(store, |s| inst.call_score(s, config, chunk))
                .map(RawOutput::V01),
            AnyReward::V02(inst) => {
                fill_batch(batch, chunk).map_err(|reason| PluginError::Config {
                    plugin: r.id.clone(),
                    reason,
                })?;
                r.guarded(store, |s| inst.call_score_batch(s, config, batch))
                    .map(RawOutput::V02)
            }
        };
        let denied = store.data().denied;
        match res {
            Ok(RawOutput::V01(out)) => Ok(self.check_output(chunk.len(), out, denied)?),
            Ok(RawOutput::V02(out)) => Ok(self.check_batch_output(chunk.len(), out, denied)?),
            // Any failed call (trap, deadline, a lift error) may leave the instance half-way
            // through; never reuse it.
            Err(e) => {
                *slot = None;
                r.metrics.stores_discarded.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Enforces the output contract: one result per sample, finite numbers, bounded size.
    fn check_output(
        &self,
        n: usize,
        out: Vec<Result<ScoreResult, String>>,
        denied: Option<&'static str>,
    ) -> Result<Vec<Result<Outcome, PluginError>>, PluginError> {
        let plugin = &self.runner.id;
        let bad = |reason: String| PluginError::BadOutput {
            plugin: plugin.clone(),
            reason,
        };
        if out.len() != n {
            return Err(bad(format!(
                "returned {} results for {n} samples",
                out.len()
            )));
        }
        let size: usize = out
            .iter()
            .map(|r| match r {
                Ok(ScoreResult::Scored(s)) => {
                    s.components.iter().map(|(k, _)| k.len() + 8).sum::<usize>() + 8
                }
                Ok(ScoreResult::NotApplicable) => 1,
                Err(m) => m.len(),
            })
            .sum();
        let max = self.runner.opts.limits.max_output_bytes;
        if size > max {
            return Err(bad(format!(
                "output of {size} bytes exceeds the limit of {max} bytes"
            )));
        }
        let mut interned = self.runner.names.lock().unwrap();
        Ok(out
            .into_iter()
            .map(|r| match r {
                Ok(ScoreResult::Scored(s)) => {
                    // 0.1.0 names components per sample: a bad name fails that sample only.
                    self.check_names(s.components.iter().map(|(k, _)| k.as_str()))
                        .map_err(bad)?;
                    let components = s
                        .components
                        .into_iter()
                        .map(|(k, v)| (self.runner.intern(&mut interned, &k), v))
                        .collect();
                    self.check_scored(s.score, components)
                }
                Ok(ScoreResult::NotApplicable) => Ok(Outcome::NotApplicable),
                Err(message) => Err(self.guest_error(message, denied)),
            })
            .collect())
    }

    /// Component names of one result: at most `max_components`, each at most
    /// `max_component_name_bytes`, all distinct. Linear in the names' total size.
    fn check_names<'a>(&self, names: impl ExactSizeIterator<Item = &'a str>) -> Result<(), String> {
        let l = &self.runner.opts.limits;
        if names.len() > l.max_components {
            return Err(format!(
                "{} component names exceed the limit of {}",
                names.len(),
                l.max_components
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        for name in names {
            if name.len() > l.max_component_name_bytes {
                return Err(format!(
                    "a component name of {} bytes exceeds the limit of {} bytes",
                    name.len(),
                    l.max_component_name_bytes
                ));
            }
            if !seen.insert(name) {
                return Err(format!("component name `{name}` appears twice"));
            }
        }
        Ok(())
    }

    /// Enforces the 0.2.0 output contract (see `batch-scores` in the WIT): list lengths that
    /// match the batch, in-range indices, each sample at most once among errors and
    /// not-applicable, distinct component names within the caps, bounded size; then converts
    /// to the same per-sample results as 0.1.0, the names shared by every sample (interned).
    /// Shape violations reject the whole call (so bisection pins them on samples); a number
    /// that is not finite or beyond `max_abs_score` fails only its sample. Every check is
    /// linear in the output's size.
    fn check_batch_output(
        &self,
        n: usize,
        out: v02::BatchScores,
        denied: Option<&'static str>,
    ) -> Result<Vec<Result<Outcome, PluginError>>, PluginError> {
        let bad = |reason: String| PluginError::BadOutput {
            plugin: self.runner.id.clone(),
            reason,
        };
        let v02::BatchScores {
            scores,
            component_names: names,
            components,
            absent,
            errors,
            not_applicable,
        } = out;
        let size = names.iter().map(|k| k.len()).sum::<usize>()
            + errors.iter().map(|(_, m)| m.len() + 4).sum::<usize>()
            + 8 * (scores.len() + components.len())
            + 4 * (absent.len() + not_applicable.len());
        let max = self.runner.opts.limits.max_output_bytes;
        if size > max {
            return Err(bad(format!(
                "output of {size} bytes exceeds the limit of {max} bytes"
            )));
        }
        if scores.len() != n {
            return Err(bad(format!(
                "returned {} scores for {n} samples",
                scores.len()
            )));
        }
        let k = names.len();
        self.check_names(names.iter().map(String::as_str))
            .map_err(bad)?;
        if Some(components.len()) != n.checked_mul(k) {
            return Err(bad(format!(
                "returned {} component values for {n} samples and {k} component names (expected {})",
                components.len(),
                n * k
            )));
        }
        let names: Vec<Arc<str>> = {
            let mut interned = self.runner.names.lock().unwrap();
            names
                .iter()
                .map(|name| self.runner.intern(&mut interned, name))
                .collect()
        };
        // What each sample became: None = scored, Some(Ok) = not applicable, Some(Err) = failed.
        let mut fate: Vec<Option<Result<(), String>>> = vec![None; n];
        let mut mark = |i: u32, what: Result<(), String>, list: &str| {
            let slot = fate
                .get_mut(i as usize)
                .ok_or_else(|| bad(format!("{list} index {i} is out of range for {n} samples")))?;
            if slot.is_some() {
                return Err(bad(format!(
                    "sample {i} appears more than once in errors and not-applicable"
                )));
            }
            *slot = Some(what);
            Ok(())
        };
        for (i, message) in errors {
            mark(i, Err(message), "error")?;
        }
        for i in not_applicable {
            mark(i, Ok(()), "not-applicable")?;
        }
        let mut missing = vec![false; if absent.is_empty() { 0 } else { n * k }];
        for a in absent {
            *missing.get_mut(a as usize).ok_or_else(|| {
                bad(format!(
                    "absent position {a} is out of range for {n} samples and {k} component names"
                ))
            })? = true;
        }
        Ok(fate
            .into_iter()
            .enumerate()
            .map(|(i, f)| match f {
                None => {
                    let values = &components[i * k..(i + 1) * k];
                    let components = names
                        .iter()
                        .zip(values)
                        .enumerate()
                        .filter(|(j, _)| !missing.get(i * k + j).copied().unwrap_or(false))
                        .map(|(_, (name, v))| (name.clone(), *v))
                        .collect();
                    self.check_scored(scores[i], components)
                }
                Some(Ok(())) => Ok(Outcome::NotApplicable),
                Some(Err(message)) => Err(self.guest_error(message, denied)),
            })
            .collect())
    }

    /// A scored sample whose score or a component is not finite, or beyond `max_abs_score`,
    /// is bad output (for that sample).
    fn check_scored(
        &self,
        score: f64,
        components: Vec<(Arc<str>, f64)>,
    ) -> Result<Outcome, PluginError> {
        let bad = |reason: String| PluginError::BadOutput {
            plugin: self.runner.id.clone(),
            reason,
        };
        let bound = self.runner.opts.limits.max_abs_score;
        if !score.is_finite() {
            return Err(bad(format!("score is {score} (scores must be finite)")));
        }
        if score.abs() > bound {
            return Err(bad(format!(
                "score {score:e} is beyond the bound of ±{bound:e} (max_abs_score)"
            )));
        }
        if let Some((k, v)) = components.iter().find(|(_, v)| !v.is_finite()) {
            return Err(bad(format!(
                "component `{k}` is {v} (components must be finite)"
            )));
        }
        if let Some((k, v)) = components.iter().find(|(_, v)| v.abs() > bound) {
            return Err(bad(format!(
                "component `{k}` = {v:e} is beyond the bound of ±{bound:e} (max_abs_score)"
            )));
        }
        Ok(Outcome::Scored { score, components })
    }

    /// A guest error after a denied capability call is reported as the denial.
    fn guest_error(&self, message: String, denied: Option<&'static str>) -> PluginError {
        let plugin = self.runner.id.clone();
        match denied {
            Some(cap) => PluginError::CapabilityDenied {
                plugin,
                capability: cap.into(),
            },
            None => PluginError::GuestError {
                plugin,
                message: clip(message),
            },
        }
    }
}

/// Bytes of guest-controlled text (error messages, backtraces) an error keeps: an error is
/// copied into the log line and output row of every sample it fails.
pub const MAX_ERROR_TEXT_BYTES: usize = 4 << 10;

/// `text` cut to `MAX_ERROR_TEXT_BYTES` (at a character boundary), saying how long it was.
fn clip(mut text: String) -> String {
    if text.len() <= MAX_ERROR_TEXT_BYTES {
        return text;
    }
    let total = text.len();
    let mut cut = MAX_ERROR_TEXT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!(" [... cut, {total} bytes in all]"));
    text
}

/// A loaded data-adapter plugin. Conversion is a one-off preprocessing step, so calls are
/// serialized on one store (re-created after a trap).
pub struct AdapterPlugin {
    runner: Runner,
    manifest: Manifest,
    pre: AnyAdapterPre,
    inst: Mutex<Option<(Store<HostState>, AnyAdapter)>>,
}

impl AdapterPlugin {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn metrics(&self) -> MetricsSnapshot {
        self.runner.metrics.snapshot()
    }

    /// Converts raw JSON records to training examples (JSON values). The outer `Err` is a
    /// failed call; inner errors are per record.
    pub fn convert(
        &self,
        config: &serde_json::Value,
        records: &[String],
    ) -> Result<Vec<Result<serde_json::Value, PluginError>>, PluginError> {
        let r = &self.runner;
        let mut guard = self.inst.lock().unwrap();
        if guard.is_none() {
            let mut store = r.new_store();
            let inst = r.guarded(&mut store, |s| self.pre.instantiate(s))?;
            *guard = Some((store, inst));
        }
        let (store, inst) = guard.as_mut().expect("filled above");
        let cfg = config.to_string();
        let res = r.guarded(store, |s| inst.convert(s, &cfg, records));
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                *guard = None;
                r.metrics.failure(e.kind(), records.len() as u64);
                return Err(e);
            }
        };
        let plugin = &r.id;
        if out.len() != records.len() {
            let e = PluginError::BadOutput {
                plugin: plugin.clone(),
                reason: format!(
                    "returned {} results for {} records",
                    out.len(),
                    records.len()
                ),
            };
            r.metrics.failure(e.kind(), records.len() as u64);
            return Err(e);
        }
        Ok(out
            .into_iter()
            .map(|x| match x {
                Ok(text) => serde_json::from_str(&text).map_err(|e| PluginError::BadOutput {
                    plugin: plugin.clone(),
                    reason: format!("example is not JSON: {e}"),
                }),
                Err(message) => Err(PluginError::GuestError {
                    plugin: plugin.clone(),
                    message: clip(message),
                }),
            })
            .inspect(|x| {
                if let Err(e) = x {
                    r.metrics.failure(e.kind(), 1);
                }
            })
            .collect())
    }
}

/// `PluginError` holds an `io::Error`, so it is not `Clone`; a failed chunk shares one error
/// among its samples and `score` hands back an owned copy.
fn clone_error(e: &PluginError) -> PluginError {
    use PluginError::*;
    match e {
        Trap {
            plugin,
            message,
            backtrace,
        } => Trap {
            plugin: plugin.clone(),
            message: message.clone(),
            backtrace: backtrace.clone(),
        },
        Timeout {
            plugin,
            limit,
            elapsed,
        } => Timeout {
            plugin: plugin.clone(),
            limit: *limit,
            elapsed: *elapsed,
        },
        OutOfFuel { plugin, fuel } => OutOfFuel {
            plugin: plugin.clone(),
            fuel: *fuel,
        },
        MemoryLimit {
            plugin,
            limit_bytes,
            requested_bytes,
        } => MemoryLimit {
            plugin: plugin.clone(),
            limit_bytes: *limit_bytes,
            requested_bytes: *requested_bytes,
        },
        GuestError { plugin, message } => GuestError {
            plugin: plugin.clone(),
            message: message.clone(),
        },
        IncompatibleApi {
            plugin,
            found,
            supported,
        } => IncompatibleApi {
            plugin: plugin.clone(),
            found: found.clone(),
            supported: supported.clone(),
        },
        BadOutput { plugin, reason } => BadOutput {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        CapabilityDenied { plugin, capability } => CapabilityDenied {
            plugin: plugin.clone(),
            capability: capability.clone(),
        },
        InvalidWasm { plugin, reason } => InvalidWasm {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        CompileLimit { plugin, reason } => CompileLimit {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        BadManifest { plugin, reason } => BadManifest {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
        Io {
            plugin,
            path,
            source,
        } => Io {
            plugin: plugin.clone(),
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Config { plugin, reason } => Config {
            plugin: plugin.clone(),
            reason: reason.clone(),
        },
    }
}

/// Converts loosely-typed JSON fields into the WIT sample record.
pub fn sample(
    prompt: &str,
    response: &str,
    ground_truth: &serde_json::Value,
    metadata: &serde_json::Value,
    data_source: &str,
) -> Sample {
    Sample {
        prompt: prompt.to_string(),
        response: response.to_string(),
        ground_truth: ground_truth.to_string(),
        metadata: if metadata.is_null() {
            "{}".into()
        } else {
            metadata.to_string()
        },
        data_source: data_source.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "dose-check".into(),
            version: "1.2.0+build.7".into(),
            description: "checks doses".into(),
            config_schema: "{}".into(),
            capabilities: vec![],
            api_version: "0.2.0".into(),
        }
    }

    #[test]
    fn manifests_are_capped_and_capabilities_folded() {
        let mut m = manifest();
        m.capabilities = vec![Capability::Search, Capability::Judge, Capability::Search];
        validate_manifest(&mut m).unwrap();
        assert_eq!(m.capabilities, vec![Capability::Search, Capability::Judge]);
        let bad: [(&str, fn(&mut Manifest)); 7] = [
            ("name is 0 bytes", |m| m.name.clear()),
            ("name is 65 bytes", |m| m.name = "n".repeat(65)),
            ("name contains ' '", |m| m.name = "dose check".into()),
            ("version contains '\\n'", |m| m.version = "1\nforged".into()),
            ("description is 4097 bytes", |m| {
                m.description = "d".repeat(4097)
            }),
            ("config_schema is 65537 bytes", |m| {
                m.config_schema = " ".repeat(65537)
            }),
            ("lists 65 capabilities", |m| {
                m.capabilities = vec![Capability::Judge; 65]
            }),
        ];
        for (needle, f) in bad {
            let mut m = manifest();
            f(&mut m);
            let e = validate_manifest(&mut m).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(e.len() < 200, "the reason never quotes the field: {e}");
        }
    }

    #[test]
    fn long_error_text_is_clipped_at_a_char_boundary() {
        assert_eq!(clip("short".into()), "short");
        let long = "é".repeat(MAX_ERROR_TEXT_BYTES);
        let c = clip(long.clone());
        assert!(c.len() < MAX_ERROR_TEXT_BYTES + 64, "{}", c.len());
        assert!(c.ends_with(&format!("[... cut, {} bytes in all]", long.len())));
    }
}
