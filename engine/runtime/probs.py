"""Per-token probabilities, recorded during generation when the caller asks (`token_probs=K`).

The distribution recorded is the one the sampler saw at temperature 1: softmax of the logits after
the repetition penalty, before temperature and the top-k/top-p/min-p cuts (so a greedy reply's
probabilities do not all read 1.0, and the numbers mean "how sure the model was", whatever the
sampling settings). Each step keeps a softmax and a top-K on the logits' device and no host sync;
the rows come to the host once, when the reply is done.
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


class ProbRecorder:
    """Called once per generated token with the logits the sampler saw and the token chosen."""

    def __init__(self, top: int) -> None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
            raise ValueError(f"token_probs must be an integer from 0 to {MAX_TOP}, got {top!r}")
        self.top = top
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

    def results(self, tokenizer: Tokenizer) -> tuple[TokenProb, ...]:
        """The recorded steps as TokenProb rows: one copy to the host for all of them."""
        if not self._steps:
            return ()
        import torch

        chosen, prob, values, ids = (torch.stack([s[i] for s in self._steps]).cpu() for i in range(4))
        text = _TokenText(tokenizer)
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


def with_token_probs(events: Iterator[Event], recorder: ProbRecorder, tokenizer: Tokenizer) -> Iterator[Event]:
    """The events, with the result carrying the recorded rows (one per generated token)."""
    for event in events:
        if isinstance(event, GenerationResult):
            rows = recorder.results(tokenizer)[: event.completion_tokens]
            event = dataclasses.replace(event, token_probs=rows)
        yield event
