#!/usr/bin/env python3
"""PyTorch + transformers side of `medrl bench rollout`: sampled-rollout throughput and batch-1
decode latency of `model.generate` on a Hugging Face model folder (config.json +
model.safetensors; random-init weights of a real shape are enough, no tokenizer is read).

Throughput (the default): `--prompts` random prompts of `--prompt-len` ids, `--samples` samples
each (num_return_sequences, so one generate() call of prompts*samples sequences), `--new-tokens`
tokens per sequence with EOS ignored (eos_token_id None and min_new_tokens = new_tokens: every
sequence is exactly new_tokens long, which is checked), temperature 1.0, top_p 1.0, top_k off.
One warm-up call of the same shapes, then one timed call:
tokens_per_s = prompts * samples * new_tokens / wall seconds (device synchronized around it).
If the whole batch does not fit, the prompts are split into equal smaller generate() calls (the
output says so in `generate_calls` and `note`).

Latency (`--latency`, or `--what both`): one prompt, greedy; ms per generated token excluding
the prefill: (time of new_tokens tokens - time of 1 token) / (new_tokens - 1), medians of
`--latency-repeats` runs after a warm-up.

Modes (`--mode`, comma-separated to run several in one process):
  dynamic         plain model.generate, the default DynamicCache, eager.
  static-compile  cache_implementation="static" with the decoding forward compiled by
                  torch.compile (transformers' CompileConfig, mode "reduce-overhead" = CUDA
                  graphs, as transformers documents for the static cache; on versions without
                  CompileConfig, model.forward is compiled by hand). The prefill stays eager, as
                  transformers runs it. The first (warm-up) call's time is `warmup_s`.
  static          the static cache without compilation (for CPU smoke tests).

One JSON line per measurement on stdout (and appended to --out). A failed measurement prints a
line with "error" and the others still run; the exit status is 1 if any failed.

    python3 scripts/device/rollout_baseline.py --model DIR --mode dynamic,static-compile --what both
    python3 scripts/device/rollout_baseline.py --model DIR --latency --new-tokens 256
    # a random-init folder of a shape (config.json fields), for medrl and this script alike:
    python3 scripts/device/rollout_baseline.py --make-model scripts/device/shapes/qwen2.5-0.5b.json --model DIR
    # CPU smoke test on tiny shapes:
    python3 scripts/device/rollout_baseline.py --model DIR --device cpu --dtype f32 --mode dynamic,static \\
        --prompts 2 --samples 2 --prompt-len 8 --new-tokens 8 --what both
"""
import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import torch

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
MODES = ("dynamic", "static", "static-compile")


def log(msg):
    print(f"[rollout_baseline] {msg}", file=sys.stderr, flush=True)


def tf_version():
    import transformers
    return transformers.__version__


def version_tuple(v):
    out = []
    for part in v.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Random-init model folder
# ---------------------------------------------------------------------------------------------

