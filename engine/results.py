"""What generation streams out: text and reasoning deltas, then one result. Both backends produce exactly these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .text.toolcalls import ToolCall


@dataclass(frozen=True)
class TokenProb:
    """How sure the model was of one generated token: `prob` is the probability the model gave
    the chosen token `id` (softmax at temperature 1 of the logits the sampler saw, i.e. after
    the repetition penalty, before temperature, top-k/top-p/min-p), and `top` the most likely
    (id, text, prob) at that position, most likely first. `text` is the token's own bytes,
    decoded leniently (a piece of a multi-byte character shows as U+FFFD)."""

    id: int
    text: str
    prob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """A piece of newly generated text: whole UTF-8 characters, never part of a stop string.
    `token_probs`: the rows of the tokens consumed since the previous delta, when generate() was
    asked for `token_probs` with `stream_probs=True` (else empty; the result has them all)."""

    text: str
    token_probs: tuple[TokenProb, ...] = ()


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the reply's reasoning (inside its `<think>` block), never part of a marker.
    `token_probs` as on TextDelta."""

    text: str
    token_probs: tuple[TokenProb, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    """The last event of a generation.

    finish_reason: "stop" (an end-of-generation token or a stop string), "length" (max_tokens or
    the context window), or "cancelled" (the caller asked to stop).
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float  # prefill, up to the first generated token
    generation_seconds: float  # from the first generated token to the end
    stop_sequence: str | None = None
    cached_tokens: int = 0  # prompt tokens reused from the KV cache (not prefilled again)
    dropped_messages: int = 0  # oldest messages a ChatSession left out to fit the context window
    # Calls a remote server already parsed (OpenAI `tool_calls`); local models leave them in `text`
    # for the caller's parse_tool_calls, since only the caller knows which tools it offered.
    tool_calls: tuple[ToolCall, ...] = ()
    # The reply's reasoning block, apart from `text` (the answer); a reply cut off inside the
    # block has reasoning and no text. reasoning_tokens counts the tokens spent inside it.
    reasoning: str = ""
    reasoning_tokens: int = 0
    # One TokenProb per generated token (completion_tokens of them, an end token included) when
    # generate()/chat() was asked for `token_probs`; else empty.
    token_probs: tuple[TokenProb, ...] = ()
    # What the engine changed on the way, for the user to read (a float16 run that overflowed and
    # was answered again in bfloat16).
    notes: tuple[str, ...] = ()

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first one, over the time they took."""
        n = self.completion_tokens - 1
        return n / self.generation_seconds if n > 0 and self.generation_seconds > 0 else 0.0


Event = TextDelta | ReasoningDelta | GenerationResult
