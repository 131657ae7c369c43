"""Which conversations a running app has open, so that two instances on one history file stay out
of each other's way: the second one neither marks the first one's live reply as stopped nor
writes into the conversation the first one has open.

Each open conversation is an exclusive flock on `<history file>.open/<id>.lock`, held by the app
that has it open. The kernel drops the lock when that process ends, however it ends, so "nobody
holds it" means exactly "its writer is gone": no heartbeat, no clock. Where fcntl is missing
(Windows) every conversation counts as free, which is the behaviour before this module.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class ConversationLocks:
    def __init__(self, history_path: str | Path) -> None:
        self.dir = Path(f"{history_path}.open")
        self._held: dict[int, int] = {}  # conversation id -> the fd holding its lock

    def _file(self, conversation_id: int) -> Path:
        return self.dir / f"{int(conversation_id)}.lock"

    def claim(self, conversation_id: int) -> bool:
        """Take the conversation for this app; False when another running app has it."""
        if fcntl is None or conversation_id in self._held:
            return True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._file(conversation_id), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return True  # no lock folder (read-only data dir): behave as before rather than refuse
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())  # for the notice in the other app
        self._held[conversation_id] = fd
        return True

    def release(self, conversation_id: int | None) -> None:
        fd = self._held.pop(conversation_id, None) if conversation_id is not None else None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def release_all(self) -> None:
        for conversation_id in list(self._held):
            self.release(conversation_id)

    def holder(self, conversation_id: int) -> int | None:
        """The pid of another running app that has the conversation open (0: unknown); None when
        no other app has it."""
        if fcntl is None or conversation_id in self._held:
            return None
        try:
            fd = os.open(self._file(conversation_id), os.O_RDONLY)
        except OSError:
            return None  # never opened by anyone
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.read(fd, 32).decode(errors="replace").strip()
                return int(text) if text.isdigit() else 0
            return None
        finally:
            os.close(fd)

    def in_use_elsewhere(self, conversation_id: int) -> bool:
        return self.holder(conversation_id) is not None
