"""The git broker and the local forge, with the real git client over real HTTP."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from swarmstack.api import create_app
from swarmstack.auth import TokenKind
from swarmstack.config import Settings
from swarmstack.errors import Conflict, UsageError
from swarmstack.forge import hostgit
from swarmstack.forge.local import LocalForge
from swarmstack.forge.pktline import ref_updates
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import Lease, PlanSpec, TicketSpec
from swarmstack.tickets.store import TicketStore

ADMIN = "swadmin_0_" + "b" * 43


def client_git(
    *args: str, cwd: Path | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The git client a sandbox runs, with the lease token as a bearer header."""
    auth = ["-c", f"http.extraHeader=Authorization: Bearer {token}"] if token else []
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "agent",
        "GIT_AUTHOR_EMAIL": "agent@swarm.invalid",
        "GIT_COMMITTER_NAME": "agent",
        "GIT_COMMITTER_EMAIL": "agent@swarm.invalid",
    }
    return subprocess.run(
        ["git", *auth, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


@dataclass
class Forge:
    store: TicketStore
    url: str
    repo: Path  # the plan's bare repository
    plan_id: int
    tmp: Path

    def lease(self) -> Lease:
        lease = self.store.claim("agent", ttl_s=300)
        assert lease is not None
        return lease

    def remote(self) -> str:
        return f"{self.url}/git/plan-{self.plan_id}.git"

    def clone(self, token: str, name: str) -> Path:
        target = self.tmp / name
        done = client_git("clone", "-q", self.remote(), str(target), token=token)
        assert done.returncode == 0, done.stderr
        return target

    def refs(self) -> dict[str, str]:
        out = hostgit.run("for-each-ref", "--format=%(refname) %(objectname)", cwd=self.repo)
        return dict(line.split(" ", 1) for line in out.decode().splitlines())


def push(workspace: Path, token: str | None, *refspecs: str) -> subprocess.CompletedProcess[str]:
    return client_git("push", "-q", "origin", *refspecs, cwd=workspace, token=token)


def commit(workspace: Path, name: str, text: str) -> None:
    (workspace / name).write_text(text)
    assert client_git("add", name, cwd=workspace).returncode == 0
    done = client_git("commit", "-q", "-m", f"add {name}", cwd=workspace)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[Forge]:
    source = tmp_path / "source"
    source.mkdir()
    assert client_git("init", "-q", "-b", "main", str(source)).returncode == 0
    commit(source, "README.md", "# sample\n")
    settings = Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 's.db'}", admin_token=ADMIN
    )
    store = TicketStore.from_settings(settings)
    store.migrate()
    plan = store.create_plan(
        PlanSpec(title="p", tickets=[TicketSpec(id="a", title="a"), TicketSpec(id="b", title="b")])
    )
    repo = LocalForge(settings.repos_dir).import_repo(plan.id, source)
    try:
        with ThreadedServer(create_app(settings, store=store)) as server:
            yield Forge(store, server.url, repo, plan.id, tmp_path)
    finally:
        store.close()


def test_a_lease_fetches_and_pushes_its_own_branch(forge: Forge) -> None:
    lease = forge.lease()
    workspace = forge.clone(lease.token, "ws")
    assert (workspace / "README.md").read_text() == "# sample\n"
    commit(workspace, "feature.py", "print('hi')\n")
    branch = f"swarm/{lease.ticket.id}"
    pushed = client_git(
        "push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=workspace, token=lease.token
    )
    assert pushed.returncode == 0, pushed.stderr
    head = client_git("rev-parse", "HEAD", cwd=workspace).stdout.strip()
    assert forge.refs()[f"refs/heads/{branch}"] == head
    # Again, forced (a retry of the ticket rewrites its branch): allowed, it is its own.
    commit(workspace, "more.py", "x = 1\n")
    forced = client_git(
        "push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}", cwd=workspace, token=lease.token
    )
    assert forced.returncode == 0, forced.stderr


def test_every_other_push_is_refused_and_changes_nothing(forge: Forge) -> None:
    lease = forge.lease()
    other = forge.lease()
    workspace = forge.clone(lease.token, "ws")
    commit(workspace, "x.txt", "x\n")
    own = f"refs/heads/swarm/{lease.ticket.id}"
    assert (
        client_git(
            "push", "-q", "origin", f"HEAD:{own}", cwd=workspace, token=lease.token
        ).returncode
        == 0
    )
    before = forge.refs()
    client_git("tag", "v1", cwd=workspace)
    attempts = {
        "main": ["push", "origin", "HEAD:refs/heads/main"],
        "another ticket's branch": ["push", "origin", f"HEAD:refs/heads/swarm/{other.ticket.id}"],
        "a tag": ["push", "origin", "refs/tags/v1"],
        "a deletion": ["push", "origin", f":{own}"],
        "two refs, one not its own": ["push", "origin", f"HEAD:{own}", "HEAD:refs/heads/x"],
    }
    for what, args in attempts.items():
        done = client_git(*args, cwd=workspace, token=lease.token)
        assert done.returncode != 0, what
        assert "403" in done.stderr, (what, done.stderr)
    assert forge.refs() == before


