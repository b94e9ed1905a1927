#!/usr/bin/env bash
# Build medrl with the CUDA backend on a machine without a GPU (see docs/cuda.md), then put a
# stripped copy of the binary in .device-carry/medrl for the device tool (carries <= 64 MiB).
#
# Usage: scripts/build-cuda.sh [extra cargo args...]
#   CARGO_TARGET_DIR  default <repo>/.cudabuild/target (kept separate from the CPU build's target/)
#   NICE              niceness for cargo (default 15; the build machines are shared)
#   CARRY_DIR         default <repo>/.device-carry
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
B="${CUDABUILD_DIR:-$ROOT/.cudabuild}"

# setup-cuda.sh is idempotent and fast when nothing changed; always run it so that a changed
# cudarc version (Cargo.lock) regenerates the stub.
"$ROOT/scripts/setup-cuda.sh"
# shellcheck disable=SC1091
source "$B/env.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/.cudabuild/target}"
NICE="${NICE:-15}"
CARRY_DIR="${CARRY_DIR:-$ROOT/.device-carry}"

echo "[build-cuda] cargo build --release --features cuda -p medrl $* (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
start=$(date +%s)
nice -n "$NICE" cargo build --release --features cuda -p medrl "$@"
echo "[build-cuda] cargo finished in $(( $(date +%s) - start ))s" >&2

BIN="$CARGO_TARGET_DIR/release/medrl"
[[ -x "$BIN" ]] || { echo "[build-cuda] ERROR: $BIN not found" >&2; exit 1; }
mkdir -p "$CARRY_DIR"
strip -o "$CARRY_DIR/medrl.tmp" "$BIN"
mv "$CARRY_DIR/medrl.tmp" "$CARRY_DIR/medrl"

size=$(stat -c %s "$CARRY_DIR/medrl")
awk -v f="$CARRY_DIR/medrl" -v s="$size" -v u="$(stat -c %s "$BIN")" 'BEGIN {
  printf "[build-cuda] %s: %d bytes (%.1f MiB stripped; %.1f MiB unstripped)\n", f, s, s/1048576, u/1048576 }'
if (( size > 60 * 1024 * 1024 )); then
  echo "[build-cuda] WARNING: over 60 MiB; the device tool carries at most 64 MiB per call in all" >&2
fi
echo "[build-cuda] dynamic deps (resolved on the GPU machine via scripts/device-env.sh):" >&2
readelf -d "$CARRY_DIR/medrl" | awk '/NEEDED/ { print "  " $NF }' >&2
