"""The chat screen's actions on whole conversations (settings, rename, delete, export, regenerate,
edit and resend, the sidebar), kept apart from sending and streaming in chatapp/screens/chat.py. A mixin of ChatScreen:
`self` is the screen."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from textual.widgets import Input

from .. import conversation as conv_ops
from ..conversation import model_label
from ..export import default_export_path, export_to_file
from ..inspection import reply_parts, tokens_from_meta
from ..messages import Notice
from ..pending import WRITE_ERRORS, describe
from ..widgets.inert import inert
from ..widgets.message import MessageView
from ..widgets.sidebar import Sidebar
from .dialogs import ConfirmScreen, TextPromptScreen
from .export import ExportScreen
from .inspector import InspectorScreen
from .settings import NOT_AVAILABLE, SettingsScreen

BUSY = "Wait for the reply to finish, or press Esc to stop it."


def history_write(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """For a screen method that writes the history on the UI thread: see `guarded`."""
    def wrap(method: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(method)
        def run(self, *args, **kwargs) -> None:
            self.guarded(what)(functools.partial(method, self))(*args, **kwargs)
        return run
    return wrap


class ConversationActions:
    def guarded(self, what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
        """Decorate a UI-thread write to the history: a failure (the file locked past this
        thread's short wait, the disk full) is said in the chat instead of raised into Textual,
        which would end the app. Each write is one transaction, so nothing changed, and the same
        key tries again."""
        def wrap(fn: Callable[..., None]) -> Callable[..., None]:
            def run(*args, **kwargs) -> None:
                try:
                    fn(*args, **kwargs)
                except WRITE_ERRORS as e:
                    self.on_notice(Notice(f"Could not {what}: the chat history cannot be written now "
                                          f"({describe(e)}). Nothing was changed; try again.", "warning"))
            return run
        return wrap

    def action_settings(self) -> None:
        system, sampling = conv_ops.conversation_settings(self.store, self.conversation_id)

        @self.guarded("save the settings")
        def saved(result) -> None:
            if result is None:
                return
            self.conversation_id = conv_ops.save_settings(self.store, self.conversation_id, result[0], result[1],
                                                          model=model_label(self.app.model_name), reasoning=result[2],
                                                          tool_choice=result[3])
            self.refresh_sidebar()
            self.notify("Settings saved for this conversation.")

        model_defaults = getattr(self.app.model, "sampling_defaults", None) or {}
        names = list(self.tool_runner.registry.tools())
        self.app.push_screen(SettingsScreen(system, sampling, model_defaults,
                                            reasoning=conv_ops.conversation_reasoning(self.store, self.conversation_id),
                                            support=conv_ops.thinking_support(self.app.model),
                                            tool_choice=conv_ops.conversation_tool_choice(self.store, self.conversation_id),
                                            tool_names=names, no_tools=conv_ops.tool_choice_support(self.app.model, names)),
                             saved)

    @history_write("set the tool choice")
    def action_set_tool_choice(self, choice: str) -> None:
        """The palette's tool choice entries (a named tool: ctrl+s)."""
        why = conv_ops.tool_choice_support(self.app.model, list(self.tool_runner.registry.tools()))
        if why is not None:
            self.notify(f"Tool choice {choice} not set: {why}.", severity="warning")
            return
        self.conversation_id = conv_ops.set_tool_choice(self.store, self.conversation_id, choice,
                                                        model=model_label(self.app.model_name))
        self.refresh_sidebar()
        self.notify(f"Tool choice {choice} for this conversation (from the next reply).")

    @history_write("turn thinking on or off")
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
                self.rename_to(title, conv.id)

        self.app.push_screen(TextPromptScreen("Rename conversation (empty: title from the first message)", conv.title), renamed)

    @history_write("rename the conversation")
    def rename_to(self, title: str, conversation_id: int | None = None) -> None:
        """Give the conversation (default: the open one) `title`; empty: derived again."""
        target = conversation_id if conversation_id is not None else self.conversation_id
        if target is not None:
            self.store.rename(target, title)
            self.refresh_sidebar()

    def action_delete_conversation(self) -> None:
        target = self.query_one(Sidebar).highlighted_id() if self.focused and self.query_one(Sidebar) in self.focused.ancestors else None
        target = target or self.conversation_id
        if target is None:
            return
        title = self.store.get_conversation(target).title

        @self.guarded("delete the conversation")
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

    def action_inspect(self) -> None:
        """The inspector for the focused assistant reply, else the last one."""
        if self.conversation_id is None:
            return
        stored = self.store.messages(self.conversation_id)
        focused = self.focused
        while focused is not None and not isinstance(focused, MessageView):
            focused = focused.parent
        wanted = focused.message.id if focused is not None and focused.message.role == "assistant" else None
        replies = [m for m in stored if m.role == "assistant" and (wanted is None or m.id == wanted)]
        if not replies:
            self.notify("There is no reply to inspect yet.", severity="warning")
            return
        reply = replies[-1]
        earlier = stored[: next(i for i, m in enumerate(stored) if m.id == reply.id)]
        last_user = next((m.content for m in reversed(earlier) if m.role == "user"), None)
        system = self.store.get_conversation(self.conversation_id).system_prompt
        prompt_ids = [int(i) for i in reply.meta.get("prompt_ids") or [] if isinstance(i, int)]
        model, why, attention = self.app.model, "", None
        if model is None or model.name != reply.meta.get("model"):
            why = f"needs the model that wrote this reply ({reply.meta.get('model', 'unknown')}) loaded here"
        elif model.is_remote:
            why = f"needs the native engine; {model.name} is served by {model.where}"
        elif model.backend != "native":
            why = f"needs the native engine; {model.name} runs on {model.where} (load it with the native backend)"
        elif not prompt_ids:
            why = "the prompt of this reply was not recorded"
        else:
            attention = model.attention
        texts = [] if model is None or model.is_remote or why.startswith("needs the model") else \
            [model.tokenizer.token_bytes(i).decode("utf-8", "replace") for i in prompt_ids]
        tokens = tokens_from_meta(reply.meta)
        parts = reply_parts([t.text for t in tokens], reasoning=reply.reasoning, content=reply.content,
                            has_calls=bool(reply.tool_calls))
        self.app.push_screen(InspectorScreen(
            tokens, parts=parts, prompt_ids=prompt_ids if attention else [], prompt_texts=texts,
            system=system, last_user=last_user, attention=attention, why_no_attention=why,
            n_kv_heads=getattr(getattr(model, "args", None), "n_kv_heads", None)))

    @history_write("regenerate the reply")
    def action_regenerate(self) -> None:
        if self.job is not None or self.conversation_id is None or not self._writable():
            return
        if conv_ops.regenerate(self.store, self.conversation_id):
            self.open_conversation(self.conversation_id)
            self.start_generation()

    @history_write("show another reply")
    def action_browse_reply(self, step: int) -> None:
        """Show another alternative of the last reply; the shown one is what the model sees next."""
        if self.conversation_id is None:
            return
        if self.job is not None:
            self.notify(BUSY, severity="warning")
            return
        moved = conv_ops.browse_reply(self.store, self.conversation_id, step)
        if moved == "no alternatives":
            self.notify("The last reply has no alternatives yet: ctrl+r generates one.", markup=False)
        elif moved == "moved":
            self.open_conversation(self.conversation_id)

    def action_edit_message(self) -> None:
        """Edit the focused user message (else the last one) and resend from there."""
        if self.job is not None or self.conversation_id is None or not self._writable():
            return
        focused = self.focused
        while focused is not None and not isinstance(focused, MessageView):
            focused = focused.parent
        target = conv_ops.edit_target(self.store, self.conversation_id, focused.message if focused is not None else None)
        if target is None:
            return

        def resend(text: str | None) -> None:
            try:
                if text is None or not conv_ops.edit_and_resend(self.store, self.conversation_id, target, text):
                    return
            except WRITE_ERRORS as e:  # the edit is not lost: it comes back in the editor
                self.on_notice(Notice(f"Could not resend the edited message: the chat history cannot be written "
                                      f"now ({describe(e)}). Nothing was changed; your edit is kept.", "warning"))
                edit(text)
                return
            self.open_conversation(self.conversation_id)
            self.start_generation()

        def edit(text: str) -> None:
            self.app.push_screen(TextPromptScreen("Edit the message and resend from there", text, multiline=True), resend)

        edit(target.content)
