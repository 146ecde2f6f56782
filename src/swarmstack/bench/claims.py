"""``swarm bench claims``: N agents over HTTP against a real server, on a DAG of M tickets.

Each agent loops claim (long-poll) → heartbeat → complete until every ticket is done. Reported:

* ``lifecycles_per_s`` — tickets taken from claim to done per second of wall time;
* ``claim_p50_ms`` / ``claim_p99_ms`` — claim service time: from the later of the request and
  the ticket becoming ready, to the response;
* ``dispatch_p50_ms`` / ``dispatch_p99_ms`` — from a dependency's completion (the moment its
  dependent became ready) to that dependent's lease reaching an agent that was already idle,
  long-polling, when it became ready;
* ``double_claims`` — leases handed out beyond one per ticket (leases never expire in this run);
* ``lost`` — tickets not done at the end, or done without the server recording it;
* ``inproc_lifecycles_per_s`` — the same DAG against the store in-process: the ceiling.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from swarmstack.bench.dag import layered_plan
from swarmstack.bench.pg import scratch_database
from swarmstack.bench.serverproc import ServerProcess
from swarmstack.bench.stats import percentile
from swarmstack.client import AiohttpSwarmClient, SwarmClient
from swarmstack.db import Database
from swarmstack.errors import Unavailable
from swarmstack.tickets.models import PlanSpec, TicketResult
from swarmstack.tickets.store import TicketStore


@dataclass
class _Record:
    claim_ms: list[float] = field(default_factory=list)
    dispatch_ms: list[float] = field(default_factory=list)
    claims_per_ticket: collections.Counter[int] = field(default_factory=collections.Counter)
    completed: set[int] = field(default_factory=set)
    first_claim: float = 0.0
    last_complete: float = 0.0


async def _agents(url: str, token: str, agents: int, total: int, record: _Record) -> None:
    import aiohttp

    done = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        api = AiohttpSwarmClient(url, token, session=session)

        async def agent(name: str) -> None:
            while not done.is_set():
                asked = time.time()
                lease = await api.claim(name, wait_s=0.5)
                got = time.time()
                if lease is None:
                    continue
                ticket = lease.ticket
                record.first_claim = record.first_claim or asked
                ready = ticket.ready_at or asked
                record.claim_ms.append((got - max(asked, ready)) * 1000)
                if ticket.depends_on and asked < ready:
                    record.dispatch_ms.append((got - ready) * 1000)
                record.claims_per_ticket[ticket.id] += 1
                await api.heartbeat(lease)
                await api.complete(lease, TicketResult(summary=f"done by {name}"))
                record.completed.add(ticket.id)
                record.last_complete = time.time()
                if len(record.completed) >= total:
                    done.set()

        await asyncio.gather(*(agent(f"agent-{i}") for i in range(agents)))


def _run_agents(url: str, token: str, agents: int, total: int) -> _Record:
    record = _Record()
    # The agents' own pauses for full garbage collections would be measured as the server's
    # latency: leave what exists now (the loaded modules) out of them, as the server does.
    gc.collect()
    gc.freeze()
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_agents(url, token, agents, total, record))
    except ImportError:  # uvloop is an optional speed-up
        asyncio.run(_agents(url, token, agents, total, record))
    return record


def inproc_rate(spec: PlanSpec, database_url: str) -> float:
    """Lifecycles per second against the store directly: the ceiling HTTP is measured against."""
    store = TicketStore(Database(database_url))
    store.migrate()
    plan = store.create_plan(spec)
    start = time.perf_counter()
    done = 0
    while done < len(spec.tickets):
        lease = store.claim("inproc", plan_id=plan.id)
        if lease is None:
            raise RuntimeError("in-process run found no ready ticket before the end")
        store.heartbeat(lease.ticket.id, lease.epoch)
        store.complete(lease.ticket.id, lease.epoch, TicketResult(summary="done"))
        done += 1
    elapsed = time.perf_counter() - start
    store.close()
    return len(spec.tickets) / elapsed


def run(
    agents: int = 100,
    tickets: int = 2000,
    db: Literal["sqlite", "postgres"] = "sqlite",
    seed: int = 0,
    postgres_url: str | None = None,
    width: int = 200,
) -> dict[str, Any]:
    """Run the benchmark end to end and return its one JSON object."""
    spec = layered_plan(tickets, width=width, seed=seed)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-bench-")))
        if db == "postgres":
            server_db = stack.enter_context(scratch_database(postgres_url))
            inproc_db = stack.enter_context(scratch_database(postgres_url))
        else:
            server_db = f"sqlite:///{tmp / 'server.db'}"
            inproc_db = f"sqlite:///{tmp / 'inproc.db'}"
        server = stack.enter_context(ServerProcess(tmp / "data", database_url=server_db))
        with SwarmClient(server.url, server.admin_token) as admin:
            plan = admin.create_plan(spec)
            agent_token = admin.create_token("agent", "bench").token
            started = time.time()
            cpu_before, own_before = server.cpu_seconds(), time.process_time()
            record = _run_agents(server.url, agent_token, agents, tickets)
            wall = time.time() - started
            server_cpu, own_cpu = (
                server.cpu_seconds() - cpu_before,
                time.process_time() - own_before,
            )
            final = admin.get_plan(plan.id)
        server.stop()
        ceiling = inproc_rate(spec, inproc_db)
    if not record.completed:
        raise Unavailable("no ticket was completed")
    server_done = final.counts.get("done", 0)
    active = max(record.last_complete - record.first_claim, 1e-9)
    return {
        "bench": "claims",
        "db": db,
        "agents": agents,
        "tickets": tickets,
        "dag": f"{-(-tickets // width)} layers of {width}, 1-2 dependencies each",
        "wall_s": round(wall, 3),
        "lifecycles_per_s": round(len(record.completed) / active, 1),
        "claim_p50_ms": percentile(record.claim_ms, 50),
        "claim_p99_ms": percentile(record.claim_ms, 99),
        "dispatch_p50_ms": percentile(record.dispatch_ms, 50),
        "dispatch_p99_ms": percentile(record.dispatch_ms, 99),
        "dispatch_samples": len(record.dispatch_ms),
        "double_claims": sum(n - 1 for n in record.claims_per_ticket.values() if n > 1),
        "lost": (tickets - server_done) + max(0, len(record.completed) - server_done),
        "inproc_lifecycles_per_s": round(ceiling, 1),
        "server_cpu_per_lifecycle_us": round(server_cpu / tickets * 1e6),
        "agents_cpu_per_lifecycle_us": round(own_cpu / tickets * 1e6),
        "server_busy": round(server_cpu / wall, 2),
        "http_over_inproc": round(len(record.completed) / active / ceiling, 3),
    }
