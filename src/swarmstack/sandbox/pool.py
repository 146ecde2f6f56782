"""A pool of sandboxes: some kept warm, a cap on how many exist and on how many start at once.

Where the backend has no memory snapshot to restore from (bubblewrap, or a VM host without one),
warm sandboxes are the stand-in: an agent that takes one skips the start. A sandbox that was
handed out is never handed out again — it is destroyed on release and a fresh one takes its
place — so nothing one ticket leaves behind (files, processes, a poisoned ``$HOME``) can reach
the next ticket.

The refill after a hand-out waits ``refill_delay_s`` (50 ms) before it starts: a start takes a
core for tens of milliseconds, and the sandbox just handed out is about to run its first
commands. On two cores that wait halves the first command's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

from swarmstack.errors import Unavailable, UsageError
from swarmstack.sandbox.base import Backend, Sandbox, SandboxSpec

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    warm: int
    in_use: int
    starting: int
    created: int
    failed_starts: int
    handed_out_warm: int
    handed_out_cold: int


class Pool:
    def __init__(
        self,
        backend: Backend,
        *,
        warm: int = 4,
        max_sandboxes: int = 256,
        max_starting: int = 8,
        spec: SandboxSpec | None = None,
        refill_delay_s: float = 0.05,
    ) -> None:
        if warm > max_sandboxes:
            raise UsageError(f"cannot keep {warm} warm with at most {max_sandboxes} sandboxes")
        self.backend = backend
        self.target_warm = warm
        self.max_sandboxes = max_sandboxes
        self.spec = spec or SandboxSpec()
        self.refill_delay_s = refill_delay_s
        self._starts = asyncio.Semaphore(max_starting)
        self._warm: deque[Sandbox] = deque()
        self._in_use: set[str] = set()
        self._starting = 0
        self._changed = asyncio.Condition()
        self._refills: set[asyncio.Task[None]] = set()
        self._closed = False
        self.created = 0
        self.failed_starts = 0
        self.handed_out_warm = 0
        self.handed_out_cold = 0

    @property
    def total(self) -> int:
        return len(self._warm) + len(self._in_use) + self._starting

    def stats(self) -> PoolStats:
        return PoolStats(
            warm=len(self._warm),
            in_use=len(self._in_use),
            starting=self._starting,
            created=self.created,
            failed_starts=self.failed_starts,
            handed_out_warm=self.handed_out_warm,
            handed_out_cold=self.handed_out_cold,
        )

    async def start(self) -> Pool:
        self._refill()
        return self

    async def wait_warm(self, count: int | None = None, timeout_s: float = 60.0) -> None:
        """Until ``count`` (default: the target) sandboxes are warm."""
        want = self.target_warm if count is None else count
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self._warm) >= want)

    async def acquire(self, timeout_s: float = 60.0) -> Sandbox:
        """A sandbox for one ticket: a warm one at once if there is one, else a new one as soon
        as the caps allow."""
        if self._closed:
            raise Unavailable("the sandbox pool is shut down")
        async with asyncio.timeout(timeout_s):
            while True:
                while self._warm:
                    sandbox = self._warm.popleft()
                    if sandbox.state == "running":
                        self._in_use.add(sandbox.id)
                        self.handed_out_warm += 1
                        self._refill(self.refill_delay_s)
                        return sandbox
                if self.total < self.max_sandboxes:
                    self._starting += 1
                    try:
                        sandbox = await self._create()
                    finally:
                        self._starting -= 1
                    self._in_use.add(sandbox.id)
                    self.handed_out_cold += 1
                    self._refill(self.refill_delay_s)
                    return sandbox
                async with self._changed:  # at the cap: wait for a release
                    await self._changed.wait()

    async def release(self, sandbox: Sandbox) -> None:
        """The ticket is over: the sandbox is destroyed, and the pool refilled."""
        self._in_use.discard(sandbox.id)
        try:
            await sandbox.destroy()
        finally:
            await self._notify()
            self._refill()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._refills):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._refills, return_exceptions=True)
        warm, self._warm = list(self._warm), deque()
        await asyncio.gather(*(s.destroy() for s in warm), return_exceptions=True)

    async def _create(self) -> Sandbox:
        async with self._starts:
            try:
                sandbox = await self.backend.create(self.spec)
            except Exception:
                self.failed_starts += 1
                raise
        self.created += 1
        return sandbox

    def _refill(self, delay_s: float = 0.0) -> None:
        if self._closed:
            return
        missing = self.target_warm - len(self._warm) - self._pending_refills()
        room = self.max_sandboxes - self.total
        for _ in range(max(0, min(missing, room))):
            self._starting += 1
            task = asyncio.get_running_loop().create_task(self._warm_one(delay_s))
            self._refills.add(task)
            task.add_done_callback(self._refills.discard)

    def _pending_refills(self) -> int:
        return sum(1 for t in self._refills if not t.done())

    async def _warm_one(self, delay_s: float) -> None:
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            sandbox = await self._create()
        except asyncio.CancelledError:
            self._starting -= 1
            raise
        except Exception as exc:
            self._starting -= 1
            log.warning("a warm sandbox failed to start: %s", exc)
            await self._notify()
            return
        self._starting -= 1
        if self._closed:
            await sandbox.destroy()
            return
        self._warm.append(sandbox)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
