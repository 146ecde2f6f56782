"""The agent inside every sandbox: runs commands and touches workspace files for the host.

One file, standard library only, so it runs under whatever ``python3`` a sandbox has (the host's
``/usr`` under bubblewrap, the image's inside a VM). Every backend talks to it the same way; only
the channel differs: a Unix socket bind-mounted out of a bubblewrap sandbox, vsock out of a
Firecracker VM (``--listen vsock:PORT``), a forwarded TCP port or a serial port out of a QEMU VM.

Protocol: one request per connection. The host sends one JSON line; the agent answers with JSON
lines. ``exec`` streams ``{"stream": "stdout"|"stderr", "data": <base64>}`` lines and ends with
``{"exit": N, "timed_out": bool}``; every other operation answers one line, ``{"ok": true, ...}``
or ``{"ok": false, "error": <code>, "message": <text>}``.

It also carries the control plane into the sandbox: ``--forward 127.0.0.1:PORT=unix:PATH``
listens on the sandbox's own loopback and splices each connection to a Unix socket that the host
relays to the control plane — the only way out of a sandbox without a network. In a VM the target
is the host's end of vsock, ``vsock:2:PORT`` (CID 2 is the host).

A VM's init cannot be handed arguments by the host, so ``--boot-args /proc/cmdline`` takes them
from the kernel command line: ``swarm.listen=X`` is ``--listen X``, ``swarm.forward=Y`` is
``--forward Y``.
"""

from __future__ import annotations

import _thread
import os


def _join_cgroups(fds: list[int], done: _thread.LockType, failed: list[str]) -> None:
    """Move this process into the sandbox's cgroups: ``fds`` are their ``cgroup.procs``
    files, opened for writing by the host and inherited. Writing ``0`` moves the writer."""
    try:
        for fd in fds:
            try:
                os.write(fd, b"0")
            except OSError as exc:
                failed.append(f"fd {fd}: {exc.strerror}")
            finally:
                os.close(fd)
    finally:
        done.release()


def _start_joining() -> tuple[_thread.LockType, list[str]] | None:
    """Start the cgroup join at once, in a thread of its own, when the host asked for one
    (``SWARM_GUEST_CGROUP_FDS``). On a cgroup v1 host the first move after a quiet spell waits
    for an RCU grace period (5-12 ms); here it passes while the imports below load. The agent
    forks nothing before it is done (see :func:`main`), so every command is born inside."""
    given = os.environ.get("SWARM_GUEST_CGROUP_FDS", "")
    if not given:
        return None
    done, failed = _thread.allocate_lock(), []
    done.acquire()
    try:
        fds = [int(fd) for fd in given.split(",")]
    except ValueError:
        failed.append(f"SWARM_GUEST_CGROUP_FDS={given!r} is no list of descriptors")
        done.release()
        return done, failed
    _thread.start_new_thread(_join_cgroups, (fds, done, failed))
    return done, failed


JOINING = _start_joining()

import base64  # noqa: E402  (these load while the join above waits)
import contextlib  # noqa: E402
import json  # noqa: E402
import selectors  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

# Every import is paid at each VM's boot, under emulation where there is no KVM: typing (and
# hmac, which loads OpenSSL) cost more there than everything they give this file.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Send = Callable[[dict[str, Any]], None]

WORKSPACE = os.path.realpath(os.environ.get("SWARM_WORKSPACE", "/workspace"))
CHUNK = 65536
MAX_REQUEST = 96 << 20  # a 64 MiB file, base64-encoded, and the rest of its request
# What a command sees unless the request names its own environment (the sandbox's is scrubbed).
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_GUEST_")}


def _read_token() -> str:
    """A secret every request must carry, when the channel is one that others could reach (a
    VM's forwarded TCP port): read from the file ``SWARM_GUEST_TOKEN_FILE`` names."""
    path = os.environ.get("SWARM_GUEST_TOKEN_FILE")
    if not path:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


TOKEN = _read_token().encode()


