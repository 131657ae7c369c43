"""Plugins never load unseen: the help screen lists what was loaded and from where, and
`chatapp --no-plugins` (or CHATAPP_NO_PLUGINS=1) starts without installed plugins and tools.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import platformdirs
import pytest
from apphelpers import wait_for

from chatapp.cli import build_parser, tui_app
from chatapp.screens.help import PLUGINS_OFF, HelpScreen
from chatapp.store import Store
from chatapp.tools import FileAccess, ToolRegistry

TOOLS_PY = '''
from chatapp.tools import hookimpl


def shout(text: str) -> str:
    """Shout.

    Args:
        text: what to shout
    """
    return text.upper()


@hookimpl
def register_tools(register):
    register(shout)


@hookimpl
def after_tool_call(call, result):
    return None
'''


def write_user_tools() -> Path:
    path = Path(platformdirs.user_config_dir("chatapp")) / "tools.py"  # under the test's XDG_CONFIG_HOME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TOOLS_PY)
    return path


def test_loaded_plugins_say_where_each_came_from_and_what_it_added(tmp_path):
    path = write_user_tools()
    registry = ToolRegistry(FileAccess([tmp_path]), entry_points=False)
    plugins = {p.name: p for p in registry.loaded_plugins()}
    user = plugins["tools.py"]
    assert user.origin == str(path) and not user.builtin
    assert user.tools == ("shout",) and set(user.hooks) == {"register_tools", "after_tool_call"}
    assert plugins["builtin"].builtin and plugins["builtin"].tools == ("calculator", "current_datetime")
    assert plugins["file_access"].tools == ("list_files", "read_file")


@pytest.mark.parametrize("env, loaded", [(None, True), ("0", True), ("1", False), ("yes", False)])
def test_no_plugins_by_argument_or_environment(tmp_path, monkeypatch, env, loaded):
    write_user_tools()
    if env is not None:
        monkeypatch.setenv("CHATAPP_NO_PLUGINS", env)
    registry = ToolRegistry(FileAccess([tmp_path]), entry_points=False)
    assert (registry.get("shout") is not None) == loaded and registry.plugins_enabled == loaded
    off = ToolRegistry(FileAccess([tmp_path]), plugins=False)
    assert off.get("shout") is None and [p.name for p in off.loaded_plugins()] == ["builtin", "file_access"]


def plugin_rows(screen: HelpScreen) -> list[list[str]]:
    table = screen.query_one("#plugins-table")
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def open_plugins_tab(pilot) -> HelpScreen:
    app = pilot.app
    await pilot.press("f1")
    await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
    await pilot.press("p")
    await pilot.pause()
    assert app.screen.query_one("#help-tabs").active == "plugins"
    return app.screen


def run_cli_app(tmp_path, argv: list[str], check) -> None:
    args = build_parser().parse_args([*argv, "--db", str(tmp_path / "history.db")])

    async def main():
        with Store(args.db) as store:
            app = tui_app(args, store)  # what `chatapp` runs, with the real default model
            async with app.run_test(size=(110, 32)) as pilot:
                await wait_for(pilot, lambda: app.chat_screen is not None and app.chat_screen.is_mounted,
                               what="the chat screen")
                notices = [n.message for n in app._notifications]  # the help screen hides them
                await check(app, await open_plugins_tab(pilot), notices)
                await wait_for(pilot, app.model_ready.is_set, what="the model load to end")

    asyncio.run(main())


def test_the_help_screen_lists_a_plugin_loaded_from_tools_py(tmp_path):
    path = write_user_tools()

    async def check(app, screen, notices):
        rows = plugin_rows(screen)
        assert ["tools.py", str(path), "shout", "after_tool_call, register_tools"] in rows
        assert screen.query_one("#plugins-table").row_count == 5  # builtin, file_access, ApprovalPolicy, McpTools
        assert any(f"tools.py ({path})" in m and "--no-plugins" in m for m in notices)

    run_cli_app(tmp_path, [], check)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_plugins_starts_without_tools_py(tmp_path, monkeypatch, how):
    write_user_tools()
    if how == "env":
        monkeypatch.setenv("CHATAPP_NO_PLUGINS", "1")

    async def check(app, screen, notices):
        assert [row[0] for row in plugin_rows(screen)] == ["builtin", "file_access", "ApprovalPolicy", "McpTools"]
        assert str(screen.query_one("#plugins-note").render()) == PLUGINS_OFF
        assert app.tool_registry.get("shout") is None
        assert not [n for n in notices if "plugins loaded" in n]

    run_cli_app(tmp_path, ["--no-plugins"] if how == "flag" else [], check)
