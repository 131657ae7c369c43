"""The chat app: sidebar of conversations, streamed Markdown replies, tools behind approval."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from engine import EngineError

from .commands import HELP_ROWS, PALETTE
from .export import default_export_path, export_to_file
from .model_loading import ModelLoading, model_label
from .screens.approval import ApprovalScreen
from .screens.dialogs import ConfirmScreen, TextPromptScreen
from .screens.export import ExportScreen
from .screens.help import HelpScreen
from .screens.models import ModelPickerScreen
from .screens.settings import SettingsScreen
from .store import Store
from .tools.approval import ApprovalPolicy
from .tools.builtin import FileAccess
from .tools.registry import ToolRegistry
from .tools.runner import ToolRunner
from .widgets.composer import Composer
from .widgets.inert import inert
from .widgets.message import MessageView
from .widgets.sidebar import Sidebar
from .widgets.status import StatusBar
from .worker import (
    ContextFitted,
    HistoryChanged,
    Job,
    JobDone,
    Notice,
    ReplyDelta,
    ReplyFinished,
    ReplyStarted,
    run_job,
)

# Conversations used to store this copy of the defaults; it means "nothing chosen", so that the
# model's recommended sampling applies to them too.
_LEGACY_DEFAULT_COPY = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512}


class ChatApp(ModelLoading, App):
    CSS_PATH = "app.tcss"
    TITLE = "chatapp"
    BINDINGS = [
        Binding("ctrl+n", "new_conversation", "New", tooltip="Start a new conversation"),
        Binding("escape", "stop", "Stop", tooltip="Stop the reply being generated (the partial reply is kept)"),
        Binding("ctrl+r,f5", "regenerate", "Regenerate", tooltip="Generate the last reply again"),
        Binding("alt+left", "browse_reply(-1)", "Previous reply", show=False, tooltip="Show the previous alternative of the last reply"),
        Binding("alt+right", "browse_reply(1)", "Next reply", show=False, tooltip="Show the next alternative of the last reply"),
        Binding("f3", "edit_message", "Edit", tooltip="Edit the focused user message (Tab to focus one; default: the last) and resend from there"),
        Binding("ctrl+o", "pick_model", "Model", tooltip="Choose a model from models.toml"),
        Binding("ctrl+s,f7", "settings", "Settings", tooltip="System prompt and sampling for this conversation"),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", show=False, tooltip="Show or hide the conversation list"),
        Binding("f2", "rename", "Rename", show=False, tooltip="Rename this conversation"),
        Binding("f6", "search", "Search", show=False, tooltip="Search conversation titles and messages"),
        Binding("f8", "delete_conversation", "Delete", show=False, tooltip="Delete the conversation (asks first)"),
        Binding("f1", "help", "Help", tooltip="Show this list of keys"),
        Binding("ctrl+q", "quit", "Quit", tooltip="Quit (history is already saved)"),
    ]

    def __init__(
        self,
        *,
        store: Store,
        model: str | None = None,
        load_model: Callable[[str | None], object] | None = None,
        allowed_dirs: Iterable[Path] = (),
        tool_registry: ToolRegistry | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.model_name = model
        self._load_model = load_model or _load_with_engine
        self.model = None
        self.model_ready = threading.Event()
        self.model_error: str | None = None
        self.conversation_id: int | None = None
        self.job: Job | None = None
        self.session = None  # engine.runtime.session.ChatSession of the open conversation
        self.session_conversation: int | None = None
        self.views: dict[int, MessageView] = {}
        self.tool_registry = tool_registry or ToolRegistry(FileAccess([Path(d) for d in allowed_dirs]))
        self.tool_runner = ToolRunner(self.tool_registry)
        self.tool_registry.register_plugin(ApprovalPolicy(self._ask_approval))

    # ---- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                yield VerticalScroll(id="chat")
                with Horizontal(id="composer"):
                    yield Composer(id="prompt")
                    yield Button("Send", variant="primary", id="send")
                    yield Button("Stop", variant="error", id="stop", disabled=True)
                yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        interrupted = self.store.recover_interrupted()
        if interrupted:
            self.notify(f"{interrupted} reply(s) cut off last time are kept, marked as stopped.")
        recent = self.store.most_recent()
        if recent is not None:  # answered by the model asked for on the command line (or the default)
            self.open_conversation(recent.id)
        else:
            self.refresh_sidebar()
        self.query_one("#prompt", Composer).focus()
        # Load after the first paint: torch is imported in the worker, never before the UI shows.
        self.call_after_refresh(self.start_loading, self.model_name)

    class ApprovalRequested(Message):
        """From the generation worker: ask the user about a tool call, answer through `answer`."""

        def __init__(self, call, tool, answer: concurrent.futures.Future) -> None:
            super().__init__()
            self.call, self.tool, self.answer = call, tool, answer

    # ---- conversations ------------------------------------------------------------------

    def refresh_sidebar(self, search: str | None = None) -> None:
        self.query_one(Sidebar).show(self.store.list_conversations(search or None), self.conversation_id)

    def open_conversation(self, conversation_id: int | None) -> None:
        switched = conversation_id != self.conversation_id  # not a reload of the one shown
        self.conversation_id = conversation_id
        chat = self.query_one("#chat", VerticalScroll)
        chat.remove_children()
        self.views = {}
        if conversation_id is not None:
            chat.mount_all([self._view(m) for m in self.store.messages(conversation_id)])
            chat.scroll_end(animate=False)
            self._label_alternatives()
            if switched:
                self._announce_conversation_model(conversation_id)
        self.refresh_sidebar()
        self.count_context()

    def _announce_conversation_model(self, conversation_id: int) -> None:
        """A conversation last answered by another model says so, with the key to go back to it."""
        used, using = self.store.get_conversation(conversation_id).model, model_label(self.model_name)
        if used and used != using:
            self.on_notice(Notice(f"This conversation used {used}; replies now come from {using} "
                                  "(ctrl+o changes the model).", "information"))

    def _label_alternatives(self) -> None:
        """Mark the last reply with which of its alternatives is shown ("2/3")."""
        alternatives = self.store.reply_alternatives(self.conversation_id)
        messages = self.store.messages(self.conversation_id)
        last_user = max((m.seq for m in messages if m.role == "user"), default=None)
        reply = next((m for m in messages if last_user is not None and m.seq == last_user + 1), None)
        view = self.views.get(reply.id) if reply is not None else None
        if view is not None:
            view.set_alternatives(alternatives.shown + 1, alternatives.count)

    def _view(self, message) -> MessageView:
        view = MessageView(message)
        self.views[message.id] = view
        return view

    def _conversation_settings(self) -> tuple[str | None, dict]:
        """The system prompt and the sampling values the user chose for this conversation; the
        model's defaults (and SamplingParams') fill in the rest when it generates."""
        if self.conversation_id is None:
            return None, {}
        conv = self.store.get_conversation(self.conversation_id)
        chosen = dict(conv.settings or {})
        return conv.system_prompt, {} if chosen == _LEGACY_DEFAULT_COPY else chosen

    # ---- sending and generation ---------------------------------------------------------

    @on(Composer.Submitted, "#prompt")
    @on(Button.Pressed, "#send")
    def action_send(self) -> None:
        prompt = self.query_one("#prompt", Composer)
        text = prompt.text.strip()
        if not text:
            return
        if self.job is not None:
            self.notify("Wait for the reply to finish, or press Esc to stop it.", severity="warning")
            return
        if self.conversation_id is None:
            conv = self.store.create_conversation(model=model_label(self.model_name))
            self.conversation_id = conv.id
        # Stored before generation starts: a crash from here on never loses the message.
        message = self.store.add_message(self.conversation_id, "user", text)
        prompt.clear()
        chat = self.query_one("#chat", VerticalScroll)
        chat.mount(self._view(message))
        chat.scroll_end(animate=False)
        self.refresh_sidebar()
        self.start_generation()

    def start_generation(self) -> None:
        _, sampling = self._conversation_settings()
        self.job = Job(conversation_id=self.conversation_id, session=None, sampling=sampling, tools=self.tool_runner)
        self.query_one("#stop", Button).disabled = False
        self.query_one("#send", Button).disabled = True
        self.query_one(StatusBar).state = "thinking…" if self.model_ready.is_set() else "waiting for the model…"
        self._generate(self.job)

    @work(thread=True, group="generate")
    def _generate(self, job: Job) -> None:
        self.model_ready.wait()
        if self.model is None:
            self.post_message(Notice(f"No model to answer with: {self.model_error}", "error"))
            self.post_message(JobDone())
            return
        # One session (and KV cache) for the open conversation: the next turn prefills only
        # what is new. Switching conversation or model starts a fresh one.
        from engine import ChatSession

        if self.session is None or self.session.model is not self.model or self.session_conversation != job.conversation_id:
            self.session, self.session_conversation = ChatSession(self.model), job.conversation_id
        job.session = self.session
        run_job(job, self.store, self.post_message)

    def action_stop(self) -> None:
        if self.job is not None:
            self.job.cancel.set()
            self.query_one(StatusBar).state = "stopping…"

    async def on_reply_started(self, event: ReplyStarted) -> None:
        chat = self.query_one("#chat", VerticalScroll)
        await chat.mount(self._view(event.message))  # mounted before the first delta is handled
        chat.scroll_end(animate=False)
        self.query_one(StatusBar).state = "generating…"

    async def on_reply_delta(self, event: ReplyDelta) -> None:
        view = self.views.get(event.message_id)
        if view is None:
            return
        chat = self.query_one("#chat", VerticalScroll)
        follow = chat.scroll_offset.y >= chat.max_scroll_y - 2
        await view.append(event.text)
        if follow:
            chat.scroll_end(animate=False)

    async def on_reply_finished(self, event: ReplyFinished) -> None:
        view = self.views.get(event.message_id)
        stored = next((m for m in self.store.messages(self.conversation_id) if m.id == event.message_id), None)
        if view is not None and stored is not None:
            await view.finish(stored)
        status = self.query_one(StatusBar)
        if event.result is not None:
            status.context_used = event.result.prompt_tokens + event.result.completion_tokens
            if event.result.tokens_per_second:
                status.tokens_per_second = event.result.tokens_per_second

    def on_context_fitted(self, event: ContextFitted) -> None:
        status = self.query_one(StatusBar)
        status.context_used, status.context_size = event.prompt_tokens, event.context_length

    def on_history_changed(self, _event: HistoryChanged) -> None:
        self.open_conversation(self.conversation_id)

    def on_notice(self, event: Notice) -> None:
        # In the chat only, where it stays beside the replies it is about; a toast would repeat it.
        chat = self.query_one("#chat", VerticalScroll)
        chat.mount(Static(inert(event.text), classes=f"notice {event.severity}", markup=False))
        chat.scroll_end(animate=False)

    def on_job_done(self, _event: JobDone) -> None:
        self.job = None
        self.query_one("#stop", Button).disabled = True
        self.query_one("#send", Button).disabled = False
        self.query_one(StatusBar).state = "ready" if self.model is not None else "no model"
        self.refresh_sidebar()
        if self.conversation_id is not None:
            self._label_alternatives()
            if self.model is not None:  # the conversation's model is the one that answered it last
                self.store.update_conversation(self.conversation_id, model=model_label(self.model_name))

    @on(Button.Pressed, "#stop")
    def _stop_pressed(self) -> None:
        self.action_stop()

    # ---- tool approval (called on the generation worker's thread) -----------------------

    def _ask_approval(self, call, tool) -> str:
        """The ApprovalPolicy's `ask`: blocks the worker thread until the user answers."""
        answer: concurrent.futures.Future[str] = concurrent.futures.Future()
        self.post_message(self.ApprovalRequested(call, tool, answer))
        job = self.job
        while True:
            try:
                return answer.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if job is None or job.cancel.is_set():
                    answer.cancel()
                    return "deny"

    def on_chat_app_approval_requested(self, event: ApprovalRequested) -> None:
        if event.answer.done():
            return  # stopped while the request was on its way

        def answered(choice: str | None) -> None:
            if not event.answer.done():
                event.answer.set_result(choice or "deny")

        description = event.tool.description if event.tool is not None else ""
        self.push_screen(ApprovalScreen(event.call.name, event.call.arguments, description), answered)

    # ---- actions ------------------------------------------------------------------------

    def action_new_conversation(self) -> None:
        if self.job is not None:
            self.action_stop()
        self.open_conversation(None)
        self.query_one("#prompt", Composer).focus()

    def action_regenerate(self) -> None:
        if self.job is not None or self.conversation_id is None:
            return
        messages = self.store.messages(self.conversation_id)
        users = [m for m in messages if m.role == "user"]
        if not users:
            return
        self.store.set_reply_aside(self.conversation_id)  # kept: alt+left shows it again
        self.open_conversation(self.conversation_id)
        self.start_generation()

    def action_browse_reply(self, step: int) -> None:
        """Show another alternative of the last reply; the shown one is what the model sees next."""
        if self.conversation_id is None:
            return
        if self.job is not None:
            self.notify("Wait for the reply to finish, or press Esc to stop it.", severity="warning")
            return
        before = self.store.reply_alternatives(self.conversation_id)
        if before.count == 1:
            self.notify("The last reply has no alternatives yet: ctrl+r generates one.", markup=False)
            return
        if self.store.show_alternative(self.conversation_id, step) != before:
            self.open_conversation(self.conversation_id)

    def action_edit_message(self) -> None:
        """Edit the focused user message (else the last one) and resend from there."""
        if self.job is not None or self.conversation_id is None:
            return
        focused = self.focused
        while focused is not None and not isinstance(focused, MessageView):
            focused = focused.parent
        if isinstance(focused, MessageView) and focused.message.role == "user":
            target = focused.message
        else:
            users = [m for m in self.store.messages(self.conversation_id) if m.role == "user"]
            if not users:
                return
            target = users[-1]

        def resend(text: str | None) -> None:
            if text is None or not text.strip():
                return
            self.store.delete_messages_from(self.conversation_id, target.seq)
            self.store.add_message(self.conversation_id, "user", text.strip())
            self.open_conversation(self.conversation_id)
            self.start_generation()

        self.push_screen(TextPromptScreen("Edit the message and resend from there", target.content, multiline=True), resend)

    def action_pick_model(self) -> None:
        from engine import load_registry

        try:
            registry = load_registry()
        except EngineError as e:
            self.notify(str(e), severity="error", markup=False)
            return

        def chosen(name: str | None) -> None:
            if name is None or (self.model is not None and name == self.model.name):
                return
            self.start_loading(name)  # the current model stays until this one has loaded

        self.push_screen(ModelPickerScreen(registry, self.model.name if self.model else self.model_name), chosen)

    def action_settings(self) -> None:
        system, sampling = self._conversation_settings()

        def saved(result) -> None:
            if result is None:
                return
            if self.conversation_id is None:
                self.conversation_id = self.store.create_conversation(model=model_label(self.model_name)).id
            self.store.update_conversation(self.conversation_id, system_prompt=result[0], settings=result[1])
            self.refresh_sidebar()
            self.notify("Settings saved for this conversation.")

        model_defaults = getattr(self.model, "sampling_defaults", None) or {}
        self.push_screen(SettingsScreen(system, sampling, model_defaults), saved)

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

        self.push_screen(TextPromptScreen("Rename conversation (empty: title from the first message)", conv.title), renamed)

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
            self.store.delete_conversation(target)
            if target == self.conversation_id:
                recent = self.store.most_recent()
                self.open_conversation(recent.id if recent else None)
            else:
                self.refresh_sidebar()

        self.push_screen(ConfirmScreen(f"Delete “{inert(title)}” and all its messages?", yes="Delete"), confirmed)

    def action_export(self, fmt: str) -> None:
        if self.conversation_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        conv = self.store.get_conversation(self.conversation_id)

        def exported(path: Path | None) -> None:
            if path is not None:
                self.notify(f"Exported to {path}", title="Exported", markup=False)

        label = "Markdown" if fmt == "markdown" else "JSON"
        self.push_screen(
            ExportScreen(f"Export “{inert(conv.title)}” as {label}", default_export_path(conv.title, fmt),
                         lambda path: export_to_file(self.store, conv.id, fmt, path)),
            exported,
        )

    def action_help(self) -> None:
        rows = [(b.key.replace(",", " / "), b.tooltip or b.description) for b in self.BINDINGS]
        rows += HELP_ROWS
        self.push_screen(HelpScreen(rows))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        commands = [(title, help_text, partial(getattr(self, f"action_{name}"), *args))
                    for title, help_text, name, args in PALETTE]
        ours = {title for title, _, _ in commands}
        # Textual's own "Keys" (its key panel) would sit beside ours: one title, one command.
        yield from (command for command in super().get_system_commands(screen) if command.title not in ours)
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)

    @on(Sidebar.Selected)
    def _conversation_selected(self, event: Sidebar.Selected) -> None:
        if event.conversation_id != self.conversation_id:
            if self.job is not None:
                self.notify("Stop the current reply (Esc) before switching conversations.", severity="warning")
                return
            self.open_conversation(event.conversation_id)
        # Chosen from the list or from search results: the next thing to do is write.
        self.query_one("#prompt", Composer).focus()

    @on(Sidebar.SearchChanged)
    def _search_changed(self, event: Sidebar.SearchChanged) -> None:
        self.refresh_sidebar(event.query)


def _load_with_engine(name: str | None):
    import engine

    return engine.load(name)
