"""The default approval hook: ask the user before a tool that is not marked safe runs.

The app supplies `ask(call, tool, after_tool_output=...)`, which shows a dialog and blocks the
worker thread that runs the tools until the user answers one of ANSWERS. Approvals can last for
one call, for these exact arguments for the session, for the tool for the session, or always (a
JSON list of tool names in the user config folder). A tool name alone approves only tools
without side effects (`Tool.side_effects=False`): for the others a model that read a hostile
file could otherwise pick new arguments for a tool the user approved once, so they are approved
per arguments, and the widest answer they can get is "these arguments for this session".
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import platformdirs

from engine import ToolCall

from .hookspecs import hookimpl
from .runner import Decision
from .tool import Tool

__all__ = ["ApprovalPolicy", "Answer", "ANSWERS", "arguments_key", "default_permanent_file"]

Answer = Literal["allow", "allow_arguments", "allow_session", "allow_always", "deny"]
ANSWERS: tuple[str, ...] = ("allow", "allow_arguments", "allow_session", "allow_always", "deny")
_DEFAULT: Any = object()


def default_permanent_file() -> Path:
    return Path(platformdirs.user_config_dir("chatapp")) / "approved_tools.json"


class ApprovalPolicy:
    """A plugin: register it with `ToolRegistry.register_plugin(ApprovalPolicy(ask))`.

    It runs after the other before_tool_call hooks (trylast), so the user approves the
    arguments that will actually be used. With permanent_file=None nothing is persisted and
    "allow_always" lasts for the session.
    """

    def __init__(self, ask: Callable[..., str], *, permanent_file: Path | None = _DEFAULT):
        self.ask = ask
        self.permanent_file = default_permanent_file() if permanent_file is _DEFAULT else permanent_file
        self.session_allowed: set[str] = set()  # tool names (tools without side effects)
        self.session_allowed_calls: set[tuple[str, str]] = set()  # (tool name, arguments_key(...))
        self.persist_error: str | None = None  # why the last "allow_always" could not be saved
        self._lock = threading.Lock()

    @hookimpl(trylast=True)
    def before_tool_call(self, call: ToolCall, tool: Tool | None, after_tool_output: bool) -> Decision | None:
        # No default for after_tool_output: pluggy passes only the arguments without one.
        if tool is None or tool.safe or self.is_call_allowed(tool, call.arguments):
            return None
        answer = self.ask(call, tool, after_tool_output=after_tool_output)
        if answer == "allow":
            return None
        if answer == "allow_arguments" or (answer in ("allow_session", "allow_always") and tool.side_effects):
            # Fail narrow: a name alone never approves a tool with side effects.
            with self._lock:
                self.session_allowed_calls.add((tool.name, arguments_key(call.arguments)))
            return None
        if answer == "allow_session":
            with self._lock:
                self.session_allowed.add(tool.name)
            return None
        if answer == "allow_always":
            self.allow_always(tool.name)
            return None
        if answer == "deny":
            return Decision.deny("declined in the approval dialog")
        return Decision.deny(f"no approval (the dialog answered {answer!r})")  # fail closed

    def is_call_allowed(self, tool: Tool, arguments: dict) -> bool:
        """Whether a call of `tool` with `arguments` was approved already: by name for a tool
        without side effects, by these exact arguments for any tool."""
        if not tool.side_effects and self.is_allowed(tool.name):
            return True
        with self._lock:
            return (tool.name, arguments_key(arguments)) in self.session_allowed_calls

    def is_allowed(self, name: str) -> bool:
        """Whether the tool name was approved for the session or always (which approves a call
        only for a tool without side effects: see is_call_allowed)."""
        with self._lock:
            if name in self.session_allowed:
                return True
        return name in self.permanently_allowed()

    def permanently_allowed(self) -> set[str]:
        """The tool names in the permanent file; a missing or malformed file allows nothing."""
        if self.permanent_file is None:
            return set()
        try:
            names = json.loads(Path(self.permanent_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not isinstance(names, list):
            return set()
        return {name for name in names if isinstance(name, str)}

    def allow_always(self, name: str) -> None:
        with self._lock:
            self.session_allowed.add(name)
            if self.permanent_file is not None:
                self._write(self.permanently_allowed() | {name})

    def forget(self, name: str) -> None:
        """Ask again before the next call of `name` (undoes session and permanent approval)."""
        with self._lock:
            self.session_allowed.discard(name)
            self.session_allowed_calls = {entry for entry in self.session_allowed_calls if entry[0] != name}
            allowed = self.permanently_allowed()
            if self.permanent_file is not None and name in allowed:
                self._write(allowed - {name})

    def _write(self, names: set[str]) -> None:
        # Write a temporary file next to the target and rename it over: a crash never leaves
        # a half-written list behind.
        path = Path(self.permanent_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(sorted(names), f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
            self.persist_error = None
        except OSError as exc:
            self.persist_error = f"could not save approved tools to {path}: {exc}"


def arguments_key(arguments: dict) -> str:
    """The arguments as canonical JSON: equal arguments, in any key order, give equal keys."""
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)
