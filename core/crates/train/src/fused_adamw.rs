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

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{DType, Device, Tensor};
use medrl_nn::cuda_util::tensor_ptr;
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

/// The per-step hyper-parameters (its `key` is unused here: f32 masters are not rounded).
pub use crate::lean_adamw::Update;

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
    let n = p.elem_count() as u64;
    // Raw pointers: the kernel writes p, m and v in place, which candle's read guards cannot
    // express. Sound here because all work is on the device's one stream (event tracking is
    // off, see model::parse_device) and the optimizer owns m and v; p is updated in place
    // exactly as `Var::set` would.
    let (pp, gp, mp, vp) = (tensor_ptr(p, "parameter")?, tensor_ptr(g, "gradient")?, tensor_ptr(m, "m")?, tensor_ptr(v, "v")?);
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

/// The lean update (`lean_adamw`): 8-bit moments and/or bf16 masters. One thread per value and
/// one 256-thread block per [`crate::lean_adamw::STATE_BLOCK`], so a block's new absmax is a
/// shared-memory reduction. Compiled without fused multiply-add so that every expression
/// rounds as the host oracle's does: the two agree bit for bit (`bench optim-agreement`).
const LEAN_SOURCE: &str = r#"
__device__ __forceinline__ unsigned mix32(unsigned x) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16; return x;
}
__device__ __forceinline__ float bf2f(unsigned short b) { return __uint_as_float(((unsigned)b) << 16); }
__device__ __forceinline__ unsigned short sr_bf16(float x, unsigned r) {
    unsigned bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        unsigned short hi = (unsigned short)(bits >> 16);
        return (x != x) ? (unsigned short)(hi | 0x40) : hi;
    }
    return (unsigned short)((bits + (r & 0xffffu)) >> 16);
}
// bitsandbytes' dQuantize search over a sorted 256-entry map (nearest, ties to the even index).
__device__ unsigned char map_code(const float* map, float x) {
    int pivot = 127, lower_pivot = 0, upper_pivot = 255;
    float lower = -1.0f, upper = 1.0f, val = map[pivot];
    for (int step = 64; step > 0; step >>= 1) {
        if (x > val) { lower_pivot = pivot; lower = val; pivot += step; }
        else { upper_pivot = pivot; upper = val; pivot -= step; }
        val = map[pivot];
    }
    if (upper_pivot == 255) upper = map[255];
    if (lower_pivot == 0) lower = map[0];
    int code;
    if (x > val) code = (x > (upper + val) * 0.5f) ? upper_pivot : pivot;
    else code = (x < (lower + val) * 0.5f) ? lower_pivot : pivot;
    return (unsigned char)code;
}
template <bool Q8, bool BF16>
__device__ void lean(void* p_, const void* g_, float* m, float* v, unsigned char* mc, float* ma,
    unsigned char* vc, float* va, const float* smap_g, const float* umap_g, unsigned long long n,
    float lr, float b1, float b2, float bc1, float bc2, float eps, float decay, float clip, unsigned key)
{
    __shared__ float smap[256], umap[256], red_m[256], red_v[256];
    const unsigned t = threadIdx.x;
    const unsigned long long b = blockIdx.x;
    const unsigned long long i = b * 256ull + t;
    const bool live = i < n;
    if (Q8) { smap[t] = smap_g[t]; umap[t] = umap_g[t]; __syncthreads(); }
    float mi = 0.0f, vi = 0.0f;
    if (live) {
        const float m_old = Q8 ? smap[mc[i]] * ma[b] : m[i];
        const float v_old = Q8 ? umap[vc[i]] * va[b] : v[i];
        const float gi = (BF16 ? bf2f(((const unsigned short*)g_)[i]) : ((const float*)g_)[i]) * clip;
        mi = b1 * m_old + (1.0f - b1) * gi;
        vi = b2 * v_old + (1.0f - b2) * gi * gi;
        const float step = lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps));
        if (BF16) {
            unsigned short* p = (unsigned short*)p_;
            const float x = bf2f(p[i]) * decay - step;
            const unsigned r = mix32((unsigned)i ^ mix32(key ^ (unsigned)(i >> 32))) & 0xffffu;
            p[i] = sr_bf16(x, r);
        } else {
            float* p = (float*)p_;
            p[i] = p[i] * decay - step;
        }
        if (!Q8) { m[i] = mi; v[i] = vi; }
    }
    if (Q8) {
        red_m[t] = live ? fabsf(mi) : 0.0f;
        red_v[t] = live ? fabsf(vi) : 0.0f;
        __syncthreads();
        for (unsigned s = 128; s > 0; s >>= 1) {
            if (t < s) { red_m[t] = fmaxf(red_m[t], red_m[t + s]); red_v[t] = fmaxf(red_v[t], red_v[t + s]); }
            __syncthreads();
        }
        const float am = red_m[0], av = red_v[0];
        if (t == 0) { ma[b] = am; va[b] = av; }
        if (live) {
            float sm = mi * (1.0f / am); if (sm != sm) sm = 0.0f;
            float sv = vi * (1.0f / av); if (sv != sv) sv = 0.0f;
            mc[i] = map_code(smap, sm);
            vc[i] = map_code(umap, sv);
        }
    }
}
#define LEAN_ARGS void* p, const void* g, float* m, float* v, unsigned char* mc, float* ma, unsigned char* vc, float* va, \
    const float* sm, const float* um, unsigned long long n, float lr, float b1, float b2, float bc1, float bc2, float eps, float decay, float clip, unsigned key
