"""Token ids -> text deltas -> one GenerationResult.

Layered like mlx-lm: a backend yields token ids (its step generator), and `stream_text` turns them
into text, holding back incomplete UTF-8 and any tail that could still become a stop string.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from ..results import Event, GenerationResult, TextDelta
from ..text.tokenizer import StreamingDetokenizer, Tokenizer


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def stream_text(
    tokens: Iterator[int],
    tokenizer: Tokenizer,
    *,
    prompt_tokens: int,
    max_tokens: int,
    stop: Sequence[str] = (),
    should_stop: Callable[[], bool] | None = None,
    start_time: float | None = None,
) -> Iterator[Event]:
    """Consume a step generator of token ids; yield TextDelta events, then one GenerationResult.

    `start_time` is when prefill began (perf_counter); the first token marks its end.
    """
    start = time.perf_counter() if start_time is None else start_time
    first_token_time = None
    detok = StreamingDetokenizer(tokenizer, skip_special=True)
    stops = [s for s in stop if s]
    pending = ""  # decoded text not yet emitted: it may be the start of a stop string
    emitted: list[str] = []
    finish, matched, n = "length", None, 0  # n counts every sampled token, an end token included
    try:
        for token in tokens if max_tokens > 0 else ():
            n += 1
            if first_token_time is None:
                first_token_time = time.perf_counter()
            if token in tokenizer.eos_ids:
                finish = "stop"
                break
            pending += detok.add(token)
            out = pending
            if stops:
                hit = min(((pending.find(s), s) for s in stops if s in pending), default=None)
                if hit is not None:
                    pending, finish, matched = pending[: hit[0]], "stop", hit[1]
                    break
                keep = _held_back(pending, stops)
                out = pending[: len(pending) - keep]
            pending = pending[len(out) :]
            if out:
                emitted.append(out)
                yield TextDelta(out)
            if n >= max_tokens:
                break
            if should_stop is not None and should_stop():
                finish = "cancelled"
                break
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()
    if matched is None:
        # A tail held back for a stop string that never completed is real text.
        pending += detok.flush()
    if pending:
        emitted.append(pending)
        yield TextDelta(pending)
    end = time.perf_counter()
    first = first_token_time or end
    yield GenerationResult(
        text="".join(emitted),
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=n,
        prompt_seconds=first - start,
        generation_seconds=end - first,
        stop_sequence=matched,
    )
