//! Fused CUDA kernels for the training step's memory-bound parts.
//!
//! candle runs each primitive as its own kernel, and its autograd adds a zero-fill and an add per
//! gradient. On the elementwise-heavy parts of a decoder step that is most of the time: profiled
//! with `ncu` on the Qwen2.5-0.5B shape (`scripts/device/sft-profile.sh`), the attention mask
//! add, the softmax backward and the output head's log-softmax over `[rows, vocab]` f32 copies
//! took over half the step, the matrix products a fifth. Each kernel here replaces such a chain
//! with one pass over the data, reading bf16 (or f32) and accumulating in f32.
//!
//! The kernels compute values only; [`crate::ops`] attaches them to the autograd graph with
//! hand-written backward rules, and keeps its primitive-op implementation for the CPU. That
//! CPU path is the reference: it is checked against finite differences, and `medrl bench
//! ops-agreement` / `train-agreement` check these kernels against it on a GPU.
//!
//! Compiled once per process with NVRTC (no build-time CUDA compiler needed), self-contained
//! (bf16 is handled as raw bits, so no CUDA headers are needed at run time).
//! `MEDRL_FUSED_KERNELS=0` turns them off, for A/B measurements.

use candle_core::{Result, Tensor};

/// Whether the fused kernels apply to `t`: CUDA build, CUDA tensor, bf16 or f32, not disabled.
pub fn enabled(t: &Tensor) -> bool {
    enabled_on(t.device(), t.dtype())
}

/// [`enabled`] for a result of `dtype` on `device`.
pub fn enabled_on(device: &candle_core::Device, dtype: candle_core::DType) -> bool {
    #[cfg(feature = "cuda")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("MEDRL_FUSED_KERNELS").map(|v| v != "0").unwrap_or(true));
        on && device.is_cuda() && matches!(dtype, candle_core::DType::BF16 | candle_core::DType::F32)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (device, dtype);
        false
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;
    fn unavailable() -> candle_core::Error {
        candle_core::Error::Msg("fused kernels need the `cuda` feature".into())
    }
    pub fn lse_target(_: &Tensor, _: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(unavailable())
    }
    pub fn head_dlogits(_: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn masked_softmax(_: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn softmax_backward(_: &Tensor, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn swiglu(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn swiglu_backward(_: &Tensor, _: &Tensor, _: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(unavailable())
    }
    pub fn rms_norm_backward(_: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn rope(_: &Tensor, _: &Tensor, _: &Tensor, _: bool) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn embedding_backward(_: &Tensor, _: &Tensor, _: usize) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn nf4_dequantize(_: &Tensor, _: &Tensor, _: &Tensor, _: f32, _: usize, _: candle_core::DType) -> Result<Tensor> {
        Err(unavailable())
    }
    pub fn nf4_pack(_: &Tensor, _: &Tensor, _: &Tensor, _: u8) -> Result<Tensor> {
        Err(unavailable())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};
    use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape};
    use half::bf16;
    use crate::cuda_util::{launch, ptr};
    use std::sync::OnceLock;

    const SOURCE: &str = r#"
typedef unsigned short bf16_t;
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, size_t i) { return __uint_as_float(((unsigned int)p[i]) << 16); }
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
// Round to nearest even, as __float2bfloat16 and the half crate do.
__device__ __forceinline__ void st(bf16_t* p, size_t i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (bf16_t)0x7fc0; return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (bf16_t)(u >> 16);
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024). `sh` holds 33 floats.
__device__ float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}
__device__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

// Output head, forward: per row of logits [R, V], log-sum-exp and the target's log-probability.
template <typename T>
__device__ void lse_target(const T* x, const unsigned int* tg, float* lse, float* lp, int V) {
    __shared__ float sh[33];
    const size_t row = blockIdx.x;
    const T* r = x + row * (size_t)V;
    float m = NEG_INF, s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float v = ld(r, j);
        if (v > m) { s = s * expf(m - v) + 1.0f; m = v; } else { s += expf(v - m); }
    }
    const float gm = block_max(m, sh);
    s = (m == NEG_INF) ? 0.0f : s * expf(m - gm);
    const float gs = block_sum(s, sh);
    if (threadIdx.x == 0) {
        const float l = gm + logf(gs);
        const unsigned int t = tg[row];
        lse[row] = l;
        lp[row] = t < (unsigned int)V ? ld(r, t) - l : __int_as_float(0x7fc00000);
    }
}

// Output head, backward: d lp / d logits = g * (onehot(target) - softmax(logits)).
template <typename T>
__device__ void head_dlogits(const T* x, const float* lse, const float* g, const unsigned int* tg, T* out, int R, int V) {
    for (int row = blockIdx.y; row < R; row += gridDim.y) {
        const float l = lse[row], gr = g[row];
        const unsigned int t = tg[row];
        const size_t base = (size_t)row * V;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < V; j += gridDim.x * blockDim.x) {
            const float p = expf(ld(x, base + j) - l);
            st(out, base + j, ((unsigned int)j == t ? gr : 0.0f) - gr * p);
        }
    }
}

// Softmax over rows of scores [B, H, Tq, S] plus an additive f32 mask [B, 1, Tq, S] (or none).
template <typename T>
__device__ void masked_softmax(const T* s, const float* mask, T* out, int S, int H, int Tq) {
    __shared__ float sh[33];
    const size_t row = blockIdx.x;
    const T* x = s + row * (size_t)S;
    const float* mr = mask ? mask + ((row / ((size_t)H * Tq)) * Tq + row % Tq) * (size_t)S : 0;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < S; j += blockDim.x) m = fmaxf(m, ld(x, j) + (mr ? mr[j] : 0.0f));
    m = block_max(m, sh);
    float z = 0.0f;
    for (int j = threadIdx.x; j < S; j += blockDim.x) z += expf(ld(x, j) + (mr ? mr[j] : 0.0f) - m);
    z = block_sum(z, sh);
    const float inv = 1.0f / z;
    T* o = out + row * (size_t)S;
    for (int j = threadIdx.x; j < S; j += blockDim.x) st(o, j, expf(ld(x, j) + (mr ? mr[j] : 0.0f) - m) * inv);
}

