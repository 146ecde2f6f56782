"""What a process inside a sandbox cannot do: read the host's secrets, reach the network beyond
the control-plane port, outgrow its memory, or fork-bomb the host."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_fixtures import BACKENDS, backend_for, require_emulated
from swarmstack.sandbox.base import Backend, Limits, Sandbox, SandboxError, SandboxSpec
from swarmstack.sandbox.relay import ControlRelay

CONTROL_PORT = 8420


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroup limits need root: the suite runs as uid " + str(os.geteuid()))


class HostServer:
    """An HTTP server on the host's loopback: the control plane stand-in, or a target that a
    sandbox must not reach."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.hits = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> HostServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(self.body), self.body)
        )
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def control() -> AsyncIterator[HostServer]:
    server = await HostServer(b"control plane here").start()
    yield server
    await server.close()


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, control: HostServer
) -> AsyncIterator[tuple[Backend, Path]]:
    relay_dir = Path(f"/var/tmp/swarm-relay-{secrets.token_hex(4)}")
    relay = await ControlRelay(relay_dir, f"http://127.0.0.1:{control.port}").start()
    try:
        async for pair in backend_for(request.param, control_dir=relay_dir):
            yield pair
    finally:
        await relay.close()
        relay_dir.rmdir()


@pytest.fixture
async def box(backend: tuple[Backend, Path]) -> AsyncIterator[Sandbox]:
    spec = SandboxSpec(limits=Limits(memory_mib=128, pids=64), control_port=CONTROL_PORT)
    sandbox = await backend[0].create(spec)
    yield sandbox
    await sandbox.destroy()


FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
except Exception as exc:
    print("FAILED", type(exc).__name__, exc)
"""

CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=2).close()
    print("CONNECTED")
except OSError as exc:
    print("REFUSED", exc)
"""


async def test_the_control_plane_port_is_the_one_way_out(box: Sandbox, control: HostServer) -> None:
    inside = await box.exec(["python3", "-c", FETCH, f"http://127.0.0.1:{CONTROL_PORT}/v1/health"])
    assert inside.stdout.decode().strip() == "control plane here", inside
    assert control.hits == 1

    other = await HostServer(b"a host service").start()
    try:
        for host, port in [
            ("127.0.0.1", other.port),  # another port on the host's loopback
            ("127.0.0.1", control.port),  # the control plane's real port
            ("10.0.2.2", other.port),  # the host as QEMU's user network names it
            ("10.0.2.2", control.port),
            ("10.0.2.100", CONTROL_PORT + 1),  # beside the one forwarded port
            ("10.0.2.2", 80),
            ("192.168.1.1", 80),
            ("1.1.1.1", 53),
        ]:
            result = await box.exec(["python3", "-c", CONNECT, host, str(port)])
            assert result.stdout.startswith(b"REFUSED"), (host, port, result)
        assert other.hits == 0
    finally:
        await other.close()
    interfaces = (await box.exec(["cat", "/proc/net/dev"])).stdout.decode()
    names = [line.split(":")[0].strip() for line in interfaces.splitlines()[2:]]
    # A namespace, and a Firecracker VM (no network device, vsock only), have only their
    # loopback; a QEMU VM also has the user network's interface, which the connections above
    # show leads nowhere.
    assert names == (["lo", "eth0"] if box.backend == "qemu" else ["lo"])


async def test_the_host_home_and_environment_stay_invisible(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"swarm-canary-{secrets.token_hex(8)}"
    home_file = Path.home() / f".swarm-canary-{os.getpid()}"
    home_file.write_text(canary)
    # In the environment every sandbox process is started from.
    monkeypatch.setenv("SWARM_CANARY_SECRET", canary)
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
    try:
        fresh = await (await _owner(box)).create()  # created after the canaries exist
        try:
            probes = [
                ["cat", str(home_file)],
                ["ls", "-a", str(Path.home())],
                ["sh", "-c", "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'"],
                ["sh", "-c", "grep -rs " + canary + " /etc /tmp /run /home /workspace; true"],
            ]
            for argv in probes:
                result = await fresh.exec(argv)
                assert canary.encode() not in result.stdout + result.stderr, argv
            assert not (await fresh.exec(["cat", str(home_file)])).ok
            shadow = await fresh.exec(["cat", "/etc/shadow"])
            assert not shadow.ok
        finally:
            await fresh.destroy()
    finally:
        home_file.unlink()


async def test_a_process_past_its_memory_limit_is_killed_alone(box: Sandbox) -> None:
    needs_root()
    require_emulated(box.backend, "memory")
    hog = "b = []\nwhile True:\n    b.append(bytearray(8 << 20))\n"
    result = await box.exec(["python3", "-c", hog], timeout_s=60)
    assert result.exit_code == 137, result  # SIGKILL from the kernel's OOM killer
    assert not result.timed_out
    group = getattr(box, "group", None)
    if group is not None:
        assert group.oom_kills() >= 1
    # The sandbox itself (its agent) lives on, and so does everything else.
    assert (await box.exec(["echo", "still here"])).stdout == b"still here\n"


async def test_a_fork_bomb_hits_the_pids_limit_and_the_host_is_fine(box: Sandbox) -> None:
    needs_root()
    require_emulated(box.backend, "pids")
    count_forks = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            os.close(1)\n"
        "            os.close(2)\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    print(n)\n"
    )
    group = getattr(box, "group", None)
    # A classic bomb for three seconds: every fork past the limit fails inside the sandbox.
    bomb = asyncio.ensure_future(box.exec(["sh", "-c", "b() { b | b & }; b"], timeout_s=3))
    peak = 0
    while not bomb.done():
        if group is not None:
            peak = max(peak, len(group.pids()))
        proc = await asyncio.create_subprocess_exec("true")  # the host still starts processes
        assert await proc.wait() == 0
        await asyncio.sleep(0.02)
    await bomb
    assert peak <= 64
    for _ in range(100):  # what the bomb left behind dies off (or the timeout killed it)
        if group is None or len(group.pids()) < 8:
            break
        await asyncio.sleep(0.05)
    # Then count how far a process gets: it stops at the limit, with an error, not the host.
    result = await box.exec(["python3", "-c", count_forks], timeout_s=30)
    forks = int(result.stdout)
    assert 0 < forks < 64  # the limit, less the agent's own processes
    # The counter's children are ended with it; once they are gone (in a VM under emulation
    # that can take a moment) the sandbox starts commands again.
    assert await _alive_again(box, within_s=20)


async def _owner(box: Sandbox) -> Backend:
    owner = getattr(box, "owner", None)
    assert isinstance(owner, Backend)
    return owner


def test_the_relay_refuses_a_non_http_address(tmp_path: Path) -> None:
    from swarmstack.errors import UsageError

    with pytest.raises(UsageError, match="http://"):
        ControlRelay(tmp_path, "https://example.com")


async def _alive_again(box: Sandbox, within_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            return (await box.exec(["echo", "alive"], timeout_s=10)).stdout == b"alive\n"
        except SandboxError as exc:
            if "temporarily unavailable" not in str(exc):
                raise
            if asyncio.get_running_loop().time() > deadline:
                return False
        await asyncio.sleep(0.2)
