"""The Textual messages the chat app's workers and screens answer each other with, in one place.

Workers (generation, model loading, context counting) run on threads and reach the UI only by
posting one of these; the handler on the UI thread is the only code that touches widgets or
assigns app state. Each is posted to the screen or app whose worker sends it and handled there:
none bubbles on (a reply's deltas would otherwise reach the app a second time).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from engine import GenerationResult

    from .records import Message as StoredMessage


# ---- generation (chatapp.worker) ------------------------------------------------------------


@dataclass
class ReplyStarted(Message, bubble=False):
    """An assistant message was stored (empty, streaming): the screen mounts its view."""

    message: StoredMessage


@dataclass
class ReplyDelta(Message, bubble=False):
    """Text streamed since the last delta; tokens coalesce into one of these every POST_INTERVAL.
    `reasoning`: the reply's thinking streamed since the last delta (its `<think>` block)."""

    message_id: int
    text: str
    reasoning: str = ""


@dataclass
class ReplyFinished(Message, bubble=False):
    message_id: int
    status: str  # the stored status: complete, stopped or error
    result: GenerationResult | None  # None when generation failed or never produced a result


@dataclass
class ContextFitted(Message, bubble=False):
    """Posted after each generation: what the model saw, and how many messages were left out."""

    prompt_tokens: int
    context_length: int
    dropped: int


class HistoryChanged(Message, bubble=False):
    """Tool calls and results were stored: the view reloads the conversation."""


@dataclass
class Notice(Message, bubble=False):
    """A line shown in the chat, beside the replies it is about."""

    text: str
    severity: str = "information"


class JobDone(Message, bubble=False):
    """The generation worker has finished (answered, stopped or failed)."""


@dataclass
class ApprovalRequested(Message, bubble=False):
    """From the generation worker: ask the user about a tool call, answer through `answer`."""

    call: Any  # engine ToolCall
    tool: Any  # chatapp.tools Tool, or None for a tool that is not registered
    answer: concurrent.futures.Future
    after_tool_output: bool = False  # the model wrote the call after reading tool output


# ---- the model (chatapp.app) and the context it counts (chatapp.screens.chat) --------------


@dataclass
class ModelLoaded(Message, bubble=False):
    model: Any  # engine Model
    requested: str | None  # what was asked for: a models.toml name, a path, or None (default)


@dataclass
class ModelFailed(Message, bubble=False):
    error: str
    requested: str | None


@dataclass
class ContextCounted(Message, bubble=False):
    """Tokens the open conversation takes in the prompt, counted when it was opened."""

    conversation_id: int
    tokens: int
    context_length: int