def same_secret(given: bytes, secret: bytes) -> bool:
    """Compare in time that depends on the lengths alone (hmac.compare_digest's contract)."""
    if len(given) != len(secret):
        return False
    diff = 0
    for a, b in zip(given, secret, strict=True):
        diff |= a ^ b
    return diff == 0


class Refused(Exception):
    """A request the agent will not carry out; ``code`` is a stable word for the host."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- paths -------------------------------------------------------------------------------------


def inside(path: str) -> bool:
    return path == WORKSPACE or path.startswith(WORKSPACE + "/")


def resolve(relative: str, *, follow_last: bool = True) -> str:
    """A workspace-relative path as an absolute one that stays inside the workspace.

    Absolute paths, ``..``, NUL bytes and symlinks that lead out are refused. With
    ``follow_last`` false the last component is not followed (to delete a symlink itself)."""
    if not isinstance(relative, str) or "\0" in relative:
        raise Refused("bad_path", "a path must be a string without NUL bytes")
    if relative.startswith("/"):
        raise Refused("bad_path", f"{relative!r} is absolute: paths are relative to the workspace")
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused("bad_path", f"{relative!r} climbs out with '..'")
    joined = os.path.join(WORKSPACE, *parts)
    if follow_last or not parts:
        real = os.path.realpath(joined)
    else:
        real = os.path.join(os.path.realpath(os.path.dirname(joined)), parts[-1])
    if not inside(real):
        raise Refused("outside_workspace", f"{relative!r} leads outside the workspace")
    return real


def entry(path: str, name: str) -> dict[str, object]:
    st = os.lstat(path)
    kind = (
        "dir"
        if stat.S_ISDIR(st.st_mode)
        else "file"
        if stat.S_ISREG(st.st_mode)
        else "symlink"
        if stat.S_ISLNK(st.st_mode)
        else "other"
    )
    return {
        "name": name,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


# -- operations --------------------------------------------------------------------------------


def op_ping(req: dict[str, Any], send: Send) -> None:
    send({"ok": True, "pid": os.getpid(), "uid": os.getuid(), "workspace": WORKSPACE})


def op_read(req: dict[str, Any], send: Send) -> None:
    path = resolve(req["path"])
    limit = int(req.get("limit") or 64 << 20)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise Refused("not_found", f"no file {req['path']!r}") from None
    except IsADirectoryError:
        raise Refused("is_a_directory", f"{req['path']!r} is a directory") from None
    if len(data) > limit:
        raise Refused("too_large", f"{req['path']!r} is larger than {limit} bytes")
    send({"ok": True, "data": base64.b64encode(data).decode()})


def op_write(req: dict[str, Any], send: Send) -> None:
    path = resolve(req["path"])
    if path == WORKSPACE:
        raise Refused("bad_path", "cannot write the workspace itself")
    data = base64.b64decode(req.get("data") or "")
    mode = int(req.get("mode") or 0o644) & 0o777
    if req.get("parents", True):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        resolve(os.path.relpath(os.path.dirname(path), WORKSPACE))  # made dirs stay inside
    tmp = f"{path}.swarm-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)  # whole or not at all
    except IsADirectoryError:
        raise Refused("is_a_directory", f"{req['path']!r} is a directory") from None
    except FileNotFoundError:
        raise Refused("not_found", f"no directory for {req['path']!r}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    send({"ok": True, "size": len(data)})


def op_list(req: dict[str, Any], send: Send) -> None:
    path = resolve(req.get("path") or ".")
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        raise Refused("not_found", f"no directory {req.get('path')!r}") from None
    except NotADirectoryError:
        names = None
    if names is None:
        send({"ok": True, "entries": [entry(path, os.path.basename(path))]})
        return
    send({"ok": True, "entries": [entry(os.path.join(path, n), n) for n in names]})


def op_delete(req: dict[str, Any], send: Send) -> None:
    path = resolve(req["path"], follow_last=False)
    if path == WORKSPACE:
        raise Refused("bad_path", "cannot delete the workspace itself")
    if not os.path.lexists(path):
        raise Refused("not_found", f"no file {req['path']!r}")
    if os.path.isdir(path) and not os.path.islink(path):
        if not req.get("recursive"):
            raise Refused("is_a_directory", f"{req['path']!r} is a directory: delete recursively")
        remove_tree(path)
    else:
        os.unlink(path)
    send({"ok": True})


def remove_tree(path: str) -> None:
    """Delete a directory without following a symlink out of it."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(path)


