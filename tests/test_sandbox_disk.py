"""The bubblewrap backend's disk limit: a loop-mounted workspace of ``disk_mib``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_fixtures import state_dir
from swarmstack.sandbox.base import Limits, SandboxSpec


@pytest.fixture
def root() -> Iterator[Path]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (scripts/setup installs it)")
    if os.geteuid() != 0:
        pytest.skip("a loop-mounted disk needs root: the suite runs as uid " + str(os.geteuid()))
    path = state_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


async def test_the_workspace_cannot_outgrow_its_disk(root: Path) -> None:
    from swarmstack.sandbox.bwrap import BwrapBackend

    backend = BwrapBackend(root / "sandboxes", disk="loop")
    box = await backend.create(SandboxSpec(limits=Limits(disk_mib=24)))
    try:
        assert "disk" in box.info().enforced
        assert await box.list_files() == []  # no lost+found in sight
        fill = await box.exec(["sh", "-c", "dd if=/dev/zero of=big bs=1M count=64 2>&1"])
        assert not fill.ok and b"No space left on device" in fill.stdout
        assert (await box.exec(["rm", "big"])).ok
        await box.write_file("kept.txt", b"kept")
        snap = await box.snapshot(root / "snaps")
        workspace = box.workspace
        assert _mounted(workspace)
    finally:
        await box.destroy()
    assert not _mounted(workspace) and not workspace.exists()
    again = await backend.restore(snap)
    try:
        assert await again.read_file("kept.txt") == b"kept"
        assert "disk" in again.info().enforced
    finally:
        await backend.close()
    assert not _mounted(again.workspace)


def test_a_disk_limit_without_root_is_refused_clearly(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmstack.errors import UsageError
    from swarmstack.sandbox.bwrap import BwrapBackend

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="needs root"):
        BwrapBackend(root / "sandboxes", disk="loop")


async def test_the_setting_reaches_the_backend_the_api_starts(root: Path) -> None:
    from swarmstack.config import Settings
    from swarmstack.sandbox.manager import default_factory

    settings = Settings(
        sandbox_backend="bwrap", bwrap_disk="loop", sandbox_dir=root, data_dir=root / "data"
    )
    backend = await default_factory(settings)()
    try:
        box = await backend.create(SandboxSpec(limits=Limits(disk_mib=16)))
        assert "disk" in box.info().enforced
        assert _mounted(box.workspace)
    finally:
        await backend.close()
