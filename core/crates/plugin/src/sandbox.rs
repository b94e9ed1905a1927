//! Per-store state of a sandboxed plugin: deny-all WASI, captured stdio, memory cap, the
//! call's deadline as seen by blocking host calls (WASI clocks, judge, search), and the host
//! functions of the plugin API (log, judge, search).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::reward::medrl::plugin::{
    host as wit_host, judge as wit_judge, search as wit_search, types as wit_types,
};
use super::capability::Grants;
use super::policy::Metrics;

/// Bytes of guest stderr kept to explain a trap (a Rust panic message lands there).
const STDERR_TAIL: usize = 2048;

/// Guest output shared between the WASI streams and the host state of one store.
pub(crate) struct GuestIo {
    label: Mutex<String>,
    /// Bytes the guest may still write to stdout/stderr/log in this store's lifetime; output
    /// beyond it is discarded (not an error, so a chatty plugin cannot crash itself).
    budget: AtomicUsize,
    stderr_tail: Mutex<String>,
}

impl GuestIo {
    pub(crate) fn new(label: String, budget: usize) -> Arc<Self> {
        Arc::new(Self {
            label: Mutex::new(label),
            budget: AtomicUsize::new(budget),
            stderr_tail: Mutex::new(String::new()),
        })
    }
    pub(crate) fn set_label(&self, label: String) {
        *self.label.lock().unwrap() = label;
    }
    pub(crate) fn label(&self) -> String {
        self.label.lock().unwrap().clone()
    }
    /// Takes `n` bytes from the budget; false once it is spent.
    fn spend(&self, n: usize) -> bool {
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(n))
            .is_ok()
    }
    pub(crate) fn take_stderr_tail(&self) -> String {
        std::mem::take(&mut *self.stderr_tail.lock().unwrap())
    }
    fn write(&self, stderr: bool, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        if stderr {
            let mut tail = self.stderr_tail.lock().unwrap();
            tail.push_str(&text);
            if tail.len() > STDERR_TAIL {
                let mut cut = tail.len() - STDERR_TAIL;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail.drain(..cut);
            }
        }
        if !self.spend(bytes.len()) {
            return;
        }
        let label = self.label();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if stderr {
                tracing::warn!(target: "medrl::plugin::guest", plugin = %label, stream = "stderr", "{line}");
            } else {
                tracing::info!(target: "medrl::plugin::guest", plugin = %label, stream = "stdout", "{line}");
            }
        }
    }
}

/// A WASI output stream that forwards the guest's stdout/stderr to `tracing`.
#[derive(Clone)]
pub(crate) struct LogStream {
    pub(crate) io: Arc<GuestIo>,
    pub(crate) stderr: bool,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.io.write(self.stderr, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.io.write(self.stderr, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Caps every linear memory and table of a store; remembers whether the cap was hit so a
/// resulting trap (Rust aborts on allocation failure) is reported as `MemoryLimit`.
pub(crate) struct MemLimiter {
    pub(crate) max_memory: usize,
    pub(crate) hit: Option<usize>,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; nothing legitimate needs millions of them.
        Ok(desired <= 1 << 20)
    }
}

/// The `T` of every plugin `Store<T>`.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemLimiter,
    pub(crate) io: Arc<GuestIo>,
    grants: Grants,
    metrics: Arc<Metrics>,
    /// Set when the guest called a capability it was not granted during the current call.
    pub(crate) denied: Option<&'static str>,
    /// Wall-clock deadline of the current guest call (set by the host before every call).
    /// Epoch interruption cannot stop a guest blocked inside a host call, so blocking host
    /// calls read it themselves.
    pub(crate) deadline: Option<Instant>,
    /// Largest input (bytes) one capability call (search query, judge prompt) may pass.
    max_capability_input: usize,
    /// Origin of the guest's monotonic clock.
    clock_origin: Instant,
}

/// The error a blocking host call returns when the guest asks to wait past its call's
/// deadline; the host reports it as `PluginError::Timeout`.
#[derive(Debug)]
pub(crate) struct WaitPastDeadline {
    pub(crate) what: &'static str,
    pub(crate) wait: Duration,
}

impl std::fmt::Display for WaitPastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest asked to {} for {:?}, past its call's deadline",
            self.what, self.wait
        )
    }
}

impl std::error::Error for WaitPastDeadline {}

