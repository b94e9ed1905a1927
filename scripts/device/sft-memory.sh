#!/usr/bin/env bash
# On the GPU machine: issue 18's memory/speed rows for the given shapes, every mode (full, LoRA,
# QLoRA) with activation checkpointing off and at every layer, f32 AdamW, through
# sft-ladder.sh (which first checks the NF4 and optimizer kernels against the CPU).
# Carry .dc-bin:  SHAPES="qwen2.5-0.5b" SEQ=2048 MB=4 bash scripts/device/sft-memory.sh
# Knobs: SHAPES, MODES, CKPTS, MB (micro-batch), and sft-ladder.sh's SEQ, STEPS, EACH_TIMEOUT.
set -uo pipefail
rows=""
for shape in ${SHAPES:-qwen2.5-0.5b}; do
  for mode in ${MODES:-full lora qlora}; do
    for ckpt in ${CKPTS:-off every_layer}; do
      rows="$rows $shape:$mode:$ckpt:f32:f32:${MB:-4}"
    done
  done
done
PARTS="agree ladder" LADDER="$rows" exec bash "$(dirname "$0")/sft-ladder.sh"