// Softmax backward given the row term rowdot = sum(dP * P) per row: dS = P * (dP - rowdot).
template <typename T>
__device__ void softmax_backward(const T* p, const T* dp, const float* rowdot, T* out, size_t n, int S) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        st(out, i, ld(p, i) * (ld(dp, i) - rowdot[i / S]));
    }
}

template <typename T>
__device__ void swiglu(const T* g, const T* u, T* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = ld(g, i);
        st(out, i, x / (1.0f + expf(-x)) * ld(u, i));
    }
}

// dgate = dy * up * silu'(gate), dup = dy * silu(gate); written to out[0..n) and out[n..2n).
template <typename T>
__device__ void swiglu_backward(const T* g, const T* u, const T* dy, T* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = ld(g, i), d = ld(dy, i);
        const float sg = 1.0f / (1.0f + expf(-x));
        st(out, i, d * ld(u, i) * sg * (1.0f + x * (1.0f - sg)));
        st(out, n + i, d * x * sg);
    }
}

// RMS normalization backward (without the weight): y = x * r, r = (mean(x^2) + eps)^-1/2,
// dx = r * (g - x * r^2 * mean(g * x)). One block per row of length Hd.
template <typename T>
__device__ void rms_norm_backward(const T* x, const T* g, T* out, int Hd, float eps) {
    __shared__ float sh[33];
    const size_t base = (size_t)blockIdx.x * Hd;
    float ss = 0.0f, gx = 0.0f;
    for (int j = threadIdx.x; j < Hd; j += blockDim.x) {
        const float xv = ld(x, base + j);
        ss += xv * xv;
        gx += ld(g, base + j) * xv;
    }
    ss = block_sum(ss, sh);
    gx = block_sum(gx, sh);
    const float r = 1.0f / sqrtf(ss / Hd + eps);
    const float c = r * r * (gx / Hd);
    for (int j = threadIdx.x; j < Hd; j += blockDim.x) {
        st(out, base + j, r * (ld(g, base + j) - ld(x, base + j) * c));
    }
}

// Rotary embedding, "rotate half" layout: x [B, H, Tq, D], cos/sin f32 [Bc, 1, Tq, D/2] with
// Bc = B or 1. sign = -1 applies the inverse rotation (the backward pass).
template <typename T>
__device__ void rope(const T* x, const float* cs, const float* sn, T* out, int B, int H, int Tq, int D, int Bc, float sign) {
    const int half = D / 2;
    const size_t n = (size_t)B * H * Tq * half;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int k = i % half;
        const size_t rowi = i / half;  // (b, h, t)
        const int t = rowi % Tq;
        const int b = rowi / ((size_t)H * Tq);
        const size_t ti = ((size_t)(Bc == 1 ? 0 : b) * Tq + t) * half + k;
        const float c = cs[ti], s = sign * sn[ti];
        const size_t xi = rowi * D + k;
        const float x1 = ld(x, xi), x2 = ld(x, xi + half);
        st(out, xi, x1 * c - x2 * s);
        st(out, xi + half, x2 * c + x1 * s);
    }
}

