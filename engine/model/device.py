"""Device and dtype choice in one place: CUDA, then MPS, then CPU."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RequestError

if TYPE_CHECKING:  # torch loads only when a device or dtype is actually picked
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16"}


def check_dtype_name(requested: str | None) -> None:
    """Reject an unknown dtype name before anything heavy loads (whatever the backend)."""
    if isinstance(requested, str) and requested != "auto" and ALIASES.get(requested, requested) not in DTYPE_NAMES:
        raise RequestError(f"unknown dtype {requested!r}: use auto, float32, bfloat16 or float16")


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """'auto' (or None) picks CUDA, then MPS, then CPU; an explicit device must be usable."""
    import torch

    if requested is None or str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as e:
        raise RequestError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RequestError("device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RequestError("device 'mps' was asked for, but Apple Metal is not available here")
    return device


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bfloat16 dot products (AVX-512 BF16 or AMX), which oneDNN uses."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(requested: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None or 'auto' gives the fastest dtype that keeps quality on this device.

    CUDA: bfloat16 where supported, else float16. MPS: float16. CPU: bfloat16 where the CPU
    has bf16 dot-product instructions (about 3x float32's speed), else float32.
    """
    import torch

    if isinstance(requested, torch.dtype):
        if requested not in (torch.float32, torch.bfloat16, torch.float16):
            raise RequestError(f"unsupported dtype {requested}; use float32, bfloat16 or float16")
        return requested
    if requested is None or requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    check_dtype_name(requested)
    return getattr(torch, ALIASES.get(requested, requested))


def release_freed_memory() -> None:
    """Hand memory freed while loading back to the OS (glibc's `malloc_trim`), where there is glibc.

    Loading builds each weight in a few transient forms (read, converted, packed). glibc keeps
    freed blocks of that size in its heap rather than unmapping them, so without this a loaded
    INT8 model of the default model showed 925 MiB resident where its live tensors need about
    350; after it, 571.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once (`find_library` runs a subprocess), or None."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