def _first_to_die(pid: int) -> None:
    """The kernel's OOM killer takes a command before the agent. Set from here, just after the
    start, not in the child before exec: a function to run in the child makes Python fork
    instead of vfork, which costs 3 ms a command on a host and 20 ms in an emulated VM."""
    with contextlib.suppress(OSError):  # an OSError: it has ended already
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"1000")
        finally:
            os.close(fd)


def op_exec(req: dict[str, Any], send: Send) -> None:
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise Refused("bad_request", "argv must be a non-empty list of strings")
    cwd = resolve(req.get("cwd") or ".")
    env = req.get("env")
    env = dict(BASE_ENV) if env is None else {**BASE_ENV, **env}
    timeout = req.get("timeout")
    stdin = req.get("stdin")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        send({"exit": 127, "timed_out": False, "error": f"command not found: {argv[0]}"})
        return
    except PermissionError:
        send({"exit": 126, "timed_out": False, "error": f"permission denied: {argv[0]}"})
        return
    _first_to_die(proc.pid)
    if stdin is not None:
        threading.Thread(target=_feed, args=(proc, base64.b64decode(stdin)), daemon=True).start()
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    timed_out = False
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    try:
        while sel.get_map():
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = sel.select(wait)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                _kill_group(proc)
                deadline = None  # drain what is left, then report
                continue
            for key, _ in ready:
                data = os.read(key.fd, CHUNK)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                send({"stream": key.data, "data": base64.b64encode(data).decode()})
        code = proc.wait()
    except (BrokenPipeError, ConnectionResetError):
        _kill_group(proc)  # the host went away: leave nothing running on its behalf
        proc.wait()
        raise
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    send({"exit": code if code >= 0 else 128 - code, "timed_out": timed_out})


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


OPS = {
    "ping": op_ping,
    "read": op_read,
    "write": op_write,
    "list": op_list,
    "delete": op_delete,
    "exec": op_exec,
}


# -- serving -----------------------------------------------------------------------------------


def handle(conn: socket.socket) -> None:
    with conn:
        stream = conn.makefile("rb")
        lock = threading.Lock()

        def send(obj: dict[str, Any]) -> None:
            line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
            with lock:
                conn.sendall(line)

        try:
            line = stream.readline(MAX_REQUEST)
            if not line:
                return
            req = json.loads(line)
            if TOKEN and not (
                isinstance(req, dict) and same_secret(str(req.get("token", "")).encode(), TOKEN)
            ):
                raise Refused("unauthorized", "this agent needs its sandbox's token")
            op = OPS.get(str(req.get("op"))) if isinstance(req, dict) else None
            if op is None:
                raise Refused("bad_request", f"unknown operation {req!r:.80}")
            op(req, send)
        except Refused as exc:
            send({"ok": False, "error": exc.code, "message": exc.message})
        except (BrokenPipeError, ConnectionResetError):
            return
        except (KeyError, TypeError, ValueError) as exc:
            send({"ok": False, "error": "bad_request", "message": f"malformed request: {exc}"})
        except OSError as exc:
            send({"ok": False, "error": "os_error", "message": f"{exc.strerror or exc}"})


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        _spawn(handle, conn)


