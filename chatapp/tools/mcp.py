"""MCP servers as tools: every configured server's tools join the tool registry as plugin tools.

    mcp = McpTools(load_mcp_config(), notify=show)
    registry.register_plugin(mcp)   # nothing starts yet
    registry.prepare()              # on a worker thread: starts the servers, adds their tools
    ...
    mcp.close()                     # on exit: stops the servers

A server's tool "read_file" on server "files" is the tool `files__read_file` (the names the chat
templates and the OpenAI schema allow: ^[A-Za-z0-9_-]{1,64}$), with the server's JSON schema. MCP
tools are never `safe`: the approval hook asks before each one (naming the server) unless the
user allowed it. A server that fails to start or dies gives the call an error result and the user
a notice; what a tool returns is untrusted text, cut to MAX_MCP_RESULT_CHARS with a note. A call
the runner gives up on (Esc, its timeout) is cancelled on the server too (`notifications/cancelled`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .hookspecs import hookimpl
from .mcp_client import McpConnection, McpLoop, McpServerError
from .mcp_config import McpConfig
from .runner import MAX_RESULT_CHARS, TOOL_TIMEOUT_S
from .tool import Tool, ToolError, ToolExecutionError

__all__ = ["McpTools", "MAX_MCP_RESULT_CHARS", "tool_name"]

# Under the runner's own cap, so that a cut result carries one note, naming the server.
MAX_MCP_RESULT_CHARS = MAX_RESULT_CHARS - 2_000
MAX_DESCRIPTION_CHARS = 1_000  # a server's description goes into every prompt: keep it bounded
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(server: str, tool: str) -> str:
    """The registry name of a server's tool: "<server>__<tool>", other characters made '_'."""
    return f"{server}__{_UNSAFE_NAME_CHARS.sub('_', tool)}"


class McpTools:
    """A plugin: the tools of the configured MCP servers. `notify(text)` is called (from any
    thread) when a server fails to start or stops; `call_timeout` bounds one call in seconds."""

    def __init__(self, config: McpConfig, *, notify: Callable[[str], None] | None = None,
                 call_timeout: float = TOOL_TIMEOUT_S, max_result_chars: int = MAX_MCP_RESULT_CHARS,
                 log_dir: Path | None = None) -> None:
        self.config = config
        self.notify = notify or (lambda text: None)
        self.call_timeout = call_timeout
        self.max_result_chars = max_result_chars
        self.loop = McpLoop()
        self.connections = {server.name: McpConnection(server, self.loop, notify=self._notice, log_dir=log_dir)
                            for server in config.servers}
        self.tool_errors: dict[str, list[str]] = {}  # server -> tools it listed that cannot be offered
        self._tools: dict[str, list[Tool]] = {}  # server -> its tools, as the registry gets them
        self._lock = threading.Lock()

    def _notice(self, text: str) -> None:
        try:
            self.notify(text)
        except Exception:  # a notice that cannot be shown must not fail the call or the start
            pass

    # ---- the hooks -------------------------------------------------------------------------

    @hookimpl
    def prepare_tools(self) -> bool:
        return self.start()

    @hookimpl
    def register_tools(self, register) -> None:
        with self._lock:
            for tools in self._tools.values():
                for tool in tools:
                    register(tool)

    def tools_of(self, server: str) -> list[Tool]:
        with self._lock:
            return list(self._tools.get(server, []))

    # ---- servers ---------------------------------------------------------------------------

    def start(self) -> bool:
        """Start, side by side, every server that has not been started (or has stopped); True
        when the set of tools changed. Servers that failed to start are not retried here."""
        waiting = [c for c in self.connections.values() if c.state in ("not started", "stopped")]
        if not waiting:
            return False
        threads = [threading.Thread(target=c.start, name=f"mcp start {c.config.name}", daemon=True) for c in waiting]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        changed = False
        with self._lock:
            for connection in waiting:
                tools = self._convert(connection) if connection.state == "running" else []
                if [t.name for t in tools] != [t.name for t in self._tools.get(connection.config.name, [])]:
                    changed = True
                if tools:
                    self._tools[connection.config.name] = tools
                elif connection.state == "failed":
                    changed = self._tools.pop(connection.config.name, None) is not None or changed
        return changed

    def close(self) -> None:
        """Stop every server, side by side, and the loop they run on."""
        threads = [threading.Thread(target=c.close, name=f"mcp stop {c.config.name}", daemon=True)
                   for c in self.connections.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.loop.stop()

    def _convert(self, connection: McpConnection) -> list[Tool]:
        server = connection.config.name
        tools, errors = [], []
        for listed in connection.tools:
            name = tool_name(server, listed.name)
            try:
                if len(name) > 64:
                    raise ToolError(f"its name {name!r} is longer than 64 characters")
                parameters = dict(listed.input_schema)
                cancel_parameter = _free_name("cancel", parameters.get("properties") or {})
                tools.append(Tool(
                    name=name,
                    description=(listed.description or listed.title or "")[:MAX_DESCRIPTION_CHARS],
                    parameters=parameters,
                    function=partial(self._invoke, connection, listed.name, cancel_parameter),
                    safe=False,
                    source=f"MCP server {server!r}",
                    cancel_parameter=cancel_parameter,
                ))
            except ToolError as exc:
                errors.append(f"MCP server {server!r}: tool {listed.name!r} is not offered: {exc}")
        self.tool_errors[server] = errors
        for line in errors:
            self._notice(line)
        return tools

    def _invoke(self, connection: McpConnection, tool: str, cancel_parameter: str, /, **arguments: Any) -> str:
        # Positional-only, so that a server tool's argument may be called "tool" or "connection".
        cancel = arguments.pop(cancel_parameter)
        try:
            result = connection.call(tool, arguments, self.call_timeout, cancel=cancel)
        except McpServerError as exc:
            raise ToolExecutionError(str(exc)) from None
        text = self._cap(result_text(result), connection.config.name)
        if result.is_error:
            raise ToolExecutionError(text or "the tool reported an error and said nothing more")
        return text

    def _cap(self, text: str, server: str) -> str:
        if len(text) <= self.max_result_chars:
            return text
        return (text[: self.max_result_chars] + f"\n[cut: the MCP server {server!r} returned {len(text):,} "
                f"characters; only the first {self.max_result_chars:,} are shown]")


def _free_name(name: str, taken: dict) -> str:
    """`name`, with '_' in front until no argument of the server's tool is called that."""
    while name in taken:
        name = "_" + name
    return name


def result_text(result: Any) -> str:
    """A CallToolResult as text for the model: text blocks as they are, other blocks as a line
    that says what was left out; structured content as JSON when there is no text."""
    import json

    from mcp import types

    parts = []
    for block in result.content or ():
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource) and isinstance(block.resource, types.TextResourceContents):
            parts.append(block.resource.text)
        elif isinstance(block, types.EmbeddedResource):
            parts.append(f"[binary resource {block.resource.uri} ({block.resource.mime_type or 'unknown type'}) not shown]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link: {block.uri}]")
        elif isinstance(block, (types.ImageContent, types.AudioContent)):
            parts.append(f"[{block.type} ({block.mime_type}, {len(block.data) * 3 // 4:,} bytes) not shown]")
        else:
            parts.append(f"[{getattr(block, 'type', type(block).__name__)} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)
