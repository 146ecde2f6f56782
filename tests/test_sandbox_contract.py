"""The sandbox contract, run against every backend: commands, files, pause, snapshots, destroy."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_fixtures import BACKENDS, backend_for
from swarmstack.errors import Conflict, NotFound
from swarmstack.sandbox.base import (
    Backend,
    Exit,
    Limits,
    Output,
    PathRefused,
    Sandbox,
    SandboxSpec,
)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Backend, Path]]:
    async for pair in backend_for(request.param):
        yield pair


@pytest.fixture
async def box(backend: tuple[Backend, Path]) -> AsyncIterator[Sandbox]:
    sandbox = await backend[0].create(SandboxSpec(limits=Limits(memory_mib=256)))
    yield sandbox
    await sandbox.destroy()


# -- commands ----------------------------------------------------------------------------------


async def test_exec_returns_output_and_exit_code(box: Sandbox) -> None:
    result = await box.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.ok and not result.timed_out

    ok = await box.exec(["pwd"])
    assert ok.ok and ok.stdout == b"/workspace\n"


async def test_exec_takes_stdin_env_and_a_working_directory(box: Sandbox) -> None:
    await box.write_file("sub/dir/keep", b"")
    result = await box.exec(
        ["sh", "-c", 'pwd; echo "$GREETING"; cat'],
        cwd="sub/dir",
        env={"GREETING": "hello"},
        stdin=b"from stdin",
    )
    assert result.stdout == b"/workspace/sub/dir\nhello\nfrom stdin"


async def test_output_streams_before_the_command_ends(box: Sandbox) -> None:
    seen: list[tuple[float, Output | Exit]] = []
    async for item in box.exec_stream(["sh", "-c", "echo first; sleep 1; echo second"]):
        seen.append((time.monotonic(), item))
    outputs = [(t, i) for t, i in seen if isinstance(i, Output)]
    assert b"".join(i.data for _, i in outputs) == b"first\nsecond\n"
    end_time, end = seen[-1]
    assert isinstance(end, Exit) and end.exit_code == 0
    assert end_time - outputs[0][0] >= 0.8  # "first" arrived while the command still ran


async def test_a_command_past_its_timeout_is_killed_with_its_children(box: Sandbox) -> None:
    started = time.monotonic()
    result = await box.exec(["sh", "-c", "sleep 30 & sleep 30; echo never"], timeout_s=0.5)
    assert result.timed_out and result.exit_code != 0
    assert result.stdout == b""
    assert time.monotonic() - started < 10
    left = await box.exec(["sh", "-c", "ps -eo comm= 2>/dev/null || ls /proc"])
    assert b"sleep" not in left.stdout


async def test_an_unknown_command_is_127(box: Sandbox) -> None:
    result = await box.exec(["no-such-command-here"])
    assert result.exit_code == 127
    assert b"no-such-command-here" in result.stderr


async def test_commands_run_as_an_unprivileged_user_with_a_scrubbed_environment(
    box: Sandbox,
) -> None:
    ident = await box.exec(["id", "-u"])
    assert int(ident.stdout) != 0
    env = dict(
        line.split("=", 1)
        for line in (await box.exec(["env"])).stdout.decode().splitlines()
        if "=" in line
    )
    assert env["HOME"] == "/home/agent" and env["SWARM_WORKSPACE"] == "/workspace"
    assert env["SWARM_API_URL"].startswith("http://127.0.0.1:")
    assert not {k for k in env if k.startswith(("VIRTUAL_ENV", "PYTEST", "SWARM_TEST"))}


# -- files -------------------------------------------------------------------------------------


async def test_files_round_trip_list_and_delete(box: Sandbox) -> None:
    payload = bytes(range(256)) * 1000
    await box.write_file("src/pkg/data.bin", payload, mode=0o600)
    await box.write_file("src/readme.md", b"# hi\n")
    assert await box.read_file("src/pkg/data.bin") == payload
    assert (await box.exec(["cat", "src/readme.md"])).stdout == b"# hi\n"

    entries = {e.name: e for e in await box.list_files("src")}
    assert set(entries) == {"pkg", "readme.md"}
    assert entries["pkg"].type == "dir" and entries["readme.md"].size == 5
    (data,) = await box.list_files("src/pkg/data.bin")
    assert (data.type, data.size, data.mode) == ("file", len(payload), 0o600)

    await box.delete("src/readme.md")
    with pytest.raises(NotFound):
        await box.read_file("src/readme.md")
    with pytest.raises(Conflict, match="directory"):
        await box.delete("src")
    await box.delete("src", recursive=True)
    assert await box.list_files() == []


async def test_paths_that_leave_the_workspace_are_refused(box: Sandbox) -> None:
    await box.exec(["sh", "-c", "ln -s /etc/hostname out; ln -s / root; echo x > inside"])
    await box.exec(["ln", "-s", "inside", "alias"])
    for bad in ["../etc/passwd", "/etc/passwd", "a/../../x", "nul\0byte", "out", "root/etc"]:
        with pytest.raises(PathRefused):
            await box.read_file(bad)
        with pytest.raises(PathRefused):
            await box.write_file(bad, b"overwritten")
    with pytest.raises(PathRefused):
        await box.list_files("root")
    assert await box.read_file("alias") == b"x\n"  # a link that stays inside is fine
    await box.delete("out")  # deletes the link, not what it points at
    assert (await box.exec(["cat", "/etc/hostname"])).ok


async def test_missing_files_are_not_found(box: Sandbox) -> None:
    with pytest.raises(NotFound):
        await box.read_file("nope.txt")
    with pytest.raises(NotFound):
        await box.list_files("nope")
    with pytest.raises(NotFound):
        await box.delete("nope")


# -- life cycle --------------------------------------------------------------------------------


async def test_pause_stops_everything_and_resume_restarts_it(box: Sandbox) -> None:
    await box.write_file(
        # Written aside and renamed, so that a read never meets a half-written count.
        "tick.sh",
        b"i=0; while true; do i=$((i+1)); echo $i > .count; mv .count count; sleep 0.05; done\n",
    )
    ticker = asyncio.ensure_future(box.exec(["sh", "tick.sh"], timeout_s=30))
    await asyncio.sleep(0.5)
    await box.pause()
    assert box.info().state == "paused"
    with pytest.raises(Conflict, match="paused"):
        await box.exec(["true"])
    workspace = getattr(box, "workspace", None)
    if isinstance(workspace, Path):  # the host can look without waking the sandbox
        frozen = (workspace / "count").read_text()
        await asyncio.sleep(0.5)
        assert (workspace / "count").read_text() == frozen
    await box.resume()
    first = int(await box.read_file("count"))
    await asyncio.sleep(0.5)
    assert int(await box.read_file("count")) > first
    ticker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ticker


async def test_snapshot_then_restore_brings_the_workspace_back(
    backend: tuple[Backend, Path], box: Sandbox
) -> None:
    be, root = backend
    await box.write_file("repo/a.txt", b"one")
    await box.exec(["sh", "-c", "mkdir -p repo/b && echo two > repo/b/c.txt && chmod 700 repo/b"])
    snap = await box.snapshot(root / "snapshots")
    assert snap.backend == be.name and snap.size_bytes > 0 and Path(snap.path).exists()
    await box.destroy()

    again = await be.restore(snap)
    try:
        assert again.id != box.id
        assert await again.read_file("repo/a.txt") == b"one"
        assert await again.read_file("repo/b/c.txt") == b"two\n"
        assert (await again.exec(["sh", "-c", "echo three > repo/b/d.txt"])).ok  # still ours
    finally:
        await again.destroy()


async def test_destroy_ends_every_process_and_frees_the_sandbox(box: Sandbox) -> None:
    await box.exec(["sh", "-c", "sleep 300 > /dev/null 2>&1 &"])
    info = box.info()
    assert info.pid is not None
    home = getattr(box, "home", None)
    await box.destroy()
    assert box.info().state == "destroyed"
    await box.destroy()  # twice is harmless
    with pytest.raises(Conflict, match="destroyed"):
        await box.exec(["true"])
    deadline = time.monotonic() + 5
    while _alive(info.pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not _alive(info.pid)
    if isinstance(home, Path):
        assert not home.exists()


async def test_the_backend_reports_its_isolation(backend: tuple[Backend, Path]) -> None:
    be, _ = backend
    sandbox = await be.create()
    try:
        info = sandbox.info()
        assert info.isolation == be.isolation == sandbox.isolation
        assert info.backend == be.name and info.state == "running"
        if info.isolation == "vm":  # the VM's own size, whoever runs it
            assert {"memory", "cpu"} <= set(info.enforced)
        elif os.geteuid() == 0:
            assert {"memory", "pids", "cpu"} <= set(info.enforced)
        assert (await sandbox.ping())["workspace"] == "/workspace"
    finally:
        await sandbox.destroy()


async def test_sandboxes_do_not_see_each_other(backend: tuple[Backend, Path]) -> None:
    be, _ = backend
    one, two = await asyncio.gather(be.create(), be.create())
    try:
        await one.write_file("secret.txt", b"one's")
        assert await two.list_files() == []
        started = await one.exec(["sh", "-c", "sleep 7331 >/dev/null 2>&1 & echo $!"])
        assert started.ok and int(started.stdout) > 0
        seen = await two.exec(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
        assert b"7331" not in seen.stdout  # one's processes are not there to see
        if be.isolation == "namespace":  # a VM has its kernel's threads besides
            procs = await two.exec(["sh", "-c", "ls /proc | grep -c '^[0-9]'"])
            assert int(procs.stdout) < 10  # its own few processes only
    finally:
        await asyncio.gather(one.destroy(), two.destroy())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
