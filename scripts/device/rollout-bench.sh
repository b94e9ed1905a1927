#!/usr/bin/env bash
# On the GPU machine: rollout (sampled generation) throughput and batch-1 decode latency of
# `medrl bench rollout` against PyTorch + transformers `generate` (scripts/device/rollout_baseline.py,
# eager DynamicCache and static cache + torch.compile), on random-init models of the
# Qwen2.5-0.5B and SmolLM2-135M shapes (scripts/device/shapes/*.json), bf16.
#
# Throughput: 64 prompts x 8 samples (512 sequences), 128-token prompts, 512 new tokens, EOS
# ignored, temperature 1, top_p 1, top_k off. Latency: 1 prompt of 128 tokens, greedy, 256 new
# tokens, ms per generated token without the prefill.
#
# Every JSON line goes to $OUT/rollout.jsonl (medrl's tagged with impl/kind/model where it left
# them out), the full log to $OUT/rollout-bench.log; a table closes the run. Each step has its own
# `timeout` and a failure or timeout is recorded as a line with "error" and does not stop the
# others. All steps share a time budget (BUDGET_S, default 530 s) so that one device call of 600 s
# holds the whole run; steps that no longer fit are skipped (and recorded as such).
# peak_GiB is not like for like: medrl reports its memory pool's high-water mark (its KV block
# pool is sized by --memory-fraction), the baseline torch.cuda.max_memory_allocated.
#
# Carry .dc-bin (scripts/device/stage.sh: xz of the CUDA binary) or point M at a binary:
#   bash scripts/device/rollout-bench.sh
# Knobs: M (medrl binary, default $WORK/medrl = /tmp/medrl-device/medrl), OUT, WORK, PY (python
# with torch + transformers), BUDGET_S, MODELS (shape names, default "qwen2.5-0.5b smollm2-135m"),
# STEPS (default "medrl dynamic static-compile"), the caps T_MEDRL, T_DYNAMIC, T_COMPILE (s), and
# KEEP_JSONL=1 (append to $OUT/rollout.jsonl instead of starting it anew).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f scripts/device-env.sh ] && . scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT" "$W/models"
if [ -f .dc-bin/medrl.xz ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
M=${M:-$W/medrl}
PY=${PY:-python3}
if ! "$PY" -c "import torch, transformers" 2>/dev/null && [ -x /opt/torch/.venv/bin/python ]; then
  PY=/opt/torch/.venv/bin/python
fi
BUDGET_S=${BUDGET_S:-530}
MODELS=${MODELS:-"qwen2.5-0.5b smollm2-135m"}
STEPS=${STEPS:-"medrl dynamic static-compile"}
T_MEDRL=${T_MEDRL:-120}
T_DYNAMIC=${T_DYNAMIC:-180}
T_COMPILE=${T_COMPILE:-240}
PROMPTS=64 SAMPLES=8 PROMPT_LEN=128 NEW_TOKENS=512 LAT_NEW_TOKENS=256
J="$OUT/rollout.jsonl"
LOG="$OUT/rollout-bench.log"
# KEEP_JSONL=1 appends to an existing rollout.jsonl (e.g. a second call with the same OUT that
# adds the PyTorch numbers to medrl's: the table then has both and their ratios).
[ "${KEEP_JSONL:-0}" = 1 ] || : > "$J"
exec > >(tee -a "$LOG") 2>&1
T0=$SECONDS

left() { echo $((BUDGET_S - (SECONDS - T0))); }

# record IMPL MODE MODEL KIND MESSAGE: a JSON line for a step that produced no measurement.
record() {
  "$PY" - "$J" "$@" <<'PYEOF' || echo "{\"impl\": \"$1\", \"mode\": \"$2\", \"model\": \"$3\", \"kind\": \"$4\", \"error\": \"(unquoted) $5\"}" >> "$J"
import json, sys
path, impl, mode, model, kind, msg = sys.argv[1:7]
line = json.dumps({"impl": impl, "mode": mode, "model": model, "kind": kind, "error": msg})
print(line)
open(path, "a").write(line + "\n")
PYEOF
}

# step NAME CAP CMD...: run CMD under `timeout` (CAP seconds, less if the budget is short);
# sets STEP_RC; never fails the script.
step() {
  local name=$1 cap=$2; shift 2
  local l=$(( $(left) - 20 ))  # leave time for the table
  STEP_RC=0
  if (( l < 30 )); then
    echo "== skip $name: time budget spent ($(( SECONDS - T0 ))s of ${BUDGET_S}s)"
    STEP_RC=125
    return 0
  fi
  (( cap > l )) && cap=$l
  echo "== $name (timeout ${cap}s, at $(( SECONDS - T0 ))s)"
  local t=$SECONDS
  timeout --kill-after=15 "$cap" "$@" || STEP_RC=$?
  echo "-- $name: exit $STEP_RC after $(( SECONDS - t ))s"
  return 0
}

why() {  # a step's exit status in words
  case $1 in
    0) echo "ok" ;; 124|137) echo "timed out" ;; 125) echo "skipped: time budget spent" ;; *) echo "exit status $1" ;;
  esac
}

