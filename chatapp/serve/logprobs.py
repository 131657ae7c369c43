"""The engine's per-token probabilities (GenerationResult.token_probs, TokenProb rows) in the
OpenAI API's two logprobs shapes.

Chat (`logprobs: true, top_logprobs: K`): `{"content": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}`. Legacy completions (`logprobs: K`):
`{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`, the offsets
counted in characters from the start of the completion text (as vLLM does without echo).

`logprob` is the natural log of the probability the model gave the token at temperature 1
(engine/runtime/probs.py), -9999.0 where it underflowed to 0 (OpenAI's "very unlikely"). `bytes`
are the token's own bytes, so a token holding part of a multi-byte character has its part of it
(its `token` text shows U+FFFD there). The end-of-generation token is left out: the entries are
the reply's tokens, whose bytes concatenate to its text (less a stop string that ended it).
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Iterable, Sequence

from engine import GenerationResult, TokenProb

UNLIKELY = -9999.0  # OpenAI's logprob for a token too unlikely to have a finite one


def logprob(prob: float) -> float:
    return math.log(prob) if prob > 0 else UNLIKELY


class LogprobFormat:
    """Rows -> the API's entries for one response (token bytes cached across its chunks)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.end_ids = set(tokenizer.eos_ids)
        self._bytes: dict[int, bytes] = {}
        self.offset = 0  # characters of completion text before the next row (legacy shape)
        # A character split across tokens counts at the token that ends it.
        self._chars = codecs.getincrementaldecoder("utf-8")("replace")

    def token_bytes(self, token: int, text: str) -> bytes:
        if token not in self._bytes:
            try:
                self._bytes[token] = self.tokenizer.token_bytes(token)
            except (KeyError, IndexError, ValueError):  # a padded embedding row with no token
                self._bytes[token] = text.encode()
        return self._bytes[token]

    def kept(self, rows: Iterable[TokenProb]) -> list[TokenProb]:
        return [r for r in rows if r.id not in self.end_ids]

    def _entry(self, token: int, text: str, prob: float) -> dict:
        # "id": llama-server's extension, which our remote backend reads back
        return {"id": token, "token": text, "logprob": logprob(prob), "bytes": list(self.token_bytes(token, text))}

    def chat(self, rows: Iterable[TokenProb]) -> dict:
        """`choices[i].logprobs` of a chat response or chunk."""
        return {"content": [{**self._entry(r.id, r.text, r.prob),
                             "top_logprobs": [self._entry(i, s, p) for i, s, p in r.top]} for r in self.kept(rows)]}

    def completion(self, rows: Iterable[TokenProb]) -> dict:
        """`choices[i].logprobs` of a legacy completion or one of its chunks (offsets go on
        from the previous call's)."""
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for r in self.kept(rows):
            out["tokens"].append(r.text)
            out["token_logprobs"].append(logprob(r.prob))
            out["top_logprobs"].append({s: logprob(p) for _, s, p in r.top})
            out["text_offset"].append(self.offset)
            self.offset += len(self._chars.decode(self.token_bytes(r.id, r.text)))
        return out


class PendingRows:
    """A stream's rows not sent yet: each delta adds its own, and the next chunk sent takes all
    of them (text held back for a tool call takes its rows along to where it is sent)."""

    def __init__(self, shape: Callable[[list[TokenProb]], dict], kept: Callable[[Iterable[TokenProb]], list]) -> None:
        self.shape, self.kept = shape, kept
        self.rows: list[TokenProb] = []
        self.seen = 0  # rows the deltas carried

    def add(self, rows: Sequence[TokenProb]) -> None:
        self.rows += rows
        self.seen += len(rows)

    def add_rest(self, result: GenerationResult) -> None:
        """The result's rows no delta carried (the tokens after the last text: a stop string's)."""
        self.add(result.token_probs[self.seen:])

    def take(self) -> dict | None:
        rows, self.rows = self.kept(self.rows), []
        return self.shape(rows) if rows else None


__all__ = ["LogprobFormat", "PendingRows", "UNLIKELY", "logprob"]
