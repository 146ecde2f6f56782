"""The VM API against real bubblewrap sandboxes, in process (FastAPI's TestClient).

Covers the life cycle (create, pause, resume, snapshot, restore, destroy, the cap, the backend
started on first use, snapshots across a restart), commands streamed while they run, files,
git, who may call (admins only, on every route), and what no caller may do: climb out of the
workspace by any spelling of a path, or slip an option, a URL or a transport into git.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from swarmstack.sandbox.base import PathRefused
from swarmstack.sandbox.gitops import (
    RefRefused,
    check_ref,
    parse_log,
    parse_status,
    ref_format_problem,
)
from swarmstack.sandbox.paths import check_path, check_pathspec
from vm_fixtures import ADMIN, VmPlane, vm_plane

MAX_BODY = 16 * 1024
MAX_FILE = 256 * 1024


@pytest.fixture(autouse=True)
def _no_swarm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SWARM_") and name != "SWARM_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@dataclass
class Http:
    client: TestClient
    plane: VmPlane

    def call(self, method: str, url: str, token: str | None = ADMIN, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, url, headers=headers, **kwargs)

    def ok(self, method: str, url: str, status: int = 200, **kwargs: Any) -> Any:
        r = self.call(method, url, **kwargs)
        assert r.status_code == status, (method, url, r.status_code, r.text)
        return r.json() if r.headers.get("content-type") == "application/json" else r

    def create(self, **spec: Any) -> dict[str, Any]:
        body = {"limits": {"memory_mib": 256}, **spec}
        info: dict[str, Any] = self.ok("POST", "/v1/vms", 201, json=body)
        return info

    def run(self, vm: str, *argv: str, **body: Any) -> tuple[int, bytes, bytes]:
        """A command to its end: (exit code, stdout, stderr)."""
        r = self.call("POST", f"/v1/vms/{vm}/exec", json={"argv": list(argv), **body})
        assert r.status_code == 200, r.text
        out, err, end = b"", b"", None
        for line in r.text.splitlines():
            item = json.loads(line)
            if "stream" in item:
                data = base64.b64decode(item["data"])
                out, err = (out + data, err) if item["stream"] == "stdout" else (out, err + data)
            else:
                end = item
        assert end is not None, r.text
        return end["exit"], out, err

    def sh(self, vm: str, script: str) -> bytes:
        code, out, err = self.run(vm, "sh", "-c", script)
        assert code == 0, (script, out, err)
        return out


def assert_error(response: Any, status: int | tuple[int, ...], code: str | None = None) -> str:
    """A refusal: the status, and a JSON body with a code and a message. Returns the message."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    message: str = body["message"]
    return message


@pytest.fixture(scope="module")
def plane() -> Iterator[VmPlane]:
    with vm_plane(max_body_bytes=MAX_BODY, max_file_bytes=MAX_FILE) as p:
        yield p


@pytest.fixture(scope="module")
def http(plane: VmPlane) -> Iterator[Http]:
    with TestClient(plane.app) as client:
        yield Http(client, plane)


@pytest.fixture
def vm(http: Http) -> Iterator[str]:
    sandbox_id: str = http.create()["id"]
    yield sandbox_id
    http.call("DELETE", f"/v1/vms/{sandbox_id}")


# -- life cycle ------------------------------------------------------------------------------------


def test_the_backend_starts_at_the_first_call_that_needs_a_sandbox() -> None:
    with vm_plane() as p:
        with TestClient(p.app) as client:
            h = Http(client, p)
            assert h.ok("GET", "/v1/health")["status"] == "ok"
            assert h.ok("GET", "/v1/vms") == []
            assert h.ok("GET", "/v1/snapshots") == []
            assert_error(h.call("GET", "/v1/vms/sbx-000000000000"), 404, "not_found")
            assert p.backends_made == []  # nothing asked for a sandbox yet
            first = h.create()
            second = h.create()
            assert len(p.backends_made) == 1  # made once, then kept
            assert {v["id"] for v in h.ok("GET", "/v1/vms")} == {first["id"], second["id"]}
            live = {d.name for d in p.sandboxes_dir.iterdir() if d.name.startswith("sbx-")}
            assert live == {first["id"], second["id"]}
        # Shutting the app down destroyed both sandboxes and their directories.
        assert not any(d.name.startswith("sbx-") for d in p.sandboxes_dir.iterdir())


