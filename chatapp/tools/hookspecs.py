"""The hooks a chatapp plugin can implement. Decorate implementations with `hookimpl`.

A plugin is a module or an object (an installed package's `chatapp.tools` entry point, or the
user's `tools.py` in the config folder); the built-in tools use the same hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from engine import ToolCall

    from .tool import Tool

@dataclass(frozen=True)
class Decision:
    """What a `before_tool_call` hook wants: deny the call, or run it with other arguments."""

    denied: bool = False
    reason: str = ""
    arguments: dict | None = None  # replaces the call's arguments when not None

    @classmethod
    def deny(cls, reason: str = "") -> Decision:
        return cls(denied=True, reason=reason)


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    content: str
    is_error: bool = False
    denied: bool = False

    def to_message(self) -> dict:
        """The OpenAI-style chat message that carries the result back to the model."""
        return {"role": "tool", "tool_call_id": self.call_id, "name": self.name, "content": self.content}


hookspec = pluggy.HookspecMarker("chatapp")
hookimpl = pluggy.HookimplMarker("chatapp")


@hookspec
def register_tools(register):
    """Call `register(fn_or_tool, safe=False, side_effects=True)` for each tool: a typed,
    docstringed function or a `Tool`. safe=True lets it run without asking the user;
    side_effects=False (a tool that only reads) lets the user approve it for the session whatever
    its arguments, where a tool with side effects is approved per arguments."""


@hookspec
def before_tool_call(call: ToolCall, tool: Tool | None, after_tool_output: bool) -> Decision | None:
    """Before a call of a registered tool runs: return None to let it run, `Decision.deny(reason)`
    to stop it, or `Decision(arguments={...})` to run it with other arguments. The runner calls
    the implementations one by one: a denial stops the call, changed arguments are what later
    hooks see. The runner answers calls of unknown tools itself, so `tool` is a Tool here.
    after_tool_output is True when the model wrote the call with tool output in its context
    (text nobody vetted, which may try to steer the arguments)."""


@hookspec
def after_tool_call(call: ToolCall, result: ToolResult) -> ToolResult | None:
    """After every call, denied and failed ones included: return a ToolResult to replace the
    result the model will see, or None to keep it."""


@hookspec
def prepare_tools() -> bool | None:
    """Before the tools are offered to the model, on the generation worker's thread (it may block):
    start what the plugin's tools need (MCP servers). Return True when the plugin's tools changed,
    so that the registry collects them again."""
