"""The history database's schema, as numbered migrations (the simonw/llm `migrations.py` pattern).

The rule: migrations are numbered, append-only, and an applied migration is never edited. A
migration's schema version is its 1-based position in MIGRATIONS, and `_migrations` records each
applied one by version and name, so a schema change is always a new function appended at the end
(m003_..., m004_...); editing, reordering or removing one that has shipped would leave existing
history files with a schema that no code describes.

Pure stdlib: the store calls `migrate` when it opens a file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


class SchemaError(Exception):
    """The file's schema is not one these migrations lead to: another program's database, or one
    written by a newer chatapp."""


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def _migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append(fn)  # its schema version is its 1-based position in the list
    return fn


@_migration
def m001_initial(db: sqlite3.Connection) -> None:
    # Roles and statuses are checked in Python, not by CHECK constraints, which SQLite can only
    # change by rebuilding the table. AUTOINCREMENT: a deleted id is never handed out again.
    db.execute("""
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT,                          -- custom title; NULL: derived from the messages
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            system_prompt TEXT,
            model TEXT,
            settings TEXT NOT NULL DEFAULT '{}'  -- JSON object
        )""")
    db.execute("CREATE INDEX conversations_by_activity ON conversations (updated_at DESC, id DESC)")
    db.execute("""
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'complete',
            tool_calls TEXT,                     -- JSON list, or NULL
            tool_call_id TEXT,
            name TEXT,
            meta TEXT NOT NULL DEFAULT '{}',     -- JSON object
            created_at REAL NOT NULL,
            UNIQUE (conversation_id, seq)
        )""")
    db.execute("CREATE INDEX messages_streaming ON messages (status) WHERE status = 'streaming'")


@_migration
def m002_messages_fts(db: sqlite3.Connection) -> None:
    # Trigram tokens make MATCH a case-insensitive substring search: the same meaning as the LIKE
    # fallback, which covers SQLite builds without FTS5 or trigram (< 3.34) and queries < 3 chars.
    try:
        db.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x, tokenize = 'trigram')")
    except sqlite3.OperationalError:
        return
    db.execute("DROP TABLE temp.fts5_probe")
    db.execute("""
        CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, content = 'messages', content_rowid = 'id', tokenize = 'trigram')""")
    db.execute("""
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END""")
    db.execute("""
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        END""")
    db.execute("""
        CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END""")
    db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")



@_migration
def m003_reply_alternatives(db: sqlite3.Connection) -> None:
    # The replies to a user message that are not shown: regenerate sets the shown one aside here
    # instead of deleting it. A reply is every message after its user message (the assistant's
    # text, its tool calls and their results), kept as one JSON list. Positions number all the
    # replies 0..n; the shown one, living in `messages`, holds the one position missing here.
    db.execute("""
        CREATE TABLE reply_alternatives (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            messages TEXT NOT NULL,              -- JSON list of message rows (no ids, no seqs)
            created_at REAL NOT NULL,
            UNIQUE (user_message_id, position)
        )""")


@_migration
def m004_message_reasoning(db: sqlite3.Connection) -> None:
    # A reply's thinking (its `<think>` block), apart from `content`: shown folded, exported, and
    # never sent back to the model. Not in the search index: a search finds what was answered.
    db.execute("ALTER TABLE messages ADD COLUMN reasoning TEXT NOT NULL DEFAULT ''")


def migrate(db: sqlite3.Connection, path: Path) -> set[str]:
    """Apply pending migrations in one IMMEDIATE transaction (two instances starting at once
    serialise here); return the names of the tables that exist afterwards."""
    db.execute("BEGIN IMMEDIATE")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "_migrations" not in tables:
            raise SchemaError(f"{path} is an SQLite database but not a chatapp history; move it aside")
        db.execute("""
            CREATE TABLE IF NOT EXISTS _migrations (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)""")
        applied = {r[0] for r in db.execute("SELECT version FROM _migrations")}
        newest = max(applied, default=0)
        if newest > len(MIGRATIONS):
            raise SchemaError(
                f"{path} has schema version {newest}, newer than this chatapp knows "
                f"({len(MIGRATIONS)}); upgrade chatapp to open it")
        for version, fn in enumerate(MIGRATIONS, start=1):
            if version not in applied:
                fn(db)
                db.execute("INSERT INTO _migrations VALUES (?, ?, ?)", (version, fn.__name__, time.time()))
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return tables
