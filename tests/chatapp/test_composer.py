"""The multi-line composer (#prompt) in the real app: paste, newline keys, Enter to send, growth."""

from __future__ import annotations

import asyncio

from textual import events

from apphelpers import make_app, messages, wait_for
from chatapp.widgets.composer import Composer
from scripted import ScriptedModel

CODE = "def f(x):\n    return x*2\n\nExplain this code."


def run(coro):
    return asyncio.run(coro)


def reply_done(app):
    return lambda: app.chat_screen.job is None and any(m.role == "assistant" and m.status != "streaming" for m in messages(app))


def test_a_multi_line_paste_is_sent_as_one_message_with_every_line(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["It doubles x."])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test(size=(100, 30)) as pilot:
            composer = app.query_one("#prompt", Composer)
            assert app.focused is composer
            app.post_message(events.Paste(CODE))  # as the terminal delivers a bracketed paste
            await pilot.pause()
            assert composer.text == CODE
            assert app.chat_screen.conversation_id is None  # the pasted newlines did not send anything
            await pilot.press("enter")
            await wait_for(pilot, reply_done(app), what="the reply")
            user, reply = messages(app)
            assert user.content == CODE
            assert model.received[0][-1] == {"role": "user", "content": CODE}
            assert composer.text == ""

    run(main())


def test_ctrl_j_and_shift_enter_add_lines_and_enter_sends(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["ok"])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test(size=(100, 30)) as pilot:
            composer = app.query_one("#prompt", Composer)
            await pilot.press("a", "ctrl+j", "b", "shift+enter", "c")
            assert composer.text == "a\nb\nc"
            assert app.chat_screen.conversation_id is None and app.chat_screen.job is None
            await pilot.press("enter")
            await wait_for(pilot, reply_done(app), what="the reply")
            assert messages(app)[0].content == "a\nb\nc"
            assert composer.text == ""

    run(main())


def test_the_send_button_sends_the_composer_text(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, ["ok"])

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test(size=(100, 30)) as pilot:
            app.query_one("#prompt", Composer).text = "line one\nline two"
            await pilot.click("#send")
            await wait_for(pilot, reply_done(app), what="the reply")
            assert messages(app)[0].content == "line one\nline two"

    run(main())


def test_text_is_kept_when_a_reply_is_still_running(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [" ".join(["word"] * 300), "second"], delay=0.01)

    async def main():
        app = make_app(tmp_path, model)
        async with app.run_test(size=(100, 30)) as pilot:
            composer = app.query_one("#prompt", Composer)
            composer.text = "first"
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.chat_screen.job is not None and len(messages(app)) == 2, what="the reply to start")
            composer.text = "a follow-up\nwith two lines"
            await pilot.press("enter")
            await pilot.pause()
            assert composer.text == "a follow-up\nwith two lines"
            assert [m.content for m in messages(app) if m.role == "user"] == ["first"]
            assert any("Wait for the reply" in str(n.message) for n in app._notifications)
            await pilot.press("escape")

    run(main())


def test_the_composer_grows_to_eight_lines_then_scrolls(tmp_path, default_gguf):
    async def main():
        app = make_app(tmp_path, ScriptedModel(default_gguf, []))
        async with app.run_test(size=(100, 40)) as pilot:
            composer = app.query_one("#prompt", Composer)
            await pilot.pause()
            one_line = composer.outer_size.height
            assert composer.size.height == 1
            composer.text = "1\n2\n3"
            await pilot.pause()
            assert composer.size.height == 3
            assert composer.outer_size.height == one_line + 2
            composer.text = "\n".join(str(i) for i in range(20))
            composer.move_cursor(composer.document.end)
            await pilot.pause()
            assert composer.size.height == 8
            assert composer.max_scroll_y == 12  # 20 lines in an 8-line window
            assert composer.scroll_offset.y == 12  # scrolled to keep the cursor (last line) in view
            composer.clear()
            await pilot.pause()
            assert composer.outer_size.height == one_line

    run(main())


def test_the_app_keys_f5_f6_f7_still_work_from_the_composer(tmp_path, default_gguf):
    # TextArea binds F5/F6/F7 to selections; in the composer they stay the app's keys.
    from chatapp.screens.settings import SettingsScreen

    async def main():
        app = make_app(tmp_path, ScriptedModel(default_gguf, []))
        async with app.run_test(size=(100, 30)) as pilot:
            app.query_one("#prompt", Composer).text = "draft"
            await pilot.press("f6")
            assert app.focused.id == "search"
            app.query_one("#prompt", Composer).focus()
            await pilot.press("f7")
            assert isinstance(app.screen, SettingsScreen)

    run(main())
