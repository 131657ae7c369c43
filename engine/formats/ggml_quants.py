"""GGML tensor types, their block layouts, and dequantization in vectorized torch.

Every quantized type stores a tensor as a run of fixed-size blocks along the innermost
dimension. A kernel here takes the blocks as a `(n_blocks, bytes_per_block)` uint8 tensor and
returns `(n_blocks, elements_per_block)` float32; there is no per-block Python. Layouts follow
ggml-common.h and the reference `dequantize_row_*` functions in ggml-quants.c. All multi-byte
fields are little-endian; "f16" is an IEEE half-precision scale.
"""

from __future__ import annotations

import enum
from typing import Callable

import torch

QK_K = 256  # elements in a k-quant super-block


class GGMLType(enum.IntEnum):
    """ggml's tensor type numbers as stored in GGUF (gaps are types ggml removed)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


# (elements per block, bytes per block) for every type that can appear in a model file, so that
# sizes and offsets validate even for types we cannot dequantize. Q8_1 and Q8_K are only ever
# ggml's scratch formats for activations and have no entry: a file holding them is rejected.
BLOCK_LAYOUT: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.F64: (1, 8),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q2_K: (QK_K, 84),
    GGMLType.Q3_K: (QK_K, 110),
    GGMLType.Q4_K: (QK_K, 144),
    GGMLType.Q5_K: (QK_K, 176),
    GGMLType.Q6_K: (QK_K, 210),
    GGMLType.IQ2_XXS: (QK_K, 66),
    GGMLType.IQ2_XS: (QK_K, 74),
    GGMLType.IQ3_XXS: (QK_K, 98),
    GGMLType.IQ1_S: (QK_K, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (QK_K, 110),
    GGMLType.IQ2_S: (QK_K, 82),
    GGMLType.IQ4_XS: (QK_K, 136),
    GGMLType.IQ1_M: (QK_K, 56),
    GGMLType.TQ1_0: (QK_K, 54),
    GGMLType.TQ2_0: (QK_K, 66),
    GGMLType.MXFP4: (32, 17),
}

# Element types whose bytes are the values themselves: dequantizing is a reinterpret and a cast.
_PLAIN_DTYPES: dict[GGMLType, torch.dtype] = {
    GGMLType.F32: torch.float32,
    GGMLType.F16: torch.float16,
    GGMLType.BF16: torch.bfloat16,
    GGMLType.F64: torch.float64,
    GGMLType.I8: torch.int8,
    GGMLType.I16: torch.int16,
    GGMLType.I32: torch.int32,
    GGMLType.I64: torch.int64,
}

_SHIFT_2BIT = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
_SHIFT_1BIT = torch.arange(8, dtype=torch.uint8).view(8, 1)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The f16 field at byte `start` of every block, as a (n_blocks, 1) float32 column."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(..., k) bytes -> (..., 2, k): all low nibbles, then all high nibbles (ggml's order)."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-2)


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian u32 -> (n, 32) of 0/1, bit i at position i."""
    return ((packed.unsqueeze(-1) >> _SHIFT_1BIT.view(8)) & 1).reshape(-1, 32)