def test_life_cycle(http: Http) -> None:
    info = http.create(limits={"memory_mib": 128, "cpus": 0.5, "pids": 64}, env={"GREETING": "hi"})
    vm = info["id"]
    assert info["state"] == "running"
    assert info["backend"] == "bwrap"
    assert info["isolation"] == "namespace"
    assert info["spec"]["limits"] == {"cpus": 0.5, "memory_mib": 128, "pids": 64, "disk_mib": 4096}
    assert info["spec"]["env"] == {"GREETING": "hi"}
    again = http.ok("GET", f"/v1/vms/{vm}")
    assert again["memory_bytes"] > 0  # what its processes use now, read from the host
    assert {**again, "memory_bytes": 0} == {**info, "memory_bytes": 0}
    assert vm in {v["id"] for v in http.ok("GET", "/v1/vms")}
    assert http.run(vm, "sh", "-c", 'echo "$GREETING"') == (0, b"hi\n", b"")

    paused = http.ok("POST", f"/v1/vms/{vm}/pause")
    assert paused["state"] == "paused"
    assert http.ok("GET", f"/v1/vms/{vm}")["state"] == "paused"
    for method, url, kwargs in [
        ("POST", f"/v1/vms/{vm}/exec", {"json": {"argv": ["true"]}}),
        ("GET", f"/v1/vms/{vm}/files", {"params": {"path": "x"}}),
        ("PUT", f"/v1/vms/{vm}/files", {"params": {"path": "x"}, "content": b"x"}),
        ("GET", f"/v1/vms/{vm}/files/list", {}),
        ("DELETE", f"/v1/vms/{vm}/files", {"params": {"path": "x"}}),
        ("GET", f"/v1/vms/{vm}/git/status", {}),
        ("POST", f"/v1/vms/{vm}/snapshot", {}),
        ("POST", f"/v1/vms/{vm}/pause", {}),
    ]:
        assert "paused" in assert_error(http.call(method, url, **kwargs), 409, "conflict")

    assert http.ok("POST", f"/v1/vms/{vm}/resume")["state"] == "running"
    assert_error(http.call("POST", f"/v1/vms/{vm}/resume"), 409, "conflict")
    assert http.run(vm, "true")[0] == 0

    assert http.call("DELETE", f"/v1/vms/{vm}").status_code == 204
    assert_error(http.call("GET", f"/v1/vms/{vm}"), 404, "not_found")
    assert_error(http.call("DELETE", f"/v1/vms/{vm}"), 404, "not_found")
    assert_error(http.call("POST", f"/v1/vms/{vm}/exec", json={"argv": ["true"]}), 404)
    assert vm not in {v["id"] for v in http.ok("GET", "/v1/vms")}
    assert not (http.plane.sandboxes_dir / vm).exists()


def test_bad_specs_are_refused_with_reasons(http: Http) -> None:
    before = http.ok("GET", "/v1/vms")
    for body, field in [
        ({"limits": {"memory_mib": 8}}, "memory_mib"),
        ({"limits": {"cpus": 0.01}}, "cpus"),
        ({"limits": {"cpus": True}}, "cpus"),
        ({"limits": {"pids": "many"}}, "pids"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"env": {"": "x"}}, "env"),
        ({"env": {"OK": "nul\x00"}}, "env"),
        ({"image": ""}, "image"),
        ({"control_port": 0}, "control_port"),
        ({"surprise": 1}, "surprise"),
    ]:
        message = assert_error(http.call("POST", "/v1/vms", json=body), 422, "invalid_request")
        assert field in message, (body, message)
    assert http.ok("GET", "/v1/vms") == before


def test_the_cap_on_sandboxes_is_a_409_with_the_reason() -> None:
    with vm_plane(max_sandboxes=2) as p, TestClient(p.app) as client:
        h = Http(client, p)
        first, _second = h.create(), h.create()
        message = assert_error(h.call("POST", "/v1/vms", json={}), 409, "sandbox_limit")
        assert "SWARM_MAX_SANDBOXES" in message
        assert len(h.ok("GET", "/v1/vms")) == 2
        h.ok("DELETE", f"/v1/vms/{first['id']}", 204)
        h.create()


def test_snapshots_restore_and_survive_a_restart(tmp_path: Path) -> None:
    from sandbox_fixtures import state_dir

    root = state_dir()
    try:
        with vm_plane(root) as p, TestClient(p.app) as client:
            h = Http(client, p)
            vm = h.create(env={"KEPT": "yes"})["id"]
            h.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "notes/a.txt"}, content=b"saved")
            snap = h.ok("POST", f"/v1/vms/{vm}/snapshot", 201)
            assert snap["kind"] == "filesystem"
            assert snap["backend"] == "bwrap"
            assert snap["size_bytes"] > 0
            assert snap["spec"]["env"] == {"KEPT": "yes"}
            assert Path(snap["path"]).parent == p.settings.snapshot_dir
            assert oct(p.settings.snapshot_dir.stat().st_mode & 0o777) == "0o700"
            # Later changes do not reach the snapshot.
            h.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "notes/a.txt"}, content=b"later")
            twin = h.ok("POST", f"/v1/snapshots/{snap['id']}/restore", 201)
            assert twin["id"] != vm
            assert twin["spec"]["env"] == {"KEPT": "yes"}
            got = h.call("GET", f"/v1/vms/{twin['id']}/files", params={"path": "notes/a.txt"})
            assert got.content == b"saved"
            assert h.ok("GET", "/v1/snapshots") == [snap]
        # A new control plane on the same data directory knows the snapshot.
        with vm_plane(root) as p, TestClient(p.app) as client:
            h = Http(client, p)
            assert h.ok("GET", "/v1/vms") == []
            assert h.ok("GET", "/v1/snapshots") == [snap]
            again = h.ok("POST", f"/v1/snapshots/{snap['id']}/restore", 201)
            got = h.call("GET", f"/v1/vms/{again['id']}/files", params={"path": "notes/a.txt"})
            assert got.content == b"saved"
            assert_error(h.call("POST", "/v1/snapshots/snap-000000000000/restore"), 404)
            h.ok("DELETE", f"/v1/snapshots/{snap['id']}", 204)
            assert h.ok("GET", "/v1/snapshots") == []
            assert not Path(snap["path"]).exists()
            assert list(p.settings.snapshot_dir.iterdir()) == []
            assert_error(h.call("DELETE", f"/v1/snapshots/{snap['id']}"), 404, "not_found")
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


