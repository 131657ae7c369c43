"""Esc and the timeout stop the work, not only the wait: a Python tool that takes `cancel` sees
the event, an async tool's task is cancelled, a real MCP server (stdio and streamable HTTP) gets
notifications/cancelled and its connection serves the next call; other tools are answered at once."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from mcpservers import start_http_server, stdio_entry, stop, write_config, write_server

from chatapp.tools import FileAccess, ToolCall, ToolRegistry, ToolRunner, hookimpl
from chatapp.tools.mcp import McpTools
from chatapp.tools.mcp_config import load_mcp_config
from chatapp.tools.tool import ToolExecutionError


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(f"call-{name}", name, arguments, "")


def wait_until(predicate, timeout: float, what: str) -> float:
    """Seconds it took for `predicate()` to hold; fails the test after `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - start


def run_cancelled_when(runner: ToolRunner, tool_call: ToolCall, ready) -> tuple:
    """Run the call and set its cancel event (Esc) once `ready()`; (result, seconds from Esc to answer)."""
    cancel = threading.Event()
    pressed: list[float] = []

    def press_escape() -> None:
        wait_until(ready, 30, "the tool starting")
        pressed.append(time.monotonic())
        cancel.set()

    threading.Thread(target=press_escape, daemon=True).start()
    result = runner.run(tool_call, cancel)
    return result, time.monotonic() - pressed[0]


# ---- typed Python tools ---------------------------------------------------------------------


class Tools:
    """One tool of each kind; each records what it saw."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()  # the tool's own code saw the cancellation and returned
        self.release = threading.Event()  # lets the tool that cannot be told finish

    @hookimpl
    def register_tools(self, register):
        tools = self

        def count(limit: int, cancel: threading.Event) -> str:
            """Count slowly.

            Args:
                limit: where to stop
            """
            tools.started.set()
            ticks = 0
            while ticks < limit and not cancel.wait(0.01):
                ticks += 1
            if cancel.is_set():
                tools.stopped.set()
            return f"counted to {ticks}"

        async def pause(seconds: float) -> str:
            """Wait without blocking.

            Args:
                seconds: how long
            """
            tools.started.set()
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                tools.stopped.set()
                raise
            return f"paused {seconds:g} s"

        def block(seconds: float) -> str:
            """Block the thread.

            Args:
                seconds: how long
            """
            tools.started.set()
            tools.release.wait(seconds)
            return "returned late"

        for fn in (count, pause, block):
            register(fn, safe=True)


@pytest.fixture
def tools():
    plugin = Tools()
    registry = ToolRegistry(FileAccess(), user_tools_file=None, entry_points=False)
    registry.register_plugin(plugin)
    yield registry, plugin
    plugin.release.set()


def test_the_cancel_parameter_is_not_in_the_schema_and_the_model_cannot_set_it(tools):
    registry, _ = tools
    count = registry.get("count")
    assert count.cancel_parameter == "cancel"
    assert list(count.parameters["properties"]) == ["limit"] and count.parameters["required"] == ["limit"]
    assert ToolRunner(registry).run(call("count", limit=3)).content == "counted to 3"
    refused = ToolRunner(registry).run(call("count", limit=3, cancel=True))
    assert refused.is_error and "unknown argument 'cancel'" in refused.content


def test_escape_stops_a_tool_that_takes_cancel(tools):
    registry, plugin = tools
    result, answered = run_cancelled_when(ToolRunner(registry), call("count", limit=10_000), plugin.started.is_set)
    assert result.is_error and "cancelled by the user" in result.content and answered < 3
    assert plugin.stopped.wait(2), "the tool's loop never saw the cancel event"


def test_the_timeout_stops_a_tool_that_takes_cancel(tools):
    registry, plugin = tools
    result = ToolRunner(registry, timeout=0.3).run(call("count", limit=10_000))
    assert "timed out after 0.3 s" in result.content
    assert plugin.stopped.wait(2), "the tool's loop never saw the cancel event"


def test_an_async_tool_runs_and_escape_cancels_its_task(tools):
    registry, plugin = tools
    assert ToolRunner(registry).run(call("pause", seconds=0.01)).content == "paused 0.01 s"
    plugin.started.clear()
    result, answered = run_cancelled_when(ToolRunner(registry), call("pause", seconds=60), plugin.started.is_set)
    assert "cancelled by the user" in result.content and answered < 3
    assert plugin.stopped.wait(2), "the async tool's task was not cancelled"


def test_the_timeout_cancels_an_async_tool(tools):
    registry, plugin = tools
    result = ToolRunner(registry, timeout=0.3).run(call("pause", seconds=60))
    assert "timed out after 0.3 s" in result.content
    assert plugin.stopped.wait(2), "the async tool's task was not cancelled"


def test_a_tool_that_cannot_be_told_is_still_answered_at_once_and_runs_on(tools):
    registry, plugin = tools
    result, answered = run_cancelled_when(ToolRunner(registry), call("block", seconds=60), plugin.started.is_set)
    assert "cancelled by the user" in result.content and answered < 3
    time.sleep(0.2)
    assert any(t.name == "tool block" for t in threading.enumerate())  # Python cannot stop it
    plugin.release.set()


# ---- MCP servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mcp(tmp_path_factory):
    """A stdio and a streamable-HTTP server behind one McpTools, whose own call timeout (a
    minute) is far longer than any test waits: only the runner's cancel can stop a call early."""
    folder = tmp_path_factory.mktemp("mcp-cancel")
    server = write_server(folder)
    http, url = start_http_server(server, folder / "http.log")
    config = write_config(folder / "mcp.json", {"local": stdio_entry(server), "web": {"url": url}})
    tools = McpTools(load_mcp_config(config), log_dir=folder / "logs")
    registry = ToolRegistry(FileAccess(), user_tools_file=None, entry_points=False)
    registry.register_plugin(tools)
    registry.prepare()
    yield tools, registry, folder
    tools.close()
    stop(http)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("server", ["local", "web"])
def test_escape_on_an_mcp_call_cancels_it_on_the_server_and_the_connection_goes_on(mcp, server):
    tools, registry, folder = mcp
    record = folder / f"escape-{server}.txt"
    result, answered = run_cancelled_when(ToolRunner(registry), call(f"{server}__sleepy", seconds=30, record=str(record)),
                                          lambda: read(record) == "started")
    assert result.is_error and "cancelled by the user" in result.content and answered < 3
    wait_until(lambda: read(record) == "cancelled", 10, "the server seeing notifications/cancelled")
    assert tools.connections[server].state == "running"
    assert ToolRunner(registry).run(call(f"{server}__add", a=2, b=3)).content == "5"


@pytest.mark.parametrize("server", ["local", "web"])
def test_a_timed_out_mcp_call_is_cancelled_on_the_server(mcp, server):
    tools, registry, folder = mcp
    record = folder / f"timeout-{server}.txt"
    result = ToolRunner(registry, timeout=1).run(call(f"{server}__sleepy", seconds=30, record=str(record)))
    assert "timed out after 1 s" in result.content
    wait_until(lambda: read(record) == "cancelled", 10, "the server seeing notifications/cancelled")
    assert tools.connections[server].state == "running"
    assert ToolRunner(registry).run(call(f"{server}__add", a=1, b=1)).content == "2"


def test_a_call_cancelled_before_it_is_sent_never_reaches_the_server(mcp):
    _, registry, folder = mcp
    record = folder / "never.txt"
    cancel = threading.Event()
    cancel.set()
    tool = registry.get("local__sleepy")
    with pytest.raises(ToolExecutionError, match="was cancelled"):
        tool.invoke({"seconds": 30, "record": str(record)}, cancel=cancel)
    time.sleep(0.5)
    assert not record.exists()


def test_server_arguments_named_like_the_clients_own_reach_the_server(mcp):
    _, registry, _ = mcp
    tool = registry.get("local__named")
    assert tool.cancel_parameter == "_cancel" and set(tool.parameters["properties"]) == {"tool", "cancel"}
    result = ToolRunner(registry).run(call("local__named", tool="x", cancel="y"))
    assert (result.content, result.is_error) == ("tool=x cancel=y", False)
