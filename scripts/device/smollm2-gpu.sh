#!/usr/bin/env bash
# On the GPU machine: SmolLM2-135M-Instruct (imported from its GGUF) in bf16 on CUDA vs f32 on
# CPU, generation on CUDA, and prompt/decode throughput. Numbers go to docs/benchmarks.md.
#
# The device tool carries at most 64 MiB a call and the GGUF alone is 94 MiB, so it travels in
# two calls to the same warm machine (scripts/device/stage.sh prepares the parts here):
#   call 1, carry [.dc-bin, .dc-gguf-a]: bash scripts/device/smollm2-gpu.sh stage
#   call 2, carry [.dc-gguf-b]:          bash scripts/device/smollm2-gpu.sh run
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
mkdir -p "$W/parts"
for d in .dc-gguf-a .dc-gguf-b; do [ -d $d ] && cp $d/part-* "$W/parts/"; done
if [ -d .dc-bin ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
if [ "${1:-run}" = stage ]; then ls -la "$W" "$W/parts"; exit 0; fi
M="$W/medrl"
cat "$W"/parts/part-* > "$W/smollm2.gguf"
echo "$(cat .dc-gguf-b/sha256)  $W/smollm2.gguf" | sha256sum -c -
[ -d "$W/smollm2" ] || "$M" model import-gguf "$W/smollm2.gguf" "$W/smollm2"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== CUDA bf16 vs CPU f32 logits"
"$M" bench compare-devices --model "$W/smollm2" --device cuda --dtype bf16
echo "== greedy answer on CUDA bf16"
"$M" generate --model "$W/smollm2" --device cuda --dtype bf16 --chat --temperature 0 --max-new-tokens 32 \
  --prompt "What are the first-line treatments for early-stage hepatocellular carcinoma?" --output "$W/gen.jsonl"
cat "$W/gen.jsonl"
echo "== throughput (median of 3 after a warm-up)"
for b in 1 16 64; do
  "$M" bench generate --model "$W/smollm2" --device cuda --dtype bf16 --batch $b --prompt-len 128 --new-tokens 128
done
"$M" bench generate --model "$W/smollm2" --device cpu --dtype f32 --batch 1 --prompt-len 128 --new-tokens 32 --repeats 1
