"""Ask the user before a tool runs, showing the tool and its exact arguments."""

from __future__ import annotations

import json

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from ..widgets.inert import inert

# What the screen answers with: the ApprovalPolicy's choices.
CHOICES = ("allow", "allow_session", "allow_always", "deny")


class ApprovalScreen(ModalScreen[str]):
    BINDINGS = [
        ("escape", "dismiss('deny')", "Deny"),
        ("a", "dismiss('allow')", "Allow once"),
        ("s", "dismiss('allow_session')", "Allow for session"),
        ("d", "dismiss('deny')", "Deny"),
    ]

    def __init__(self, tool_name: str, arguments: dict, description: str = "", source: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.tool_name, self.arguments, self.description = tool_name, arguments, description
        self.source = source  # e.g. "MCP server 'files'": a tool from outside this app says where

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="approval"):
            yield Label(inert(f"The model wants to run the tool “{self.tool_name}”"), classes="dialog-title", markup=False)
            if self.source:
                yield Label(inert(f"from the {self.source}"), id="tool-source", markup=False)
            if self.description:
                yield Label(inert(self.description), classes="muted", markup=False)
            yield Label("with exactly these arguments:", markup=False)
            yield Static(inert(json.dumps(self.arguments, indent=2, ensure_ascii=False)), id="arguments", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Allow once (a)", variant="primary", id="allow")
                yield Button("Allow this session (s)", id="allow_session")
                yield Button("Always allow", id="allow_always")
                yield Button("Deny (d)", variant="error", id="deny")

    def on_mount(self) -> None:
        self.query_one("#deny", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
