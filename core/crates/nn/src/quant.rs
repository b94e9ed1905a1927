//! NF4 quantization with double quantization, bit for bit as bitsandbytes stores QLoRA base weights.
//!
//! [`Nf4Tensor::quantize`] is bitsandbytes' `quantize_4bit(quant_type="nf4", blocksize=64,
//! compress_statistics=True)` and [`Nf4Tensor::dequantize`] its `dequantize_4bit`, in f32:
//!
//! - blocks of [`NF4_BLOCK`] = 64 values; absmax = max |x| of the block (f32), the final block
//!   may be short; each value is scaled by `x * (1 / absmax)` (two f32 roundings, as the CUDA
//!   kernel does) and takes the [`NF4_CODE`] nearest to it: the number of [`NF4_THRESHOLDS`]
//!   (the CUDA kernel's literals, within one ulp of the midpoints) strictly below it, so a value
//!   exactly on a threshold takes the lower code;
//! - two codes per byte, the first element in the high nibble; an odd count pads the last low
//!   nibble with the code of 0 ([`NF4_ZERO_CODE`]);
//! - double quantization: `offset` = mean of the per-block absmax (f32), and `absmax - offset` is
//!   quantized with the 8-bit blockwise quantizer ([`Blockwise8`], blocks of [`NESTED_BLOCK`] =
//!   256) against bitsandbytes' signed dynamic map ([`dynamic_map`]): a u8 code per NF4 block and
//!   one f32 `nested_absmax` per 256 NF4 blocks;
//! - dequantize: `absmax' = map[code] * nested_absmax + offset`, `value = NF4[code] * absmax'`,
//!   each operation rounded to f32.
//!
//! `scripts/reference/nf4_reference.py` is the independent numpy reference (it cites the
//! bitsandbytes source of every rule); `tests/nf4.rs` checks this module against its fixture bit
//! for bit. Deliberate choices, the same in both: `0 * inf` (a zero in a block whose absmax is 0,
//! or subnormal enough that `1 / absmax` overflows) counts as 0, where the CUDA kernel compares
//! a NaN and stores code 0 (-1.0); the offset is the f64 sum of the absmax values
//! in order divided by their count (torch's f32 mean can differ in the last bits); IEEE f32 with
//! subnormals, where the CUDA kernels use `--use_fast_math`; NaN and infinite inputs are refused
//! with the element's index. A checkpoint written by bitsandbytes stores its own offset and maps,
//! so loading one with [`Nf4Tensor::from_parts`] is exact whatever produced it, provided its
//! `nested_quant_map` is [`dynamic_map`] (torch builds that do not fuse the multiply-add in
//! `linspace` give a map that differs in the last bit of 42 entries).
//!
//! CPU only for now; [`Nf4Tensor::dequantize_tensor`] is the seam where a device kernel goes.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Device, Tensor};

/// Values per NF4 block (one absmax each).
pub const NF4_BLOCK: usize = 64;
/// NF4 blocks per block of the nested (8-bit) quantization of their absmax.
pub const NESTED_BLOCK: usize = 256;

/// The 16 NF4 values (bitsandbytes `get_4bit_type("nf4")`, `nf4_dequantization_lut`), ascending.
#[allow(clippy::excessive_precision)] // bitsandbytes' literals, digit for digit
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// The code of 0.0, also the padding nibble of an odd element count.
pub const NF4_ZERO_CODE: u8 = 7;

/// The thresholds of bitsandbytes' `dQuantizeNF4` comparison tree (csrc/kernels.cu), ascending:
/// its decimal literals rounded once to f32, as the compiler reads them. Eleven are the f32
/// midpoints of consecutive [`NF4_CODE`] values; four (indices 0, 8, 12 and 14) sit one ulp from
/// them, so the pure-torch backend, which computes the midpoints, moves those four boundaries.
#[allow(clippy::excessive_precision)] // bitsandbytes' literals, digit for digit
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

