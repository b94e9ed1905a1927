//! Inference-only device ops for the paged-KV-cache rollout engine: writing new keys/values into
//! cache slots, decode attention read through block tables, and per-row token sampling.
//!
//! Each op has a CPU implementation, which runs on CPU tensors and is the reference, and a CUDA
//! kernel (`cuda` feature) that runs on CUDA tensors. [`agreement_report`] runs both on random
//! inputs and reports how far apart they are; the CPU tests below check the reference against
//! independent computations (dense f64 attention, hand-computed draws, a chi-square test).
//!
//! - [`write_kv`]: row `i` of `k`/`v` goes to cache slot `slots[i]`, in place (candle's
//!   [`InplaceOp3`]); the CUDA kernel copies raw bits, one thread per element.
//! - [`paged_attention`]: one query per sequence. The kernel runs one block of four warps per
//!   (sequence, query head, partition of the context); each warp takes one key position at a time
//!   (its lanes split `head_dim`, at most 256), keeps an online softmax (running max and sum, f32)
//!   and its own output accumulator. Long contexts are split into partitions (flash-decoding)
//!   when there are too few (sequence, head) pairs to fill the GPU, and a second kernel merges
//!   the partitions' (max, sum, output). Keys and values are read in the cache's dtype (bf16, f16
//!   or f32); all arithmetic is f32.
//! - [`sample_rows`] / [`sample_row`]: repetition penalty, temperature, top-k, top-p, then an
//!   inverse-CDF draw in vocabulary order from one caller-supplied uniform. The kernel runs one
//!   block of 1024 threads per row (rows beyond 256 loop) on a private f32 copy of the row, so
//!   the caller's logits are left unchanged. The top-k threshold is a radix select over
//!   order-preserving u32 keys (four 8-bit passes with integer histograms), the top-p threshold
//!   a 32-step bitwise search over the same keys with deterministic block sums, run over a
//!   compacted candidate list; no sort. Only the chosen ids and log-probabilities come back.
//!
//! The CUDA sampler implements the same algorithm as [`sample_row`], but sums in a different
//! order (block reductions) and uses CUDA's `expf`, so a draw whose uniform falls within rounding
//! of a boundary between two tokens, or a top-p threshold within rounding of the cut, can differ.
//! Everything is deterministic for fixed inputs on both devices (no float atomics).
//!
//! Compiled once per process with NVRTC, self-contained like [`crate::kernels`] (bf16 and f16 are
//! handled as raw bits, f16 converted with PTX `cvt`), so no CUDA headers are needed at run time.

use candle_core::{CpuStorage, DType, Device, InplaceOp3, Layout, Result, Storage, Tensor};
use half::{bf16, f16};

// ---- public API ---------------------------------------------------------------------------------

/// Write new keys/values into cache slots, in place.
/// k_cache, v_cache: [num_slots, kv_heads, head_dim] (contiguous, same dtype as k/v: bf16, f16 or f32)
/// k, v: [n, kv_heads, head_dim]; slots: [n] u32 (distinct slot per row). Row i goes to slot slots[i].
///
/// `k`/`v` of another dtype are converted to the cache's. A slot `>= num_slots` is an error on
/// the CPU; the CUDA kernel skips such rows (it cannot report without a sync).
pub fn write_kv(k_cache: &Tensor, v_cache: &Tensor, k: &Tensor, v: &Tensor, slots: &Tensor) -> Result<()> {
    if slots.dtype() != DType::U32 {
        candle_core::bail!("write_kv: slots must be u32, got {:?}", slots.dtype());
    }
    let slots = slots.flatten_all()?.contiguous()?;
    let n = slots.elem_count();
    for (cache, src, what) in [(k_cache, k, "k"), (v_cache, v, "v")] {
        let (_, kvh, d) = cache.dims3()?;
        if src.dims() != [n, kvh, d] {
            candle_core::bail!("write_kv: {what} is {:?}, expected [{n}, {kvh}, {d}] for {n} slots and a cache {:?}", src.dims(), cache.dims());
        }
        if !cache.is_contiguous() {
            candle_core::bail!("write_kv: the {what} cache must be contiguous");
        }
        if !matches!(cache.dtype(), DType::BF16 | DType::F16 | DType::F32) {
            candle_core::bail!("write_kv: unsupported cache dtype {:?}", cache.dtype());
        }
        if !cache.device().same_device(src.device()) || !cache.device().same_device(slots.device()) {
            candle_core::bail!("write_kv: the {what} cache, {what} and slots are on different devices");
        }
        if n == 0 {
            continue;
        }
        let src = src.to_dtype(cache.dtype())?.contiguous()?;
        cache.inplace_op3(&src, &slots, &WriteKv)?;
    }
    Ok(())
}

/// Decode attention: one query per sequence over that sequence's cached keys/values, read through its block table.
/// q: [n, heads, head_dim]; k_cache/v_cache: [num_slots, kv_heads, head_dim] with num_slots = num_blocks * block_size;
/// block_tables: [n, max_blocks] u32 (entries past a sequence's blocks are arbitrary, never read);
/// context_lens: [n] u32 (sequence i attends to its token positions 0..context_lens[i], its own current key included, already written);
/// position p of sequence i lives in slot block_tables[i][p / block_size] * block_size + p % block_size.
/// GQA: query head h reads kv head h / (heads / kv_heads). Softmax scale 1/sqrt(head_dim). Accumulate in f32; output [n, heads, head_dim] in q's dtype.
///
/// A context length of 0 gives a zero output row. Out-of-range inputs (a context longer than
/// `max_blocks * block_size`, a slot `>= num_slots`) are errors on the CPU; the CUDA kernel
/// clamps the context to the table and skips such slots. CUDA: `head_dim` at most 256.
pub fn paged_attention(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, block_tables: &Tensor, context_lens: &Tensor, block_size: usize) -> Result<Tensor> {
    let g = Geometry::check(q, k_cache, v_cache, block_tables, context_lens, block_size)?;
    match q.device() {
        Device::Cpu => paged_attention_cpu(q, k_cache, v_cache, block_tables, context_lens, &g),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => imp::paged_attention(q, k_cache, v_cache, block_tables, context_lens, &g),
        other => candle_core::bail!("paged_attention: unsupported device {other:?}"),
    }
}

/// Per-row sampling settings (all slices have one entry per row).
#[derive(Debug, Clone, Copy)]
pub struct SampleArgs<'a> {
    pub temperature: &'a [f32],        // 0 = greedy
    pub top_k: &'a [u32],              // 0 = off
    pub top_p: &'a [f32],              // 1.0 = off
    pub repetition_penalty: &'a [f32], // 1.0 = off
    pub uniform: &'a [f32],            // one U[0,1) draw per row (from the row's own seeded stream, drawn by the caller)
    pub seen: &'a [&'a [u32]],         // per row: token ids to penalize, UNIQUE within a row (caller guarantees); ids >= vocab are ignored
}

impl SampleArgs<'_> {
    fn check(&self, rows: usize) -> Result<()> {
        let lens = [self.temperature.len(), self.top_k.len(), self.top_p.len(), self.repetition_penalty.len(), self.uniform.len(), self.seen.len()];
        if lens.iter().any(|&l| l != rows) {
            candle_core::bail!("sample_rows: {rows} rows of logits but per-row settings of lengths {lens:?} (temperature, top_k, top_p, repetition_penalty, uniform, seen)");
        }
        Ok(())
    }
}

/// Sample one token per row of `logits` ([rows, vocab], f32, CPU or CUDA). Only the chosen ids and their
/// log-probabilities come back to the host.
///
/// Logits of another dtype are converted to f32 first. The caller's tensor is not modified.
pub fn sample_rows(logits: &Tensor, args: &SampleArgs) -> Result<(Vec<u32>, Vec<f32>)> {
    let (rows, vocab) = logits.dims2()?;
    args.check(rows)?;
    if rows == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    if vocab == 0 || vocab > i32::MAX as usize {
        candle_core::bail!("sample_rows: vocabulary of {vocab} entries");
    }
    match logits.device() {
        Device::Cpu => {
            let data = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let mut ids = Vec::with_capacity(rows);
            let mut lps = Vec::with_capacity(rows);
            for (r, mut row) in data.into_iter().enumerate() {
                let (id, lp) = sample_row(&mut row, args.seen[r], args.temperature[r], args.top_k[r], args.top_p[r], args.repetition_penalty[r], args.uniform[r]);
                ids.push(id);
                lps.push(lp);
            }
            Ok((ids, lps))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => imp::sample_rows(logits, args),
        other => candle_core::bail!("sample_rows: unsupported device {other:?}"),
    }
}

/// The CPU reference for one row (sample_rows on CPU calls this per row; the lm crate's host sampler will call it too).
/// Mutates `logits` (penalty and temperature applied in place).
///
/// 1. Repetition penalty (if not 1) on each id of `seen` below the vocabulary size:
///    `l = l / pen` if `l > 0`, else `l * pen`.
/// 2. `l /= t` with `t = temperature` if it is `> 0`, else 1.
/// 3. `max`, `lse = max + ln(sum exp(l - max))`.
/// 4. Temperature not `> 0`: greedy, the lowest id among the largest values.
/// 5. Threshold `thr` (starts at -inf): top-k (`0 < k < V`) sets it to the k-th largest value
///    counting duplicates (ties at the boundary are all kept); top-p (`< 1`) raises it to the
///    largest value `v` with `sum_{l >= max(v, thr)} exp(l - max) >= top_p * M`, `M` the mass
///    of the tokens at or above the top-k threshold (ties at `v` are all kept).
/// 6. Draw: `target = uniform * W`, `W` the kept mass; scan the kept tokens in ascending id
///    order, taking the first with `target < p_i`, else `target -= p_i`; rounding that leaves
///    nothing chosen takes the last kept token with `p_i > 0`.
///
/// Returns the id and its log-probability under the penalized, temperature-scaled distribution
/// before truncation (`l[id] - lse`).
pub fn sample_row(logits: &mut [f32], seen: &[u32], temperature: f32, top_k: u32, top_p: f32, repetition_penalty: f32, uniform: f32) -> (u32, f32) {
    let vocab = logits.len();
    if vocab == 0 {
        return (0, f32::NAN);
    }
    if repetition_penalty != 1.0 {
        for &id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / repetition_penalty } else { *l * repetition_penalty };
            }
        }
    }
    let greedy = temperature.is_nan() || temperature <= 0.0;
    let t = if greedy { 1.0 } else { temperature };
    for l in logits.iter_mut() {
        *l /= t;
    }
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            max = l;
            best = i;
        }
    }
    let total: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let lse = max + total.ln();
    if greedy {
        return (best as u32, logits[best] - lse);
    }
    let mut thr = f32::NEG_INFINITY;
    let mut truncated = false;
    if top_k > 0 && (top_k as usize) < vocab {
        let k = top_k as usize;
        let mut vals = logits.to_vec();
        let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| canon(*b).total_cmp(&canon(*a)));
        thr = *kth;
        truncated = true;
    }
    if top_p < 1.0 {
        let m: f32 = logits.iter().filter(|&&l| l >= thr).map(|&l| (l - max).exp()).sum();
        let target = top_p * m;
        // Tokens lighter than `floor` hold less than (1 - top_p) * M / 4 together, so the walk
        // below reaches the target before them; sorting only the heavier ones is exact. If
        // rounding says otherwise, walk everything.
        let floor = 0.25 * (1.0 - top_p).max(0.0) * m / vocab as f32;
        let walk = |floor: f32| -> Option<f32> {
            let mut cand: Vec<f32> = logits.iter().copied().filter(|&l| l >= thr && (l - max).exp() >= floor).collect();
            cand.sort_unstable_by(|a, b| canon(*b).total_cmp(&canon(*a)));
            let mut acc = 0.0f32;
            for c in cand {
                acc += (c - max).exp();
                if acc >= target {
                    return Some(c);
                }
            }
            None
        };
        // None: rounding left the target unreached by the whole set; keep it all.
        if let Some(v) = walk(floor).or_else(|| if floor > 0.0 { walk(0.0) } else { None }) {
            thr = thr.max(v);
        }
        truncated = true;
    }
    let w: f32 = if truncated { logits.iter().filter(|&&l| l >= thr).map(|&l| (l - max).exp()).sum() } else { total };
    let mut target = uniform * w;
    let mut last = None;
    for (i, &l) in logits.iter().enumerate() {
        let kept = l >= thr;
        if !kept {
            continue;
        }
        let p = (l - max).exp();
        if p > 0.0 {
            last = Some(i);
        }
        if target < p {
            return (i as u32, l - lse);
        }
        target -= p;
    }
    let i = last.unwrap_or(best);
    (i as u32, logits[i] - lse)
}