# -- commands --------------------------------------------------------------------------------------


def test_exec_output_streams_while_the_command_runs(http: Http, vm: str) -> None:
    script = "echo first; sleep 1; echo second >&2; echo third; exit 7"
    with http.client.stream(
        "POST",
        f"/v1/vms/{vm}/exec",
        json={"argv": ["sh", "-c", script]},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.iter_lines()
        started = time.monotonic()
        first = json.loads(next(lines))
        first_at = time.monotonic()
        rest = [(json.loads(line), time.monotonic()) for line in lines if line]
    assert first == {"stream": "stdout", "data": base64.b64encode(b"first\n").decode()}
    end, end_at = rest[-1]
    assert end == {"exit": 7, "timed_out": False}
    # "first" was here a whole sleep before the command ended.
    assert end_at - first_at >= 0.8, (first_at - started, end_at - started)
    streams = {"stdout": b"", "stderr": b""}
    for item, _ in rest[:-1]:
        streams[item["stream"]] += base64.b64decode(item["data"])
    assert streams == {"stdout": b"third\n", "stderr": b"second\n"}


def test_exec_takes_stdin_env_cwd_and_a_timeout(http: Http, vm: str) -> None:
    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "sub/dir/keep"}, content=b"")
    stdin = base64.b64encode(b"\x00\xffbinary in").decode()
    code, out, _ = http.run(
        vm,
        "sh",
        "-c",
        'pwd; echo "$WHO"; od -An -tx1 | tr -d " \\n"',
        cwd="sub/dir",
        env={"WHO": "admin"},
        stdin=stdin,
    )
    assert code == 0
    assert out == b"/workspace/sub/dir\nadmin\n00ff62696e61727920696e"

    started = time.monotonic()
    r = http.call("POST", f"/v1/vms/{vm}/exec", json={"argv": ["sleep", "30"], "timeout_s": 0.5})
    last = json.loads(r.text.splitlines()[-1])
    assert last["timed_out"] is True and last["exit"] != 0
    assert time.monotonic() - started < 10

    r = http.call("POST", f"/v1/vms/{vm}/exec", json={"argv": ["no-such-program"]})
    assert json.loads(r.text) == {
        "exit": 127,
        "timed_out": False,
        "error": "command not found: no-such-program",
    }


def test_exec_refuses_bad_requests_before_running_anything(http: Http, vm: str) -> None:
    url = f"/v1/vms/{vm}/exec"
    assert_error(http.call("POST", url, json={"argv": []}), 422, "invalid_request")
    assert_error(http.call("POST", url, json={}), 422, "invalid_request")
    assert_error(http.call("POST", url, json={"argv": "ls"}), 422, "invalid_request")
    assert_error(http.call("POST", url, json={"argv": ["ls"], "stdin": "not base64!"}), 422)
    assert_error(http.call("POST", url, json={"argv": ["ls"], "timeout_s": 0}), 422)
    assert_error(http.call("POST", url, json={"argv": ["ls"], "env": {"A B": "x"}}), 422)
    assert_error(http.call("POST", url, json={"argv": ["ls"], "cwd": "../.."}), 400, "bad_path")
    big = {"argv": ["echo", "x" * MAX_BODY]}
    assert_error(http.call("POST", url, json=big), 413, "payload_too_large")


# -- files -----------------------------------------------------------------------------------------


def test_files_round_trip(http: Http, vm: str) -> None:
    url = f"/v1/vms/{vm}/files"
    data = bytes(range(256)) * 400  # 100 KiB: more than a JSON body may be, less than a file
    assert len(data) > MAX_BODY
    written = http.ok("PUT", url, params={"path": "deep/er/blob.bin", "mode": 0o600}, content=data)
    assert written == {"path": "deep/er/blob.bin", "size": len(data)}
    got = http.call("GET", url, params={"path": "deep/er/blob.bin"})
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.content == data
    assert http.sh(vm, "sha256sum deep/er/blob.bin").split()[0].decode() == (
        hashlib.sha256(data).hexdigest()
    )
    http.ok("PUT", url, params={"path": "deep/empty"}, content=b"")
    assert http.call("GET", url, params={"path": "deep/empty"}).content == b""

    listing = http.ok("GET", f"{url}/list", params={"path": "deep/er"})
    assert [(e["name"], e["type"], e["size"], e["mode"]) for e in listing] == [
        ("blob.bin", "file", len(data), 0o600)
    ]
    top = {e["name"]: e["type"] for e in http.ok("GET", f"{url}/list")}
    assert top == {"deep": "dir"}
    assert [e["name"] for e in http.ok("GET", f"{url}/list", params={"path": "deep/empty"})] == [
        "empty"
    ]

    assert_error(http.call("GET", url, params={"path": "deep"}), 409)
    assert_error(http.call("GET", url, params={"path": "missing"}), 404, "not_found")
    assert_error(http.call("GET", f"{url}/list", params={"path": "missing"}), 404)
    assert_error(http.call("GET", url), 422, "invalid_request")  # path is required
    assert_error(http.call("PUT", url, params={"path": "deep"}, content=b"x"), 409)
    assert_error(http.call("PUT", url, params={"path": "x", "mode": 0o1777}, content=b""), 422)

    assert http.call("DELETE", url, params={"path": "deep/empty"}).status_code == 204
    assert_error(http.call("GET", url, params={"path": "deep/empty"}), 404)
    assert_error(http.call("DELETE", url, params={"path": "deep"}), 409)
    assert http.call("DELETE", url, params={"path": "deep", "recursive": True}).status_code == 204
    assert http.ok("GET", f"{url}/list") == []
    assert_error(http.call("DELETE", url, params={"path": "deep"}), 404)


