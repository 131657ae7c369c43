"""Every key binding, in one place."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "Close"), ("f1", "dismiss", "Close"), ("q", "dismiss", "Close")]

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__(classes="dialog-screen")
        self.rows = bindings

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="help"):
            yield Label("Keys", classes="dialog-title")
            table = DataTable(show_cursor=False, zebra_stripes=True)
            table.add_columns("key", "action")
            for key, description in self.rows:
                table.add_row(key, description)
            yield table
            yield Label("Every action is also in the command palette (ctrl+p).", classes="muted")
            yield Button("Close", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss()