impl HostState {
    pub(crate) fn new(
        label: String,
        max_memory: usize,
        max_log_bytes: usize,
        max_capability_input: usize,
        grants: Grants,
        metrics: Arc<Metrics>,
    ) -> Self {
        let io = GuestIo::new(label, max_log_bytes);
        // Deny by default: no preopened directories, no environment, no arguments, no
        // network (every socket address rejected, name lookup off), stdin empty.
        let wasi = WasiCtxBuilder::new()
            .stdout(LogStream {
                io: io.clone(),
                stderr: false,
            })
            .stderr(LogStream {
                io: io.clone(),
                stderr: true,
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemLimiter {
                max_memory,
                hit: None,
            },
            io,
            grants,
            metrics,
            denied: None,
            deadline: None,
            max_capability_input,
            clock_origin: Instant::now(),
        }
    }

    /// Why a capability call must not run: its input is over the cap, or the call's deadline
    /// has passed (the guest then traps with a timeout at its next epoch check, right after
    /// this host call returns).
    fn refuse(&self, capability: &str, input: usize) -> Option<String> {
        if input > self.max_capability_input {
            return Some(format!(
                "{capability} input of {input} bytes exceeds the limit of {} bytes",
                self.max_capability_input
            ));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(format!(
                "{capability} refused: the call's deadline has passed"
            ));
        }
        None
    }

    fn deny(&mut self, capability: &'static str) -> String {
        self.denied = Some(capability);
        self.metrics
            .capability_denied
            .fetch_add(1, Ordering::Relaxed);
        let label = self.io.label();
        tracing::warn!(target: "medrl::plugin", plugin = %label, capability, "capability denied");
        format!("capability `{capability}` is not granted to plugin {label}")
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_types::Host for HostState {}

impl wit_host::Host for HostState {
    fn log(&mut self, level: wit_host::LogLevel, msg: String) {
        if !self.io.spend(msg.len()) {
            return;
        }
        let p = self.io.label();
        use wit_host::LogLevel as L;
        match level {
            L::Trace => tracing::trace!(target: "medrl::plugin::guest", plugin = %p, "{msg}"),
            L::Debug => tracing::debug!(target: "medrl::plugin::guest", plugin = %p, "{msg}"),
            L::Info => tracing::info!(target: "medrl::plugin::guest", plugin = %p, "{msg}"),
            L::Warn => tracing::warn!(target: "medrl::plugin::guest", plugin = %p, "{msg}"),
            L::Error => tracing::error!(target: "medrl::plugin::guest", plugin = %p, "{msg}"),
        }
    }
}

/// Most hits one `search` call returns: the host copies each into the guest.
pub(crate) const MAX_SEARCH_TOP_K: u32 = 1000;
/// Most tokens one `judge-generate` call may ask for (the judge's own cap may be lower).
pub(crate) const MAX_JUDGE_TOKENS: u32 = 4096;

// The judge and search host functions return the guest's error text: their signatures are the
// WIT's (`result<_, string>`), generated by bindgen, so they stay String.
impl wit_judge::Host for HostState {
    fn judge_score(&mut self, prompt: String) -> Result<f64, String> {
        match self.grants.judge.clone() {
            Some(j) => match (self.refuse("judge", prompt.len()), self.deadline) {
                (Some(why), _) => Err(why),
                (None, Some(by)) => j.score_by(&prompt, by),
                (None, None) => j.score(&prompt),
            },
            None => Err(self.deny("judge")),
        }
    }
    fn judge_generate(&mut self, prompt: String, max_tokens: u32) -> Result<String, String> {
        match self.grants.judge.clone() {
            Some(j) => {
                let n = max_tokens.min(MAX_JUDGE_TOKENS);
                match (self.refuse("judge", prompt.len()), self.deadline) {
                    (Some(why), _) => Err(why),
                    (None, Some(by)) => j.generate_by(&prompt, n, by),
                    (None, None) => j.generate(&prompt, n),
                }
            }
            None => Err(self.deny("judge")),
        }
    }
}

impl wit_search::Host for HostState {
    fn search(&mut self, query: String, top_k: u32) -> Result<Vec<wit_search::Hit>, String> {
        match self.grants.search.clone() {
            Some(s) => match self.refuse("search", query.len()) {
                Some(why) => Err(why),
                None => s.search(&query, top_k.min(MAX_SEARCH_TOP_K)),
            }
            .map(|hits| {
                hits.into_iter()
                    .map(|h| wit_search::Hit {
                        id: h.id,
                        score: h.score,
                    })
                    .collect()
            }),
            None => Err(self.deny("search")),
        }
    }
}

/// `wasi:clocks/monotonic-clock` with waits bounded by the call's deadline. wasmtime-wasi's
/// own clock sleeps as long as the guest asks (`std::thread::sleep` for an hour blocks inside
/// `poll`, where epoch interruption cannot reach); this one shadows it in the linker and
/// refuses, with a trap reported as a timeout, any wait that would end past the deadline.
/// Every other WASI pollable the sandbox hands out is ready at once (captured stdio, empty
/// stdin; sockets cannot be created), so no `poll` can block longer than the deadline.
pub(crate) mod clock {
    use super::{HostState, WaitPastDeadline};
    use std::time::{Duration, Instant};
    use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
    use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
    use wasmtime_wasi::p2::{subscribe, DynPollable, Pollable};

    pub(crate) struct DeadlineClock;

    impl HasData for DeadlineClock {
        type Data<'a> = View<'a>;
    }

    pub(crate) struct View<'a> {
        table: &'a mut ResourceTable,
        origin: Instant,
        deadline: Option<Instant>,
    }

    /// A sleep that ends at an instant the host already checked against the deadline.
    struct Wake(tokio::time::Instant);

    #[wasmtime_wasi::async_trait]
    impl Pollable for Wake {
        async fn ready(&mut self) {
            tokio::time::sleep_until(self.0).await
        }
    }

    impl View<'_> {
        fn sleep(&mut self, wait: Duration) -> wasmtime::Result<Resource<DynPollable>> {
            let now = Instant::now();
            let wake = now.checked_add(wait);
            if let Some(deadline) = self.deadline {
                if wake.is_none_or(|w| w > deadline) {
                    return Err(wasmtime::Error::new(WaitPastDeadline {
                        what: "sleep",
                        wait,
                    }));
                }
            }
            // No deadline (cannot happen in a guarded call): never wait, rather than forever.
            let wake = wake.filter(|_| self.deadline.is_some()).unwrap_or(now);
            let res = self
                .table
                .push(Wake(tokio::time::Instant::from_std(wake)))?;
            subscribe(self.table, res)
        }
    }

    impl monotonic_clock::Host for View<'_> {
        fn now(&mut self) -> wasmtime::Result<u64> {
            Ok(self.origin.elapsed().as_nanos().min(u64::MAX as u128) as u64)
        }
        fn resolution(&mut self) -> wasmtime::Result<u64> {
            Ok(1)
        }
        fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
            let now = self.now()?;
            self.sleep(Duration::from_nanos(when.saturating_sub(now)))
        }
        fn subscribe_duration(&mut self, d: u64) -> wasmtime::Result<Resource<DynPollable>> {
            self.sleep(Duration::from_nanos(d))
        }
    }

    /// Replaces the monotonic clock that `wasmtime_wasi::p2::add_to_linker_sync` linked.
    pub(crate) fn shadow(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        linker.allow_shadowing(true);
        let r = monotonic_clock::add_to_linker::<HostState, DeadlineClock>(linker, |s| View {
            table: &mut s.table,
            origin: s.clock_origin,
            deadline: s.deadline,
        });
        linker.allow_shadowing(false);
        r
    }
}

