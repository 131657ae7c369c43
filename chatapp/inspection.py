"""The data behind the inspector (chatapp/screens/inspector.py), without Textual: a reply's
recorded token probabilities as stored in its meta, which prompt tokens belong to the system
prompt and the last user message, and summaries of one position's attention weights.

Stored with an assistant message (meta, JSON): "token_probs", one [id, text, prob, [[id, text,
prob] x top]] per generated token (an end token included), and "prompt_ids", the ids the model
was given. Written by chatapp/worker.py for backends that record probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.text import KNOWN_MARKERS, OPEN_TAG, PYTHON_TAG

TOP = 10  # alternatives recorded per token
# Probability bands for colour (and the legend): lower bound, name, style.
# Four hues that stay apart in dark and light themes (ANSI yellow renders orange in some).
BANDS = ((0.9, "sure", "#4caf50"), (0.5, "likely", "#e5c07b"), (0.2, "unsure", "#e08030"), (0.0, "guess", "#e05561"))


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    prob: float
    top: tuple[tuple[int, str, float], ...]


def meta_rows(result) -> list:
    """A GenerationResult's token_probs as the JSON rows stored in the message meta."""
    return [[t.id, t.text, round(t.prob, 6), [[i, s, round(p, 6)] for i, s, p in t.top]] for t in result.token_probs]


def tokens_from_meta(meta: dict) -> list[Token]:
    """The stored rows, checked: a hand-edited or foreign meta gives no tokens, never a crash."""
    rows = meta.get("token_probs")
    tokens = []
    if not isinstance(rows, list):
        return []
    try:
        for token_id, text, prob, top in rows:
            tokens.append(Token(int(token_id), str(text), float(prob),
                                tuple((int(i), str(s), float(p)) for i, s, p in top)))
    except (TypeError, ValueError):
        return []
    return tokens


def reply_parts(token_texts: Sequence[str], *, reasoning: str, content: str, has_calls: bool) -> list[str]:
    """For each generated token: "thinking", "answer" or "tool call", by where it starts in the
    token texts laid end to end. The thinking block runs from the start to its close marker (and
    the blank lines after it); a cut-off block is thinking to the end. Tool calls run from the
    first call marker after the answer's text, else from the end of that text. The markers are
    the ones the engine reads (engine.text.reasoning, engine.text.toolcalls)."""
    text = "".join(token_texts)
    answer_from = 0
    pair = next(((open_, close) for open_, close in KNOWN_MARKERS if close in text), None)
    if pair is not None and (reasoning.strip() or text.lstrip().startswith(pair[0])):
        after = text[text.find(pair[1]) + len(pair[1]):]
        answer_from = len(text) - len(after.lstrip())
    elif reasoning.strip():
        answer_from = len(text)  # the block never closed: all of it is thinking
    call_from = len(text) + 1
    if has_calls:
        found = [at for at in (text.find(m, answer_from) for m in (OPEN_TAG, PYTHON_TAG)) if at >= 0]
        if found:
            call_from = min(found)
        else:
            at = text.find(content.strip(), answer_from) if content.strip() else -1
            call_from = answer_from if at < 0 else len(text) - len(text[at + len(content.strip()):].lstrip())
    parts, start = [], 0
    for piece in token_texts:
        parts.append("thinking" if start < answer_from else "tool call" if start >= call_from else "answer")
        start += len(piece)
    return parts


def band(prob: float) -> tuple[str, str]:
    """(name, style) of the probability band `prob` falls in."""
    for low, name, style in BANDS:
        if prob >= low:
            return name, style
    return BANDS[-1][1], BANDS[-1][2]


def visible(text: str) -> str:
    """A token's text as one readable cell: whitespace made visible, never empty."""
    shown = text.replace("\n", "⏎").replace("\t", "⇥")
    return shown if shown.strip() else shown.replace(" ", "·") or "∅"


def segments(token_texts: Sequence[str], system: str | None, last_user: str | None) -> dict[str, set[int]]:
    """Which prompt positions hold the system prompt and the last user message: the token
    texts are laid end to end and each message's content found in them (the template's own
    markup around it belongs to neither)."""
    starts, text = [], ""
    for piece in token_texts:
        starts.append(len(text))
        text += piece
    found = {}
    for name, content, at in (("system", system, text.find), ("last user message", last_user, text.rfind)):
        lo = at(content) if content else -1
        if lo < 0:
            found[name] = set()
            continue
        hi = lo + len(content)
        found[name] = {i for i, s in enumerate(starts) if s < hi and s + len(token_texts[i]) > lo}
    return found


def shares(weights: Sequence[float], parts: dict[str, set[int]], reply_start: int) -> dict[str, float]:
    """How one query's attention (weights over positions 0..p) splits between the system
    prompt, the last user message, the reply so far and everything else."""
    out = {name: 0.0 for name in (*parts, "reply so far", "other")}
    for i, w in enumerate(weights):
        name = next((n for n, members in parts.items() if i in members), None)
        if name is None:
            name = "reply so far" if i >= reply_start else "other"
        out[name] += float(w)
    return out


def strongest(weights: Sequence[float], k: int = 8) -> list[tuple[int, float]]:
    """The k positions attended to most, strongest first: (position, weight)."""
    return sorted(enumerate(map(float, weights)), key=lambda iw: -iw[1])[:k]