/// -0.0 as +0.0, so that the total order used for thresholds agrees with `>=` (as the kernel's
/// u32 keys do).
fn canon(x: f32) -> f32 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

// ---- shapes -------------------------------------------------------------------------------------

/// The checked shapes of one paged-attention call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    num_slots: usize,
    max_blocks: usize,
    block_size: usize,
}

impl Geometry {
    fn check(q: &Tensor, k: &Tensor, v: &Tensor, bt: &Tensor, cl: &Tensor, block_size: usize) -> Result<Self> {
        let (n, heads, head_dim) = q.dims3()?;
        let (num_slots, kv_heads, d) = k.dims3()?;
        if v.dims() != k.dims() || v.dtype() != k.dtype() {
            candle_core::bail!("paged_attention: v_cache {:?} {:?} differs from k_cache {:?} {:?}", v.dims(), v.dtype(), k.dims(), k.dtype());
        }
        if d != head_dim {
            candle_core::bail!("paged_attention: q head_dim {head_dim} but cache head_dim {d}");
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            candle_core::bail!("paged_attention: {heads} query heads are not a multiple of {kv_heads} kv heads");
        }
        if block_size == 0 {
            candle_core::bail!("paged_attention: block_size 0");
        }
        let (bn, max_blocks) = bt.dims2()?;
        if bn != n || cl.dims() != [n] || bt.dtype() != DType::U32 || cl.dtype() != DType::U32 {
            candle_core::bail!("paged_attention: expected u32 block_tables [{n}, max_blocks] and context_lens [{n}], got {:?} {:?} and {:?} {:?}", bt.dtype(), bt.dims(), cl.dtype(), cl.dims());
        }
        for (t, what) in [(k, "k_cache"), (v, "v_cache"), (bt, "block_tables"), (cl, "context_lens")] {
            if !t.device().same_device(q.device()) {
                candle_core::bail!("paged_attention: {what} is on another device than q");
            }
        }
        for t in [q, k] {
            if !matches!(t.dtype(), DType::BF16 | DType::F16 | DType::F32) {
                candle_core::bail!("paged_attention: unsupported dtype {:?}", t.dtype());
            }
        }
        Ok(Self { n, heads, kv_heads, head_dim, num_slots, max_blocks, block_size })
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

// ---- CPU reference ------------------------------------------------------------------------------

/// Element types of the caches, read and written through f32.
trait Elem: Copy {
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
impl Elem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// Scatter rows of `src` (`row` elements each) to `dst` rows `slots[i]`.
fn scatter<T: Copy>(dst: &mut [T], src: &[T], slots: &[u32], row: usize) -> Result<()> {
    let nslots = dst.len() / row.max(1);
    if src.len() != slots.len() * row {
        candle_core::bail!("write_kv: {} source elements for {} slots of {row}", src.len(), slots.len());
    }
    for (i, &s) in slots.iter().enumerate() {
        let s = s as usize;
        if s >= nslots {
            candle_core::bail!("write_kv: slot {s} out of range for a cache of {nslots} slots");
        }
        dst[s * row..(s + 1) * row].copy_from_slice(&src[i * row..(i + 1) * row]);
    }
    Ok(())
}

struct WriteKv;

impl InplaceOp3 for WriteKv {
    fn name(&self) -> &'static str {
        "medrl-write-kv"
    }

    fn cpu_fwd(&self, cache: &mut CpuStorage, cl: &Layout, src: &CpuStorage, sl: &Layout, slots: &CpuStorage, il: &Layout) -> Result<()> {
        let (num_slots, kvh, d) = cl.shape().dims3()?;
        let row = kvh * d;
        let (c0, s0, i0) = (cl.start_offset(), sl.start_offset(), il.start_offset());
        let n = il.shape().elem_count();
        let ids = match slots {
            CpuStorage::U32(v) => &v[i0..i0 + n],
            _ => candle_core::bail!("write_kv: slots must be u32"),
        };
        let (ce, se) = (c0 + num_slots * row, s0 + n * row);
        match (cache, src) {
            (CpuStorage::BF16(c), CpuStorage::BF16(s)) => scatter(&mut c[c0..ce], &s[s0..se], ids, row),
            (CpuStorage::F16(c), CpuStorage::F16(s)) => scatter(&mut c[c0..ce], &s[s0..se], ids, row),
            (CpuStorage::F32(c), CpuStorage::F32(s)) => scatter(&mut c[c0..ce], &s[s0..se], ids, row),
            _ => candle_core::bail!("write_kv: cache and rows differ in dtype, or an unsupported dtype"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, cache: &mut candle_core::CudaStorage, cl: &Layout, src: &candle_core::CudaStorage, sl: &Layout, slots: &candle_core::CudaStorage, il: &Layout) -> Result<()> {
        imp::write_kv(cache, cl, src, sl, slots, il)
    }
}

/// Attention for one (sequence, head) over cached rows, f32: `out` gets `softmax(q.k * scale) v`.
#[allow(clippy::too_many_arguments)]
fn attend_one<T: Elem>(q: &[f32], k: &[T], v: &[T], slots: &[usize], g: &Geometry, kvh: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let d = g.head_dim;
    let scale = g.scale();
    scores.clear();
    for &s in slots {
        let base = (s * g.kv_heads + kvh) * d;
        let dot: f32 = q.iter().zip(&k[base..base + d]).map(|(a, b)| a * b.to_f32()).sum();
        scores.push(dot * scale);
    }
    out.fill(0.0);
    if slots.is_empty() {
        return;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (sc, &s) in scores.iter_mut().zip(slots) {
        let w = (*sc - max).exp();
        sum += w;
        let base = (s * g.kv_heads + kvh) * d;
        for (o, x) in out.iter_mut().zip(&v[base..base + d]) {
            *o += w * x.to_f32();
        }
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

fn attend_all<T: Elem>(q: &[f32], k: &[T], v: &[T], seq_slots: &[Vec<usize>], g: &Geometry) -> Vec<f32> {
    let d = g.head_dim;
    let group = g.heads / g.kv_heads;
    let mut out = vec![0.0f32; g.n * g.heads * d];
    let mut scores = Vec::new();
    for (i, slots) in seq_slots.iter().enumerate() {
        for h in 0..g.heads {
            let r = (i * g.heads + h) * d;
            attend_one(&q[r..r + d], k, v, slots, g, h / group, &mut scores, &mut out[r..r + d]);
        }
    }
    out
}

fn paged_attention_cpu(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, block_tables: &Tensor, context_lens: &Tensor, g: &Geometry) -> Result<Tensor> {
    let qf: Vec<f32> = q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let bt: Vec<u32> = block_tables.flatten_all()?.to_vec1()?;
    let cl: Vec<u32> = context_lens.to_vec1()?;
    let mut seq_slots = Vec::with_capacity(g.n);
    for (i, &c) in cl.iter().enumerate() {
        let c = c as usize;
        if c > g.max_blocks * g.block_size {
            candle_core::bail!("paged_attention: sequence {i} has context {c} but its block table holds {} positions", g.max_blocks * g.block_size);
        }
        let mut slots = Vec::with_capacity(c);
        for p in 0..c {
            let s = bt[i * g.max_blocks + p / g.block_size] as usize * g.block_size + p % g.block_size;
            if s >= g.num_slots {
                candle_core::bail!("paged_attention: sequence {i} position {p} maps to slot {s} of {}", g.num_slots);
            }
            slots.push(s);
        }
        seq_slots.push(slots);
    }
    let k_cache = k_cache.contiguous()?;
    let v_cache = v_cache.contiguous()?;
    let (ks, kl) = k_cache.storage_and_layout();
    let (vs, vl) = v_cache.storage_and_layout();
    let len = g.num_slots * g.kv_heads * g.head_dim;
    let (k0, v0) = (kl.start_offset(), vl.start_offset());
    let out = match (&*ks, &*vs) {
        (Storage::Cpu(CpuStorage::BF16(k)), Storage::Cpu(CpuStorage::BF16(v))) => attend_all(&qf, &k[k0..k0 + len], &v[v0..v0 + len], &seq_slots, g),
        (Storage::Cpu(CpuStorage::F16(k)), Storage::Cpu(CpuStorage::F16(v))) => attend_all(&qf, &k[k0..k0 + len], &v[v0..v0 + len], &seq_slots, g),
        (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) => attend_all(&qf, &k[k0..k0 + len], &v[v0..v0 + len], &seq_slots, g),
        _ => candle_core::bail!("paged_attention: caches must be CPU bf16, f16 or f32 of one dtype"),
    };
    drop((ks, vs));
    Tensor::from_vec(out, (g.n, g.heads, g.head_dim), &Device::Cpu)?.to_dtype(q.dtype())
}

// ---- CUDA ---------------------------------------------------------------------------------------

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};
    use candle_core::{CudaDevice, CudaStorage};
    use crate::cuda_util::{launch, ptr};
    use std::sync::OnceLock;

    const SOURCE: &str = r#"
typedef unsigned int u32;
#define NEG_INF __int_as_float(0xff800000)
#define FULL 0xffffffffu

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ unsigned long long lmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
__device__ __forceinline__ u32 umax(u32 a, u32 b) { return a > b ? a : b; }

// 16-bit floats as raw bits; distinct types so that ld/st overload on them.
struct __align__(2) bf16w { unsigned short b; };
struct __align__(2) f16w { unsigned short b; };

__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16w* p, size_t i) { return __uint_as_float(((unsigned int)p[i].b) << 16); }
__device__ __forceinline__ float ld(const f16w* p, size_t i) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i].b));
    return f;
}
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
// Round to nearest even, as the half crate does.
__device__ __forceinline__ void st(bf16w* p, size_t i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i].b = (unsigned short)0x7fc0; return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i].b = (unsigned short)(u >> 16);
}
__device__ __forceinline__ void st(f16w* p, size_t i, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i].b = h;
}

