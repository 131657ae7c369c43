"""Both schemes on CUDA through fused weight-only kernels: tinygemm for INT4 and grouped INT8.

Without this, `Int8Linear` / `Int4Linear` dequantize the whole weight and call `F.linear` on every
call (an H200 decoded the Llama-3.2-1B shape at 10.6 tok/s in INT8 and 27.4 in INT4 that way).

The kernel is PyTorch's tinygemm, `aten._weight_int4pack_mm(x, packed, group, scales_and_zeros)`
(bfloat16 activations, sm80+). It reads per group of inputs `w = (code - 8) * scale + zero`
from 4-bit codes in its own tiled int32 layout, built once by `aten._convert_weight_to_int4pack`
from a uint8 [out, in / 2] matrix whose byte k holds element 2k in its HIGH nibble and 2k + 1 in
its low one (`quant.schemes.pack_int4` is the other way round), and `scales_and_zeros`
[groups, out, 2] in bfloat16.

INT4, our `w = code * scale + min`: the same codes, `zero = min + 8 * scale` (since
`(code - 8) * scale + min + 8 * scale = code * scale + min`), nibbles swapped.

INT8, `w = q * s`: as on CPU (`quant.cpu_kernel`), two nibble planes of twice the width: `q = 16 h
+ l` with h the signed high nibble (-8..7) and l the low one (0..15) is the INT4 weight `[h + 8 |
l]` with scale `16 s`, zero 0 on the first half and scale `s`, zero `8 s` on the second, fed the
input twice, `[x | x]`. Same bytes read as an int8 matrix, any group size the kernel takes, so
the stored g32 scales are used as they are. A per-row INT8 layer (one scale a row) goes through
the planes too, with the largest kernel group dividing its width; `aten._weight_int8pack_mm`
(per-row scales only) is the fallback where the planes do not fit, since it measured 13x
slower than them on an H200.
`tools/gpu_check_quant.py` times both against bfloat16 `F.linear` on an H100/H200.

Precision: the kernel holds scales and zeros in bfloat16 (8 significant bits) where we store
float16 (11): codes are kept exactly; a converted weight equals our dequantized one exactly when
its scale and zero are bfloat16 numbers, else within half a bfloat16 ulp of the scale times 8 and
of the zero (`tests/quant/test_cuda_kernel.py`).

The conversion (`int4_to_tinygemm`, `int8_to_tinygemm_planes`) is plain tensor maths, tested on
CPU against `tinygemm_dequantize`, the kernel's arithmetic written out. The tiled layout itself
exists only on CUDA, so before the first conversion on a device a 64 x 256 probe whose weights
are exact in bfloat16 is packed and multiplied by the identity: the kernel must give back exactly
those weights, or nothing is converted on that device (another PyTorch may change the layout, as
2.5 did) and the layers keep dequantizing.
"""

from __future__ import annotations

import torch
from torch import nn

KERNEL_GROUP_SIZES = (256, 128, 64, 32)  # the group sizes tinygemm takes, largest first
INNER_K_TILES = (8, 4, 2)  # the kernel's K tiling, largest first: K must be a multiple of 16 x tiles
ROW_MULTIPLE = 8  # tinygemm packs 8 output rows at a time

_probe_results: dict[torch.device, bool] = {}  # device -> whether tinygemm works there as documented


# ---- the conversion: plain tensor maths, on any device ----