/// Later API versions import the same host services under their own package version; they
/// delegate to the 0.1.0 implementations above so every version behaves identically.
macro_rules! delegate_host_imports {
    ($version:ident) => {
        mod $version {
            use super::super::bindings::$version::reward::medrl::plugin::{
                host as h, judge as j, search as s, types as t,
            };
            use super::{wit_host, wit_judge, wit_search, HostState};

            impl t::Host for HostState {}

            impl h::Host for HostState {
                fn log(&mut self, level: h::LogLevel, msg: String) {
                    use h::LogLevel as L2;
                    use wit_host::LogLevel as L;
                    let level = match level {
                        L2::Trace => L::Trace,
                        L2::Debug => L::Debug,
                        L2::Info => L::Info,
                        L2::Warn => L::Warn,
                        L2::Error => L::Error,
                    };
                    wit_host::Host::log(self, level, msg)
                }
            }

            impl j::Host for HostState {
                fn judge_score(&mut self, prompt: String) -> Result<f64, String> {
                    wit_judge::Host::judge_score(self, prompt)
                }
                fn judge_generate(
                    &mut self,
                    prompt: String,
                    max_tokens: u32,
                ) -> Result<String, String> {
                    wit_judge::Host::judge_generate(self, prompt, max_tokens)
                }
            }

            impl s::Host for HostState {
                fn search(&mut self, query: String, top_k: u32) -> Result<Vec<s::Hit>, String> {
                    wit_search::Host::search(self, query, top_k).map(|hits| {
                        hits.into_iter()
                            .map(|h| s::Hit {
                                id: h.id,
                                score: h.score,
                            })
                            .collect()
                    })
                }
            }
        }
    };
}

delegate_host_imports!(v02);
delegate_host_imports!(v03);
