"""CPython baseline for `medrl reward bench`: scores the same samples with the same Python
function the Python plugin uses (plugins/python/sample-size-py/sample_size.py).

Usage: python3 scripts/bench_reward.py SAMPLES.jsonl   (written by `medrl reward bench --write-samples`)
Only the scoring loop is timed, not JSON loading.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "python", "sample-size-py"))
import sample_size  # noqa: E402


def main():
    rows = [json.loads(line) for line in open(sys.argv[1])]
    pairs = [(r["response"], r["ground_truth"]) for r in rows]
    t = time.perf_counter()
    total = 0.0
    for response, gt in pairs:
        total += sample_size.score(response, gt)[0]
    dt = time.perf_counter() - t
    n = len(pairs)
    print(f"  CPython {sys.version.split()[0]} (1 thread): {n} samples in {dt:.3f} s = {dt * 1e6 / n:.2f} µs/sample; sum of rewards: {total}")


if __name__ == "__main__":
    main()
