"""Pick a model from models.toml; entries not on this machine are marked."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from engine.registry import Registry, find_local


def availability(registry: Registry) -> dict[str, bool]:
    """Which entries are on this machine: no network, no hashing (the picker opens instantly)."""
    return {name: find_local(spec) is not None for name, spec in registry.models.items()}


class ModelPickerScreen(ModalScreen[str | None]):
    BINDINGS = [("escape", "dismiss(None)", "Cancel")]

    def __init__(self, registry: Registry, current: str | None) -> None:
        super().__init__(classes="dialog-screen")
        self.registry, self.current = registry, current

    def compose(self) -> ComposeResult:
        local = availability(self.registry)
        with Vertical(classes="dialog wide", id="models"):
            yield Label("Choose a model (● on this machine, ○ downloads on first use)", classes="dialog-title")
            options = []
            for name, spec in self.registry.models.items():
                mark = "●" if local[name] else "○"
                current = "  (current)" if name == self.current else ""
                size = f"  [{spec.size}]" if spec.size else ""
                options.append(Option(Content(f"{mark} {name}{current}  {spec.description}{size}"), id=name))
            yield OptionList(*options)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
