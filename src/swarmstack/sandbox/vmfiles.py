"""The files a VM boots from, and the tools that make them without root or external programs
where the standard library can: a Debian package's files, the ELF kernel inside a bzImage,
kernel modules in load order (read from each module's ``.modinfo``), an initramfs (a gzip'd
cpio "newc" archive), ext4 disks (``mkfs.ext4 -d``) and sparse copies of them.
"""

from __future__ import annotations

import errno
import gzip
import io
import lzma
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from swarmstack.errors import SwarmError, UsageError


class ImageError(SwarmError):
    status_code = 500
    code = "image_error"


class MissingTool(UsageError):
    code = "missing_tool"


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit ELF executable without a program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def make_ext4(tree: Path | None, image: Path, size_mib: int, *, label: str, owner: int = 0) -> None:
    """An ext4 file system of ``size_mib`` in the sparse file ``image``, filled from ``tree``,
    its root directory owned by uid and gid ``owner``; no journal (a sandbox's disk does not
    outlive the sandbox)."""
    mkfs = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if mkfs is None:
        raise MissingTool("mkfs.ext4 is not installed: apt-get install e2fsprogs")
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    argv = [mkfs, "-q", "-F", "-L", label, "-m", "0", "-O", "^has_journal"]
    argv += ["-E", f"root_owner={owner}:{owner},nodiscard"]
    if tree is not None:
        argv += ["-d", str(tree)]
    run_tool([*argv, str(image)], "mkfs.ext4")


def copy_sparse(source: Path, dest: Path) -> None:
    """Copy a disk or memory image, leaving its holes holes (a fresh workspace drive is
    almost all hole)."""
    with open(source, "rb") as src, open(dest, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
                end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but hole from here on
                    break
                if exc.errno != errno.EINVAL:  # EINVAL: no hole support, copy it all
                    raise
                start, end = offset, size
            _copy_range(src.fileno(), dst.fileno(), start, end)
            offset = end
        dst.truncate(size)


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    position = start
    while position < end:
        try:
            copied = os.copy_file_range(src, dst, end - position, position, position)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data = os.pread(src, min(end - position, 1 << 20), position)
            copied = os.pwrite(dst, data, position)
        if copied == 0:
            return
        position += copied


def extract_deb(deb: Path, target: Path) -> None:
    """Unpack a Debian package's files (its ``data.tar.*``) into ``target``."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ImageError(f"{deb.name} is not a Debian package")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                body = _unzstd(body)
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.extractall(target, filter="tar")
            return
    raise ImageError(f"{deb.name} holds no data.tar")


def _unzstd(data: bytes, *, strict: bool = True) -> bytes:
    """Unpack zstd data; with ``strict`` off, what follows the frame is let be (as in a
    bzImage, where the payload is followed by its size) and the output is judged by the caller."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise MissingTool("this is zstd-compressed: apt-get install zstd")
    return subprocess.run([zstd, "-dcq"], input=data, capture_output=True, check=strict).stdout


def _unlz4(data: bytes) -> bytes:
    """Unpack the kernel's LZ4 payload (the legacy frame format, which Debian's cloud kernels
    use). Whatever follows the payload in the bzImage makes ``lz4`` end with an error after it
    wrote everything, so the output is judged by the caller, not the exit code."""
    lz4 = shutil.which("lz4")
    if lz4 is None:
        raise MissingTool("the kernel is lz4-compressed: apt-get install lz4")
    return subprocess.run([lz4, "-dcq"], input=data, capture_output=True, check=False).stdout


_PAYLOADS: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b\x08\x00", "gzip"),
)


