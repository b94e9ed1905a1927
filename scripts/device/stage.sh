#!/usr/bin/env bash
# Here: prepare what scripts/device/smollm2-gpu.sh needs on the GPU machine: the xz-compressed
# CUDA binary (.dc-bin) and the SmolLM2 GGUF split in two parts (.dc-gguf-a, .dc-gguf-b) that
# each fit the device tool's 64 MiB per call.
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${MEDRL_SMOLLM2_GGUF:?set MEDRL_SMOLLM2_GGUF to the SmolLM2 .gguf}
rm -rf .dc-bin .dc-gguf-a .dc-gguf-b && mkdir -p .dc-bin .dc-gguf-a .dc-gguf-b
xz -T2 -6 -c .device-carry/medrl > .dc-bin/medrl.xz
split -b 46000000 -d -a 2 "$GGUF" .dc-gguf-a/part-
mv .dc-gguf-a/part-01 .dc-gguf-a/part-02 .dc-gguf-b/ 2>/dev/null || mv .dc-gguf-a/part-01 .dc-gguf-b/
sha256sum "$GGUF" | cut -d' ' -f1 > .dc-gguf-b/sha256
du -sh .dc-bin .dc-gguf-a .dc-gguf-b