def _spawn(target: Callable[..., None], conn: socket.socket, *args: Any) -> None:
    """Handle ``conn`` in a thread of its own. When the sandbox is out of processes (a fork
    bomb at its limit) no thread can start: drop that one connection and keep serving."""
    try:
        threading.Thread(target=target, args=(conn, *args), daemon=True).start()
    except RuntimeError:
        conn.close()
        time.sleep(0.01)


def forward(listener: socket.socket, target: str) -> None:
    """Splice every connection to ``listener`` to ``target`` (see :func:`address`)."""
    while True:
        conn, _ = listener.accept()
        _spawn(_splice_pair, conn, target)


def _splice_pair(conn: socket.socket, target: str) -> None:
    family, where = address(target)
    upstream = socket.socket(family, socket.SOCK_STREAM)
    with conn, upstream:
        try:
            upstream.connect(where)
        except OSError:
            return
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy until ``src`` ends, then pass the end on (half-close) to ``dst``."""
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def address(spec: str) -> tuple[socket.AddressFamily, Any]:
    """A socket family and address: ``unix:/path``, ``tcp:HOST:PORT``, ``vsock:CID:PORT``, or
    ``vsock:PORT`` (any CID: to listen on inside a VM)."""
    kind, _, where = spec.partition(":")
    try:
        if kind == "unix" and where:
            return socket.AF_UNIX, where
        if kind == "tcp":
            host, _, port = where.rpartition(":")
            return socket.AF_INET, (host, int(port))
        if kind == "vsock":
            cid, _, port = where.rpartition(":")
            return socket.AF_VSOCK, (int(cid) if cid else socket.VMADDR_CID_ANY, int(port))
    except ValueError:
        pass
    raise ValueError(f"{spec!r} is no address: use unix:/path, tcp:host:port or vsock:[cid:]port")


def listen(spec: str) -> socket.socket:
    """A listening socket on ``unix:/path``, ``tcp:HOST:PORT`` or ``vsock:PORT``."""
    family, where = address(spec)
    if family == socket.AF_UNIX and os.path.lexists(where):
        os.unlink(where)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(where)
    sock.listen(128)
    return sock


def from_boot_args(cmdline: str) -> list[str]:
    """The ``--listen`` and ``--forward`` arguments a kernel command line carries."""
    argv: list[str] = []
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == "swarm.listen":
            argv += ["--listen", value]
        elif key == "swarm.forward":
            argv += ["--forward", value]
    return argv


def main(argv: list[str]) -> int:
    expanded: list[str] = []
    given = iter(argv)
    for arg in given:
        if arg == "--boot-args":
            with open(next(given)) as f:
                expanded += from_boot_args(f.read())
        else:
            expanded.append(arg)
    listen_on = None
    forwards: list[tuple[str, str]] = []
    args = iter(expanded)
    for arg in args:
        if arg == "--listen":
            listen_on = next(args)
        elif arg == "--forward":
            local, _, target = next(args).partition("=")
            forwards.append((local, target))
        else:
            raise SystemExit(f"unknown argument {arg!r}")
    if listen_on is None:
        raise SystemExit(
            "usage: guest.py --listen unix:/path|tcp:HOST:PORT|vsock:PORT "
            "[--forward HOST:PORT=unix:/path|tcp:HOST:PORT|vsock:CID:PORT] "
            "[--boot-args /proc/cmdline]"
        )
    for local, target in forwards:
        try:
            address(target)
            sock = listen(f"tcp:{local}")
        except ValueError as exc:
            raise SystemExit(f"cannot forward {local}={target}: {exc}") from None
        threading.Thread(target=forward, args=(sock, target), daemon=True).start()
    try:
        listener = listen(listen_on)
    except ValueError as exc:
        raise SystemExit(f"cannot listen: {exc}") from None
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if JOINING is not None:
        done, failed = JOINING
        done.acquire()
        if failed:
            sys.stdout.write(f"swarm-guest cgroup-join-failed: {'; '.join(failed)}\n")
            sys.stdout.flush()
            return 3
    sys.stdout.write("swarm-guest ready\n")
    sys.stdout.flush()
    serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
