#!/usr/bin/env bash
# On the GPU machine: GRPO on the sample-size task with a random-init SmolLM2-135M-shape model
# (bf16; the tiny preset's tokenizer), synchronous and asynchronous, with GPU memory sampled
# every 0.5 s and debug logs: synchronous vs asynchronous step time (issue 21), and where a step
# runs out of memory or stalls.
# Carry .dc-bin and .dc-plugins:  bash scripts/device/rl-diag.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/device-env.sh ] && . scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W/models" "$W/plugins" "$OUT"
[ -f .dc-bin/medrl.xz ] && xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"
cp .dc-plugins/*.wasm "$W/plugins/" 2>/dev/null
M="$W/medrl"; D="$W/ss"; mkdir -p "$D"
PY=python3; "$PY" -c "import torch" 2>/dev/null || PY=/opt/torch/.venv/bin/python
dir="$W/models/smollm2-135m"
if [ ! -f "$dir/model.safetensors" ]; then
  "$M" model init --arch llama --preset tiny "$W/models/donor" > /dev/null
  "$PY" scripts/device/rollout_baseline.py --make-model scripts/device/shapes/smollm2-135m.json --model "$dir" --dtype bf16
  cp "$W/models/donor/"{tokenizer.json,tokenizer_config.json,generation_config.json} "$dir/"
fi
"$M" data synth sample-size --n 512 --seed 13 --verl --split train --output "$D/grpo.parquet" > /dev/null
run() { # name timeout extra...
  local name=$1 t=$2; shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/mem-$name.csv" &
  local smi=$!
  rm -rf "$W/$name"
  ( sleep $((t - 12)); pid=$(pgrep -f "output_dir=$W/$name" | head -1)
    if [ -n "$pid" ]; then
      for tk in /proc/$pid/task/*; do echo "$(cat $tk/comm) $(cat $tk/wchan) $(awk '{print $3}' $tk/stat)"; done > "$OUT/threads-$name.txt"
      command -v gdb > /dev/null && timeout 20 gdb -p "$pid" -batch -ex "thread apply all bt 10" > "$OUT/gdb-$name.txt" 2>&1
    fi ) &
  timeout -s INT "$t" "$M" -v grpo --config configs/grpo-smollm2-sample-size.yaml model="$dir" output_dir="$W/$name" data.dataset_dir="$D" "data.eval=[]" \
    data.max_prompt_len=2048 training.eval_every=0 training.save_every=0 \
    "rewards=[{plugin: $W/plugins/sample_size.wasm, config: {tolerance: 0.2, correct_score: 1.1, format_penalty: -2.0}, on_failure: drop}]" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  echo "== $name exit $?  peak MiB $(sort -n "$OUT/mem-$name.csv" | tail -1)"
  kill $smi 2>/dev/null
  grep -v "^\s*[0-9]*: <unknown>" "$OUT/$name.err" | grep -iE "error|panic|out of memory" | head -5
  grep -E "DEBUG|INFO" "$OUT/$name.err" | tail -4 | cut -c1-300
  cp "$W/$name/metrics.jsonl" "$OUT/$name-metrics.jsonl" 2>/dev/null
  python3 - "$W/$name/metrics.jsonl" <<'PY'
import json, sys
try: rows = [json.loads(l) for l in open(sys.argv[1])]
except OSError: rows = []
for r in rows:
    print({k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in ("step", "time_generate_s", "time_logprob_s", "time_update_s", "time_rollout_wait_s", "time_step_s", "memory_mb", "response_len", "rollout_tokens_per_s") if k in r})
PY
}
STEPS=${STEPS:-6}
run sync ${EACH:-150} training.max_steps=$STEPS
run async ${EACH:-150} training.max_steps=$STEPS async=true
python3 - "$OUT/sync-metrics.jsonl" "$OUT/async-metrics.jsonl" <<'PY'
import json, sys
def mean_step(p):
    try: rows = [json.loads(l) for l in open(p)]
    except OSError: return None
    steps = [r["time_step_s"] for r in rows if "time_step_s" in r][1:]
    return sum(steps) / len(steps) if steps else None
s, a = mean_step(sys.argv[1]), mean_step(sys.argv[2])
print(f"mean step time from step 2: sync {s}, async {a}" + (f", async/sync {a / s:.3f}" if s and a else ""))
PY
# The device tool brings back at most 8 files: everything else travels in one archive.
tar czf "$OUT/rl-diag.tgz" -C "$OUT" --exclude rl-diag.tgz . 2>/dev/null
find "$OUT" -maxdepth 1 -type f ! -name rl-diag.tgz ! -name '*-metrics.jsonl' -delete
