"""The worker threads that run PostgreSQL store calls: priority order, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from swarmstack.api.workers import Priority, Workers


def test_a_waiting_claim_runs_before_writes_queued_earlier() -> None:
    workers = Workers(1)
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = workers.submit(Priority.WRITE, gate.wait)  # holds the only thread
        writes = [
            workers.submit(Priority.WRITE, lambda i=i: order.append(f"write-{i}")) for i in range(3)
        ]
        claim = workers.submit(Priority.CLAIM, lambda: order.append("claim"))
        gate.set()
        for future in [blocker, *writes, claim]:
            future.result(timeout=5)
    finally:
        workers.shutdown()
    assert order == ["claim", "write-0", "write-1", "write-2"]  # FIFO within a priority


def test_results_and_exceptions_reach_the_event_loop() -> None:
    workers = Workers(2)

    def boom() -> None:
        raise ValueError("no such ticket")

    async def main() -> tuple[int, str]:
        value = await workers.run(Priority.WRITE, lambda: 6 * 7)
        with pytest.raises(ValueError, match="no such ticket") as info:
            await workers.run(Priority.CLAIM, boom)
        return value, str(info.value)

    try:
        assert asyncio.run(main()) == (42, "no such ticket")
    finally:
        workers.shutdown()


def test_shutdown_finishes_queued_jobs_then_refuses_new_ones() -> None:
    workers = Workers(2)
    done: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        with lock:
            done.append(i)

    futures = [workers.submit(Priority.WRITE, lambda i=i: job(i)) for i in range(50)]
    workers.shutdown()
    assert sorted(done) == list(range(50))
    assert all(f.done() for f in futures)
    assert not any(t.is_alive() for t in workers._threads)
    with pytest.raises(RuntimeError, match="shut down"):
        workers.submit(Priority.WRITE, lambda: None)
    workers.shutdown()  # twice is harmless
