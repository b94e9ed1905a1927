#!/usr/bin/env python3
"""Independent Python reimplementation of the seed tasks' reward formulas, and the generator of
the exactness fixtures `tests/fixtures/rewards/<plugin>.jsonl` that `tests/rewards.rs` checks the
WebAssembly plugins against (to 1e-9, score and every component).

The formulas follow the public reference code (TrialPanorama train/rlvr/reward_func/
study_search.py; HuatuoGPT-o1's get_reward_o1; HCC-STAR verl/utils/reward_score/hcc_reasoner.py)
with the same Python calls where they matter (re with DOTALL, str(), json.loads, ast.literal_eval,
bytes.decode('unicode_escape'), float(), sorted), written independently of the Rust plugins. The
medical-dialogue tutorial publishes no reward code; its formula is the one documented in
plugins/dialogue-quality. Standard library only.

    python3 tests/reference/rewards.py                 # rewrite tests/fixtures/rewards/
    python3 tests/reference/rewards.py --out DIR       # write elsewhere (the live test does)

Fixture line: {"name", "config", "sample": {prompt, response, ground_truth, metadata,
data_source}, "expected": {"score", "components"}} plus, for medical-verifier, "judge":
{"prompt": verifier input, "p": P(True)} (the test judge answers p for exactly that prompt).
study-search retrieves from `study-search-corpus.jsonl` with the host's in-memory index
semantics (score = number of query terms contained in the lowercased text; ties by id).
"""

import argparse
import ast
import hashlib
import json
import math
import os
import re
import string

# ----------------------------------------------------------------------------------------------
# shared parsing, as the reference reward files do it

# ----------------------------------------------------------------------------------------------
# study search (TrialPanorama)

def search_index(corpus, query, top_k):
    """The host's in-memory test index: documents containing more query terms rank first."""
    terms = [t.lower() for t in query.split()]
    hits = []
    for doc_id, text in corpus:
        low = text.lower()
        n = sum(1 for t in terms if t in low)
        if n > 0:
            hits.append((-n, doc_id))
    hits.sort()
    return [doc_id for _, doc_id in hits[:top_k]]


def study_search_reward(response, ground_truth, corpus, config):
    prefix = config.get("prefix", "<answer>")
    top_k = config.get("top_k", 100)
    penalty = config.get("format_penalty", -2.0)
    bonus = config.get("bonus", 0.1)
    # The reference's first step: ground_truth.get raises (AttributeError) for a non-dict.
    raw_relevant = ground_truth.get("relevant_pmids", [])
    # As the reference: prefix first, then the header split (fixed priority, not earliest).
    text = prefix + response
    for header in ("Assistant:", "<|im_start|>assistant", "<|start_header_id|>assistant<|end_header_id|>"):
        if header in text:
            text = text.split(header, 1)[1].strip()
            break

    ok = (
        text.count("<answer>") == 1
        and text.count("</answer>") == 1
        and "<think>" not in text
        and "</think>" not in text
        and text.find("<answer>") < text.find("</answer>")
    )
    if not ok:
        return penalty, {"format": 0.0, "recall": 0.0, "retrieved": 0.0}
    matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    query = matches[-1].strip() if matches else ""
    if not query:
        return 0.0, {"format": 1.0, "recall": 0.0, "retrieved": 0.0}

    retrieved = search_index(corpus, query, top_k)[:top_k]
    if not retrieved:
        # The reference computes recall (and reads relevant_pmids) only when something came back.
        return 0.0, {"format": 1.0, "recall": 0.0, "retrieved": 0.0}
    # calculate_recall_at_k: `if not relevant_ids: return 0.0`, then set(relevant_ids): a
    # string's characters, a dict's keys, a list's elements (lists and dicts inside are
    # unhashable), TypeError for other numbers and True.
    relevant = []
    if raw_relevant:
        for p in list(raw_relevant):
            if isinstance(p, (list, dict)):
                raise TypeError("unhashable type: " + type(p).__name__)
            p = p.strip() if isinstance(p, str) else str(p)
            if p not in relevant:
                relevant.append(p)
    if relevant:
        recall = len(set(relevant) & set(retrieved)) / len(relevant)
    else:
        recall = 0.0
    score = bonus + recall if recall > 0 else 0.0
    return score, {"format": 1.0, "recall": recall, "retrieved": float(len(retrieved))}


# ----------------------------------------------------------------------------------------------
# medical verifier (HuatuoGPT-o1)

VERIFIER_TEMPLATE = (
    "<Model Response>\n{}\n</Model Response>\n\n<Reference Answer>\n{}\n</Reference Answer>\n\n"
    "Your task is to evaluate the model response by comparing it to the reference answer. "
    "If the model response is correct and aligns with the reference answer, output \"True\" . "
    "If it is incorrect or fails to select the correct option (if options are provided), "
    "output \"False\" . {}"
)


def verifier_answer(ground_truth):
    """The reference answer text; raises for a missing one (HuatuoGPT-o1 drops rows without a
    "Ground-True Answer", so there is nothing to score) and for one that is not text or a
    number."""
    if isinstance(ground_truth, dict):
        v = ground_truth.get("answer", ground_truth.get("Ground-True Answer"))
    else:
        v = ground_truth
    if v is None:
        raise KeyError("no reference answer")
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise TypeError("reference answer must be text")
    return v if isinstance(v, str) else json.dumps(v)


def verifier_input(response, ground_truth, config):
    """None when the format is wrong, else the verifier's input text (raises for a ground
    truth without a usable answer, whatever the response)."""
    answer = verifier_answer(ground_truth)
    if response.count("## Final Response\n\n") != 1 or response.count("## Thinking") != 1:
        return None
    final = response.split("## Final Response\n\n")[1].strip()
    return VERIFIER_TEMPLATE.format(final, answer, config.get("eos", "<|endoftext|>"))


def medical_verifier_reward(response, ground_truth, p, config):
    if verifier_input(response, ground_truth, config) is None:
        return config.get("format_score", 0.0), {"format": 0.0, "verifier_p": 0.0, "correct": 0.0}
    correct = p > config.get("threshold", 0.4)
    score = config.get("correct_score", 1.0) if correct else config.get("incorrect_score", 0.1)
    return score, {"format": 1.0, "verifier_p": p, "correct": 1.0 if correct else 0.0}


# ----------------------------------------------------------------------------------------------
# dialogue quality (the tutorial; formula documented in plugins/dialogue-quality)

CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x3040, 0x30FF), (0xAC00, 0xD7AF)]
CJK_PUNCT = "，。！？；：、“”‘’（）《》【】…—·「」『』"


def is_cjk(ch):
    o = ord(ch)
    return any(a <= o <= b for a, b in CJK_RANGES)


def dialogue_units(text, strip_punct):
    out, word = [], ""
    for ch in text:
        if ch.isspace() or (strip_punct and (ch in string.punctuation or ch in CJK_PUNCT)):
            if word:
                out.append(word.lower())
            word = ""
        elif is_cjk(ch):
            if word:
                out.append(word.lower())
            word = ""
            out.append(ch)
        else:
            word += ch
    if word:
        out.append(word.lower())
    return out


def lcs(a, b):
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def dialogue_reward(response, ground_truth, config):
    w = config.get("weights", {})
    lo = config.get("min_units", 20)
    hi = config.get("max_units", 300)
    n_rep = config.get("repetition_n", 2)
    strip_punct = config.get("strip_punctuation", True)
    if isinstance(ground_truth, dict):
        keys = [k for k in ("reference", "answer", "output", "response") if k in ground_truth]
        if not keys:
            raise KeyError("no reference answer")
        reference = ground_truth[keys[0]]
    else:
        reference = ground_truth
    if not isinstance(reference, str):
        raise TypeError("the reference answer must be a string")

    text = response
    if config.get("strip_think", True) and "</think>" in text:
        text = text.split("</think>")[-1]
    text = text.strip()
    units = dialogue_units(text, strip_punct)
    ref_units = dialogue_units(reference, strip_punct)

    n = len(units)
    if n == 0:
        length = 0.0
    elif n < lo:
        length = n / lo
    elif n <= hi:
        length = 1.0
    else:
        length = hi / n

    common = lcs(units, ref_units) if units and ref_units else 0
    if common == 0:
        rouge = 0.0
    else:
        p, r = common / len(units), common / len(ref_units)
        rouge = 2 * p * r / (p + r)

    if n < n_rep:
        rep = 0.0
    else:
        grams = [tuple(units[i:i + n_rep]) for i in range(n - n_rep + 1)]
        rep = 1.0 - len(set(grams)) / len(grams)

    body = text.rstrip("\"'”’)）」』]")
    complete = 1.0 if body and body[-1] in ".!?。！？…" else 0.0

    score = (w.get("length", 0.25) * length + w.get("rouge_l", 0.5) * rouge
             + w.get("completeness", 0.25) * complete - w.get("repetition", 0.5) * rep)
    return score, {"length": length, "rouge_l": rouge, "repetition_penalty": rep, "completeness": complete}


# ----------------------------------------------------------------------------------------------
# HCC-ClinReasoner

PROCESS_TAGS = ["ps", "child_pugh", "metastasis", "cancer_thrombus", "num_tumor", "tumor_size"]
FORMAT_TAGS = PROCESS_TAGS + ["treatment", "treatment_not_recommended", "hard_check", "thinking", "answer"]
REPEATABLE = ("treatment", "treatment_not_recommended")
YEARS = [("survival_1yr", 12), ("survival_3yr", 36), ("survival_5yr", 60)]

# Semantics of HCC-STAR's verl/utils/reward_score/hcc_reasoner.py (compute_score): the response
# is stripped; the ground truth is re-read with json.loads; the hard-check blocks go through
# bytes.decode('unicode_escape'); the survival block falls back to ast.literal_eval.


