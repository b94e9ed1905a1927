#!/usr/bin/env bash
# On the GPU machine: the sample-size pipeline on SmolLM2-135M-Instruct (imported from the GGUF):
# generated problems -> full SFT -> GRPO with the sample-size reward plugin, held-out accuracy
# before and after GRPO, per-phase step timing and rollout tokens/s. Numbers go to docs/grpo.md.
#
# Prepared here by scripts/device/stage.sh (binary + GGUF in two parts) and a plugin build
# (plugins/target/wasm32-wasip2/release/sample_size.wasm). The device tool carries 64 MiB per
# call and keeps the machine (and /tmp) only while calls follow each other, so:
#   call 1, carry [.dc-bin, .dc-gguf-a]:                    bash scripts/device/grpo-gpu.sh stage
#   call 2, carry [.dc-gguf-b, plugins/target/.../sample_size.wasm]:  bash scripts/device/grpo-gpu.sh sft
#   call 3:                                                  bash scripts/device/grpo-gpu.sh grpo
#   then:                                                    bash scripts/device/grpo-gpu.sh eval
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W/parts" "$OUT"
for d in .dc-gguf-a .dc-gguf-b; do [ -d $d ] && cp $d/part-* "$W/parts/"; done
if [ -d .dc-bin ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
WASM=plugins/target/wasm32-wasip2/release/sample_size.wasm
if [ -f "$WASM" ]; then mkdir -p "$W/plugins" && cp "$WASM" "$W/plugins/"; fi
M="$W/medrl"
D="$W/sample-size-data"
summary() { # metrics.jsonl -> the lines worth reading
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ("step", "loss", "eval_loss", "reward", "val_reward", "val_accuracy", "kl", "entropy", "clip_frac",
        "response_len", "time_generate_s", "time_logprob_s", "time_reward_s", "time_update_s", "time_step_s",
        "rollout_tokens_per_s", "tokens_per_s", "memory_mb")
for r in rows:
    print({k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keys if k in r})
steps = [r for r in rows if "time_step_s" in r]
if steps:
    n = len(steps)
    avg = lambda k: sum(r[k] for r in steps) / n
    print(f"mean over {n} steps: step {avg('time_step_s'):.2f}s = generate {avg('time_generate_s'):.2f}s"
          f" + log-probs {avg('time_logprob_s'):.2f}s (reward {avg('time_reward_s'):.3f}s, overlapped)"
          f" + update {avg('time_update_s'):.2f}s; rollout {avg('rollout_tokens_per_s'):.0f} tokens/s;"
          f" response {avg('response_len'):.0f} tokens")
PY
}
MODE=${1:-grpo}; shift || true
case "$MODE" in
stage)
  ls -la "$W" "$W/parts"
  ;;
sft)
  cat "$W"/parts/part-* > "$W/smollm2.gguf"
  echo "$(cat .dc-gguf-b/sha256)  $W/smollm2.gguf" | sha256sum -c -
  [ -d "$W/smollm2" ] || "$M" model import-gguf "$W/smollm2.gguf" "$W/smollm2" > /dev/null
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  mkdir -p "$D"
  "$M" data synth sample-size --n 2000 --seed 11 --verl --split train --output "$D/train.parquet"
  "$M" data synth sample-size --n 2000 --seed 13 --verl --split train --output "$D/grpo.parquet"
  "$M" data synth sample-size --n 128 --seed 12 --verl --split test --output "$D/test.jsonl"
  echo "== full SFT on 2000 generated problems with worked solutions"
  rm -rf "$W/sft-ss"
  /usr/bin/time -f "sft wall %es" "$M" sft --config configs/sft-smollm2-sample-size.yaml model="$W/smollm2" output_dir="$W/sft-ss" data.dataset_dir="$D" > "$OUT/sft-outcome.json"
  cat "$OUT/sft-outcome.json"
  summary "$W/sft-ss/metrics.jsonl" | awk 'NR % 10 == 1 || /eval_loss/' | tail -30
  cp "$W/sft-ss/metrics.jsonl" "$OUT/sft-metrics.jsonl"; cp "$W/sft-ss/plots/loss.svg" "$OUT/sft-loss.svg"
  ;;
grpo)
  # The device tool stops a call after 10 minutes: the run is bounded a little below that and
  # checkpoints every few steps, so `RESUME=1 ... grpo` in the next call continues it.
  echo "== GRPO from the SFT model, sample-size reward plugin"
  if [ "${RESUME:-0}" = 1 ]; then resume=--resume; else rm -rf "$W/grpo-ss"; resume=; fi
  set +e
  /usr/bin/time -f "grpo wall %es" timeout "${GRPO_TIMEOUT:-540}" "$M" grpo --config configs/grpo-smollm2-sample-size.yaml $resume model="$W/sft-ss/final" output_dir="$W/grpo-ss" \
    data.dataset_dir="$D" "rewards=[{plugin: $W/plugins/sample_size.wasm, config: {tolerance: 0.2, correct_score: 1.1, format_penalty: -2.0}, on_failure: drop}]" "$@" \
    > "$OUT/grpo-outcome.json"
  echo "grpo exit status $?"
  set -e
  cat "$OUT/grpo-outcome.json"
  summary "$W/grpo-ss/metrics.jsonl"
  cp "$W/grpo-ss/metrics.jsonl" "$OUT/grpo-metrics.jsonl"; cp "$W"/grpo-ss/plots/*.svg "$OUT/" 2>/dev/null || true
  ;;
eval)
  # Held-out accuracy of the SFT and GRPO models through `medrl eval` (the task's accuracy rule:
  # the sample-size plugin's `accuracy` component), on the generated test problems. The working
  # copy on the device is disposable, so the task's bundled test split is replaced in place.
  cp "$D/test.jsonl" tasks/trialpanorama-sample-size/data/test.jsonl
  for m in sft-ss grpo-ss; do
    "$M" eval --model "$W/$m/final" --task trialpanorama-sample-size --split test --device cuda --dtype bf16 \
      --batch-size 64 --max-new-tokens 320 --out "$W/eval-$m" --quiet > /dev/null
    cp "$W/eval-$m/metrics.json" "$OUT/eval-$m-metrics.json"
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], {k: m[k] for k in m if k in ('accuracy','reward','n','examples')})" "$W/eval-$m/metrics.json" "$m"
  done
  ;;
esac
