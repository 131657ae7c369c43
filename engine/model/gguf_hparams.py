"""The GGUF hyperparameters llama.cpp trusts: checked here so a hostile file gets a typed error.

llama.cpp's loader (llama-model.cpp, load_hparams) GGML_ASSERTs on some of these, which aborts
the whole process (exit 134, the terminal left in the TUI's alternate screen) instead of
failing the load; others it accepts and then divides by or feeds to the first decode (an RMS
epsilon of NaN or 0 aborts there). Every architecture goes through this, on both backends,
before llama.cpp or our decoder sees the file.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ModelFormatError

LLAMA_MAX_LAYERS = 512  # llama.cpp's GGML_ASSERT(n_layer <= LLAMA_MAX_LAYERS)
LLAMA_MAX_EXPERTS = 512
# llama_rope_scaling_type_from_string: any other string is UNSPECIFIED, which load_hparams asserts on.
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")


def check_gguf_hparams(metadata: dict[str, Any], where: str = "GGUF metadata") -> None:
    """Refuse, naming the key, what llama.cpp would abort on or compute nonsense from."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelFormatError(f"{where}: 'general.architecture' is missing or not a string")

    def key(name: str) -> str:
        return f"{arch}.{name}"

    def integer(name: str, low: int, high: int | None = None, required: bool = False) -> int | None:
        value = metadata.get(key(name))
        if value is None:
            if required:
                raise ModelFormatError(f"{where} lacks {key(name)!r}")
            return None
        values = value if isinstance(value, list) else [value]  # per-layer arrays are allowed
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
                bound = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise ModelFormatError(f"{where}: {key(name)!r} is {v!r}; it must be an integer {bound}")
        return value if isinstance(value, int) else None

    def number(name: str, *, positive: bool) -> float | None:
        value = metadata.get(key(name))
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (positive and value <= 0) or value < 0:
            need = "a positive number" if positive else "a finite number >= 0"
            raise ModelFormatError(f"{where}: {key(name)!r} is {value!r}; it must be {need}")
        return float(value)

    integer("block_count", 1, LLAMA_MAX_LAYERS, required=True)
    integer("context_length", 1, required=True)
    dim = integer("embedding_length", 1, required=True)
    integer("feed_forward_length", 0)
    n_heads = integer("attention.head_count", 0)
    n_kv_heads = integer("attention.head_count_kv", 0)
    if n_heads and n_kv_heads and n_heads % n_kv_heads:
        raise ModelFormatError(
            f"{where}: {n_heads} attention heads ({key('attention.head_count')!r}) are not a multiple of "
            f"{n_kv_heads} KV heads ({key('attention.head_count_kv')!r})"
        )
    head_dim = integer("attention.key_length", 1)
    if head_dim is None and n_heads and dim % n_heads:
        raise ModelFormatError(
            f"{where}: {key('embedding_length')!r} ({dim}) is not a multiple of {key('attention.head_count')!r} ({n_heads})"
        )
    head_dim = head_dim or (dim // n_heads if n_heads else None)
    rope_dim = integer("rope.dimension_count", 0)
    if rope_dim is not None and head_dim is not None and (rope_dim > head_dim or rope_dim % 2):
        raise ModelFormatError(
            f"{where}: {key('rope.dimension_count')!r} ({rope_dim}) must be even and at most the head size ({head_dim})"
        )
    experts = integer("expert_count", 0, LLAMA_MAX_EXPERTS) or 0
    used = integer("expert_used_count", 0, experts) or 0
    if experts and not used:
        raise ModelFormatError(f"{where}: {key('expert_count')!r} is {experts} but {key('expert_used_count')!r} is 0")
    for name in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base"):
        number(name, positive=True)
    number("rope.scaling.factor", positive=False)
    scaling = metadata.get(key("rope.scaling.type"))
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise ModelFormatError(
            f"{where}: {key('rope.scaling.type')!r} is {scaling!r}; llama.cpp knows {', '.join(ROPE_SCALING_TYPES)}"
        )
