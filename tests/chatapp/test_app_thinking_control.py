"""Thinking on/off and its budget per conversation (Pilot): the palette's "Toggle thinking" and the
settings dialog change what the (scripted) model is prompted with, are stored with the
conversation, and say so where the model's template has no switch."""

from __future__ import annotations

import asyncio

from apphelpers import make_app, messages, send, wait_for
from scripted import ScriptedModel
from textual.widgets import Input, Select
from thinking import QWEN3_STYLE

from chatapp.screens.settings import SettingsScreen
from chatapp.store import Store

THOUGHT = " ".join(f"idea{i}" for i in range(60))
REPLY = f"<think>\n{THOUGHT}\n</think>\n\nThe answer is 4."
CLOSED_BLOCK = "<think>\n\n</think>\n\n"  # the Qwen3 template's prompt with thinking off


def _replies(app, n):
    return lambda: app.chat_screen.job is None and len([m for m in messages(app) if m.role == "assistant"
                                                        and m.status != "streaming"]) == n


async def _palette(pilot, title: str) -> None:
    await pilot.press("ctrl+p", *title.lower())
    await pilot.pause(0.5)  # the palette searches in a worker
    await pilot.press("enter")
    await pilot.pause()


def test_toggle_thinking_changes_the_prompt_and_is_stored(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [REPLY, "Four.", REPLY], template=QWEN3_STYLE)
    app = make_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            await send(pilot, "What is 2+2?")
            await wait_for(pilot, _replies(app, 1), what="the first reply")
            await _palette(pilot, "Toggle thinking")
            await send(pilot, "Sure?")
            await wait_for(pilot, _replies(app, 2), what="the reply without thinking")
            await _palette(pilot, "Toggle thinking")
            await send(pilot, "Really?")
            await wait_for(pilot, _replies(app, 3), what="the reply with thinking again")
            return app.chat_screen.conversation_id

    conv = asyncio.run(main())
    assert not model.prompts[0].endswith(CLOSED_BLOCK)
    assert model.prompts[1].endswith(CLOSED_BLOCK)  # thinking off: the template closes the block
    assert not model.prompts[2].endswith(CLOSED_BLOCK)
    stored = Store(tmp_path / "history.db").get_conversation(conv).settings
    assert stored == {"reasoning": {"thinking": True}}


def test_settings_set_thinking_off_and_a_budget_that_closes_the_block(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [REPLY, REPLY], template=QWEN3_STYLE)
    app = make_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await pilot.press("ctrl+s")
            screen = app.screen
            assert isinstance(screen, SettingsScreen)
            screen.query_one("#reasoning_budget", Input).value = "many"
            await pilot.press("ctrl+s")
            assert app.screen is screen and "thinking budget must be a whole number" in str(screen.query_one("#error").render())
            screen.query_one("#reasoning_budget", Input).value = "5"
            await pilot.press("ctrl+s")
            assert not isinstance(app.screen, SettingsScreen)
            await send(pilot, "What is 2+2?")
            await wait_for(pilot, _replies(app, 1), what="the budgeted reply")
            budgeted = messages(app)[-1]

            await pilot.press("ctrl+s")
            assert app.screen.query_one("#reasoning_budget", Input).value == "5"  # reopens as stored
            app.screen.query_one("#thinking", Select).value = "off"
            app.screen.query_one("#reasoning_budget", Input).value = ""
            await pilot.press("ctrl+s")
            await send(pilot, "Sure?")
            await wait_for(pilot, _replies(app, 2), what="the reply without thinking")
            return budgeted, app.chat_screen.conversation_id

    budgeted, conv = asyncio.run(main())
    assert budgeted.content == "The answer is 4."
    assert budgeted.reasoning.split()[0] == "idea0" and "idea20" not in budgeted.reasoning  # closed early
    assert not model.prompts[0].endswith(CLOSED_BLOCK) and model.prompts[1].endswith(CLOSED_BLOCK)
    assert Store(tmp_path / "history.db").get_conversation(conv).settings == {"reasoning": {"thinking": False}}


def test_a_model_without_a_switch_says_thinking_is_not_available(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["Hello."])  # ChatML: no switch, no think markers
    app = make_app(tmp_path, model)

    async def main():
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await pilot.press("ctrl+s")
            screen = app.screen
            seen = (screen.query_one("#thinking", Select).disabled, screen.query_one("#reasoning_budget", Input).disabled,
                    str(screen.query_one("#thinking-note").render()))
            await pilot.press("escape")
            await _palette(pilot, "Toggle thinking")
            notes = [n.message for n in app._notifications]
            return seen, notes

    (select_off, budget_off, note), notes = asyncio.run(main())
    assert select_off and budget_off and "not available for this model" in note
    assert any("Thinking cannot be turned on or off: not available for this model" in n for n in notes)
