"""Durable chat history: conversations and their messages in one SQLite file.

The file (default `<user data dir>/chatapp/history.db`) runs in WAL mode with a busy timeout, so two
app instances wait for each other instead of failing, and a killed process loses at most its last
uncommitted write. Every write is its own short IMMEDIATE transaction; nothing stays open between
calls. The schema changes only through the numbered, append-only migrations in chatapp.migrations.

Pure stdlib + platformdirs. The app calls it from the UI thread and from generation workers, so the
one connection is shared (`check_same_thread=False`) under a lock. A write waiting for another
process's lock waits in short slices with that lock released, so the other threads' reads go on
meanwhile; the UI thread caps its own waits (`cap_waits_on_this_thread`), so a locked file never
freezes the screen for the whole busy timeout.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs

from chatapp.migrations import SchemaError, migrate
from chatapp.records import (
    DEFAULT_TITLE,
    ROLES,
    STATUSES,
    TITLE_CHARS,
    Alternatives,
    Conversation,
    Message,
    check_choice,
    check_dict,
    check_optional_str,
    check_str,
    check_tool_calls,
    derive_title,
    to_json,
)

__all__ = ["Alternatives", "Conversation", "Message", "Store", "StoreError", "default_db_path", "derive_title",
           "DEFAULT_TITLE", "ROLES", "STATUSES", "TITLE_CHARS"]

_ALTERNATIVE_KEYS = frozenset({"role", "content", "status", "tool_calls", "tool_call_id", "name", "meta", "created_at"})
BUSY_TIMEOUT_S = 5.0
WRITE_RETRY_S = 0.02  # the pause between tries of a write lock another process holds


class StoreError(Exception):
    """The history database cannot be used: corrupt, not ours, from a newer chatapp, or locked."""


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("chatapp")) / "history.db"


# --- helpers ---------------------------------------------------------------------------------

_UNSET: Any = object()  # "argument not given", where None is a value

_CONVERSATION_SQL = """
    SELECT c.*, (SELECT m.content FROM messages m WHERE m.conversation_id = c.id AND m.role = 'user'
                 ORDER BY m.seq LIMIT 1) AS first_user
    FROM conversations c