def test_file_uploads_have_their_own_size_limit(http: Http, vm: str) -> None:
    url = f"/v1/vms/{vm}/files"
    http.ok("PUT", url, params={"path": "max.bin"}, content=b"m" * MAX_FILE)
    too_big = http.call("PUT", url, params={"path": "big.bin"}, content=b"b" * (MAX_FILE + 1))
    assert_error(too_big, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it streams
        for _ in range(MAX_FILE // 1024 + 1):
            yield b"c" * 1024

    streamed = http.call("PUT", url, params={"path": "chunked.bin"}, content=chunks())
    assert_error(streamed, 413, "payload_too_large")
    names = {e["name"] for e in http.ok("GET", f"{url}/list")}
    assert names == {"max.bin"}


# -- git ---------------------------------------------------------------------------------------


def init_repo(http: Http, vm: str) -> None:
    http.sh(vm, "git init -q -b main . && git config user.name Repo && git config user.email r@x")


def test_git_status_diff_log_commit(http: Http, vm: str) -> None:
    base = f"/v1/vms/{vm}/git"
    message = assert_error(http.call("GET", f"{base}/status"), 409, "git_failed")
    assert "not a git repository" in message
    init_repo(http, vm)

    status = http.ok("GET", f"{base}/status")
    assert status == {
        "branch": "main",
        "commit": None,
        "upstream": None,
        "ahead": None,
        "behind": None,
        "clean": True,
        "files": [],
    }
    assert "does not have any commits" in assert_error(http.call("GET", f"{base}/log"), 409)

    for path, text in [("a.txt", "one\n"), ("src/b.py", "print(1)\n"), ("c d.txt", "spaced\n")]:
        http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": path}, content=text.encode())
    status = http.ok("GET", f"{base}/status")
    assert not status["clean"]
    assert {(f["path"], f["kind"]) for f in status["files"]} == {
        ("a.txt", "untracked"),
        ("src/b.py", "untracked"),
        ("c d.txt", "untracked"),
    }

    first = http.ok(
        "POST",
        f"{base}/commit",
        201,
        json={"message": "first\n\nwith a body", "author_name": "Ada L", "author_email": "a@l.x"},
    )
    assert (first["subject"], first["author"], first["email"]) == ("first", "Ada L", "a@l.x")
    assert len(first["sha"]) == 40
    assert http.ok("GET", f"{base}/status")["clean"] is True
    assert http.ok("GET", f"{base}/status")["commit"] == first["sha"]
    committer = http.sh(vm, "git log -1 --format=%cn/%ce").decode().strip()
    assert committer == "Ada L/a@l.x"

    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "a.txt"}, content=b"one\ntwo\n")
    http.sh(vm, "git mv src/b.py src/renamed.py && rm 'c d.txt'")
    status = http.ok("GET", f"{base}/status")
    by_path = {f["path"]: f for f in status["files"]}
    assert by_path["a.txt"]["kind"] == "changed" and by_path["a.txt"]["worktree"] == "M"
    assert by_path["src/renamed.py"]["kind"] == "renamed"
    assert by_path["src/renamed.py"]["orig_path"] == "src/b.py"
    assert by_path["c d.txt"]["worktree"] == "D"

    diff = http.ok("GET", f"{base}/diff")
    assert diff["ref"] is None and diff["stat"] is False
    assert "+two" in diff["text"]
    assert "a/a.txt" in diff["text"]
    stat = http.ok("GET", f"{base}/diff", params={"stat": True, "ref": "HEAD"})
    assert stat["stat"] is True
    assert "a.txt" in stat["text"] and "changed" in stat["text"]

    # Only the named path is committed; the rest stays as it was.
    second = http.ok(
        "POST", f"{base}/commit", 201, json={"message": "two lines", "paths": ["a.txt"]}
    )
    assert second["author"] == "Repo"  # the repository's own identity
    left = {f["path"] for f in http.ok("GET", f"{base}/status")["files"]}
    assert left == {"src/renamed.py", "c d.txt"}
    third = http.ok("POST", f"{base}/commit", 201, json={"message": "the rest"})
    assert http.ok("GET", f"{base}/status")["clean"] is True

    log = http.ok("GET", f"{base}/log")
    assert [c["subject"] for c in log] == ["the rest", "two lines", "first"]
    assert [c["sha"] for c in log] == [third["sha"], second["sha"], first["sha"]]
    assert http.ok("GET", f"{base}/log", params={"n": 1}) == [log[0]]
    assert http.ok("GET", f"{base}/log", params={"ref": "HEAD~1"}) == log[1:]
    assert http.ok("GET", f"{base}/log", params={"ref": "main^^", "n": 5}) == log[2:]
    assert http.ok("GET", f"{base}/log", params={"ref": first["sha"]}) == log[2:]
    http.sh(vm, "git tag v1.0 HEAD~1")
    assert http.ok("GET", f"{base}/log", params={"ref": "v1.0", "n": 1}) == [log[1]]
    against_first = http.ok("GET", f"{base}/diff", params={"ref": first["sha"], "stat": True})
    assert "renamed.py" in against_first["text"]

    message = assert_error(http.call("GET", f"{base}/diff", params={"ref": "nope"}), 409)
    assert "nope" in message
    message = assert_error(http.call("POST", f"{base}/commit", json={"message": "x"}), 409)
    assert "nothing to commit" in message
    assert_error(http.call("GET", f"{base}/log", params={"n": 0}), 422)


