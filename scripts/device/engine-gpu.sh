#!/usr/bin/env bash
# On the GPU machine, in one device call: the rollout engine (issue 16) checked and measured.
#   1. bench infer-agreement: write_kv, paged attention and the batched sampler on CUDA against
#      their CPU references (random inputs, bf16/f16/f32 caches, vocab 151,936 for the sampler);
#   2. bench engine-agreement: greedy through the engine, CUDA bf16 (and f32) against CPU f32, on
#      clinical prompts, for a medrl random model with peaked logits (qwen3 small preset,
#      init_std 0.2) and the SmolLM2-135M shape (transformers' random init);
#   3. scripts/device/rollout-bench.sh: `medrl bench rollout` beside transformers generate
#      (dynamic cache, static cache + torch.compile) on the Qwen2.5-0.5B and SmolLM2-135M shapes.
# Here first: scripts/build-cuda.sh, then `xz -T2 -6 -c .device-carry/medrl > .dc-bin/medrl.xz`;
# the call carries .dc-bin. Everything lands in $OUT (engine-gpu.log, rollout.jsonl, ...).
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W/models" "$OUT"
exec > >(tee -a "$OUT/engine-gpu.log") 2>&1
xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"
M=$W/medrl
PY=python3
"$PY" -c "import torch" 2>/dev/null || PY=/opt/torch/.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== 1. infer-agreement"
timeout 120 "$M" bench infer-agreement --device cuda
echo "== 2. engine-agreement"
timeout 60 "$M" model init --arch qwen3 --preset small --init-std 0.2 --seed 3 "$W/models/qwen3-small" > /dev/null
for dt in bf16 f32; do
  timeout 90 "$M" bench engine-agreement --model "$W/models/qwen3-small" --device cuda --dtype $dt --new-tokens 64 > "$OUT/engine-agreement-qwen3-small-$dt.json"
  "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('dtype','prompts','identical','diverged_at_near_tie','diverged_otherwise')})" "$OUT/engine-agreement-qwen3-small-$dt.json"
done
S=$W/models/smollm2-135m
if [ "${QUICK:-0}" != 1 ]; then  # QUICK=1 (a short device lease): the peaked-logit model only
timeout 120 "$PY" scripts/device/rollout_baseline.py --make-model scripts/device/shapes/smollm2-135m.json --model "$S" --dtype bf16
timeout 60 "$M" model init --arch llama --preset tiny "$W/models/.tokenizer-donor" > /dev/null
cp "$W/models/.tokenizer-donor"/{tokenizer.json,tokenizer_config.json,generation_config.json} "$S/"
timeout 120 "$M" bench engine-agreement --model "$S" --device cuda --dtype bf16 --new-tokens 64 > "$OUT/engine-agreement-smollm2-bf16.json"
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('dtype','prompts','identical','diverged_at_near_tie','diverged_otherwise')})" "$OUT/engine-agreement-smollm2-bf16.json"
fi
echo "== 3. rollout-bench (at ${SECONDS}s): medrl on both shapes, then PyTorch on Qwen2.5-0.5B"
BUDGET_S=$(( ${MEDRL_PART_S:-250} - SECONDS > 100 ? ${MEDRL_PART_S:-250} - SECONDS : 100 )) STEPS=medrl M=$M WORK=$W OUT=$OUT/bench bash scripts/device/rollout-bench.sh
BUDGET_S=$(( ${TOTAL_S:-545} - SECONDS )) STEPS="dynamic static-compile" MODELS=qwen2.5-0.5b KEEP_JSONL=1 M=$M WORK=$W OUT=$OUT/bench bash scripts/device/rollout-bench.sh
echo "engine-gpu: done at ${SECONDS}s"
