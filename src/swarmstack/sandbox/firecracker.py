"""The Firecracker backend: every sandbox is a microVM with a kernel of its own.

One Firecracker process per sandbox, driven over its REST API on a Unix socket
(:mod:`swarmstack.sandbox.firecracker_api`). The VM boots the image's kernel with the image's
rootfs read-only and a workspace drive of its own (ext4, ``disk_mib`` large, mounted at
``/workspace`` by the image's init). It has no network device: vsock is its one channel.

* Host to guest: connect to the VM's vsock socket, send ``CONNECT 1024\\n``, read
  ``OK <port>\\n``; from then on the stream is the guest agent's (one request per connection).
* Guest to host: a connection to CID 2 port P makes Firecracker connect to ``<vsock>_P`` on the
  host. The backend listens there for the control-plane port and relays to the control plane
  (:func:`swarmstack.sandbox.relay.relay_unix`), so inside the VM the control plane is
  ``http://127.0.0.1:<control_port>``, as under bubblewrap.

The host cannot hand the VM's init arguments, so what the guest agent should do rides on the
kernel command line (``swarm.listen=vsock:1024 swarm.forward=127.0.0.1:P=vsock:2:P``) and the
init starts it with ``--boot-args /proc/cmdline`` (:data:`INIT`, packed with the image's boot
modules by :meth:`FirecrackerBackend.from_image`). The environment of a command is sent with the
command, so a VM restored from a snapshot runs commands under its own sandbox id.

Snapshots hold the whole machine: Firecracker's VM state and memory, and a copy of the workspace
drive taken while the VM is paused, so disk and memory agree. A restore starts a fresh
Firecracker in a new directory and loads them there.

Every path Firecracker is told is relative to its working directory — the VM's directory, or
its chroot when the jailer starts it (``--id``, ``--exec-file``, a uid of its own per VM,
``--chroot-base-dir``) — so the same names hold in every VM and a snapshot loads in any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from swarmstack.errors import Conflict, Unavailable, UsageError
from swarmstack.sandbox import guest
from swarmstack.sandbox.base import (
    LINE_LIMIT,
    WORKSPACE,
    Backend,
    ExecOptions,
    Exit,
    GuestChannel,
    Limits,
    Output,
    Sandbox,
    SandboxError,
    SandboxSpec,
    Snapshot,
)
from swarmstack.sandbox.firecracker_api import (
    BootSource,
    Drive,
    FirecrackerAPI,
    InstanceActionInfo,
    MachineConfiguration,
    MemoryBackend,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vm,
    Vsock,
    VsockOverride,
)
from swarmstack.sandbox.relay import SOCKET_NAME, relay_unix
from swarmstack.sandbox.vmfiles import copy_sparse

if TYPE_CHECKING:
    from swarmstack.sandbox.image import Image

AGENT_PORT = 1024  # the guest agent's vsock port
GUEST_CID = 3  # each VM's vsock is its own: every guest can be CID 3
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
MAX_VCPUS = 32
HOME = "/home/agent"
API_TIMEOUT_S = 10.0

# Names inside a VM's directory, as Firecracker is told them.
API_SOCKET = "api.sock"
VSOCK = "v.sock"
KERNEL = "vmlinux"
INITRD = "initrd.img"
ROOTFS = "rootfs.ext4"
WORKSPACE_DRIVE = "workspace.ext4"
STAGING = "snapshot"  # where Firecracker writes a snapshot and reads one to load
VMSTATE = "vmstate"
MEMORY = "memory"
IMAGE = "image.json"  # which rootfs a snapshot's kernel has mounted

# PID 1 in the initramfs: load the boot modules, mount the image's root read-only (the first
# drive) and the workspace drive (the second), fresh tmpfs for the rest, then start the guest
# agent as the agent user with what the kernel command line says — again if it ever stops.
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /$m 2>/dev/null; done
fail() { echo "swarm-init: $*" > /dev/ttyS0; poweroff -f; }
mount -t ext4 -o ro /dev/vda /newroot || fail "cannot mount the root drive"
mount -t ext4 -o nosuid,nodev /dev/vdb /newroot/workspace || fail "cannot mount the workspace"
chown {uid}:{uid} /newroot/workspace
for d in tmp var/tmp; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/$d; done
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run
mount -t tmpfs -o mode=700,uid={uid},gid={uid},nosuid,nodev tmpfs /newroot/home/agent
mkdir -p /newroot/run/swarm
cp /guest.py /newroot/run/swarm/guest.py
ip link set lo up
cat > /newroot/run/swarm/start <<'START'
#!/bin/sh
cd /workspace
while :; do
  setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all \
    python3 -I /run/swarm/guest.py --boot-args /proc/cmdline > /dev/ttyS0 2>&1
  sleep 0.2
done
START
chmod 755 /newroot/run/swarm/start
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/sh /run/swarm/start
"""


