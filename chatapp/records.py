"""What the chat history holds, as plain records: a conversation, a message, the alternatives of
a reply. The store writes and reads them; export formats them without importing the store."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

ROLES = frozenset({"system", "user", "assistant", "tool"})
STATUSES = frozenset({"complete", "streaming", "stopped", "error"})
DEFAULT_TITLE = "New conversation"
TITLE_CHARS = 60


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str  # the custom title, else derived from the first user message, else DEFAULT_TITLE
    custom_title: bool
    created_at: float  # unix seconds
    updated_at: float  # unix seconds of the last message write: the sidebar's order
    system_prompt: str | None
    model: str | None  # a models.toml name or a path
    settings: dict = field(default_factory=dict)  # sampling settings


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    seq: int  # 0, 1, 2, ... within the conversation
    role: str
    content: str
    status: str
    tool_calls: list[dict] | None  # OpenAI form: [{"id", "type": "function", "function": {"name", "arguments"}}]
    tool_call_id: str | None
    name: str | None  # the tool's name, for role "tool"
    meta: dict
    created_at: float
    # The reply's thinking, kept apart from `content`: to_openai leaves it out, so it is never
    # sent back to the model (as the thinking families' templates ask).
    reasoning: str = ""

    def to_openai(self) -> dict:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = copy.deepcopy(self.tool_calls)
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class Alternatives:
    """The replies to one user message: which is shown (0-based) and how many there are."""

    shown: int
    count: int


def derive_title(first_user_message: str | None) -> str:
    """The first non-blank line, whitespace collapsed, cut to TITLE_CHARS."""
    for line in (first_user_message or "").splitlines():
        line = " ".join(line.split())
        if line:
            return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
    return DEFAULT_TITLE


# --- checks of what callers hand the store, before anything is written ---


def check_choice(value: object, allowed: frozenset[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(sorted(allowed))}, not {value!r}")


def check_str(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")


def check_optional_str(value: object, what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{what} must be a string or None, not {type(value).__name__}")


def check_tool_calls(tool_calls: Any) -> None:
    if not (isinstance(tool_calls, list) and all(isinstance(c, dict) for c in tool_calls)):
        raise ValueError("tool_calls must be a list of dicts (OpenAI form) or None")


def check_dict(value: object, what: str) -> None:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict or None, not {type(value).__name__}")


def to_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable: {e}") from None
