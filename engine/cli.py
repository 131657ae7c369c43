"""Arguments and error handling shared by `python -m engine` and `chatapp`."""

from __future__ import annotations

import argparse
import codecs
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .argcheck import OneLineParser, UsageError, check_args
from .errors import EngineError
from .hub.spec import BACKENDS
from .results import Event, GenerationResult, TextDelta
from .runtime.sampling import SamplingParams
from .text.terminal import inert

# The argument checks are part of what every CLI here shares.
__all__ = ["OneLineParser", "UsageError", "add_model_args", "add_sampling_args", "argv_text", "check_args", "inert",
           "load_model", "print_stream", "run_cli", "sampling_kwargs", "use_utf8_streams"]


def use_utf8_streams() -> None:
    """Whatever the locale, never fail on a character: under an ASCII locale (LC_ALL=C) a reply in
    any other script would stop mid-stream with UnicodeEncodeError. An ASCII stream becomes UTF-8
    (what Python's own UTF-8 mode does for the C locale, and what terminals and pipes nearly always
    carry); another legacy encoding is kept, with characters it lacks replaced. Call first thing:
    a stream can change its encoding only before anything is written to it."""
    for stream, errors in ((sys.stdin, "replace"), (sys.stdout, "replace"), (sys.stderr, "backslashreplace")):
        encoding = getattr(stream, "encoding", None)
        if encoding is None or not hasattr(stream, "reconfigure"):
            continue  # replaced by the caller (a test's capture, a pipe wrapper): theirs to configure
        name = codecs.lookup(encoding).name
        if name == "ascii":
            stream.reconfigure(encoding="utf-8", errors=errors)
        elif name not in ("utf-8", "utf-8-sig"):
            stream.reconfigure(errors=errors)


def argv_text(text: str) -> str:
    """A command-line argument meant as text (a prompt, a stop string), as the user typed it.

    Under an ASCII locale Python decodes argv with surrogateescape: "é" arrives as two lone
    surrogates, which a Hugging Face tokenizer refuses with a TypeError. Such bytes are UTF-8
    (else replaced). File paths are left alone: their surrogates round-trip to the same bytes."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return os.fsencode(text).decode("utf-8", errors="replace")


def add_model_args(parser: argparse.ArgumentParser, *, model_flag: bool = True, subcommand: bool = False) -> None:
    """subcommand: the same flags on a subcommand, with no defaults of their own, so that
    `chatapp --model X ask` keeps the X the main parser read (argparse would otherwise write
    the subparser's default over it)."""
    default = (lambda value: argparse.SUPPRESS) if subcommand else (lambda value: value)
    if model_flag:
        parser.add_argument("-m", "--model", default=default(None),
                            help="a models.toml name or a path to a .gguf file (default: the registry's default)")
    parser.add_argument("--backend", default=default("auto"), choices=BACKENDS, help="inference backend (default: auto)")
    parser.add_argument("--device", default=default("auto"), help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--dtype", default=default("auto"), help="auto, float32, bfloat16 or float16 (default: auto)")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Sampling flags default to None ("not given"): the model's recommended settings apply
    under an explicit flag, and SamplingParams' defaults under both."""
    d = SamplingParams()
    g = parser.add_argument_group("sampling (default: the model's recommended settings, else the value shown)")
    g.add_argument("-n", "--max-tokens", type=int, help=f"most tokens to generate ({d.max_tokens})")
    g.add_argument("-t", "--temperature", type=float, help=f"0 for greedy ({d.temperature})")
    g.add_argument("--top-p", type=float, help=f"nucleus sampling mass ({d.top_p})")
    g.add_argument("--top-k", type=int, help=f"keep the k most likely tokens, 0 for all ({d.top_k})")
    g.add_argument("--min-p", type=float, help=f"drop tokens below min-p times the top probability ({d.min_p})")
    g.add_argument("--repeat-penalty", type=float,
                   help=f"repetition penalty over the last 64 tokens, 1.0 for none ({d.repetition_penalty})")
    g.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stats", action="store_true", help="print token counts and speed to stderr at the end")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The sampling settings the user gave (validated; ValueError on a bad one), only those: a
    mapping for `Model.sampling_params` / `generate(prompt, chosen)` / `chat(messages, **chosen)`,
    which fill in the rest from the model's defaults. (A whole SamplingParams would set every
    field and hide the model's recommended settings, so the CLIs resolve it after loading.)"""
    chosen = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "repetition_penalty": args.repeat_penalty,
        "seed": args.seed,
        "stop": tuple(argv_text(s) for s in args.stop),
    }
    SamplingParams.merged(chosen)
    return {k: v for k, v in chosen.items() if v is not None}


def load_model(args: argparse.Namespace):
    import engine

    status = sys.stderr.isatty()
    if status:
        print(f"loading {args.model or 'the default model'}…", file=sys.stderr, end="\r", flush=True)
    try:
        model = engine.load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                            context_length=getattr(args, "context_length", None))
    finally:  # also on Ctrl-C: the "interrupted" line must not land on top of the status line
        if status:
            print("\r\033[K", file=sys.stderr, end="", flush=True)
    for note in model.load_notes:
        print(inert(note), file=sys.stderr)
    return model


