"""Per-conversation settings: system prompt and sampling."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from engine.sampling import SamplingParams

FIELDS = (("temperature", float), ("top_p", float), ("max_tokens", int))


class SettingsScreen(ModalScreen[tuple[str | None, dict] | None]):
    """Answers (system_prompt or None, sampling dict), or None when cancelled."""

    BINDINGS = [("escape", "dismiss(None)", "Cancel"), ("ctrl+s", "save", "Save")]

    def __init__(self, system_prompt: str | None, sampling: dict) -> None:
        super().__init__(classes="dialog-screen")
        self.system_prompt, self.sampling = system_prompt, sampling

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="settings"):
            yield Label("System prompt (empty: the model's default)")
            yield TextArea(self.system_prompt or "", id="system")
            for name, _kind in FIELDS:
                with Horizontal(classes="field"):
                    yield Label(name.replace("_", " "), classes="field-label")
                    yield Input(str(self.sampling[name]), id=name)
            yield Label("", id="error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def action_save(self) -> None:
        try:
            values = {name: kind(self.query_one(f"#{name}", Input).value) for name, kind in FIELDS}
            SamplingParams(**{**self.sampling, **values})  # validates the whole set
        except (TypeError, ValueError) as e:
            self.query_one("#error", Label).update(f"Not saved: {e}")
            return
        system = self.query_one("#system", TextArea).text.strip() or None
        self.dismiss((system, {**self.sampling, **values}))

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)
