"""``swarm image build``: the Debian image a VM sandbox boots.

An image is a directory in the image cache, named by a hash of everything that went into it:

* ``rootfs.ext4`` — a debootstrap ``minbase`` root with python3, git, Node.js, the Claude Code
  CLI (taken from the ``claude-agent-sdk`` wheel), the Swarm runner in ``/opt/swarm/venv`` and
  any extra packages; made with ``mkfs.ext4 -d``, mounted read-only by every VM that boots it;
* ``vmlinuz`` (QEMU) and ``vmlinux`` (Firecracker wants the uncompressed ELF) — Debian's kernel;
* ``initramfs/`` — a static busybox and the kernel modules a VM needs before its root is
  mounted (virtio, the block and network drivers, ext4, vsock), each listed in load order in
  ``initramfs/modules.order``; a backend adds its own ``/init`` and packs it
  (:func:`pack_initramfs`); ``initrd.img`` is that tree packed with a generic ``/init``;
* ``manifest.json`` — the inputs, the kernel's version and the sizes.

Building needs root (debootstrap and chroot do), debootstrap, mkfs.ext4 and a static busybox;
a missing one is named with the package that brings it. A build is cached: the same inputs
give the same key, and a finished image is only rebuilt when asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from swarmstack import __version__
from swarmstack.errors import NotFound, UsageError
from swarmstack.sandbox.vmfiles import (
    ImageError,
    MissingTool,
    builtin_modules,
    extract_deb,
    extract_vmlinux,
    is_static_elf,
    make_ext4,
    module_bytes,
    module_load_order,
    module_name,
    pack_initramfs,
    run_tool,
    without_signature,
)

BUILDER_VERSION = 3  # 2: boot modules without their signatures; 3: a kernel flavour
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What every image has; the configuration adds to it.
BASE_PACKAGES = ("python3", "python3-venv", "git", "ca-certificates", "nodejs", "procps")
# Modules a VM loads before its root is mounted, with their dependencies (from modules.dep).
BOOT_MODULES = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "crc32c_generic",  # ext4's metadata checksums (a soft dependency, not in depends=)
    "ext4",
    "vmw_vsock_virtio_transport",
)
# Debian's kernel flavours (the ``linux-image-<flavour>-amd64`` packages). ``cloud`` is made
# for VMs: ext4 is built in and far fewer drivers start, so under TCG it boots about 0.6 s
# faster than ``generic``, which carries every driver for real hardware.
KERNEL_FLAVOURS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
AGENT_UID = 1000
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImageConfig:
    """Everything that decides what an image holds; its hash names the image."""

    suite: str = DEFAULT_SUITE
    mirror: str = DEFAULT_MIRROR
    packages: tuple[str, ...] = ()
    claude: bool = True  # the Claude Code CLI from the claude-agent-sdk wheel
    runner: bool = True  # the Swarm runner (this package) in /opt/swarm/venv
    claude_sdk_version: str | None = None  # None: the newest on the index at build time
    kernel: str = "cloud"  # a key of KERNEL_FLAVOURS

    def __post_init__(self) -> None:
        if self.kernel not in KERNEL_FLAVOURS:
            known = ", ".join(sorted(KERNEL_FLAVOURS))
            raise UsageError(f"unknown kernel flavour {self.kernel!r}: use one of {known}")

    def all_packages(self) -> list[str]:
        return sorted(set(BASE_PACKAGES) | set(self.packages))

    def key(self) -> str:
        inputs = {
            "builder": BUILDER_VERSION,
            "suite": self.suite,
            "mirror": self.mirror,
            "packages": self.all_packages(),
            "claude": self.claude and (self.claude_sdk_version or "latest"),
            "runner": self.runner and __version__,
            "modules": BOOT_MODULES,
            "kernel": self.kernel,
        }
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        return digest[:16]


@dataclass
class Image:
    """A built image, found by its directory."""

    path: Path
    manifest: dict[str, object] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Image:
        manifest_file = path / "manifest.json"
        if not manifest_file.is_file():
            raise NotFound(f"no image at {path}: run 'swarm image build'")
        return cls(path, json.loads(manifest_file.read_text()))

    @property
    def key(self) -> str:
        return str(self.manifest.get("key", self.path.name))

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.ext4"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        return self.path / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def initramfs_tree(self) -> Path:
        return self.path / "initramfs"

    @property
    def python_version(self) -> str | None:
        """The image's python3 as ``major.minor`` (images of builder 1 do not say)."""
        version = self.manifest.get("python_version")
        return str(version) if version else None

    def modules(self) -> list[str]:
        """The boot modules' files, relative to the initramfs tree, in load order."""
        return (self.initramfs_tree / "modules.order").read_text().split()


