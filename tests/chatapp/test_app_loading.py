"""The model arrives by message (issue 14): a turn sent before the first load has finished waits
for it and is then answered, or told why not; the job samples with the model's defaults under the
conversation's settings."""

from __future__ import annotations

import asyncio
import threading

from apphelpers import messages, send, wait_for
from scripted import ScriptedModel
from textual.widgets import Static

from chatapp.app import ChatApp
from chatapp.store import Store
from chatapp.widgets.status import StatusBar
from engine.errors import ModelNotFoundError


def status_text(app) -> str:
    return str(app.query_one(StatusBar).render())


def notices(app) -> list[str]:
    return [str(n.render()) for n in app.query(".notice").results(Static)]


def test_a_turn_sent_while_the_first_model_loads_is_answered_once_it_has(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["hello back"])
    gate = threading.Event()

    def load(name):
        gate.wait(30)
        return model

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=load)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: "loading" in status_text(app), what="the load to start")
            await send(pilot, "Hello")
            await wait_for(pilot, lambda: "waiting for the model" in status_text(app), what="the wait")
            assert app.model is None and app.chat_screen.job is not None and model.received == []
            gate.set()
            await wait_for(pilot, lambda: app.chat_screen.job is None, what="the reply")
            assert app.model is model
            assert [(m.role, m.content) for m in messages(app)] == [("user", "Hello"), ("assistant", "hello back")]
            assert "ready" in status_text(app)

    asyncio.run(main())


def test_a_turn_sent_while_the_first_load_fails_says_there_is_no_model(tmp_path, default_gguf):
    gate = threading.Event()

    def load(name):
        gate.wait(30)
        raise ModelNotFoundError("model 'x' is not in models.toml")

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=load)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: "loading" in status_text(app), what="the load to start")
            await send(pilot, "Anyone there?")
            await wait_for(pilot, lambda: "waiting for the model" in status_text(app), what="the wait")
            gate.set()
            await wait_for(pilot, lambda: app.chat_screen.job is None, what="the failed turn")
            assert app.model is None and app.model_error == "model 'x' is not in models.toml"
            assert any("No model to answer with: model 'x' is not in models.toml" in n for n in notices(app))
            assert "no model" in status_text(app)
            assert [m.role for m in messages(app)] == ["user"]  # kept, to answer once a model loads

    asyncio.run(main())


def test_the_job_samples_with_the_model_defaults_under_the_conversation_settings(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["one"])
    model.sampling_defaults = {"temperature": 0.3, "top_k": 20}
    store = Store(tmp_path / "history.db")
    store.create_conversation(settings={"top_k": 5, "max_tokens": 64})

    async def main():
        app = ChatApp(store=store, load_model=lambda name: model)
        async with app.run_test() as pilot:
            await send(pilot, "Hi")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2, what="the reply")
            params = model.sampled_with[-1]
            assert (params.temperature, params.top_k, params.max_tokens) == (0.3, 5, 64)

    asyncio.run(main())


def test_a_context_shortened_to_fit_memory_is_said_and_shown(tmp_path, monkeypatch):
    """The native load fits the model's window to the memory there is (engine/model/memory.py):
    the app says so beside the chat, and the status line counts against the shorter window."""
    import engine
    from engine.model import memory
    from tiny_models import TinyConfig, write_tiny_llama

    path = write_tiny_llama(tmp_path / "long.gguf", TinyConfig(context_length=16384))
    args = engine.load(path, backend="native", device="cpu", dtype="float32").args
    need = memory.estimate(args, dtype_bytes=4, context=16384)
    monkeypatch.setattr(memory, "available_bytes", lambda device: need.total - need.kv_cache * 3 // 4)

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"),
                      load_model=lambda name: engine.load(path, backend="native", device="cpu", dtype="float32"))
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await pilot.pause()
            shown = [str(n.render()) for n in app.query(".notice").results(Static)]
            assert any("context window set to 4096 of the model's 16384 tokens" in n for n in shown), shown
            assert "/4096" in status_text(app)

    asyncio.run(main())
