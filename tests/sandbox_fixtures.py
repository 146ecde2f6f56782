"""Backends for the sandbox suites, each on a state directory its sandboxes' uids can reach."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from swarmstack.sandbox.base import Backend

BACKENDS = ["bwrap"]


def state_dir() -> Path:
    """A fresh directory under /var/tmp: bubblewrap binds it as the sandbox's own uid, which
    cannot pass through pytest's 0700 temporary directories."""
    path = Path(tempfile.mkdtemp(prefix="swarm-sbx-", dir="/var/tmp"))
    path.chmod(0o711)
    return path


def make_backend(name: str, root: Path, control_dir: Path | None = None) -> Backend:
    if name == "bwrap":
        if shutil.which("bwrap") is None:
            pytest.skip("bubblewrap is not installed (scripts/setup installs it)")
        from swarmstack.sandbox.bwrap import BwrapBackend

        return BwrapBackend(root / "sandboxes", control_dir=control_dir)
    raise AssertionError(f"unknown backend {name}")


async def backend_for(
    name: str, control_dir: Path | None = None
) -> AsyncIterator[tuple[Backend, Path]]:
    root = state_dir()
    backend = make_backend(name, root, control_dir)
    try:
        yield backend, root
    finally:
        await backend.close()
        shutil.rmtree(root, ignore_errors=True)


Factory = Callable[..., AsyncIterator[tuple[Backend, Path]]]
