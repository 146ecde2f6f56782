"""``swarm bench schedule``: how close a run comes to the shortest makespan possible.

**The plan** is :func:`~swarmstack.bench.dag.waved_plan`: ``tickets`` tickets in ``waves``
(default 8) topological generations, narrow at both ends and widest in the middle, each ticket
depending on one or two earlier ones, with lognormal estimates. It is chosen so that both
bounds on the makespan matter at 1000 tickets and 100 agents: the middle waves are 1.5-2 times
as wide as the agents, so the claim order decides which ready ticket waits; and the critical
path is only about 1.2-1.3 times the total work divided by the agents, so a poor order makes
the critical path wait behind other work. Simulated with no dispatch cost on seeds 0-5 (as
:mod:`~swarmstack.bench.listschedule` does), agents taking ready tickets in random order
reach 0.77-0.99 of the lower bound, in plan order 0.83-0.99, by upward rank 1.00.

**The work**: a ticket's agent sleeps for the ticket's estimate times lognormal noise (sigma
0.3), so the store ranks tickets by their estimates and the agents see the actual durations.
Every duration is scaled (``scale``: seconds per unit of estimate) so that the lower bound —
the larger of the critical path of the actual durations and the total actual work divided by
the agents — is ``target_s``.

**The runs**: the same plan and durations twice, each against a fresh ``swarm serve`` child
process and database: by default (a ticket may be claimed as soon as its dependencies are done)
and with ``strict_waves``. ``agents`` asyncio agents in this process do over HTTP what a runner
does: long-poll claim, heartbeat every third of the lease, work, complete. They are all
long-polling before the plan is created.

Reported:

* ``makespan_s`` — default mode: from the plan's ``plan.created`` event to its last
  ``ticket.done`` (both stamped by the server);
* ``lower_bound_s``, and ``efficiency`` = ``lower_bound_s / makespan_s``;
* ``strict_wave_makespan_s``, and ``strict_ratio`` = ``makespan_s / strict_wave_makespan_s``;
* ``simulated_makespan_s``, ``simulated_strict_makespan_s`` — the same claim order on the same
  durations with no dispatch cost: what the policy alone gives, beside what the system gives;
* ``claim_p50_ms``, ``claim_p99_ms`` — default mode, tickets past the first wave: from the
  later of a claim request and its ticket becoming ready, to the lease in the agent's hands.
  (The first wave's tickets are stamped ready at the start of the plan's creation, so theirs
  would measure the insert of the whole plan, not a dispatch.)
* ``tickets_done``, ``strict_tickets_done`` — as the server counts them after each run;
* the context: the plan's shape, ``critical_path_s``, ``total_work_s``, ``scale``, and
  ``server_busy`` (the server's CPU seconds per second of the default run).
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import tempfile
import time
from collections.abc import Coroutine, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from swarmstack.bench import listschedule
from swarmstack.bench.dag import waved_plan
from swarmstack.bench.pg import scratch_database
from swarmstack.bench.serverproc import ServerProcess
from swarmstack.bench.stats import percentile
from swarmstack.client import AiohttpSwarmClient, Calls, SwarmClient
from swarmstack.errors import Unavailable
from swarmstack.tickets import graph
from swarmstack.tickets.models import Lease, PlanSpec, TicketResult

T = TypeVar("T")

NOISE_SIGMA = 0.3  # of the logarithm of actual / estimated work
_WAIT_S = 30.0  # each claim's long-poll
_SETTLE_S = 1.0  # for every agent's first claim to be waiting when the plan is created


@dataclass
class _Record:
    claim_ms: list[float] = field(default_factory=list)
    done: set[str] = field(default_factory=set)


@dataclass
class _Outcome:
    makespan_s: float
    tickets_done: int
    claim_ms: list[float]
    server_cpu_s: float


def work_units(spec: PlanSpec, seed: int) -> dict[str, float]:
    """Each ticket's actual work, in units of estimate: its estimate times lognormal noise."""
    rng = random.Random(f"work-{seed}")
    return {t.id: t.estimate * math.exp(rng.gauss(0.0, NOISE_SIGMA)) for t in spec.tickets}


def bounds(spec: PlanSpec, work: Mapping[str, float], agents: int) -> tuple[float, float]:
    """The critical path of ``work`` and the total work divided by ``agents``: no schedule on
    ``agents`` agents finishes before the larger of the two."""
    ids = [t.id for t in spec.tickets]
    deps = {t.id: t.depends_on for t in spec.tickets}
    return graph.critical_path_of(ids, deps, work)[1], sum(work.values()) / agents


async def _heartbeats(api: AiohttpSwarmClient, lease: Lease) -> None:
    while True:
        await api.heartbeat(lease)
        await asyncio.sleep(lease.ttl_s / 3)