#define LEAN_PASS p, g, m, v, mc, ma, vc, va, sm, um, n, lr, b1, b2, bc1, bc2, eps, decay, clip, key
extern "C" __global__ void medrl_lean_q8_f32(LEAN_ARGS) { lean<true, false>(LEAN_PASS); }
extern "C" __global__ void medrl_lean_q8_bf16(LEAN_ARGS) { lean<true, true>(LEAN_PASS); }
extern "C" __global__ void medrl_lean_f32s_bf16(LEAN_ARGS) { lean<false, true>(LEAN_PASS); }
"#;

static LEAN_PTX: OnceLock<Result<String, String>> = OnceLock::new();

/// One lean update of `p` (f32 or bf16, in place) from `g` (the same dtype) with moments `m` and
/// `v` (updated in place). `maps` holds the signed and unsigned dynamic maps on the device.
pub fn lean_step(p: &Tensor, g: &Tensor, m: &crate::lean_adamw::Moment, v: &crate::lean_adamw::Moment, maps: &(Tensor, Tensor), u: crate::lean_adamw::Update) -> candle_core::Result<()> {
    use crate::lean_adamw::Moment;
    let Device::Cuda(dev) = p.device() else { candle_core::bail!("lean AdamW needs a CUDA tensor") };
    let n = p.elem_count() as u64;
    if g.elem_count() as u64 != n || g.dtype() != p.dtype() {
        candle_core::bail!("lean AdamW: gradient {:?} {:?} does not match parameter {:?} {:?}", g.dtype(), g.dims(), p.dtype(), p.dims());
    }
    let bf16 = match p.dtype() {
        DType::BF16 => true,
        DType::F32 => false,
        other => candle_core::bail!("lean AdamW: master weights must be f32 or bf16, found {other:?}"),
    };
    let (q8, mp, vp, mcp, map, vcp, vap) = match (m, v) {
        (Moment::Int8 { codes: mc, absmax: ma }, Moment::Int8 { codes: vc, absmax: va }) => (true, 0, 0, tensor_ptr(mc, "m codes")?, tensor_ptr(ma, "m absmax")?, tensor_ptr(vc, "v codes")?, tensor_ptr(va, "v absmax")?),
        (Moment::F32(m), Moment::F32(v)) => (false, tensor_ptr(m, "m")?, tensor_ptr(v, "v")?, 0, 0, 0, 0),
        _ => candle_core::bail!("lean AdamW: the two moments must have the same storage"),
    };
    let name = match (q8, bf16) {
        (true, false) => "medrl_lean_q8_f32",
        (true, true) => "medrl_lean_q8_bf16",
        (false, true) => "medrl_lean_f32s_bf16",
        (false, false) => candle_core::bail!("lean AdamW: f32 masters with f32 moments take the f32 kernel"),
    };
    let ptx = LEAN_PTX
        .get_or_init(|| {
            let opts = candle_core::cuda_backend::cudarc::nvrtc::CompileOptions { fmad: Some(false), prec_div: Some(true), prec_sqrt: Some(true), ftz: Some(false), ..Default::default() };
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx_with_opts(LEAN_SOURCE, opts).map(|p| p.to_src()).map_err(|e| format!("NVRTC failed on the lean AdamW kernel: {e}"))
        })
        .as_ref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))?;
    let func = dev.get_or_load_custom_func(name, "medrl_lean_adamw", ptx)?;
    let g = g.contiguous()?;
    let (pp, gp, smp, ump) = (tensor_ptr(p, "parameter")?, tensor_ptr(&g, "gradient")?, tensor_ptr(&maps.0, "signed map")?, tensor_ptr(&maps.1, "unsigned map")?);
    let blocks = n.div_ceil(256);
    if blocks > i32::MAX as u64 {
        candle_core::bail!("lean AdamW: {n} values exceed one launch");
    }
    let cfg = LaunchConfig { grid_dim: (blocks.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut b = func.builder();
    b.arg(&pp).arg(&gp).arg(&mp).arg(&vp).arg(&mcp).arg(&map).arg(&vcp).arg(&vap).arg(&smp).arg(&ump).arg(&n);
    b.arg(&u.lr).arg(&u.beta1).arg(&u.beta2).arg(&u.bias_correction1).arg(&u.bias_correction2).arg(&u.eps).arg(&u.decay).arg(&u.clip).arg(&u.key);
    // SAFETY: the arguments match LEAN_ARGS (ten pointers, a u64, eight f32, a u32); p and g hold
    // n values of the master dtype, m/v n f32 or mc/vc n bytes and ma/va ceil(n/256) f32, and the
    // maps 256 f32 each (built by the caller); pointers the variant does not read are 0.
    unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Msg(format!("lean AdamW kernel launch: {e}")))?;
    Ok(())
}