// ---- write_kv: row r of src goes to cache row slots[r] (raw bits, any 2- or 4-byte dtype) ----
template <typename T>
__device__ void write_kv(T* cache, const T* src, const u32* slots, size_t n, u32 row, u32 nslots) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const u32 s = slots[i / row];
        if (s < nslots) cache[(size_t)s * row + i % row] = src[i];
    }
}
extern "C" __global__ void medrl_write_kv_b16(unsigned short* c, const unsigned short* s, const u32* sl, size_t n, u32 row, u32 ns) { write_kv(c, s, sl, n, row, ns); }
extern "C" __global__ void medrl_write_kv_b32(u32* c, const u32* s, const u32* sl, size_t n, u32 row, u32 ns) { write_kv(c, s, sl, n, row, ns); }

// ---- paged decode attention ----
// Grid (n * H, parts), ATT_WARPS warps per block. Block (sequence, head, part) covers positions
// [part * part_len, min(ctx, (part + 1) * part_len)). Each warp takes one position at a time: its
// lanes hold q[lane + 32 i] (pre-scaled) and the output accumulator for the same elements, and
// keep an online softmax. With one part the block writes the output; otherwise it writes its
// (max, sum) to pml and its unnormalized output to po, merged by paged_attention_reduce.
#define ATT_WARPS 4
#define MAX_D 256
template <typename T>
__device__ void paged_attention(const T* q, const T* kc, const T* vc, const u32* bt, const u32* cl, T* out, float* pml, float* po,
                                int H, int KVH, int D, int bs, int maxb, unsigned long long nslots, int part_len, float scale) {
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_o[ATT_WARPS][MAX_D];
    const int nparts = gridDim.y, part = blockIdx.y;
    const int sh = blockIdx.x, seq = sh / H, h = sh % H, kvh = h / (H / KVH);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const unsigned long long cap = (unsigned long long)maxb * bs;
    const int ctx = (int)lmin((unsigned long long)cl[seq], cap);
    const int start = part * part_len;
    if (start >= ctx) {
        if (nparts == 1) for (int j = threadIdx.x; j < D; j += blockDim.x) st(out, (size_t)sh * D + j, 0.0f);
        return;
    }
    const int end = imin(ctx, start + part_len);
    float qv[8], acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int j = lane + 32 * i;
        qv[i] = j < D ? ld(q, (size_t)sh * D + j) * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    const u32* tab = bt + (size_t)seq * maxb;
    for (int t = start + w; t < end; t += ATT_WARPS) {
        const unsigned long long slot = (unsigned long long)tab[t / bs] * bs + t % bs;
        if (slot >= nslots) continue;
        const size_t base = ((size_t)slot * KVH + kvh) * D;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int j = lane + 32 * i;
            if (j < D) s += qv[i] * ld(kc, base + j);
        }
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL, s, o);
        const float mn = fmaxf(m, s);
        if (mn == NEG_INF) continue;
        const float c = expf(m - mn), e = expf(s - mn);
        l = l * c + e;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int j = lane + 32 * i;
            if (j < D) acc[i] = acc[i] * c + e * ld(vc, base + j);
        }
        m = mn;
    }
    if (lane == 0) { sm_m[w] = m; sm_l[w] = l; }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int j = lane + 32 * i;
        if (j < D) sm_o[w][j] = acc[i];
    }
    __syncthreads();
    float M = NEG_INF;
    for (int k = 0; k < ATT_WARPS; k++) M = fmaxf(M, sm_m[k]);
    float f[ATT_WARPS], L = 0.0f;
    for (int k = 0; k < ATT_WARPS; k++) {
        f[k] = sm_m[k] == NEG_INF ? 0.0f : expf(sm_m[k] - M);
        L += sm_l[k] * f[k];
    }
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float o = 0.0f;
        for (int k = 0; k < ATT_WARPS; k++) o += sm_o[k][j] * f[k];
        if (nparts == 1) st(out, (size_t)sh * D + j, L > 0.0f ? o / L : 0.0f);
        else po[((size_t)sh * nparts + part) * D + j] = o;
    }
    if (nparts > 1 && threadIdx.x == 0) {
        pml[((size_t)sh * nparts + part) * 2] = M;
        pml[((size_t)sh * nparts + part) * 2 + 1] = L;
    }
}

// Merge the parts of each (sequence, head) that the first kernel wrote (those starting below the
// clamped context length). Grid n * H.
template <typename T>
__device__ void paged_attention_reduce(const u32* cl, const float* pml, const float* po, T* out, int H, int D, int maxb, int bs, int part_len, int nparts) {
    const int sh = blockIdx.x, seq = sh / H;
    const unsigned long long cap = (unsigned long long)maxb * bs;
    const int ctx = (int)lmin((unsigned long long)cl[seq], cap);
    const int np = imin(nparts, (ctx + part_len - 1) / part_len);
    const float* ml = pml + (size_t)sh * nparts * 2;
    float M = NEG_INF;
    for (int p = 0; p < np; p++) M = fmaxf(M, ml[2 * p]);
    float L = 0.0f;
    for (int p = 0; p < np; p++) if (ml[2 * p] != NEG_INF) L += ml[2 * p + 1] * expf(ml[2 * p] - M);
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float o = 0.0f;
        for (int p = 0; p < np; p++) if (ml[2 * p] != NEG_INF) o += po[((size_t)sh * nparts + p) * D + j] * expf(ml[2 * p] - M);
        st(out, (size_t)sh * D + j, L > 0.0f ? o / L : 0.0f);
    }
}

#define ATT_INSTANTIATE(T, SUF) \
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) medrl_paged_attention_##SUF(const T* q, const T* kc, const T* vc, const u32* bt, const u32* cl, T* out, float* pml, float* po, \
    int H, int KVH, int D, int bs, int maxb, unsigned long long nslots, int part_len, float scale) { paged_attention<T>(q, kc, vc, bt, cl, out, pml, po, H, KVH, D, bs, maxb, nslots, part_len, scale); } \
extern "C" __global__ void medrl_paged_attention_reduce_##SUF(const u32* cl, const float* pml, const float* po, T* out, int H, int D, int maxb, int bs, int part_len, int nparts) { \
    paged_attention_reduce<T>(cl, pml, po, out, H, D, maxb, bs, part_len, nparts); }

ATT_INSTANTIATE(float, f32)
ATT_INSTANTIATE(bf16w, bf16)
ATT_INSTANTIATE(f16w, f16)

