"""Runs the control plane starts (``POST /v1/plans/{id}/run``): what is refused and why, in
process; runs in the store, held by leases, on SQLite and PostgreSQL; and, with real agents in
bubblewrap sandboxes, a run that outlives its control plane: the server's shutdown stops its
pool (leases handed back, sandboxes destroyed, token revoked) and hands the run over, the next
control plane takes it up, and another replica stops it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agent_world import sample_repo
from conftest import FakeClock
from sandbox_fixtures import state_dir
from swarmstack.api import create_app
from swarmstack.api.runs import outcome
from swarmstack.auth import TokenKind, format_token, new_secret
from swarmstack.cli.main import app as cli_app
from swarmstack.client import SwarmClient
from swarmstack.config import Settings
from swarmstack.errors import Conflict
from swarmstack.llm.scripted import ScriptedModel, load_script
from swarmstack.llm.scripted import create_app as scripted_app
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import PlanSpec, TicketSpec, TicketState
from swarmstack.tickets.store import TicketStore

ADMIN = format_token(TokenKind.ADMIN, "0", new_secret())
PLAN = PlanSpec(title="one", tickets=[TicketSpec(id="only", title="the only ticket")])

pytestmark = pytest.mark.usefixtures("no_swarm_env")


def settings(tmp_path: Path, **more: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'swarm.db'}",
        admin_token=ADMIN,
        merge_queue=False,
        **more,
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path))) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        yield client


def _refusal(response: Any, status: int, says: str) -> None:
    assert response.status_code == status, response.text
    assert says in response.json()["message"], response.text


def test_a_run_is_refused_for_what_cannot_run_with_the_reason(api: TestClient) -> None:
    active = api.post("/v1/plans", json=PLAN.model_dump(mode="json")).json()["id"]
    draft = api.post("/v1/plans", params={"draft": True}, json=PLAN.model_dump(mode="json"))
    run = "/v1/plans/{}/run"
    _refusal(api.post(run.format(999)), 404, "no plan 999")
    _refusal(api.post(run.format(draft.json()["id"])), 409, "is a draft: approve it first")
    _refusal(api.post(run.format(active), json={"agents": 0}), 422, "agents")
    _refusal(api.post(run.format(active), json={"agents": 1001}), 422, "agents")
    _refusal(api.post(run.format(active), json={"agents": 65}), 422, "SWARM_MAX_RUN_AGENTS=64")
    _refusal(api.post(run.format(active), json={"backend": "firecracker"}), 422, "backend")
    _refusal(api.delete(run.format(active)), 409, f"plan {active} has no run going")
    _refusal(api.delete(run.format(999)), 404, "no plan 999")
    assert api.get("/v1/runs").json() == []
    _refusal(api.get("/v1/runs", headers={"Authorization": "Bearer x"}), 401, "malformed token")
    agent = api.post("/v1/tokens", json={"kind": "agent", "name": "a"}).json()["token"]
    forbidden = api.post(run.format(active), headers={"Authorization": f"Bearer {agent}"})
    _refusal(forbidden, 403, "needs an admin token")


def test_a_control_plane_may_start_no_agents_at_all(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, max_run_agents=0))) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        plan = client.post("/v1/plans", json=PLAN.model_dump(mode="json")).json()["id"]
        _refusal(client.post(f"/v1/plans/{plan}/run"), 409, "starts no agents")


def test_how_a_settled_run_ended_is_said_in_a_line() -> None:
    assert outcome({"done": 3}) == "3 of 3 tickets done"
    assert outcome({"done": 1, "dead": 1, "pending": 2}) == (
        "1 of 4 tickets done, 1 dead: retry them, then start the run again; 2 waiting on those"
    )


def test_a_plan_has_one_run_going_held_by_one_control_plane_at_a_time(
    store: TicketStore, clock: FakeClock
) -> None:
    runs = store.runs
    plan = store.create_plan(PLAN)
    run = runs.start(plan.id, 2, "bwrap", "a", lease_s=30)
    assert (run.state, run.held_by, run.adoptions) == ("running", "a", 0)
    with pytest.raises(Conflict, match=r"has a run going already \(2 agents\)"):
        runs.start(plan.id, 1, "bwrap", "b", lease_s=30)
    assert runs.adoptable() == [] and runs.adopt(run.id, "b", 30) is None  # a holds it

    clock.advance(31)  # a's lease ran out: it died
    assert runs.get(run.id).held_by is None
    assert [r.id for r in runs.adoptable()] == [run.id]
    taken = runs.adopt(run.id, "b", 30)
    assert taken is not None and (taken.held_by, taken.adoptions) == ("b", 1)
    assert runs.adopt(run.id, "c", 30) is None  # b took it first
    assert runs.renew(run.id, "a", 30) is None  # a, back, finds it is not its own any more
    assert runs.end(run.id, "finished", "done", owner="a") is False

    assert runs.hand_over(run.id, "b")  # b shuts down: the run waits for the next one
    waiting = runs.get(run.id)
    assert (waiting.state, waiting.held_by) == ("running", None)
    assert runs.adopt(run.id, "c", 30) is not None

    runs.request_stop(run.id)  # asked on another replica: c sees it when it renews
    renewed = runs.renew(run.id, "c", 30)
    assert renewed is not None and renewed.stop_requested
    assert runs.end(run.id, "stopped", "an admin stopped it", owner="c")
    assert runs.end(run.id, "failed", "again", owner=None) is False  # ended once
    assert runs.going(plan.id) is None and runs.adoptable() == []
    ended = runs.get(run.id)
    assert (ended.state, ended.reason, ended.ended_at) == (
        "stopped",
        "an admin stopped it",
        clock(),
    )
    second = runs.start(plan.id, 1, "qemu", "c", lease_s=30)
    assert [r.id for r in runs.find(plan.id)] == [run.id, second.id]
    assert runs.find(plan.id + 1) == []


def swarm(server: ThreadedServer, *args: str) -> str:
    """``swarm ARGS`` against ``server``: what it printed (it must succeed)."""
    env = {"SWARM_API_URL": server.url, "SWARM_TOKEN": ADMIN, "COLUMNS": "200"}
    result = CliRunner().invoke(cli_app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _wait(what: str, done: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := done()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return value


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")
def test_a_run_outlives_its_control_plane_and_any_replica_stops_it(tmp_path: Path) -> None:
    slow = {"match": r"You are implementing ticket only\b", "delay_s": 60, "turns": ["ok"]}
    sandboxes = state_dir()

    def control_plane() -> ThreadedServer:
        return ThreadedServer(create_app(config, store=TicketStore.from_settings(config))).start()

    try:
        with ThreadedServer(scripted_app(ScriptedModel(load_script({"sessions": [slow]})))) as up:
            config = settings(tmp_path, llm_upstream_url=up.url, sandbox_dir=sandboxes)
            store = TicketStore.from_settings(config)
            store.migrate()
            first = control_plane()
            with SwarmClient(first.url, ADMIN) as admin:
                plan = admin.create_plan(PLAN)
                admin.import_repo(plan.id, str(sample_repo(tmp_path / "repo")))
                started = swarm(
                    first, "plan", "start", str(plan.id), "-n", "1", "--backend", "bwrap"
                )
                assert f"plan {plan.id}: run" in started and "started, 1 agent (bwrap)" in started
                (run,) = admin.runs(plan.id)
                assert run.state == "running" and run.held_by is not None
                _wait("no agent claimed the ticket", lambda: admin.agents(plan.id))
            first.stop(timeout_s=120)  # its shutdown stops the pool and hands the run over
            ticket = store.find_ticket(plan.id, "only")
            assert ticket.state is TicketState.READY and ticket.attempts == 0
            revoked = {t["name"]: t["revoked_at"] for t in store.tokens.list()}
            assert revoked[f"run-{plan.id}"] is not None
            assert [p for p in sandboxes.glob("agents-*/plan-*/sandboxes/*") if p.is_dir()] == []
            (waiting,) = store.runs.find(plan.id)
            assert (waiting.state, waiting.held_by) == ("running", None)

            second = control_plane()
            with SwarmClient(second.url, ADMIN) as admin:
                _wait("the run was not taken up", lambda: admin.agents(plan.id))
                (taken,) = admin.runs(plan.id)
                assert taken.adoptions == 1 and taken.held_by not in (None, run.held_by)
            third = control_plane()  # another replica on the same store
            with SwarmClient(third.url, ADMIN) as other:
                listed = swarm(third, "plan", "runs", str(plan.id))
                assert "running" in listed and str(taken.held_by) in listed  # still second's
                # Asked of the third, the stop is made by the second, which holds the run.
                assert f"run {run.id} stopped" in swarm(third, "plan", "stop", str(plan.id))
                (stopped,) = other.runs(plan.id)
                assert (stopped.state, stopped.reason) == ("stopped", "an admin stopped it")
                assert other.agents(plan.id) == []
            for server in (second, third):
                server.stop(timeout_s=120)
            ticket = store.find_ticket(plan.id, "only")
            assert ticket.state is TicketState.READY and ticket.attempts == 0
            assert [r.state for r in store.runs.find(plan.id)] == ["stopped"]
            store.close()
        left = [p for p in sandboxes.glob("agents-*/plan-*/sandboxes/*") if p.is_dir()]
        assert left == []
    finally:
        shutil.rmtree(sandboxes, ignore_errors=True)
