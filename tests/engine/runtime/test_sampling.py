"""Samplers and logits processors: the math on logits with known probabilities."""

import math
from collections import Counter

import pytest
import torch

from engine.errors import NumericalError
from engine.runtime.sampling import SamplingParams, make_logits_processors, make_sampler


def logits_for(probs: list[float], vocab: int | None = None) -> torch.Tensor:
    """Logits whose softmax is `probs` (padded with -Inf, i.e. probability 0, up to `vocab`)."""
    logits = torch.tensor(probs, dtype=torch.float32).log()
    if vocab is not None:
        logits = torch.cat([logits, torch.full((vocab - len(probs),), -math.inf)])
    return logits


def draws(sampler, logits: torch.Tensor, n: int) -> Counter:
    return Counter(sampler(logits) for _ in range(n))


def test_greedy_is_argmax():
    torch.manual_seed(0)
    sampler = make_sampler(temperature=0.0)
    for _ in range(20):
        logits = torch.randn(1000)
        assert sampler(logits) == int(logits.argmax())
    assert isinstance(sampler(torch.randn(10)), int)


def test_greedy_accepts_a_single_row_and_low_precision():
    logits = torch.randn(1, 300)
    assert make_sampler()(logits) == int(logits.argmax())
    assert make_sampler()(logits[0].bfloat16()) == int(logits[0].bfloat16().float().argmax())


def test_same_seed_same_tokens_different_seed_different_tokens():
    torch.manual_seed(0)
    logits = torch.randn(5000)
    kwargs = dict(temperature=1.0, top_p=0.9, min_p=0.01)
    first = [make_sampler(seed=42, **kwargs)(logits) for _ in range(1)]
    a = make_sampler(seed=42, **kwargs)
    b = make_sampler(seed=42, **kwargs)
    c = make_sampler(seed=43, **kwargs)
    seq_a = [a(logits) for _ in range(50)]
    seq_b = [b(logits) for _ in range(50)]
    seq_c = [c(logits) for _ in range(50)]
    assert seq_a == seq_b
    assert seq_a[0] == first[0]
    assert seq_a != seq_c


def test_unseeded_samplers_differ():
    logits = torch.zeros(10_000)  # uniform: two independent draws of 20 agree with prob ~0
    a, b = make_sampler(temperature=1.0), make_sampler(temperature=1.0)
    assert [a(logits) for _ in range(20)] != [b(logits) for _ in range(20)]


def test_top_k_1_is_greedy():
    torch.manual_seed(1)
    sampler = make_sampler(temperature=1.5, top_k=1, seed=0)
    for _ in range(50):
        logits = torch.randn(2000)
        assert sampler(logits) == int(logits.argmax())


def test_top_k_keeps_only_the_k_best():
    logits = logits_for([0.3, 0.25, 0.2, 0.15, 0.1])
    seen = draws(make_sampler(temperature=1.0, top_k=3, seed=0), logits, 600)
    assert set(seen) == {0, 1, 2}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # cumulative 0.5, 0.8, 0.95, 1.0: top_p=0.8 needs exactly tokens {0, 1}; 0.81 needs {0, 1, 2}
    logits = logits_for([0.5, 0.3, 0.15, 0.05], vocab=100)
    assert set(draws(make_sampler(temperature=1.0, top_p=0.8, seed=0), logits, 500)) == {0, 1}
    assert set(draws(make_sampler(temperature=1.0, top_p=0.81, seed=0), logits, 500)) == {0, 1, 2}
    assert set(draws(make_sampler(temperature=1.0, top_p=0.4, seed=0), logits, 100)) == {0}


def test_top_p_on_a_flat_tail_keeps_many_tokens():
    # Token 0 holds 0.9 of the mass, the rest is spread thinly over 4999 tokens: top_p=0.95
    # must reach far into the tail (the sampler falls back to a full sort here).
    vocab = 5000
    logits = logits_for([0.9] + [0.1 / (vocab - 1)] * (vocab - 1))
    seen = draws(make_sampler(temperature=1.0, top_p=0.95, seed=3), logits, 400)
    assert 0 in seen and len(seen) > 15  # ~40 draws land on the tail, nearly all distinct
    seen = draws(make_sampler(temperature=1.0, top_p=0.89, seed=3), logits, 200)
    assert set(seen) == {0}


