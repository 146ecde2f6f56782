"""The sandbox pool (warm sandboxes, caps, never a dirty hand-out), cgroup detection, and the
sandbox benchmark command."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sandbox_fixtures import backend_for
from swarmstack.cli.main import app
from swarmstack.errors import UsageError
from swarmstack.sandbox import cgroups
from swarmstack.sandbox.base import Backend, Limits
from swarmstack.sandbox.pool import Pool


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async for be, _ in backend_for("bwrap"):
        yield be


async def test_a_warm_sandbox_is_handed_out_and_replaced(backend: Backend) -> None:
    pool = await Pool(backend, warm=2, max_sandboxes=4).start()
    try:
        await pool.wait_warm(timeout_s=30)
        first = await pool.acquire()
        assert pool.handed_out_warm == 1 and pool.handed_out_cold == 0
        assert (await first.exec(["true"])).ok
        await pool.wait_warm(2, timeout_s=30)  # topped up again
        assert pool.stats().warm == 2 and pool.stats().in_use == 1
    finally:
        await pool.close()
    assert first.state == "running"  # in use: the pool does not take it away
    await first.destroy()


async def test_a_used_sandbox_is_never_handed_out_again(backend: Backend) -> None:
    pool = await Pool(backend, warm=1, max_sandboxes=2).start()
    try:
        await pool.wait_warm(timeout_s=30)
        used = await pool.acquire()
        await used.write_file("left-behind.txt", b"ticket one's secret")
        await used.exec(["sh", "-c", "echo poison >> $HOME/.profile"])
        await pool.release(used)
        assert used.state == "destroyed"
        ids = {used.id}
        for _ in range(3):
            nxt = await pool.acquire()
            assert nxt.id not in ids
            ids.add(nxt.id)
            assert await nxt.list_files() == []
            home = await nxt.exec(["sh", "-c", "cat $HOME/.profile 2>/dev/null; true"])
            assert b"poison" not in home.stdout
            await pool.release(nxt)
    finally:
        await pool.close()


async def test_the_cap_holds_and_a_release_lets_the_next_one_in(backend: Backend) -> None:
    pool = await Pool(backend, warm=0, max_sandboxes=2, max_starting=1).start()
    try:
        a, b = await asyncio.gather(pool.acquire(), pool.acquire())
        assert pool.total == 2 and pool.handed_out_cold == 2
        third = asyncio.ensure_future(pool.acquire(timeout_s=30))
        await asyncio.sleep(0.3)
        assert not third.done()  # at the cap
        await pool.release(a)
        c = await third
        assert pool.total == 2
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout_s=0.2)
        await asyncio.gather(pool.release(b), pool.release(c))
    finally:
        await pool.close()


def test_a_pool_cannot_keep_more_warm_than_its_cap() -> None:
    with pytest.raises(UsageError, match="warm"):
        Pool(object(), warm=5, max_sandboxes=2)  # type: ignore[arg-type]


# -- cgroup layouts ----------------------------------------------------------------------------

V1_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V1_MEMBERSHIP = """\
8:pids:/
6:freezer:/
4:memory:/process_api/abc
1:cpu:/
0::/
"""


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v1_controllers_beside_an_empty_unified_hierarchy(tmp_path: Path) -> None:
    _tree(tmp_path, {"sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n"})
    layout = cgroups.detect(V1_MOUNTS, V1_MEMBERSHIP, root=tmp_path)
    assert layout.v2 is None
    base = tmp_path / "sys/fs/cgroup"
    assert layout.v1 == {
        "cpu": base / "cpu",
        "memory": base / "memory/process_api/abc",
        "pids": base / "pids",
        "freezer": base / "freezer",
    }
    for controller, directory in layout.v1.items():
        directory.mkdir(parents=True, exist_ok=True)
        del controller
    group = cgroups.Group(layout, "swarm-x")
    group.create(Limits(cpus=1.5, memory_mib=64, pids=32))
    assert (base / "memory/process_api/abc/swarm-x/memory.limit_in_bytes").read_text() == str(
        64 << 20
    )
    assert (base / "pids/swarm-x/pids.max").read_text() == "32"
    assert (base / "cpu/swarm-x/cpu.cfs_quota_us").read_text() == "150000"
    assert len(group.procs_files) == 4


def test_v2_with_every_controller(tmp_path: Path) -> None:
    mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"
    membership = "0::/system.slice/swarm.service\n"
    _tree(tmp_path, {"sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n"})
    layout = cgroups.detect(mounts, membership, root=tmp_path)
    here = tmp_path / "sys/fs/cgroup/system.slice/swarm.service"
    assert layout.v2 == here and not layout.v1
    assert {"memory", "pids", "cpu", "freezer"} <= layout.v2_controllers
    here.mkdir(parents=True)
    group = cgroups.Group(layout, "swarm-y")
    group.create(Limits(cpus=0.5, memory_mib=100, pids=50))
    assert (here / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (here / "swarm-y/memory.max").read_text() == str(100 << 20)
    assert (here / "swarm-y/memory.swap.max").read_text() == "0"
    assert (here / "swarm-y/pids.max").read_text() == "50"
    assert (here / "swarm-y/cpu.max").read_text() == "50000 100000"
    assert group.procs_files == [here / "swarm-y/cgroup.procs"]
    group.freeze(True)
    assert (here / "swarm-y/cgroup.freeze").read_text() == "1"


def test_no_cgroups_at_all_is_an_unusable_layout() -> None:
    layout = cgroups.detect("proc /proc proc rw 0 0\n", "0::/\n")
    assert not layout.usable()


# -- the benchmark command ---------------------------------------------------------------------


def test_bench_sandbox_prints_its_figures() -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox benchmark runs sandboxes under cgroups: needs root")
    result = CliRunner().invoke(
        app, ["bench", "sandbox", "--count", "8", "--samples", "5", "--warm", "2"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["bench"] == "sandbox" and figures["concurrent"] == 8
    assert figures["warm_samples"] == 5
    for key in ("create_p50_ms", "create_p99_ms", "warm_p50_ms", "warm_p99_ms"):
        assert 0 < figures[key] < 5000, key
    assert figures["create_p50_ms"] <= figures["create_p99_ms"]
    assert 0 < figures["rss_mib_per_sandbox"] < 100


def test_bench_sandbox_refuses_an_unknown_backend() -> None:
    result = CliRunner().invoke(app, ["bench", "sandbox", "--backend", "docker"])
    assert result.exit_code == 2


def test_bench_sandbox_refuses_an_image_for_bubblewrap() -> None:
    result = CliRunner().invoke(app, ["bench", "sandbox", "--backend", "bwrap", "--image", "x"])
    assert result.exit_code == 2
    assert "--image is for a VM backend" in result.output
