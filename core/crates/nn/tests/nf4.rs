//! NF4 with double quantization against the committed bitsandbytes reference
//! (`scripts/reference/nf4_reference.py` -> `tests/fixtures/nf4_reference.json`), bit for bit, plus
//! error bounds, ragged sizes and refused inputs.

use candle_core::{DType, Device};
use medrl_nn::quant::{
    dynamic_map, dynamic_map_unsigned, map_code, Blockwise8, Nf4Tensor, QuantError, NESTED_BLOCK, NF4_BLOCK, NF4_CODE, NF4_THRESHOLDS,
};
use rand::{Rng, SeedableRng};

const FIXTURE: &str = include_str!("fixtures/nf4_reference.json");

/// Typed reads of the fixture's values (objects, arrays, hex strings and integers).
trait Fx {
    fn at(&self, key: &str) -> &Json;
    fn arr(&self) -> &[Json];
    fn str(&self) -> &str;
    fn u64(&self) -> u64;
    fn usizes(&self) -> Vec<usize> {
        self.arr().iter().map(|v| v.u64() as usize).collect()
    }
    /// An array of f32 bit patterns.
    fn f32s(&self) -> Vec<f32> {
        self.arr().iter().map(|v| f32::from_bits(v.u64() as u32)).collect()
    }
    /// A hex string of bytes.
    fn bytes(&self) -> Vec<u8> {
        let s = self.str().as_bytes();
        s.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap()).collect()
    }
}

type Json = serde_json::Value;

impl Fx for Json {
    fn at(&self, key: &str) -> &Json {
        self.get(key).unwrap_or_else(|| panic!("missing {key}"))
    }
    fn arr(&self) -> &[Json] {
        self.as_array().expect("an array")
    }
    fn str(&self) -> &str {
        self.as_str().expect("a string")
    }
    fn u64(&self) -> u64 {
        self.as_u64().unwrap_or_else(|| panic!("{self} is not a non-negative integer"))
    }
}

fn fixture() -> Json {
    serde_json::from_str(FIXTURE).expect("fixture parses")
}

// ---- helpers -------------------------------------------------------------------------------------

fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> String {
    let h = bytes.into_iter().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3));
    format!("{h:016x}")
}

fn f32_bytes(v: &[f32]) -> impl Iterator<Item = u8> + '_ {
    v.iter().flat_map(|x| x.to_le_bytes())
}

/// The reference's integer-only inputs (`splitmix64_inputs`): the centred sum of the four 16-bit
/// parts of a splitmix64 draw, times 2^-15 and a power of two that cycles over the blocks.
fn splitmix64_inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|i| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let s = (0..4).map(|k| ((z >> (16 * k)) & 0xFFFF) as i64).sum::<i64>() - 131_070;
            s as f32 * 2f32.powi(-15 - 4 - ((i / NF4_BLOCK) % 7) as i32)
        })
        .collect()
}

/// Panics at the first element whose bits differ.
fn assert_bits_eq(case: &str, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{case}: {what} length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{case}: {what}[{i}] is {:e} ({:#010x}), the reference has {:e} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

fn assert_bytes_eq(case: &str, what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{case}: {what} length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{case}: {what}[{i}] is {:#04x}, the reference has {:#04x}", got[i], want[i]);
    }
}

fn normal(rng: &mut impl Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * std) as f32
        })
        .collect()
}

/// Checks the error bounds of one round trip: each block's dequantized absmax is within the 8-bit
/// map's worst step of its nested absmax, and each value within half the widest NF4 gap of its
/// block's absmax plus that absmax error. Returns the RMS error.
fn check_round_trip(values: &[f32], t: &Nf4Tensor) -> f64 {
    let map = dynamic_map();
    let half_gap4 = NF4_CODE.windows(2).map(|w| (w[1] - w[0]) / 2.0).fold(0.0f32, f32::max) as f64;
    // -1 (a block whose centred absmax is the most negative) is stored as map[0] = -0.99297.
    let step8 = map.windows(2).map(|w| (w[1] - w[0]) / 2.0).fold(1.0 + map[0], f32::max) as f64;
    let eps = f32::EPSILON as f64;
    let deq = t.dequantize();
    assert_eq!(deq.len(), values.len());
    let absmax_deq = t.absmax();
    let mut sq = 0.0;
    for (b, block) in values.chunks(NF4_BLOCK).enumerate() {
        let a = block.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        let nested = t.nested_absmax()[b / NESTED_BLOCK] as f64;
        let a_err = (absmax_deq[b] as f64 - a).abs();
        let slack = 4.0 * eps * (t.offset().abs() as f64 + nested + a);
        assert!(a_err <= step8 * nested + slack, "block {b}: absmax {a:e} came back as {:e}", absmax_deq[b]);
        for (j, &x) in block.iter().enumerate() {
            let i = b * NF4_BLOCK + j;
            let err = (deq[i] as f64 - x as f64).abs();
            sq += err * err;
            let bound = half_gap4 * a + a_err + 4.0 * eps * (a + a_err);
            assert!(err <= bound, "element {i}: {x:e} came back as {:e} (bound {bound:e})", deq[i]);
        }
    }
    (sq / values.len().max(1) as f64).sqrt()
}