"""


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Store:
    """Chat history in one SQLite file. Missing ids raise KeyError, bad arguments ValueError,
    an unusable database StoreError."""

    def __init__(self, path: str | Path | None = None, *, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.busy_timeout = busy_timeout  # seconds a write waits for another process's transaction
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._waits = threading.local()  # .cap: this thread's longest wait for the write lock
        self._db = self._open()

    def cap_waits_on_this_thread(self, seconds: float) -> None:
        """Writes made from the calling thread wait at most `seconds` for another process's lock
        (the UI thread: a short failure it can report beats a frozen screen)."""
        self._waits.cap = seconds

    def _open(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; timeout is SQLite's busy timeout.
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as e:
            raise self._error(e) from e
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: each commit is fsynced to the WAL, so even a power cut keeps the last write.
            db.execute("PRAGMA synchronous = FULL")
            tables = migrate(db, self.path)
            self._fts = "messages_fts" in tables
            if self._fts:
                db.execute("SELECT 1 FROM messages_fts LIMIT 0")  # fails if this SQLite lacks FTS5
        except sqlite3.Error as e:
            db.close()
            raise self._error(e) from e
        except SchemaError as e:  # its message already names the file and says what to do
            db.close()
            raise StoreError(str(e)) from e
        except BaseException:
            db.close()
            raise
        return db

    def _error(self, e: sqlite3.Error, waited: float | None = None) -> StoreError:
        code = getattr(e, "sqlite_errorname", "") or ""
        if code.startswith("SQLITE_BUSY"):
            return StoreError(f"chat history {self.path} stayed locked by another process for "
                              f"{self.busy_timeout if waited is None else waited:g} s; try again")
        if code.startswith("SQLITE_FULL"):
            return StoreError(f"chat history {self.path}: the disk is full; free some space")
        if code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return StoreError(f"chat history {self.path} is corrupt or not an SQLite database ({e}); "
                              "move it aside and chatapp will start a new one")
        return StoreError(f"chat history {self.path}: {e}")

    @contextmanager
    def _read(self, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; snapshot=True: several SELECTs see one state."""
        with self._lock:
            try:
                if snapshot:
                    self._db.execute("BEGIN")
                try:
                    yield self._db
                finally:
                    if self._db.in_transaction:
                        self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._error(e) from e

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction. IMMEDIATE takes the write lock up front, instead of failing
        to upgrade a read lock half-way. While another process holds it, tries are repeated
        outside our lock until this thread's wait is spent (SQLite's own busy wait would hold the
        shared connection, and every other thread's reads, for all of it)."""
        cap = getattr(self._waits, "cap", None)
        wait = self.busy_timeout if cap is None else min(cap, self.busy_timeout)
        deadline = time.monotonic() + wait
        while True:
            self._lock.acquire()
            try:
                self._begin_immediate()
                break
            except sqlite3.OperationalError as e:
                self._lock.release()
                code = getattr(e, "sqlite_errorname", "") or ""
                if not code.startswith("SQLITE_BUSY") or time.monotonic() >= deadline:
                    raise self._error(e, wait) from e
                time.sleep(WRITE_RETRY_S)
            except sqlite3.Error as e:
                self._lock.release()
                raise self._error(e, wait) from e
            except BaseException:
                self._lock.release()
                raise
        try:
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._error(e, wait) from e
        finally:
            self._lock.release()

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE without SQLite's busy wait: one try (our caller holds the lock)."""
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- rows from disk are validated before they become objects ---

    def _json(self, text: str | None, kind: type, what: str) -> Any:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, kind):
            raise StoreError(f"chat history {self.path}: {what} is not a JSON {kind.__name__}: {text[:80]!r}")
        return value

    def _conversation(self, row: sqlite3.Row) -> Conversation:
        custom = row["title"] is not None
        return Conversation(
            id=row["id"], title=row["title"] if custom else derive_title(row["first_user"]),
            custom_title=custom, created_at=row["created_at"], updated_at=row["updated_at"],
            system_prompt=row["system_prompt"], model=row["model"],
            settings=self._json(row["settings"], dict, "conversation settings"))

    def _message(self, row: sqlite3.Row) -> Message:
        return Message(
            id=row["id"], conversation_id=row["conversation_id"], seq=row["seq"], role=row["role"],
            content=row["content"], status=row["status"],
            tool_calls=self._json(row["tool_calls"], list, "message tool_calls"),
            tool_call_id=row["tool_call_id"], name=row["name"],
            meta=self._json(row["meta"], dict, "message meta"), created_at=row["created_at"],
            reasoning=row["reasoning"])

    def _get(self, db: sqlite3.Connection, id: int) -> Conversation:
        row = db.execute(_CONVERSATION_SQL + " WHERE c.id = ?", (id,)).fetchone()
        if row is None:
            raise KeyError(f"no conversation {id}")
        return self._conversation(row)

    def snapshot(self, conversation_id: int) -> tuple[Conversation, list[Message]]:
        """The conversation and its messages in seq order, read in one transaction."""
        with self._read(snapshot=True) as db:
            conversation = self._get(db, conversation_id)
            rows = db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY seq",
                              (conversation_id,)).fetchall()
            return conversation, [self._message(r) for r in rows]

    @staticmethod
    def _touch(db: sqlite3.Connection, conversation_id: int) -> None:
        # Strictly increasing across the file, so the sidebar order is the order of activity even
        # with a coarse or stepped-back clock.
        cur = db.execute(
            "UPDATE conversations SET updated_at = max(?, (SELECT max(updated_at) FROM conversations) + 1e-6)"
            " WHERE id = ?", (time.time(), conversation_id))
        if cur.rowcount == 0:
            raise KeyError(f"no conversation {conversation_id}")

    # --- conversations ---

    def create_conversation(self, *, system_prompt: str | None = None, model: str | None = None,
                            settings: dict | None = None) -> Conversation:
        check_optional_str(system_prompt, "system_prompt")
        check_optional_str(model, "model")
        check_dict(settings, "settings")
        settings_json = to_json(settings or {}, "settings")
        with self._write() as db:
            now = time.time()
            cur = db.execute(
                "INSERT INTO conversations (created_at, updated_at, system_prompt, model, settings)"
                " VALUES (?, max(?, coalesce((SELECT max(updated_at) FROM conversations) + 1e-6, 0)), ?, ?, ?)",
                (now, now, system_prompt, model, settings_json))
            return self._get(db, cur.lastrowid)

    def get_conversation(self, id: int) -> Conversation:
        with self._read() as db:
            return self._get(db, id)

    def list_conversations(self, search: str | None = None, limit: int = 500) -> list[Conversation]:
        """Newest activity first; `search` matches custom titles and any message's text, as a
        case-insensitive substring (% and _ are literal)."""
        query = (search or "").strip()
        params: dict[str, Any] = {"limit": int(limit)}
        where = ""
        if query:
            params["like"] = f"%{_escape_like(query)}%"
            if self._fts and len(query) >= 3:  # a trigram index cannot match fewer than 3 chars
                params["phrase"] = '"' + query.replace('"', '""') + '"'
                in_content = ("SELECT conversation_id FROM messages WHERE id IN"
                              " (SELECT rowid FROM messages_fts WHERE messages_fts MATCH :phrase)")
            else:
                in_content = r"SELECT conversation_id FROM messages WHERE content LIKE :like ESCAPE '\'"
            where = rf" WHERE c.title LIKE :like ESCAPE '\' OR c.id IN ({in_content})"
        with self._read() as db:
            rows = db.execute(_CONVERSATION_SQL + where + " ORDER BY c.updated_at DESC, c.id DESC LIMIT :limit",
                              params).fetchall()
            return [self._conversation(r) for r in rows]

    def most_recent(self) -> Conversation | None:
        found = self.list_conversations(limit=1)
        return found[0] if found else None

    def rename(self, id: int, title: str) -> None:
        """A blank title goes back to the derived one."""
        check_optional_str(title, "title")
        title = " ".join((title or "").split())  # a title is one line
        with self._write() as db:
            if db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title or None, id)).rowcount == 0:
                raise KeyError(f"no conversation {id}")

    def delete_conversation(self, id: int) -> None:
        with self._write() as db:  # its messages go by ON DELETE CASCADE
            if db.execute("DELETE FROM conversations WHERE id = ?", (id,)).rowcount == 0:
                raise KeyError(f"no conversation {id}")

    def update_conversation(self, id: int, *, system_prompt: str | None = _UNSET, model: str | None = _UNSET,
                            settings: dict | None = _UNSET) -> Conversation:
        """Change only the fields given (None clears one; settings=None means {})."""
        changes: dict[str, Any] = {}
        if system_prompt is not _UNSET:
            check_optional_str(system_prompt, "system_prompt")
            changes["system_prompt"] = system_prompt
        if model is not _UNSET:
            check_optional_str(model, "model")
            changes["model"] = model
        if settings is not _UNSET:
            check_dict(settings, "settings")
            changes["settings"] = to_json(settings or {}, "settings")
        with self._write() as db:
            if changes:  # the column names come from the fixed set above, never from the caller
                assignments = ", ".join(f"{column} = :{column}" for column in changes)
                db.execute(f"UPDATE conversations SET {assignments} WHERE id = :id", {**changes, "id": id})
            return self._get(db, id)

    # --- messages ---

    def add_message(self, conversation_id: int, role: str, content: str = "", *, status: str = "complete",
                    tool_calls: list[dict] | None = None, tool_call_id: str | None = None,
                    name: str | None = None, meta: dict | None = None, replace_from: int | None = None) -> Message:
        """Append a message; replace_from=seq first deletes the messages at `seq` and after, in the
        same transaction (edit-and-resend: the old tail goes only if the new message is in)."""
        check_choice(role, ROLES, "role")
        check_choice(status, STATUSES, "status")
        check_str(content, "content")
        if tool_calls is not None:
            check_tool_calls(tool_calls)
        check_optional_str(tool_call_id, "tool_call_id")
        check_optional_str(name, "name")
        check_dict(meta, "meta")
        meta = dict(meta or {})
        calls_json = None if tool_calls is None else to_json(tool_calls, "tool_calls")
        meta_json = to_json(meta, "meta")
        with self._write() as db:
            self._touch(db, conversation_id)
            if replace_from is not None:
                db.execute("DELETE FROM messages WHERE conversation_id = ? AND seq >= ?", (conversation_id, int(replace_from)))
            seq = db.execute("SELECT coalesce(max(seq) + 1, 0) FROM messages WHERE conversation_id = ?",
                             (conversation_id,)).fetchone()[0]
            now = time.time()
            cur = db.execute(
                "INSERT INTO messages (conversation_id, seq, role, content, status, tool_calls, tool_call_id,"
                " name, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, seq, role, content, status, calls_json, tool_call_id, name, meta_json, now))
        return Message(id=cur.lastrowid, conversation_id=conversation_id, seq=seq, role=role, content=content,
                       status=status, tool_calls=json.loads(calls_json) if calls_json else tool_calls,
                       tool_call_id=tool_call_id, name=name, meta=meta, created_at=now)

    def update_message(self, message_id: int, *, content: str | None = None, status: str | None = None,
                       meta: dict | None = None, tool_calls: list[dict] | None = None,
                       reasoning: str | None = None) -> None:
        """Replace content, reasoning, status and/or tool calls; `meta` is merged into the stored
        meta (top level)."""
        changes: dict[str, Any] = {}
        if reasoning is not None:
            check_str(reasoning, "reasoning")
            changes["reasoning"] = reasoning
        if tool_calls is not None:
            check_tool_calls(tool_calls)
            changes["tool_calls"] = to_json(tool_calls, "tool_calls")
        if content is not None:
            check_str(content, "content")
            changes["content"] = content  # only then does the search-index trigger fire
        if status is not None:
            check_choice(status, STATUSES, "status")
            changes["status"] = status
        check_dict(meta, "meta")
        with self._write() as db:
            row = db.execute("SELECT conversation_id, meta FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise KeyError(f"no message {message_id}")
            if meta:
                changes["meta"] = to_json({**self._json(row["meta"], dict, "message meta"), **meta}, "meta")
            if changes:
                assignments = ", ".join(f"{column} = :{column}" for column in changes)
                db.execute(f"UPDATE messages SET {assignments} WHERE id = :id", {**changes, "id": message_id})
                self._touch(db, row["conversation_id"])

    def messages(self, conversation_id: int) -> list[Message]:
        """In seq order; KeyError for a missing conversation."""
        return self.snapshot(conversation_id)[1]

    def delete_messages_from(self, conversation_id: int, seq: int) -> None:
        """Delete the messages at `seq` and after (regenerate, edit-and-resend)."""
        with self._write() as db:
            self._touch(db, conversation_id)
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND seq >= ?", (conversation_id, int(seq)))

    # --- reply alternatives: regenerate keeps the old reply; the shown one is what the model sees ---

    def set_reply_aside(self, conversation_id: int) -> None:
        """Move the last reply (every message after the last user message) into the alternatives
        of that user message, at the position it was shown at; the next reply becomes the newest.
        A reply that is only errors is dropped: there is nothing in it to come back to."""
        with self._write() as db:
            user = self._last_user_message(db, conversation_id)
            if user is None:
                return
            self._touch(db, conversation_id)
            self._set_tail_aside(db, user, self._alternatives(db, user["id"]).shown, always=False)

    def reply_alternatives(self, conversation_id: int) -> Alternatives:
        """Which of the last user message's replies is shown, and how many there are."""
        with self._read() as db:
            user = self._last_user_message(db, conversation_id)
            return Alternatives(0, 1) if user is None else self._alternatives(db, user["id"])

    def show_alternative(self, conversation_id: int, step: int) -> Alternatives:
        """Show the reply `step` places away (-1: the previous one) in place of the last reply;
        at either end nothing changes. The shown reply is what `messages` (and so the model and
        export) sees from then on."""
        with self._write() as db:
            user = self._last_user_message(db, conversation_id)
            if user is None:
                return Alternatives(0, 1)
            now = self._alternatives(db, user["id"])
            target = now.shown + step
            if step == 0 or not 0 <= target < now.count:
                return now
            self._touch(db, conversation_id)
            self._set_tail_aside(db, user, now.shown, always=True)
            row = db.execute("SELECT id, messages FROM reply_alternatives WHERE user_message_id = ? AND position = ?",
                             (user["id"], target)).fetchone()
            db.execute("DELETE FROM reply_alternatives WHERE id = ?", (row["id"],))
            for seq, m in enumerate(self._json(row["messages"], list, "reply alternative"), start=user["seq"] + 1):
                if not (isinstance(m, dict) and _ALTERNATIVE_KEYS <= m.keys() and m["role"] in ROLES and m["status"] in STATUSES):
                    raise StoreError(f"chat history {self.path}: a stored reply alternative is malformed: {str(m)[:80]!r}")
                db.execute(
                    "INSERT INTO messages (conversation_id, seq, role, content, status, tool_calls, tool_call_id,"
                    " name, meta, created_at, reasoning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (conversation_id, seq, m["role"], m["content"], m["status"],
                     None if m["tool_calls"] is None else json.dumps(m["tool_calls"], ensure_ascii=False),
                     m["tool_call_id"], m["name"], json.dumps(m["meta"], ensure_ascii=False), m["created_at"],
                     str(m.get("reasoning") or "")))
            return Alternatives(target, now.count)

    @staticmethod
    def _last_user_message(db: sqlite3.Connection, conversation_id: int) -> sqlite3.Row | None:
        return db.execute("SELECT id, seq FROM messages WHERE conversation_id = ? AND role = 'user'"
                          " ORDER BY seq DESC LIMIT 1", (conversation_id,)).fetchone()

    @staticmethod
    def _alternatives(db: sqlite3.Connection, user_message_id: int) -> Alternatives:
        stored = {r[0] for r in db.execute("SELECT position FROM reply_alternatives WHERE user_message_id = ?",
                                           (user_message_id,))}
        shown = next(p for p in range(len(stored) + 1) if p not in stored)  # the one position not stored
        return Alternatives(shown, len(stored) + 1)

    def _set_tail_aside(self, db: sqlite3.Connection, user: sqlite3.Row, position: int, *, always: bool) -> None:
        """Delete the messages after `user`, first storing them as the reply at `position` (always,
        or when they hold more than errors)."""
        rows = db.execute("SELECT * FROM messages WHERE conversation_id = (SELECT conversation_id FROM messages"
                          " WHERE id = ?) AND seq > ? ORDER BY seq", (user["id"], user["seq"])).fetchall()
        tail = [self._message(r) for r in rows]
        if always or any(m.status != "error" for m in tail):
            kept = [{"role": m.role, "content": m.content, "status": m.status, "tool_calls": m.tool_calls,
                     "tool_call_id": m.tool_call_id, "name": m.name, "meta": m.meta, "created_at": m.created_at,
                     "reasoning": m.reasoning}
                    for m in tail]
            db.execute("INSERT INTO reply_alternatives (user_message_id, position, messages, created_at)"
                       " VALUES (?, ?, ?, ?)", (user["id"], position, to_json(kept, "reply"), time.time()))
        db.execute("DELETE FROM messages WHERE conversation_id = (SELECT conversation_id FROM messages WHERE id = ?)"
                   " AND seq > ?", (user["id"], user["seq"]))

    def recover_interrupted(self, writer_alive: Callable[[int], bool] = lambda conversation_id: False) -> int:
        """Mark replies left "streaming" by an app that died as "stopped"; return how many.
        `writer_alive(conversation_id)` keeps the replies another running app is still writing."""
        with self._write() as db:
            ids = [r[0] for r in db.execute("SELECT DISTINCT conversation_id FROM messages WHERE status = 'streaming'")]
            gone = [i for i in ids if not writer_alive(i)]
            return sum(db.execute("UPDATE messages SET status = 'stopped' WHERE status = 'streaming'"
                                  " AND conversation_id = ?", (i,)).rowcount for i in gone)
