#!/usr/bin/env python3
"""Compare medrl's imported model.safetensors with transformers' own GGUF loader.

transformers dequantizes the GGUF and undoes llama.cpp's Q/K permutation itself
(AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)), so it is an independent
check of names, shapes, dequantization and the un-permutation.

    MEDRL_SMOLLM2_GGUF=... MEDRL_SMOLLM2_KEEP_OUT=/tmp/smol-hf cargo test --test gguf smollm2
    python3 scripts/reference/gguf_weights_reference.py --gguf PATH --ours /tmp/smol-hf

Needs: transformers, gguf, torch, safetensors.
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ours", required=True, help="folder written by medrl import_gguf")
    args = ap.parse_args()
    ref = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(args.gguf)), gguf_file=os.path.basename(args.gguf), dtype=torch.float32
    ).state_dict()
    ours = load_file(os.path.join(args.ours, "model.safetensors"))
    # transformers materializes lm_head even when tied; we write it only if untied.
    if "lm_head.weight" not in ours and "lm_head.weight" in ref:
        assert torch.equal(ref["lm_head.weight"], ref["model.embed_tokens.weight"])
        del ref["lm_head.weight"]
    ref = {k: v for k, v in ref.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, extra = sorted(set(ref) - set(ours)), sorted(set(ours) - set(ref))
    worst, n_exact = 0.0, 0
    for k in sorted(set(ref) & set(ours)):
        a, b = ours[k], ref[k].to(torch.float32)
        if a.shape != b.shape:
            print(f"SHAPE {k}: ours {tuple(a.shape)} ref {tuple(b.shape)}")
            worst = float("inf")
            continue
        d = (a - b).abs().max().item()
        n_exact += int(d == 0.0)
        worst = max(worst, d)
        if d > 1e-6:
            print(f"DIFF {k}: max abs diff {d}")
    # config.json fields against transformers' GGUF config mapping.
    import json

    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(args.gguf)), gguf_file=os.path.basename(args.gguf))
    ours_cfg = json.load(open(os.path.join(args.ours, "config.json")))
    cfg_bad = []
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings", "vocab_size", "tie_word_embeddings",
                "bos_token_id", "eos_token_id"]:
        theirs = getattr(cfg, key, None)
        if key == "rope_theta" and theirs is None:
            theirs = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
        same = theirs == ours_cfg.get(key) or (isinstance(theirs, float) and abs(theirs - ours_cfg.get(key, 0)) <= 1e-12)
        print(f"config {key}: ours {ours_cfg.get(key)!r} transformers {theirs!r}{'' if same else '  <-- DIFFERENT'}")
        if not same:
            cfg_bad.append(key)
    print(f"{len(ours)} ours, {len(ref)} ref, missing {missing}, extra {extra}, bit-exact {n_exact}, worst {worst}")
    ok = not missing and not extra and worst <= 1e-6 and not cfg_bad
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
