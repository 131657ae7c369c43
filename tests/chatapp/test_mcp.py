"""MCP servers as tools, through the real tool registry and runner: real MCPServer subprocesses
over stdio and over streamable HTTP on a loopback port, the approval hook, crashes and caps."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mcpservers import TOOLS, start_http_server, stdio_entry, stop, write_config, write_server

from chatapp.tools import ApprovalPolicy, FileAccess, ToolCall, ToolRegistry, ToolResult, ToolRunner, hookimpl
from chatapp.tools.mcp import MAX_MCP_RESULT_CHARS, McpTools, tool_name
from chatapp.tools.mcp_config import load_mcp_config


class Recorder:
    """Answers the approval dialog from a list and records the hooks the runner calls."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.asked: list[tuple[str, str]] = []  # (tool name, tool source)
        self.after: list[ToolResult] = []

    def ask(self, call, tool, after_tool_output=False) -> str:
        self.asked.append((call.name, tool.source))
        return self.answers.pop(0)

    @hookimpl
    def after_tool_call(self, call, result):
        self.after.append(result)


def make_registry(mcp: McpTools, recorder: Recorder) -> ToolRegistry:
    registry = ToolRegistry(FileAccess(), user_tools_file=None, entry_points=False)
    registry.register_plugin(mcp)
    registry.register_plugin(recorder)
    registry.register_plugin(ApprovalPolicy(recorder.ask, permanent_file=None))
    return registry


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(f"call-{name}", name, arguments, "")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One McpTools with a stdio server, an HTTP server, a command that does not exist and one that
    exits at once; started through the registry as the app starts them."""
    folder = tmp_path_factory.mktemp("mcp")
    server = write_server(folder)
    http, url = start_http_server(server, folder / "http.log")
    config = write_config(folder / "mcp.json", {
        "local": stdio_entry(server),
        "web": {"url": url, "headers": {"X-Test": "1"}},
        "missing": {"command": str(folder / "no-such-program")},
        "quits": {"command": sys.executable, "args": ["-c", "import sys; sys.stderr.write('boom: no token\\n'); sys.exit(1)"]},
    })
    notices: list[str] = []
    mcp = McpTools(load_mcp_config(config), notify=notices.append, log_dir=folder / "logs")
    recorder = Recorder()
    registry = make_registry(mcp, recorder)
    assert not any(name.startswith("local__") for name in registry.tools())  # nothing starts before it is needed
    registry.prepare()
    yield mcp, registry, recorder, notices, folder
    mcp.close()
    stop(http)


def test_the_tools_of_both_transports_are_listed_under_the_server_name(servers):
    mcp, registry, _, _, _ = servers
    for server in ("local", "web"):
        assert mcp.connections[server].state == "running"
        for tool in TOOLS:
            registered = registry.get(f"{server}__{tool}")
            assert registered is not None, sorted(registry.tools())
            assert registered.source == f"MCP server {server!r}" and not registered.safe
    add = registry.get("local__add")
    assert add.description == "Add two integers."
    assert add.parameters["properties"]["a"]["type"] == "integer" and add.parameters["required"] == ["a", "b"]
    assert {s["function"]["name"] for s in registry.schemas()} >= {"local__add", "web__huge"}


def test_a_server_that_never_starts_is_a_failed_state_and_a_notice(servers):
    mcp, registry, _, notices, _ = servers
    missing = mcp.connections["missing"]
    assert missing.state == "failed" and "No such file or directory" in missing.error
    quits = mcp.connections["quits"]
    assert quits.state == "failed"
    assert not any(name.startswith(("missing__", "quits__")) for name in registry.tools())
    assert any(n.startswith("MCP server 'missing' could not start") for n in notices), notices
    # The notice quotes the server's own last words (its stderr goes to a log file, not the terminal).
    assert any("'quits' could not start" in n and "boom: no token" in n for n in notices), notices


@pytest.mark.parametrize("server", ["local", "web"])
def test_an_approved_call_runs_on_the_server_and_the_hooks_see_it(servers, server):
    mcp, registry, recorder, _, folder = servers
    recorder.answers[:] = ["allow", "allow"]
    result = ToolRunner(registry).run(call(f"{server}__add", a=2, b=40))
    assert (result.content, result.is_error) == ("42", False)
    assert recorder.asked[-1] == (f"{server}__add", f"MCP server {server!r}")
    assert recorder.after[-1] == result
    target = folder / f"approved-{server}"
    assert ToolRunner(registry).run(call(f"{server}__touch", path=str(target))).content == f"created {target}"
    assert target.exists()


@pytest.mark.parametrize("server", ["local", "web"])
def test_a_denied_call_never_reaches_the_server(servers, server):
    mcp, registry, recorder, _, folder = servers
    recorder.answers[:] = ["deny"]
    target = folder / f"denied-{server}"
    result = ToolRunner(registry).run(call(f"{server}__touch", path=str(target)))
    assert result.denied and result.is_error and "denied" in result.content
    assert recorder.after[-1] == result
    time.sleep(0.5)
    assert not target.exists()


def test_bad_arguments_are_answered_before_the_server_is_asked(servers):
    _, registry, recorder, _, _ = servers
    recorder.answers[:] = ["allow"]
    result = ToolRunner(registry).run(call("local__add", a="two", b=2))
    assert result.is_error and "argument 'a' must be an integer" in result.content


@pytest.mark.parametrize("server", ["local", "web"])
def test_a_10_mb_result_is_cut_with_a_note(servers, server):
    _, registry, recorder, _, _ = servers
    recorder.answers[:] = ["allow"]
    result = ToolRunner(registry).run(call(f"{server}__huge"))
    assert not result.is_error
    assert result.content.startswith("x" * MAX_MCP_RESULT_CHARS)
    assert result.content.endswith(f"[cut: the MCP server {server!r} returned 10,000,000 characters; "
                                   f"only the first {MAX_MCP_RESULT_CHARS:,} are shown]")
    assert len(result.content) < ToolRunner(registry).max_result_chars  # one note: the runner's cap is not hit


def test_a_server_that_crashes_mid_call_gives_an_error_result_a_notice_and_restarts(tmp_path):
    server = write_server(tmp_path)
    http, url = start_http_server(server, tmp_path / "http.log")
    config = write_config(tmp_path / "mcp.json", {"local": stdio_entry(server), "web": {"url": url}})
    notices: list[str] = []
    mcp = McpTools(load_mcp_config(config), notify=notices.append, log_dir=tmp_path / "logs")
    recorder = Recorder()
    registry = make_registry(mcp, recorder)
    try:
        registry.prepare()
        runner = ToolRunner(registry, timeout=30)
        for name in ("local", "web"):
            recorder.answers[:] = ["allow"]
            result = runner.run(call(f"{name}__crash"))
            assert result.is_error and f"the MCP server {name!r} stopped during the call" in result.content, result
            deadline = time.monotonic() + 20
            while not any(n.startswith(f"MCP server {name!r} stopped") for n in notices):
                assert time.monotonic() < deadline, notices
                time.sleep(0.05)
        # A stdio server is started again on its next call; the HTTP one is gone for good.
        recorder.answers[:] = ["allow", "allow"]
        assert runner.run(call("local__add", a=1, b=1)).content == "2"
        gone = runner.run(call("web__add", a=1, b=1))
        assert gone.is_error and "MCP server 'web'" in gone.content
    finally:
        mcp.close()
        stop(http)
    assert mcp.connections["local"].state == "stopped"


def test_close_stops_stdio_server_processes(tmp_path):
    server = write_server(tmp_path)
    mcp = McpTools(load_mcp_config(write_config(tmp_path / "mcp.json", {"local": stdio_entry(server)})),
                   log_dir=tmp_path / "logs")
    assert mcp.start()
    children = _children_running(str(server))
    assert children, "the stdio server should be running"
    mcp.close()
    assert not _children_running(str(server))


def _children_running(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -ww" not in line]


def test_tool_names_are_namespaced_within_what_templates_allow():
    assert tool_name("files", "read_file") == "files__read_file"
    assert tool_name("files", "read.file v2") == "files__read_file_v2"