def hcc_gt(gt):
    """The ground truth dict; None when it is not JSON (P = T = S = 0); raises for other JSON."""
    text = json.dumps(gt, ensure_ascii=False) if isinstance(gt, dict) else str(gt).strip()
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(d, dict):
        raise TypeError("ground truth is JSON but not an object")
    return d


def first(tag, text):
    return re.search(r"<%s>(.*?)</%s>" % (tag, tag), text, re.DOTALL)


def hcc_length(x, lo=1536, hi=2048, w=128):
    def smooth(t):
        return 0.5 - 0.5 * math.cos(math.pi * t)

    def low(v):
        return 0.2 * (v / lo)

    def mid(v):
        return v / hi

    def high(v):
        return 0.2 * (hi / v)

    if x <= lo - w:
        return low(x)
    if x < lo + w:
        t = (x - (lo - w)) / (2 * w)
        return low(x) * (1 - smooth(t)) + mid(x) * smooth(t)
    if x <= hi - w:
        return mid(x)
    if x < hi + w:
        t = (x - (hi - w)) / (2 * w)
        return mid(x) * (1 - smooth(t)) + high(x) * smooth(t)
    return high(x)


def hcc_process(text, gt):
    if gt is None:
        return 0.0
    score = 0.0
    for tag in PROCESS_TAGS:
        m = first(tag, text)
        if m and m.group(1).strip() == str(gt.get(tag, "")):
            score += 1.0 / 6.0
    return score


def hcc_format(text):
    score = 0.0
    for tag in FORMAT_TAGS:
        o, c = "<%s>" % tag, "</%s>" % tag
        if o in text and c in text:
            if tag in REPEATABLE:
                score += 1.0 / 11.0
            else:
                score += (1.0 / 11.0) * (1.0 / max(text.count(o), text.count(c)))
    return score


def float_or_none(v):
    try:
        f = float(v)
    except (ValueError, TypeError):
        return None
    return None if f != f else f


def hcc_treatment_json(text):
    """The parsed block, None without one or when json.loads fails; raises on decode errors."""
    m = first("hard_check_treatment", text)
    if not m:
        return None
    decoded = m.group(1).strip().encode().decode("unicode_escape")
    try:
        return json.loads(decoded.replace("'", '"'))
    except json.JSONDecodeError:
        return None


def hcc_recommendations(block):
    """[(key, stripped key)] of the top 3 valid positive scores."""
    if not isinstance(block, dict) or not isinstance(block.get("scores"), dict):
        return []
    valid = []
    for k, v in block["scores"].items():
        f = float_or_none(v) if v is not None else None
        if f is not None and f > 0:
            valid.append((k, f))
    valid.sort(key=lambda kv: kv[1], reverse=True)
    return [(k, k.strip()) for k, _ in valid[:3]]


def hcc_treatment(text, gt):
    if gt is None or "top3_treatments" not in gt:
        return 0.0
    truth = set([entry["treatment"] for entry in gt["top3_treatments"]][:3])
    block = hcc_treatment_json(text)
    if block is None:
        return 0.0
    recs = hcc_recommendations(block)
    dcg = sum(1.0 / math.log2(i + 2) for i, (_, name) in enumerate(recs) if name in truth)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(truth), 3)))
    return dcg / ideal if ideal > 0 else 0.0


def to_int(x):
    if x is None:
        return None
    try:
        return int(float(x))
    except Exception:
        return None


def flag01(x):
    if x is None:
        return None
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, (int, float)):
        return 0 if x == 0 else 1 if x == 1 else None
    word = str(x).strip().lower()
    return 0 if word in ("0", "false") else 1 if word in ("1", "true") else None


def hcc_survival_json(text):
    m = first("hard_check_survival", text)
    if not m:
        return None
    raw = m.group(1).strip()
    try:
        obj = json.loads(raw.encode().decode("unicode_escape"))
    except Exception:
        try:
            obj = ast.literal_eval(raw)
        except Exception:
            return None
    if not isinstance(obj, dict):
        return None
    if "survival_months" not in obj and isinstance(obj.get("survival"), dict):
        obj = obj["survival"]
    return obj


def hcc_truth(gt):
    event = flag01(gt.get("if_death"))
    base = gt["survival_months"] if isinstance(gt.get("survival_months"), dict) else gt
    months = to_int(base.get("survival_months"))
    flags = []
    for key, m in YEARS:
        f = flag01(base.get(key))
        if f is None and months is not None and event is not None:
            if event == 1:
                f = 0 if months < m else 1
            elif months >= m:
                f = 1
        flags.append(f)
    return event, months, flags


def hcc_survival(obj, gt):
    if obj is None or gt is None:
        return 0.0
    event, months, flags = hcc_truth(gt)
    predicted = [flag01(obj.get(key)) for key, _ in YEARS]
    flag_score = 1.0 if all(p == t for p, t in zip(predicted, flags) if t is not None) else 0.0
    pm = to_int(obj.get("survival_months"))
    if pm is None:
        month_score = 0.0
    elif event == 1:
        month_score = 0.0 if months is None else math.exp(-abs(pm - months) / 12.0)
    elif event == 0:
        tc = months
        if tc is None:
            passed = [m for (_, m), f in zip(YEARS, flags) if f == 1]
            tc = max(passed) if passed else None
        month_score = 0.5 if tc is None else math.exp(-max(0.0, float(tc) - float(pm)) / 6.0)
    else:
        month_score = 0.5
    return max(0.0, min(1.0, 0.5 * flag_score + 0.5 * month_score))


# --- extended components: the rule tables are data (defaults mirror the plugin's documentation)

PRESENT = ["present", "yes", "true", 1]
DEFAULT_GUIDELINE = {
    "stages": [
        {"stage": "D", "when": [[{"field": "ps", "op": ">", "value": 2}],
                                [{"field": "child_pugh", "op": "in", "value": ["C"]}]]},
        {"stage": "C", "when": [[{"field": "cancer_thrombus", "op": "in", "value": PRESENT}],
                                [{"field": "metastasis", "op": "in", "value": PRESENT}],
                                [{"field": "ps", "op": ">=", "value": 1}]]},
        {"stage": "0", "when": [[{"field": "num_tumor", "op": "==", "value": 1},
                                 {"field": "tumor_size", "op": "<", "value": 20},
                                 {"field": "child_pugh", "op": "in", "value": ["A"]}]]},
        {"stage": "A", "when": [[{"field": "num_tumor", "op": "==", "value": 1},
                                 {"field": "tumor_size", "op": "<=", "value": 50}],
                                [{"field": "num_tumor", "op": "<=", "value": 3},
                                 {"field": "tumor_size", "op": "<=", "value": 30}]]},
        {"stage": "B"},
    ],
    "allowed": {
        "0": ["Ablation", "Surgical_resection"],
        "A": ["Surgical_resection", "Ablation", "Liver_transplantation"],
        "B": ["Liver_transplantation", "Interventional_therapy", "TACE", "Systemic_anti-tumor_therapy"],
        "C": ["Systemic_anti-tumor_therapy"],
        "D": ["Symptomatic_support", "Palliative_care"],
    },
}
DEFAULT_CONTRAINDICATIONS = [
    {"treatments": ["Surgical_resection", "Liver_transplantation"],
     "when": [[{"field": "child_pugh", "op": "in", "value": ["C"]}], [{"field": "ps", "op": ">", "value": 2}]]},
    {"treatments": ["TACE", "TACE_plus_ablation", "Interventional_therapy", "Interventional_therapy_plus_ablation",
                    "Interventional_therapy_plus_systemic_anti-tumor_therapy"],
     "when": [[{"field": "child_pugh", "op": "in", "value": ["C"]}]]},
]

NUMERIC = re.compile(r"^[+-]?[0-9]+(\.[0-9]+)?$")


def as_number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and NUMERIC.match(v.strip()):
        return float(v.strip())
    return None


def loose_eq(a, b):
    x, y = as_number(a), as_number(b)
    if x is not None and y is not None:
        return x == y

    def norm(v):
        if isinstance(v, str):
            return v.strip().lower()
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v, separators=(",", ":"))

    return norm(a) == norm(b)


def holds(cond, patient):
    got = patient.get(cond["field"])
    if got is None:
        return False
    op, want = cond["op"], cond["value"]
    if op in (">", ">=", "<", "<="):
        x, y = as_number(got), as_number(want)
        if x is None or y is None:
            return False
        return {">": x > y, ">=": x >= y, "<": x < y, "<=": x <= y}[op]
    if op == "==":
        return loose_eq(got, want)
    if op == "!=":
        return not loose_eq(got, want)
    hit = any(loose_eq(got, w) for w in want)
    return hit if op == "in" else not hit


def rule_applies(rule, patient):
    if "when" not in rule:
        return True
    return any(all(holds(c, patient) for c in alt) for alt in rule["when"])


def bclc_stage(table, patient):
    for rule in table["stages"]:
        if rule_applies(rule, patient):
            return rule["stage"]
    return None


