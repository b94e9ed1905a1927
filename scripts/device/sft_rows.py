"""One line per `medrl bench sft` / bench_sft_torch.py JSON line: what the device scripts print
at their end (sft-ladder.sh, layer-backward.sh).  python3 scripts/device/sft_rows.py ROWS.jsonl"""
import json
import sys

try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except OSError:
    rows = []
for r in rows:
    print(f"{r.get('impl', 'medrl'):>20} {r['shape']:>12} {r['mode']:>5} ckpt={r.get('checkpointing', '?'):<11} "
          f"{r.get('optimizer_state', '-'):>4}/{r.get('master_weights', '-'):<4} backward={r.get('layer_backward', '-'):<8} seq={r['seq']} mb={r['micro_batch']} "
          f"{r['tokens_per_s']:>8.0f} tok/s  MFU {r.get('mfu', float('nan')):.3f}  step {r['median_step_s']:.3f}s  peak alloc {r.get('peak_allocated_mb') or 0:>7.0f} MiB  "
          f"in use {r['peak_memory_mb']:>7.0f} MiB  build {r.get('build_s', 0):.0f}s  loss {r['losses'][0]:.4f}->{r['losses'][-1]:.4f}")
