"""chatapp.store on real SQLite files: migrations, concurrency, search, export, crash durability."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from chatapp.export import export_json, export_markdown
from chatapp.migrations import MIGRATIONS
from chatapp.store import Store, StoreError, default_db_path


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "history.db") as s:
        yield s


def raw(path):
    return sqlite3.connect(path, isolation_level=None)


def test_default_path_is_in_user_data_dir():
    import platformdirs

    assert default_db_path() == default_db_path().parent / "history.db"
    assert str(default_db_path().parent) == platformdirs.user_data_dir("chatapp")


def test_creates_parent_dirs_and_records_migrations_once(tmp_path):
    path = tmp_path / "a" / "b" / "history.db"
    Store(path).close()
    db = raw(path)
    rows = db.execute("SELECT version, name FROM _migrations ORDER BY version").fetchall()
    assert rows == [(i + 1, fn.__name__) for i, fn in enumerate(MIGRATIONS)]
    applied_at = db.execute("SELECT applied_at FROM _migrations").fetchall()
    db.close()

    Store(path).close()  # re-opening applies nothing new
    db = raw(path)
    assert db.execute("SELECT applied_at FROM _migrations").fetchall() == applied_at
    db.close()


def test_newer_schema_than_code_is_refused(tmp_path):
    path = tmp_path / "history.db"
    Store(path).close()
    db = raw(path)
    db.execute("INSERT INTO _migrations VALUES (?, 'm999_from_the_future', 0)", (len(MIGRATIONS) + 1,))
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_corrupt_file_raises_store_error_naming_it(tmp_path):
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(StoreError, match="history.db"):
        Store(path)


def test_foreign_sqlite_database_is_not_touched(tmp_path):
    path = tmp_path / "other.db"
    db = raw(path)
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    db.close()
    with pytest.raises(StoreError, match="not a chatapp history"):
        Store(path)
    db = raw(path)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["photos"]
    db.close()


def test_wal_busy_timeout_and_foreign_keys(store):
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert not db.in_transaction


def test_a_write_waiting_on_another_process_leaves_reads_free_and_then_goes_through(tmp_path):
    """Another process holds the write lock: a worker thread's write waits (up to the busy timeout)
    without holding the shared connection, so the UI thread's reads answer at once meanwhile, and
    the write lands once the lock is let go. The thread that capped its waits fails fast instead."""
    path = tmp_path / "history.db"
    with Store(path, busy_timeout=5.0) as store:
        conv = store.create_conversation()
        other = raw(path)
        other.execute("BEGIN IMMEDIATE")
        written = threading.Event()
        worker = threading.Thread(target=lambda: (store.add_message(conv.id, "user", "from the worker"), written.set()))
        worker.start()
        time.sleep(0.2)  # the worker is now waiting for the lock
        started = time.monotonic()
        assert store.messages(conv.id) == [] and store.get_conversation(conv.id).id == conv.id
        assert time.monotonic() - started < 0.5  # reads are not stuck behind the waiting write
        store.cap_waits_on_this_thread(0.1)
        started = time.monotonic()
        with pytest.raises(StoreError, match="stayed locked by another process for 0.1 s"):
            store.rename(conv.id, "from the UI")
        assert time.monotonic() - started < 1.0
        assert not written.is_set()
        other.execute("COMMIT")
        other.close()
        worker.join(timeout=5)
        assert written.is_set() and [m.content for m in store.messages(conv.id)] == ["from the worker"]
        assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000  # restored after each try


def test_replace_from_keeps_the_old_tail_when_the_new_message_cannot_be_written(store):
    conv = store.create_conversation()
    for role, text in [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]:
        store.add_message(conv.id, role, text)
    # The INSERT fails after the DELETE has run, inside the same transaction: both are undone.
    store._db.execute("CREATE TEMP TRIGGER fail BEFORE INSERT ON messages WHEN NEW.content = 'boom' "
                      "BEGIN SELECT RAISE(ABORT, 'the write failed'); END")
    with pytest.raises(StoreError, match="the write failed"):
        store.add_message(conv.id, "user", "boom", replace_from=2)
    assert [m.content for m in store.messages(conv.id)] == ["q1", "a1", "q2", "a2"]
    store.add_message(conv.id, "user", "q2 edited", replace_from=2)
    assert [m.content for m in store.messages(conv.id)] == ["q1", "a1", "q2 edited"]


def test_two_instances_writing_from_two_threads(tmp_path):
    path = tmp_path / "history.db"
    stores = [Store(path), Store(path)]
    conversation = stores[0].create_conversation()
    errors = []

    def writer(s, n):
        try:
            for i in range(40):
                m = s.add_message(conversation.id, "user", f"{n}-{i}")
                s.update_message(m.id, content=f"{n}-{i}!", meta={"writer": n})
                s.list_conversations(search=f"{n}-{i}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    msgs = stores[1].messages(conversation.id)
    assert len(msgs) == 80 and [m.seq for m in msgs] == list(range(80))
    assert all(m.content.endswith("!") for m in msgs)
    for s in stores:
        s.close()


def test_one_store_shared_between_threads(store):
    c = store.create_conversation()
    threads = [threading.Thread(target=lambda: [store.add_message(c.id, "user", "x") for _ in range(30)])
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [m.seq for m in store.messages(c.id)] == list(range(90))


def test_title_derived_renamed_and_reset(store):
    c = store.create_conversation(model="smollm2-135m", settings={"temperature": 0.7})
    assert (c.title, c.custom_title, c.model, c.settings) == ("New conversation", False, "smollm2-135m",
                                                              {"temperature": 0.7})
    store.add_message(c.id, "system", "be brief")
    store.add_message(c.id, "user", "\n  How do   I reverse a list in Python?\nthanks")
    store.add_message(c.id, "user", "second question")
    assert store.get_conversation(c.id).title == "How do I reverse a list in Python?"

    store.rename(c.id, "  Lists\nin Python ")
    c2 = store.get_conversation(c.id)
    assert (c2.title, c2.custom_title) == ("Lists in Python", True)
    store.rename(c.id, "   ")
    c3 = store.get_conversation(c.id)
    assert (c3.title, c3.custom_title) == ("How do I reverse a list in Python?", False)

    long = store.create_conversation()
    store.add_message(long.id, "user", "word " * 40)
    title = store.get_conversation(long.id).title
    assert len(title) <= 60 and title.endswith("…")


def test_update_conversation_changes_only_given_fields(store):
    c = store.create_conversation(system_prompt="sys", model="m", settings={"top_p": 0.9})
    c2 = store.update_conversation(c.id, model="other")
    assert (c2.system_prompt, c2.model, c2.settings) == ("sys", "other", {"top_p": 0.9})
    c3 = store.update_conversation(c.id, system_prompt=None, settings={"temperature": 0})
    assert (c3.system_prompt, c3.model, c3.settings) == (None, "other", {"temperature": 0})
    with pytest.raises(KeyError):
        store.update_conversation(12345, model="x")


def test_newest_activity_first(store):
    a = store.create_conversation()
    b = store.create_conversation()
    c = store.create_conversation()
    assert [x.id for x in store.list_conversations()] == [c.id, b.id, a.id]
    m = store.add_message(a.id, "user", "hi")
    assert [x.id for x in store.list_conversations()] == [a.id, c.id, b.id]
    store.add_message(b.id, "user", "hi")
    store.update_message(m.id, content="hi again")
    assert [x.id for x in store.list_conversations()] == [a.id, b.id, c.id]
    assert store.most_recent().id == a.id
    assert [x.id for x in store.list_conversations(limit=2)] == [a.id, b.id]


@pytest.mark.parametrize("fts", [True, False], ids=["fts5", "like"])
def test_search_content_and_titles_with_literal_wildcards(store, fts):
    if fts and not store._fts:
        pytest.skip("this SQLite has no FTS5 trigram tokenizer")
    store._fts = fts  # False: the LIKE fallback, on the same data
    pct = store.create_conversation()
    store.add_message(pct.id, "user", "Get 50% off today")
    plain = store.create_conversation()
    store.add_message(plain.id, "user", "Get 50 pct off")
    snake = store.create_conversation()
    store.add_message(snake.id, "user", "rename my_var please")
    store.add_message(snake.id, "assistant", "Use a Regular Expression")
    titled = store.create_conversation()
    store.rename(titled.id, "Trip to Kyoto")

    def ids(q):
        return {c.id for c in store.list_conversations(search=q)}

    assert ids("50%") == {pct.id}
    assert ids("%") == {pct.id}
    assert ids("_") == {snake.id}
    assert ids("my_var") == {snake.id}
    assert ids("my%var") == set()
    assert ids("regular expr") == {snake.id}  # assistant content, case-insensitive
    assert ids("kyoto") == {titled.id}  # a custom title
    assert ids("get 50") == {pct.id, plain.id}
    assert ids('say "hi"') == set()
    assert len(store.list_conversations(search="  ")) == 4


def test_delete_cascades(store):
    keep = store.create_conversation()
    store.add_message(keep.id, "user", "keep me around")
    gone = store.create_conversation()
    store.add_message(gone.id, "user", "delete me please")
    store.add_message(gone.id, "assistant", "ok")
    store.delete_conversation(gone.id)
    with pytest.raises(KeyError):
        store.get_conversation(gone.id)
    with pytest.raises(KeyError):
        store.messages(gone.id)
    with pytest.raises(KeyError):
        store.delete_conversation(gone.id)
    assert store._db.execute("SELECT count(*) FROM messages WHERE conversation_id = ?", (gone.id,)).fetchone()[0] == 0
    assert store.list_conversations(search="delete me") == []
    assert [c.id for c in store.list_conversations(search="keep me")] == [keep.id]
    if store._fts:
        store._db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


def test_delete_messages_from(store):
    c = store.create_conversation()
    for i, role in enumerate(["user", "assistant", "user", "assistant"]):
        store.add_message(c.id, role, f"m{i}")
    store.delete_messages_from(c.id, 2)
    assert [(m.seq, m.content) for m in store.messages(c.id)] == [(0, "m0"), (1, "m1")]
    m = store.add_message(c.id, "user", "edited")
    assert m.seq == 2
    store.delete_messages_from(c.id, 0)
    assert store.messages(c.id) == []


def test_streaming_updates_then_recover(store):
    c = store.create_conversation()
    store.add_message(c.id, "user", "count")
    reply = store.add_message(c.id, "assistant", status="streaming", meta={"model": "m"})
    assert (reply.seq, reply.status, reply.content) == (1, "streaming", "")
    store.update_message(reply.id, content="1 2")
    store.update_message(reply.id, content="1 2 3")
    assert store.messages(c.id)[1].content == "1 2 3"
    assert store.recover_interrupted() == 1
    assert store.messages(c.id)[1].status == "stopped"
    assert store.recover_interrupted() == 0

    done = store.add_message(c.id, "assistant", status="streaming")
    store.update_message(done.id, content="ok", status="complete", meta={"tokens": 1, "finish_reason": "stop"})
    final = store.messages(c.id)[2]
    assert (final.content, final.status, final.meta) == ("ok", "complete", {"tokens": 1, "finish_reason": "stop"})
    store.update_message(reply.id, meta={"tokens": 3})
    assert store.messages(c.id)[1].meta == {"model": "m", "tokens": 3}  # merged


def test_validation(store):
    c = store.create_conversation()
    with pytest.raises(ValueError, match="role"):
        store.add_message(c.id, "robot", "hi")
    with pytest.raises(ValueError, match="status"):
        store.add_message(c.id, "user", "hi", status="done")
    m = store.add_message(c.id, "user", "hi")
    with pytest.raises(ValueError, match="status"):
        store.update_message(m.id, status="finished")
    with pytest.raises(ValueError, match="JSON"):
        store.add_message(c.id, "user", "hi", meta={"x": object()})
    with pytest.raises(ValueError):
        store.create_conversation(settings=[1, 2])
    with pytest.raises(KeyError):
        store.add_message(999, "user", "hi")
    with pytest.raises(KeyError):
        store.update_message(999, content="x")
    assert len(store.messages(c.id)) == 1  # failed writes left nothing behind


TOOL_CALLS = [{"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


def test_tool_calls_round_trip_in_openai_form(store):
    c = store.create_conversation()
    store.add_message(c.id, "user", "weather in Paris?")
    store.add_message(c.id, "assistant", "", tool_calls=TOOL_CALLS)
    store.add_message(c.id, "tool", '{"temp_c": 18}', tool_call_id="call_1", name="get_weather")
    store.add_message(c.id, "assistant", "It is 18 °C.")
    assert [m.to_openai() for m in store.messages(c.id)] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS},
        {"role": "tool", "content": '{"temp_c": 18}', "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "assistant", "content": "It is 18 °C."},
    ]


def test_export_markdown(store):
    c = store.create_conversation(system_prompt="You are terse.", model="smollm2-135m")
    code = "Here:\n\n```python\ndef f(x):\n    return x[::-1]  # reversed\n```\n"
    store.add_message(c.id, "user", "Reverse a list?")
    store.add_message(c.id, "assistant", code)
    store.add_message(c.id, "assistant", "", tool_calls=TOOL_CALLS)
    store.add_message(c.id, "tool", "sunny ```", tool_call_id="call_1", name="get_weather")
    store.add_message(c.id, "assistant", "half a rep", status="stopped")
    md = export_markdown(store, c.id)
    assert md.startswith("# Reverse a list?\n")
    assert "smollm2-135m" in md
    assert "## System\n\nYou are terse." in md
    assert "## User\n\nReverse a list?" in md
    assert "## Assistant\n\n" + code in md  # verbatim
    assert "`get_weather`" in md and '"city": "Paris"' in md
    assert "````\nsunny ```\n````" in md  # the fence outgrows backticks in the content
    assert "_(stopped)_" in md
    assert md.index("## User") < md.index("## Assistant") < md.index("## Tool result")


def test_export_json_round_trips(store):
    c = store.create_conversation(system_prompt="sys", settings={"temperature": 0.2})
    store.add_message(c.id, "user", "héllo")
    store.add_message(c.id, "assistant", "", tool_calls=TOOL_CALLS, meta={"tokens_per_second": 31.2})
    store.add_message(c.id, "tool", "18", tool_call_id="call_1", name="get_weather")
    data = export_json(store, c.id)
    assert json.loads(json.dumps(data)) == data
    assert data["conversation"]["id"] == c.id and data["conversation"]["title"] == "héllo"
    assert data["conversation"]["settings"] == {"temperature": 0.2}
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "tool"]
    assert data["messages"][1]["tool_calls"] == TOOL_CALLS
    assert data["messages"][1]["meta"] == {"tokens_per_second": 31.2}
    assert data["messages"][2]["status"] == "complete" and "created_at" in data["messages"][2]
    with pytest.raises(KeyError):
        export_json(store, 999)


STREAMER = """
import sys, time
from chatapp.store import Store
s = Store(sys.argv[1])
c = s.create_conversation(model="m")
s.add_message(c.id, "user", "tell me a story")
m = s.add_message(c.id, "assistant", status="streaming")
print("ready", flush=True)
text = ""
while True:
    text += "once upon a time "
    s.update_message(m.id, content=text)
    time.sleep(0.05)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_reply_keeps_the_conversation(tmp_path):
    path = tmp_path / "history.db"
    proc = subprocess.Popen([sys.executable, "-c", STREAMER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    db = raw(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Store(path) as s:
        (c,) = s.list_conversations()
        assert c.title == "tell me a story"
        user, reply = s.messages(c.id)
        assert (user.role, user.content) == ("user", "tell me a story")
        assert reply.status == "streaming" and reply.content.startswith("once upon a time")
        assert s.recover_interrupted() == 1
        assert s.messages(c.id)[1].status == "stopped"


def test_tool_calls_can_be_added_to_a_streamed_reply(tmp_path):
    with Store(tmp_path / "h.db") as store:
        conv = store.create_conversation()
        reply = store.add_message(conv.id, "assistant", "", status="streaming")
        calls = [{"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"1+1\"}"}}]
        store.update_message(reply.id, content="", status="complete", tool_calls=calls)
        (stored,) = store.messages(conv.id)
        assert stored.tool_calls == calls and stored.to_openai()["tool_calls"] == calls
        with pytest.raises(ValueError):
            store.update_message(reply.id, tool_calls=["not a dict"])
