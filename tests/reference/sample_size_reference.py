#!/usr/bin/env python3
"""Independent reference for `medrl data synth sample-size` (core/src/data/synth/sample_size.rs).

Writes tests/fixtures/sample_size_cases.json: a fixed test set of two-arm designs (two means,
two proportions, time to event; several alphas, powers and dropout rates) with the expected
answers computed here with SciPy's normal quantile (scipy.stats.norm.ppf) and the textbook
formulas, cross-checked for two means against statsmodels' NormalIndPower (which solves the
power equation numerically, including the negligible opposite tail, so it agrees to ~1e-3).

- two means:       n = ceil(2 (z_a + z_b)^2 sd^2 / delta^2) per group
- two proportions: n = ceil((z_a sqrt(2 pbar (1 - pbar)) + z_b sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2)
- time to event:   D = ceil((z_a + z_b)^2 / (0.25 ln(HR)^2)) events, N = ceil(D / P(event))
- dropout d (means, proportions): per group ceil(n / (1 - d)); total = 2 x per group.
  Quotients n / (1 - d) and D / P(event) are rounded up in exact decimal arithmetic (fractions),
  so 315 / 0.9 is 350.

tests/tasks.rs compares the Rust generator's solver with the committed file and reruns this
script (`.venv-ref/bin/python`, or $MEDRL_PYREF_PYTHON) to check the file is what it writes.

Usage: sample_size_reference.py [OUTPUT]   (default: tests/fixtures/sample_size_cases.json)
"""
import itertools
import json
import math
import os
from fractions import Fraction
import sys
from importlib.metadata import version

from scipy.stats import norm
from statsmodels.stats.power import NormalIndPower

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def cases():
    out = []
    alphas_powers = [(0.05, 0.8), (0.05, 0.9), (0.01, 0.9), (0.1, 0.8), (0.05, 0.95), (0.01, 0.85)]
    for (sd, delta), (alpha, power), dropout in itertools.product(
        [(1.0, 0.5), (10.0, 4.0), (15.5, 6.2), (2.5, 1.3), (24.0, 10.0)], alphas_powers[:4], [0.0, 0.15]
    ):
        out.append({"design": "two_means", "sd": sd, "delta": delta, "alpha": alpha, "power": power, "dropout": dropout})
    for (p1, p2), (alpha, power), dropout in itertools.product(
        [(0.4, 0.6), (0.08, 0.04), (0.3, 0.24), (0.55, 0.7), (0.12, 0.25)], alphas_powers[1:5], [0.0, 0.1]
    ):
        out.append({"design": "two_proportions", "p1": p1, "p2": p2, "alpha": alpha, "power": power, "dropout": dropout})
    for (hr, pe), (alpha, power) in itertools.product([(0.7, 0.5), (0.75, 0.7), (0.8, 0.8), (0.62, 0.45), (0.85, 0.6)], alphas_powers):
        out.append({"design": "time_to_event", "hazard_ratio": hr, "event_probability": pe, "alpha": alpha, "power": power, "dropout": 0.0})
    return out


def solve(c):
    za = float(norm.ppf(1 - c["alpha"] / 2))
    zb = float(norm.ppf(c["power"]))
    if c["design"] == "two_means":
        raw = 2 * (za + zb) ** 2 * c["sd"] ** 2 / c["delta"] ** 2
        sm = NormalIndPower().solve_power(effect_size=c["delta"] / c["sd"], alpha=c["alpha"], power=c["power"], ratio=1.0, alternative="two-sided")
        assert abs(sm - raw) / raw < 1e-3, (c, sm, raw)
        n = ceil_ratio(math.ceil(raw), 1 - Fraction(str(c["dropout"])))
        return za, zb, raw, n, 2 * n
    if c["design"] == "two_proportions":
        p1, p2 = c["p1"], c["p2"]
        pbar = (p1 + p2) / 2
        num = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
        raw = num * num / (p1 - p2) ** 2
        n = ceil_ratio(math.ceil(raw), 1 - Fraction(str(c["dropout"])))
        return za, zb, raw, n, 2 * n
    raw = (za + zb) ** 2 / (0.25 * math.log(c["hazard_ratio"]) ** 2)
    d = math.ceil(raw)
    return za, zb, raw, d, ceil_ratio(d, Fraction(str(c["event_probability"])))


def ceil_ratio(n, rate):
    """ceil(n / rate) with rate an exact decimal."""
    return math.ceil(Fraction(n) / rate)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "sample_size_cases.json")
    rows = []
    for i, c in enumerate(cases()):
        za, zb, raw, n, total = solve(c)
        if abs(raw - round(raw)) < 1e-6:
            continue  # the rounded answer would hinge on the last bits
        rows.append(dict(c, id=i, expected={"z_a": za, "z_b": zb, "raw": raw, "per_group_or_events": n, "total": total}))
    doc = {
        "generated_by": "tests/reference/sample_size_reference.py",
        "versions": {"scipy": version("scipy"), "statsmodels": version("statsmodels")},
        "cases": rows,
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(rows)} cases to {out_path}")


if __name__ == "__main__":
    main()
