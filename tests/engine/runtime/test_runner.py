"""DecodeRunner: the native backend's per-token loop, and the request type (SamplingParams) from the
caller through Model.generate/chat and ChatSession."""

import math
from itertools import islice

import pytest
import torch

from engine.errors import NumericalError
from engine.model import KVCache
from engine.runtime import ChatSession, NativeModel, SamplingParams
from engine.runtime.runner import PREFILL_CHUNK, DecodeRunner
from engine.runtime.sampling import make_device_sampler, token_id
from reference_sampler import reference_sampler
from tiny_models import TinyConfig, write_tiny_llama

# Small weights give a flat next-token distribution, so seeded draws actually vary.
TINY = TinyConfig(seed=3, weight_scale=0.1, context_length=1024)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("runner") / "tiny.gguf", TINY)
    model = NativeModel(path, device="cpu", dtype="float32", pack_weights=False)  # deepcopy-able
    return model


def test_prefill_then_decode_equals_one_full_pass(tiny):
    runner = tiny.runner
    ids = list(range(1, 41))
    full = runner.forward(ids, None, last_only=False).float()  # (40, vocab), no cache
    cache = tiny.new_cache(len(ids))
    steps = [runner.prefill(ids[:25], cache)]
    # one token as a host int, the rest as 0-d tensors the way a sampler hands them over
    steps.append(runner.decode(ids[25], cache))
    steps += [runner.decode(torch.tensor(t), cache) for t in ids[26:]]
    assert cache.offset == len(ids)
    torch.testing.assert_close(torch.cat(steps).float(), full[24:], atol=1e-4, rtol=0)


def test_prefill_is_chunked_and_logits_match_the_model(tiny):
    runner = DecodeRunner(tiny.model, device=tiny.device, dtype=tiny.dtype)
    ids = torch.randint(0, 260, (PREFILL_CHUNK + 37,), generator=torch.Generator().manual_seed(1)).tolist()
    cache = KVCache(tiny.args, len(ids))
    last = runner.prefill(ids, cache)
    assert cache.offset == len(ids) and last.shape == (1, tiny.args.vocab_size)
    every = tiny.logits(ids)  # NativeModel.logits goes through the runner too
    assert every.shape == (len(ids), tiny.args.vocab_size) and every.dtype == torch.float32
    torch.testing.assert_close(last[0].float(), every[-1], atol=1e-4, rtol=0)
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([ids]))[0]  # the decoder alone, its own RoPE tables
    torch.testing.assert_close(every, plain.float(), atol=1e-4, rtol=0)


def test_device_sampler_returns_a_device_tensor_and_flags_non_finite_logits():
    logits = torch.tensor([0.1, 2.0, -1.0, 0.5])
    for sampler in (make_device_sampler(), make_device_sampler(temperature=0.8, top_k=3, top_p=0.9, seed=0)):
        token = sampler(logits)
        assert isinstance(token, torch.Tensor) and token.shape == () and token.dtype == torch.long
        assert 0 <= token_id(token) < 4
    for bad in (torch.tensor([0.0, math.nan, 1.0]), torch.tensor([0.0, math.inf]), torch.full((3,), -math.inf)):
        for sampler in (make_device_sampler(), make_device_sampler(temperature=1.0, top_p=0.9, seed=0)):
            assert int(sampler(bad)) == -1
            with pytest.raises(NumericalError):
                token_id(sampler(bad))


SETTINGS = [
    dict(temperature=0),
    dict(temperature=0.8, seed=1),  # SamplingParams' top-k 40, top-p 0.95, min-p 0.05
    dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, seed=2),  # nucleus over the whole vocabulary
    dict(temperature=1.3, top_k=0, top_p=1.0, min_p=0.02, seed=3),
    dict(temperature=0.7, repetition_penalty=1.3, seed=4),
    dict(temperature=1.0, top_k=20, top_p=0.8, seed=5),
]


@pytest.fixture(params=["static", "plain"])
def decode_path(request, tiny):
    tiny.decode_path = request.param
    yield request.param
    tiny.decode_path = "auto"


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_runner_loop_gives_the_reference_samplers_tokens(tiny, settings, decode_path):
    """100 tokens from NativeModel (runner, KV cache, on-device sampler and repetition penalty,
    one read per token), through either decode path, equal a plain loop: the decoder over the
    whole sequence each step and the host sampler and penalty as they were before the device
    ones (tests/reference_sampler.py), with the same seed."""
    params = SamplingParams(max_tokens=100, **settings)
    prompt = tiny.tokenizer.encode("Once upon a time", add_special=True)
    got = list(islice(tiny._token_ids(prompt, params, None), 100))

    sample = reference_sampler(params.temperature, params.top_p, params.top_k, params.min_p, params.seed)
    processors = params.processors()
    history = list(prompt)
    with torch.inference_mode():
        for _ in range(100):
            logits = tiny.model(torch.tensor([history]))[0, -1, : tiny.tokenizer.vocab_size].float()
            for process in processors:
                logits = process(history, logits)
            history.append(sample(logits))
    expected = history[len(prompt):]
    assert got == expected
    if settings["temperature"] > 0:
        assert len(set(got)) > 10  # the draws really vary: the comparison is not between constants


def test_the_runner_follows_a_replaced_model(tiny):
    import copy

    first = tiny.runner
    assert tiny.runner is first  # built once
    original = tiny.model
    tiny.model = copy.deepcopy(original)
    try:
        assert tiny.runner is not first and tiny.runner.model is tiny.model
    finally:
        tiny.model = original


def test_sampling_params_resolve_engine_then_model_then_caller(tiny):
    tiny.sampling_defaults = {"temperature": 0.3, "top_k": 7}
    try:
        assert tiny.sampling_params() == SamplingParams(temperature=0.3, top_k=7)
        assert tiny.sampling_params({"top_k": 2}) == SamplingParams(temperature=0.3, top_k=2)
        assert tiny.sampling_params({"top_k": 2}, top_k=3, seed=None) == SamplingParams(temperature=0.3, top_k=3)
        # a whole SamplingParams is a complete request: the model's defaults sit under every field
        assert tiny.sampling_params(SamplingParams(max_tokens=5)) == SamplingParams(max_tokens=5)
        assert tiny.sampling_params(SamplingParams(), temperature=0) == SamplingParams(temperature=0)
        with pytest.raises(ValueError, match="unknown sampling setting"):
            tiny.sampling_params(temprature=0.1)
    finally:
        tiny.sampling_defaults = {}


def test_params_object_and_keywords_give_the_same_generation(tiny):
    messages = [{"role": "user", "content": "hi"}]
    by_keywords = list(tiny.chat(messages, max_tokens=12, temperature=0.9, seed=11))[-1]
    by_params = list(tiny.chat(messages, SamplingParams(max_tokens=12, temperature=0.9, seed=11)))[-1]
    assert by_params.text == by_keywords.text and by_params.completion_tokens == by_keywords.completion_tokens
    session = ChatSession(tiny)
    in_session = list(session.chat(messages, SamplingParams(max_tokens=30, temperature=0.9), max_tokens=12, seed=11))[-1]
    assert in_session.text == by_keywords.text and in_session.completion_tokens == 12
