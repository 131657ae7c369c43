"""The tool choice per conversation (Pilot): auto, none, required or one named tool, set in the
settings dialog or the palette, stored in the conversation's settings, and passed to the engine
(whose grammar constraint the scripted model records; it replies from its script regardless)."""

from __future__ import annotations

import asyncio
import json

from apphelpers import make_app, messages, send, wait_for
from scripted import ScriptedModel
from textual.widgets import Select

from chatapp.app import ChatApp
from chatapp.screens.settings import SettingsScreen
from chatapp.store import Store
from chatapp.tools import FileAccess, ToolRegistry, hookimpl


class Clock:
    @hookimpl
    def register_tools(self, register):
        def world_time(city: str) -> str:
            """The time in a city.

            Args:
                city: the city
            """
            return f"12:00 in {city}"

        def set_alarm(hour: int, minute: int) -> str:
            """Set an alarm.

            Args:
                hour: 0-23
                minute: 0-59
            """
            return f"alarm set for {hour:02d}:{minute:02d}"

        register(world_time, safe=True)
        register(set_alarm, safe=True)


def clock_app(tmp_path, model) -> ChatApp:
    registry = ToolRegistry(FileAccess(), user_tools_file=None, entry_points=False)
    registry.register_plugin(Clock())
    return ChatApp(store=Store(tmp_path / "history.db"), load_model=lambda name: model, tool_registry=registry)


def call(name: str, arguments: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def _idle(app, replies: int):
    return lambda: app.chat_screen.job is None and len(
        [m for m in messages(app) if m.role == "assistant" and m.status != "streaming"]) == replies


async def _palette(pilot, title: str) -> None:
    await pilot.press("ctrl+p", *title.lower())
    await pilot.pause(0.5)  # the palette searches in a worker
    await pilot.press("enter")
    await pilot.pause()


def _settings(tmp_path, conversation_id) -> dict:
    return Store(tmp_path / "history.db").get_conversation(conversation_id).settings


def test_none_hides_the_tools_and_runs_no_call(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["Hi.", call("world_time", {"city": "Oslo"}), "done"])
    app = clock_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 40)) as pilot:
            await send(pilot, "hello")  # auto (the default): the tools are in the prompt
            await wait_for(pilot, _idle(app, 1), what="the first reply")
            await _palette(pilot, "Tool choice: none")
            await send(pilot, "what time is it in Oslo?")
            await wait_for(pilot, _idle(app, 2), what="the reply under none")
            await pilot.pause(0.3)
            return app.chat_screen.conversation_id, messages(app)

    conv, stored = asyncio.run(main())
    assert "<tools>" in model.prompts[0] and "world_time" in model.prompts[0]
    assert "<tools>" not in model.prompts[1] and "world_time" not in model.prompts[1]
    assert model.constraints == [model.constraints[0], None] and model.constraints[0] is not None  # auto's trigger
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]  # the call text was not run
    assert stored[-1].tool_calls is None and "world_time" in stored[-1].content
    assert _settings(tmp_path, conv) == {"tool_choice": "none"}


def test_required_and_a_named_tool_reach_the_engine_for_the_first_reply_of_a_turn(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [call("world_time", {"city": "Oslo"}), "It is noon in Oslo.",
                                         call("set_alarm", {"hour": 7, "minute": 0}), "Alarm set."])
    app = clock_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await pilot.press("ctrl+s")
            screen = app.screen
            assert isinstance(screen, SettingsScreen)
            select = screen.query_one("#tool_choice", Select)
            assert not select.disabled
            values = [value for _label, value in select._options]
            assert values[:3] == ["auto", "none", "required"]  # then one per tool, built-in ones too
            assert {"tool:world_time", "tool:set_alarm"} <= set(values[3:])
            assert values[3:] == [f"tool:{name}" for name in app.tool_registry.tools()]
            select.value = "required"
            await pilot.press("ctrl+s")
            assert not isinstance(app.screen, SettingsScreen)
            conv = app.chat_screen.conversation_id
            required_settings = _settings(tmp_path, conv)
            await send(pilot, "time in Oslo?")
            await wait_for(pilot, _idle(app, 2), what="the call and the answer")

            await pilot.press("ctrl+s")
            assert app.screen.query_one("#tool_choice", Select).value == "required"  # reopens as stored
            app.screen.query_one("#tool_choice", Select).value = "tool:set_alarm"
            await pilot.press("ctrl+s")
            named_settings = _settings(tmp_path, conv)
            await send(pilot, "wake me at 7")
            await wait_for(pilot, _idle(app, 4), what="the named call and the answer")
            return required_settings, named_settings, messages(app)

    required_settings, named_settings, stored = asyncio.run(main())
    assert required_settings == {"tool_choice": "required"}
    assert named_settings == {"tool_choice": {"function": "set_alarm"}}
    first, after_results, named, after_named = model.constraints
    # "required": the call marker is forced at once and the reply ends after the call; once the
    # results are in, the model answers under "auto" (free text until a call marker).
    assert first.trigger is None and first.end == "eos" and list(first.forced)
    assert after_results.trigger is not None and after_results.end == "free"
    assert named.trigger is None and named.end == "eos"
    assert after_named.trigger is not None
    # The named tool alone is in that prompt; both tools in the others.
    assert "world_time" in model.prompts[0] and "set_alarm" in model.prompts[0]
    assert "set_alarm" in model.prompts[2] and '"name": "world_time"' not in model.prompts[2].split("<|im_start|>user")[0]
    assert [m.content for m in stored if m.role == "tool"] == ["12:00 in Oslo", "alarm set for 07:00"]


