"""The QEMU backend: a sandbox is a ``-M microvm`` virtual machine booting the project's image.

Each VM boots the image's kernel with an initramfs this backend packs (the image's busybox and
boot modules, plus its own ``/init`` and the guest agent). It has two disks: the image's root
file system, shared by every VM and attached read-only, and its own workspace disk — an ext4
file of ``disk_mib`` that also carries the VM's seed (``.swarm/``: the agent's token and the
environment), out of the agent's sight. ``/tmp``, ``/run``, ``/var/tmp`` and ``$HOME`` are
fresh tmpfs. The agent runs as the unprivileged ``agent`` user (uid 1000), limited to ``pids``
processes; memory and cpus are the VM's own size.

Network: QEMU's user networking with ``restrict=on`` — the guest reaches nothing, neither the
host nor beyond — and two exceptions: the host forwards a port on its 127.0.0.1 to the guest
agent (every request carries the VM's token, so other local users cannot drive it), and the
guest's ``10.0.2.100:<control_port>`` is forwarded to the control-plane relay's Unix socket;
inside, the guest agent exposes that as ``http://127.0.0.1:<control_port>``.

KVM is used only when a probe VM boots with it; otherwise TCG, software emulation. Snapshots
are QEMU's migration stream (the machine, memory included) written to a file, with a copy of the
workspace disk; a restore starts a new QEMU with ``-incoming`` from that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import py_compile
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from qemu.qmp import QMPClient

from swarmstack.errors import Conflict, UsageError
from swarmstack.sandbox import guest
from swarmstack.sandbox.base import (
    LINE_LIMIT,
    Backend,
    GuestChannel,
    Sandbox,
    SandboxError,
    SandboxSpec,
    Snapshot,
)
from swarmstack.sandbox.image import AGENT_UID, Image, find_image
from swarmstack.sandbox.relay import SOCKET_NAME
from swarmstack.sandbox.vmfiles import copy_sparse, make_ext4, pack_initramfs

GUEST_PORT = 7000
CONTROL_ADDR = "10.0.2.100"
BOOT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 8.0
Accel = Literal["kvm", "tcg"]

# Kernel arguments: quiet, no hardware the microvm lacks, no slow checks under emulation.
KERNEL_ARGS = (
    "console=ttyS0 quiet loglevel=3 rdinit=/init reboot=t panic=-1 "
    "tsc=reliable no_timer_check mitigations=off random.trust_cpu=on "
    "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd nokaslr edd=off "
    # Under emulation the crypto self-tests take over a second of every boot, and zeroing
    # each allocation about half of one; neither guards anything a throwaway VM keeps.
    "cryptomgr.notests init_on_alloc=0"
)
# The image's boot modules that this backend's VMs do without (no vsock, no virtio console).
UNUSED_MODULES = (
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
)

# PID 1 in the initramfs: load the modules, mount the disks, set up the network and the tmpfs
# directories, write the start script, and switch to the image's root.
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot /disk
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /$m 2>/dev/null; done
fail() { echo "swarm-init: $*" > /dev/ttyS0; poweroff -f; }
root=$(findfs LABEL=swarm-root) || fail "no root disk"
disk=$(findfs LABEL=swarm-disk) || fail "no workspace disk"
mount -t ext4 -o ro $root /newroot || fail "cannot mount the root"
for d in tmp var/tmp; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/$d; done
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run
mount -t tmpfs -o mode=700,uid=1000,gid=1000,nosuid,nodev tmpfs /newroot/home/agent
mkdir -p /newroot/run/swarm/disk
chmod 700 /newroot/run/swarm/disk
mount -t ext4 -o nosuid,nodev $disk /newroot/run/swarm/disk || fail "cannot mount the disk"
mount --bind /newroot/run/swarm/disk/workspace /newroot/workspace
cp /guest.py /newroot/run/swarm/guest.py
[ -f /guest.pyc ] && cp /guest.pyc /newroot/run/swarm/guest.pyc
cp /newroot/run/swarm/disk/.swarm/token /newroot/run/swarm/token
chown 1000:1000 /newroot/run/swarm/token
chmod 400 /newroot/run/swarm/token
cp /newroot/run/swarm/disk/.swarm/env /newroot/run/swarm/env
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
cat > /newroot/run/swarm/start <<'EOF'
#!/bin/sh
. /run/swarm/env
export SWARM_GUEST_TOKEN_FILE=/run/swarm/token
agent=/run/swarm/guest.py
[ -f /run/swarm/guest.pyc ] && agent=/run/swarm/guest.pyc
while :; do
  prlimit --nproc="$SWARM_GUEST_PIDS" \
    setpriv --reuid=1000 --regid=1000 --clear-groups --inh-caps=-all \
    python3 -I -S "$agent" --listen tcp:0.0.0.0:7000 $SWARM_GUEST_FORWARD \
    > /dev/ttyS0 2>&1
  sleep 0.2
done
EOF
chmod 755 /newroot/run/swarm/start
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/sh /run/swarm/start
"""

