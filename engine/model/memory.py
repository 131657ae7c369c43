"""Will this model fit? Bytes a native load needs against what the device has, before loading.

A load that runs out of memory half-way fails late and ugly (a RuntimeError from an allocator,
or the kernel's OOM killer), so `fit_context` refuses it first with the numbers and what would
fit; `allocation_errors` turns whatever allocation failure still happens into OutOfMemoryError.
Where the caller left the context to the model and only its full window's KV cache does not fit,
`fit_context` shortens the window instead of refusing (and says so in `Model.load_notes`).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import OutOfMemoryError
from .config import ModelArgs

if TYPE_CHECKING:
    import torch

GiB = 1024**3
MiB = 1024**2
# Activations of one forward pass at our prefill chunk sizes, allocator slack and the
# interpreter's own growth while loading: a flat allowance, generous for models this engine runs.
ACTIVATION_HEADROOM = 256 * MiB


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes of parameters at the run dtype
    kv_cache: int  # bytes of K and V for every layer at the chosen context
    transient: int  # the largest single weight dequantized to float32 (plus its cast copy) while loading
    headroom: int = ACTIVATION_HEADROOM

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.transient + self.headroom


def parameter_count(args: ModelArgs) -> int:
    """Parameters of the decoder `args` describes (embeddings, attention, SwiGLU, norms)."""
    hd, dim = args.head_dim, args.dim
    attention = dim * (args.n_heads + 2 * args.n_kv_heads) * hd + args.n_heads * hd * dim
    if args.qkv_bias:
        attention += (args.n_heads + 2 * args.n_kv_heads) * hd
    layer = attention + 3 * dim * args.ffn_dim + 2 * dim
    embeddings = args.vocab_size * dim * (1 if args.tied_output else 2)
    return embeddings + args.n_layers * layer + dim


def kv_cache_bytes(args: ModelArgs, context: int, dtype_bytes: int) -> int:
    # K and V: (n_layers, 2, context, n_kv_heads, head_dim) at the run dtype.
    return 2 * args.n_layers * context * args.n_kv_heads * args.head_dim * dtype_bytes


def estimate(args: ModelArgs, *, dtype_bytes: int, context: int) -> MemoryEstimate:
    largest = max(args.vocab_size * args.dim, args.ffn_dim * args.dim, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim * args.dim)
    return MemoryEstimate(
        weights=parameter_count(args) * dtype_bytes,
        kv_cache=kv_cache_bytes(args, context, dtype_bytes),
        transient=largest * (4 + dtype_bytes),
    )


def available_bytes(device: torch.device) -> int | None:
    """What the device can still give us, or None where it cannot be told."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        except (AttributeError, RuntimeError):
            return None
    return cpu_available_bytes()


def cpu_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, capped by what RLIMIT_AS leaves this process."""
    candidates = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY:
        candidates.append(max(limit - _address_space_in_use(), 0))
    return min(candidates) if candidates else None


def _address_space_in_use() -> int:
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# A window shorter than this hardly holds a chat: below it a load is refused rather than fitted.
MIN_FITTED_CONTEXT = 2048


def fit_context(args: ModelArgs, *, dtype: torch.dtype, device: torch.device, context: int, chosen: bool,
                name: str) -> tuple[int, str | None]:
    """The context window a load gets, and a note when it is not `context`. A window the caller
    chose must fit whole, else OutOfMemoryError with the numbers and what would fit. The model's
    own window, when it does not fit, is shortened to the longest (a multiple of 256, at least
    MIN_FITTED_CONTEXT) whose full KV cache does, as llama.cpp's --fit does: a long chat then
    meets a clear "over the context window" instead of running out of memory half-way."""
    need = estimate(args, dtype_bytes=dtype.itemsize, context=context)
    have = available_bytes(device)
    if have is None or need.total <= have:
        return context, None
    room = have - (need.total - need.kv_cache)  # what the KV cache may take beside the rest
    fitted = min(room // kv_cache_bytes(args, 1, dtype.itemsize) // 256 * 256, context) if room > 0 else 0
    if chosen or fitted < MIN_FITTED_CONTEXT:
        raise _too_big(args, need, have, fitted, dtype=dtype, device=device, context=context, name=name)
    return fitted, (f"{name}: context window set to {fitted} of the model's {context} tokens, the most whose "
                    f"KV cache fits in the {_size(have)} available on {device.type} (--ctx N chooses another)")


def _too_big(args: ModelArgs, need: MemoryEstimate, have: int, fitted: int, *, dtype: torch.dtype,
             device: torch.device, context: int, name: str) -> OutOfMemoryError:
    hints = []
    if dtype.itemsize > 2 and estimate(args, dtype_bytes=2, context=context).total <= have:
        hints.append("--dtype bfloat16")
    if fitted >= 256:
        hints.append(f"--ctx {fitted}")
    hints.append("a quantized model (a GGUF file on the llama.cpp backend, or `quant`)")
    return OutOfMemoryError(
        f"{name}: loading needs about {_size(need.total)} on {device.type} (weights {_size(need.weights)}, "
        f"KV cache for {context} tokens {_size(need.kv_cache)}, working memory {_size(need.transient + need.headroom)}) "
        f"but only {_size(have)} is available; try {' or '.join(hints)}"
    )


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def is_allocation_failure(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "failed to allocate" in text)


@contextlib.contextmanager
def allocation_errors(name: str) -> Iterator[None]:
    """Turn an allocation failure inside the block into OutOfMemoryError (one line, typed)."""
    try:
        yield
    except Exception as exc:
        if not is_allocation_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise OutOfMemoryError(
            f"{name}: ran out of memory while loading ({first}); try --dtype bfloat16, a smaller --ctx "
            f"or a quantized model"
        ) from None
