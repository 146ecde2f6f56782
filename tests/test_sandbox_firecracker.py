"""The Firecracker backend at the wire: the API calls it makes, in order, against a stand-in that
checks each against the spec's rules; vsock both ways; the jailer's command line; the models
against the spec file; and a real boot where Firecracker, KVM and an image are all there."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import httpx
import pytest
import yaml

from firecracker_standin import PRIVATE
from sandbox_fixtures import STANDIN, backend_for, placeholder_image, state_dir
from swarmstack.errors import Conflict, NotFound, UsageError
from swarmstack.sandbox import guest
from swarmstack.sandbox.base import Limits, SandboxError, SandboxSpec
from swarmstack.sandbox.firecracker import (
    AGENT_PORT,
    FirecrackerBackend,
    FirecrackerSandbox,
    vsock_connect,
)
from swarmstack.sandbox.firecracker_api import MODELS, ROUTES, BootSource, FirecrackerAPI
from swarmstack.sandbox.relay import ControlRelay
from swarmstack.sandbox.vmfiles import copy_sparse

if TYPE_CHECKING:
    from swarmstack.sandbox.image import Image

ROOT = Path(__file__).resolve().parents[1]
SPEC_NAME = "firecracker-api-v1.16.1.yaml"
KVM_GET_API_VERSION = 0xAE00


@pytest.fixture
async def backend() -> AsyncIterator[FirecrackerBackend]:
    async for be, _ in backend_for("firecracker"):
        assert isinstance(be, FirecrackerBackend)
        yield be


@pytest.fixture
async def box(backend: FirecrackerBackend) -> AsyncIterator[FirecrackerSandbox]:
    sandbox = await backend.create(SandboxSpec(limits=Limits(cpus=1.5, memory_mib=256)))
    yield sandbox
    await sandbox.destroy()


def calls(sandbox: FirecrackerSandbox) -> list[tuple[str, str, Any, int]]:
    """What the stand-in behind ``sandbox`` was asked, in order: method, path, body, status."""
    record = sandbox.root / "api.sock.requests.jsonl"
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    return [(e["method"], e["path"], e["body"], e["status"]) for e in entries]


# -- the calls ---------------------------------------------------------------------------------


async def test_boot_configures_the_vm_then_starts_it(box: FirecrackerSandbox) -> None:
    assert calls(box) == [
        ("GET", "/", None, 200),
        ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}, 204),
        (
            "PUT",
            "/boot-source",
            {
                "kernel_image_path": "vmlinux",
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off swarm.listen=vsock:1024",
            },
            204,
        ),
        (
            "PUT",
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "is_root_device": True,
                "is_read_only": True,
                "path_on_host": "rootfs.ext4",
            },
            204,
        ),
        (
            "PUT",
            "/drives/workspace",
            {
                "drive_id": "workspace",
                "is_root_device": False,
                "is_read_only": False,
                "path_on_host": "workspace.ext4",
            },
            204,
        ),
        ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "v.sock"}, 204),
        ("PUT", "/actions", {"action_type": "InstanceStart"}, 204),
    ]
    # The workspace drive: ext4 (its superblock magic), disk_mib large, private.
    drive = box.root / "workspace.ext4"
    assert drive.stat().st_size == box.spec.limits.disk_mib << 20
    with drive.open("rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef"
    assert drive.stat().st_mode & 0o777 == 0o600
    assert (box.root / "rootfs.ext4").resolve() == box.owner.rootfs
    info = box.info()
    assert (info.backend, info.isolation, info.state) == ("firecracker", "vm", "running")
    assert (await box.ping())["workspace"] == "/workspace"


async def test_commands_get_the_sandbox_environment(box: FirecrackerSandbox) -> None:
    result = await box.exec(
        ["sh", "-c", 'echo "$SWARM_SANDBOX_ID $HOME $EXTRA"'], env={"EXTRA": "x"}
    )
    assert result.stdout.decode().split() == [box.id, "/home/agent", "x"]


async def test_pause_and_resume_patch_the_vm_and_stop_every_guest_process(
    box: FirecrackerSandbox,
) -> None:
    await box.write_file("tick.sh", b"while true; do date +%s%N > count; sleep 0.05; done\n")
    ticker = asyncio.ensure_future(box.exec(["sh", "tick.sh"], timeout_s=30))
    await asyncio.sleep(0.5)
    before = len(calls(box))
    await box.pause()
    assert calls(box)[before:] == [("PATCH", "/vm", {"state": "Paused"}, 204)]
    (ticking,) = _host_pids(b"sh\0tick.sh\0")
    assert _state(ticking) == "T"
    count = box.root / PRIVATE / "workspace" / "count"  # the emulated disk, seen from outside
    frozen = count.read_text()
    await asyncio.sleep(0.4)
    assert count.read_text() == frozen
    with pytest.raises(Conflict, match="paused"):
        await box.read_file("count")

    await box.resume()
    assert calls(box)[-1] == ("PATCH", "/vm", {"state": "Resumed"}, 204)
    assert _state(ticking) != "T"
    await asyncio.sleep(0.3)
    assert count.read_text() != frozen
    ticker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ticker
    with pytest.raises(Conflict, match="not paused"):
        await box.resume()


async def test_snapshot_pauses_saves_resumes_and_restore_loads_in_a_fresh_vm(
    backend: FirecrackerBackend, box: FirecrackerSandbox, tmp_path: Path
) -> None:
    await box.write_file("notes/a.txt", b"kept")
    before = len(calls(box))
    snap = await box.snapshot(tmp_path / "snapshots")
    assert calls(box)[before:] == [
        ("PATCH", "/vm", {"state": "Paused"}, 204),
        (
            "PUT",
            "/snapshot/create",
            {
                "mem_file_path": "snapshot/memory",
                "snapshot_path": "snapshot/vmstate",
                "snapshot_type": "Full",
            },
            204,
        ),
        ("PATCH", "/vm", {"state": "Resumed"}, 204),
    ]
    saved = Path(snap.path).parent
    assert snap.kind == "memory" and Path(snap.path) == saved / "vmstate"
    assert sorted(p.name for p in saved.iterdir()) == [
        "image.json",
        "memory",
        "vmstate",
        "workspace.ext4",
    ]
    assert saved.stat().st_mode & 0o777 == 0o700
    assert not (box.root / "snapshot").exists()
    assert box.info().state == "running"
    assert (await box.exec(["true"])).ok

    again = await backend.restore(snap)
    try:
        clock = {"clock_realtime": True} if platform.machine() == "x86_64" else {}
        assert calls(again) == [
            ("GET", "/", None, 200),
            (
                "PUT",
                "/snapshot/load",
                {
                    "snapshot_path": "snapshot/vmstate",
                    "mem_backend": {"backend_type": "File", "backend_path": "snapshot/memory"},
                    "resume_vm": True,
                    "vsock_override": {"uds_path": "v.sock"},
                    **clock,
                },
                204,
            ),
        ]
        assert again.root != box.root and again.vsock_path.is_socket()
        assert await again.read_file("notes/a.txt") == b"kept"
        ident = await again.exec(["sh", "-c", "echo $SWARM_SANDBOX_ID"])
        assert ident.stdout.decode().strip() == again.id
        # The restored drive is a copy: the first VM's disk is its own.
        assert (again.root / "workspace.ext4").stat().st_ino != (
            box.root / "workspace.ext4"
        ).stat().st_ino
    finally:
        await again.destroy()


async def test_a_paused_sandbox_snapshots_and_stays_paused(
    box: FirecrackerSandbox, tmp_path: Path
) -> None:
    await box.pause()
    before = len(calls(box))
    await box.snapshot(tmp_path)
    assert [(m, p) for m, p, _, _ in calls(box)[before:]] == [("PUT", "/snapshot/create")]
    assert box.info().state == "paused"
    await box.resume()


async def test_restore_refuses_snapshots_it_cannot_load(
    backend: FirecrackerBackend, box: FirecrackerSandbox, tmp_path: Path
) -> None:
    snap = await box.snapshot(tmp_path)
    with pytest.raises(UsageError, match="cannot start here"):
        await backend.restore(snap.model_copy(update={"backend": "bwrap"}))
    backend.rootfs.write_bytes(b"another image")  # rebuilt since
    with pytest.raises(UsageError, match="taken on the image"):
        await backend.restore(snap)
    (Path(snap.path).parent / "memory").unlink()
    with pytest.raises(UsageError, match="lacks memory"):
        await backend.restore(snap)
    assert list(backend.sandboxes) == [box.id]


async def test_destroy_ends_the_vm_and_every_guest_process(box: FirecrackerSandbox) -> None:
    marker = str(3000 + secrets.randbelow(999))
    await box.exec(["sh", "-c", f"sleep {marker} > /dev/null 2>&1 &"])
    (sleeper,) = _host_pids(b"sleep\0" + marker.encode() + b"\0")
    vmm = box.info().pid
    await box.destroy()
    deadline = time.monotonic() + 5
    while (_alive(sleeper) or _alive(vmm)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not _alive(sleeper) and not _alive(vmm)
    assert not box.home.exists()


# -- refusals ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def standin(directory: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The stand-in alone, as ``firecracker --api-sock api.sock`` in ``directory``."""
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--api-sock", "api.sock", "--id", "alone"],
        cwd=directory,
        start_new_session=True,
    )
    api_socket = directory / "api.sock"
    try:
        for _ in range(1000):
            if api_socket.exists():
                break
            await asyncio.sleep(0.01)
        transport = httpx.AsyncHTTPTransport(uds=str(api_socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    directory = state_dir()
    placeholder_image(directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def fault(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    message = response.json()["fault_message"]
    assert isinstance(message, str)
    return message


async def test_the_standin_refuses_bodies_that_break_the_spec(vm_dir: Path) -> None:
    async with standin(vm_dir) as api:
        wrong_type = await api.put("/machine-config", json={"vcpu_count": "2", "mem_size_mib": 64})
        assert "vcpu_count" in fault(wrong_type)
        missing = await api.put("/machine-config", json={"vcpu_count": 2})
        assert re.search(r"mem_size_mib: Field required", fault(missing))
        unknown = await api.put(
            "/machine-config", json={"vcpu_count": 2, "mem_size_mib": 64, "turbo": True}
        )
        assert "turbo" in fault(unknown)
        too_many = await api.put("/machine-config", json={"vcpu_count": 33, "mem_size_mib": 64})
        assert "vcpu_count" in fault(too_many)
        bad_enum = await api.patch("/vm", json={"state": "Frozen"})
        assert "state" in fault(bad_enum)
        nested = await api.put(
            "/snapshot/load",
            json={"snapshot_path": "s", "mem_backend": {"backend_type": "File"}},
        )
        assert "mem_backend.backend_path" in fault(nested)
        neither = await api.put("/snapshot/load", json={"snapshot_path": "s"})
        assert "exactly one of mem_backend and mem_file_path" in fault(neither)
        not_json = await api.put("/vsock", content=b"{guest_cid: 3")
        assert "deserializing" in fault(not_json)
        assert "Invalid request" in fault(await api.get("/no-such-thing"))
        assert "Invalid request" in fault(await api.delete("/vm"))
        assert "Invalid request" in fault(await api.put("/logger", json={}))
        mismatch = await api.put(
            "/drives/one",
            json={
                "drive_id": "two",
                "is_root_device": True,
                "is_read_only": True,
                "path_on_host": "image/rootfs.ext4",
            },
        )
        assert "does not match" in fault(mismatch)
        kernel = await api.put("/boot-source", json={"kernel_image_path": "nowhere/vmlinux"})
        assert "kernel file cannot be opened" in fault(kernel)

        ok = await api.put("/machine-config", json={"vcpu_count": 2, "mem_size_mib": 64})
        assert ok.status_code == 204
        info = (await api.get("/")).json()
        assert info == {
            "app_name": "Firecracker",
            "id": "alone",
            "state": "Not started",
            "vmm_version": "1.16.1",
        }
    record = [
        json.loads(line) for line in (vm_dir / "api.sock.requests.jsonl").read_text().splitlines()
    ]
    assert [e["status"] for e in record] == [400] * 13 + [204, 200]
    assert record[0]["body"] == {"vcpu_count": "2", "mem_size_mib": 64}


async def test_the_standin_refuses_calls_out_of_order(vm_dir: Path) -> None:
    async with standin(vm_dir) as api:
        assert "before starting" in fault(await api.patch("/vm", json={"state": "Paused"}))
        start = {"action_type": "InstanceStart"}
        assert "kernel configuration" in fault(await api.put("/actions", json=start))
        create = {"snapshot_path": "vmstate", "mem_file_path": "memory"}
        assert "before starting" in fault(await api.put("/snapshot/create", json=create))

        boot = {"kernel_image_path": "image/vmlinux", "boot_args": "swarm.listen=vsock:1024"}
        assert (await api.put("/boot-source", json=boot)).status_code == 204
        vsock = {"guest_cid": 3, "uds_path": "v.sock"}
        assert (await api.put("/vsock", json=vsock)).status_code == 204
        load = {
            "snapshot_path": "vmstate",
            "mem_backend": {"backend_type": "File", "backend_path": "memory"},
        }
        assert "after configuring" in fault(await api.put("/snapshot/load", json=load))
        assert (await api.put("/actions", json=start)).status_code == 204
        assert "after starting" in fault(await api.put("/actions", json=start))
        config = {"vcpu_count": 1, "mem_size_mib": 64}
        assert "after starting" in fault(await api.put("/machine-config", json=config))
        assert "not paused" in fault(await api.put("/snapshot/create", json=create))
        assert (await api.get("/")).json()["state"] == "Running"
        assert (await api.patch("/vm", json={"state": "Paused"})).status_code == 204
        assert (await api.get("/")).json()["state"] == "Paused"
        assert (await api.put("/snapshot/create", json=create)).status_code == 204
        assert (vm_dir / "vmstate").is_file() and (vm_dir / "memory").is_file()


async def test_refusals_reach_the_caller_as_sandbox_errors(
    vm_dir: Path, backend: FirecrackerBackend
) -> None:
    async with standin(vm_dir):
        api = FirecrackerAPI(vm_dir / "api.sock")
        try:
            with pytest.raises(SandboxError, match=r"refused PUT /boot-source \(400\): The kernel"):
                await api.put("/boot-source", BootSource(kernel_image_path="nowhere"))
            assert (await api.describe()).state == "Not started"
        finally:
            await api.close()

    # Through the backend: the kernel vanishes after the backend checked it.
    backend.kernel.unlink()
    with pytest.raises(SandboxError, match="kernel file cannot be opened"):
        await backend.create()
    assert backend.sandboxes == {}
    assert [p.name for p in backend.state_dir.iterdir()] == []


def test_the_backend_says_what_is_missing(tmp_path: Path) -> None:
    image = placeholder_image(tmp_path)
    standin = [sys.executable, str(STANDIN)]
    with pytest.raises(UsageError, match="swarm image build"):
        FirecrackerBackend(tmp_path / "vms", kernel=tmp_path / "nope", rootfs=image["rootfs"])
    with pytest.raises(UsageError, match="not installed"):
        FirecrackerBackend(tmp_path / "vms", firecracker="no-such-firecracker", **image)
    with pytest.raises(UsageError, match="execs one file"):
        FirecrackerBackend(tmp_path / "vms", firecracker=standin, jailer=sys.executable, **image)
    with pytest.raises(UsageError, match="named \\*firecracker\\*"):
        FirecrackerBackend(
            tmp_path / "vms", firecracker=sys.executable, jailer=sys.executable, **image
        )


async def test_more_vcpus_than_firecracker_gives_is_refused(backend: FirecrackerBackend) -> None:
    with pytest.raises(UsageError, match="at most 32 vCPUs"):
        await backend.create(SandboxSpec(limits=Limits(cpus=40)))
    assert backend.sandboxes == {}


# -- vsock -------------------------------------------------------------------------------------


async def test_vsock_connect_handshake_reaches_the_guest_agent(box: FirecrackerSandbox) -> None:
    reader, writer = await asyncio.open_unix_connection(str(box.vsock_path))
    writer.write(b"CONNECT %d\n" % AGENT_PORT)
    assert re.fullmatch(rb"OK \d+\n", await reader.readline())
    writer.write(b'{"op": "ping"}\n')
    answer = json.loads(await reader.readline())
    assert answer["ok"] and answer["workspace"] == "/workspace"
    writer.close()

    # Nothing listens on that port in the guest: hung up on, no OK.
    reader, writer = await asyncio.open_unix_connection(str(box.vsock_path))
    writer.write(b"CONNECT 4242\n")
    assert await reader.readline() == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError, match="port 4242"):
        await vsock_connect(box.vsock_path, 4242)
    # Not the protocol at all: hung up on too.
    reader, writer = await asyncio.open_unix_connection(str(box.vsock_path))
    writer.write(b"HELLO\n")
    assert await reader.readline() == b""
    writer.close()


class HostServer:
    """A one-line HTTP server on the host's loopback: the control plane stand-in."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> HostServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.paths.append(head.split()[1])
        body = b"control plane over vsock"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


FETCH = """
import os, urllib.request
print(urllib.request.urlopen(os.environ["SWARM_API_URL"] + "/v1/health", timeout=5).read().decode())
"""


async def test_the_guest_reaches_the_control_plane_through_vsock() -> None:
    control = await HostServer().start()
    relay_dir = Path(f"/var/tmp/swarm-relay-{secrets.token_hex(4)}")
    relay = await ControlRelay(relay_dir, f"http://127.0.0.1:{control.port}").start()
    try:
        async for be, _ in backend_for("firecracker", control_dir=relay_dir):
            sandbox = await be.create(SandboxSpec(control_port=8421))
            assert isinstance(sandbox, FirecrackerSandbox)
            try:
                boot = next(b for m, p, b, _ in calls(sandbox) if p == "/boot-source")
                assert boot["boot_args"].endswith(
                    "swarm.listen=vsock:1024 swarm.forward=127.0.0.1:8421=vsock:2:8421"
                )
                assert (sandbox.root / "v.sock_8421").is_socket()  # where Firecracker connects
                result = await sandbox.exec(["python3", "-c", FETCH])
                assert result.stdout == b"control plane over vsock\n", result
                assert control.paths == [b"/v1/health"]
            finally:
                await sandbox.destroy()
    finally:
        await relay.close()
        relay_dir.rmdir()
        await control.close()


# -- the guest agent's vsock modes -------------------------------------------------------------


def test_the_guest_agent_reads_vsock_addresses_and_boot_args() -> None:
    assert guest.address("vsock:1024") == (socket.AF_VSOCK, (socket.VMADDR_CID_ANY, 1024))
    assert guest.address("vsock:2:8420") == (socket.AF_VSOCK, (2, 8420))
    assert guest.address("unix:/run/a.sock") == (socket.AF_UNIX, "/run/a.sock")
    assert guest.address("tcp:127.0.0.1:80") == (socket.AF_INET, ("127.0.0.1", 80))
    for bad in ("vsock:", "vsock:two:1", "unix:", "serial:0", "tcp:host"):
        with pytest.raises(ValueError, match="no address"):
            guest.address(bad)
    cmdline = (
        "console=ttyS0 swarm.listen=vsock:1024 quiet swarm.forward=127.0.0.1:8420=vsock:2:8420"
    )
    assert guest.from_boot_args(cmdline) == [
        "--listen",
        "vsock:1024",
        "--forward",
        "127.0.0.1:8420=vsock:2:8420",
    ]


async def test_the_guest_agent_starts_from_a_kernel_command_line(tmp_path: Path) -> None:
    agent = tmp_path / "agent.sock"
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"console=ttyS0 swarm.listen=unix:{agent} panic=1\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-I", guest.__file__, "--boot-args", str(cmdline),
        stdout=subprocess.PIPE, env={"SWARM_WORKSPACE": str(tmp_path)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"swarm-guest ready\n"
        reader, writer = await asyncio.open_unix_connection(str(agent))
        writer.write(b'{"op": "ping"}\n')
        assert json.loads(await reader.readline())["workspace"] == str(tmp_path.resolve())
        writer.close()
    finally:
        process.kill()
        await process.wait()


# -- the jailer --------------------------------------------------------------------------------

FAKE_JAILER = '''#!{python}
"""Checks the jailer's arguments, records them, and starts Firecracker where the jailer would
(its working directory <base>/<exec file name>/<id>/root, with --id=), but neither chroots nor
drops to the uid."""
import json, os, sys
with open({record!r}, "w") as f:
    json.dump(sys.argv, f)
args = sys.argv[1:]
split = args.index("--")
options = dict(zip(args[:split:2], args[1:split:2]))
assert set(options) == {{"--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir"}}, options
int(options["--uid"]), int(options["--gid"])
exec_file = options["--exec-file"]
assert "firecracker" in os.path.basename(exec_file) and os.path.isabs(exec_file)
root = os.path.join(
    options["--chroot-base-dir"], os.path.basename(exec_file), options["--id"], "root"
)
os.makedirs(root, exist_ok=True)
os.chdir(root)
os.execv(exec_file, [exec_file, "--id=" + options["--id"], "--start-time-us=1",
                     "--start-time-cpu-us=1", *args[split + 1:]])
'''


async def test_the_jailer_starts_firecracker_in_a_chroot_of_its_own() -> None:
    root = state_dir()
    try:
        tools = root / "bin"
        tools.mkdir()
        firecracker = tools / "firecracker"
        firecracker.write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
        jailer = tools / "jailer"
        record = root / "jailer-argv.json"
        jailer.write_text(FAKE_JAILER.format(python=sys.executable, record=str(record)))
        for tool in (firecracker, jailer):
            tool.chmod(0o755)
        image = placeholder_image(root)
        base = root / "jail"
        be = FirecrackerBackend(
            root / "vms",
            firecracker=str(firecracker),
            jailer=str(jailer),
            chroot_base=base,
            uid_base=310_000,
            **image,
        )
        sandbox = await be.create()
        try:
            assert json.loads(record.read_text()) == [
                str(jailer),
                "--id", sandbox.id,
                "--exec-file", str(firecracker),
                "--uid", "310000",
                "--gid", "310000",
                "--chroot-base-dir", str(base),
                "--",
                "--api-sock", "api.sock",
            ]  # fmt: skip
            assert sandbox.root == base / "firecracker" / sandbox.id / "root"
            assert (sandbox.root / "api.sock").is_socket()
            assert (sandbox.root / "v.sock").is_socket()
            # Inside a jail a symlink out leads nowhere: the image is hard-linked in.
            placed = sandbox.root / "rootfs.ext4"
            assert not placed.is_symlink()
            assert placed.stat().st_ino == image["rootfs"].stat().st_ino
            drive = (sandbox.root / "workspace.ext4").stat()
            assert (drive.st_uid, drive.st_gid) == (310_000, 310_000)
            assert (await sandbox.exec(["echo", "jailed"])).stdout == b"jailed\n"
        finally:
            await be.close()
        assert not (base / "firecracker" / sandbox.id).exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- small parts -------------------------------------------------------------------------------


def test_copy_sparse_keeps_holes(tmp_path: Path) -> None:
    source, dest = tmp_path / "disk", tmp_path / "copy"
    with source.open("wb") as f:
        f.write(b"head" * 1024)
        f.seek(200 << 20)
        f.write(b"tail")
        f.truncate(256 << 20)
    copy_sparse(source, dest)
    assert dest.stat().st_size == 256 << 20
    assert dest.stat().st_blocks * 512 < 8 << 20
    with dest.open("rb") as f:
        assert f.read(4096) == b"head" * 1024
        f.seek(200 << 20)
        assert f.read(8) == b"tail\0\0\0\0"


def _spec() -> dict[str, Any]:
    candidates = [ROOT.parent / "shared" / "specs" / SPEC_NAME]
    if os.environ.get("SWARM_FIRECRACKER_SPEC"):
        candidates.insert(0, Path(os.environ["SWARM_FIRECRACKER_SPEC"]))
    for path in candidates:
        if path.is_file():
            loaded: dict[str, Any] = yaml.safe_load(path.read_text())
            return loaded
    pytest.skip(f"Firecracker's API spec ({SPEC_NAME}) is not at {candidates[-1]}")


def _core(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def _compatible(annotation: Any, schema: dict[str, Any], definitions: dict[str, Any]) -> bool:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        target = definitions[name]
        if target.get("type") == "object":
            return isinstance(annotation, type) and annotation.__name__ == name
        schema = target
    if "enum" in schema:
        return get_origin(annotation) is Literal and set(get_args(annotation)) == {
            str(v) for v in schema["enum"]
        }
    kind = schema.get("type")
    if kind == "array":
        (item,) = get_args(annotation)
        return get_origin(annotation) is list and _compatible(item, schema["items"], definitions)
    return annotation is {"string": str, "integer": int, "boolean": bool}.get(kind)


def test_the_models_match_the_spec() -> None:
    spec = _spec()
    definitions = spec["definitions"]
    for model in MODELS:
        definition = definitions[model.__name__]
        properties = definition.get("properties", {})
        fields = model.model_fields
        assert set(fields) == set(properties), model.__name__
        required = {name for name, f in fields.items() if f.is_required()}
        assert required == set(definition.get("required", [])), model.__name__
        assert model.model_config.get("extra") == "forbid"
        for name, schema in properties.items():
            annotation = _core(fields[name].annotation)
            assert _compatible(annotation, schema, definitions), (model.__name__, name)
            metadata = fields[name].metadata
            lowest = next((m.ge for m in metadata if hasattr(m, "ge")), None)
            highest = next((m.le for m in metadata if hasattr(m, "le")), None)
            assert (lowest, highest) == (schema.get("minimum"), schema.get("maximum")), (
                model.__name__,
                name,
            )
    for (method, path), body in ROUTES.items():
        operation = spec["paths"][path][method.lower()]
        refs = [
            p["schema"]["$ref"].rsplit("/", 1)[1]
            for p in operation.get("parameters", [])
            if p["in"] == "body"
        ]
        assert refs == ([] if body is None else [body.__name__]), (method, path)


# -- a real VM ---------------------------------------------------------------------------------


def _built_image() -> Image:
    from swarmstack.sandbox.image import find_image

    try:
        return find_image()
    except NotFound as exc:
        pytest.skip(f"no VM image ({exc.message})")


def _cpio(archive: bytes) -> dict[str, bytes]:
    """The files of a gzip'd cpio ("newc") archive."""
    data, files, at = gzip.decompress(archive), {}, 0
    while True:
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        size, name_size = fields[6], fields[11]
        name = data[at + 110 : at + 110 + name_size - 1].decode()
        at += 110 + name_size
        at += -at % 4
        if name == "TRAILER!!!":
            return files
        files[name] = data[at : at + size]
        at += size + (-size % 4)


def test_an_image_boots_with_this_backends_init_and_agent(tmp_path: Path) -> None:
    image = _built_image()
    be = FirecrackerBackend.from_image(
        tmp_path / "vms", image, firecracker=[sys.executable, str(STANDIN)]
    )
    assert (be.kernel, be.rootfs) == (image.vmlinux.resolve(), image.rootfs.resolve())
    assert be.initrd is not None
    files = _cpio(be.initrd.read_bytes())
    assert files["guest.py"] == Path(guest.__file__).read_bytes()
    init = files["init"].decode()
    assert "--boot-args /proc/cmdline" in init and "{uid}" not in init
    assert "--reuid=1000" in init
    for module in image.modules():
        assert module in files
    again = FirecrackerBackend.from_image(
        tmp_path / "vms", image, firecracker=[sys.executable, str(STANDIN)]
    )
    assert again.initrd == be.initrd  # packed once per image and agent


def _kvm_problem() -> str | None:
    """Why KVM cannot run a VM here, as far as a file and an ioctl can tell."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm cannot be opened ({exc.strerror})"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"KVM_GET_API_VERSION on /dev/kvm failed ({exc.strerror})"
    finally:
        os.close(fd)
    return None if version == 12 else f"KVM's API version is {version}, not 12"


@pytest.mark.slow
async def test_a_real_vm_boots_runs_snapshots_and_restores() -> None:
    stall = "(even where KVM answers, nested KVM may still stall a guest)"
    if shutil.which("firecracker") is None:
        pytest.skip(f"no firecracker binary on PATH: no real boot here {stall}")
    problem = _kvm_problem()
    if problem is not None:
        pytest.skip(f"{problem}: no real boot here {stall}")
    image = _built_image()
    root = state_dir()
    be = FirecrackerBackend.from_image(root / "vms", image, boot_timeout_s=120)
    try:
        box = await be.create()
        assert (await box.exec(["cat", "/proc/1/comm"])).ok
        assert (await box.exec(["pwd"])).stdout == b"/workspace\n"
        await box.write_file("a.txt", b"in the vm")
        snap = await box.snapshot(root / "snapshots")
        await box.destroy()
        again = await be.restore(snap)
        assert await again.read_file("a.txt") == b"in the vm"
    finally:
        await be.close()
        shutil.rmtree(root, ignore_errors=True)


def _host_pids(cmdline: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes() == cmdline:
                    found.append(int(entry.name))
    return found


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _alive(pid: int | None) -> bool:
    try:
        return pid is not None and _state(pid) != "Z"
    except OSError:
        return False