// Embedding backward: scatter-add the rows of g [N, Hd] into acc [V, Hd] (f32, zeroed) at ids.
// Atomics make it order-independent up to f32 rounding of repeated ids.
template <typename T>
__device__ void embedding_backward(const unsigned int* ids, const T* g, float* acc, size_t n, int Hd, unsigned int V) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const unsigned int id = ids[i / Hd];
        if (id < V) atomicAdd(acc + (size_t)id * Hd + i % Hd, ld(g, i));
    }
}
template <typename T>
__device__ void from_f32(const float* x, T* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) st(out, i, x[i]);
}

// NF4 with double quantization (crate::quant): `aux` holds the 16 NF4 values, the 256-entry
// dynamic map, then one nested absmax per 256 blocks of 64 values. Every product and sum is
// rounded on its own (no fused multiply-add), as the CPU reference computes them.
template <typename T>
__device__ void nf4_dequantize(const unsigned char* packed, const unsigned char* codes, const float* aux, float offset, T* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t blk = i >> 6;
        const float am = __fadd_rn(__fmul_rn(aux[16 + codes[blk]], aux[272 + (blk >> 8)]), offset);
        const unsigned char byte = packed[i >> 1];
        st(out, i, __fmul_rn(aux[(i & 1) ? (byte & 15) : (byte >> 4)], am));
    }
}

// NF4 codes of `x` (n values) from each 64-value block's absmax, as crate::quant quantizes on
// the host: s = x * (1 / absmax), each rounded on its own (0 * inf, an all-zero block, reads
// as 0); the code is the number of the 15 thresholds strictly below s; two codes a byte, the
// first in the high nibble, an odd tail padded with the code of 0.
extern "C" __global__ void medrl_nf4_pack_f32(const float* x, const float* absmax, const float* thr, unsigned char* out, size_t n, unsigned int zero_code) {
    const size_t bytes = (n + 1) / 2;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < bytes; i += (size_t)gridDim.x * blockDim.x) {
        unsigned int b = 0;
        for (int h = 0; h < 2; ++h) {
            const size_t j = 2 * i + h;
            unsigned int code = zero_code;
            if (j < n) {
                const float inv = __fdiv_rn(1.0f, absmax[j >> 6]);
                float s = __fmul_rn(x[j], inv);
                if (s != s) s = 0.0f;
                code = 0;
                for (int k = 0; k < 15; ++k) code += (s > thr[k]) ? 1u : 0u;
            }
            b = (h == 0) ? (code << 4) : (b | code);
        }
        out[i] = (unsigned char)b;
    }
}

