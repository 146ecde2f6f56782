"""Who joins a bubblewrap sandbox's cgroups: the agent moves itself in, first thing, through
descriptors the host opened; where a kernel refuses that, the host joins for it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_fixtures import backend_for
from swarmstack.sandbox import cgroups, guest
from swarmstack.sandbox.bwrap import BwrapBackend, BwrapSandbox, _descendants


@pytest.fixture
async def backend() -> AsyncIterator[BwrapBackend]:
    if os.geteuid() != 0:
        pytest.skip("cgroup limits need root: the suite runs as uid " + str(os.geteuid()))
    async for be, _ in backend_for("bwrap"):
        assert isinstance(be, BwrapBackend)
        if not be.limits_enforced:
            pytest.skip("this host mounts no cgroup controller that Swarm uses")
        yield be


def _members(group: cgroups.Group) -> list[set[int]]:
    """The pids in each hierarchy's ``cgroup.procs`` of the group."""
    return [{int(p) for p in path.read_text().split()} for path in group.procs_files]


def _agent_pid(sandbox: BwrapSandbox) -> int:
    assert sandbox.process is not None
    for pid in _descendants(sandbox.process.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        # bubblewrap's own command line names the agent too, as an argument of its own
        agent = any(arg.startswith(b"/opt/swarm/guest.py") for arg in cmdline)
        if cmdline[0] == sandbox.owner.python.encode() and agent:
            return pid
    raise AssertionError("no agent process below bubblewrap")


async def _in_every_hierarchy(sandbox: BwrapSandbox) -> None:
    """The agent and a command it runs are members of the group in every hierarchy."""
    assert sandbox.group is not None
    agent = _agent_pid(sandbox)
    running = asyncio.ensure_future(sandbox.exec(["sleep", "30"], timeout_s=5))
    try:
        command = None
        for _ in range(200):
            sleepers = [
                pid
                for pid in _descendants(agent)
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
            ]
            if sleepers:
                command = sleepers[0]
                break
            await asyncio.sleep(0.01)
        assert command is not None, "the command never started"
        members = _members(sandbox.group)
        assert len(members) == len(sandbox.group.procs_files) >= 1
        for hierarchy in members:
            assert agent in hierarchy
            assert command in hierarchy
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_agent_joins_its_cgroups_itself_and_its_commands_are_born_inside(
    backend: BwrapBackend,
) -> None:
    sandbox = await backend.create()
    try:
        assert backend.join_in_guest
        await _in_every_hierarchy(sandbox)
        env = await sandbox.exec(["env"])
        assert b"SWARM_GUEST_CGROUP_FDS" not in env.stdout  # nothing of it reaches a command
        fds = (await sandbox.exec(["ls", "/proc/self/fd"])).stdout.decode().split()
        assert sorted(fds) == ["0", "1", "2", "3"]  # stdio and ls's own directory, no cgroup
    finally:
        await sandbox.destroy()


async def test_a_refused_join_falls_back_to_the_host_joining(
    backend: BwrapBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # /dev/full refuses every write (ENOSPC), as an older kernel refuses the agent's move.
    def refusing(group: cgroups.Group) -> list[int]:
        return [os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC) for _ in group.procs_files]

    monkeypatch.setattr(backend, "_open_procs", refusing)
    sandbox = await backend.create()
    try:
        assert not backend.join_in_guest  # and so for every later sandbox
        await _in_every_hierarchy(sandbox)
        assert "No space left on device" in caplog.text  # the reason is logged
    finally:
        await sandbox.destroy()
    later = await backend.create()
    try:
        await _in_every_hierarchy(later)
    finally:
        await later.destroy()


def _run_guest(tmp_path: Path, fds_env: str, pass_fds: tuple[int, ...] = ()) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-I", "-S", guest.__file__, "--listen", f"unix:{tmp_path}/agent.sock"],
        env={"PATH": "/usr/bin:/bin", "SWARM_GUEST_CGROUP_FDS": fds_env},
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout


def test_the_agent_says_why_it_could_not_join(tmp_path: Path) -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        code, out = _run_guest(tmp_path, str(full), (full,))
    finally:
        os.close(full)
    assert code == 3
    assert out.startswith("swarm-guest cgroup-join-failed:")
    assert f"fd {full}: No space left on device" in out


def test_the_agent_refuses_a_malformed_descriptor_list(tmp_path: Path) -> None:
    code, out = _run_guest(tmp_path, "3,x")
    assert code == 3
    assert "'3,x' is no list of descriptors" in out
