"""The chat app's rough edges (issue 13, part B) under Textual's Pilot: model switching that keeps
the working model, the picker's offline marks and downloads, reopened conversations (their model
and context), an overlong prompt's error shown once, and reply alternatives."""

from __future__ import annotations

import asyncio
import threading

from apphelpers import make_app, messages, send, wait_for
from hub_cache import add_to_cache
from scripted import ScriptedModel
from textual.widgets import OptionList, ProgressBar

import engine.hub.download
from chatapp.app import ChatApp
from chatapp.screens import models as model_screen
from chatapp.screens.models import ModelPickerScreen
from chatapp.store import Store
from chatapp.widgets.status import StatusBar
from chatapp.worker import history_for_model
from engine.errors import ModelNotFoundError

LONG = " ".join(f"word{i}" for i in range(400))


def run(coro):
    return asyncio.run(coro)


def status_text(app) -> str:
    return str(app.query_one(StatusBar).render())


def reply_count(app, n):
    return lambda: app.chat_screen.job is None and len([m for m in messages(app) if m.role == "assistant" and m.status != "streaming"]) >= n


def option_text(picker, name) -> str:
    options = picker.query_one(OptionList)
    return str(options.get_option(name).prompt)


def add_user_model(name: str, path) -> None:
    """A models.toml entry of the user's own (the autouse fixture points the config dir at tmp)."""
    from engine.hub.registry import user_registry_path

    registry = user_registry_path()
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(f'[models.{name}]\ndescription = "a model that fails to load"\nsource = "path"\npath = "{path}"\n')


def test_a_failed_switch_from_the_picker_keeps_the_current_model_answering(tmp_path, default_gguf):
    add_user_model("broken", default_gguf)
    model = ScriptedModel(default_gguf, ["before the switch", "after the failed switch"])
    asked = []

    def load(name):
        asked.append(name)
        if name == "broken":
            raise ModelNotFoundError("model 'broken': its weights are corrupt; pull it again")
        return model

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=load)
        async with app.run_test() as pilot:
            await send(pilot, "Hello")
            await wait_for(pilot, reply_count(app, 1))
            conv_model = app.store.get_conversation(app.chat_screen.conversation_id).model

            await pilot.press("ctrl+o")
            assert isinstance(app.screen, ModelPickerScreen)
            options = app.screen.query_one(OptionList)
            options.highlighted = options.get_option_index("broken")
            await pilot.press("enter")
            await wait_for(pilot, lambda: asked == [None, "broken"] and "ready" in status_text(app), what="the failed load")

            assert app.model is model
            assert "scripted" in status_text(app) and "no model" not in status_text(app)
            shown = [n for n in app._notifications]
            assert any("corrupt" in n.message and "Still using scripted" in n.message for n in shown)
            assert any("Could not switch to broken" in (n.title or "") for n in shown)
            assert app.store.get_conversation(app.chat_screen.conversation_id).model == conv_model

            await send(pilot, "Still there?")
            await wait_for(pilot, reply_count(app, 2))
            assert messages(app)[-1].content == "after the failed switch"
            assert messages(app)[-1].status == "complete"

    run(main())


def test_a_switch_that_loads_replaces_the_model_and_records_it(tmp_path, default_gguf):
    add_user_model("other", default_gguf)
    first, second = ScriptedModel(default_gguf, ["one"]), ScriptedModel(default_gguf, ["two"])
    second.name = "other"
    gate = threading.Event()

    def load(name):
        if name == "other":
            gate.wait(30)  # the switch is slow: the first model keeps answering meanwhile
            return second
        return first

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=load)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is first and "ready" in status_text(app))
            app.start_loading("other")
            assert "loading other" in status_text(app)
            await send(pilot, "Hi")
            await wait_for(pilot, reply_count(app, 1))
            assert messages(app)[-1].content == "one"
            gate.set()
            await wait_for(pilot, lambda: app.model is second and "other · scripted" in status_text(app))
            assert app.store.get_conversation(app.chat_screen.conversation_id).model == "other"

    run(main())


