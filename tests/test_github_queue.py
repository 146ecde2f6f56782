"""The merge queue publishing to GitHub: a real control plane, a fake GitHub (REST and git's
smart HTTP over a bare repository), and the runner's own workspace code pushing through the
git broker. One pull request per ticket, a fix attempt updating the same one, merges in DAG
order, and the token only ever in the control plane."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_world import ADMIN, CANARY_GITHUB, SwarmWorld
from fake_github import FakeGitHub
from swarmstack.errors import NotFound
from swarmstack.forge.local import LocalForge
from swarmstack.tickets.models import PlanSpec, TicketSpec, TicketState
from test_merge_queue import _claim, _push, _readme, _workspace, _world

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

REPO = "swarm-bot/calc"


@pytest.fixture
def github(tmp_path: Path) -> Iterator[FakeGitHub]:
    server = FakeGitHub(tmp_path / "github")
    server.add_user("swarm-bot", CANARY_GITHUB)
    server.start()
    yield server
    server.stop()


def _plan() -> PlanSpec:
    return PlanSpec(
        title="calc on GitHub",
        checks="python3 -m unittest -q",
        tickets=[
            TicketSpec(id="A", title="say what it adds", acceptance=["README says it adds"]),
            TicketSpec(id="B", title="say it is tested"),
            TicketSpec(id="C", title="a changelog", depends_on=["A", "B"]),
        ],
    )


def _github_world(tmp_path: Path, github: FakeGitHub) -> Any:
    return _world(tmp_path, _plan(), github_api_url=github.api_url, github_git_url=github.url)


def _merges(github: FakeGitHub) -> list[int]:
    """The pull requests GitHub was asked to merge, in order."""
    return [
        int(r.path.split("/")[-2])
        for r in github.requests
        if r.method == "PUT" and r.path.endswith("/merge")
    ]


def test_one_pull_request_per_ticket_fixes_update_it_and_merges_follow_the_dag(
    tmp_path: Path, github: FakeGitHub
) -> None:
    with _github_world(tmp_path, github) as world:
        linked = world.admin.link_github(world.plan_id, REPO, create=True)
        assert linked["created"] is True and linked["branch"] == "main"
        assert github.rev(REPO, "main") == world.branch_sha("main")

        a, b = _claim(world, "A"), _claim(world, "B")
        ws_a, ws_b = _workspace(world, a, tmp_path), _workspace(world, b, tmp_path)
        _readme(ws_a, "A tiny calculator that adds.")
        _readme(ws_b, "A tiny calculator with tests.")
        assert _push(world, a, ws_a) is TicketState.DONE
        assert _push(world, b, ws_b) is TicketState.READY  # conflicted: back for a fix
        pulls = github.repo(REPO).pulls
        assert len(pulls) == 2
        b_number = world.admin.get_pull(b.ticket.id).number
        assert b_number is not None and pulls[b_number].state == "open"
        comments = [
            r for r in github.requests if r.method == "POST" and r.path.endswith("/comments")
        ]
        assert len(comments) == 1 and "conflicted in README.md" in comments[0].body["body"]

        fix = _claim(world, "B")
        ws = _workspace(world, fix, tmp_path)
        _readme(ws, "A tiny calculator that adds, with tests.")
        assert _push(world, fix, ws) is TicketState.DONE
        assert len(github.repo(REPO).pulls) == 2  # the fix updated B's pull request
        assert world.admin.get_pull(b.ticket.id).number == b_number

        c = _claim(world, "C")
        ws_c = _workspace(world, c, tmp_path)
        (ws_c.path / "CHANGES.md").write_text("- says what it adds and that it is tested\n")
        assert _push(world, c, ws_c) is TicketState.DONE

        numbers = {k: world.admin.get_pull(world.ticket(k).id).number for k in "ABC"}
        assert sorted(numbers.values()) == [1, 2, 3]  # type: ignore[type-var]
        pull_c = github.repo(REPO).pulls[numbers["C"]]  # type: ignore[index]
        assert f"#{numbers['A']}" in pull_c.body and f"#{numbers['B']}" in pull_c.body
        assert "README says it adds" in github.repo(REPO).pulls[numbers["A"]].body  # type: ignore[index]
        # Every pull request merged, each after those of its dependencies.
        assert _merges(github)[-3:] == [numbers["A"], numbers["B"], numbers["C"]]
        assert all(p.merged_at for p in github.repo(REPO).pulls.values())
        # GitHub's integration branch came back into the forge; what the agents build on.
        assert github.rev(REPO, "main") == world.branch_sha("main")
        for key in "ABC":
            pull = world.admin.get_pull(world.ticket(key).id)
            assert pull.state == "merged" and pull.url and pull.url.startswith(github.url)
        _no_token_in_the_forge(world)


def _no_token_in_the_forge(world: SwarmWorld) -> None:
    repo = LocalForge(world.settings.repos_dir).require(world.plan_id)
    for path in repo.rglob("*"):
        if path.is_file() and path.stat().st_size < 1 << 20:
            assert CANARY_GITHUB.encode() not in path.read_bytes(), path
    events = world.store.events_after(0, limit=100_000)
    assert CANARY_GITHUB not in str([e.model_dump() for e in events])


def test_linking_says_what_is_wrong(tmp_path: Path, github: FakeGitHub) -> None:
    with _github_world(tmp_path, github) as world:
        url = f"{world.url}/v1/plans/{world.plan_id}/github"
        headers = {"Authorization": f"Bearer {ADMIN}"}
        missing = httpx.post(url, json={"repository": REPO}, headers=headers)
        assert missing.status_code == 404 and "--create-repo" in missing.json()["message"]
        bad = httpx.post(url, json={"repository": "not a repo"}, headers=headers)
        assert bad.status_code == 422 and "owner/name" in bad.json()["message"]
        assert world.admin.get_plan(world.plan_id).github is None
        with pytest.raises(NotFound):
            world.admin.link_github(world.plan_id + 1, REPO, create=True)
