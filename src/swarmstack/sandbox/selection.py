"""Which backend to run sandboxes in, proven by starting one.

``auto`` never trusts that a device file exists: ``/dev/kvm`` is present on hosts where nested
KVM stalls every guest. It tries, in order of isolation and speed,

1. Firecracker — a ``firecracker`` binary and a built image, and a VM that boots and answers;
2. QEMU with KVM — a probe VM must boot under KVM first;
3. bubblewrap — a sandbox that runs a command;
4. QEMU under TCG — software emulation, slow but a real VM, where nothing else works;

and keeps the first that starts a sandbox which runs ``true``. The choice says why, naming what
was tried and what stopped each one that was passed over.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from swarmstack.errors import SwarmError, UsageError
from swarmstack.sandbox.base import Backend, Limits, SandboxSpec

NAMES = ("auto", "bwrap", "qemu", "firecracker")
_PROOF_SPEC = SandboxSpec(limits=Limits(memory_mib=256, pids=64, disk_mib=64))


@dataclass
class Choice:
    backend: Backend
    reason: str
    passed_over: list[str] = field(default_factory=list)


class NoBackend(SwarmError):
    status_code = 503
    code = "no_backend"


async def choose_backend(
    name: str,
    state_dir: Path,
    *,
    control_dir: Path | None = None,
    images_dir: Path | None = None,
    bwrap_disk: Literal["none", "loop"] = "none",
) -> Choice:
    """The backend called ``name``, proven to start a sandbox; ``auto`` picks the best that
    works here. ``bwrap_disk="loop"`` gives bubblewrap sandboxes a disk limit (see
    :meth:`BwrapBackend._mount_disk`)."""
    if name not in NAMES:
        raise UsageError(f"unknown sandbox backend {name!r}: use one of {', '.join(NAMES)}")
    candidates = ["firecracker", "qemu-kvm", "bwrap", "qemu"] if name == "auto" else [name]
    passed_over: list[str] = []
    for candidate in candidates:
        backend: Backend | None = None
        try:
            backend = _make(candidate, state_dir, control_dir, images_dir, bwrap_disk)
            detail = await _prove(backend, candidate)
        except SwarmError as exc:
            passed_over.append(f"{candidate}: {exc.message}")
        except OSError as exc:
            passed_over.append(f"{candidate}: {exc}")
        else:
            why = f"{backend.name} ({backend.isolation}): {detail}"
            if passed_over:
                why += "; passed over " + "; ".join(passed_over)
            return Choice(backend, why, passed_over)
        if backend is not None:
            await backend.close()
    raise NoBackend("no sandbox backend works here: " + "; ".join(passed_over))


def _make(
    candidate: str,
    state_dir: Path,
    control_dir: Path | None,
    images_dir: Path | None,
    bwrap_disk: Literal["none", "loop"],
) -> Backend:
    if candidate == "bwrap":
        from swarmstack.sandbox.bwrap import BwrapBackend, find_bwrap

        find_bwrap()
        return BwrapBackend(state_dir / "bwrap", control_dir=control_dir, disk=bwrap_disk)
    from swarmstack.sandbox.image import find_image

    if candidate in ("qemu", "qemu-kvm"):
        from swarmstack.sandbox.qemu import QemuBackend, find_qemu

        find_qemu()
        return QemuBackend(
            state_dir / "qemu",
            image=find_image(images_dir),
            control_dir=control_dir,
            accel="auto",
        )
    if candidate == "firecracker":
        from swarmstack.sandbox.firecracker import FirecrackerBackend

        binary = shutil.which("firecracker")
        if binary is None:
            raise UsageError("no firecracker binary on PATH")
        return FirecrackerBackend.from_image(
            state_dir / "firecracker",
            find_image(images_dir),
            firecracker=binary,
            control_dir=control_dir,
        )
    raise UsageError(f"unknown sandbox backend {candidate!r}")


async def _prove(backend: Backend, candidate: str) -> str:
    """Start a sandbox, run ``true`` in it, destroy it; say what happened."""
    from swarmstack.sandbox.qemu import QemuBackend

    if isinstance(backend, QemuBackend):
        await backend.prepare()
        if candidate == "qemu-kvm" and backend.accel != "kvm":
            raise UsageError(backend.accel_reason)
    sandbox = await backend.create(_PROOF_SPEC)
    try:
        result = await sandbox.exec(["true"], timeout_s=60)
        if not result.ok:
            raise UsageError(f"a command in a test sandbox failed: {result.stderr[:200]!r}")
    finally:
        await sandbox.destroy()
    detail = "a test sandbox started and ran a command"
    if isinstance(backend, QemuBackend):
        detail += f" ({backend.accel_reason})"
    return detail
