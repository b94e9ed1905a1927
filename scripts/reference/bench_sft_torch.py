#!/usr/bin/env python3
"""PyTorch + transformers (+ PEFT) side of `medrl bench sft`: the same shape, batch and optimizer.

Full fine-tuning of a random-init model (fp32 master weights, bf16 autocast, as HF Trainer's
bf16=True), AdamW (PyTorch's default foreach implementation), loss on every token of random
ids, in eager mode and with torch.compile. With --lora: PEFT LoRA (rank 16, alpha 32, dropout 0,
all linear projections, as `medrl bench sft --mode lora`) on a bf16 base, adapters in f32 (PEFT's
autocast_adapter_dtype), bf16 autocast. --gradient-checkpointing: transformers' per-layer
checkpointing (use_reentrant=False), as `--checkpointing every_layer`. Prints one JSON line per
mode, in the same fields as `medrl bench sft`. Peak memory: torch.cuda.max_memory_reserved (what
the caching allocator holds, comparable to device memory in use) and max_memory_allocated.

    python3 scripts/reference/bench_sft_torch.py --shape qwen2.5-0.5b --seq 1024 --micro-batch 8 --steps 10
    python3 scripts/reference/bench_sft_torch.py --shape qwen2.5-3b --lora --gradient-checkpointing --seq 2048 --micro-batch 4 --modes eager
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
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5,
                       rope_theta=500000.0, tie_word_embeddings=False, max_position_embeddings=8192),
}


def train_flops_per_token(spec, seq, trainable=None):
    """Model FLOPs per training token, as `ModelConfig::train_flops_per_token` counts them (PaLM,
    appendix B): 6 N for the matmul weights (decoder projections and the LM head) when all train,
    4 N + 6 N_trainable under LoRA, plus 12 L H D seq for attention; recomputation not counted."""
    h, i, layers = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    heads, kv = spec["num_attention_heads"], spec["num_key_value_heads"]
    d = spec.get("head_dim", h // heads)
    n = layers * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * i) + spec["vocab_size"] * h
    weights = 6.0 * n if trainable is None else 4.0 * n + 6.0 * trainable
    return weights + 12.0 * layers * heads * d * seq


def run(mode, args):
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = dict(SHAPES[args.shape])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    cfg._attn_implementation = args.attn
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16 if args.lora else torch.float32).cuda()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if args.lora:
        from peft import LoraConfig, get_peft_model
        lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
        if args.gradient_checkpointing:
            model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq), device="cuda")
    fwd = torch.compile(model) if mode == "compile" else model
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fwd(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())  # waits for the device
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    n_trainable = sum(p.numel() for p in trainable)
    flops = train_flops_per_token(SHAPES[args.shape], args.seq, n_trainable if args.lora else None)
    return {
        "impl": f"pytorch-{mode}" + ("-peft" if args.lora else ""), "shape": args.shape, "seq": args.seq, "micro_batch": args.micro_batch,
        "mode": "lora" if args.lora else "full", "checkpointing": "every_layer" if args.gradient_checkpointing else "off",
        "trainable_parameters": sum(p.numel() for p in trainable),
        "attn": args.attn, "torch": torch.__version__,
        "median_step_s": step, "tokens_per_s": args.micro_batch * args.seq / step,
        "flops_per_token": flops, "peak_tflops": args.peak_tflops,
        "mfu": args.micro_batch * args.seq / step * flops / (args.peak_tflops * 1e12),
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
    p.add_argument("--lora", action="store_true", help="PEFT LoRA r16/alpha32 on all linear layers, bf16 base")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.4, help="dense bf16 peak, the MFU denominator (H100/H200 SXM)")
    args = p.parse_args()
    for mode in args.modes.split(","):
        print(json.dumps(run(mode, args)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
