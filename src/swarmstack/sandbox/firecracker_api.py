"""Firecracker's REST API as Swarm speaks it: the request bodies, and a client on its socket.

The models follow Firecracker's v1.16.1 swagger definitions of the same names, field for field
(required fields, types, enums and bounds), and refuse fields they do not know, as Firecracker
does. Only the calls the backend makes are here (:data:`ROUTES`)::

    api = FirecrackerAPI(Path("vm/api.sock"))
    await api.put("/machine-config", MachineConfiguration(vcpu_count=2, mem_size_mib=1024))
    await api.put("/actions", InstanceActionInfo(action_type="InstanceStart"))

Paths given to Firecracker (kernel, drives, sockets, snapshot files) are taken relative to its
working directory — the root of its jail when the jailer runs it — so the same names hold for
every VM and a snapshot loads in any VM's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmstack.sandbox.base import SandboxError

CpuTemplate = Literal["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]


class Body(BaseModel):
    """A request or answer body: unknown fields are refused, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class MachineConfiguration(Body):
    vcpu_count: int = Field(ge=1, le=32)
    mem_size_mib: int
    smt: bool | None = None
    track_dirty_pages: bool | None = None
    cpu_template: CpuTemplate | None = None
    huge_pages: Literal["None", "2M"] | None = None


class BootSource(Body):
    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None


class TokenBucket(Body):
    size: int = Field(ge=0)
    refill_time: int = Field(ge=0)
    one_time_burst: int | None = Field(default=None, ge=0)


class RateLimiter(Body):
    bandwidth: TokenBucket | None = None
    ops: TokenBucket | None = None


class Drive(Body):
    drive_id: str
    is_root_device: bool
    partuuid: str | None = None
    cache_type: Literal["Unsafe", "Writeback"] | None = None
    is_read_only: bool | None = None
    path_on_host: str | None = None
    rate_limiter: RateLimiter | None = None
    io_engine: Literal["Sync", "Async"] | None = None
    socket: str | None = None


class Vsock(Body):
    guest_cid: int = Field(ge=3)
    uds_path: str
    vsock_id: str | None = None


class InstanceActionInfo(Body):
    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


class Vm(Body):
    state: Literal["Paused", "Resumed"]


class SnapshotCreateParams(Body):
    mem_file_path: str
    snapshot_path: str
    snapshot_type: Literal["Full", "Diff"] | None = None


class MemoryBackend(Body):
    backend_type: Literal["File", "Uffd"]
    backend_path: str


class NetworkOverride(Body):
    iface_id: str
    host_dev_name: str


class VsockOverride(Body):
    uds_path: str


class SnapshotLoadParams(Body):
    snapshot_path: str
    mem_backend: MemoryBackend | None = None
    mem_file_path: str | None = None
    enable_diff_snapshots: bool | None = None
    track_dirty_pages: bool | None = None
    resume_vm: bool | None = None
    network_overrides: list[NetworkOverride] | None = None
    vsock_override: VsockOverride | None = None
    clock_realtime: bool | None = None

    @model_validator(mode="after")
    def _one_memory_source(self) -> Self:
        if (self.mem_backend is None) == (self.mem_file_path is None):
            raise ValueError("exactly one of mem_backend and mem_file_path must be present")
        return self


class InstanceInfo(Body):
    app_name: str
    id: str
    state: Literal["Not started", "Running", "Paused"]
    vmm_version: str


class Error(Body):
    fault_message: str | None = None


MODELS: tuple[type[Body], ...] = (
    MachineConfiguration,
    BootSource,
    TokenBucket,
    RateLimiter,
    Drive,
    Vsock,
    InstanceActionInfo,
    Vm,
    SnapshotCreateParams,
    MemoryBackend,
    NetworkOverride,
    VsockOverride,
    SnapshotLoadParams,
    InstanceInfo,
    Error,
)

# The calls Swarm makes: (method, path template) -> the body it sends (None: no body).
ROUTES: dict[tuple[str, str], type[Body] | None] = {
    ("GET", "/"): None,
    ("PUT", "/machine-config"): MachineConfiguration,
    ("PUT", "/boot-source"): BootSource,
    ("PUT", "/drives/{drive_id}"): Drive,
    ("PUT", "/vsock"): Vsock,
    ("PUT", "/actions"): InstanceActionInfo,
    ("PATCH", "/vm"): Vm,
    ("PUT", "/snapshot/create"): SnapshotCreateParams,
    ("PUT", "/snapshot/load"): SnapshotLoadParams,
}


class FirecrackerAPI:
    """Requests to one Firecracker process. A refusal raises :class:`SandboxError` carrying
    Firecracker's ``fault_message``."""

    def __init__(self, socket: Path, *, timeout_s: float = 30.0) -> None:
        self.socket = socket
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket)),
            base_url="http://localhost",
            timeout=timeout_s,
        )

    async def describe(self) -> InstanceInfo:
        response = await self._send("GET", "/")
        try:
            return InstanceInfo.model_validate_json(response.content)
        except ValidationError as exc:
            raise SandboxError(f"Firecracker described itself oddly: {exc}") from exc

    async def put(self, path: str, body: Body) -> None:
        await self._send("PUT", path, body)

    async def patch(self, path: str, body: Body) -> None:
        await self._send("PATCH", path, body)

    async def _send(self, method: str, path: str, body: Body | None = None) -> httpx.Response:
        content = None if body is None else body.model_dump_json(exclude_none=True)
        headers = {} if content is None else {"Content-Type": "application/json"}
        try:
            response = await self._client.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise SandboxError(f"Firecracker did not answer {method} {path}: {exc}") from exc
        if not response.is_success:
            raise SandboxError(
                f"Firecracker refused {method} {path} ({response.status_code}): {_fault(response)}"
            )
        return response

    async def close(self) -> None:
        await self._client.aclose()


def _fault(response: httpx.Response) -> str:
    try:
        error = Error.model_validate_json(response.content)
    except ValidationError:
        return response.text[:500] or "no reason given"
    return error.fault_message or "no reason given"