def test_picker_marks_models_unavailable_offline(tmp_path, default_gguf, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(engine.hub.download, "hub_reachable", lambda timeout=2.0: fail("offline mode must not touch the network"))
    model = ScriptedModel(default_gguf, [])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await pilot.press("ctrl+o")
            picker = app.screen
            await wait_for(pilot, lambda: picker.online is False, what="the offline check")
            assert option_text(picker, "smollm2-135m").startswith("● smollm2-135m")
            qwen = picker.query_one(OptionList).get_option("qwen2.5-0.5b")
            assert qwen.disabled
            assert str(qwen.prompt).startswith("✗ qwen2.5-0.5b") and "offline" in str(qwen.prompt)
            await pilot.press("escape")

    run(main())


def fail(message):
    raise AssertionError(message)


def test_picker_downloads_a_model_with_progress(tmp_path, default_gguf, monkeypatch):
    from engine.hub.registry import load_registry

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(model_screen, "hub_reachable", lambda: True)
    spec = load_registry().get("qwen2.5-0.5b")
    halfway, finish = threading.Event(), threading.Event()
    pulled = []

    def fake_pull(registry):
        def pull(name, progress):  # stands in for the Hub: reports bytes, then fills the cache
            pulled.append(name)
            progress(0, 0)
            progress(250_000_000, 500_000_000)
            halfway.set()
            finish.wait(30)
            add_to_cache(cache, spec.repo, spec.revision, {spec.file: b"GGUF" + bytes(60)})
            progress(500_000_000, 500_000_000)

        return pull

    monkeypatch.setattr(model_screen, "pull_with_engine", fake_pull)
    model = ScriptedModel(default_gguf, [])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await pilot.press("ctrl+o")
            picker = app.screen
            await wait_for(pilot, lambda: picker.online is True, what="the connection check")
            assert option_text(picker, "qwen2.5-0.5b").startswith("○ qwen2.5-0.5b")
            options = picker.query_one(OptionList)
            options.highlighted = options.get_option_index("smollm2-135m")
            await pilot.press("d")
            assert pulled == []  # already here: nothing to download
            options.highlighted = options.get_option_index("qwen2.5-0.5b")
            await pilot.press("d")
            await wait_for(pilot, lambda: halfway.is_set() and picker.query_one(ProgressBar).progress == 250_000_000)
            bar = picker.query_one(ProgressBar)
            assert bar.display and bar.total == 500_000_000
            assert "250.0 of 500.0 MB" in str(picker.query_one("#pull-status").render())
            finish.set()
            await wait_for(pilot, lambda: picker.pulling is None, what="the download to finish")
            assert pulled == ["qwen2.5-0.5b"]
            assert option_text(picker, "qwen2.5-0.5b").startswith("● qwen2.5-0.5b")
            assert not bar.display
            assert "downloaded" in str(picker.query_one("#pull-status").render())
            await pilot.press("escape")

    run(main())


def seed_conversation(tmp_path, model_name):
    with Store(tmp_path / "history.db") as store:
        conv = store.create_conversation(model=model_name)
        store.add_message(conv.id, "user", "What is a llama?")
        store.add_message(conv.id, "assistant", "A domesticated South American camelid.")
        return conv.id


def test_a_reopened_conversation_says_which_model_it_used_and_counts_its_context(tmp_path, default_gguf):
    conv_id = seed_conversation(tmp_path, "my-int4-folder")
    model = ScriptedModel(default_gguf, [])
    gate, asked = threading.Event(), []

    def load(name):
        asked.append(name)
        gate.wait(30)
        return model

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), load_model=load)
        async with app.run_test() as pilot:
            assert app.chat_screen.conversation_id == conv_id
            notices = [str(n.render()) for n in app.query(".notice")]
            assert any("used my-int4-folder" in n and "smollm2-135m" in n and "ctrl+o" in n for n in notices), notices
            await wait_for(pilot, lambda: asked == [None])  # plain `chatapp`: the default, not the conversation's
            assert "ctx" in status_text(app) and "ctx 0/" not in status_text(app)
            gate.set()
            expected = len(model.encode_chat(history_for_model(app.store, conv_id), tools=app.tool_registry.schemas()))
            await wait_for(pilot, lambda: f"ctx {expected}/8192" in status_text(app), what="the context count")
            assert expected > 10
            # Answered by the default model from now on, and recorded so.
            assert app.store.get_conversation(conv_id).model == "smollm2-135m"
            app.chat_screen.open_conversation(conv_id)  # a reload (regenerate, tool results) does not say it again
            await pilot.pause()
            assert [str(n.render()) for n in app.query(".notice")] == []

    run(main())


def test_a_model_given_on_the_command_line_answers_a_reopened_conversation(tmp_path, default_gguf):
    seed_conversation(tmp_path, "smollm2-135m")
    asked = []

    def load(name):
        asked.append(name)
        return ScriptedModel(default_gguf, [])

    async def main():
        app = ChatApp(store=Store(tmp_path / "history.db"), model="qwen2.5-0.5b", load_model=load)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: asked == ["qwen2.5-0.5b"] and "ready" in status_text(app))
            notices = [str(n.render()) for n in app.query(".notice")]
            assert any("used smollm2-135m; replies now come from qwen2.5-0.5b" in n for n in notices), notices

    run(main())


def test_an_overlong_prompt_error_is_shown_once(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["never sent"], context_length=200, tools=False)

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, LONG)
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].role == "assistant")
            failed = messages(app)[-1]
            assert failed.status == "error"
            error = failed.meta["error"]
            assert "context" in error.lower()
            footers = [str(f.render()) for f in app.query(".message-footer")]
            assert sum(error in f for f in footers) == 1
            assert list(app.query(".notice")) == []
            assert [n for n in app._notifications if error in n.message] == []
            assert messages(app)[0].content == LONG  # the prompt is kept

    run(main())


def test_regenerate_keeps_alternatives_and_the_chosen_one_is_what_the_model_sees(tmp_path, default_gguf, monkeypatch):
    model = ScriptedModel(default_gguf, ["first answer", "second answer", "a follow-up answer"])
    monkeypatch.chdir(tmp_path)

    def last_footer(app):
        return str(list(app.query(".message-footer"))[-1].render())

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, "Question")
            await wait_for(pilot, reply_count(app, 1))
            await pilot.press("alt+left")
            assert any("no alternatives" in n.message for n in app._notifications)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].content == "second answer")
            await wait_for(pilot, lambda: "reply 2/2" in last_footer(app))
            await pilot.press("alt+left")
            assert [m.content for m in messages(app)] == ["Question", "first answer"]
            await wait_for(pilot, lambda: "reply 1/2" in last_footer(app))
            app.chat_screen.action_export("json")
            await pilot.pause()
            app.screen.query_one("#path").value = str(tmp_path / "alternatives.json")
            await pilot.press("enter")
            await pilot.pause()
            exported = (tmp_path / "alternatives.json").read_text()
            assert "first answer" in exported and "second answer" not in exported

            await send(pilot, "Go on")
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].content == "a follow-up answer")
            seen = [m["content"] for m in model.received[-1]]
            assert "first answer" in seen and "second answer" not in seen

    run(main())
