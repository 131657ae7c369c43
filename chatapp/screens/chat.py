"""The chat screen: the conversation list, the open conversation's replies streaming in, the
composer and the status line, and the keys that act on them.

What is done to a conversation lives in chatapp/conversation.py; this screen chooses when, and
shows the result. The model belongs to the app (`self.app.model`, assigned on the UI thread when a
load has finished); the generation worker gets its chat session from here, never makes one.
"""

from __future__ import annotations

import concurrent.futures
from functools import partial

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Static

from engine import EngineError

from .. import conversation as conv_ops
from ..conversation import model_label
from ..messages import (
    ApprovalRequested,
    ContextCounted,
    ContextFitted,
    HistoryChanged,
    JobDone,
    Notice,
    ReplyDelta,
    ReplyFinished,
    ReplyStarted,
)
from ..pending import WRITE_ERRORS, PendingWrites, describe
from ..presence import ConversationLocks
from ..store import Store
from ..tools.runner import ToolRunner
from ..widgets.composer import Composer
from ..widgets.inert import inert
from ..widgets.message import MessageView
from ..widgets.sidebar import Sidebar
from ..widgets.status import StatusBar
from ..worker import Job, history_for_model, run_job
from .approval import ApprovalScreen
from .chat_actions import BUSY, ConversationActions

# Seconds before each new try of a message the history could not take; then Enter tries again.
SEND_RETRY_DELAYS = (1.0, 2.0, 4.0)
PENDING_RETRY_S = 2.0  # how often writes kept in memory (history locked, disk full) are retried
UI_WRITE_WAIT_S = 0.25  # the longest the UI thread waits on a history another process has locked


