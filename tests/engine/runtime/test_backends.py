"""The two backends behind one interface, and chat sessions that keep the KV cache across turns."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import engine
from engine.results import GenerationResult
from engine.runtime.session import ChatSession

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def gguf_model(default_gguf):
    model = engine.load("smollm2-135m", backend="gguf")
    model.sampling_defaults = {}  # raw decoding, as the default_model fixture
    return model


def result_of(events) -> GenerationResult:
    *_, result = events
    return result


def turns(n: int) -> list[list[dict]]:
    """Growing conversations: turn i has i user messages (and the replies before them)."""
    convs, msgs = [], []
    for i in range(n):
        msgs = msgs + [{"role": "user", "content": f"Tell me fact number {i + 1} about the sea, in one sentence."}]
        convs.append(msgs)
        msgs = msgs + [{"role": "assistant", "content": f"Fact {i + 1}: the sea is deep and salty."}]
    return convs


def test_both_backends_agree_on_a_greedy_answer(default_model, gguf_model):
    # A prompt whose greedy path has no near-tie: the same text, token count and finish reason.
    native = result_of(default_model.chat(QUESTION, max_tokens=32, temperature=0))
    fast = result_of(gguf_model.chat(QUESTION, max_tokens=32, temperature=0))
    assert "4" in native.text
    assert (native.text, native.completion_tokens, native.finish_reason) == (fast.text, fast.completion_tokens, fast.finish_reason)
    assert native.prompt_tokens == fast.prompt_tokens
    assert gguf_model.tokenizer.encode("héllo wörld") == default_model.tokenizer.encode("héllo wörld")


@pytest.mark.parametrize("question", ["Say hello.", "What is the capital of France?", "Name three colours."])
def test_greedy_paths_part_only_at_near_ties(default_model, gguf_model, question):
    # Rule: llama.cpp multiplies 4-bit weights by 8-bit-quantized activations while we run
    # float32 on the exactly dequantized weights, so the greedy paths may part where the top
    # two tokens are within 0.5 logits (logits span ~30). Teacher-forced: at every step of
    # llama.cpp's greedy answer, our top token's logit exceeds llama.cpp's choice by < 0.5.
    messages = [{"role": "user", "content": question}]
    answer = result_of(gguf_model.chat(messages, max_tokens=24, temperature=0))
    prompt = default_model.tokenizer.encode(default_model.render_chat(messages), parse_special=True)
    out = default_model.tokenizer.encode(answer.text)
    ours = default_model.logits(prompt + out)
    for i, token in enumerate(out):
        row = ours[len(prompt) - 1 + i]
        assert float(row.max() - row[token]) < 0.5, (i, token, int(row.argmax()))


def test_both_backends_share_the_template_and_length_limit(default_model, gguf_model):
    assert gguf_model.render_chat(QUESTION) == default_model.render_chat(QUESTION)
    for m in (default_model, gguf_model):
        r = result_of(m.generate("Once upon a time", max_tokens=7, temperature=0))
        assert (r.completion_tokens, r.finish_reason) == (7, "length")


@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_cancellation_between_tokens(backend, default_model, gguf_model):
    model = default_model if backend == "native" else gguf_model
    seen = []
    events = model.generate("Once upon a time", max_tokens=200, temperature=0, should_stop=lambda: len(seen) >= 5)
    for event in events:
        if isinstance(event, GenerationResult):
            result = event
        else:
            seen.append(event)
    assert result.finish_reason == "cancelled" and result.completion_tokens == 5


@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_session_prefills_only_what_is_new(backend, default_model, gguf_model):
    model = default_model if backend == "native" else gguf_model
    session = ChatSession(model)
    results = [result_of(session.chat(msgs, max_tokens=8, temperature=0)) for msgs in turns(4)]
    assert results[0].cached_tokens == 0
    for previous, current in zip(results, results[1:]):
        # Everything up to the previous turn's prompt is reused.
        assert current.cached_tokens >= previous.prompt_tokens - 1
        assert current.prompt_tokens - current.cached_tokens < 60


@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_regenerate_reuses_the_whole_prompt_and_gives_the_same_reply(backend, default_model, gguf_model):
    model = default_model if backend == "native" else gguf_model
    session = ChatSession(model)
    msgs = turns(2)[1]
    first = result_of(session.chat(msgs, max_tokens=16, temperature=0))
    again = result_of(session.chat(msgs, max_tokens=16, temperature=0))
    assert again.cached_tokens == again.prompt_tokens - 1  # trimmed back to the prompt
    assert again.text == first.text
    fresh = result_of(model.chat(msgs, max_tokens=16, temperature=0, cache=None))
    assert fresh.text == first.text


@pytest.fixture
def plain_decode(default_model):
    """The default model decoding through the plain path (a growing KVCache per session)."""
    default_model.decode_path = "plain"
    yield default_model
    default_model.decode_path = "auto"


def test_native_logits_after_prefix_reuse_equal_a_fresh_prefill(plain_decode):
    model = plain_decode
    session = ChatSession(model)
    a, b = turns(3)[1], turns(3)[2]
    result_of(session.chat(a, max_tokens=4, temperature=0))
    ids = model.tokenizer.encode(model.render_chat(b), parse_special=True)
    cache = session.cache
    reused = min(sum(1 for _ in zip(cache.ids, ids) if _[0] == _[1]), len(ids) - 1)
    assert reused > len(ids) // 2
    cache.kv.trim(cache.kv.offset - reused)
    cache.kv.ensure(len(ids))
    with torch.inference_mode():
        tail = model.runner.forward(ids[reused:], cache.kv, last_only=False).float()
    torch.testing.assert_close(tail, model.logits(ids)[reused:], atol=1e-4, rtol=0)


@pytest.fixture
def static_decode(default_model):
    """The default model decoding through the static path (what CUDA and MPS take by default)."""
    assert default_model.decode_path == "plain"  # a CPU's default (static.default_decode_path)
    default_model.decode_path = "static"
    yield default_model
    default_model.decode_path = "auto"


def test_static_logits_after_prefix_reuse_equal_a_fresh_prefill(static_decode):
    model = static_decode
    assert model.decode_path == "static"
    session = ChatSession(model)
    a, b = turns(3)[1], turns(3)[2]
    result_of(session.chat(a, max_tokens=4, temperature=0))
    ids = model.tokenizer.encode(model.render_chat(b), parse_special=True)
    dec = model.runner.static_decoder(model.context_length)
    reused = min(sum(1 for _ in zip(session.cache.ids, ids) if _[0] == _[1]), len(ids) - 1)
    assert reused > len(ids) // 2 and dec.offset > reused
    dec.trim(dec.offset - reused)
    tail = dec.prefill(ids[reused:]).float().cpu()  # (1, vocab): the last position
    torch.testing.assert_close(tail[0], model.logits(ids)[-1], atol=1e-4, rtol=0)
    dec.reset()  # the decoder no longer holds what the runner recorded: start the next one afresh


def test_gguf_logits_after_prefix_reuse_equal_a_fresh_prefill(gguf_model):
    model = gguf_model
    a, b = (model.tokenizer.encode(model.render_chat(t), parse_special=True) for t in turns(3)[1:])
    model.prefill(b[:1])
    model.prefill(b)  # a fresh prefill of all of b, in one batch
    fresh = model._last_logits().clone()
    model.prefill(a)
    assert model.prefill(b) == len(a)  # all of a reused; only the rest of b decoded
    reused = model._last_logits().clone()
    # llama.cpp's quantized kernels round differently for different batch sizes (measured:
    # up to ~0.4 on logits spanning ~30 for this file), so: the same top token, and close.
    assert int(reused.argmax()) == int(fresh.argmax())
    assert float((reused - fresh).abs().max()) < 1.0
    assert float((reused - fresh).abs().mean()) < 0.1


@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_session_overflow_drops_oldest_turns_and_says_so(backend, default_gguf):
    model = engine.load(default_gguf, backend=backend, dtype="float32", context_length=256)
    session = ChatSession(model)
    dropped = [result_of(session.chat(msgs, max_tokens=16, temperature=0)).dropped_messages for msgs in turns(9)]
    assert dropped[0] == 0 and dropped[-1] > 0 and all(d % 2 == 0 for d in dropped)
    with pytest.raises(engine.ContextOverflowError, match="too long"):
        result_of(session.chat([{"role": "user", "content": "sea " * 400}], max_tokens=16))


def test_llama_cpp_logs_stay_out_of_the_terminal(default_gguf):
    code = (
        "import engine; m = engine.load('smollm2-135m', backend='gguf'); "
        "r = list(m.generate('Hi', max_tokens=3, temperature=0))[-1]; print(r.completion_tokens)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "3"
    assert out.stderr == ""