/// A reason quantization or reassembly refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("cannot quantize: element {index} is {value} (NaN and infinity have no code)")]
    NonFinite { index: usize, value: f32 },
    #[error("shape {shape:?} holds {expected} elements, but {got} values were given")]
    ShapeMismatch { shape: Vec<usize>, expected: usize, got: usize },
    /// A part given to `from_parts` has the wrong length for the element count.
    #[error("{part}: expected {expected} entries for {numel} elements, found {got}")]
    BadPart { part: &'static str, expected: usize, got: usize, numel: usize },
    #[error("block size must be positive")]
    ZeroBlockSize,
    /// Reading the tensor to quantize failed (`detail`: candle's error).
    #[error("reading the tensor to quantize: {0}")]
    Tensor(String),
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`): 127 negative
/// values, 0 at index 127, 127 positive values up to 0.99297 and 1.0 at index 255, ascending.
///
/// Built as bitsandbytes builds it: for `i` in 0..7, the means of adjacent points of
/// `torch.linspace(0.1, 1, 2^i + 1)` (f32) times `10^(i-6)`, both signs, plus 0 and 1, sorted.
/// torch's CPU linspace is `start + step * k` below the middle and `end - step * (n - 1 - k)`
/// above, which its x86 AVX2/AVX-512 and aarch64 builds compute as one fused multiply-add.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        let mut data = Vec::with_capacity(256);
        for (i, &scale) in SCALES.iter().enumerate() {
            let bounds = torch_linspace_f32(0.1, 1.0, (1 << i) + 1);
            for w in bounds.windows(2) {
                let v = scale as f32 * ((w[0] + w[1]) / 2.0);
                data.push(v);
                data.push(-v);
            }
        }
        data.push(0.0);
        data.push(1.0);
        data.sort_by(f32::total_cmp);
        data.try_into().expect("the dynamic map has 256 entries")
    })
}

/// bitsandbytes' unsigned 8-bit dynamic map (`create_dynamic_map(signed=False)`), the map of
/// its 8-bit optimizers' second moment: 0 at index 0, 254 positive values, 1.0 at index 255,
/// ascending. Built as [`dynamic_map`] is, with `2^(i+1) + 1` linspace points for exponent `i`
/// (the bits the sign would take go to the fraction) and no negative half.
pub fn dynamic_map_unsigned() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        let mut data = Vec::with_capacity(256);
        for (i, &scale) in SCALES.iter().enumerate() {
            let bounds = torch_linspace_f32(0.1, 1.0, (1 << (i + 1)) + 1);
            for w in bounds.windows(2) {
                data.push(scale as f32 * ((w[0] + w[1]) / 2.0));
            }
        }
        data.push(0.0);
        data.push(1.0);
        data.sort_by(f32::total_cmp);
        data.try_into().expect("the unsigned dynamic map has 256 entries")
    })
}

/// The code of `x` (already divided by its block's absmax) in a sorted 256-entry `map`, by
/// bitsandbytes' `dQuantize` search (see [`Blockwise8`]): the nearest entry, exact ties to the
/// even index: the search [`quantize_block`] applies to each scaled value.
pub fn map_code(map: &[f32; 256], x: f32) -> u8 {
    dynamic_code(map, x)
}

/// `torch.linspace(start, end, steps, dtype=float32)` as torch >= 2.0 computes it on the CPU
/// (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp), with the multiply-add fused.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    (0..steps)
        .map(
            |i| {
                if i < steps / 2 {
                    step.mul_add(i as f32, start)
                } else {
                    (-step).mul_add((steps - 1 - i) as f32, end)
                }
            },
        )
        .collect()
}

fn check_finite(values: &[f32]) -> Result<(), QuantError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite { index, value: values[index] }),
        None => Ok(()),
    }
}

/// max |x| of a block (0 for an all-zero block).
fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// `x * inv` with `0 * inf` (the only NaN a finite `x` can give) read as 0.
fn scaled(x: f32, inv: f32) -> f32 {
    let s = x * inv;
    if s.is_nan() {
        0.0
    } else {
        s
    }
}

/// Packed NF4 codes and per-block absmax of `values` (which start at a block boundary).
fn nf4_blocks(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut packed = Vec::with_capacity(values.len().div_ceil(2));
    let mut absmax = Vec::with_capacity(values.len().div_ceil(NF4_BLOCK));
    for block in values.chunks(NF4_BLOCK) {
        let am = block_absmax(block);
        let inv = 1.0 / am;
        absmax.push(am);
        packed.extend(block.chunks(2).map(|pair| {
            let hi = nf4_code(scaled(pair[0], inv));
            let lo = pair.get(1).map_or(NF4_ZERO_CODE, |&x| nf4_code(scaled(x, inv)));
            (hi << 4) | lo
        }));
    }
    (packed, absmax)
}

/// The NF4 code of a scaled value: how many thresholds lie strictly below it.
fn nf4_code(s: f32) -> u8 {
    NF4_THRESHOLDS.iter().map(|&t| u8::from(s > t)).sum()
}

/// The dynamic-map code of a scaled value, by bitsandbytes' `dQuantize` search: seven halving
/// steps from pivot 127, then a midpoint test against the final (always even) pivot, so the
/// nearest code wins and an exact tie goes to the even index.
fn dynamic_code(map: &[f32; 256], x: f32) -> u8 {
    let (mut pivot, mut lower_pivot, mut upper_pivot) = (127usize, 0usize, 255usize);
    let (mut lower, mut upper) = (-1.0f32, 1.0f32);
    let mut val = map[pivot];
    let mut step = 64;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = map[pivot];
        step >>= 1;
    }
    if upper_pivot == 255 {
        upper = map[255];
    }
    if lower_pivot == 0 {
        lower = map[0];
    }
    let code = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    code as u8
}

/// One block of blockwise absmax quantization against a sorted 256-entry `map`: writes each
/// value's code (the nearest entry to `x * (1 / absmax)`, `0 * inf` read as 0) into `codes` and
/// returns the block's absmax. [`Blockwise8`] (the signed map) and the 8-bit optimizer's moments
/// (signed and unsigned maps) quantize with it.
pub fn quantize_block(block: &[f32], map: &[f32; 256], codes: &mut [u8]) -> f32 {
    let am = block_absmax(block);
    let inv = 1.0 / am;
    for (c, &x) in codes.iter_mut().zip(block) {
        *c = dynamic_code(map, scaled(x, inv));
    }
    am
}

/// `map[code] * absmax` per value, blocks of `blocksize` codes with one absmax each: the inverse
/// of [`quantize_block`].
pub fn dequantize_blocks(codes: &[u8], absmax: &[f32], blocksize: usize, map: &[f32; 256]) -> Vec<f32> {
    codes.chunks(blocksize).zip(absmax).flat_map(|(block, &am)| block.iter().map(move |&q| map[q as usize] * am)).collect()
}

/// Blockwise absmax quantization to the signed 8-bit [`dynamic_map`] (bitsandbytes
/// `quantize_blockwise` / `dequantize_blockwise`): the nested quantization of NF4's absmax, and
/// usable on its own (8-bit optimizer states, an 8-bit base).
#[derive(Debug, Clone, PartialEq)]
pub struct Blockwise8 {
    codes: Vec<u8>,
    absmax: Vec<f32>,
    blocksize: usize,
}

impl Blockwise8 {
    pub fn quantize(values: &[f32], blocksize: usize) -> Result<Self, QuantError> {
        if blocksize == 0 {
            return Err(QuantError::ZeroBlockSize);
        }
        check_finite(values)?;
        let mut codes = vec![0u8; values.len()];
        let absmax = values.chunks(blocksize).zip(codes.chunks_mut(blocksize)).map(|(block, c)| quantize_block(block, dynamic_map(), c)).collect();
        Ok(Self { codes, absmax, blocksize })
    }

    /// Reassemble from stored codes (one per value) and absmax (one per block).
    pub fn from_parts(codes: Vec<u8>, absmax: Vec<f32>, blocksize: usize) -> Result<Self, QuantError> {
        if blocksize == 0 {
            return Err(QuantError::ZeroBlockSize);
        }
        let expected = codes.len().div_ceil(blocksize);
        if absmax.len() != expected {
            return Err(QuantError::BadPart { part: "absmax", expected, got: absmax.len(), numel: codes.len() });
        }
        Ok(Self { codes, absmax, blocksize })
    }

    /// `map[code] * absmax` per value, in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_blocks(&self.codes, &self.absmax, self.blocksize, dynamic_map())
    }

    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    pub fn absmax(&self) -> &[f32] {
        &self.absmax
    }
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }
    pub fn len(&self) -> usize {
        self.codes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// A tensor stored as NF4 with double-quantized absmax: about 4.13 bits per value.
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    /// Two codes per byte, element `2i` in the high nibble of byte `i`.
    packed: Vec<u8>,
    /// One dynamic-map code per NF4 block: its absmax, less `offset`, over `nested_absmax`.
    absmax_codes: Vec<u8>,
    /// One f32 per [`NESTED_BLOCK`] NF4 blocks.
    nested_absmax: Vec<f32>,
    offset: f32,
    shape: Vec<usize>,
    numel: usize,
    /// The parts uploaded to the device the CUDA kernel last dequantized on (once per device).
    on_device: Arc<Mutex<Option<DeviceParts>>>,
}

/// [`Nf4Tensor`]'s parts as device tensors, for the dequantization kernel.
#[derive(Debug, Clone)]
struct DeviceParts {
    device: Device,
    packed: Tensor,
    codes: Tensor,
    /// The 16 NF4 values, the 256-entry dynamic map, then the nested absmax values (f32).
    tables: Tensor,
}

impl PartialEq for Nf4Tensor {
    fn eq(&self, o: &Self) -> bool {
        (&self.packed, &self.absmax_codes, &self.shape, self.numel) == (&o.packed, &o.absmax_codes, &o.shape, o.numel)
            && self.offset.to_bits() == o.offset.to_bits()
            && self.nested_absmax.iter().map(|v| v.to_bits()).eq(o.nested_absmax.iter().map(|v| v.to_bits()))
    }
}

impl Nf4Tensor {
    fn new(packed: Vec<u8>, absmax_codes: Vec<u8>, nested_absmax: Vec<f32>, offset: f32, shape: Vec<usize>, numel: usize) -> Self {
        Self { packed, absmax_codes, nested_absmax, offset, shape, numel, on_device: Arc::default() }
    }

    /// The dequantization tables on `device`: the 16 NF4 values, the dynamic map, then the
    /// nested absmax values.
    fn tables(&self, device: &Device) -> candle_core::Result<Tensor> {
        let mut tables: Vec<f32> = NF4_CODE.to_vec();
        tables.extend_from_slice(dynamic_map());
        tables.extend_from_slice(&self.nested_absmax);
        let n = tables.len();
        Tensor::from_vec(tables, n, device)
    }

    /// The device-resident parts on `device`, uploaded on first use.
    fn device_parts(&self, device: &Device) -> candle_core::Result<DeviceParts> {
        let mut slot = self.on_device.lock().expect("NF4 device parts");
        if let Some(p) = slot.as_ref().filter(|p| p.device.same_device(device)) {
            return Ok(p.clone());
        }
        let parts = DeviceParts {
            device: device.clone(),
            packed: Tensor::from_slice(&self.packed, self.packed.len(), device)?,
            codes: Tensor::from_slice(&self.absmax_codes, self.absmax_codes.len(), device)?,
            tables: self.tables(device)?,
        };
        *slot = Some(parts.clone());
        Ok(parts)
    }

    /// Quantize `values` (row-major, `shape`'s element count).
    pub fn quantize(values: &[f32], shape: &[usize]) -> Result<Self, QuantError> {
        let numel: usize = shape.iter().product();
        if numel != values.len() {
            return Err(QuantError::ShapeMismatch { shape: shape.to_vec(), expected: numel, got: values.len() });
        }
        check_finite(values)?;
        // Blocks are independent: large tensors (a 32B model's projections, quantized at load)
        // are split across threads at block boundaries and the pieces joined in order, so the
        // result is the same as one pass.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(values.len() / (1 << 20)).max(1);
        let per = values.len().div_ceil(NF4_BLOCK).div_ceil(threads) * NF4_BLOCK;
        let pieces: Vec<(Vec<u8>, Vec<f32>)> = if threads == 1 {
            vec![nf4_blocks(values)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = values.chunks(per).map(|chunk| scope.spawn(move || nf4_blocks(chunk))).collect();
                handles.into_iter().map(|h| h.join().expect("NF4 quantization thread")).collect()
            })
        };
        let mut packed = Vec::with_capacity(numel.div_ceil(2));
        let mut absmax = Vec::with_capacity(numel.div_ceil(NF4_BLOCK));
        for (p, a) in pieces {
            packed.extend(p);
            absmax.extend(a);
        }
        Self::double_quantized(packed, &absmax, shape.to_vec(), numel)
    }

    /// The tensor from its packed codes and per-block absmax, the absmax double-quantized:
    /// `offset` = their mean, `absmax - offset` in 8 bits against the dynamic map.
    fn double_quantized(packed: Vec<u8>, absmax: &[f32], shape: Vec<usize>, numel: usize) -> Result<Self, QuantError> {
        let offset = mean_f32(absmax);
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let Blockwise8 { codes: absmax_codes, absmax: nested_absmax, .. } = Blockwise8::quantize(&centred, NESTED_BLOCK)?;
        Ok(Self::new(packed, absmax_codes, nested_absmax, offset, shape, numel))
    }

    /// Quantize a tensor of any float dtype and device. On a CUDA device with the fused kernels
    /// on, the codes are computed there ([`Nf4Tensor::quantize_on_device`]); elsewhere the
    /// values are read back to the CPU as f32. Both give the same bits.
    pub fn quantize_tensor(t: &Tensor) -> Result<Self, QuantError> {
        if crate::kernels::enabled_on(t.device(), DType::F32) {
            if let Some(q) = Self::quantize_on_device(t)? {
                return Ok(q);
            }
        }
        let values = t
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| QuantError::Tensor(e.to_string()))?;
        Self::quantize(&values, t.dims())
    }

    /// [`Nf4Tensor::quantize`] on the tensor's GPU: each block's absmax is a device reduction
    /// and the codes come from one kernel (`kernels::nf4_pack`, the host's arithmetic, rounded
    /// the same way), so only the packed codes (half a byte per value) and the absmax (one f32
    /// per 64 values) travel to the host, where the double quantization runs as before. The
    /// packed codes stay on the device as the tensor's device part. `None` when the tensor holds
    /// a NaN or an infinity: the host path then reports which element.
    pub fn quantize_on_device(t: &Tensor) -> Result<Option<Self>, QuantError> {
        let err = |e: candle_core::Error| QuantError::Tensor(e.to_string());
        let device = t.device().clone();
        let shape = t.dims().to_vec();
        let x = t.flatten_all().and_then(|x| x.to_dtype(DType::F32)).map_err(err)?;
        let numel = x.elem_count();
        // `x - x` is 0 exactly where x is finite.
        let finite = (&x - &x).and_then(|d| d.sum_all()).and_then(|s| s.to_scalar::<f32>()).map_err(err)?;
        if !finite.is_finite() {
            return Ok(None);
        }
        let blocks = numel.div_ceil(NF4_BLOCK);
        let padded = if numel % NF4_BLOCK == 0 {
            x.clone()
        } else {
            Tensor::cat(&[&x, &Tensor::zeros(blocks * NF4_BLOCK - numel, DType::F32, &device).map_err(err)?], 0).map_err(err)?
        };
        let absmax = padded.reshape((blocks, NF4_BLOCK)).and_then(|b| b.abs()).and_then(|b| b.max(1)).map_err(err)?;
        let thresholds = Tensor::new(&NF4_THRESHOLDS[..], &device).map_err(err)?;
        let packed_dev = crate::kernels::nf4_pack(&x, &absmax, &thresholds, NF4_ZERO_CODE).map_err(err)?;
        let absmax: Vec<f32> = absmax.to_vec1().map_err(err)?;
        let packed: Vec<u8> = packed_dev.to_vec1().map_err(err)?;
        let q = Self::double_quantized(packed, &absmax, shape, numel)?;
        let parts = DeviceParts {
            device: device.clone(),
            packed: packed_dev,
            codes: Tensor::from_slice(&q.absmax_codes, q.absmax_codes.len(), &device).map_err(err)?,
            tables: q.tables(&device).map_err(err)?,
        };
        *q.on_device.lock().expect("NF4 device parts") = Some(parts);
        Ok(Some(q))
    }

    /// Reassemble stored parts, e.g. a bitsandbytes checkpoint's `weight` (packed u8, flattened),
    /// `absmax` (u8), `nested_absmax` and `offset` of a `compress_statistics=True` NF4 state with
    /// blocksize 64 (its `nested_quant_map` must be [`dynamic_map`], its `quant_map` [`NF4_CODE`]).
    pub fn from_parts(
        packed: Vec<u8>,
        absmax_codes: Vec<u8>,
        nested_absmax: Vec<f32>,
        offset: f32,
        shape: &[usize],
    ) -> Result<Self, QuantError> {
        let numel: usize = shape.iter().product();
        let blocks = numel.div_ceil(NF4_BLOCK);
        let parts = [
            ("packed", packed.len(), numel.div_ceil(2)),
            ("absmax_codes", absmax_codes.len(), blocks),
            ("nested_absmax", nested_absmax.len(), blocks.div_ceil(NESTED_BLOCK)),
        ];
        for (part, got, expected) in parts {
            if got != expected {
                return Err(QuantError::BadPart { part, expected, got, numel });
            }
        }
        Ok(Self::new(packed, absmax_codes, nested_absmax, offset, shape.to_vec(), numel))
    }

    /// The dequantized absmax of each NF4 block: `map[code] * nested_absmax + offset`.
    pub fn absmax(&self) -> Vec<f32> {
        let map = dynamic_map();
        self.absmax_codes
            .iter()
            .enumerate()
            .map(|(b, &q)| map[q as usize] * self.nested_absmax[b / NESTED_BLOCK] + self.offset)
            .collect()
    }

    /// The values, row-major, in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.numel];
        for ((bytes, dst), am) in self.packed.chunks(NF4_BLOCK / 2).zip(out.chunks_mut(NF4_BLOCK)).zip(self.absmax()) {
            for (pair, &byte) in dst.chunks_mut(2).zip(bytes) {
                pair[0] = NF4_CODE[usize::from(byte >> 4)] * am;
                if let Some(second) = pair.get_mut(1) {
                    *second = NF4_CODE[usize::from(byte & 0x0F)] * am;
                }
            }
        }
        out
    }

    /// The values as a tensor of `shape` in `dtype`: computed in f32 and rounded once to
    /// `dtype`. On CUDA (bf16/f32) a kernel does it from parts uploaded once (one thread per
    /// value, every operation rounded as here, so both agree bit for bit); elsewhere the CPU
    /// computes and the result is uploaded.
    pub fn dequantize_tensor(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        if crate::kernels::enabled_on(device, dtype) {
            let p = self.device_parts(device)?;
            return crate::kernels::nf4_dequantize(&p.packed, &p.codes, &p.tables, self.offset, self.numel, dtype)?.reshape(self.shape.as_slice());
        }
        Tensor::from_vec(self.dequantize(), self.shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }

    /// Memory held by the quantized form, in bytes.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax_codes.len() + 4 * self.nested_absmax.len() + 4
    }

    pub fn packed(&self) -> &[u8] {
        &self.packed
    }
    pub fn absmax_codes(&self) -> &[u8] {
        &self.absmax_codes
    }
    pub fn nested_absmax(&self) -> &[f32] {
        &self.nested_absmax
    }
    pub fn offset(&self) -> f32 {
        self.offset
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.numel
    }
}

/// The mean of the absmax values: their f64 sum in index order over the count, rounded to f32
/// (0 for none).
fn mean_f32(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let sum = values.iter().fold(0.0f64, |s, &v| s + f64::from(v));
    (sum / values.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_within_one_ulp_of_the_midpoints_and_ties_take_the_lower_code() {
        for (i, (w, t)) in NF4_CODE.windows(2).zip(NF4_THRESHOLDS).enumerate() {
            let mid = (w[0] + w[1]) / 2.0;
            let ulps = (mid.to_bits() as i64 - t.to_bits() as i64).abs();
            assert_eq!(ulps, i64::from([0, 8, 12, 14].contains(&i)), "threshold {i}: {t:e} vs midpoint {mid:e}");
        }
        for (i, &t) in NF4_THRESHOLDS.iter().enumerate() {
            assert_eq!(nf4_code(t), i as u8, "on threshold {i}");
            let above = f32::from_bits(if t > 0.0 { t.to_bits() + 1 } else { t.to_bits() - 1 });
            assert_eq!(nf4_code(above), i as u8 + 1, "one ulp above threshold {i}");
        }
        for (i, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(nf4_code(c), i as u8);
        }
        assert_eq!(nf4_code(-0.0), NF4_ZERO_CODE);
        assert_eq!(nf4_code(5.0), 15);
        assert_eq!(nf4_code(-5.0), 0);
    }

    #[test]
    fn dynamic_map_shape() {
        let m = dynamic_map();
        assert!(m.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
        assert_eq!((m[0], m[127], m[254], m[255]), (-0.992_968_74, 0.0, 0.992_968_74, 1.0));
        assert_eq!(m[128], 5.500_000_4e-7);
        for i in 0..127 {
            assert_eq!(m[i], -m[254 - i], "symmetric around index 127");
        }
    }

    /// Minimal deterministic stream of f32 in [-1.2, 1.2).
    fn lcg(n: usize) -> Vec<f32> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.4 - 1.2
            })
            .collect()
    }

    #[test]
    fn dynamic_search_is_nearest_with_ties_to_the_even_index() {
        let m = dynamic_map();
        let mids: Vec<f32> = m.windows(2).map(|w| (w[0] + w[1]) * 0.5).collect();
        let mut xs = lcg(100_000);
        xs.extend(&mids);
        xs.extend(m.iter());
        for x in xs {
            let below = mids.iter().filter(|&&t| t < x).count();
            let on_mid = mids.contains(&x);
            let want = if on_mid && below % 2 == 1 { below + 1 } else { below };
            assert_eq!(dynamic_code(m, x) as usize, want, "x = {x:e}");
        }
    }

    #[test]
    fn packing_puts_the_first_element_high_and_pads_with_zero() {
        let t = Nf4Tensor::quantize(&[1.0, -1.0, 0.5], &[3]).unwrap();
        assert_eq!(t.packed(), &[0xF0, (nf4_code(0.5) << 4) | NF4_ZERO_CODE]);
        assert_eq!(t.dequantize().len(), 3);
    }

    #[test]
    fn refuses_nan_and_infinity_naming_the_element() {
        let mut v = vec![0.5f32; 130];
        v[77] = f32::NAN;
        let e = Nf4Tensor::quantize(&v, &[130]).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 77, .. }));
        assert!(e.to_string().contains("element 77"), "{e}");
        v[77] = 0.0;
        v[3] = f32::NEG_INFINITY;
        assert!(matches!(Nf4Tensor::quantize(&v, &[130]), Err(QuantError::NonFinite { index: 3, .. })));
    }

    #[test]
    fn empty_and_scalar() {
        let e = Nf4Tensor::quantize(&[], &[0, 8]).unwrap();
        assert_eq!((e.packed().len(), e.absmax_codes().len(), e.nested_absmax().len(), e.offset()), (0, 0, 0, 0.0));
        assert!(e.dequantize().is_empty());
        let s = Nf4Tensor::quantize(&[-2.0], &[]).unwrap();
        assert_eq!(s.dequantize(), vec![-2.0]);
    }

    #[test]
    fn from_parts_checks_lengths() {
        let t = Nf4Tensor::quantize(&lcg(1000), &[10, 100]).unwrap();
        let again = Nf4Tensor::from_parts(
            t.packed().to_vec(),
            t.absmax_codes().to_vec(),
            t.nested_absmax().to_vec(),
            t.offset(),
            &[10, 100],
        )
        .unwrap();
        assert_eq!(again, t);
        let short = Nf4Tensor::from_parts(t.packed()[1..].to_vec(), vec![0; 16], vec![1.0], 0.0, &[1000]);
        assert_eq!(short, Err(QuantError::BadPart { part: "packed", expected: 500, got: 499, numel: 1000 }));
        assert_eq!(Blockwise8::quantize(&[1.0], 0), Err(QuantError::ZeroBlockSize));
    }
}
