#!/usr/bin/env python3
"""End-to-end check: the imported HF folder, loaded by plain transformers (no GGUF
code involved), must predict like llama.cpp running the original GGUF.

    python3 scripts/reference/smollm2_logits_check.py --gguf PATH --ours /tmp/smol-hf

Needs: transformers, torch, llama-cpp-python. Both sides use the same dequantized
weights, but llama.cpp quantizes activations for its Q4_1 matmuls, so logits agree
only approximately; a wrong Q/K permutation or config would break the agreement
completely.
"""
import argparse
import sys

import numpy as np
import torch
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ours", required=True)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.ours)
    model = AutoModelForCausalLM.from_pretrained(args.ours, dtype=torch.float32).eval()
    llm = Llama(model_path=args.gguf, logits_all=True, n_ctx=512, verbose=False)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": "What is the normal range of adult resting heart rate?"}],
                                tokenize=False, add_generation_prompt=True),
        "The patient was started on metformin 500 mg twice daily because",
        "患者男性，67岁，因胸痛3小时入院。",
    ]
    ok = True
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False)
        ref_ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
        assert ids == ref_ids, f"token ids differ for {p!r}"
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].numpy()
        llm.reset()
        llm.eval(ids)
        ref = np.array(llm.scores[: len(ids)])
        top_ours, top_ref = ours.argmax(-1), ref.argmax(-1)
        agree = float((top_ours == top_ref).mean())
        corr = float(np.mean([np.corrcoef(ours[i], ref[i])[0, 1] for i in range(len(ids))]))
        maxdiff = float(np.abs(ours - ref).max())
        print(f"{len(ids):3d} tokens  argmax agreement {agree:.3f}  mean logit corr {corr:.5f}  max |diff| {maxdiff:.3f}  {p[:40]!r}")
        ok &= agree >= 0.9 and corr >= 0.99
    # Greedy continuation from the HF side, for eyeballing.
    ids = tok.apply_chat_template([{"role": "user", "content": "What is hypertension?"}], add_generation_prompt=True, return_tensors="pt")
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    out = model.generate(ids, max_new_tokens=30, do_sample=False)
    print("HF greedy:", repr(tok.decode(out[0, ids.shape[1]:])))
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