// ---- against the reference -----------------------------------------------------------------------

#[test]
fn tables_equal_the_reference() {
    let fx = fixture();
    assert_bits_eq("tables", "nf4_code", &NF4_CODE, &fx.at("nf4_code").f32s());
    assert_bits_eq("tables", "nf4_thresholds", &NF4_THRESHOLDS, &fx.at("nf4_thresholds").f32s());
    assert_bits_eq("tables", "dynamic_map", dynamic_map(), &fx.at("dynamic_map").f32s());
    assert_bits_eq("tables", "dynamic_map_unsigned", dynamic_map_unsigned(), &fx.at("dynamic_map_unsigned").f32s());
}

/// The 8-bit optimizer's code search on the unsigned map: every entry maps to itself, and a
/// value between two entries takes the nearer one.
#[test]
fn unsigned_map_codes_are_nearest() {
    let map = dynamic_map_unsigned();
    for (i, &x) in map.iter().enumerate() {
        assert_eq!(map_code(map, x) as usize, i, "entry {i} = {x}");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..20_000 {
        let x: f32 = rng.gen::<f32>().powi(6);
        let c = map_code(map, x) as usize;
        let best = map.iter().map(|&m| (m - x).abs()).fold(f32::INFINITY, f32::min);
        assert!((map[c] - x).abs() <= best, "x {x}: code {c} ({}) is not nearest (best distance {best})", map[c]);
    }
}

#[test]
fn nf4_equals_the_reference_bit_for_bit() {
    let fx = fixture();
    let cases = fx.at("nf4").arr();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case.at("name").str();
        let shape = case.at("shape").usizes();
        let numel: usize = shape.iter().product();
        let input = match case.get("input") {
            Some(bits) => bits.f32s(),
            None => {
                let x = splitmix64_inputs(numel, case.at("input_splitmix64_seed").u64());
                assert_eq!(fnv1a64(f32_bytes(&x)), case.at("input_fnv1a64").str(), "{name}: generated input");
                x
            }
        };
        let t = Nf4Tensor::quantize(&input, &shape).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_bytes_eq(name, "packed", t.packed(), &case.at("packed").bytes());
        assert_bytes_eq(name, "absmax_codes", t.absmax_codes(), &case.at("absmax_codes").bytes());
        assert_bits_eq(name, "nested_absmax", t.nested_absmax(), &case.at("nested_absmax").f32s());
        assert_eq!(t.offset().to_bits() as u64, case.at("offset").u64(), "{name}: offset {:e}", t.offset());
        let deq = t.dequantize();
        match case.get("dequantized") {
            Some(bits) => assert_bits_eq(name, "dequantized", &deq, &bits.f32s()),
            None => assert_eq!(fnv1a64(f32_bytes(&deq)), case.at("dequantized_fnv1a64").str(), "{name}: dequantized"),
        }
        // The reference's output is also what the stored parts reassemble to.
        let again = Nf4Tensor::from_parts(
            case.at("packed").bytes(),
            case.at("absmax_codes").bytes(),
            case.at("nested_absmax").f32s(),
            t.offset(),
            &shape,
        )
        .unwrap();
        assert_eq!(again, t, "{name}");
    }
}

#[test]
fn blockwise8_equals_the_reference_bit_for_bit() {
    let fx = fixture();
    for case in fx.at("blockwise8").arr() {
        let name = case.at("name").str();
        let q = Blockwise8::quantize(&case.at("input").f32s(), case.at("blocksize").u64() as usize).unwrap();
        assert_bytes_eq(name, "codes", q.codes(), &case.at("codes").bytes());
        assert_bits_eq(name, "absmax", q.absmax(), &case.at("absmax").f32s());
        assert_bits_eq(name, "dequantized", &q.dequantize(), &case.at("dequantized").f32s());
    }
}

// ---- properties ----------------------------------------------------------------------------------

