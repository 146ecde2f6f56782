"""Runs the control plane starts (``POST /v1/plans/{id}/run``): what is refused and why, in
process; and, with real agents in bubblewrap sandboxes, a pool that the server's shutdown
stops — its leases handed back, its sandboxes destroyed, its token revoked."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent_world import sample_repo
from sandbox_fixtures import state_dir
from swarmstack.api import create_app
from swarmstack.api.runs import outcome
from swarmstack.auth import TokenKind, format_token, new_secret
from swarmstack.client import SwarmClient
from swarmstack.config import Settings
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


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")
def test_the_servers_shutdown_stops_its_runs_and_hands_their_leases_back(tmp_path: Path) -> None:
    slow = {"match": r"You are implementing ticket only\b", "delay_s": 60, "turns": ["ok"]}
    sandboxes = state_dir()
    try:
        with ThreadedServer(scripted_app(ScriptedModel(load_script({"sessions": [slow]})))) as up:
            config = settings(tmp_path, llm_upstream_url=up.url, sandbox_dir=sandboxes)
            store = TicketStore.from_settings(config)
            store.migrate()
            server = ThreadedServer(create_app(config, store=store)).start()
            with SwarmClient(server.url, ADMIN) as admin:
                plan = admin.create_plan(PLAN)
                admin.import_repo(plan.id, str(sample_repo(tmp_path / "repo")))
                run = admin.start_run(plan.id, agents=1, backend="bwrap")
                assert run.state == "running"
                deadline = time.monotonic() + 60
                while not admin.agents(plan.id):
                    assert time.monotonic() < deadline, "no agent claimed the ticket"
                    time.sleep(0.2)
                tokens = {t.name: t for t in admin.list_tokens()}
            server.stop(timeout_s=120)  # the app's shutdown stops the run first
            ticket = store.find_ticket(plan.id, "only")
            assert ticket.state is TicketState.READY and ticket.attempts == 0
            assert tokens[f"run-{plan.id}"].revoked_at is None
            revoked = {t["name"]: t["revoked_at"] for t in store.tokens.list()}
            assert revoked[f"run-{plan.id}"] is not None
            store.close()
        left = [p for p in sandboxes.glob("agents-*/plan-*/sandboxes/*") if p.is_dir()]
        assert left == []
    finally:
        shutil.rmtree(sandboxes, ignore_errors=True)