def _unpack(kind: str, data: bytes) -> bytes:
    if kind == "xz":
        return lzma.LZMADecompressor().decompress(data)
    if kind == "gzip":  # one gzip member; what follows it is not the kernel's
        return zlib.decompressobj(wbits=31).decompress(data)
    if kind == "lz4":
        return _unlz4(data)
    return _unzstd(data, strict=False)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage: find the compressed payload, unpack it.
    A magic number can turn up by chance inside the image, so every place it occurs is tried
    until one unpacks to an ELF file."""
    for magic, kind in _PAYLOADS:
        start = bzimage.find(magic)
        while start != -1:
            try:
                out = _unpack(kind, bzimage[start:])
            except MissingTool:
                raise
            except Exception:  # not the payload: try the next place
                out = b""
            if out.startswith(b"\x7fELF"):
                return out
            start = bzimage.find(magic, start + 1)
    raise ImageError("no ELF kernel found inside the bzImage")


def builtin_modules(modules_dir: Path) -> set[str]:
    """The names of the modules the kernel has built in (its ``modules.builtin``)."""
    builtin_file = modules_dir / "modules.builtin"
    if not builtin_file.exists():
        return set()
    return {module_name(p) for p in builtin_file.read_text().split()}


def module_load_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """Module files (relative to ``modules_dir``) for ``wanted`` and what they depend on,
    dependencies first. A kernel package ships no ``modules.dep`` (``depmod`` makes it on
    install), so each module's own ``depends=`` (its ``.modinfo`` section) is read. Names
    built into the kernel (``modules.builtin``) need no file and are skipped."""
    by_name = {
        module_name(p.name): p.relative_to(modules_dir).as_posix()
        for p in modules_dir.rglob("*.ko*")
    }
    builtin = builtin_modules(modules_dir)
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in builtin:
            return
        if key not in by_name:
            raise ImageError(f"the kernel has no module {name} (needed by {' > '.join(chain)})")
        path = by_name[key]
        if path in order or key in chain:
            return
        for dep in modinfo(module_bytes(modules_dir / path)).get("depends", "").split(","):
            if dep:
                visit(dep, (*chain, key))
        order.append(path)

    for name in wanted:
        visit(name, ())
    return order


def modinfo(module: bytes) -> dict[str, str]:
    """The ``key=value`` strings of an ELF kernel module's ``.modinfo`` section."""
    if module[:4] != b"\x7fELF" or module[4] != 2:
        raise ImageError("not a 64-bit ELF kernel module")
    (shoff,) = struct.unpack_from("<Q", module, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", module, shoff + i * shentsize
        )
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    info: dict[str, str] = {}
    for i in range(shnum):
        name_at, offset, size = section(i)
        end = module.index(b"\0", names_at + name_at)
        if module[names_at + name_at : end] == b".modinfo":
            for item in module[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
    return info


def module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return _unzstd(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


SIGNATURE_MAGIC = b"~Module signature appended~\n"


def without_signature(module: bytes) -> bytes:
    """A kernel module less its appended signature. A kernel that does not enforce signatures
    (Debian's, outside Secure Boot) loads it all the same, and skips checking it: under
    emulation the check costs about 15 ms a module, at every boot."""
    if not module.endswith(SIGNATURE_MAGIC):
        return module
    # struct module_signature (12 bytes, the signature's length last, big-endian) precedes it.
    end = len(module) - len(SIGNATURE_MAGIC)
    (length,) = struct.unpack(">I", module[end - 4 : end])
    return module[: end - 12 - length]


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def pack_initramfs(
    tree: Path,
    out: Path,
    extra: dict[str, bytes] | None = None,
    *,
    leave_out: Collection[str] = (),
) -> None:
    """A gzip'd cpio ("newc") archive of ``tree``, less the files ``leave_out`` names, plus
    ``extra`` files (path → content; an ``init`` or a path under ``bin/`` is made executable)."""
    buffer = io.BytesIO()
    inode = 1
    seen: set[str] = set()

    def add(name: str, mode: int, data: bytes = b"") -> None:
        nonlocal inode
        header = "070701" + "".join(
            f"{v:08x}" for v in (inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        )
        buffer.write(header.encode() + name.encode() + b"\0")
        buffer.write(b"\0" * (-buffer.tell() % 4))
        buffer.write(data)
        buffer.write(b"\0" * (-buffer.tell() % 4))
        inode += 1

    def add_dirs(name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            if directory not in seen:
                seen.add(directory)
                add(directory, stat.S_IFDIR | 0o755)

    for path in sorted(_walk(tree)):
        name = path.relative_to(tree).as_posix()
        add_dirs(name)
        if name in (extra or {}) or name in leave_out:
            continue
        if path.is_dir():
            if name not in seen:
                seen.add(name)
                add(name, stat.S_IFDIR | 0o755)
        else:
            add(name, stat.S_IFREG | (path.stat().st_mode & 0o777), path.read_bytes())
    for name, data in sorted((extra or {}).items()):
        add_dirs(name)
        executable = name == "init" or name.startswith("bin/")
        add(name, stat.S_IFREG | (0o755 if executable else 0o644), data)
    add("TRAILER!!!", 0)
    out.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0))


def _walk(tree: Path) -> Iterator[Path]:
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            yield Path(dirpath) / name


def run_tool(argv: list[str], what: str, **kwargs: object) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    except OSError as exc:
        raise ImageError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise ImageError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return str(done.stdout)
