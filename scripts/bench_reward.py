"""CPython baseline for `medrl reward bench`: scores the same samples with the same Python
function the Python plugin uses (plugins/python/sample-size-py/sample_size.py).

Usage: python3 scripts/bench_reward.py SAMPLES.jsonl [ROUNDS]   (written by `medrl reward bench --write-samples`)
Only the scoring loop is timed, not JSON loading (so, unlike the plugins, it does not parse
ground_truth JSON per sample). Best and median of ROUNDS (default 5) are reported.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "python", "sample-size-py"))
import sample_size  # noqa: E402


def main():
    rows = [json.loads(line) for line in open(sys.argv[1])]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    pairs = [(r["response"], r["ground_truth"]) for r in rows]
    n = len(pairs)
    us = []
    for _ in range(rounds):
        t = time.perf_counter()
        total = 0.0
        for response, gt in pairs:
            total += sample_size.score(response, gt)[0]
        us.append((time.perf_counter() - t) * 1e6 / n)
    s = sorted(us)
    print(f"   CPython {sys.version.split()[0]} (1 thread): {n} samples, best {s[0]:.2f} µs/sample, median {s[len(s) // 2]:.2f} "
          f"({rounds} rounds: {' '.join(f'{u:.2f}' for u in us)}); sum of rewards: {total}")


if __name__ == "__main__":
    main()
