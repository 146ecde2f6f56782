"""The typed clients and the ``swarm`` CLI against a real server (one subprocess per module).

The server is shared by every test here, so each test makes its own plan and scopes its claims
and listings to that plan's id.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import typer
from pydantic import TypeAdapter
from typer._click import Context  # Typer vendors its own Click
from typer.testing import CliRunner, Result
from websockets.exceptions import ConnectionClosed

from swarmstack.api.schemas import EventPage, TicketPage, TokenCreated, TokenInfo
from swarmstack.bench.serverproc import ServerProcess, free_port
from swarmstack.cli.main import app as cli_app
from swarmstack.client import AiohttpSwarmClient, AsyncSwarmClient, SwarmClient
from swarmstack.errors import (
    AuthError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PlanInvalid,
    StaleLease,
    SwarmError,
    Unavailable,
    UsageError,
)
from swarmstack.tickets.models import (
    Plan,
    PlanSpec,
    SandboxUsage,
    Ticket,
    TicketResult,
    TicketSpec,
    TicketState,
    ValidationReport,
    WavesReport,
)

MAX_ID = 2**31 - 1


@pytest.fixture(autouse=True)
def _no_swarm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads SWARM_* variables; every test sets the ones it means."""
    for name in list(os.environ):
        if name.startswith("SWARM_") and name != "SWARM_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("swarm-server") / "data") as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[SwarmClient]:
    with SwarmClient(server.url, server.admin_token) as client:
        yield client


@pytest.fixture(scope="module")
def agent_token(admin: SwarmClient) -> str:
    return admin.create_token("agent", "test-agent").token


# -- plans -------------------------------------------------------------------------------------


def tk(key: str, deps: Sequence[str] = (), **fields: Any) -> TicketSpec:
    return TicketSpec(id=key, title=f"ticket {key}", depends_on=list(deps), **fields)


def diamond(title: str = "diamond") -> PlanSpec:
    return PlanSpec(
        title=title,
        description="for the client tests",
        tickets=[
            tk("A", estimate=1),
            tk("B", ["A"], estimate=2),
            tk("C", ["A"], estimate=3),
            tk("D", ["B", "C"], estimate=4, phase="validation"),
        ],
    )


def cyclic() -> PlanSpec:
    return PlanSpec(title="cyclic", tickets=[tk("A", ["B"]), tk("B", ["A"]), tk("C", ["x"])])


def keys(tickets: Sequence[Ticket]) -> dict[str, Ticket]:
    return {t.key: t for t in tickets}


# -- the sync client ---------------------------------------------------------------------------


def test_health(admin: SwarmClient) -> None:
    health = admin.health()
    assert health.status == "ok"
    assert health.database == "sqlite"
    assert health.schema_version >= 1


def test_plans_and_tickets_through_the_client(admin: SwarmClient) -> None:
    report = admin.validate_plan(diamond())
    assert isinstance(report, ValidationReport)
    assert report.valid

    plan = admin.create_plan(diamond("client plan"), max_attempts=4)
    assert isinstance(plan, Plan)
    assert plan.ticket_count == 4
    assert plan.counts == {"ready": 1, "pending": 3}
    assert admin.get_plan(plan.id) == plan
    assert plan in admin.list_plans()

    waves = admin.waves(plan.id)
    assert isinstance(waves, WavesReport)
    assert waves.plan_id == plan.id
    assert [sorted(w.tickets) for w in waves.waves] == [["A"], ["B", "C"], ["D"]]
    assert waves.critical_path == ["A", "C", "D"]

    page = admin.list_tickets(plan_id=plan.id)
    assert isinstance(page, TicketPage)
    assert page.next_after_id is None
    by_key = keys(page.tickets)
    assert set(by_key) == {"A", "B", "C", "D"}
    assert all(t.max_attempts == 4 for t in page.tickets)
    assert keys(admin.list_tickets(plan_id=plan.id, states=[TicketState.READY]).tickets).keys() == {
        "A"
    }
    assert keys(admin.list_tickets(plan_id=plan.id, phase="validation").tickets).keys() == {"D"}
    small = admin.list_tickets(plan_id=plan.id, limit=2)
    assert len(small.tickets) == 2
    assert small.next_after_id == small.tickets[-1].id

    d = by_key["D"]
    assert admin.get_ticket(d.id) == d
    cancelled = admin.cancel(d.id, "not needed")
    assert cancelled.state is TicketState.CANCELLED
    assert cancelled.last_error == "not needed"
    assert admin.retry(d.id).state is TicketState.PENDING

    events = admin.events(plan_id=plan.id)
    assert isinstance(events, EventPage)
    assert [e.kind for e in events.events] == [
        "plan.created",
        "ticket.ready",
        "ticket.cancelled",
        "ticket.retried",
    ]
    assert events.last_seq == events.events[-1].seq
    later = admin.events(after=events.events[1].seq, limit=1, plan_id=plan.id)
    assert [e.kind for e in later.events] == ["ticket.cancelled"]


