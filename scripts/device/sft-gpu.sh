#!/usr/bin/env bash
# On the GPU machine: SFT of SmolLM2-135M-Instruct (full and LoRA) on the bundled medical
# dialogue sample, the transformers/peft interop check of its exports, and the SFT throughput
# benchmark against PyTorch on the Qwen2.5-0.5B shape. Numbers go to docs/benchmarks.md.
#
# Prepared here by scripts/device/stage.sh (binary + GGUF in two parts) plus a peft wheel in
# .dc-whl (the GPU machine has torch and transformers, not peft, and no network):
#   call 1, carry [.dc-bin, .dc-gguf-a]:  bash scripts/device/sft-gpu.sh stage
#   call 2, carry [.dc-gguf-b, .dc-whl]:  bash scripts/device/sft-gpu.sh sft
# (When the working tree grows, split the GGUF in three and add a `stage` call for .dc-gguf-c;
# the calls must follow each other within the machine's idle time.)
#   call 3:                               bash scripts/device/sft-gpu.sh bench
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W/parts" "$OUT"
# The GGUF travels in parts (.dc-gguf-a, -b, ...: one or two per call); its sha256 with one of them.
for d in .dc-gguf-*; do
  [ -d "$d" ] || continue
  cp "$d"/part-* "$W/parts/" 2>/dev/null || true
  [ -f "$d/sha256" ] && cp "$d/sha256" "$W/parts/sha256"
done
if [ -d .dc-bin ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
M="$W/medrl"
case "${1:-sft}" in
stage)
  ls -la "$W" "$W/parts"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -c "import peft" 2>/dev/null && echo "peft present" || echo "peft missing (carry .dc-whl)"
  ;;
sft)
  cat "$W"/parts/part-* > "$W/smollm2.gguf"
  echo "$(cat "$W/parts/sha256")  $W/smollm2.gguf" | sha256sum -c -
  [ -d "$W/smollm2" ] || "$M" model import-gguf "$W/smollm2.gguf" "$W/smollm2" > /dev/null
  if ! python3 -c "import peft" 2>/dev/null; then pip install -q --no-deps --target "$W/py" .dc-whl/*.whl; fi
  export PYTHONPATH="$W/py:${PYTHONPATH:-}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "== full SFT, SmolLM2-135M-Instruct, bf16"
  rm -rf "$W/sft-full"
  "$M" sft --config configs/sft-smollm2-dialogue.yaml model="$W/smollm2" output_dir="$W/sft-full"
  python3 - "$W/sft-full/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if "loss" in r or "eval_loss" in r:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k in ("step", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "memory_mb")})
PY
  cp "$W/sft-full/metrics.jsonl" "$OUT/sft-full-metrics.jsonl"; cp "$W/sft-full/plots/loss.svg" "$OUT/sft-full-loss.svg"
  echo "== LoRA SFT (rank 16, all linear), f32 export, then transformers/peft interop"
  rm -rf "$W/sft-lora"
  "$M" sft --config configs/sft-smollm2-dialogue.yaml model="$W/smollm2" output_dir="$W/sft-lora" \
    'lora={rank: 16, alpha: 32, dropout: 0.05}' training.lr=2.0e-4 training.epochs=1 training.export_dtype=f32 | tail -8
  python3 scripts/reference/check_export_interop.py --medrl "$M" --run "$W/sft-lora" --base "$W/smollm2" --tol 2e-3
  ;;
bench)
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  echo "== medrl bench sft (Qwen2.5-0.5B shape, seq 1024, micro-batch 8, bf16 compute, f32 AdamW masters)"
  "$M" bench sft --shape qwen2.5-0.5b --seq 1024 --micro-batch 8 --steps 8 --warmup 2 --device cuda --dtype bf16 --json "$OUT/bench-medrl.json" || echo "medrl bench failed"
  echo "== PyTorch $(python3 -c 'import torch; print(torch.__version__)') + transformers, same shape (eager, torch.compile)"
  python3 scripts/reference/bench_sft_torch.py --shape qwen2.5-0.5b --seq 1024 --micro-batch 8 --steps 8 --warmup 3 | tee "$OUT/bench-torch.jsonl"
  ;;
esac
