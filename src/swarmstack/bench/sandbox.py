"""``swarm bench sandbox``: how fast sandboxes start, and how many fit on this host.

* ``create_p50_ms`` / ``create_p99_ms`` — cold: ``create`` until a first command (``true``) has
  returned, one sandbox at a time;
* ``warm_p50_ms`` / ``warm_p99_ms`` — taken from a pool with warm sandboxes until a first command
  has returned;
* ``concurrent`` — sandboxes alive at once, every one answering, each with its idle agent;
* ``rss_mib_per_sandbox`` — host memory per idle sandbox: the proportional set size (shared pages
  split between their users) of every process of the sandboxes, divided by their number;
  ``host_mib_per_sandbox`` is the fall of the host's available memory, divided the same way
  (it includes the kernel's share: page tables, mounts, cgroups).

For a VM backend also ``boot_s`` (the median cold start, in seconds) and ``restore_s`` (the
median time from restoring a snapshot — QEMU's migration stream — until a first command has
returned), their ratio ``restore_speedup``, and which accelerator ran the VMs and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from swarmstack.errors import UsageError
from swarmstack.sandbox.base import Backend, Limits, Sandbox, SandboxSpec
from swarmstack.sandbox.pool import Pool


def _pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


def make_backend(name: str, state_dir: Path, image: str | None = None) -> Backend:
    if name == "bwrap":
        from swarmstack.sandbox.bwrap import BwrapBackend

        if image is not None:
            raise UsageError("--image is for a VM backend (qemu): bubblewrap runs over the host")
        return BwrapBackend(state_dir / "sandboxes")
    if name == "qemu":
        from swarmstack.sandbox.image import find_image
        from swarmstack.sandbox.qemu import QemuBackend

        return QemuBackend(state_dir / "vms", image=find_image(name=image))
    raise UsageError(f"unknown sandbox backend {name!r}: bwrap or qemu")


def spec_for(backend: Backend) -> SandboxSpec:
    """What each sandbox gets: the defaults, but a VM's memory is sized for an idle agent."""
    if backend.isolation == "vm":
        return SandboxSpec(limits=Limits(memory_mib=256))
    return SandboxSpec()


async def measure_restore(backend: Backend, spec: SandboxSpec, samples: int) -> dict[str, Any]:
    """Snapshot one booted VM, then restore it ``samples`` times, each until a first command."""
    from swarmstack.sandbox.qemu import QemuBackend

    directory = Path(tempfile.mkdtemp(prefix="snap-", dir=getattr(backend, "state_dir", None)))
    source = await backend.create(spec)
    try:
        await _first_exec(source)
        snapshot = await source.snapshot(directory)
    finally:
        await source.destroy()
    restored: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        sandbox = await backend.restore(snapshot)
        await _first_exec(sandbox)
        restored.append(time.perf_counter() - started)
        await sandbox.destroy()
    shutil.rmtree(directory, ignore_errors=True)
    figures: dict[str, Any] = {
        "restore_s": round(statistics.median(restored), 3),
        "restore_samples": samples,
        "snapshot_mib": round(snapshot.size_bytes / 2**20, 1),
    }
    if isinstance(backend, QemuBackend):
        figures["accel"] = backend.accel
        figures["accel_reason"] = backend.accel_reason
    return figures


async def _first_exec(sandbox: Sandbox) -> None:
    result = await sandbox.exec(["true"])
    if not result.ok:
        raise RuntimeError(f"a first command failed in {sandbox.id}: {result}")


async def measure(backend: Backend, samples: int, concurrent: int, warm: int) -> dict[str, Any]:
    spec = spec_for(backend)
    await backend.prepare()  # once per backend, not a part of any sandbox's start
    cold: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        sandbox = await backend.create(spec)
        await _first_exec(sandbox)
        cold.append((time.perf_counter() - started) * 1000)
        await sandbox.destroy()

    pool = await Pool(backend, warm=warm, spec=spec).start()
    warm_ms: list[float] = []
    try:
        for _ in range(samples):
            await pool.wait_warm(1)
            started = time.perf_counter()
            sandbox = await pool.acquire()
            await _first_exec(sandbox)
            warm_ms.append((time.perf_counter() - started) * 1000)
            await pool.release(sandbox)
        handed_warm = pool.handed_out_warm
    finally:
        await pool.close()

    available_before = _mem_available()
    alive: list[Sandbox] = []
    try:
        for _ in range(0, concurrent, 16):
            batch = min(16, concurrent - len(alive))
            alive += await asyncio.gather(*(backend.create(spec) for _ in range(batch)))
        answers = await asyncio.gather(*(s.ping() for s in alive), return_exceptions=True)
        answering = sum(1 for a in answers if isinstance(a, dict))
        await asyncio.sleep(1.0)  # let start-up pages settle
        pss = sum(_pss_of_sandbox(s) for s in alive)
        host_delta = available_before - _mem_available()
    finally:
        await asyncio.gather(*(s.destroy() for s in alive), return_exceptions=True)
    extra: dict[str, Any] = {}
    if backend.isolation == "vm":
        extra = {"boot_s": round(statistics.median(cold) / 1000, 3)}
        extra.update(await measure_restore(backend, spec, min(samples, 10)))
        extra["restore_speedup"] = round(extra["boot_s"] / extra["restore_s"], 1)
    return {
        "create_p50_ms": _pct(cold, 50),
        "create_p99_ms": _pct(cold, 99),
        "warm_p50_ms": _pct(warm_ms, 50),
        "warm_p99_ms": _pct(warm_ms, 99),
        "warm_samples": handed_warm,
        "concurrent": answering,
        "rss_mib_per_sandbox": round(pss / max(len(alive), 1) / 2**20, 2),
        "host_mib_per_sandbox": round(host_delta / max(len(alive), 1) / 2**20, 2),
        **extra,
    }


def run(
    backend: str = "bwrap",
    count: int = 200,
    samples: int = 100,
    warm: int = 4,
    image: str | None = None,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="swarm-bench-sbx-", dir="/var/tmp"))
    root.chmod(0o711)

    async def main() -> dict[str, Any]:
        be = make_backend(backend, root, image)
        try:
            return await measure(be, samples, count, warm)
        finally:
            await be.close()

    try:
        figures = asyncio.run(main())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "bench": "sandbox",
        "backend": backend,
        "samples": samples,
        "count": count,
        **figures,
    }


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _pss_of_sandbox(sandbox: Sandbox) -> int:
    """The PSS of the sandbox's processes, in bytes: its process tree (bubblewrap's own
    processes, the agent, its commands) and its cgroup's members."""
    from swarmstack.sandbox.bwrap import _descendants

    group = getattr(sandbox, "group", None)
    pids = set(group.pids() if group is not None else [])
    root = sandbox.info().pid
    if root:
        pids.update(_descendants(root))
        pids.add(root)
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total
