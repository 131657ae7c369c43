"""Getting around the app: focus after opening a conversation, search into results, the command
palette's titles, dialogs whose titles fit."""

from __future__ import annotations

import asyncio

from textual.widgets import ListView

from apphelpers import make_app
from chatapp.screens.dialogs import TextPromptScreen
from chatapp.screens.help import HelpScreen
from chatapp.widgets.composer import Composer
from scripted import ScriptedModel


def run(coro):
    return asyncio.run(coro)


def app_with_history(tmp_path, default_gguf):
    app = make_app(tmp_path, ScriptedModel(default_gguf, []))
    for title in ("Pasta recipes", "Rust lifetimes", "Weather in Oslo"):
        conv = app.store.create_conversation()
        app.store.add_message(conv.id, "user", title)
    return app


def test_opening_a_conversation_from_the_list_focuses_the_composer(tmp_path, default_gguf):
    async def main():
        app = app_with_history(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert app.store.get_conversation(app.chat_screen.conversation_id).title == "Weather in Oslo"
            app.query_one("#conversations", ListView).focus()
            await pilot.press("down", "enter")
            await pilot.pause()
            assert app.store.get_conversation(app.chat_screen.conversation_id).title == "Rust lifetimes"
            assert isinstance(app.focused, Composer)
            # Enter on the conversation already open also goes to the composer.
            app.query_one("#conversations", ListView).focus()
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.focused, Composer)

    run(main())


def test_enter_in_search_moves_into_the_results_and_opening_focuses_the_composer(tmp_path, default_gguf):
    async def main():
        app = app_with_history(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("f6", *"pasta")
            await pilot.pause()
            await pilot.press("enter")
            results = app.query_one("#conversations", ListView)
            assert app.focused is results and results.index == 0
            await pilot.press("enter")
            await pilot.pause()
            assert app.store.get_conversation(app.chat_screen.conversation_id).title == "Pasta recipes"
            assert isinstance(app.focused, Composer)

    run(main())


def test_down_in_search_moves_into_the_results(tmp_path, default_gguf):
    async def main():
        app = app_with_history(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("f6")
            assert app.focused.id == "search"
            await pilot.press("down")
            results = app.query_one("#conversations", ListView)
            assert app.focused is results and results.index is not None
            await pilot.press("down", "enter")  # the list now takes the arrows itself
            await pilot.pause()
            assert isinstance(app.focused, Composer)

    run(main())


def test_palette_titles_are_unique_and_keys_opens_our_help(tmp_path, default_gguf):
    async def main():
        app = make_app(tmp_path, ScriptedModel(default_gguf, []))
        async with app.run_test(size=(100, 30)) as pilot:
            commands = list(app.get_system_commands(app.screen))
            titles = [c.title for c in commands]
            assert len(titles) == len(set(titles)), sorted(titles)
            assert "Theme" in " ".join(titles)  # Textual's own commands are still offered
            (keys,) = [c for c in commands if c.title == "Keys"]
            keys.callback()
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            rows = dict(app.screen.rows)
            assert "Send the message" in rows["enter"]
            assert "New line" in rows["ctrl+j"] and "shift+enter" in rows["ctrl+j"]

    run(main())


def test_a_long_rename_title_wraps_inside_the_dialog(tmp_path, default_gguf):
    async def main():
        app = app_with_history(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("f2")
            await pilot.pause()
            assert isinstance(app.screen, TextPromptScreen)
            title = app.screen.query(".dialog Label").first()
            dialog = app.screen.query_one(".dialog")
            assert dialog.content_region.contains_region(title.region)
            assert title.size.height >= 2  # wrapped, not cut
            shown = " ".join(strip.text.strip() for strip in (title.render_line(y) for y in range(title.size.height)))
            assert shown == "Rename conversation (empty: title from the first message)"

    run(main())
