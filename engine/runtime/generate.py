"""Token ids -> text deltas -> one GenerationResult.

Layered like mlx-lm: a backend yields token ids (its step generator), and `stream_text` turns them
into text, holding back incomplete UTF-8 and any tail that could still become a stop string.
For models that think first, a `ReasoningSplitter` (engine/text/reasoning.py) sits between the
detokenizer and the stop strings: the block's text streams as ReasoningDelta events, and only the
answer after it is searched for stop strings.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from ..results import Event, GenerationResult, ReasoningDelta, TextDelta
from ..text.reasoning import ReasoningSplitter, ThinkMarkers
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
    markers: ThinkMarkers | None = None,
    inside: bool = False,
    budget: int | None = None,
    forced: deque[int] | None = None,
) -> Iterator[Event]:
    """Consume a step generator of token ids; yield TextDelta (and ReasoningDelta) events, then
    one GenerationResult.

    `start_time` is when prefill began (perf_counter); the first token marks its end.
    `markers`: the model's reasoning block, if it has one; `inside`: the prompt left it open.
    `budget`: reasoning tokens after which the close marker's ids go into `forced`, the queue
    the step generator feeds before sampling again (so the model goes on to answer).
    """
    start = time.perf_counter() if start_time is None else start_time
    first_token_time = None
    detok = StreamingDetokenizer(tokenizer, skip_special=True)
    stops = [s for s in stop if s]
    pending = ""  # decoded text not yet emitted: it may be the start of a stop string
    emitted: list[str] = []
    thoughts: list[str] = []
    finish, matched, n = "length", None, 0  # n counts every sampled token, an end token included
    splitter = ReasoningSplitter(markers, inside=inside) if markers is not None else None
    # Marker tokens a vocabulary marks special would be skipped by the detokenizer: spell them.
    marker_ids = {} if markers is None else {
        i: text for text in (markers.open, markers.close)
        if (i := tokenizer.token_to_id(text)) is not None and tokenizer.is_special(i)}
    thinking_tokens, closing = 0, False

    def close_if_over_budget() -> None:
        nonlocal closing
        if budget is not None and forced is not None and not closing and splitter.in_reasoning \
                and thinking_tokens >= budget:
            forced.extend(tokenizer.encode(markers.close + "\n\n", add_special=False, parse_special=True))
            closing = True

    if splitter is not None:
        close_if_over_budget()
    try:
        for token in tokens if max_tokens > 0 else ():
            n += 1
            if first_token_time is None:
                first_token_time = time.perf_counter()
            if token in tokenizer.eos_ids:
                finish = "stop"
                break
            piece = detok.flush() + marker_ids[token] if token in marker_ids else detok.add(token)
            if splitter is not None:
                was_inside = splitter.in_reasoning
                parts = splitter.feed(piece)
                thinking_tokens += was_inside or splitter.in_reasoning
                piece = ""
                for kind, part in parts:
                    if kind == "text":
                        piece += part
                    else:
                        thoughts.append(part)
                        yield ReasoningDelta(part)
                close_if_over_budget()
            pending += piece
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
        tail = detok.flush()
        if splitter is None:
            pending += tail
        else:  # a reply cut off inside its block ends as reasoning only
            for kind, part in splitter.feed(tail) + splitter.flush():
                if kind == "text":
                    pending += part
                else:
                    thoughts.append(part)
                    yield ReasoningDelta(part)
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
        reasoning="".join(thoughts),
        reasoning_tokens=thinking_tokens,
    )
