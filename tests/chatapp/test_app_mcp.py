"""MCP tools in the TUI: a scripted model calls a real stdio MCP server's tool, the approval
dialog names the server, the result comes back inert; bad config and dead servers are notices."""

from __future__ import annotations

import asyncio
import json

from apphelpers import make_app, messages, send, wait_for
from mcpservers import stdio_entry, write_config, write_server
from scripted import ScriptedModel
from test_mcp import _children_running

from chatapp.screens.approval import ApprovalScreen


def tool_call(name: str, arguments: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def test_a_model_calls_an_mcp_tool_after_approval_naming_the_server(tmp_path, default_gguf):
    server = write_server(tmp_path)
    config = write_config(tmp_path / "mcp.json", {
        "local": stdio_entry(server),
        "missing": {"command": str(tmp_path / "no-such-program")},
        "broken": {"url": 5},
    })
    model = ScriptedModel(default_gguf, [tool_call("local__add", {"a": 2, "b": 40}), "The sum is 42."])

    async def main():
        app = make_app(tmp_path, model, mcp_config=config)
        async with app.run_test(size=(100, 40)) as pilot:
            # The malformed entry is said once at start; the app and the other servers carry on.
            assert any("MCP server 'broken': 'url' must be" in n.message for n in app._notifications)
            await send(pilot, "add 2 and 40")
            await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen), what="the approval dialog")
            assert str(app.screen.query_one("#tool-source").render()) == "from the MCP server 'local'"
            await pilot.press("a")
            await wait_for(pilot, lambda: app.chat_screen.job is None, what="the reply")
            tool = [m for m in messages(app) if m.role == "tool"]
            assert [(m.name, m.content, m.meta["is_error"]) for m in tool] == [("local__add", "42", False)]
            assert messages(app)[-1].content == "The sum is 42."
            assert any("MCP server 'missing' could not start: [Errno 2] No such file or directory" in n.message
                       for n in app._notifications)
            assert _children_running(str(server))
        assert not _children_running(str(server))  # the app stopped its server on exit

    asyncio.run(main())


def test_mcp_tool_output_is_shown_inert(tmp_path, default_gguf):
    server = write_server(tmp_path)
    config = write_config(tmp_path / "mcp.json", {"local": stdio_entry(server)})
    model = ScriptedModel(default_gguf, [tool_call("local__escape", {}), "Done."])

    async def main():
        app = make_app(tmp_path, model, mcp_config=config)
        async with app.run_test(size=(100, 40)) as pilot:
            await send(pilot, "run it")
            await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen), what="the approval dialog")
            await pilot.press("s")
            await wait_for(pilot, lambda: app.chat_screen.job is None, what="the reply")
            (result,) = [m for m in messages(app) if m.role == "tool"]
            assert result.content == "\x1b[2J\x1b]0;pwned\x07red"  # stored as the server said it
            shown = "\n".join(str(w.render()) for w in app.chat_screen.query(".tool-result"))
            assert "␛[2J␛]0;pwned␇red" in shown and "\x1b" not in shown

    asyncio.run(main())


def test_escape_during_an_mcp_call_cancels_it_on_the_server(tmp_path, default_gguf):
    server = write_server(tmp_path)
    config = write_config(tmp_path / "mcp.json", {"local": stdio_entry(server)})
    record = tmp_path / "sleepy.txt"
    model = ScriptedModel(default_gguf, [tool_call("local__sleepy", {"seconds": 30, "record": str(record)}),
                                         "never asked"])

    def said() -> str:
        return record.read_text() if record.exists() else ""

    async def main():
        app = make_app(tmp_path, model, mcp_config=config)
        async with app.run_test(size=(100, 40)) as pilot:
            await send(pilot, "sleep")
            await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen), what="the approval dialog")
            await pilot.press("a")
            await wait_for(pilot, lambda: said() == "started", timeout=15, what="the server running the tool")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.chat_screen.job is None, timeout=10, what="the cancel")
            (result,) = [m for m in messages(app) if m.role == "tool"]
            assert "cancelled by the user" in result.content
            await wait_for(pilot, lambda: said() == "cancelled", timeout=10, what="the server seeing the cancel")

    asyncio.run(main())
