//! `GET /metrics` in the Prometheus text format: requests by endpoint and status, tokens, queue
//! depth, KV-cache use and latency histograms. Plain atomics and one mutex per histogram; no
//! registry crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds, in seconds, of the latency buckets.
const BUCKETS: [f64; 16] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0];

#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if h.0.is_empty() {
            h.0 = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += seconds;
        h.2 += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", h.0.get(i).copied().unwrap_or(0));
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", h.2, h.1, h.2);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// (endpoint, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub latency: Histogram,
    pub time_to_first_token: Histogram,
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// The text format; `gauges` are (name, help, labels, value) lines added by the server.
    pub fn render(&self, gauges: &[(&str, &str, String, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP medrl_requests_total HTTP requests by endpoint and status.\n# TYPE medrl_requests_total counter\n");
        for ((e, s), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "medrl_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}");
        }
        for (name, help, v) in [
            ("medrl_prompt_tokens_total", "Prompt tokens of accepted requests.", &self.prompt_tokens),
            ("medrl_generation_tokens_total", "Tokens generated.", &self.completion_tokens),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        let mut last = "";
        for (name, help, labels, v) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{labels} {v}");
        }
        self.latency.render("medrl_request_latency_seconds", "Time from a request's arrival to its last byte.", &mut out);
        self.time_to_first_token.render("medrl_time_to_first_token_seconds", "Time from a request's arrival to its first generated token.", &mut out);
        out
    }
}
