"""Exporting a conversation: the default path, the dialog that asks where, replacing, bad paths."""

from __future__ import annotations

import asyncio
import json

from textual.widgets import Input

from apphelpers import make_app
from chatapp.export import default_export_path
from chatapp.screens.dialogs import ConfirmScreen
from chatapp.screens.export import ExportScreen
from scripted import ScriptedModel


def run(coro):
    return asyncio.run(coro)


def test_default_path_is_in_the_documents_dir_with_a_free_name(tmp_path, monkeypatch):
    docs = tmp_path / "Docs"
    docs.mkdir()
    monkeypatch.setenv("XDG_DOCUMENTS_DIR", str(docs))
    assert default_export_path("Sky talk: why blue?", "markdown") == docs / "sky-talk-why-blue.md"
    (docs / "sky-talk-why-blue.md").write_text("taken")
    (docs / "sky-talk-why-blue-2.md").write_text("taken")
    assert default_export_path("Sky talk: why blue?", "markdown") == docs / "sky-talk-why-blue-3.md"
    assert default_export_path("Sky talk: why blue?", "json") == docs / "sky-talk-why-blue.json"
    assert default_export_path("???", "json") == docs / "conversation.json"


def test_without_a_documents_dir_the_default_is_under_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DOCUMENTS_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_export_path("Notes", "json") == tmp_path / "data" / "chatapp" / "exports" / "notes.json"


def app_with_conversation(tmp_path, default_gguf):
    app = make_app(tmp_path, ScriptedModel(default_gguf, []))
    conv = app.store.create_conversation()
    app.store.add_message(conv.id, "user", "Colour of the sky?")
    app.store.add_message(conv.id, "assistant", "Blue.")
    app.store.rename(conv.id, "Sky talk")
    return app


async def open_export(pilot, fmt: str) -> ExportScreen:
    pilot.app.chat_screen.action_export(fmt)
    await pilot.pause()
    assert isinstance(pilot.app.screen, ExportScreen)
    return pilot.app.screen


def notifications(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


def test_export_writes_the_suggested_file_and_says_where(tmp_path, default_gguf, monkeypatch):
    monkeypatch.setenv("XDG_DOCUMENTS_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    expected = tmp_path / "data" / "chatapp" / "exports" / "sky-talk.md"

    async def main():
        app = app_with_conversation(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_export(pilot, "markdown")
            assert screen.query_one("#path", Input).value == str(expected)
            await pilot.press("enter")
            await pilot.pause()
            assert not isinstance(app.screen, ExportScreen)
            text = expected.read_text()  # the exports folder was created for it
            assert "# Sky talk" in text and "Colour of the sky?" in text and "Blue." in text
            assert f"Exported to {expected}" in notifications(app)

    run(main())


def test_export_writes_where_asked_and_creates_folders(tmp_path, default_gguf):
    target = tmp_path / "new" / "deeper" / "sky.json"

    async def main():
        app = app_with_conversation(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_export(pilot, "json")
            screen.query_one("#path", Input).value = str(target)
            await pilot.click("#save")
            await pilot.pause()
            exported = json.loads(target.read_text())
            assert [m["content"] for m in exported["messages"]] == ["Colour of the sky?", "Blue."]
            assert f"Exported to {target}" in notifications(app)

    run(main())


def test_an_existing_file_is_replaced_only_when_confirmed(tmp_path, default_gguf):
    target = tmp_path / "mine.md"
    target.write_text("my own notes")

    async def main():
        app = app_with_conversation(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_export(pilot, "markdown")
            screen.query_one("#path", Input).value = str(target)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            await pilot.pause()
            assert app.screen is screen  # back in the dialog, path as typed
            assert target.read_text() == "my own notes"
            assert screen.query_one("#path", Input).value == str(target)
            await pilot.press("enter")
            await pilot.pause()
            await pilot.press("y")
            await pilot.pause()
            assert not isinstance(app.screen, (ConfirmScreen, ExportScreen))
            assert "Colour of the sky?" in target.read_text()

    run(main())


def test_a_folder_keeps_the_suggested_name(tmp_path, default_gguf):
    folder = tmp_path / "exports here"
    folder.mkdir()

    async def main():
        app = app_with_conversation(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_export(pilot, "markdown")
            screen.query_one("#path", Input).value = str(folder)
            await pilot.press("enter")
            await pilot.pause()
            assert "Blue." in (folder / screen.default.name).read_text()

    run(main())


def test_an_unwritable_path_is_one_clear_line_and_the_dialog_stays(tmp_path, default_gguf):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "sky.md"

    async def main():
        app = app_with_conversation(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_export(pilot, "markdown")
            screen.query_one("#path", Input).value = str(bad)
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is screen and app.is_running
            error = str(screen.query_one("#error").render())
            assert error.startswith(f"Cannot write {bad}: ") and "Choose another folder" in error
            assert "\n" not in error
            screen.query_one("#path", Input).value = ""
            await pilot.press("enter")
            await pilot.pause()
            assert "Enter a file path" in str(screen.query_one("#error").render())
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, ExportScreen)
            assert not any("Exported" in n for n in notifications(app))

    run(main())


def test_the_palette_command_opens_the_dialog_and_a_relative_path_is_reported_in_full(tmp_path, default_gguf, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def main():
        app = app_with_conversation(tmp_path, default_gguf)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("ctrl+p", *"export as markdown")
            await pilot.pause(0.5)  # the palette searches in a worker
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ExportScreen)
            app.screen.query_one("#path", Input).value = "out/sky.md"
            await pilot.press("enter")
            await pilot.pause()
            assert "Blue." in (tmp_path / "out" / "sky.md").read_text()
            assert f"Exported to {tmp_path / 'out' / 'sky.md'}" in notifications(app)

    run(main())