def print_stream(events: Iterator[Event], *, stats: bool = False) -> GenerationResult:
    """Write text deltas to stdout as they arrive, made inert (a model's text is hostile: an escape
    sequence in it would reach the terminal); return the final result."""
    result = None
    for event in events:
        if isinstance(event, TextDelta):
            sys.stdout.write(inert(event.text))
            sys.stdout.flush()
        elif isinstance(event, GenerationResult):
            result = event
    sys.stdout.write("\n")
    for note in result.notes if result is not None else ():
        print(f"note: {inert(note)}", file=sys.stderr)
    if stats and result is not None:
        print(
            f"[{result.prompt_tokens} prompt tokens at {result.prompt_tokens_per_second:.1f}/s, "
            f"{result.completion_tokens} generated at {result.tokens_per_second:.1f}/s, finish: {result.finish_reason}]",
            file=sys.stderr,
        )
    return result


def run_cli(prog: str, main: Callable[[], int | None]) -> int:
    """Run `main`: the project's typed errors (and argument errors) become one line on stderr and
    an exit code; so do failures of the machine around it (a disk full, a file not readable:
    OSError). Anything else is a bug, and hiding it behind a one-liner would hide the bug: its
    traceback is written to a file and a short report says where."""
    use_utf8_streams()
    try:
        return main() or 0
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except (EngineError, OSError) as e:  # the message may quote a hostile file: keep it inert
        print(f"{prog}: error: {inert(str(e))}", file=sys.stderr)
        return 1
    except MemoryError:  # the machine, not a bug (the engine's own OutOfMemoryError is an EngineError)
        print(f"{prog}: error: out of memory; try a smaller model or quantization, --dtype bfloat16, or a smaller --ctx",
              file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the last resort for bugs: report, never swallow
        return _report_bug(prog, e)


def _report_bug(prog: str, error: Exception) -> int:
    """Print where it failed and write the full traceback under the user log dir; exit status 70
    (EX_SOFTWARE: an internal error)."""
    import time
    import traceback

    from platformdirs import user_log_dir

    text = "".join(traceback.format_exception(error))
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" at {frame.filename}:{frame.lineno}" if frame else ""
    print(f"{prog}: internal error (a bug, not something you did): {type(error).__name__}: {inert(str(error))}{where}",
          file=sys.stderr)
    try:
        folder = Path(user_log_dir("chatapp"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(f"{prog} {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8", errors="replace")
        print(f"{prog}: the full traceback is in {path}; please include it in a bug report", file=sys.stderr)
    except OSError:
        sys.stderr.write(text)
    return 70