# --- 32-element blocks -------------------------------------------------------------------------


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    # 18 bytes: d f16 | qs[16] 4-bit. x[j] = d * (nibble - 8); low nibbles are x[0:16].
    q = _nibbles(b[:, 2:18]).reshape(-1, 32)
    return _f16(b, 0) * (q.float() - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    # 20 bytes: d f16 | m f16 | qs[16] 4-bit. x[j] = d * nibble + m.
    q = _nibbles(b[:, 4:20]).reshape(-1, 32)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    # 22 bytes: d f16 | qh u32 (bit j is the 5th bit of x[j]) | qs[16] low 4 bits as in Q4_0.
    q = _nibbles(b[:, 6:22]).reshape(-1, 32) | (_bits(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.float() - 16)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    # 24 bytes: d f16 | m f16 | qh u32 | qs[16]. x[j] = d * q + m with unsigned 5-bit q.
    q = _nibbles(b[:, 8:24]).reshape(-1, 32) | (_bits(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # 34 bytes: d f16 | qs[32] int8. x[j] = d * qs[j].
    return _f16(b, 0) * b[:, 2:34].view(torch.int8).float()


# --- 256-element k-quant super-blocks ----------------------------------------------------------


def _k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> 8 six-bit scales and 8 six-bit mins, each (n, 8) float32.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; bytes 8-11 hold the low
    4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits are the top
    2 bits of bytes 0-3 (scales) and 4-7 (mins).
    """
    sc_lo, mn_lo, hi = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat((sc_lo & 63, (hi & 0x0F) | ((sc_lo >> 2) & 0x30)), dim=1)
    mins = torch.cat((mn_lo & 63, (hi >> 4) | ((mn_lo >> 2) & 0x30)), dim=1)
    return scales.float(), mins.float()


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    # 84 bytes: scales[16] (low nibble scale, high nibble min, per 16 elements) | qs[64] 2-bit |
    # d f16 | dmin f16. qs is two 32-byte halves; shift 0,2,4,6 of a half gives 4 runs of 32.
    n = b.shape[0]
    sc = b[:, 0:16]
    scale = _f16(b, 80) * (sc & 0x0F).float()
    minimum = _f16(b, 82) * (sc >> 4).float()
    q = ((b[:, 16:80].reshape(n, 2, 1, 32) >> _SHIFT_2BIT) & 3).reshape(n, 16, 16)
    return (scale.unsqueeze(-1) * q.float() - minimum.unsqueeze(-1)).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    # 110 bytes: hmask[32] (bit k of byte l: high bit of x[32k + l]) | qs[64] low 2 bits, laid
    # out as in Q2_K | scales[12] sixteen 6-bit scales offset by 32 | d f16.
    # x = d * scale * (low2 - (4 if the high bit is clear else 0)).
    n = b.shape[0]
    packed = b[:, 96:108]
    lo = (packed[:, 0:8].reshape(n, 1, 8) >> torch.tensor([[0], [4]], dtype=torch.uint8)) & 0x0F
    hi = (packed[:, 8:12].reshape(n, 1, 4) >> _SHIFT_2BIT) & 3
    scale = (lo.reshape(n, 16) | (hi.reshape(n, 16) << 4)).float() - 32
    low2 = ((b[:, 32:96].reshape(n, 2, 1, 32) >> _SHIFT_2BIT) & 3).reshape(n, 16, 16)
    high = ((b[:, 0:32].reshape(n, 1, 32) >> _SHIFT_1BIT) & 1).reshape(n, 16, 16)
    q = low2.float() - 4 * (1 - high.float())
    return ((_f16(b, 108) * scale).unsqueeze(-1) * q).reshape(n, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # 144 bytes: d f16 | dmin f16 | scales[12] (see _k_scales_mins) | qs[128] 4-bit. Each 32-byte
    # run of qs gives 64 values: low nibbles, then high. x = d * scale * q - dmin * min per 32.
    n = b.shape[0]
    scales, mins = _k_scales_mins(b[:, 4:16])
    q = _nibbles(b[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32)
    scale = (_f16(b, 0) * scales).unsqueeze(-1)
    minimum = (_f16(b, 2) * mins).unsqueeze(-1)
    return (scale * q.float() - minimum).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # 176 bytes: d f16 | dmin f16 | scales[12] | qh[32] (bit k of byte l: 5th bit of x[32k + l]) |
    # qs[128] low 4 bits as in Q4_K.
    n = b.shape[0]
    scales, mins = _k_scales_mins(b[:, 4:16])
    low4 = _nibbles(b[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32)
    high = ((b[:, 16:48].reshape(n, 1, 32) >> _SHIFT_1BIT) & 1).reshape(n, 8, 32)
    q = low4 | (high << 4)
    scale = (_f16(b, 0) * scales).unsqueeze(-1)
    minimum = (_f16(b, 2) * mins).unsqueeze(-1)
    return (scale * q.float() - minimum).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # 210 bytes: ql[128] low 4 bits | qh[64] high 2 bits | scales[16] int8 per 16 elements | d f16.
    # Per 128-element half: ql 64 bytes -> low nibbles of [0:32], [32:64], then high nibbles;
    # qh 32 bytes -> shifts 0,2,4,6 give the high bits of the four runs of 32. x = d*scale*(q-32).
    n = b.shape[0]
    low4 = _nibbles(b[:, 0:128].reshape(n, 2, 64)).reshape(n, 8, 32)
    high2 = ((b[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFT_2BIT) & 3).reshape(n, 8, 32)
    q = ((low4 | (high2 << 4)).float() - 32).reshape(n, 16, 16)
    scale = _f16(b, 208) * b[:, 192:208].view(torch.int8).float()
    return (scale.unsqueeze(-1) * q).reshape(n, QK_K)


_KERNELS: dict[GGMLType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q2_K: _q2_k,
    GGMLType.Q3_K: _q3_k,
    GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k,
    GGMLType.Q6_K: _q6_k,
}

DEQUANTIZABLE: frozenset[GGMLType] = frozenset(_PLAIN_DTYPES) | frozenset(_KERNELS)

# Blocks per kernel call: bounds the float32 temporaries (~8 per element) to tens of MB and keeps
# them closer to the cache than one pass over a whole embedding matrix would.
_CHUNK_ELEMENTS = 1 << 20


def dequantize(data: torch.Tensor, ggml_type: GGMLType) -> torch.Tensor:
    """A flat uint8 tensor holding whole blocks of `ggml_type` -> flat float32 values.

    The caller validates that `data` is a whole number of blocks; `data` must own its memory
    (plain types are reinterpreted in place before the cast).
    """
    plain = _PLAIN_DTYPES.get(ggml_type)
    if plain is not None:
        return data.view(plain).to(torch.float32)
    kernel = _KERNELS.get(ggml_type)
    if kernel is None:
        raise NotImplementedError(f"no dequantization kernel for {ggml_type.name}")
    block_elements, block_bytes = BLOCK_LAYOUT[ggml_type]
    blocks = data.view(-1, block_bytes)
    out = torch.empty(blocks.shape[0], block_elements, dtype=torch.float32)
    step = max(1, _CHUNK_ELEMENTS // block_elements)
    for start in range(0, blocks.shape[0], step):
        out[start : start + step] = kernel(blocks[start : start + step])
    return out.view(-1)
