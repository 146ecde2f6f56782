"""The sandbox contract every backend keeps, and the types it speaks in.

A sandbox is an isolated place with a workspace (``/workspace`` inside) where an agent runs
commands. Every backend — bubblewrap namespaces, QEMU microVMs, Firecracker — offers the same
operations; what differs is the isolation it gives (``namespace`` or ``vm``) and what a
snapshot holds (the workspace's files, or the whole machine with its memory).

Commands and files go through the guest agent (:mod:`swarmstack.sandbox.guest`) over a channel
each backend provides, so they behave the same everywhere; :class:`GuestSandbox` implements them
once over that channel.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

from pydantic import BaseModel, Field

from swarmstack.errors import Conflict, NotFound, SwarmError, Unavailable, UsageError

Isolation = Literal["namespace", "vm"]
WORKSPACE = "/workspace"
# One answer line can carry a whole file (64 MiB, base64-encoded); streams may buffer that much.
LINE_LIMIT = 96 << 20


class Limits(BaseModel):
    """What a sandbox may use. Enforced by cgroups (bubblewrap) or by the VM's own size."""

    cpus: float = Field(default=1.0, gt=0, le=64)
    memory_mib: int = Field(default=1024, ge=16, le=1 << 20)
    pids: int = Field(default=512, ge=8, le=1 << 22)
    disk_mib: int = Field(default=4096, ge=16, le=1 << 24)


class SandboxSpec(BaseModel):
    """What to create: an image (None: the backend's default), limits, extra environment."""

    image: str | None = None
    limits: Limits = Field(default_factory=Limits)
    env: dict[str, str] = Field(default_factory=dict)
    # The control plane inside the sandbox is http://127.0.0.1:<control_port>.
    control_port: int = Field(default=8420, ge=1, le=65535)


class SandboxInfo(BaseModel):
    id: str
    backend: str
    isolation: Isolation
    state: Literal["running", "paused", "destroyed"]
    created_at: float
    spec: SandboxSpec
    enforced: list[str]  # the limits the host enforces: memory, pids, cpu, disk
    pid: int | None = None
    memory_bytes: int | None = None  # what it uses now, as the host measures it


class Snapshot(BaseModel):
    """A saved sandbox: ``kind`` says what it holds — the workspace's files, or the machine."""

    id: str
    backend: str
    kind: Literal["filesystem", "memory"]
    path: str
    spec: SandboxSpec
    created_at: float
    size_bytes: int


class FileEntry(BaseModel):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float


