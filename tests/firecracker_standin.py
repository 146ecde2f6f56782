#!/usr/bin/env python3
"""A stand-in for Firecracker, for machines that cannot run it: its API, checked, and a guest.

Started as Firecracker is (``firecracker_standin.py --api-sock PATH [--id ID]``), it serves the
API calls Swarm makes on a Unix socket and refuses, with a 400 and a ``fault_message`` as
Firecracker does:

* a body that does not validate against :mod:`swarmstack.sandbox.firecracker_api` (a wrong
  type, a missing required field, an unknown field), or a path or method it does not serve;
* a call out of order, by Firecracker's rules: pre-boot calls after the start, ``PATCH /vm``
  before it, ``InstanceStart`` without a boot source, ``/snapshot/create`` on a VM that is not
  paused, ``/snapshot/load`` on a process that configured anything;
* files that are not there (the kernel, a drive, a snapshot), like Firecracker when it opens
  them; a vsock socket path that is taken.

Every request is recorded, one JSON line each, in ``<api-sock>.requests.jsonl``.

The guest is emulated, not booted. On ``InstanceStart`` (and on ``/snapshot/load``) the real
guest agent starts under bubblewrap — its own mount, pid and network namespaces, an
unprivileged uid, ``/workspace`` from a directory kept in ``.standin/`` — reading what to do
from the boot arguments as a VM's init would. Vsock works as Firecracker's does on the host:
``CONNECT <port>`` / ``OK <n>`` on ``uds_path`` reaches the guest's port, and a guest connection
to the host's port P arrives at ``<uds_path>_P``. ``PATCH /vm`` stops and continues every process
of the guest. A snapshot's memory is the workspace's files (a tar) and its VM state is the
configuration (JSON); loading one brings both back. Not emulated: the VM's memory and vCPU
limits, the kernel and the rootfs (the guest runs on the host's ``/usr``), processes surviving a
snapshot, network interfaces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from swarmstack.sandbox import guest
from swarmstack.sandbox.firecracker_api import (
    ROUTES,
    Body,
    BootSource,
    Drive,
    InstanceActionInfo,
    InstanceInfo,
    MachineConfiguration,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vm,
    Vsock,
)
from swarmstack.sandbox.relay import relay_unix, splice

VERSION = "1.16.1"
PRIVATE = ".standin"  # the emulated guest's disk and sockets, in Firecracker's directory
GUEST_UID = 390_000  # the emulated guest's agent, when the stand-in runs as root
VMSTATE_FORMAT = "swarm firecracker stand-in vmstate 1"
HOST_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates", "alternatives")
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request"}

Handler = Callable[..., Awaitable[Body | None]]


class Refused(Exception):
    """A request Firecracker would answer with 400 and this fault message."""


class Machine:
    """One microVM's worth of state, as Firecracker keeps it, and its emulated guest."""

    def __init__(self, instance_id: str, api_sock: Path) -> None:
        self.id = instance_id
        self.record_path = api_sock.with_name(api_sock.name + ".requests.jsonl")
        self.state: Literal["Not started", "Running", "Paused"] = "Not started"
        self.configured = False  # anything configured: a snapshot can no longer be loaded
        self.machine = MachineConfiguration(vcpu_count=1, mem_size_mib=128)
        self.boot: BootSource | None = None
        self.drives: dict[str, Drive] = {}
        self.vsock: Vsock | None = None
        self.vsock_server: asyncio.AbstractServer | None = None
        self.host_relays: list[asyncio.AbstractServer] = []
        self.guest_process: subprocess.Popen[bytes] | None = None
        self.running = asyncio.Event()  # vCPUs run: the guest answers
        self.host_port = 1 << 20
        self.private = Path.cwd() / PRIVATE

    # -- HTTP -------------------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await _read_request(reader):
                method, path, raw = request
                status, answer = await self.answer(method, path, raw)
                self._record(method, path, raw, status, answer)
                writer.write(_response(status, answer))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def answer(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            result = await self._dispatch(method, path, raw)
        except Refused as exc:
            return 400, {"fault_message": str(exc)}
        if result is None:
            return 204, {}
        return 200, result.model_dump(mode="json", exclude_none=True)

    async def _dispatch(self, method: str, path: str, raw: bytes) -> Body | None:
        for (verb, template), model in ROUTES.items():
            match = _pattern(template).fullmatch(path)
            if match is None or verb != method:
                continue
            body = None
            if model is not None:
                try:
                    body = model.model_validate_json(raw)
                except ValidationError as exc:
                    raise Refused(
                        "An error occurred when deserializing the json body of a request: "
                        + "; ".join(_problem(e) for e in exc.errors())
                    ) from None
            handler: Handler = getattr(self, HANDLERS[(verb, template)])
            return await handler(body, **match.groupdict())
        raise Refused(f"Invalid request method and/or path: {method} {path}.")

    def _record(
        self, method: str, path: str, raw: bytes, status: int, answer: dict[str, Any]
    ) -> None:
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        entry = {"method": method, "path": path, "body": body, "status": status}
        if "fault_message" in answer:
            entry["fault_message"] = answer["fault_message"]
        with self.record_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    # -- the API ----------------------------------------------------------------------------

    async def describe(self, body: None) -> InstanceInfo:
        return InstanceInfo(
            app_name="Firecracker", id=self.id, state=self.state, vmm_version=VERSION
        )

    async def put_machine_config(self, body: MachineConfiguration) -> None:
        self._pre_boot()
        if body.mem_size_mib < 1:
            raise Refused("The memory size (MiB) is invalid.")
        if body.smt and body.vcpu_count > 1 and body.vcpu_count % 2:
            raise Refused("The vCPU number is invalid! The vCPU number can only be 1 or even.")
        if body.huge_pages == "2M" and body.mem_size_mib % 2:
            raise Refused("Memory size must be a multiple of the huge page size (2 MiB).")
        self.machine = body
        self.configured = True

    async def put_boot_source(self, body: BootSource) -> None:
        self._pre_boot()
        _must_open(body.kernel_image_path, "The kernel file cannot be opened")
        if body.initrd_path is not None:
            _must_open(body.initrd_path, "The initrd file cannot be opened")
        self.boot = body
        self.configured = True

    async def put_drive(self, body: Drive, drive_id: str) -> None:
        self._pre_boot()
        if body.drive_id != drive_id:
            raise Refused(
                f"The id from the path [{drive_id}] does not match the id from the body "
                f"[{body.drive_id}]!"
            )
        if body.socket is not None:
            raise Refused("vhost-user block devices are not emulated by the stand-in.")
        if body.path_on_host is None or body.is_read_only is None:
            raise Refused("A virtio block device needs path_on_host and is_read_only.")
        _must_open(body.path_on_host, "Unable to open the block device backing file", body)
        if body.is_root_device and any(
            d.is_root_device and d.drive_id != drive_id for d in self.drives.values()
        ):
            raise Refused("A root block device already exists!")
        self.drives[drive_id] = body
        self.configured = True

    async def put_vsock(self, body: Vsock) -> None:
        self._pre_boot()
        await self._bind_vsock(body)
        self.configured = True

    async def put_action(self, body: InstanceActionInfo) -> None:
        if body.action_type == "FlushMetrics":
            raise Refused("The metrics system was not initialized.")
        if body.action_type == "SendCtrlAltDel":
            if self.state == "Not started":
                raise Refused("The requested operation is not supported before starting the VM.")
            self._stop_guest()
            asyncio.get_running_loop().call_later(0.1, os._exit, 0)  # the guest rebooted
            return
        self._pre_boot()
        if self.boot is None:
            raise Refused("Cannot start microvm without kernel configuration.")
        await self._start_guest(restore_from=None)
        self.state = "Running"
        self.running.set()

    async def patch_vm(self, body: Vm) -> None:
        if self.state == "Not started":
            raise Refused("The requested operation is not supported before starting the VM.")
        # Everything inside the emulated machine stops: the processes below bubblewrap. Not
        # bubblewrap itself, which stands for Firecracker's own side and must still see the
        # stand-in die (stopped, it would outlive it).
        if body.state == "Paused":
            self.running.clear()
            _signal_tree(self._guest_pid(), signal.SIGSTOP, below_only=True)
            self.state = "Paused"
        else:
            _signal_tree(self._guest_pid(), signal.SIGCONT, below_only=True)
            self.state = "Running"
            self.running.set()

    async def create_snapshot(self, body: SnapshotCreateParams) -> None:
        if self.state == "Not started":
            raise Refused("The requested operation is not supported before starting the VM.")
        if self.state != "Paused":
            raise Refused("Cannot create a snapshot of a microVM that is not paused.")
        if body.snapshot_type == "Diff" and not self.machine.track_dirty_pages:
            raise Refused("Diff snapshots require dirty page tracking (track_dirty_pages).")
        for target in (body.snapshot_path, body.mem_file_path):
            if not Path(target).parent.is_dir():
                raise Refused(f"Cannot create snapshot file {target}: No such file or directory")
        with tarfile.open(body.mem_file_path, "w") as tar:
            tar.add(self.private / "workspace", arcname=".")
        assert self.boot is not None and self.vsock is not None
        state = {
            "format": VMSTATE_FORMAT,
            "machine_config": self.machine.model_dump(mode="json", exclude_none=True),
            "boot_source": self.boot.model_dump(mode="json", exclude_none=True),
            "drives": [d.model_dump(mode="json", exclude_none=True) for d in self.drives.values()],
            "vsock": self.vsock.model_dump(mode="json", exclude_none=True),
        }
        Path(body.snapshot_path).write_text(json.dumps(state))

    async def load_snapshot(self, body: SnapshotLoadParams) -> None:
        if self.configured or self.state != "Not started":
            raise Refused(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
            )
        if body.mem_backend is not None and body.mem_backend.backend_type == "Uffd":
            raise Refused("Uffd memory backends are not emulated by the stand-in.")
        memory = body.mem_backend.backend_path if body.mem_backend else body.mem_file_path
        assert memory is not None  # the model requires one of the two
        _must_open(memory, "Cannot open the memory file")
        _must_open(body.snapshot_path, "Cannot open the snapshot file")
        try:
            state = json.loads(Path(body.snapshot_path).read_text())
            assert state["format"] == VMSTATE_FORMAT
            machine = MachineConfiguration.model_validate_json(json.dumps(state["machine_config"]))
            boot = BootSource.model_validate_json(json.dumps(state["boot_source"]))
            drives = [Drive.model_validate_json(json.dumps(d)) for d in state["drives"]]
            vsock = Vsock.model_validate_json(json.dumps(state["vsock"]))
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise Refused(f"Cannot deserialize the microVM state: {exc}") from None
        for override in body.network_overrides or []:
            raise Refused(f"Invalid network override: no interface {override.iface_id}.")
        for drive in drives:  # Firecracker reopens every drive at the path it recorded
            assert drive.path_on_host is not None
            _must_open(drive.path_on_host, "Unable to open the block device backing file", drive)
        if body.vsock_override is not None:
            vsock = vsock.model_copy(update={"uds_path": body.vsock_override.uds_path})
        self.machine, self.boot, self.drives = machine, boot, {d.drive_id: d for d in drives}
        await self._bind_vsock(vsock)
        self.configured = True
        await self._start_guest(restore_from=Path(memory))
        self.state = "Running"
        self.running.set()
        if not body.resume_vm:
            await self.patch_vm(Vm(state="Paused"))

    def _pre_boot(self) -> None:
        if self.state != "Not started":
            raise Refused("The requested operation is not supported after starting the microVM.")

    # -- vsock ------------------------------------------------------------------------------

    async def _bind_vsock(self, body: Vsock) -> None:
        if self.vsock_server is not None:
            self.vsock_server.close()
            assert self.vsock is not None
            Path(self.vsock.uds_path).unlink(missing_ok=True)
        if os.path.lexists(body.uds_path):
            raise Refused(f"Cannot bind the vsock socket {body.uds_path}: Address in use")
        try:
            self.vsock_server = await asyncio.start_unix_server(
                self._host_connection, path=body.uds_path
            )
        except OSError as exc:
            raise Refused(f"Cannot bind the vsock socket {body.uds_path}: {exc}") from None
        self.vsock = body

    async def _host_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """``CONNECT <port>\\n`` from the host: ``OK <n>\\n`` once the guest's port accepts,
        then the stream is the guest's; a hang-up when nothing listens there."""
        request = (await reader.readline()).split()
        if len(request) != 2 or request[0] != b"CONNECT" or not request[1].isdigit():
            writer.close()
            return
        await self.running.wait()  # a paused guest acknowledges nothing
        target = self.private / "run" / f"vsock-{int(request[1])}.sock"
        self.host_port += 1
        port = self.host_port

        async def open_guest() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            streams = await asyncio.open_unix_connection(str(target))
            writer.write(b"OK %d\n" % port)
            return streams

        await splice(reader, writer, open_guest)

    # -- the emulated guest -----------------------------------------------------------------

    async def _start_guest(self, restore_from: Path | None) -> None:
        if shutil.which("bwrap") is None:
            raise Refused("The stand-in emulates the guest with bubblewrap: it is not installed.")
        assert self.boot is not None and self.vsock is not None
        uid = GUEST_UID if os.geteuid() == 0 else os.getuid()
        private = self.private
        shutil.rmtree(private, ignore_errors=True)
        for sub in ("", "workspace", "run", "etc"):
            (private / sub).mkdir(mode=0o711 if sub == "" else 0o755)
        if restore_from is not None:
            with tarfile.open(restore_from) as tar:
                tar.extractall(private / "workspace", filter="data")
        shutil.copyfile(guest.__file__, private / "guest.py")
        etc = private / "etc"
        (etc / "passwd").write_text(
            f"root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:{uid}:{uid}::/home/agent:/bin/sh\n"
        )
        (etc / "group").write_text(f"root:x:0:\nagent:x:{uid}:\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost {self.id}\n")
        (etc / "hostname").write_text(f"{self.id}\n")
        if os.geteuid() == 0:
            for top in (private / "workspace", private / "run"):
                for path in (top, *top.rglob("*")):
                    os.lchown(path, uid, uid)
        argv = await self._guest_args()
        log = (private / "guest.log").open("ab")
        try:
            self.guest_process = subprocess.Popen(
                [*_drop(uid), *self._bwrap(uid), "--", "/usr/bin/python3", "-I", "-S",
                 "/opt/swarm/guest.py", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )  # fmt: skip
        finally:
            log.close()

    async def _guest_args(self) -> list[str]:
        """What the VM's init would start the agent with, from the kernel command line, with
        vsock addresses turned into the sockets this emulation carries them on."""
        assert self.boot is not None and self.vsock is not None
        argv = guest.from_boot_args(self.boot.boot_args or "")
        out: list[str] = []
        for flag, given in zip(argv[::2], argv[1::2], strict=True):
            value = given
            if flag == "--listen" and given.startswith("vsock:"):
                value = f"unix:/run/swarm/vsock-{given.rpartition(':')[2]}.sock"
            elif flag == "--forward" and "=vsock:2:" in given:
                local, _, port = given.partition("=vsock:2:")
                await self._relay_to_host(int(port))
                value = f"{local}=unix:/run/swarm/host-{port}.sock"
            out += [flag, value]
        return out

    async def _relay_to_host(self, port: int) -> None:
        """The guest's connections to the host's vsock port arrive at ``<uds_path>_<port>``."""
        assert self.vsock is not None
        host_side = Path.cwd() / f"{self.vsock.uds_path}_{port}"
        listener = self.private / "run" / f"host-{port}.sock"
        self.host_relays.append(
            await relay_unix(listener, lambda: asyncio.open_unix_connection(str(host_side)))
        )
        os.chmod(listener, 0o666)  # the guest's uid connects

    def _bwrap(self, uid: int) -> list[str]:
        private = self.private
        argv = [
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
            "--uid", str(uid), "--gid", str(uid), "--hostname", self.id,
            "--ro-bind", "/usr", "/usr",
        ]  # fmt: skip
        for name in ("bin", "lib", "lib64", "lib32", "sbin"):
            top = Path("/") / name
            if top.is_symlink():
                argv += ["--symlink", os.readlink(top), f"/{name}"]
            elif top.is_dir():
                argv += ["--ro-bind", str(top), f"/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        argv += ["--dir", "/etc"]
        for name in HOST_ETC:
            if (Path("/etc") / name).exists():
                argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hosts", "hostname"):
            argv += ["--ro-bind", str(private / "etc" / name), f"/etc/{name}"]
        argv += ["--tmpfs", "/home/agent"]
        argv += ["--bind", str(private / "workspace"), "/workspace"]
        argv += ["--bind", str(private / "run"), "/run/swarm"]
        argv += ["--ro-bind", str(private / "guest.py"), "/opt/swarm/guest.py"]
        argv += ["--chdir", "/workspace", "--clearenv"]
        for key, value in {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}.items():
            argv += ["--setenv", key, value]
        return argv

    def _guest_pid(self) -> int:
        assert self.guest_process is not None
        return self.guest_process.pid

    def _stop_guest(self) -> None:
        if self.guest_process is not None:
            with contextlib.suppress(ProcessLookupError):
                _signal_tree(self.guest_process.pid, signal.SIGKILL)
            self.guest_process.wait()


HANDLERS = {
    ("GET", "/"): "describe",
    ("PUT", "/machine-config"): "put_machine_config",
    ("PUT", "/boot-source"): "put_boot_source",
    ("PUT", "/drives/{drive_id}"): "put_drive",
    ("PUT", "/vsock"): "put_vsock",
    ("PUT", "/actions"): "put_action",
    ("PATCH", "/vm"): "patch_vm",
    ("PUT", "/snapshot/create"): "create_snapshot",
    ("PUT", "/snapshot/load"): "load_snapshot",
}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template))


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']}"


def _must_open(path: str, what: str, drive: Drive | None = None) -> None:
    """Firecracker opens a file when it is configured (read-write for a writable drive)."""
    mode = os.R_OK if drive is None or drive.is_read_only else os.R_OK | os.W_OK
    if not os.path.isfile(path):
        raise Refused(f"{what} {path}: No such file or directory (os error 2)")
    if not os.access(path, mode):
        raise Refused(f"{what} {path}: Permission denied (os error 13)")


def _drop(uid: int) -> list[str]:
    """Run as the guest's own unprivileged uid when the stand-in is root: inside a user
    namespace of root's, a file of root's would be the agent's own."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _signal_tree(pid: int, sig: signal.Signals, *, below_only: bool = False) -> None:
    """Signal ``pid`` (unless ``below_only``) and everything below it, again until no new
    process turns up (one may fork while the walk goes on; a stopped one cannot)."""
    done: set[int] = {pid} if below_only else set()
    while True:
        children = _children()
        found, todo = [], [pid]
        while todo:
            current = todo.pop()
            found.append(current)
            todo.extend(children.get(current, []))
        new = [p for p in found if p not in done]
        if not new:
            return
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
            done.add(p)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ValueError("chunked bodies are not served")
    length = int(headers.get("content-length") or 0)
    raw = await reader.readexactly(length) if length else b""
    return method, target.split("?", 1)[0], raw


def _response(status: int, answer: dict[str, Any]) -> bytes:
    head = f"HTTP/1.1 {status} {REASONS[status]}\r\nServer: Firecracker API\r\n"
    if status == 204:
        return (head + "\r\n").encode()
    body = json.dumps(answer).encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def run(api_sock: Path, instance_id: str) -> None:
    if os.path.lexists(api_sock):
        raise SystemExit(f"Failed to open the API socket at {api_sock}: Address in use")
    machine = Machine(instance_id, api_sock)
    server = await asyncio.start_unix_server(machine.serve, path=str(api_sock))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        machine._stop_guest()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="firecracker", allow_abbrev=False)
    parser.add_argument("--api-sock", default="/run/firecracker.socket")
    parser.add_argument("--id", default="anonymous-instance")
    parser.add_argument("--start-time-us")
    parser.add_argument("--start-time-cpu-us")
    args = parser.parse_args(argv)
    asyncio.run(run(Path(args.api_sock), args.id))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