def test_all_tickets_follows_every_page(admin: SwarmClient) -> None:
    # all_tickets asks for pages of 5000: more tickets than that means at least two pages.
    n = 5003
    plan = admin.create_plan(
        PlanSpec(title="wide", tickets=[TicketSpec(id=f"t{i}", title="t") for i in range(n)])
    )
    first = admin.list_tickets(plan_id=plan.id, limit=5000)
    assert first.next_after_id is not None

    tickets = admin.all_tickets(plan_id=plan.id)
    assert len(tickets) == n
    ids = [t.id for t in tickets]
    assert ids == sorted(ids)
    assert len(set(ids)) == n
    assert {t.key for t in tickets} == {f"t{i}" for i in range(n)}
    assert len(admin.all_tickets(plan_id=plan.id, states=[TicketState.READY])) == n
    assert admin.all_tickets(plan_id=plan.id, states=[TicketState.DONE]) == []


def test_lease_protocol_with_the_sync_client(
    server: ServerProcess, admin: SwarmClient, agent_token: str
) -> None:
    plan = admin.create_plan(diamond("sync lease"))
    with SwarmClient(server.url, agent_token) as agent:
        lease = agent.claim("sync-agent", plan_id=plan.id, ttl_s=120)
        assert lease is not None
        assert lease.ticket.key == "A"
        assert lease.ttl_s == 120
        expires = agent.heartbeat(lease, ttl_s=300)
        assert expires > lease.expires_at
        result = TicketResult(summary="done A", branch="swarm/a", cost_usd=0.1)
        done = agent.complete(lease, result)
        assert done.state is TicketState.DONE
        assert done.result == result
        assert agent.complete(lease, result) == done  # a retried completion is answered again

        nxt = agent.claim("sync-agent", plan_id=plan.id)
        assert nxt is not None
        assert nxt.ticket.key == "C"
        failed = agent.fail(nxt, "tests broke")
        assert failed.state is TicketState.FAILED
        assert failed.last_error == "tests broke"

        other = agent.claim("sync-agent", plan_id=plan.id)
        assert other is not None
        assert other.ticket.key == "B"
        assert agent.fail(other, "hopeless", retryable=False).state is TicketState.DEAD
        # C waits out its backoff and D waits for B and C: nothing to claim now.
        assert agent.claim("sync-agent", plan_id=plan.id) is None


# -- errors as classes -------------------------------------------------------------------------


def test_errors_come_back_as_their_classes(
    server: ServerProcess, admin: SwarmClient, agent_token: str
) -> None:
    with pytest.raises(NotFound, match="no ticket"):
        admin.get_ticket(MAX_ID)
    with pytest.raises(NotFound):
        admin.get_plan(MAX_ID)
    with pytest.raises(NotFound):
        admin.revoke_token(MAX_ID)

    with SwarmClient(server.url, agent_token) as agent:
        with pytest.raises(Forbidden):
            agent.list_plans()
        with pytest.raises(Forbidden):
            agent.create_token("admin", "escalation")
    with SwarmClient(server.url, "not-a-token") as stranger:
        assert stranger.health().status == "ok"  # health needs no token
        with pytest.raises(AuthError, match="malformed"):
            stranger.list_plans()
    with SwarmClient(server.url) as anonymous, pytest.raises(AuthError, match="missing"):
        anonymous.list_tickets()

    plan = admin.create_plan(diamond("errors"))
    ready = keys(admin.all_tickets(plan_id=plan.id))["A"]
    with pytest.raises(Conflict) as conflict:
        admin.retry(ready.id)
    assert type(conflict.value) is Conflict
    assert "ready" in conflict.value.message

    lease = admin.claim("errors-agent", plan_id=plan.id)
    assert lease is not None
    admin.cancel(lease.ticket.id)
    with pytest.raises(StaleLease) as stale:
        admin.heartbeat(lease)
    assert stale.value.code == "stale_lease"
    assert stale.value.exit_code == 1
    with pytest.raises(StaleLease):
        admin.complete(lease)

    before = len(admin.list_plans())
    with pytest.raises(PlanInvalid) as invalid:
        admin.create_plan(cyclic())
    report = ValidationReport.model_validate(invalid.value.details)
    assert not report.valid
    assert {i.code for i in report.errors} == {"cycle", "unknown_dependency"}
    assert len(admin.list_plans()) == before

    with pytest.raises(PayloadTooLarge):
        admin.claim("x" * (2 << 20))


