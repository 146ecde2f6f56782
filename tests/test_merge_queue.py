"""The merge queue, end to end in a real control plane: agents' branches (pushed through the
git broker by the runner's own workspace code) are merged into the integration branch, checked
in a bubblewrap sandbox, and only then done; a conflict or failing checks go back as a fix
attempt on the same branch and pull request, and dead after the last attempt."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent_world import SwarmWorld, swarm_world
from sandbox_fixtures import state_dir
from swarmstack.agent.task import Task
from swarmstack.agent.workspace import Workspace
from swarmstack.client import SwarmClient
from swarmstack.forge import hostgit
from swarmstack.forge.local import LocalForge
from swarmstack.forge.queue import MergeQueue
from swarmstack.sandbox.base import Backend
from swarmstack.sandbox.bwrap import BwrapBackend
from swarmstack.tickets.models import Lease, PlanSpec, TicketResult, TicketSpec, TicketState

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

CHECKS = "python3 -m unittest -q"


def _plan(*keys: str, **options: Any) -> PlanSpec:
    tickets = [TicketSpec(id=k, title=f"change {k}") for k in keys]
    return PlanSpec(title="merge queue", tickets=tickets, checks=CHECKS, **options)


def _world(tmp_path: Path, plan: PlanSpec, **settings: Any) -> Any:
    sandboxes = state_dir()
    return swarm_world(
        tmp_path,
        {"sessions": []},
        plan,
        sandbox_backend="bwrap",
        sandbox_dir=sandboxes,
        **settings,
    )


def _claim(world: SwarmWorld, key: str) -> Lease:
    lease = world.store.claim(f"agent-{key}", plan_id=world.plan_id)
    assert lease is not None
    if lease.ticket.key != key:  # claim order is by rank: hand back the other and try again
        world.store.release(lease.ticket.id, lease.epoch, "not this one")
        return _claim(world, key)
    return lease


def _workspace(world: SwarmWorld, lease: Lease, tmp_path: Path) -> Workspace:
    with SwarmClient(world.url, lease.token) as agent:
        context = agent.context(lease)
    path = tmp_path / f"ws-{lease.ticket.id}-{lease.epoch}"
    return Workspace.clone(world.url, lease, path, base=context.base)


def _push(world: SwarmWorld, lease: Lease, ws: Workspace) -> TicketState:
    """Commit and push what the workspace holds, complete, and wait for the merge queue."""
    assert ws.commit(f"{lease.ticket.key}: change")
    ws.push()
    with SwarmClient(world.url, lease.token) as agent:
        agent.complete(lease, TicketResult(summary="changed it", branch=ws.branch))
    return world.settled(lease.ticket.key).state


def _readme(ws: Workspace, line: str) -> None:
    (ws.path / "README.md").write_text(f"# calc\n\n{line}\n")


def _show(world: SwarmWorld, ref: str, path: str) -> str:
    repo = LocalForge(world.settings.repos_dir).require(world.plan_id)
    return hostgit.run("show", f"{ref}:{path}", cwd=repo).decode()


def test_a_conflict_goes_back_to_an_agent_and_its_fix_merges_through_the_same_pull_request(
    tmp_path: Path,
) -> None:
    with _world(tmp_path, _plan("T-1", "T-2")) as world:
        one, two = _claim(world, "T-1"), _claim(world, "T-2")
        ws1, ws2 = _workspace(world, one, tmp_path), _workspace(world, two, tmp_path)
        _readme(ws1, "A tiny calculator that adds.")
        _readme(ws2, "A tiny calculator with tests.")
        assert _push(world, one, ws1) is TicketState.DONE
        assert _push(world, two, ws2) is TicketState.READY  # back for a fix attempt
        back = world.ticket("T-2")
        assert back.fix is not None and back.fix.reason == "conflict"
        assert back.fix.conflicts == ["README.md"] and "CONFLICT" in back.fix.details
        assert back.fix.base == "main" and back.fix.base_sha == world.branch_sha("main")
        assert back.last_error == "merging into main conflicted in README.md"
        first_pull = world.admin.get_pull(back.id)
        assert first_pull.state == "open"

        fix = _claim(world, "T-2")
        assert fix.ticket.fix is not None and fix.ticket.attempts == 2
        ws = _workspace(world, fix, tmp_path)
        assert ws.conflicted == ["README.md"]
        text = (ws.path / "README.md").read_text()
        assert "<<<<<<< " in text and "A tiny calculator that adds." in text
        prompt = Task(fix.ticket, ws.path, "", "", plan_title="merge queue").prompt()
        assert prompt.startswith("You are fixing ticket T-2 of the plan 'merge queue': attempt 2")
        assert "- README.md" in prompt and "conflict markers" in prompt
        assert ws.markers_left(ws.conflicted) == ["README.md"]  # the runner would refuse it
        _readme(ws, "A tiny calculator that adds, with tests.")
        assert _push(world, fix, ws) is TicketState.DONE

        readme = _show(world, "main", "README.md")
        assert "A tiny calculator that adds, with tests." in readme
        pull = world.admin.get_pull(back.id)
        assert (pull.id, pull.state, pull.merge_sha) == (
            first_pull.id,
            "merged",
            world.branch_sha("main"),
        )
        assert len(world.admin.list_pulls(plan_id=world.plan_id)) == 2  # one per ticket
        kinds = [e.kind for e in world.events(back.id)]
        assert kinds.count("merge.conflict") == 1 and kinds.count("pr.opened") == 1
        assert kinds.count("pr.updated") == 1 and kinds.count("merge.checked") == 1
        assert kinds[-1] == "ticket.done"


def test_failing_checks_send_the_output_back_and_the_last_attempt_needs_a_person(
    tmp_path: Path,
) -> None:
    with _world(tmp_path, _plan("T-1"), max_attempts=2) as world:
        main_before = world.branch_sha("main")
        ticket = world.ticket("T-1")
        for attempt in (1, 2):
            lease = _claim(world, "T-1")
            ws = _workspace(world, lease, tmp_path)
            assert ws.conflicted == []
            assert ws.base_sha == (main_before if attempt == 1 else ticket.fix.head_sha)
            wrong = "-" if attempt == 1 else "*"  # the fix attempt gets it wrong again
            (ws.path / "calc.py").write_text(f"def add(a, b):\n    return a {wrong} b\n")
            state = _push(world, lease, ws)
            ticket = world.ticket("T-1")
            assert ticket.fix is not None and ticket.fix.reason == "checks"
            assert ticket.fix.command == CHECKS and ticket.fix.exit_code not in (None, 0)
            assert "AssertionError" in ticket.fix.details and "FAILED" in ticket.fix.details
            assert state is (TicketState.READY if attempt == 1 else TicketState.DEAD)
        assert world.branch_sha("main") == main_before  # nothing that failed was merged
        assert world.admin.get_pull(ticket.id).state == "open"
        dead = world.events(ticket.id)[-1]
        assert dead.kind == "ticket.dead" and dead.data["attention"] is True
        assert "the checks failed on the merge into main" in dead.data["reason"]


def test_a_plan_merges_into_its_own_integration_branch(tmp_path: Path) -> None:
    plan = _plan("T-1", integration_branch="swarm/integration")
    with _world(tmp_path, plan) as world:
        main_before = world.branch_sha("main")
        lease = _claim(world, "T-1")
        with SwarmClient(world.url, lease.token) as agent:
            context = agent.context(lease)
        assert context.base == "swarm/integration"
        ws = _workspace(world, lease, tmp_path)
        _readme(ws, "Integrated.")
        assert _push(world, lease, ws) is TicketState.DONE
        assert "Integrated." in _show(world, "swarm/integration", "README.md")
        assert world.branch_sha("main") == main_before
        assert world.admin.get_pull(lease.ticket.id).base == "swarm/integration"


def test_a_ticket_left_merging_by_a_stopped_control_plane_is_merged_when_one_starts(
    tmp_path: Path,
) -> None:
    with _world(tmp_path, _plan("T-1"), merge_queue=False) as world:
        lease = _claim(world, "T-1")
        ws = _workspace(world, lease, tmp_path)
        _readme(ws, "Merged after a restart.")
        assert ws.commit("T-1: change")
        ws.push()
        # As if the control plane stopped right after the completion: the ticket is merging
        # in the store and no queue holds it.
        world.store.complete(
            lease.ticket.id, lease.epoch, TicketResult(branch=ws.branch), merge=True
        )
        queue = MergeQueue(
            world.store,
            LocalForge(world.settings.repos_dir),
            _backend(world),
            checks_timeout_s=120,
        )
        assert world.ticket("T-1").state is TicketState.MERGING

        async def resume() -> None:
            queue.start()
            deadline = time.monotonic() + 60
            while world.ticket("T-1").state is TicketState.MERGING:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await queue.close()

        asyncio.run(resume())
        assert world.ticket("T-1").state is TicketState.DONE
        assert "Merged after a restart." in _show(world, "main", "README.md")


def _backend(world: SwarmWorld) -> Callable[[], Awaitable[Backend]]:
    async def make() -> Backend:
        return BwrapBackend(world.settings.sandbox_dir)

    return make
