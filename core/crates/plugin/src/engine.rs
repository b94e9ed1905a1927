//! The wasmtime engine of the host: its settings ([`HostConfig`]), the linker holding the
//! sandbox's imports, the epoch ticker behind call deadlines, and compilation: the checks on a
//! component's size and shape before compiling it, the compile on a worker thread under a
//! deadline, and the on-disk cache of compiled components.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::reward::Reward;
use super::bindings::{v02, v03};
use super::error::{PluginError, PluginId};
use super::sandbox::HostState;
use super::version::{api_version, world_of, World};

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

pub(crate) struct HostInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) cfg: HostConfig,
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
    pub(crate) inner: Arc<HostInner>,
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
        // All worlds of a version import the same interfaces, so one linker serves them all; the
        // versions' interfaces have different names (`...@0.1.0`, `...@0.2.0`, `...@0.3.0`), so
        // they coexist.
        Reward::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(cerr)?;
        v02::reward::Reward::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(cerr)?;
        v03::reward::Reward::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
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
    pub(crate) fn compile(
        &self,
        bytes: &[u8],
        id: &PluginId,
    ) -> Result<(Component, String), PluginError> {
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

    /// Compiles (or loads from the cache) and links a component against the host imports;
    /// shared by every plugin kind. Returns the pre-instance, the API version and the world the
    /// component exports (if it is one of ours).
    pub(crate) fn link(
        &self,
        bytes: &[u8],
        id: &PluginId,
    ) -> Result<(wasmtime::component::InstancePre<HostState>, String, Option<World>), PluginError>
    {
        let (component, version) = self.compile(bytes, id)?;
        let world = world_of(&self.inner.engine, &component);
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            PluginError::InvalidWasm {
                plugin: id.clone(),
                reason: format!("{e:#}"),
            }
        })?;
        Ok((pre, version, world))
    }
}

/// Reads a `.wasm` file; the file name identifies the plugin until its manifest is read.
pub(crate) fn read_component(path: &Path) -> Result<(Vec<u8>, PluginId), PluginError> {
    let id = file_id(path);
    let bytes = std::fs::read(path).map_err(|e| PluginError::Io {
        plugin: id.clone(),
        path: path.display().to_string(),
        source: e,
    })?;
    Ok((bytes, id))
}
