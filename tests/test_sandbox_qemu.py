"""What only the QEMU backend and its image do: a snapshot that keeps the machine, the
accelerator probe, backend selection, and the pieces of an image build."""

from __future__ import annotations

import asyncio
import gzip
import lzma
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_fixtures import backend_for, qemu_image, state_dir
from swarmstack.errors import UsageError
from swarmstack.sandbox import image, vmfiles
from swarmstack.sandbox.base import Backend, Limits, SandboxSpec
from swarmstack.sandbox.qemu import QemuBackend
from swarmstack.sandbox.selection import choose_backend

SMALL = SandboxSpec(limits=Limits(memory_mib=256, disk_mib=128))


@pytest.fixture
async def qemu() -> AsyncIterator[tuple[Backend, Path]]:
    async for pair in backend_for("qemu"):
        yield pair


async def test_a_snapshot_keeps_the_running_machine(qemu: tuple[Backend, Path]) -> None:
    backend, root = qemu
    box = await backend.create(SMALL)
    try:
        # A process and a file in memory (tmpfs): only a machine snapshot brings them back.
        started = await box.exec(["sh", "-c", "sleep 7777 >/dev/null 2>&1 & echo $!"])
        pid = int(started.stdout)
        assert (await box.exec(["sh", "-c", "echo in-memory > /tmp/note"])).ok
        snap = await box.snapshot(root / "snaps")
        assert snap.kind == "memory" and (Path(snap.path) / "vmstate").stat().st_size > 1 << 20
    finally:
        await box.destroy()
    again = await backend.restore(snap)
    try:
        assert (await again.exec(["cat", "/tmp/note"])).stdout == b"in-memory\n"
        alive = await again.exec(["cat", f"/proc/{pid}/cmdline"])
        assert alive.stdout.split(b"\0")[:2] == [b"sleep", b"7777"]
        info = again.info()
        assert info.isolation == "vm" and set(info.enforced) == {"memory", "cpu", "pids", "disk"}
    finally:
        await again.destroy()


async def test_the_workspace_disk_is_the_disk_limit(qemu: tuple[Backend, Path]) -> None:
    backend, _ = qemu
    box = await backend.create(SandboxSpec(limits=Limits(memory_mib=256, disk_mib=32)))
    try:
        fill = await box.exec(["sh", "-c", "dd if=/dev/zero of=big bs=1M count=64 2>&1; sync"])
        assert b"No space left on device" in fill.stdout, fill
        size = await box.exec(["sh", "-c", "du -sm big | cut -f1"])
        assert int(size.stdout) < 32
        assert (await box.exec(["rm", "big"])).ok  # and it is usable again
    finally:
        await box.destroy()


async def test_the_agent_refuses_requests_without_the_vms_token(
    qemu: tuple[Backend, Path],
) -> None:
    backend, _ = qemu
    box = await backend.create(SMALL)
    try:
        port = box.host_port  # type: ignore[attr-defined]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"op": "exec", "argv": ["touch", "/workspace/pwned"]}\n')
        await writer.drain()
        answer = await reader.readline()
        writer.close()
        assert b'"unauthorized"' in answer
        assert not any(e.name == "pwned" for e in await box.list_files())
    finally:
        await box.destroy()


