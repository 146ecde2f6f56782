"""kill -9 of the server during a 50-agent run, restart on the same database: every ticket ends
done exactly once.

A real server with a short lease (3 s) and a fast sweeper runs a random DAG of 300 tickets. 50
async agents (one process, one shared HTTP client) loop claim → heartbeat → complete and ride
out the server's absence: on ``Unavailable`` they back off briefly and repeat the same step. A
repeated completion must succeed, or return the earlier answer again, or be refused as stale
(the lease ran out while the server was down) — then the agent drops the ticket. After a third
of the tickets, and again after two thirds, the server is killed with SIGKILL and a new one is
started on the same database and the same port.

Afterwards: every ticket is done; the event log holds exactly one ``ticket.done`` per ticket;
exactly one attempt per ticket ended ``done``, at the epoch its agent was told; and the agents
were acknowledged exactly one completion per ticket (an identical replay counted once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from swarmstack.bench.dag import random_plan
from swarmstack.bench.serverproc import ServerProcess
from swarmstack.client import AsyncSwarmClient, Calls, SwarmClient
from swarmstack.db import Database
from swarmstack.errors import StaleLease, Unavailable
from swarmstack.tickets.models import Ticket, TicketResult, TicketState

pytestmark = pytest.mark.slow

T = TypeVar("T")

TICKETS = 300
AGENTS = 50
LEASE_TTL_S = 3.0
# (acknowledged completions, seconds the server stays down) for each kill: the first restarts
# at once, so (unless the machine is slow to start the new server) leases live through it and
# interrupted writes are retried under them; the second stays down past the lease TTL, so
# in-flight leases surely expire and their agents are told so.
KILLS = ((TICKETS // 3, 0.0), (2 * TICKETS // 3, LEASE_TTL_S + 0.5))
SERVER_ENV = {
    "SWARM_LEASE_TTL_S": str(LEASE_TTL_S),
    "SWARM_SWEEP_INTERVAL_S": "0.2",
    # A kill can cost a ticket an attempt (its lease expires while the server is down, or a
    # claim's answer is lost): leave room, so that no ticket ends dead for want of attempts.
    "SWARM_MAX_ATTEMPTS": "10",
}
RUN_TIMEOUT_S = 120.0  # the whole run; it takes 11-15 s on an idle 2-core machine, ~30 s busy
ACK_GRACE_S = 5.0  # once the server has every ticket done, how long the last answers may take
RETRY_FOR_S = 45.0  # how long one step is retried while the server is away


@dataclass
class Record:
    """What the agents saw."""

    # (ticket id, epoch) -> the first answer to the completion under that lease
    acked: dict[tuple[int, int], Ticket] = field(default_factory=dict)
    replays: int = 0  # completions sent again on purpose, answered identically
    claims: int = 0
    stale: collections.Counter[str] = field(default_factory=collections.Counter)  # by step
    unavailable: collections.Counter[str] = field(default_factory=collections.Counter)
    kills: list[dict[str, float]] = field(default_factory=list)

    @property
    def done_tickets(self) -> int:
        return len({ticket_id for ticket_id, _epoch in self.acked})


class Swarm:
    """The server (replaced at every restart), the agents, and the chaos."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.server = ServerProcess(data_dir, database_url=database_url, env=SERVER_ENV)
        self.servers = [self.server]
        self.record = Record()
        self.stop = asyncio.Event()

    def restart(self, down_for: float) -> float:
        """SIGKILL the server; after ``down_for`` s start a new one on the same database and
        port. Returns the seconds it was down."""
        down = time.perf_counter()
        self.server.kill()
        time.sleep(down_for)
        self.server = ServerProcess(
            self.data_dir, database_url=self.database_url, port=self.server.port, env=SERVER_ENV
        )
        self.servers.append(self.server)
        self.server.start()
        return time.perf_counter() - down

    def shutdown(self) -> None:
        for server in self.servers:
            server.stop()

    async def retrying(self, step: str, send: Callable[[], Awaitable[T]]) -> T:
        """``send()`` until the server answers; StaleLease and every other answer propagate."""
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.02
        while True:
            try:
                return await send()
            except Unavailable:
                self.record.unavailable[step] += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.25)

    async def agent(self, api: AsyncSwarmClient, name: str, plan_id: int) -> None:
        rng = random.Random(name)
        record = self.record
        while not self.stop.is_set():
            lease = await self.retrying(
                "claim", partial(api.claim, name, plan_id=plan_id, wait_s=1)
            )
            if lease is None:
                continue
            record.claims += 1
            result = TicketResult(summary=f"{lease.ticket.key} by {name}, epoch {lease.epoch}")
            step = "heartbeat"
            try:
                await asyncio.sleep(rng.uniform(0, 0.02))  # work
                await self.retrying(step, partial(api.heartbeat, lease))
                await asyncio.sleep(rng.uniform(0, 0.02))  # more work
                step = "complete"
                ticket = await self.retrying(step, partial(api.complete, lease, result))
            except StaleLease:  # the lease ran out while the server was away: drop it
                record.stale[step] += 1
                continue
            assert (ticket.id, ticket.epoch, ticket.state) == (
                lease.ticket.id,
                lease.epoch,
                TicketState.DONE,
            ), ticket
            assert ticket.result == result
            key = (ticket.id, lease.epoch)
            assert key not in record.acked, f"lease {key} was acknowledged twice"
            record.acked[key] = ticket
            if rng.random() < 0.1:  # the same completion again: the identical answer
                again = await self.retrying("complete", partial(api.complete, lease, result))
                assert again == ticket, f"a replay of {key} answered differently"
                record.replays += 1
            if record.done_tickets >= TICKETS:
                self.stop.set()

    async def chaos(self) -> None:
        for threshold, down_for in KILLS:
            while self.record.done_tickets < threshold and not self.stop.is_set():
                await asyncio.sleep(0.01)
            if self.stop.is_set():
                return
            done_before = self.record.done_tickets
            down_s = await asyncio.to_thread(self.restart, down_for)
            self.record.kills.append({"done_before": done_before, "down_s": down_s})

    async def monitor(self, admin: AsyncSwarmClient, plan_id: int) -> None:
        """Stop the agents soon after the server has every ticket done, even if some agent
        was never told of its completion (the assertions afterwards then say so)."""
        while not self.stop.is_set():
            await asyncio.sleep(0.25)
            try:
                plan = await admin.send(Calls.get_plan(plan_id))
            except Unavailable:
                continue
            if plan.counts.get(TicketState.DONE.value) == TICKETS:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), ACK_GRACE_S)
                self.stop.set()

    async def run(self, agent_token: str, admin_token: str, plan_id: int) -> None:
        limits = httpx.Limits(max_connections=AGENTS + 8, max_keepalive_connections=AGENTS + 8)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            api = AsyncSwarmClient(self.server.url, agent_token, http=http)
            admin = AsyncSwarmClient(self.server.url, admin_token, http=http)
            tasks = [
                asyncio.create_task(self.agent(api, f"agent-{i}", plan_id)) for i in range(AGENTS)
            ]
            tasks.append(asyncio.create_task(self.chaos()))
            tasks.append(asyncio.create_task(self.monitor(admin, plan_id)))
            try:
                async with asyncio.timeout(RUN_TIMEOUT_S):
                    await asyncio.gather(*tasks)
            except TimeoutError:
                raise AssertionError(
                    f"the run did not finish in {RUN_TIMEOUT_S:.0f}s: "
                    f"{self.record.done_tickets} tickets acknowledged; server log in "
                    f"{self.server.log_path}"
                ) from None
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