async def _agents(
    server: ServerProcess,
    agent_token: str,
    spec: PlanSpec,
    seconds: Mapping[str, float],
    agents: int,
    record: _Record,
) -> int:
    """Start the agents, create the plan once they wait for work, return when all is done."""
    import aiohttp

    all_done = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        api = AiohttpSwarmClient(server.url, agent_token, session=session)

        async def agent(name: str) -> None:
            while True:
                asked = time.time()
                lease = await api.claim(name, wait_s=_WAIT_S)
                got = time.time()
                if lease is None:
                    continue
                ticket = lease.ticket
                if ticket.depends_on:
                    record.claim_ms.append((got - max(asked, ticket.ready_at or asked)) * 1000)
                beats = asyncio.create_task(_heartbeats(api, lease))
                await asyncio.sleep(seconds[ticket.key])
                beats.cancel()
                # A beat the cancellation cut short, or one refused as the lease ended, is no
                # error here: a lease really lost makes the completion fail.
                await asyncio.gather(beats, return_exceptions=True)
                await api.complete(lease, TicketResult(summary=f"done by {name}"))
                record.done.add(ticket.key)
                if len(record.done) == len(spec.tickets):
                    all_done.set()

        workers = [asyncio.create_task(agent(f"agent-{i}")) for i in range(agents)]
        await asyncio.sleep(_SETTLE_S)
        admin = AiohttpSwarmClient(server.url, server.admin_token, session=session)
        plan = await admin.send(Calls.create_plan(spec))
        finished = asyncio.create_task(all_done.wait())
        await asyncio.wait([finished, *workers], return_when=asyncio.FIRST_COMPLETED)
        for task in (finished, *workers):
            task.cancel()
        for outcome in await asyncio.gather(finished, *workers, return_exceptions=True):
            if isinstance(outcome, Exception):  # an agent failed (cancellations are not)
                raise outcome
        return plan.id


def _in_loop(coro: Coroutine[Any, Any, T]) -> T:
    # The agents' own pauses for full garbage collections would be measured as the server's
    # latency: leave what exists now (the loaded modules) out of them, as the server does.
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:  # uvloop is an optional speed-up
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _run_plan(
    spec: PlanSpec,
    seconds: Mapping[str, float],
    agents: int,
    db: Literal["sqlite", "postgres"],
    postgres_url: str | None,
    timeout_s: float,
) -> _Outcome:
    """One run on a fresh server and database."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-bench-")))
        if db == "postgres":
            database = stack.enter_context(scratch_database(postgres_url))
        else:
            database = f"sqlite:///{tmp / 'server.db'}"
        server = stack.enter_context(ServerProcess(tmp / "data", database_url=database))
        with SwarmClient(server.url, server.admin_token) as admin:
            agent_token = admin.create_token("agent", "bench").token
            record = _Record()
            cpu_before = server.cpu_seconds()
            try:
                plan_id = _in_loop(
                    asyncio.wait_for(
                        _agents(server, agent_token, spec, seconds, agents, record), timeout_s
                    )
                )
            except TimeoutError as exc:
                raise Unavailable(
                    f"{len(record.done)} of {len(spec.tickets)} tickets done in {timeout_s:.0f}s"
                ) from exc
            server_cpu = server.cpu_seconds() - cpu_before
            done = admin.get_plan(plan_id).counts.get("done", 0)
            events = admin.all_events(plan_id=plan_id)
    created = min(e.ts for e in events if e.kind == "plan.created")
    last_done = max(e.ts for e in events if e.kind == "ticket.done")
    return _Outcome(last_done - created, done, record.claim_ms, server_cpu)


def run(
    tickets: int = 1000,
    agents: int = 100,
    *,
    seed: int = 0,
    target_s: float = 60.0,
    waves: int = 8,
    db: Literal["sqlite", "postgres"] = "sqlite",
    postgres_url: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark in both modes and return its one JSON object."""
    spec = waved_plan(tickets, waves=waves, seed=seed)
    units = work_units(spec, seed)
    path_units, share_units = bounds(spec, units, agents)
    scale = target_s / max(path_units, share_units)
    seconds = {key: value * scale for key, value in units.items()}
    lower = max(path_units, share_units) * scale
    simulated = listschedule.makespan(spec, seconds, agents)
    simulated_strict = listschedule.makespan(spec, seconds, agents, strict_waves=True)
    # A run that takes three times its simulation plus a minute is stuck, not slow.
    timeout_s = 60.0 + 3 * simulated_strict
    default = _run_plan(spec, seconds, agents, db, postgres_url, timeout_s)
    strict_spec = spec.model_copy(update={"strict_waves": True})
    strict = _run_plan(strict_spec, seconds, agents, db, postgres_url, timeout_s)
    shape = [len(w) for w in graph.waves(spec)]
    return {
        "bench": "schedule",
        "db": db,
        "tickets": tickets,
        "agents": agents,
        "waves": len(shape),
        "wave_sizes": shape,
        "seed": seed,
        "target_s": target_s,
        "scale": round(scale, 4),
        "critical_path_s": round(path_units * scale, 3),
        "total_work_s": round(sum(seconds.values()), 3),
        "lower_bound_s": round(lower, 3),
        "makespan_s": round(default.makespan_s, 3),
        "efficiency": round(lower / default.makespan_s, 4),
        "strict_wave_makespan_s": round(strict.makespan_s, 3),
        "strict_ratio": round(default.makespan_s / strict.makespan_s, 4),
        "simulated_makespan_s": round(simulated, 3),
        "simulated_strict_makespan_s": round(simulated_strict, 3),
        "claim_p50_ms": percentile(default.claim_ms, 50),
        "claim_p99_ms": percentile(default.claim_ms, 99),
        "tickets_done": default.tickets_done,
        "strict_tickets_done": strict.tickets_done,
        "server_busy": round(default.server_cpu_s / default.makespan_s, 3),
    }
