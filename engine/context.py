"""The context-window policy: what the model sees when a conversation outgrows its window.

Policy (stated to the user, never silent): keep the system prompt and the newest messages; drop
the oldest turns, a whole user turn at a time (a user message and every reply or tool message
that followed it), until the prompt plus the reply budget fits. The history itself is never
changed: only what is sent to the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import ContextOverflowError

POLICY = "drop the oldest turns, keep the system prompt"


@dataclass(frozen=True)
class FittedContext:
    messages: list[dict]  # what the model will see
    dropped: int  # messages left out, oldest first
    prompt_tokens: int
    context_length: int


def turn_starts(messages: list[dict]) -> list[int]:
    """Indexes of the user messages that begin each turn (the system prompt is not a turn)."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def fit_to_context(
    messages: list[dict],
    count_tokens: Callable[[list[dict]], int],
    *,
    context_length: int,
    reply_tokens: int,
) -> FittedContext:
    """Drop the oldest turns until count_tokens(kept) + reply_tokens fits the window.

    The reply budget is capped at half the window, so a large max_tokens setting cannot push
    the whole conversation out. Raises ContextOverflowError when even the newest turn alone
    (with the system prompt) does not fit.
    """
    budget = context_length - min(reply_tokens, context_length // 2)
    system = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(system) :]
    starts = turn_starts(body) or [0]
    for n_dropped_turns, start in enumerate(starts):
        kept = system + body[start:]
        tokens = count_tokens(kept)
        if tokens <= budget:
            return FittedContext(kept, start, tokens, context_length)
        if n_dropped_turns == len(starts) - 1:
            break
    raise ContextOverflowError(
        f"the last message is too long for the model: {tokens} tokens, with room for {budget} "
        f"in a context window of {context_length} (after reserving space for the reply); shorten it"
    )
