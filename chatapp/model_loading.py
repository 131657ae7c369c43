"""The app's model: loaded on a worker thread, switched without dropping the one in use, and the
context a conversation takes counted once it is open.

`ModelLoading` is mixed into ChatApp; it reaches the UI from its workers only by post_message.
"""

from __future__ import annotations

from textual import work
from textual.message import Message

from engine import EngineError

from .widgets.status import StatusBar
from .worker import history_for_model

DEFAULT_LABEL = "the default model"


class ModelLoaded(Message):
    def __init__(self, model, requested: str | None) -> None:
        super().__init__()
        self.model = model
        self.requested = requested  # what was asked for: a models.toml name, a path, or None (default)


class ModelFailed(Message):
    def __init__(self, error: str, requested: str | None) -> None:
        super().__init__()
        self.error = error
        self.requested = requested


class ContextCounted(Message):
    """Tokens the open conversation takes in the prompt, counted when it was opened."""

    def __init__(self, conversation_id: int, tokens: int, context_length: int) -> None:
        super().__init__()
        self.conversation_id = conversation_id
        self.tokens = tokens
        self.context_length = context_length


def model_label(name: str | None) -> str:
    """What a requested model is called: the name or path asked for, else the registry's default."""
    if name:
        return name
    from engine import RegistryError, load_registry

    try:
        return load_registry().default or DEFAULT_LABEL
    except RegistryError:
        return DEFAULT_LABEL


class ModelLoading:
    """Loading and switching. Until a switch has loaded, the model in use keeps answering (its
    chat session and KV cache included); a switch that fails leaves it in place and says why."""

    def start_loading(self, name: str | None) -> None:
        status = self.query_one(StatusBar)
        if self.model is None:
            self.model_error = None
            self.model_ready.clear()  # generation waits for the first model
            status.model_name = model_label(name)
            status.state = "loading…"
        else:
            status.state = f"loading {model_label(name)}…"
        self._load_worker(name)

    @work(thread=True, exclusive=True, group="load")
    def _load_worker(self, name: str | None) -> None:
        try:
            model = self._load_model(name)
        except (EngineError, ValueError, OSError) as e:
            if self.model is None:
                self.model_error = str(e)
            self.post_message(ModelFailed(str(e), name))
        else:
            self.model = model  # one assignment: a reply already under way keeps its own session
            self.post_message(ModelLoaded(model, name))
        finally:
            self.model_ready.set()

    def on_model_loaded(self, event: ModelLoaded) -> None:
        status = self.query_one(StatusBar)
        status.model_name = f"{event.model.name} · {event.model.backend}"
        status.context_size = event.model.context_length
        if self.job is None:
            status.state = "ready"
        self.model_name = event.requested
        if self.conversation_id is not None:  # the conversation's model is the one answering it
            self.store.update_conversation(self.conversation_id, model=model_label(event.requested))
        self.count_context()

    def on_model_failed(self, event: ModelFailed) -> None:
        status = self.query_one(StatusBar)
        if self.model is None:
            status.state = "no model"
            self.notify(event.error, title="Model failed to load", severity="error", timeout=15, markup=False)
            return
        if self.job is None:
            status.state = "ready"
        self.notify(f"{event.error}\nStill using {self.model.name}.", title=f"Could not switch to {model_label(event.requested)}",
                    severity="error", timeout=15, markup=False)

    # ---- context used by the open conversation ------------------------------------------------

    def count_context(self) -> None:
        """Show the open conversation's prompt size: unknown until counted, on a worker thread."""
        status = self.query_one(StatusBar)
        if self.conversation_id is None:
            status.context_used = 0
            return
        status.context_used = None
        if self.model is not None:
            self._count_worker(self.model, self.conversation_id)

    @work(thread=True, exclusive=True, group="count")
    def _count_worker(self, model, conversation_id: int) -> None:
        schemas = self.tool_registry.schemas() if model.supports_tools else None
        try:
            tokens = len(model.encode_chat(history_for_model(self.store, conversation_id), tools=schemas))
        except (EngineError, KeyError):  # a template that fails, a conversation deleted meanwhile
            return  # stays unknown; the next reply reports it
        self.post_message(ContextCounted(conversation_id, tokens, model.context_length))

    def on_context_counted(self, event: ContextCounted) -> None:
        if event.conversation_id == self.conversation_id and self.job is None:
            status = self.query_one(StatusBar)
            status.context_used, status.context_size = event.tokens, event.context_length