echo "rollout-bench: medrl=$M python=$PY budget=${BUDGET_S}s models=[$MODELS] steps=[$STEPS]"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" || true
HAVE_MEDRL=0
if [ -x "$M" ] && "$M" --help > /dev/null 2>&1; then HAVE_MEDRL=1; else echo "!! no runnable medrl at $M: medrl steps are skipped"; fi

# ---- (a) models: random-init folders of the two shapes ----------------------------------------
# `medrl model init` writes only its built-in presets (tiny, small) today; if it learns --config,
# it is used, otherwise rollout_baseline.py --make-model writes config.json (the shape file) and
# model.safetensors (bf16, transformers' random init). medrl's loader wants a tokenizer: the tiny
# preset's tokenizer files from medrl are copied in (a stub one from --make-model otherwise).
DONOR="$W/models/.tokenizer-donor"
if (( HAVE_MEDRL )) && [ ! -f "$DONOR/tokenizer.json" ]; then
  "$M" model init --arch llama --preset tiny "$DONOR" > /dev/null || echo "!! medrl model init (tokenizer donor) failed"
fi
for shape in $MODELS; do
  dir="$W/models/$shape" cfg="scripts/device/shapes/$shape.json"
  if [ -f "$dir/model.safetensors" ] && [ -f "$dir/config.json" ]; then echo "== $shape: reusing $dir"; continue; fi
  made=0
  if (( HAVE_MEDRL )) && "$M" model init --help 2>/dev/null | grep -q -- '--config'; then
    args=(model init --config "$cfg")
    if "$M" model init --help | grep -q -- '--dtype'; then args+=(--dtype bf16); fi
    if "$M" model init --help | grep -q -- '--output'; then args+=(--output "$dir"); else args+=("$dir"); fi
    step "medrl ${args[*]}" 180 "$M" "${args[@]}"
    [ "$STEP_RC" = 0 ] && [ -f "$dir/model.safetensors" ] && made=1
  fi
  if (( ! made )); then
    step "make $shape (python)" 120 "$PY" scripts/device/rollout_baseline.py --make-model "$cfg" --model "$dir" --dtype bf16
    [ "$STEP_RC" = 0 ] || { record setup init "$shape" init "making the model failed: $(why $STEP_RC)"; rm -rf "$dir"; continue; }
  fi
done
for shape in $MODELS; do
  dir="$W/models/$shape"
  [ -f "$dir/config.json" ] || continue
  if [ -f "$DONOR/tokenizer.json" ]; then
    cp "$DONOR/tokenizer.json" "$DONOR/tokenizer_config.json" "$dir/"
    if [ -f "$DONOR/generation_config.json" ]; then cp "$DONOR/generation_config.json" "$dir/"; fi
  fi
  ls -la "$dir"
done

# ---- (b) measurements ------------------------------------------------------------------------
# medrl's output: `--json` prints one compact JSON object on stdout (this also reads indented
# ones). Each object becomes one line of $J, with impl/kind/model filled in where it has none.
medrl_run() {  # medrl_run SHAPE KIND ARGS...
  local shape=$1 kind=$2; shift 2
  local raw="$OUT/medrl-$shape-$kind.out"
  step "medrl bench rollout $shape $kind" "$T_MEDRL" \
    bash -c '"$@" > "$0"' "$raw" "$M" bench rollout --model "$W/models/$shape" "$@" --device cuda --dtype bf16 --json
  cat "$raw" 2>/dev/null || true
  local n
  n=$("$PY" - "$J" "$shape" "$kind" "$raw" <<'PYEOF'
import json, sys
out, shape, kind = sys.argv[1:4]
found = []
for path in sys.argv[4:]:
    try:
        text = open(path).read()
    except OSError:
        continue
    dec, i = json.JSONDecoder(), 0
    while True:
        i = text.find("{", i)
        if i < 0:
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = end
with open(out, "a") as f:
    for obj in found:
        obj.setdefault("impl", "medrl")
        obj.setdefault("kind", kind)
        if obj.get("model") != shape:
            obj["model_arg"] = obj.get("model")
            obj["model"] = shape
        f.write(json.dumps(obj) + "\n")
print(len(found))
PYEOF
  ) || n=0
  if [ "$STEP_RC" != 0 ] || [ "${n:-0}" = 0 ]; then
    record medrl - "$shape" "$kind" "medrl bench rollout: $(why "$STEP_RC"), ${n:-0} JSON objects (see $(basename "$raw") and the log)"
  fi
}