def test_invalid_request_is_a_usage_error_not_an_invalid_plan(admin: SwarmClient) -> None:
    # Regression: once, errors.from_response has no class for the server's "invalid_request" code,
    # so a 422 for a bad parameter falls back to the first class with status 422, PlanInvalid: a
    # claim with wait_s=-1 raises "PlanInvalid" (and the CLI would exit 1, not 2, for bad input).
    with pytest.raises(UsageError) as raised:
        admin.claim("agent", wait_s=-1)
    assert "wait_s" in raised.value.message
    assert not isinstance(raised.value, PlanInvalid), type(raised.value)


def test_cli_exits_2_for_a_parameter_the_server_refuses(server: ServerProcess) -> None:
    # Regression: once, the same misclassification in the CLI: `--phase` longer than 50 characters
    # is refused by the server as invalid_request (422), which comes back as PlanInvalid and exits 1
    # ("the state forbids it") instead of 2 ("the input was unusable").
    line = assert_one_line_error(cli(server, "tickets", "ls", "--phase", "x" * 51), 2)
    assert "phase" in line


def test_real_server_refuses_a_streamed_oversized_body_with_413(server: ServerProcess) -> None:
    # Regression: once, as in test_api.py, on uvicorn too: a body over SWARM_MAX_BODY_BYTES sent
    # without a Content-Length (chunked) gets 400 "There was an error parsing the body", not 413.
    def chunks() -> Iterator[bytes]:
        yield b'{"agent": "'
        for _ in range(1100):
            yield b"a" * 1024  # 1.1 MiB > the default 1 MiB limit
        yield b'"}'

    with httpx.Client(base_url=server.url, timeout=60) as http:
        sized = http.post(
            "/v1/claims",
            content=b'{"agent": "' + b"a" * (1100 * 1024) + b'"}',
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )
        assert sized.status_code == 413
        streamed = http.post(
            "/v1/claims",
            content=chunks(),
            headers={
                "Authorization": f"Bearer {server.admin_token}",
                "Content-Type": "application/json",
            },
        )
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"] == "payload_too_large"


def test_unavailable_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with SwarmClient(url, "t", timeout=5) as client, pytest.raises(Unavailable) as raised:
        client.health()
    assert url in raised.value.message
    assert raised.value.exit_code == 1


async def test_async_clients_unavailable_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncSwarmClient(url, "t", timeout=5) as client:
        with pytest.raises(Unavailable):
            await client.claim("a")
    async with aiohttp.ClientSession() as session:
        client2 = AiohttpSwarmClient(url, "t", session=session)
        with pytest.raises(Unavailable):
            await client2.claim("a")
        await client2.aclose()


# -- the async clients ---------------------------------------------------------------------------


async def _round_trip(client: AsyncSwarmClient, admin: SwarmClient, agent: str) -> None:
    plan = admin.create_plan(diamond(f"async {agent}"))
    lease = await client.claim(agent, plan_id=plan.id)
    assert lease is not None
    assert lease.ticket.key == "A"
    assert lease.ticket.lease_agent == agent
    expires = await client.heartbeat(lease, ttl_s=240)
    assert expires > lease.expires_at
    own = await client.get_ticket(lease.ticket.id, token=lease.token)
    assert own.state is TicketState.CLAIMED
    with pytest.raises(Forbidden):
        await client.get_ticket(lease.ticket.id)  # the agent token itself may not read
    done = await client.complete(lease, TicketResult(summary=agent))
    assert done.state is TicketState.DONE
    assert done.result is not None
    assert done.result.summary == agent

    second = await client.claim(agent, plan_id=plan.id)
    assert second is not None
    failed = await client.fail(second, "nope", retryable=False)
    assert failed.state is TicketState.DEAD
    with pytest.raises(StaleLease):
        await client.heartbeat(second)

    kinds = [e.kind for e in admin.events(plan_id=plan.id).events]
    assert kinds.count("ticket.claimed") == 2
    assert "ticket.done" in kinds
    assert "ticket.dead" in kinds


