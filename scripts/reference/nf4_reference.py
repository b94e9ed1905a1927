#!/usr/bin/env python3
"""Independent numpy re-implementation of bitsandbytes' NF4 quantization with double quantization.

This is the reference medrl's `medrl_nn::quant` is checked against: it never imports medrl or
bitsandbytes code; every rule below was re-derived from reading bitsandbytes' source
(bitsandbytes-foundation/bitsandbytes at commit 95f9af3, 2026-08) and is cited where it is used.

  python3 scripts/reference/nf4_reference.py [OUTPUT.json]

Default output: core/crates/nn/tests/fixtures/nf4_reference.json (read by core/crates/nn/tests/nf4.rs).
Needs only numpy.

What is reproduced: `functional.quantize_4bit(A, blocksize=64, compress_statistics=True,
quant_type="nf4")` and `functional.dequantize_4bit` for f32 input and output.

- NF4 code values: `functional.get_4bit_type("nf4")` (hard-coded list, divided by its max |v|
  = 1.0, so unchanged) = `nf4_dequantization_lut` in csrc/kernels.cu.
- Nearest code: `dQuantizeNF4` (csrc/kernels.cu), a comparison tree `x > t` over 15 decimal
  literals with an `f` suffix, which the compiler rounds once to f32. The tree is a search over
  the sorted literals, so the code is the number of them strictly below x: a value equal to one
  takes the LOWER code. 11 of them are the f32 midpoints (c[i] + c[i+1]) / 2; 4 (indices 0, 8,
  12, 14) round to a neighbour of it, one ulp away. The pure-torch backend
  (backends/default/ops.py: `torch.bucketize(right=False)` on the computed f32 midpoints) puts
  those four boundaries one ulp elsewhere; this script follows the CUDA literals.
- Scaling: `kQuantizeBlockwise` / `kQuantizeBlockwiseSmall` (csrc/kernels.cu) compute
  absmax = max |x| over the block (f32) and quantize x * (1.0f / absmax): a reciprocal, then a
  product, both rounded to f32. The final block may be short (absmax over its valid elements);
  it is padded with 0.
- Packing: two codes per byte, the FIRST element in the HIGH nibble (`qvals[j] =
  q(vals[2j]) << 4 | q(vals[2j+1])`); an odd count pads the last low nibble with the code of 0
  (0b0111). Unpacking: `dequantize_4bit` in backends/default/ops.py (`A >> 4` first, `A & 0xF`).
- Double quantization: `quantize_4bit(compress_statistics=True)` (functional.py): offset =
  absmax.mean() (f32), then `quantize_blockwise(absmax - offset, blocksize=256)` with the
  signed 8-bit dynamic map `create_dynamic_map(signed=True)`; the f32 absmax per 256 block is
  kept (`state2.absmax`) with the map (`state2.code`) and the offset.
- 8-bit nearest value: `dQuantize<0>` (csrc/kernels.cu): a 7-step binary search from pivot 127
  (steps 64..1), then a midpoint test `(upper + val) * 0.5f` / `(lower + val) * 0.5f` against the
  final pivot. The final pivot is always even, and a tie goes to it: ties round to the EVEN index.
- Dequantize: `dequantize_4bit` -> `dequantize_blockwise` (state2): absmax' = code8[q] *
  nested_absmax (f32), then `absmax += offset` (f32); value = NF4[code] * absmax' (f32)
  (`kDequantizeBlockwise` / `_dequantize_4bit_compute`: stays f32, then cast to the dtype).
- The dynamic map: `create_dynamic_map` builds its means from `torch.linspace(0.1, 1, k,
  dtype=float32)`. torch >= 2.0 computes linspace serially (aten/src/ATen/native/cpu/
  RangeFactoriesKernel.cpp): step = (end - start) / (steps - 1) in f32, then `start + step * i`
  below steps/2 and `end - step * (steps - i - 1)` above. Its x86 AVX2/AVX512 (and aarch64)
  builds contract each into one fused multiply-add (checked on torch 1.13's scalar path: the
  AVX2 build matches the fused form, ATEN_CPU_CAPABILITY=default the unfused one, which differs
  in 42 of 256 entries by an ulp). This script uses the fused form. Then `(10 ** e) * means`, f32.

Choices where bitsandbytes' backends disagree or are not reproducible bit for bit (medrl follows
this script):
- 0 * inf (a zero in a block whose absmax is 0, or so small that 1/absmax overflows) is taken
  as 0: code 0b0111 for NF4, 127 for 8-bit, as the pure-torch backend gives for a zero block. The
  CUDA kernel compares the NaN, falls through its tree and stores code 0 (-1.0).
- offset = the f64 sum of the absmax values in index order, divided by their count, rounded to
  f32. torch's f32 mean reduces in a device-dependent order and can differ in the last bits (and
  overflows to inf when the absmax values sum past f32's range).
- IEEE f32 throughout, subnormals kept. The CUDA kernels are built with --use_fast_math: the
  reciprocal is approximate (can be 1 ulp off) and subnormals flush to zero.
- NaN or infinite input is refused (bitsandbytes would quantize it silently).
"""
import json
import os
import sys