def default_images_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/swarm/images")
    return Path.home() / ".cache" / "swarm" / "images"


def find_image(images_dir: Path | None = None, name: str | None = None) -> Image:
    """The image called ``name`` (a key or a directory), or the newest one built."""
    images_dir = images_dir or default_images_dir()
    if name:
        candidate = Path(name)
        if not candidate.is_dir():
            candidate = images_dir / name
        return Image.load(candidate)
    built = sorted((p for p in images_dir.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime)
    if not built:
        raise NotFound(f"no image in {images_dir}: run 'swarm image build'")
    return Image.load(built[-1].parent)


# -- tools -------------------------------------------------------------------------------------

TOOLS = {
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "chroot": "coreutils",
    "lz4": "lz4",  # the cloud kernel's payload
    "zstd": "zstd",  # packages and modules compressed with zstd
}


def check_tools(search: str | None = None) -> dict[str, str]:
    """Where each tool is (on ``search``, default ``$PATH`` and the sbin directories); a
    missing one raises, naming it and the package that brings it."""
    if os.geteuid() != 0:
        raise MissingTool(
            "building an image needs root (debootstrap and chroot do): run it as root"
        )
    found: dict[str, str] = {}
    missing: list[str] = []
    if search is None:
        search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    for tool, package in TOOLS.items():
        path = shutil.which(tool, path=search)
        if path is None:
            missing.append(f"{tool} (apt-get install {package})")
        else:
            found[tool] = path
    busybox = find_static_busybox(search)
    if busybox is None:
        missing.append("a static busybox (apt-get install busybox-static)")
    else:
        found["busybox"] = busybox
    if missing:
        raise MissingTool("cannot build an image, missing: " + ", ".join(missing))
    return found


def find_static_busybox(search: str | None = None) -> str | None:
    for candidate in (shutil.which("busybox", path=search), "/bin/busybox", "/usr/bin/busybox"):
        if (
            search is not None
            and candidate
            and os.path.dirname(candidate) not in search.split(os.pathsep)
        ):
            continue
        if candidate and os.path.isfile(candidate) and is_static_elf(Path(candidate)):
            return candidate
    return None


# -- building ----------------------------------------------------------------------------------


def build(
    config: ImageConfig,
    images_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Progress = lambda _step: None,
) -> Image:
    """Build the image for ``config`` unless a finished one with its key exists."""
    images_dir = images_dir or default_images_dir()
    key = config.key()
    target = images_dir / key
    if (target / "manifest.json").is_file() and not force:
        progress(f"image {key} is already built")
        return Image.load(target)
    tools = check_tools()
    images_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=images_dir))
    work.chmod(0o755)  # VMs may run as another user and must read it
    started = time.monotonic()
    try:
        root = work / "root"
        _debootstrap(config, root, tools["debootstrap"], progress)
        kernel_version = _kernel(root, work, KERNEL_FLAVOURS[config.kernel], progress)
        python_version = _python_version(root)
        _agent_user(root)
        if config.claude:
            _claude(config, root, work, progress)
        if config.runner:
            _runner(root, work, progress)
        _trim(root)
        progress("making the ext4 root file system")
        rootfs_bytes = _mkfs(root, work / "rootfs.ext4", label="swarm-root")
        progress("making the initramfs")
        builtin = _initramfs_tree(work, kernel_version, tools["busybox"])
        pack_initramfs(work / "initramfs", work / "initrd.img", {"init": GENERIC_INIT.encode()})
        shutil.rmtree(root)
        shutil.rmtree(work / "kernel")
        from swarmstack.agent.package import package_digest

        manifest = {
            "key": key,
            "config": {
                "suite": config.suite,
                "mirror": config.mirror,
                "packages": config.all_packages(),
                "claude": config.claude,
                "runner": config.runner,
                "kernel": config.kernel,
            },
            "kernel_version": kernel_version,
            "builtin_boot_modules": builtin,
            "python_version": python_version,
            "swarm_version": __version__,
            # Which runner the image carries: a host with other code unpacks its own over it.
            "runner_digest": package_digest() if config.runner else None,
            "rootfs_bytes": rootfs_bytes,
            "built_at": time.time(),
            "build_s": round(time.monotonic() - started, 1),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
        progress(f"image {key} built in {manifest['build_s']} s")
        return Image.load(target)
    except BaseException:
        _unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
        raise


def _debootstrap(config: ImageConfig, root: Path, debootstrap: str, progress: Progress) -> None:
    packages = config.all_packages()
    progress(f"debootstrap {config.suite} with {', '.join(packages)}")
    run_tool(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(packages)}",
            config.suite,
            str(root),
            config.mirror,
        ],
        "debootstrap",
    )


