#!/usr/bin/env python3
"""PyTorch + transformers side of `medrl bench sft`: the same shape, batch and optimizer.

Full fine-tuning of a random-init model (fp32 master weights, bf16 autocast, as HF Trainer's
bf16=True), AdamW (PyTorch's default foreach implementation), loss on every token of random
ids, in eager mode and with torch.compile. Prints one JSON line per mode, in the same fields as
`medrl bench sft`. Peak memory: torch.cuda.max_memory_reserved (what the caching allocator holds,
comparable to device memory in use) and max_memory_allocated.

    python3 scripts/reference/bench_sft_torch.py --shape qwen2.5-0.5b --seq 1024 --micro-batch 8 --steps 10
"""
import argparse
import json
import statistics
import time

import torch

SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5,
                         rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192),
}


def run(mode, args):
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = dict(SHAPES[args.shape])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    cfg._attn_implementation = args.attn
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).cuda()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq), device="cuda")
    fwd = torch.compile(model) if mode == "compile" else model
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fwd(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())  # waits for the device
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {
        "impl": f"pytorch-{mode}", "shape": args.shape, "seq": args.seq, "micro_batch": args.micro_batch,
        "attn": args.attn, "torch": torch.__version__,
        "median_step_s": step, "tokens_per_s": args.micro_batch * args.seq / step,
        "peak_memory_mb": torch.cuda.max_memory_reserved() / 2**20,
        "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "losses": losses,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--attn", default="sdpa", help="transformers attention implementation (sdpa, eager)")
    p.add_argument("--modes", default="eager,compile")
    args = p.parse_args()
    for mode in args.modes.split(","):
        print(json.dumps(run(mode, args)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
