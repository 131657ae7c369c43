"""Quantization core: the INT8/INT4 math, the quantized linears, and the model swap.

Bounds, and why:
- Round trips: INT8 within scale / 2 of its row, INT4 within scale / 2 of its group (round to
  nearest), plus a float32 rounding allowance of a few ulps of the weight's magnitude.
- Linear layers on random weights and inputs, relative L2 error of the output against the
  float layer: INT8 < 2% (expected ~0.7%), INT4 with groups of 32 < 15% (expected ~8%: 16
  levels across a group's range); bfloat16 activations add 1-2%. Both kernels are weight-only,
  so against the exactly dequantized weight they differ only by the activation dtype's rounding.
- Whole models: top-1 agreement with the float model over every position (tiny random model
  >= 90%, default model with INT8 >= 95%) and mean KL divergence, printed with -s.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyConfig, write_tiny_llama
from torch import nn

import quant.linear as qlinear
from engine.runtime.native import NativeModel
from quant.linear import Int4Linear, Int8Linear, quantize_model
from quant.schemes import (
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    quantize_int4_grouped,
    quantize_int8_per_channel,
    unpack_int4,
)


def random_weight(out: int, inn: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=g) * 0.05
    w[0] *= 20  # rows and groups of very different ranges
    w[1, :40] += 0.3  # groups far from zero: what the INT4 min is for
    return w


def float_slack(w: torch.Tensor) -> torch.Tensor:
    return 4 * torch.finfo(torch.float32).eps * w.abs().amax()


# --- the math ---------------------------------------------------------------------------------


def test_int8_round_trip_within_half_a_step_per_row():
    w = random_weight(96, 160)
    w[5] = 0  # an all-zero row must not divide by zero
    q, scale = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.dtype == torch.float32 and scale.shape == (96,)
    assert int(q.abs().max()) == 127 and scale[5] == 0 and not q[5].any()
    err = (dequantize_int8(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + float_slack(w)).all()


def test_int8_accepts_bfloat16_weights():
    w = random_weight(32, 64).bfloat16()
    q, scale = quantize_int8_per_channel(w)
    assert (dequantize_int8(q, scale) - w.float()).abs().le(scale[:, None] / 2 + float_slack(w.float())).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_round_trip_within_half_a_step_per_group(group_size):
    w = random_weight(48, 256, seed=group_size)
    w[3] = 0.25  # constant groups reproduce exactly
    packed, scale, minimum = quantize_int4_grouped(w, group_size)
    groups = 256 // group_size
    assert packed.dtype == torch.uint8 and packed.shape == (48, 128)
    assert scale.shape == minimum.shape == (48, groups) and scale.dtype == minimum.dtype == torch.float32
    deq = dequantize_int4(packed, scale, minimum)
    err = (deq - w).abs().reshape(48, groups, group_size)
    # Half a step, plus the float16 rounding of the stored min and scale (2^-11 relative).
    fp16_slack = 2.0**-11 * (minimum.abs() + 15 * scale)
    assert (err <= (scale / 2 + fp16_slack)[..., None] + float_slack(w)).all()
    assert torch.equal(deq[3], w[3])
    assert torch.equal(scale, scale.half().float()) and torch.equal(minimum, minimum.half().float())
    # The asymmetric grid spans each group's own range: min and max are (almost) hit exactly.
    g = w.reshape(48, groups, group_size)
    assert torch.allclose(minimum, g.amin(-1), rtol=2**-10) and torch.allclose(scale * 15 + minimum, g.amax(-1), rtol=2**-9, atol=1e-6)


def test_int4_pack_unpack_is_exact():
    q = torch.randint(0, 16, (7, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_int4(q)
    assert packed.shape == (7, 32)
    assert packed[0, 0] == q[0, 0] | (q[0, 1] << 4)  # element 2k in the low nibble of byte k
    assert torch.equal(unpack_int4(packed), q.to(torch.int8))
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(4, 64)
    assert torch.equal(pack_int4(unpack_int4(every_byte).to(torch.uint8)), every_byte)


@pytest.mark.parametrize(
    "call",
    [
        lambda: quantize_int4_grouped(torch.randn(8, 96), 64),  # 96 is not a multiple of 64
        lambda: quantize_int4_grouped(torch.randn(8, 50), 32),
        lambda: quantize_int4_grouped(torch.randn(8, 64), 48),  # not an offered group size
        lambda: quantize_int4_grouped(torch.randn(64), 32),
        lambda: quantize_int8_per_channel(torch.randn(2, 3, 4)),
        lambda: quantize_int8_per_channel(torch.ones(4, 4, dtype=torch.int32)),
        lambda: pack_int4(torch.zeros(4, 5, dtype=torch.uint8)),  # odd width
        lambda: pack_int4(torch.full((4, 4), 16, dtype=torch.uint8)),
        lambda: unpack_int4(torch.zeros(4, 4, dtype=torch.int8)),
        lambda: dequantize_int4(torch.zeros(4, 16, dtype=torch.uint8), torch.ones(4, 3), torch.ones(4, 3)),
        lambda: dequantize_int8(torch.zeros(4, 8, dtype=torch.int8), torch.ones(5)),
    ],
)
def test_bad_shapes_are_refused(call):
    with pytest.raises(ValueError):
        call()


# --- the linears ------------------------------------------------------------------------------


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).norm() / ref.norm())


@pytest.fixture
def float_linear():
    lin = nn.Linear(256, 192, bias=True)
    with torch.no_grad():
        lin.weight.copy_(random_weight(192, 256, seed=3))
        lin.bias.normal_(0, 0.1)
    return lin


@pytest.fixture
def dequantizing(monkeypatch):
    """The path CUDA and MPS take: dequantize the weight, then F.linear (no CPU kernel)."""
    monkeypatch.setattr(qlinear, "_cpu_kernel", lambda x: False)


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 0.02), (torch.bfloat16, 0.03)])
@pytest.mark.parametrize("rows", [1, 5])  # decode and prefill shapes take the same kernel
def test_int8_linear_tracks_float(float_linear, dtype, bound, rows):
    x = torch.randn(2, rows, 256, generator=torch.Generator().manual_seed(1))[:1]  # (1, rows, in)
    ref = float_linear(x)
    q = Int8Linear.from_linear(float_linear)
    y = q(x.to(dtype))
    assert y.dtype == dtype and y.shape == ref.shape
    assert rel_err(y, ref) < bound
    # Weight-only: against the exactly dequantized weight only the activation dtype's rounding is left.
    exact = F.linear(x, q.dequantized_weight(), float_linear.bias)
    assert rel_err(y, exact) < (1e-5 if dtype == torch.float32 else 0.01)


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-5), (torch.bfloat16, 0.01)])
def test_int8_dequantizing_path_matches_kernel(float_linear, dequantizing, dtype, bound):
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(5)).to(dtype)
    q = Int8Linear.from_linear(float_linear)
    exact = F.linear(x.float(), q.dequantized_weight(), float_linear.bias)
    assert rel_err(q(x), exact) < bound


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("dtype, bound", [(torch.float32, 0.15), (torch.bfloat16, 0.16)])
def test_int4_linear_tracks_float(float_linear, dtype, bound, group_size):
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
    q = Int4Linear.from_linear(float_linear, group_size=group_size)
    y = q(x.to(dtype))
    assert y.dtype == dtype and rel_err(y, float_linear(x)) < bound
    # The CPU kernel computes exactly the dequantized weight, up to the activation dtype (its
    # scales and zeros travel in that dtype too).
    exact = F.linear(x, q.dequantized_weight(), float_linear.bias)
    assert rel_err(q(x.to(dtype)), exact) < (1e-5 if dtype == torch.float32 else 0.01)
    assert rel_err(q(x[:1].to(dtype)), exact[:1]) < (1e-5 if dtype == torch.float32 else 0.01)  # decode shape


def test_int4_dequantizing_path_matches_kernel(float_linear, dequantizing):
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(6))
    q = Int4Linear.from_linear(float_linear, group_size=64)
    assert rel_err(q(x), F.linear(x, q.dequantized_weight(), float_linear.bias)) < 1e-6


def test_int8_linear_survives_copy_and_reload(float_linear):
    q = Int8Linear.from_linear(float_linear)
    x = torch.randn(1, 256)
    y = q(x.bfloat16())  # caches the bfloat16 scale
    twin = copy.deepcopy(q)
    assert torch.equal(twin(x.bfloat16()), y)
    other = Int8Linear.from_linear(nn.Linear(256, 192))
    other.load_state_dict(q.state_dict())
    assert torch.equal(other(x.bfloat16()), y)


# --- whole models -----------------------------------------------------------------------------


def compare_logits(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, mean KL(ref || out)) over positions; logits (T, vocab)."""
    lp, lq = torch.log_softmax(ref.float(), -1), torch.log_softmax(out.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    return float((ref.argmax(-1) == out.argmax(-1)).float().mean()), float(kl)


@pytest.fixture(scope="module", params=["tied", "untied"])
def tiny(request, tmp_path_factory):
    cfg = TinyConfig(tied=request.param == "tied", seed=4)
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / f"{request.param}.gguf", cfg)
    model = NativeModel(path, device="cpu", dtype="float32", pack_weights=False)  # quantize_model swaps nn.Linear
    ids = torch.randint(0, model.args.vocab_size - 3, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    return model, ids


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_tiny_model_tracks_float(tiny, scheme):
    model, ids = tiny
    ref = model.logits(ids)
    original = model.model
    model.model = copy.deepcopy(original)
    try:
        report = quantize_model(model.model, scheme, group_size=32)
        out = model.logits(ids)
        decoded = list(model.generate(ids[:20], max_tokens=8, temperature=0))[-1]  # one-token calls
    finally:
        model.model = original
    top1, kl = compare_logits(ref, out)
    print(f"tiny {'tied' if model.args.tied_output else 'untied'} {scheme}: top-1 {top1:.2f}, mean KL {kl:.5f}")
    if scheme == "int4" and not model.args.tied_output:
        # Plain 4-bit rounding of structureless Gaussian weights moves these logits by ~25% (L2),
        # tied or not. Tied, the logits are dominated by the input token's own embedding and the
        # argmax survives; the untied random head gives flat logits (std ~2.4), whose argmax
        # does not. Measured over seeds 4-6: top-1 0.67-0.70, KL 0.15-0.19.
        assert top1 >= 0.6 and kl < 0.3
    else:
        assert top1 >= 0.9 and kl < 0.02
    assert decoded.completion_tokens == 8

    n, tied = model.args.n_layers, model.args.tied_output
    layers = [name for name in report["quantized"] if name.startswith("layers.")]
    assert len(layers) == 4 * n and all(report["quantized"][name]["scheme"] == scheme for name in layers)
    # The policy: token table and head in INT8 per row whatever the scheme; a tied head shares the table.
    heads = {"tok_embeddings.weight"} | (set() if tied else {"output.weight"})
    assert set(report["quantized"]) - set(layers) == heads
    assert all(report["quantized"][name]["scheme"] == "int8" for name in heads)
    assert report["tied_output"] == tied
    assert set(report["kept_float"]) == {f"layers.{i}.{norm}.weight" for i in range(n) for norm in ("attention_norm", "ffn_norm")} | {"norm.weight"}


def test_quantize_model_refuses_bad_requests_and_changes_nothing(tiny):
    model, _ = tiny
    m = copy.deepcopy(model.model)
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        quantize_model(m, "int3")
    with pytest.raises(ValueError, match="group size must be one of"):
        quantize_model(m, "int4", group_size=48)
    with torch.no_grad():  # a weight no float16 scale can hold, in the last layer: refused before any swap
        m.layers[-1].feed_forward.w2.weight[0, 0] = 1e9
    for scheme in ("int8", "int4"):
        with pytest.raises(ValueError, match=r"layers\.1\.feed_forward\.w2: weights up to 1e\+09 do not fit the float16"):
            quantize_model(m, scheme)
    assert isinstance(m.layers[0].attention.wqkv, nn.Linear) and isinstance(m.tok_embeddings, nn.Embedding)
    m = copy.deepcopy(model.model)
    quantize_model(m, "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(m, "int8")


def test_int4_group_size_falls_back_per_layer_where_it_must(tiny):
    # The default model's 576-wide inputs are not a multiple of 128: those layers take 64.
    assert qlinear.layer_group_size(576, 128) == 64 and qlinear.layer_group_size(1536, 128) == 128
    assert qlinear.layer_group_size(96, 64) == 32 and qlinear.layer_group_size(576, 32) == 32
    with pytest.raises(ValueError, match="not a multiple of any group size"):
        qlinear.layer_group_size(80, 128)
    model, _ = tiny
    m = copy.deepcopy(model.model)
    report = quantize_model(m, "int4", group_size=64)  # wqkv/wo/w13 take 64 inputs, w2 takes 96
    sizes = {name.split(".")[-2]: entry["group_size"] for name, entry in report["quantized"].items() if name.startswith("layers.0.")}
    assert sizes == {"wqkv": 64, "wo": 64, "w13": 64, "w2": 32}
    assert m.layers[0].feed_forward.w2.group_size == 32


@pytest.mark.slow
def test_int8_default_model_keeps_top1(default_gguf, english_text):
    model = NativeModel(default_gguf, device="cpu", dtype="float32", pack_weights=False)
    ids = model.tokenizer.encode(english_text)
    ref = model.logits(ids)
    quantize_model(model.model, "int8")
    top1, kl = compare_logits(ref, model.logits(ids))
    print(f"default model int8: top-1 {top1:.3f}, mean KL {kl:.5f} over {len(ids)} positions")
    # Issue 5's INT8 target is mean KL <= 0.005. Measured in groups of 32 (the default), head and
    # token table included, float32 activations: KL 0.00098, top-1 0.982. Per row it measured
    # KL 0.0036, top-1 0.944, so this bound also fails if the groups stop being applied.
    assert top1 >= 0.97 and kl < 0.002