# -- who may call ----------------------------------------------------------------------------------


def vm_requests(vm: str, snap: str) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """A valid request for every VM route: (method, route) -> (url, keyword arguments)."""
    v = f"/v1/vms/{vm}"
    return {
        ("get", "/v1/vms"): ("/v1/vms", {}),
        ("post", "/v1/vms"): ("/v1/vms", {"json": {}}),
        ("get", "/v1/vms/{sandbox_id}"): (v, {}),
        ("delete", "/v1/vms/{sandbox_id}"): (v, {}),
        ("post", "/v1/vms/{sandbox_id}/pause"): (f"{v}/pause", {}),
        ("post", "/v1/vms/{sandbox_id}/resume"): (f"{v}/resume", {}),
        ("post", "/v1/vms/{sandbox_id}/snapshot"): (f"{v}/snapshot", {}),
        ("get", "/v1/snapshots"): ("/v1/snapshots", {}),
        ("post", "/v1/snapshots/{snapshot_id}/restore"): (f"/v1/snapshots/{snap}/restore", {}),
        ("delete", "/v1/snapshots/{snapshot_id}"): (f"/v1/snapshots/{snap}", {}),
        ("post", "/v1/vms/{sandbox_id}/exec"): (
            f"{v}/exec",
            {"json": {"argv": ["sh", "-c", "echo ran > ran.txt"]}},
        ),
        ("get", "/v1/vms/{sandbox_id}/files"): (f"{v}/files", {"params": {"path": "f.txt"}}),
        ("put", "/v1/vms/{sandbox_id}/files"): (
            f"{v}/files",
            {"params": {"path": "f.txt"}, "content": b"overwritten"},
        ),
        ("delete", "/v1/vms/{sandbox_id}/files"): (f"{v}/files", {"params": {"path": "f.txt"}}),
        ("get", "/v1/vms/{sandbox_id}/files/list"): (f"{v}/files/list", {}),
        ("get", "/v1/vms/{sandbox_id}/git/status"): (f"{v}/git/status", {}),
        ("get", "/v1/vms/{sandbox_id}/git/diff"): (f"{v}/git/diff", {}),
        ("get", "/v1/vms/{sandbox_id}/git/log"): (f"{v}/git/log", {}),
        ("post", "/v1/vms/{sandbox_id}/git/commit"): (
            f"{v}/git/commit",
            {"json": {"message": "not yours"}},
        ),
    }


def vm_routes(plane: VmPlane) -> set[tuple[str, str]]:
    """(method, path) of every VM route the app serves, through included routers."""
    found: set[tuple[str, str]] = set()
    todo = list(plane.app.router.routes)
    while todo:
        route = todo.pop()
        inner = getattr(route, "original_router", None)
        if inner is not None:
            todo.extend(inner.routes)
        elif isinstance(route, APIRoute) and route.path.startswith(("/v1/vms", "/v1/snapshots")):
            found |= {(m.lower(), route.path_format) for m in route.methods if m != "HEAD"}
    return found


def lease_token(http: Http) -> str:
    plan = {"title": "vm auth", "tickets": [{"id": "only", "title": "only"}]}
    plan_id = http.ok("POST", "/v1/plans", 201, json=plan)["id"]
    lease = http.ok("POST", "/v1/claims", json={"agent": "a", "plan_id": plan_id})
    token: str = lease["token"]
    return token


def test_only_admins_reach_any_vm_route(http: Http, vm: str) -> None:
    init_repo(http, vm)
    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "f.txt"}, content=b"original")
    http.ok("POST", f"/v1/vms/{vm}/git/commit", 201, json={"message": "base"})
    snap = http.ok("POST", f"/v1/vms/{vm}/snapshot", 201)["id"]
    agent = http.ok("POST", "/v1/tokens", 201, json={"kind": "agent", "name": "vm-agent"})["token"]
    lease = lease_token(http)
    requests = vm_requests(vm, snap)
    assert set(requests) == vm_routes(http.plane)  # a new route needs a line here

    def vms() -> list[dict[str, Any]]:  # what a refused call could change (memory moves anyway)
        return [
            {k: v for k, v in vm.items() if k != "memory_bytes"} for vm in http.ok("GET", "/v1/vms")
        ]

    vms_before = vms()

    for (method, _route), (url, kwargs) in requests.items():
        for token, status, code in [
            (None, 401, "unauthorized"),
            ("not-a-token", 401, "unauthorized"),
            (agent, 403, "forbidden"),
            (lease, 403, "forbidden"),
        ]:
            r = http.call(method.upper(), url, token, **kwargs)
            message = assert_error(r, status, code)
            if status == 403:
                assert "admin token" in message, message

    # Nothing happened: the same sandboxes, files, commits and snapshots.
    assert vms() == vms_before
    assert http.call("GET", f"/v1/vms/{vm}/files", params={"path": "f.txt"}).content == b"original"
    assert "ran.txt" not in {e["name"] for e in http.ok("GET", f"/v1/vms/{vm}/files/list")}
    assert [c["subject"] for c in http.ok("GET", f"/v1/vms/{vm}/git/log")] == ["base"]
    assert [s["id"] for s in http.ok("GET", "/v1/snapshots")].count(snap) == 1
    http.ok("DELETE", f"/v1/snapshots/{snap}", 204)


