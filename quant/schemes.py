"""Quantization math on plain tensors: INT8 per output channel or in groups, INT4 in groups; INT4 packing.

Nothing here knows about modules or files. Weights are `[out, in]` as in `nn.Linear`; all math
runs in float32 whatever the input dtype, and scales come back as float32.

INT8 is symmetric: `w ~= q * scale`, q in [-127, 127], scale = absmax / 127, taken per output
row or per group of consecutive inputs in a row (GGML's Q8_0 is the group-of-32 case). Groups
cost one more float per group and measure better on the default model, whose weights are a
4-bit grid with a different scale every 32 inputs: one absmax per 576-wide row wastes most of
the 255 levels on the rows' quiet groups (README, "Quantization").

INT4 is asymmetric, `w ~= q * scale[row, group] + min[row, group]` with q in [0, 15], like
GGML's Q4_1. Two reasons over a symmetric [-8, 7] grid: a group's values are rarely centred
on zero, so min/max use all 16 levels where absmax wastes up to half of them (error bound
(max - min) / 30 against absmax / 14); and the bundled default model is itself Q4_1 with
groups of 32, so at group size 32 this scheme lands on the source grid, where plain rounding
adds almost nothing. The price is a second float per group.
"""

from __future__ import annotations

import torch

GROUP_SIZES = (32, 64, 128)  # for INT4, and for INT8 when grouped


def _check_matrix(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"expected a floating-point weight, got {w.dtype}")


def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [out, in] float -> (q int8 [out, in], scale float32 [out]), with w ~= q * scale[:, None].

    Each element is off by at most scale / 2 of its row. An all-zero row gets scale 0 and q 0.
    """
    _check_matrix(w)
    w = w.float()
    scale = w.abs().amax(dim=1) / 127  # (out,)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # zero rows: q = 0 / 1 = 0
    q = torch.round(w / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int8_grouped(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [out, in] float -> (q int8 [out, in], scale float32 [out, in/g]): absmax / 127 for each
    group of `group_size` consecutive inputs, rounded to float16 (how `Int8Linear` stores grouped
    scales, as GGML's Q8_0 does) before the codes are chosen. Each element is off by at most
    scale / 2 of its group."""
    _check_matrix(w)
    out, in_features = w.shape
    _check_group_size(in_features, group_size, "INT8")
    g = w.float().reshape(out, in_features // group_size, group_size)
    scale = (g.abs().amax(dim=-1) / 127).to(torch.float16)
    if not scale.isfinite().all():
        raise ValueError("INT8 group scales overflow float16: the weights are too large for this scheme")
    # Round the scale up where float16 rounded it down, so absmax still maps inside [-127, 127].
    scale = torch.where(scale.float() * 127 < g.abs().amax(dim=-1), torch.nextafter(scale, torch.full_like(scale, torch.inf)), scale).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(g / safe[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(out, in_features), scale


def int8_groups(q: torch.Tensor, scale: torch.Tensor) -> int:
    """How many groups a row of an INT8 weight has: 1 for a per-channel scale [out], in/g for [out, in/g]."""
    if q.dim() != 2 or scale.shape[:1] != q.shape[:1] or scale.dim() not in (1, 2):
        raise ValueError(f"scale shape {tuple(scale.shape)} does not match weight rows {tuple(q.shape)}")
    groups = 1 if scale.dim() == 1 else scale.shape[1]
    if not groups or q.shape[1] % groups:
        raise ValueError(f"{groups} scale groups do not divide the input width {q.shape[1]}")
    return groups


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(q int8 [out, in], scale [out] or [out, groups]) -> w [out, in] in `dtype`."""
    groups = int8_groups(q, scale)
    out, in_features = q.shape
    w = q.float().reshape(out, groups, in_features // groups) * scale.float().reshape(out, groups, 1)
    return w.reshape(out, in_features).to(dtype)


def _check_group_size(in_features: int, group_size: int, scheme: str = "INT4") -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{scheme} group size must be one of {GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise ValueError(
            f"input width {in_features} is not a multiple of the {scheme} group size {group_size}: "
            f"choose a group size that divides it, or keep this layer in float"
        )


def quantize_int4_grouped(
    w: torch.Tensor, group_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w: [out, in] float -> (packed uint8 [out, in/2], scale float32 [out, in/g], min float32 [out, in/g]).

    w ~= q * scale + min per group of `group_size` consecutive inputs, q in [0, 15]; each element
    is off by at most scale / 2 of its group, plus the float16 rounding of scale and min (values
    exactly representable in float16, returned as float32). A constant group gets scale 0 and
    reproduces as its min.
    """
    _check_matrix(w)
    out, in_features = w.shape
    _check_group_size(in_features, group_size)
    g = w.float().reshape(out, in_features // group_size, group_size)  # (out, groups, g)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)  # (out, groups)
    # Scales and minimums are stored in float16 (`Int4Linear`): round them first, so the codes
    # are chosen on the grid that will actually be used.
    lo = lo.to(torch.float16).float()
    scale = ((hi - lo) / 15).to(torch.float16).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((g - lo[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
    return pack_int4(q.reshape(out, in_features)), scale, lo


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q: uint8 [out, in] with values 0..15 -> uint8 [out, in/2]; element 2k in the low nibble of byte k."""
    if q.dim() != 2 or q.shape[1] % 2:
        raise ValueError(f"INT4 packing needs a 2-D tensor with an even number of columns, got {tuple(q.shape)}")
    if q.dtype != torch.uint8 or (q.numel() and int(q.max()) > 15):
        raise ValueError("INT4 packing needs uint8 values in 0..15")
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """packed uint8 [out, in/2] -> int8 [out, in] with values 0..15 (the inverse of `pack_int4`)."""
    if packed.dim() != 2 or packed.dtype != torch.uint8:
        raise ValueError(f"expected packed uint8 [out, in/2], got {packed.dtype} {tuple(packed.shape)}")
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1).to(torch.int8)


def dequantize_int4(
    packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(packed [out, in/2], scale [out, groups], min [out, groups]) -> w [out, in] in `dtype`."""
    q = unpack_int4(packed)
    out, in_features = q.shape
    if scale.dim() != 2 or scale.shape != minimum.shape or scale.shape[0] != out or not scale.shape[1]:
        raise ValueError(f"scale {tuple(scale.shape)} / min {tuple(minimum.shape)} do not fit weight {(out, in_features)}")
    groups = scale.shape[1]
    if in_features % groups:
        raise ValueError(f"{groups} groups do not divide the input width {in_features}")
    g = q.reshape(out, groups, in_features // groups).float()  # (out, groups, g)
    w = g * scale.float()[..., None] + minimum.float()[..., None]
    return w.reshape(out, in_features).to(dtype)
