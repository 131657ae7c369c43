"""oneDNN-prepacked linears (engine/model/packing.py): same numbers as F.linear, swapped in at load on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.model.packing import PackedLinear, can_pack, pack_linears
from engine.runtime.native import NativeModel
from tests.tiny_models import TinyConfig, write_tiny_llama

pytestmark = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32), reason="no oneDNN in this build")


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.0)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(dtype, atol, bias):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g).to(dtype)
    b = torch.randn(96, generator=g).to(dtype) if bias else None
    layer = PackedLinear(w, b)
    for shape in [(1, 64), (1, 1, 64), (2, 7, 64)]:  # decode, and a prefill batch
        x = torch.randn(*shape, generator=g).to(dtype)
        y = layer(x)
        assert y.shape == (*shape[:-1], 96) and y.dtype == dtype
        # bfloat16: oneDNN runs the same kernel with either layout, so the bits agree; float32
        # sums in another order.
        torch.testing.assert_close(y.float(), F.linear(x, w, b).float(), atol=atol + 1e-6, rtol=atol)


def test_can_pack_only_on_cpu_float_dtypes():
    assert not can_pack(torch.device("cpu"), torch.float16)
    assert not can_pack(torch.device("meta"), torch.float32)


@pytest.mark.parametrize("tied", [True, False])
def test_packed_model_gives_the_same_logits(tmp_path, tied):
    path = write_tiny_llama(tmp_path / "m.gguf", TinyConfig(tied=tied, seed=2))
    plain = NativeModel(path, dtype="float32", pack_weights=False)
    packed = NativeModel(path, dtype="float32")
    linears = [m for m in packed.model.modules() if isinstance(m, PackedLinear)]
    assert len(linears) == 4 * plain.args.n_layers + 1  # every layer linear, and the head (tied or not)
    assert not any(type(m) is nn.Linear for m in packed.model.modules())
    ids = list(range(3, 60))
    torch.testing.assert_close(packed.logits(ids), plain.logits(ids), atol=1e-4, rtol=1e-4)
    a = list(plain.generate(ids[:10], max_tokens=12, temperature=0))[-1]
    b = list(packed.generate(ids[:10], max_tokens=12, temperature=0))[-1]
    assert a.text == b.text and a.completion_tokens == b.completion_tokens


def test_pack_linears_leaves_other_modules_alone():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).to(torch.float16), nn.LayerNorm(8))
    assert pack_linears(model) == 1
    assert isinstance(model[0], PackedLinear) and type(model[1]) is nn.Linear and isinstance(model[2], nn.LayerNorm)