// ---- sampling ----
// Block-wide helpers (blockDim.x a multiple of 32, at most 1024). Each starts with a barrier, so
// the shared scratch of the previous call is free once every thread has entered the next one.
__device__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}
__device__ u32 block_max_u(u32 v, u32* sh) {
    for (int o = 16; o > 0; o >>= 1) v = umax(v, __shfl_xor_sync(FULL, v, o));
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : 0u;
        for (int o = 16; o > 0; o >>= 1) v = umax(v, __shfl_xor_sync(FULL, v, o));
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}
// Largest value, ties to the lowest index; every thread gets the result.
__device__ __forceinline__ void argmax_pair(float& v, u32& i, float ov, u32 oi) {
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}
__device__ void block_argmax(float& v, u32& i, float* shv, u32* shi) {
    for (int o = 16; o > 0; o >>= 1) argmax_pair(v, i, __shfl_xor_sync(FULL, v, o), __shfl_xor_sync(FULL, i, o));
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { shv[w] = v; shi[w] = i; }
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? shv[lane] : NEG_INF;
        i = lane < nw ? shi[lane] : 0xffffffffu;
        for (int o = 16; o > 0; o >>= 1) argmax_pair(v, i, __shfl_xor_sync(FULL, v, o), __shfl_xor_sync(FULL, i, o));
        if (lane == 0) { shv[32] = v; shi[32] = i; }
    }
    __syncthreads();
    v = shv[32];
    i = shi[32];
}
// Inclusive prefix sum over threads in thread order.
__device__ float block_scan(float v, float* sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 1; o < 32; o <<= 1) { const float y = __shfl_up_sync(FULL, v, o); if (lane >= o) v += y; }
    __syncthreads();
    if (lane == 31) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float s = lane < nw ? sh[lane] : 0.0f;
        for (int o = 1; o < 32; o <<= 1) { const float y = __shfl_up_sync(FULL, s, o); if (lane >= o) s += y; }
        if (lane < nw) sh[lane] = s;
    }
    __syncthreads();
    return w > 0 ? v + sh[w - 1] : v;
}
// Exclusive prefix sum of counts; *total gets the sum.
__device__ u32 block_scan_excl_u(u32 v, u32* sh, u32* total) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const u32 own = v;
    for (int o = 1; o < 32; o <<= 1) { const u32 y = __shfl_up_sync(FULL, v, o); if (lane >= o) v += y; }
    __syncthreads();
    if (lane == 31) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        u32 s = lane < nw ? sh[lane] : 0u;
        for (int o = 1; o < 32; o <<= 1) { const u32 y = __shfl_up_sync(FULL, s, o); if (lane >= o) s += y; }
        if (lane < nw) sh[lane] = s;
    }
    __syncthreads();
    *total = sh[nw - 1];
    return (w > 0 ? v + sh[w - 1] : v) - own;
}

