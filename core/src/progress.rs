//! Logging setup and progress bars.
//!
//! Progress bars draw on stderr only when it is a terminal; in CI logs and pipes they stay
//! silent and periodic `tracing` lines carry the same information instead.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber: human-readable lines by default, JSON lines on request.
/// `RUST_LOG` overrides `default_level`.
pub fn init_logging(json: bool, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.with_target(false).try_init() };
}

/// A bar with rate and ETA for `total` units of `unit` (e.g. "tok", "samples").
pub fn bar(total: u64, msg: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), draw_target());
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})");
    pb.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    pb.set_message(msg.to_string());
    pb
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A spinner with elapsed time, for work whose size is not known up front.
pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, draw_target());
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Memory in use, in MiB: device memory in use on CUDA (whole device, as `nvidia-smi` shows),
/// resident set size on CPU.
/// On CUDA: (peak, current) MB allocated from the device's default memory pool since the last
/// [`reset_peak_memory`]: what tensors hold, like PyTorch's `max_memory_allocated`. The pool
/// keeps freed memory (see `model::parse_device`), so [`memory_mb`] reports what is reserved.
pub fn pool_memory_mb(device: &candle_core::Device) -> Option<(f64, f64)> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
        let high = crate::model::mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, None).ok()?;
        let cur = crate::model::mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT, None).ok()?;
        return Some((high as f64 / 1048576.0, cur as f64 / 1048576.0));
    }
    let _ = device;
    None
}

/// Restart the peak of [`pool_memory_mb`] from the current use.
pub fn reset_peak_memory(device: &candle_core::Device) {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
        // Resetting the high-water mark takes a zero value; a failure only leaves the old peak.
        let _ = crate::model::mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Some(0));
    }
    let _ = device;
}

/// Memory in use, in MB: on CUDA the peak allocated by tensors so far (see
/// [`pool_memory_mb`]), else the process's resident memory.
pub fn memory_mb(device: &candle_core::Device) -> f64 {
    if let Some((high, _)) = pool_memory_mb(device) {
        return high;
    }
    device_memory_used_mb(device)
}

/// What the whole device has in use (all processes; includes memory pools' reserve), else the
/// process's resident memory.
pub fn device_memory_used_mb(device: &candle_core::Device) -> f64 {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        if let Ok((free, total)) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info() {
            return (total - free) as f64 / (1024.0 * 1024.0);
        }
    }
    let _ = device;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()))
        .map(|pages| pages * 4096.0 / (1024.0 * 1024.0))
        .unwrap_or(0.0)
}
