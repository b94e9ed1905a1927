//! The lean AdamW update: 8-bit blockwise moments and/or bf16 master weights with stochastic
//! rounding, on the host. This is the oracle the CUDA kernel (`fused_adamw::lean_step`) is
//! checked against bit for bit (`medrl bench optim-agreement`), and the CPU path itself.
//!
//! What it stores, per parameter of `n` values (f32 masters and moments: 12 bytes per value):
//! - `state: int8`: each moment as one byte per value plus one f32 absmax per block of
//!   [`STATE_BLOCK`] = 256 values, as bitsandbytes' blockwise 8-bit optimizers do: the first
//!   moment against the signed dynamic map, the second against the unsigned one
//!   ([`medrl_nn::quant`]). 2.03 bytes per value for both moments instead of 8. Parameters
//!   under [`MIN_8BIT_SIZE`] values (norms, biases) keep f32 moments, as bitsandbytes does.
//! - `master_weights: bf16`: the trained weights themselves are bf16 (2 bytes instead of 4, and
//!   no separate bf16 copy for the forward). Each update is computed in f32 and rounded to bf16
//!   stochastically (up with probability equal to the distance to the lower neighbour), so
//!   updates smaller than half a bf16 ulp still move the weight on average instead of vanishing.
//!
//! An update, per value, all in f32 (the same expressions as the fused f32 kernel):
//! `m = b1*m' + (1-b1)*g`, `v = b2*v' + (1-b2)*g*g` where `m'`, `v'` are the dequantized old
//! moments (`map[code] * absmax`), `p = p*decay - lr*((m/bc1) / (sqrt(v/bc2) + eps))` from the
//! unquantized new moments; then each block's new absmax is the max of `|m|` (of `v`), and each
//! value takes the nearest map code of `m * (1/absmax)`, as [`medrl_nn::quant::Blockwise8`]
//! quantizes.
//!
//! Stochastic rounding draws its bits from a counter-based hash of (seed, parameter, step,
//! index), not from a stream: the GPU and the host draw the same bits for the same value, so
//! the two paths agree exactly and a resumed run continues the same rounding sequence.

use candle_core::{DType, Device, Tensor, Var};
use medrl_nn::quant::{dequantize_blocks, dynamic_map, dynamic_map_unsigned, quantize_block};

/// Values per absmax block of an 8-bit moment.
pub const STATE_BLOCK: usize = 256;
/// Parameters with fewer values keep f32 moments (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// Whether a parameter gets 8-bit moments under `state: int8`: not when it is small (its f32
/// moments cost nothing), and not the token embeddings or the LM head. Rows of tokens a batch
/// does not contain get no gradient, so their second moment decays towards 0 while the first
/// still carries momentum; within a block shared with active rows it falls below the map's
/// smallest step (1e-6 of the block's absmax), reads back as 0, and the update
/// `m / (sqrt(0) + eps)` explodes. bitsandbytes keeps 32-bit states there for the same reason
/// (its StableEmbedding / `override_config`).
pub fn takes_8bit_moments(name: &str, numel: usize) -> bool {
    numel >= MIN_8BIT_SIZE && !name.contains("embed_tokens") && !name.starts_with("lm_head")
}

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
    /// Key of this (parameter, step) for stochastic rounding ([`rounding_key`]).
    pub key: u32,
}

/// Chris Wellons' `lowbias32` integer hash: cheap, and every input bit reaches every output bit.
#[inline]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The rounding key of parameter `slot` at optimizer step `step` of a run seeded `seed`.
pub fn rounding_key(seed: u64, slot: usize, step: u64) -> u32 {
    let a = mix32(seed as u32 ^ mix32((seed >> 32) as u32));
    let b = mix32(a ^ mix32(slot as u32).wrapping_add(0x9e37_79b9));
    mix32(b ^ mix32(step as u32 ^ mix32((step >> 32) as u32 ^ 0x85eb_ca6b)))
}

