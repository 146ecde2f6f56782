"""A control plane whose VM API runs real bubblewrap sandboxes: in process, or served by uvicorn
in a thread (for the CLI, which speaks HTTP)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from sandbox_fixtures import make_backend, state_dir
from swarmstack.api import create_app
from swarmstack.auth import TokenKind, format_token, new_secret
from swarmstack.config import Settings
from swarmstack.sandbox.base import Backend
from swarmstack.tickets.store import TicketStore

ADMIN = format_token(TokenKind.ADMIN, "0", new_secret())


def require_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (scripts/setup installs it): no sandboxes here")


@dataclass
class VmPlane:
    """An app, its store and settings, the directory its sandboxes live in, and how many
    times it has asked for a backend."""

    app: FastAPI
    store: TicketStore
    settings: Settings
    root: Path
    backends_made: list[Backend] = field(default_factory=list)

    @property
    def sandboxes_dir(self) -> Path:
        return self.root / "sandboxes"


def vm_settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": root / "data",
        "database_url": f"sqlite:///{root / 'swarm.db'}",
        "admin_token": ADMIN,
        "sandbox_dir": root,
        "max_sandboxes": 8,
        **overrides,
    }
    return Settings(**values)


@contextmanager
def vm_plane(root: Path | None = None, **overrides: Any) -> Iterator[VmPlane]:
    """A control plane on a fresh (or the given) state directory under /var/tmp; the
    directory is removed afterwards only if it was made here."""
    require_bwrap()
    made = root is None
    root = root or state_dir()
    settings = vm_settings(root, **overrides)
    store = TicketStore.from_settings(settings)
    store.migrate()
    plane: VmPlane | None = None

    async def factory() -> Backend:
        backend = make_backend("bwrap", root)
        assert plane is not None
        plane.backends_made.append(backend)
        return backend

    try:
        plane = VmPlane(
            create_app(settings, store=store, backend_factory=factory), store, settings, root
        )
        yield plane
    finally:
        store.close()
        if made:
            shutil.rmtree(root, ignore_errors=True)


class ThreadServer:
    """uvicorn serving an app on a free port in a thread, lifespan and all."""

    def __init__(self, app: FastAPI) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        sockets = self.server.servers[0].sockets
        return f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
