"""``swarm vm``: sandboxes through the API — start, run commands, copy files, save, destroy.

A file in a sandbox is written ``ID:path`` (the path relative to its workspace), as with
``scp``: ``swarm vm cp notes.txt sbx-1a2b:docs/``, ``swarm vm cp sbx-1a2b:out.log -``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from swarmstack.cli.common import (
    ApiOption,
    JsonOption,
    TokenOption,
    client,
    console,
    err_console,
    fail,
    guarded,
    print_json,
)
from swarmstack.errors import SwarmError
from swarmstack.sandbox.base import Exit, Limits, SandboxInfo, SandboxSpec
from swarmstack.sandbox.paths import check_path

if TYPE_CHECKING:
    from swarmstack.client import SwarmClient

app = typer.Typer(
    help="Start sandboxes, run commands and copy files in them, snapshot, restore, destroy.",
    no_args_is_help=True,
)

# ``ID:path``; a local path with a colon in its first part can be written ``./a:b``.
_REMOTE = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(?P<path>.*)$", re.DOTALL)
TIMED_OUT = 124  # what timeout(1) exits with

QuietOption = typer.Option(False, "--quiet", "-q", help="Print only the new sandbox's id.")


def _remote(arg: str) -> tuple[str, str] | None:
    match = _REMOTE.match(arg)
    return (match["id"], match["path"]) if match else None


def _env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--env wants NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def _age(ts: float) -> str:
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _said(info: SandboxInfo, what: str) -> None:
    console.print(f"{info.id} {what} ({info.backend}, {info.isolation} isolation)", highlight=False)


# -- listing -------------------------------------------------------------------------------------


@app.command("ls")
@guarded
def list_vms(
    target: str | None = typer.Argument(
        None, help="ID or ID:path to list files in a sandbox; nothing to list the sandboxes."
    ),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """List the sandboxes, or the files in one (ID:path)."""
    with client(api, token) as api_client:
        if target is not None:
            sandbox_id, path = _remote(target) or (target, ".")
            entries = api_client.list_files(sandbox_id, path or ".")
            if json_out:
                print_json(entries)
                return
            table = Table(box=None, header_style="bold")
            for column in ("type", "mode", "size", "modified", "name"):
                table.add_column(
                    column, no_wrap=True, justify="right" if column == "size" else "left"
                )
            for e in entries:
                name = f"{e.name}/" if e.type == "dir" else e.name
                table.add_row(e.type, f"{e.mode:04o}", str(e.size), _age(e.mtime), escape(name))
            console.print(table)
            return
        vms = api_client.list_vms()
    if json_out:
        print_json(vms)
        return
    table = Table(box=None, header_style="bold")
    for column in (
        "id",
        "state",
        "backend",
        "isolation",
        "cpus",
        "memory",
        "pids",
        "limits",
        "age",
    ):
        table.add_column(column, no_wrap=True)
    for vm in vms:
        limits = vm.spec.limits
        table.add_row(
            vm.id,
            vm.state,
            vm.backend,
            vm.isolation,
            f"{limits.cpus:g}",
            f"{limits.memory_mib} MiB",
            str(limits.pids),
            ", ".join(vm.enforced) or "none enforced",
            _age(vm.created_at),
        )
    console.print(table)
    console.print(f"{len(vms)} sandboxes")


@app.command("snapshots")
@guarded
def list_snapshots(
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """List the saved snapshots."""
    with client(api, token) as api_client:
        snapshots = api_client.list_snapshots()
    if json_out:
        print_json(snapshots)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "backend", "kind", "size", "age", "path"):
        table.add_column(column, no_wrap=column != "path")
    for s in snapshots:
        table.add_row(s.id, s.backend, s.kind, _size(s.size_bytes), _age(s.created_at), s.path)
    console.print(table)
    console.print(f"{len(snapshots)} snapshots")


# -- life cycle ------------------------------------------------------------------------------------


@app.command("create")
@guarded
def create(
    memory: int | None = typer.Option(None, "--memory", help="Memory in MiB (default 1024)."),
    cpus: float | None = typer.Option(None, "--cpus", help="CPUs, fractions allowed (default 1)."),
    pids: int | None = typer.Option(None, "--pids", help="Most processes at once (default 512)."),
    disk: int | None = typer.Option(None, "--disk", help="Disk in MiB (default 4096)."),
    image: str | None = typer.Option(None, "--image", help="Image to boot (default: backend's)."),
    env: list[str] = typer.Option(
        [], "--env", "-e", help="NAME=VALUE in the sandbox's environment (repeatable)."
    ),
    quiet: bool = QuietOption,
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Start a sandbox and print its id."""
    given = {"memory_mib": memory, "cpus": cpus, "pids": pids, "disk_mib": disk}
    try:
        limits = Limits(**{k: v for k, v in given.items() if v is not None})
        spec = SandboxSpec(image=image, limits=limits, env=_env(env))
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    with client(api, token) as api_client:
        info = api_client.create_vm(spec)
    if json_out:
        print_json(info)
    elif quiet:
        console.print(info.id, highlight=False)
    else:
        _said(info, "running")


