//! Compute devices: parsing `cpu` / `cuda:N` / `auto` and dtype names, and the CUDA memory pool
//! settings and readings (peak and current use) that training and benchmarks report.

use candle_core::{DType, Device};

/// Compute device selection from a user string: `cpu`, `cuda`, `cuda:N`, or `auto`.
/// Keep memory freed into the device's default pool instead of returning it to the driver at
/// every synchronization (the default release threshold is 0). cudarc allocates with
/// `cuMemAllocAsync` from that pool; a training step frees and re-allocates tens of GB, and with
/// threshold 0 each step after a sync (reading the loss) maps all of it afresh. PyTorch's caching
/// allocator keeps freed blocks the same way. `MEDRL_POOL_RELEASE=1` restores the driver default.
#[cfg(feature = "cuda")]
fn keep_freed_memory_pooled(d: &candle_core::CudaDevice) {
    use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute;
    if std::env::var("MEDRL_POOL_RELEASE").is_ok_and(|v| v == "1") {
        return;
    }
    if let Err(r) = mem_pool_attribute(d, CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, Some(u64::MAX)) {
        tracing::warn!("could not raise the CUDA memory pool's release threshold ({r:?}); allocations may be slower");
    }
}

/// Read (`set: None`) or write a u64 attribute of the device's default memory pool, the one
/// cudarc's `cuMemAllocAsync` allocates from. Returns the value read (or written).
#[cfg(feature = "cuda")]
pub fn mem_pool_attribute(
    d: &candle_core::CudaDevice,
    attr: candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute,
    set: Option<u64>,
) -> Result<u64, candle_core::cuda_backend::cudarc::driver::sys::CUresult> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let dev = d.cuda_stream().context().cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut value = set.unwrap_or(0);
    let ptr = &mut value as *mut u64 as *mut std::ffi::c_void;
    // SAFETY: driver calls on a valid device handle, with out-pointers to locals that outlive
    // them; every pool attribute used here is a u64 (cuuint64_t).
    let r = unsafe {
        match sys::cuDeviceGetDefaultMemPool(&mut pool, dev) {
            sys::CUresult::CUDA_SUCCESS if set.is_some() => sys::cuMemPoolSetAttribute(pool, attr, ptr),
            sys::CUresult::CUDA_SUCCESS => sys::cuMemPoolGetAttribute(pool, attr, ptr),
            err => err,
        }
    };
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(value)
    } else {
        Err(r)
    }
}

/// A device or dtype name that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid device {0:?}: expected cuda:N")]
    BadOrdinal(String),
    #[error("invalid device {0:?}: expected cpu, cuda, cuda:N or auto")]
    UnknownDevice(String),
    #[error("cannot open {spec}: this medrl was built without the `cuda` feature (see docs/cuda.md)")]
    NoCudaBuild { spec: String },
    /// The driver refused the device (`detail`: its error).
    #[error("cannot open {spec}: {detail}")]
    Open { spec: String, detail: String },
    #[error("invalid dtype {0:?}: expected f32, bf16, f16 or auto")]
    UnknownDtype(String),
}

pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").map(|n| n.parse::<usize>()).transpose().map_err(|_| DeviceError::BadOrdinal(s.to_string()))?;
            let dev = Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| {
                if cfg!(feature = "cuda") {
                    DeviceError::Open { spec: s.to_string(), detail: e.to_string() }
                } else {
                    DeviceError::NoCudaBuild { spec: s.to_string() }
                }
            })?;
            #[cfg(feature = "cuda")]
            if let Device::Cuda(d) = &dev {
                // SAFETY: medrl issues all work of a device on that device's one stream, so the
                // per-tensor CUDA events cudarc records to order work across streams are never
                // needed; they cost two event creations per allocation and event waits/records
                // on every kernel launch, which dominated small-kernel training steps.
                unsafe { d.disable_event_tracking() };
                keep_freed_memory_pooled(d);
            }
            Ok(dev)
        }
        other => Err(DeviceError::UnknownDevice(other.to_string())),
    }
}

/// Parse a dtype name; `auto` is bf16 on CUDA and f32 on CPU.
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType, DeviceError> {
    match spec {
        "auto" => Ok(if device.is_cuda() { DType::BF16 } else { DType::F32 }),
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(DeviceError::UnknownDtype(other.to_string())),
    }
}


/// Memory in use, in MiB: device memory in use on CUDA (whole device, as `nvidia-smi` shows),
/// resident set size on CPU.
/// On CUDA: (peak, current) MB allocated from the device's default memory pool since the last
/// [`reset_peak_memory`]: what tensors hold, like PyTorch's `max_memory_allocated`. The pool
/// keeps freed memory (see `parse_device`), so [`memory_mb`] reports what is reserved.
pub fn pool_memory_mb(device: &candle_core::Device) -> Option<(f64, f64)> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
        let high = mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, None).ok()?;
        let cur = mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT, None).ok()?;
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
        let _ = mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Some(0));
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

/// Bytes a new allocation can still get on `device`: the driver's free memory plus what the
/// memory pool holds in reserve but no tensor uses (candle's pool keeps freed memory). `None`
/// on CPU, where the engine sizes its cache from the requests instead.
pub fn free_memory_bytes(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
        let (free, _) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
        let reserved = mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, None).unwrap_or(0);
        let used = mem_pool_attribute(d, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT, None).unwrap_or(0);
        return Some(free as u64 + reserved.saturating_sub(used));
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_device_and_dtype_names_say_what_is_expected() {
        assert_eq!(parse_device("tpu").unwrap_err().to_string(), "invalid device \"tpu\": expected cpu, cuda, cuda:N or auto");
        assert_eq!(parse_device("cuda:x").unwrap_err(), DeviceError::BadOrdinal("cuda:x".into()));
        assert_eq!(parse_dtype("f64", &Device::Cpu).unwrap_err().to_string(), "invalid dtype \"f64\": expected f32, bf16, f16 or auto");
        assert_eq!(parse_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
        if !cfg!(feature = "cuda") {
            assert!(matches!(parse_device("cuda:0"), Err(DeviceError::NoCudaBuild { .. })));
        }
    }
}