def test_vm_routes_are_documented_as_admin_operations(http: Http) -> None:
    schema = http.ok("GET", "/openapi.json", token=None)
    for method, path in vm_routes(http.plane):
        operation = schema["paths"][path][method]
        assert operation.get("security"), (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
    exec_op = schema["paths"]["/v1/vms/{sandbox_id}/exec"]["post"]
    assert "application/x-ndjson" in exec_op["responses"]["200"]["content"]
    put_op = schema["paths"]["/v1/vms/{sandbox_id}/files"]["put"]
    assert "application/octet-stream" in put_op["requestBody"]["content"]
    assert "413" in put_op["responses"]


# -- escapes: paths --------------------------------------------------------------------------------

# Every spelling of a path that leads out of the workspace, or could be read as one.
ESCAPES = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "a/../../x",
    "a/../x",
    "./../x",
    "x/..",
    "..",
    "in\x00side.txt",
    "inside.txt\x00../../etc/passwd",
    "%2e%2e%2fetc%2fpasswd",  # what a double-encoded ../etc/passwd decodes to once
    "%252e%252e%252f",
    "..%2f..%2fetc",
    "..\\x",
    "..\\..\\etc\\passwd",
    "sub\\..\\..\\x",
    "line\nbreak",
    "rootlink/etc/passwd",
    "rootlink/tmp/escape-w",
    "uplink/etc/hostname",
    "uplink/escape-w",
    "etclink/passwd",
    "sub/up2/etc/passwd",
    "sub/up2/escape-w",
]
# A symlink itself may be deleted (the link goes, never its target); reading, writing or
# listing through it may not.
LINKS = ["rootlink", "uplink", "etclink", "sub/up2"]


def host_tree(root: Path, skip: Path) -> dict[str, str]:
    """Every path under ``root`` but ``skip`` (the workspace) and the database, with a hash of
    each file's content (the guest's log only by name: it may grow)."""
    tree: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents or path.name.startswith("swarm.db"):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            tree[rel] = "link:" + os.readlink(path)
        elif path.is_file() and path.name != "guest.log":
            tree[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            tree[rel] = "dir" if path.is_dir() else "other"
    return tree


SANDBOX_VIEW = (
    "sha256sum /etc/passwd /etc/hostname /tmp/canary; ls -a / /tmp /etc /home/agent; "
    "find / -xdev -name 'escape-*' 2>/dev/null; true"
)


def test_no_path_leads_out_of_the_workspace(http: Http, vm: str) -> None:
    plane = http.plane
    home = plane.sandboxes_dir / vm
    workspace = home / "workspace"
    (home / "canary.txt").write_text("beside the workspace\n")
    host_dir = plane.root / "host"
    host_dir.mkdir()
    (host_dir / "canary.txt").write_text("on the host\n")
    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "inside.txt"}, content=b"inside")
    http.sh(
        vm,
        "ln -s / rootlink && ln -s .. uplink && ln -s /etc etclink && mkdir sub && "
        "ln -s ../.. sub/up2 && echo canary > /tmp/canary",
    )
    before_host = host_tree(plane.root, workspace)
    before_view = http.sh(vm, SANDBOX_VIEW)
    url = f"/v1/vms/{vm}/files"

    attempts = 0
    for path in ESCAPES + LINKS:
        refusals = [
            http.call("GET", url, params={"path": path}),
            http.call("GET", f"{url}/list", params={"path": path}),
            http.call("PUT", url, params={"path": path}, content=b"escaped"),
            http.call(
                "POST", f"/v1/vms/{vm}/exec", json={"argv": ["touch", "escape-x"], "cwd": path}
            ),
        ]
        if path not in LINKS:
            refusals.append(http.call("DELETE", url, params={"path": path}))
            refusals.append(http.call("DELETE", url, params={"path": path, "recursive": True}))
        for r in refusals:
            assert_error(r, (400, 403), "bad_path")
            attempts += 1
    # Encoded in the URL itself: the query is decoded once, to a refused path.
    for raw in ["%2e%2e%2fescape-q", "..%2Fescape-q", "%2Fetc%2Fpasswd", "%252e%252e%252fx"]:
        assert_error(http.call("GET", f"{url}?path={raw}"), (400, 403), "bad_path")
        assert_error(http.call("PUT", f"{url}?path={raw}", content=b"x"), (400, 403), "bad_path")
        assert_error(http.call("DELETE", f"{url}?path={raw}"), (400, 403), "bad_path")
        attempts += 3
    assert attempts > 150

    # Deleting a symlink removes the link and nothing it points at.
    for link in LINKS:
        assert http.call("DELETE", url, params={"path": link, "recursive": True}).status_code == 204
    remaining = {e["name"] for e in http.ok("GET", f"{url}/list")}
    assert remaining == {"inside.txt", "sub"}

    assert host_tree(plane.root, workspace) == before_host
    assert (home / "canary.txt").read_text() == "beside the workspace\n"
    assert (host_dir / "canary.txt").read_text() == "on the host\n"
    assert http.sh(vm, SANDBOX_VIEW) == before_view
    assert b"escape-" not in before_view
    assert not list(plane.root.rglob("escape-*"))
    assert sorted(p.name for p in workspace.iterdir()) == ["inside.txt", "sub"]
    assert http.call("GET", url, params={"path": "inside.txt"}).content == b"inside"


