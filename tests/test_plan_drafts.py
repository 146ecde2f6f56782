"""Plans that are drafts first: stored without tickets, read, exported, edited and re-imported
by a person, approved later; and plans a design agent writes (designing, then draft or failed).

The store tests take the ``store`` fixture (SQLite and PostgreSQL); the HTTP tests run the app
in process on both; the CLI tests run a real server, as ``test_client_cli.py`` does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from conftest import FakeClock
from swarmstack.api import create_app
from swarmstack.auth import TokenKind, format_token, new_secret
from swarmstack.bench.serverproc import ServerProcess
from swarmstack.cli.main import app as cli_app
from swarmstack.client import SwarmClient
from swarmstack.config import Settings
from swarmstack.db import Database, migrate
from swarmstack.errors import Conflict, NotFound, PlanInvalid
from swarmstack.tickets.design import coverage
from swarmstack.tickets.graph import validate
from swarmstack.tickets.models import (
    Plan,
    PlanSpec,
    Requirement,
    TicketResult,
    TicketSpec,
    TicketState,
    WavesReport,
)
from swarmstack.tickets.plan import load_plan
from swarmstack.tickets.schema import MIGRATIONS
from swarmstack.tickets.store import Change, TicketStore

RESTARTED = "the control plane restarted while the plan was being designed"


pytestmark = pytest.mark.usefixtures("no_swarm_env")


def tk(key: str, deps: Sequence[str] = (), **fields: Any) -> TicketSpec:
    return TicketSpec(id=key, title=f"ticket {key}", depends_on=list(deps), **fields)


def diamond(title: str = "draft plan") -> PlanSpec:
    """S <- B, S <- C, (B, C) <- V, covering R1 and R2; ranks S 8, C 7, B 6, V 4."""
    return PlanSpec(
        title=title,
        description="for the draft tests",
        requirements=[
            Requirement(id="R1", text="list things"),
            Requirement(id="R2", text="show one thing"),
        ],
        tickets=[
            tk("S", estimate=1, phase="skeleton"),
            tk("B", ["S"], estimate=2, covers=["R1"]),
            tk("C", ["S"], estimate=3, covers=["R2"]),
            tk("V", ["B", "C"], estimate=4, phase="validation", covers=["R1", "R2"]),
        ],
    )


def cyclic() -> PlanSpec:
    return PlanSpec(title="cyclic", tickets=[tk("A", ["B"]), tk("B", ["A"])])


# -- drafts in the store -----------------------------------------------------------------------


def test_a_draft_has_its_plan_file_but_no_tickets(store: TicketStore, clock: FakeClock) -> None:
    heard: list[Change] = []
    store.subscribe(heard.append)
    before = store.last_seq()
    spec = diamond()
    draft = store.create_plan(spec, draft=True)

    assert (draft.status, draft.error, draft.title) == ("draft", None, "draft plan")
    assert (draft.ticket_count, draft.counts, draft.created_at) == (0, {}, clock.now)
    assert store.get_plan(draft.id) == draft
    assert store.list_plans() == [draft]
    assert store.plan_spec(draft.id) == spec
    assert [w.tickets for w in store.waves(draft.id).waves] == [["S"], ["B", "C"], ["V"]]
    # Nothing to claim: a draft's tickets do not exist until it is approved.
    assert store.list_tickets(plan_id=draft.id) == []
    assert store.claim("agent", plan_id=draft.id) is None
    assert store.claim("agent") is None
    [event] = store.events_after(before)
    assert (event.kind, event.plan_id, event.ticket_id) == ("plan.drafted", draft.id, None)
    assert event.data == {"title": "draft plan", "tickets": 4}
    assert heard == [Change(ready=0)]


def test_an_invalid_draft_is_refused_and_nothing_is_stored(store: TicketStore) -> None:
    with pytest.raises(PlanInvalid) as refused:
        store.create_plan(cyclic(), draft=True)
    assert refused.value.details == validate(cyclic()).model_dump(mode="json")
    assert store.list_plans() == []
    assert store.last_seq() == 0


def test_approve_makes_the_tickets_as_create_plan_does(
    store: TicketStore, clock: FakeClock
) -> None:
    whole = store.create_plan(diamond("whole"), max_attempts=5)
    draft = store.create_plan(diamond("drafted"), draft=True)
    heard: list[Change] = []
    store.subscribe(heard.append)
    before = store.last_seq()
    clock.advance(60)

    approved = store.approve(draft.id, max_attempts=5)

    assert approved.status == "active"
    assert approved.ticket_count == 4
    assert approved.counts == {"ready": 1, "pending": 3}
    assert store.get_plan(draft.id) == approved
    made = store.list_tickets(plan_id=draft.id)
    reference = store.list_tickets(plan_id=whole.id)
    fields = ("key", "state", "unmet", "rank", "depends_on", "covers", "phase", "max_attempts")
    assert [[getattr(x, f) for f in fields] for x in made] == [
        [getattr(x, f) for f in fields] for x in reference
    ]
    roots = [x for x in made if x.state is TicketState.READY]
    assert [x.key for x in roots] == ["S"]
    assert roots[0].ready_at == clock.now  # ready from the approval, not from the draft

    events = store.events_after(before)
    assert [(e.kind, e.ticket_id) for e in events] == [
        ("plan.approved", None),
        ("ticket.ready", roots[0].id),
    ]
    assert events[0].data == {"title": "drafted", "tickets": 4, "ready": 1}
    assert all(e.plan_id == draft.id for e in events)
    assert heard == [Change(ready=1)]

    # Its roots are claimable now, and finishing them readies the rest as usual.
    lease = store.claim("agent", plan_id=draft.id)
    assert lease is not None and lease.ticket.key == "S"
    store.complete(lease.ticket.id, lease.epoch, TicketResult(summary="done"))
    assert {x.key for x in store.list_tickets(plan_id=draft.id, states=[TicketState.READY])} == {
        "B",
        "C",
    }


def test_approve_without_max_attempts_uses_the_store_default(store: TicketStore) -> None:
    draft = store.create_plan(diamond(), draft=True)
    store.approve(draft.id)
    assert {x.max_attempts for x in store.list_tickets(plan_id=draft.id)} == {3}


def test_only_a_draft_can_be_approved_and_only_once(store: TicketStore) -> None:
    draft = store.create_plan(diamond(), draft=True)
    active = store.create_plan(diamond("active"))
    store.approve(draft.id)
    seq = store.last_seq()

    with pytest.raises(Conflict, match=f"^plan {draft.id} is active, not a draft$"):
        store.approve(draft.id)
    with pytest.raises(Conflict, match=f"^plan {active.id} is active, not a draft$"):
        store.approve(active.id)
    with pytest.raises(NotFound, match="no plan 999"):
        store.approve(999)
    assert store.last_seq() == seq
    assert store.get_plan(draft.id).ticket_count == 4


def approve_at_once(store: TicketStore, plan_id: int, racers: int) -> list[str]:
    """``racers`` threads (each with its own connection) approve one plan at the same moment;
    what each got, sorted."""
    gate = threading.Barrier(racers)

    def approve() -> str:
        gate.wait()
        try:
            store.approve(plan_id)
        except Conflict as exc:
            return str(exc)
        return "approved"

    with ThreadPoolExecutor(max_workers=racers) as pool:
        return sorted(pool.map(lambda _: approve(), range(racers)))


def test_concurrent_approvals_make_the_tickets_once(store: TicketStore) -> None:
    """Replicas approving the same draft at once: one wins, the others are refused, and the
    plan has its tickets once (on PostgreSQL the guard is the row lock of the UPDATE)."""
    racers = 4
    for _ in range(5):
        draft = store.create_plan(diamond(), draft=True)
        refused = f"plan {draft.id} is active, not a draft"
        assert approve_at_once(store, draft.id, racers) == ["approved"] + [refused] * (racers - 1)
        assert len(store.list_tickets(plan_id=draft.id)) == 4
        events = store.events_after(0, plan_id=draft.id)
        assert [e.kind for e in events].count("plan.approved") == 1
        assert [e.kind for e in events].count("ticket.ready") == 1


def test_replace_draft(store: TicketStore) -> None:
    draft = store.create_plan(diamond(), draft=True)
    edited = diamond("edited")
    edited.tickets.append(tk("E", ["V"], covers=["R1"]))
    before = store.last_seq()

    replaced = store.replace_draft(draft.id, edited)

    assert (replaced.id, replaced.status, replaced.title) == (draft.id, "draft", "edited")
    assert replaced.ticket_count == 0
    assert store.plan_spec(draft.id) == edited
    [event] = store.events_after(before)
    assert (event.kind, event.data) == ("plan.edited", {"title": "edited", "tickets": 5})

    # An invalid file is refused with the report, like create_plan, and the draft is kept.
    with pytest.raises(PlanInvalid) as refused:
        store.replace_draft(draft.id, cyclic())
    assert refused.value.details["errors"][0]["code"] == "cycle"
    assert store.plan_spec(draft.id) == edited
    assert store.last_seq() == event.seq

    store.approve(draft.id)
    assert {x.key for x in store.list_tickets(plan_id=draft.id)} == {"S", "B", "C", "V", "E"}
    # Not a draft any more: said before anything about the new file.
    for spec in (diamond(), cyclic()):
        with pytest.raises(Conflict, match=f"^plan {draft.id} is active, not a draft$"):
            store.replace_draft(draft.id, spec)
    with pytest.raises(NotFound):
        store.replace_draft(999, diamond())
    assert store.plan_spec(draft.id) == edited


# -- plans a design agent writes ---------------------------------------------------------------


def test_a_design_becomes_a_draft_then_an_active_plan(store: TicketStore) -> None:
    request = {"spec_text": "a todo service", "max_estimate": 4}
    designing = store.begin_design("todo service", request)

    assert (designing.status, designing.title, designing.ticket_count) == (
        "designing",
        "todo service",
        0,
    )
    with store.db.read() as tx:
        stored = tx.one("SELECT design FROM plans WHERE id = :id", {"id": designing.id})
    assert stored is not None and json.loads(stored["design"]) == request
    for read in (store.plan_spec, store.waves):
        with pytest.raises(Conflict, match=f"^plan {designing.id} is still being designed$"):
            read(designing.id)
    with pytest.raises(Conflict, match="is designing, not a draft"):
        store.approve(designing.id)
    with pytest.raises(Conflict, match="is designing, not a draft"):
        store.replace_draft(designing.id, diamond())

    store.design_event(designing.id, "design.skeleton", {"tickets": 1})
    spec = diamond("todo service, designed")
    with pytest.raises(PlanInvalid):  # the designer may try again: the plan stays designing
        store.finish_design(designing.id, cyclic(), {})
    assert store.get_plan(designing.id).status == "designing"
    draft = store.finish_design(designing.id, spec, {"rounds": 2, "cost_usd": 0.5})

    assert (draft.status, draft.title, draft.description) == (
        "draft",
        "todo service, designed",
        "for the draft tests",
    )
    assert store.plan_spec(draft.id) == spec
    events = store.events_after(0, plan_id=draft.id)
    assert [(e.kind, e.data) for e in events] == [
        ("design.started", {"title": "todo service"}),
        ("design.skeleton", {"tickets": 1}),
        ("design.done", {"rounds": 2, "cost_usd": 0.5}),
    ]
    # Designing is over: no more design events, no second ending.
    with pytest.raises(Conflict, match="is draft, not being designed"):
        store.design_event(draft.id, "design.late", {})
    with pytest.raises(Conflict, match="is draft, not being designed"):
        store.finish_design(draft.id, spec, {})
    with pytest.raises(Conflict, match="is draft, not being designed"):
        store.fail_design(draft.id, "too late")

    assert store.approve(draft.id).counts == {"ready": 1, "pending": 3}


def test_design_events_are_design_kinds_of_a_plan_being_designed(store: TicketStore) -> None:
    plan = store.begin_design("x", {})
    seq = store.last_seq()
    for kind in ("ticket.ready", "designed", "design.done", "design.failed", "design.started"):
        with pytest.raises(ValueError, match="design events"):
            store.design_event(plan.id, kind, {})
    with pytest.raises(NotFound):
        store.design_event(999, "design.progress", {})
    active = store.create_plan(diamond())
    with pytest.raises(Conflict, match="is active, not being designed"):
        store.design_event(active.id, "design.progress", {})
    assert [e.kind for e in store.events_after(seq)] == ["plan.created", "ticket.ready"]


def test_a_failed_design_has_its_error_and_no_plan_file(store: TicketStore) -> None:
    plan = store.begin_design("doomed", {})
    failed = store.fail_design(plan.id, "the model never made a valid plan", {"rounds": 3})

    assert (failed.status, failed.error) == ("failed", "the model never made a valid plan")
    assert store.list_plans() == [failed]
    [event] = [e for e in store.events_after(0) if e.kind == "design.failed"]
    assert event.data == {"rounds": 3, "reason": "the model never made a valid plan"}
    message = f"^plan {plan.id}'s design failed: the model never made a valid plan$"
    for read in (store.plan_spec, store.waves):
        with pytest.raises(Conflict, match=message):
            read(plan.id)
    with pytest.raises(Conflict, match="is failed, not a draft"):
        store.approve(plan.id)
    with pytest.raises(Conflict, match="is failed, not being designed"):
        store.finish_design(plan.id, diamond(), {})
    assert store.list_tickets(plan_id=plan.id) == []


def test_fail_interrupted_designs_fails_only_the_designs(store: TicketStore) -> None:
    first = store.begin_design("one", {})
    second = store.begin_design("two", {})
    draft = store.create_plan(diamond(), draft=True)
    active = store.create_plan(diamond("active"))
    done = store.begin_design("finished", {})
    store.finish_design(done.id, diamond("finished"), {})
    seq = store.last_seq()

    assert store.fail_interrupted_designs() == 2

    by_id = {p.id: p for p in store.list_plans()}
    assert {i: (p.status, p.error) for i, p in by_id.items()} == {
        first.id: ("failed", RESTARTED),
        second.id: ("failed", RESTARTED),
        draft.id: ("draft", None),
        active.id: ("active", None),
        done.id: ("draft", None),
    }
    events = store.events_after(seq)
    assert [(e.kind, e.plan_id, e.data) for e in events] == [
        ("design.failed", first.id, {"reason": RESTARTED}),
        ("design.failed", second.id, {"reason": RESTARTED}),
    ]
    assert store.fail_interrupted_designs("again") == 0
    assert store.last_seq() == events[-1].seq


def test_plans_stored_before_drafts_existed_are_active(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert migrate(db, MIGRATIONS[:4]) == 4
        old = diamond("old").model_dump_json()
        with db.tx() as tx:
            tx.execute(
                "INSERT INTO plans (title, description, created_at, spec) "
                "VALUES ('old', '', 1.0, :s)",
                {"s": old},
            )
    finally:
        db.close()
    upgraded = TicketStore(Database(database_url))
    try:
        assert upgraded.migrate() == len(MIGRATIONS)
        [plan] = upgraded.list_plans()
        assert (plan.status, plan.error) == ("active", None)
        assert upgraded.plan_spec(plan.id) == diamond("old")
        with pytest.raises(Conflict, match="is active, not a draft"):
            upgraded.approve(plan.id)
    finally:
        upgraded.close()


# -- coverage ----------------------------------------------------------------------------------


def test_coverage_lists_each_requirement_s_tickets_in_plan_order() -> None:
    spec = PlanSpec(
        title="c",
        requirements=[
            Requirement(id="R2", text="two"),
            Requirement(id="R1", text="one"),
            Requirement(id="R3", text="three"),
        ],
        tickets=[
            tk("z", covers=["R1", "R1"]),  # listed twice, counted once
            tk("a", covers=["R2", "R1"]),
            tk("m", covers=["R9"]),  # not a listed requirement: not in the map
        ],
    )
    assert coverage(spec) == {"R2": ["a"], "R1": ["z", "a"], "R3": []}
    assert list(coverage(spec)) == ["R2", "R1", "R3"]  # in the order they are listed
    assert coverage(diamond()) == {"R1": ["B", "V"], "R2": ["C", "V"]}
    assert coverage(PlanSpec(title="free", tickets=[tk("a", covers=["R1"])])) == {}


# -- over HTTP ---------------------------------------------------------------------------------

ADMIN = format_token(TokenKind.ADMIN, "0", new_secret())


class Http:
    """The app in process, called with the admin token unless told otherwise."""

    def __init__(self, client: TestClient, store: TicketStore) -> None:
        self.client = client
        self.store = store

    def call(self, method: str, path: str, token: str = ADMIN, **kwargs: Any) -> Any:
        return self.client.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )


def _settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, admin_token=ADMIN)


@contextmanager
def serving(store: TicketStore, settings: Settings) -> Iterator[Http]:
    with TestClient(create_app(settings, store=store)) as client:
        yield Http(client, store)


@pytest.fixture
def http(tmp_path: Path, database_url: str) -> Iterator[Http]:
    settings = _settings(tmp_path, database_url)
    store = TicketStore.from_settings(settings)
    try:
        with serving(store, settings) as h:
            yield h
    finally:
        store.close()


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert body["message"], body
    return body


def test_draft_export_edit_approve_over_http(http: Http) -> None:
    spec = diamond().model_dump(mode="json")
    r = http.call("POST", "/v1/plans", params={"draft": "true"}, json=spec)
    assert r.status_code == 201, r.text
    draft = Plan.model_validate(r.json())
    assert (draft.status, draft.ticket_count) == ("draft", 0)
    assert http.call("GET", "/v1/tickets", params={"plan_id": draft.id}).json()["tickets"] == []
    assert http.call("POST", "/v1/claims", json={"agent": "a"}).status_code == 204

    assert http.call("GET", f"/v1/plans/{draft.id}/spec").json() == spec
    edited = diamond("edited over http")
    edited.tickets[0].body = "lay out the package"
    r = http.call("PUT", f"/v1/plans/{draft.id}/spec", json=edited.model_dump(mode="json"))
    assert r.status_code == 200, r.text
    assert Plan.model_validate(r.json()).title == "edited over http"
    assert PlanSpec.model_validate(http.call("GET", f"/v1/plans/{draft.id}/spec").json()) == edited

    bad = cyclic().model_dump(mode="json")
    body = error(http.call("PUT", f"/v1/plans/{draft.id}/spec", json=bad), 422, "invalid_plan")
    assert body["details"] == http.call("POST", "/v1/plans/validate", json=bad).json()
    assert PlanSpec.model_validate(http.call("GET", f"/v1/plans/{draft.id}/spec").json()) == edited

    r = http.call("POST", f"/v1/plans/{draft.id}/approve", params={"max_attempts": 7})
    assert r.status_code == 200, r.text
    approved = Plan.model_validate(r.json())
    assert (approved.status, approved.counts) == ("active", {"ready": 1, "pending": 3})
    tickets = http.call("GET", "/v1/tickets", params={"plan_id": draft.id}).json()["tickets"]
    assert {t["max_attempts"] for t in tickets} == {7}
    lease = http.call("POST", "/v1/claims", json={"agent": "a", "plan_id": draft.id}).json()
    assert lease["ticket"]["key"] == "S"
    assert lease["ticket"]["body"] == "lay out the package"

    body = error(http.call("POST", f"/v1/plans/{draft.id}/approve"), 409, "conflict")
    assert body["message"] == f"plan {draft.id} is active, not a draft"
    error(http.call("PUT", f"/v1/plans/{draft.id}/spec", json=spec), 409, "conflict")
    assert http.call("GET", f"/v1/plans/{draft.id}/spec").status_code == 200  # still readable
    error(http.call("POST", "/v1/plans/999/approve"), 404, "not_found")
    error(http.call("GET", "/v1/plans/999/spec"), 404, "not_found")
    kinds_seen = [e["kind"] for e in http.call("GET", "/v1/events").json()["events"]]
    assert kinds_seen[:4] == ["plan.drafted", "plan.edited", "plan.approved", "ticket.ready"]


def test_only_admins_reach_the_draft_routes(http: Http) -> None:
    draft = http.store.create_plan(diamond(), draft=True)
    agent = http.store.tokens.create(TokenKind.AGENT, "agent")
    spec = diamond().model_dump(mode="json")
    for method, path, kwargs in (
        ("POST", "/v1/plans", {"params": {"draft": "true"}, "json": spec}),
        ("GET", f"/v1/plans/{draft.id}/spec", {}),
        ("PUT", f"/v1/plans/{draft.id}/spec", {"json": spec}),
        ("POST", f"/v1/plans/{draft.id}/approve", {}),
    ):
        error(http.call(method, path, agent, **kwargs), 403, "forbidden")
    assert http.store.get_plan(draft.id).status == "draft"
    assert len(http.store.list_plans()) == 1


def test_a_plan_being_designed_has_no_plan_file_over_http(http: Http) -> None:
    plan = http.store.begin_design("designing", {"spec_text": "x"})
    got = http.call("GET", f"/v1/plans/{plan.id}").json()
    assert (got["status"], got["error"], got["ticket_count"]) == ("designing", None, 0)
    for path in (f"/v1/plans/{plan.id}/spec", f"/v1/plans/{plan.id}/waves"):
        body = error(http.call("GET", path), 409, "conflict")
        assert body["message"] == f"plan {plan.id} is still being designed"
    error(http.call("POST", f"/v1/plans/{plan.id}/approve"), 409, "conflict")


def test_a_restart_fails_the_designs_that_were_running(tmp_path: Path, database_url: str) -> None:
    settings = _settings(tmp_path, database_url)
    store = TicketStore.from_settings(settings)
    try:
        store.migrate()
        plan = store.begin_design("interrupted", {})
        draft = store.create_plan(diamond(), draft=True)
        with serving(store, settings) as h:  # the app's start-up
            got = h.call("GET", f"/v1/plans/{plan.id}").json()
            assert (got["status"], got["error"]) == ("failed", RESTARTED)
            body = error(h.call("GET", f"/v1/plans/{plan.id}/spec"), 409, "conflict")
            assert body["message"] == f"plan {plan.id}'s design failed: {RESTARTED}"
            assert h.call("GET", f"/v1/plans/{draft.id}").json()["status"] == "draft"
            events = h.call("GET", "/v1/events", params={"plan_id": plan.id}).json()["events"]
            assert [(e["kind"], e["data"]) for e in events] == [
                ("design.started", {"title": "interrupted"}),
                ("design.failed", {"reason": RESTARTED}),
            ]
    finally:
        store.close()


# -- the CLI -----------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("swarm-drafts") / "data") as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[SwarmClient]:
    with SwarmClient(server.url, server.admin_token) as client:
        yield client


@contextmanager
def server_store(server: ServerProcess) -> Iterator[TicketStore]:
    """The running server's own database, for what only the design agent does (in process)."""
    store = TicketStore(Database(f"sqlite:///{server.data_dir / 'swarm.db'}"))
    try:
        yield store
    finally:
        store.close()


