"""Rotary position embeddings: inverse frequencies with the scaling variants real checkpoints
use (linear, dynamic NTK, YaRN, Llama 3), and the cos/sin tables and rotation the decoder applies."""

from __future__ import annotations

import math

import torch

from .config import ModelArgs, RopeScaling


def plain_frequencies(base: float, rope_dim: int) -> torch.Tensor:
    """Unscaled RoPE inverse frequencies base^(-2i/rope_dim), float64, shape (rope_dim // 2,)."""
    return 1.0 / (base ** (torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim))  # (rope_dim // 2,)


def rope_frequencies(args: ModelArgs, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse frequencies, shape (rope_dim // 2,), float32, with any scaling applied.

    For "dynamic" scaling these are the frequencies within the original context; beyond it
    `dynamic_ntk_frequencies` gives them per forward pass.
    """
    inv_freq = plain_frequencies(args.rope_base, args.rope_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(torch.float64)
    scaling = args.rope_scaling
    if scaling is not None and scaling.kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling is not None and scaling.kind == "llama3":
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = scaling.original_context / scaling.low_freq_factor
        high_wavelen = scaling.original_context / scaling.high_freq_factor
        smooth = (scaling.original_context / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        inv_freq = torch.where(
            wavelen > low_wavelen, inv_freq / scaling.factor, torch.where(wavelen < high_wavelen, inv_freq, blended)
        )
    elif scaling is not None and scaling.kind == "yarn":
        inv_freq = _yarn_frequencies(inv_freq, args.rope_base, args.rope_dim, scaling)
    return inv_freq.float()


def _yarn_frequencies(inv_freq: torch.Tensor, base: float, rope_dim: int, scaling: RopeScaling) -> torch.Tensor:
    # Dimension index (fractional) whose wavelength makes `rotations` turns in the original context.
    def dim_for(rotations: float) -> float:
        return rope_dim * math.log(scaling.original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_for(scaling.beta_fast), dim_for(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rope_dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid dividing by zero
    # 0 below `low` (fast-rotating dims keep their frequency), 1 above `high` (interpolated).
    ramp = ((torch.arange(rope_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return inv_freq / scaling.factor * ramp + inv_freq * (1 - ramp)


def dynamic_ntk_frequencies(args: ModelArgs, end: int) -> torch.Tensor:
    """Dynamic NTK inverse frequencies for a forward pass ending at position `end` (exclusive).

    As transformers: within the original context the plain frequencies; beyond it the base
    grows with `end`. Shape (rope_dim // 2,), float32.
    """
    scaling = args.rope_scaling
    seq_len = max(end, scaling.original_context)
    d = args.rope_dim
    base = args.rope_base * ((scaling.factor * seq_len / scaling.original_context) - (scaling.factor - 1)) ** (d / (d - 2))
    return plain_frequencies(base, d).float()


def rope_tables(
    inv_freq: torch.Tensor, end: int, *, start: int = 0, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for positions start..end-1, shape (end - start, rope_dim), halves
    repeated for rotate_half, both multiplied by `scale` (YaRN's attention factor; 1 otherwise).

    The sin table's first half is negated: rotate_half(x) = cat(-x2, x1) = roll(x, half) * [-1, 1],
    so `apply_rope` rotates with one roll and one multiply-add instead of slicing and concatenating."""
    angles = torch.outer(torch.arange(start, end, dtype=torch.float32), inv_freq)  # (S, rope_dim/2)
    sin = angles.sin()
    cos, sin = torch.cat((angles.cos(), angles.cos()), dim=-1), torch.cat((-sin, sin), dim=-1)  # (S, rope_dim)
    if scale == 1.0:
        return cos, sin
    return cos * scale, sin * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, head_dim); cos and signed sin (`rope_tables`): (T, 1, rope_dim). Rotates the
    first rope_dim dims of each head: x * cos + rotate_half(x) * sin, in three ops."""
    rope_dim = cos.shape[-1]
    if rope_dim == x.shape[-1]:
        return torch.addcmul(x * cos, x.roll(rope_dim // 2, dims=-1), sin)
    rot, rest = x[..., :rope_dim], x[..., rope_dim:]
    return torch.cat((torch.addcmul(rot * cos, rot.roll(rope_dim // 2, dims=-1), sin), rest), dim=-1)


class RopeTables:
    """cos/sin tables for positions of one model on one device, grown on demand (doubling), so a
    short chat never pays for the full context; a cast copy is kept for the run dtype.

    `inv_freq` is already on the run device; the tables are computed on the CPU in float32 and
    moved once. Past `original_context` of dynamic NTK scaling, each call computes its own.
    """

    def __init__(self, args: ModelArgs, inv_freq: torch.Tensor) -> None:
        self.args, self.inv_freq = args, inv_freq
        scaling = args.rope_scaling
        self._scale = scaling.attention_factor if scaling is not None and scaling.kind == "yarn" else 1.0
        self._dynamic_from = scaling.original_context if scaling is not None and scaling.kind == "dynamic" else None
        self._len = 0
        self._cos = self._sin = self._cos_cast = self._sin_cast = None

    def __call__(self, start: int, end: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for positions start..end-1: (T, 1, rope_dim) each, in `dtype`."""
        device = self.inv_freq.device
        if self._dynamic_from is not None and end > self._dynamic_from:
            cos, sin = rope_tables(dynamic_ntk_frequencies(self.args, end), end, start=start)
            return cos.to(device, dtype)[:, None], sin.to(device, dtype)[:, None]
        if end > self._len:
            self._len = min(max(end, 2 * self._len, 256), max(end, self.args.context_length))
            cos, sin = rope_tables(self.inv_freq.float().cpu(), self._len, scale=self._scale)
            self._cos, self._sin = cos.to(device), sin.to(device)
            self._cos_cast = self._sin_cast = None
        if self._cos_cast is None or self._cos_cast.dtype != dtype:
            self._cos_cast, self._sin_cast = self._cos.to(dtype), self._sin.to(dtype)
        return self._cos_cast[start:end, None], self._sin_cast[start:end, None]