def _chroot(root: Path, argv: list[str], what: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    return run_tool(["chroot", str(root), *argv], what, env=env)


def _kernel(root: Path, work: Path, metapackage: str, progress: Progress) -> str:
    """Fetch Debian's kernel package inside the new root and take the kernel and modules."""
    progress(f"fetching the kernel ({metapackage})")
    resolv = root / "etc" / "resolv.conf"
    with contextlib.suppress(OSError):
        shutil.copyfile("/etc/resolv.conf", resolv)
    _chroot(root, ["apt-get", "update", "-qq"], "apt-get update in the image")
    depends = _chroot(root, ["apt-cache", "depends", metapackage], "apt-cache depends")
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*)", depends)
    if match is None:
        raise ImageError(f"cannot tell the kernel package from: {depends.strip()[:300]}")
    package = match.group(1)
    _chroot(root, ["sh", "-c", f"cd /tmp && apt-get download -qq {package}"], "apt-get download")
    debs = list((root / "tmp").glob(f"{package}_*.deb"))
    if not debs:
        raise ImageError(f"apt-get download left no {package} package")
    kernel_dir = work / "kernel"
    extract_deb(debs[0], kernel_dir)
    debs[0].unlink()
    vmlinuz = sorted((kernel_dir / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise ImageError(f"{package} holds no /boot/vmlinuz")
    version = vmlinuz[0].name.removeprefix("vmlinuz-")
    shutil.copyfile(vmlinuz[0], work / "vmlinuz")
    (work / "vmlinux").write_bytes(extract_vmlinux(vmlinuz[0].read_bytes()))
    return version


def _agent_user(root: Path) -> None:
    _chroot(
        root,
        ["useradd", "--create-home", "--uid", str(AGENT_UID), "--shell", "/bin/sh", "agent"],
        "useradd agent",
    )
    for directory in ("workspace", "opt/swarm"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("sandbox\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost sandbox\n")


def _pip(args: list[str], what: str) -> str:
    return run_tool([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], what)


def _claude(config: ImageConfig, root: Path, work: Path, progress: Progress) -> None:
    """The Claude Code CLI, as the ``claude-agent-sdk`` wheel for Linux x86-64 bundles it."""
    progress("fetching Claude Code (the claude-agent-sdk wheel)")
    wheels = work / "claude-wheel"
    requirement = "claude-agent-sdk" + (
        f"=={config.claude_sdk_version}" if config.claude_sdk_version else ""
    )
    _pip(
        [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(wheels),
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            "3.11",
            requirement,
        ],
        "pip download claude-agent-sdk",
    )
    wheel = next(wheels.glob("claude_agent_sdk-*.whl"), None)
    if wheel is None:
        raise ImageError("pip found no claude-agent-sdk wheel for Linux x86-64")
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if n.endswith("_bundled/claude")), None)
        if name is None:
            raise ImageError(f"{wheel.name} bundles no Claude Code CLI")
        target = root / "usr" / "local" / "bin" / "claude"
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(name) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    target.chmod(0o755)
    shutil.rmtree(wheels)


def _python_version(root: Path) -> str:
    """The image's python3, as ``major.minor``."""
    return _chroot(
        root,
        ["python3", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        "python3 in the image",
    ).strip()


def _runner(root: Path, work: Path, progress: Progress) -> None:
    """This package and what it needs, in a virtualenv of the image's own python3."""
    progress("installing the Swarm runner")
    wheels = work / "wheels"
    source = _project_source()
    if source is not None:
        _pip(["wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)], "building swarmstack")
        ours = next(wheels.glob("swarmstack-*.whl"))
        requirement = str(ours)
    else:
        requirement = f"swarmstack=={__version__}"
    version = _python_version(root)
    _pip(
        [
            "download",
            "--only-binary=:all:",
            "--dest",
            str(wheels),
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            version,
            "--implementation",
            "cp",
            requirement,
        ],
        "pip download the runner's dependencies",
    )
    inside = root / "tmp" / "wheels"
    shutil.copytree(wheels, inside)
    _chroot(root, ["python3", "-m", "venv", "/opt/swarm/venv"], "python3 -m venv in the image")
    _chroot(
        root,
        [
            "/opt/swarm/venv/bin/pip",
            "install",
            "-q",
            "--no-index",
            "--no-cache-dir",
            "--find-links",
            "/tmp/wheels",
            "swarmstack",
        ],
        "pip install the runner in the image",
    )
    os.symlink("/opt/swarm/venv/bin/swarm", root / "usr" / "local" / "bin" / "swarm")
    shutil.rmtree(inside)
    shutil.rmtree(wheels)


def _project_source() -> Path | None:
    """The source tree this package runs from, when it is one (an editable install)."""
    try:
        direct = metadata.distribution("swarmstack").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not direct:
        return None
    url = json.loads(direct).get("url", "")
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        if (path / "pyproject.toml").is_file():
            return path
    return None


def _trim(root: Path) -> None:
    """What a sandbox never needs: package caches and lists, documentation, manuals."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*_Packages",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
    ):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)


def _mkfs(tree: Path, image: Path, *, label: str) -> int:
    """The image's root file system: the tree's size, a fifth more, and 96 MiB to spare."""
    size_mib = (int(_tree_bytes(tree) * 1.2) >> 20) + 96
    make_ext4(tree, image, size_mib, label=label)
    return size_mib << 20


def _tree_bytes(tree: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 4096
        total += 4096
    return total


def _unmount_all(work: Path) -> None:
    """Nothing is mounted by the build, but a chroot'd apt may leave /proc busy on failure."""
    for mount in (work / "root" / "proc", work / "root" / "sys"):
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _initramfs_tree(work: Path, kernel_version: str, busybox: str) -> list[str]:
    """The initramfs tree: busybox and the boot modules the kernel does not have built in;
    returns the boot modules it has built in."""
    modules_dir = work / "kernel" / "lib" / "modules" / kernel_version
    if not modules_dir.is_dir():
        modules_dir = work / "kernel" / "usr" / "lib" / "modules" / kernel_version
    tree = work / "initramfs"
    (tree / "bin").mkdir(parents=True)
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "busybox").chmod(0o755)
    names: list[str] = []
    for relative in module_load_order(modules_dir, BOOT_MODULES):
        source = modules_dir / relative
        name = module_name(relative) + ".ko"
        data = without_signature(module_bytes(source))
        (tree / "lib" / "modules").mkdir(parents=True, exist_ok=True)
        (tree / "lib" / "modules" / name).write_bytes(data)
        names.append(f"lib/modules/{name}")
    (tree / "modules.order").write_text("\n".join(names) + "\n")
    return sorted(set(BOOT_MODULES) & builtin_modules(modules_dir))


GENERIC_INIT = """#!/bin/busybox sh
# Load the boot modules, mount the root (/dev/vda, read-only) and hand over to its init.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /modules.order); do /bin/busybox insmod /$m 2>/dev/null; done
/bin/busybox mount -t ext4 -o ro /dev/vda /newroot || exec /bin/busybox sh
exec /bin/busybox switch_root /newroot /sbin/init
"""