def make_model(config_path, out_dir, seed, dtype_name):
    """Write config.json (the shape file's fields, unchanged apart from torch_dtype) and
    model.safetensors with transformers' own random initialization of that architecture."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    with open(config_path) as f:
        spec = json.load(f)
    fields = {k: v for k, v in spec.items() if k != "model_type"}
    cfg = AutoConfig.for_model(spec["model_type"], **fields)
    torch.manual_seed(seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    with dev:
        model = AutoModelForCausalLM.from_config(cfg)
    model = model.to(DTYPES[dtype_name])
    state = model.state_dict()
    tied = bool(spec.get("tie_word_embeddings", False))
    tensors = {}
    for name, t in state.items():
        if tied and name == "lm_head.weight":
            continue  # the embedding table (safetensors refuses tensors that share storage)
        tensors[name] = t.detach().contiguous().cpu()
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    spec_out = dict(spec)
    spec_out["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype_name]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(spec_out, f, indent=2)
    if not os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        write_stub_tokenizer(out_dir)
    n = sum(t.numel() for t in tensors.values())
    log(f"{out_dir}: {len(tensors)} tensors, {n} parameters ({dtype_name}), {time.perf_counter() - t0:.1f}s")


def write_stub_tokenizer(out_dir):
    """A 256-entry word-level tokenizer.json with ChatML specials, for stacks that insist on one
    (medrl's model loader does; this script never reads it). The benchmark's prompts are random
    ids, so what the tokenizer would make of text does not matter."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    while len(vocab) < 256:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)


# ---------------------------------------------------------------------------------------------
# Loading and generation settings
# ---------------------------------------------------------------------------------------------

def load_model(path, device, dtype, attn):
    from transformers import AutoModelForCausalLM

    kwargs = {}
    # transformers 4.56 renamed torch_dtype to dtype; an unknown keyword would be silently stored
    # on the config, so pick by version (the .to() below makes sure either way).
    if version_tuple(tf_version()) >= (4, 56):
        kwargs["dtype"] = dtype
    else:
        kwargs["torch_dtype"] = dtype
    if attn:
        kwargs["attn_implementation"] = attn
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    # EOS ignored: no stop token anywhere generate() could pick one up from (it fills unset
    # generation settings from model.generation_config).
    gc_ = model.generation_config
    gc_.eos_token_id = None
    gc_.bos_token_id = getattr(model.config, "bos_token_id", None)
    gc_.pad_token_id = 0
    return model


def have_compile_config():
    try:
        from transformers import CompileConfig  # noqa: F401
        return True
    except ImportError:
        return False


def have_gen_attr(name):
    from transformers import GenerationConfig
    return hasattr(GenerationConfig(), name)


class Setup:
    """How generate() is called in one mode; `describe` goes into the JSON line."""

    def __init__(self, model, mode, args, device):
        self.model = model
        self.mode = mode
        self.args = args
        self.device = device
        self.describe = {}
        self.manual_forward = None
        if mode == "static-compile":
            if have_compile_config():
                from transformers import CompileConfig
                cc = CompileConfig(fullgraph=args.fullgraph, mode=args.compile_mode)
                if device.type != "cuda":
                    cc._compile_all_devices = True  # transformers only auto-compiles on accelerators otherwise
                self.compile_config = cc
                self.describe["compile"] = f"transformers CompileConfig(mode={args.compile_mode}, fullgraph={args.fullgraph}), decode steps"
            else:
                # Older transformers: compile the whole forward ourselves.
                self.compile_config = None
                self.manual_forward = model.forward
                model.forward = torch.compile(model.forward, mode=args.compile_mode, fullgraph=True)
                self.describe["compile"] = f"torch.compile(model.forward, mode={args.compile_mode}, fullgraph=True)"
        elif mode == "static":
            if not have_gen_attr("disable_compile") and have_compile_config() and device.type == "cuda":
                self.describe["compile"] = "auto (this transformers cannot turn it off)"
            else:
                self.describe["compile"] = "none"
        else:
            self.describe["compile"] = "none"

    def config(self, new_tokens, sample, num_return_sequences, max_cache_len=None):
        from transformers import GenerationConfig
        kw = dict(
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=sample,
            num_return_sequences=num_return_sequences,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
        )
        if sample:
            kw.update(temperature=self.args.temperature, top_p=self.args.top_p, top_k=self.args.top_k)
        if self.mode in ("static", "static-compile"):
            kw["cache_implementation"] = "static"
            if max_cache_len is not None and have_gen_attr("max_cache_len"):
                kw["max_cache_len"] = max_cache_len
        if self.mode == "static-compile" and self.compile_config is not None:
            kw["compile_config"] = self.compile_config
        if self.mode in ("static", "dynamic") and have_gen_attr("disable_compile"):
            kw["disable_compile"] = True
        return GenerationConfig(**kw)

    def reset(self):
        """Forget compiled graphs and the remembered static-cache size between measurements."""
        for attr in ("_compiled_call", "_last_compile_config", "_previous_max_cache_length", "_cache"):
            if attr in self.model.__dict__:
                try:
                    delattr(self.model, attr)
                except AttributeError:
                    pass
        if self.mode == "static-compile":
            torch._dynamo.reset()
            if self.manual_forward is not None:
                self.model.forward = torch.compile(self.manual_forward, mode=self.args.compile_mode, fullgraph=True)
        free_memory(self.device)

    def restore(self):
        if self.manual_forward is not None:
            self.model.forward = self.manual_forward
        self.reset()


def random_prompts(n, length, vocab, avoid, seed, device):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    if avoid:
        # Re-draw special ids (bos/eos/pad of the config) from the ids that are not special.
        bad = torch.zeros_like(ids, dtype=torch.bool)
        for a in avoid:
            bad |= ids == a
        while bad.any():
            ids[bad] = torch.randint(0, vocab, (int(bad.sum()),), generator=g)
            bad = torch.zeros_like(ids, dtype=torch.bool)
            for a in avoid:
                bad |= ids == a
    return ids.to(device)


def special_ids(model):
    out = set()
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(model.config, k, None)
        if isinstance(v, int):
            out.add(v)
        elif isinstance(v, (list, tuple)):
            out.update(x for x in v if isinstance(x, int))
    vocab = model.config.vocab_size
    return sorted(x for x in out if 0 <= x < vocab)


def generate(model, ids, gcfg):
    # generate() runs under torch.no_grad() itself; nothing else is wrapped around it.
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gcfg)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def throughput(model, setup, args, device, base):
    vocab = model.config.vocab_size
    prompts = random_prompts(args.prompts, args.prompt_len, vocab, special_ids(model), args.seed, device)
    chunk = args.prompts if args.max_prompts_per_call is None else min(args.max_prompts_per_call, args.prompts)
    notes = []
    while True:
        try:
            return _throughput(model, setup, args, device, base, prompts, chunk, notes)
        except torch.cuda.OutOfMemoryError as e:
            setup.reset()
            smaller = [d for d in range(1, chunk) if args.prompts % d == 0 and d <= chunk // 2]
            if not smaller:
                raise
            log(f"{setup.mode}: out of memory with {chunk * args.samples} sequences per call ({str(e).splitlines()[0]}); trying {smaller[-1] * args.samples}")
            notes.append(f"OOM at {chunk * args.samples} sequences per generate() call")
            chunk = smaller[-1]


def _throughput(model, setup, args, device, base, prompts, chunk, notes):
    calls = args.prompts // chunk if args.prompts % chunk == 0 else math.ceil(args.prompts / chunk)
    batches = [prompts[i * chunk:(i + 1) * chunk] for i in range(calls)]
    gcfg = setup.config(args.new_tokens, True, args.samples)
    expect = (args.prompt_len + args.new_tokens)
    torch.manual_seed(args.seed)

    sync(device)
    t0 = time.perf_counter()
    out = generate(model, batches[0], gcfg)
    sync(device)
    warmup_s = time.perf_counter() - t0
    del out
    free_memory(device)
    log(f"{setup.mode}: warm-up {warmup_s:.1f}s ({chunk * args.samples} sequences per call)")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    shapes = []
    for b in batches:
        out = generate(model, b, gcfg)
        shapes.append(tuple(out.shape))
        del out
    sync(device)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    for b, s in zip(batches, shapes):
        if s != (b.shape[0] * args.samples, expect):
            raise RuntimeError(f"generate returned shape {s}, expected {(b.shape[0] * args.samples, expect)}")
    tokens = args.prompts * args.samples * args.new_tokens
    rec = dict(base)
    rec.update(
        kind="throughput", prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
        new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        tokens_per_s=tokens / wall, wall_s=wall, warmup_s=warmup_s, peak_gib=peak,
        generate_calls=calls, sequences_per_call=chunk * args.samples,
    )
    if notes:
        rec["note"] = "; ".join(notes) + f"; measured as {calls} generate() calls of {chunk * args.samples} sequences"
    return rec


def latency(model, setup, args, device, base):
    n = args.latency_new_tokens or args.new_tokens
    if n < 2:
        raise ValueError("latency needs --new-tokens >= 2")
    vocab = model.config.vocab_size
    ids = random_prompts(1, args.prompt_len, vocab, special_ids(model), args.seed + 1, device)
    cache_len = args.prompt_len + n  # the same static cache for the full and the 1-token runs
    g_full = setup.config(n, False, 1, max_cache_len=cache_len)
    g_one = setup.config(1, False, 1, max_cache_len=cache_len)

    def timed(gcfg, want):
        sync(device)
        t = time.perf_counter()
        out = generate(model, ids, gcfg)
        sync(device)
        dt = time.perf_counter() - t
        if tuple(out.shape) != (1, args.prompt_len + want):
            raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(1, args.prompt_len + want)}")
        return dt

    t0 = time.perf_counter()
    timed(g_full, n)
    timed(g_one, 1)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fulls, ones = [], []
    for _ in range(args.latency_repeats):
        fulls.append(timed(g_full, n))
        ones.append(timed(g_one, 1))
    t_full, t_one = statistics.median(fulls), statistics.median(ones)
    ms = (t_full - t_one) / (n - 1) * 1000
    rec = dict(base)
    rec.update(
        kind="latency", prompts=1, samples=1, prompt_len=args.prompt_len, new_tokens=n, greedy=True,
        ms_per_token=ms, tokens_per_s=1000 / ms if ms > 0 else None, wall_s=t_full, prefill_s=t_one,
        warmup_s=warmup_s, repeats=args.latency_repeats,
        peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )
    return rec


