"""The status line: model, state, speed of the last reply, context used / context size."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static


class StatusBar(Static):
    model_name: reactive[str] = reactive("")
    state: reactive[str] = reactive("")
    tokens_per_second: reactive[float | None] = reactive(None)
    context_used: reactive[int | None] = reactive(None)
    context_size: reactive[int | None] = reactive(None)

    def render(self) -> Content:
        speed = f"{self.tokens_per_second:.1f} tok/s" if self.tokens_per_second else "– tok/s"
        if self.context_size:
            used = self.context_used if self.context_used is not None else "?"  # not counted yet
            ctx = f"ctx {used}/{self.context_size}"
        else:
            ctx = "ctx –"
        parts = [self.model_name or "no model", self.state, speed, ctx]
        return Content("  │  ".join(p for p in parts if p))  # plain text: a model path may contain [brackets]
