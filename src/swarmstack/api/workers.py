"""Worker threads for blocking store calls, served by priority.

On PostgreSQL every store call of the agent routes is a network round trip, so it runs in a
worker thread (each thread keeps its own connection) while the event loop serves other
requests. When every worker is busy, calls wait — and which call waits matters: an agent whose
long-poll was just woken is idle until its claim runs, while a heartbeat can wait a few
milliseconds and lose nothing (leases last seconds to minutes). So the queue is ordered by
priority, then by arrival. Every agent has at most one request in flight, so the calls ahead of
a low-priority call are bounded by the number of agents: nothing starves.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Priority(enum.IntEnum):
    CLAIM = 0  # an idle agent waits for it
    WRITE = 1  # heartbeats, completions, failures, token look-ups


_Job = tuple[int, int, Callable[[], Any] | None, Future[Any] | None]


class Workers:
    """A fixed set of daemon threads taking jobs from one priority queue."""

    def __init__(self, threads: int, *, name: str = "swarm-db") -> None:
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: Priority, fn: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("the worker threads are shut down")
        future: Future[T] = Future()
        self._queue.put((int(priority), next(self._order), fn, future))
        return future

    async def run(self, priority: Priority, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread and wait for its result on the event loop."""
        return await asyncio.wrap_future(self.submit(priority, fn))

    def _work(self) -> None:
        while True:
            _, _, fn, future = self._queue.get()
            if fn is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Finish the jobs already queued, then stop every thread."""
        if self._closed:
            return
        self._closed = True
        last = len(Priority)  # after every real job
        for _ in self._threads:
            self._queue.put((last, next(self._order), None, None))
        for thread in self._threads:
            thread.join(timeout=30)
