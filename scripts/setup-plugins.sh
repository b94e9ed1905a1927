#!/usr/bin/env bash
# Installs the plugin toolchain on a fresh machine (CI calls this):
#  - the wasm32-wasip2 Rust target (Rust plugins and the test suite's plugin builds),
#  - componentize-py, pinned (Python plugins; the Python plugin test skips without it).
set -euo pipefail
COMPONENTIZE_PY_VERSION="${COMPONENTIZE_PY_VERSION:-0.25.1}"
rustup target add wasm32-wasip2
python3 -m pip install --upgrade "componentize-py==${COMPONENTIZE_PY_VERSION}"
componentize-py --version
# Build the bundled plugins once (sample-size, study-search, medical-verifier, dialogue-quality,
# hcc-composite, the adapters, the pubmed-search-tool tool and the hostile test guests); the
# tests rebuild incrementally.
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --target wasm32-wasip2 --manifest-path "$root/plugins/Cargo.toml"
