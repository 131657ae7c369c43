"""The streaming layer on scripted token ids: stop strings, end tokens, limits, cancellation."""

from __future__ import annotations

import pytest

from engine.formats.gguf import read_gguf
from engine.results import GenerationResult, TextDelta
from engine.runtime.generate import stream_text
from engine.text.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok(default_gguf):
    with read_gguf(default_gguf) as f:
        return load_tokenizer(f.metadata)


def run(tok, ids, **kw):
    kw.setdefault("max_tokens", 1000)
    events = list(stream_text(iter(ids), tok, prompt_tokens=3, **kw))
    deltas, result = events[:-1], events[-1]
    assert all(isinstance(d, TextDelta) and d.text for d in deltas) and isinstance(result, GenerationResult)
    assert "".join(d.text for d in deltas) == result.text
    return [d.text for d in deltas], result


def test_plain_text_streams_whole(tok):
    ids = tok.encode("Hello there, general Kenobi.")
    deltas, result = run(tok, ids)
    assert result.text == "Hello there, general Kenobi."
    assert result.finish_reason == "length" and result.completion_tokens == len(ids)


def test_end_token_stops_and_is_not_shown(tok):
    ids = tok.encode("Done.") + [tok.token_to_id("<|im_end|>")] + tok.encode(" never shown")
    _, result = run(tok, ids)
    assert result.text == "Done." and result.finish_reason == "stop" and result.stop_sequence is None
    assert result.completion_tokens == len(tok.encode("Done.")) + 1


@pytest.mark.parametrize("stop", ["END", "\nUser:", "general Ke"])
def test_stop_strings_across_tokens_never_leak(tok, stop):
    text = "Hello there, general Kenobi.\nUser: END more"
    deltas, result = run(tok, tok.encode(text), stop=[stop, "unused stop"])
    assert result.text == text[: text.index(stop)]
    assert result.finish_reason == "stop" and result.stop_sequence == stop
    seen = ""
    for d in deltas:
        seen += d
        assert stop not in seen


def test_earliest_stop_wins(tok):
    _, result = run(tok, tok.encode("alpha beta gamma"), stop=["gamma", "beta"])
    assert result.text == "alpha " and result.stop_sequence == "beta"


def test_held_back_prefix_that_never_completes_is_released(tok):
    # "User" could begin the stop string "User:"; the text ends before the colon comes.
    _, result = run(tok, tok.encode("Ask the User"), stop=["User:"])
    assert result.text == "Ask the User" and result.finish_reason == "length"


def test_multibyte_characters_are_never_split(tok):
    text = "🙂 日本語 é 🚀🚀"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # some characters take several tokens
    deltas, result = run(tok, ids)
    assert result.text == text and all("\ufffd" not in d for d in deltas)


def test_max_tokens_and_cancellation(tok):
    ids = tok.encode("one two three four five six seven")
    _, result = run(tok, ids, max_tokens=3)
    assert result.finish_reason == "length" and result.completion_tokens == 3
    calls = []
    _, result = run(tok, ids, should_stop=lambda: len(calls.append(1) or calls) >= 2)
    assert result.finish_reason == "cancelled" and result.completion_tokens == 2


def test_the_step_generator_is_closed_when_streaming_ends(tok):
    closed = []

    def steps():
        try:
            yield from tok.encode("a b c d e f")
        finally:
            closed.append(True)

    list(stream_text(steps(), tok, prompt_tokens=1, max_tokens=2))
    assert closed == [True]