def test_kill_9_and_restart_every_ticket_done_once(database_url: str, tmp_path: Path) -> None:
    began = time.perf_counter()
    swarm = Swarm(tmp_path / "data", database_url)
    try:
        swarm.server.start()
        with SwarmClient(swarm.server.url, swarm.server.admin_token) as bootstrap:
            # Tokens kept in the database outlive the server; its configured one does not.
            admin_token = bootstrap.create_token("admin", "crash-test").token
            agent_token = bootstrap.create_token("agent", "crash-agents").token
            plan = bootstrap.create_plan(random_plan(TICKETS, seed=7))
        assert plan.ticket_count == TICKETS

        ran = time.perf_counter()
        asyncio.run(swarm.run(agent_token, admin_token, plan.id))
        ran = time.perf_counter() - ran
        record = swarm.record

        assert len(record.kills) == len(KILLS), record.kills
        assert all(k["done_before"] < TICKETS for k in record.kills), record.kills
        assert sum(record.unavailable.values()) > 0, "no agent noticed the server going away"
        assert sum(record.stale.values()) > 0, "no lease ran out during the long outage"

        with SwarmClient(swarm.server.url, admin_token) as admin:
            tickets = admin.all_tickets(plan_id=plan.id)
            events = admin.all_events()
    finally:
        swarm.shutdown()

    # Every ticket ends done.
    assert len(tickets) == TICKETS
    states = collections.Counter(t.state for t in tickets)
    assert states == {TicketState.DONE: TICKETS}, states

    # The agents were acknowledged one completion per ticket, at the epoch that is done.
    assert len(record.acked) == TICKETS, f"{len(record.acked)} acknowledged completions"
    acked = dict(record.acked.keys())  # ticket id -> epoch; a second epoch would shrink it
    assert acked == {t.id: t.epoch for t in tickets}
    assert {t.id: t.result for t in tickets} == {
        ticket_id: answer.result for (ticket_id, _), answer in record.acked.items()
    }

    # Exactly one ticket.done event per ticket, naming that epoch; sequence numbers unique.
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    done_events = collections.defaultdict(list)
    for e in events:
        if e.kind == "ticket.done" and e.plan_id == plan.id:
            done_events[e.ticket_id].append(e.data["epoch"])
    assert done_events == {ticket_id: [epoch] for ticket_id, epoch in acked.items()}

    # The database: one attempt ended done per ticket, at that epoch; every other attempt
    # expired; one claim event per attempt, and a ticket's epoch counts its attempts.
    db = Database(database_url)
    try:
        with db.read() as tx:
            done_rows = tx.all(
                "SELECT ticket_id, COUNT(*) AS n, MIN(epoch) AS epoch FROM attempts "
                "WHERE outcome = 'done' GROUP BY ticket_id"
            )
            outcomes = tx.all("SELECT outcome, COUNT(*) AS n FROM attempts GROUP BY outcome")
            per_ticket = tx.all("SELECT ticket_id, COUNT(*) AS n FROM attempts GROUP BY ticket_id")
    finally:
        db.close()
    assert {r["ticket_id"]: (int(r["n"]), int(r["epoch"])) for r in done_rows} == {
        ticket_id: (1, epoch) for ticket_id, epoch in acked.items()
    }
    outcome_counts = {r["outcome"]: int(r["n"]) for r in outcomes}
    assert set(outcome_counts) <= {"done", "expired"}, outcome_counts
    attempts = {r["ticket_id"]: int(r["n"]) for r in per_ticket}
    assert attempts == {t.id: t.attempts for t in tickets} == {t.id: t.epoch for t in tickets}
    claimed = collections.Counter(e.ticket_id for e in events if e.kind == "ticket.claimed")
    assert claimed == attempts

    print(
        f"\ncrash: {TICKETS} tickets, {AGENTS} agents, {len(record.kills)} kills "
        f"{[(k['done_before'], round(k['down_s'], 2)) for k in record.kills]} (done, s down); "
        f"run {ran:.1f}s, total {time.perf_counter() - began:.1f}s; claims {record.claims}, "
        f"attempts by outcome {outcome_counts}, stale {dict(record.stale)}, "
        f"retries {dict(record.unavailable)}, replays {record.replays}"
    )
