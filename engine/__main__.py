"""`python -m engine`: generate, inspect, perplexity, bench, download, models."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .argcheck import OneLineParser, check_args
from .cli import (
    add_model_args,
    add_sampling_args,
    argv_text,
    load_model,
    print_stream,
    run_cli,
    sampling_kwargs,
    use_utf8_streams,
)


def cmd_generate(args: argparse.Namespace) -> int:
    chosen = sampling_kwargs(args)  # checked before the (slow) load
    model = load_model(args)
    print_stream(model.generate(argv_text(args.prompt), model.sampling_params(chosen)), stats=args.stats)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .measure.inspect_report import run_inspect

    chosen = sampling_kwargs(args)
    args.prompt = argv_text(args.prompt)
    return run_inspect(args, load_model(args), chosen)


def cmd_perplexity(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .measure.perplexity import check_text_file, perplexity_of_file

    check_text_file(args.file)
    model = load_model(args)
    # The file is read, tokenized and scored block by block: progress in bytes, from the start.
    bar = tqdm(total=os.path.getsize(args.file), unit="B", unit_scale=True, file=sys.stderr, desc="perplexity")
    result = perplexity_of_file(model, args.file, ctx=args.ctx, on_bytes=bar.update)
    bar.close()
    print(
        f"perplexity {result.perplexity:.4f} over {result.scored_tokens} scored tokens "
        f"({result.chunks} chunks of {result.ctx}; mean NLL {result.mean_nll:.5f})"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.worker == "shape":
        from .measure.bench_shape import run_shape_worker

        return run_shape_worker(args)
    if args.worker:
        from .measure.bench_worker import run_worker

        return run_worker(args)
    if args.shape:
        from .measure.bench_shape import run_shape_bench

        return run_shape_bench(args)
    from .measure.bench import run_bench

    return run_bench(args)


def cmd_download(args: argparse.Namespace) -> int:
    """Download and verify, as `chatapp pull` (which also prints a per-file report)."""
    from .hub.registry import load_registry, pull

    print(pull(load_registry().get(args.name)).path)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """A short list; `chatapp models` gives the full table."""
    from .hub.registry import find_local, load_registry

    registry = load_registry()
    for name, spec in registry.models.items():
        where = "available" if find_local(spec) is not None else "not downloaded"
        mark = "*" if name == registry.default else " "
        print(f"{mark} {name:<20} {where:<15} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m engine", description="Run LLaMA-style models with our engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="raw text completion, streamed")
    p.add_argument("prompt")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("inspect", help="token probabilities and attention of a raw completion (text heatmap, --html page)")
    p.add_argument("prompt")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--layer", type=int, default=0, help="which layer's attention (default 0; -1: the last)")
    p.add_argument("--head", type=int, default=None, help="which head (default: the mean over heads)")
    p.add_argument("--html", help="also write a standalone HTML page with the token view and heatmap")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("perplexity", help="perplexity over a text file (like llama.cpp's perplexity tool)")
    p.add_argument("file")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk, at least 16; the second half of each is scored (default: 512)")
    add_model_args(p)
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("bench", help="load time, TTFT, prefill/decode speed and memory: our backends beside llama.cpp")
    p.add_argument("-m", "--model", help="a models.toml name or a path to a .gguf file (default: the registry's default)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="prompt length in tokens (default: 256)")
    p.add_argument("--gen-tokens", type=int, default=128, help="tokens to generate, greedy (default: 128)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for torch and llama.cpp (default: all cores)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps, for the native configs (default: auto)")
    p.add_argument("--configs", help="comma list of native-f32, native-bf16, gguf, llama.cpp (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every config once, and the best round is reported (default: 3)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.add_argument("--quantized", action="append", type=Path, default=[], metavar="DIR",
                   help="a folder written by `quant`: adds a native row for it (repeatable)")
    p.add_argument("--shape", help="instead of a model file: random weights of a named shape, built in memory "
                                   "(llama-3.2-1b, llama-3.1-8b, smollm2-135m), on --device")
    p.add_argument("--scheme", choices=("int8", "int4"), help="with --shape: quantize it first, through `quant`")
    p.add_argument("--decode", choices=("auto", "static", "plain"), default="auto",
                   help="with --shape: the native decode path (auto: what generation uses on the device; static: fixed KV "
                        "buckets, CUDA graphs; plain: the decoder over a growing cache)")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128), default=32, help="with --scheme: its group size (default: 32)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one config in this process
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("download", help="fetch a models.toml entry into the Hugging Face cache")
    p.add_argument("name")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("models", help="list models.toml entries and whether they are available locally")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    use_utf8_streams()  # before argparse writes a word: --help and usage errors too
    args = build_parser().parse_args(argv)

    def run() -> int:
        # before anything loads; perplexity scores the second half of chunks of at least 16 tokens
        check_args(args, min_ints={"ctx": 16} if args.command == "perplexity" else None)
        return args.func(args)

    return run_cli("python -m engine", run)


if __name__ == "__main__":
    sys.exit(main())
