"""Replies that think first: the markers around a reasoning block, and splitting a stream of text
into reasoning and answer.

Qwen3, SmolLM3 and the DeepSeek-R1 distills all write `<think>…</think>` before the answer (Qwen3
and SmolLM3 as added tokens, the R1 distills as added tokens their template opens in the prompt
itself, so the reply starts inside the block). Which pair a model uses is read from its
tokenizer and chat template, never guessed from its name.
"""

from __future__ import annotations

from dataclasses import dataclass

# (open, close) pairs the supported families use, most common first.
KNOWN_MARKERS = (("<think>", "</think>"), ("<thinking>", "</thinking>"))


@dataclass(frozen=True)
class ThinkMarkers:
    open: str
    close: str


@dataclass(frozen=True)
class Reasoning:
    """A request's reasoning settings.

    thinking: True/False turns thinking on/off where the template supports it (its
    `enable_thinking` variable, else a `/think` or `/no_think` switch in the system message);
    None leaves the template's default. budget: reasoning tokens after which the engine closes
    the block itself (feeds the close marker) so the model answers; None: no limit.
    """

    thinking: bool | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 0):
            raise ValueError(f"the reasoning budget must be a whole number of tokens >= 0, got {self.budget!r}")


def find_markers(template_source: str, token_to_id) -> ThinkMarkers | None:
    """The pair this model uses: one whose open marker is a token of its vocabulary or appears in
    its chat template; None for models that do not reason in a block."""
    for open_, close in KNOWN_MARKERS:
        if token_to_id(open_) is not None or open_ in template_source:
            return ThinkMarkers(open_, close)
    return None


def starts_inside(prompt: str, markers: ThinkMarkers | None) -> bool:
    """Whether the rendered prompt leaves the reply inside an open block (R1 distills end the
    prompt with `<think>\\n`; Qwen3 with thinking off ends it with an empty, closed block)."""
    if markers is None:
        return False
    tail = prompt.rstrip()
    return tail.endswith(markers.open)


def with_switch(messages: list[dict], thinking: bool) -> list[dict]:
    """Messages with a `/think` or `/no_think` switch at the end of the system message (one is
    added when there is none): the soft switch of templates without `enable_thinking`."""
    switch = "/think" if thinking else "/no_think"
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        content = out[0].get("content") or ""
        out[0]["content"] = f"{content}\n{switch}" if content else switch
    else:
        out.insert(0, {"role": "system", "content": switch})
    return out


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Splits streamed text into ("reasoning", text) and ("text", text) pieces.

    A block counts only at the start of the reply (leading whitespace aside), as the families
    write it; a marker split across tokens is held back until it completes or cannot. After the
    close marker the whitespace that separates it from the answer is dropped.
    """

    def __init__(self, markers: ThinkMarkers, *, inside: bool = False) -> None:
        self.markers = markers
        self.state = "reasoning" if inside else "start"  # start -> reasoning -> after -> text
        self._pending = ""
        self._opening = True  # newlines right after the open marker are layout, not reasoning

    @property
    def in_reasoning(self) -> bool:
        return self.state == "reasoning"

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._pending += text
        out: list[tuple[str, str]] = []
        while self._pending:
            if self.state == "start":
                body = self._pending.lstrip()
                if body.startswith(self.markers.open):
                    self._pending, self.state = body[len(self.markers.open):], "reasoning"
                elif self.markers.open.startswith(body):
                    break  # still could be the open marker (or only whitespace so far)
                else:
                    self.state = "text"
            elif self.state == "reasoning":
                if self._opening:
                    self._pending = self._pending.lstrip("\n")
                    if not self._pending:
                        break
                    self._opening = False
                at = self._pending.find(self.markers.close)
                if at >= 0:
                    if at:
                        out.append(("reasoning", self._pending[:at]))
                    self._pending, self.state = self._pending[at + len(self.markers.close):], "after"
                    continue
                keep = _partial_suffix(self._pending, self.markers.close)
                piece = self._pending[: len(self._pending) - keep]
                if piece:
                    out.append(("reasoning", piece))
                self._pending = self._pending[len(piece):]
                break
            elif self.state == "after":  # drop the blank lines between the block and the answer
                body = self._pending.lstrip()
                if not body:
                    self._pending = ""
                    break
                self._pending, self.state = body, "text"
            else:
                out.append(("text", self._pending))
                self._pending = ""
        return out

    def flush(self) -> list[tuple[str, str]]:
        """What is held back at the end: a partial marker is plain text of its part."""
        pending, self._pending = self._pending, ""
        if not pending:
            return []
        if self.state == "reasoning":
            return [("reasoning", pending)]
        if self.state == "after" and not pending.strip():
            return []
        return [("text", pending)]
