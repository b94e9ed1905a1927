#!/usr/bin/env python3
"""Check that Hugging Face tools load what `medrl sft` exports, with the same outputs.

For a finished LoRA run (its `final/` merged folder and `adapter/` PEFT folder) and its base:
  1. transformers loads the merged folder; its logits must equal `medrl model logits` on it;
  2. peft loads base + adapter; its logits must equal `medrl model logits --adapter` and the
     merged model's.
Run it where torch, transformers and peft are installed (scripts/device/sft-interop.sh does it on
the GPU machine):
    python3 scripts/reference/check_export_interop.py --medrl target/debug/medrl --run runs/sft-tiny-lora --base runs/tiny-qwen2
Exit status 1 when any comparison exceeds --tol.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def medrl_logits(medrl, model, prompt, adapter=None):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "logits.json"
        cmd = [medrl, "model", "logits", "--model", str(model), "--prompt", prompt, "--out", str(out)]
        if adapter:
            cmd += ["--adapter", str(adapter)]
        subprocess.run(cmd, check=True)
        v = json.loads(out.read_text())
    return v["ids"], torch.tensor(v["logits"], dtype=torch.float32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--medrl", required=True)
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--base", required=True, type=Path)
    p.add_argument("--prompt", default="I have a fever. What should I do?")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    from transformers import AutoModelForCausalLM
    from peft import PeftModel

    ok = True
    ids, ours_merged = medrl_logits(args.medrl, args.run / "final", args.prompt)
    x = torch.tensor([ids])
    merged = AutoModelForCausalLM.from_pretrained(args.run / "final", dtype=torch.float32).eval()
    with torch.no_grad():
        hf_merged = merged(x).logits[0].float()
    d1 = (hf_merged - ours_merged).abs().max().item()
    print(json.dumps({"check": "transformers merged vs medrl merged", "max_abs_diff": d1, "positions": len(ids)}))
    ok &= d1 < args.tol
    if (args.run / "adapter" / "adapter_config.json").exists():
        ids2, ours_adapter = medrl_logits(args.medrl, args.base, args.prompt, adapter=args.run / "adapter")
        assert ids2 == ids
        base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, args.run / "adapter").eval()
        with torch.no_grad():
            hf_adapter = peft_model(x).logits[0].float()
        d2 = (hf_adapter - ours_adapter).abs().max().item()
        d3 = (hf_adapter - hf_merged).abs().max().item()
        print(json.dumps({"check": "peft base+adapter vs medrl base+adapter", "max_abs_diff": d2}))
        print(json.dumps({"check": "peft base+adapter vs transformers merged", "max_abs_diff": d3}))
        ok &= d2 < args.tol and d3 < args.tol
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