import numpy as np

F32 = np.float32
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "..", "core", "crates", "nn", "tests", "fixtures", "nf4_reference.json"))

BLOCK = 64
NESTED_BLOCK = 256

# get_4bit_type("nf4") (f64 -> f32) and nf4_dequantization_lut (decimal -> f32) give the same 16.
NF4 = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0],
    dtype=F32,
)


def f32_from_decimal(text):
    """A decimal literal rounded once to the nearest f32 (ties to even), as a C compiler reads
    `0.1234f`; float32(float(text)) would round twice and can land one ulp off."""
    from fractions import Fraction

    exact = Fraction(text)
    near = F32(float(exact))
    cands = [near, np.nextafter(near, F32(np.inf)), np.nextafter(near, F32(-np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.array(c).view(np.uint32)) & 1))


# The 15 literals of dQuantizeNF4's comparison tree (csrc/kernels.cu), ascending.
NF4_THRESHOLDS = np.array(
    [f32_from_decimal(t) for t in [
        "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
        "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
        "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
        "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]],
    dtype=F32,
)
assert np.all(np.diff(NF4_THRESHOLDS) > 0) and np.all((NF4[:-1] < NF4_THRESHOLDS) & (NF4_THRESHOLDS < NF4[1:]))
_MIDPOINTS = (NF4[:-1] + NF4[1:]) / F32(2)
assert list(np.flatnonzero(_MIDPOINTS != NF4_THRESHOLDS)) == [0, 8, 12, 14]
assert np.all(np.abs(_MIDPOINTS.view(np.int32) - NF4_THRESHOLDS.view(np.int32)) <= 1)


def fma_f32(a, b, c):
    """f32(a * b + c) rounded once: a * b of two f32 is exact in f64, and so is the sum here."""
    return F32(float(a) * float(b) + float(c))


def torch_linspace_f32(start, end, steps):
    start, end = F32(start), F32(end)
    step = F32(F32(end - start) / F32(steps - 1))
    out = []
    for i in range(steps):
        if i < steps // 2:
            out.append(fma_f32(step, i, start))
        else:
            out.append(fma_f32(-step, steps - i - 1, end))
    return np.array(out, dtype=F32)


def dynamic_map():
    """create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted f32."""
    data = []
    for i in range(7):
        bounds = torch_linspace_f32(0.1, 1.0, 2**i + 1)
        means = (bounds[:-1] + bounds[1:]) / F32(2)
        scaled = F32(10.0 ** (i - 6)) * means
        data += list(scaled) + list(-scaled)
    data += [F32(0.0), F32(1.0)]
    out = np.array(sorted(data), dtype=F32)
    assert out.size == 256 and out[127] == 0 and out[255] == 1
    return out


DYN = dynamic_map()


def dynamic_map_unsigned():
    """create_dynamic_map(signed=False): 256 sorted f32, the 8-bit optimizers' second-moment map.
    bitsandbytes keeps non_sign_bits = total_bits - 1 for both signs, so unsigned maps get
    2**(i + 1) + 1 linspace points per exponent i and no negative half."""
    data = []
    for i in range(7):
        bounds = torch_linspace_f32(0.1, 1.0, 2 ** (i + 1) + 1)
        means = (bounds[:-1] + bounds[1:]) / F32(2)
        data += list(F32(10.0 ** (i - 6)) * means)
    data += [F32(0.0), F32(1.0)]
    out = np.array(sorted(data), dtype=F32)
    assert out.size == 256 and out[0] == 0 and out[255] == 1
    return out


def check_finite(x):
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"element {bad[0]} is {x[bad[0]]}: NaN and infinity cannot be quantized")


def block_scale(x, blocksize):
    """(absmax per block, x * (1/absmax) per element with 0 * inf read as 0)."""
    n = x.size
    nb = -(-n // blocksize)
    padded = np.zeros(nb * blocksize, dtype=F32)
    padded[:n] = x
    absmax = np.abs(padded).reshape(nb, blocksize).max(axis=1).astype(F32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = F32(1.0) / absmax
        scaled = (x * np.repeat(inv, blocksize)[:n]).astype(F32)
    scaled[np.isnan(scaled)] = F32(0.0)
    return absmax, scaled


def dquantize8(x):
    """dQuantize<0> of csrc/kernels.cu, element-wise over the f32 array x, against DYN."""
    pivot = np.full(x.shape, 127)
    lower_pivot, upper_pivot = np.zeros(x.shape, int), np.full(x.shape, 255)
    lower, upper = np.full(x.shape, F32(-1.0)), np.full(x.shape, F32(1.0))
    val = DYN[pivot]
    step = 64
    while step > 0:
        above = x > val
        lower_pivot, lower = np.where(above, pivot, lower_pivot), np.where(above, val, lower)
        upper_pivot, upper = np.where(above, upper_pivot, pivot), np.where(above, upper, val)
        pivot = np.where(above, pivot + step, pivot - step)
        val = DYN[pivot]
        step //= 2
    upper = np.where(upper_pivot == 255, DYN[255], upper)
    lower = np.where(lower_pivot == 0, DYN[0], lower)
    mid_up = ((upper + val) * F32(0.5)).astype(F32)
    mid_lo = ((lower + val) * F32(0.5)).astype(F32)
    q = np.where(x > val, np.where(x > mid_up, upper_pivot, pivot), np.where(x < mid_lo, lower_pivot, pivot))
    return q.astype(np.uint8)


def quantize_blockwise8(x, blocksize=NESTED_BLOCK):
    x = np.asarray(x, dtype=F32).ravel()
    check_finite(x)
    absmax, scaled = block_scale(x, blocksize)
    return dquantize8(scaled), absmax


def dequantize_blockwise8(codes, absmax, blocksize=NESTED_BLOCK):
    return (DYN[codes] * np.repeat(absmax, blocksize)[: codes.size]).astype(F32)


def quantize_nf4(x):
    x = np.asarray(x, dtype=F32).ravel()
    check_finite(x)
    absmax, scaled = block_scale(x, BLOCK)
    codes = np.searchsorted(NF4_THRESHOLDS, scaled, side="left").astype(np.uint8)  # count of t < x
    if codes.size % 2:
        codes = np.append(codes, np.uint8(7))
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)
    total = 0.0
    for a in absmax:
        total += float(a)
    offset = F32(total / absmax.size)
    absmax_codes, nested_absmax = quantize_blockwise8((absmax - offset).astype(F32))
    return packed, absmax_codes, nested_absmax, offset


def dequantize_nf4(packed, absmax_codes, nested_absmax, offset, n):
    absmax = (dequantize_blockwise8(absmax_codes, nested_absmax) + offset).astype(F32)
    codes = np.empty(packed.size * 2, dtype=np.uint8)
    codes[0::2], codes[1::2] = packed >> 4, packed & 0xF
    return (NF4[codes[:n]] * np.repeat(absmax, BLOCK)[:n]).astype(F32)


# ---- test inputs -------------------------------------------------------------------------------


def splitmix64_inputs(n, seed):
    """Deterministic, integer-only inputs (re-implemented in nf4.rs): an Irwin-Hall sum of the four
    16-bit parts of a splitmix64 draw, centred, times 2^-15 and a per-block power of two."""
    mask = (1 << 64) - 1
    state = seed & mask
    out = np.empty(n, dtype=F32)
    for i in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        s = sum((z >> (16 * k)) & 0xFFFF for k in range(4)) - 131070
        out[i] = F32(s * 2.0 ** (-15 - 4 - (i // BLOCK) % 7))
    return out


def normal(seed, n, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(n, dtype=F32) * F32(scale)).astype(F32)


def nf4_cases():
    cases = []
    cases.append(("normal_4x64", [4, 64], normal(0, 256)))
    cases.append(("normal_1000_ragged", [1000], normal(1, 1000, 0.02)))
    cases.append(("odd_99", [99], normal(2, 99)))
    # One block: offset = its absmax, so the nested block is all zero (absmax 0).
    cases.append(("single_block", [64], normal(3, 64)))
    # Equal absmax everywhere: again a zero nested block, over several NF4 blocks.
    same = normal(4, 192)
    same[::BLOCK] = F32(2.5)
    cases.append(("equal_absmax", [3, 64], same))

    z = normal(5, 6 * BLOCK).reshape(6, BLOCK)
    z[0] = 0.0
    z[1] = -0.0
    z[3] = 0.0
    z[3, 17] = -3.5
    z[4] = np.where(np.arange(BLOCK) % 2 == 0, F32(0.0), F32(-0.0))
    z[4, 5] = F32(1e-3)
    z[5, ::3] = -0.0
    cases.append(("zero_blocks", [6, 64], z.ravel()))
    tail = np.concatenate([normal(6, 64), np.zeros(10, dtype=F32)])
    cases.append(("ragged_zero_tail", [74], tail))

    # Values on the tree's thresholds, one ulp either side (which covers the four computed
    # midpoints that differ from them), and the codes. With absmax 1 or 2 the scaling is exact,
    # so the ties reach the tree unchanged; with 3 and 0.1 it is not.
    up = np.nextafter(NF4_THRESHOLDS, F32(np.inf))
    down = np.nextafter(NF4_THRESHOLDS, F32(-np.inf))
    row = np.concatenate([[F32(1.0)], NF4_THRESHOLDS, up, down, NF4, [F32(-0.0), F32(0.5)]]).astype(F32)
    assert row.size == BLOCK
    mid = np.stack([row, -row, F32(2.0) * row, F32(3.0) * row, F32(0.1) * row]).astype(F32)
    cases.append(("nf4_midpoints", [5, 64], mid.ravel()))

    # Magnitudes: 1e38, 1e20, 1e-20, 1e-37 (normal), 1e-41 (subnormal: 1/absmax overflows, so
    # every non-zero value saturates to code 0 or 15), and blocks mixing scales and -0.0.
    base = normal(7, 8 * BLOCK).reshape(8, BLOCK)
    scales = [1e38, 1e20, 1e-20, 1e-37, 1e-41, 1.0, 1e10, 1e-10]
    mag = np.stack([(base[i].astype(np.float64) * s).astype(F32) for i, s in enumerate(scales)])
    mag[5, ::2] = -0.0
    mag[6, 1] = F32(3.0e38)
    mag[7, :8] = F32(1e-45)  # the smallest subnormal
    cases.append(("magnitudes", [8, 64], mag.ravel()))

    # Over 256 blocks: the nested quantization runs on 3 blocks (256, 256, 189).
    cases.append(("large_nested", [44813], splitmix64_inputs(44813, 0x5EED)))
    return cases


def blockwise8_cases():
    # Every midpoint of the dynamic map, one ulp either side, and the codes; absmax 1 (the first
    # element of each 256 block), so the scaled value is the value itself.
    mids = (DYN[:-1] + DYN[1:]) * F32(0.5)
    values = np.concatenate([mids, np.nextafter(mids, F32(np.inf)), np.nextafter(mids, F32(-np.inf)), DYN])
    blocks = []
    for i in range(0, values.size, 255):
        chunk = values[i : i + 255]
        blocks.append(np.concatenate([[F32(1.0)], chunk]))
    ties = np.concatenate(blocks).astype(F32)
    neg = normal(8, 256)
    neg[10] = -abs(neg).max() * F32(1.5)  # a negative absmax: scaled -1 takes code 0 (-0.99297)
    zero = np.zeros(300, dtype=F32)
    zero[280] = F32(0.25)
    return [
        ("dynamic_map_midpoints", ties),
        ("normal_600_ragged", normal(9, 600, 3.0)),
        ("negative_absmax", neg),
        ("zero_block_then_ragged", zero),
    ]


# ---- fixture -----------------------------------------------------------------------------------


def bits(a):
    return [int(v) for v in np.asarray(a, dtype=F32).view(np.uint32)]


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & ((1 << 64) - 1)
    return f"{h:016x}"


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    nf4 = []
    for name, shape, x in nf4_cases():
        assert int(np.prod(shape)) == x.size
        packed, codes, nested, offset = quantize_nf4(x)
        deq = dequantize_nf4(packed, codes, nested, offset, x.size)
        case = {"name": name, "shape": shape}
        if name == "large_nested":
            case["input_splitmix64_seed"] = 0x5EED
            case["input_fnv1a64"] = fnv1a64(x.tobytes())
            case["dequantized_fnv1a64"] = fnv1a64(deq.astype("<f4").tobytes())
        else:
            case["input"] = bits(x)
            case["dequantized"] = bits(deq)
        case.update(packed=packed.tobytes().hex(), absmax_codes=codes.tobytes().hex(), nested_absmax=bits(nested), offset=bits([offset])[0])
        nf4.append(case)
    b8 = []
    for name, x in blockwise8_cases():
        codes, absmax = quantize_blockwise8(x)
        deq = dequantize_blockwise8(codes, absmax)
        b8.append({"name": name, "blocksize": NESTED_BLOCK, "input": bits(x), "codes": codes.tobytes().hex(), "absmax": bits(absmax), "dequantized": bits(deq)})
    doc = {
        "about": "bitsandbytes NF4 (blocksize 64) with double quantization (blocksize 256, signed dynamic map), "
        "written by scripts/reference/nf4_reference.py; f32 values are IEEE bit patterns, byte arrays hex",
        "nf4_code": bits(NF4),
        "nf4_thresholds": bits(NF4_THRESHOLDS),
        "dynamic_map": bits(DYN),
        "dynamic_map_unsigned": bits(dynamic_map_unsigned()),
        "nf4": nf4,
        "blockwise8": b8,
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        f.write("{\n")
        items = list(doc.items())
        for i, (k, v) in enumerate(items):
            sep = "," if i + 1 < len(items) else ""
            if isinstance(v, list) and v and isinstance(v[0], dict):
                f.write(f'  "{k}": [\n')
                for j, case in enumerate(v):
                    f.write("    " + json.dumps(case, separators=(",", ":")) + ("," if j + 1 < len(v) else "") + "\n")
                f.write(f"  ]{sep}\n")
            else:
                f.write(f'  "{k}": {json.dumps(v, separators=(",", ":"))}{sep}\n')
        f.write("}\n")
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes): {len(nf4)} NF4 cases, {len(b8)} 8-bit cases")


if __name__ == "__main__":
    main()
