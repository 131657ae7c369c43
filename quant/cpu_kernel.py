"""One CPU kernel for both schemes: PyTorch's INT4 weight-only matmul, `aten._weight_int4pack_mm_for_cpu`.

The kernel computes `x @ W.T` with W held as 4-bit codes in its own blocked layout and, per
group of inputs, `w = (code - 8) * scale + zero`. INT4 maps onto it directly (zero = min +
8 * scale). INT8 goes through it as two nibble planes: an int8 weight `q = 16 * h + l`, with `h`
its signed high nibble (-8..7) and `l` its low nibble (0..15), is the INT4 weight
`[h + 8 | l]` of twice the width, with scale `16 s` and zero 0 on the first half and scale `s`
and zero `8 s` on the second; the input is fed twice, `[x | x]`. Every weight is reproduced
exactly (up to the activation-dtype rounding of the scales, as in any of these kernels), and the
bytes read per token are the same as an int8 matrix: 4 bits twice.

Why not `aten._weight_int8pack_mm`, PyTorch's own INT8 weight-only kernel: on this project's
2-core AVX-512 CPU it is compute-bound at about 15 G weights/s a core, and the INT4 kernel runs
the same int8 weights through two planes faster (`quant.linear`'s table: 17.4 against 19.7 ms a
decoded token for the whole INT8 default model, alternated in one process), and with a scale per
group of inputs, which `_weight_int8pack_mm` does not take. Neither
WOQ kernel is good at many rows: at 256 rows `_weight_int8pack_mm` takes 7.0 ms for the
3072 x 576 gate/up matrix where dequantizing to bfloat16 and calling oneDNN takes 2.9 ms, so
from `PREFILL_ROWS` rows on (prefill) the layer dequantizes and calls `F.linear`. Below that the
kernel wins, because dequantizing has a fixed cost: a forward pass of the INT8 default model
over 32 tokens took 112-119 ms through the kernel and 216-233 ms dequantized; the two met at
about 96 tokens (INT8) and 256 (INT4 g32, 500-520 ms either way). A chat turn's new tokens
(a few dozen) therefore run through the kernel.

`CPUQuantLinear` is an inference-only module (like `engine.model.packing.PackedLinear`): it holds
only the kernel's layout, which `unpack_codes` reads back for prefill, and its scales in the
activation dtype, so a loaded model keeps one copy of its weights: 1.25 bytes a weight for INT8
at group 32 (the kernel takes a 16-bit scale and zero per group and plane), 0.625 for INT4. The layout is PyTorch's (blocks of 64 output rows; two rows a byte per
input), so every packed tensor is unpacked and compared with its codes once, at pack time; a
tensor whose layout does not round-trip (another CPU, another PyTorch) is not packed and runs
through the plain modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_GROUP_SIZES = (256, 128, 64, 32)  # the group sizes the kernel takes, largest first
KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # the kernel is ~10x slower with float32 inputs
BLOCK_N = 64  # output rows per block of the kernel's layout
# From this many input rows on (prefill) a layer dequantizes and runs the dense matmul: the
# kernel's cost grows with every row (it unpacks the weights again for each few rows), the dense
# path pays one unpacking and then oneDNN's bfloat16 GEMM. Crossovers measured on the whole
# default model, alternating both paths in one process (2 threads; module docstring).
PREFILL_ROWS = {"int8": 96, "int4": 256}
PACK_ROWS = 1024  # rows packed at a time (a multiple of BLOCK_N)


def unpack_codes(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The kernel's layout -> uint8 codes [out, in]: in each block of 64 rows, input column k is
    32 bytes whose low nibbles are rows 0..31 of the block and high nibbles rows 32..63."""
    blocks = packed.reshape(out_features // BLOCK_N, in_features, BLOCK_N // 2)
    return torch.cat((blocks & 15, blocks >> 4), dim=-1).transpose(1, 2).reshape(out_features, in_features)


def pack_codes(codes: torch.Tensor) -> torch.Tensor | None:
    """uint8/int codes 0..15 [out, in] -> the kernel's layout, or None where it does not apply
    (rows not a multiple of 64, an odd width, or a layout that does not round-trip here)."""
    return _pack_rows(lambda rows: codes[rows], *codes.shape, codes.device)


def _pack_rows(codes_for, out_features: int, in_features: int, device: torch.device) -> torch.Tensor | None:
    """Pack `codes_for(rows)` (codes 0..15 of those rows) a slab of rows at a time, checking each
    slab's round trip: the kernel wants int32 codes, 4 bytes a weight, so a 49152-row head packed
    whole would need a transient 8x its packed size."""
    if device.type != "cpu" or out_features % BLOCK_N or in_features % 2:
        return None
    out = torch.empty(out_features, in_features // 2, dtype=torch.uint8)
    for start in range(0, out_features, PACK_ROWS):
        rows = slice(start, min(start + PACK_ROWS, out_features))
        codes = codes_for(rows)
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        except (RuntimeError, AttributeError):  # a build without the op, or a shape it refuses
            return None
        if packed.shape != (codes.shape[0], in_features // 2) or not torch.equal(
            unpack_codes(packed, codes.shape[0], in_features), codes.to(torch.uint8)
        ):
            return None
        out[rows] = packed  # blocks of 64 rows are contiguous in the layout: slabs concatenate
    return out


def _scales_zeros(scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[out, groups] scale and zero -> the kernel's [groups, out, 2], in `dtype`."""
    return torch.stack((scale.float(), zero.float()), dim=-1).transpose(0, 1).to(dtype).contiguous()


class CPUQuantLinear(nn.Module):
    """An INT8 or INT4 linear layer in the layout of PyTorch's INT4 CPU kernel (inference only).

    `planes` is 1 for INT4 and 2 for INT8 (high and low nibble planes, module docstring);
    `scales_zeros` is [groups, out, 2] over the planes' width, `planes * in_features`, held only
    in the activation dtype the layer is built for, as the kernel reads them.
    """

    def __init__(
        self,
        packed: torch.Tensor,
        scales_zeros: torch.Tensor,
        group_size: int,
        in_features: int,
        bias: torch.Tensor | None,
        planes: int,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, packed.shape[0]
        self.group_size, self.planes = group_size, planes
        self.packed, self.scales_zeros = packed, scales_zeros
        # In the activation dtype the layer is built for, like the scales: no cast per token.
        self.bias = None if bias is None else bias.detach().to(scales_zeros.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales_zeros.dtype

    @classmethod
    def from_int8(cls, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
                  dtype: torch.dtype) -> CPUQuantLinear | None:
        """q int8 [out, in] with scale [out] or [out, groups], for activations in `dtype`; None
        where the kernel does not apply."""
        out_features, in_features = q.shape
        groups = 1 if scale.dim() == 1 else scale.shape[1]
        group = in_features // groups
        if groups > 1:  # grouped: the kernel's groups are the scheme's
            kernel_group = group if group in KERNEL_GROUP_SIZES else None
        else:  # per row: any kernel group that divides the width carries the row's scale
            kernel_group = next((g for g in KERNEL_GROUP_SIZES if in_features % g == 0), None)
        if kernel_group is None:
            return None

        def planes(rows: slice) -> torch.Tensor:  # q = 16 h + l -> codes [h + 8 | l], (rows, 2 * in)
            codes = q[rows].to(torch.int16)
            return torch.cat(((codes >> 4) + 8, codes & 15), dim=1)

        packed = _pack_rows(planes, out_features, 2 * in_features, q.device)
        if packed is None:
            return None
        s = scale.float().reshape(out_features, groups).repeat_interleave(group // kernel_group, dim=1)
        scales = torch.cat((16 * s, s), dim=1)
        zeros = torch.cat((torch.zeros_like(s), 8 * s), dim=1)
        return cls(packed, _scales_zeros(scales, zeros, dtype), kernel_group, in_features, bias, planes=2)

    @classmethod
    def from_int4(cls, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
                  bias: torch.Tensor | None = None, *, dtype: torch.dtype) -> CPUQuantLinear | None:
        """codes 0..15 [out, in] with scale and min [out, groups], for activations in `dtype`;
        None where the kernel does not apply."""
        group = codes.shape[1] // scale.shape[1]
        if group not in KERNEL_GROUP_SIZES:
            return None
        packed = pack_codes(codes)
        if packed is None:
            return None
        scale, minimum = scale.float(), minimum.float()
        return cls(packed, _scales_zeros(scale, minimum + 8 * scale, dtype), group, codes.shape[1], bias, planes=1)

    @property
    def scheme(self) -> str:
        return "int8" if self.planes == 2 else "int4"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{'int8 as two nibble planes' if self.planes == 2 else 'int4'}, kernel group={self.group_size}, "
                f"bias={self.bias is not None}")

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """An INT8 layer's (q int8 [out, in], scale float32 [out, in / kernel group]), as packed
        (the scales as the kernel holds them, in `dtype`)."""
        blocks = self.packed.view(self.out_features // BLOCK_N, 2 * self.in_features, BLOCK_N // 2)
        hi, lo = blocks[:, : self.in_features], blocks[:, self.in_features :]
        high = torch.cat((hi & 15, hi >> 4), dim=-1).to(torch.int8)  # (blocks, in, 64): codes h + 8
        low = torch.cat((lo & 15, lo >> 4), dim=-1).to(torch.int8)
        q = (high - 8).mul_(16).add_(low)  # 16 h + l, in int8 without overflow
        groups = self.in_features // self.group_size
        return q.transpose(1, 2).reshape(self.out_features, self.in_features), self.scales_zeros[groups:, :, 0].T.float()

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] in `dtype`, computed from the codes and the scales the kernel reads
        (prefill then matches decode); in float32 exactly, in a 16-bit dtype in that dtype."""
        if self.planes == 2:
            q, scale = self.int8_weight()
            codes, zero = q, None
        else:
            codes = unpack_codes(self.packed, self.out_features, self.in_features)
            scale, zero = self.scales_zeros[..., 0].T, self.scales_zeros[..., 1].T  # (out, groups)
        work = torch.float32 if dtype == torch.float32 else dtype
        groups = scale.shape[1]
        w = codes.view(self.out_features, groups, -1).to(work)
        if zero is not None:
            w = w.sub_(8)
        w = w.mul_(scale.to(work)[..., None])
        if zero is not None:
            w = w.add_(zero.to(work)[..., None])
        return w.view(self.out_features, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x2.shape[0] >= PREFILL_ROWS[self.scheme] or x.dtype != self.dtype or x.dtype not in KERNEL_DTYPES or x.device.type != "cpu":
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        if self.planes == 2:
            x2 = torch.cat((x2, x2), dim=1)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.group_size, self.scales_zeros)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias
