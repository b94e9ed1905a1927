#!/usr/bin/env bash
# Builds the Python reward plugin (plugins/python/sample-size-py) into a WebAssembly component.
# Usage: scripts/build-python-plugin.sh [OUT.wasm]   (needs componentize-py: scripts/setup-plugins.sh)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/plugins/python/sample-size-py"
out="${1:-$root/plugins/target/python/sample_size_py.wasm}"
mkdir -p "$(dirname "$out")"
command -v componentize-py >/dev/null || { echo "componentize-py not found: run scripts/setup-plugins.sh" >&2; exit 1; }
# -d: the WIT (source of truth), -w: the world; app.py defines class WitWorld.
componentize-py -d "$root/reward-sdk/wit/v0.1" -w reward componentize app -p "$src" -o "$out"
echo "$out"