def test_without_a_tool_format_the_control_says_so(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["Hello."], tools=False)  # SmolLM2's own template: no tools
    app = make_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await pilot.press("ctrl+s")
            screen = app.screen
            seen = screen.query_one("#tool_choice", Select).disabled, str(screen.query_one("#tool-choice-note").render())
            await pilot.press("escape")
            await _palette(pilot, "Tool choice: required")
            return seen, [n.message for n in app._notifications], app.chat_screen.conversation_id

    (disabled, note), notes, conv = asyncio.run(main())
    assert disabled and "not available for this model (its chat template has no tool format" in note
    assert any(n.startswith("Tool choice required not set: not available for this model") for n in notes)
    assert conv is None  # nothing stored, no conversation started


def test_a_named_tool_no_longer_offered_falls_back_to_auto_and_says_so(tmp_path, default_gguf):
    store = Store(tmp_path / "history.db")
    conv = store.create_conversation(model="scripted").id
    store.update_conversation(conv, settings={"tool_choice": {"function": "gone_tool"}, "temperature": 0.5})
    store.close()
    model = ScriptedModel(default_gguf, ["Hello."])
    app = clock_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            app.chat_screen.open_conversation(conv)
            await pilot.pause()
            await pilot.press("ctrl+s")
            options = [label for label, _value in app.screen.query_one("#tool_choice", Select)._options]
            await pilot.press("escape")
            await send(pilot, "hi")
            await wait_for(pilot, _idle(app, 1), what="the reply")
            await pilot.pause(0.2)
            return options, [str(n.render()) for n in app.chat_screen.query(".notice")]

    options, notes = asyncio.run(main())
    assert "call gone_tool (not offered now)" in options  # kept, so saving does not lose it
    assert any("names gone_tool, which is not offered now" in n for n in notes)
    assert model.constraints[0].trigger is not None  # auto
    assert model.sampled_with[0].temperature == 0.5  # the tool choice is not a sampling setting


def test_a_forced_call_on_the_real_default_model_is_valid(tmp_path):
    """The bundled SmolLM2's own template has no tool format, so the app offers it no tools; with
    the built-in fallback template's ChatML tool prompt, a forced call (here of one named tool, so
    that no approval dialog can stop the test) makes even this 135M model call it, well-formed,
    through the whole app (the call runs and its result is stored)."""
    import engine
    from engine.text.template import ChatTemplate

    model = engine.load(None, backend="gguf", context_length=2048)
    assert not model.supports_tools  # what the app gets from the bundled model as shipped
    model.template = ChatTemplate.from_gguf_metadata({}, bos_token=model.template.bos_token,
                                                     eos_token=model.template.eos_token)
    assert model.supports_tools
    store = Store(tmp_path / "history.db")
    conv = store.create_conversation(model="default").id
    store.update_conversation(conv, settings={"tool_choice": {"function": "set_alarm"}, "max_tokens": 64, "temperature": 0.7, "seed": 1})
    store.close()
    app = clock_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            app.chat_screen.open_conversation(conv)
            await pilot.pause()
            await send(pilot, "Wake me up at 6:45 please.")
            await wait_for(pilot, lambda: app.chat_screen.job is None and any(m.role == "tool" for m in messages(app)),
                           timeout=60, what="the tool call and its result")
            await wait_for(pilot, lambda: app.chat_screen.job is None, timeout=60, what="the turn's end")
            return messages(app)

    stored = asyncio.run(main())
    reply = next(m for m in stored if m.role == "assistant")
    assert reply.status == "complete" and reply.tool_calls and len(reply.tool_calls) == 1, reply
    function = reply.tool_calls[0]["function"]
    arguments = json.loads(function["arguments"])
    assert function["name"] == "set_alarm"
    tool = app.tool_registry.get(function["name"])
    import jsonschema

    jsonschema.validate(arguments, tool.schema()["function"]["parameters"])
    result = next(m for m in stored if m.role == "tool")
    assert result.meta["is_error"] is False, result.content