async def test_async_client_round_trip(
    server: ServerProcess, admin: SwarmClient, agent_token: str
) -> None:
    async with AsyncSwarmClient(server.url, agent_token) as client:
        await _round_trip(client, admin, "httpx-agent")
    async with AsyncSwarmClient(server.url, server.admin_token) as admin_async:
        page = await admin_async.events(limit=1)
        assert len(page.events) == 1


async def test_aiohttp_client_round_trip(
    server: ServerProcess, admin: SwarmClient, agent_token: str
) -> None:
    async with aiohttp.ClientSession() as session:
        client = AiohttpSwarmClient(server.url, agent_token, session=session)
        await _round_trip(client, admin, "aiohttp-agent")
        admin_async = AiohttpSwarmClient(server.url, server.admin_token, session=session)
        page = await admin_async.events(limit=2)
        assert len(page.events) == 2
        await client.aclose()


def test_a_stopping_server_answers_its_parked_claims_and_closes_its_event_streams(
    tmp_path: Path,
) -> None:
    import threading

    from websockets.sync.client import connect

    with ServerProcess(tmp_path / "data") as proc:
        with SwarmClient(proc.url, proc.admin_token) as admin:
            agent_token = admin.create_token("agent", "parked").token
            held = admin.create_plan(PlanSpec(title="drained", tickets=[tk("a")]))
            admin.pause_plan(held.id)  # events to stream, and nothing to claim
        answers: list[Any] = []

        def park() -> None:
            with SwarmClient(proc.url, agent_token) as agent:
                try:
                    answers.append(agent.claim("parked", wait_s=120))
                except SwarmError as exc:
                    answers.append(exc)

        waiting = threading.Thread(target=park)
        waiting.start()
        for _ in range(6000):  # a bound, not a timing assertion
            if "swarm_claim_waiters 1.0" in httpx.get(proc.url + "/metrics").text:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the long-poll claim never parked")
        with connect(proc.url.replace("http", "ws") + "/v1/events/ws") as socket:
            socket.send(json.dumps({"token": proc.admin_token}))
            socket.recv(timeout=10)  # a replayed event of the plan made above: it streams
            proc.stop()  # SIGTERM
            waiting.join(60)
            # The claim got its answer (nothing to do), not a connection cut at the server's
            # graceful-shutdown timeout; the event stream was closed with "service restart".
            assert answers == [None]
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    socket.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012


async def test_async_long_poll_is_woken_by_a_completion(
    server: ServerProcess, admin: SwarmClient, agent_token: str
) -> None:
    import asyncio

    plan = admin.create_plan(
        PlanSpec(title="long poll", tickets=[tk("first"), tk("second", ["first"])])
    )
    async with (
        AsyncSwarmClient(server.url, agent_token) as client,
        httpx.AsyncClient(base_url=server.url) as raw,
    ):
        first = await client.claim("poller", plan_id=plan.id)
        assert first is not None
        waiting = asyncio.create_task(client.claim("poller", plan_id=plan.id, wait_s=60))
        # Complete only once the server holds the claim parked (it shows in /metrics).
        for _ in range(6000):  # a bound, not a timing assertion
            if "swarm_claim_waiters 1.0" in (await raw.get("/metrics")).text:
                break
            assert not waiting.done(), waiting.result()
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the long-poll claim never parked")
        await client.complete(first)
        second = await asyncio.wait_for(waiting, timeout=120)  # a hang detector only
    assert second is not None
    assert second.ticket.key == "second"
    assert second.ticket.lease_agent == "poller"


