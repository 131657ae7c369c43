"""NaN/Inf logits are explained by the run: damaged weights in float32, overflow in float16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    model.retry_in_bfloat16 = False  # what is said when the run is not switched
    with pytest.raises(NumericalError, match="float16 run: float16 overflow; run it with --dtype bfloat16"):
        list(model.generate("the", max_tokens=3, temperature=0))


@pytest.mark.parametrize("decode", ["static", "plain"])
def test_float16_overflow_is_answered_again_in_bfloat16_and_says_so(tmp_path, decode):
    path = write_tiny_llama(tmp_path / "huge.gguf", TinyConfig(weight_scale=300.0))
    model = engine.load(path, backend="native", device="cpu", dtype="float16", decode=decode)
    *_, result = model.generate("the", max_tokens=3, temperature=0)
    assert result.completion_tokens == 3 and model.dtype == torch.bfloat16
    assert len(result.notes) == 1 and "switched the model to bfloat16" in result.notes[0]
    reference = engine.load(path, backend="native", device="cpu", dtype="bfloat16", decode=decode)
    *_, expected = reference.generate("the", max_tokens=3, temperature=0)
    assert result.text == expected.text and expected.notes == ()
    *_, again = model.generate("the", max_tokens=3, temperature=0)  # now bfloat16 from the start
    assert again.notes == () and again.text == expected.text
    with pytest.raises(NumericalError, match="weights hold NaN/Inf"):  # only float16 runs are retried
        list(engine.load(nan_weights(path), backend="native", device="cpu", dtype="float32").generate("the", max_tokens=2))
