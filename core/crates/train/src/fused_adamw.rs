//! AdamW as one CUDA kernel per parameter.
//!
//! The tensor-op AdamW in `optim.rs` launches about a dozen kernels (and allocates as many
//! temporaries) per parameter; for a 0.5B-parameter decoder's ~290 tensors that is ~3,500
//! launches per step, which on a GPU costs more than the update's memory traffic. This kernel
//! reads the gradient and the three f32 states once and writes the parameter and both moments
//! in place. The kernel is compiled once per process with NVRTC (already linked by candle's
//! CUDA backend), so no build-time CUDA toolchain step is added.
//!
//! The arithmetic is the same as the tensor path's, in f32; `medrl bench train-agreement`
//! compares the two on the GPU.

use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::{DType, Device, Storage, Tensor};
use std::sync::OnceLock;

const SOURCE: &str = r#"
extern "C" __global__ void medrl_adamw_f32(
    float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
    const unsigned long long n, const float lr, const float b1, const float b2, const float bc1,
    const float bc2, const float eps, const float decay, const float clip)
{
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gi = g[i] * clip;
        const float mi = b1 * m[i] + (1.0f - b1) * gi;
        const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps));
    }
}
"#;

static PTX: OnceLock<Result<String, String>> = OnceLock::new();

/// Hyper-parameters of one update, already bias-corrected for the step.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    pub eps: f32,
    /// `1 - lr * weight_decay` for decayed parameters, 1 otherwise.
    pub decay: f32,
    /// Gradient clipping factor.
    pub clip: f32,
}

/// Whether the fused path applies: all four tensors f32, contiguous from offset 0, on one CUDA
/// device.
pub fn applies(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let ok = |t: &Tensor| t.dtype() == DType::F32 && t.is_contiguous() && t.layout().start_offset() == 0 && t.device().is_cuda();
    ok(p) && ok(g) && ok(m) && ok(v) && p.elem_count() == g.elem_count() && p.elem_count() == m.elem_count()
}

/// Update `p`, `m` and `v` in place. Callers check [`applies`] first.
pub fn step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, u: Update) -> candle_core::Result<()> {
    let Device::Cuda(dev) = p.device() else { candle_core::bail!("fused AdamW needs a CUDA tensor") };
    let ptx = PTX
        .get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| format!("NVRTC failed on the AdamW kernel: {e}"))
        })
        .as_ref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))?;
    let func = dev.get_or_load_custom_func("medrl_adamw_f32", "medrl_adamw", ptx)?;
    let stream = dev.cuda_stream();
    let n = p.elem_count() as u64;
    let (ps, _) = p.storage_and_layout();
    let (gs, _) = g.storage_and_layout();
    let (ms, _) = m.storage_and_layout();
    let (vs, _) = v.storage_and_layout();
    let slice = |s: &Storage| -> candle_core::Result<u64> {
        match s {
            Storage::Cuda(c) => Ok(c.as_cuda_slice::<f32>()?.device_ptr(&stream).0),
            _ => candle_core::bail!("fused AdamW needs CUDA storage"),
        }
    };
    // Raw pointers: the kernel writes p, m and v in place, which candle's read guards cannot
    // express. Sound here because all work is on `stream` (event tracking is off, see
    // model::parse_device) and the optimizer owns m and v; p is updated in place exactly as
    // `Var::set` would.
    let (pp, gp, mp, vp) = (slice(&ps)?, slice(&gs)?, slice(&ms)?, slice(&vs)?);
    let block = 256u32;
    let grid = n.div_ceil(block as u64).clamp(1, 8192) as u32;
    let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
    let mut b = func.builder();
    b.arg(&pp).arg(&gp).arg(&mp).arg(&vp).arg(&n);
    b.arg(&u.lr).arg(&u.beta1).arg(&u.beta2).arg(&u.bias_correction1).arg(&u.bias_correction2).arg(&u.eps).arg(&u.decay).arg(&u.clip);
    // SAFETY: the argument list matches the kernel's signature (four pointers to n f32 values,
    // a u64 and eight f32), and every pointer addresses n f32 values (checked in `applies`).
    unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Msg(format!("AdamW kernel launch: {e}")))?;
    Ok(())
}
