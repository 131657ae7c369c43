"""INT8 and INT4 through CUDA's tinygemm (`quant.cuda_kernel`).

On CPU: the conversion maths. `tinygemm_dequantize` is the kernel's arithmetic written out
((code - 8) * scale + zero, element 2k in byte k's high nibble); applied to a converted weight it
must give our dequantized weight back:
- exactly when scales and minimums are bfloat16 numbers (the kernel's dtype), for INT4 (zero =
  min + 8 scale) and INT8 as two nibble planes (the two planes' weights summed), grouped and per row;
- in general, within the bfloat16 rounding of the scale (times 8 at most) and of the zero.
On CUDA (skipped here): the probe of the tiled layout, and each layer against `F.linear` on the
dequantized weight, relative L2 error < 0.01 (bfloat16 activations, scales and output).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_quant_core import rel_err
from torch import nn

from quant.cuda_kernel import (
    CUDAQuantLinear,
    int4_to_tinygemm,
    int8_kernel_group,
    int8_to_tinygemm_planes,
    swap_nibbles,
    tinygemm_dequantize,
    tinygemm_works,
)
from quant.linear import Int4Linear, Int8Linear, pack_for_cuda
from quant.schemes import (
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    quantize_int4_grouped,
    quantize_int8_grouped,
    quantize_int8_per_channel,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def bf16_grid(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def test_swap_nibbles_turns_our_order_into_tinygemms():
    codes = torch.tensor([[1, 2, 3, 4, 15, 0]], dtype=torch.uint8)
    ours = pack_int4(codes)
    assert ours.tolist() == [[0x21, 0x43, 0x0F]]  # element 2k in the low nibble
    assert swap_nibbles(ours).tolist() == [[0x12, 0x34, 0xF0]]  # tinygemm: element 2k in the high nibble
    assert torch.equal(swap_nibbles(swap_nibbles(ours)), ours)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_conversion_is_exact_on_the_bfloat16_grid(group):
    g = torch.Generator().manual_seed(group)
    out, inn = 16, 256
    codes = torch.randint(0, 16, (out, inn), generator=g, dtype=torch.uint8)
    scale = 2.0 ** torch.randint(-8, -2, (out, inn // group), generator=g).float()
    minimum = -torch.randint(0, 64, (out, inn // group), generator=g).float() / 256
    packed = pack_int4(codes)
    tg, sz = int4_to_tinygemm(packed, scale, minimum)
    assert tg.shape == packed.shape and tg.dtype == torch.uint8 and sz.shape == (inn // group, out, 2)
    assert torch.equal(sz.to(torch.bfloat16).float(), sz)  # nothing lost in the kernel's dtype
    assert torch.equal(sz[..., 1].T, minimum + 8 * scale)  # tinygemm's zero point
    assert torch.equal(tinygemm_dequantize(tg, sz), dequantize_int4(packed, scale, minimum))


def test_int4_conversion_of_real_weights_is_within_the_bfloat16_rounding_of_scale_and_zero():
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(1)) * 0.05 + 0.01
    packed, scale, minimum = quantize_int4_grouped(w, 64)
    tg, sz = int4_to_tinygemm(packed, scale, minimum)
    got = tinygemm_dequantize(tg, bf16_grid(sz))
    want = dequantize_int4(packed, scale, minimum)
    zero = sz[..., 1].T.repeat_interleave(64, dim=1)
    step = scale.repeat_interleave(64, dim=1)
    bound = 8 * step * 2**-8 + zero.abs() * 2**-8 + 1e-7  # half an ulp of 8 significant bits, each
    assert ((got - want).abs() <= bound).all()
    assert (got - want).abs().max() < step.max() / 4  # well inside the quantization step


@pytest.mark.parametrize("group", [32, 64, 128, None])
def test_int8_planes_sum_back_to_our_weight_exactly(group):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(7)) * 0.05
    w[2, :32] *= 40
    q, scale = quantize_int8_per_channel(w) if group is None else quantize_int8_grouped(w, group)
    scale = bf16_grid(scale)  # the kernel holds scales in bfloat16: compare on that grid
    kernel_group = int8_kernel_group(256, scale)
    assert kernel_group == (256 if group is None else group)
    tg, sz = int8_to_tinygemm_planes(q, scale, kernel_group)
    assert tg.shape == (24, 256) and sz.shape == (2 * 256 // kernel_group, 24, 2)
    assert torch.equal(bf16_grid(sz), sz)  # 16 s, s and 8 s are exact wherever s is
    planes = tinygemm_dequantize(tg, sz)  # (out, 2 in): the high plane, then the low
    assert torch.equal(planes[:, :256] + planes[:, 256:], dequantize_int8(q, scale))
    # Fed [x | x], the planes are the weight: the same product as the dequantized F.linear.
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(8))
    assert rel_err(torch.cat((x, x), 1) @ planes.T, x @ dequantize_int8(q, scale).T) < 1e-6


def test_int8_kernel_group_takes_the_schemes_group_or_the_widest_that_divides():
    assert int8_kernel_group(576, torch.ones(8, 18)) == 32
    assert int8_kernel_group(576, torch.ones(8)) == 64  # per row: 576 = 9 x 64
    assert int8_kernel_group(2048, torch.ones(8)) == 256
    assert int8_kernel_group(100, torch.ones(8)) is None
    assert int8_kernel_group(480, torch.ones(8, 3)) is None  # group 160: not a kernel group


def test_nothing_converts_off_cuda():
    w = torch.randn(64, 256) * 0.05
    assert not tinygemm_works(torch.device("cpu"))
    assert CUDAQuantLinear.from_int4(*quantize_int4_grouped(w, 32)) is None
    assert CUDAQuantLinear.from_int8(*quantize_int8_grouped(w, 32)) is None
    model = nn.Sequential(Int8Linear.from_linear(nn.Linear(256, 64), 32), Int4Linear.from_linear(nn.Linear(64, 64), 32))
    assert pack_for_cuda(model) == 0 and isinstance(model[0], Int8Linear) and isinstance(model[1], Int4Linear)


# ---- on a CUDA GPU ----


@cuda
def test_the_tiled_layout_probe_passes_on_this_gpu():
    assert tinygemm_works(torch.device("cuda"))


@cuda
@pytest.mark.parametrize("scheme, group", [("int4", 32), ("int4", 64), ("int4", 128), ("int8", 32), ("int8", None)])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_cuda_kernel_matches_dequantized_f_linear(scheme, group, rows):
    torch.manual_seed(0)
    linear = nn.Linear(1024, 512, bias=True).cuda()
    layer = Int4Linear.from_linear(linear, group) if scheme == "int4" else Int8Linear.from_linear(linear, group)
    fast = layer.packed_for_cuda()
    assert isinstance(fast, CUDAQuantLinear) and fast.scheme == scheme
    x = torch.randn(2, rows, 1024, device="cuda", dtype=torch.bfloat16)
    want = F.linear(x.float(), layer.dequantized_weight(torch.float32), layer.bias)
    got = fast(x)
    assert got.shape == (2, rows, 512) and got.dtype == torch.bfloat16
    assert rel_err(got.float(), want) < 0.01