def test_a_stale_foreign_or_missing_token_cannot_push_or_fetch(forge: Forge) -> None:
    lease = forge.lease()
    workspace = forge.clone(lease.token, "ws")
    commit(workspace, "x.txt", "x\n")
    branch = f"HEAD:refs/heads/swarm/{lease.ticket.id}"
    forge.store.fail(lease.ticket.id, lease.epoch, "gave up")
    stale = client_git("push", "origin", branch, cwd=workspace, token=lease.token)
    assert stale.returncode != 0 and "403" in stale.stderr
    agent_token = forge.store.tokens.create(TokenKind.AGENT, "an agent")
    unknown = "swlease_1-1_" + "z" * 43
    for token in (agent_token, unknown, None):
        assert push(workspace, token, branch).returncode != 0
    advertisement = f"{forge.remote()}/info/refs?service=git-receive-pack"
    for token, status in ((agent_token, 403), (unknown, 401), (None, 401), (lease.token, 403)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = httpx.get(advertisement, headers=headers)
        assert answer.status_code == status, (token, answer.text)
    assert "lease token" in httpx.get(advertisement).text  # and it says what it wants
    assert client_git("ls-remote", forge.remote(), token=lease.token).returncode != 0
    assert f"refs/heads/swarm/{lease.ticket.id}" not in forge.refs()
    # An operator may look (fetch), not push.
    assert client_git("ls-remote", forge.remote(), token=ADMIN).returncode == 0
    refused = client_git("push", "origin", branch, cwd=workspace, token=ADMIN)
    assert refused.returncode != 0 and "403" in refused.stderr


def test_basic_authentication_with_the_token_as_password(forge: Forge) -> None:
    lease = forge.lease()
    url = forge.remote().replace("http://", f"http://agent:{lease.token}@")
    listed = client_git("ls-remote", url)
    assert listed.returncode == 0, listed.stderr
    assert "refs/heads/main" in listed.stdout


def test_host_side_git_runs_nothing_a_repository_names(forge: Forge, tmp_path: Path) -> None:
    """Even a forge repository whose own configuration names hooks, an fsmonitor, filter and
    diff drivers (which no push can write, but say it had them) runs none of them on the host,
    and the tree's .gitattributes asking for those drivers changes nothing."""
    marker = tmp_path / "ran-on-the-host"
    evil = tmp_path / "evil-hooks"
    evil.mkdir()
    script = f'#!/bin/sh\necho "$0" >> {marker}\n'
    for hook in ("pre-receive", "update", "post-receive", "post-update", "reference-transaction"):
        for directory in (evil, forge.repo / "hooks"):
            (directory / hook).write_text(script)
            (directory / hook).chmod(0o755)
    command = f"sh -c 'echo driver >> {marker}'"
    for key, value in {
        "core.hooksPath": str(evil),
        "core.fsmonitor": command,
        "filter.evil.clean": command,
        "filter.evil.smudge": command,
        "filter.evil.process": command,
        "diff.evil.command": command,
        "diff.evil.textconv": command,
    }.items():
        subprocess.run(
            ["git", "config", "--file", str(forge.repo / "config"), key, value], check=True
        )
    lease = forge.lease()
    workspace = forge.clone(lease.token, "ws")
    commit(workspace, ".gitattributes", "* filter=evil diff=evil\n")
    commit(workspace, "data.txt", "content\n")
    pushed = client_git(
        "push",
        "-q",
        "origin",
        f"HEAD:refs/heads/swarm/{lease.ticket.id}",
        cwd=workspace,
        token=lease.token,
    )
    assert pushed.returncode == 0, pushed.stderr
    stat = hostgit.run("diff", "--stat", "main", f"swarm/{lease.ticket.id}", cwd=forge.repo)
    assert b"data.txt" in stat
    hostgit.run("log", "-p", f"swarm/{lease.ticket.id}", cwd=forge.repo)
    assert not marker.exists(), marker.read_text()


def test_the_forge_imports_a_repository_once(forge: Forge, tmp_path: Path) -> None:
    with pytest.raises(Conflict, match="already has a repository"):
        LocalForge(forge.repo.parent).import_repo(forge.plan_id, tmp_path / "source")
    with pytest.raises(UsageError, match="is not a git repository"):
        LocalForge(tmp_path / "elsewhere").import_repo(99, tmp_path)


def test_push_commands_are_read_from_pkt_lines() -> None:
    old, new = "a" * 40, "b" * 40
    first = f"{old} {new} refs/heads/swarm/7\0report-status side-band-64k\n".encode()
    second = f"{new} {'0' * 40} refs/heads/swarm/7\n".encode()
    body = b"".join(f"{len(p) + 4:04x}".encode() + p for p in (first, second)) + b"0000PACK..."
    updates = ref_updates(body)
    assert [u.ref for u in updates] == ["refs/heads/swarm/7"] * 2
    assert not updates[0].deletes and updates[1].deletes
    for broken in (b"", b"00zz", b"0010short", b"0009abcd\n0000"):
        with pytest.raises(UsageError):
            ref_updates(broken)


# -- the forge through the API: a plan's repository and its pull requests -----------------------


def test_a_completed_ticket_with_its_branch_opens_one_pull_request(forge: Forge) -> None:
    from typer.testing import CliRunner

    from swarmstack.cli.main import app
    from swarmstack.client import SwarmClient
    from swarmstack.tickets.models import TicketResult

    lease = forge.lease()
    workspace = forge.clone(lease.token, "ws")
    (workspace / "README.md").write_text("# sample\nmore\n")
    commit(workspace, "feature.py", "print('hi')\n")
    client_git("commit", "-qam", "readme", cwd=workspace)
    assert push(workspace, lease.token, f"HEAD:refs/heads/swarm/{lease.ticket.id}").returncode == 0
    with SwarmClient(forge.url, lease.token) as agent:
        agent.complete(lease, TicketResult(summary="done", branch=f"swarm/{lease.ticket.id}"))
    pull = forge.store.pull_request(lease.ticket.id)
    assert (pull.base, pull.head, pull.state) == ("main", f"swarm/{lease.ticket.id}", "open")
    assert (pull.files_changed, pull.insertions, pull.deletions) == (2, 2, 0)
    head = client_git("rev-parse", "HEAD", cwd=workspace).stdout.strip()
    assert pull.head_sha == head
    cli = CliRunner()
    common = ["--api", forge.url, "--token", ADMIN]
    listed = cli.invoke(app, ["pr", "ls", "--json", *common])
    assert listed.exit_code == 0, listed.output
    assert [p["ticket_id"] for p in json.loads(listed.output)] == [lease.ticket.id]
    shown = cli.invoke(app, ["pr", "show", str(lease.ticket.id), *common])
    assert "2 files changed, 2 insertions(+), 0 deletions(-)" in shown.output
    diff = cli.invoke(app, ["pr", "diff", str(lease.ticket.id), *common])
    assert "+print('hi')" in diff.output and "+more" in diff.output
    missing = cli.invoke(app, ["pr", "show", "999", *common])
    assert missing.exit_code == 1 and "has no pull request" in missing.output
    opened = [e for e in forge.store.events_after(0) if e.kind == "pr.opened"]
    assert len(opened) == 1 and opened[0].data["files_changed"] == 2


def test_a_reported_branch_that_never_arrived_is_noted_not_opened(forge: Forge) -> None:
    from swarmstack.client import SwarmClient
    from swarmstack.errors import NotFound
    from swarmstack.tickets.models import TicketResult

    lease = forge.lease()
    with SwarmClient(forge.url, lease.token) as agent:
        done = agent.complete(lease, TicketResult(branch=f"swarm/{lease.ticket.id}"))
    assert done.state.value == "done"  # the completion stands
    with pytest.raises(NotFound):
        forge.store.pull_request(lease.ticket.id)
    [missing] = [e for e in forge.store.events_after(0) if e.kind == "pr.missing"]
    assert "no branch swarm/" in missing.data["reason"]


def test_a_plans_repository_is_imported_through_the_api(forge: Forge, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from swarmstack.cli.main import app

    plan = forge.store.create_plan(
        PlanSpec(title="second", tickets=[TicketSpec(id="c", title="c")])
    )
    common = ["--api", forge.url, "--token", ADMIN]
    cli = CliRunner()
    done = cli.invoke(
        app, ["plan", "repo", str(plan.id), str(tmp_path / "source"), "--json", *common]
    )
    assert done.exit_code == 0, done.output
    repo = json.loads(done.output)
    assert repo["default_branch"] == "main" and repo["remote"] == f"/git/plan-{plan.id}.git"
    again = cli.invoke(app, ["plan", "repo", str(plan.id), str(tmp_path / "source"), *common])
    assert again.exit_code == 1 and "already has a repository" in again.output
    not_git = cli.invoke(app, ["plan", "repo", str(plan.id + 1), str(tmp_path), *common])
    assert not_git.exit_code == 1 and "no plan" in not_git.output
    third = forge.store.create_plan(
        PlanSpec(title="third", tickets=[TicketSpec(id="d", title="d")])
    )
    plain_dir = cli.invoke(app, ["plan", "repo", str(third.id), str(tmp_path / "data"), *common])
    assert plain_dir.exit_code == 2 and "is not a git repository" in plain_dir.output
