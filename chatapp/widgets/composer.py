"""The message box: multi-line, Enter sends, shift+enter or ctrl+j starts a new line."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

_APP_KEYS_WIN = frozenset({"select_word", "select_line", "select_all"})
PLACEHOLDER = "Message (Enter sends, ctrl+j adds a line, F1 help)"


class Composer(TextArea):
    """A TextArea that sends on Enter; it grows with its text up to `max-height` (app.tcss), then scrolls.

    Pasted text keeps every line (a one-line Input keeps only the first). Many terminals send
    shift+enter as a plain Enter, so ctrl+j (a line feed in every terminal) also inserts a newline.
    """

    BINDINGS = [
        Binding("shift+enter,ctrl+j", "newline", "New line", show=False, tooltip="Insert a new line in the message"),
    ]

    class Submitted(Message):
        """Enter was pressed: the app sends `text` (and clears the composer if it could)."""

        def __init__(self, composer: Composer, text: str) -> None:
            super().__init__()
            self.composer, self.text = composer, text

        @property
        def control(self) -> Composer:
            return self.composer

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                         placeholder=PLACEHOLDER, highlight_cursor_line=False)

    async def _on_key(self, event: events.Key) -> None:
        # TextArea inserts "\n" for Enter; here Enter sends instead. The newline keys arrive as
        # bindings, which run after this handler only when it leaves the event alone.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        await super()._on_key(event)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # TextArea binds F5/F6/F7 to select word/line/all; in the composer those keys are the
        # app's regenerate, search and settings, as they were with the one-line Input.
        if action in _APP_KEYS_WIN:
            return False
        return super().check_action(action, parameters)

    def action_newline(self) -> None:
        self.insert("\n")
