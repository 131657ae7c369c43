"""The inspector's row of reply tokens, each coloured by the probability the model gave it; one is
selected (reverse video, so it reads without colour). Thinking tokens are italic and tool-call
tokens underlined. Clicking a token selects it."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.events import Click
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from ..inspection import Token, band, visible


class TokenStrip(Widget):
    selected: reactive[int] = reactive(0)

    class Selected(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, tokens: list[Token], parts: list[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tokens = tokens
        self.parts = parts if parts is not None and len(parts) == len(tokens) else ["answer"] * len(tokens)
        self._cells: list[tuple[int, int, int, int]] = []  # (line, x0, x1, token index) of the last layout

    def _layout(self, width: int) -> list[list[tuple[int, str]]]:
        lines: list[list[tuple[int, str]]] = [[]]
        x = 0
        self._cells = []
        for i, token in enumerate(self.tokens):
            cell = visible(token.text)
            if x and x + len(cell) > width:
                lines.append([])
                x = 0
            self._cells.append((len(lines) - 1, x, x + len(cell), i))
            lines[-1].append((i, cell))
            x += len(cell) + 1
        return lines

    def render(self) -> Text:
        out = Text()
        for n, line in enumerate(self._layout(max(self.size.width, 10))):
            if n:
                out.append("\n")
            for i, cell in line:
                _, colour = band(self.tokens[i].prob)
                out.append(cell, Style(color=colour, reverse=i == self.selected, bold=i == self.selected,
                                       italic=self.parts[i] == "thinking", underline=self.parts[i] == "tool call"))
                out.append(" ")
        return out

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self._layout(max(width, 10)))

    def watch_selected(self) -> None:
        self.refresh()

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        for line, x0, x1, i in self._cells:
            if line == offset.y and x0 <= offset.x < x1:
                self.selected = i
                self.post_message(self.Selected(i))
                return
