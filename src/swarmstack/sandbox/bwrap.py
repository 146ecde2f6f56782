"""The bubblewrap backend: a sandbox is a set of fresh namespaces, started in milliseconds.

Each sandbox gets its own user, mount, pid, network, ipc and uts namespaces and its own host
uid (``uid_base + slot``: sandboxes cannot signal or read one another even through a shared
path). Inside it sees:

* ``/usr`` (and ``/bin``, ``/lib`` …) read-only — the image's rootfs when one is given, else the
  host's — and a tiny ``/etc`` made for it (an ``agent`` user at its uid, ``localhost``; the
  dynamic linker's cache and the CA certificates from the host, nothing else);
* ``/workspace``, a host directory of its own, read-write; a fresh ``/tmp`` and ``$HOME``;
* no network but its own loopback, where its guest agent forwards one port to the control plane
  (:mod:`swarmstack.sandbox.relay`);
* a scrubbed environment: only what Swarm sets.

Run as root, Swarm puts each sandbox in a cgroup of its own (memory, pids, cpu, freezer; v1 or
v2) and drops to the sandbox's uid before bubblewrap starts. The agent joins the cgroup itself,
through ``cgroup.procs`` descriptors the host opened for it, as its first act and before it
starts any command: a move into a cgroup can wait for an RCU grace period (5-12 ms on these
hosts), and so it passes while Python loads. Run as another user, bubblewrap runs as that user
and the limits are not enforced (``SandboxInfo.enforced`` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from swarmstack.errors import Conflict, UsageError
from swarmstack.sandbox import cgroups, guest
from swarmstack.sandbox.base import (
    LINE_LIMIT,
    WORKSPACE,
    Backend,
    GuestChannel,
    Sandbox,
    SandboxError,
    SandboxSpec,
    Snapshot,
)
from swarmstack.sandbox.relay import SOCKET_NAME
from swarmstack.sandbox.vmfiles import make_ext4

log = logging.getLogger(__name__)

GUEST_PATH = "/opt/swarm/guest.py"
GUEST_SOCKET_DIR = "/run/swarm"
CONTROL_DIR = "/run/swarm-control"
HOME = "/home/agent"
HOST_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates", "localtime")
START_TIMEOUT_S = 10.0
JOIN_FAILED = b"swarm-guest cgroup-join-failed"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise UsageError("bubblewrap is not installed: apt-get install bubblewrap")
    return path


class BwrapSandbox(Sandbox):
    backend = "bwrap"
    isolation = "namespace"

    def __init__(
        self,
        owner: BwrapBackend,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        slot: int,
        uid: int,
        home: Path,
        group: cgroups.Group | None,
    ) -> None:
        channel = GuestChannel(
            lambda: asyncio.open_unix_connection(str(home / "run" / "agent.sock"), limit=LINE_LIMIT)
        )
        super().__init__(sandbox_id, spec, channel)
        self.owner = owner
        self.slot = slot
        self.uid = uid
        self.home = home  # the host directory holding workspace/, run/, etc/, guest.log
        self.group = group
        self.process: subprocess.Popen[bytes] | None = None
        self.disk_mounted = False  # the workspace is a file system of its own (disk="loop")

    @property
    def workspace(self) -> Path:
        return self.home / "workspace"

    def enforced(self) -> list[str]:
        limits = ["memory", "pids", "cpu"] if self.group is not None else []
        return limits + (["disk"] if self.disk_mounted else [])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def memory_usage(self) -> int | None:
        """Its cgroup's memory (every process in it, page cache included); without a cgroup,
        the resident sets of bubblewrap's process tree."""
        if self.state == "destroyed":
            return None
        if self.group is not None:
            return self.group.memory_usage()
        if self.process is None:
            return None
        total = 0
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        return total

    async def pause(self) -> None:
        self._require_running()
        await asyncio.to_thread(self._freeze, True)
        self.state = "paused"

    async def resume(self) -> None:
        if self.state != "paused":
            raise Conflict(f"sandbox {self.id} is {self.state}, not paused")
        await asyncio.to_thread(self._freeze, False)
        self.state = "running"

    def _freeze(self, frozen: bool) -> None:
        if self.group is not None:
            self.group.freeze(frozen)
            return
        for pid in _descendants(self.process.pid if self.process else 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    async def snapshot(self, directory: Path) -> Snapshot:
        """The workspace's files (a namespace has no machine state worth keeping)."""
        self._require_running()
        directory.mkdir(parents=True, exist_ok=True)
        snap_id = f"snap-{secrets.token_hex(6)}"
        path = directory / f"{snap_id}.tar"
        await asyncio.to_thread(_tar, self.workspace, path)
        return Snapshot(
            id=snap_id,
            backend=self.backend,
            kind="filesystem",
            path=str(path),
            spec=self.spec,
            created_at=time.time(),
            size_bytes=path.stat().st_size,
        )

    async def destroy(self) -> None:
        if self.state == "destroyed":
            return
        self.state = "destroyed"
        await asyncio.to_thread(self._teardown)
        self.owner._release(self)

    def _teardown(self) -> None:
        if self.group is not None:
            self.group.kill()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.group is not None:
            self.group.remove()
        if self.disk_mounted:
            # Lazily: a process the kill has not reaped yet may still hold a file open.
            subprocess.run(["umount", "--lazy", str(self.workspace)], check=False)
            self.disk_mounted = False
        shutil.rmtree(self.home, ignore_errors=True)


class BwrapBackend(Backend):
    name = "bwrap"
    isolation = "namespace"

    def __init__(
        self,
        state_dir: Path,
        *,
        control_dir: Path | None = None,
        rootfs: Path | None = None,
        uid_base: int = 200_000,
        python: str = "/usr/bin/python3",
        disk: Literal["none", "loop"] = "none",
        binds: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.bwrap = find_bwrap()
        if disk == "loop" and os.geteuid() != 0:
            raise UsageError("a disk limit (disk='loop') needs root: it mounts a file system")
        self.disk = disk
        self.state_dir = state_dir
        self.control_dir = control_dir
        self.rootfs = rootfs
        self.binds = list(binds)  # host directories shown read-only inside (the runner's code)
        self.uid_base = uid_base
        self.python = python
        self.privileged = os.geteuid() == 0
        self.join_in_guest = True  # see _argv; False once a kernel refuses it
        self.layout = cgroups.detect() if self.privileged else cgroups.Layout()
        self.sandboxes: dict[str, BwrapSandbox] = {}
        self._slots: set[int] = set()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o711)  # sandboxes' uids must reach their own directories
        if self.privileged:
            require_traversable(self.state_dir)
            if control_dir is not None:
                require_traversable(control_dir)
            for source, _ in self.binds:
                require_traversable(source)
        self.guest = self.state_dir / "guest.py"
        shutil.copyfile(guest.__file__, self.guest)
        os.chmod(self.guest, 0o644)
        if rootfs is None:
            self.guest = self._compiled(self.guest)

    def _compiled(self, source: Path) -> Path:
        """The guest agent compiled by the very Python that runs it (compiling it at every
        start costs about 6 ms); the source itself if that fails."""
        target = source.with_suffix(".pyc")
        script = (
            "import py_compile, sys; py_compile.compile(sys.argv[1], sys.argv[2], "
            f"dfile={GUEST_PATH!r}, doraise=True, "
            "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)"
        )
        done = subprocess.run(
            [self.python, "-I", "-S", "-c", script, str(source), str(target)],
            capture_output=True,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
        if done.returncode != 0:
            return source
        os.chmod(target, 0o644)
        return target

    @property
    def limits_enforced(self) -> bool:
        return self.privileged and self.layout.usable()

    def _slot(self) -> int:
        slot = 0
        while slot in self._slots:
            slot += 1
        self._slots.add(slot)
        return slot

    def _release(self, sandbox: BwrapSandbox) -> None:
        self.sandboxes.pop(sandbox.id, None)
        self._slots.discard(sandbox.slot)

    async def create(
        self, spec: SandboxSpec | None = None, *, _workspace_from: Path | None = None
    ) -> BwrapSandbox:
        spec = spec or SandboxSpec()
        sandbox_id = f"sbx-{secrets.token_hex(6)}"
        slot = self._slot()
        uid = self.uid_base + slot if self.privileged else os.getuid()
        home = self.state_dir / sandbox_id
        group = cgroups.Group(self.layout, f"swarm-{sandbox_id}") if self.limits_enforced else None
        sandbox = BwrapSandbox(self, sandbox_id, spec, slot=slot, uid=uid, home=home, group=group)
        self.sandboxes[sandbox_id] = sandbox
        try:
            await asyncio.to_thread(self._prepare, sandbox, _workspace_from)
            await self._start(sandbox)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    async def restore(self, snapshot: Snapshot) -> BwrapSandbox:
        if snapshot.backend != self.name or snapshot.kind != "filesystem":
            raise UsageError(f"a {snapshot.backend} {snapshot.kind} snapshot cannot start here")
        if not Path(snapshot.path).is_file():
            raise UsageError(f"snapshot file {snapshot.path} is missing")
        return await self.create(snapshot.spec, _workspace_from=Path(snapshot.path))

    async def close(self) -> None:
        await asyncio.gather(*(s.destroy() for s in list(self.sandboxes.values())))

    # -- starting -----------------------------------------------------------------------------

    def _prepare(self, sandbox: BwrapSandbox, workspace_from: Path | None) -> None:
        home, uid = sandbox.home, sandbox.uid
        for sub in ("", "workspace", "run", "etc"):
            (home / sub).mkdir(mode=0o711 if sub == "" else 0o755, exist_ok=False)
        if self.disk == "loop":
            self._mount_disk(sandbox)
        if workspace_from is not None:
            with tarfile.open(workspace_from) as tar:
                tar.extractall(sandbox.workspace, filter="data")
        etc = home / "etc"
        (etc / "passwd").write_text(
            f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"agent:x:{uid}:{uid}:swarm agent:{HOME}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (etc / "group").write_text(f"root:x:0:\nagent:x:{uid}:\nnogroup:x:65534:\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost {sandbox.id}\n::1 localhost\n")
        (etc / "hostname").write_text(f"{sandbox.id}\n")
        (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files\n")
        if self.privileged:  # the sandbox owns its workspace and its socket directory
            for top in (sandbox.workspace, home / "run"):
                for path in (top, *top.rglob("*")):
                    os.lchown(path, uid, uid)
        if sandbox.group is not None:
            sandbox.group.create(sandbox.spec.limits)

    def _mount_disk(self, sandbox: BwrapSandbox) -> None:
        """The disk limit: the workspace is an ext4 file system of ``disk_mib`` in a sparse
        file, loop-mounted (about 40 ms more per start, so it is asked for, not the default)."""
        disk = sandbox.home / "disk.ext4"
        make_ext4(None, disk, sandbox.spec.limits.disk_mib, label="swarm-disk", owner=sandbox.uid)
        mounted = subprocess.run(
            ["mount", "-o", "loop,nosuid,nodev", str(disk), str(sandbox.workspace)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            raise SandboxError(f"cannot mount the workspace disk: {mounted.stderr.strip()}")
        sandbox.disk_mounted = True
        (sandbox.workspace / "lost+found").rmdir()

    def _argv(self, sandbox: BwrapSandbox, cgroup_fds: list[int] | None = None) -> list[str]:
        """bubblewrap's command line. It runs as the sandbox's uid, so every path it binds
        must be reachable by that uid (see :func:`require_traversable`).

        With ``cgroup_fds`` (the group's ``cgroup.procs`` files, open for writing) the agent
        joins its cgroups itself, first thing, while Python loads; without them, and with a
        group, a shell joins them before anything of the sandbox starts."""
        spec, home = sandbox.spec, sandbox.home

        def bind(path: Path, dest: str, *, writable: bool = False) -> list[str]:
            return ["--bind" if writable else "--ro-bind", str(path), dest]

        root = self.rootfs or Path("/")
        argv = [
            self.bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--uid", str(sandbox.uid),
            "--gid", str(sandbox.uid),
            "--hostname", sandbox.id,
            "--ro-bind", str(root / "usr"), "/usr",
        ]  # fmt: skip
        for name in ("bin", "lib", "lib64", "lib32", "sbin"):
            target = root / name
            if target.is_symlink():
                argv += ["--symlink", str(os.readlink(target)), f"/{name}"]
            elif target.is_dir():
                argv += ["--ro-bind", str(target), f"/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        argv += ["--dir", "/etc"]
        for name in HOST_ETC:
            source = root / "etc" / name
            if source.exists():
                argv += ["--ro-bind", str(source), f"/etc/{name}"]
        if (root / "etc" / "alternatives").is_dir():
            argv += ["--ro-bind", str(root / "etc" / "alternatives"), "/etc/alternatives"]
        for name in ("passwd", "group", "hosts", "hostname", "nsswitch.conf"):
            argv += bind(home / "etc" / name, f"/etc/{name}")
        argv += ["--tmpfs", HOME]
        argv += bind(sandbox.workspace, WORKSPACE, writable=True)
        argv += bind(home / "run", GUEST_SOCKET_DIR, writable=True)
        agent = GUEST_PATH + ("c" if self.guest.suffix == ".pyc" else "")
        argv += bind(self.guest, agent)
        for source, dest in self.binds:
            argv += bind(source, dest)
        forward: list[str] = []
        if self.control_dir is not None:
            argv += bind(self.control_dir, CONTROL_DIR)
            relay = f"unix:{CONTROL_DIR}/{SOCKET_NAME}"
            forward = ["--forward", f"127.0.0.1:{spec.control_port}={relay}"]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": HOME,
            "USER": "agent",
            "LOGNAME": "agent",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "SWARM_WORKSPACE": WORKSPACE,
            "SWARM_API_URL": f"http://127.0.0.1:{spec.control_port}",
            "SWARM_SANDBOX_ID": sandbox.id,
            **spec.env,
        }
        if cgroup_fds:
            env["SWARM_GUEST_CGROUP_FDS"] = ",".join(str(fd) for fd in cgroup_fds)
        argv += ["--chdir", WORKSPACE, "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += ["--", self.python, "-I", "-S", agent]
        argv += ["--listen", f"unix:{GUEST_SOCKET_DIR}/agent.sock", *forward]
        if not self.privileged:
            return argv
        drop = [
            "setpriv",
            f"--reuid={sandbox.uid}",
            f"--regid={sandbox.uid}",
            "--clear-groups",
            "--inh-caps=-all",
        ]
        if sandbox.group is None or cgroup_fds:
            return [*drop, *argv]
        # Join the cgroups first (as root), then drop to the sandbox's uid and start: every
        # process of the sandbox is born inside its limits.
        procs = [str(p) for p in sandbox.group.procs_files]
        join = (
            'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 111; shift; '
            'n=$((n-1)); done; exec "$@"'
        )
        return ["/bin/sh", "-c", join, "sh", str(len(procs)), *procs, *drop, *argv]

    async def _start(self, sandbox: BwrapSandbox) -> None:
        first = await self._launch(sandbox, in_guest=self.join_in_guest)
        if first.startswith(JOIN_FAILED) and sandbox.group is not None:
            # A kernel that checks a move against the writer's own rights (cgroup v2 before
            # Linux 5.16) refuses the agent: the host joins for it from now on.
            self.join_in_guest = False
            log.warning(
                "the kernel refused a sandbox agent its own cgroup join, so the host joins "
                "for every sandbox from now on: %s",
                first[len(JOIN_FAILED) :].decode(errors="replace").strip(": \n"),
            )
            await asyncio.to_thread(self._reap, sandbox)
            first = await self._launch(sandbox, in_guest=False)
        if not first.startswith(b"swarm-guest ready"):
            code = sandbox.process.poll() if sandbox.process else None
            raise SandboxError(
                f"sandbox {sandbox.id} failed to start (exit {code}): "
                f"{first.decode(errors='replace').strip()} {self._log(sandbox)}"
            )

    @staticmethod
    def _reap(sandbox: BwrapSandbox) -> None:
        if sandbox.process is not None:
            with contextlib.suppress(ProcessLookupError):
                sandbox.process.kill()
            sandbox.process.wait()

    async def _launch(self, sandbox: BwrapSandbox, *, in_guest: bool) -> bytes:
        """Start bubblewrap and the agent; the agent's first line of output."""
        self._spawn(sandbox, in_guest=in_guest)
        assert sandbox.process is not None and sandbox.process.stdout is not None
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bytes] = loop.create_future()
        fd = sandbox.process.stdout.fileno()

        def on_readable() -> None:
            try:
                data = os.read(fd, 4096)
            except OSError as exc:
                data = str(exc).encode()
            if not ready.done():
                ready.set_result(data)

        loop.add_reader(fd, on_readable)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                first = await ready
        except TimeoutError:
            why = self._log(sandbox)
            raise SandboxError(
                f"sandbox {sandbox.id} did not start in {START_TIMEOUT_S:.0f}s: {why}"
            ) from None
        finally:
            loop.remove_reader(fd)
            sandbox.process.stdout.close()
        return first

    @staticmethod
    def _open_procs(group: cgroups.Group) -> list[int]:
        """The group's ``cgroup.procs`` files, open for writing, for the agent to inherit."""
        fds: list[int] = []
        try:
            for procs in group.procs_files:
                fds.append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def _spawn(self, sandbox: BwrapSandbox, *, in_guest: bool) -> None:
        fds: list[int] = []
        log = (sandbox.home / "guest.log").open("ab")
        try:
            if in_guest and sandbox.group is not None:
                fds = self._open_procs(sandbox.group)
            sandbox.process = subprocess.Popen(
                self._argv(sandbox, fds),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                pass_fds=fds,
                # Not the host's environment: bubblewrap's own process stays alive as the
                # sandbox's pid 1, and the sandbox can read its /proc/1/environ.
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )
        finally:
            log.close()
            for inherited in fds:
                os.close(inherited)

    @staticmethod
    def _log(sandbox: BwrapSandbox) -> str:
        with contextlib.suppress(OSError):
            text = (sandbox.home / "guest.log").read_text(errors="replace").strip()
            return text[-500:] or "no output"
        return "no output"


def require_traversable(path: Path) -> None:
    """bubblewrap binds a sandbox's directories as the sandbox's own uid: every directory on
    the way to them must let others through (``o+x``)."""
    for directory in [path.resolve(), *path.resolve().parents]:
        if not directory.stat().st_mode & 0o001:
            raise UsageError(
                f"sandboxes cannot reach {path}: {directory} is closed to other users; "
                "set SWARM_SANDBOX_DIR to a directory under one that is not "
                "(for example /var/lib/swarm/sandboxes)"
            )


def _tar(source: Path, dest: Path) -> None:
    tmp = dest.with_suffix(".partial")
    with tarfile.open(tmp, "w") as tar:
        tar.add(source, arcname=".")
    tmp.replace(dest)


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found