/// The 16 random bits for value `i` under `key`.
#[inline]
pub fn rounding_bits(key: u32, i: u64) -> u32 {
    mix32((i as u32) ^ mix32(key ^ (i >> 32) as u32)) & 0xffff
}

/// `x` rounded to bf16 (returned as its bit pattern) by adding `r` (16 random bits) below the
/// kept mantissa and truncating: up with probability equal to the distance to the lower
/// neighbour. NaN and infinities are truncated (a NaN keeps a mantissa bit).
#[inline]
pub fn round_bf16_stochastic(x: f32, r: u32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0x7f80_0000 {
        let hi = (bits >> 16) as u16;
        return if x.is_nan() { hi | 0x0040 } else { hi };
    }
    (bits.wrapping_add(r & 0xffff) >> 16) as u16
}

/// A moment on the host.
pub enum HostMoment<'a> {
    F32(&'a mut [f32]),
    /// One code per value, one absmax per [`STATE_BLOCK`] values.
    Int8 { codes: &'a mut [u8], absmax: &'a mut [f32] },
}

/// Master weights on the host.
pub enum HostMaster<'a> {
    F32(&'a mut [f32]),
    /// bf16 bit patterns.
    Bf16(&'a mut [u16]),
}

impl HostMaster<'_> {
    pub fn len(&self) -> usize {
        match self {
            HostMaster::F32(p) => p.len(),
            HostMaster::Bf16(p) => p.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[inline]
fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// One update of `p` from gradient `g` (f32 values; a bf16 gradient converts exactly) with
/// moments `m` and `v`. See the module docs for the arithmetic.
pub fn step_host<'a>(mut p: HostMaster<'_>, g: &[f32], mut m: HostMoment<'a>, mut v: HostMoment<'a>, u: Update) {
    let n = p.len();
    assert_eq!(g.len(), n, "gradient length");
    let (sm, um) = (dynamic_map(), dynamic_map_unsigned());
    let (om1, om2) = (1.0f32 - u.beta1, 1.0f32 - u.beta2);
    let mut new_m = [0f32; STATE_BLOCK];
    let mut new_v = [0f32; STATE_BLOCK];
    for (b, start) in (0..n).step_by(STATE_BLOCK).enumerate() {
        let len = STATE_BLOCK.min(n - start);
        for j in 0..len {
            let i = start + j;
            let m_old = match &m {
                HostMoment::F32(x) => x[i],
                HostMoment::Int8 { codes, absmax } => sm[codes[i] as usize] * absmax[b],
            };
            let v_old = match &v {
                HostMoment::F32(x) => x[i],
                HostMoment::Int8 { codes, absmax } => um[codes[i] as usize] * absmax[b],
            };
            let gi = g[i] * u.clip;
            let mi = u.beta1 * m_old + om1 * gi;
            let vi = u.beta2 * v_old + om2 * gi * gi;
            new_m[j] = mi;
            new_v[j] = vi;
            let step = u.lr * ((mi / u.bias_correction1) / ((vi / u.bias_correction2).sqrt() + u.eps));
            match &mut p {
                HostMaster::F32(p) => p[i] = p[i] * u.decay - step,
                HostMaster::Bf16(p) => {
                    let x = bf16_to_f32(p[i]) * u.decay - step;
                    p[i] = round_bf16_stochastic(x, rounding_bits(u.key, i as u64));
                }
            }
        }
        for (moment, vals, map) in [(&mut m, &new_m, sm), (&mut v, &new_v, um)] {
            match moment {
                HostMoment::F32(x) => x[start..start + len].copy_from_slice(&vals[..len]),
                HostMoment::Int8 { codes, absmax } => absmax[b] = quantize_block(&vals[..len], map, &mut codes[start..start + len]),
            }
        }
    }
}

/// The moment values an 8-bit state stands for (`map[code] * absmax`).
pub fn dequantize_moment(codes: &[u8], absmax: &[f32], signed: bool) -> Vec<f32> {
    dequantize_blocks(codes, absmax, STATE_BLOCK, if signed { dynamic_map() } else { dynamic_map_unsigned() })
}

/// Quantize moment values to 8-bit codes and block absmax, as an update does.
pub fn quantize_moment(values: &[f32], signed: bool) -> (Vec<u8>, Vec<f32>) {
    let map = if signed { dynamic_map() } else { dynamic_map_unsigned() };
    let mut codes = vec![0u8; values.len()];
    let absmax = values.chunks(STATE_BLOCK).zip(codes.chunks_mut(STATE_BLOCK)).map(|(block, c)| quantize_block(block, map, c)).collect();
    (codes, absmax)
}

/// A moment as the optimizer holds it, on the parameter's device.
pub enum Moment {
    F32(Tensor),
    /// `codes`: u8, one per value; `absmax`: f32, one per [`STATE_BLOCK`] values.
    Int8 { codes: Tensor, absmax: Tensor },
}

impl Moment {
    /// The zero moment for a parameter of shape `dims` (f32 moments take that shape; code 0
    /// with absmax 0 reads as 0 in either map).
    pub fn zeros(dims: &[usize], int8: bool, device: &Device) -> candle_core::Result<Self> {
        let n: usize = dims.iter().product();
        Ok(if int8 {
            Moment::Int8 { codes: Tensor::zeros(n, DType::U8, device)?, absmax: Tensor::zeros(n.div_ceil(STATE_BLOCK), DType::F32, device)? }
        } else {
            Moment::F32(Tensor::zeros(dims, DType::F32, device)?)
        })
    }

    pub fn is_int8(&self) -> bool {
        matches!(self, Moment::Int8 { .. })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Moment::F32(t) => 4 * t.elem_count(),
            Moment::Int8 { codes, absmax } => codes.elem_count() + 4 * absmax.elem_count(),
        }
    }

    /// The values as f32 (dequantized for 8-bit), flat.
    pub fn values(&self, signed: bool) -> candle_core::Result<Vec<f32>> {
        match self {
            Moment::F32(t) => t.flatten_all()?.to_dtype(DType::F32)?.to_vec1(),
            Moment::Int8 { codes, absmax } => Ok(dequantize_moment(&codes.to_vec1()?, &absmax.to_vec1()?, signed)),
        }
    }

    /// A moment holding `values` (f32, flat) for a parameter of shape `dims`, quantized when
    /// `int8`.
    pub fn from_values(values: &[f32], dims: &[usize], int8: bool, signed: bool, device: &Device) -> candle_core::Result<Self> {
        Ok(if int8 {
            let (c, a) = quantize_moment(values, signed);
            let (nc, na) = (c.len(), a.len());
            Moment::Int8 { codes: Tensor::from_vec(c, nc, device)?, absmax: Tensor::from_vec(a, na, device)? }
        } else {
            Moment::F32(Tensor::from_vec(values.to_vec(), dims, device)?)
        })
    }
}

/// The host path for tensors: read `p`, `g` and the moments to the host, run [`step_host`], and
/// write them back (on the CPU device this is the whole update; on a GPU it is the slow oracle).
pub fn step_tensors_host(p: &Var, g: &Tensor, m: &mut Moment, v: &mut Moment, u: Update) -> candle_core::Result<()> {
    let dev = p.device().clone();
    let dims = p.dims().to_vec();
    let gv: Vec<f32> = g.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let (mut mf, mut mc, mut ma) = (Vec::new(), Vec::new(), Vec::new());
    let (mut vf, mut vc, mut va) = (Vec::new(), Vec::new(), Vec::new());
    let read = |mo: &Moment, f: &mut Vec<f32>, c: &mut Vec<u8>, a: &mut Vec<f32>| -> candle_core::Result<()> {
        match mo {
            Moment::F32(t) => *f = t.flatten_all()?.to_vec1()?,
            Moment::Int8 { codes, absmax } => {
                *c = codes.to_vec1()?;
                *a = absmax.to_vec1()?;
            }
        }
        Ok(())
    };
    read(m, &mut mf, &mut mc, &mut ma)?;
    read(v, &mut vf, &mut vc, &mut va)?;
    fn hm<'a>(int8: bool, f: &'a mut [f32], c: &'a mut [u8], a: &'a mut [f32]) -> HostMoment<'a> {
        if int8 {
            HostMoment::Int8 { codes: c, absmax: a }
        } else {
            HostMoment::F32(f)
        }
    }
    let (mi8, vi8) = (m.is_int8(), v.is_int8());
    let new_p = match p.dtype() {
        DType::F32 => {
            let mut pv: Vec<f32> = p.flatten_all()?.to_vec1()?;
            step_host(HostMaster::F32(&mut pv), &gv, hm(mi8, &mut mf, &mut mc, &mut ma), hm(vi8, &mut vf, &mut vc, &mut va), u);
            Tensor::from_vec(pv, dims, &dev)?
        }
        DType::BF16 => {
            let mut pv: Vec<u16> = p.flatten_all()?.to_vec1::<half::bf16>()?.into_iter().map(|x| x.to_bits()).collect();
            step_host(HostMaster::Bf16(&mut pv), &gv, hm(mi8, &mut mf, &mut mc, &mut ma), hm(vi8, &mut vf, &mut vc, &mut va), u);
            Tensor::from_vec(pv.into_iter().map(half::bf16::from_bits).collect::<Vec<_>>(), dims, &dev)?
        }
        other => candle_core::bail!("master weights must be f32 or bf16, found {other:?}"),
    };
    p.set(&new_p)?;
    let write = |mo: &mut Moment, f: Vec<f32>, c: Vec<u8>, a: Vec<f32>| -> candle_core::Result<()> {
        match mo {
            Moment::F32(t) => *t = Tensor::from_vec(f, t.dims(), &dev)?,
            Moment::Int8 { codes, absmax } => {
                *codes = Tensor::from_vec(c, codes.elem_count(), &dev)?;
                *absmax = Tensor::from_vec(a, absmax.elem_count(), &dev)?;
            }
        }
        Ok(())
    };
    write(m, mf, mc, ma)?;
    write(v, vf, vc, va)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(key: u32) -> Update {
        Update { lr: 1e-3, beta1: 0.9, beta2: 0.999, bias_correction1: 0.1, bias_correction2: 0.001, eps: 1e-8, decay: 1.0, clip: 1.0, key }
    }

    #[test]
    fn stochastic_rounding_is_unbiased_and_exact_on_representable_values() {
        // A bf16 value is left alone whatever the bits.
        for r in [0u32, 1, 0x7fff, 0xffff] {
            assert_eq!(round_bf16_stochastic(1.5, r), 0x3fc0);
        }
        // 1 + 2^-10 lies 1/8 of the way from 1.0 (0x3f80) to the next bf16 (1 + 2^-7, 0x3f81).
        let x = 1.0f32 + 2f32.powi(-10);
        let ups = (0..100_000u64).filter(|&i| round_bf16_stochastic(x, rounding_bits(7, i)) == 0x3f81).count();
        assert!((ups as f64 / 100_000.0 - 0.125).abs() < 0.005, "rounded up {ups} times in 100000");
        // Negative values round in magnitude the same way; infinities and NaN survive.
        assert_eq!(round_bf16_stochastic(-1.5, 0xffff), 0xbfc0);
        assert_eq!(round_bf16_stochastic(f32::INFINITY, 0xffff), 0x7f80);
        assert!(bf16_to_f32(round_bf16_stochastic(f32::NAN, 0)).is_nan());
    }

    #[test]
    fn rounding_keys_differ_by_seed_slot_and_step() {
        let keys = [rounding_key(0, 0, 1), rounding_key(1, 0, 1), rounding_key(0, 1, 1), rounding_key(0, 0, 2), rounding_key(1 << 32, 0, 1)];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{i} {j}");
            }
        }
    }

    /// With f32 masters and f32 moments the host step is the f32 AdamW formula, computed here
    /// independently in f64 (agreement to f32 rounding).
    #[test]
    fn f32_path_is_adamw() {
        let g: Vec<f32> = (0..300).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut p: Vec<f32> = (0..300).map(|i| ((i as f32) * 0.11).cos()).collect();
        let p0 = p.clone();
        let (mut m, mut v) = (vec![0.01f32; 300], vec![0.002f32; 300]);
        let u = Update { decay: 0.99, clip: 0.5, ..upd(0) };
        step_host(HostMaster::F32(&mut p), &g, HostMoment::F32(&mut m), HostMoment::F32(&mut v), u);
        for i in 0..300 {
            let gi = g[i] as f64 * 0.5;
            let mi = 0.9 * 0.01 + 0.1 * gi;
            let vi = 0.999 * 0.002f32 as f64 + 0.001 * gi * gi;
            let want = p0[i] as f64 * 0.99 - 1e-3 * ((mi / 0.1) / ((vi / 0.001).sqrt() + 1e-8));
            assert!((p[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", p[i]);
            assert!((m[i] as f64 - mi).abs() < 1e-6 && (v[i] as f64 - vi).abs() < 1e-7);
        }
    }

    /// 8-bit moments follow f32 moments: after many steps of a drifting gradient the quantized
    /// moments stay within the maps' resolution of the exact ones.
    #[test]
    fn int8_moments_track_f32_moments() {
        let n = 1000; // four blocks, the last short
        let (mut pf, mut pq) = (vec![0.5f32; n], vec![0.5f32; n]);
        let (mut mf, mut vf) = (vec![0f32; n], vec![0f32; n]);
        let (mut mc, mut ma, mut vc, mut va) = (vec![0u8; n], vec![0f32; 4], vec![0u8; n], vec![0f32; 4]);
        for t in 1..=50 {
            let g: Vec<f32> = (0..n).map(|i| ((i * 7 + t * 13) as f32 * 0.01).sin() * (1.0 + (i % 5) as f32)).collect();
            let u = Update { bias_correction1: 1.0 - 0.9f32.powi(t as i32), bias_correction2: 1.0 - 0.999f32.powi(t as i32), ..upd(t as u32) };
            step_host(HostMaster::F32(&mut pf), &g, HostMoment::F32(&mut mf), HostMoment::F32(&mut vf), u);
            step_host(HostMaster::F32(&mut pq), &g, HostMoment::Int8 { codes: &mut mc, absmax: &mut ma }, HostMoment::Int8 { codes: &mut vc, absmax: &mut va }, u);
        }
        let mq = dequantize_moment(&mc, &ma, true);
        let vq = dequantize_moment(&vc, &va, false);
        for b in 0..4 {
            let r = b * STATE_BLOCK..(b * STATE_BLOCK + STATE_BLOCK).min(n);
            let (am, av) = (ma[b], va[b]);
            for i in r {
                // The maps' spacing near 1 is 1/128 of the block's absmax (signed map: 1/64).
                assert!((mq[i] - mf[i]).abs() <= 0.05 * am, "m[{i}]: {} vs {}", mq[i], mf[i]);
                assert!((vq[i] - vf[i]).abs() <= 0.05 * av, "v[{i}]: {} vs {}", vq[i], vf[i]);
            }
        }
        let drift = pf.iter().zip(&pq).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(drift < 0.01, "weights drifted {drift} apart over 50 steps of lr 1e-3");
        assert!(drift > 0.0, "the 8-bit path changed nothing");
    }

    #[test]
    fn moment_round_trip_and_zero_blocks() {
        let x: Vec<f32> = (0..600).map(|i| if i < 256 { 0.0 } else { (i as f32 * 0.3).sin() }).collect();
        let (c, a) = quantize_moment(&x, true);
        assert_eq!((c.len(), a.len()), (600, 3));
        assert_eq!(a[0], 0.0);
        let back = dequantize_moment(&c, &a, true);
        assert!(back[..256].iter().all(|&v| v == 0.0));
        for i in 256..600 {
            assert!((back[i] - x[i]).abs() <= 0.01 * a[i / STATE_BLOCK], "{i}");
        }
    }
}
