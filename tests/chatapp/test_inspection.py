"""chatapp.inspection without Textual: which part of a reply (thinking, answer, tool call) each
generated token belongs to, for the inspector's token view."""

from __future__ import annotations

import pytest

from chatapp.inspection import reply_parts

@pytest.mark.parametrize(("texts", "reasoning", "content", "has_calls", "expected"), [
    # A closed block, its markers and the blank line after it are thinking.
    (["<think>", "\n", "Hmm", ".", "</think>", "\n\n", "Blue", "."], "Hmm.", "Blue.", False,
     ["thinking"] * 6 + ["answer"] * 2),
    # The prompt opened the block (DeepSeek-R1 style): the reply starts inside it.
    (["Let", " me", "</think>", "Hi"], "Let me", "Hi", False, ["thinking"] * 3 + ["answer"]),
    # Cut off while thinking: all of it.
    (["<think>", "Still", " going"], "Still going", "", False, ["thinking"] * 3),
    # Thinking off (Qwen3's empty block), then text and a tagged call.
    (["<think>", "\n\n", "</think>", "\n\n", "Sure", ".", "<tool_call>", '{"name"', "}", "</tool_call>"],
     "", "Sure.", True, ["thinking"] * 4 + ["answer"] * 2 + ["tool call"] * 4),
    # A bare JSON call after no text: all tool call.
    (['{"name"', ': "f"', "}"], "", "", True, ["tool call"] * 3),
    # No block, no call; a literal close marker in an answer is not a block.
    (["See", " </think>", " there"], "", "See </think> there", False, ["answer"] * 3),
    # The other marker spelling.
    (["<thinking>", "x", "</thinking>", "y"], "x", "y", False, ["thinking"] * 3 + ["answer"]),
])
def test_reply_parts(texts, reasoning, content, has_calls, expected):
    assert reply_parts(texts, reasoning=reasoning, content=content, has_calls=has_calls) == expected
