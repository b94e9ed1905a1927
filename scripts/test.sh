#!/usr/bin/env bash
# The test command (README): every Rust test of the workspace, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --no-fail-fast "$@"
