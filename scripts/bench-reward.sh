#!/usr/bin/env bash
# Benchmarks the sample-size reward: Rust plugin in the sandbox (1 thread and all cores) vs
# the same computation in CPython. Usage: scripts/bench-reward.sh [N]   (default 100000)
# PROFILE=debug uses target/debug/medrl (as in docs/benchmarks.md) instead of a release build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-100000}"
cargo build --release --target wasm32-wasip2 --manifest-path "$root/plugins/Cargo.toml" -p sample-size
profile="${PROFILE:-release}"
if [ "$profile" = release ]; then cargo build --release -p medrl --manifest-path "$root/Cargo.toml"; else cargo build -p medrl --manifest-path "$root/Cargo.toml"; fi
samples="$(mktemp --suffix=.jsonl)"
"$root/target/$profile/medrl" reward bench --plugin "$root/plugins/target/wasm32-wasip2/release/sample_size.wasm" \
  --n "$n" --write-samples "$samples"
python3 "$root/scripts/bench_reward.py" "$samples"
rm -f "$samples"
