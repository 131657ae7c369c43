"""`stream_probs=True`: each delta carries the probability rows of the tokens it came from, and
together they are the result's rows (the OpenAI server streams them chunk by chunk)."""

from __future__ import annotations

import pytest
from tiny_models import TinyConfig, write_tiny_llama

from engine import ReasoningDelta, TextDelta
from engine.runtime import LlamaCppModel, NativeModel


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("stream") / "tiny.gguf", TinyConfig(seed=3, weight_scale=0.1))


def _check(model, **kw):
    events = list(model.generate(list(range(5, 17)), max_tokens=16, temperature=0.9, seed=4, token_probs=3,
                                 stream_probs=True, **kw))
    *deltas, result = events
    assert all(isinstance(d, (TextDelta, ReasoningDelta)) for d in deltas) and len(result.token_probs) == 16
    carried = [row for d in deltas for row in d.token_probs]
    assert carried == list(result.token_probs[: len(carried)]) and len(carried) >= 12
    # The bytes of a delta's tokens, and of those before it, hold the text streamed so far.
    tok, text, raw = model.tokenizer, "", b""
    for d in deltas:
        text += d.text
        raw += b"".join(tok.token_bytes(r.id) for r in d.token_probs)
        assert raw.decode("utf-8", "replace").startswith(text)
    plain = list(model.generate(list(range(5, 17)), max_tokens=16, temperature=0.9, seed=4, token_probs=3, **kw))
    assert all(e.token_probs == () for e in plain[:-1])  # off by default
    assert plain[-1].text == result.text and [r.id for r in plain[-1].token_probs] == [r.id for r in result.token_probs]
    assert [r.prob for r in plain[-1].token_probs] == pytest.approx([r.prob for r in result.token_probs], abs=1e-5)


@pytest.mark.parametrize("decode", ["static", "plain"])
def test_native_deltas_carry_their_rows(tiny_gguf, decode):
    _check(NativeModel(tiny_gguf, device="cpu", dtype="float32", decode=decode))


def test_llamacpp_deltas_carry_their_rows(tiny_gguf):
    _check(LlamaCppModel(tiny_gguf))


def test_a_reply_cut_by_a_stop_string_streams_the_same_rows(default_model):
    events = list(default_model.generate("The capital of France is", max_tokens=12, temperature=0, token_probs=2,
                                         stream_probs=True, stop=["."]))
    *deltas, result = events
    carried = [row for d in deltas for row in d.token_probs]
    assert result.stop_sequence == "." and carried == list(result.token_probs[: len(carried)])
    assert "".join(d.text for d in deltas) == result.text
