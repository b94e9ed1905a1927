#!/usr/bin/env bash
# On the GPU machine: issue 18's memory/speed ladder rows from `medrl bench sft` on random-init
# models of the given shapes: full, LoRA and QLoRA fine-tuning, each with activation checkpointing
# off and at every layer, peak memory and tokens/s. Also `medrl bench ops-agreement` (the NF4
# dequantization kernel against the CPU, bit for bit).
# Carry .dc-bin:  SHAPES="qwen2.5-0.5b" SEQ=2048 MB=4 bash scripts/device/sft-memory.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/device-env.sh ] && . scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
[ -f .dc-bin/medrl.xz ] && [ ! -x "$W/medrl" -o .dc-bin/medrl.xz -nt "$W/medrl" ] && xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"
M="$W/medrl"
J="$OUT/sft-memory.jsonl"
"$M" bench ops-agreement --device cuda --dtype bf16 > "$OUT/ops-agreement-bf16.json" 2> "$OUT/ops-agreement.err"
python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['ops']; print('ops-agreement bf16:', {k: d[k] for k in ('nf4_dequantize', 'nf4_matmul')})" "$OUT/ops-agreement-bf16.json" || tail -3 "$OUT/ops-agreement.err"
for shape in ${SHAPES:-qwen2.5-0.5b}; do
  for mode in ${MODES:-full lora qlora}; do
    for ckpt in ${CKPTS:-off every_layer}; do
      timeout ${EACH_TIMEOUT:-120} "$M" bench sft --shape "$shape" --mode "$mode" --checkpointing "$ckpt" --seq ${SEQ:-2048} --micro-batch ${MB:-4} \
        --steps ${STEPS:-4} --warmup 1 --device cuda --dtype bf16 2> "$OUT/sft-$shape-$mode-$ckpt.err" | tail -1 >> "$J" || echo "$shape $mode $ckpt: exit $? $(grep -iE 'error|out of memory' "$OUT/sft-$shape-$mode-$ckpt.err" | head -1 | cut -c1-200)"
    done
  done
done
python3 - "$J" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"{r['shape']:>13} {r['mode']:>5} ckpt={r['checkpointing']:<11} {r['tokens_per_s']:>9.0f} tok/s  step {r['median_step_s']:.3f}s  peak allocated {r['peak_allocated_mb'] or 0:>8.0f} MiB  in use {r['peak_memory_mb']:>8.0f} MiB  trainable {r['trainable_parameters']}")
PY