def hcc_extended(text, surv, gt, config):
    try:
        block = hcc_treatment_json(text)
    except UnicodeDecodeError:
        block = None
    recs = hcc_recommendations(block)
    names = [name for _, name in recs]
    patient = gt if gt is not None else {}
    table = config.get("guideline", DEFAULT_GUIDELINE)
    stage = bclc_stage(table, patient)
    allowed = table["allowed"].get(stage, []) if stage is not None else []
    guideline = sum(1 for r in names if r in allowed) / len(names) if names and stage is not None else 0.0

    bad = set()
    for rule in config.get("contraindications", DEFAULT_CONTRAINDICATIONS):
        if rule_applies(rule, patient):
            bad |= {t for t in rule["treatments"] if t in names}
    safety = 0.0 - len(bad)

    min_chars = config.get("evidence_min_chars", 10)
    ev = block.get("evidence") if isinstance(block, dict) else None
    ev = ev if isinstance(ev, dict) else {}
    with_reason = [k for k, _ in recs if isinstance(ev.get(k), str) and len(ev[k].strip()) >= min_chars]
    evidence = len(with_reason) / len(recs) if recs else 0.0

    errors = []
    if gt is not None:
        _, _, flags = hcc_truth(gt)
        for (key, _), truth in zip(YEARS, flags):
            if truth is None:
                continue
            p = float_or_none(surv.get(key)) if surv is not None and surv.get(key) is not None else None
            errors.append(1.0 if p is None else (min(max(p, 0.0), 1.0) - truth) ** 2)
    calibration = 1.0 - sum(errors) / len(errors) if errors else 0.0
    return {"guideline": guideline, "safety": safety, "evidence": evidence, "calibration": calibration}


def hcc_reward(response, ground_truth, config):
    """(score, components), or raises where the reference raises."""
    w = config.get("weights", {})
    lcfg = config.get("length", {})
    text = str(response).strip()
    gt = hcc_gt(ground_truth)
    L = hcc_length(len(text), lcfg.get("min", 1536), lcfg.get("max", 2048), lcfg.get("window", 128))
    P = hcc_process(text, gt)
    F = hcc_format(text)
    T = hcc_treatment(text, gt)
    surv = hcc_survival_json(text)
    S = hcc_survival(surv, gt)
    comps = {"length": L, "process": P, "format": F, "treatment": T, "survival": S}
    total = (w.get("length", 1.0) * L + w.get("process", 1.0) * P + w.get("format", 1.0) * F
             + w.get("treatment", 1.0) * T + w.get("survival", 1.5) * S)
    if config.get("mode", "reference") == "extended":
        ext = hcc_extended(text, surv, gt, config)
        total += (w.get("guideline", 0.5) * ext["guideline"] + w.get("safety", 1.0) * ext["safety"]
                  + w.get("evidence", 0.5) * ext["evidence"] + w.get("calibration", 0.5) * ext["calibration"])
        comps.update(ext)
    return total, comps


# ----------------------------------------------------------------------------------------------
# cases

def sample(response, ground_truth, prompt="", data_source=""):
    return {"prompt": prompt, "response": response, "ground_truth": ground_truth, "metadata": {},
            "data_source": data_source}


CORPUS = [
    ("1001", "Metformin versus placebo in type 2 diabetes: a randomized controlled trial"),
    ("1002", "Metformin and lifestyle intervention for diabetes prevention"),
    ("1003", "SGLT2 inhibitors in heart failure with reduced ejection fraction"),
    ("1004", "Dapagliflozin in heart failure: randomized trial of SGLT2 inhibition"),
    ("1005", "Empagliflozin cardiovascular outcomes in type 2 diabetes"),
    ("1006", "Aspirin for primary prevention of cardiovascular events"),
    ("1007", "Statins for primary prevention in elderly patients: randomized trial"),
    ("1008", "Sorafenib in advanced hepatocellular carcinoma"),
    ("1009", "Atezolizumab plus bevacizumab in unresectable hepatocellular carcinoma"),
    ("1010", "TACE versus TARE for intermediate stage hepatocellular carcinoma"),
    ("1011", "Radiofrequency ablation versus surgical resection for small hepatocellular carcinoma"),
    ("1012", "Vitamin D supplementation and fracture risk: randomized trial"),
    ("1013", "Exercise therapy for chronic low back pain"),
    ("1014", "Cognitive behavioural therapy for insomnia in adults"),
    ("1015", "二甲双胍治疗2型糖尿病的随机对照试验"),
    ("1016", "肝细胞癌 射频消融 与 手术切除 的比较"),
    ("1017", "Remdesivir for hospitalized COVID-19: randomized trial"),
    ("1018", "Dexamethasone in hospitalized patients with COVID-19"),
    ("1019", "Influenza vaccination in heart failure patients"),
    ("1020", "Tranexamic acid in trauma patients with bleeding"),
]
CORPUS += [("2%03d" % i, "filler record %d randomized trial of placebo" % i) for i in range(120)]


def study_search_cases():
    gt_diab = {"relevant_pmids": ["1001", "1002", "1005", "1015"], "review_pmid": "9001"}
    gt_hf = {"relevant_pmids": [1003, 1004, "1019"], "review_pmid": 9002}
    gt_hcc = {"relevant_pmids": ["1008", "1009", "1010", "1011", "1016"], "review_pmid": "9003"}
    gt_none = {"relevant_pmids": [], "review_pmid": "9004"}
    cases = [
        ("query_only", "metformin diabetes</answer>", gt_diab, {}),
        ("query_with_spaces", "   metformin   </answer>", gt_diab, {}),
        ("query_newlines", "metformin\ndiabetes\n</answer>", gt_diab, {}),
        ("uppercase_terms", "METFORMIN Diabetes</answer>", gt_diab, {}),
        ("heart_failure", "heart failure SGLT2</answer>", gt_hf, {}),
        ("heart_failure_int_ids", "dapagliflozin heart</answer>", gt_hf, {}),
        ("hcc_query", "hepatocellular carcinoma</answer>", gt_hcc, {}),
        ("hcc_chinese", "肝细胞癌 射频消融</answer>", gt_hcc, {}),
        ("chinese_diabetes", "二甲双胍</answer>", gt_diab, {}),
        ("chinese_no_hit", "高血压</answer>", gt_diab, {}),
        ("no_relevant_hit", "insomnia therapy</answer>", gt_diab, {}),
        ("no_hits_at_all", "zzzz qqqq</answer>", gt_diab, {}),
        ("empty_query", "</answer>", gt_diab, {}),
        ("blank_query", "  \n </answer>", gt_diab, {}),
        ("missing_close", "metformin diabetes", gt_diab, {}),
        ("empty_response", "", gt_diab, {}),
        ("repeated_open", "<answer>metformin</answer>", gt_diab, {}),
        ("two_answers", "metformin</answer> <answer>diabetes</answer>", gt_diab, {}),
        ("two_closes", "metformin</answer></answer>", gt_diab, {}),
        ("think_tag", "<think>plan</think>metformin</answer>", gt_diab, {}),
        ("think_open_only", "<think>metformin</answer>", gt_diab, {}),
        ("think_close_only", "metformin</think></answer>", gt_diab, {}),
        ("close_before_open_prefix_off", "</answer>metformin<answer>", gt_diab, {"prefix": ""}),
        ("prefix_off_valid", "<answer>metformin diabetes</answer>", gt_diab, {"prefix": ""}),
        ("prefix_off_missing", "metformin diabetes</answer>", gt_diab, {"prefix": ""}),
        ("assistant_header_drops_prefix", "User: find trials\nAssistant: metformin</answer>", gt_diab, {}),
        ("assistant_header_with_answer", "User: find trials\nAssistant: <answer>metformin</answer>", gt_diab, {}),
        ("im_start_header", "<|im_start|>assistant\n<answer>metformin diabetes</answer>", gt_diab, {}),
        ("llama3_header", "<|start_header_id|>assistant<|end_header_id|>\n\n<answer>SGLT2</answer>", gt_hf, {}),
        ("header_priority", "<|im_start|>assistant\n<answer>x</answer> Assistant: <answer>metformin</answer>", gt_diab, {}),
        ("trailing_text", "metformin</answer> done", gt_diab, {}),
        ("no_relevant_list", "metformin</answer>", gt_none, {}),
        ("duplicate_relevant", "metformin</answer>", {"relevant_pmids": ["1001", "1001", 1002]}, {}),
        ("relevant_with_spaces", "metformin</answer>", {"relevant_pmids": [" 1001 ", "1002"]}, {}),
        ("top_k_1", "metformin diabetes</answer>", gt_diab, {"top_k": 1}),
        ("top_k_2", "metformin diabetes</answer>", gt_diab, {"top_k": 2}),
        ("top_k_3_hf", "heart failure sglt2 dapagliflozin</answer>", gt_hf, {"top_k": 3}),
        ("filler_flood_top100", "randomized trial placebo</answer>", gt_diab, {}),
        ("filler_flood_top5", "randomized trial placebo</answer>", gt_diab, {"top_k": 5}),
        ("filler_flood_metformin", "metformin randomized trial placebo</answer>", gt_diab, {}),
        ("covid", "covid-19 hospitalized</answer>", {"relevant_pmids": ["1017", "1018"]}, {}),
        ("covid_partial", "remdesivir</answer>", {"relevant_pmids": ["1017", "1018"]}, {}),
        ("bonus_config", "remdesivir</answer>", {"relevant_pmids": ["1017", "1018"]}, {"bonus": 0.5}),
        ("penalty_config", "no tags", {"relevant_pmids": ["1017"]}, {"format_penalty": -1.0}),
        ("boolean_query", "(metformin OR empagliflozin) AND diabetes</answer>", gt_diab, {}),
        ("quoted_query", "\"heart failure\"[tiab]</answer>", gt_hf, {}),
        ("mesh_query", "heart failure[MeSH] AND SGLT2</answer>", gt_hf, {}),
        ("substring_match", "metf</answer>", gt_diab, {}),
        ("repeated_terms", "trial trial trial metformin</answer>", gt_diab, {}),
        ("tabs", "\tmetformin\t</answer>", gt_diab, {}),
        ("nested_answer_text", "metformin <b>x</b></answer>", gt_diab, {}),
        ("aspirin", "aspirin prevention</answer>", {"relevant_pmids": ["1006", "1007"]}, {}),
        ("statins_elderly", "statins elderly</answer>", {"relevant_pmids": ["1006", "1007"]}, {}),
        ("tranexamic", "tranexamic acid trauma</answer>", {"relevant_pmids": ["1020"]}, {}),
        ("all_relevant", "hepatocellular carcinoma 肝细胞癌</answer>", gt_hcc, {}),
        ("vitamin_d", "vitamin d fracture</answer>", {"relevant_pmids": ["1012", "1099"]}, {}),
        ("missing_relevant_list", "metformin</answer>", {"review_pmid": "9001"}, {}),
        ("answer_in_prefix_only", "", gt_diab, {"prefix": "<answer>metformin</answer>"}),
        # Invalid or odd ground truths, read as the reference reads them.
        ("gt_string_raises", "metformin</answer>", "1001", {}),
        ("gt_null_raises", "metformin</answer>", None, {}),
        ("gt_null_bad_format_raises", "no tags", None, {}),
        ("gt_list_raises", "metformin</answer>", ["1001"], {}),
        ("relevant_null", "metformin</answer>", {"relevant_pmids": None}, {}),
        ("relevant_empty_string", "metformin</answer>", {"relevant_pmids": ""}, {}),
        ("relevant_string_is_characters", "metformin</answer>", {"relevant_pmids": "1001"}, {}),
        ("relevant_object_keys", "metformin</answer>", {"relevant_pmids": {"1001": 1, "1099": 0}}, {}),
        ("relevant_zero", "metformin</answer>", {"relevant_pmids": 0}, {}),
        ("relevant_false", "metformin</answer>", {"relevant_pmids": False}, {}),
        ("relevant_number_raises", "metformin</answer>", {"relevant_pmids": 1001}, {}),
        ("relevant_true_raises", "metformin</answer>", {"relevant_pmids": True}, {}),
        ("relevant_number_bad_format", "no tags", {"relevant_pmids": 1001}, {}),
        ("relevant_number_empty_query", "</answer>", {"relevant_pmids": 1001}, {}),
        ("relevant_number_no_hits", "zzzz qqqq</answer>", {"relevant_pmids": 1001}, {}),
        ("relevant_null_element", "metformin</answer>", {"relevant_pmids": ["1001", None]}, {}),
        ("relevant_bool_element", "metformin</answer>", {"relevant_pmids": ["1002", True]}, {}),
        ("relevant_nested_list_raises", "metformin</answer>", {"relevant_pmids": [["1001"]]}, {}),
        ("relevant_nested_list_bad_format", "<think>x</think>metformin</answer>", {"relevant_pmids": [["1001"]]}, {}),
        ("relevant_float_ids", "metformin</answer>", {"relevant_pmids": [1001.0, "1002"]}, {}),
    ]
    out = []
    for name, response, gt, config in cases:
        entry = {"name": name, "config": config, "sample": sample(response, gt, "Design a search query. <answer>", "study_search_test")}
        try:
            score, comps = study_search_reward(response, gt, CORPUS, config)
            entry["expected"] = {"score": score, "components": comps}
        except (AttributeError, TypeError) as e:
            entry["expected"] = {"error": type(e).__name__}
        out.append(entry)
    return out