def test_path_checks() -> None:
    for good in ["a", "a/b.txt", "./a", "a//b", "a/./b", ".hidden", "...", "-rf", "a:b", "é/ü"]:
        assert check_path(good) == good
    assert check_path(".", allow_root=True) == "."
    assert check_path("", allow_root=True) == ""
    for bad in [*ESCAPES, "", ".", "./", "x" * 5000, "a/" + "b" * 256]:
        if bad.startswith(("rootlink", "uplink", "etclink", "sub/up2")):
            continue  # symlinks are the guest's to refuse: only the sandbox can resolve them
        with pytest.raises(PathRefused):
            check_path(bad)
    for bad in ["-rf", "--all", ":(top)x", ":/x", ":!x"]:
        with pytest.raises(PathRefused, match="starts with"):
            check_pathspec(bad)
    assert check_pathspec("./-rf") == "./-rf"


# -- escapes: git arguments ------------------------------------------------------------------------

PWNED = "/tmp/pwned"
BAD_REFS = [
    f"--output={PWNED}",
    "--output=out-diff.txt",
    "-p",
    "--exec=touch /tmp/pwned",
    "ext::sh -c touch% /tmp/pwned",
    "ext::sh",
    "EXT::sh",
    "file:///etc",
    "file:///workspace/.git",
    "https://example.invalid/repo.git",
    f"--upload-pack=touch {PWNED}",
    "-c core.pager=touch /tmp/pwned",
    "--no-index",
    "HEAD\x00--output=/tmp/pwned",
    "main..HEAD",
    "HEAD@{1}",
    "@",
    "refs/heads/.hidden",
    "main.lock",
    "a b",
    "/main",
    "main/",
    "a//b",
    "main.",
    "a\\b",
    "HEAD:a.txt",
    "a?b",
    "a*",
    "a[b",
    "~1",
    "\x7fmain",
    "",
]


def test_git_refuses_options_urls_and_bad_refs(http: Http, vm: str) -> None:
    init_repo(http, vm)
    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "a.txt"}, content=b"a\n")
    http.ok("POST", f"/v1/vms/{vm}/git/commit", 201, json={"message": "base"})
    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "a.txt"}, content=b"b\n")
    host_pwned = set(Path("/tmp").glob("pwned*"))
    base = f"/v1/vms/{vm}/git"

    for ref in BAD_REFS:
        for route in ("diff", "log"):
            r = http.call("GET", f"{base}/{route}", params={"ref": ref})
            assert_error(r, (400, 403), "bad_ref")

    commits = len(http.ok("GET", f"{base}/log"))
    for paths in [["-rf"], ["--all"], [":(top)a.txt"], [":/a.txt"], ["/etc/passwd"], ["../x"],
                  ["a.txt", "a\x00b"], ["%2e%2e/x"], ["a\\b"], ["--", "a.txt"]]:  # fmt: skip
        r = http.call("POST", f"{base}/commit", json={"message": "sneaky", "paths": paths})
        assert_error(r, (400, 403), "bad_path")
    for body in [
        {"message": "x", "author_name": "Eve <e@x>"},
        {"message": "x", "author_name": "Eve\nSigned-off-by: Root"},
        {"message": "x", "author_email": "e@x> <root@x"},
        {"message": "x", "paths": []},
        {"message": ""},
    ]:
        assert_error(http.call("POST", f"{base}/commit", json=body), 422, "invalid_request")
    assert len(http.ok("GET", f"{base}/log")) == commits

    # A message that starts with '-' is only a message.
    for message in ["-m --amend", "--help", "-rf /", "--author=Mallory <m@x>"]:
        http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "a.txt"}, content=message.encode())
        made = http.ok("POST", f"{base}/commit", 201, json={"message": message})
        assert made["subject"] == message
        assert made["author"] == "Repo"
    log = http.ok("GET", f"{base}/log")
    assert len(log) == commits + 4
    assert [c["subject"] for c in log[:4]] == [
        "--author=Mallory <m@x>",
        "-rf /",
        "--help",
        "-m --amend",
    ]

    # Nothing was written anywhere: not in the sandbox's /tmp, not in the workspace, not here.
    view = http.sh(
        vm, "ls -a /tmp . ; find / -xdev -name 'pwned*' -o -name 'out-diff*' 2>/dev/null; true"
    )
    assert b"pwned" not in view and b"out-diff" not in view
    assert set(Path("/tmp").glob("pwned*")) == host_pwned
    assert not list(http.plane.root.rglob("pwned*"))
    assert http.ok("GET", f"{base}/status")["clean"] is True


