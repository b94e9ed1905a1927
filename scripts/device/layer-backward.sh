#!/usr/bin/env bash
# On the GPU machine (carry .dc-bin): the explicit layer backward (issue 17) against candle's
# autograd, in one call:
#   1. `medrl bench train-agreement` with the explicit backward on CUDA (f32, then bf16) against
#      the CPU's autograd in f32: per-step losses and final weights;
#   2. `medrl bench sft`, autograd then explicit, on the Qwen2.5-0.5B shape (seq 1024,
#      micro-batch 8, full fine-tuning) and on the Qwen2.5-3B shape with LoRA and activation
#      checkpointing (seq 2048, micro-batch 4: issue 18's side by side with PEFT);
#   3. the PyTorch figures on the same shapes in the same call (eager; PEFT for the LoRA row).
# Knobs: PARTS ("agree bench torch"), ROWS (as sft-ladder.sh, "shape:mode:ckpt:seq:mb"), STEPS (5).
#   bash scripts/device/layer-backward.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/device-env.sh ] && . scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
[ -f .dc-bin/medrl.xz ] && xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"
M="$W/medrl"
PY=python3; "$PY" -c "import torch, peft" 2>/dev/null || PY=/opt/torch/.venv/bin/python
J="$OUT/layer-backward.jsonl"
PARTS=${PARTS:-agree bench torch}
STEPS=${STEPS:-5}
ROWS=${ROWS:-qwen2.5-0.5b:full:off:1024:8 qwen2.5-3b:lora:every_layer:2048:4}
exec > >(tee -a "$OUT/layer-backward.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case " $PARTS " in *" agree "*)
  for dt in f32 bf16; do
    echo "== train-agreement, explicit backward on CUDA $dt vs CPU autograd f32"
    timeout 120 "$M" bench train-agreement --device cuda --dtype $dt --layer-backward explicit --steps 3 | tee "$OUT/train-agreement-explicit-$dt.json"
  done
;; esac
case " $PARTS " in *" bench "*)
  for r in $ROWS; do
    IFS=: read -r shape mode ckpt seq mb <<< "$r"
    for lb in autograd explicit; do
      echo "== medrl bench sft $shape $mode ckpt=$ckpt seq $seq mb $mb, layer backward $lb"
      timeout 150 "$M" bench sft --shape "$shape" --mode "$mode" --checkpointing "$ckpt" --seq "$seq" --micro-batch "$mb" --steps $STEPS --warmup 2 \
        --device cuda --dtype bf16 --layer-backward $lb 2> "$OUT/sft-$shape-$mode-$lb.err" | tail -1 >> "$J" \
        || echo "exit $?: $(grep -iE 'error|out of memory' "$OUT/sft-$shape-$mode-$lb.err" | head -1 | cut -c1-240)"
    done
  done
;; esac
case " $PARTS " in *" torch "*)
  for r in $ROWS; do
    IFS=: read -r shape mode ckpt seq mb <<< "$r"
    extra=""; [ "$mode" = lora ] && extra="--lora"; [ "$ckpt" != off ] && extra="$extra --gradient-checkpointing"
    echo "== PyTorch $shape $mode $extra seq $seq mb $mb (eager)"
    timeout 200 "$PY" scripts/reference/bench_sft_torch.py --shape "$shape" --seq "$seq" --micro-batch "$mb" --steps $STEPS --warmup 2 --modes eager $extra | tee -a "$J"
  done
;; esac
"$PY" scripts/device/sft_rows.py "$J"