// Order-preserving keys: key(a) < key(b) iff a < b for non-NaN floats (-0 taken as +0).
__device__ __forceinline__ u32 fkey(float f) {
    u32 u = __float_as_uint(f);
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float keyf(u32 k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

// Stable compaction of the ids j with p[j] >= thr and expf(p[j] - mx) >= floor into cand, in
// ascending id order (contiguous chunks per thread, block scan of the counts). Returns the count.
__device__ int compact(const float* p, u32* cand, int V, float thr, float mx, float floor, u32* shu) {
    const int NT = blockDim.x;
    const int ch = (V + NT - 1) / NT;
    const int b = imin(V, (int)threadIdx.x * ch), e = imin(V, b + ch);
    u32 cnt = 0;
    for (int j = b; j < e; j++) { const float v = p[j]; if (v >= thr && expf(v - mx) >= floor) cnt++; }
    u32 total;
    u32 o = block_scan_excl_u(cnt, shu, &total);
    for (int j = b; j < e; j++) { const float v = p[j]; if (v >= thr && expf(v - mx) >= floor) cand[o++] = j; }
    __syncthreads();
    return (int)total;
}

// One block per row (rows beyond gridDim.x loop). args: per row (temperature, top_k, top_p,
// penalty, uniform) as 5 u32 (floats as bits), then the seen CSR offsets [R + 1], then the ids.
// out: ids [R] then log-probabilities [R] (bits). proc/cand: V floats / V u32 per block.
extern "C" __global__ void __launch_bounds__(1024) medrl_sample_rows(const float* logits, const u32* args, u32* out, float* proc_all, u32* cand_all, int R, int V) {
    __shared__ float shf[33];
    __shared__ u32 shu[33];
    __shared__ u32 hist[256];
    __shared__ float incl[1024];
    __shared__ u32 bc[2];
    __shared__ u32 choice;
    const u32* off = args + 5 * (size_t)R;
    const u32* ids = off + R + 1;
    float* p = proc_all + (size_t)blockIdx.x * V;
    u32* cand = cand_all + (size_t)blockIdx.x * V;
    const int tid = threadIdx.x, NT = blockDim.x;
    for (int row = blockIdx.x; row < R; row += gridDim.x) {
        __syncthreads();
        const u32* a = args + 5 * (size_t)row;
        const float temp = __uint_as_float(a[0]), topp = __uint_as_float(a[2]), pen = __uint_as_float(a[3]), uni = __uint_as_float(a[4]);
        const u32 topk = a[1];
        const bool greedy = !(temp > 0.0f);
        const float t = greedy ? 1.0f : temp;
        const float* x = logits + (size_t)row * V;
        // 1-2. penalty and temperature into the private copy.
        for (int j = tid; j < V; j += NT) p[j] = x[j] / t;
        __syncthreads();
        if (pen != 1.0f) {
            for (u32 s = off[row] + tid; s < off[row + 1]; s += NT) {
                const u32 id = ids[s];
                if (id < (u32)V) { float l = x[id]; l = l > 0.0f ? l / pen : l * pen; p[id] = l / t; }
            }
        }
        __syncthreads();
        // 3-4. max (argmax, ties to the lowest id) and log-sum-exp.
        float mx = NEG_INF;
        u32 best = 0xffffffffu;
        for (int j = tid; j < V; j += NT) { const float v = p[j]; if (v > mx) { mx = v; best = j; } }
        block_argmax(mx, best, shf, shu);
        if (best == 0xffffffffu) best = 0;
        float s = 0.0f;
        for (int j = tid; j < V; j += NT) s += expf(p[j] - mx);
        const float lse = mx + logf(block_sum(s, shf));
        if (greedy) {
            if (tid == 0) { out[row] = best; out[R + row] = __float_as_uint(p[best] - lse); }
            continue;
        }
        // 5. top-k: radix select of the k-th largest key, 8 bits at a time.
        float thr = NEG_INF;
        const bool has_k = topk > 0 && topk < (u32)V;
        if (has_k) {
            u32 prefix = 0, mask = 0, kk = topk;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int b = tid; b < 256; b += NT) hist[b] = 0;
                __syncthreads();
                for (int j = tid; j < V; j += NT) {
                    const u32 k = fkey(p[j]);
                    if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
                }
                __syncthreads();
                if (tid == 0) {
                    u32 cum = 0;
                    int d = 255;
                    for (; d > 0; d--) { if (cum + hist[d] >= kk) break; cum += hist[d]; }
                    bc[0] = (u32)d;
                    bc[1] = kk - cum;
                }
                __syncthreads();
                prefix |= bc[0] << shift;
                mask |= 255u << shift;
                kk = bc[1];
                __syncthreads();
            }
            thr = keyf(prefix);
        }
        // 5. top-p over the tokens at or above the top-k threshold, on a compacted list.
        bool listed = false;
        int nl = V;
        if (has_k || topp < 1.0f) {
            float target = 0.0f, floor = 0.0f;
            if (topp < 1.0f) {
                float m = 0.0f;
                for (int j = tid; j < V; j += NT) { const float v = p[j]; if (v >= thr) m += expf(v - mx); }
                m = block_sum(m, shf);
                target = topp * m;
                floor = 0.25f * fmaxf(1.0f - topp, 0.0f) * m / (float)V;
            }
            const float thr_k = thr;
            for (int attempt = 0; attempt < 2; attempt++) {
                const float fl = attempt == 0 ? floor : 0.0f;
                nl = compact(p, cand, V, thr_k, mx, fl, shu);
                listed = true;
                if (!(topp < 1.0f)) break;
                float tot = 0.0f;
                for (int i = tid; i < nl; i += NT) tot += expf(p[cand[i]] - mx);
                tot = block_sum(tot, shf);
                if (tot >= target) {
                    u32 c = 0;
                    for (int bit = 31; bit >= 0; bit--) {
                        const u32 cd = c | (1u << bit);
                        float ms = 0.0f;
                        for (int i = tid; i < nl; i += NT) { const float v = p[cand[i]]; if (fkey(v) >= cd) ms += expf(v - mx); }
                        if (block_sum(ms, shf) >= target) c = cd;
                    }
                    thr = fmaxf(thr, keyf(c));
                    break;
                }
                if (fl == 0.0f) break;  // rounding: the whole list stays
            }
        }
        // 6. Draw: contiguous chunks per thread in ascending id order, chunk sums, block scan;
        // the thread whose interval holds the target rescans its chunk.
        const int n = listed ? nl : V;
        const int ch = (n + NT - 1) / NT;
        const int b = imin(n, tid * ch), e = imin(n, b + ch);
        float cs = 0.0f;
        for (int i = b; i < e; i++) { const u32 id = listed ? cand[i] : (u32)i; const float v = p[id]; if (v >= thr) cs += expf(v - mx); }
        const float inc = block_scan(cs, shf);
        incl[tid] = inc;
        if (tid == 0) choice = 0xffffffffu;
        __syncthreads();
        const float target = uni * incl[NT - 1];
        const float lo = tid > 0 ? incl[tid - 1] : 0.0f;
        if (lo <= target && target < inc) {
            float r = target - lo;
            u32 pick = 0xffffffffu, last = 0xffffffffu;
            for (int i = b; i < e; i++) {
                const u32 id = listed ? cand[i] : (u32)i;
                const float v = p[id];
                if (!(v >= thr)) continue;
                const float wgt = expf(v - mx);
                if (wgt > 0.0f) last = id;
                if (r < wgt) { pick = id; break; }
                r -= wgt;
            }
            if (pick == 0xffffffffu) pick = last;
            if (pick != 0xffffffffu) atomicMin(&choice, pick);
        }
        __syncthreads();
        u32 id = choice;
        if (id == 0xffffffffu) {
            // Rounding put the target past the mass: the last kept token with mass.
            u32 lastp1 = 0;
            for (int i = b; i < e; i++) { const u32 idi = listed ? cand[i] : (u32)i; const float v = p[idi]; if (v >= thr && expf(v - mx) > 0.0f) lastp1 = idi + 1; }
            lastp1 = block_max_u(lastp1, shu);
            id = lastp1 > 0 ? lastp1 - 1 : best;
        }
        if (tid == 0) { out[row] = id; out[R + row] = __float_as_uint(p[id] - lse); }
    }
}
"#;

    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

    fn func(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
        let ptx = PTX
            .get_or_init(|| candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| format!("NVRTC failed on the inference kernels: {e}")))
            .as_ref()
            .map_err(|e| candle_core::Error::Msg(e.clone()))?;
        Ok(dev.get_or_load_custom_func(name, "medrl_infer_kernels", ptx)?.into_cuda_function())
    }

    fn suffix(dtype: DType) -> Result<&'static str> {
        Ok(match dtype {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            other => candle_core::bail!("inference kernel: unsupported dtype {other:?}"),
        })
    }

    fn cuda_of<'a>(s: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
        match s {
            Storage::Cuda(c) => Ok(c),
            _ => candle_core::bail!("inference kernel operand {what} is not on a CUDA device"),
        }
    }

    // ---- write_kv --------------------------------------------------------------------------

    pub fn write_kv(cache: &mut CudaStorage, cl: &Layout, src: &CudaStorage, sl: &Layout, slots: &CudaStorage, il: &Layout) -> Result<()> {
        let (num_slots, kvh, d) = cl.shape().dims3()?;
        let row = kvh * d;
        let n = il.shape().elem_count();
        if cache.dtype() != src.dtype() || slots.dtype() != DType::U32 || sl.shape().elem_count() != n * row {
            candle_core::bail!("write_kv: cache {:?} and rows {:?} differ, or slots are not u32", cache.dtype(), src.dtype());
        }
        if num_slots > u32::MAX as usize || row > u32::MAX as usize {
            candle_core::bail!("write_kv: cache of {num_slots} slots of {row} is too large");
        }
        let dev = src.device().clone();
        let (cp, sp, ip) = (ptr(cache, cl, "cache")?, ptr(src, sl, "rows")?, ptr(slots, il, "slots")?);
        let name = if cache.dtype() == DType::F32 { "medrl_write_kv_b32" } else { "medrl_write_kv_b16" };
        let f = func(&dev, name)?;
        let total = n * row;
        let (n64, row32, ns32) = (total as u64, row as u32, num_slots as u32);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&cp).arg(&sp).arg(&ip).arg(&n64).arg(&row32).arg(&ns32);
        let grid = (total as u64).div_ceil(256).clamp(1, 65_535 * 8) as u32;
        launch(&mut b, LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }, "write_kv")
    }

    // ---- paged attention -------------------------------------------------------------------

    /// Enough (sequence, head, part) blocks to fill a GPU: parts of at most 2048 positions,
    /// more parts while there are fewer than ~1024 blocks, none shorter than 256 positions.
    fn partitions(g: &Geometry) -> (usize, usize) {
        let bound = (g.max_blocks * g.block_size).max(1);
        let pairs = (g.n * g.heads).max(1);
        let mut parts = 1024usize.div_ceil(pairs).min(bound.div_ceil(256)).max(bound.div_ceil(2048)).max(1);
        let part_len = bound.div_ceil(parts).next_multiple_of(64);
        parts = bound.div_ceil(part_len);
        (parts, part_len)
    }

    pub fn paged_attention(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, block_tables: &Tensor, context_lens: &Tensor, g: &Geometry) -> Result<Tensor> {
        let Device::Cuda(dev) = q.device() else { candle_core::bail!("paged_attention: q is not on a CUDA device") };
        if g.head_dim > 256 {
            candle_core::bail!("paged_attention: head_dim {} over the kernel's 256", g.head_dim);
        }
        let dtype = k_cache.dtype();
        if g.n == 0 {
            return Tensor::zeros((0, g.heads, g.head_dim), q.dtype(), q.device());
        }
        let too_big = [g.n * g.heads, g.max_blocks * g.block_size, g.kv_heads * g.head_dim];
        if too_big.iter().any(|&x| x > i32::MAX as usize) {
            candle_core::bail!("paged_attention: shapes too large for the kernel");
        }
        let qc = q.to_dtype(dtype)?.contiguous()?;
        let (kc, vc) = (k_cache.contiguous()?, v_cache.contiguous()?);
        let (bt, cl) = (block_tables.contiguous()?, context_lens.contiguous()?);
        let (parts, part_len) = partitions(g);
        let rows = g.n * g.heads;
        let out_len = rows * g.head_dim;
        let stream = dev.cuda_stream();
        let sfx = suffix(dtype)?;
        let storage = {
            let (qs, ql) = qc.storage_and_layout();
            let (ks, kl) = kc.storage_and_layout();
            let (vs, vl) = vc.storage_and_layout();
            let (bs_, bl) = bt.storage_and_layout();
            let (cs, cll) = cl.storage_and_layout();
            let qp = ptr(cuda_of(&qs, "q")?, ql, "q")?;
            let kp = ptr(cuda_of(&ks, "k_cache")?, kl, "k_cache")?;
            let vp = ptr(cuda_of(&vs, "v_cache")?, vl, "v_cache")?;
            let bp = ptr(cuda_of(&bs_, "block_tables")?, bl, "block_tables")?;
            let cp = ptr(cuda_of(&cs, "context_lens")?, cll, "context_lens")?;
            // SAFETY (allocations below): the kernels write every element that is read: the
            // output fully (zeros for empty contexts), the partial buffers for every part below
            // the clamped context length, which is all that the reduce kernel reads.
            let (out, op) = match dtype {
                DType::BF16 => {
                    let s = unsafe { dev.alloc::<bf16>(out_len)? };
                    let p = s.device_ptr(&stream).0;
                    (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
                }
                DType::F16 => {
                    let s = unsafe { dev.alloc::<f16>(out_len)? };
                    let p = s.device_ptr(&stream).0;
                    (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
                }
                _ => {
                    let s = unsafe { dev.alloc::<f32>(out_len)? };
                    let p = s.device_ptr(&stream).0;
                    (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
                }
            };
            let partial = if parts > 1 { Some((unsafe { dev.alloc::<f32>(rows * parts * 2)? }, unsafe { dev.alloc::<f32>(rows * parts * g.head_dim)? })) } else { None };
            let (mlp, pop) = match &partial {
                Some((ml, po)) => (ml.device_ptr(&stream).0, po.device_ptr(&stream).0),
                None => (0u64, 0u64),
            };
            let (h32, kvh32, d32, bs32, mb32) = (g.heads as i32, g.kv_heads as i32, g.head_dim as i32, g.block_size as i32, g.max_blocks as i32);
            let (ns64, pl32, np32, scale) = (g.num_slots as u64, part_len as i32, parts as i32, g.scale());
            let f = func(dev, &format!("medrl_paged_attention_{sfx}"))?;
            let mut b = stream.launch_builder(&f);
            b.arg(&qp).arg(&kp).arg(&vp).arg(&bp).arg(&cp).arg(&op).arg(&mlp).arg(&pop);
            b.arg(&h32).arg(&kvh32).arg(&d32).arg(&bs32).arg(&mb32).arg(&ns64).arg(&pl32).arg(&scale);
            let cfg = LaunchConfig { grid_dim: (rows as u32, parts as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            launch(&mut b, cfg, "paged_attention")?;
            if parts > 1 {
                let f = func(dev, &format!("medrl_paged_attention_reduce_{sfx}"))?;
                let mut b = stream.launch_builder(&f);
                b.arg(&cp).arg(&mlp).arg(&pop).arg(&op).arg(&h32).arg(&d32).arg(&mb32).arg(&bs32).arg(&pl32).arg(&np32);
                let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
                launch(&mut b, cfg, "paged_attention_reduce")?;
            }
            // The partial buffers are freed on the stream after the kernels that use them.
            drop(partial);
            out
        };
        let out = Tensor::from_storage(Storage::Cuda(storage), (g.n, g.heads, g.head_dim), candle_core::op::BackpropOp::none(), false);
        out.to_dtype(q.dtype())
    }

    // ---- sampling --------------------------------------------------------------------------

    pub fn sample_rows(logits: &Tensor, args: &SampleArgs) -> Result<(Vec<u32>, Vec<f32>)> {
        let Device::Cuda(dev) = logits.device() else { candle_core::bail!("sample_rows: logits are not on a CUDA device") };
        let (rows, vocab) = logits.dims2()?;
        let logits = logits.to_dtype(DType::F32)?.contiguous()?;
        // One upload: per-row settings, the CSR offsets of `seen`, then its ids.
        let nseen: usize = args.seen.iter().map(|s| s.len()).sum();
        if 5 * rows + rows + 1 + nseen > u32::MAX as usize || nseen > u32::MAX as usize {
            candle_core::bail!("sample_rows: too many seen ids ({nseen})");
        }
        let mut host = Vec::with_capacity(6 * rows + 1 + nseen);
        for r in 0..rows {
            host.extend_from_slice(&[args.temperature[r].to_bits(), args.top_k[r], args.top_p[r].to_bits(), args.repetition_penalty[r].to_bits(), args.uniform[r].to_bits()]);
        }
        let mut acc = 0u32;
        host.push(0);
        for s in args.seen {
            acc += s.len() as u32;
            host.push(acc);
        }
        for s in args.seen {
            host.extend_from_slice(s);
        }
        let stream = dev.cuda_stream();
        let dargs = dev.clone_htod(&host)?;
        let blocks = rows.min(256);
        // SAFETY: the kernel writes each block's scratch row before reading it and writes every
        // output element (one id and one log-probability per row).
        let proc_buf = unsafe { dev.alloc::<f32>(blocks * vocab)? };
        let cand_buf = unsafe { dev.alloc::<u32>(blocks * vocab)? };
        let out = unsafe { dev.alloc::<u32>(2 * rows)? };
        {
            let (ls, ll) = logits.storage_and_layout();
            let lp = ptr(cuda_of(&ls, "logits")?, ll, "logits")?;
            let (ap, op) = (dargs.device_ptr(&stream).0, out.device_ptr(&stream).0);
            let (pp, cp) = (proc_buf.device_ptr(&stream).0, cand_buf.device_ptr(&stream).0);
            let (r32, v32) = (rows as i32, vocab as i32);
            let f = func(dev, "medrl_sample_rows")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&lp).arg(&ap).arg(&op).arg(&pp).arg(&cp).arg(&r32).arg(&v32);
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
            launch(&mut b, cfg, "sample_rows")?;
        }
        let back = dev.clone_dtoh(&out)?;
        drop((proc_buf, cand_buf, dargs));
        let ids = back[..rows].to_vec();
        let lps = back[rows..].iter().map(|&b| f32::from_bits(b)).collect();
        Ok((ids, lps))
    }

    /// The kernel source, for compiling it offline (nvcc) in checks.
    #[allow(dead_code)]
    pub fn source() -> &'static str {
        SOURCE
    }
}

// ---- agreement report ---------------------------------------------------------------------------

/// A small deterministic generator (splitmix64) for the report's inputs.
struct Mix(u64);

impl Mix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Sizes of the report's cases (the public report uses [`ReportSizes::FULL`]).
struct ReportSizes {
    contexts: &'static [usize],
    vocab: usize,
    sample_rows: usize,
}

impl ReportSizes {
    const FULL: Self = Self { contexts: &[1, 5, 37, 300, 1000, 2049, 4096, 4096, 17, 32768], vocab: 151_936, sample_rows: 64 };
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?;
    (a - b)?.abs()?.max(0)?.to_scalar::<f32>()
}

/// Run each op on `device` and on the CPU with the same seeded random inputs and report how far
/// apart they are: write_kv (exact), paged attention (max abs error per case, bf16/f16/f32
/// caches, GQA, contexts up to 32768), and the sampler (fraction of rows choosing the same
/// token, max log-probability difference, per setting; vocabulary 151936, same uniforms). Also
/// times each device op (after a warm-up, synchronized). Deterministic for a given device.
pub fn agreement_report(device: &Device) -> Result<String> {
    let r = report_with(device, &ReportSizes::FULL)?;
    Ok(format!(
        "{}summary: write_kv max diff {:e}; paged_attention max error / max |out| {:.2e} (16-bit caches), {:.2e} (f32); sampler {:.1}% of rows agree\n",
        r.text,
        r.write_err,
        r.attn_rel_err_16,
        r.attn_rel_err_32,
        100.0 * r.sample_agree
    ))
}

/// The report's text and its worst numbers.
struct Report {
    text: String,
    /// write_kv: largest difference between the caches (0 expected).
    write_err: f32,
    /// paged attention: largest error relative to the case's largest output magnitude, for
    /// 16-bit caches and for f32 caches.
    attn_rel_err_16: f32,
    attn_rel_err_32: f32,
    /// sampler: fraction of rows choosing the same token.
    sample_agree: f64,
}

fn report_with(device: &Device, sizes: &ReportSizes) -> Result<Report> {
    use std::fmt::Write;
    let (mut write_err, mut attn_rel_err_16, mut attn_rel_err_32) = (0.0f32, 0.0f32, 0.0f32);
    let mut rng = Mix(0x6d65_6472_6c5f_696e);
    let mut out = String::new();
    let cpu = Device::Cpu;
    let _ = writeln!(out, "medrl-nn infer: {device:?} against the CPU reference");

    // write_kv
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let (slots_n, kvh, d, n) = (257, 2, 64, 40);
        let init = Tensor::from_vec(rng.normals(slots_n * kvh * d, 1.0), (slots_n, kvh, d), &cpu)?.to_dtype(dtype)?;
        let (kc_cpu, vc_cpu) = (init.copy()?, (&init * 0.5)?);
        let (kc_dev, vc_dev) = (kc_cpu.to_device(device)?, vc_cpu.to_device(device)?);
        let k = Tensor::from_vec(rng.normals(n * kvh * d, 1.0), (n, kvh, d), &cpu)?.to_dtype(dtype)?;
        let v = Tensor::from_vec(rng.normals(n * kvh * d, 1.0), (n, kvh, d), &cpu)?.to_dtype(dtype)?;
        let mut perm: Vec<u32> = (0..slots_n as u32).collect();
        rng.shuffle(&mut perm);
        let slots = Tensor::from_vec(perm[..n].to_vec(), n, &cpu)?;
        write_kv(&kc_cpu, &vc_cpu, &k, &v, &slots)?;
        write_kv(&kc_dev, &vc_dev, &k.to_device(device)?, &v.to_device(device)?, &slots.to_device(device)?)?;
        let ek = max_abs_diff(&kc_cpu, &kc_dev)?;
        let ev = max_abs_diff(&vc_cpu, &vc_dev)?;
        write_err = write_err.max(ek).max(ev);
        let _ = writeln!(out, "write_kv {dtype:?}: max abs diff k {ek:e}, v {ev:e} (expected 0)");
    }

    // paged attention
    let cases: [(DType, usize, usize, usize, usize); 6] = [
        (DType::BF16, 14, 2, 64, 16),
        (DType::F32, 14, 2, 64, 16),
        (DType::BF16, 8, 8, 128, 16),
        (DType::F16, 12, 4, 128, 32),
        (DType::BF16, 16, 2, 256, 16),
        (DType::F32, 7, 1, 96, 8),
    ];
    for (dtype, heads, kvh, d, bs) in cases {
        let ctx = sizes.contexts;
        let n = ctx.len();
        let blocks: Vec<usize> = ctx.iter().map(|c| c.div_ceil(bs)).collect();
        let max_blocks = blocks.iter().copied().max().unwrap_or(1).max(1) + 1;
        let num_blocks: usize = blocks.iter().sum::<usize>() + 3;
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        rng.shuffle(&mut ids);
        let mut table = vec![0u32; n * max_blocks];
        let mut next = 0;
        for (i, &b) in blocks.iter().enumerate() {
            for j in 0..max_blocks {
                // Entries past a sequence's blocks are arbitrary (here: out of range).
                table[i * max_blocks + j] = if j < b {
                    next += 1;
                    ids[next - 1]
                } else {
                    u32::MAX - j as u32
                };
            }
        }
        let num_slots = num_blocks * bs;
        let kc = Tensor::from_vec(rng.normals(num_slots * kvh * d, 1.0), (num_slots, kvh, d), &cpu)?.to_dtype(dtype)?;
        let vc = Tensor::from_vec(rng.normals(num_slots * kvh * d, 1.0), (num_slots, kvh, d), &cpu)?.to_dtype(dtype)?;
        // Queries scaled up so that the softmax is peaked for some heads and flat for others.
        let q = Tensor::from_vec(rng.normals(n * heads * d, 2.0), (n, heads, d), &cpu)?.to_dtype(dtype)?;
        let bt = Tensor::from_vec(table, (n, max_blocks), &cpu)?;
        let cl = Tensor::from_vec(ctx.iter().map(|&c| c as u32).collect::<Vec<_>>(), n, &cpu)?;
        let want = paged_attention(&q, &kc, &vc, &bt, &cl, bs)?;
        let (qd, kd, vd, btd, cld) = (q.to_device(device)?, kc.to_device(device)?, vc.to_device(device)?, bt.to_device(device)?, cl.to_device(device)?);
        let got = paged_attention(&qd, &kd, &vd, &btd, &cld, bs)?;
        device.synchronize()?;
        let t0 = std::time::Instant::now();
        let reps = 5;
        for _ in 0..reps {
            let _ = paged_attention(&qd, &kd, &vd, &btd, &cld, bs)?;
        }
        device.synchronize()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let err = max_abs_diff(&want, &got)?;
        let scale = want.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let rel = err / scale.max(f32::MIN_POSITIVE);
        if dtype == DType::F32 {
            attn_rel_err_32 = attn_rel_err_32.max(rel);
        } else {
            attn_rel_err_16 = attn_rel_err_16.max(rel);
        }
        let _ = writeln!(
            out,
            "paged_attention {dtype:?} heads {heads}/{kvh} head_dim {d} block {bs}, {n} seqs, contexts {ctx:?}: max abs err {err:.3e} (max |out| {scale:.3}), {ms:.3} ms/call"
        );
    }

    // sampler
    let (rows, vocab) = (sizes.sample_rows, sizes.vocab);
    let settings: [(&str, f32, u32, f32, f32); 8] = [
        ("greedy", 0.0, 0, 1.0, 1.0),
        ("greedy+penalty", 0.0, 0, 1.0, 1.3),
        ("t=1", 1.0, 0, 1.0, 1.0),
        ("t=0.7 top_k=50", 0.7, 50, 1.0, 1.0),
        ("t=1 top_p=0.9", 1.0, 0, 0.9, 1.0),
        ("t=0.7 top_k=20 top_p=0.95 pen=1.3", 0.7, 20, 0.95, 1.3),
        ("t=1.2 top_p=0.5 pen=1.1", 1.2, 0, 0.5, 1.1),
        ("t=0.6 top_k=1", 0.6, 1, 1.0, 1.0),
    ];
    let mut data = Vec::with_capacity(rows * vocab);
    for r in 0..rows {
        // Peakedness varies by row; a few spikes mimic a model's favourite tokens.
        let scale = 1.0 + (r % 8) as f32;
        let mut row = rng.normals(vocab, scale);
        for _ in 0..8 {
            let i = rng.below(vocab);
            row[i] += 4.0 * scale;
        }
        data.extend(row);
    }
    let seen_store: Vec<Vec<u32>> = (0..rows)
        .map(|_| {
            let mut ids: Vec<u32> = (0..300).map(|_| rng.below(vocab + 100) as u32).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        })
        .collect();
    let seen: Vec<&[u32]> = seen_store.iter().map(|s| s.as_slice()).collect();
    let pick = |r: usize| settings[r % settings.len()];
    let temperature: Vec<f32> = (0..rows).map(|r| pick(r).1).collect();
    let top_k: Vec<u32> = (0..rows).map(|r| pick(r).2).collect();
    let top_p: Vec<f32> = (0..rows).map(|r| pick(r).3).collect();
    let pen: Vec<f32> = (0..rows).map(|r| pick(r).4).collect();
    let uniform: Vec<f32> = (0..rows).map(|_| rng.uniform()).collect();
    let args = SampleArgs { temperature: &temperature, top_k: &top_k, top_p: &top_p, repetition_penalty: &pen, uniform: &uniform, seen: &seen };
    let logits = Tensor::from_vec(data, (rows, vocab), &cpu)?;
    let (want_ids, want_lp) = sample_rows(&logits, &args)?;
    let ld = logits.to_device(device)?;
    let (got_ids, got_lp) = sample_rows(&ld, &args)?;
    let t0 = std::time::Instant::now();
    let reps = 5;
    for _ in 0..reps {
        let _ = sample_rows(&ld, &args)?;
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let same_input = max_abs_diff(&logits, &ld)?;
    let mut agree_all = 0;
    for (si, s) in settings.iter().enumerate() {
        let (mut n, mut agree, mut lp_err) = (0, 0, 0.0f32);
        for r in (si..rows).step_by(settings.len()) {
            n += 1;
            if want_ids[r] == got_ids[r] {
                agree += 1;
                lp_err = lp_err.max((want_lp[r] - got_lp[r]).abs());
            }
        }
        agree_all += agree;
        let _ = writeln!(out, "sample_rows [{}]: {agree}/{n} rows agree, max |logprob diff| {lp_err:.3e}", s.0);
    }
    let _ = writeln!(
        out,
        "sample_rows: {agree_all}/{rows} rows agree ({:.1}%) at vocab {vocab}; device logits unchanged: {}; {ms:.3} ms/call for {rows} rows (upload, kernel, download)",
        100.0 * agree_all as f64 / rows.max(1) as f64,
        same_input == 0.0
    );
    Ok(Report { text: out, write_err, attn_rel_err_16, attn_rel_err_32, sample_agree: agree_all as f64 / rows.max(1) as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect()
    }

    /// Dense attention in f64 over contiguous per-sequence K/V `[ctx, kv_heads, d]`.
    fn dense(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], ctx: &[usize], heads: usize, kvh: usize, d: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; ctx.len() * heads * d];
        for (i, &c) in ctx.iter().enumerate() {
            for h in 0..heads {
                let g = h / (heads / kvh);
                let qi = &q[(i * heads + h) * d..(i * heads + h + 1) * d];
                let scores: Vec<f64> = (0..c).map(|t| (0..d).map(|j| qi[j] as f64 * ks[i][(t * kvh + g) * d + j] as f64).sum::<f64>() / (d as f64).sqrt()).collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for j in 0..d {
                    out[(i * heads + h) * d + j] = (0..c).map(|t| (scores[t] - m).exp() / z * vs[i][(t * kvh + g) * d + j] as f64).sum();
                }
            }
        }
        out
    }

    #[test]
    fn infer_paged_attention_matches_dense() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let ctx = [1usize, 5, 37];
        let d = 8;
        for (heads, kvh) in [(4usize, 2usize), (2, 2)] {
            for bs in [4usize, 16] {
                for dtype in [DType::F32, DType::BF16] {
                    let n = ctx.len();
                    let blocks: Vec<usize> = ctx.iter().map(|c| c.div_ceil(bs)).collect();
                    let num_blocks = blocks.iter().sum::<usize>() + 2;
                    let max_blocks = *blocks.iter().max().unwrap() + 1;
                    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
                    for i in (1..ids.len()).rev() {
                        ids.swap(i, rng.gen_range(0..=i));
                    }
                    let mut table = vec![u32::MAX; n * max_blocks];
                    let mut next = 0;
                    for (i, &b) in blocks.iter().enumerate() {
                        for j in 0..b {
                            table[i * max_blocks + j] = ids[next];
                            next += 1;
                        }
                    }
                    // Per-sequence K/V, rounded to the cache dtype so the dense reference sees
                    // the same values.
                    let round = |v: Vec<f32>| -> Vec<f32> { Tensor::new(v.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap() };
                    let ks: Vec<Vec<f32>> = ctx.iter().map(|&c| round(rand_vec(&mut rng, c * kvh * d))).collect();
                    let vs: Vec<Vec<f32>> = ctx.iter().map(|&c| round(rand_vec(&mut rng, c * kvh * d))).collect();
                    let q = round(rand_vec(&mut rng, n * heads * d).iter().map(|x| x * 3.0).collect());
                    let num_slots = num_blocks * bs;
                    let kc = Tensor::zeros((num_slots, kvh, d), dtype, &Device::Cpu)?;
                    let vc = Tensor::zeros((num_slots, kvh, d), dtype, &Device::Cpu)?;
                    for (i, &c) in ctx.iter().enumerate() {
                        let slots: Vec<u32> = (0..c).map(|p| table[i * max_blocks + p / bs] * bs as u32 + (p % bs) as u32).collect();
                        let k = Tensor::from_vec(ks[i].clone(), (c, kvh, d), &Device::Cpu)?.to_dtype(dtype)?;
                        let v = Tensor::from_vec(vs[i].clone(), (c, kvh, d), &Device::Cpu)?.to_dtype(dtype)?;
                        write_kv(&kc, &vc, &k, &v, &Tensor::new(slots.as_slice(), &Device::Cpu)?)?;
                    }
                    let qt = Tensor::from_vec(q.clone(), (n, heads, d), &Device::Cpu)?.to_dtype(dtype)?;
                    let bt = Tensor::from_vec(table.clone(), (n, max_blocks), &Device::Cpu)?;
                    let cl = Tensor::from_vec(ctx.iter().map(|&c| c as u32).collect::<Vec<_>>(), n, &Device::Cpu)?;
                    let got: Vec<f32> = paged_attention(&qt, &kc, &vc, &bt, &cl, bs)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    let want = dense(&q, &ks, &vs, &ctx, heads, kvh, d);
                    // f32: accumulation error only; bf16: the output's own rounding (8 bits).
                    let tol = if dtype == DType::F32 { 1e-5 } else { 8e-3 };
                    for (g, w) in got.iter().zip(&want) {
                        assert!((*g as f64 - w).abs() <= tol * (1.0 + w.abs()), "heads {heads}/{kvh} block {bs} {dtype:?}: {g} vs {w}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn infer_paged_attention_edge_cases() -> Result<()> {
        // Context 0 gives zeros; a context beyond the table is an error.
        let q = Tensor::ones((2, 2, 4), DType::F32, &Device::Cpu)?;
        let kc = Tensor::ones((8, 1, 4), DType::F32, &Device::Cpu)?;
        let bt = Tensor::new(&[[0u32, 1], [1, 0]], &Device::Cpu)?;
        let out = paged_attention(&q, &kc, &kc, &bt, &Tensor::new(&[0u32, 3], &Device::Cpu)?, 4)?;
        assert_eq!(out.get(0)?.flatten_all()?.to_vec1::<f32>()?, vec![0.0; 8]);
        assert_eq!(out.get(1)?.flatten_all()?.to_vec1::<f32>()?, vec![1.0; 8]);
        assert!(paged_attention(&q, &kc, &kc, &bt, &Tensor::new(&[9u32, 1], &Device::Cpu)?, 4).is_err());
        // 3 query heads over 2 kv heads is not GQA.
        let q3 = Tensor::ones((2, 3, 4), DType::F32, &Device::Cpu)?;
        let kc2 = Tensor::ones((8, 2, 4), DType::F32, &Device::Cpu)?;
        assert!(paged_attention(&q3, &kc2, &kc2, &bt, &Tensor::new(&[1u32, 1], &Device::Cpu)?, 4).is_err());
        Ok(())
    }

    #[test]
    fn infer_write_kv_round_trip() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (ns, kvh, d) = (10, 2, 3);
            let init = Tensor::from_vec(rand_vec(&mut rng, ns * kvh * d), (ns, kvh, d), &Device::Cpu)?.to_dtype(dtype)?;
            let kc = init.copy()?;
            let vc = init.copy()?;
            let k = Tensor::from_vec(rand_vec(&mut rng, 3 * kvh * d), (3, kvh, d), &Device::Cpu)?.to_dtype(dtype)?;
            let v = Tensor::from_vec(rand_vec(&mut rng, 3 * kvh * d), (3, kvh, d), &Device::Cpu)?.to_dtype(dtype)?;
            let slots = [7u32, 0, 4];
            write_kv(&kc, &vc, &k, &v, &Tensor::new(&slots, &Device::Cpu)?)?;
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap();
            let (kc, vc, k, v, init) = (f(&kc), f(&vc), f(&k), f(&v), f(&init));
            for s in 0..ns {
                match slots.iter().position(|&x| x as usize == s) {
                    Some(i) => {
                        assert_eq!(kc[s], k[i]);
                        assert_eq!(vc[s], v[i]);
                    }
                    None => {
                        assert_eq!(kc[s], init[s]);
                        assert_eq!(vc[s], init[s]);
                    }
                }
            }
        }
        // A slot past the cache is an error, not a silent write.
        let kc = Tensor::zeros((4, 1, 2), DType::F32, &Device::Cpu)?;
        let k = Tensor::ones((1, 1, 2), DType::F32, &Device::Cpu)?;
        assert!(write_kv(&kc, &kc.copy()?, &k, &k, &Tensor::new(&[4u32], &Device::Cpu)?).is_err());
        Ok(())
    }

    fn lse(v: &[f32]) -> f32 {
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
    }

    #[test]
    fn infer_sample_greedy_ties_and_penalty() {
        let mut l = vec![1.0, 3.0, 3.0, 2.0];
        let (id, lp) = sample_row(&mut l, &[], 0.0, 0, 1.0, 1.0, 0.99);
        assert_eq!(id, 1, "ties go to the lowest id");
        assert!((lp - (3.0 - lse(&[1.0, 3.0, 3.0, 2.0]))).abs() < 1e-6);
        // Penalty 2: 2.0 -> 1.0, -1.0 -> -2.0; id 99 is past the vocabulary and ignored.
        let mut l = vec![2.0, -1.0, 1.5];
        let (id, lp) = sample_row(&mut l, &[0, 1, 99], 0.0, 0, 1.0, 2.0, 0.5);
        assert_eq!(l, vec![1.0, -2.0, 1.5]);
        assert_eq!(id, 2);
        assert!((lp - (1.5 - lse(&[1.0, -2.0, 1.5]))).abs() < 1e-6);
        // Greedy ignores top-k/top-p.
        let mut l = vec![0.0, 5.0, 1.0];
        assert_eq!(sample_row(&mut l, &[], 0.0, 1, 0.1, 1.0, 0.0).0, 1);
    }

    #[test]
    fn infer_sample_temperature_logprob() {
        // Temperature 0.5 doubles the logits; the log-probability is under that distribution,
        // before truncation (top_k 1 keeps id 1 alone).
        let mut l = vec![1.0, 2.0, 0.0];
        let (id, lp) = sample_row(&mut l, &[], 0.5, 1, 1.0, 1.0, 0.3);
        assert_eq!(id, 1);
        assert!((lp - (4.0 - lse(&[2.0, 4.0, 0.0]))).abs() < 1e-6);
    }

    fn drawn(logits: &[f32], top_k: u32, top_p: f32) -> std::collections::BTreeSet<u32> {
        (0..1000)
            .map(|i| {
                let mut l = logits.to_vec();
                sample_row(&mut l, &[], 1.0, top_k, top_p, 1.0, (i as f32 + 0.5) / 1000.0).0
            })
            .collect()
    }

    #[test]
    fn infer_sample_top_k_keeps_ties() {
        let l = [1.0, 2.0, 2.0, 0.5, 2.0];
        assert_eq!(drawn(&l, 2, 1.0), [1, 2, 4].into_iter().collect());
        assert_eq!(drawn(&l, 4, 1.0), [0, 1, 2, 4].into_iter().collect());
        assert_eq!(drawn(&l, 5, 1.0), [0, 1, 2, 3, 4].into_iter().collect());
        // Uniform draw among the three tied tokens, in id order.
        let mut x = l.to_vec();
        assert_eq!(sample_row(&mut x, &[], 1.0, 2, 1.0, 1.0, 0.0).0, 1);
        let mut x = l.to_vec();
        assert_eq!(sample_row(&mut x, &[], 1.0, 2, 1.0, 1.0, 0.5).0, 2);
        let mut x = l.to_vec();
        assert_eq!(sample_row(&mut x, &[], 1.0, 2, 1.0, 1.0, 0.9).0, 4);
    }

    #[test]
    fn infer_sample_top_p_boundary() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (ids shuffled): the nucleus is the smallest
        // descending prefix reaching top_p, ties at its last value included.
        let p = [0.125f32, 0.5, 0.125, 0.25];
        let l: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        assert_eq!(drawn(&l, 0, 0.49), [1].into_iter().collect());
        assert_eq!(drawn(&l, 0, 0.51), [1, 3].into_iter().collect());
        assert_eq!(drawn(&l, 0, 0.74), [1, 3].into_iter().collect());
        // 0.76 needs the third token, whose tie (the fourth) comes with it.
        assert_eq!(drawn(&l, 0, 0.76), [0, 1, 2, 3].into_iter().collect());
        // top_p 0 keeps the maximum only; top-k first, then top-p within it.
        assert_eq!(drawn(&l, 0, 0.0), [1].into_iter().collect());
        assert_eq!(drawn(&l, 3, 0.9), [0, 1, 2, 3].into_iter().collect());
        assert_eq!(drawn(&l, 2, 0.9), [1, 3].into_iter().collect());
        // Draw positions within the kept {1, 3} (weights 0.5, 0.25 of W = 0.75), id order.
        let at = |u: f32| sample_row(&mut l.clone(), &[], 1.0, 0, 0.6, 1.0, u).0;
        assert_eq!(at(0.6), 1); // target 0.45 < 0.5
        assert_eq!(at(0.7), 3); // target 0.525
    }

    #[test]
    fn infer_sample_draw_positions() {
        // Weights after max subtraction 0.25, 0.5, 0.75, 1 (W = 2.5), no truncation.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        for (u, want) in [(0.05, 0), (0.2, 1), (0.35, 2), (0.5, 2), (0.62, 3), (0.9, 3), (0.0, 0)] {
            let mut x = l.clone();
            let (id, lp) = sample_row(&mut x, &[], 1.0, 0, 1.0, 1.0, u);
            assert_eq!(id, want, "u = {u}");
            assert!((lp - ((want + 1) as f32 / 10.0).ln()).abs() < 1e-6);
        }
        // A uniform at 1 (outside [0, 1)) falls back to the last kept token with mass.
        let mut x = vec![0.0, 0.0, f32::NEG_INFINITY];
        assert_eq!(sample_row(&mut x, &[], 1.0, 0, 1.0, 1.0, 1.0).0, 1);
    }

    #[test]
    fn infer_sample_chi_square() {
        let logits = [2.0f32, 1.0, 0.5, 3.0, -1.0, 2.5, 0.0, 1.8, -0.5, 1.2, 0.3, -2.0];
        let seen = [0u32, 3, 5, 40];
        let (temp, top_k, top_p, pen) = (0.7f32, 5u32, 0.9f32, 1.3f32);
        // Expected distribution, computed independently in f64 by sorting.
        let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        for &s in &seen {
            if let Some(x) = l.get_mut(s as usize) {
                *x = if *x > 0.0 { *x / pen as f64 } else { *x * pen as f64 };
            }
        }
        let l: Vec<f64> = l.iter().map(|x| x / temp as f64).collect();
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        let top: Vec<usize> = order[..top_k as usize].to_vec();
        let w: Vec<f64> = top.iter().map(|&i| l[i].exp()).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let mut keep = Vec::new();
        for (j, &i) in top.iter().enumerate() {
            keep.push(i);
            acc += w[j] / total;
            if acc >= top_p as f64 {
                break;
            }
        }
        keep.sort_unstable();
        assert_eq!(keep, vec![0, 3, 5, 7], "the test's logits were chosen for this nucleus");
        let kept_mass: f64 = keep.iter().map(|&i| l[i].exp()).sum();
        let expected: Vec<f64> = keep.iter().map(|&i| l[i].exp() / kept_mass).collect();

        let full_lse = {
            let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
        };
        let n = 100_000;
        let mut rng = ChaCha8Rng::seed_from_u64(20240611);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            let mut x = logits.to_vec();
            let (id, lp) = sample_row(&mut x, &seen, temp, top_k, top_p, pen, rng.gen::<f32>());
            counts[id as usize] += 1;
            // The log-probability is under the full (untruncated) processed distribution.
            assert!((lp as f64 - (l[id as usize] - full_lse)).abs() < 1e-5);
        }
        for (i, &c) in counts.iter().enumerate() {
            if !keep.contains(&i) {
                assert_eq!(c, 0, "token {i} is outside the nucleus but was drawn");
            }
        }
        let chi2: f64 = keep.iter().zip(&expected).map(|(&i, &p)| (counts[i] as f64 - n as f64 * p).powi(2) / (n as f64 * p)).sum();
        // 0.999 quantile of the chi-square distribution with 3 degrees of freedom.
        assert!(chi2 < 16.266, "chi-square {chi2} for counts {counts:?} against {expected:?}");
    }

    #[test]
    fn infer_sample_rows_cpu_matches_rows() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (rows, vocab) = (6, 50);
        let data: Vec<f32> = (0..rows * vocab).map(|_| rng.gen::<f32>() * 6.0 - 3.0).collect();
        let logits = Tensor::from_vec(data.clone(), (rows, vocab), &Device::Cpu)?;
        let temperature = [0.0, 1.0, 0.7, 1.3, 0.9, 1.0];
        let top_k = [0, 0, 5, 0, 10, 3];
        let top_p = [1.0, 1.0, 1.0, 0.8, 0.9, 0.5];
        let pen = [1.0, 1.2, 1.0, 1.5, 1.1, 1.0];
        let uniform: Vec<f32> = (0..rows).map(|_| rng.gen()).collect();
        let seen_store: Vec<Vec<u32>> = (0..rows as u32).map(|r| vec![r, r + 7, 1000]).collect();
        let seen: Vec<&[u32]> = seen_store.iter().map(|s| s.as_slice()).collect();
        let args = SampleArgs { temperature: &temperature, top_k: &top_k, top_p: &top_p, repetition_penalty: &pen, uniform: &uniform, seen: &seen };
        let (ids, lps) = sample_rows(&logits, &args)?;
        for r in 0..rows {
            let mut row = data[r * vocab..(r + 1) * vocab].to_vec();
            let (id, lp) = sample_row(&mut row, seen[r], temperature[r], top_k[r], top_p[r], pen[r], uniform[r]);
            assert_eq!((ids[r], lps[r]), (id, lp));
        }
        // The caller's logits are untouched.
        assert_eq!(logits.flatten_all()?.to_vec1::<f32>()?, data);
        // Settings of the wrong length are an error.
        let short = SampleArgs { uniform: &uniform[..2], ..args };
        assert!(sample_rows(&logits, &short).is_err());
        Ok(())
    }

    #[test]
    fn infer_agreement_report_runs_on_cpu() -> Result<()> {
        let sizes = ReportSizes { contexts: &[1, 5, 40], vocab: 300, sample_rows: 16 };
        let report = report_with(&Device::Cpu, &sizes)?;
        let text = &report.text;
        assert!(text.contains("16/16 rows agree"), "{text}");
        assert!(text.contains("max abs diff k 0e0, v 0e0"), "{text}");
        assert_eq!((report.write_err, report.attn_rel_err_16, report.attn_rel_err_32, report.sample_agree), (0.0, 0.0, 0.0, 1.0));
        Ok(())
    }

    /// The CUDA kernels against the CPU reference, on a GPU:
    /// `cargo test -p medrl-nn --features cuda infer_agreement_report_cuda -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs a CUDA device and the cuda feature"]
    fn infer_agreement_report_cuda() -> Result<()> {
        let report = report_with(&Device::new_cuda(0)?, &ReportSizes::FULL)?;
        println!("{}", report.text);
        assert_eq!(report.write_err, 0.0);
        // 16-bit outputs: the two sides may round to neighbouring values (2^-8 relative).
        assert!(report.attn_rel_err_16 < 1e-2, "attention (16-bit) relative error {}", report.attn_rel_err_16);
        assert!(report.attn_rel_err_32 < 1e-4, "attention (f32) relative error {}", report.attn_rel_err_32);
        // Draws differ only where a uniform falls within rounding of a boundary.
        assert!(report.sample_agree >= 0.95, "sampler agreement {}", report.sample_agree);
        Ok(())
    }
}
