"""Read a run's TensorBoard event files with the `tensorboard` package and check that every
numeric field of every metrics.jsonl line is there, at its step, with its value (float32).

argv: RUN_DIR. Prints "ok: N scalars"; raises on a mismatch. Run by tests/sft.rs.
"""

import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
acc = EventAccumulator(run + "/tensorboard", size_guidance={"scalars": 0})
acc.Reload()
tags = set(acc.Tags()["scalars"])


def flat(prefix, v, out):
    if isinstance(v, bool):
        out[prefix] = float(v)
    elif isinstance(v, (int, float)):
        if math.isfinite(v):
            out[prefix] = float(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            tag = f"{prefix}/{k}" if prefix else k
            if tag != "step":
                flat(tag, x, out)


n = 0
lines = [json.loads(l) for l in open(run + "/metrics.jsonl") if l.strip()]
for line in lines:
    want = {}
    flat("", line, want)
    for tag, value in want.items():
        assert tag in tags, f"{tag} missing from the event files ({sorted(tags)[:10]}...)"
        events = [e for e in acc.Scalars(tag) if e.step == line["step"]]
        assert events, f"{tag} has no event at step {line['step']}"
        got = events[-1].value
        assert math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-6 * max(1.0, abs(value))), f"{tag} at step {line['step']}: {got} != {value}"
        n += 1
# Nothing beyond the metrics file (a resume rewrites the events from the kept lines).
steps = {l["step"] for l in lines}
for tag in tags:
    extra = [e.step for e in acc.Scalars(tag) if e.step not in steps]
    assert not extra, f"{tag}: events at steps {extra} that metrics.jsonl does not have"
print(f"ok: {n} scalars")