class ExecOptions(TypedDict, total=False):
    """How to run a command: ``cwd`` relative to the workspace (default: the workspace),
    environment on top of the sandbox's, a timeout that kills it and its children, stdin."""

    cwd: str
    env: dict[str, str] | None
    timeout_s: float | None
    stdin: bytes | None


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class Output:
    """A piece of a running command's output."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class Exit:
    """How a command ended: the last item of an exec stream."""

    exit_code: int
    timed_out: bool = False
    error: str | None = None


class SandboxError(SwarmError):
    """The sandbox or its guest agent failed; the message says how."""

    status_code = 502
    code = "sandbox_error"


class PathRefused(UsageError):
    """A workspace path that is absolute, climbs out, holds NUL, or leads out via a symlink."""

    status_code = 400
    code = "bad_path"


_GUEST_ERRORS: dict[str, Callable[[str], SwarmError]] = {
    "bad_path": PathRefused,
    "outside_workspace": PathRefused,
    "not_found": NotFound,
    "is_a_directory": Conflict,
    "too_large": UsageError,
    "bad_request": UsageError,
}


Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass
class GuestChannel:
    """Requests to a sandbox's guest agent; ``connect`` opens one connection per request."""

    connect: Connector
    timeout_s: float = 30.0
    token: str | None = None  # sent with every request when the agent asks for one

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(self.connect(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"the sandbox's agent cannot be reached: {exc}") from exc

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.token is not None:
            request["token"] = self.token
        return request

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        reader, writer = await self._open()
        try:
            writer.write(_line(self._request({"op": op, **args})))
            await writer.drain()
            raw = await asyncio.wait_for(reader.readline(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise SandboxError(f"the sandbox's agent did not answer {op}: {exc}") from exc
        finally:
            writer.close()
        return _answer(raw, op)

    async def exec_stream(
        self, argv: list[str], **options: Unpack[ExecOptions]
    ) -> AsyncIterator[Output | Exit]:
        reader, writer = await self._open()
        request: dict[str, Any] = {
            "op": "exec",
            "argv": argv,
            "cwd": options.get("cwd", "."),
            "timeout": options.get("timeout_s"),
        }
        if (env := options.get("env")) is not None:
            request["env"] = env
        if (stdin := options.get("stdin")) is not None:
            request["stdin"] = base64.b64encode(stdin).decode()
        try:
            writer.write(_line(self._request(request)))
            await writer.drain()
            while True:
                raw = await reader.readline()
                if not raw:
                    raise SandboxError("the sandbox's agent hung up during a command")
                item = json.loads(raw)
                if "stream" in item:
                    yield Output(item["stream"], base64.b64decode(item["data"]))
                elif "exit" in item:
                    yield Exit(int(item["exit"]), bool(item.get("timed_out")), item.get("error"))
                    return
                else:
                    _answer(raw, "exec")  # an error answer raises
                    raise SandboxError(f"unexpected answer to exec: {raw[:200]!r}")
        finally:
            writer.close()


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _answer(raw: bytes, op: str) -> dict[str, Any]:
    if not raw:
        raise SandboxError(f"the sandbox's agent hung up during {op}")
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        raise SandboxError(f"the sandbox's agent answered {op} with {raw[:200]!r}") from exc
    if not answer.get("ok"):
        make = _GUEST_ERRORS.get(answer.get("error", ""), SandboxError)
        raise make(str(answer.get("message") or f"{op} failed"))
    result: dict[str, Any] = answer
    return result


class Sandbox(abc.ABC):
    """One live sandbox. Commands and files go through its guest agent's channel."""

    backend: str
    isolation: Isolation

    def __init__(self, sandbox_id: str, spec: SandboxSpec, channel: GuestChannel) -> None:
        self.id = sandbox_id
        self.spec = spec
        self.channel = channel
        self.state: Literal["running", "paused", "destroyed"] = "running"
        self.created_at = time.time()

    # -- commands ---------------------------------------------------------------------------

    def exec_stream(
        self, argv: list[str], **options: Unpack[ExecOptions]
    ) -> AsyncIterator[Output | Exit]:
        """Run ``argv`` in the workspace (``cwd`` relative to it), yielding output as it comes
        and, last, its :class:`Exit`."""
        self._require_running()
        return self.channel.exec_stream(argv, **options)

    async def exec(self, argv: list[str], **options: Unpack[ExecOptions]) -> ExecResult:
        """Run ``argv`` to its end and collect its output."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        out: list[bytes] = []
        err: list[bytes] = []
        result = ExecResult(exit_code=-1)
        async for item in self.exec_stream(argv, **options):
            if isinstance(item, Output):
                (out if item.stream == "stdout" else err).append(item.data)
            else:
                result = ExecResult(item.exit_code, timed_out=item.timed_out)
                if item.error:
                    err.append(item.error.encode())
        result.stdout, result.stderr = b"".join(out), b"".join(err)
        result.duration_s = loop.time() - started
        return result

    # -- files ------------------------------------------------------------------------------

    async def read_file(self, path: str, *, limit: int = 64 << 20) -> bytes:
        self._require_running()
        answer = await self.channel.call("read", path=path, limit=limit)
        return base64.b64decode(answer["data"])

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self._require_running()
        await self.channel.call("write", path=path, data=base64.b64encode(data).decode(), mode=mode)

    async def list_files(self, path: str = ".") -> list[FileEntry]:
        self._require_running()
        answer = await self.channel.call("list", path=path)
        return [FileEntry.model_validate(e) for e in answer["entries"]]

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        self._require_running()
        await self.channel.call("delete", path=path, recursive=recursive)

    async def ping(self) -> dict[str, Any]:
        return await self.channel.call("ping")

    # -- life cycle -------------------------------------------------------------------------

    @abc.abstractmethod
    async def pause(self) -> None: ...

    @abc.abstractmethod
    async def resume(self) -> None: ...

    @abc.abstractmethod
    async def snapshot(self, directory: Path) -> Snapshot: ...

    @abc.abstractmethod
    async def destroy(self) -> None: ...

    @abc.abstractmethod
    def enforced(self) -> list[str]:
        """The limits the host enforces on this sandbox: memory, pids, cpu, disk."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The host process that holds the sandbox (bubblewrap's, the VMM's)."""

    def memory_usage(self) -> int | None:
        """The memory it uses now: by default the resident set of its host process (a VMM's
        is the guest's memory that is in use); None when that cannot be read."""
        if self.pid is None or self.state == "destroyed":
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def info(self) -> SandboxInfo:
        return SandboxInfo(
            id=self.id,
            backend=self.backend,
            isolation=self.isolation,
            state=self.state,
            created_at=self.created_at,
            spec=self.spec,
            enforced=self.enforced(),
            pid=self.pid,
            memory_bytes=self.memory_usage(),
        )

    def _require_running(self) -> None:
        if self.state == "destroyed":
            raise Conflict(f"sandbox {self.id} is destroyed")
        if self.state == "paused":
            raise Conflict(f"sandbox {self.id} is paused: resume it first")


class Backend(abc.ABC):
    """Makes sandboxes of one kind."""

    name: str
    isolation: Isolation

    async def prepare(self) -> None:  # noqa: B027 (most backends have nothing to do)
        """The work done once, before a first sandbox (packing boot files, probing for KVM);
        ``create`` does it when it has not been done."""

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec | None = None) -> Sandbox: ...

    @abc.abstractmethod
    async def restore(self, snapshot: Snapshot) -> Sandbox: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Destroy whatever this backend still runs."""
