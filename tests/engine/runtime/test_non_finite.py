"""NaN/Inf logits are explained by the run: damaged weights in float32, overflow in float16."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import NumericalError
from engine.formats.gguf import read_gguf
from tiny_models import TinyConfig, write_tiny_llama


def nan_weights(path):
    """Plant NaN in the final norm's weights, in place: every logit becomes NaN."""
    with read_gguf(path) as f:
        info = f.tensors["output_norm.weight"]
    with open(path, "r+b") as out:
        out.seek(info.offset)
        out.write(np.full(info.nbytes // 4, np.nan, dtype=np.float32).tobytes())
    return path


@pytest.mark.parametrize("backend, dtype", [("native", "float32"), ("gguf", None)])
def test_nan_weights_are_reported_as_such(tmp_path, backend, dtype):
    model = engine.load(nan_weights(write_tiny_llama(tmp_path / "nan.gguf")), backend=backend, device="cpu", dtype=dtype)
    with pytest.raises(NumericalError, match="weights hold NaN/Inf") as err:
        list(model.generate("the", max_tokens=3, temperature=0))
    assert "float16 overflow" not in str(err.value)


def test_float16_overflow_says_so_and_names_bfloat16(tmp_path):
    path = write_tiny_llama(tmp_path / "huge.gguf", TinyConfig(weight_scale=300.0))
    model = engine.load(path, backend="native", device="cpu", dtype="float16")
    with pytest.raises(NumericalError, match="float16 run: float16 overflow; run it with --dtype bfloat16"):
        list(model.generate("the", max_tokens=3, temperature=0))
