"""The context-window policy, on the default model's real tokenizer and chat template."""

from __future__ import annotations

import pytest
from scripted import ScriptedModel

from engine.errors import ContextOverflowError
from engine.runtime.context import fit_to_context


@pytest.fixture(scope="module")
def model(default_gguf):
    return ScriptedModel(default_gguf, [], tools=False)


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: " + "tell me about the sea " * 10})
        messages.append({"role": "assistant", "content": f"Answer {i}: " + "the sea is wide " * 10})
    return messages


def test_everything_fits_nothing_dropped(model):
    msgs = conversation(3)
    fitted = fit_to_context(msgs, model.encode_chat, context_length=8192, reply_tokens=256)
    assert fitted.messages == msgs and fitted.dropped == 0
    assert fitted.prompt_tokens == model.count_prompt_tokens(msgs)


def test_oldest_turns_dropped_system_kept(model):
    msgs = conversation(10) + [{"role": "user", "content": "And now?"}]
    full = model.count_prompt_tokens(msgs)
    ctx = full // 2
    fitted = fit_to_context(msgs, model.encode_chat, context_length=ctx, reply_tokens=64)
    assert fitted.messages[0] == msgs[0]  # the system prompt survives
    assert fitted.messages[-1] == msgs[-1]  # the new message survives
    assert fitted.dropped > 0 and fitted.dropped % 2 == 0  # whole turns: a question with its answer
    assert fitted.messages[1]["role"] == "user"
    assert fitted.messages[1:] == msgs[1 + fitted.dropped :]
    assert fitted.prompt_tokens + 64 <= ctx
    # The fewest whole turns were dropped: keeping the one before would not fit.
    one_more = [msgs[0]] + msgs[1 + fitted.dropped - 2 :]
    assert model.count_prompt_tokens(one_more) + 64 > ctx


def test_a_single_message_larger_than_the_window_is_a_clear_error(model):
    msgs = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(ContextOverflowError, match="too long"):
        fit_to_context(msgs, model.encode_chat, context_length=1024, reply_tokens=128)


def test_reply_budget_is_capped_at_half_the_window(model):
    msgs = [{"role": "user", "content": "hello"}]
    fitted = fit_to_context(msgs, model.encode_chat, context_length=512, reply_tokens=100_000)
    assert fitted.dropped == 0
