"""The chat app driven by Textual's Pilot: UI logic on a scripted backend (real tokenizer, template
and streaming layer), and the main flows end to end on the real default model."""

from __future__ import annotations

import asyncio

import pytest
from apphelpers import make_app, messages, send, wait_for
from scripted import ScriptedModel
from textual.widgets import Input, Markdown

from chatapp.app import ChatApp
from chatapp.screens.approval import ApprovalScreen
from chatapp.screens.dialogs import ConfirmScreen, TextPromptScreen
from chatapp.store import Store
from chatapp.widgets.composer import Composer
from chatapp.widgets.message import MessageView

LONG = " ".join(f"word{i}" for i in range(400))


def run(coro):
    return asyncio.run(coro)


def reply_done(app):
    return lambda: app.chat_screen.job is None and any(m.role == "assistant" and m.status != "streaming" for m in messages(app))


def test_send_streams_a_reply_and_stores_it(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["Hello! **Bold** and `code`."], delay=0.01)

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test(size=(100, 30)) as pilot:
            assert isinstance(app.focused, Composer) and app.focused.id == "prompt"
            await send(pilot, "Hi there")
            await wait_for(pilot, reply_done(app), what="the reply")
            user, reply = messages(app)
            assert (user.role, user.content) == ("user", "Hi there")
            assert (reply.role, reply.status, reply.content) == ("assistant", "complete", "Hello! **Bold** and `code`.")
            assert reply.meta["completion_tokens"] > 3
            view = app.chat_screen.views[reply.id]
            assert "Bold" in view.query_one(Markdown).source
            assert model.received[0][-1] == {"role": "user", "content": "Hi there"}
            assert "ctx" in str(app.query_one("StatusBar").render())

    run(main())


def test_escape_stops_mid_reply_and_keeps_the_partial_text(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [LONG], delay=0.01)

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, "Talk for a long time")
            await wait_for(pilot, lambda: len(app.store.messages(app.chat_screen.conversation_id)) == 2
                           and len(messages(app)[1].content) > 20, what="some streamed text")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.chat_screen.job is None, what="the stop")
            reply = messages(app)[1]
            assert reply.status == "stopped"
            assert 0 < len(reply.content) < len(LONG)
            assert LONG.startswith(reply.content)
            assert "stopped" in str(app.chat_screen.views[reply.id].query_one(".message-footer").render())

    run(main())


def test_regenerate_and_edit_resend(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["first answer", "second answer", "answer to the edit"])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, "Question one")
            await wait_for(pilot, reply_done(app))
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].content == "second answer")
            assert [m.content for m in messages(app)] == ["Question one", "second answer"]
            await pilot.press("f3")
            assert isinstance(app.screen, TextPromptScreen)
            app.screen.query_one("#value").text = "Question one, edited"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].content == "answer to the edit")
            assert [m.content for m in messages(app)] == ["Question one, edited", "answer to the edit"]

    run(main())


def test_context_overflow_is_announced_not_silent(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["ok " * 20] * 6, context_length=400, tools=False)

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            for i in range(5):
                await send(pilot, f"message {i} " + "padding words here " * 8)
                await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].role == "assistant")
            notices = [str(n.render()) for n in app.query(".notice")]
            assert any("oldest messages were left out" in n for n in notices), notices
            # The model saw fewer messages than the history holds; the history kept them all.
            assert len(model.received[-1]) < len(messages(app))
            assert len(messages(app)) == 10

    run(main())


def test_model_output_renders_inert(tmp_path, default_gguf):
    hostile = "[bold red]not markup[/] \x1b[31mred\x1b[0m \x07 [link=https://x]y[/link] <b>html</b>"
    model = ScriptedModel(default_gguf, [hostile])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, "[i]user markup[/i] \x1b[2J")
            await wait_for(pilot, reply_done(app))
            reply = messages(app)[1]
            assert reply.content == hostile  # stored verbatim
            source = app.chat_screen.views[reply.id].query_one(Markdown).source
            assert "\x1b" not in source and "␛[31m" in source and "[bold red]" in source
            user_view = app.chat_screen.views[messages(app)[0].id]
            shown = str(user_view.query_one(".text").render())
            assert "[i]user markup[/i]" in shown and "\x1b" not in shown

    run(main())


