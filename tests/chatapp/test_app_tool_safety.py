"""Tools that misbehave or are misused: a tool that never returns (timeout, Esc), approval per
argument for tools with side effects, calls that follow untrusted tool output, and links."""

from __future__ import annotations

import asyncio
import json
import threading

from apphelpers import messages, send, wait_for
from scripted import ScriptedModel

from chatapp.app import ChatApp
from chatapp.store import Store
from chatapp.tools import FileAccess, ToolRegistry, hookimpl


def tool_call(name: str, arguments: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


class Hanging:
    """A plugin whose tool never returns (until the test lets it go)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    def register_tools(self, register):
        def wait_forever(seconds: int) -> str:
            """Wait.

            Args:
                seconds: how long
            """
            self.release.wait(60)
            return "returned late"

        register(wait_forever, safe=True)


def hanging_app(tmp_path, model, **kw):
    registry = ToolRegistry(FileAccess(), user_tools_file=None, entry_points=False)
    plugin = Hanging()
    registry.register_plugin(plugin)
    return ChatApp(store=Store(tmp_path / "history.db"), load_model=lambda name: model, tool_registry=registry, **kw), plugin


def tool_results(app) -> list:
    return [m for m in messages(app) if m.role == "tool"]


def test_a_tool_that_never_returns_times_out(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [tool_call("wait_forever", {"seconds": 999}), "Gave up waiting."])

    async def main():
        app, plugin = hanging_app(tmp_path, model, tool_timeout=0.5)
        async with app.run_test() as pilot:
            await send(pilot, "wait")
            await wait_for(pilot, lambda: app.chat_screen.job is None, timeout=15, what="the timeout")
            (result,) = tool_results(app)
            assert "timed out after 0.5 s" in result.content and result.meta["is_error"]
            assert messages(app)[-1].content == "Gave up waiting."
        plugin.release.set()

    asyncio.run(main())


def test_escape_cancels_a_running_tool(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [tool_call("wait_forever", {"seconds": 999}), "never asked"])

    async def main():
        app, plugin = hanging_app(tmp_path, model)  # the default timeout: a minute
        async with app.run_test() as pilot:
            await send(pilot, "wait")
            await wait_for(pilot, lambda: any(t.name == "tool wait_forever" for t in threading.enumerate()),
                           what="the tool running")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.chat_screen.job is None, timeout=5, what="the cancel")
            (result,) = tool_results(app)
            assert "cancelled by the user" in result.content
            assert len(model.received) == 1  # stopped: the model is not asked again
        plugin.release.set()

    asyncio.run(main())
