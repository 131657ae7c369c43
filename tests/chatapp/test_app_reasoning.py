"""A reply that thinks first, in the real app: the thinking streams into an open "Thinking" block
that folds when the answer starts, is stored apart from the answer (and so never sent back to the
model), reopens folded after a restart, and exports in both formats."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from apphelpers import messages, send, wait_for
from scripted import ScriptedModel
from textual.widgets import Collapsible, Markdown
from thinking import QWEN3_STYLE

from chatapp.app import ChatApp
from chatapp.export import export_json, export_markdown
from chatapp.store import Store

THOUGHT = " ".join(f"idea{i}" for i in range(60))
REPLY = f"<think>\n{THOUGHT}\n</think>\n\nThe answer is 4."


def test_thinking_streams_open_then_folds_and_is_stored_apart(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [REPLY, "Still 4."], delay=0.01, template=QWEN3_STYLE)
    store = Store(tmp_path / "history.db")
    app = ChatApp(store=store, load_model=lambda name: model)
    seen = {}

    async def main():
        async with app.run_test() as pilot:
            await send(pilot, "What is 2+2?")
            await wait_for(pilot, lambda: app.query(".thinking"), what="the thinking block")
            block = app.query_one(".thinking", Collapsible)
            seen["open_while_thinking"] = not block.collapsed
            seen["title_while_thinking"] = str(block.title)
            await wait_for(pilot, lambda: len(messages(app)) == 2 and messages(app)[1].status == "complete",
                           what="the finished reply")
            await pilot.pause(0.2)
            block = app.query_one(".thinking", Collapsible)
            seen["folded_after"] = block.collapsed
            seen["title_after"] = str(block.title)
            seen["answer"] = app.query(Markdown).last().source
            await send(pilot, "Sure?")
            await wait_for(pilot, lambda: len(messages(app)) == 4 and messages(app)[3].status == "complete",
                           what="the second reply")

    asyncio.run(main())
    assert seen["open_while_thinking"] and seen["title_while_thinking"] == "Thinking…"
    assert seen["folded_after"]
    assert seen["title_after"].startswith("Thinking · ") and " tokens · " in seen["title_after"]
    assert "The answer is 4." in seen["answer"] and "idea" not in seen["answer"]
    reply = Store(tmp_path / "history.db").messages(store.messages(store.most_recent().id)[0].conversation_id)[1]
    assert reply.content == "The answer is 4." and reply.reasoning == THOUGHT + "\n"
    assert reply.meta["reasoning_tokens"] > 60
    # The second turn's prompt holds the first answer, not its thinking.
    second_prompt = model.received[1]
    assert [m["content"] for m in second_prompt if m["role"] == "assistant"] == ["The answer is 4."]
    assert all("idea" not in m["content"] for m in second_prompt)
    assert "idea" not in model.prompts[1]


def _stored_conversation(tmp_path) -> tuple[Store, int]:
    store = Store(tmp_path / "history.db")
    conv = store.create_conversation(model="scripted")
    store.add_message(conv.id, "user", "What is 2+2?")
    reply = store.add_message(conv.id, "assistant", "", status="streaming")
    store.update_message(reply.id, content="The answer is 4.", reasoning="Two and two.\nThat makes four.",
                         status="complete", meta={"reasoning_tokens": 9, "reasoning_seconds": 0.4})
    return store, conv.id


def test_a_reopened_reply_shows_its_thinking_folded_and_it_expands(tmp_path, default_gguf):
    store, conv = _stored_conversation(tmp_path)
    store.close()
    app = ChatApp(store=Store(tmp_path / "history.db"), load_model=lambda name: ScriptedModel(default_gguf, []))
    seen = {}

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.query(".thinking"), what="the reopened thinking block")
            block = app.query_one(".thinking", Collapsible)
            seen["folded"], seen["title"] = block.collapsed, str(block.title)
            block.query_one("CollapsibleTitle").focus()
            await pilot.press("enter")  # how a keyboard user opens it
            await pilot.pause()
            seen["expanded"] = not block.collapsed
            seen["text"] = str(block.query_one(".thinking-text").render())

    asyncio.run(main())
    assert seen["folded"] and seen["title"] == "Thinking · 9 tokens · 0.4 s"
    assert seen["expanded"] and "That makes four." in seen["text"]


def test_reasoning_exports_in_both_formats(tmp_path):
    store, conv = _stored_conversation(tmp_path)
    md = export_markdown(store, conv)
    assert "<details>\n<summary>Thinking</summary>" in md and "That makes four." in md
    assert md.index("That makes four.") < md.index("The answer is 4.")
    reply = export_json(store, conv)["messages"][1]
    assert reply["content"] == "The answer is 4." and reply["reasoning_content"] == "Two and two.\nThat makes four."
    assert "reasoning_content" not in export_json(store, conv)["messages"][0]
    json.dumps(export_json(store, conv))


def test_m004_adds_reasoning_to_an_older_history(tmp_path, monkeypatch):
    from chatapp import migrations

    path = tmp_path / "old.db"
    m004 = migrations.MIGRATIONS.index(migrations.m004_message_reasoning)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:m004])
    db = sqlite3.connect(path)
    migrations.migrate(db, path)
    db.execute("INSERT INTO conversations (created_at, updated_at) VALUES (0, 0)")
    db.execute("INSERT INTO messages (conversation_id, seq, role, content, created_at) VALUES (1, 0, 'user', 'hi', 0)")
    db.commit()
    db.close()
    monkeypatch.undo()
    with Store(path) as new:
        [m] = new.messages(1)
        assert (m.content, m.reasoning) == ("hi", "")


def test_regenerate_keeps_the_thinking_of_the_reply_set_aside(tmp_path):
    store, conv = _stored_conversation(tmp_path)
    store.set_reply_aside(conv)
    store.add_message(conv, "assistant", "Four.")
    store.show_alternative(conv, -1)
    assert store.messages(conv)[1].reasoning == "Two and two.\nThat makes four."
