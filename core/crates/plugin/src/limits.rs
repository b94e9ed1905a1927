//! What a plugin may spend and how it is run: the limits of every guest call ([`Limits`]) and
//! the options of one loaded plugin ([`PluginOptions`]: limits, granted capabilities, failure
//! policy, worker threads, bisection).

use std::time::Duration;

use super::capability::Grants;
use super::policy::FailurePolicy;

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
    /// Longest output of one tool call (the text given to the model, or its error message), in
    /// bytes. Longer output fails the call with `BadOutput`; it is never truncated, because a
    /// cut-off list or sentence would read to the model as a complete answer. Output beyond
    /// this cap plus 1 MiB is refused while it is copied out of the guest, so a tool cannot
    /// make the host allocate more than that.
    pub max_tool_output_bytes: usize,
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
            max_tool_output_bytes: 64 << 10,
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