def emit(rec, out_path):
    line = json.dumps(rec)
    print(line, flush=True)
    if out_path:
        with open(out_path, "a") as f:
            f.write(line + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model folder (config.json + safetensors)")
    p.add_argument("--make-model", metavar="CONFIG_JSON", help="write a random-init folder of this config to --model and exit")
    p.add_argument("--mode", default="dynamic", help="dynamic, static-compile or static; comma-separated for several")
    p.add_argument("--what", choices=("throughput", "latency", "both"), default="throughput")
    p.add_argument("--latency", action="store_true", help="same as --what latency")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--latency-new-tokens", type=int, default=None, help="new tokens of the latency run (default --new-tokens)")
    p.add_argument("--latency-repeats", type=int, default=3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-prompts-per-call", type=int, default=None, help="split the prompts into generate() calls of this many (default: all in one)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice, sdpa for these models)")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--fullgraph", action="store_true", help="CompileConfig(fullgraph=True) (transformers' default is False)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()
    if args.latency:
        args.what = "latency"

    if args.make_model:
        make_model(args.make_model, args.model, args.seed, args.dtype)
        return 0

    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; expected one of {', '.join(MODES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available (use --device cpu --dtype f32 for a smoke test)")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    model = load_model(args.model, device, dtype, args.attn)
    load_s = time.perf_counter() - t0
    params = sum(p_.numel() for p_ in model.parameters())
    attn = getattr(model.config, "_attn_implementation", None)
    log(f"{args.model}: {params} parameters, {args.dtype} on {device_name(device)}, attention {attn}, loaded in {load_s:.1f}s")

    failed = False
    for mode in modes:
        setup = None
        kinds = ["throughput", "latency"] if args.what == "both" else [args.what]
        for kind in kinds:
            base = {
                "impl": "transformers", "mode": mode, "model": os.path.basename(os.path.normpath(args.model)),
                "params": params, "dtype": args.dtype, "device": args.device, "attn": attn,
                "torch": torch.__version__, "transformers": tf_version(), "gpu": device_name(device),
            }
            try:
                if setup is None:
                    setup = Setup(model, mode, args, device)
                base.update(setup.describe)
                setup.reset()
                rec = throughput(model, setup, args, device, base) if kind == "throughput" else latency(model, setup, args, device, base)
                emit(rec, args.out)
            except Exception as e:  # one failed measurement must not hide the others
                failed = True
                traceback.print_exc(file=sys.stderr)
                rec = dict(base, kind=kind, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500])
                emit(rec, args.out)
                free_memory(device)
        if setup is not None:
            try:
                setup.restore()
            except Exception:
                traceback.print_exc(file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
