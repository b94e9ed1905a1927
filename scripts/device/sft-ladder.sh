#!/usr/bin/env bash
# On the GPU machine, issue 18's size ladder and its checks, in one call (carry .dc-bin):
#   1. `medrl bench optim-agreement`: the lean AdamW kernel (8-bit moments, bf16 masters with
#      stochastic rounding) against the host oracle, bit for bit; `ops-agreement`: NF4
#      quantization (QLoRA loads quantize on the device) and dequantization against the host;
#   2. interop: a QLoRA SFT run on a tiny bf16 base; peft loads its adapter on that base and
#      transformers its merged export (scripts/reference/check_export_interop.py);
#   3. PyTorch + PEFT LoRA on the Qwen2.5-3B shape with gradient checkpointing, then medrl's LoRA
#      on the same shape, batch and checkpointing (the side-by-side of part 3);
#   4. the ladder rows: `medrl bench sft` on random-init models of the seeds' shapes (drawn on the
#      device), seq 2048, peak memory and tokens/s.
# Knobs: PARTS ("agree interop peft ladder"), LADDER (rows "shape:mode:ckpt:state:master:mb"),
# SEQ (2048), STEPS (3), EACH_TIMEOUT (240).
#   bash scripts/device/sft-ladder.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/device-env.sh ] && . scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
[ -f .dc-bin/medrl.xz ] && [ ! -x "$W/medrl" -o .dc-bin/medrl.xz -nt "$W/medrl" ] && xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"
M="$W/medrl"
PY=python3; "$PY" -c "import torch, peft" 2>/dev/null || PY=/opt/torch/.venv/bin/python
J="$OUT/sft-ladder.jsonl"
PARTS=${PARTS:-agree interop peft ladder}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-3}
exec > >(tee -a "$OUT/sft-ladder.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
row() { # shape mode ckpt state master mb
  local tag="$1-$2-$3-$4-$5-mb$6"
  timeout ${EACH_TIMEOUT:-240} "$M" bench sft --shape "$1" --mode "$2" --checkpointing "$3" --optimizer-state "$4" --master "$5" --seq $SEQ --micro-batch "$6" \
    --steps $STEPS --warmup 1 --device cuda --dtype bf16 2> "$OUT/sft-$tag.err" | tail -1 >> "$J" \
    || echo "$tag: exit $? $(grep -iE 'error|out of memory' "$OUT/sft-$tag.err" | head -1 | cut -c1-240)"
}
case " $PARTS " in *" agree "*)
  echo "== optim-agreement"
  "$M" bench optim-agreement --device cuda --steps 5 | tee "$OUT/optim-agreement.json"
  echo "== ops-agreement: NF4 quantization and dequantization on the device vs the host"
  "$M" bench ops-agreement --device cuda --dtype bf16 > "$OUT/ops-agreement-bf16.json" 2> "$OUT/ops-agreement.err"
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1]))['ops']; print({k: d[k] for k in ('nf4_quantize', 'nf4_dequantize', 'nf4_matmul')})" "$OUT/ops-agreement-bf16.json" || tail -3 "$OUT/ops-agreement.err"
;; esac
case " $PARTS " in *" interop "*)
  echo "== QLoRA adapter interop (peft on the bf16 base)"
  rm -rf "$W/tiny" "$W/tiny-bf16" "$W/sft-qlora"
  "$M" model init --arch qwen2 --preset tiny "$W/tiny" > /dev/null
  "$PY" - "$W/tiny" "$W/tiny-bf16" <<'PY'
import sys, shutil, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
m.to(torch.bfloat16).save_pretrained(sys.argv[2], safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    try: shutil.copy(f"{sys.argv[1]}/{f}", f"{sys.argv[2]}/{f}")
    except FileNotFoundError: pass
PY
  "$M" sft --config configs/sft-tiny-dialogue.yaml model="$W/tiny-bf16" output_dir="$W/sft-qlora" device=cuda \
    "lora={rank: 8, alpha: 16, quantize: nf4}" training.max_steps=6 training.eval_every=0 training.save_every=0 > "$OUT/sft-qlora.json" 2> "$OUT/sft-qlora.err" \
    || { echo "qlora sft failed"; tail -3 "$OUT/sft-qlora.err"; }
  "$PY" scripts/reference/check_export_interop.py --medrl "$M" --run "$W/sft-qlora" --base "$W/tiny-bf16" | tee "$OUT/qlora-interop.txt"
;; esac
case " $PARTS " in *" peft "*)
  echo "== PyTorch + PEFT LoRA, Qwen2.5-3B shape, gradient checkpointing, seq $SEQ, micro-batch 4"
  "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
  timeout 300 "$PY" scripts/reference/bench_sft_torch.py --shape qwen2.5-3b --lora --gradient-checkpointing --seq $SEQ --micro-batch 4 --steps $STEPS --warmup 1 --modes eager | tee -a "$J"
  row qwen2.5-3b lora every_layer f32 f32 4
;; esac
case " $PARTS " in *" ladder "*)
  for r in ${LADDER:-qwen2.5-3b:qlora:every_layer:f32:f32:4 qwen2.5-3b:lora:off:f32:f32:4 qwen2.5-3b:full:every_layer:f32:f32:4 qwen2.5-3b:full:every_layer:int8:bf16:4 \
      llama-3-8b:qlora:every_layer:f32:f32:2 llama-3-8b:lora:every_layer:f32:f32:2 llama-3-8b:full:every_layer:int8:bf16:2 qwen3-32b:qlora:every_layer:f32:f32:1}; do
    IFS=: read -r shape mode ckpt state master mb <<< "$r"
    row "$shape" "$mode" "$ckpt" "$state" "$master" "$mb"
  done
;; esac
"$PY" scripts/device/sft_rows.py "$J"
