"""Backends for the sandbox suites, each on a state directory its sandboxes' uids can reach."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from swarmstack.sandbox.base import Backend
from swarmstack.sandbox.image import Image

BACKENDS = ["bwrap", "qemu", "firecracker"]

STANDIN = Path(__file__).with_name("firecracker_standin.py")

# What a backend's test double cannot show, and why: the tests that need it skip there.
NOT_EMULATED = {
    "firecracker": {
        "memory": "the Firecracker stand-in runs its guest in namespaces, not a VM: it does not "
        "emulate the VM's memory size",
        "pids": "a Firecracker VM bounds a fork bomb by its memory and vCPUs, not a pids limit, "
        "and the stand-in emulates neither",
    },
}


def require_emulated(backend: str, what: str) -> None:
    """Skip where ``backend`` is tested against a stand-in that does not emulate ``what``."""
    reason = NOT_EMULATED.get(backend, {}).get(what)
    if reason is not None:
        pytest.skip(reason)


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
    if name == "qemu":
        from swarmstack.sandbox.qemu import QemuBackend

        return QemuBackend(root / "vms", image=qemu_image(), control_dir=control_dir)
    if name == "firecracker":
        if shutil.which("bwrap") is None:
            pytest.skip("the Firecracker stand-in runs its guest under bubblewrap: not installed")
        from swarmstack.sandbox.firecracker import FirecrackerBackend

        return FirecrackerBackend(
            root / "vms",
            firecracker=[sys.executable, str(STANDIN)],
            **placeholder_image(root),
            control_dir=control_dir,
        )
    raise AssertionError(f"unknown backend {name}")


_IMAGE: list[Image] = []


def qemu_image() -> Image:
    """The VM image, built once (``swarm image build``) into the image cache if it is not
    there yet; the QEMU tests skip, saying why, where QEMU or the build's tools are missing."""
    if _IMAGE:
        return _IMAGE[0]
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (scripts/setup installs qemu-system-x86)")
    from swarmstack.sandbox import image

    config = image.ImageConfig()
    images_dir = image.default_images_dir()
    if not (images_dir / config.key() / "manifest.json").exists():
        try:
            image.check_tools()
        except image.MissingTool as exc:
            pytest.skip(f"no VM image, and one cannot be built here: {exc.message}")
    _IMAGE.append(image.build(config, images_dir, progress=lambda step: print(f"image: {step}")))
    return _IMAGE[0]


def placeholder_image(root: Path) -> dict[str, Path]:
    """A kernel and a rootfs for the stand-in, which checks that they exist, as Firecracker
    does, and boots neither."""
    (root / "image").mkdir(exist_ok=True)
    kernel, rootfs = root / "image" / "vmlinux", root / "image" / "rootfs.ext4"
    kernel.write_bytes(b"\x7fELF placeholder kernel")
    rootfs.write_bytes(b"placeholder rootfs")
    return {"kernel": kernel, "rootfs": rootfs}


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
