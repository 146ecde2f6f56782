"""``swarm vm`` against a real server (uvicorn in a thread) running bubblewrap sandboxes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import TypeAdapter
from typer.testing import CliRunner, Result

from swarmstack.cli.main import app as cli_app
from swarmstack.client import SwarmClient
from swarmstack.sandbox.base import FileEntry, SandboxInfo, Snapshot
from vm_fixtures import ADMIN, ThreadServer, VmPlane, vm_plane

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("no_swarm_env")


@pytest.fixture(scope="module")
def plane() -> Iterator[VmPlane]:
    with vm_plane() as p:
        yield p


@pytest.fixture(scope="module")
def server(plane: VmPlane) -> Iterator[ThreadServer]:
    with ThreadServer(plane.app) as s:
        yield s


@pytest.fixture(scope="module")
def admin(server: ThreadServer) -> Iterator[SwarmClient]:
    with SwarmClient(server.url, ADMIN) as client:
        yield client


def vm(server: ThreadServer, *args: str, token: str = ADMIN, stdin: bytes | None = None) -> Result:
    env = {"SWARM_API_URL": server.url, "SWARM_TOKEN": token, "COLUMNS": "200"}
    return runner.invoke(cli_app, ["vm", *args], env=env, input=stdin)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def one_line_error(result: Result, exit_code: int) -> str:
    """A failure the user can act on: its exit code, one line on stderr, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines
    return lines[0]


@pytest.fixture
def box(server: ThreadServer, admin: SwarmClient) -> Iterator[str]:
    sandbox_id = ok(vm(server, "create", "--memory", "256", "-q")).stdout.strip()
    yield sandbox_id
    if sandbox_id in {v.id for v in admin.list_vms()}:
        admin.destroy_vm(sandbox_id)


def test_create_ls_and_rm(server: ThreadServer, admin: SwarmClient) -> None:
    human = ok(vm(server, "create", "--memory", "128", "--cpus", "0.5", "-e", "A=1")).stdout
    first = human.split()[0]
    assert human.strip() == f"{first} running (bwrap, namespace isolation)"
    created = SandboxInfo.model_validate_json(
        ok(vm(server, "create", "--pids", "64", "--disk", "512", "--json")).stdout
    )
    assert (created.spec.limits.pids, created.spec.limits.disk_mib) == (64, 512)
    quiet = ok(vm(server, "create", "-q")).stdout.strip()
    assert quiet.startswith("sbx-") and "\n" not in quiet

    listed = TypeAdapter(list[SandboxInfo]).validate_json(ok(vm(server, "ls", "--json")).stdout)
    by_id = {v.id: v for v in listed}
    assert {first, created.id, quiet} <= set(by_id)
    assert by_id[first].spec.limits.memory_mib == 128
    assert by_id[first].spec.limits.cpus == 0.5
    assert by_id[first].spec.env == {"A": "1"}
    assert listed == admin.list_vms()
    table = ok(vm(server, "ls")).stdout
    assert first in table and "128 MiB" in table and f"{len(listed)} sandboxes" in table

    result = ok(vm(server, "rm", first, created.id, quiet))
    assert result.stdout.splitlines() == [f"{i} destroyed" for i in (first, created.id, quiet)]
    assert not {first, created.id, quiet} & {v.id for v in admin.list_vms()}
    line = one_line_error(vm(server, "rm", first), 1)
    assert f"no sandbox {first}" in line


def test_exec_streams_and_passes_the_exit_code_through(server: ThreadServer, box: str) -> None:
    result = vm(server, "exec", box, "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert result.exit_code == 5
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    result = vm(server, "exec", box, "sh", "-c", 'ls -a "$@"', "sh", "-a", "--", ".")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [".", ".."]  # the options after the id are the command's

    ok(vm(server, "exec", box, "mkdir", "sub"))
    result = ok(
        vm(server, "exec", "--cwd", "sub", "-e", "WHO=cli", box, "sh", "-c", 'pwd; echo "$WHO"')
    )
    assert result.stdout == "/workspace/sub\ncli\n"
    result = ok(vm(server, "exec", "--stdin", box, "od", "-An", "-tx1", stdin=b"\x00\xff"))
    assert result.stdout.split() == ["00", "ff"]

    result = vm(server, "exec", "--timeout", "0.5", box, "sleep", "30")
    assert result.exit_code == 124
    assert "timed out" in result.stderr
    result = vm(server, "exec", box, "no-such-program")
    assert result.exit_code == 127
    assert "command not found" in result.stderr


def test_cp_both_ways(server: ThreadServer, admin: SwarmClient, box: str, tmp_path: Path) -> None:
    blob = bytes(range(256)) * 64
    (tmp_path / "blob.bin").write_bytes(blob)
    (tmp_path / "blob.bin").chmod(0o640)
    assert "copied 1 file" in ok(vm(server, "cp", str(tmp_path / "blob.bin"), f"{box}:in/")).stdout
    assert admin.read_file(box, "in/blob.bin") == blob
    entries = TypeAdapter(list[FileEntry]).validate_json(
        ok(vm(server, "ls", f"{box}:in", "--json")).stdout
    )
    assert [(e.name, e.type, e.size, e.mode) for e in entries] == [
        ("blob.bin", "file", len(blob), 0o640)
    ]
    assert "blob.bin" in ok(vm(server, "ls", f"{box}:in")).stdout

    ok(vm(server, "cp", str(tmp_path / "blob.bin"), f"{box}:renamed.bin"))
    assert admin.read_file(box, "renamed.bin") == blob
    ok(vm(server, "cp", "-", f"{box}:from-stdin.txt", stdin=b"piped\n"))
    assert admin.read_file(box, "from-stdin.txt") == b"piped\n"

    out = tmp_path / "out"
    out.mkdir()
    ok(vm(server, "cp", f"{box}:in/blob.bin", str(out)))
    assert (out / "blob.bin").read_bytes() == blob
    ok(vm(server, "cp", f"{box}:renamed.bin", str(out / "other.bin")))
    assert (out / "other.bin").read_bytes() == blob
    result = ok(vm(server, "cp", f"{box}:from-stdin.txt", "-"))
    assert result.stdout_bytes == b"piped\n"

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "a" / "b" / "deep.txt").write_text("deep")
    (tree / "link").symlink_to("/etc/passwd")  # never followed, never copied
    result = ok(vm(server, "cp", "-r", str(tree), f"{box}:"))
    assert "copied 2 files" in result.stdout
    assert admin.read_file(box, "tree/a/b/deep.txt") == b"deep"
    assert "link" not in {e.name for e in admin.list_files(box, "tree")}
    admin.write_file(box, "tree/a/made-inside.txt", b"inside")
    back = tmp_path / "back"
    ok(vm(server, "cp", "-r", f"{box}:tree", str(back)))
    assert (back / "top.txt").read_text() == "top"
    assert (back / "a" / "b" / "deep.txt").read_text() == "deep"
    assert (back / "a" / "made-inside.txt").read_text() == "inside"


