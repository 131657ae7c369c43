"""Connections to MCP servers, kept on one background asyncio loop of their own.

The SDK is async and Textual runs its own loop, so every MCP session lives on a dedicated daemon
thread's loop and the tool worker threads call into it with run_coroutine_threadsafe. Each server
has one owner task that enters the SDK's `Client` and stays inside it until the server is stopped
or dies: anyio wants a connection's cancel scopes entered and left by one task, and when a
transport fails it cancels exactly that task, which then fails the calls still waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import platformdirs

from .mcp_config import McpServerConfig

__all__ = ["McpLoop", "McpConnection", "McpServerError", "START_TIMEOUT_S"]

START_TIMEOUT_S = 30.0  # seconds a server has to start and list its tools
STOP_TIMEOUT_S = 6.0  # the SDK gives a stdio server 2 s after closing its stdin, then 2 s after SIGTERM
_CANCEL_POLL_S = 0.05  # how often a waiting call looks at its cancel event
_MAX_TOOL_PAGES = 20  # a server whose tools/list never ends cannot hang the start


class McpServerError(Exception):
    """A server could not start, or its connection failed during a call."""


class McpLoop:
    """One asyncio loop on a daemon thread, started on first use, for every MCP connection."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="mcp loop", daemon=True)
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call_soon(self, fn: Callable, *args: Any) -> None:
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(2.0)
        if not thread.is_alive():
            loop.close()


