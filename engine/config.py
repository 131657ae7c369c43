"""ModelArgs: the shape of a LLaMA-style decoder, read from checkpoint metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ModelFormatError


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched beyond the trained context.

    kind: "linear" divides positions by `factor`; "llama3" divides low frequencies by `factor`
    and blends between `low_freq_factor` and `high_freq_factor` (Llama 3.1/3.2).
    """

    kind: str
    factor: float
    original_context: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float
    rope_base: float
    rope_dim: int
    context_length: int
    tied_output: bool
    rope_scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "context_length"):
            if getattr(self, name) <= 0:
                raise ModelFormatError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ModelFormatError(
                f"model config: {self.n_heads} attention heads are not a multiple of {self.n_kv_heads} KV heads"
            )
        if self.rope_dim % 2 or not 0 < self.rope_dim <= self.head_dim:
            raise ModelFormatError(f"model config: RoPE dimension {self.rope_dim} does not fit head dim {self.head_dim}")
        if not (self.norm_eps > 0 and math.isfinite(self.rope_base) and self.rope_base > 1):
            raise ModelFormatError("model config: norm epsilon and RoPE base must be positive numbers")

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any], tensor_names: set[str] | frozenset[str]) -> ModelArgs:
        arch = metadata.get("general.architecture")
        if arch != "llama":
            raise ModelFormatError(
                f"architecture {arch!r} is not supported by the native engine yet (it runs 'llama' models)"
            )

        def get(key: str, default: Any = None, kind: type = int) -> Any:
            value = metadata.get(f"{arch}.{key}", default)
            if value is None:
                raise ModelFormatError(f"GGUF metadata lacks '{arch}.{key}'")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ModelFormatError(f"GGUF metadata '{arch}.{key}' should be an integer, got {value!r}")
            if kind is float and not isinstance(value, (int, float)):
                raise ModelFormatError(f"GGUF metadata '{arch}.{key}' should be a number, got {value!r}")
            return kind(value)

        dim = get("embedding_length")
        n_heads = get("attention.head_count")
        head_dim = get("attention.key_length", dim // n_heads if n_heads else 0)
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab = get("vocab_size", len(tokens) if isinstance(tokens, list) else None)
        return cls(
            dim=dim,
            n_layers=get("block_count"),
            n_heads=n_heads,
            n_kv_heads=get("attention.head_count_kv", n_heads),
            head_dim=head_dim,
            ffn_dim=get("feed_forward_length"),
            vocab_size=vocab,
            norm_eps=get("attention.layer_norm_rms_epsilon", kind=float),
            rope_base=get("rope.freq_base", 10000.0, kind=float),
            rope_dim=get("rope.dimension_count", head_dim),
            context_length=get("context_length"),
            tied_output="output.weight" not in tensor_names,
            rope_scaling=_gguf_rope_scaling(metadata, arch),
        )


def _gguf_rope_scaling(metadata: dict[str, Any], arch: str) -> RopeScaling | None:
    # Llama 3.1-style scaling is not in the metadata: converters store the per-frequency
    # divisors as the tensor `rope_freqs.weight`, which the model loader applies.
    kind = metadata.get(f"{arch}.rope.scaling.type", "none")
    factor = metadata.get(f"{arch}.rope.scaling.factor", 1.0)
    if kind in ("none", None) or factor in (0, 1, 1.0):
        return None
    if kind != "linear":
        raise ModelFormatError(f"RoPE scaling {kind!r} is not supported by the native engine yet (it supports linear and llama3)")
    original = metadata.get(f"{arch}.rope.scaling.original_context_length", 0)
    return RopeScaling(kind="linear", factor=float(factor), original_context=int(original))
