"""The chat app when its history cannot be written: another process holds the SQLite write lock
past the busy timeout, or the disk is full. The app stays up, keeps what was typed and every
reply, says why, and writes it all once the file takes it again."""

from __future__ import annotations

import asyncio
import sqlite3

from apphelpers import messages, send, wait_for
from scripted import ScriptedModel

from chatapp.app import ChatApp
from chatapp.store import Store

LONG = " ".join(f"word{i}" for i in range(150))


def notices(app) -> str:
    return "\n".join(str(w.render()) for w in app.chat_screen.query(".notice"))


def locker(path):
    """A second connection, as another process would hold it: BEGIN IMMEDIATE takes the write lock."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")
    return db


def test_send_while_another_process_holds_the_write_lock(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["Hello after the lock."])
    path = tmp_path / "history.db"

    async def main():
        app = ChatApp(store=Store(path, busy_timeout=0.1), load_model=lambda name: model)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            other = locker(path)
            await send(pilot, "typed while locked")
            await wait_for(pilot, lambda: "could not be saved" in notices(app), timeout=10, what="the notice")
            assert app.is_running
            assert app.query_one("#prompt").text == "typed while locked"  # nothing typed is lost
            assert "locked by another process" in notices(app)
            other.execute("COMMIT")
            other.close()
            # The retry (after a short backoff) sends it without another key press.
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2
                           and messages(app)[1].status == "complete", timeout=15, what="the retried send")
            user, reply = messages(app)
            assert (user.content, reply.content) == ("typed while locked", "Hello after the lock.")
            assert app.query_one("#prompt").text == ""

    asyncio.run(main())


def test_reply_finishing_while_locked_is_kept_and_saved_later(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [LONG], delay=0.01)
    path = tmp_path / "history.db"

    async def main():
        app = ChatApp(store=Store(path, busy_timeout=0.1), load_model=lambda name: model)
        async with app.run_test() as pilot:
            await send(pilot, "Talk")
            await wait_for(pilot, lambda: len(messages(app)) == 2 and len(messages(app)[1].content) > 10,
                           what="streamed text")
            other = locker(path)  # taken mid-reply: the streaming saves and the final write fail
            await wait_for(pilot, lambda: app.chat_screen.job is None, timeout=30, what="the end of the reply")
            assert app.is_running
            assert "kept in memory" in notices(app)
            assert messages(app)[1].status == "streaming"  # not written yet
            other.execute("COMMIT")
            other.close()
            await wait_for(pilot, lambda: messages(app)[1].status == "complete", timeout=15, what="the kept reply saved")
            assert messages(app)[1].content == LONG
            # The notice is posted from the worker thread once the rows are in: it reaches the
            # screen a frame or two after the store has them.
            await wait_for(pilot, lambda: "everything kept in memory is saved" in notices(app), timeout=5,
                           what="the saved notice")

    asyncio.run(main())


def test_disk_full_on_send_keeps_the_message_and_retries(tmp_path, default_gguf, monkeypatch):
    model = ScriptedModel(default_gguf, ["Saved at last."])

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=lambda name: model)
        real_add = app.store.add_message
        full = {"on": True}

        def add_message(*args, **kwargs):
            if full["on"]:
                raise sqlite3.OperationalError("database or disk is full")
            return real_add(*args, **kwargs)

        monkeypatch.setattr(app.store, "add_message", add_message)
        async with app.run_test() as pilot:
            await send(pilot, "my long careful message")
            await wait_for(pilot, lambda: "disk is full" in notices(app), timeout=10, what="the notice")
            assert app.is_running
            assert app.query_one("#prompt").text == "my long careful message"
            full["on"] = False  # space freed: the next automatic try goes through
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2
                           and messages(app)[1].status == "complete", timeout=15, what="the send")
            assert [m.content for m in messages(app)] == ["my long careful message", "Saved at last."]

    asyncio.run(main())


def test_actions_on_a_locked_history_say_so_and_keep_the_app_up(tmp_path, default_gguf):
    """Regenerate, rename and delete write from the UI thread: with the file locked they wait a
    moment, not the full busy timeout, and fail with a notice instead of taking the app down."""
    model = ScriptedModel(default_gguf, ["First answer.", "Second answer."])
    path = tmp_path / "history.db"

    async def main():
        app = ChatApp(store=Store(path, busy_timeout=5.0), load_model=lambda name: model)
        async with app.run_test() as pilot:
            await send(pilot, "Hello")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2, what="the reply")
            other = locker(path)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await pilot.press("ctrl+r")
            frozen = loop.time() - started
            await wait_for(pilot, lambda: "could not regenerate" in notices(app).lower(), timeout=10, what="the notice")
            assert app.is_running and app.chat_screen.job is None
            assert frozen < 2.0, f"the UI waited {frozen:.1f} s on the locked file"
            app.chat_screen.rename_to("New title")
            await wait_for(pilot, lambda: "could not rename" in notices(app).lower(), timeout=10, what="the rename notice")
            assert app.is_running
            other.execute("COMMIT")
            other.close()
            await pilot.press("ctrl+r")  # the file is free again: the same key works
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].content == "Second answer.",
                           timeout=15, what="the regenerated reply")
            app.chat_screen.rename_to("New title")
            await pilot.pause()
            assert app.store.get_conversation(app.chat_screen.conversation_id).title == "New title"

    asyncio.run(main())


def test_an_edit_the_locked_history_cannot_take_comes_back_in_the_editor(tmp_path, default_gguf):
    from textual.widgets import TextArea

    from chatapp.screens.dialogs import TextPromptScreen

    model = ScriptedModel(default_gguf, ["First answer.", "Answer to the edit."])
    path = tmp_path / "history.db"

    async def main():
        app = ChatApp(store=Store(path, busy_timeout=5.0), load_model=lambda name: model)
        async with app.run_test() as pilot:
            await send(pilot, "Hello")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2, what="the reply")
            other = locker(path)
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the editor")
            app.screen.query_one("#value", TextArea).text = "Hello, edited with care"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: "could not resend the edited message" in notices(app).lower(),
                           timeout=10, what="the notice")
            await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the editor again")
            assert app.screen.query_one("#value", TextArea).text == "Hello, edited with care"
            assert [m.content for m in messages(app)] == ["Hello", "First answer."]  # nothing changed
            other.execute("COMMIT")
            other.close()
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2
                           and messages(app)[1].content == "Answer to the edit.", timeout=15, what="the resent turn")
            assert messages(app)[0].content == "Hello, edited with care"

    asyncio.run(main())
