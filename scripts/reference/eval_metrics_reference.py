#!/usr/bin/env python3
"""Expected values for medrl's evaluation metrics (core/crates/eval/src/metrics), from the reference packages.

This is the independent implementation medrl is checked against: it never imports medrl code.

  python scripts/reference/eval_metrics_reference.py [INPUTS.json] [OUTPUT.json]

Defaults: tests/fixtures/eval_metrics_inputs.json -> tests/fixtures/eval_metrics_expected.json.
Needs sacrebleu, rouge-score and lifelines at the versions pinned in scripts/setup.sh (which
installs them into .venv-ref/). tests/metrics.rs compares medrl with the committed output, and runs
this script live when those packages are importable (MEDRL_REQUIRE_PYREF=1 makes that mandatory).

Where each expected value comes from:
- BLEU: sacrebleu.corpus_bleu(hyps, [refs]) and sacrebleu.sentence_bleu(hyp, [ref]), defaults;
  the 13a tokenization of every segment is recorded too, so a mismatch points at the tokenizer.
- ROUGE: rouge_score.rouge_scorer.RougeScorer(['rouge1','rouge2','rougeL'], use_stemmer=False)
  .score(ref, hyp) per pair; mean = plain mean over pairs. The CJK character variant uses the
  same RougeScorer with a tokenizer written here from the definition in docs/metrics.md.
- C-index: lifelines.utils.concordance_index(times, -risk, events) (lifelines: higher score =
  longer survival; medrl takes risk, higher = worse).
- Brier score and cumulative/dynamic AUC at a horizon: no package computes these unweighted
  variants, so they are written out here in plain Python from their definitions.
- Accuracy, majority vote (collections.Counter, ties to the earliest first occurrence), curves.
- Percentiles: numpy.percentile (linear), the rule medrl's bootstrap interval uses.
"""
import collections
import json
import os
import re
import sys
from importlib.metadata import version

import numpy as np
import sacrebleu
from lifelines.utils import concordance_index
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures"))
ROUGE_TYPES = ["rouge1", "rouge2", "rougeL"]


class CjkCharTokenizer:
    """medrl's RougeTokenizer::CjkChars, from its definition: fold full-width ASCII forms and the
    ideographic space, lowercase, then one token per CJK character and one per [a-z0-9]+ run."""

    CJK = "\u3040-\u30ff\u3005\u3007\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
    TOKEN_RE = re.compile("[" + CJK + "]|[a-z0-9]+")

    def tokenize(self, text):
        folded = "".join(
            chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else (" " if c == "\u3000" else c) for c in text
        )
        return self.TOKEN_RE.findall(folded.lower())


def score_dict(s):
    return {"precision": s.precision, "recall": s.recall, "fmeasure": s.fmeasure}


def rouge_block(pairs, scorer):
    per_pair = []
    for p in pairs:
        s = scorer.score(p["ref"], p["hyp"])  # rouge-score's order: (target, prediction)
        per_pair.append({t: score_dict(s[t]) for t in ROUGE_TYPES})
    mean = {
        t: {k: sum(pp[t][k] for pp in per_pair) / len(per_pair) for k in ("precision", "recall", "fmeasure")}
        for t in ROUGE_TYPES
    }
    return {"pairs": per_pair, "mean": mean}


def bleu_dict(b):
    return {
        "score": b.score,
        "counts": list(b.counts),
        "totals": list(b.totals),
        "precisions": list(b.precisions),
        "bp": b.bp,
        "sys_len": b.sys_len,
        "ref_len": b.ref_len,
    }


