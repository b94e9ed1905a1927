#!/usr/bin/env bash
# On the GPU machine: `medrl serve` under load (`medrl bench serve`): output tokens/s, latency and
# time to first token at 1, 16, 64 and 256 concurrent streaming clients, on random-init models of
# the SmolLM2-135M and Qwen2.5-0.5B shapes (scripts/device/shapes/*.json), bf16. Each request: a
# chat prompt of ~130 tokens, 256 new tokens with EOS ignored, temperature 1; requests per level:
# 2 per client (at least 8). Also `medrl bench rollout` on the same models (the engine alone, no
# HTTP), for the server's overhead.
#
# The models' tokenizer is the tiny preset's (512 tokens, a ChatML template): sampled ids above
# it decode to no text, which changes nothing measured here (tokens are counted from `usage`,
# and every token gets its own stream chunk).
#
# Carry .dc-bin (xz of the CUDA binary):  bash scripts/device/serve-bench.sh
# Knobs: M, OUT, WORK, PY, MODELS, CONCURRENCY (default 1,16,64,256), MAX_TOKENS (256), REAL (a real
# model folder to serve too, with its own tokenizer).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/device-env.sh ] && . scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W/models" "$OUT"
if [ -f .dc-bin/medrl.xz ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
M=${M:-$W/medrl}
PY=${PY:-python3}
if ! "$PY" -c "import torch, transformers" 2>/dev/null && [ -x /opt/torch/.venv/bin/python ]; then
  PY=/opt/torch/.venv/bin/python
fi
MODELS=${MODELS:-"smollm2-135m qwen2.5-0.5b"}
CONCURRENCY=${CONCURRENCY:-1,16,64,256}
MAX_TOKENS=${MAX_TOKENS:-256}
J="$OUT/serve.jsonl"
: > "$J"
exec > >(tee -a "$OUT/serve-bench.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$M" --version || true

DONOR="$W/models/.tokenizer-donor"
[ -f "$DONOR/tokenizer.json" ] || "$M" model init --arch llama --preset tiny "$DONOR" > /dev/null
for shape in $MODELS; do
  dir="$W/models/$shape"
  if [ ! -f "$dir/model.safetensors" ]; then
    timeout 180 "$PY" scripts/device/rollout_baseline.py --make-model "scripts/device/shapes/$shape.json" --model "$dir" --dtype bf16
  fi
  cp "$DONOR/tokenizer.json" "$DONOR/tokenizer_config.json" "$DONOR/generation_config.json" "$dir/"
done

# REAL=DIR adds a real model folder (e.g. SmolLM2-135M-Instruct imported from the GGUF staged as
# in smollm2-gpu.sh: `medrl model import-gguf`), served with its own tokenizer, as "real".
if [ -n "${REAL:-}" ]; then ln -sfn "$REAL" "$W/models/real"; MODELS="real $MODELS"; fi
for shape in $MODELS; do
  dir="$W/models/$shape"
  echo "== $shape: medrl bench serve --concurrency $CONCURRENCY --max-tokens $MAX_TOKENS"
  set +e
  timeout 300 "$M" bench serve --model "$dir" --device cuda --dtype bf16 --concurrency "$CONCURRENCY" --max-tokens "$MAX_TOKENS" --json > "$OUT/serve-$shape.out"
  rc=$?
  set -e
  echo "exit $rc"
  "$PY" - "$shape" "$OUT/serve-$shape.out" "$J" <<'PY'
import json, sys
shape, src, dst = sys.argv[1:4]
with open(dst, "a") as out:
    for line in open(src):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            r["model"] = shape
            out.write(json.dumps(r) + "\n")
            print(f"{shape:>14} {r['concurrency']:>4} clients: {r['output_tokens_per_s']:>9.0f} tok/s  latency p50 {r['latency_p50_s']:.3f}s p99 {r['latency_p99_s']:.3f}s  first token p50 {r['ttft_p50_s']:.3f}s p99 {r['ttft_p99_s']:.3f}s  ({r['requests']} requests, {r['failed']} failed)")
PY
  echo "== $shape: medrl bench rollout (engine alone, 64 x 8, 128 -> 512)"
  timeout 120 "$M" bench rollout --model "$dir" --device cuda --dtype bf16 --json | tee -a "$OUT/rollout-$shape.out" || echo "rollout exit $?"
done