def stable_p(prompt):
    """A deterministic P(True) in (0, 1) for prompts a case does not pin."""
    h = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16)
    return 0.01 + 0.98 * (h / 0xFFFFFFFF)


def medical_verifier_cases():
    def resp(final, thinking="The patient presents with typical findings."):
        return "## Thinking\n\n" + thinking + "\n\n## Final Response\n\n" + final

    cases = [
        # name, response, ground truth, config, pinned p (None: derived from the prompt)
        ("correct_high", resp("Metformin"), "Metformin", {}, 0.93),
        ("incorrect_low", resp("Insulin"), "Metformin", {}, 0.05),
        ("threshold_exact", resp("Aspirin 81 mg"), "Aspirin", {}, 0.4),
        ("threshold_above", resp("Aspirin 100 mg"), "Aspirin", {}, 0.4000001),
        ("threshold_below", resp("Aspirin 75 mg"), "Aspirin", {}, 0.3999999),
        ("p_one", resp("B. Ceftriaxone"), "B", {}, 1.0),
        ("p_zero_ish", resp("C. Vancomycin"), "B", {}, 1e-6),
        ("final_trailing_ws", resp("  Warfarin  \n\n"), "Warfarin", {}, 0.8),
        ("final_multiline", resp("Diagnosis: SLE.\nTreatment: hydroxychloroquine."), "Systemic lupus erythematosus", {}, 0.71),
        ("chinese", resp("二甲双胍"), "二甲双胍", {}, 0.88),
        ("chinese_thinking", "## Thinking\n\n患者血糖升高。\n\n## Final Response\n\n诊断为2型糖尿病。", "2型糖尿病", {}, 0.66),
        ("numbers_commas", resp("1,250 mg per day"), "1250 mg", {}, 0.55),
        ("braces_in_text", resp("Use {x} and {}"), "{answer}", {}, 0.9),
        ("eos_custom", resp("Heparin"), "Heparin", {"eos": "</s>"}, 0.9),
        ("eos_empty", resp("Heparin"), "Heparin", {"eos": ""}, 0.2),
        ("threshold_config", resp("Heparin"), "Heparin", {"threshold": 0.7}, 0.65),
        ("scores_config", resp("Heparin"), "Heparin", {"correct_score": 2.0, "incorrect_score": -0.5}, 0.65),
        ("scores_config_low", resp("Heparin sodium"), "Heparin", {"correct_score": 2.0, "incorrect_score": -0.5}, 0.15),
        ("gt_object_answer", resp("Digoxin"), {"answer": "Digoxin"}, {}, 0.77),
        ("gt_object_huatuo_key", resp("Digoxin"), {"Ground-True Answer": "Digoxin toxicity"}, {}, 0.3),
        ("empty_final", resp(""), "Metformin", {}, 0.02),
        ("final_is_whitespace", resp("   \n  "), "Metformin", {}, 0.02),
        ("thinking_after_final", "## Final Response\n\nMetformin\n\n## Thinking\n\nbecause", "Metformin", {}, 0.9),
        ("markdown_heading_levels", "### Thinking\n\nx\n\n## Final Response\n\nA", "A", {}, 0.6),
        ("long_final", resp("The answer is " + "very " * 200 + "likely sepsis."), "Sepsis", {}, 0.45),
        ("options_letter", resp("The correct option is (D)."), "D. Amiodarone", {}, 0.52),
        ("derived_p_1", resp("Amoxicillin"), "Amoxicillin", {}, None),
        ("derived_p_2", resp("Azithromycin"), "Amoxicillin", {}, None),
        ("derived_p_3", resp("Levothyroxine"), "Levothyroxine", {}, None),
        ("derived_p_4", resp("Propranolol"), "Atenolol", {}, None),
        ("derived_p_5", resp("帕金森病"), "帕金森病", {}, None),
        ("derived_p_6", resp("Kawasaki disease"), "Kawasaki disease", {}, None),
        ("derived_p_7", resp("Iron deficiency anemia"), "Vitamin B12 deficiency", {}, None),
        ("derived_p_8", resp("Furosemide 40 mg IV"), "Furosemide", {}, None),
    ]
    bad = [
        ("empty_response", "", "Metformin"),
        ("no_headers", "Metformin", "Metformin"),
        ("missing_thinking", "## Final Response\n\nMetformin", "Metformin"),
        ("missing_final", "## Thinking\n\nMetformin", "Metformin"),
        ("final_no_blank_line", "## Thinking\n\nx\n## Final Response\nMetformin", "Metformin"),
        ("final_single_newline", "## Thinking\n\nx\n\n## Final Response\nMetformin", "Metformin"),
        ("two_finals", "## Thinking\n\nx\n\n## Final Response\n\nA\n\n## Final Response\n\nB", "A"),
        ("two_thinkings", "## Thinking\n\nx\n\n## Thinking\n\ny\n\n## Final Response\n\nA", "A"),
        ("lowercase_headers", "## thinking\n\nx\n\n## final response\n\nA", "A"),
        ("think_tags_instead", "<think>x</think>\n\n## Final Response\n\nA", "A"),
        ("chinese_no_headers", "答案是二甲双胍", "二甲双胍"),
        ("crlf_headers", "## Thinking\r\n\r\nx\r\n\r\n## Final Response\r\n\r\nA", "A"),
        ("format_score_config", "Metformin", "Metformin"),
        ("thinking_in_final_text", "## Thinking\n\nx\n\n## Final Response\n\nSee ## Thinking above", "A"),
        ("three_finals_chinese", "## Thinking\n\n想\n\n## Final Response\n\n甲\n\n## Final Response\n\n乙\n\n## Final Response\n\n丙", "甲"),
        ("only_whitespace", "   \n\n  ", "A"),
    ]
    for name, r, gt in bad:
        cfg = {"format_score": -1.0} if name == "format_score_config" else {}
        cases.append((name, r, gt, cfg, None))
    # Invalid or odd ground truths: an error for the sample whatever the response (the
    # reference never scores a row without an answer); a number is its JSON text.
    cases += [
        ("gt_null", resp("Metformin"), None, {}, None),
        ("gt_null_bad_format", "Metformin", None, {}, None),
        ("gt_object_without_answer", resp("Metformin"), {"question": "q"}, {}, None),
        ("gt_object_answer_null", resp("Metformin"), {"answer": None, "Ground-True Answer": "Metformin"}, {}, None),
        ("gt_bool", resp("True"), True, {}, None),
        ("gt_list", resp("A"), ["A", "B"], {}, None),
        ("gt_object_answer_list", resp("A"), {"answer": ["A"]}, {}, None),
        ("gt_number", resp("42"), 42, {}, 0.81),
        ("gt_object_answer_float", resp("2.5 mg"), {"answer": 2.5}, {}, 0.35),
        ("gt_empty_string", resp("Metformin"), "", {}, 0.12),
    ]

    out, pinned = [], {}
    for name, response, gt, config, p in cases:
        entry = {"name": name, "config": config, "sample": sample(response, gt, "Answer the medical question.", "medical_o1")}
        try:
            prompt = verifier_input(response, gt, config)
        except (KeyError, TypeError) as e:
            entry["expected"] = {"error": type(e).__name__}
            out.append(entry)
            continue
        if prompt is not None:
            if p is None:
                p = stable_p(prompt)
            if pinned.setdefault(prompt, p) != p:
                raise SystemExit("two cases give the same verifier prompt different scores: " + name)
            entry["judge"] = {"prompt": prompt, "p": p}
        score, comps = medical_verifier_reward(response, gt, p, config)
        entry["expected"] = {"score": score, "components": comps}
        out.append(entry)
    return out


