"""cgroup limits for sandboxes: memory, pids and cpu, plus the freezer for pause.

Hosts differ. Some mount the unified hierarchy (cgroup v2) with every controller; others — these
machines among them — mount v1 controllers one per directory beside a unified hierarchy that has
none of them. :func:`detect` reads ``/proc/self/mounts`` and ``/proc/self/cgroup`` and builds a
:class:`Layout` that says, per controller, which directory to write. A sandbox's group is a
``swarm-<id>`` directory under the current process's own group in each hierarchy, so Swarm stays
inside whatever group it was started in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarmstack.sandbox.base import Limits

CONTROLLERS = ("memory", "pids", "cpu", "freezer")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Layout:
    """Where each controller lives: ``v2`` is the unified hierarchy's directory for this
    process (when it has controllers), ``v1`` maps a controller to its own directory."""

    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()
    v1: dict[str, Path] = field(default_factory=dict)

    def usable(self) -> bool:
        return bool(self.v1) or bool(self.v2_controllers)


def detect(
    mounts: str | None = None, membership: str | None = None, root: Path = Path("/")
) -> Layout:
    """Read the hierarchies from ``/proc/self/mounts`` and ``/proc/self/cgroup`` (or the texts
    given, for tests; ``root`` prefixes every path)."""
    if mounts is None:
        mounts = Path("/proc/self/mounts").read_text()
    if membership is None:
        membership = Path("/proc/self/cgroup").read_text()
    groups: dict[str, str] = {}  # controller (or "" for v2) -> this process's group
    for line in membership.splitlines():
        number, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if number == "0" and not names:
            groups[""] = path
        for name in names.split(","):
            if name:
                groups[name] = path
    v1: dict[str, Path] = {}
    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mountpoint, fstype, options = parts[1], parts[2], parts[3].split(",")
        base = root / mountpoint.lstrip("/")
        if fstype == "cgroup2" and "" in groups:
            here = base / groups[""].lstrip("/")
            available = base / "cgroup.controllers"
            offered = available.read_text().split() if available.exists() else []
            if set(offered) & {"memory", "pids", "cpu"}:
                v2, v2_controllers = here, frozenset(offered) | {"freezer"}
        elif fstype == "cgroup":
            for controller in CONTROLLERS:
                if controller in options and controller in groups:
                    v1[controller] = base / groups[controller].lstrip("/")
    if v2 is not None:  # a controller bound to v1 is not available in v2
        v2_controllers = v2_controllers - set(v1)
    return Layout(v2=v2, v2_controllers=v2_controllers, v1=v1)


class Group:
    """One sandbox's cgroup in every hierarchy that has a controller we use."""

    def __init__(self, layout: Layout, name: str) -> None:
        self.layout = layout
        self.name = name
        self.dirs: dict[str, Path] = {}  # controller -> directory
        self.unified: set[str] = set()  # the controllers that live in the v2 hierarchy
        if layout.v2 is not None and layout.v2_controllers:
            for controller in layout.v2_controllers:
                self.dirs[controller] = layout.v2 / name
                self.unified.add(controller)
        for controller, parent in layout.v1.items():
            self.dirs[controller] = parent / name

    @property
    def procs_files(self) -> list[Path]:
        """Where to write a pid to put it in this group (once per hierarchy)."""
        return [d / "cgroup.procs" for d in sorted(set(self.dirs.values()))]

    def create(self, limits: Limits) -> None:
        v2 = self.layout.v2
        if v2 is not None and self.layout.v2_controllers:
            # Delegate the controllers to children of our group, then make the child.
            used = self.layout.v2_controllers & {"memory", "pids", "cpu"}
            wanted = " ".join(f"+{c}" for c in sorted(used))
            with contextlib.suppress(OSError):
                (v2 / "cgroup.subtree_control").write_text(wanted)
        for directory in sorted(set(self.dirs.values())):
            directory.mkdir(exist_ok=True)
        memory = limits.memory_mib << 20
        if "memory" in self.dirs:
            d = self.dirs["memory"]
            if "memory" in self.unified:
                _write(d / "memory.max", str(memory))
                _write(d / "memory.swap.max", "0", required=False)
            else:
                _write(d / "memory.limit_in_bytes", str(memory))
                # Without swap accounting the file is absent; swappiness 0 keeps it from
                # paging out around the limit instead of hitting it.
                _write(d / "memory.memsw.limit_in_bytes", str(memory), required=False)
                _write(d / "memory.swappiness", "0", required=False)
        if "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", str(limits.pids))
        if "cpu" in self.dirs:
            d = self.dirs["cpu"]
            quota = int(limits.cpus * CPU_PERIOD_US)
            if "cpu" in self.unified:
                _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(quota))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in procs.read_text().split())
        return sorted(found)

    def freeze(self, frozen: bool) -> None:
        """Stop or restart every process in the group at once."""
        d = self.dirs.get("freezer")
        if d is not None and "freezer" in self.unified:
            _write(d / "cgroup.freeze", "1" if frozen else "0")
            return
        if d is not None and (d / "freezer.state").exists():
            _write(d / "freezer.state", "FROZEN" if frozen else "THAWED")
            deadline = time.monotonic() + 5
            want = "FROZEN" if frozen else "THAWED"
            while (d / "freezer.state").read_text().strip() != want:
                if time.monotonic() > deadline:
                    raise OSError(f"cgroup freezer stuck on the way to {want}")
                time.sleep(0.001)
            return
        for pid in self.pids():  # no freezer: stop the processes one by one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL every process in the group (thawed first: a frozen process cannot die)."""
        d = self.dirs.get("freezer")
        if d is not None and "freezer" in self.unified and (d / "cgroup.kill").exists():
            _write(d / "cgroup.kill", "1")
            return
        with contextlib.suppress(OSError):
            self.freeze(False)
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    def remove(self) -> None:
        for directory in sorted(set(self.dirs.values())):
            for _ in range(100):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the last process is reaped
                    time.sleep(0.005)

    def memory_usage(self) -> int | None:
        d = self.dirs.get("memory")
        if d is None:
            return None
        for name in ("memory.current", "memory.usage_in_bytes"):
            with contextlib.suppress(OSError):
                return int((d / name).read_text())
        return None

    def oom_kills(self) -> int:
        """How many processes the kernel killed for passing this group's memory limit."""
        d = self.dirs.get("memory")
        if d is None:
            return 0
        for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
            with contextlib.suppress(OSError):
                for line in (d / name).read_text().splitlines():
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
        return 0


def _write(path: Path, value: str, *, required: bool = True) -> None:
    try:
        path.write_text(value)
    except OSError:
        if required:
            raise