# Relays one guest connection (on stdin/stdout, as QEMU's guestfwd hands it over) to the
# control-plane relay's Unix socket.
STDIO_RELAY = r"""import os, socket, sys, threading
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def back():
    while data := s.recv(65536):
        os.write(1, data)
    os._exit(0)
threading.Thread(target=back, daemon=True).start()
while data := os.read(0, 65536):
    s.sendall(data)
s.shutdown(socket.SHUT_WR)
threading.Event().wait()
"""


def find_qemu() -> str:
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        raise UsageError("QEMU is not installed: apt-get install qemu-system-x86")
    return path


class QemuSandbox(Sandbox):
    backend = "qemu"
    isolation = "vm"

    def __init__(
        self,
        owner: QemuBackend,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        home: Path,
        token: str,
        host_port: int,
    ) -> None:
        channel = GuestChannel(
            lambda: asyncio.open_connection("127.0.0.1", host_port, limit=LINE_LIMIT),
            token=token,
        )
        super().__init__(sandbox_id, spec, channel)
        self.owner = owner
        self.home = home
        self.token = token
        self.host_port = host_port
        self.process: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None
        self.boot_s = 0.0

    @property
    def disk(self) -> Path:
        return self.home / "disk.ext4"

    def enforced(self) -> list[str]:
        return ["memory", "cpu", "pids", "disk"]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def _qmp(self, command: str, **args: Any) -> Any:
        if self.qmp is None:
            raise SandboxError(f"sandbox {self.id} has no QEMU monitor")
        try:
            return await self.qmp.execute(command, args or None)
        except Exception as exc:  # the QMP library's own error types
            raise SandboxError(f"QEMU refused {command}: {exc}") from exc

    async def pause(self) -> None:
        self._require_running()
        await self._qmp("stop")
        self.state = "paused"

    async def resume(self) -> None:
        if self.state != "paused":
            raise Conflict(f"sandbox {self.id} is {self.state}, not paused")
        await self._qmp("cont")
        self.state = "running"

    async def snapshot(self, directory: Path) -> Snapshot:
        """The whole machine: QEMU's migration stream and a copy of the workspace disk."""
        if self.state == "destroyed":
            raise Conflict(f"sandbox {self.id} is destroyed")
        directory = directory / f"snap-{secrets.token_hex(6)}"
        directory.mkdir(parents=True)
        was_running = self.state == "running"
        if was_running:
            await self._qmp("stop")
        try:
            state_file = directory / "vmstate"
            await self._qmp("migrate", uri=f"exec:cat > {shlex.quote(str(state_file))}")
            await self._wait_migration()
            await asyncio.to_thread(copy_sparse, self.disk, directory / "disk.ext4")
        finally:
            if was_running:
                await self._qmp("cont")
        meta = {"token": self.token, "memory_mib": self.spec.limits.memory_mib}
        meta_file = directory / "meta.json"
        meta_file.write_text(json.dumps(meta))
        meta_file.chmod(0o600)
        size = sum(p.stat().st_blocks * 512 for p in directory.iterdir())  # disks are sparse
        return Snapshot(
            id=directory.name,
            backend=self.backend,
            kind="memory",
            path=str(directory),
            spec=self.spec,
            created_at=time.time(),
            size_bytes=size,
        )

    async def _wait_migration(self) -> None:
        while True:
            status = await self._qmp("query-migrate")
            state = status.get("status")
            if state == "completed":
                return
            if state in ("failed", "cancelled"):
                raise SandboxError(f"the snapshot failed: {status.get('error-desc', state)}")
            await asyncio.sleep(0.02)

    async def destroy(self) -> None:
        if self.state == "destroyed":
            return
        self.state = "destroyed"
        await self._stop()
        self.owner.forget(self)
        await asyncio.to_thread(shutil.rmtree, self.home, True)

    async def _stop(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                await self.qmp.disconnect()
            self.qmp = None
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class QemuBackend(Backend):
    name = "qemu"
    isolation = "vm"

    def __init__(
        self,
        state_dir: Path,
        *,
        image: Image | None = None,
        images_dir: Path | None = None,
        control_dir: Path | None = None,
        accel: Literal["auto", "kvm", "tcg"] = "auto",
        qemu: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self._image = image
        self.images_dir = images_dir
        self.control_dir = control_dir
        self.requested_accel = accel
        self.qemu = qemu
        self.accel: Accel | None = None if accel == "auto" else accel
        self.accel_reason = "" if accel == "auto" else f"{accel} was asked for"
        self.sandboxes: dict[str, QemuSandbox] = {}
        self._initrd: Path | None = None
        self._lock = asyncio.Lock()

    @property
    def image(self) -> Image:
        if self._image is None:
            self._image = find_image(self.images_dir)
        return self._image

    async def prepare(self) -> None:
        """Find QEMU, pack the initramfs and settle KVM or TCG (a probe VM); done once."""
        async with self._lock:
            if self.qemu is None:
                self.qemu = find_qemu()
            if self._initrd is None:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                self._initrd = await asyncio.to_thread(self._pack_initrd)
            if self.accel is None:
                self.accel, self.accel_reason = await self._probe_accel()

    def _pack_initrd(self) -> Path:
        guest_source = Path(guest.__file__).read_bytes()
        unused = [m for m in self.image.modules() if Path(m).stem in UNUSED_MODULES]
        order = "".join(f"{m}\n" for m in self.image.modules() if m not in unused).encode()
        files = {"init": INIT.encode(), "guest.py": guest_source, "modules.order": order}
        if self.image.python_version == "{}.{}".format(*sys.version_info[:2]):
            files["guest.pyc"] = compiled(guest_source)
        digest = hashlib.sha256(self.image.key.encode())
        for name, data in sorted(files.items()):
            digest.update(name.encode() + b"\0" + data)
        target = self.state_dir / f"initrd-{digest.hexdigest()[:16]}.img"
        if not target.exists():
            partial = target.with_suffix(".partial")
            pack_initramfs(self.image.initramfs_tree, partial, files, leave_out=unused)
            partial.rename(target)
        return target

    async def _probe_accel(self) -> tuple[Accel, str]:
        """Boot a VM that only says it booted, under KVM; a stall or a failure means TCG."""
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg", "/dev/kvm cannot be opened: TCG (software emulation)"
        probe_init = (
            "#!/bin/busybox sh\n/bin/busybox echo swarm-probe-ok > /dev/ttyS0\n"
            "/bin/busybox poweroff -f\n"
        )
        with tempfile.TemporaryDirectory(dir=self.state_dir) as tmp:
            initrd = Path(tmp) / "probe.img"
            await asyncio.to_thread(
                pack_initramfs, self.image.initramfs_tree, initrd, {"init": probe_init.encode()}
            )
            log = Path(tmp) / "serial.log"
            assert self.qemu is not None
            argv = [
                self.qemu, "-M", "microvm,accel=kvm", "-cpu", "host", "-m", "128",
                "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-kernel", str(self.image.kernel), "-initrd", str(initrd),
                "-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
                "-serial", f"file:{log}",
            ]  # fmt: skip
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                _, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return "tcg", (
                    f"a KVM probe VM did not boot within {PROBE_TIMEOUT_S:.0f} s "
                    "(nested KVM stalls guests): TCG (software emulation)"
                )
            if log.exists() and "swarm-probe-ok" in log.read_text(errors="replace"):
                took = time.monotonic() - started
                return "kvm", f"a KVM probe VM booted in {took:.2f} s"
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return "tcg", f"a KVM probe VM failed ({reason[0]}): TCG (software emulation)"

    def forget(self, sandbox: QemuSandbox) -> None:
        self.sandboxes.pop(sandbox.id, None)

    # -- create and restore -----------------------------------------------------------------

    async def create(self, spec: SandboxSpec | None = None) -> QemuSandbox:
        spec = spec or SandboxSpec()
        if spec.image is not None:
            self._image = find_image(self.images_dir, spec.image)
        await self.prepare()
        sandbox_id = "q" + secrets.token_hex(6)
        home = self.state_dir / sandbox_id
        home.mkdir(mode=0o700, parents=True)
        token = secrets.token_urlsafe(24)
        try:
            await asyncio.to_thread(self._make_disk, home, spec, token)
            return await self._launch(sandbox_id, spec, home, token, incoming=None)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise

    async def restore(self, snapshot: Snapshot) -> QemuSandbox:
        if snapshot.backend != self.name or snapshot.kind != "memory":
            raise UsageError(f"snapshot {snapshot.id} was not made by the qemu backend")
        source = Path(snapshot.path)
        meta = json.loads((source / "meta.json").read_text())
        await self.prepare()
        sandbox_id = "q" + secrets.token_hex(6)
        home = self.state_dir / sandbox_id
        home.mkdir(mode=0o700, parents=True)
        try:
            await asyncio.to_thread(copy_sparse, source / "disk.ext4", home / "disk.ext4")
            return await self._launch(
                sandbox_id, snapshot.spec, home, meta["token"], incoming=source / "vmstate"
            )
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise

    def _make_disk(self, home: Path, spec: SandboxSpec, token: str) -> None:
        seed = home / "seed"
        (seed / ".swarm").mkdir(parents=True)
        (seed / "workspace").mkdir()
        os.chown(seed / "workspace", AGENT_UID, AGENT_UID)
        (seed / ".swarm" / "token").write_text(token)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/home/agent",
            "LANG": "C.UTF-8",
            "USER": "agent",
            "SWARM_WORKSPACE": "/workspace",
            "SWARM_SANDBOX_ID": home.name,
            **spec.env,
        }
        port = spec.control_port
        env["SWARM_API_URL"] = f"http://127.0.0.1:{port}"
        forward = ""
        if self.control_dir is not None:
            forward = f"--forward 127.0.0.1:{port}=tcp:{CONTROL_ADDR}:{port}"
        lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        lines.append(f"SWARM_GUEST_PIDS={spec.limits.pids}")
        lines.append(f"SWARM_GUEST_FORWARD={shlex.quote(forward)}")
        (seed / ".swarm" / "env").write_text("\n".join(lines) + "\n")
        make_ext4(seed, home / "disk.ext4", spec.limits.disk_mib, label="swarm-disk")
        shutil.rmtree(seed)

    def _argv(self, spec: SandboxSpec, home: Path, host_port: int) -> list[str]:
        assert self.qemu is not None and self._initrd is not None and self.accel is not None
        netdev = f"user,id=net,restrict=on,hostfwd=tcp:127.0.0.1:{host_port}-:{GUEST_PORT}"
        if self.control_dir is not None:
            relay = home / "relay.py"
            relay.write_text(STDIO_RELAY)
            target = shlex.quote(str(self.control_dir / SOCKET_NAME))
            command = f"{shlex.quote(self._python())} -I -S {shlex.quote(str(relay))} {target}"
            netdev += f",guestfwd=tcp:{CONTROL_ADDR}:{spec.control_port}-cmd:{command}"
        cpus = max(1, math.ceil(spec.limits.cpus))
        machine = f"microvm,accel={self.accel}"
        return [
            self.qemu, "-M", machine,
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-smp", str(cpus), "-m", str(spec.limits.memory_mib),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            # The uncompressed kernel boots through its PVH entry: no decompression, which
            # under TCG saves about 3 s.
            "-kernel", str(self.image.vmlinux), "-initrd", str(self._initrd),
            "-append", KERNEL_ARGS + _tsc_arg(),
            "-serial", f"file:{home / 'serial.log'}",
            "-drive", f"id=root,file={self.image.rootfs},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
            "-drive", f"id=disk,file={home / 'disk.ext4'},format=raw,if=none,cache=unsafe",
            "-device", "virtio-blk-device,drive=disk",
            "-netdev", netdev, "-device", "virtio-net-device,netdev=net",
            "-qmp", f"unix:{home / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip

    @staticmethod
    def _python() -> str:
        """The relay's interpreter: this one (a ``python3`` found on ``$PATH`` may be a shim
        that costs tens of milliseconds for every connection)."""
        return sys.executable or shutil.which("python3") or "/usr/bin/python3"

    async def _launch(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        home: Path,
        token: str,
        *,
        incoming: Path | None,
    ) -> QemuSandbox:
        host_port = _free_port()
        sandbox = QemuSandbox(self, sandbox_id, spec, home=home, token=token, host_port=host_port)
        argv = self._argv(spec, home, host_port)
        if incoming is not None:
            argv += ["-incoming", f"exec:cat {shlex.quote(str(incoming))}"]
        started = time.monotonic()
        log = (home / "qemu.log").open("wb")
        try:
            sandbox.process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()
        self.sandboxes[sandbox_id] = sandbox
        try:
            sandbox.qmp = await self._monitor(sandbox, home / "qmp.sock")
            if incoming is not None:
                await self._wait_running(sandbox)
            await self._wait_guest(sandbox, started)
        except BaseException:
            await sandbox.destroy()
            raise
        sandbox.boot_s = time.monotonic() - started
        return sandbox

    async def _monitor(self, sandbox: QemuSandbox, path: Path) -> QMPClient:
        deadline = time.monotonic() + 10
        while True:
            self._check_alive(sandbox)
            if path.exists():
                client = QMPClient(sandbox.id)
                try:
                    await client.connect(str(path))
                    return client
                except Exception:
                    if time.monotonic() > deadline:
                        raise
            if time.monotonic() > deadline:
                raise SandboxError(f"QEMU for {sandbox.id} opened no monitor socket")
            await asyncio.sleep(0.01)

    async def _wait_running(self, sandbox: QemuSandbox) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            status = await sandbox._qmp("query-status")
            if status.get("status") == "running":
                return
            if status.get("status") in ("postmigrate", "paused", "prelaunch") and not status.get(
                "running"
            ):
                # Incoming migration done but not started (older QEMUs): start it.
                migrate = await sandbox._qmp("query-migrate")
                if migrate.get("status") == "completed":
                    await sandbox._qmp("cont")
                    return
            self._check_alive(sandbox)
            await asyncio.sleep(0.01)
        raise SandboxError(f"the restored VM {sandbox.id} did not start")

    async def _wait_guest(self, sandbox: QemuSandbox, started: float) -> None:
        quick = GuestChannel(sandbox.channel.connect, timeout_s=2.0, token=sandbox.token)
        while True:
            self._check_alive(sandbox)
            with contextlib.suppress(Exception):
                await quick.call("ping")
                return
            if time.monotonic() - started > BOOT_TIMEOUT_S:
                raise SandboxError(
                    f"the VM {sandbox.id} did not answer within {BOOT_TIMEOUT_S:.0f} s"
                    + _tail(sandbox.home / "serial.log")
                )
            await asyncio.sleep(0.02)

    def _check_alive(self, sandbox: QemuSandbox) -> None:
        if sandbox.process is not None and sandbox.process.returncode is not None:
            raise SandboxError(
                f"QEMU for {sandbox.id} exited with {sandbox.process.returncode}"
                + _tail(sandbox.home / "qemu.log")
                + _tail(sandbox.home / "serial.log")
            )

    async def close(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await sandbox.destroy()


def compiled(source: bytes) -> bytes:
    """``source`` as a .pyc file of this Python, for a guest whose Python is the same version:
    compiling the agent at every boot costs about 0.1 s under emulation."""
    with tempfile.TemporaryDirectory() as tmp:
        py, pyc = Path(tmp) / "guest.py", Path(tmp) / "guest.pyc"
        py.write_bytes(source)
        py_compile.compile(
            str(py),
            str(pyc),
            dfile="/run/swarm/guest.py",
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        return pyc.read_bytes()


def _tsc_arg() -> str:
    """The host's TSC frequency for the guest kernel. Under TCG a guest reads the host's TSC,
    and calibrating it against the emulated PIT fails when the host is busy, which leaves the
    kernel without a clock source, stalled at boot."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return f" tsc_early_khz={round(float(line.split(':')[1]) * 1000)}"
    return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    if not text:
        return ""
    return f"\n{path.name}:\n" + "\n".join(text.splitlines()[-lines:])