async def test_the_accelerator_is_proven_by_a_probe_boot() -> None:
    root = state_dir()
    backend = QemuBackend(root / "vms", image=qemu_image(), accel="auto")
    try:
        await backend.prepare()
        assert backend.accel in ("kvm", "tcg")
        if backend.accel == "kvm":
            assert "booted" in backend.accel_reason
        else:  # here nested KVM stalls: the probe must have said why it fell back
            assert "TCG" in backend.accel_reason
        print("qemu accelerator:", backend.accel, "-", backend.accel_reason)
    finally:
        await backend.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_auto_selection_starts_a_sandbox_and_says_why() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (scripts/setup installs it)")
    qemu_image()  # the image exists, so Firecracker and QEMU are judged on their merits
    root = state_dir()
    try:
        choice = await choose_backend("auto", root, images_dir=image.default_images_dir())
        try:
            assert choice.reason.startswith(f"{choice.backend.name} (")
            if shutil.which("firecracker") is None:
                assert "firecracker: no firecracker binary on PATH" in choice.passed_over
            if choice.backend.name == "bwrap":  # KVM did not prove itself here
                assert any(p.startswith("qemu-kvm: ") for p in choice.passed_over)
            box = await choice.backend.create()
            assert (await box.exec(["echo", "chosen"])).stdout == b"chosen\n"
            await box.destroy()
        finally:
            await choice.backend.close()
        from swarmstack.errors import UsageError

        with pytest.raises(UsageError, match="unknown sandbox backend"):
            await choose_backend("docker", root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the image's pieces ------------------------------------------------------------------------


def test_the_image_holds_what_a_vm_needs() -> None:
    built = qemu_image()
    assert vmfiles.extract_vmlinux(built.kernel.read_bytes())[:4] == b"\x7fELF"
    assert built.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert vmfiles.is_static_elf(built.initramfs_tree / "bin" / "busybox")
    # Every boot module is there, after each module it depends on.
    order = built.modules()
    names = [Path(m).stem for m in order]
    builtin = built.manifest["builtin_boot_modules"]
    assert isinstance(builtin, list)
    for wanted in image.BOOT_MODULES:
        assert (wanted in names) != (wanted in builtin), wanted  # a file, or built in
    if built.manifest["config"]["kernel"] == "cloud":  # type: ignore[index]
        assert "ext4" in builtin  # what makes the cloud kernel boot faster: no ext4.ko
    for position, module in enumerate(order):
        data = (built.initramfs_tree / module).read_bytes()
        assert not data.endswith(vmfiles.SIGNATURE_MAGIC), module  # nothing to check at boot
        info = vmfiles.modinfo(data)
        for dep in filter(None, info.get("depends", "").split(",")):
            assert dep.replace("-", "_") in names[:position], (module, dep)
    manifest = built.manifest
    assert {"python3", "git", "nodejs"} <= set(manifest["config"]["packages"])  # type: ignore[index]


def test_the_image_key_names_its_inputs() -> None:
    base = image.ImageConfig()
    assert base.key() == image.ImageConfig().key()
    assert base.key() != image.ImageConfig(packages=("ripgrep",)).key()
    assert base.key() != image.ImageConfig(suite="trixie").key()
    assert base.key() != image.ImageConfig(claude=False).key()
    assert base.key() != image.ImageConfig(kernel="generic").key()


def test_an_unknown_kernel_flavour_is_refused() -> None:
    from typer.testing import CliRunner

    from swarmstack.cli.main import app

    with pytest.raises(UsageError, match="unknown kernel flavour 'rt'"):
        image.ImageConfig(kernel="rt")
    result = CliRunner().invoke(app, ["image", "build", "--kernel", "rt"])
    assert result.exit_code == 2
    assert "use one of cloud, generic" in result.output


@pytest.mark.parametrize("kind", ["lz4", "xz", "gzip", "zstd"])
def test_the_elf_kernel_is_found_inside_a_bzimage(kind: str, tmp_path: Path) -> None:
    tool = {"lz4": "lz4", "zstd": "zstd"}.get(kind)
    if tool and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    elf = b"\x7fELF" + os.urandom(4096) + b"kernel text" * 1000
    if kind == "xz":
        payload = lzma.compress(elf)
    elif kind == "gzip":
        payload = gzip.compress(elf)
    else:  # the kernel's lz4 is the legacy frame format (lz4 -l)
        argv = ["lz4", "-l", "-c"] if kind == "lz4" else ["zstd", "-c", "-q"]
        payload = subprocess.run(argv, input=elf, capture_output=True, check=True).stdout
    # A setup header, a stray copy of every magic number, the payload, and what follows it.
    decoys = b"\xfd7zXZ\x00" + b"\x02\x21\x4c\x18" + b"\x28\xb5\x2f\xfd" + b"\x1f\x8b\x08\x00"
    bzimage = b"MZ" + b"\0" * 0x200 + b"HdrS" + decoys + b"\0" * 64 + payload + b"\x10\x20" * 8
    assert vmfiles.extract_vmlinux(bzimage) == elf


def test_a_kernel_without_an_elf_inside_is_refused() -> None:
    with pytest.raises(vmfiles.ImageError, match="no ELF kernel"):
        vmfiles.extract_vmlinux(b"MZ" + b"\0" * 1024)


def test_a_modules_signature_is_cut_off_and_nothing_else() -> None:
    body = b"\x7fELF module body"
    signature = b"S" * 37
    info = b"\0\0\2\0\0\0\0\0" + len(signature).to_bytes(4, "big")  # struct module_signature
    signed = body + signature + info + vmfiles.SIGNATURE_MAGIC
    assert vmfiles.without_signature(signed) == body
    assert vmfiles.without_signature(body) == body


def test_an_initramfs_unpacks_with_cpio(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed: it checks the archive from outside")
    tree = tmp_path / "tree"
    (tree / "lib" / "modules").mkdir(parents=True)
    (tree / "lib" / "modules" / "a.ko").write_bytes(b"module")
    out = tmp_path / "initrd.img"
    vmfiles.pack_initramfs(tree, out, {"init": b"#!/bin/sh\necho hi\n", "etc/x": b"x"})
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet"], input=gzip.decompress(out.read_bytes()), cwd=unpack, check=True
    )
    assert (unpack / "lib" / "modules" / "a.ko").read_bytes() == b"module"
    assert (unpack / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(unpack / "init", os.X_OK) and (unpack / "etc" / "x").read_bytes() == b"x"


def test_a_missing_build_tool_is_named_with_its_package(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        with pytest.raises(image.MissingTool, match="needs root"):
            image.check_tools()
        return
    with pytest.raises(image.MissingTool) as caught:
        image.check_tools(search=str(tmp_path))  # a PATH with nothing on it
    message = caught.value.message
    assert "debootstrap (apt-get install debootstrap)" in message
    assert "mkfs.ext4 (apt-get install e2fsprogs)" in message
    assert "busybox-static" in message


def test_the_cli_refuses_a_bad_package_name() -> None:
    from typer.testing import CliRunner

    from swarmstack.cli.main import app

    result = CliRunner().invoke(app, ["image", "build", "--package", "bad;name"])
    assert result.exit_code == 2
    assert "not a Debian package name" in result.output
