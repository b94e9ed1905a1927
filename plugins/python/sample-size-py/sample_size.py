"""TrialPanorama sample-size reward, reference formula, in plain Python.

Pure module (no medrl imports): the component glue in app.py calls it, and so does the CPython
baseline of the benchmark (scripts/bench_reward.py), so both measure the same code.
"""
import json
import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_MARKERS = ("<think>", "</think>", "<answer>", "</answer>")


def strip_to_assistant(text):
    """The reference's split: after `Assistant:` if present, else the ChatML header, else the
    Llama-3 header (a fixed priority, not the earliest header)."""
    for h in ("Assistant:", "<|im_start|>assistant", "<|start_header_id|>assistant<|end_header_id|>"):
        if h in text:
            return text.split(h, 1)[1]
    return text


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
    """float(ground_truth["target"]), None where the reference returns -2; raises (as the
    reference does) when the ground truth is not a dict."""
    t = ground_truth.get("target")
    if t is None:
        return None
    try:
        return float(t)
    except (TypeError, ValueError):
        return None


def score(response, ground_truth, tolerance=0.2, correct=1.1, penalty=-2.0, invalid_target=-2.0):
    """Returns (score, {"format": f, "accuracy": a})."""
    t = target_of(ground_truth)
    text = strip_to_assistant(response)
    ok = format_ok(text)
    if t is None:
        return invalid_target, {"format": 1.0 if ok else 0.0, "accuracy": 0.0}
    if not ok:
        return penalty, {"format": 0.0, "accuracy": 0.0}
    answers = _ANSWER.findall(text)
    pred = None
    if answers:
        m = _NUMBER.search(answers[-1].strip().replace(",", "").replace(" ", ""))
        pred = float(m.group(0)) if m else None
    hit = pred is not None and (1 - tolerance) * t <= pred <= (1 + tolerance) * t
    return (correct if hit else 0.0), {"format": 1.0, "accuracy": 1.0 if hit else 0.0}


def parse_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return text
