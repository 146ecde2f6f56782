"""Wake-ups: long-polling claimers and event-stream readers are woken the moment work appears.

The event log itself is a table (see :meth:`TicketStore.events_after`); this module carries the
signal that it grew. On SQLite there is one server process, so the store's commit callback wakes
waiters in-process. On PostgreSQL every write transaction sends ``NOTIFY swarm, '<ready>'`` and
each API replica LISTENs, so an agent long-polling one replica is woken by a completion on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque

from swarmstack.db import NOTIFY_CHANNEL
from swarmstack.tickets.store import Change

log = logging.getLogger(__name__)


class Waker:
    """FIFO of claimers waiting for ready tickets, plus a broadcast for "new events".

    ``wake(n)`` wakes the ``n`` longest-waiting claimers — not all of them — so a ticket that
    becomes ready costs one claim attempt, not one per idle agent. Must be used from the loop.
    """

    def __init__(self) -> None:
        self._claimers: deque[asyncio.Future[None]] = deque()
        self._events: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop its futures belong to; call from that loop's thread."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    @property
    def waiting(self) -> int:
        return len(self._claimers)

    def register(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claimers.append(future)
        return future

    def unregister(self, future: asyncio.Future[None], *, pass_on: bool = False) -> None:
        """Leave the queue. With ``pass_on``, a wake-up this waiter received but did not use
        is handed to the next waiter."""
        if future.done() and not future.cancelled() and pass_on:
            self.wake(1)
        if not future.done():
            future.cancel()
        with contextlib.suppress(ValueError):
            self._claimers.remove(future)

    def wake(self, n: int) -> None:
        while n > 0 and self._claimers:
            future = self._claimers.popleft()
            if not future.done():
                future.set_result(None)
                n -= 1
        self.events_changed()

    def events_changed(self) -> None:
        if self._events is not None and not self._events.done():
            self._events.set_result(None)
        self._events = None

    def next_events(self) -> asyncio.Future[None]:
        """A future resolved at the next commit that appended events."""
        if self._events is None or self._events.done():
            self._events = asyncio.get_running_loop().create_future()
        return self._events

    def on_change(self, change: Change) -> None:
        """Store subscriber for the in-process case (SQLite). A write made in another thread
        (a design running in a worker, the merge queue's git in a thread, a store used beside
        the server) hands the wake-up to the loop: a future is set only from its own loop,
        and the loop wakes at once instead of at its next unrelated event."""
        if self._loop is None or threading.get_ident() == self._loop_thread:
            self.wake(change.ready)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake, change.ready)


class PgListener:
    """A thread that LISTENs on PostgreSQL and forwards each NOTIFY to a :class:`Waker`."""

    def __init__(self, conninfo: str, waker: Waker, loop: asyncio.AbstractEventLoop) -> None:
        self._conninfo = conninfo
        self._waker = waker
        self._loop = loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swarm-pg-listen", daemon=True)
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._pending: int | None = None  # ready tickets heard of but not yet passed on

    def start(self) -> None:
        self._thread.start()
        self.ready.wait(timeout=10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.ready.set()
                    # Anything that happened while we were not listening: wake everyone once.
                    self._loop.call_soon_threadsafe(self._waker.wake, 1 << 30)
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self._forward(int(notice.payload or 0))
            except Exception as exc:  # the database went away: retry, never die
                if self._loop.is_closed():
                    return
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._stop.wait(0.5)

    def _forward(self, ready: int) -> None:
        """Hand a notification to the event loop. Under load several arrive before the loop
        gets to the first: they travel together, as one wake-up of the sum."""
        with self._lock:
            first = self._pending is None
            self._pending = (self._pending or 0) + ready
        if first:
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            ready, self._pending = self._pending or 0, None
        self._waker.wake(ready)
