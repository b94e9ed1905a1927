#!/usr/bin/env bash
# On the GPU machine: where an SFT training step's GPU time goes, kernel by kernel.
#
# Runs `medrl bench sft --phases` on the Qwen2.5-0.5B shape (the issue's benchmark), then the
# same step with 2 decoder layers under Nsight Compute, timing every kernel once
# (`gpu__time_duration`), and prints the kernels ranked by total time. Two layers keep the
# profile to ~1,000 kernels (ncu replays each one); per-layer kernels are the same as with 24.
#
# Carry .dc-bin (scripts/device/stage.sh). Output in $OUT: ops-agreement-*.json,
# train-agreement-*.json, phases.json, bench-medrl.json, ncu-raw.csv, ncu-top.txt.
#   bash scripts/device/sft-profile.sh [agree|phases|ncu|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/device-env.sh
W=${WORK:-/tmp/medrl-device}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
if [ -d .dc-bin ]; then xz -dc .dc-bin/medrl.xz > "$W/medrl" && chmod +x "$W/medrl"; fi
M="$W/medrl"
NCU=${NCU:-/usr/local/cuda/bin/ncu}
what=${1:-all}
# SHAPE, SEQ, MB and EXTRA (e.g. EXTRA="--mode lora --checkpointing every_layer") choose the step.
common=(--shape ${SHAPE:-qwen2.5-0.5b} --seq ${SEQ:-1024} --micro-batch ${MB:-8} --device cuda --dtype bf16 ${EXTRA:-})

if [[ $what == agree || $what == all ]]; then
  # The fused kernels against the CPU f64 primitive-op path, op by op, then whole training
  # steps (tiny model) against the CPU; with the kernels off for comparison.
  for dt in bf16 f32; do
    for fk in 1 0; do
      echo "== ops-agreement dtype=$dt MEDRL_FUSED_KERNELS=$fk"
      MEDRL_FUSED_KERNELS=$fk "$M" bench ops-agreement --device cuda --dtype $dt | tee "$OUT/ops-agreement-$dt-$fk.json" | python3 -c '
import json,sys; r=json.load(sys.stdin)
for k,v in r["ops"].items(): print(f"  {k:14s} value {v["value_rel_err"]:.2e}  grads " + " ".join(f"{g:.2e}" for g in v["grad_rel_err"]))'
    done
  done
  for dt in f32 bf16; do
    echo "== train-agreement tiny, $dt"
    "$M" bench train-agreement --device cuda --dtype $dt | tee "$OUT/train-agreement-$dt.json" | grep -E "rel_diff|losses" | head -8
  done
fi

if [[ $what == phases || $what == all ]]; then
  echo "== phases, 24 layers"
  "$M" bench sft "${common[@]}" --steps 4 --warmup 2 --phases --json "$OUT/phases.json"
  echo "== same, fused kernels off (MEDRL_FUSED_KERNELS=0)"
  MEDRL_FUSED_KERNELS=0 "$M" bench sft "${common[@]}" --steps 4 --warmup 2 --phases
  echo "== without --phases (no synchronization between phases)"
  "$M" bench sft "${common[@]}" --steps 6 --warmup 2 --json "$OUT/bench-medrl.json"
fi

if [[ $what == ncu || $what == all ]]; then
  echo "== ncu, 2 layers, 1 warm-up + 1 timed step"
  "$NCU" --metrics gpu__time_duration.sum --csv --page raw \
    "$M" bench sft "${common[@]}" --layers 2 --steps 1 --warmup 1 > "$OUT/ncu-raw.csv" 2> "$OUT/ncu-stderr.txt" || true
  python3 - "$OUT/ncu-raw.csv" > "$OUT/ncu-top.txt" <<'PY'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
# ncu prints log lines before the CSV header; find it.
start = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
head = rows[start]; data = rows[start + 2:]  # the line after the header holds units
ki, ti = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
unit = rows[start + 1][ti]
scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit, 1.0)
# The second half of the launches is the timed step (warm-up first); keep it.
data = data[len(data) // 2:]
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in data:
    if len(r) <= max(ki, ti): continue
    name = r[ki].split("(")[0][:90]
    tot[name] += float(r[ti].replace(",", "")) * scale; cnt[name] += 1
allt = sum(tot.values())
print(f"timed step (approx. second half of launches): {len(data)} kernels, {allt/1e3:.2f} ms GPU time")
for name, t in sorted(tot.items(), key=lambda kv: -kv[1])[:45]:
    print(f"{t/1e3:9.3f} ms {100*t/allt:5.1f}% {cnt[name]:6d}x  {name}")
PY
  cat "$OUT/ncu-top.txt"
  tail -5 "$OUT/ncu-stderr.txt"
fi