def test_top_p_is_measured_on_the_whole_distribution_not_a_short_list():
    # The 64 most probable tokens hold 0.9724 >= top_p, so a short top-k list suffices to find
    # the nucleus, but the mass must stay relative to the whole vocabulary: 0.93 < 0.95 means
    # token 1 belongs to the nucleus (renormalised over the 64 tokens, 0.93 would be 0.956).
    vocab = 5000
    probs = [0.93, 0.03] + [0.0002] * 62
    probs += [(1 - sum(probs)) / (vocab - 64)] * (vocab - 64)
    seen = draws(make_sampler(temperature=1.0, top_p=0.95, seed=0), logits_for(probs), 400)
    assert set(seen) == {0, 1}


def test_top_p_after_top_k_sees_the_renormalised_survivors():
    # top-2 leaves 0.4, 0.3 -> renormalised 0.571, 0.429; top_p=0.5 then keeps only token 0
    logits = logits_for([0.4, 0.3, 0.2, 0.1])
    seen = draws(make_sampler(temperature=1.0, top_k=2, top_p=0.5, seed=0), logits, 300)
    assert set(seen) == {0}


def test_min_p_excludes_tokens_below_min_p_times_pmax():
    # pmax = 0.4; min_p = 0.5 -> threshold 0.2: tokens with 0.4, 0.3, 0.2 stay, 0.1 goes
    logits = logits_for([0.4, 0.3, 0.2, 0.1])
    assert set(draws(make_sampler(temperature=1.0, min_p=0.5, seed=0), logits, 600)) == {0, 1, 2}
    # min_p = 0.76 -> threshold 0.304: only token 0 stays
    assert set(draws(make_sampler(temperature=1.0, min_p=0.76, seed=0), logits, 300)) == {0}


def test_temperature_shapes_the_distribution_like_softmax_over_t():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 2000
    for temperature in (0.5, 1.0, 2.0):
        expected = torch.softmax(logits / temperature, dim=-1).tolist()
        seen = draws(make_sampler(temperature=temperature, seed=7), logits, n)
        for token, p in enumerate(expected):
            # binomial standard deviation is at most ~0.011 at n=2000: 0.04 is a loose bound
            assert abs(seen[token] / n - p) < 0.04, (temperature, token, seen[token] / n, p)


def test_filters_are_applied_before_temperature():
    # At a very high temperature the survivors become nearly uniform, but the candidate set is
    # still decided at temperature 1: min_p=0.5 keeps tokens 0 and 1 only.
    logits = logits_for([0.5, 0.3, 0.15, 0.05])
    seen = draws(make_sampler(temperature=100.0, min_p=0.5, seed=0), logits, 1000)
    assert set(seen) == {0, 1}
    assert abs(seen[0] / 1000 - 0.5) < 0.06


def test_masked_tokens_are_never_drawn():
    logits = torch.full((5000,), -math.inf)
    logits[[7, 4999]] = 0.0
    for kwargs in ({}, {"top_p": 0.99}, {"top_k": 10}, {"min_p": 0.01}):
        seen = draws(make_sampler(temperature=1.0, seed=1, **kwargs), logits, 200)
        assert set(seen) == {7, 4999}, kwargs


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("kwargs", [{}, {"top_k": 5}, {"top_p": 0.9}, {"min_p": 0.1}])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_logits_raise_numerical_error(temperature, kwargs, bad):
    logits = torch.randn(1000)
    logits[123] = bad
    sampler = make_sampler(temperature=temperature, seed=0, **kwargs)
    with pytest.raises(NumericalError, match=r"non-finite logits.*bfloat16 or float32"):
        sampler(logits)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_all_masked_logits_raise_but_some_masked_are_fine(temperature):
    sampler = make_sampler(temperature=temperature, seed=0)
    with pytest.raises(NumericalError):
        sampler(torch.full((100,), -math.inf))
    logits = torch.full((100,), -math.inf)
    logits[42] = 1.0
    assert sampler(logits) == 42


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.0}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"seed": -3}, "seed"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_sampler_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(**kwargs)


def test_bad_logits_shape_raises_value_error():
    with pytest.raises(ValueError, match="1-D logits"):
        make_sampler()(torch.randn(2, 10))


