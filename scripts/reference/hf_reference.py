#!/usr/bin/env python3
"""Reference values from Hugging Face transformers, stored as small JSON fixtures for medrl's tests.

This is the independent implementation medrl is checked against: it never imports medrl code.

  python3 scripts/reference/hf_reference.py tiny   MODELS_DIR   # logits of tiny llama/qwen2/qwen3 folders
  python3 scripts/reference/hf_reference.py chat   MODEL_DIR NAME  # rendered chat templates
  python3 scripts/reference/hf_reference.py gguf-greedy GGUF_FILE  # 32 greedy tokens of SmolLM2 from the GGUF

MODELS_DIR holds folders llama/, qwen2/, qwen3/ written by
`medrl model init --arch A --preset tiny --seed 7 --init-std 0.2`.
Fixtures go to tests/fixtures/. Versions of torch/transformers are recorded in each fixture.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures"))

# Token ids fed to every tiny model (all < 256, valid for any tiny vocabulary).
INPUT_IDS = [[5, 77, 130, 9, 250, 31, 64, 2, 199, 18, 3, 101]]

MEDICAL_QUESTION = "What are the first-line treatments for early-stage hepatocellular carcinoma?"

CONVERSATIONS = [
    [{"role": "user", "content": "What is the BCLC stage of a single 3 cm HCC with Child-Pugh A?"}],
    [
        {"role": "system", "content": "You are a careful clinical assistant."},
        {"role": "user", "content": "患者男性，62岁，肝右叶单发肿瘤3.2厘米。请给出分期。"},
    ],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Dose of metformin?"},
        {"role": "assistant", "content": "Usually 500 mg twice daily, titrated."},
        {"role": "user", "content": "And the maximum?"},
    ],
]


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def write(name, obj):
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", path)


def tiny(models_dir):
    # llama3scaled: the tiny llama with a Llama-3 rope_scaling block added to its config.json
    # (factor 8, low/high freq factors 1/4, original context 64), as the Rust test builds it.
    for arch in ["llama", "qwen2", "qwen3", "llama3scaled"]:
        path = os.path.join(models_dir, arch)
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        model.eval()
        ids = torch.tensor(INPUT_IDS)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        emb = model.get_input_embeddings().weight
        write(
            f"hf_logits_{arch}.json",
            {
                "arch": arch,
                "versions": versions(),
                "input_ids": INPUT_IDS,
                # Fingerprint of the weights, so a change in medrl's init is caught as such.
                "embed_sum": float(emb.double().sum()),
                "logits": [[round(float(x), 7) for x in row] for row in logits],
            },
        )


def chat(model_dir, name):
    """Rendered templates from transformers; ids from the `tokenizers` library on tokenizer.json.

    transformers 5 may rebuild a tokenizer from the model type (e.g. Qwen2's digit-splitting
    pre-tokenizer) instead of using tokenizer.json as written, so its ids are recorded
    separately (`transformers_ids`) and the file's own semantics (`ids`) are the reference.
    """
    from tokenizers import Tokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    raw = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    out = []
    for conv in CONVERSATIONS:
        for agp in [True, False]:
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
            ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=agp)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            out.append(
                {
                    "messages": conv,
                    "add_generation_prompt": agp,
                    "text": text,
                    "ids": raw.encode(text, add_special_tokens=False).ids,
                    "transformers_ids": list(ids),
                }
            )
    write(f"chat_template_{name}.json", {"versions": versions(), "cases": out})


def gguf_greedy(gguf_file):
    folder, fname = os.path.split(os.path.abspath(gguf_file))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, torch_dtype=torch.float32)
    model.eval()
    messages = [{"role": "user", "content": MEDICAL_QUESTION}]
    prompt_ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
        prompt_ids = prompt_ids["input_ids"]
    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=32, do_sample=False, attention_mask=torch.ones_like(ids))
        first_logits = model(input_ids=ids).logits[0, -1]
    new = out[0, ids.shape[1]:].tolist()
    write(
        "smollm2_greedy.json",
        {
            "versions": versions(),
            "question": MEDICAL_QUESTION,
            "prompt_ids": list(prompt_ids),
            "greedy_ids": new,
            "greedy_text": tok.decode(new),
            "first_step_top5": torch.topk(first_logits, 5).indices.tolist(),
            "first_step_logits_head": [round(float(x), 5) for x in first_logits[:16]],
        },
    )


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "tiny":
        tiny(sys.argv[2])
    elif cmd == "chat":
        chat(sys.argv[2], sys.argv[3])
    elif cmd == "gguf-greedy":
        gguf_greedy(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")
