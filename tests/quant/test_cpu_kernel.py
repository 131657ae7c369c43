"""INT8 in groups, and both schemes through PyTorch's INT4 CPU kernel (`quant.cpu_kernel`).

Bounds, and why:
- Grouped INT8 round trip: within scale / 2 of its group, plus a few float32 ulps.
- The kernel layout and the dequantized weights are exact: INT8 as two nibble planes
  reproduces every int8 code and scale, INT4 every code, scale and zero (built for float32
  activations; for bfloat16 the scales are held in bfloat16, 0.4% relative error at most).
- Layer outputs against F.linear on the exactly dequantized weight, relative L2 error: in
  float32 < 1e-5 (same math); in bfloat16 < 0.01 (the activations, the kernel's bfloat16
  scales and the output are rounded to 8 mantissa bits). Both the kernel (under 32 rows:
  decode) and the dense path (32 rows and more: prefill) are checked.
- Whole models: a packed model's logits equal the unpacked model's in float32 within 1e-4
  (the packed model runs the dense path there). Loaded in bfloat16, they track the float32
  ones within 3% relative L2 error (measured 1.2-1.7%), with the same top-1 token at >= 85%
  of positions (a tiny random model's logits are close together: bfloat16 flips a few).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_quant_core import rel_err
from tiny_models import TinyConfig, write_tiny_llama
from torch import nn

import engine
from engine.runtime.native import NativeModel
from quant.checkpoint import QUANTIZATION, save_checkpoint
from quant.cpu_kernel import PREFILL_ROWS, CPUQuantLinear, pack_codes, unpack_codes
from quant.linear import Int4Linear, Int8Embedding, Int8Linear, pack_for_cpu, quantize_model
from quant.schemes import (
    dequantize_int4,
    dequantize_int8,
    quantize_int4_grouped,
    quantize_int8_grouped,
    quantize_int8_per_channel,
    unpack_int4,
)


def weight(out: int, inn: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=g) * 0.05
    w[0, :32] *= 40  # one loud group: per-row scales waste levels on the rest of its row
    w[3] = 0  # an all-zero row
    return w


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int8_grouped_round_trip_within_half_a_step_per_group(group_size):
    w = weight(64, 256, seed=group_size)
    q, scale = quantize_int8_grouped(w, group_size)
    assert q.dtype == torch.int8 and scale.shape == (64, 256 // group_size) and scale.dtype == torch.float32
    err = (dequantize_int8(q, scale) - w).abs().view(64, -1, group_size)
    assert (err <= scale[..., None] / 2 + 4 * torch.finfo(torch.float32).eps * w.abs().max()).all()
    assert not q[3].any() and (scale[3] == 0).all()
    # The point of groups: the loud group no longer coarsens its row.
    row_q, row_scale = quantize_int8_per_channel(w)
    quiet = slice(group_size, None)  # the groups after the loud one
    assert (dequantize_int8(q, scale) - w).abs()[0, quiet].max() < (dequantize_int8(row_q, row_scale) - w).abs()[0, quiet].max() / 4


def test_int8_grouped_refuses_bad_group_sizes():
    with pytest.raises(ValueError, match="INT8 group size must be one of"):
        quantize_int8_grouped(weight(64, 256), 48)
    with pytest.raises(ValueError, match="not a multiple of the INT8 group size 128"):
        quantize_int8_grouped(weight(64, 96), 128)
    with pytest.raises(ValueError, match="do not divide the input width"):
        dequantize_int8(torch.zeros(4, 96, dtype=torch.int8), torch.ones(4, 5))
    with pytest.raises(ValueError, match="overflow float16"):  # grouped scales are stored in float16
        quantize_int8_grouped(torch.full((64, 64), 1e7), 32)


def test_kernel_layout_round_trips_and_refuses_what_it_cannot_hold():
    codes = torch.randint(0, 16, (128, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_codes(codes)
    assert packed is not None and packed.shape == (128, 48) and packed.dtype == torch.uint8
    assert torch.equal(unpack_codes(packed, 128, 96), codes)
    assert pack_codes(codes[:48]) is None  # rows not a multiple of the kernel's 64-row blocks
    assert pack_codes(codes[:, :95]) is None  # an odd width


@pytest.mark.parametrize("group_size", [None, 32, 64, 128])
def test_int8_planes_reproduce_every_weight(group_size):
    w = weight(128, 256, seed=1)
    q, scale = quantize_int8_per_channel(w) if group_size is None else quantize_int8_grouped(w, group_size)
    layer = CPUQuantLinear.from_int8(q, scale, dtype=torch.float32)
    assert layer is not None and layer.scheme == "int8" and layer.planes == 2
    assert torch.equal(layer.dequantized_weight(), dequantize_int8(q, scale))
    q_back, scale_back = layer.int8_weight()
    assert torch.equal(q_back, q)
    assert torch.equal(dequantize_int8(q_back, scale_back), dequantize_int8(q, scale))
    assert layer.packed.numel() == q.numel()  # the bytes of an int8 matrix: 4 bits twice


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_layout_reproduces_every_weight(group_size):
    packed, scale, minimum = quantize_int4_grouped(weight(128, 256, seed=2), group_size)
    layer = CPUQuantLinear.from_int4(unpack_int4(packed).to(torch.uint8), scale, minimum, dtype=torch.float32)
    assert layer is not None and layer.scheme == "int4"
    assert torch.equal(layer.dequantized_weight(), dequantize_int4(packed, scale, minimum))


# The kernel below PREFILL_ROWS[scheme] rows (INT8 96, INT4 256), the dense path from there on.
@pytest.mark.parametrize("rows", [1, 5, PREFILL_ROWS["int8"] - 1, PREFILL_ROWS["int8"], PREFILL_ROWS["int4"]])
@pytest.mark.parametrize("scheme", ["int8", "int8-rows", "int4"])
def test_packed_layers_match_the_dequantized_weight(scheme, rows):
    w, bias = weight(192, 256, seed=3), torch.randn(192) * 0.1
    x = torch.randn(1, rows, 256, generator=torch.Generator().manual_seed(rows))
    for dtype, bound in ((torch.bfloat16, 0.01), (torch.float32, 1e-5)):  # scales held in the activation dtype
        if scheme == "int4":
            packed, scale, minimum = quantize_int4_grouped(w, 32)
            layer = CPUQuantLinear.from_int4(unpack_int4(packed).to(torch.uint8), scale, minimum, bias, dtype=dtype)
            stored = dequantize_int4(packed, scale, minimum)
        else:
            q, scale = quantize_int8_grouped(w, 32) if scheme == "int8" else quantize_int8_per_channel(w)
            layer = CPUQuantLinear.from_int8(q, scale, bias, dtype=dtype)
            stored = dequantize_int8(q, scale)
        exact = F.linear(x, stored, bias)
        y = layer(x.to(dtype))
        assert y.dtype == dtype and y.shape == (1, rows, 192)
        assert rel_err(y, exact) < bound, (dtype, rel_err(y, exact))
        assert rel_err(layer.dequantized_weight(), stored) < (0.004 if dtype == torch.bfloat16 else 1e-7)


def test_int8_linear_falls_back_where_the_kernel_does_not_fit():
    """48 output rows are not a multiple of the kernel's 64-row blocks: grouped INT8 dequantizes,
    per-row INT8 takes `_weight_int8pack_mm`. Both still compute the stored weight."""
    w = weight(48, 256, seed=4)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(4)).bfloat16()
    for layer in (Int8Linear(*quantize_int8_grouped(w, 32)), Int8Linear(*quantize_int8_per_channel(w))):
        assert layer.packed_for_cpu(torch.bfloat16) is None
        assert rel_err(layer(x), F.linear(x.float(), layer.dequantized_weight())) < 0.01
        assert layer._kernel is False  # tried once, remembered


def test_grouped_int8_linear_and_embedding_modules():
    w = weight(128, 96, seed=5)
    layer = Int8Linear(*quantize_int8_grouped(w, 32))
    assert layer.group_size == 32 and "group_size=32" in repr(layer)
    assert layer.scale.dtype == torch.float16  # as GGML's Q8_0 stores them; per-row scales stay float32
    assert Int8Linear(*quantize_int8_per_channel(w)).scale.dtype == torch.float32
    x = torch.randn(3, 96)
    assert rel_err(layer(x), F.linear(x, layer.dequantized_weight())) < 1e-6  # float32: the dense path
    assert rel_err(layer(x.bfloat16()), F.linear(x, layer.dequantized_weight())) < 0.01  # bfloat16: the kernel
    assert isinstance(layer._kernel, CPUQuantLinear)
    twin = Int8Linear(torch.zeros(128, 96, dtype=torch.int8), torch.ones(128, 3))
    twin.load_state_dict(layer.state_dict())  # drops the kernel copy built from the old buffers
    assert torch.equal(twin(x.bfloat16()), layer(x.bfloat16()))

    table = nn.Embedding(128, 96)
    with torch.no_grad():
        table.weight.copy_(w)
    q_table = Int8Embedding.from_embedding(table, 32)
    tokens = torch.tensor([[0, 3, 127, 5]])
    torch.testing.assert_close(q_table(tokens), dequantize_int8(*quantize_int8_grouped(w, 32))[tokens])
    with pytest.raises(ValueError, match="scale groups do not divide"):
        Int8Linear(torch.zeros(8, 96, dtype=torch.int8), torch.ones(8, 5))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", TinyConfig(tied=False))
    return path, list(range(3, 90))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_pack_for_cpu_keeps_the_model(tiny, scheme, tmp_path, monkeypatch):
    path, ids = tiny
    model, packed = (NativeModel(path, dtype="float32", pack_weights=False) for _ in range(2))
    report = quantize_model(model.model, scheme, 32)
    quantize_model(packed.model, scheme, 32)  # the same rounding: plain rounding is deterministic
    reference = model.logits(ids)
    swapped = pack_for_cpu(packed.model, torch.float32)
    # Every layer linear of the tiny model fits the kernel (rows 64, 128, 192); its head does not
    # (a vocabulary that is not a multiple of 64) and stays as it was.
    assert swapped == 4 * packed.args.n_layers
    assert not any(isinstance(m, (Int8Linear, Int4Linear)) for m in packed.model.layers.modules())
    torch.testing.assert_close(packed.logits(ids), reference, atol=1e-4, rtol=1e-4)
    # Written and loaded in bfloat16 on CPU (engine.load's default there): packed at load.
    loaded = engine.load(save_checkpoint(tmp_path / "q", model.model, model.metadata, report, {"name": "tiny"}))
    assert loaded.dtype == torch.bfloat16 and isinstance(loaded.model.layers[1].feed_forward.w2, CPUQuantLinear)
    monkeypatch.setitem(PREFILL_ROWS, scheme, 32)  # so that the tiny model's prompt takes both paths
    for n in (20, len(ids)):  # under PREFILL_ROWS rows: the kernel; above: dequantize and matmul
        out = loaded.logits(ids[:n]).float()
        assert rel_err(out, reference[:n]) < 0.03
        assert (out.argmax(-1) == reference[:n].argmax(-1)).float().mean() >= 0.85
    decoded = list(loaded.generate(ids[:8], max_tokens=5, temperature=0))[-1]  # the kernel path, one row at a time
    assert decoded.completion_tokens == 5


def test_per_row_int8_folders_of_format_1_still_load(tiny, tmp_path):
    """Folders written before INT8 had groups (format version 1: a scale per row) load unchanged."""
    path, ids = tiny
    model = NativeModel(path, dtype="float32", pack_weights=False)
    report = quantize_model(model.model, "int8", None)
    assert all("group_size" not in e for n, e in report["quantized"].items() if n.startswith("layers."))
    out = save_checkpoint(tmp_path / "q", model.model, model.metadata, report, {"name": "tiny"})
    info = json.loads((out / QUANTIZATION).read_text())
    assert info["format_version"] == 2
    info["format_version"] = 1
    (out / QUANTIZATION).write_text(json.dumps(info))
    loaded = engine.load(out, device="cpu", dtype="float32")
    torch.testing.assert_close(loaded.logits(ids), model.logits(ids), atol=1e-5, rtol=1e-5)
    assert isinstance(engine.load(out).model.layers[0].feed_forward.w13, CPUQuantLinear)  # bfloat16: packed
