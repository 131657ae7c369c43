"""A remote reply's OpenAI logprobs -> TokenProb rows, as a local model records them.

Chat chunks carry `choices[i].logprobs.content`: one {"token", "logprob", "bytes",
"top_logprobs"} entry per token (llama-server and `chatapp serve` add the token "id"); legacy
completions carry {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}]}, without ids.
A token's text is its bytes decoded leniently where the server sends them (TokenProb's own
rule), else the server's string; an id the server does not send is -1. The server is hostile
until checked: a reply whose logprobs do not parse gives no rows at all (never half of them, and
never an error: the text is what the user asked for).
"""

from __future__ import annotations

import math

from ..results import TokenProb

LEGACY_TOP = 5  # OpenAI's most alternatives per position on /completions
NO_ID = -1  # the token id where the server does not say it


class ReplyRows:
    """The rows of one streamed reply: `read` each chunk's choice, `take` what it added."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "chat" or "completion"
        self.rows: list[TokenProb] = []
        self.given = 0  # rows already handed out with a delta
        self.broken = False

    def read(self, choice) -> None:
        logprobs = getattr(choice, "logprobs", None)
        if logprobs is None or self.broken:
            return
        try:
            self.rows += _chat_rows(logprobs) if self.kind == "chat" else _legacy_rows(logprobs)
        except (TypeError, ValueError, AttributeError, OverflowError):
            self.broken, self.rows = True, []

    def take(self) -> tuple[TokenProb, ...]:
        """The rows read since the last take (none once the reply's logprobs proved malformed)."""
        rows = tuple(self.rows[self.given:])
        self.given = len(self.rows)
        return rows

    def all(self) -> tuple[TokenProb, ...]:
        return tuple(self.rows)


def _prob(logprob) -> float:
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or math.isnan(logprob) or logprob > 1e-6:
        raise ValueError(f"not a log probability: {logprob!r}")
    return math.exp(min(logprob, 0.0))


def _text(token, raw) -> str:
    if raw is not None:
        return bytes(raw).decode("utf-8", "replace")  # bytes(): ints outside 0..255 raise ValueError
    if not isinstance(token, str):
        raise TypeError(f"not a token: {token!r}")
    return token


def _id(entry) -> int:
    token_id = (getattr(entry, "model_extra", None) or {}).get("id", NO_ID)
    return token_id if isinstance(token_id, int) and not isinstance(token_id, bool) else NO_ID


def _chat_rows(logprobs) -> list[TokenProb]:
    rows = []
    for entry in getattr(logprobs, "content", None) or []:
        top = tuple((_id(t), _text(t.token, t.bytes), _prob(t.logprob)) for t in entry.top_logprobs or [])
        rows.append(TokenProb(_id(entry), _text(entry.token, entry.bytes), _prob(entry.logprob), top))
    return rows


def _legacy_rows(logprobs) -> list[TokenProb]:
    tokens, values = logprobs.tokens or [], logprobs.token_logprobs or []
    tops = logprobs.top_logprobs or [{}] * len(tokens)
    if not len(tokens) == len(values) == len(tops):
        raise ValueError("tokens, token_logprobs and top_logprobs differ in length")
    rows = []
    for token, value, top in zip(tokens, values, tops):
        alternatives = sorted(((NO_ID, _text(t, None), _prob(v)) for t, v in (top or {}).items()), key=lambda a: -a[2])
        rows.append(TokenProb(NO_ID, _text(token, None), _prob(value), tuple(alternatives)))
    return rows