def test_refs_follow_check_ref_format() -> None:
    """Our reading of a ref name agrees with git's own ``check-ref-format``."""
    names = [
        "main", "HEAD", "feature/x", "v1.0", "a-b_c", "deadbeef", "refs/heads/main", "über",
        "a..b", "a/.b", ".a", "a.lock", "a/b.lock/c", "a b", "a~b", "a^b", "a:b", "a?b", "a*b",
        "a[b", "a\\b", "/a", "a/", "a//b", "a.", "a@{b", "@", "a@b", "a\tb", "a\x7fb",
        "x.lock.y", "a/-b", "a.b.", "a/./b", "a/../b",
    ]  # fmt: skip
    for name in names:
        git = subprocess.run(
            ["git", "check-ref-format", "--allow-onelevel", name], capture_output=True, check=False
        )
        assert (ref_format_problem(name) is None) == (git.returncode == 0), name
    for ref in ["HEAD~2", "main^", "HEAD^2~3", "v1.0~1", "0123abcd"]:
        assert check_ref(ref) == ref
    for ref in [*BAD_REFS, "-", "-main", "main~x", "main^{tree}"]:
        with pytest.raises(RefRefused):
            check_ref(ref)


def test_parsers() -> None:
    raw = (
        b"# branch.oid 1111111111111111111111111111111111111111\0# branch.head feat\0"
        b"# branch.upstream origin/feat\0# branch.ab +2 -1\0"
        b"1 .M N... 100644 100644 100644 aaaa aaaa a file.txt\0"
        b"2 R. N... 100644 100644 100644 bbbb bbbb R100 new name\0old name\0"
        b"u UU N... 100644 100644 100644 100644 cccc dddd eeee both.txt\0"
        b"? fresh.txt\0! ignored.log\0"
    )
    status = parse_status(raw)
    assert (status.branch, status.upstream, status.ahead, status.behind) == (
        "feat",
        "origin/feat",
        2,
        1,
    )
    assert [(f.path, f.kind, f.index, f.worktree, f.orig_path) for f in status.files] == [
        ("a file.txt", "changed", ".", "M", None),
        ("new name", "renamed", "R", ".", "old name"),
        ("both.txt", "unmerged", "U", "U", None),
        ("fresh.txt", "untracked", "?", "?", None),
        ("ignored.log", "ignored", "!", "!", None),
    ]
    assert not status.clean
    detached = parse_status(b"# branch.oid (initial)\0# branch.head (detached)\0! x\0")
    assert (detached.branch, detached.commit, detached.clean) == (None, None, True)
    commits = parse_log(b"s1\0A\0a@x\0d1\0-m one\0s2\0B\0b@x\0d2\0two")
    assert [(c.sha, c.subject) for c in commits] == [("s1", "-m one"), ("s2", "two")]
    assert parse_log(b"") == []


def test_git_runs_no_program_the_workspace_names(http: Http, vm: str) -> None:
    """What the workspace's configuration asks git to run (hooks, fsmonitor, an external diff,
    a textconv driver, signing, a pager) never runs for the API's git calls."""
    init_repo(http, vm)
    http.sh(
        vm,
        "mkdir -p .git/hooks && for h in pre-commit commit-msg post-commit prepare-commit-msg; do "
        "printf '#!/bin/sh\\ntouch /tmp/pwned-hook-%s\\n' $h > .git/hooks/$h; "
        "chmod +x .git/hooks/$h; done && "
        "git config core.hooksPath .git/hooks && "
        "git config core.fsmonitor 'touch /tmp/pwned-fsmonitor' && "
        "git config diff.external 'touch /tmp/pwned-external' && "
        "git config diff.sneaky.textconv 'touch /tmp/pwned-textconv' && "
        "git config core.pager 'touch /tmp/pwned-pager' && "
        "git config commit.gpgSign true && git config log.showSignature true && "
        "git config gpg.program 'touch /tmp/pwned-gpg' && "
        "echo '* diff=sneaky' > .gitattributes && "
        "printf '[core]\\n\\thooksPath = .git/hooks\\n\\tpager = touch /tmp/pwned-global\\n' "
        "> $HOME/.gitconfig",
    )
    base = f"/v1/vms/{vm}/git"
    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "a.txt"}, content=b"one\n")
    http.ok("POST", f"{base}/commit", 201, json={"message": "first"})
    http.ok("PUT", f"/v1/vms/{vm}/files", params={"path": "a.txt"}, content=b"two\n")
    assert "+two" in http.ok("GET", f"{base}/diff")["text"]
    assert "+two" in http.ok("GET", f"{base}/diff", params={"ref": "HEAD"})["text"]
    http.ok("GET", f"{base}/diff", params={"stat": True})
    assert not http.ok("GET", f"{base}/status")["clean"]
    made = http.ok("POST", f"{base}/commit", 201, json={"message": "second", "paths": ["a.txt"]})
    assert http.ok("GET", f"{base}/log")[0]["sha"] == made["sha"]
    assert http.sh(vm, "ls /tmp") == b""
    # The same configuration does run when git is called plainly: the canaries can fire.
    http.sh(vm, "git commit -q --allow-empty -m plain --no-gpg-sign")
    assert b"pwned-hook-pre-commit" in http.sh(vm, "ls /tmp")
