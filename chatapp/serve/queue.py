"""One generation at a time per model, the others waiting in a bounded queue.

The model (its KV cache, llama.cpp's context) serves one sequence at a time, so requests take
turns. A generation runs on its own thread and holds the turn until that thread ends, not until
its HTTP response ends: a client that disconnects sets the cancel flag (polled between tokens by
should_stop), and the next request starts only once the cancelled one has really stopped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from engine import Event

_END = object()


class QueueFull(Exception):
    """More requests waiting than the queue holds: answered with a 429."""


class Turns:
    """The turn to generate: `await take()` waits in line (QueueFull past `max_waiting`)."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.waiting = 0
        self._lock: asyncio.Lock | None = None  # made in the server's event loop, on first use

    async def take(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._lock.locked() and self.waiting >= self.max_waiting:
            raise QueueFull(f"{self.waiting} requests are already waiting for the model: retry later")
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1

    def give_back(self) -> None:
        self._lock.release()


class Generation:
    """A generation on its own thread, its events handed to the event loop through a queue.

    `make_events(should_stop)` is called on the thread. The turn is given back (on the loop)
    when the thread ends, whatever became of the consumer."""

    def __init__(self, make_events: Callable[[Callable[[], bool]], Iterator[Event]], turns: Turns) -> None:
        self.cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._make_events, self._turns = make_events, turns
        self.finished = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        put = lambda item: self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        try:
            for event in self._make_events(self.cancel.is_set):
                put(event)
            put(_END)
        except BaseException as e:  # handed to the consumer, which answers with an error
            put(e)
        finally:
            try:
                self._loop.call_soon_threadsafe(self._done)
            except RuntimeError:  # the loop is gone (server shutting down): nobody waits
                pass

    def _done(self) -> None:
        self._turns.give_back()
        self.finished.set()

    async def events(self, disconnected: Callable[[], object] | None = None) -> AsyncIterator[Event]:
        """The events as they come. `disconnected` (an async callable) is polled while waiting,
        for responses that are not streamed and so get no disconnect of their own."""
        try:
            while True:
                if disconnected is None:
                    item = await self._queue.get()
                else:
                    try:
                        item = await asyncio.wait_for(self._queue.get(), 0.2)
                    except TimeoutError:
                        if await disconnected():
                            self.cancel.set()
                        continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel.set()  # a no-op after the end; else the client is gone: stop generating