def dialogue_cases():
    ref_en = ("Drink plenty of fluids, rest, and take paracetamol for the fever. "
              "See a doctor if the fever lasts more than three days.")
    ref_zh = "多喝水，注意休息，发烧可以服用对乙酰氨基酚。如果发烧超过三天，请及时就医。"
    good_en = ("You should rest and drink plenty of fluids. Paracetamol can help with the fever. "
               "If the fever lasts more than three days, please see a doctor.")
    cases = [
        ("good_english", good_en, ref_en, {}),
        ("identical", ref_en, ref_en, {}),
        ("identical_case_changed", ref_en.upper(), ref_en, {}),
        ("empty_response", "", ref_en, {}),
        ("whitespace_response", "   \n\t ", ref_en, {}),
        ("one_word", "Rest.", ref_en, {}),
        ("no_final_punct", "You should rest and drink fluids and take paracetamol for the fever", ref_en, {}),
        ("trailing_quote", "The doctor said \"rest and drink fluids.\"", ref_en, {}),
        ("trailing_paren", "Take paracetamol (500 mg every six hours.)", ref_en, {}),
        ("ellipsis", "Rest, fluids, paracetamol…", ref_en, {}),
        ("question_end", "Have you tried paracetamol for the fever?", ref_en, {}),
        ("exclamation_end", "Please see a doctor today!", ref_en, {}),
        ("repetitive", "rest rest rest rest rest rest rest rest rest rest.", ref_en, {}),
        ("repetitive_bigrams", "drink water drink water drink water drink water.", ref_en, {}),
        ("repetition_n1", "drink water drink water drink water drink water.", ref_en, {"repetition_n": 1}),
        ("repetition_n3", "drink water now drink water now drink water now.", ref_en, {"repetition_n": 3}),
        ("long_response", " ".join(["Paracetamol helps fever number %d." % i for i in range(80)]), ref_en, {}),
        ("exactly_min_units", " ".join("w%d" % i for i in range(20)) + ".", ref_en, {}),
        ("one_below_min", " ".join("w%d" % i for i in range(19)) + ".", ref_en, {}),
        ("exactly_max_units", " ".join("w%d" % i for i in range(300)) + ".", ref_en, {}),
        ("one_above_max", " ".join("w%d" % i for i in range(301)) + ".", ref_en, {}),
        ("window_config", good_en, ref_en, {"min_units": 5, "max_units": 10}),
        ("think_stripped", "<think>The user has a fever; recommend rest.</think>\n" + good_en, ref_en, {}),
        ("think_kept", "<think>The user has a fever; recommend rest.</think>\n" + good_en, ref_en, {"strip_think": False}),
        ("two_think_blocks", "<think>a</think>x<think>b</think>Rest and fluids.", ref_en, {}),
        ("unclosed_think", "<think>planning rest and fluids.", ref_en, {}),
        ("punct_kept", good_en, ref_en, {"strip_punctuation": False}),
        ("punct_only", "?!...", ref_en, {}),
        ("numbers_commas", "Take 1,000 mg of paracetamol, at most 4,000 mg per day.", "Do not exceed 4,000 mg per day.", {}),
        ("hyphenated", "Anti-inflammatory drugs help; over-the-counter options exist.", "Over-the-counter anti-inflammatory drugs.", {}),
        ("chinese_good", "请多喝水，好好休息。发烧可以吃对乙酰氨基酚，超过三天要就医。", ref_zh, {}),
        ("chinese_identical", ref_zh, ref_zh, {}),
        ("chinese_no_end", "多喝水注意休息", ref_zh, {}),
        ("chinese_repetitive", "休息休息休息休息休息休息。", ref_zh, {}),
        ("chinese_vs_english_ref", "多喝水，注意休息。", ref_en, {}),
        ("mixed_language", "建议服用paracetamol 500mg，多喝水。", ref_zh, {}),
        ("japanese_kana", "おだいじに。水をたくさん飲んでください。", "水を飲んでください。", {}),
        ("korean", "물을 많이 드세요.", "물을 드세요.", {}),
        ("fullwidth_question", "你发烧几天了？", ref_zh, {}),
        ("closing_chinese_quote", "医生说：“多喝水。”", ref_zh, {}),
        ("gt_object_reference", good_en, {"reference": ref_en}, {}),
        ("gt_object_answer", good_en, {"answer": ref_en}, {}),
        ("gt_object_output", good_en, {"output": ref_en}, {}),
        ("gt_empty_reference", good_en, "", {}),
        ("weights_rouge_only", good_en, ref_en, {"weights": {"length": 0, "repetition": 0, "completeness": 0, "rouge_l": 1}}),
        ("weights_custom", good_en, ref_en, {"weights": {"length": 0.1, "rouge_l": 0.7, "repetition": 1.0, "completeness": 0.2}}),
        ("weights_partial", "rest rest rest.", ref_en, {"weights": {"repetition": 2.0}}),
        ("newlines_and_tabs", "Rest.\n\nDrink\tfluids.\n", ref_en, {}),
        ("url_like", "See https://example.org/fever-guide.", ref_en, {}),
        ("no_overlap", "The quarterly earnings report exceeded expectations.", ref_en, {}),
        ("greek_lowercase", "ΠΥΡΕΤΟΣ σημαίνει fever.", "πυρετος means fever.", {}),
        ("digits_only", "12345", "12345", {}),
        ("single_cjk", "好", "好", {}),
        # Invalid ground truths: an error for the sample (no reference text to compare with).
        ("gt_null", good_en, None, {}),
        ("gt_null_empty_response", "", None, {}),
        ("gt_number", "42.", 42, {}),
        ("gt_object_without_reference", good_en, {"question": "fever?"}, {}),
        ("gt_object_reference_null", good_en, {"reference": None, "answer": ref_en}, {}),
        ("gt_object_reference_list", good_en, {"reference": [ref_en]}, {}),
        ("gt_list", good_en, [ref_en], {}),
    ]
    out = []
    for name, response, gt, config in cases:
        entry = {"name": name, "config": config, "sample": sample(response, gt, "Patient: I have a fever.", "medical_meadow")}
        try:
            score, comps = dialogue_reward(response, gt, config)
            entry["expected"] = {"score": score, "components": comps}
        except (KeyError, TypeError) as e:
            entry["expected"] = {"error": type(e).__name__}
        out.append(entry)
    return out


