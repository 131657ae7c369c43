"""Replies that think first: the `<think>` block streams apart from the answer, whatever token
boundaries its markers fall on; a cut-off block is still a well-formed result; the budget closes
the block; the on/off switch changes the rendered prompt."""

from __future__ import annotations

import pytest

from engine import GenerationResult, Reasoning, ReasoningDelta, TextDelta
from engine.runtime.generate import stream_text
from engine.text.reasoning import ReasoningSplitter, ThinkMarkers
from tests.scripted import ScriptedModel
from tests.thinking import QWEN3_STYLE, R1_STYLE, SWITCH_STYLE

THINK = ThinkMarkers("<think>", "</think>")
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def _run(model, **kwargs):
    events = list(model.chat(MESSAGES, max_tokens=kwargs.pop("max_tokens", 200), temperature=0, **kwargs))
    result = events[-1]
    assert isinstance(result, GenerationResult)
    thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    said = "".join(e.text for e in events if isinstance(e, TextDelta))
    return result, thought, said, events


def test_markers_split_across_tokens_stream_apart(default_gguf):
    model = ScriptedModel(default_gguf, ["<think>\nTwo and two make four.\n</think>\n\nIt is 4."], template=QWEN3_STYLE)
    ids = model.tokenizer.encode("<think>x</think>", add_special=False)
    assert len(ids) > 3  # the markers are not single tokens here: they arrive in pieces
    result, thought, said, events = _run(model)
    assert thought == "Two and two make four.\n" == result.reasoning
    assert said == "It is 4." == result.text
    assert result.finish_reason == "stop"
    assert result.reasoning_tokens > 0
    kinds = [type(e) for e in events[:-1]]
    assert kinds.index(TextDelta) > max(i for i, k in enumerate(kinds) if k is ReasoningDelta)  # thinking first


def test_every_split_point_gives_the_same_result():
    reply = "<think>plan: add</think>\n\nFour."
    for cut in range(1, len(reply)):
        splitter = ReasoningSplitter(THINK)
        parts = splitter.feed(reply[:cut]) + splitter.feed(reply[cut:]) + splitter.flush()
        assert "".join(t for k, t in parts if k == "reasoning") == "plan: add", cut
        assert "".join(t for k, t in parts if k == "text") == "Four.", cut


def test_cut_off_mid_block_is_reasoning_only(default_gguf):
    model = ScriptedModel(default_gguf, ["<think>Let me count slowly, one by one, to be sure</think>4"], template=QWEN3_STYLE)
    result, thought, said, _ = _run(model, max_tokens=6)
    assert result.finish_reason == "length"
    assert said == "" == result.text
    assert thought and thought == result.reasoning
    assert "<" not in thought and "think" not in thought  # no piece of a marker leaks


def test_cut_off_inside_the_close_marker_keeps_no_marker_piece(default_gguf):
    model = ScriptedModel(default_gguf, ["<think>ok</think>4"], template=QWEN3_STYLE)
    n = len(model.tokenizer.encode("<think>ok</", add_special=False))
    result, thought, said, _ = _run(model, max_tokens=n)
    assert result.finish_reason == "length" and result.text == "" and result.reasoning.startswith("ok")


def test_no_block_is_all_answer(default_gguf):
    model = ScriptedModel(default_gguf, ["  It is 4. <think> is a tag."], template=QWEN3_STYLE)
    result, thought, said, _ = _run(model)
    assert thought == "" == result.reasoning and result.reasoning_tokens == 0
    assert said == "  It is 4. <think> is a tag." == result.text


def test_models_without_markers_never_split(default_gguf):
    model = ScriptedModel(default_gguf, ["<think>x</think>y"])  # ChatML, no <think> anywhere
    assert model.think_markers is None
    result, thought, said, _ = _run(model)
    assert thought == "" and said == "<think>x</think>y"


def test_prompt_that_opens_the_block_starts_inside(default_gguf):
    model = ScriptedModel(default_gguf, ["Hmm, 2+2.\n</think>\n\n4"], template=R1_STYLE)
    assert model.think_markers == THINK
    result, thought, said, _ = _run(model)
    assert (result.reasoning, result.text) == ("Hmm, 2+2.\n", "4")


