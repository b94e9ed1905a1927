#!/usr/bin/env bash
# Benchmarks the sample-size reward: Rust plugin in the sandbox (1 thread and all cores) vs
# the same computation in CPython, back to back on the same samples.
# Usage: scripts/bench-reward.sh [N] [ROUNDS]   (defaults: 100000 samples, 5 timed rounds each)
# PROFILE=debug uses target/debug/medrl instead of a release build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-100000}"
rounds="${2:-5}"
# Cargo reads .cargo/config.toml (simd128 for the wasm guests) from the working directory.
cd "$root"
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p sample-size
profile="${PROFILE:-release}"
if [ "$profile" = release ]; then cargo build --release -p medrl; else cargo build -p medrl; fi
samples="$(mktemp --suffix=.jsonl)"
trap 'rm -f "$samples"' EXIT
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
"target/$profile/medrl" reward bench --plugin plugins/target/wasm32-wasip2/release/sample_size.wasm \
  --n "$n" --rounds "$rounds" --write-samples "$samples"
python3 scripts/bench_reward.py "$samples" "$rounds"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