def test_delete_needs_confirmation_and_restart_reopens_history(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["one", "two"])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, "keep me")
            await wait_for(pilot, reply_done(app))
            await pilot.press("ctrl+n")
            await send(pilot, "delete me")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2)
            doomed = app.chat_screen.conversation_id
            await pilot.press("f8")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("escape")  # cancelled: nothing deleted
            assert app.store.get_conversation(doomed)
            await pilot.press("f8")
            await pilot.press("y")
            await pilot.pause()
            assert [c.title for c in app.store.list_conversations()] == ["keep me"]
        app.store.close()

        again = ChatApp(store=Store(tmp_path / "history.db"), load_model=lambda name: model)
        async with again.run_test() as pilot:
            await pilot.pause()
            assert [m.content for m in messages(again)] == ["keep me", "one"]
            assert len(again.query(MessageView)) == 2

    run(main())


# ---- tools -----------------------------------------------------------------------------------


def tool_call(name: str, arguments: dict) -> str:
    import json

    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def tool_messages(model) -> list[dict]:
    return [m for m in model.received[-1] if m["role"] == "tool"]


@pytest.mark.parametrize("answer", ["a", "d"])
def test_tool_call_goes_through_approval_and_back_to_the_model(tmp_path, default_gguf, answer):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("buy milk")
    model = ScriptedModel(default_gguf, [tool_call("read_file", {"path": "todo.txt"}), "Done."])

    async def main():
        app = make_app(tmp_path, model, allowed_dirs=[notes])
        async with app.run_test(size=(100, 30)) as pilot:
            await send(pilot, "What is on my todo list?")
            await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen), what="the approval modal")
            assert app.screen.tool_name == "read_file" and app.screen.arguments == {"path": "todo.txt"}
            await pilot.press(answer)
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].content == "Done.")
            (result,) = tool_messages(model)
            if answer == "a":
                assert result["content"] == "buy milk"
            else:
                assert "denied" in result["content"]
            roles = [m.role for m in messages(app)]
            assert roles == ["user", "assistant", "tool", "assistant"]
            assert messages(app)[1].tool_calls[0]["function"]["name"] == "read_file"

    run(main())


def test_bad_tool_arguments_give_the_model_a_clear_error(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [tool_call("calculator", {"expr": "2+2"}), "Sorry."])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, "add")
            await wait_for(pilot, lambda: app.chat_screen.job is None and messages(app)[-1].content == "Sorry.")
            (result,) = tool_messages(model)
            assert "expr" in result["content"] and "expression" in result["content"]

    run(main())


def test_chained_tool_calls_are_limited(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [tool_call("calculator", {"expression": "1+1"})] * 20)

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test() as pilot:
            await send(pilot, "loop forever")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) > 2, timeout=60)
            notices = [str(n.render()) for n in app.query(".notice")]
            assert any("rounds of tool calls" in n for n in notices)
            assert len(model.received) <= 7

    run(main())


