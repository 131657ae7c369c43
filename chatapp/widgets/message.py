"""One message in the chat: user text, a streamed Markdown reply, a tool call or a tool result."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Collapsible, Label, Markdown, Static

from ..store import Message as StoredMessage
from .inert import inert

STATUS_LABELS = {"stopped": "⏹ stopped", "error": "⚠ error", "streaming": "…"}
# The only links a reply may open, and only once the user has seen the real target and agreed:
# a reply's link text can say anything, and file:, javascript: or a custom scheme must not open.
OPENABLE_SCHEMES = frozenset({"http", "https", "mailto"})


class MessageView(Vertical, can_focus=True):
    """A stored message. Assistant text renders as Markdown and can grow by `append`."""

    def __init__(self, message: StoredMessage) -> None:
        super().__init__(classes=f"message {message.role}")
        self.message = message
        self._stream = None
        self._alternatives = ""  # "reply 2/3": which alternative of the last reply is shown
        self._thought = message.reasoning  # the reply's thinking, as streamed so far

    def compose(self) -> ComposeResult:
        m = self.message
        yield Label(self._title(), classes="message-title", markup=False)
        if m.role == "assistant":
            if m.reasoning:  # a stored reply: its thinking folded above the answer
                yield self._thinking_block(collapsed=True)
            yield Markdown(inert(m.content), open_links=False)
            for call in m.tool_calls or ():
                fn = call.get("function", {})
                yield Static(inert(f"→ {fn.get('name')}({fn.get('arguments')})"), classes="tool-call", markup=False)
        elif m.role == "tool":
            yield Static(inert(_shorten(m.content)), classes="tool-result", markup=False)
        else:
            yield Static(inert(m.content), classes="text", markup=False)
        yield Label(self._footer(), classes="message-footer", markup=False)

    @on(Markdown.LinkClicked)
    def _link_clicked(self, event: Markdown.LinkClicked) -> None:
        event.stop()
        href = event.href.strip()
        if urlsplit(href).scheme.lower() not in OPENABLE_SCHEMES:
            self.app.notify(inert(f"Not opened: {href}\nOnly http(s) and mailto links open from a reply."),
                            title="Link refused", severity="warning", markup=False)
            return
        from ..screens.dialogs import ConfirmScreen  # screens import widgets, not the other way round at load

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.open_url(href)

        self.app.push_screen(ConfirmScreen(inert(f"Open this link?\n\n{href}"), yes="Open"), answered)

    def _title(self) -> str:
        m = self.message
        if m.role == "tool":
            return f"tool result · {m.name}" + (" (error)" if m.meta.get("is_error") else "")
        return {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)

    def _footer(self) -> str:
        m = self.message
        parts = [STATUS_LABELS[m.status]] if m.status in STATUS_LABELS else []
        if m.meta.get("tokens_per_second"):
            parts.append(f"{m.meta.get('completion_tokens', 0)} tokens · {m.meta['tokens_per_second']:.1f} tok/s")
        if m.meta.get("error"):
            parts.append(str(m.meta["error"]))
        if self._alternatives:
            parts.append(self._alternatives)
        return inert(" · ".join(parts))

    def set_alternatives(self, shown: int, count: int) -> None:
        """Show "reply 2/3" (1-based) in the footer; nothing when there is only one reply."""
        self._alternatives = f"reply {shown}/{count} (alt+←/→)" if count > 1 else ""
        for footer in self.query(".message-footer").results(Label):  # none yet while composing
            footer.update(self._footer())

    def _thinking_block(self, *, collapsed: bool) -> Collapsible:
        body = Static(inert(self._thought), classes="thinking-text", markup=False)
        return Collapsible(body, title=self._thinking_title(), collapsed=collapsed, classes="thinking")

    def _thinking_title(self) -> str:
        """"Thinking…" while it streams; then its length in tokens and the time it took."""
        meta = self.message.meta
        if self.message.status == "streaming":
            return "Thinking…"
        parts = ["Thinking"]
        if meta.get("reasoning_tokens"):
            parts.append(f"{meta['reasoning_tokens']} tokens")
        if meta.get("reasoning_seconds") is not None and meta.get("reasoning_tokens"):
            parts.append(f"{meta['reasoning_seconds']:.1f} s")
        return " · ".join(parts)

    async def append(self, text: str, *, reasoning: str = "") -> None:
        """Add streamed text and thinking: the thinking shows, open, while it streams, and folds
        when the answer starts. Textual's Markdown stream re-renders only the answer's last block."""
        if reasoning:
            self._thought += reasoning
            blocks = self.query(Collapsible)
            if blocks:
                blocks.first().query_one(".thinking-text", Static).update(inert(self._thought))
            else:
                await self.mount(self._thinking_block(collapsed=False), before=self.query_one(Markdown))
        if text:
            for block in self.query(Collapsible):
                block.collapsed = True
            if self._stream is None:
                self._stream = Markdown.get_stream(self.query_one(Markdown))
            await self._stream.write(inert(text))

    async def finish(self, message: StoredMessage) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.message = message
        self.query_one(".message-footer", Label).update(self._footer())
        for block in self.query(Collapsible):
            block.title = self._thinking_title()


def _shorten(text: str, limit: int = 2000) -> str:
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, TypeError):
        pass
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"
