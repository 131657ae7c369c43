"""Ask where to export a conversation, confirm before replacing a file, and write it there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from ..export import ExportError
from .dialogs import ConfirmScreen


class ExportScreen(ModalScreen[Path | None]):
    """Answers the path written, or None when cancelled.

    `write(path)` does the export; its ExportError is shown here and the dialog stays open with
    the path as typed, so a bad folder costs one correction, not a retyped path.
    """

    BINDINGS = [("escape", "dismiss(None)", "Cancel"), ("ctrl+s", "save", "Export")]

    def __init__(self, title: str, default: Path, write: Callable[[Path], Path]) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text, self.default, self.write = title, default, write

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="export"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield Label("Save to (a folder keeps the suggested file name):", classes="muted")
            yield Input(str(self.default), id="path")
            yield Label("", id="error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Export", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    def action_save(self) -> None:
        typed = self.query_one("#path", Input).value.strip()
        if not typed:
            self._error("Enter a file path to export to.")
            return
        path = Path(typed).expanduser().absolute()  # the notification then says exactly where
        if path.is_dir():
            path = path / self.default.name
        if path.exists():
            def replace(yes: bool | None) -> None:
                if yes:
                    self._write(path)

            self.app.push_screen(ConfirmScreen(f"{path} already exists. Replace it?", yes="Replace"), replace)
            return
        self._write(path)

    def _write(self, path: Path) -> None:
        try:
            written = self.write(path)
        except ExportError as e:
            self._error(str(e))
            return
        self.dismiss(written)

    def _error(self, text: str) -> None:
        self.query_one("#error", Label).update(text)

    @on(Input.Submitted, "#path")
    def _submitted(self) -> None:
        self.action_save()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)