@app.command("rm")
@guarded
def remove(
    sandbox_ids: list[str] = typer.Argument(..., help="Sandbox ids to destroy."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Destroy sandboxes: every process ends and their files are gone."""
    worst = 0
    with client(api, token) as api_client:
        for sandbox_id in sandbox_ids:
            try:
                api_client.destroy_vm(sandbox_id)
            except SwarmError as exc:
                err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
                worst = max(worst, exc.exit_code)
                continue
            console.print(f"{sandbox_id} destroyed", highlight=False)
    if worst:
        raise typer.Exit(worst)


@app.command("pause")
@guarded
def pause(
    sandbox_id: str = typer.Argument(..., help="The sandbox id."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Stop every process of a sandbox at once."""
    with client(api, token) as api_client:
        _said(api_client.pause_vm(sandbox_id), "paused")


@app.command("resume")
@guarded
def resume(
    sandbox_id: str = typer.Argument(..., help="The sandbox id."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Restart the processes of a paused sandbox."""
    with client(api, token) as api_client:
        _said(api_client.resume_vm(sandbox_id), "running")


@app.command("snapshot")
@guarded
def snapshot(
    sandbox_id: str = typer.Argument(..., help="The sandbox id."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Save a sandbox; `swarm vm restore` starts a new one from the save."""
    with client(api, token) as api_client:
        snap = api_client.snapshot_vm(sandbox_id)
    if json_out:
        print_json(snap)
    else:
        console.print(
            f"{snap.id}: {snap.kind} snapshot of {sandbox_id}, {_size(snap.size_bytes)}",
            highlight=False,
        )


@app.command("restore")
@guarded
def restore(
    snapshot_id: str = typer.Argument(..., help="The snapshot id (see `swarm vm snapshots`)."),
    quiet: bool = QuietOption,
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Start a new sandbox from a snapshot and print its id."""
    with client(api, token) as api_client:
        info = api_client.restore_snapshot(snapshot_id)
    if json_out:
        print_json(info)
    elif quiet:
        console.print(info.id, highlight=False)
    else:
        _said(info, f"running, restored from {snapshot_id}")


# -- commands --------------------------------------------------------------------------------------


# Everything after the sandbox id is the command's, options included: `exec ID ls -la`.
@app.command("exec", context_settings={"allow_interspersed_args": False})
@guarded
def exec_command(
    sandbox_id: str = typer.Argument(..., help="The sandbox id."),
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --)."),
    cwd: str = typer.Option(".", "--cwd", help="Working directory, relative to the workspace."),
    env: list[str] = typer.Option([], "--env", "-e", help="NAME=VALUE for the command."),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Kill the command after this many seconds (exit 124)."
    ),
    stdin: bool = typer.Option(False, "--stdin", help="Send this command's stdin to it."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Run a command in a sandbox; its output streams here and its exit code is ours."""
    if command[0] == "--":  # `exec ID -- cmd`: the separator is ours, not the command's
        command = command[1:]
    if not command:
        fail("name a command to run after the sandbox id: swarm vm exec ID -- CMD ARGS…")
    out = typer.get_binary_stream("stdout")
    err = typer.get_binary_stream("stderr")
    data = typer.get_binary_stream("stdin").read() if stdin else None
    options: dict[str, Any] = {"cwd": cwd, "timeout_s": timeout, "stdin": data}
    if env:
        options["env"] = _env(env)
    end: Exit | None = None
    with client(api, token) as api_client:
        for item in api_client.exec_stream(sandbox_id, command, **options):
            if isinstance(item, Exit):
                end = item
                break
            stream = out if item.stream == "stdout" else err
            stream.write(item.data)
            stream.flush()
    if end is None:
        fail("the command's output ended without an exit status", 1)
    if end.timed_out:
        after = f" after {timeout:g}s" if timeout is not None else ""
        err_console.print(f"[bold red]error:[/] timed out{after}", highlight=False)
        raise typer.Exit(TIMED_OUT)
    if end.error:
        err_console.print(f"[bold red]error:[/] {escape(end.error)}", highlight=False)
    raise typer.Exit(end.exit_code)


# -- files -----------------------------------------------------------------------------------------


@app.command("cp")
@guarded
def copy(
    source: str = typer.Argument(..., help="ID:path, a local path, or - for stdin."),
    dest: str = typer.Argument(..., help="ID:path, a local path, or - for stdout."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Copy a directory's tree."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Copy a file into a sandbox or out of one; one side is ID:path.

    A remote path that is empty or ends in / is a directory: the file keeps its name there.
    Symbolic links are not copied, and neither are empty directories on the way in.
    """
    remote_source, remote_dest = _remote(source), _remote(dest)
    if remote_source is not None and remote_dest is None:
        sandbox_id, path = remote_source
        check_path(path, allow_root=True)
        with client(api, token) as api_client:
            copied = _download(api_client, sandbox_id, path, dest, recursive)
    elif remote_dest is not None and remote_source is None:
        sandbox_id, path = remote_dest
        check_path(path, allow_root=True)
        with client(api, token) as api_client:
            copied = _upload(api_client, source, sandbox_id, path, recursive)
    else:
        fail("cp copies between this machine and a sandbox: write one side as ID:path")
    if dest != "-":
        files, size = copied
        console.print(f"copied {files} file{'s' * (files != 1)} ({_size(size)})", highlight=False)


def _download(
    api: SwarmClient, sandbox_id: str, path: str, dest: str, recursive: bool
) -> tuple[int, int]:
    path = path.rstrip("/") or "."
    name = Path(path).name or sandbox_id
    if dest == "-":
        data = api.read_file(sandbox_id, path)
        typer.get_binary_stream("stdout").write(data)
        return 1, len(data)
    target = Path(dest)
    if target.is_dir():
        target = target / name
    if not recursive:
        data = api.read_file(sandbox_id, path)
        _write_local(target, data)
        return 1, len(data)
    files = size = 0
    todo = [(path, target)]
    while todo:
        remote, local = todo.pop()
        local.mkdir(parents=True, exist_ok=True)
        for entry in api.list_files(sandbox_id, remote):
            child = entry.name if remote == "." else f"{remote}/{entry.name}"
            if entry.type == "dir":
                todo.append((child, local / entry.name))
            elif entry.type == "file":
                data = api.read_file(sandbox_id, child)
                _write_local(local / entry.name, data)
                files, size = files + 1, size + len(data)
            else:
                err_console.print(f"skipped {escape(child)} ({entry.type})", highlight=False)
    return files, size


def _write_local(target: Path, data: bytes) -> None:
    try:
        target.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror or exc}")


def _upload(
    api: SwarmClient, source: str, sandbox_id: str, path: str, recursive: bool
) -> tuple[int, int]:
    if source == "-":
        if not path or path.endswith("/"):
            fail("copying stdin needs a file name: ID:path/name")
        data = typer.get_binary_stream("stdin").read()
        api.write_file(sandbox_id, path, data)
        return 1, len(data)
    local = Path(source)
    if not local.exists():
        fail(f"no such file: {source}")
    if not path or path.endswith("/"):
        path = f"{path}{local.resolve().name}"
    if local.is_file():
        data = _read_local(local)
        api.write_file(sandbox_id, path, data, local.stat().st_mode & 0o777)
        return 1, len(data)
    if not local.is_dir():
        fail(f"{source} is not a regular file or a directory")
    if not recursive:
        fail(f"{source} is a directory: copy it with -r")
    files = size = 0
    for root, dirs, names in os.walk(local):
        dirs.sort()
        base = Path(root).relative_to(local)
        for name in sorted(names):
            file = Path(root) / name
            relative = (base / name).as_posix()
            if file.is_symlink() or not file.is_file():
                err_console.print(f"skipped {escape(str(file))} (not a regular file)")
                continue
            data = _read_local(file)
            api.write_file(sandbox_id, f"{path}/{relative}", data, file.stat().st_mode & 0o777)
            files, size = files + 1, size + len(data)
    return files, size


def _read_local(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