class ChatScreen(ConversationActions, Screen):
    # The footer lists these, then the app's (F1 help); F1 lists these, then the app's help and
    # quit. Quit is repeated here only to keep its place first in the footer, where Textual's
    # App bindings have always put it.
    BINDINGS = [
        Binding("ctrl+q", "app.quit", "Quit", tooltip="Quit (history is already saved)"),
        Binding("ctrl+n", "new_conversation", "New", tooltip="Start a new conversation"),
        Binding("escape", "stop", "Stop", tooltip="Stop the reply being generated (the partial reply is kept)"),
        Binding("ctrl+r,f5", "regenerate", "Regenerate", tooltip="Generate the last reply again"),
        Binding("alt+left", "browse_reply(-1)", "Previous reply", show=False, tooltip="Show the previous alternative of the last reply"),
        Binding("alt+right", "browse_reply(1)", "Next reply", show=False, tooltip="Show the next alternative of the last reply"),
        Binding("f3", "edit_message", "Edit", tooltip="Edit the focused user message (Tab to focus one; default: the last) and resend from there"),
        Binding("f4", "inspect", "Inspect", show=False, tooltip="Token and attention inspector for the focused reply (default: the last)"),
        Binding("ctrl+o", "app.pick_model", "Model", tooltip="Choose a model from models.toml"),
        Binding("ctrl+s,f7", "settings", "Settings", tooltip="System prompt and sampling for this conversation"),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", show=False, tooltip="Show or hide the conversation list"),
        Binding("f2", "rename", "Rename", show=False, tooltip="Rename this conversation"),
        Binding("f6", "search", "Search", show=False, tooltip="Search conversation titles and messages"),
        Binding("f8", "delete_conversation", "Delete", show=False, tooltip="Delete the conversation (asks first)"),
    ]

    def __init__(self, store: Store, tool_runner: ToolRunner) -> None:
        super().__init__()
        self.store = store
        self.tool_runner = tool_runner
        self.conversation_id: int | None = None
        self.job: Job | None = None
        self._waiting: Job | None = None  # sent before a model was there: started when one is
        self.session = None  # engine ChatSession of the open conversation, made on this (the UI) thread
        self.session_conversation: int | None = None
        self.views: dict[int, MessageView] = {}
        self.pending = PendingWrites()  # history writes kept in memory until the file takes them
        self._send_retries = 0  # automatic tries of the message in the composer so far
        self.closing = False  # set on quit: what the stopping worker still posts is not shown
        self.locks = ConversationLocks(store.path)  # the open conversation, claimed for this app

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
        self.store.cap_waits_on_this_thread(UI_WRITE_WAIT_S)
        try:
            # Only replies whose writer is gone: another app running on this file keeps its own.
            interrupted = self.store.recover_interrupted(self.locks.in_use_elsewhere)
        except WRITE_ERRORS as e:
            interrupted = 0
            self.notify(f"The chat history cannot be written now ({describe(e)}).", severity="warning", markup=False)
        if interrupted:
            self.notify(f"{interrupted} reply(s) cut off last time are kept, marked as stopped.")
        self.set_interval(PENDING_RETRY_S, self._retry_pending)
        recent = self.store.most_recent()
        if recent is not None:  # answered by the model asked for on the command line (or the default)
            self.open_conversation(recent.id)
        else:
            self.refresh_sidebar()
        self.query_one("#prompt", Composer).focus()
        # Load after the first paint: torch is imported in the worker, never before the UI shows.
        self.call_after_refresh(self.app.start_loading, self.app.model_name)

    # ---- conversations ------------------------------------------------------------------

    def refresh_sidebar(self, search: str | None = None) -> None:
        self.query_one(Sidebar).show(self.store.list_conversations(search or None), self.conversation_id)

    def on_unmount(self) -> None:
        self.locks.release_all()

    def open_conversation(self, conversation_id: int | None) -> None:
        switched = conversation_id != self.conversation_id  # not a reload of the one shown
        if switched:
            self.locks.release(self.conversation_id)
        elsewhere = switched and conversation_id is not None and not self.locks.claim(conversation_id)
        self.conversation_id = conversation_id
        chat = self.query_one("#chat", VerticalScroll)
        chat.remove_children()
        self.views = {}
        if conversation_id is not None:
            opened = conv_ops.open_conversation(self.store, conversation_id)
            chat.mount_all([self._view(m) for m in opened.messages])
            chat.scroll_end(animate=False)
            self._label_alternatives(opened)
            if elsewhere:
                self.on_notice(Notice(self._elsewhere(conversation_id), "warning"))
            if switched:
                note = conv_ops.model_note(self.store, conversation_id, model_label(self.app.model_name))
                if note:
                    self.on_notice(Notice(note, "information"))
        self.refresh_sidebar()
        self.count_context()

    def _label_alternatives(self, opened: conv_ops.Opened) -> None:
        """Mark the last reply with which of its alternatives is shown ("2/3")."""
        view = self.views.get(opened.last_reply_id) if opened.last_reply_id is not None else None
        if view is not None:
            view.set_alternatives(opened.alternatives.shown + 1, opened.alternatives.count)

    def _view(self, message) -> MessageView:
        view = MessageView(message)
        self.views[message.id] = view
        return view

    # ---- the model (told by the app, which owns it) -----------------------------------------

    def show_loading(self, label: str, *, first: bool) -> None:
        status = self.query_one(StatusBar)
        if first:
            status.model_name = label
            status.state = "loading…"
        else:
            status.state = f"loading {label}…"

    def model_loaded(self, model, requested: str | None) -> None:
        status = self.query_one(StatusBar)
        status.model_name = f"{model.name} · {model.where}"
        status.context_size = model.context_length
        for note in getattr(model, "load_notes", ()):
            self.on_notice(Notice(note))
        if self.job is None:
            status.state = "ready"
        if self.conversation_id is not None:  # the conversation's model is the one answering it
            self.pending.write("the model used", partial(conv_ops.record_model, self.store, self.conversation_id,
                                                         model_label(requested)))
        self.count_context()
        self._start_waiting()

    def model_failed(self, error: str, requested: str | None) -> None:
        status = self.query_one(StatusBar)
        model = self.app.model
        if model is None:
            status.state = "no model"
            self.notify(error, title="Model failed to load", severity="error", timeout=15, markup=False)
        else:
            if self.job is None:
                status.state = "ready"
            self.notify(f"{error}\nStill using {model.name}.", title=f"Could not switch to {model_label(requested)}",
                        severity="error", timeout=15, markup=False)
        self._start_waiting()

    def count_context(self) -> None:
        """Show the open conversation's prompt size: unknown until counted, on a worker thread."""
        status = self.query_one(StatusBar)
        if self.conversation_id is None:
            status.context_used = 0
            return
        status.context_used = None
        if self.app.model is not None:
            self._count_worker(self.app.model, self.conversation_id)

    @work(thread=True, exclusive=True, group="count")
    def _count_worker(self, model, conversation_id: int) -> None:
        schemas = self.tool_runner.registry.schemas() if model.supports_tools else None
        try:
            tokens = len(model.encode_chat(history_for_model(self.store, conversation_id), tools=schemas))
        except (EngineError, KeyError):  # a template that fails, a conversation deleted meanwhile
            return  # stays unknown; the next reply reports it
        self.post_message(ContextCounted(conversation_id, tokens, model.context_length))

    def on_context_counted(self, event: ContextCounted) -> None:
        if event.conversation_id == self.conversation_id and self.job is None:
            status = self.query_one(StatusBar)
            status.context_used, status.context_size = event.tokens, event.context_length

    # ---- sending and generation ---------------------------------------------------------

    @on(Composer.Submitted, "#prompt")
    @on(Button.Pressed, "#send")
    def action_send(self) -> None:
        self._send_retries = 0
        self._send()

    def _send(self) -> None:
        prompt = self.query_one("#prompt", Composer)
        text = prompt.text.strip()
        if not text:
            return
        if self.job is not None:
            self.notify(BUSY, severity="warning")
            return
        if not self._writable():
            return
        try:
            self.pending.flush()
            if self.pending:  # what is kept in memory goes first, in order
                raise _Unwritable(self.pending.last_error or "earlier writes are still waiting")
            message = conv_ops.add_user_message(self.store, self.conversation_id, text,
                                                model=model_label(self.app.model_name))
        except (*WRITE_ERRORS, _Unwritable) as e:
            self._send_failed(describe(e))
            return
        self.conversation_id = message.conversation_id
        self.locks.claim(self.conversation_id)  # a new conversation is this app's from the start
        prompt.clear()
        chat = self.query_one("#chat", VerticalScroll)
        chat.mount(self._view(message))
        chat.scroll_end(animate=False)
        self.refresh_sidebar()
        self.start_generation()

    def _elsewhere(self, conversation_id: int) -> str:
        pid = self.locks.holder(conversation_id)
        where = f" (process {pid})" if pid else ""
        return (f"This conversation is open in another chatapp{where}: it is read-only here. "
                "Close it there, or start a new conversation (ctrl+n).")

    def _writable(self) -> bool:
        """False, with a notice, while another running app has the open conversation (claimed
        again here once that app has let it go)."""
        if self.conversation_id is None or self.locks.claim(self.conversation_id):
            return True
        self.on_notice(Notice(self._elsewhere(self.conversation_id), "warning"))
        return False

    def _send_failed(self, why: str) -> None:
        """The message stays in the composer; try again a few times, then on the next Enter."""
        if self._send_retries < len(SEND_RETRY_DELAYS):
            delay = SEND_RETRY_DELAYS[self._send_retries]
            self._send_retries += 1
            self.set_timer(delay, self._send)
            then = f"trying again in {delay:g} s"
        else:
            then = "press Enter to try again"
        self.on_notice(Notice(f"Your message could not be saved: the chat history cannot be written ({why}). "
                              f"It is still in the message box; {then}.", "warning"))

    @work(thread=True, exclusive=True, group="pending")
    def _retry_pending(self) -> None:
        if self.pending and self.pending.flush() and not self.pending:
            self.post_message(Notice("The chat history can be written again: everything kept in memory is saved."))

    def start_generation(self) -> None:
        self.job = Job(conversation_id=self.conversation_id, tools=self.tool_runner, pending=self.pending)
        self.query_one("#stop", Button).disabled = False
        self.query_one("#send", Button).disabled = True
        if self.app.model_ready.is_set():
            self.query_one(StatusBar).state = "thinking…"
            self._start(self.job)
        else:
            self.query_one(StatusBar).state = "waiting for the model…"
            self._waiting = self.job

    def _start_waiting(self) -> None:
        """The first load has finished (or failed): the turn sent meanwhile goes ahead."""
        job, self._waiting = self._waiting, None
        if job is not None:
            self._start(job)

    def _start(self, job: Job) -> None:
        """Give the job its session and sampling (here, on the UI thread) and start the worker."""
        model = self.app.model
        if model is None:
            self.post_message(Notice(f"No model to answer with: {self.app.model_error}", "error"))
            self.post_message(JobDone())
            return
        # One session (and KV cache) for the open conversation: the next turn prefills only
        # what is new. Switching conversation or model starts a fresh one.
        from engine import ChatSession

        if self.session is None or self.session.model is not model or self.session_conversation != job.conversation_id:
            self.session, self.session_conversation = ChatSession(model), job.conversation_id
        try:
            params = conv_ops.sampling_params(model, conv_ops.conversation_settings(self.store, job.conversation_id)[1])
        except ValueError as e:  # a stored setting the engine refuses
            self.post_message(Notice(f"Generation failed: ValueError: {e}", "error"))
            self.post_message(JobDone())
            return
        job.session, job.params = self.session, params
        job.reasoning = conv_ops.reasoning_request(conv_ops.conversation_reasoning(self.store, job.conversation_id))
        job.tool_choice = conv_ops.conversation_tool_choice(self.store, job.conversation_id)
        self._generate(job)

    @work(thread=True, group="generate")
    def _generate(self, job: Job) -> None:
        run_job(job, self.store, self.post_message)

    def action_stop(self) -> None:
        if self.job is not None:
            self.job.cancel.set()
            self.query_one(StatusBar).state = "stopping…"

    @on(Button.Pressed, "#stop")
    def _stop_pressed(self) -> None:
        self.action_stop()

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
        await view.append(event.text, reasoning=event.reasoning)
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
        if self.closing:
            return
        self.open_conversation(self.conversation_id)

    def on_notice(self, event: Notice) -> None:
        if self.closing:
            return
        # In the chat only, where it stays beside the replies it is about; a toast would repeat it.
        chat = self.query_one("#chat", VerticalScroll)
        chat.mount(Static(inert(event.text), classes=f"notice {event.severity}", markup=False))
        chat.scroll_end(animate=False)

    def on_job_done(self, _event: JobDone) -> None:
        self.job = None
        if self.closing:
            return
        self.query_one("#stop", Button).disabled = True
        self.query_one("#send", Button).disabled = False
        self.query_one(StatusBar).state = "ready" if self.app.model is not None else "no model"
        self.refresh_sidebar()
        if self.conversation_id is not None:
            self._label_alternatives(conv_ops.open_conversation(self.store, self.conversation_id))
            if self.app.model is not None:  # the conversation's model is the one that answered it last
                self.pending.write("the model used", partial(conv_ops.record_model, self.store, self.conversation_id,
                                                             model_label(self.app.model_name)))

    # ---- tool approval (asked on the generation worker's thread) ------------------------

    def ask_approval(self, call, tool, after_tool_output: bool = False) -> str:
        """The ApprovalPolicy's `ask`: blocks the worker thread until the user answers."""
        answer: concurrent.futures.Future[str] = concurrent.futures.Future()
        self.post_message(ApprovalRequested(call, tool, answer, after_tool_output))
        job = self.job
        while True:
            try:
                return answer.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if job is None or job.cancel.is_set():
                    answer.cancel()
                    return "deny"

    def on_approval_requested(self, event: ApprovalRequested) -> None:
        if event.answer.done():
            return  # stopped while the request was on its way

        def answered(choice: str | None) -> None:
            if not event.answer.done():
                event.answer.set_result(choice or "deny")

        description = event.tool.description if event.tool is not None else ""
        side_effects = event.tool.side_effects if event.tool is not None else True
        source = getattr(event.tool, "source", "")
        self.app.push_screen(ApprovalScreen(event.call.name, event.call.arguments, description, source=source,
                                            side_effects=side_effects, after_tool_output=event.after_tool_output),
                             answered)

    # ---- actions ------------------------------------------------------------------------

    def action_new_conversation(self) -> None:
        if self.job is not None:
            self.action_stop()
        self.open_conversation(None)
        self.query_one("#prompt", Composer).focus()

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


class _Unwritable(Exception):
    """Writes kept in memory still wait: a new message must not overtake them."""