def test_snapshot_restore_pause_resume(server: ThreadServer, admin: SwarmClient, box: str) -> None:
    admin.write_file(box, "kept.txt", b"kept")
    line = ok(vm(server, "snapshot", box)).stdout
    snap_id = line.split(":")[0]
    assert snap_id.startswith("snap-") and f"filesystem snapshot of {box}" in line
    snap = Snapshot.model_validate_json(ok(vm(server, "snapshot", box, "--json")).stdout)
    listed = TypeAdapter(list[Snapshot]).validate_json(ok(vm(server, "snapshots", "--json")).stdout)
    assert {snap_id, snap.id} <= {s.id for s in listed}
    assert snap_id in ok(vm(server, "snapshots")).stdout

    twin = ok(vm(server, "restore", snap_id, "-q")).stdout.strip()
    assert twin != box and admin.read_file(twin, "kept.txt") == b"kept"
    assert f"restored from {snap.id}" in ok(vm(server, "restore", snap.id)).stdout

    assert ok(vm(server, "pause", box)).stdout.startswith(f"{box} paused")
    assert "paused" in one_line_error(vm(server, "exec", box, "true"), 1)
    assert ok(vm(server, "resume", box)).stdout.startswith(f"{box} running")
    ok(vm(server, "exec", box, "true"))
    for s in (snap_id, snap.id):
        admin.delete_snapshot(s)
    for v in admin.list_vms():
        if v.id != box:
            admin.destroy_vm(v.id)


def test_bad_input_is_one_line_and_exit_2(
    server: ThreadServer, admin: SwarmClient, box: str, tmp_path: Path
) -> None:
    before = admin.list_vms()
    assert "one side" in one_line_error(vm(server, "cp", "a.txt", "b.txt"), 2)
    assert "one side" in one_line_error(vm(server, "cp", f"{box}:a", f"{box}:b"), 2)
    assert "no such file" in one_line_error(vm(server, "cp", str(tmp_path / "nope"), f"{box}:"), 2)
    assert "-r" in one_line_error(vm(server, "cp", str(tmp_path), f"{box}:"), 2)
    assert "climbs out" in one_line_error(vm(server, "cp", f"{box}:../etc/passwd", "-"), 2)
    assert "absolute" in one_line_error(vm(server, "cp", str(tmp_path), f"{box}:/etc/", "-r"), 2)
    assert "needs a file name" in one_line_error(vm(server, "cp", "-", f"{box}:dir/"), 2)
    assert "memory_mib" in one_line_error(vm(server, "create", "--memory", "1"), 2)
    assert "memory_mib" in one_line_error(vm(server, "create", "--memory", "32"), 2)
    assert "cpus" in one_line_error(vm(server, "create", "--cpus", "0.01"), 2)
    assert "NAME=VALUE" in one_line_error(vm(server, "create", "-e", "novalue"), 2)
    assert "NAME=VALUE" in one_line_error(vm(server, "exec", "-e", "=x", box, "true"), 2)
    assert "absolute" in one_line_error(vm(server, "exec", "--cwd", "/", box, "true"), 2)
    assert vm(server, "exec", box).exit_code == 2  # no command: a usage error
    assert vm(server, "create", "--memory", "lots").exit_code == 2

    agent = admin.create_token("agent", "vm-cli-agent").token
    assert "admin token" in one_line_error(vm(server, "ls", token=agent), 2)
    assert "admin token" in one_line_error(vm(server, "create", token=agent), 2)
    assert "admin token" in one_line_error(vm(server, "exec", box, "true", token=agent), 2)
    one_line_error(vm(server, "ls", token="garbage"), 2)
    assert admin.list_vms() == before
    assert json.loads(ok(vm(server, "ls", "--json")).stdout) == [
        v.model_dump(mode="json") for v in before
    ]