#[test]
fn round_trip_error_is_bounded_on_random_data() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    // Weight-like rows of different scales, over several nested blocks.
    let mut values = Vec::new();
    for row in 0..40 {
        values.extend(normal(&mut rng, 1024, 0.02 * (1.0 + (row % 7) as f64)));
    }
    let t = Nf4Tensor::quantize(&values, &[40, 1024]).unwrap();
    assert_eq!(t.nested_absmax().len(), 3);
    let rms = check_round_trip(&values, &t);
    let std = (values.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
    assert!(rms < 0.12 * std, "RMS error {rms:e} for data of RMS {std:e}");

    let uniform: Vec<f32> = (0..5000).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    check_round_trip(&uniform, &Nf4Tensor::quantize(&uniform, &[5000]).unwrap());

    // The 8-bit quantizer alone: within the map's worst step of each block's absmax.
    let map = dynamic_map();
    let step8 = map.windows(2).map(|w| (w[1] - w[0]) / 2.0).fold(1.0 + map[0], f32::max);
    let q = Blockwise8::quantize(&uniform, 256).unwrap();
    for (i, (&x, y)) in uniform.iter().zip(q.dequantize()).enumerate() {
        let a = q.absmax()[i / 256];
        assert!((x - y).abs() <= (step8 + 4.0 * f32::EPSILON) * a, "element {i}: {x} came back as {y}");
    }
}

#[test]
fn ragged_sizes() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let longest = 64 * 257 + 33;
    let all = normal(&mut rng, longest, 1.0);
    let full = Nf4Tensor::quantize(&all, &[longest]).unwrap();
    for n in [1, 2, 3, 63, 64, 65, 127, 128, 129, 1000, 64 * 256, 64 * 256 + 1, longest] {
        let t = Nf4Tensor::quantize(&all[..n], &[n]).unwrap();
        let blocks = n.div_ceil(64);
        assert_eq!(t.packed().len(), n.div_ceil(2), "n = {n}");
        assert_eq!(t.absmax_codes().len(), blocks, "n = {n}");
        assert_eq!(t.nested_absmax().len(), blocks.div_ceil(256), "n = {n}");
        assert_eq!(t.numel(), n);
        check_round_trip(&all[..n], &t);
        // NF4 codes depend on the block alone: complete blocks match the longer tensor's.
        let whole = n / 64 * 32;
        assert_eq!(t.packed()[..whole], full.packed()[..whole], "n = {n}");
        if n % 2 == 1 {
            assert_eq!(t.packed().last().unwrap() & 0x0F, 7, "n = {n}: padding nibble");
        }
    }
}

#[test]
fn nan_and_infinity_are_refused_with_the_index() {
    let mut v = vec![0.25f32; 1000];
    for (index, bad) in [(0, f32::NAN), (513, f32::INFINITY), (999, f32::NEG_INFINITY)] {
        v[index] = bad;
        let e = Nf4Tensor::quantize(&v, &[10, 100]).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: i, .. } if i == index), "{e:?}");
        assert!(e.to_string().contains(&format!("element {index}")), "{e}");
        assert!(matches!(Blockwise8::quantize(&v, 256), Err(QuantError::NonFinite { .. })));
        v[index] = 0.25;
    }
    let e = Nf4Tensor::quantize(&v, &[3, 100]).unwrap_err();
    assert_eq!(e, QuantError::ShapeMismatch { shape: vec![3, 100], expected: 300, got: 1000 });
}

#[test]
fn dequantize_tensor_and_memory() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let values = normal(&mut rng, 64 * 64, 0.05);
    let t = Nf4Tensor::quantize(&values, &[64, 64]).unwrap();
    let f = t.dequantize_tensor(DType::F32, &Device::Cpu).unwrap();
    assert_eq!(f.dims(), &[64, 64]);
    assert_eq!(f.flatten_all().unwrap().to_vec1::<f32>().unwrap(), t.dequantize());
    let b = t.dequantize_tensor(DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    let want: Vec<half::bf16> = t.dequantize().into_iter().map(half::bf16::from_f32).collect();
    assert_eq!(b.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap(), want);
    // 4096 values: 2048 packed bytes, 64 absmax codes, one nested absmax and the offset.
    assert_eq!(t.bytes(), 2048 + 64 + 4 + 4);

    let tensor = candle_core::Tensor::from_vec(values.clone(), (64, 64), &Device::Cpu).unwrap();
    assert_eq!(Nf4Tensor::quantize_tensor(&tensor).unwrap(), t);
}

/// A tensor large enough to be quantized on several threads gives, block for block, the codes
/// each block gets alone (the threads split at block boundaries and join in order).
#[test]
fn threaded_quantization_equals_blockwise() {
    let n = (1 << 21) + 1000;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let v: Vec<f32> = (0..n).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect();
    let whole = Nf4Tensor::quantize(&v, &[n]).unwrap();
    for (b, block) in v.chunks(NF4_BLOCK).enumerate() {
        let alone = Nf4Tensor::quantize(block, &[block.len()]).unwrap();
        let bytes = block.len().div_ceil(2);
        assert_eq!(&whole.packed()[b * NF4_BLOCK / 2..b * NF4_BLOCK / 2 + bytes], alone.packed(), "block {b}");
    }
}