async def test_a_resumed_plan_wakes_the_claim_parked_while_it_was_paused(
    server: ServerProcess, admin: SwarmClient, agent_token: str
) -> None:
    import asyncio

    plan = admin.create_plan(PlanSpec(title="paused", tickets=[tk("only")]))
    with SwarmClient(server.url, agent_token) as agent, pytest.raises(Forbidden):
        agent.pause_plan(plan.id)
    assert admin.pause_plan(plan.id).paused is True
    async with (
        AsyncSwarmClient(server.url, agent_token) as client,
        httpx.AsyncClient(base_url=server.url) as raw,
    ):
        waiting = asyncio.create_task(client.claim("poller", plan_id=plan.id, wait_s=60))
        for _ in range(6000):  # a bound, not a timing assertion
            if "swarm_claim_waiters 1.0" in (await raw.get("/metrics")).text:
                break
            assert not waiting.done(), waiting.result()  # the ready ticket is held
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the long-poll claim never parked")
        assert admin.resume_plan(plan.id).paused is False
        lease = await asyncio.wait_for(waiting, timeout=120)  # a hang detector only
    assert lease is not None and lease.ticket.key == "only"


def test_cli_plan_pause_and_resume(server: ServerProcess, admin: SwarmClient) -> None:
    plan = admin.create_plan(PlanSpec(title="to pause", tickets=[tk("a"), tk("b", ["a"])]))
    result = cli(server, "plan", "pause", str(plan.id))
    assert result.exit_code == 0, result.output
    assert f"plan {plan.id} paused: no new claims" in result.output
    assert admin.get_plan(plan.id).paused is True
    result = cli(server, "plan", "resume", str(plan.id), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["paused"] is False
    line = assert_one_line_error(cli(server, "plan", "pause", "99999"), 1)
    assert "no plan 99999" in line


def test_cli_plan_start_and_stop_say_why_they_are_refused(
    server: ServerProcess, admin: SwarmClient
) -> None:
    draft = admin.create_plan(PlanSpec(title="a draft", tickets=[tk("a")]), draft=True)
    line = assert_one_line_error(cli(server, "plan", "start", str(draft.id)), 1)
    assert "is a draft: approve it first" in line
    active = admin.create_plan(PlanSpec(title="idle", tickets=[tk("a")]))
    line = assert_one_line_error(cli(server, "plan", "stop", str(active.id)), 1)
    assert f"plan {active.id} has no run going" in line
    bad = cli(server, "plan", "start", str(active.id), "--backend", "firecracker")
    assert "is not one of auto, bwrap, qemu" in assert_one_line_error(bad, 2)
    assert "no runs yet" in cli(server, "plan", "runs", str(active.id)).output
    assert json.loads(cli(server, "plan", "runs", "--json").stdout) == []


# -- the CLI ---------------------------------------------------------------------------------------

runner = CliRunner()


def cli(server: ServerProcess, *args: str, token: str | None = None, **env: str) -> Result:
    environment = {
        "SWARM_API_URL": server.url,
        "SWARM_TOKEN": token or server.admin_token,
        "COLUMNS": "200",
        **env,
    }
    return runner.invoke(cli_app, list(args), env=environment)


def assert_one_line_error(result: Result, exit_code: int) -> str:
    """A failure the user can act on: its exit code, one line on stderr, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines
    return lines[0]


def write_plan(path: Path, plan: PlanSpec) -> Path:
    path.write_text(plan.model_dump_json(indent=2))
    return path


def test_cli_plan_import(server: ServerProcess, admin: SwarmClient, tmp_path: Path) -> None:
    good = write_plan(tmp_path / "good.json", diamond("cli import"))
    result = cli(server, "plan", "import", str(good))
    assert result.exit_code == 0, result.output
    assert "4 tickets, 1 ready" in result.stdout
    assert "cli import" in result.stdout

    result = cli(server, "plan", "import", str(good), "--json", "--max-attempts", "9")
    assert result.exit_code == 0, result.output
    plan = Plan.model_validate_json(result.stdout)
    assert plan.title == "cli import"
    assert {t.max_attempts for t in admin.all_tickets(plan_id=plan.id)} == {9}

    # What a refused import must not change: the plans and their tickets (their states may
    # move meanwhile: the sweeper ends other tests' backoffs).
    def stored() -> list[tuple[int, str, int]]:
        return [(p.id, p.title, p.ticket_count) for p in admin.list_plans()]

    before = stored()
    bad = write_plan(tmp_path / "bad.json", cyclic())
    result = cli(server, "plan", "import", str(bad))
    assert result.exit_code == 1, result.output
    assert "invalid" in result.stdout
    assert "cycle" in result.stdout
    assert "Traceback" not in result.output
    result = cli(server, "plan", "import", str(bad), "--json")
    assert result.exit_code == 1
    assert ValidationReport.model_validate_json(result.stdout).valid is False
    assert stored() == before

    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "latin1.json").write_bytes(b'{"title": "\xff"}')
    for unreadable in [tmp_path / "missing.json", tmp_path, tmp_path / "broken.json"]:
        result = cli(server, "plan", "import", str(unreadable))
        assert_one_line_error(result, 2)
    result = cli(server, "plan", "import", str(tmp_path / "latin1.json"))
    assert "UTF-8" in assert_one_line_error(result, 2)
    assert stored() == before


def test_cli_plan_validate(tmp_path: Path) -> None:
    good = write_plan(tmp_path / "good.json", diamond("local"))
    result = runner.invoke(cli_app, ["plan", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout
    result = runner.invoke(cli_app, ["plan", "validate", str(good), "--json"])
    assert ValidationReport.model_validate_json(result.stdout).valid
    result = runner.invoke(
        cli_app, ["plan", "validate", str(write_plan(tmp_path / "c.json", cyclic()))]
    )
    assert result.exit_code == 1
    assert "cycle" in result.stdout
    assert_one_line_error(
        runner.invoke(cli_app, ["plan", "validate", str(tmp_path / "no.json")]), 2
    )


def test_cli_tickets_ls(server: ServerProcess, admin: SwarmClient) -> None:
    plan = admin.create_plan(diamond("cli ls"))
    result = cli(server, "tickets", "ls", "--plan", str(plan.id), "--json")
    assert result.exit_code == 0, result.output
    raw = json.loads(result.stdout)
    assert isinstance(raw, list)
    assert all(set(t) == set(Ticket.model_fields) for t in raw)
    tickets = TypeAdapter(list[Ticket]).validate_python(raw)
    assert [t.key for t in tickets] == ["A", "B", "C", "D"]
    assert tickets == admin.all_tickets(plan_id=plan.id)

    result = cli(server, "tickets", "ls", "--plan", str(plan.id), "--state", "ready", "--json")
    assert [t["key"] for t in json.loads(result.stdout)] == ["A"]
    result = cli(
        server,
        "tickets",
        "ls",
        "--plan",
        str(plan.id),
        "--state",
        "ready",
        "--state",
        "pending",
        "--json",
    )
    assert [t["key"] for t in json.loads(result.stdout)] == ["A", "B", "C", "D"]
    result = cli(server, "tickets", "ls", "--plan", str(plan.id), "--phase", "validation", "--json")
    assert [t["key"] for t in json.loads(result.stdout)] == ["D"]

    result = cli(server, "tickets", "ls", "--plan", str(plan.id))
    assert result.exit_code == 0, result.output
    assert "4 tickets" in result.stdout
    for key in "ABCD":
        assert f"ticket {key}" in result.stdout
    assert cli(server, "tickets", "ls", "--state", "bogus").exit_code == 2


def test_cli_tickets_agents_stop_and_the_attempts_in_show(
    server: ServerProcess, admin: SwarmClient, agent_token: str
) -> None:
    plan = admin.create_plan(PlanSpec(title="cli agents", tickets=[tk("only")]))
    with SwarmClient(server.url, agent_token) as agent:
        lease = agent.claim("cli-agent", plan_id=plan.id)
        assert lease is not None
        usage = SandboxUsage(backend="bwrap", memory_bytes=64 << 20, cpu_percent=12.0)
        agent.heartbeat(lease, sandbox=usage)
    result = cli(server, "tickets", "agents", "--plan", str(plan.id))
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "cli-agent" in line)
    assert f"{lease.ticket.id} only" in row and "bwrap" in row and "64 MiB" in row
    assert "12%" in row and "stale" not in row
    result = cli(server, "tickets", "agents", "--plan", str(plan.id), "--json")
    assert json.loads(result.stdout)[0]["sandbox"]["memory_bytes"] == 64 << 20

    result = cli(server, "tickets", "stop", str(lease.ticket.id), "--reason", "stuck")
    assert result.exit_code == 0, result.output
    assert "its agent was stopped; it is ready" in result.stdout
    line = assert_one_line_error(cli(server, "tickets", "stop", str(lease.ticket.id)), 1)
    assert "no agent is at work on it" in line
    result = cli(server, "tickets", "show", str(lease.ticket.id))
    assert re.search(r"attempt 1: cli-agent, \d+s, released", result.stdout), result.stdout
    result = cli(server, "tickets", "agents", "--plan", str(plan.id))
    assert "no agent is at work" in result.stdout


def test_cli_tickets_show_retry_cancel(server: ServerProcess, admin: SwarmClient) -> None:
    plan = admin.create_plan(diamond("cli show"))
    by_key = keys(admin.all_tickets(plan_id=plan.id))
    a, d = by_key["A"], by_key["D"]

    result = cli(server, "tickets", "show", str(d.id))
    assert result.exit_code == 0, result.output
    assert f"#{d.id} D" in result.stdout
    assert "pending" in result.stdout
    assert "depends on: B, C" in result.stdout
    result = cli(server, "tickets", "show", str(d.id), "--json")
    assert Ticket.model_validate_json(result.stdout) == d

    result = cli(server, "tickets", "retry", str(a.id))
    line = assert_one_line_error(result, 1)
    assert "ready" in line
    assert result.stdout == ""

    result = cli(server, "tickets", "cancel", str(a.id), "--reason", "wrong plan", "--json")
    assert result.exit_code == 0, result.output
    cancelled = Ticket.model_validate_json(result.stdout)
    assert cancelled.state is TicketState.CANCELLED
    assert cancelled.last_error == "wrong plan"
    result = cli(server, "tickets", "cancel", str(a.id))
    assert result.exit_code == 0
    assert f"ticket {a.id} (A) is cancelled" in result.stdout

    result = cli(server, "tickets", "retry", str(a.id))
    assert result.exit_code == 0, result.output
    assert f"ticket {a.id} (A) is ready" in result.stdout
    cli(server, "tickets", "cancel", str(a.id))
    result = cli(server, "tickets", "retry", str(a.id), "--json")
    assert Ticket.model_validate_json(result.stdout).state is TicketState.READY

    assert "no ticket" in assert_one_line_error(cli(server, "tickets", "show", str(MAX_ID)), 1)
    assert cli(server, "tickets", "show", "abc").exit_code == 2


def test_cli_waves_of_a_stored_plan_and_of_a_file(
    server: ServerProcess, admin: SwarmClient, tmp_path: Path
) -> None:
    plan = admin.create_plan(diamond("cli waves"))
    result = cli(server, "waves", str(plan.id))
    assert result.exit_code == 0, result.output
    assert "3 waves" in result.stdout
    assert "A, C, D" in result.stdout
    result = cli(server, "waves", str(plan.id), "--json")
    stored = WavesReport.model_validate_json(result.stdout)
    assert stored.plan_id == plan.id
    assert stored.critical_path == ["A", "C", "D"]

    path = write_plan(tmp_path / "plan.json", diamond("cli waves"))
    result = cli(server, "waves", str(path), "--json")
    assert result.exit_code == 0, result.output
    local = WavesReport.model_validate_json(result.stdout)
    assert local.plan_id is None
    assert local.model_copy(update={"plan_id": plan.id}) == stored
    result = cli(server, "waves", str(path))
    assert result.exit_code == 0
    assert "cli waves: 3 waves" in result.stdout

    assert_one_line_error(cli(server, "waves", str(tmp_path / "nope.json")), 2)
    assert_one_line_error(cli(server, "waves", str(write_plan(tmp_path / "c.json", cyclic()))), 1)
    assert_one_line_error(cli(server, "waves", str(MAX_ID)), 1)


def test_cli_tokens(server: ServerProcess, admin: SwarmClient) -> None:
    result = cli(server, "token", "create", "cli-agent")
    assert result.exit_code == 0, result.output
    agent = result.stdout.strip()
    assert agent.startswith("swagent_")
    result = cli(server, "token", "create", "cli-admin", "--kind", "admin", "--json")
    assert result.exit_code == 0, result.output
    created = TokenCreated.model_validate_json(result.stdout)
    assert created.kind == "admin"
    assert created.token.startswith("swadmin_")
    assert cli(server, "token", "create", "x", "--kind", "lease").exit_code == 2
    assert cli(server, "token", "create", "x", "--kind", "root").exit_code == 2

    result = cli(server, "token", "ls", "--json")
    assert result.exit_code == 0, result.output
    listed = TypeAdapter(list[TokenInfo]).validate_json(result.stdout)
    names = {t.name: t for t in listed}
    assert names["cli-agent"].kind == "agent"
    assert names["cli-admin"].kind == "admin"
    assert agent not in result.stdout  # never the secret
    result = cli(server, "token", "ls")
    assert result.exit_code == 0
    assert "cli-agent" in result.stdout

    # The new admin token works; the agent token is refused admin work with exit 2.
    assert cli(server, "token", "ls", token=created.token).exit_code == 0
    assert "admin token" in assert_one_line_error(cli(server, "tickets", "ls", token=agent), 2)

    agent_id = names["cli-agent"].id
    result = cli(server, "token", "revoke", str(agent_id))
    assert result.exit_code == 0, result.output
    assert f"token {agent_id} revoked" in result.stdout
    revoked = {t.id: t for t in admin.list_tokens()}[agent_id]
    assert revoked.revoked_at is not None
    with SwarmClient(server.url, agent) as client, pytest.raises(AuthError, match="revoked"):
        client.claim("x")
    assert_one_line_error(cli(server, "token", "revoke", str(MAX_ID)), 1)


def test_cli_bad_settings_and_unreachable_server(server: ServerProcess, tmp_path: Path) -> None:
    for args in (["tickets", "ls"], ["token", "ls"], ["waves", "1"]):
        result = cli(server, *args, SWARM_PORT="not-a-port")
        line = assert_one_line_error(result, 2)
        assert "SWARM_PORT" in line
    path = write_plan(tmp_path / "p.json", diamond())
    assert "SWARM_PORT" in assert_one_line_error(
        cli(server, "plan", "import", str(path), SWARM_PORT="99999999"), 2
    )

    dead = f"http://127.0.0.1:{free_port()}"
    line = assert_one_line_error(cli(server, "tickets", "ls", SWARM_API_URL=dead), 1)
    assert "cannot reach" in line
    assert_one_line_error(cli(server, "tickets", "ls", token="garbage"), 2)


# -- the CLI's documentation -------------------------------------------------------------------


def _commands() -> list[tuple[list[str], Any]]:
    """(path, command) for the root and every command and sub-command of ``swarm``."""
    root = typer.main.get_command(cli_app)
    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str], ctx: Context) -> None:
        found.append((path, command))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                walk(sub, [*path, name], Context(sub, parent=ctx, info_name=name))

    walk(root, [], Context(root, info_name="swarm"))
    return found


def test_every_command_has_help_text_and_help_works() -> None:
    commands = _commands()
    paths = {" ".join(p) for p, _ in commands}
    assert {
        "",
        "serve",
        "waves",
        "demo",
        "mcp",
        "plan",
        "plan validate",
        "plan import",
        "plan show",
        "plan approve",
        "plan pause",
        "plan resume",
        "plan start",
        "plan stop",
        "plan runs",
        "plan export",
        "plan design",
        "plan log",
        "tickets",
        "tickets ls",
        "tickets show",
        "tickets retry",
        "tickets cancel",
        "tickets stop",
        "tickets agents",
        "token",
        "token create",
        "token ls",
        "token revoke",
        "bench",
        "bench claims",
        "vm",
        "vm ls",
        "vm create",
        "vm exec",
        "vm cp",
        "vm rm",
        "vm pause",
        "vm resume",
        "vm snapshot",
        "vm snapshots",
        "vm restore",
    } <= paths
    for path, command in commands:
        text = (command.help or command.short_help or "").strip()
        assert text, f"`swarm {' '.join(path)}` has no help text"
        for param in command.params:
            if param.name == "help":
                continue
            assert (getattr(param, "help", None) or "").strip(), (path, param.name)

        result = runner.invoke(cli_app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.stdout, path
        assert text.splitlines()[0].strip()[:40] in " ".join(result.stdout.split()), path
        if hasattr(command, "list_commands"):
            for name in command.list_commands(Context(command)):
                assert name in result.stdout, (path, name)


def test_swarm_error_exit_codes_are_documented() -> None:
    # The CLI's contract: 2 for input the user must change, 1 for everything else.
    assert (UsageError.exit_code, AuthError.exit_code, Forbidden.exit_code) == (2, 2, 2)
    assert (NotFound.exit_code, Conflict.exit_code, Unavailable.exit_code) == (1, 1, 1)
    assert PlanInvalid.exit_code == 1
    assert issubclass(StaleLease, Conflict)
    assert issubclass(PlanInvalid, UsageError)
    assert SwarmError("x").to_dict() == {"error": "internal", "message": "x"}
