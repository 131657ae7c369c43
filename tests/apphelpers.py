"""Driving the real ChatApp under Textual's Pilot."""

from __future__ import annotations

import time

from chatapp.app import ChatApp
from chatapp.store import Store


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def send(pilot, text: str) -> None:
    app = pilot.app
    prompt = app.query_one("#prompt")
    prompt.focus()
    prompt.text = text
    await pilot.press("enter")


def make_app(tmp_path, model, **kw) -> ChatApp:
    store = Store(tmp_path / "history.db")
    return ChatApp(store=store, load_model=lambda name: model, **kw)


def messages(app) -> list:
    return app.store.messages(app.chat_screen.conversation_id) if app.chat_screen.conversation_id else []
