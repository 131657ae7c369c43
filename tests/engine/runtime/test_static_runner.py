"""The static decode path as generation uses it: NativeModel -> DecodeRunner.static_token_ids ->
StaticDecoder, against the plain path (a growing KVCache) on the same float32 model.

Tolerance: both paths run the same float32 kernels over the same weights; they differ only in
attention over a masked fixed-size bucket versus the filled prefix, which changes summation
order. Logits agree to 1e-5 (tests/engine/runtime/test_static.py); here whole replies must be
token-for-token identical, greedy and seeded."""

from itertools import islice

import pytest
import torch

from engine.runtime import ChatSession, NativeModel, SamplingParams
from engine.runtime.sampling import DevicePenalty, make_logits_processors
from tiny_models import TinyConfig, write_tiny_llama

TINY = TinyConfig(seed=7, weight_scale=0.1, context_length=1024)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("static-runner") / "tiny.gguf", TINY)
    model = NativeModel(path, device="cpu", dtype="float32")
    model.decode_path = "static"  # a CPU's default is plain (static.default_decode_path): these test static
    return model


def reply(model, prompt, params, path):
    model.decode_path = path
    try:
        return list(islice(model._token_ids(prompt, params, None), params.max_tokens))
    finally:
        model.decode_path = "static"


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=0.9, seed=5, repetition_penalty=1.2)],
                         ids=["greedy", "seeded"])
def test_a_reply_across_a_bucket_boundary_equals_the_plain_path(tiny, settings):
    params = SamplingParams(max_tokens=300, **settings)
    prompt = tiny.tokenizer.encode("Once upon a time", add_special=True)
    static = reply(tiny, prompt, params, "static")
    dec = tiny.runner.static_decoder(tiny.context_length)
    assert dec.capacity == 512  # 256 was outgrown mid-reply
    assert static == reply(tiny, prompt, params, "plain")
    assert len(static) == 300
    if settings["temperature"] > 0:  # (greedy on random weights settles on a token or two)
        assert len(set(static)) > 5


def test_regenerate_and_a_second_turn_reuse_the_prefix_and_equal_the_plain_path(tiny):
    turn1 = [{"role": "user", "content": "Tell me a story about a cat."}]
    results = {}
    for path in ("static", "plain"):
        tiny.decode_path = path
        session = ChatSession(tiny)
        first = list(session.chat(turn1, max_tokens=40, temperature=0))[-1]
        again = list(session.chat(turn1, max_tokens=40, temperature=0))[-1]  # regenerate: trim back
        turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
        second = list(session.chat(turn2, max_tokens=40, temperature=0))[-1]
        results[path] = (first.text, again.text, again.cached_tokens, again.prompt_tokens, second.text,
                         second.cached_tokens)
    tiny.decode_path = "static"
    assert results["static"] == results["plain"]
    first, again, cached, prompt_tokens, second, cached2 = results["static"]
    assert again == first and cached == prompt_tokens - 1
    assert cached2 >= prompt_tokens  # the whole first turn's prompt came from the cache


def test_a_generation_taken_over_by_another_raises_instead_of_decoding_wrong_keys(tiny):
    prompt = tiny.tokenizer.encode("Once upon a time", add_special=True)
    params = SamplingParams(max_tokens=50, temperature=0)
    first = tiny._token_ids(prompt, params, None)
    next(first)
    second = tiny._token_ids(prompt[:-1] + [5, 6], params, None)
    next(second)
    with pytest.raises(RuntimeError, match="another generation"):
        next(first)
    assert len([next(second) for _ in range(10)]) == 10  # the newer one carries on


def test_an_interrupted_prefill_leaves_the_decoder_consistent(tiny, monkeypatch):
    prompt = tiny.tokenizer.encode("Once upon a time there was a cat", add_special=True)
    params = SamplingParams(max_tokens=8, temperature=0)
    expected = list(islice(tiny._token_ids(prompt, params, None), 8))
    dec = tiny.runner.static_decoder(tiny.context_length)
    dec.reset()
    real = dec.prefill

    def interrupted(ids):
        real(ids[:3])  # part of the prompt lands, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(dec, "prefill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        next(tiny._token_ids(prompt, params, None))
    monkeypatch.undo()
    assert list(islice(tiny._token_ids(prompt, params, None), 8)) == expected


def test_device_penalty_equals_the_host_processor():
    gen = torch.Generator().manual_seed(0)
    (host,) = make_logits_processors(1.3, 64)
    history = torch.randint(-3, 120, (200,), generator=gen).tolist()  # out-of-vocabulary ids too
    penalty = DevicePenalty(1.3, 64, history[:150], "cpu")
    for i in range(150, 200):
        logits = torch.randn(100, generator=gen) * 3
        torch.testing.assert_close(penalty(logits), host(history[:i], logits), atol=0, rtol=0)
        penalty.push(torch.tensor(history[i]))
    assert torch.equal(DevicePenalty(1.3, 64, [], "cpu")(logits), logits)  # no history, no change


def test_clear_cache_makes_the_next_prompt_cold(tiny):
    messages = [{"role": "user", "content": "Tell me a story about a cat."}]
    list(tiny.chat(messages, max_tokens=4, temperature=0))
    *_, warm = tiny.chat(messages, max_tokens=4, temperature=0)
    assert warm.cached_tokens == warm.prompt_tokens - 1  # the model's one KV store, shared by calls
    tiny.clear_cache()
    *_, cold = tiny.chat(messages, max_tokens=4, temperature=0)
    assert cold.cached_tokens == 0 and cold.text == warm.text
    tiny.decode_path = "auto"
    assert tiny.decode_path == "plain"  # a CPU's default
    tiny.decode_path = "static"
