#!/usr/bin/env bash
# Builds a Python plugin (componentize-py) into a WebAssembly component, against plugin API 0.3.0
# (reward-sdk/wit/v0.3).
#
# Usage: scripts/build-python-plugin.sh [OUT.wasm [PLUGIN_DIR [WORLD]]]
#   OUT.wasm     default plugins/target/python/<plugin dir name, - as _>.wasm
#   PLUGIN_DIR   a folder with app.py (class WitWorld); default plugins/python/sample-size-py
#   WORLD        reward (default), tool or data-adapter: the world app.py implements
# e.g. scripts/build-python-plugin.sh out.wasm plugins/python/bmi-tool-py tool
#
# plugins/python/ (medrl_sdk.py, the helpers) is on the module path after PLUGIN_DIR, so a
# plugin may `import medrl_sdk` or ship its own copy. Only the standard library and modules
# in these two folders are bundled. Needs componentize-py (scripts/setup-plugins.sh pins it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${2:-$root/plugins/python/sample-size-py}"
world="${3:-reward}"
[ -f "$src/app.py" ] || { echo "no app.py in $src" >&2; exit 1; }
src="$(cd "$src" && pwd)"
case "$world" in
  reward|tool|data-adapter) ;;
  *) echo "unknown world '$world' (reward, tool or data-adapter)" >&2; exit 1 ;;
esac
name="$(basename "$src")"
out="${1:-$root/plugins/target/python/${name//-/_}.wasm}"
mkdir -p "$(dirname "$out")"
command -v componentize-py >/dev/null || { echo "componentize-py not found: run scripts/setup-plugins.sh" >&2; exit 1; }
# -d: the WIT (source of truth), -w: the world; app.py defines class WitWorld.
componentize-py -d "$root/reward-sdk/wit/v0.3" -w "$world" componentize app \
  -p "$src" -p "$root/plugins/python" -o "$out"
echo "$out"
