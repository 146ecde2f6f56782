"""What a runner's sandbox uses, as the runner sees it from inside: the processes it started.

A runner is the root of everything that happens in its sandbox (the driver, Claude Code, the
commands it runs), so the process tree under the runner is the sandbox's work on every backend:
in a bubblewrap sandbox's pid namespace and in a VM alike. Memory is the tree's resident set
now; cpu is the tree's cpu time since the last sample over the wall time between them, where
100 is one core. A process's own times and those of the children it has reaped are both
counted, so a command that ran and exited between two samples still shows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from swarmstack.tickets.models import SandboxUsage

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read_stats(proc: Path) -> dict[int, tuple[int, int, int]]:
    """pid → (parent pid, cpu ticks including reaped children, resident pages)."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after
        # its last ')'. Field n of proc(5) is rest[n - 3].
        rest = raw[raw.rindex(")") + 2 :].split()
        ticks = sum(int(rest[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        stats[int(entry.name)] = (int(rest[1]), ticks, int(rest[21]))
    return stats


class UsageSampler:
    """Samples the process tree under ``root`` (default: this process)."""

    def __init__(
        self,
        root: int | None = None,
        *,
        backend: str | None = None,
        sandbox_id: str | None = None,
        proc: Path = Path("/proc"),
    ) -> None:
        self.root = os.getpid() if root is None else root
        self.backend = backend
        self.sandbox_id = sandbox_id
        self.proc = proc
        self._last: tuple[float, int] | None = None

    def sample(self) -> SandboxUsage:
        stats = _read_stats(self.proc)
        children: dict[int, list[int]] = {}
        for pid, (parent, _ticks, _pages) in stats.items():
            children.setdefault(parent, []).append(pid)
        tree, todo = [], [self.root] if self.root in stats else []
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        ticks = sum(stats[p][1] for p in tree)
        now = time.monotonic()
        cpu = None
        if self._last is not None and now > self._last[0]:
            spent = max(0, ticks - self._last[1]) / _TICK
            cpu = round(100 * spent / (now - self._last[0]), 1)
        self._last = (now, ticks)
        return SandboxUsage(
            backend=self.backend,
            sandbox_id=self.sandbox_id,
            memory_bytes=sum(stats[p][2] for p in tree) * _PAGE,
            cpu_percent=cpu,
            processes=len(tree),
        )
