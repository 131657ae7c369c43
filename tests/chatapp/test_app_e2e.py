"""The main flows end to end on the real default model, native engine (slow: run in CI too)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from textual.widgets import Markdown

from apphelpers import messages, send, wait_for
from chatapp.app import ChatApp
from chatapp.store import Store
from chatapp.messages import ReplyDelta

pytestmark = pytest.mark.slow

SHORT = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 24}


def app_on(path, model) -> ChatApp:
    return ChatApp(store=Store(path), load_model=lambda name: model)


def test_real_model_streams_then_stops_then_history_survives_restart(tmp_path, default_model):
    db = tmp_path / "history.db"
    with Store(db) as store:
        store.create_conversation(settings=SHORT)

    async def chat():
        app = app_on(db, default_model)
        deltas = []
        hook = lambda message: deltas.append(message.text) if isinstance(message, ReplyDelta) else None
        async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
            await send(pilot, "Write two sentences about the sea.")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2, what="the first reply")
            first = messages(app)[-1]
            assert first.role == "assistant" and first.status == "complete" and first.content.strip()
            # Streamed: several UI updates, which together are the whole reply, shown as Markdown.
            assert len(deltas) >= 3 and "".join(deltas) == first.content
            assert app.chat_screen.views[first.id].query_one(Markdown).source == first.content
            assert app.query_one("StatusBar").tokens_per_second > 0

            # Now a long answer, stopped after a few tokens.
            app.store.update_conversation(app.chat_screen.conversation_id, settings={**SHORT, "max_tokens": 400})
            await send(pilot, "Write a long story about a dragon who learns to cook.")
            await wait_for(pilot, lambda: len(messages(app)) == 4 and len(messages(app)[-1].content) > 10, what="streaming")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.chat_screen.job is None, what="stop")
            stopped = messages(app)[-1]
            assert stopped.status == "stopped" and stopped.meta.get("completion_tokens", 0) < 400
            contents = [m.content for m in messages(app)]
        app.store.close()
        return contents

    before = asyncio.run(chat())

    async def reopen():
        app = app_on(db, default_model)
        async with app.run_test() as pilot:
            await pilot.pause()
            assert [m.content for m in messages(app)] == before
            assert messages(app)[-1].status == "stopped"
            await pilot.press("f8")
            await pilot.press("y")
            await pilot.pause()
            assert app.store.list_conversations() == []

    asyncio.run(reopen())


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import engine
    from chatapp.app import ChatApp
    from chatapp.store import Store

    db = Path(sys.argv[1])
    model = engine.load("smollm2-135m", backend="native", device="cpu", dtype="float32")
    store = Store(db)
    store.create_conversation(settings={"temperature": 0.0, "max_tokens": 2000})  # greedy: about 570 tokens on any CPU

    async def main():
        app = ChatApp(store=store, load_model=lambda name: model)
        async with app.run_test() as pilot:
            prompt = app.query_one("#prompt")
            prompt.text = "Write a very long story about the sea."
            await pilot.press("enter")
            while True:
                await pilot.pause(0.1)

    asyncio.run(main())
    """
)


def test_killing_the_app_mid_reply_loses_at_most_a_moment(tmp_path, default_gguf):
    db = tmp_path / "history.db"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(db)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        partial = ""
        while time.monotonic() < deadline and len(partial) < 40:
            time.sleep(0.2)
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as db_conn:
                        row = db_conn.execute("SELECT content FROM messages WHERE role = 'assistant'").fetchone()
                except sqlite3.OperationalError:
                    row = None
                partial = row[0] if row else ""
        assert len(partial) >= 40, "the reply never streamed into the database"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store(db) as store:
        (conv,) = store.list_conversations()
        user, reply = store.messages(conv.id)
        assert user.content == "Write a very long story about the sea."
        assert reply.status == "streaming" and len(reply.content) >= len(partial)
        assert store.recover_interrupted() == 1
        assert store.messages(conv.id)[1].status == "stopped"


def test_app_paints_before_torch_is_imported(tmp_path):
    code = textwrap.dedent(
        f"""
        import asyncio, sys, threading
        from chatapp.app import ChatApp
        from chatapp.store import Store
        gate = threading.Event()
        def slow_load(name):
            gate.wait(30)
            import engine
            return engine.load(name)
        async def main():
            app = ChatApp(store=Store({str(tmp_path / 'h.db')!r}), load_model=slow_load)
            async with app.run_test() as pilot:
                await pilot.pause()
                assert app.query_one("#prompt").has_focus
                assert "torch" not in sys.modules, "torch imported before the first paint"
                print("painted without torch;", app.query_one("StatusBar").state)
                gate.set()
        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "painted without torch; loading…" in out.stdout
