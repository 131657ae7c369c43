"""Arguments and error handling shared by `python -m engine` and `chatapp`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator

from .errors import EngineError
from .results import Event, GenerationResult, TextDelta
from .sampling import SamplingParams


def add_model_args(parser: argparse.ArgumentParser, *, model_flag: bool = True) -> None:
    if model_flag:
        parser.add_argument("-m", "--model", help="a models.toml name or a path to a .gguf file (default: the registry's default)")
    parser.add_argument("--backend", default="auto", choices=("auto", "native", "gguf"), help="inference backend (default: auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    d = SamplingParams()
    g = parser.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=d.max_tokens, help=f"most tokens to generate (default: {d.max_tokens})")
    g.add_argument("-t", "--temperature", type=float, default=d.temperature, help=f"0 for greedy (default: {d.temperature})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling mass (default: {d.top_p})")
    g.add_argument("--top-k", type=int, default=d.top_k, help=f"keep the k most likely tokens, 0 for all (default: {d.top_k})")
    g.add_argument("--min-p", type=float, default=d.min_p, help=f"drop tokens below min-p times the top probability (default: {d.min_p})")
    g.add_argument("--repeat-penalty", type=float, default=d.repetition_penalty, help="repetition penalty, 1.0 for none (default: 1.0)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stats", action="store_true", help="print token counts and speed to stderr at the end")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """Validated sampling settings (ValueError on a bad one), checked before any model loads."""
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repeat_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    return dataclasses.asdict(params)


def load_model(args: argparse.Namespace):
    import engine

    if sys.stderr.isatty():
        print(f"loading {args.model or 'the default model'}…", file=sys.stderr, end="\r", flush=True)
    model = engine.load(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
    if sys.stderr.isatty():
        print(" " * 60, file=sys.stderr, end="\r", flush=True)
    return model


def print_stream(events: Iterator[Event], *, stats: bool = False) -> GenerationResult:
    """Write text deltas to stdout as they arrive; return the final result."""
    result = None
    for event in events:
        if isinstance(event, TextDelta):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, GenerationResult):
            result = event
    sys.stdout.write("\n")
    if stats and result is not None:
        print(
            f"[{result.prompt_tokens} prompt tokens at {result.prompt_tokens_per_second:.1f}/s, "
            f"{result.completion_tokens} generated at {result.tokens_per_second:.1f}/s, finish: {result.finish_reason}]",
            file=sys.stderr,
        )
    return result


def run_cli(prog: str, main: Callable[[], int | None]) -> int:
    """Run `main`, turning the errors a user can cause into one line on stderr and an exit code."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except (EngineError, ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