class McpConnection:
    """One configured server: started on first use (blocking the calling thread, never the UI),
    its tools listed once; `call` runs one tool on it. States: "not started", "running",
    "failed" (did not start: `error` says why) and "stopped" (died or was closed)."""

    def __init__(self, config: McpServerConfig, loop: McpLoop, *,
                 notify: Callable[[str], None] = lambda text: None, log_dir: Path | None = None) -> None:
        self.config = config
        self.state = "not started"
        self.error = ""
        self.tools: list[Any] = []  # mcp.types.Tool, as the server listed them
        self._loop = loop
        self._notify = notify
        self._log_dir = log_dir
        self._start_lock = threading.Lock()
        self._owner: concurrent.futures.Future | None = None
        self._stop: asyncio.Event | None = None
        self._stop_reason = ""
        self._client: Any = None
        self._task_group: Any = None
        self._calls: dict[concurrent.futures.Future, Any] = {}  # waiting calls -> their cancel scopes
        self._closing = False
        self._stopping = False  # the owner task has been told to stop (closed, or the server died)

    @property
    def log_file(self) -> Path:
        """Where a stdio server's stderr goes (the terminal belongs to the app)."""
        folder = self._log_dir or Path(platformdirs.user_log_dir("chatapp"))
        return folder / f"mcp-{self.config.name}.log"

    # ---- starting and stopping -------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Start the server and list its tools unless it runs already; True when it runs.
        Never raises: a failure is in `state`/`error` and is announced through `notify`."""
        with self._start_lock:
            if self.state == "running" and not self._stopping:
                return True
            if self._stopping and self._owner is not None:  # died in a call: let it wind down, then restart
                try:
                    self._owner.result(STOP_TIMEOUT_S)
                except Exception:
                    pass
            self._closing = False
            started: concurrent.futures.Future = concurrent.futures.Future()
            self._owner = self._loop.submit(self._own(started))
            try:
                started.result(timeout)
                return True
            except concurrent.futures.TimeoutError:
                self._owner.cancel()  # cancels the owner task, which stops the process
                why = f"it did not answer within {timeout:g} s of starting"
            except McpServerError as exc:
                why = str(exc)
            self.state, self.error = "failed", why
            self._notify(f"MCP server {self.config.name!r} could not start: {why}{self._log_hint()}")
            return False

    def close(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (its process too, for stdio); waits up to `timeout` seconds."""
        self._closing = True
        owner, stop = self._owner, self._stop
        if owner is None or owner.done():
            return
        if stop is not None:
            self._stopping = True
            self._loop.call_soon(stop.set)
        try:
            owner.result(timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            owner.cancel()

    async def _own(self, started: concurrent.futures.Future) -> None:
        """The owner task: connect, list the tools, then serve calls until told to stop or the
        connection fails; on the way out, fail every call still waiting."""
        import anyio
        from mcp import Client

        self._stop, self._stop_reason, self._stopping = asyncio.Event(), "", False
        reason = ""
        try:
            async with AsyncExitStack() as stack:
                transport = await self._transport(stack)
                client = await stack.enter_async_context(Client(transport))
                tools = await _list_tools(client)
                async with anyio.create_task_group() as task_group:
                    self._client, self._task_group, self.tools = client, task_group, tools
                    self.state, self.error = "running", ""
                    started.set_result(None)
                    await self._stop.wait()
                    task_group.cancel_scope.cancel()
        except BaseException as exc:  # noqa: BLE001 - the owner ends here; the reason goes to the waiters
            reason = describe(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            self._client = self._task_group = None
            reason = self._stop_reason or reason or "the connection ended"
            if not started.done():
                started.set_exception(McpServerError(reason))
            elif self.state == "running":
                self.state = "stopped"
                self.error = "" if self._closing else reason
                if not self._closing:
                    self._notify(f"MCP server {self.config.name!r} stopped: {reason}{self._log_hint()}")
            for call in list(self._calls):
                _settle(call, error=McpServerError(f"the MCP server {self.config.name!r} stopped during the call: "
                                                   f"{reason}"))
            self._calls.clear()

    async def _transport(self, stack: AsyncExitStack) -> Any:
        if self.config.command is not None:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            errlog = stack.enter_context(open(self.log_file, "w", encoding="utf-8", errors="replace"))
            params = StdioServerParameters(command=self.config.command, args=list(self.config.args),
                                           env=self.config.env or None, cwd=self.config.cwd)
            return stdio_client(params, errlog=errlog)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        # The SDK's own timeouts: 30 s to connect or send, 300 s to read (a call may stream a while).
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=self.config.headers, timeout=httpx2.Timeout(30.0, read=300.0)))
        return streamable_http_client(self.config.url, http_client=http)

    def _log_hint(self) -> str:
        if self.config.command is None:
            return ""
        try:
            lines = [line for line in self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
                     if line.strip()]
        except OSError:
            return ""
        return f" (its last error output: {lines[-1].strip()[:200]!r}; all of it in {self.log_file})" if lines else ""

    # ---- calls -----------------------------------------------------------------------------

    def call(self, tool: str, arguments: dict, timeout: float, *, cancel: threading.Event | None = None) -> Any:
        """Run one tool and return the SDK's CallToolResult; starts the server if it is not
        running. Raises McpServerError when it cannot start, dies, does not answer in time or
        `cancel` is set; the last two cancel the request, which tells the server."""
        if not self.start():
            raise McpServerError(f"the MCP server {self.config.name!r} is not running: {self.error}")
        if cancel is not None and cancel.is_set():  # cancelled while the server started
            raise McpServerError(f"the call to the MCP server {self.config.name!r} was cancelled")
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._loop.submit(self._spawn(tool, arguments, done))
        deadline = time.monotonic() + timeout
        while True:
            if cancel is not None and cancel.is_set():
                self._abandon(done, "the call was cancelled")
                raise McpServerError(f"the call to the MCP server {self.config.name!r} was cancelled")
            left = deadline - time.monotonic()
            if left <= 0:
                self._abandon(done, f"no answer within {timeout:g} s")
                raise McpServerError(f"the MCP server {self.config.name!r} did not answer within {timeout:g} s")
            try:
                # A threading.Event cannot be waited on together with a future: look every 50 ms.
                return done.result(min(left, _CANCEL_POLL_S))
            except concurrent.futures.TimeoutError:
                continue

    def _abandon(self, done: concurrent.futures.Future, why: str) -> None:
        """Give up on a call: settle it here, so that a call not yet sent is never sent, and cancel
        its scope on the loop, which makes the SDK send `notifications/cancelled` (over HTTP at
        the 2026 protocol: close the request's stream) and leaves the connection usable."""
        _settle(done, error=McpServerError(why))
        self._loop.call_soon(self._cancel_scope, done)

    def _cancel_scope(self, done: concurrent.futures.Future) -> None:
        scope = self._calls.get(done)  # None while the call's task has not started: it checks done
        if scope is not None:
            scope.cancel()

    async def _spawn(self, tool: str, arguments: dict, done: concurrent.futures.Future) -> None:
        if done.done():  # abandoned before it was sent
            return
        if self._task_group is None:
            _settle(done, error=McpServerError(f"the MCP server {self.config.name!r} stopped before the call"))
            return
        self._calls[done] = None
        self._task_group.start_soon(self._call, tool, arguments, done)

    async def _call(self, tool: str, arguments: dict, done: concurrent.futures.Future) -> None:
        import anyio
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        with anyio.CancelScope() as scope:
            self._calls[done] = scope
            if done.done():  # abandoned between _spawn and here: never send it
                scope.cancel()
            try:
                result = await self._client.call_tool(tool, arguments)
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED:  # a stdio server that exited: stop the connection
                    self._stop_reason = "the server closed the connection (it exited or crashed)"
                    _settle(done, error=McpServerError(f"the MCP server {self.config.name!r} stopped during the "
                                                       f"call: {self._stop_reason}"))
                    self._stopping = True
                    self._stop.set()
                else:
                    _settle(done, error=McpServerError(f"the MCP server {self.config.name!r} answered with an "
                                                       f"error: {exc.message}"))
            except Exception as exc:
                _settle(done, error=McpServerError(describe(exc)))
            else:
                _settle(done, result=result)
        if scope.cancelled_caught:
            _settle(done, error=McpServerError("the call was cancelled"))
        if done.done():
            self._calls.pop(done, None)


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _settle(future: concurrent.futures.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # settled by another task in between
        pass


def describe(exc: BaseException) -> str:
    """One line for an exception from the SDK: task groups wrap the real cause in groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, OSError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
