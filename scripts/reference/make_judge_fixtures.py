#!/usr/bin/env python3
"""Judge-model fixtures from Hugging Face transformers (the independent reference for medrl's
sequence classifiers and causal-LM judge; this script never imports medrl code).

  /work/refenv/bin/python scripts/reference/make_judge_fixtures.py TINY_LLAMA_DIR

TINY_LLAMA_DIR is a folder written by `medrl model init --arch llama --preset tiny`; only its
tokenizer files are used (the BPE tokenizer medrl's tests use). Writes to tests/fixtures/judge/:

  llama-cls/   LlamaForSequenceClassification, id2label {0: False, 1: True}, pad_token_id 0
  qwen2-cls/   Qwen2ForSequenceClassification, no pad_token_id (the last token is classified)
  llama-lm/    LlamaForCausalLM, untied head, the tiny tokenizer plus added tokens True / False
  expected.json  token ids (from the `tokenizers` library on each tokenizer.json, the file's own
                 semantics) and the probabilities transformers computes for them

Weights are random (seeded) with large scales so the probabilities are far from 0.5; dimensions
are tiny so the folders stay small (f32 safetensors, a few tens of KB each).
"""
import json
import os
import shutil
import sys

import torch
import transformers
from tokenizers import Tokenizer
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures", "judge"))

# plugins/medical-verifier's verifier template, written out independently.
VERIFIER = (
    "<Model Response>\n{final}\n</Model Response>\n\n<Reference Answer>\n{gt}\n</Reference Answer>\n\n"
    "Your task is to evaluate the model response by comparing it to the reference answer. If the model "
    'response is correct and aligns with the reference answer, output "True" . If it is incorrect or '
    'fails to select the correct option (if options are provided), output "False" . {eos}'
)

# (final response, reference answer) pairs the Rust test feeds through the medical-verifier plugin.
VERIFIER_CASES = [
    ("Metformin is the first-line drug.", "metformin"),
    ("Surgical resection.", "Liver transplantation"),
    ("The patient has hepatitis B.", "hepatitis B virus infection"),
]

PROMPTS = [
    "The patient has a fever and a cough.",
    "What is the dose?",
    "Is this answer correct? True or False",
    # Ends with the pad token (<|endoftext|>, id 0): transformers classifies the token before it.
    "The answer is correct.<|endoftext|>",
    "A",
]

DIMS = dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-6,
            rope_theta=10000.0)


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.3 * noise)
            elif name.startswith("score"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(0.3 * noise)


def copy_tokenizer(src, dst, extra_tokens=()):
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "tokenizer_config.json"), os.path.join(dst, "tokenizer_config.json"))
    tok = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    if extra_tokens:
        tok.add_tokens(list(extra_tokens))
    tok.save(os.path.join(dst, "tokenizer.json"))
    return tok


def save(model, dst):
    model.save_pretrained(dst, safe_serialization=True)
    # Keep only what a model folder needs (transformers may add generation_config.json).
    keep = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    for f in os.listdir(dst):
        if f not in keep:
            os.remove(os.path.join(dst, f))


def classify(model, tok, texts, pad_id, batched):
    """Label logits and probabilities for texts, as one right-padded batch (batched) or one at a time."""
    ids = [tok.encode(t, add_special_tokens=True).ids for t in texts]
    if batched:
        n = max(len(i) for i in ids)
        inp = torch.tensor([i + [pad_id] * (n - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
        with torch.no_grad():
            logits = model(input_ids=inp, attention_mask=mask).logits
    else:
        with torch.no_grad():
            logits = torch.cat([model(input_ids=torch.tensor([i])).logits for i in ids])
    return ids, logits.tolist(), torch.softmax(logits.double(), -1).tolist()


def main(tiny_dir):
    os.makedirs(OUT, exist_ok=True)
    expected = {"versions": versions(), "prompts": PROMPTS, "verifier_template": VERIFIER}

    # Llama classifier with a pad token: batched with right padding, and one at a time.
    d = os.path.join(OUT, "llama-cls")
    tok = copy_tokenizer(tiny_dir, d)
    cfg = LlamaConfig(vocab_size=512, pad_token_id=0, eos_token_id=2, bos_token_id=None,
                      tie_word_embeddings=False, id2label={0: "False", 1: "True"},
                      label2id={"False": 0, "True": 1}, **DIMS)
    torch.manual_seed(0)
    m = LlamaForSequenceClassification(cfg).eval()
    randomize(m, 11)
    save(m, d)
    m = LlamaForSequenceClassification.from_pretrained(d, dtype=torch.float32).eval()
    ids, logits, batched = classify(m, tok, PROMPTS, 0, batched=True)
    _, _, single = classify(m, tok, PROMPTS, 0, batched=False)
    verifier_prompts = [VERIFIER.format(final=f, gt=g, eos="<|endoftext|>") for f, g in VERIFIER_CASES]
    v_ids, _, v_rows = classify(m, tok, verifier_prompts, 0, batched=True)
    expected["llama_cls"] = {
        "ids": ids,
        "logits_batched": logits,
        "probs_batched": batched,
        "probs_single": single,
        "verifier_cases": [{"final": f, "gt": g} for f, g in VERIFIER_CASES],
        "verifier_ids": v_ids,
        "verifier_p_true": [r[1] for r in v_rows],
    }

    # Qwen2 classifier (attention biases, tied config) without a pad token: last token, unbatched.
    # RoPE theta 1e6 as in Qwen2.5; transformers 5 stores it under `rope_parameters`.
    d = os.path.join(OUT, "qwen2-cls")
    tok = copy_tokenizer(tiny_dir, d)
    cfg = Qwen2Config(vocab_size=512, pad_token_id=None, eos_token_id=2, bos_token_id=None,
                      tie_word_embeddings=True, num_labels=2, **{**DIMS, "rope_theta": 1e6})
    torch.manual_seed(0)
    m = Qwen2ForSequenceClassification(cfg).eval()
    randomize(m, 12)
    save(m, d)
    m = Qwen2ForSequenceClassification.from_pretrained(d, dtype=torch.float32).eval()
    ids, logits, single = classify(m, tok, PROMPTS, None, batched=False)
    expected["qwen2_cls"] = {"ids": ids, "logits_single": logits, "probs_single": single}

    # Causal LM judge: P(True) of the next token, raw prompt and ChatML-rendered prompt.
    d = os.path.join(OUT, "llama-lm")
    tok = copy_tokenizer(tiny_dir, d, extra_tokens=["True", "False"])
    true_id, false_id = tok.token_to_id("True"), tok.token_to_id("False")
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), eos_token_id=2, bos_token_id=None,
                      tie_word_embeddings=False, **DIMS)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    randomize(m, 13)
    save(m, d)
    m = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(d)
    cases = []
    for chat in [False, True]:
        for p in PROMPTS:
            text = hf_tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) if chat else p
            ids = tok.encode(text, add_special_tokens=not chat).ids
            with torch.no_grad():
                logits = m(input_ids=torch.tensor([ids])).logits[0, -1].double()
            vocab = torch.softmax(logits, -1)
            pair = torch.softmax(logits[[true_id, false_id]], -1)
            with torch.no_grad():
                greedy = m.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=6, do_sample=False, eos_token_id=2, pad_token_id=0)
            cases.append({"prompt": p, "chat": chat, "ids": ids, "p_true_vocab": float(vocab[true_id]),
                          "p_true_pair": float(pair[0]), "greedy_ids": greedy[0, len(ids):].tolist()})
    expected["llama_lm"] = {"true_id": true_id, "false_id": false_id, "cases": cases}

    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
