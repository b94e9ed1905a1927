#!/usr/bin/env bash
# On the GPU machine's CPUs (a quiet 16-CPU VM; the GPU is not used): issue 4's benchmark, the
# sample-size reward in the sandbox against the same function in CPython, on 100,000 samples.
# Alternates plugin API 0.2.0 and 0.1.0 builds of the same plugin with CPython, `runs` times.
#
# Carry .dc-bin (scripts/device/stage.sh or xz of .device-carry/medrl) and .dc-plug holding
# sample_size_v02.wasm and sample_size_v01.wasm (release builds, from the repository root so
# that .cargo/config.toml's simd128 applies).
#   bash scripts/device/reward-bench.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
if [ -d .dc-bin ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
M="$W/medrl"
runs=${1:-3}
echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(python3 --version)"
for v in v02 v01; do
  "$M" plugin inspect ".dc-plug/sample_size_$v.wasm" | grep -i -E "api|name" | head -3
done
"$M" reward bench --plugin .dc-plug/sample_size_v02.wasm --n 100000 --rounds 1 --write-samples "$W/samples.jsonl" > /dev/null
for i in $(seq 1 "$runs"); do
  echo "== run $i, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  for v in v02 v01; do
    echo "-- Rust plugin, API ${v/v0/0.}"
    "$M" reward bench --plugin ".dc-plug/sample_size_$v.wasm" --n 100000 --rounds 5 2>&1 | tee -a "$OUT/reward-bench-$v.txt" | tail -4
  done
  echo "-- CPython"
  python3 scripts/bench_reward.py "$W/samples.jsonl" 5 2>&1 | tee -a "$OUT/reward-bench-cpython.txt" | tail -3
done
