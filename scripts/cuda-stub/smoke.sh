#!/usr/bin/env bash
# Toolchain smoke test, independent of medrl's Rust code: builds a tiny cudarc program with the
# same cudarc version/features as candle-core (driver + nvrtc + cublas + cublasLt + curand,
# dynamic linking against the stub libcuda), ~30 s. Output: .device-carry/cudarc-smoke.
# Run it on the GPU machine (device tool, carry [".device-carry"]):
#   . scripts/device-env.sh && .device-carry/cudarc-smoke
# Expected: device name, "nvrtc matmul: [7.0, 10.0, 15.0, 22.0]", cublas/cublasLt ok, curand numbers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
B="${CUDABUILD_DIR:-$ROOT/.cudabuild}"
"$ROOT/scripts/setup-cuda.sh"
# shellcheck disable=SC1091
source "$B/env.sh"
VER="$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")"
S="$B/smoke"
mkdir -p "$S/src"
cp "$ROOT/Cargo.lock" "$S/Cargo.lock"   # same dependency versions as medrl
cat > "$S/Cargo.toml" <<TOML
[package]
name = "cudarc-smoke"
version = "0.1.0"
edition = "2021"
[workspace]
[dependencies]
cudarc = { version = "=$VER", default-features = false, features = ["std", "cublas", "cublaslt", "curand", "driver", "nvrtc", "cuda-version-from-build-system", "dynamic-linking"] }
[profile.release]
opt-level = 1
TOML
cat > "$S/src/main.rs" <<'RS'
use cudarc::driver::{CudaContext, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::compile_ptx;

const PTX_SRC: &str = "
extern \"C\" __global__ void matmul(float* A, float* B, float* C, int N) {
    int ROW = blockIdx.y*blockDim.y+threadIdx.y;
    int COL = blockIdx.x*blockDim.x+threadIdx.x;

    float tmpSum = 0;

    if (ROW < N && COL < N) {
        // each thread computes one element of the block sub-matrix
        for (int i = 0; i < N; i++) {
            tmpSum += A[ROW * N + i] * B[i * N + COL];
        }
    }
    // printf(\"pos, (%d, %d) - N %d - value %d\\n\", ROW, COL, N, tmpSum);
    C[ROW * N + COL] = tmpSum;
}
";

fn main() -> Result<(), DriverError> {
    let start = std::time::Instant::now();
    let ptx = compile_ptx(PTX_SRC).unwrap();
    let ctx = CudaContext::new(0)?;
    println!("device: {} (cc {:?})", ctx.name()?, ctx.compute_capability()?);
    let stream = ctx.default_stream();
    let module = ctx.load_module(ptx)?;
    let f = module.load_function("matmul")?;
    let a_host = [1.0f32, 2.0, 3.0, 4.0];
    let b_host = [1.0f32, 2.0, 3.0, 4.0];
    let mut c_host = [0.0f32; 4];
    let a_dev = stream.clone_htod(&a_host)?;
    let b_dev = stream.clone_htod(&b_host)?;
    let mut c_dev = stream.clone_htod(&c_host)?;
    let mut builder = stream.launch_builder(&f);
    builder.arg(&a_dev);
    builder.arg(&b_dev);
    builder.arg(&mut c_dev);
    builder.arg(&2i32);
    let cfg = LaunchConfig { block_dim: (2, 2, 1), grid_dim: (1, 1, 1), shared_mem_bytes: 0 };
    unsafe { builder.launch(cfg) }?;
    stream.memcpy_dtoh(&c_dev, &mut c_host)?;
    println!("nvrtc matmul: {:?} (expect [7, 10, 15, 22])", c_host);
    let _blas = cudarc::cublas::CudaBlas::new(stream.clone()).expect("cublas");
    println!("cublas handle ok");
    let _blaslt = cudarc::cublaslt::CudaBlasLT::new(stream.clone()).expect("cublaslt");
    println!("cublasLt handle ok");
    let rng = cudarc::curand::CudaRng::new(0, stream.clone()).expect("curand");
    let mut r = stream.alloc_zeros::<f32>(4)?;
    rng.fill_with_uniform(&mut r).expect("curand fill");
    println!("curand: {:?}", stream.clone_dtoh(&r)?);
    println!("ok in {:?}", start.elapsed());
    Ok(())
}
RS
(cd "$S" && CARGO_TARGET_DIR="$B/smoke-target" nice -n "${NICE:-15}" cargo build --release -q)
mkdir -p "$ROOT/.device-carry"
strip -o "$ROOT/.device-carry/cudarc-smoke" "$B/smoke-target/release/cudarc-smoke"
echo "[smoke] built $ROOT/.device-carry/cudarc-smoke ($(stat -c %s "$ROOT/.device-carry/cudarc-smoke") bytes)" >&2
