"""Ask the user before a tool runs, showing the tool and its exact arguments.

A tool with side effects can be approved once or for these exact arguments (for the session);
only a tool without side effects can be approved as a whole, for the session or always.
"""

from __future__ import annotations

import json

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from ..widgets.inert import inert

# What the screen answers with: the ApprovalPolicy's choices.
CHOICES = ("allow", "allow_arguments", "allow_session", "allow_always", "deny")
UNTRUSTED_WARNING = "These arguments were written after the model read tool output: check them."


class ApprovalScreen(ModalScreen[str]):
    BINDINGS = [
        ("escape", "dismiss('deny')", "Deny"),
        ("a", "dismiss('allow')", "Allow once"),
        ("e", "dismiss('allow_arguments')", "Allow these arguments for the session"),
        ("s", "allow_session", "Allow for the session"),
        ("d", "dismiss('deny')", "Deny"),
    ]

    def __init__(self, tool_name: str, arguments: dict, description: str = "", source: str = "", *,
                 side_effects: bool = True, after_tool_output: bool = False) -> None:
        super().__init__(classes="dialog-screen")
        self.tool_name, self.arguments, self.description = tool_name, arguments, description
        self.source = source  # e.g. "MCP server 'files'": a tool from outside this app says where
        self.side_effects, self.after_tool_output = side_effects, after_tool_output

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="approval"):
            yield Label(inert(f"The model wants to run the tool “{self.tool_name}”"), classes="dialog-title", markup=False)
            if self.source:
                yield Label(inert(f"from the {self.source}"), id="tool-source", markup=False)
            if self.description:
                yield Label(inert(self.description), classes="muted", markup=False)
            if self.after_tool_output:
                yield Label(UNTRUSTED_WARNING, id="untrusted", classes="warning", markup=False)
            yield Label("with exactly these arguments:", markup=False)
            yield Static(inert(json.dumps(self.arguments, indent=2, ensure_ascii=False)), id="arguments", markup=False)
            if self.side_effects:
                yield Label("This tool can change things: approval covers these arguments only, never the "
                            "tool as a whole.", id="side-effects", classes="muted", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Allow once (a)", variant="primary", id="allow")
                yield Button("Allow these arguments for this session (e)", id="allow_arguments")
                yield Button("Deny (d)", variant="error", id="deny")
            if not self.side_effects:
                with Horizontal(classes="buttons"):
                    yield Button("Allow this tool for this session (s)", id="allow_session")
                    yield Button("Always allow this tool", id="allow_always")

    def on_mount(self) -> None:
        self.query_one("#deny", Button).focus()

    def action_allow_session(self) -> None:
        # For a tool with side effects the widest session approval is these arguments.
        self.dismiss("allow_arguments" if self.side_effects else "allow_session")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
