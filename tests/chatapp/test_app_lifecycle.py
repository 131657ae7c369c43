"""The app's life around a reply: quitting mid-reply stops the work, a load that runs out of memory
leaves the model in use, and two instances on one history file stay out of each other's way."""

from __future__ import annotations

import asyncio
import time

from apphelpers import messages, send, wait_for
from scripted import ScriptedModel

from chatapp.app import ChatApp
from chatapp.store import Store

LONG = " ".join(f"word{i}" for i in range(400))


def test_ctrl_q_mid_reply_stops_generation_and_keeps_the_reply_as_stopped(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [LONG], delay=0.02)  # about 10 s to generate in full
    store = Store(tmp_path / "history.db")
    app = ChatApp(store=store, load_model=lambda name: model)
    state = {}

    async def main():
        async with app.run_test() as pilot:
            await send(pilot, "Talk for a long time")
            await wait_for(pilot, lambda: len(messages(app)) == 2 and len(messages(app)[1].content) > 20,
                           what="some streamed text")
            state["job"] = app.chat_screen.job
            state["conversation"] = app.chat_screen.conversation_id
            await pilot.press("ctrl+q")
            state["quit_at"] = time.monotonic()

    asyncio.run(main())
    job = state["job"]
    # The worker thread ends within a second or two of the quit, not when the reply would have.
    assert job.finished.wait(2.0), "generation went on after quitting"
    assert time.monotonic() - state["quit_at"] < 3.0
    reply = store.messages(state["conversation"])[1]
    assert reply.status == "stopped"
    assert 0 < len(reply.content) < len(LONG) and LONG.startswith(reply.content)


def test_a_switch_that_runs_out_of_memory_keeps_the_current_model(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["still here"])

    def load(name):
        if name == "huge":
            raise MemoryError("cannot allocate 80 GB")  # what torch or llama.cpp raise past the RAM
        return model

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=load)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is model, what="the first model")
            app.start_loading("huge")
            await wait_for(pilot, lambda: any("Could not switch to huge" in (n.title or "") for n in app._notifications),
                           what="the failed switch")
            assert app.is_running and app.model is model
            assert any("MemoryError: cannot allocate 80 GB" in n.message for n in app._notifications)
            await send(pilot, "Hello?")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2, what="the reply")
            assert messages(app)[1].content == "still here"

    asyncio.run(main())


def notices(app) -> str:
    return "\n".join(str(w.render()) for w in app.chat_screen.query(".notice"))


def test_a_second_instance_leaves_the_first_ones_live_reply_and_conversation_alone(tmp_path, default_gguf):
    from chatapp.presence import ConversationLocks

    path = tmp_path / "history.db"
    # The first instance, as it is mid-reply: its conversation claimed, its reply streaming.
    first = Store(path)
    live = first.create_conversation()
    first.add_message(live.id, "user", "first app's question")
    streaming = first.add_message(live.id, "assistant", "half an answ", status="streaming")
    first_locks = ConversationLocks(path)
    assert first_locks.claim(live.id)
    # A reply whose writer died: nobody holds its conversation.
    dead = first.create_conversation()
    first.add_message(dead.id, "user", "old question")
    cut = first.add_message(dead.id, "assistant", "cut o", status="streaming")
    first.update_message(streaming.id, content="half an answ")  # the live one is the most recent

    model = ScriptedModel(default_gguf, ["answer in the second app"])

    async def main():
        app = ChatApp(store=Store(path), load_model=lambda name: model)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            assert app.chat_screen.conversation_id == live.id
            by_id = {m.id: m for m in app.store.messages(live.id) + app.store.messages(dead.id)}
            assert by_id[streaming.id].status == "streaming"  # its writer is alive
            assert by_id[cut.id].status == "stopped"  # its writer is gone
            assert "open in another chatapp" in notices(app) and "read-only" in notices(app)

            await send(pilot, "written in the second app")
            await pilot.pause(0.2)
            assert [m.content for m in app.store.messages(live.id)] == ["first app's question", "half an answ"]
            assert app.query_one("#prompt").text == "written in the second app"  # kept, not sent
            assert app.chat_screen.job is None

            first_locks.release_all()  # the first app closed the conversation
            await send(pilot, "written in the second app")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(app.store.messages(live.id)) == 4,
                           what="the reply once the first app let go")
            assert app.store.messages(live.id)[-1].content == "answer in the second app"

    asyncio.run(main())