class FirecrackerSandbox(Sandbox):
    backend = "firecracker"
    isolation = "vm"

    def __init__(
        self,
        owner: FirecrackerBackend,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        slot: int,
        uid: int | None,
        home: Path,
        root: Path,
    ) -> None:
        super().__init__(sandbox_id, spec, GuestChannel(self._connect_agent))
        self.owner = owner
        self.slot = slot
        self.uid = uid  # the jailed Firecracker's uid; None when it runs as Swarm
        self.home = home  # everything of this VM: its directory, or its jail
        self.root = root  # Firecracker's working directory (the chroot when jailed)
        self.api = FirecrackerAPI(root / API_SOCKET, timeout_s=API_TIMEOUT_S)
        self.process: subprocess.Popen[bytes] | None = None
        self.relay: asyncio.AbstractServer | None = None

    @property
    def vsock_path(self) -> Path:
        return self.root / VSOCK

    async def _connect_agent(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await vsock_connect(self.vsock_path, AGENT_PORT)

    def environment(self) -> dict[str, str]:
        """What every command in the VM sees, under the environment it asks for."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": HOME,
            "USER": "agent",
            "LOGNAME": "agent",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "SWARM_WORKSPACE": WORKSPACE,
            "SWARM_API_URL": f"http://127.0.0.1:{self.spec.control_port}",
            "SWARM_SANDBOX_ID": self.id,
            **self.spec.env,
        }

    def exec_stream(
        self, argv: list[str], **options: Unpack[ExecOptions]
    ) -> AsyncIterator[Output | Exit]:
        options["env"] = {**self.environment(), **(options.get("env") or {})}
        return super().exec_stream(argv, **options)

    def enforced(self) -> list[str]:
        # The VM's own size: its memory, its vCPUs, its workspace drive.
        return ["memory", "cpu", "disk"]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def pause(self) -> None:
        self._require_running()
        await self.api.patch("/vm", Vm(state="Paused"))
        self.state = "paused"

    async def resume(self) -> None:
        if self.state != "paused":
            raise Conflict(f"sandbox {self.id} is {self.state}, not paused")
        await self.api.patch("/vm", Vm(state="Resumed"))
        self.state = "running"

    async def snapshot(self, directory: Path) -> Snapshot:
        """The whole machine: VM state, memory and the workspace drive, in
        ``directory/<snapshot id>/``. A running VM is paused meanwhile, then resumed."""
        if self.state == "destroyed":
            raise Conflict(f"sandbox {self.id} is destroyed")
        snap_id = f"snap-{secrets.token_hex(6)}"
        staging = self.root / STAGING
        await asyncio.to_thread(self.owner._make_staging, self)
        was_running = self.state == "running"
        if was_running:
            await self.pause()
        try:
            await self.api.put(
                "/snapshot/create",
                SnapshotCreateParams(
                    snapshot_type="Full",
                    snapshot_path=f"{STAGING}/{VMSTATE}",
                    mem_file_path=f"{STAGING}/{MEMORY}",
                ),
            )
            # The disk as it is at this instant, beside the memory that caches it.
            await asyncio.to_thread(
                copy_sparse, self.root / WORKSPACE_DRIVE, staging / WORKSPACE_DRIVE
            )
        finally:
            if was_running and self.state == "paused":
                await self.resume()
        target = directory / snap_id
        size = await asyncio.to_thread(_keep, staging, target)
        (target / IMAGE).write_text(json.dumps(self.owner.image_identity()))
        return Snapshot(
            id=snap_id,
            backend=self.backend,
            kind="memory",
            path=str(target / VMSTATE),
            spec=self.spec,
            created_at=time.time(),
            size_bytes=size,
        )

    async def destroy(self) -> None:
        if self.state == "destroyed":
            return
        self.state = "destroyed"
        if self.relay is not None:
            self.relay.close()
        await self.api.close()
        await asyncio.to_thread(self._teardown)
        self.owner._release(self)

    def _teardown(self) -> None:
        if self.process is not None:
            # Its own session: the group holds Firecracker (the jailer execs into it) and
            # anything it started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        shutil.rmtree(self.home, ignore_errors=True)


class FirecrackerBackend(Backend):
    name = "firecracker"
    isolation = "vm"

    def __init__(
        self,
        state_dir: Path,
        *,
        kernel: Path,
        rootfs: Path,
        initrd: Path | None = None,
        firecracker: str | Sequence[str] = "firecracker",
        jailer: str | None = None,
        chroot_base: Path = Path("/srv/jailer"),
        uid_base: int = 300_000,
        control_dir: Path | None = None,
        boot_args: str = BOOT_ARGS,
        boot_timeout_s: float = 60.0,
    ) -> None:
        self.kernel = _existing(kernel, "kernel")
        self.rootfs = _existing(rootfs, "rootfs")
        self.initrd = _existing(initrd, "initrd") if initrd is not None else None
        self.command = _command(firecracker)
        self.jailer = _jailer(jailer, self.command) if jailer is not None else None
        self.chroot_base = chroot_base
        self.uid_base = uid_base
        self.control_dir = control_dir
        self.boot_args = boot_args
        self.boot_timeout_s = boot_timeout_s
        mkfs = shutil.which("mkfs.ext4", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if mkfs is None:
            raise UsageError("mkfs.ext4 is not installed: apt-get install e2fsprogs")
        self.mkfs = mkfs
        self.state_dir = state_dir
        self.sandboxes: dict[str, FirecrackerSandbox] = {}
        self._slots: set[int] = set()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o711)  # passable, never listable: each VM's files are private

    @classmethod
    def from_image(cls, state_dir: Path, image: Image, **options: Any) -> FirecrackerBackend:
        """A backend booting an image of ``swarm image build``: its vmlinux and rootfs, and an
        initramfs of its boot modules with this backend's :data:`INIT` and the guest agent."""
        from swarmstack.sandbox.image import AGENT_UID
        from swarmstack.sandbox.vmfiles import pack_initramfs

        init = INIT.replace("{uid}", str(AGENT_UID)).encode()
        agent = Path(guest.__file__).read_bytes()
        digest = hashlib.sha256(image.key.encode() + init + agent).hexdigest()[:16]
        initrd = state_dir / f"initrd-{digest}.img"
        if not initrd.is_file():
            state_dir.mkdir(parents=True, exist_ok=True)
            partial = initrd.with_suffix(".partial")
            pack_initramfs(image.initramfs_tree, partial, {"init": init, "guest.py": agent})
            partial.replace(initrd)
        return cls(state_dir, kernel=image.vmlinux, rootfs=image.rootfs, initrd=initrd, **options)

    def argv(self, sandbox: FirecrackerSandbox) -> list[str]:
        """How a VM's Firecracker starts: by itself in the VM's directory, or through the
        jailer, which makes the chroot its working directory."""
        if self.jailer is None:
            return [*self.command, "--id", sandbox.id, "--api-sock", API_SOCKET]
        uid = str(sandbox.uid)
        return [
            self.jailer,
            "--id", sandbox.id,
            "--exec-file", self.command[0],
            "--uid", uid,
            "--gid", uid,
            "--chroot-base-dir", str(self.chroot_base),
            "--",
            "--api-sock", API_SOCKET,
        ]  # fmt: skip

    def kernel_args(self, spec: SandboxSpec) -> str:
        args = f"{self.boot_args} swarm.listen=vsock:{AGENT_PORT}"
        if self.control_dir is not None:
            port = spec.control_port
            args += f" swarm.forward=127.0.0.1:{port}=vsock:2:{port}"
        return args

    async def create(self, spec: SandboxSpec | None = None) -> FirecrackerSandbox:
        spec = spec or SandboxSpec()
        machine = machine_config(spec.limits)
        sandbox = self._new(spec)
        try:
            await asyncio.to_thread(self._prepare, sandbox, None)
            await self._launch(sandbox)
            api = sandbox.api
            await api.put("/machine-config", machine)
            await api.put(
                "/boot-source",
                BootSource(
                    kernel_image_path=KERNEL,
                    boot_args=self.kernel_args(spec),
                    initrd_path=INITRD if self.initrd is not None else None,
                ),
            )
            await api.put(
                "/drives/rootfs",
                Drive(
                    drive_id="rootfs", is_root_device=True, is_read_only=True, path_on_host=ROOTFS
                ),
            )
            await api.put(
                "/drives/workspace",
                Drive(
                    drive_id="workspace",
                    is_root_device=False,
                    is_read_only=False,
                    path_on_host=WORKSPACE_DRIVE,
                ),
            )
            await api.put("/vsock", Vsock(guest_cid=GUEST_CID, uds_path=VSOCK))
            await api.put("/actions", InstanceActionInfo(action_type="InstanceStart"))
            await self._wait_for_agent(sandbox)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    async def restore(self, snapshot: Snapshot) -> FirecrackerSandbox:
        """A new VM from a snapshot: a fresh Firecracker loads the state and the memory, on a
        copy of the workspace drive, and resumes."""
        if snapshot.backend != self.name or snapshot.kind != "memory":
            raise UsageError(f"a {snapshot.backend} {snapshot.kind} snapshot cannot start here")
        saved = Path(snapshot.path).parent
        missing = [n for n in (VMSTATE, MEMORY, WORKSPACE_DRIVE) if not (saved / n).is_file()]
        if missing:
            raise UsageError(f"snapshot {snapshot.id} in {saved} lacks {', '.join(missing)}")
        with contextlib.suppress(OSError, ValueError):
            taken_on = json.loads((saved / IMAGE).read_text())
            if taken_on != self.image_identity():
                # The guest kernel has the rootfs mounted: another one under it would be garbage.
                raise UsageError(
                    f"snapshot {snapshot.id} was taken on the image {taken_on.get('rootfs')}, "
                    f"not on {self.rootfs}"
                )
        sandbox = self._new(snapshot.spec)
        try:
            await asyncio.to_thread(self._prepare, sandbox, saved)
            await self._launch(sandbox)
            await sandbox.api.put(
                "/snapshot/load",
                SnapshotLoadParams(
                    snapshot_path=f"{STAGING}/{VMSTATE}",
                    mem_backend=MemoryBackend(
                        backend_type="File", backend_path=f"{STAGING}/{MEMORY}"
                    ),
                    resume_vm=True,
                    # Named here rather than trusted from the snapshot: this VM's own socket.
                    vsock_override=VsockOverride(uds_path=VSOCK),
                    # Guest time jumps to now, not to when the snapshot was taken (x86 only).
                    clock_realtime=True if platform.machine() == "x86_64" else None,
                ),
            )
            await self._wait_for_agent(sandbox)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    async def close(self) -> None:
        await asyncio.gather(*(s.destroy() for s in list(self.sandboxes.values())))

    def image_identity(self) -> dict[str, str | int]:
        """The rootfs VMs boot, as a snapshot remembers it."""
        st = self.rootfs.stat()
        return {"rootfs": str(self.rootfs), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    # -- a VM's files -------------------------------------------------------------------------

    def _new(self, spec: SandboxSpec) -> FirecrackerSandbox:
        sandbox_id = f"fc-{secrets.token_hex(6)}"
        slot = 0
        while slot in self._slots:
            slot += 1
        self._slots.add(slot)
        if self.jailer is None:
            home = root = self.state_dir / sandbox_id
            uid = None
        else:
            # The jailer's layout: <base>/<exec file name>/<id>/root is the chroot.
            home = self.chroot_base / Path(self.command[0]).name / sandbox_id
            root = home / "root"
            uid = self.uid_base + slot
        if len(str(root / f"{VSOCK}_{spec.control_port}")) > 107:
            self._slots.discard(slot)
            raise UsageError(f"{root} is too deep for a Unix socket: use a shorter state directory")
        sandbox = FirecrackerSandbox(
            self, sandbox_id, spec, slot=slot, uid=uid, home=home, root=root
        )
        self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def _release(self, sandbox: FirecrackerSandbox) -> None:
        self.sandboxes.pop(sandbox.id, None)
        self._slots.discard(sandbox.slot)

    def _prepare(self, sandbox: FirecrackerSandbox, saved: Path | None) -> None:
        """The VM's directory: the image's files, a workspace drive (new, or the snapshot's),
        and for a restore the snapshot's state and memory where Firecracker will look."""
        sandbox.home.mkdir(mode=0o711, parents=True)
        sandbox.root.mkdir(mode=0o711, exist_ok=True)
        root = sandbox.root
        if saved is None:
            self._place(self.kernel, root / KERNEL)
            if self.initrd is not None:
                self._place(self.initrd, root / INITRD)
        self._place(self.rootfs, root / ROOTFS)
        drive = root / WORKSPACE_DRIVE
        if saved is None:
            _format_workspace(self.mkfs, drive, sandbox.spec.limits.disk_mib)
        else:
            copy_sparse(saved / WORKSPACE_DRIVE, drive)
            self._make_staging(sandbox)
            for name in (VMSTATE, MEMORY):
                _link_or_copy(saved / name, root / STAGING / name)
        os.chmod(drive, 0o600)
        if sandbox.uid is not None:  # the jailed Firecracker writes the drive as its own uid
            os.chown(drive, sandbox.uid, sandbox.uid)

    def _place(self, source: Path, dest: Path) -> None:
        """An image file in the VM's directory: a symlink, or inside a jail (where a symlink
        out leads nowhere) a hard link, or a copy across filesystems."""
        if self.jailer is None:
            dest.symlink_to(source)
        else:
            _link_or_copy(source, dest)

    def _make_staging(self, sandbox: FirecrackerSandbox) -> None:
        staging = sandbox.root / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)  # guest memory: secrets
        if sandbox.uid is not None:
            os.chown(staging, sandbox.uid, sandbox.uid)

    # -- starting -----------------------------------------------------------------------------

    async def _launch(self, sandbox: FirecrackerSandbox) -> None:
        """Start Firecracker, the relay for the guest's control-plane connections, and wait
        for the API."""
        if self.control_dir is not None:
            upstream = self.control_dir / SOCKET_NAME
            listener = sandbox.root / f"{VSOCK}_{sandbox.spec.control_port}"
            sandbox.relay = await relay_unix(
                listener, lambda: asyncio.open_unix_connection(str(upstream))
            )
            if sandbox.uid is not None:
                os.chown(listener, sandbox.uid, sandbox.uid)
        log = (sandbox.home / "firecracker.log").open("ab")
        try:
            sandbox.process = subprocess.Popen(
                self.argv(sandbox),
                cwd=sandbox.root if self.jailer is None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start {self.argv(sandbox)[0]}: {exc}") from exc
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + API_TIMEOUT_S
        while True:
            self._require_alive(sandbox, "before its API came up")
            if sandbox.api.socket.exists():
                with contextlib.suppress(SandboxError):
                    await sandbox.api.describe()
                    return
            if loop.time() > deadline:
                raise SandboxError(
                    f"Firecracker's API for {sandbox.id} did not come up in "
                    f"{API_TIMEOUT_S:.0f}s: {_log(sandbox)}"
                )
            await asyncio.sleep(0.02)

    async def _wait_for_agent(self, sandbox: FirecrackerSandbox) -> None:
        probe = dataclasses.replace(sandbox.channel, timeout_s=2.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout_s
        while True:
            try:
                await probe.call("ping")
                return
            except (Unavailable, SandboxError) as exc:
                last = exc
            self._require_alive(sandbox, "while its VM started")
            if loop.time() > deadline:
                raise SandboxError(
                    f"the guest agent of {sandbox.id} did not answer on vsock within "
                    f"{self.boot_timeout_s:.0f}s ({last}); Firecracker's log: {_log(sandbox)}"
                )
            await asyncio.sleep(0.05)

    @staticmethod
    def _require_alive(sandbox: FirecrackerSandbox, when: str) -> None:
        assert sandbox.process is not None
        code = sandbox.process.poll()
        if code is not None:
            raise SandboxError(f"Firecracker exited ({code}) {when}: {_log(sandbox)}")


async def vsock_connect(uds: Path, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to the guest's vsock ``port`` through Firecracker's socket ``uds``."""
    reader, writer = await asyncio.open_unix_connection(str(uds), limit=LINE_LIMIT)
    try:
        writer.write(b"CONNECT %d\n" % port)
        await writer.drain()
        ack = await reader.readline()
    except BaseException:
        writer.close()
        raise
    if not ack.startswith(b"OK "):
        writer.close()
        raise ConnectionRefusedError(f"nothing answers on the VM's vsock port {port}")
    return reader, writer


def machine_config(limits: Limits) -> MachineConfiguration:
    """The VM's size: vCPUs rounded up from ``cpus``, memory as asked."""
    vcpus = max(1, math.ceil(limits.cpus))
    if vcpus > MAX_VCPUS:
        raise UsageError(f"a Firecracker VM has at most {MAX_VCPUS} vCPUs, not {vcpus}")
    return MachineConfiguration(vcpu_count=vcpus, mem_size_mib=limits.memory_mib)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        copy_sparse(source, dest)


def _keep(staging: Path, target: Path) -> int:
    """Move a finished snapshot out of the VM's directory; its size on disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir(mode=0o700)
    size = 0
    for name in (VMSTATE, MEMORY, WORKSPACE_DRIVE):
        try:
            os.rename(staging / name, target / name)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            copy_sparse(staging / name, target / name)
            (staging / name).unlink()
        size += (target / name).stat().st_blocks * 512
    staging.rmdir()
    return size


def _format_workspace(mkfs: str, drive: Path, size_mib: int) -> None:
    with open(drive, "wb") as f:
        f.truncate(size_mib << 20)
    result = subprocess.run(
        [mkfs, "-q", "-F", "-L", "workspace", "-E", "lazy_itable_init=1,lazy_journal_init=1",
         str(drive)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SandboxError(f"mkfs.ext4 failed on the workspace drive: {result.stderr.strip()}")


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UsageError(
            f"the {what} image {path} does not exist: build one with `swarm image build`"
        )
    return path.resolve()


def _command(firecracker: str | Sequence[str]) -> list[str]:
    argv = [firecracker] if isinstance(firecracker, str) else list(firecracker)
    if not argv:
        raise UsageError("no Firecracker command given")
    found = shutil.which(argv[0])
    if found is None:
        raise UsageError(
            f"Firecracker ({argv[0]}) is not installed: put the firecracker binary of a "
            "release on PATH"
        )
    return [os.path.abspath(found), *argv[1:]]


def _jailer(jailer: str, command: list[str]) -> str:
    found = shutil.which(jailer)
    if found is None:
        raise UsageError(f"the jailer ({jailer}) is not installed")
    if len(command) != 1:
        raise UsageError("the jailer execs one file: give Firecracker as a path, not a command")
    if "firecracker" not in Path(command[0]).name:
        raise UsageError(f"the jailer only execs a file named *firecracker*, not {command[0]}")
    return os.path.abspath(found)


def _log(sandbox: FirecrackerSandbox) -> str:
    with contextlib.suppress(OSError):
        text = (sandbox.home / "firecracker.log").read_text(errors="replace").strip()
        return text[-800:] or "no output"
    return "no output"