def text_block(pairs):
    hyps = [p["hyp"] for p in pairs]
    refs = [p["ref"] for p in pairs]
    tok = Tokenizer13a()
    default = rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=False)
    cjk = rouge_scorer.RougeScorer(ROUGE_TYPES, tokenizer=CjkCharTokenizer())
    return {
        # sacreBLEU tokenizes s.rstrip() (BLEU._preprocess_segment).
        "tokens_13a": [[tok(h.rstrip()), tok(r.rstrip())] for h, r in zip(hyps, refs)],
        "rouge_tokens": [[default._tokenizer.tokenize(h), default._tokenizer.tokenize(r)] for h, r in zip(hyps, refs)],
        "corpus_bleu": bleu_dict(sacrebleu.corpus_bleu(hyps, [refs])),
        "sentence_bleu": [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs)],
        "rouge": rouge_block(pairs, default),
        "rouge_cjk_chars": rouge_block(pairs, cjk),
    }


def brier_at(times, events, prob, t):
    used = [(p, 1.0 if ti > t else 0.0) for ti, e, p in zip(times, events, prob) if ti > t or e]
    return {"score": sum((p - y) ** 2 for p, y in used) / len(used), "n_used": len(used)}


def auc_at(times, events, risk, t):
    cases = [r for ti, e, r in zip(times, events, risk) if e and ti <= t]
    controls = [r for ti, r in zip(times, risk) if ti > t]
    wins = sum(1.0 if c > k else 0.5 if c == k else 0.0 for c in cases for k in controls)
    return {"auc": wins / (len(cases) * len(controls)), "n_cases": len(cases), "n_controls": len(controls)}


def majority(answers):
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None
    first = {}
    for i, a in enumerate(answers):
        if a is not None:
            first.setdefault(a, i)
    best = max(counts.values())
    return min((a for a in counts if counts[a] == best), key=first.get)


def accuracy_block(acc):
    golds, cands = acc["golds"], acc["candidates"]
    max_n = min(len(c) for c in cands)
    curve = []
    for n in range(1, max_n + 1):
        best = sum(any(x == g for x in c[:n]) for c, g in zip(cands, golds)) / len(golds)
        maj = sum(majority(c[:n]) == g for c, g in zip(cands, golds)) / len(golds)
        curve.append({"n": n, "best_of_n": best, "majority": maj})
    first = [c[0] for c in cands]
    return {
        "exact_match_first": sum(p == g for p, g in zip(first, golds)) / len(golds),
        "majority_votes": [majority(c) for c in cands],
        "extract_failure_rate_all": sum(x is None for c in cands for x in c) / sum(len(c) for c in cands),
        "curve": curve,
    }


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(FIXTURES, "eval_metrics_inputs.json")
    dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(FIXTURES, "eval_metrics_expected.json")
    with open(src, encoding="utf-8") as f:
        inp = json.load(f)
    en, zh = inp["text"]["english"], inp["text"]["chinese"]
    sv = inp["survival"]
    times, events, risk = sv["times"], sv["events"], sv["risk"]
    out = {
        "_comment": "Written by scripts/reference/eval_metrics_reference.py from eval_metrics_inputs.json; do not edit.",
        "versions": {p: version(p) for p in ("sacrebleu", "rouge-score", "lifelines", "numpy")},
        "english": text_block(en),
        "chinese": text_block(zh),
        "all_corpus_bleu": bleu_dict(sacrebleu.corpus_bleu([p["hyp"] for p in en + zh], [[p["ref"] for p in en + zh]])),
        "survival": {
            "c_index": float(concordance_index(times, [-r for r in risk], events)),
            "brier": {str(h): brier_at(times, events, sv["surv_prob"][str(h)], h) for h in sv["horizons"]},
            "auc": {str(h): auc_at(times, events, risk, h) for h in sv["horizons"]},
        },
        "accuracy": accuracy_block(inp["accuracy"]),
        "percentile": [float(np.percentile(inp["percentile"]["values"], q)) for q in inp["percentile"]["q"]],
    }
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, dst)
    print(f"wrote {dst}: corpus BLEU en {out['english']['corpus_bleu']['score']:.4f}, "
          f"zh {out['chinese']['corpus_bleu']['score']:.4f}, C-index {out['survival']['c_index']:.6f}")


if __name__ == "__main__":
    main()