def test_budget_closes_the_block_and_the_model_answers(default_gguf):
    long_thought = " ".join(["step"] * 40)
    model = ScriptedModel(default_gguf, [f"<think>{long_thought}</think>\n\nFour.", f"<think>{long_thought}</think>\n\nFour."],
                          template=QWEN3_STYLE)
    free, *_ = _run(model)
    capped, thought, said, _ = _run(model, reasoning=Reasoning(budget=5))
    assert free.reasoning_tokens > 30
    assert capped.reasoning_tokens <= 5 + len(model.tokenizer.encode("</think>\n\n", add_special=False))
    assert thought.split() == ["step"] * len(thought.split()) and len(thought.split()) < 10
    assert said == "Four." and capped.finish_reason == "stop"


def test_budget_zero_on_a_prompt_that_opens_the_block(default_gguf):
    model = ScriptedModel(default_gguf, ["Long musing.</think>\n\n4"], template=R1_STYLE)
    result, thought, said, _ = _run(model, reasoning=Reasoning(budget=0))
    assert thought == "" and said == "4"


def test_enable_thinking_changes_the_rendered_prompt(default_gguf):
    model = ScriptedModel(default_gguf, [], template=QWEN3_STYLE)
    assert model.thinking_switch == "enable_thinking"
    on = model.render_chat(MESSAGES, reasoning=Reasoning(thinking=True))
    off = model.render_chat(MESSAGES, reasoning=Reasoning(thinking=False))
    assert on == model.render_chat(MESSAGES) and on.endswith("assistant\n")
    assert off == on + "<think>\n\n</think>\n\n"


def test_no_think_switch_goes_in_the_system_message(default_gguf):
    model = ScriptedModel(default_gguf, [], template=SWITCH_STYLE)
    assert model.thinking_switch == "/no_think"
    off = model.render_chat([{"role": "system", "content": "Be brief."}, *MESSAGES], reasoning=Reasoning(thinking=False))
    on = model.render_chat([{"role": "system", "content": "Be brief."}, *MESSAGES], reasoning=Reasoning(thinking=True))
    assert "Be brief.\n/no_think" in off and off.endswith("<think>\n\n</think>\n")
    assert "Be brief.\n/think" in on and on.endswith("assistant\n")


def test_thinking_off_reply_after_a_closed_block_is_all_answer(default_gguf):
    model = ScriptedModel(default_gguf, ["4"], template=QWEN3_STYLE)
    result, thought, said, _ = _run(model, reasoning=Reasoning(thinking=False))
    assert (result.reasoning, result.text) == ("", "4")


def test_stop_strings_apply_to_the_answer_only(default_gguf):
    model = ScriptedModel(default_gguf, ["<think>say STOP here</think>Four STOP more"], template=QWEN3_STYLE)
    result, thought, said, _ = _run(model, stop=["STOP"])
    assert result.reasoning == "say STOP here" and result.text == "Four " and result.stop_sequence == "STOP"


def test_a_negative_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        Reasoning(budget=-1)


def test_native_backend_feeds_the_budgets_close_marker(default_model):
    """The real token loop takes the forced ids: whatever the model samples, after the close
    marker nothing more is reasoning."""
    from collections import deque

    tok = default_model.tokenizer
    prompt = tok.encode("<think>", add_special=False)
    forced = deque(tok.encode("</think>\n\nOK", add_special=False))
    want = list(forced)
    params = default_model.sampling_params(max_tokens=len(want) + 2, temperature=0)
    gen = default_model._token_ids(prompt, params, None, forced)
    got = [next(gen) for _ in range(len(want) + 1)]
    gen.close()
    assert got[: len(want)] == want
    events = list(stream_text(iter(got), tok, prompt_tokens=len(prompt), max_tokens=len(got), markers=THINK, inside=True))
    assert events[-1].reasoning == "" and events[-1].text.startswith("OK")
