"""Reply alternatives in the store (real SQLite): regenerate keeps the old reply, browsing swaps
which one `messages` holds, and the m003 migration upgrades a database made by the schema before it."""

import sqlite3

import pytest

from chatapp import migrations
from chatapp.export import export_json
from chatapp.store import Alternatives, Store, StoreError


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "history.db") as s:
        yield s


def contents(store, conv_id):
    return [m.content for m in store.messages(conv_id)]


def test_regenerate_keeps_every_reply_and_browsing_swaps_the_shown_one(store):
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "Question")
    store.add_message(conv.id, "assistant", "first")
    assert store.reply_alternatives(conv.id) == Alternatives(0, 1)

    store.set_reply_aside(conv.id)
    assert contents(store, conv.id) == ["Question"]
    store.add_message(conv.id, "assistant", "second")
    store.set_reply_aside(conv.id)
    store.add_message(conv.id, "assistant", "third")
    assert store.reply_alternatives(conv.id) == Alternatives(2, 3)

    assert store.show_alternative(conv.id, -1) == Alternatives(1, 3)
    assert contents(store, conv.id) == ["Question", "second"]
    assert store.show_alternative(conv.id, -1) == Alternatives(0, 3)
    assert contents(store, conv.id) == ["Question", "first"]
    assert store.show_alternative(conv.id, -1) == Alternatives(0, 3)  # at the first: nothing changes
    assert contents(store, conv.id) == ["Question", "first"]
    assert store.show_alternative(conv.id, +2) == Alternatives(2, 3)
    assert contents(store, conv.id) == ["Question", "third"]
    # What export writes is the shown reply.
    assert [m["content"] for m in export_json(store, conv.id)["messages"]] == ["Question", "third"]

    # Regenerating while an older reply is shown keeps it at its place; the new one is the newest.
    store.show_alternative(conv.id, -2)
    store.set_reply_aside(conv.id)
    store.add_message(conv.id, "assistant", "fourth")
    assert store.reply_alternatives(conv.id) == Alternatives(3, 4)
    seen = []
    for _ in range(3):
        store.show_alternative(conv.id, -1)
        seen.append(contents(store, conv.id)[-1])
    assert seen == ["third", "second", "first"]


def test_a_reply_with_tool_calls_comes_back_whole(store):
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "List files")
    calls = [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]
    store.add_message(conv.id, "assistant", "", tool_calls=calls, meta={"model": "m"})
    store.add_message(conv.id, "tool", '["a"]', tool_call_id="c1", name="ls", meta={"is_error": False})
    store.add_message(conv.id, "assistant", "There is a.", status="stopped")
    before = [(m.role, m.content, m.status, m.tool_calls, m.tool_call_id, m.name, m.meta) for m in store.messages(conv.id)]

    store.set_reply_aside(conv.id)
    store.add_message(conv.id, "assistant", "other")
    store.show_alternative(conv.id, -1)
    after = [(m.role, m.content, m.status, m.tool_calls, m.tool_call_id, m.name, m.meta) for m in store.messages(conv.id)]
    assert after == before
    assert [m.seq for m in store.messages(conv.id)] == [0, 1, 2, 3]


def test_an_error_only_reply_is_not_kept_and_later_turns_browse_their_own_replies(store):
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "Q1")
    store.add_message(conv.id, "assistant", "", status="error", meta={"error": "too long"})
    store.set_reply_aside(conv.id)
    store.add_message(conv.id, "assistant", "A1")
    assert store.reply_alternatives(conv.id) == Alternatives(0, 1)

    store.set_reply_aside(conv.id)
    store.add_message(conv.id, "assistant", "A1 again")
    store.add_message(conv.id, "user", "Q2")
    store.add_message(conv.id, "assistant", "A2")
    assert store.reply_alternatives(conv.id) == Alternatives(0, 1)  # the last user message's replies
    assert store.show_alternative(conv.id, -1) == Alternatives(0, 1)
    assert contents(store, conv.id) == ["Q1", "A1 again", "Q2", "A2"]

    # Deleting the user message (edit and resend) deletes its alternatives with it.
    store.delete_messages_from(conv.id, 0)
    assert store._db.execute("SELECT count(*) FROM reply_alternatives").fetchone()[0] == 0


def test_malformed_stored_alternative_is_a_store_error(store):
    conv = store.create_conversation()
    user = store.add_message(conv.id, "user", "Q")
    store.add_message(conv.id, "assistant", "A")
    store._db.execute("INSERT INTO reply_alternatives (user_message_id, position, messages, created_at) VALUES (?, 1, ?, 0)",
                      (user.id, '[{"role": "wizard"}]'))
    with pytest.raises(StoreError, match="malformed"):
        store.show_alternative(conv.id, +1)
    assert contents(store, conv.id) == ["Q", "A"]  # the failed swap was rolled back


def test_m003_upgrades_a_database_made_by_the_previous_schema(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    m003 = migrations.MIGRATIONS.index(migrations.m003_reply_alternatives)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:m003])
    with Store(path) as old:
        conv = old.create_conversation(model="smollm2-135m")
        old.add_message(conv.id, "user", "Question")
        old.add_message(conv.id, "assistant", "old answer")
    db = sqlite3.connect(path)
    assert "reply_alternatives" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    monkeypatch.undo()

    with Store(path) as new:
        versions = [r[0] for r in new._db.execute("SELECT name FROM _migrations ORDER BY version")]
        assert "m003_reply_alternatives" in versions  # later migrations follow it
        assert contents(new, conv.id) == ["Question", "old answer"]
        new.set_reply_aside(conv.id)
        new.add_message(conv.id, "assistant", "new answer")
        assert new.show_alternative(conv.id, -1) == Alternatives(0, 2)
        assert contents(new, conv.id) == ["Question", "old answer"]
