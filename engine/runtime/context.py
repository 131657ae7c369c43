"""The context-window policy: what the model sees when a conversation outgrows its window.

Policy (stated to the user, never silent): keep the system prompt and the newest messages; drop
the oldest turns, a whole user turn at a time (a user message and every reply or tool message
that followed it), until the prompt plus the reply budget fits. The history itself is never
changed: only what is sent to the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ContextOverflowError

POLICY = "drop the oldest turns, keep the system prompt"


@dataclass(frozen=True)
class FittedContext:
    messages: list[dict]  # what the model will see
    ids: list[int]  # those messages rendered and tokenized: the prompt to prefill
    dropped: int  # messages left out, oldest first
    context_length: int

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


def turn_starts(messages: list[dict]) -> list[int]:
    """Indexes of the user messages that begin each turn (the system prompt is not a turn)."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def fit_to_context(
    messages: list[dict],
    encode: Callable[[list[dict]], list[int]],
    *,
    context_length: int,
    reply_tokens: int,
) -> FittedContext:
    """Drop the oldest turns until the encoded prompt plus the reply budget fits the window.

    `encode(messages)` renders and tokenizes a prompt; the winner's ids are returned, so the
    caller never encodes twice. Fewer turns never take more tokens, so when the whole history
    does not fit, a binary search over turn starts finds the longest tail that does (a few
    encodes, not one per dropped turn). The reply budget is capped at half the window, so a
    large max_tokens setting cannot push the whole conversation out. Raises
    ContextOverflowError when even the newest turn alone (with the system prompt) does not fit.
    """
    budget = context_length - min(reply_tokens, context_length // 2)
    system = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(system) :]
    starts = turn_starts(body) or [0]
    encoded: dict[int, list[int]] = {}

    def fits(i: int) -> bool:
        encoded[i] = encode(system + body[starts[i] :])
        return len(encoded[i]) <= budget

    lo, hi = 0, len(starts) - 1
    if not fits(hi):
        raise ContextOverflowError(
            f"the last message is too long for the model: {len(encoded[hi])} tokens, with room for {budget} "
            f"in a context window of {context_length} (after reserving space for the reply); shorten it"
        )
    while lo < hi:  # invariant: starts[hi] fits
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    start = starts[hi]
    return FittedContext(system + body[start:], encoded[hi], start, context_length)