py_run() {  # py_run SHAPE MODE CAP
  local shape=$1 mode=$2 cap=$3
  count() { grep -F "\"mode\": \"$mode\", \"model\": \"$shape\"" "$J" | grep -c -F "\"kind\": \"$1\"" || true; }
  local t0 l0
  t0=$(count throughput) l0=$(count latency)
  step "transformers $mode $shape" "$cap" "$PY" scripts/device/rollout_baseline.py --model "$W/models/$shape" \
    --mode "$mode" --what both --prompts $PROMPTS --samples $SAMPLES --prompt-len $PROMPT_LEN \
    --new-tokens $NEW_TOKENS --latency-new-tokens $LAT_NEW_TOKENS --device cuda --dtype bf16 --out "$J"
  # A measurement that failed inside the script has its own line with "error"; one that a
  # timeout or crash cut off has none: record it.
  [ "$(count throughput)" -gt "$t0" ] || record transformers "$mode" "$shape" throughput "rollout_baseline.py: $(why "$STEP_RC") before this measurement was written"
  [ "$(count latency)" -gt "$l0" ] || record transformers "$mode" "$shape" latency "rollout_baseline.py: $(why "$STEP_RC") before this measurement was written"
}

have_step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# Cheapest and most wanted first, so that a short budget drops the slow compile runs last.
if have_step medrl; then
  for shape in $MODELS; do
    [ -f "$W/models/$shape/model.safetensors" ] || continue
    if (( ! HAVE_MEDRL )); then
      for k in throughput latency; do record medrl - "$shape" $k "no runnable medrl binary at $M"; done
      continue
    fi
    medrl_run "$shape" throughput --prompts $PROMPTS --samples $SAMPLES --prompt-len $PROMPT_LEN --new-tokens $NEW_TOKENS
    medrl_run "$shape" latency --latency --prompt-len $PROMPT_LEN --new-tokens $LAT_NEW_TOKENS
  done
fi
for mode in dynamic static-compile; do
  have_step "$mode" || continue
  cap=$T_DYNAMIC; [ "$mode" = static-compile ] && cap=$T_COMPILE
  for shape in $MODELS; do
    [ -f "$W/models/$shape/model.safetensors" ] || continue
    py_run "$shape" "$mode" "$cap"
  done
done

# ---- (c) table -------------------------------------------------------------------------------
echo "== results ($(( SECONDS - T0 ))s), $J"
"$PY" - "$J" <<'PYEOF' || true
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        rows.append(json.loads(line))
    except ValueError:
        pass

def tps(r):
    for k in ("tokens_per_s", "generated_tokens_per_s", "gen_tokens_per_s", "decode_tokens_per_s", "throughput_tokens_per_s"):
        if isinstance(r.get(k), (int, float)):
            return float(r[k])
    return None

def mspt(r):
    for k in ("ms_per_token", "decode_ms_per_token", "ms_per_decode_token"):
        if isinstance(r.get(k), (int, float)):
            return float(r[k])
    t = tps(r)
    return 1000.0 / t if t else None

def label(r):
    return f"{r.get('impl', '?')} {r.get('mode', '')}".strip()

def num(x, width, prec, suffix=""):
    text = f"{x:.{prec}f}{suffix}" if isinstance(x, (int, float)) else "-"
    return text.rjust(width)

for r in rows:
    if "error" in r and r.get("kind") not in ("throughput", "latency"):
        print(f"{r.get('model', '?')}: {r.get('impl', '?')} {r.get('kind', '?')}: {r['error']}")
print(f"{'model':14} {'kind':10} {'implementation':29} {'tokens/s':>10} {'ms/token':>9} {'wall_s':>7} {'warmup_s':>8} {'peak_GiB':>8} {'medrl speed / this':>18}")
for model in dict.fromkeys(r.get("model") for r in rows):
    for kind in ("throughput", "latency"):
        sel = [r for r in rows if r.get("model") == model and r.get("kind") == kind]
        if not sel:
            continue
        ok = [r for r in sel if "error" not in r]
        medrl = next((r for r in ok if r.get("impl") == "medrl"), None)
        for r in sel:
            if "error" in r:
                print(f"{model:14} {kind:10} {label(r):29} {'error: ' + str(r['error'])[:90]}")
                continue
            if kind == "throughput":
                ratio = tps(medrl) / tps(r) if medrl and tps(medrl) and tps(r) else None
                ms = None
            else:
                ms = mspt(r)
                ratio = ms / mspt(medrl) if medrl and mspt(medrl) and ms else None
            if r is medrl:
                ratio = None
            speed = tps(r) if kind == "throughput" else (1000.0 / ms if ms else None)
            peak = r.get("peak_gib", r.get("peak_memory_gib"))
            if peak is None and isinstance(r.get("peak_memory_mb"), (int, float)):
                peak = r["peak_memory_mb"] / 1024
            print(f"{model:14} {kind:10} {label(r):29} {num(speed, 10, 1)} {num(ms, 9, 2)} {num(r.get('wall_s'), 7, 2)} "
                  f"{num(r.get('warmup_s'), 8, 1)} {num(peak, 8, 2)} {num(ratio, 18, 2, 'x')}")
        if medrl is None:
            print(f"{model:14} {kind:10} (no medrl number: no ratio)")
        elif (tps(medrl) if kind == "throughput" else mspt(medrl)) is None:
            print(f"{model:14} {kind:10} (medrl's line has no {'tokens/s' if kind == 'throughput' else 'ms/token'} field this table knows; its keys: {', '.join(sorted(medrl))})")
PYEOF
echo "rollout-bench: done in $(( SECONDS - T0 ))s"
