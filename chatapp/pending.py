"""History writes that could not be made yet (the database locked by another process past its busy
timeout, or the disk full), kept in memory in order and retried: a reply is never lost because
the file could not take it at that moment.

Both the generation worker and the UI thread add and flush, so the queue has a lock. Writes are
replayed in the order they were made (a tool result after the reply that asked for it), and a
new write waits behind the queue rather than overtaking it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from .store import StoreError

T = TypeVar("T")

# Seconds to wait before each retry of a write the worker needs before it can go on.
RETRY_DELAYS = (0.2, 0.5, 1.0)

# What a write to the history raises when the file cannot take it now: StoreError from the
# store's own checks, sqlite3.Error from anything below it.
WRITE_ERRORS = (StoreError, sqlite3.Error)


def describe(error: BaseException) -> str:
    """One line saying why the history could not be written."""
    text = str(error)
    if "disk is full" in text or "database or disk is full" in text:
        return f"the disk is full ({text})" if "free some space" not in text else text
    return text


class PendingWrites:
    def __init__(self) -> None:
        self._queue: deque[tuple[str, Callable[[], object]]] = deque()
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def write(self, what: str, fn: Callable[[], object]) -> bool:
        """Make the write now if nothing is waiting and the file takes it; otherwise keep it (in
        order) for `flush`. True when it was written."""
        with self._lock:
            if not self._queue:
                try:
                    fn()
                    return True
                except WRITE_ERRORS as e:
                    self.last_error = describe(e)
            self._queue.append((what, fn))
            return False

    def flush(self) -> int:
        """Write what is waiting, in order, up to the first that still fails; return how many were
        written. `last_error` says why the rest still wait."""
        done = 0
        with self._lock:
            while self._queue:
                _what, fn = self._queue[0]
                try:
                    fn()
                except WRITE_ERRORS as e:
                    self.last_error = describe(e)
                    break
                self._queue.popleft()
                done += 1
            if not self._queue:
                self.last_error = None
        return done


def with_retries(fn: Callable[[], T], delays: tuple[float, ...] = RETRY_DELAYS,
                 stop: Callable[[], bool] = lambda: False) -> T:
    """Call `fn`, retrying after each delay while it fails to write; the last failure is raised."""
    for delay in delays:
        try:
            return fn()
        except WRITE_ERRORS:
            if stop():
                break
            time.sleep(delay)
    return fn()
