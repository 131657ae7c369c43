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


def test_links_in_a_reply_show_their_target_and_ask_and_other_schemes_are_refused(tmp_path, default_gguf, monkeypatch):
    from textual.widgets._markdown import MarkdownParagraph

    from chatapp.screens.dialogs import ConfirmScreen

    # markdown-it already makes no link of file: and javascript: targets; other schemes it keeps.
    reply = ("[docs](file:///etc/passwd)\n\n[x](javascript:alert(1))\n\n[https://example.com](vscode://file/etc/passwd)"
             "\n\n[the site](https://example.com/page)")
    model = ScriptedModel(default_gguf, [reply])
    opened = []

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=lambda name: model)
        monkeypatch.setattr(app, "open_url", lambda url, **kw: opened.append(url))  # no browser in a test
        async with app.run_test(size=(100, 40)) as pilot:
            await send(pilot, "links please")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2, what="the reply")
            await pilot.pause(0.2)
            view = app.chat_screen.views[messages(app)[1].id]
            paragraphs = list(view.query(MarkdownParagraph))
            assert len(paragraphs) == 4
            for paragraph in paragraphs[:3]:  # file:, javascript:, and a custom scheme dressed as https
                await pilot.click(paragraph, offset=(1, 0))
                await pilot.pause(0.1)
                assert not isinstance(app.screen, ConfirmScreen)
            refused = [n.message for n in app._notifications]
            assert any("Not opened: vscode://file/etc/passwd" in m for m in refused)
            assert opened == []

            await pilot.click(paragraphs[3], offset=(1, 0))
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "https://example.com/page" in app.screen.question  # the real target, not the text
            assert opened == []
            await pilot.press("y")
            await wait_for(pilot, lambda: opened == ["https://example.com/page"], what="the link opened")

    asyncio.run(main())
