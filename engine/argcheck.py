"""Command-line arguments checked before anything loads, each refusal one line naming its flag.

argparse only checks types; a `--ctx 0` or a missing `--model` file would otherwise surface
seconds later as a traceback or a misleading load error. The commands share flag names, so one
table covers `chatapp`, `python -m engine` and `quant`: every check runs only for the
attributes a command's namespace has, and skips values left None ("not given").
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from .runtime.sampling import SamplingParams


class UsageError(Exception):
    """A bad command-line argument: `run_cli` prints `PROG: error: MESSAGE` and exits with 2,
    argparse's status for usage errors."""


class OneLineParser(argparse.ArgumentParser):
    """argparse's own refusals (`--ctx abc`) as one line too, without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


# attribute -> (flag, smallest allowed value); the integer flags every command shares
_MIN_INTS = {
    "ctx": ("--ctx", 1),
    "context_length": ("--ctx", 1),
    "max_tokens": ("--max-tokens", 1),
    "threads": ("--threads", 1),
    "prompt_tokens": ("--prompt-tokens", 1),
    "gen_tokens": ("--gen-tokens", 1),
    "repeats": ("--repeats", 1),
    "seed": ("--seed", 0),
}
# attribute -> (flag, SamplingParams field) for the sampling flags
_SAMPLING = {
    "temperature": ("--temperature", "temperature"),
    "top_p": ("--top-p", "top_p"),
    "top_k": ("--top-k", "top_k"),
    "min_p": ("--min-p", "min_p"),
    "repeat_penalty": ("--repeat-penalty", "repetition_penalty"),
}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_args(args: argparse.Namespace, *, min_ints: dict[str, int] | None = None, model_flag: str = "--model") -> None:
    """Raise UsageError for the first bad argument. `min_ints` raises a flag's minimum for one
    command (perplexity needs `--ctx` >= 16); `model_flag` is what `args.model` is called."""
    for attr, (flag, minimum) in _MIN_INTS.items():
        value = getattr(args, attr, None)
        minimum = (min_ints or {}).get(attr, minimum)
        if value is not None and value < minimum:
            raise UsageError(f"{flag} must be an integer >= {minimum}, got {value}")
    for attr, (flag, field) in _SAMPLING.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
        try:
            SamplingParams(**{field: value})
        except ValueError as e:  # "top_p must be in (0, 1] ..." -> "--top-p must be in (0, 1] ..."
            raise UsageError(str(e).replace(field, flag, 1)) from None
    if any(not s for s in getattr(args, "stop", None) or ()):
        raise UsageError("--stop must not be empty")
    device = getattr(args, "device", None)
    if device is not None and not _DEVICE.fullmatch(device):
        raise UsageError(f"--device: unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    dtype = getattr(args, "dtype", None)
    if dtype is not None:
        from .model.device import check_dtype_name

        try:
            check_dtype_name(dtype)
        except ValueError as e:
            raise UsageError(f"--dtype: {e}") from None
    if hasattr(args, "model"):
        check_model_arg(args.model, model_flag)
    for attr, flag in (("file", "FILE"), ("eval", "--eval"), ("calibrate", "--calibrate")):
        _check_file(getattr(args, attr, None), flag)
    for attr, flag in (("quantized", "--quantized"), ("allow_dir", "--allow-dir")):
        for folder in getattr(args, attr, None) or ():
            if not Path(folder).expanduser().is_dir():
                raise UsageError(f"{flag}: no such folder: {folder}")


def check_model_arg(model: Any, flag: str = "--model") -> None:
    """A path must exist and a name must be in models.toml: refused here, not after an import
    of torch or a download attempt."""
    if model is None:
        return
    from .errors import ModelNotFoundError
    from .hub.registry import load_registry, looks_like_path

    if looks_like_path(model) or Path(model).exists():
        path = Path(model).expanduser()
        if not path.exists():
            raise UsageError(f"{flag}: model file not found: {path}")
        return
    try:
        load_registry().get(model)
    except ModelNotFoundError as e:
        raise UsageError(f"{flag}: {e}") from None


def _check_file(value: Any, flag: str) -> None:
    if value is None:
        return
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"{flag}: no such file: {path}")
