#!/usr/bin/env bash
# On the GPU machine: SmolLM2-135M-Instruct (imported from its GGUF) in bf16 on CUDA vs f32 on
# CPU, generation on CUDA, and prompt/decode throughput. Numbers go to docs/benchmarks.md.
#
# Expects (carried by the device tool, see docs/cuda.md):
#   .dc-bin/medrl.xz            xz-compressed CUDA build of medrl (scripts/build-cuda.sh)
#   .dc-gguf-a/, .dc-gguf-b/    the GGUF split in two parts (the tool carries <= 64 MiB a call)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
mkdir -p "$W"
[ -x "$W/medrl" ] || xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"
M="$W/medrl"
if [ ! -f "$W/smollm2.gguf" ]; then
  cat .dc-gguf-a/part-* .dc-gguf-b/part-* > "$W/smollm2.gguf"
fi
sha256sum "$W/smollm2.gguf"
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
