"""The chat screen's actions on whole conversations (settings, rename, delete, export, the
sidebar), kept apart from sending and streaming in chatapp/screens/chat.py. A mixin of ChatScreen:
`self` is the screen."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from .. import conversation as conv_ops
from ..conversation import model_label
from ..export import default_export_path, export_to_file
from ..widgets.inert import inert
from ..widgets.sidebar import Sidebar
from .dialogs import ConfirmScreen, TextPromptScreen
from .export import ExportScreen
from .settings import NOT_AVAILABLE, SettingsScreen


class ConversationActions:
    def action_settings(self) -> None:
        system, sampling = conv_ops.conversation_settings(self.store, self.conversation_id)

        def saved(result) -> None:
            if result is None:
                return
            self.conversation_id = conv_ops.save_settings(self.store, self.conversation_id, result[0], result[1],
                                                          model=model_label(self.app.model_name), reasoning=result[2])
            self.refresh_sidebar()
            self.notify("Settings saved for this conversation.")

        model_defaults = getattr(self.app.model, "sampling_defaults", None) or {}
        self.app.push_screen(SettingsScreen(system, sampling, model_defaults,
                                            reasoning=conv_ops.conversation_reasoning(self.store, self.conversation_id),
                                            support=conv_ops.thinking_support(self.app.model)), saved)

    def action_toggle_thinking(self) -> None:
        if not conv_ops.thinking_support(self.app.model)[0]:
            self.notify(f"Thinking cannot be turned on or off: {NOT_AVAILABLE}.", severity="warning")
            return
        self.conversation_id, thinking = conv_ops.toggle_thinking(self.store, self.conversation_id,
                                                                  model=model_label(self.app.model_name))
        self.refresh_sidebar()
        self.notify(f"Thinking {'on' if thinking else 'off'} for this conversation (from the next reply).")

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = not sidebar.display

    def action_search(self) -> None:
        self.query_one(Sidebar).display = True
        self.query_one("#search", Input).focus()

    def action_rename(self) -> None:
        if self.conversation_id is None:
            return
        conv = self.store.get_conversation(self.conversation_id)

        def renamed(title: str | None) -> None:
            if title is not None:
                self.store.rename(conv.id, title)
                self.refresh_sidebar()

        self.app.push_screen(TextPromptScreen("Rename conversation (empty: title from the first message)", conv.title), renamed)

    def action_delete_conversation(self) -> None:
        target = self.query_one(Sidebar).highlighted_id() if self.focused and self.query_one(Sidebar) in self.focused.ancestors else None
        target = target or self.conversation_id
        if target is None:
            return
        title = self.store.get_conversation(target).title

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            if self.job is not None and target == self.conversation_id:
                self.action_stop()
            deleted = conv_ops.delete_conversation(self.store, target, self.conversation_id)
            if deleted.was_open:
                self.open_conversation(deleted.open_next)
            else:
                self.refresh_sidebar()

        self.app.push_screen(ConfirmScreen(f"Delete “{inert(title)}” and all its messages?", yes="Delete"), confirmed)

    def action_export(self, fmt: str) -> None:
        if self.conversation_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        conv = self.store.get_conversation(self.conversation_id)

        def exported(path: Path | None) -> None:
            if path is not None:
                self.notify(f"Exported to {path}", title="Exported", markup=False)

        label = "Markdown" if fmt == "markdown" else "JSON"
        self.app.push_screen(
            ExportScreen(f"Export “{inert(conv.title)}” as {label}", default_export_path(conv.title, fmt),
                         lambda path: export_to_file(self.store, conv.id, fmt, path)),
            exported,
        )