def hcc_response(tags=None, treatment=None, survival=None, length=None, filler="x", extra=""):
    """A structured response; `length` pads the thinking section to exactly that many characters."""
    tags = tags or {}
    parts = ["<thinking>", "{pad}", "</thinking>"]
    for k, v in tags.items():
        parts.append("<%s>%s</%s>" % (k, v, k))
    parts.append("<treatment>1. Recommended</treatment><treatment_not_recommended>none</treatment_not_recommended>")
    hard = ""
    if treatment is not None:
        hard += "<hard_check_treatment>%s</hard_check_treatment>" % (treatment if isinstance(treatment, str) else json.dumps(treatment, ensure_ascii=False))
    if survival is not None:
        hard += "<hard_check_survival>%s</hard_check_survival>" % (survival if isinstance(survival, str) else json.dumps(survival))
    parts.append("<hard_check>" + hard + "</hard_check>")
    parts.append("<answer>See above.</answer>")
    parts.append(extra)
    text = "".join(parts)
    base = len(text) - len("{pad}")
    if length is None:
        pad = "Reasoning about stage and liver function. "
    else:
        if length < base:
            raise SystemExit("length %d below the skeleton's %d" % (length, base))
        n = length - base
        pad = (filler * (n // len(filler) + 1))[:n]
    out = text.replace("{pad}", pad, 1)
    assert length is None or len(out) == length
    return out


def hcc_cases():
    gt = {
        "ps": 1, "child_pugh": "A", "metastasis": "absent", "cancer_thrombus": "absent",
        "num_tumor": 2, "tumor_size": 35, "survival_months": 40, "if_death": 1,
        "top3_treatments": [{"treatment": "TACE", "score": 0.9}, {"treatment": "Surgical_resection", "score": 0.7},
                            {"treatment": "Ablation", "score": 0.5}],
    }
    gt_flags = dict(gt, survival_1yr=1, survival_3yr=1, survival_5yr=0)
    gt_censored = dict(gt, survival_months=20, if_death=0)
    gt_early = dict(gt, ps=0, num_tumor=1, tumor_size=15, child_pugh="A", survival_months=70, if_death=0,
                    top3_treatments=[{"treatment": "Ablation", "score": 0.9}, {"treatment": "Surgical_resection", "score": 0.8}])
    gt_endstage = dict(gt, ps=3, child_pugh="C", survival_months=4, if_death=1,
                       top3_treatments=[{"treatment": "Palliative_care", "score": 0.95}])
    gt_float = dict(gt, tumor_size=35.0, ps=1.0)
    right_tags = {"ps": 1, "child_pugh": "A", "metastasis": "absent", "cancer_thrombus": "absent", "num_tumor": 2, "tumor_size": 35}
    good_t = {"scores": {"TACE": 0.9, "Surgical_resection": 0.6, "Ablation": 0.4, "Palliative_care": 0.0}}
    good_s = {"survival_months": 38, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}
    with_ev = dict(good_t, evidence={"TACE": "BCLC B, multinodular, Child-Pugh A", "Surgical_resection": "short",
                                     "Ablation": "two nodules under 3 cm each"})
    surv = lambda body: R(right_tags, good_t, body)

    R = hcc_response
    cases = [
        ("full_good", R(right_tags, good_t, good_s), gt, {}),
        ("full_good_len_1800", R(right_tags, good_t, good_s, length=1800), gt, {}),
        ("empty_response", "", gt, {}),
        ("plain_text", "The patient should receive TACE.", gt, {}),
        ("surrounding_whitespace_stripped", "  \n" + R(right_tags, good_t, good_s) + "\n\n  ", gt, {}),
        ("len_1", "x", gt, {}),
        ("len_1407", R(length=1407), gt, {}),
        ("len_1408_window_start", R(length=1408), gt, {}),
        ("len_1409", R(length=1409), gt, {}),
        ("len_1536_min", R(length=1536), gt, {}),
        ("len_1600", R(length=1600), gt, {}),
        ("len_1663", R(length=1663), gt, {}),
        ("len_1664_window_end", R(length=1664), gt, {}),
        ("len_1665", R(length=1665), gt, {}),
        ("len_1919", R(length=1919), gt, {}),
        ("len_1920", R(length=1920), gt, {}),
        ("len_2048_max", R(length=2048), gt, {}),
        ("len_2175", R(length=2175), gt, {}),
        ("len_2176", R(length=2176), gt, {}),
        ("len_2177", R(length=2177), gt, {}),
        ("len_4000", R(length=4000), gt, {}),
        ("len_chinese_chars_1536", R(right_tags, good_t, good_s, length=1536, filler="肝癌"), gt, {}),
        ("length_config", R(length=900), gt, {"length": {"min": 800, "max": 1000, "window": 50}}),
        ("length_no_window", R(length=1500), gt, {"length": {"window": 0}}),
        ("process_all_wrong", R({"ps": 2, "child_pugh": "B", "metastasis": "present", "cancer_thrombus": "present", "num_tumor": 1, "tumor_size": 20}), gt, {}),
        ("process_spaces", R({"ps": " 1 ", "child_pugh": "\nA\n", "metastasis": "absent", "cancer_thrombus": "absent", "num_tumor": 2, "tumor_size": " 35"}), gt, {}),
        ("process_case_sensitive", R({"ps": 1, "child_pugh": "a", "metastasis": "Absent", "cancer_thrombus": "absent", "num_tumor": 2, "tumor_size": 35}), gt, {}),
        ("process_float_gt", R(right_tags), gt_float, {}),
        ("process_float_gt_match", R(dict(right_tags, tumor_size="35.0", ps="1.0")), gt_float, {}),
        ("process_unit_suffix", R(dict(right_tags, tumor_size="35 mm")), gt, {}),
        ("process_first_match_counts", R(right_tags, extra="<ps>3</ps>"), gt, {}),
        ("process_first_match_wrong", R(dict(right_tags, ps=3), extra="<ps>1</ps>"), gt, {}),
        ("process_missing_gt_key", R(right_tags), {k: v for k, v in gt.items() if k != "metastasis"}, {}),
        ("process_empty_tag_matches_missing_gt", R(dict(right_tags, metastasis="")), {k: v for k, v in gt.items() if k != "metastasis"}, {}),
        ("process_null_bool_list_gt", R(dict(right_tags, ps="None", metastasis="True", cancer_thrombus="['PVTT', 'Vp2']")),
         dict(gt, ps=None, metastasis=True, cancer_thrombus=["PVTT", "Vp2"]), {}),
        ("process_chinese_values", R(dict(right_tags, metastasis="无", cancer_thrombus="无")), dict(gt, metastasis="无", cancer_thrombus="有"), {}),
        ("format_repeated_answer", R(right_tags, extra="<answer>again</answer><answer>and again</answer>"), gt, {}),
        ("format_unclosed_extra_open", R(right_tags, extra="<thinking>unclosed"), gt, {}),
        ("format_treatment_may_repeat", R(right_tags, extra="<treatment>a</treatment><treatment>b</treatment></treatment_not_recommended>"), gt, {}),
        ("format_malformed_tag", "<ps>1</PS><child_pugh>A<child_pugh><num_tumor>2</num_tumor>", gt, {}),
        ("format_close_before_open", "</answer>x<answer>", gt, {}),
        ("treatment_perfect_order", R(right_tags, {"scores": {"TACE": 3, "Surgical_resection": 2, "Ablation": 1}}), gt, {}),
        ("treatment_reversed", R(right_tags, {"scores": {"Ablation": 3, "Surgical_resection": 2, "TACE": 1}}), gt, {}),
        ("treatment_one_hit_last", R(right_tags, {"scores": {"Palliative_care": 3, "Systemic_anti-tumor_therapy": 2, "TACE": 1}}), gt, {}),
        ("treatment_no_hit", R(right_tags, {"scores": {"Palliative_care": 3, "Liver_transplantation": 2}}), gt, {}),
        ("treatment_ties_keep_order", R(right_tags, {"scores": {"Palliative_care": 1, "TACE": 1, "Ablation": 1, "Surgical_resection": 1}}), gt, {}),
        ("treatment_zero_and_negative", R(right_tags, {"scores": {"TACE": 0, "Ablation": -1, "Surgical_resection": 0.5}}), gt, {}),
        ("treatment_more_than_three", R(right_tags, {"scores": {"Palliative_care": 5, "Liver_transplantation": 4, "TACE_plus_ablation": 3, "TACE": 2, "Ablation": 1}}), gt, {}),
        ("treatment_bool_score", R(right_tags, {"scores": {"TACE": True, "Ablation": 0.5}}), gt, {}),
        ("treatment_string_scores", R(right_tags, {"scores": {"TACE": "high", "Ablation": "0.5", "Surgical_resection": " 1_0 "}}), gt, {}),
        ("treatment_null_and_list_scores", R(right_tags, {"scores": {"TACE": None, "Ablation": [1], "Surgical_resection": 0.2}}), gt, {}),
        ("treatment_nan_infinity", R(right_tags, '{"scores": {"TACE": NaN, "Ablation": Infinity, "Surgical_resection": 0.1}}'), gt, {}),
        ("treatment_single_quotes", R(right_tags, "{'scores': {'TACE': 0.9, 'Ablation': 0.5}}"), gt, {}),
        ("treatment_escaped_quotes", R(right_tags, '{\\"scores\\": {\\"Surgical_resection\\": 0.9}}'), gt, {}),
        ("treatment_apostrophe_breaks_json", R(right_tags, '{"scores": {"TACE": 0.9}, "note": "patient\'s choice"}'), gt, {}),
        ("treatment_unicode_escape_key", R(right_tags, '{"scores": {"\\u0054ACE": 0.9}}'), gt, {}),
        ("treatment_key_spaces", R(right_tags, {"scores": {" TACE ": 0.9, "Ablation\\t": 0.8}}), gt, {}),
        ("treatment_invalid_json", R(right_tags, '{"scores": {"TACE": 0.9,}}'), gt, {}),
        ("treatment_no_scores_key", R(right_tags, {"rank": ["TACE"]}), gt, {}),
        ("treatment_scores_list", R(right_tags, {"scores": ["TACE"]}), gt, {}),
        ("treatment_top_level_list", R(right_tags, [1, 2]), gt, {}),
        ("treatment_duplicate_key", R(right_tags, '{"scores": {"Ablation": 0.1, "TACE": 0.5, "Ablation": 0.9}}'), gt, {}),
        ("treatment_chinese_key_mojibake", R(right_tags, {"scores": {"肝移植": 0.9, "TACE": 0.5}}), gt, {}),
        ("treatment_trailing_backslash_raises", R(right_tags, '{"scores": {"TACE": 0.9}}\\'), gt, {}),
        ("treatment_bad_hex_escape_raises", R(right_tags, '{"scores": {"TA\\xZZ": 0.9}}'), gt, {}),
        ("treatment_bad_block_without_gt_top3", R(right_tags, '{"scores": {"TACE": 0.9}}\\'), {k: v for k, v in gt.items() if k != "top3_treatments"}, {}),
        ("treatment_gt_shorter", R(right_tags, good_t), gt_early, {}),
        ("treatment_gt_empty", R(right_tags, good_t), dict(gt, top3_treatments=[]), {}),
        ("treatment_gt_duplicate_names", R(right_tags, good_t), dict(gt, top3_treatments=[{"treatment": "TACE"}, {"treatment": "TACE"}, {"treatment": "Ablation"}]), {}),
        ("treatment_gt_fourth_ignored", R(right_tags, {"scores": {"Radiotherapy": 1}}), dict(gt, top3_treatments=gt["top3_treatments"] + [{"treatment": "Radiotherapy"}]), {}),
        ("treatment_gt_strings_raises", R(right_tags, good_t), dict(gt, top3_treatments=["Ablation", "TACE"]), {}),
        ("treatment_gt_missing_name_raises", R(right_tags, good_t), dict(gt, top3_treatments=[{"name": "TACE"}]), {}),
        ("treatment_empty_scores", R(right_tags, {"scores": {}}), gt, {}),
        ("survival_died_exact", surv({"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), gt, {}),
        ("survival_died_off", surv({"survival_months": 10, "survival_1yr": 0, "survival_3yr": 0, "survival_5yr": 0}), gt, {}),
        ("survival_probabilities_are_unknown_flags", surv({"survival_months": 30, "survival_1yr": 0.9, "survival_3yr": 0.55, "survival_5yr": 0.2}), gt, {}),
        ("survival_flag_spellings", surv({"survival_months": 40, "survival_1yr": True, "survival_3yr": " TRUE ", "survival_5yr": "0"}), gt, {}),
        ("survival_flag_float_one", surv({"survival_months": 40, "survival_1yr": 1.0, "survival_3yr": "1", "survival_5yr": 0.0}), gt, {}),
        ("survival_flag_string_one_point_zero", surv({"survival_months": 40, "survival_1yr": "1.0", "survival_3yr": 1, "survival_5yr": 0}), gt, {}),
        ("survival_missing_flag", surv({"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1}), gt, {}),
        ("survival_string_months", surv({"survival_months": "40", "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), gt, {}),
        ("survival_months_truncated", surv({"survival_months": 47.9, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), gt, {}),
        ("survival_months_negative_string", surv({"survival_months": "-3.7", "survival_1yr": 0, "survival_3yr": 0, "survival_5yr": 0}), gt, {}),
        ("survival_months_inf", surv('{"survival_months": Infinity, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}'), gt, {}),
        ("survival_literal_eval", surv("{'survival_months': 40, 'survival_1yr': True, 'survival_3yr': 1, 'survival_5yr': None}"), gt, {}),
        ("survival_literal_trailing_comma", surv("{'survival_months': 39, 'survival_1yr': 1, 'survival_3yr': 1, 'survival_5yr': 0,}"), gt, {}),
        ("survival_literal_set_is_not_dict", surv("{40, 1}"), gt, {}),
        ("survival_escaped_json", surv('{\\"survival_months\\": 41, \\"survival_1yr\\": 1, \\"survival_3yr\\": 1, \\"survival_5yr\\": 0}'), gt, {}),
        ("survival_nested", surv({"survival": {"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}}), gt, {}),
        ("survival_null_months_blocks_unnesting", surv({"survival_months": None, "survival": {"survival_months": 40}}), gt, {}),
        ("survival_given_flags_win", surv({"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 1}), dict(gt_flags, survival_5yr=1), {}),
        ("survival_given_flags_string", surv(good_s), dict(gt, survival_1yr="true", survival_3yr="1", survival_5yr="false"), {}),
        ("survival_gt_nested_months", surv(good_s), dict(gt, survival_months={"survival_months": 30, "survival_1yr": 1}), {}),
        ("survival_event_unknown", surv(good_s), {k: v for k, v in gt_flags.items() if k != "if_death"}, {}),
        ("survival_event_string", surv(good_s), dict(gt, if_death="1"), {}),
        ("survival_event_bool", surv(good_s), dict(gt, if_death=True), {}),
        ("survival_event_two_is_unknown", surv(good_s), dict(gt, if_death=2), {}),
        ("survival_censored_over", surv({"survival_months": 30, "survival_1yr": 1, "survival_3yr": 0, "survival_5yr": 0}), gt_censored, {}),
        ("survival_censored_under", surv({"survival_months": 8, "survival_1yr": 0, "survival_3yr": 0, "survival_5yr": 0}), gt_censored, {}),
        ("survival_censored_long", surv({"survival_months": 80, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 1}), gt_early, {}),
        ("survival_censored_no_months_uses_flags", surv({"survival_months": 30, "survival_1yr": 1, "survival_3yr": 1}), {"if_death": 0, "survival_1yr": 1, "survival_3yr": 1}, {}),
        ("survival_censored_nothing_known", surv({"survival_months": 30}), {"if_death": 0}, {}),
        ("survival_died_no_months", surv({"survival_months": 30}), {"if_death": 1, "survival_1yr": 1}, {}),
        ("survival_threshold_12_died", surv({"survival_months": 12, "survival_1yr": 1, "survival_3yr": 0, "survival_5yr": 0}), dict(gt, survival_months=12), {}),
        ("survival_gt_months_float_truncated", surv({"survival_months": 35, "survival_1yr": 1, "survival_3yr": 0, "survival_5yr": 0}), dict(gt, survival_months=35.9), {}),
        # float() of strings as Python reads them: any script's digits, only ASCII whitespace
        # controls stripped (0x1f is not), underscores between digits.
        ("survival_gt_months_fullwidth", surv({"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), dict(gt, survival_months="４０"), {}),
        ("survival_gt_months_arabic_indic", surv({"survival_months": 36, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), dict(gt, survival_months="٣٦"), {}),
        ("survival_gt_months_unit_separator", surv({"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), dict(gt, survival_months="40\x1f"), {}),
        ("survival_gt_months_underscore", surv({"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), dict(gt, survival_months="4_0"), {}),
        ("survival_gt_months_ideographic_space", surv({"survival_months": 40, "survival_1yr": 1, "survival_3yr": 1, "survival_5yr": 0}), dict(gt, survival_months="\u300040\u3000"), {}),
        ("survival_invalid_everything", surv("{survival_months: 40}"), gt, {}),
        ("survival_not_object", surv("[40, 1, 1, 0]"), gt, {}),
        ("survival_endstage", R({"ps": 3, "child_pugh": "C"}, {"scores": {"Palliative_care": 1}}, {"survival_months": 3, "survival_1yr": 0, "survival_3yr": 0, "survival_5yr": 0}), gt_endstage, {}),
        ("gt_as_json_string", R(right_tags, good_t, good_s), json.dumps(gt_flags), {}),
        ("gt_json_string_with_spaces", R(right_tags, good_t, good_s), "  " + json.dumps(gt_flags) + "\n", {}),
        ("gt_not_json", R(right_tags, good_t, good_s), "ps=1, child_pugh=A", {}),
        ("gt_null", R(right_tags, good_t, good_s), None, {}),
        ("gt_number_raises", R(right_tags, good_t, good_s), 5, {}),
        ("gt_json_list_string_raises", R(right_tags, good_t, good_s), "[1, 2]", {}),
        ("weights_config", R(right_tags, good_t, good_s), gt, {"weights": {"length": 0.5, "survival": 3.0}}),
        ("chinese_response", R({"ps": 1, "child_pugh": "A", "metastasis": "absent", "cancer_thrombus": "absent", "num_tumor": 2, "tumor_size": 35}, good_t, good_s, filler="患者肝功能良好，"), gt, {}),
        # extended mode
        ("ext_full_good", R(right_tags, with_ev, good_s), gt_flags, {"mode": "extended"}),
        ("ext_no_blocks", "", gt, {"mode": "extended"}),
        ("ext_stage_0_good", R(right_tags, {"scores": {"Ablation": 0.9, "Surgical_resection": 0.8}}, {"survival_months": 72, "survival_1yr": 0.95, "survival_3yr": 0.8, "survival_5yr": 0.6}), gt_early, {"mode": "extended"}),
        ("ext_stage_D_resection", R({"ps": 3}, {"scores": {"Surgical_resection": 0.9, "Liver_transplantation": 0.5, "Palliative_care": 0.4}}, good_s), gt_endstage, {"mode": "extended"}),
        ("ext_stage_D_tace", R({"ps": 3}, {"scores": {"TACE": 0.9, "Palliative_care": 0.8}}, {"survival_months": 4, "survival_1yr": 0.1}), gt_endstage, {"mode": "extended"}),
        ("ext_thrombus_stage_C", R(right_tags, {"scores": {"Systemic_anti-tumor_therapy": 0.9, "TACE": 0.3}}, good_s), dict(gt, cancer_thrombus="present"), {"mode": "extended"}),
        ("ext_stage_B", R(right_tags, {"scores": {"Interventional_therapy": 0.9, "TACE": 0.5, "Ablation": 0.1}}, good_s), dict(gt, ps=0, num_tumor=4), {"mode": "extended"}),
        ("ext_stage_A_string_fields", R(right_tags, good_t, good_s), dict(gt, ps="0", num_tumor="2", tumor_size="25"), {"mode": "extended"}),
        ("ext_calibration_censored", R(right_tags, good_t, {"survival_months": 25, "survival_1yr": 0.8, "survival_3yr": 0.4, "survival_5yr": 0.1}), gt_censored, {"mode": "extended"}),
        ("ext_calibration_clipped_and_strings", R(right_tags, good_t, {"survival_months": 40, "survival_1yr": 1.4, "survival_3yr": "-0.2", "survival_5yr": "x"}), gt, {"mode": "extended"}),
        ("ext_calibration_unknown", R(right_tags, good_t, good_s), dict(gt, survival_months=6, if_death=0), {"mode": "extended"}),
        ("ext_evidence_min_chars", R(right_tags, with_ev, good_s), gt, {"mode": "extended", "evidence_min_chars": 3}),
        ("ext_decode_error_block", R(right_tags, '{"scores": {"TACE": 0.9}}\\'), {k: v for k, v in gt.items() if k != "top3_treatments"}, {"mode": "extended"}),
        ("ext_gt_not_json", R(right_tags, good_t, good_s), "no json here", {"mode": "extended"}),
        ("ext_custom_table", R(right_tags, good_t, good_s), gt, {
            "mode": "extended",
            "guideline": {"stages": [{"stage": "X", "when": [[{"field": "tumor_size", "op": ">", "value": 30}]]}, {"stage": "Y"}],
                          "allowed": {"X": ["TACE", "Ablation"], "Y": []}},
            "contraindications": [{"treatments": ["Ablation"], "when": [[{"field": "tumor_size", "op": ">=", "value": "30"}]]},
                                  {"treatments": ["TACE"], "when": [[{"field": "metastasis", "op": "not_in", "value": ["absent"]}]]},
                                  {"treatments": ["Surgical_resection"]}],
        }),
        ("ext_weights", R(right_tags, with_ev, good_s), gt_endstage, {"mode": "extended", "weights": {"guideline": 2.0, "safety": 3.0, "evidence": 0, "calibration": 1.0, "survival": 1.0}}),
    ]
    out = []
    for name, response, g, config in cases:
        entry = {"name": name, "config": config, "sample": sample(response, g, "EMR: ...", "hcc")}
        try:
            score, comps = hcc_reward(response, g, config)
            entry["expected"] = {"score": score, "components": comps}
        except (TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
            # The reference raises here; the plugin reports a failed sample.
            entry["expected"] = {"error": type(e).__name__}
        out.append(entry)
    return out


# ----------------------------------------------------------------------------------------------
# sample size (TrialPanorama)

def sample_size_reward(response, ground_truth, config):
    """TrialPanorama's sample_size_estimation.compute_score (format_reward 0.1 + correct_reward
    1.0 = 1.1), with medrl's configurable scores and its components (format: the structure
    check; accuracy: the answer is within tolerance). Raises where the reference raises."""
    tol = config.get("tolerance", 0.2)
    correct = config.get("correct_score", 1.1)
    penalty = config.get("format_penalty", -2.0)
    invalid = config.get("invalid_target_score", -2.0)
    # compute_score: the target comes first (AttributeError for a ground truth that is not a dict).
    target = ground_truth.get("target")
    true = None
    if target is not None:
        try:
            true = float(target)
        except (ValueError, TypeError):
            true = None
    # extract_solution: fixed header priority.
    if "Assistant:" in response:
        processed = response.split("Assistant:", 1)[1].strip()
    elif "<|im_start|>assistant" in response:
        processed = response.split("<|im_start|>assistant", 1)[1].strip()
    elif "<|start_header_id|>assistant<|end_header_id|>" in response:
        processed = response.split("<|start_header_id|>assistant<|end_header_id|>", 1)[1].strip()
    else:
        processed = response
    matches = re.findall(r"<answer>(.*?)</answer>", processed, re.DOTALL)
    answer_text = matches[-1].strip() if matches else None
    # validate_response_structure
    ok = True
    pos = {}
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        pos[tag] = processed.find(tag)
        if processed.count(tag) != 1:
            ok = False
    if pos["<think>"] > pos["</think>"] or pos["</think>"] > pos["<answer>"] or pos["<answer>"] > pos["</answer>"]:
        ok = False
    if true is None:
        # The reference returns -2 before it looks at the response.
        return invalid, {"format": 1.0 if ok else 0.0, "accuracy": 0.0}
    if not ok:
        return penalty, {"format": 0.0, "accuracy": 0.0}
    hit = False
    if answer_text:
        m = re.search(r"(\d+(?:\.\d+)?)", answer_text.strip().replace(",", "").replace(" ", ""))
        if m is not None:
            pred = float(m.group(1))
            hit = true * (1 - tol) <= pred <= true * (1 + tol)
    return (correct if hit else 0.0), {"format": 1.0, "accuracy": 1.0 if hit else 0.0}


def sample_size_cases():
    def R(answer, think="Two means, alpha 0.05, power 0.8."):
        return "<think>%s</think>\n<answer>%s</answer>" % (think, answer)

    t100 = {"target": 100, "answer_type": "integer", "trial_id": "NCT0001", "pmid": ""}
    cases = [
        ("exact", R("100"), t100, {}),
        ("within", R("95"), t100, {}),
        ("lower_bound", R("80"), t100, {}),
        ("upper_bound", R("120"), t100, {}),
        ("below", R("79.99"), t100, {}),
        ("above", R("120.01"), t100, {}),
        ("commas_spaces", R("1,0 0 participants"), t100, {}),
        ("text_before_number", R("about 110 per arm"), t100, {}),
        ("sign_ignored", R("-100"), t100, {}),
        ("no_number", R("not enough information"), t100, {}),
        ("empty_answer", R(""), t100, {}),
        ("fullwidth_digits", R("１００"), t100, {}),
        ("arabic_indic_digits", R("١٠٥"), t100, {}),
        ("devanagari_digits", R("९०"), t100, {}),
        ("chinese_text", R("约 115 人"), t100, {}),
        ("decimal_answer", R("99.5"), t100, {}),
        ("superscript_not_digit", R("²100"), t100, {}),
        ("empty_response", "", t100, {}),
        ("whitespace_response", "  \n ", t100, {}),
        ("answer_only", "<answer>100</answer>", t100, {}),
        ("two_answers", R("100") + "<answer>100</answer>", t100, {}),
        ("wrong_order", "<answer>100</answer><think>x</think>", t100, {}),
        ("assistant_header", "User: how many?\nAssistant: " + R("100"), t100, {}),
        ("chatml_header", "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n" + R("100"), t100, {}),
        ("llama3_header", "<|start_header_id|>assistant<|end_header_id|>\n\n" + R("100"), t100, {}),
        ("header_priority_assistant_wins", "<|im_start|>assistant\n" + R("100") + "\nAssistant: done", t100, {}),
        ("tags_before_header_dropped", R("5") + "Assistant: " + R("100"), t100, {}),
        # targets of every kind
        ("target_string", R("100"), {"target": "100"}, {}),
        ("target_string_spaces", R("100"), {"target": "  100\n"}, {}),
        ("target_float", R("100"), {"target": 99.5}, {}),
        ("target_string_exponent", R("100"), {"target": "1e2"}, {}),
        ("target_string_underscore", R("1000"), {"target": "1_000"}, {}),
        ("target_string_double_underscore", R("1000"), {"target": "1__000"}, {}),
        ("target_string_fullwidth", R("120"), {"target": "１２０"}, {}),
        ("target_string_arabic_indic", R("120"), {"target": "١٢٠"}, {}),
        ("target_string_ideographic_space", R("120"), {"target": "\u3000120\u3000"}, {}),
        ("target_string_unit_separator", R("120"), {"target": "120\x1f"}, {}),
        ("target_string_commas", R("1000"), {"target": "1,000"}, {}),
        ("target_string_with_unit", R("120"), {"target": "120 patients"}, {}),
        ("target_string_hex", R("16"), {"target": "0x10"}, {}),
        ("target_string_empty", R("0"), {"target": ""}, {}),
        ("target_string_nan", R("100"), {"target": "nan"}, {}),
        ("target_string_inf", R("100"), {"target": "inf"}, {}),
        ("target_string_neg_infinity", R("100"), {"target": "-Infinity"}, {}),
        ("target_negative", R("100"), {"target": -100}, {}),
        ("target_zero_pred_zero", R("0"), {"target": 0}, {}),
        ("target_zero_pred_one", R("1"), {"target": "0"}, {}),
        ("target_true", R("1"), {"target": True}, {}),
        ("target_false_pred_zero", R("0"), {"target": False}, {}),
        ("target_huge", R("100"), {"target": 1e300}, {}),
        ("target_tiny", R("0"), {"target": 1e-3}, {}),
        # invalid targets: -2 whatever the response
        ("target_missing", R("100"), {"answer_type": "integer"}, {}),
        ("target_missing_bad_format", "100", {"answer_type": "integer"}, {}),
        ("target_missing_empty_response", "", {}, {}),
        ("target_null", R("100"), {"target": None}, {}),
        ("target_list", R("100"), {"target": [100]}, {}),
        ("target_object", R("100"), {"target": {"value": 100}}, {}),
        ("target_nested_null", R("100"), {"target": {"target": None}}, {}),
        ("target_word", R("100"), {"target": "one hundred"}, {}),
        ("target_missing_custom_score", R("100"), {}, {"invalid_target_score": -5.0}),
        # ground truths that are not objects: the reference raises
        ("gt_number_raises", R("100"), 100, {}),
        ("gt_string_raises", R("100"), "100", {}),
        ("gt_null_raises", R("100"), None, {}),
        ("gt_list_raises", R("100"), [{"target": 100}], {}),
        # config
        ("tolerance_config", R("109"), t100, {"tolerance": 0.1}),
        ("tolerance_config_out", R("111"), t100, {"tolerance": 0.1}),
        ("scores_config", R("100"), t100, {"correct_score": 2.0, "format_penalty": -1.0}),
        ("scores_config_bad_format", "100", t100, {"correct_score": 2.0, "format_penalty": -1.0}),
    ]
    out = []
    for name, response, gt, config in cases:
        entry = {"name": name, "config": config, "sample": sample(response, gt, "How many participants?", "sample_size_estimation_test")}
        try:
            score, comps = sample_size_reward(response, gt, config)
            entry["expected"] = {"score": score, "components": comps}
        except AttributeError as e:
            entry["expected"] = {"error": type(e).__name__}
        out.append(entry)
    return out


PLUGINS = {
    "sample-size": sample_size_cases,
    "study-search": study_search_cases,
    "medical-verifier": medical_verifier_cases,
    "dialogue-quality": dialogue_cases,
    "hcc-composite": hcc_cases,
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures", "rewards"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "study-search-corpus.jsonl"), "w", encoding="utf-8") as f:
        for doc_id, text in CORPUS:
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    for name, make in PLUGINS.items():
        cases = make()
        names = [c["name"] for c in cases]
        assert len(set(names)) == len(names), "duplicate case names in " + name
        with open(os.path.join(args.out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for c in cases:
                f.write(json.dumps(c, ensure_ascii=False, sort_keys=True) + "\n")
        print("%s: %d cases" % (name, len(cases)))


if __name__ == "__main__":
    main()
