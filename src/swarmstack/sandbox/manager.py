"""The sandboxes a control plane runs on request (the VM API), by id, and their snapshots.

The backend starts on the first call that needs one — ``swarm serve`` picks and boots nothing
until somebody asks for a sandbox — through an async factory (see :func:`default_factory`).
Snapshots outlive the server: each one's metadata is a JSON file beside its files in the
snapshot directory, read back when the manager first looks::

    manager = SandboxManager(factory, Path("/var/lib/swarm/snapshots"), max_sandboxes=8)
    sandbox = await manager.create(SandboxSpec())
    snapshot = await manager.snapshot(sandbox.id)
    twin = await manager.restore(snapshot.id)
    await manager.close()  # destroys every sandbox it still runs
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from swarmstack.errors import Conflict, NotFound, SwarmError, UsageError
from swarmstack.sandbox.base import (
    Backend,
    Sandbox,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    Snapshot,
)

if TYPE_CHECKING:
    from swarmstack.config import Settings

log = logging.getLogger(__name__)

BackendFactory = Callable[[], Awaitable[Backend]]

# Snapshot ids name files: nothing that could climb out of the snapshot directory.
_SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SandboxLimitReached(Conflict):
    """As many sandboxes run as the settings allow (``SWARM_MAX_SANDBOXES``)."""

    code = "sandbox_limit"


class SandboxManager:
    def __init__(
        self, factory: BackendFactory, snapshot_dir: Path, *, max_sandboxes: int = 32
    ) -> None:
        self._factory = factory
        self._backend: Backend | None = None
        self._backend_lock = asyncio.Lock()
        self.snapshot_dir = snapshot_dir
        self.max_sandboxes = max_sandboxes
        self._sandboxes: dict[str, Sandbox] = {}
        self._starting = 0
        self._snapshots: dict[str, Snapshot] | None = None

    @property
    def backend_started(self) -> bool:
        return self._backend is not None

    async def backend(self) -> Backend:
        """The backend, made by the factory on first use (a failure is retried next time)."""
        if self._backend is None:
            async with self._backend_lock:
                if self._backend is None:
                    self._backend = await self._factory()
        return self._backend

    # -- sandboxes -----------------------------------------------------------------------------

    def list_sandboxes(self) -> list[SandboxInfo]:
        infos = [s.info() for s in self._sandboxes.values()]
        return sorted(infos, key=lambda i: (i.created_at, i.id))

    def get(self, sandbox_id: str) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.state == "destroyed":
            raise NotFound(f"no sandbox {sandbox_id}")
        return sandbox

    async def create(self, spec: SandboxSpec) -> Sandbox:
        return await self._start(lambda backend: backend.create(spec))

    async def restore(self, snapshot_id: str) -> Sandbox:
        """A new sandbox started from a snapshot."""
        snapshot = self.get_snapshot(snapshot_id)
        return await self._start(lambda backend: backend.restore(snapshot))

    async def _start(self, make: Callable[[Backend], Awaitable[Sandbox]]) -> Sandbox:
        if len(self._sandboxes) + self._starting >= self.max_sandboxes:
            raise SandboxLimitReached(
                f"{self.max_sandboxes} sandboxes are running, the most allowed "
                "(SWARM_MAX_SANDBOXES): destroy one first"
            )
        self._starting += 1
        try:
            sandbox = await make(await self.backend())
        except SwarmError:
            raise
        except Exception as exc:  # the backend's own failure: say what it was, keep serving
            log.exception("the sandbox backend failed to start a sandbox")
            raise SandboxError(f"the backend could not start a sandbox: {exc}") from exc
        finally:
            self._starting -= 1
        self._sandboxes[sandbox.id] = sandbox
        return sandbox

    async def destroy(self, sandbox_id: str) -> None:
        sandbox = self.get(sandbox_id)
        try:
            await sandbox.destroy()
        finally:
            self._sandboxes.pop(sandbox_id, None)

    async def pause(self, sandbox_id: str) -> SandboxInfo:
        sandbox = self.get(sandbox_id)
        await sandbox.pause()
        return sandbox.info()

    async def resume(self, sandbox_id: str) -> SandboxInfo:
        sandbox = self.get(sandbox_id)
        await sandbox.resume()
        return sandbox.info()

    # -- snapshots -----------------------------------------------------------------------------

    async def snapshot(self, sandbox_id: str) -> Snapshot:
        sandbox = self.get(sandbox_id)
        directory = self._snapshot_directory()
        snapshot = await sandbox.snapshot(directory)
        if not _SNAPSHOT_ID.match(snapshot.id):
            raise Conflict(f"the backend named a snapshot {snapshot.id!r}, not a usable id")
        await asyncio.to_thread(_write_atomically, self._meta(snapshot.id), snapshot)
        self._known()[snapshot.id] = snapshot
        return snapshot

    def list_snapshots(self) -> list[Snapshot]:
        return sorted(self._known().values(), key=lambda s: (s.created_at, s.id))

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        snapshot = self._known().get(snapshot_id)
        if snapshot is None:
            raise NotFound(f"no snapshot {snapshot_id}")
        return snapshot

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot and remove its files (only ever inside the snapshot directory)."""
        snapshot = self.get_snapshot(snapshot_id)
        await asyncio.to_thread(self._remove_files, snapshot)
        self._known().pop(snapshot_id, None)

    def _snapshot_directory(self) -> Path:
        # Snapshots hold a workspace's files: readable by this user alone.
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.snapshot_dir, 0o700)
        return self.snapshot_dir

    def _meta(self, snapshot_id: str) -> Path:
        return self.snapshot_dir / f"{snapshot_id}.json"

    def _known(self) -> dict[str, Snapshot]:
        """Every snapshot whose metadata is in the snapshot directory (read once)."""
        if self._snapshots is None:
            found: dict[str, Snapshot] = {}
            for meta in sorted(self.snapshot_dir.glob("*.json")):
                try:
                    snapshot = Snapshot.model_validate_json(meta.read_bytes())
                except (OSError, ValidationError) as exc:
                    log.warning("ignoring snapshot metadata %s: %s", meta, exc)
                    continue
                if snapshot.id != meta.stem or not _SNAPSHOT_ID.match(snapshot.id):
                    log.warning("ignoring snapshot metadata %s: it names %r", meta, snapshot.id)
                    continue
                found[snapshot.id] = snapshot
            self._snapshots = found
        return self._snapshots

    def _remove_files(self, snapshot: Snapshot) -> None:
        root = self.snapshot_dir.resolve()
        target = Path(snapshot.path)
        if target.resolve().parent == root or root in target.resolve().parents:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
        else:
            log.warning("snapshot %s points outside %s; its files stay", snapshot.id, root)
        with contextlib.suppress(FileNotFoundError):
            self._meta(snapshot.id).unlink()

    # -- shutting down -------------------------------------------------------------------------

    async def close(self) -> None:
        """Destroy every sandbox and stop the backend. (An app started again afterwards, as
        ASGI allows, gets a new backend at its first sandbox.)"""
        sandboxes, self._sandboxes = list(self._sandboxes.values()), {}
        results = await asyncio.gather(*(s.destroy() for s in sandboxes), return_exceptions=True)
        for sandbox, result in zip(sandboxes, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("sandbox %s did not go cleanly: %s", sandbox.id, result)
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.close()


def _write_atomically(path: Path, snapshot: Snapshot) -> None:
    tmp = path.with_suffix(".json.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(snapshot.model_dump_json(indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# -- the backend of a running control plane ------------------------------------------------------


def prepare_sandbox_dir(path: Path) -> Path:
    """Make the sandbox directory, or check the one that is there: a real directory of this
    user that others may pass through but not write (``/var/tmp`` is shared by everyone)."""
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"the sandbox directory {path} is not a directory (a symlink?)")
    if info.st_uid != os.geteuid():
        raise UsageError(
            f"the sandbox directory {path} belongs to uid {info.st_uid}, not to this user: "
            "set SWARM_SANDBOX_DIR to a directory of your own"
        )
    if info.st_mode & 0o022:
        raise UsageError(f"the sandbox directory {path} is writable by others: chmod 711 it")
    return path


def default_factory(settings: Settings) -> BackendFactory:
    """The backend ``SWARM_SANDBOX_BACKEND`` names (``auto``: the first that boots here)."""

    async def make() -> Backend:
        from swarmstack.sandbox.selection import choose_backend

        directory = await asyncio.to_thread(prepare_sandbox_dir, settings.sandbox_dir)
        choice = await choose_backend(
            settings.sandbox_backend, directory, bwrap_disk=settings.bwrap_disk
        )
        log.info("sandbox backend %s: %s", choice.backend.name, choice.reason)
        return choice.backend

    return make
