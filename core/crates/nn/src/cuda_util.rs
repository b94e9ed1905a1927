//! What the CUDA kernel modules ([`crate::kernels`], [`crate::infer`]) share: operand
//! addresses and launches.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchArgs, LaunchConfig};
use candle_core::{CudaStorage, DType, Layout, Result};
use half::{bf16, f16};

/// Device address of a contiguous operand's first element (the layout's offset applied).
pub(crate) fn ptr(s: &CudaStorage, l: &Layout, what: &str) -> Result<u64> {
    if !l.is_contiguous() {
        candle_core::bail!("kernel operand {what} must be contiguous");
    }
    let stream = s.device().cuda_stream();
    let off = l.start_offset() as u64;
    Ok(match s.dtype() {
        DType::BF16 => s.as_cuda_slice::<bf16>()?.device_ptr(&stream).0 + 2 * off,
        DType::F16 => s.as_cuda_slice::<f16>()?.device_ptr(&stream).0 + 2 * off,
        DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(&stream).0 + 4 * off,
        DType::U32 => s.as_cuda_slice::<u32>()?.device_ptr(&stream).0 + 4 * off,
        DType::U8 => s.as_cuda_slice::<u8>()?.device_ptr(&stream).0 + off,
        other => candle_core::bail!("kernel operand {what}: unsupported dtype {other:?}"),
    })
}

/// Device address of a contiguous CUDA tensor's first element, for kernels outside this crate
/// that write operands in place (the optimizer's): [`ptr`] on the tensor's storage.
pub fn tensor_ptr(t: &candle_core::Tensor, what: &str) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cuda(c) => ptr(c, l, what),
        _ => candle_core::bail!("kernel operand {what} is not in CUDA storage"),
    }
}

pub(crate) fn launch(b: &mut LaunchArgs<'_>, cfg: LaunchConfig, name: &str) -> Result<()> {
    // SAFETY: each caller pushes exactly the arguments of the kernel it loaded, with pointers to
    // buffers of the sizes the kernel indexes (checked by the callers' shapes).
    unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| candle_core::Error::Msg(format!("launching {name}: {e}")))
}
