"""Every key binding, in one place, and the tool plugins loaded at start-up (what, from where,
and what they added): code from outside chatapp never runs unseen."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, TabbedContent, TabPane

from ..tools.registry import NO_PLUGINS_ENV, PluginInfo
from ..widgets.inert import inert

PLUGINS_OFF = f"Plugins and tools.py are off (--no-plugins or {NO_PLUGINS_ENV}=1): only the built-in tools are loaded."
PLUGINS_ON = "Loaded at start-up. To start without installed plugins and tools.py: chatapp --no-plugins, or {env}=1."


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        ("escape", "dismiss", "Close"),
        ("f1", "dismiss", "Close"),
        ("q", "dismiss", "Close"),
        ("k", "show_tab('keys')", "Keys"),
        ("p", "show_tab('plugins')", "Plugins"),
    ]

    def __init__(self, bindings: list[tuple[str, str]], *, plugins: Sequence[PluginInfo] = (),
                 plugins_enabled: bool = True, plugin_errors: Sequence[str] = ()) -> None:
        super().__init__(classes="dialog-screen")
        self.rows = bindings
        self.plugins, self.plugins_enabled, self.plugin_errors = list(plugins), plugins_enabled, list(plugin_errors)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="help"):
            with TabbedContent(id="help-tabs"):
                with TabPane("Keys (k)", id="keys"):
                    table = DataTable(show_cursor=False, zebra_stripes=True, id="keys-table")
                    table.add_columns("key", "action")
                    for key, description in self.rows:
                        table.add_row(key, description)
                    yield table
                    yield Label("Every action is also in the command palette (ctrl+p).", classes="muted")
                with TabPane(f"Plugins: {len(self.plugins)} (p)", id="plugins"):
                    note = PLUGINS_ON.format(env=NO_PLUGINS_ENV) if self.plugins_enabled else PLUGINS_OFF
                    yield Label(note, id="plugins-note", classes="muted", markup=False)
                    table = DataTable(show_cursor=False, zebra_stripes=True, id="plugins-table")
                    table.add_columns("plugin", "from", "tools", "hooks")
                    for plugin in self.plugins:
                        # Names, paths and tool names come from third-party code: plain Text, so
                        # that a "[" is no markup and an escape sequence is no escape.
                        table.add_row(*(Text(inert(cell)) for cell in (plugin.name, plugin.origin, ", ".join(plugin.tools) or "-",
                                                                  ", ".join(plugin.hooks) or "-")))
                    yield table
                    for error in self.plugin_errors:
                        yield Label(inert(f"Not loaded: {error}"), classes="error", markup=False)
            yield Button("Close", id="close")

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_button_pressed(self) -> None:
        self.dismiss()