def swap_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 with element 2k in the low nibble (ours) <-> element 2k in the high nibble (tinygemm's)."""
    return (packed << 4) | (packed >> 4)


def _scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """[out, groups] scale and zero -> the kernel's [groups, out, 2], float32 (the caller rounds)."""
    return torch.stack((scale.float(), zero.float()), dim=-1).transpose(0, 1).contiguous()


def int4_to_tinygemm(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our INT4 (packed uint8 [out, in/2], scale and min [out, groups]) -> (tinygemm's uint8 input
    [out, in/2], scales_and_zeros float32 [groups, out, 2] with zero = min + 8 scale)."""
    scale, minimum = scale.float(), minimum.float()
    return swap_nibbles(packed), _scales_and_zeros(scale, minimum + 8 * scale)


def int8_kernel_group(in_features: int, scale: torch.Tensor) -> int | None:
    """The kernel group an INT8 weight runs with: its own group size when grouped (if the kernel
    takes it), per row the largest kernel group dividing the width; None where none fits."""
    if scale.dim() == 2 and scale.shape[1] > 1:
        group = in_features // scale.shape[1]
        return group if group in KERNEL_GROUP_SIZES else None
    return next((g for g in KERNEL_GROUP_SIZES if in_features % g == 0), None)


def int8_to_tinygemm_planes(q: torch.Tensor, scale: torch.Tensor, kernel_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q int8 [out, in] with scale [out] or [out, groups] -> (tinygemm's uint8 input [out, in] for
    the codes [h + 8 | l] of width 2 in, scales_and_zeros float32 [2 in / kernel_group, out, 2])."""
    out_features, in_features = q.shape
    wide = q.to(torch.int16)
    codes = torch.cat(((wide >> 4) + 8, wide & 15), dim=1).to(torch.uint8)  # (out, 2 in), 0..15
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]  # tinygemm's nibble order
    groups = 1 if scale.dim() == 1 else scale.shape[1]
    s = scale.float().reshape(out_features, groups).repeat_interleave(in_features // groups // kernel_group, dim=1)
    scales = torch.cat((16 * s, s), dim=1)
    zeros = torch.cat((torch.zeros_like(s), 8 * s), dim=1)
    return packed, _scales_and_zeros(scales, zeros)


def tinygemm_dequantize(packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """The weight [out, K] (float32) the kernel computes with, from its uint8 input [out, K/2] and
    scales_and_zeros [K/g, out, 2]: (code - 8) * scale + zero, element 2k in byte k's high nibble."""
    out_features = packed.shape[0]
    codes = torch.stack((packed >> 4, packed & 15), dim=-1).reshape(out_features, -1).float()  # (out, K)
    groups = scales_and_zeros.shape[0]
    scale = scales_and_zeros[..., 0].T.float()[..., None]  # (out, groups, 1)
    zero = scales_and_zeros[..., 1].T.float()[..., None]
    return ((codes.view(out_features, groups, -1) - 8) * scale + zero).view(out_features, -1)


# ---- the kernel ----


def _inner_k_tiles(k: int) -> int | None:
    return next((t for t in INNER_K_TILES if k % (16 * t) == 0), None)


def _fits(out_features: int, k: int, group: int) -> bool:
    return out_features % ROW_MULTIPLE == 0 and group in KERNEL_GROUP_SIZES and k % group == 0 and _inner_k_tiles(k) is not None


def tinygemm_works(device: torch.device) -> bool:
    """Whether tinygemm runs on `device` and reads the layout this module writes (module
    docstring); checked once per device."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    if device not in _probe_results:
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 16, (64, 256), generator=g, dtype=torch.uint8)
        # Scales and zeros on a coarse dyadic grid: every weight is exact in bfloat16.
        scale = 2.0 ** torch.randint(-6, -2, (64, 8), generator=g).float()
        zero = torch.randint(-8, 8, (64, 8), generator=g).float() / 16
        packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
        sz = _scales_and_zeros(scale, zero)
        try:
            kernel = _pack(packed.to(device), 256)
            eye = torch.eye(256, dtype=torch.bfloat16, device=device)
            got = torch.ops.aten._weight_int4pack_mm(eye, kernel, 32, sz.to(device, torch.bfloat16))  # (256, 64) = W.T
            ok = torch.equal(got.float().cpu().T, tinygemm_dequantize(packed, sz))
        except (RuntimeError, AttributeError, NotImplementedError):  # no op, an old GPU, a refused shape
            ok = False
        _probe_results[device] = ok
    return _probe_results[device]


def _int8pack_mm_works(device: torch.device) -> bool:
    try:
        x = torch.ones(1, 32, dtype=torch.bfloat16, device=device)
        w = torch.ones(8, 32, dtype=torch.int8, device=device)
        y = torch.ops.aten._weight_int8pack_mm(x, w, torch.full((8,), 0.5, dtype=torch.bfloat16, device=device))
        return bool((y == 16).all())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _pack(tinygemm_input: torch.Tensor, k: int) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack(tinygemm_input.contiguous(), _inner_k_tiles(k))


class CUDAQuantLinear(nn.Module):
    """An INT8 or INT4 linear layer in a CUDA kernel's layout (inference only: it holds only that
    layout, as plain tensors that do not move or save).

    kind: "int4" (tinygemm), "int8-planes" (INT8 through tinygemm as two nibble planes) or
    "int8-rows" (per-row INT8 through `_weight_int8pack_mm`). Activations run in bfloat16, the
    kernels' dtype; others are cast there and back.
    """

    def __init__(self, kind: str, weight: torch.Tensor, scales: torch.Tensor, group_size: int | None,
                 in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.kind, self.group_size = kind, group_size
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.scales = weight, scales  # packed int32 / int8 [out, in]; [groups, out, 2] / [out]
        self.bias = None if bias is None else bias.detach().to(weight.device, torch.bfloat16)

    @classmethod
    def from_int4(cls, packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
                  bias: torch.Tensor | None = None) -> CUDAQuantLinear | None:
        """Our INT4 tensors, already on a CUDA device -> the tinygemm layer; None where it does not apply."""
        out_features, in_features = packed.shape[0], 2 * packed.shape[1]
        group = in_features // scale.shape[1]
        if not (tinygemm_works(packed.device) and _fits(out_features, in_features, group)):
            return None
        tg, sz = int4_to_tinygemm(packed, scale, minimum)
        return cls("int4", _pack(tg, in_features), sz.to(torch.bfloat16), group, in_features, out_features, bias)

    @classmethod
    def from_int8(cls, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> CUDAQuantLinear | None:
        """Our INT8 tensors, already on a CUDA device -> the kernel layer; None where none applies."""
        out_features, in_features = q.shape
        if q.device.type != "cuda":
            return None
        # The planes first, per-row scales included: on an H200 (tools/gpu_check_quant.py) they ran
        # at 0.77-0.93x bfloat16's F.linear, `_weight_int8pack_mm` at 0.07x.
        group = int8_kernel_group(in_features, scale)
        if group is None or not (tinygemm_works(q.device) and _fits(out_features, 2 * in_features, group)):
            if scale.dim() == 1 and _int8pack_mm_works(q.device):
                return cls("int8-rows", q.contiguous(), scale.to(torch.bfloat16), None, in_features, out_features, bias)
            return None
        tg, sz = int8_to_tinygemm_planes(q, scale, group)
        return cls("int8-planes", _pack(tg, 2 * in_features), sz.to(torch.bfloat16), group, in_features, out_features, bias)

    @property
    def scheme(self) -> str:
        return self.kind.split("-")[0]

    def extra_repr(self) -> str:
        grid = "per row" if self.group_size is None else f"kernel group={self.group_size}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}, {grid}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.kind == "int8-rows":
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self.scales)
        else:
            if self.kind == "int8-planes":
                x2 = torch.cat((x2, x2), dim=1)  # (rows, 2 in): the high plane, then the low
            y = torch.ops.aten._weight_int4pack_mm(x2.contiguous(), self.weight, self.group_size, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)
