"""Snapshot tests of the main screen, the approval modal and the help screen (pytest-textual-snapshot).

Update after an intended UI change with: python -m pytest tests/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from chatapp.app import ChatApp
from chatapp.screens.approval import ApprovalScreen
from chatapp.store import Store
from scripted import ScriptedModel

SIZE = (110, 32)


@pytest.fixture
def app(tmp_path, default_gguf):
    store = Store(tmp_path / "history.db")
    store.add_message(store.create_conversation().id, "user", "An older question about the weather")
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "How do I reverse a list in Python?")
    store.add_message(
        conv.id,
        "assistant",
        "Use slicing or `reversed`:\n\n```python\nitems = [1, 2, 3]\nprint(items[::-1])\n```\n\n"
        "- `items[::-1]` makes a copy\n- `items.reverse()` works in place",
        meta={"completion_tokens": 42, "tokens_per_second": 30.0},
    )
    return ChatApp(store=store, load_model=lambda name: ScriptedModel(default_gguf, []))


async def ready(pilot) -> None:
    app = pilot.app
    while not app.query("StatusBar"):  # the chat screen composes after the auto-pilot starts
        await pilot.pause(0.05)
    status = app.query_one("StatusBar")
    # Ready, and the reopened conversation's context counted (it arrives from a worker).
    while not app.model_ready.is_set() or status.state != "ready" or status.context_used is None:
        await pilot.pause(0.05)
    # A blinking cursor is drawn or not depending on when the screenshot lands (a slow CI machine
    # caught it off): hold it on, as the stored snapshots show it.
    for field in app.query("Input, TextArea"):
        field.cursor_blink = False
    await pilot.pause()


def test_main_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_help_screen(snap_compare, app):
    async def open_help(pilot):
        await ready(pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_help)


def test_approval_modal(snap_compare, app):
    async def ask(pilot):
        await ready(pilot)
        pilot.app.push_screen(ApprovalScreen("read_file", {"path": "notes/todo.txt", "max_bytes": 4096},
                                             "Read a text file under the allowed folders.", side_effects=False))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=ask)


@pytest.fixture
def thinking_app(tmp_path, default_gguf):
    store = Store(tmp_path / "history.db")
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "What is 17 * 3?")
    reply = store.add_message(conv.id, "assistant", "", status="streaming")
    store.update_message(reply.id, content="17 * 3 = **51**.", status="complete",
                         reasoning="17 * 3 is 10 * 3 plus 7 * 3.\n30 + 21 = 51.",
                         meta={"completion_tokens": 40, "tokens_per_second": 30.0,
                               "reasoning_tokens": 28, "reasoning_seconds": 0.9})
    return ChatApp(store=store, load_model=lambda name: ScriptedModel(default_gguf, []))


def test_thinking_block_folded(snap_compare, thinking_app):
    assert snap_compare(thinking_app, terminal_size=SIZE, run_before=ready)


def test_thinking_block_expanded(snap_compare, thinking_app):
    async def expand(pilot):
        await ready(pilot)
        pilot.app.query_one(".thinking").collapsed = False
        await pilot.pause()

    assert snap_compare(thinking_app, terminal_size=SIZE, run_before=expand)


def test_approval_modal_for_a_tool_with_side_effects_after_tool_output(snap_compare, app):
    async def ask(pilot):
        await ready(pilot)
        pilot.app.push_screen(ApprovalScreen("append_line", {"name": "todo.txt", "line": "buy milk"},
                                             "Append a line to a note.", after_tool_output=True))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=ask)


def test_help_screen_plugins_tab(snap_compare, app):
    async def open_plugins(pilot):
        await ready(pilot)
        await pilot.press("f1")
        await pilot.pause()
        await pilot.press("p")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_plugins)