#define INSTANTIATE(T, SUF) \
extern "C" __global__ void medrl_nf4_dequantize_##SUF(const unsigned char* p, const unsigned char* c, const float* aux, float offset, T* out, size_t n) { nf4_dequantize<T>(p, c, aux, offset, out, n); } \
extern "C" __global__ void medrl_embedding_backward_##SUF(const unsigned int* ids, const T* g, float* acc, size_t n, int Hd, unsigned int V) { embedding_backward<T>(ids, g, acc, n, Hd, V); } \
extern "C" __global__ void medrl_from_f32_##SUF(const float* x, T* out, size_t n) { from_f32<T>(x, out, n); } \
extern "C" __global__ void medrl_lse_target_##SUF(const T* x, const unsigned int* tg, float* lse, float* lp, int V) { lse_target<T>(x, tg, lse, lp, V); } \
extern "C" __global__ void medrl_head_dlogits_##SUF(const T* x, const float* lse, const float* g, const unsigned int* tg, T* out, int R, int V) { head_dlogits<T>(x, lse, g, tg, out, R, V); } \
extern "C" __global__ void medrl_masked_softmax_##SUF(const T* s, const float* mask, T* out, int S, int H, int Tq) { masked_softmax<T>(s, mask, out, S, H, Tq); } \
extern "C" __global__ void medrl_softmax_backward_##SUF(const T* p, const T* dp, const float* rd, T* out, size_t n, int S) { softmax_backward<T>(p, dp, rd, out, n, S); } \
extern "C" __global__ void medrl_swiglu_##SUF(const T* g, const T* u, T* out, size_t n) { swiglu<T>(g, u, out, n); } \
extern "C" __global__ void medrl_swiglu_backward_##SUF(const T* g, const T* u, const T* dy, T* out, size_t n) { swiglu_backward<T>(g, u, dy, out, n); } \
extern "C" __global__ void medrl_rms_norm_backward_##SUF(const T* x, const T* g, T* out, int Hd, float eps) { rms_norm_backward<T>(x, g, out, Hd, eps); } \
extern "C" __global__ void medrl_rope_##SUF(const T* x, const float* cs, const float* sn, T* out, int B, int H, int Tq, int D, int Bc, float sign) { rope<T>(x, cs, sn, out, B, H, Tq, D, Bc, sign); }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
"#;

    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

    fn func(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
        let ptx = PTX
            .get_or_init(|| {
                candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| format!("NVRTC failed on the training kernels: {e}"))
            })
            .as_ref()
            .map_err(|e| candle_core::Error::Msg(e.clone()))?;
        let suffix = match dtype {
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            other => candle_core::bail!("fused kernel {name}: unsupported dtype {other:?}"),
        };
        Ok(dev.get_or_load_custom_func(&format!("medrl_{name}_{suffix}"), "medrl_train_kernels", ptx)?.into_cuda_function())
    }

    /// A fresh output buffer of `n` elements and its address. Every kernel writes all of it.
    fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> Result<(CudaStorage, u64)> {
        let stream = dev.cuda_stream();
        // SAFETY: the launched kernel writes every element before anything reads the buffer.
        Ok(match dtype {
            DType::BF16 => {
                let s = unsafe { dev.alloc::<bf16>(n.max(1))? };
                let p = s.device_ptr(&stream).0;
                (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
            }
            DType::F32 => {
                let s = unsafe { dev.alloc::<f32>(n.max(1))? };
                let p = s.device_ptr(&stream).0;
                (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
            }
            DType::U8 => {
                let s = unsafe { dev.alloc::<u8>(n.max(1))? };
                let p = s.device_ptr(&stream).0;
                (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
            }
            other => candle_core::bail!("fused kernel output: unsupported dtype {other:?}"),
        })
    }

    fn grid_for(n: usize, block: u32) -> LaunchConfig {
        let grid = (n as u64).div_ceil(block as u64).clamp(1, 65_535 * 8) as u32;
        LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
    }

    fn rows_cfg(rows: usize, row_len: usize) -> LaunchConfig {
        // One block per row; enough threads to cover a row in a few strides.
        let block = (row_len.div_ceil(4)).next_power_of_two().clamp(32, 1024) as u32;
        LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
    }

    fn cpu_unsupported<T>(name: &str) -> Result<T> {
        Err(candle_core::Error::Msg(format!("{name} is a CUDA kernel; the CPU uses the primitive-op path")))
    }

    // ---- output head ----------------------------------------------------------------------

    struct LseTarget;
    impl CustomOp2 for LseTarget {
        fn name(&self) -> &'static str {
            "medrl-lse-target"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, t: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
            let (r, v) = xl.shape().dims2()?;
            if tl.shape().elem_count() != r || t.dtype() != DType::U32 {
                candle_core::bail!("lse_target: targets must be {r} u32 values");
            }
            let dev = x.device();
            let f = func(dev, "lse_target", x.dtype())?;
            let (xp, tp) = (ptr(x, xl, "logits")?, ptr(t, tl, "targets")?);
            // Output [2, R]: row 0 the log-sum-exp, row 1 the target log-probability.
            let (out, op) = alloc(dev, DType::F32, 2 * r)?;
            let lp = op + 4 * r as u64;
            let v32 = v as i32;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&xp).arg(&tp).arg(&op).arg(&lp).arg(&v32);
            // One block per row; 256 threads stride over the vocabulary.
            let cfg = LaunchConfig { grid_dim: (r.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            launch(&mut b, cfg, "lse_target")?;
            Ok((out, Shape::from((2, r))))
        }
    }

    /// Per row of `logits` `[R, V]`: (log-sum-exp, log p(target)), both f32 `[R]`.
    pub fn lse_target(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        let both = logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &LseTarget)?;
        Ok((both.get(0)?, both.get(1)?))
    }

    struct HeadDlogits;
    impl CustomOp3 for HeadDlogits {
        fn name(&self) -> &'static str {
            "medrl-head-dlogits"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, stats: &CudaStorage, sl: &Layout, t: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
            // stats: f32 [2, R] = (lse, incoming gradient).
            let (r, v) = xl.shape().dims2()?;
            if sl.shape().dims() != [2, r] || stats.dtype() != DType::F32 || tl.shape().elem_count() != r {
                candle_core::bail!("head_dlogits: expected stats f32 [2, {r}] and {r} targets");
            }
            let dev = x.device();
            let f = func(dev, "head_dlogits", x.dtype())?;
            let (xp, sp, tp) = (ptr(x, xl, "logits")?, ptr(stats, sl, "stats")?, ptr(t, tl, "targets")?);
            let gp = sp + 4 * r as u64;
            let (out, op) = alloc(dev, x.dtype(), r * v)?;
            let (r32, v32) = (r as i32, v as i32);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&xp).arg(&sp).arg(&gp).arg(&tp).arg(&op).arg(&r32).arg(&v32);
            let bx = (v as u64).div_ceil(256 * 4).clamp(1, 1024) as u32;
            let cfg = LaunchConfig { grid_dim: (bx, r.clamp(1, 65_535) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            launch(&mut b, cfg, "head_dlogits")?;
            Ok((out, xl.shape().clone()))
        }
    }

    /// `g * (onehot(targets) - exp(logits - lse))` per row, in the logits' dtype.
    pub fn head_dlogits(logits: &Tensor, lse: &Tensor, g: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let stats = Tensor::stack(&[lse.to_dtype(DType::F32)?, g.to_dtype(DType::F32)?], 0)?;
        logits.contiguous()?.apply_op3_no_bwd(&stats, &targets.contiguous()?, &HeadDlogits)
    }

    // ---- attention ---------------------------------------------------------------------------

    struct MaskedSoftmax;
    impl MaskedSoftmax {
        fn run(&self, s: &CudaStorage, sl: &Layout, mask: Option<(&CudaStorage, &Layout)>) -> Result<(CudaStorage, Shape)> {
            let (b, h, tq, sk) = sl.shape().dims4()?;
            let dev = s.device();
            let f = func(dev, "masked_softmax", s.dtype())?;
            let sp = ptr(s, sl, "scores")?;
            let mp = match mask {
                Some((m, ml)) => {
                    if ml.shape().dims() != [b, 1, tq, sk] || m.dtype() != DType::F32 {
                        candle_core::bail!("masked_softmax: mask must be f32 [{b}, 1, {tq}, {sk}], got {:?} {:?}", m.dtype(), ml.shape());
                    }
                    ptr(m, ml, "mask")?
                }
                None => 0u64,
            };
            let (out, op) = alloc(dev, s.dtype(), b * h * tq * sk)?;
            let (s32, h32, t32) = (sk as i32, h as i32, tq as i32);
            let stream = dev.cuda_stream();
            let mut bld = stream.launch_builder(&f);
            bld.arg(&sp).arg(&mp).arg(&op).arg(&s32).arg(&h32).arg(&t32);
            launch(&mut bld, rows_cfg(b * h * tq, sk), "masked_softmax")?;
            Ok((out, sl.shape().clone()))
        }
    }
    impl CustomOp1 for MaskedSoftmax {
        fn name(&self) -> &'static str {
            "medrl-masked-softmax"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported("medrl-masked-softmax")
        }
        fn cuda_fwd(&self, s: &CudaStorage, sl: &Layout) -> Result<(CudaStorage, Shape)> {
            self.run(s, sl, None)
        }
    }
    impl CustomOp2 for MaskedSoftmax {
        fn name(&self) -> &'static str {
            "medrl-masked-softmax"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported("medrl-masked-softmax")
        }
        fn cuda_fwd(&self, s: &CudaStorage, sl: &Layout, m: &CudaStorage, ml: &Layout) -> Result<(CudaStorage, Shape)> {
            self.run(s, sl, Some((m, ml)))
        }
    }

    /// `softmax(scores + mask)` over the last axis; `scores` `[B, H, T, S]`, `mask` f32
    /// broadcastable to `[B, 1, T, S]`.
    pub fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let scores = scores.contiguous()?;
        match mask {
            None => scores.apply_op1_no_bwd(&MaskedSoftmax),
            Some(m) => {
                let (b, _, t, s) = scores.dims4()?;
                let m = m.to_dtype(DType::F32)?.broadcast_as((b, 1, t, s))?.contiguous()?;
                scores.apply_op2_no_bwd(&m, &MaskedSoftmax)
            }
        }
    }

    struct SoftmaxBackward;
    impl CustomOp3 for SoftmaxBackward {
        fn name(&self) -> &'static str {
            "medrl-softmax-backward"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, p: &CudaStorage, pl: &Layout, dp: &CudaStorage, dl: &Layout, rd: &CudaStorage, rl: &Layout) -> Result<(CudaStorage, Shape)> {
            let n = pl.shape().elem_count();
            let s = *pl.shape().dims().last().unwrap_or(&1);
            if dl.shape() != pl.shape() || dp.dtype() != p.dtype() || rd.dtype() != DType::F32 || rl.shape().elem_count() * s != n {
                candle_core::bail!("softmax_backward: shapes/dtypes do not match");
            }
            let dev = p.device();
            let f = func(dev, "softmax_backward", p.dtype())?;
            let (pp, dpp, rp) = (ptr(p, pl, "p")?, ptr(dp, dl, "dp")?, ptr(rd, rl, "rowdot")?);
            let (out, op) = alloc(dev, p.dtype(), n)?;
            let (n64, s32) = (n as u64, s as i32);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&pp).arg(&dpp).arg(&rp).arg(&op).arg(&n64).arg(&s32);
            launch(&mut b, grid_for(n, 256), "softmax_backward")?;
            Ok((out, pl.shape().clone()))
        }
    }

    /// `p * (dp - rowdot)` with `rowdot` f32, one value per row of the last axis.
    pub fn softmax_backward(p: &Tensor, dp: &Tensor, rowdot: &Tensor) -> Result<Tensor> {
        p.contiguous()?.apply_op3_no_bwd(&dp.contiguous()?, &rowdot.to_dtype(DType::F32)?.contiguous()?, &SoftmaxBackward)
    }

    // ---- NF4 ------------------------------------------------------------------------------------

    struct Nf4Dequantize {
        dtype: DType,
        numel: usize,
        offset: f32,
    }
    impl CustomOp3 for Nf4Dequantize {
        fn name(&self) -> &'static str {
            "medrl-nf4-dequantize"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, p: &CudaStorage, pl: &Layout, c: &CudaStorage, cl: &Layout, a: &CudaStorage, al: &Layout) -> Result<(CudaStorage, Shape)> {
            let n = self.numel;
            let blocks = n.div_ceil(64);
            if pl.shape().elem_count() != n.div_ceil(2) || cl.shape().elem_count() != blocks || al.shape().elem_count() != 272 + blocks.div_ceil(256) {
                candle_core::bail!("nf4_dequantize: parts do not match {n} values");
            }
            if p.dtype() != DType::U8 || c.dtype() != DType::U8 || a.dtype() != DType::F32 {
                candle_core::bail!("nf4_dequantize: expected u8 packed codes, u8 absmax codes and f32 tables");
            }
            let dev = p.device();
            let f = func(dev, "nf4_dequantize", self.dtype)?;
            let (pp, cp, ap) = (ptr(p, pl, "packed")?, ptr(c, cl, "absmax codes")?, ptr(a, al, "tables")?);
            let (out, op) = alloc(dev, self.dtype, n)?;
            let n64 = n as u64;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&pp).arg(&cp).arg(&ap).arg(&self.offset).arg(&op).arg(&n64);
            launch(&mut b, grid_for(n, 256), "nf4_dequantize")?;
            Ok((out, Shape::from(n)))
        }
    }

    /// NF4 values (`numel`, flat) in `dtype` from their device-resident parts: `packed` (u8, two
    /// codes a byte), `codes` (u8, one per 64 values) and `tables` (f32: the 16 NF4 values, the
    /// 256-entry dynamic map, then the nested absmax values).
    pub fn nf4_dequantize(packed: &Tensor, codes: &Tensor, tables: &Tensor, offset: f32, numel: usize, dtype: DType) -> Result<Tensor> {
        packed.apply_op3_no_bwd(codes, tables, &Nf4Dequantize { dtype, numel, offset })
    }

    struct Nf4Pack {
        zero_code: u32,
    }
    impl CustomOp3 for Nf4Pack {
        fn name(&self) -> &'static str {
            "medrl-nf4-pack"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, a: &CudaStorage, al: &Layout, t: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
            let n = xl.shape().elem_count();
            if al.shape().elem_count() != n.div_ceil(64) || tl.shape().elem_count() != 15 {
                candle_core::bail!("nf4_pack: {} absmax values and {} thresholds for {n} values", al.shape().elem_count(), tl.shape().elem_count());
            }
            if x.dtype() != DType::F32 || a.dtype() != DType::F32 || t.dtype() != DType::F32 {
                candle_core::bail!("nf4_pack: expected f32 values, absmax and thresholds");
            }
            let dev = x.device();
            let f = func(dev, "nf4_pack", DType::F32)?;
            let (xp, ap, tp) = (ptr(x, xl, "values")?, ptr(a, al, "absmax")?, ptr(t, tl, "thresholds")?);
            let bytes = n.div_ceil(2);
            let (out, op) = alloc(dev, DType::U8, bytes)?;
            let n64 = n as u64;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&xp).arg(&ap).arg(&tp).arg(&op).arg(&n64).arg(&self.zero_code);
            launch(&mut b, grid_for(bytes, 256), "nf4_pack")?;
            Ok((out, Shape::from(bytes)))
        }
    }

    /// Packed NF4 codes (u8, two a byte) of `values` (f32, flat) given each 64-value block's
    /// `absmax` (f32) and the 15 NF4 `thresholds` (f32); `zero_code` pads an odd tail.
    pub fn nf4_pack(values: &Tensor, absmax: &Tensor, thresholds: &Tensor, zero_code: u8) -> Result<Tensor> {
        values.contiguous()?.apply_op3_no_bwd(&absmax.contiguous()?, &thresholds.contiguous()?, &Nf4Pack { zero_code: zero_code as u32 })
    }

    // ---- SwiGLU --------------------------------------------------------------------------------

    struct Swiglu;
    impl CustomOp2 for Swiglu {
        fn name(&self) -> &'static str {
            "medrl-swiglu"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, g: &CudaStorage, gl: &Layout, u: &CudaStorage, ul: &Layout) -> Result<(CudaStorage, Shape)> {
            if gl.shape() != ul.shape() || g.dtype() != u.dtype() {
                candle_core::bail!("swiglu: gate and up differ in shape or dtype");
            }
            let n = gl.shape().elem_count();
            let dev = g.device();
            let f = func(dev, "swiglu", g.dtype())?;
            let (gp, up) = (ptr(g, gl, "gate")?, ptr(u, ul, "up")?);
            let (out, op) = alloc(dev, g.dtype(), n)?;
            let n64 = n as u64;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&gp).arg(&up).arg(&op).arg(&n64);
            launch(&mut b, grid_for(n, 256), "swiglu")?;
            Ok((out, gl.shape().clone()))
        }
    }

    pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &Swiglu)
    }

    struct SwigluBackward;
    impl CustomOp3 for SwigluBackward {
        fn name(&self) -> &'static str {
            "medrl-swiglu-backward"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, g: &CudaStorage, gl: &Layout, u: &CudaStorage, ul: &Layout, d: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
            if gl.shape() != ul.shape() || gl.shape() != dl.shape() || g.dtype() != u.dtype() || g.dtype() != d.dtype() {
                candle_core::bail!("swiglu_backward: operands differ in shape or dtype");
            }
            let n = gl.shape().elem_count();
            let dev = g.device();
            let f = func(dev, "swiglu_backward", g.dtype())?;
            let (gp, up, dp) = (ptr(g, gl, "gate")?, ptr(u, ul, "up")?, ptr(d, dl, "grad")?);
            let (out, op) = alloc(dev, g.dtype(), 2 * n)?;
            let n64 = n as u64;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&gp).arg(&up).arg(&dp).arg(&op).arg(&n64);
            launch(&mut b, grid_for(n, 256), "swiglu_backward")?;
            Ok((out, Shape::from(2 * n)))
        }
    }

    /// Gradients of `silu(gate) * up` for the incoming `grad`: (d gate, d up).
    pub fn swiglu_backward(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = gate.elem_count();
        let both = gate.contiguous()?.apply_op3_no_bwd(&up.contiguous()?, &grad.contiguous()?, &SwigluBackward)?;
        Ok((both.narrow(0, 0, n)?.reshape(gate.shape())?, both.narrow(0, n, n)?.reshape(gate.shape())?))
    }

    // ---- embedding -----------------------------------------------------------------------------

    struct EmbeddingBackward {
        vocab: usize,
    }
    impl CustomOp2 for EmbeddingBackward {
        fn name(&self) -> &'static str {
            "medrl-embedding-backward"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, ids: &CudaStorage, il: &Layout, g: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
            let (n, hd) = gl.shape().dims2()?;
            if il.shape().elem_count() != n || ids.dtype() != DType::U32 {
                candle_core::bail!("embedding_backward: expected {n} u32 ids");
            }
            let dev = g.device();
            let (ip, gp) = (ptr(ids, il, "ids")?, ptr(g, gl, "grad")?);
            let total = self.vocab * hd;
            let acc = dev.alloc_zeros::<f32>(total.max(1))?;
            let stream = dev.cuda_stream();
            let ap = acc.device_ptr(&stream).0;
            let f = func(dev, "embedding_backward", g.dtype())?;
            let (n64, h32, v32) = ((n * hd) as u64, hd as i32, self.vocab as u32);
            let mut b = stream.launch_builder(&f);
            b.arg(&ip).arg(&gp).arg(&ap).arg(&n64).arg(&h32).arg(&v32);
            launch(&mut b, grid_for(n * hd, 256), "embedding_backward")?;
            if g.dtype() == DType::F32 {
                return Ok((CudaStorage::wrap_cuda_slice(acc, dev.clone()), Shape::from((self.vocab, hd))));
            }
            let (out, op) = alloc(dev, g.dtype(), total)?;
            let f = func(dev, "from_f32", g.dtype())?;
            let t64 = total as u64;
            let mut b = stream.launch_builder(&f);
            b.arg(&ap).arg(&op).arg(&t64);
            launch(&mut b, grid_for(total, 256), "from_f32")?;
            drop(acc);
            Ok((out, Shape::from((self.vocab, hd))))
        }
    }

    /// Gradient of an embedding lookup `weight[ids]` (`weight` `[vocab, H]`) for the rows'
    /// gradient `grad` `[N, H]`: accumulated in f32, returned in `grad`'s dtype.
    pub fn embedding_backward(ids: &Tensor, grad: &Tensor, vocab: usize) -> Result<Tensor> {
        ids.flatten_all()?.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &EmbeddingBackward { vocab })
    }

    // ---- RMSNorm -------------------------------------------------------------------------------

    struct RmsNormBackward {
        eps: f32,
    }
    impl CustomOp2 for RmsNormBackward {
        fn name(&self) -> &'static str {
            "medrl-rms-norm-backward"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, g: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
            if xl.shape() != gl.shape() || x.dtype() != g.dtype() {
                candle_core::bail!("rms_norm_backward: x and grad differ in shape or dtype");
            }
            let hd = *xl.shape().dims().last().unwrap_or(&1);
            let rows = xl.shape().elem_count() / hd.max(1);
            let dev = x.device();
            let f = func(dev, "rms_norm_backward", x.dtype())?;
            let (xp, gp) = (ptr(x, xl, "x")?, ptr(g, gl, "grad")?);
            let (out, op) = alloc(dev, x.dtype(), rows * hd)?;
            let h32 = hd as i32;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&xp).arg(&gp).arg(&op).arg(&h32).arg(&self.eps);
            launch(&mut b, rows_cfg(rows, hd), "rms_norm_backward")?;
            Ok((out, xl.shape().clone()))
        }
    }

    pub fn rms_norm_backward(x: &Tensor, grad: &Tensor, eps: f64) -> Result<Tensor> {
        x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &RmsNormBackward { eps: eps as f32 })
    }

    // ---- RoPE ----------------------------------------------------------------------------------

    struct Rope {
        inverse: bool,
    }
    impl CustomOp3 for Rope {
        fn name(&self) -> &'static str {
            "medrl-rope"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            cpu_unsupported(self.name())
        }
        fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, c: &CudaStorage, cl: &Layout, s: &CudaStorage, sl: &Layout) -> Result<(CudaStorage, Shape)> {
            let (b, h, t, d) = xl.shape().dims4()?;
            let (bc, one, tc, half) = cl.shape().dims4()?;
            if one != 1 || tc != t || half * 2 != d || !(bc == b || bc == 1) || sl.shape() != cl.shape() || c.dtype() != DType::F32 || s.dtype() != DType::F32 {
                candle_core::bail!("rope: x {:?} needs f32 cos/sin [{b} or 1, 1, {t}, {}], got {:?}", xl.shape(), d / 2, cl.shape());
            }
            let dev = x.device();
            let f = func(dev, "rope", x.dtype())?;
            let (xp, cp, sp) = (ptr(x, xl, "x")?, ptr(c, cl, "cos")?, ptr(s, sl, "sin")?);
            let (out, op) = alloc(dev, x.dtype(), b * h * t * d)?;
            let (b32, h32, t32, d32, bc32) = (b as i32, h as i32, t as i32, d as i32, bc as i32);
            let sign: f32 = if self.inverse { -1.0 } else { 1.0 };
            let stream = dev.cuda_stream();
            let mut bl = stream.launch_builder(&f);
            bl.arg(&xp).arg(&cp).arg(&sp).arg(&op).arg(&b32).arg(&h32).arg(&t32).arg(&d32).arg(&bc32).arg(&sign);
            launch(&mut bl, grid_for(b * h * t * half, 256), "rope")?;
            Ok((out, xl.shape().clone()))
        }
    }

    /// Rotate `x` `[B, H, T, D]` by the tables (`inverse`: the transposed rotation, i.e. the
    /// backward pass).
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool) -> Result<Tensor> {
        x.contiguous()?.apply_op3_no_bwd(&cos.to_dtype(DType::F32)?.contiguous()?, &sin.to_dtype(DType::F32)?.contiguous()?, &Rope { inverse })
    }
}

pub use imp::*;