def test_repetition_penalty_math():
    (penalize,) = make_logits_processors(repetition_penalty=2.0, repetition_context_size=3)
    logits = torch.tensor([4.0, -4.0, 1.0, 3.0, -1.0, 0.0])
    original = logits.clone()
    # only the last 3 ids count: 0 is out of the window; 1 repeats; 99 is outside the vocab
    out = penalize([0, 1, 3, 1, 99][-4:], logits)
    assert out.tolist() == [4.0, -8.0, 1.0, 1.5, -1.0, 0.0]
    assert torch.equal(logits, original)  # the input is not modified
    out = penalize([5, 4], logits)  # zero stays zero; negative gets more negative
    assert out.tolist() == [4.0, -4.0, 1.0, 3.0, -2.0, 0.0]
    assert torch.equal(penalize([], logits), logits)
    assert penalize(torch.tensor([0]), logits)[0].item() == 2.0  # tensors of ids work too


def test_repetition_penalty_works_on_a_batch_row():
    (penalize,) = make_logits_processors(repetition_penalty=1.25)
    logits = torch.tensor([[2.5, -2.0, 1.0]])
    assert penalize([0, 1], logits).tolist() == [[2.0, -2.5, 1.0]]


def test_no_penalty_means_no_processors():
    assert make_logits_processors() == []
    assert make_logits_processors(repetition_penalty=1.0, repetition_context_size=10) == []


@pytest.mark.parametrize("kwargs", [{"repetition_penalty": 0.0}, {"repetition_penalty": -1.0},
                                    {"repetition_context_size": 0}])
def test_bad_processor_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        make_logits_processors(**kwargs)


def test_sampling_params_defaults_and_builders():
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.7, 0.95, 40, 0.05)
    assert (params.repetition_penalty, params.seed, params.max_tokens, params.stop) == (
        1.0, None, 512, ())
    assert params.processors() == []
    logits = torch.randn(3000)
    seeded = SamplingParams(seed=5, repetition_penalty=1.1)
    assert [seeded.sampler()(logits) for _ in range(3)] == [seeded.sampler()(logits)] * 3
    assert len(seeded.processors()) == 1
    assert SamplingParams(temperature=0.0).sampler()(logits) == int(logits.argmax())
    with pytest.raises(Exception):
        params.temperature = 1.0  # frozen


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1.0}, {"top_p": 0.0}, {"max_tokens": 0}, {"stop": ["</s>"]},
     {"stop": ("",)}, {"repetition_penalty": 0.0}, {"seed": -1}],
)
def test_sampling_params_validate(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_merged_layers_later_wins_and_none_falls_through():
    from engine.runtime.sampling import SamplingParams as SP

    assert SP.merged() == SP()
    model = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
    user = {"temperature": 0.8, "top_p": None, "max_tokens": 64, "stop": ["</s>"]}
    params = SP.merged(model, None, {}, user)
    assert (params.temperature, params.top_p, params.repetition_penalty) == (0.8, 0.9, 1.1)
    assert (params.max_tokens, params.stop, params.top_k) == (64, ("</s>",), SP().top_k)


@pytest.mark.parametrize("layer, message", [
    ({"temprature": 0.5}, "unknown sampling setting.*temprature"),
    ({"top_p": 1.5}, "top_p must be in"),
    ({"top_k": 2.5}, "top_k must be an integer"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty must be a finite number"),
])
def test_merged_refuses_unknown_keys_and_bad_values(layer, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams.merged({"temperature": 0.2}, layer)


def test_model_defaults_apply_under_explicit_arguments(default_gguf):
    """Model.generate: an argument left None takes the model's default, an explicit one wins."""
    import engine

    model = engine.load(default_gguf, backend="gguf")
    assert model.sampling_defaults == {}  # a bare path has no models.toml entry
    prompt = "The capital of France is"
    greedy = list(model.generate(prompt, max_tokens=12, temperature=0))[-1].text
    model.sampling_defaults = {"temperature": 0.0}
    assert all(list(model.generate(prompt, max_tokens=12))[-1].text == greedy for _ in range(2))
    sampled = {list(model.generate(prompt, max_tokens=12, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0,
                                   seed=s))[-1].text for s in range(4)}
    assert len(sampled) > 1  # the explicit temperature replaced the model's greedy default