def test_rename_search_settings_and_export(tmp_path, default_gguf, monkeypatch):
    import json

    from chatapp.screens.export import ExportScreen
    from chatapp.screens.settings import SettingsScreen
    from chatapp.widgets.sidebar import ConversationItem

    monkeypatch.setenv("XDG_DOCUMENTS_DIR", str(tmp_path))
    model = ScriptedModel(default_gguf, ["Paris.", "Blue."])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test(size=(100, 30)) as pilot:
            await send(pilot, "Capital of France?")
            await wait_for(pilot, reply_done(app))
            await pilot.press("ctrl+n")
            await send(pilot, "Colour of the sky?")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2)

            await pilot.press("f2")
            assert isinstance(app.screen, TextPromptScreen)
            app.screen.query_one("#value").value = "Sky talk"
            await pilot.press("enter")
            assert app.store.get_conversation(app.chat_screen.conversation_id).title == "Sky talk"

            await pilot.press("f6")
            await pilot.press(*"france")
            await pilot.pause()
            titles = [item.conversation.title for item in app.query(ConversationItem)]
            assert titles == ["Capital of France?"]

            await pilot.press("ctrl+s")
            assert isinstance(app.screen, SettingsScreen)
            app.screen.query_one("#temperature").value = "-3"
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, SettingsScreen)  # refused, with the reason shown
            assert "temperature" in str(app.screen.query_one("#error").render())
            app.screen.query_one("#temperature").value = "0.2"
            app.screen.query_one("#system").text = "Answer in one word."
            await pilot.press("ctrl+s")
            conv = app.store.get_conversation(app.chat_screen.conversation_id)
            assert conv.settings["temperature"] == 0.2 and conv.system_prompt == "Answer in one word."

            for fmt in ("markdown", "json"):
                app.chat_screen.action_export(fmt)
                await pilot.pause()
                assert isinstance(app.screen, ExportScreen)
                await pilot.press("enter")  # the suggested path, in the documents dir
                await pilot.pause()
                assert not isinstance(app.screen, ExportScreen)
            md, js = tmp_path / "sky-talk.md", tmp_path / "sky-talk.json"
            assert "Colour of the sky?" in md.read_text() and "Blue." in md.read_text()
            exported = json.loads(js.read_text())
            assert [m["content"] for m in exported["messages"]] == ["Colour of the sky?", "Blue."]

    run(main())


def test_model_picker_marks_what_is_on_this_machine(tmp_path, monkeypatch):
    from chatapp.screens.models import availability
    from engine.hub.registry import BUILTIN_REGISTRY, load_registry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    local = availability(load_registry([BUILTIN_REGISTRY]))
    assert local["smollm2-135m"] is True
    assert local["qwen2.5-0.5b"] is False


def test_settings_store_only_what_the_user_chose_and_the_model_defaults_fill_in(tmp_path, default_gguf):
    from chatapp.screens.settings import SettingsScreen

    model = ScriptedModel(default_gguf, ["Rome.", "Rome again."])
    model.sampling_defaults = {"temperature": 0.2, "top_k": 0, "repetition_penalty": 1.1}

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test(size=(100, 30)) as pilot:
            await send(pilot, "History of Rome?")
            await wait_for(pilot, reply_done(app))
            assert app.store.get_conversation(app.chat_screen.conversation_id).settings == {}
            used = model.sampled_with[-1]
            assert (used.temperature, used.top_k, used.repetition_penalty, used.top_p) == (0.2, 0, 1.1, 0.95)

            await pilot.press("ctrl+s")
            screen = app.screen
            assert isinstance(screen, SettingsScreen)
            field = lambda name: screen.query_one(f"#{name}", Input)
            assert all(field(n).value == "" for n in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"))
            # the placeholder shows what applies: the model's default, else the engine's
            assert field("temperature").placeholder.startswith("0.2") and field("top_p").placeholder.startswith("0.95")
            assert field("repetition_penalty").placeholder.startswith("1.1")

            error = lambda: str(screen.query_one("#error").render())
            field("top_k").value = "abc"
            await pilot.press("ctrl+s")
            assert app.screen is screen and "top k must be a whole number" in error()
            field("top_k").value = "5"
            field("min_p").value = "1.5"
            await pilot.press("ctrl+s")
            assert app.screen is screen and "min p must be in [0, 1)" in error()
            field("min_p").value = "0.1"
            field("repetition_penalty").value = "1.3"
            await pilot.press("ctrl+s")
            assert app.screen is not screen
            assert app.store.get_conversation(app.chat_screen.conversation_id).settings == {
                "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3}

            await send(pilot, "And then?")
            await wait_for(pilot, lambda: app.chat_screen.job is None and len(model.sampled_with) == 2)
            used = model.sampled_with[-1]
            assert (used.temperature, used.top_k, used.min_p, used.repetition_penalty) == (0.2, 5, 0.1, 1.3)

            await pilot.press("ctrl+s")
            assert app.screen.query_one("#top_k", Input).value == "5"
            assert app.screen.query_one("#temperature", Input).value == ""

    run(main())
