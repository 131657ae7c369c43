"""The chat app: the model (loaded on a worker thread, switched without dropping the one in use),
the global keys, the command palette, and the chat screen (chatapp/screens/chat.py) under them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine import EngineError

from .commands import HELP_ROWS, PALETTE
from .conversation import model_label
from .messages import ModelFailed, ModelLoaded
from .screens.chat import ChatScreen
from .screens.help import HelpScreen
from .screens.models import ModelPickerScreen
from .store import Store
from .tools.approval import ApprovalPolicy
from .tools.builtin import FileAccess
from .tools.mcp import McpTools
from .tools.mcp_config import load_mcp_config
from .tools.registry import ToolRegistry
from .tools.runner import TOOL_TIMEOUT_S, ToolRunner

QUIT_WAIT_S = 2.0  # longest wait on quit for a reply to stop and be saved


class ChatApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "chatapp"
    # After the chat screen's own (ChatScreen.BINDINGS): F1 lists both, in that order.
    BINDINGS = [
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
        tool_timeout: float = TOOL_TIMEOUT_S,
        mcp_config: Path | None = None,
        plugins: bool | None = None,
    ) -> None:
        """plugins=False (chatapp --no-plugins) loads no installed tool plugin and no tools.py;
        None: on unless CHATAPP_NO_PLUGINS=1. Ignored when a tool_registry is given."""
        super().__init__()
        self.store = store
        self.model_name = model  # what was asked for: a models.toml name, a path, or None (default)
        self._load_model = load_model or _load_with_engine
        # Assigned on the UI thread only (on ModelLoaded): a reply already under way keeps its session.
        self.model = None
        self.model_ready = threading.Event()  # set once the first load has finished, loaded or not
        self.model_error: str | None = None
        self.tool_registry = tool_registry or ToolRegistry(FileAccess([Path(d) for d in allowed_dirs]), plugins=plugins)
        self.tool_runner = ToolRunner(self.tool_registry, timeout=tool_timeout)
        self.tool_registry.register_plugin(ApprovalPolicy(self._ask_approval))
        # MCP servers (mcp.json, or --mcp FILE) start on the first reply that offers tools.
        self.mcp = McpTools(load_mcp_config(mcp_config), notify=self._mcp_notice, call_timeout=tool_timeout)
        self.tool_registry.register_plugin(self.mcp)
        self.chat_screen: ChatScreen | None = None  # made with the first screen, once the app runs

    def on_mount(self) -> None:
        # Code from outside chatapp ran at start-up: say so (F1 lists what and from where).
        extra = [p for p in self.tool_registry.loaded_plugins() if not p.builtin]
        if extra:
            names = ", ".join(f"{p.name} ({p.origin})" for p in extra)
            self.notify(f"Tool plugins loaded: {names}. F1 lists what they added; "
                        "chatapp --no-plugins starts without them.", markup=False)
        for error in self.tool_registry.load_errors:
            self.notify(f"A tool plugin was not loaded: {error}", severity="warning", markup=False)
        for error in self.mcp.config.errors:  # a bad mcp.json entry: said once, the rest still loads
            self.notify(error, title="MCP config", severity="warning", timeout=15, markup=False)

    def get_default_screen(self) -> Screen:
        # The chat screen is the bottom of the screen stack (Textual pushes it before the first
        # paint), not pushed in on_mount over a blank one: keys pressed at start-up reach it. It
        # starts the first model load once it has been painted.
        self.chat_screen = ChatScreen(self.store, self.tool_runner)
        return self.chat_screen

    async def on_unmount(self) -> None:
        await asyncio.to_thread(self.mcp.close)  # stdio servers are our child processes

    def _mcp_notice(self, text: str) -> None:
        """A server failed to start or stopped (said from whatever thread saw it: notify posts a
        message). A toast, not a line in the chat: it is about the app, and the chat is redrawn
        after each round of tool calls."""
        self.notify(text, title="MCP", severity="warning", timeout=15, markup=False)

    def _ask_approval(self, call, tool, after_tool_output: bool = False) -> str:
        """The ApprovalPolicy's `ask`, on the generation worker's thread: the chat screen asks."""
        return self.chat_screen.ask_approval(call, tool, after_tool_output)

    # ---- the model: until a switch has loaded, the model in use keeps answering (its chat
    # session and KV cache included); a switch that fails leaves it in place and says why.

    def start_loading(self, name: str | None) -> None:
        first = self.model is None
        if first:
            self.model_error = None
            self.model_ready.clear()  # a reply sent now waits for the first model
        self.chat_screen.show_loading(model_label(name), first=first)
        self._load_worker(name)

    @work(thread=True, exclusive=True, group="load")
    def _load_worker(self, name: str | None) -> None:
        try:
            model = self._load_model(name)
        except (EngineError, ValueError, OSError) as e:
            self.post_message(ModelFailed(str(e), name))
        except Exception as e:  # MemoryError, a RuntimeError from torch or llama.cpp: the app stays up
            self.post_message(ModelFailed(f"{type(e).__name__}: {e}", name))
        else:
            self.post_message(ModelLoaded(model, name))

    def on_model_loaded(self, event: ModelLoaded) -> None:
        self.model, self.model_name = event.model, event.requested
        self.model_ready.set()
        self.chat_screen.model_loaded(event.model, event.requested)

    def on_model_failed(self, event: ModelFailed) -> None:
        if self.model is None:
            self.model_error = event.error
        self.model_ready.set()
        self.chat_screen.model_failed(event.error, event.requested)

    async def action_quit(self) -> None:
        """Stop a reply being generated (kept, marked stopped) before leaving: a thread worker is
        not cancelled by the app closing, and would go on generating in a windowless process."""
        job = self.chat_screen.job if self.chat_screen is not None else None
        if job is not None:
            self.chat_screen.closing = True
            job.cancel.set()
            await asyncio.to_thread(job.finished.wait, QUIT_WAIT_S)
        self.exit()

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

    # ---- help and the command palette ---------------------------------------------------

    def action_help(self) -> None:
        ours = {b.key for b in self.BINDINGS}
        bindings = [b for b in ChatScreen.BINDINGS if b.key not in ours] + self.BINDINGS
        rows = [(b.key.replace(",", " / "), b.tooltip or b.description) for b in bindings]
        rows += HELP_ROWS
        registry = self.tool_registry
        self.push_screen(HelpScreen(rows, plugins=registry.loaded_plugins(), plugins_enabled=registry.plugins_enabled,
                                    plugin_errors=registry.load_errors))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # Each entry is an action of the chat screen, or else of the app (pick_model, help).
        commands = [(title, help_text, partial(getattr(self.chat_screen, f"action_{name}", None) or getattr(self, f"action_{name}"), *args))
                    for title, help_text, name, args in PALETTE]
        ours = {title for title, _, _ in commands}
        # Textual's own "Keys" (its key panel) would sit beside ours: one title, one command.
        yield from (command for command in super().get_system_commands(screen) if command.title not in ours)
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)


def _load_with_engine(name: str | None):
    import engine

    return engine.load(name)