def cli(server: ServerProcess, *args: str) -> Result:
    env = {"SWARM_API_URL": server.url, "SWARM_TOKEN": server.admin_token, "COLUMNS": "200"}
    return runner.invoke(cli_app, list(args), env=env)


def one_line_error(result: Result, exit_code: int) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_cli_export_edit_import_show_approve(
    server: ServerProcess, admin: SwarmClient, tmp_path: Path
) -> None:
    original = tmp_path / "plan.json"
    original.write_text(diamond("cli draft").model_dump_json(indent=2))
    result = cli(server, "plan", "import", str(original), "--draft", "--json")
    assert result.exit_code == 0, result.output
    draft = Plan.model_validate_json(result.stdout)
    assert (draft.status, draft.ticket_count) == ("draft", 0)
    assert admin.all_tickets(plan_id=draft.id) == []
    assert admin.claim("cli-agent", plan_id=draft.id) is None

    # Export as YAML, edit it as a person would, put it back.
    exported = tmp_path / "draft.yaml"
    result = cli(server, "plan", "export", str(draft.id), "--out", str(exported))
    assert result.exit_code == 0, result.output
    assert f"written to {exported}" in result.stdout
    assert load_plan(exported) == diamond("cli draft")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    data = yaml.safe_load(exported.read_text())
    data["title"] = "cli draft, edited"
    data["requirements"].append({"id": "R3", "text": "delete one thing"})
    data["tickets"].append(
        {"id": "D", "title": "DELETE a thing", "depends_on": ["S"], "covers": ["R3"]}
    )
    data["tickets"][3]["depends_on"].append("D")  # the validation ticket checks it too
    exported.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli(server, "plan", "import", str(exported), "--into", str(draft.id))
    assert result.exit_code == 0, result.output
    assert f"plan {draft.id} “cli draft, edited”: draft replaced, now 5 tickets" in result.stdout
    edited = load_plan(exported)
    assert admin.plan_spec(draft.id) == edited

    # An invalid edit is refused with the report, and the draft is kept.
    broken = tmp_path / "broken.json"
    broken.write_text(cyclic().model_dump_json())
    result = cli(server, "plan", "import", str(broken), "--into", str(draft.id))
    assert result.exit_code == 1, result.output
    assert "invalid" in result.stdout and "cycle" in result.stdout
    assert admin.plan_spec(draft.id) == edited

    result = cli(server, "plan", "show", str(draft.id), "--tickets")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"plan {draft.id} “cli draft, edited”" in out
    assert "draft: 5 tickets in its plan file, none made yet; approve with " in out
    assert f"`swarm plan approve {draft.id}`" in out
    assert "delete one thing" in out and "uncovered" not in out
    assert "3 waves" in out
    assert "DELETE a thing" in out  # --tickets lists the tickets' titles

    result = cli(server, "plan", "show", str(draft.id), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert set(shown) == {"plan", "spec", "waves", "coverage"}
    assert Plan.model_validate(shown["plan"]).status == "draft"
    assert PlanSpec.model_validate(shown["spec"]) == edited
    assert [w["tickets"] for w in shown["waves"]["waves"]] == [["S"], ["B", "C", "D"], ["V"]]
    assert shown["coverage"] == {"R1": ["B", "V"], "R2": ["C", "V"], "R3": ["D"]}

    result = cli(server, "plan", "export", str(draft.id))  # to stdout, JSON
    assert result.exit_code == 0, result.output
    assert PlanSpec.model_validate_json(result.stdout) == edited

    result = cli(server, "plan", "approve", str(draft.id), "--max-attempts", "6")
    assert result.exit_code == 0, result.output
    assert f"plan {draft.id} approved: 5 tickets, 1 ready" in result.stdout
    tickets = admin.all_tickets(plan_id=draft.id)
    assert sorted(t.key for t in tickets) == ["B", "C", "D", "S", "V"]
    assert {t.max_attempts for t in tickets} == {6}
    lease = admin.claim("cli-agent", plan_id=draft.id)
    assert lease is not None and lease.ticket.key == "S"

    line = one_line_error(cli(server, "plan", "approve", str(draft.id)), 1)
    assert f"plan {draft.id} is active, not a draft" in line
    line = one_line_error(cli(server, "plan", "import", str(original), "--into", str(draft.id)), 1)
    assert "not a draft" in line
    result = cli(server, "plan", "show", str(draft.id))
    assert "active: 5 tickets (1 claimed, 4 pending)" in result.stdout


def test_cli_refuses_what_makes_no_sense_for_a_draft(
    server: ServerProcess, admin: SwarmClient, tmp_path: Path
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(diamond().model_dump_json())
    before = admin.list_plans()
    for extra in (["--draft"], ["--into", "1"]):
        result = cli(server, "plan", "import", str(path), "--max-attempts", "3", *extra)
        assert "swarm plan approve" in one_line_error(result, 2)
    assert admin.list_plans() == before
    assert "no plan" in one_line_error(cli(server, "plan", "export", "999999"), 1)
    assert "no plan" in one_line_error(cli(server, "plan", "show", "999999"), 1)
    plan = admin.create_plan(diamond(), draft=True)
    result = cli(server, "plan", "export", str(plan.id), "--out", str(tmp_path / "no" / "x.json"))
    assert "cannot write" in one_line_error(result, 2)
    # An existing file is replaced, as asked, as JSON for any extension but .yaml and .yml.
    target = tmp_path / "plan.txt"
    target.write_text("old")
    assert cli(server, "plan", "export", str(plan.id), "--out", str(target)).exit_code == 0
    assert PlanSpec.model_validate_json(target.read_text()) == diamond()


def test_cli_shows_a_plan_being_designed_and_a_failed_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    with server_store(server) as store:
        plan = store.begin_design("still thinking", {"spec_text": "x"})
        result = cli(server, "plan", "show", str(plan.id))
        assert result.exit_code == 0, result.output
        assert "designing: a design agent is writing its plan file" in result.stdout
        assert "wave" not in result.stdout
        shown = json.loads(cli(server, "plan", "show", str(plan.id), "--json").stdout)
        assert (shown["plan"]["status"], shown["spec"], shown["waves"]) == ("designing", None, None)
        assert shown["coverage"] == {}
        line = one_line_error(cli(server, "plan", "export", str(plan.id)), 1)
        assert f"plan {plan.id} is still being designed" in line
        assert "is designing, not a draft" in one_line_error(
            cli(server, "plan", "approve", str(plan.id)), 1
        )

        store.fail_design(plan.id, "the model gave up")
        result = cli(server, "plan", "show", str(plan.id))
        assert "failed: the model gave up" in result.stdout
        shown = json.loads(cli(server, "plan", "show", str(plan.id), "--json").stdout)
        assert (shown["plan"]["status"], shown["plan"]["error"]) == ("failed", "the model gave up")


def test_a_crashed_server_fails_its_designs_when_it_starts_again(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as proc:
        with server_store(proc) as store:
            plan = store.begin_design("in flight", {})
        proc.kill()
        proc.start()
        with SwarmClient(proc.url, proc.admin_token) as client:
            got = client.get_plan(plan.id)
            assert (got.status, got.error) == ("failed", RESTARTED)
            with pytest.raises(Conflict, match="design failed"):
                client.plan_spec(plan.id)


def test_the_client_s_draft_calls(admin: SwarmClient) -> None:
    draft = admin.create_plan(diamond("client draft"), draft=True)
    assert isinstance(admin.waves(draft.id), WavesReport)
    assert admin.replace_draft(draft.id, diamond("renamed")).title == "renamed"
    with pytest.raises(PlanInvalid):
        admin.replace_draft(draft.id, cyclic())
    assert admin.approve_plan(draft.id, max_attempts=2).status == "active"
    with pytest.raises(Conflict, match="not a draft"):
        admin.approve_plan(draft.id)
