"""TrialPanorama sample-size reward, reference formula, in plain Python.

Pure module (no medrl imports): the component glue in app.py calls it, and so does the CPython
baseline of the benchmark (scripts/bench_reward.py), so both measure the same code.
"""
import json
import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_HEADERS = ("<|start_header_id|>assistant<|end_header_id|>", "<|im_start|>assistant", "Assistant:")
_MARKERS = ("<think>", "</think>", "<answer>", "</answer>")


def strip_to_assistant(text):
    best = None
    for h in _HEADERS:
        i = text.find(h)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, len(h))
    return text if best is None else text[best[0] + best[1]:]


def format_ok(text):
    last = 0
    for m in _MARKERS:
        if text.count(m) != 1:
            return False
        at = text.find(m)
        if at < last:
            return False
        last = at
    return True


def target_of(ground_truth):
    t = ground_truth.get("target", ground_truth) if isinstance(ground_truth, dict) else ground_truth
    if isinstance(t, bool):
        return -2.0
    try:
        return float(t)
    except (TypeError, ValueError):
        return -2.0


def score(response, ground_truth, tolerance=0.2, correct=1.1, penalty=-2.0):
    """Returns (score, {"format": f, "accuracy": a})."""
    text = strip_to_assistant(response)
    if not format_ok(text):
        return penalty, {"format": 0.0, "accuracy": 0.0}
    answers = _ANSWER.findall(text)
    pred = None
    if answers:
        m = _NUMBER.search(answers[-1].strip().replace(",", "").replace(" ", ""))
        pred = float(m.group(0)) if m else None
    t = target_of(ground_truth)
    hit = pred is not None and (1 - tolerance) * t <= pred <= (1 + tolerance) * t
    return (correct if hit else 0.0), {"format": 1.0, "accuracy": 1.0 if hit else 0.0}


def parse_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return text
