"""`python -m engine bench --shape NAME`: the native decoder on a random-weight model of a named shape.

No checkpoint and no tokenizer: the model is built in memory from `ModelArgs` (weights drawn from
N(0, 0.02), RMSNorm scales 1), on any device, optionally quantized (`--scheme int8|int4`) through
the quantizer `quant` registers under the entry point group "engine.model_quantizers" (the
engine never imports `quant`; it is found the way `engine.load` finds quant's checkpoint
loader). Prompts are random token ids.

Each round is a fresh process (`--worker shape`), which reports:
- cold TTFT: the first prompt of the fresh model, first-call set-up and all (the wait a user
  has for a fresh process's first reply);
- warm TTFT: a second prompt of the same length and other ids, in a new cache;
- decode tok/s: greedy tokens after the warm prompt, one host sync a token (as `generate` has);
- the memory roofline: the bytes a decode step reads (`bench_worker._bytes_read_per_token`)
  against this device's streaming bandwidth (`bench_worker._stream_gb_per_s`), and the decode
  rate as a fraction of it.
The table gives each figure's best round.

The loop is `generate`'s own: the decode runner's token generator (`--decode auto`, the default:
the path generation takes on the device, static on CUDA and plain on a CPU; or `static`, `plain`), greedy on the device with one host sync a token. Cold
figures include what a fresh process pays once (allocating the first KV bucket, on CUDA capturing
its decode graph); "whole reply" is the prompt plus every generated token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from types import SimpleNamespace

from ..argcheck import UsageError
from ..errors import RequestError

SHAPE_NAMES = ("llama-3.2-1b", "llama-3.1-8b", "smollm2-135m")
SCHEMES = ("int8", "int4")
QUANTIZER_GROUP = "engine.model_quantizers"
INIT_STD = 0.02  # the std of the random weights: activations stay in range over 32 layers


def shape_args(name: str):
    """The ModelArgs of a named shape (from each model's config.json)."""
    from ..model.config import ModelArgs, RopeScaling

    def llama3(factor: float) -> RopeScaling:
        return RopeScaling(kind="llama3", factor=factor, original_context=8192, low_freq_factor=1.0, high_freq_factor=4.0)

    common = dict(n_kv_heads=8, vocab_size=128256, norm_eps=1e-5, rope_base=500000.0, context_length=131072)
    if name == "llama-3.2-1b":
        return ModelArgs(dim=2048, n_layers=16, n_heads=32, head_dim=64, ffn_dim=8192, rope_dim=64,
                         tied_output=True, rope_scaling=llama3(32.0), **common)
    if name == "llama-3.1-8b":
        return ModelArgs(dim=4096, n_layers=32, n_heads=32, head_dim=128, ffn_dim=14336, rope_dim=128,
                         tied_output=False, rope_scaling=llama3(8.0), **common)
    if name == "smollm2-135m":  # the default model (models.toml), as its GGUF metadata gives it
        return ModelArgs(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, ffn_dim=1536, vocab_size=49152,
                         norm_eps=1e-5, rope_base=100000.0, rope_dim=64, context_length=8192, tied_output=True)
    raise UsageError(f"--shape: unknown shape {name!r}: choose from {', '.join(SHAPE_NAMES)}")


def random_model(args, *, device, dtype, seed: int = 0):
    """A Transformer of shape `args` with random weights in `dtype`, built on `device` directly
    (no float32 copy: the 8B shape is 15 GB in bfloat16)."""
    import torch
    from torch import nn

    from ..model.decoder import RMSNorm, Transformer
    from ..model.rope import rope_frequencies

    model = Transformer.empty(args, rope_frequencies(args).to(device))
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if isinstance(module, RMSNorm):  # scales stay float32, as the loaders keep them
                    t = torch.ones(p.shape, dtype=torch.float32, device=device)
                else:
                    t = torch.empty(p.shape, dtype=dtype, device=device).normal_(0, INIT_STD, generator=gen)
                setattr(module, name, nn.Parameter(t, requires_grad=False))
    return model.eval()


def quantize_in_place(model, scheme: str, group_size: int, dtype) -> dict:
    """Quantize `model` with the quantizer `quant` registers, packed for its device."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=QUANTIZER_GROUP)}
    if "chatapp" not in found:
        raise RequestError(f"--scheme needs the `quant` package's quantizer (entry point group {QUANTIZER_GROUP!r}): "
                           "reinstall the project (pip install -e .)")
    return found["chatapp"].load()(model, scheme, group_size=group_size, dtype=dtype)


# ---- the worker: one fresh process ----


def run_shape_worker(opts: argparse.Namespace) -> int:
    import torch

    from ..model.device import pick_device
    from ..model.packing import can_pack, pack_linears
    from ..runtime.runner import DecodeRunner
    from ..runtime.sampling import SamplingParams
    from ..runtime.static import default_decode_path
    from .bench_worker import _bytes_read_per_token, _stream_gb_per_s, _sync, peak_rss_mib

    torch.set_num_threads(opts.threads)
    device, dtype = pick_device(opts.device), torch.bfloat16
    args = shape_args(opts.shape)
    start = time.perf_counter()
    model = random_model(args, device=device, dtype=dtype)
    if opts.scheme:
        quantize_in_place(model, opts.scheme, opts.group_size, dtype)
    elif can_pack(device, dtype):  # as NativeModel loads a float model on CPU
        pack_linears(model)
    _sync(device)
    build_seconds = time.perf_counter() - start

    # The loop `generate` runs: the runner's token generator for the chosen path (prefix reuse,
    # on-device greedy sampling, one host sync a token), over a context of the model's length.
    runner = DecodeRunner(model, device=device, dtype=dtype)
    path = default_decode_path(device) if opts.decode == "auto" else opts.decode
    token_ids = runner.static_token_ids if path == "static" else runner.plain_token_ids
    params = SamplingParams(temperature=0, max_tokens=opts.gen_tokens)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, args.vocab_size, (opts.prompt_tokens,), generator=gen).tolist() for _ in range(2)]
    ttft, reply, rate = [], [], 0.0
    for ids in prompts:  # a fresh process's first reply, then a second of the same length
        start = time.perf_counter()
        tokens = token_ids(ids, params, args.vocab_size, context_length=args.context_length)
        next(tokens)  # the first token reaches the host
        ttft.append(time.perf_counter() - start)
        decode_start = time.perf_counter()
        for _ in range(opts.gen_tokens - 1):
            next(tokens)
        reply.append(time.perf_counter() - start)
        rate = (opts.gen_tokens - 1) / (time.perf_counter() - decode_start)  # the second reply's
        tokens.close()
    rss = peak_rss_mib()  # before the bandwidth probe's 256 MB

    linears = [m for m in model.modules() if hasattr(m, "in_features") and hasattr(m, "out_features")
               and not list(m.children())]
    position = opts.prompt_tokens + opts.gen_tokens // 2
    read = _bytes_read_per_token(SimpleNamespace(model=model, args=args, dtype=dtype), linears, position)
    stream = _stream_gb_per_s(device)
    roofline = stream * 1e9 / read
    row = {
        "shape": opts.shape,
        "scheme": opts.scheme or "bfloat16",
        "decode_path": path,
        "device": device.type,
        "build_seconds": round(build_seconds, 3),
        "ttft_cold_seconds": round(ttft[0], 6),
        "ttft_warm_seconds": round(ttft[1], 6),
        "reply_cold_seconds": round(reply[0], 6),
        "reply_warm_seconds": round(reply[1], 6),
        "decode_tokens_per_second": round(rate, 2),
        "mb_read_per_token": round(read / 1e6, 1),
        "stream_gb_per_s": round(stream, 1),
        "roofline_tokens_per_second": round(roofline, 1),
        "roofline_fraction": round(rate / roofline, 4),
        "peak_rss_mib": round(rss, 1),
        "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
    }
    if device.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(row))
    return 0


# ---- the parent: rounds of fresh workers, then one report ----


def run_shape_bench(opts: argparse.Namespace) -> int:
    from .bench import _run_worker, check_settings, machine_info

    check_settings(opts)
    shape_args(opts.shape)  # an unknown name fails here, before any worker starts
    if opts.configs or opts.quantized or opts.model:
        raise UsageError("--shape runs one random-weight model: it does not combine with --model, --configs or --quantized")
    rounds = []
    for round_ in range(1, opts.repeats + 1):
        if sys.stderr.isatty():
            print(f"bench: {opts.shape}, round {round_}/{opts.repeats}…", file=sys.stderr, end="\r", flush=True)
        rounds.append(_run_worker("shape", opts, [], 0))
    best = dict(rounds[0])
    for key in ("build_seconds", "ttft_cold_seconds", "ttft_warm_seconds", "reply_cold_seconds", "reply_warm_seconds"):
        best[key] = min(r[key] for r in rounds)
    best["decode_tokens_per_second"] = max(r["decode_tokens_per_second"] for r in rounds)
    best["decode_runs"] = [r["decode_tokens_per_second"] for r in rounds]
    fastest_stream = max(rounds, key=lambda r: r["stream_gb_per_s"])  # the bandwidth and its roofline, together
    best["stream_gb_per_s"] = fastest_stream["stream_gb_per_s"]
    best["roofline_tokens_per_second"] = fastest_stream["roofline_tokens_per_second"]
    best["roofline_fraction"] = round(best["decode_tokens_per_second"] / best["roofline_tokens_per_second"], 4)
    best["ttft_cold_vs_warm"] = round(best["ttft_cold_seconds"] / best["ttft_warm_seconds"], 3)
    best["reply_cold_vs_warm"] = round(best["reply_cold_seconds"] / best["reply_warm_seconds"], 3)
    report = {
        "machine": machine_info(),
        "settings": {"shape": opts.shape, "scheme": opts.scheme or "bfloat16", "group_size": opts.group_size if opts.scheme else None,
                     "prompt_tokens": opts.prompt_tokens, "gen_tokens": opts.gen_tokens, "threads": opts.threads,
                     "device": opts.device, "repeats": opts.repeats, "decode": opts.decode},
        "result": best,
    }
    print(json.dumps(report, indent=2) if opts.json else format_shape_report(report))
    return 0


def format_shape_report(report: dict) -> str:
    s, r, m = report["settings"], report["result"], report["machine"]
    grid = f" g{s['group_size']}" if s["group_size"] else ""
    return "\n".join([
        f"machine: {m['cpu']}{', ' + r['gpu'] if 'gpu' in r else ''}, torch {m['torch']}",
        f"shape {s['shape']} (random weights), {s['scheme']}{grid} on {r['device']}, {s['decode']} decode path, "
        f"{s['prompt_tokens']} prompt tokens, {s['gen_tokens']} generated (greedy), best of {s['repeats']} round(s)",
        f"TTFT cold {r['ttft_cold_seconds'] * 1000:.1f} ms (a fresh model's first prompt), warm "
        f"{r['ttft_warm_seconds'] * 1000:.1f} ms (a second prompt of the same length): cold / warm {r['ttft_cold_vs_warm']:.2f}",
        f"whole reply cold {r['reply_cold_seconds'] * 1000:.1f} ms, warm {r['reply_warm_seconds'] * 1000:.1f} ms: cold / warm "
        f"{r['reply_cold_vs_warm']:.2f}",
        f"decode {r['decode_tokens_per_second']:.1f} tok/s; a step reads {r['mb_read_per_token']:.1f} MB at a stream rate of "
        f"{r['stream_gb_per_s']:.1f} GB/s: roofline {r['roofline_tokens_per_second']:.1f} tok/s, decode at "
        f"{r['roofline_fraction']:.1%} of it",
    ])
