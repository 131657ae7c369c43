"""`quant MODEL --scheme int8|int4 --out DIR` (also `python -m quant`): write a quantized checkpoint.

MODEL is a models.toml name, a .gguf file or a Hugging Face checkpoint folder. The output folder
loads with `engine.load(DIR)` (native backend); `--format gguf` adds a Q8_0/Q4_0 GGUF file in
it for the llama.cpp fast path; `--eval FILE` prints size, perplexity, KL, top-1 and speed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine import RequestError

GGUF_KIND = {"int8": "q8_0", "int4": "q4_0"}


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import OneLineParser

    p = OneLineParser(prog="quant", description="Quantize a model's weights to INT8 or INT4 for the native engine.")
    p.add_argument("model", help="a models.toml name, a .gguf file or a Hugging Face checkpoint folder")
    p.add_argument("--scheme", required=True,
                   help="int8 (symmetric, a scale per group) or int4 (a scale and a zero-point per group)")
    p.add_argument("--group-size", type=int, default=None, help="inputs per group: 32, 64 or 128 (default 32)")
    p.add_argument("--out", required=True, type=Path, help="the folder to write (must not exist, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--format", choices=("safetensors", "gguf"), default="safetensors",
                   help="gguf: also write a Q8_0 (int8) or Q4_0 (int4) GGUF file that llama.cpp loads")
    p.add_argument("--calibrate", type=Path, metavar="FILE",
                   help="int4: round with GPTQ, calibrated on this text (like the model's real use; 2,000+ tokens)")
    p.add_argument("--sequential", action="store_true",
                   help="with --calibrate: calibrate each layer on the already-rounded earlier layers (~4x slower, a little better)")
    p.add_argument("--eval", type=Path, metavar="FILE", help="a text file: compare size, perplexity, KL, top-1 and decode speed")
    p.add_argument("--ctx", type=int, default=256, help="chunk length for --eval (default 256)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    return p


def check_request(args: argparse.Namespace) -> None:
    """Everything that can be refused before any model is read (UsageError: exit status 2)."""
    from engine.cli import UsageError, check_args

    check_args(args, min_ints={"ctx": 16}, model_flag="MODEL")
    from .linear import SCHEMES
    from .schemes import GROUP_SIZES

    if args.scheme not in SCHEMES:
        raise UsageError(f"--scheme: unknown scheme {args.scheme!r}: use int8 or int4")
    if args.group_size is not None and args.group_size not in GROUP_SIZES:
        raise UsageError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {args.group_size}")
    if args.format == "gguf" and args.scheme == "int4" and (args.group_size or 32) != 32:
        raise UsageError("--format gguf writes Q4_0, whose groups are 32 wide: use --group-size 32")
    if args.calibrate is not None:
        if args.scheme != "int4":
            raise UsageError("--calibrate applies to int4 only (int8 rounding to nearest already meets its quality targets)")
        if not args.calibrate.is_file():
            raise UsageError(f"--calibrate: no such file: {args.calibrate}")
    if args.sequential and args.calibrate is None:
        raise UsageError("--sequential needs --calibrate FILE")
    if args.eval is not None and not args.eval.is_file():
        raise UsageError(f"--eval: no such file: {args.eval}")


def run(args: argparse.Namespace) -> int:
    check_request(args)
    from .output import check_free_space, check_output_folder, estimate_bytes, recover, temporary_gguf

    for line in recover(args.out):  # what killed runs for this output left behind
        print(f"quant: {line}", file=sys.stderr)
    given = Path(args.model)  # a path (not a models.toml name): checked against --out before any work
    check_output_folder(args.out, force=args.force, source=given if given.exists() else None)

    import torch
    from tqdm import tqdm

    from engine import ModelFormatError
    from engine.hub import resolve

    from .checkpoint import folder_bytes, save_checkpoint, sha256_of
    from .linear import quantize_model

    if args.threads:
        torch.set_num_threads(args.threads)
    spec, source = resolve(args.model)
    check_output_folder(args.out, force=args.force, source=source)
    hf_folder = source.is_dir()
    if hf_folder and not (source / "config.json").is_file():
        raise ModelFormatError(f"{source} is not a Hugging Face checkpoint folder (no config.json)"
                               + ("; it is already quantized" if (source / "quantization.json").is_file() else ""))
    if hf_folder and args.format == "gguf":
        raise RequestError("--format gguf needs a .gguf source (it keeps the source's GGUF vocabulary); convert "
                         "the folder with llama.cpp's convert_hf_to_gguf.py first")
    group_size = args.group_size or 32
    print(f"quant: reading {source.name} ({source_bytes(source) / 1e6:.1f} MB)", file=sys.stderr)
    model = open_source(source, name=spec.name if spec else None, dtype="float32", pack_weights=False)
    shapes = [tuple(p.shape) for p in model.model.parameters()]
    check_free_space(args.out, estimate_bytes(shapes, args.scheme, group_size, GGUF_KIND[args.scheme]
                                              if args.format == "gguf" else None))
    if hf_folder:
        files = sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
        source_info = {"name": model.name, "folder": source.name, "bytes": source_bytes(source),
                       "sha256": {p.name: sha256_of(p) for p in files}}
    else:
        source_info = {"name": model.name, "file": source.name, "bytes": source.stat().st_size, "sha256": sha256_of(source)}

    extra = {}
    if args.format == "gguf":
        from .gguf_export import export_gguf

        kind = GGUF_KIND[args.scheme]
        gguf_tmp = temporary_gguf(args.out, kind)
        with tqdm(unit="tensor", desc=f"writing {kind.upper()} GGUF", file=sys.stderr) as bar:
            export_gguf(model.model, model.metadata, gguf_tmp, kind, progress=_ticker(bar))
        extra[f"model-{kind.upper()}.gguf"] = gguf_tmp

    hessians, calibration = None, None
    if args.calibrate is not None:
        hessians, calibration = calibrate(args, model, group_size)

    with tqdm(unit="layer", desc=f"quantizing to {args.scheme}" + (" (GPTQ)" if hessians else ""), file=sys.stderr) as bar:
        report = quantize_model(model.model, args.scheme, group_size, hessians=hessians, progress=_ticker(bar))
    try:
        save_checkpoint(args.out, model.model, model.metadata, report, source_info, force=args.force,
                        calibration=calibration, extra_files=extra, text_folder=source if hf_folder else None)
    finally:
        for tmp in extra.values():
            tmp.unlink(missing_ok=True)
    print(f"quant: wrote {args.out} ({folder_bytes(args.out) / 1e6:.1f} MB): {args.scheme}"
          + f", group size {group_size}",
          file=sys.stderr)
    if args.eval is not None:
        del model
        run_eval(args, source, spec)
    return 0


def open_source(source: Path, *, name: str | None = None, dtype: str, pack_weights: bool = True):
    """The unquantized model on CPU, from a .gguf file or a Hugging Face checkpoint folder."""
    from engine.runtime import NativeModel

    if source.is_dir():
        return NativeModel.from_hf_folder(source, name=name, device="cpu", dtype=dtype, pack_weights=pack_weights)
    return NativeModel(source, name=name, device="cpu", dtype=dtype, pack_weights=pack_weights)


def source_bytes(source: Path) -> int:
    """A .gguf file's size, or a checkpoint folder's weights (its *.safetensors files)."""
    if source.is_dir():
        return sum(p.stat().st_size for p in source.glob("*.safetensors"))
    return source.stat().st_size


def _ticker(bar):
    """A progress(done, total) callback that drives a tqdm bar."""
    def tick(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return tick


def calibrate(args: argparse.Namespace, model, group_size: int) -> tuple[dict, dict]:
    """GPTQ Hessians from the --calibrate text, and the metadata that records them."""
    from tqdm import tqdm

    from .checkpoint import sha256_of
    from .gptq import DAMP, SEQUENCE_LENGTH, collect_hessians, collect_hessians_sequential

    ids = model.tokenizer.encode(args.calibrate.read_text(encoding="utf-8", errors="replace"))
    if len(ids) < SEQUENCE_LENGTH:
        raise RequestError(f"--calibrate: {args.calibrate} holds only {len(ids)} tokens; give at least "
                         f"{SEQUENCE_LENGTH} (better 2,000 or more) of text like the model's real use")
    method = "sequential" if args.sequential else "one pass"
    print(f"quant: calibrating on {len(ids)} tokens of {args.calibrate.name} ({method})", file=sys.stderr)
    with tqdm(unit="token" if not args.sequential else "layer", desc="calibrating", file=sys.stderr) as bar:
        if args.sequential:
            hessians = collect_hessians_sequential(model.model, ids, group_size, progress=_ticker(bar))
        else:
            hessians = collect_hessians(model.model, ids, progress=_ticker(bar))
    return hessians, {
        "method": "gptq",
        "hessians": "sequential" if args.sequential else "float model",
        "file": args.calibrate.name,
        "sha256": sha256_of(args.calibrate),
        "tokens": len(ids),
        "sequence_length": SEQUENCE_LENGTH,
        "damp": DAMP,
    }


def run_eval(args: argparse.Namespace, source: Path, spec) -> None:
    import engine

    from .checkpoint import folder_bytes
    from .evaluate import evaluate, format_table, scored_tokens

    reference = open_source(source, dtype="float32")
    ids = reference.tokenizer.encode(args.eval.read_text(encoding="utf-8", errors="replace"))
    if len(ids) < 32:
        raise RequestError(f"--eval: {args.eval} holds only {len(ids)} tokens; give a longer text")
    kind = "safetensors" if source.is_dir() else source.suffix[1:]
    models = [
        (f"source ({kind}) in float32", reference, source_bytes(source)),
        ("source in bfloat16", open_source(source, dtype="bfloat16"), None),
        (f"{args.out.name} ({args.scheme})", engine.load(args.out, backend="native", device="cpu"), folder_bytes(args.out)),
    ]
    print(f"quant: evaluating on {len(ids)} tokens of {args.eval.name}", file=sys.stderr)
    rows = evaluate(models, ids, ctx=min(args.ctx, len(ids)),
                    progress=lambda label: print(f"quant:   scored {label}", file=sys.stderr))
    print(format_table(rows, scored_tokens=scored_tokens(ids, args.ctx), ctx=min(args.ctx, len(ids))))


def main(argv: list[str] | None = None) -> int:
    import signal

    from engine.cli import run_cli, use_utf8_streams

    use_utf8_streams()  # before argparse writes a word: --help and usage errors too
    args = build_parser().parse_args(argv)
    # SIGTERM (a `kill`, a closed session) ends the run as Ctrl-C does, so its temporaries are
    # removed on the way out; SIGKILL leaves them to the next run (quant/output.py).
    # Put back afterwards: main() also runs inside other programs (the tests, a notebook).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.default_int_handler(signum, frame))
    try:
        return run_cli("quant", lambda: run(args))
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
