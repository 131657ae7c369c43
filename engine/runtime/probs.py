"""Per-token probabilities, recorded during generation when the caller asks (`token_probs=K`).

The distribution recorded is the one the sampler saw at temperature 1: softmax of the logits after
the repetition penalty, before temperature and the top-k/top-p/min-p cuts (so a greedy reply's
probabilities do not all read 1.0, and the numbers mean "how sure the model was", whatever the
sampling settings). Each step keeps a softmax and a top-K on the logits' device and no host sync;
the rows come to the host once, when the reply is done. A caller that streams them
(`stream_probs=True`: the OpenAI server's logprobs) gets each delta's rows with it instead, one
small copy per delta.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..results import Event, GenerationResult, TokenProb

if TYPE_CHECKING:
    import torch

    from ..text.tokenizer import Tokenizer

MAX_TOP = 20  # alternatives per position the engine will record


def checked_top(top: int) -> int:
    """`token_probs`, the alternatives to record per position: ValueError outside 0..MAX_TOP."""
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
        raise ValueError(f"token_probs must be an integer from 0 to {MAX_TOP}, got {top!r}")
    return top


class ProbRecorder:
    """Called once per generated token with the logits the sampler saw and the token chosen."""

    def __init__(self, top: int) -> None:
        self.top = checked_top(top)
        self._text: _TokenText | None = None  # token texts, cached across calls of results()
        self._steps: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, logits: torch.Tensor, token: torch.Tensor | int) -> None:
        """logits: (vocab,) float, the sampler's input; token: its 0-d device tensor or a host int."""
        import torch

        probs = torch.softmax(logits.reshape(-1).float(), dim=-1)  # (vocab,)
        chosen = torch.as_tensor(token, dtype=torch.long, device=probs.device).reshape(1).clamp(0, probs.numel() - 1)
        values, ids = probs.topk(min(self.top, probs.numel()))  # (top,), (top,)
        self._steps.append((chosen, probs[chosen], values, ids))

    def __len__(self) -> int:
        return len(self._steps)

    def results(self, tokenizer: Tokenizer, start: int = 0, stop: int | None = None) -> tuple[TokenProb, ...]:
        """The recorded steps [start, stop) as TokenProb rows: one copy to the host for all of them."""
        steps = self._steps[start:stop]
        if not steps:
            return ()
        import torch

        chosen, prob, values, ids = (torch.stack([s[i] for s in steps]).cpu() for i in range(4))
        text = self._text = self._text or _TokenText(tokenizer)
        rows = []
        for c, p, vs, ix in zip(chosen[:, 0].tolist(), prob[:, 0].tolist(), values.tolist(), ids.tolist()):
            rows.append(TokenProb(c, text(c), p, tuple((i, text(i), v) for i, v in zip(ix, vs))))
        return tuple(rows)


class _TokenText:
    """A token id's text, cached: the same few thousand ids recur across a reply's rows."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            try:
                self.cache[token] = self.tokenizer.token_bytes(token).decode("utf-8", "replace")
            except (KeyError, IndexError, ValueError):  # a padded embedding row with no token
                self.cache[token] = ""
        return self.cache[token]


class CountedTokens:
    """A step generator that counts the ids taken from it: when the text layer yields a delta,
    `taken` says how many tokens that delta (and those before it) came from."""

    def __init__(self, tokens: Iterator[int]) -> None:
        self.tokens, self.taken = tokens, 0

    def __iter__(self) -> CountedTokens:
        return self

    def __next__(self) -> int:
        token = next(self.tokens)
        self.taken += 1
        return token

    def close(self) -> None:
        close = getattr(self.tokens, "close", None)
        if close is not None:
            close()


def with_token_probs(events: Iterator[Event], recorder: ProbRecorder, tokenizer: Tokenizer,
                     counted: CountedTokens | None = None) -> Iterator[Event]:
    """The events, with the result carrying the recorded rows (one per generated token); with
    `counted` (the token stream the events were made from), each delta also carries the rows of
    the tokens taken since the previous delta."""
    given: list[TokenProb] = []  # rows already handed out with deltas: copied to the host once
    for event in events:
        if isinstance(event, GenerationResult):
            rows = (*given, *recorder.results(tokenizer, len(given)))
            event = dataclasses.replace(event, token_probs=rows[: event.completion_tokens])
        elif counted is not None and counted.taken > len(given):
            # a step generator may record one step ahead of the token it hands on: slice by tokens taken
            rows = recorder.results(tokenizer, len(given), counted.taken)
            given += rows
            event = dataclasses.replace(event, token_probs=rows)
        yield event
