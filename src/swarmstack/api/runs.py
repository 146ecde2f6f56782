"""Runs the control plane starts itself: an agent pool per plan, until no ticket can move.

``POST /v1/plans/{id}/run`` records the run in the store (:mod:`swarmstack.runstore`), mints an
agent token and starts the pool ``swarm run`` starts (an :class:`~swarmstack.agent.host.AgentHost`:
each slot a runner in a fresh sandbox) as a task of this process, holding the run by a lease it
renews. The task watches the plan's tickets and ends the pool when none can move without a
person — every ticket done, or the rest waiting on a dead one — or when ``DELETE
/v1/plans/{id}/run`` stops it, on whichever replica it is asked: the runners release their
leases (the tickets are ready again, the attempts not counted), every sandbox is destroyed and
the token is revoked.

A run outlives its process. At shutdown the pool stops the same way but the run is handed over,
not ended; a crashed control plane's lease runs out. Every control plane looks for such runs
every few seconds and takes them up with a fresh pool and token, so a restart (or a replica's
death) pauses the agents and loses no attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from swarmstack.api.schemas import RunRequest
from swarmstack.api.state import AppState
from swarmstack.auth import TokenKind, parse_token
from swarmstack.errors import Conflict, InvalidRequest, SwarmError
from swarmstack.runstore import Run, RunState
from swarmstack.tickets.models import TicketState

if TYPE_CHECKING:
    from swarmstack.agent.host import AgentHost

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a run looks at its plan's tickets
LEASE_S = 30.0  # how long a control plane holds a run without renewing it
RENEW_S = 5.0  # how often it renews (and sees whether another replica asked for a stop)
ADOPT_S = 5.0  # how often a control plane looks for runs nobody holds
STOP_TIMEOUT_S = 60.0  # for the runners to hand their tickets back and end
SHUTDOWN_GRACE_S = 10.0  # at shutdown, their tickets handed back already: then the sandboxes go
SHUTDOWN = "the control plane stopped"


@dataclass
class _Pool:
    """A run's pool in this process."""

    run: Run
    host: AgentHost | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str = "an admin stopped it"
    task: asyncio.Task[None] | None = None


class Runs:
    """The agent pools of one app, and the runs it holds."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._pools: dict[int, _Pool] = {}  # by run id
        self._adopter: asyncio.Task[None] | None = None
        self._closing = False

    async def find(self, plan_id: int | None = None) -> list[Run]:
        """Every run (of one plan), oldest first, whichever control plane started it."""
        return await self.state.call(self.state.store.runs.find, plan_id)

    def begin(self) -> None:
        """Look for runs nobody holds, now and every ADOPT_S seconds (the app has started)."""
        if self.state.settings.max_run_agents > 0 and self._adopter is None:
            self._adopter = asyncio.create_task(self._adopt_forever(), name="swarm-runs")

    async def start(self, plan_id: int, request: RunRequest, api_url: str) -> Run:
        """Start ``request.agents`` agents on an active plan; ``api_url`` is this server as the
        agents' host reaches it."""
        from swarmstack.run import agent_backend

        state, store = self.state, self.state.store
        limit = state.settings.max_run_agents
        if limit == 0:
            raise Conflict(
                "this control plane starts no agents (SWARM_MAX_RUN_AGENTS is 0): run "
                "`swarm host` or `swarm run --api` to put agents on the plan"
            )
        plan = await state.call(store.get_plan, plan_id)
        if plan.status == "draft":
            raise Conflict(f"plan {plan_id} is a draft: approve it first")
        if plan.status != "active":
            why = f": {plan.error}" if plan.error else ""
            raise Conflict(f"plan {plan_id} is {plan.status}{why}; it has no tickets to work")
        if request.agents > limit:
            raise InvalidRequest(
                f"agents: {request.agents} is more than this control plane runs at once "
                f"(SWARM_MAX_RUN_AGENTS={limit})"
            )
        backend = agent_backend(request.backend)
        state.own_url = state.own_url or api_url
        run = await state.call(
            store.runs.start, plan_id, request.agents, backend, self.owner, LEASE_S
        )
        return await self._launch(run, api_url)

    async def _launch(self, run: Run, api_url: str) -> Run:
        """Start the pool of a run this process holds, and the task that watches it."""
        pool = self._pools[run.id] = _Pool(run)
        try:
            await self._start_pool(pool, api_url)
        except BaseException as exc:
            why = exc.message if isinstance(exc, SwarmError) else repr(exc)
            await self._clean_up(pool, set())
            await self._end(pool, "failed", f"its agents could not start: {why}")
            raise
        pool.task = asyncio.create_task(self._watch(pool), name=f"run-{run.plan_id}")
        return run

    async def _start_pool(self, pool: _Pool, api_url: str) -> None:
        from swarmstack.agent.host import AgentHost
        from swarmstack.run import agents_dir, pool_config

        state, settings, run = self.state, self.state.settings, pool.run
        token = await state.call(state.store.tokens.create, TokenKind.AGENT, f"run-{run.plan_id}")
        parsed = parse_token(token)
        run.token_id = int(parsed[1]) if parsed is not None else None
        await state.call(state.store.runs.set_token, run.id, run.token_id)
        home = agents_dir(settings.data_dir.resolve(), settings.sandbox_dir)
        where = home / f"plan-{run.plan_id}"
        config = pool_config(api_url, token, where, run.agents, run.backend, run.plan_id)
        plan_id = run.plan_id
        pool.host = AgentHost(
            config,
            on_line=lambda slot, line: log.debug("plan %d, slot %d: %s", plan_id, slot, line),
        )
        await pool.host.start()

    async def _watch(self, pool: _Pool) -> None:
        """Keep the pool at work until the plan is settled, the run is stopped (here or by
        another replica), it fails, or the app shuts down; then end the run, or at shutdown
        hand it over, once its runners and sandboxes are gone."""
        assert pool.host is not None
        from swarmstack.run import settled

        run, store, call = pool.run, self.state.store, self.state.call
        working = asyncio.create_task(pool.host.run(), name=f"run-{run.plan_id}-pool")
        stopped = asyncio.create_task(pool.stopping.wait())
        sandboxes: set[str] = set()
        ended: tuple[RunState, str] | None = ("failed", "the run was interrupted")
        renewed = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait(
                    {working, stopped}, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
                sandboxes = pool.host.sandbox_ids
                if stopped in done:
                    ended = None if pool.stop_reason == SHUTDOWN else ("stopped", pool.stop_reason)
                    break
                if working in done:
                    working.result()
                    raise SwarmError("the agent pool stopped before the plan was done")
                if time.monotonic() - renewed >= RENEW_S:
                    held = await call(store.runs.renew, run.id, self.owner, LEASE_S)
                    renewed = time.monotonic()
                    if held is None:  # ended or taken up elsewhere: not ours to end
                        log.warning("run %d of plan %d is no longer ours", run.id, run.plan_id)
                        ended = None
                        break
                    if held.stop_requested:
                        ended = ("stopped", pool.stop_reason)
                        break
                counts = await call(store.counts, run.plan_id)
                if settled(TicketState(s) for s, n in counts.items() if n):
                    ended = ("finished", outcome(counts))
                    break
        except Exception as exc:
            log.exception("the run of plan %d failed", run.plan_id)
            ended = ("failed", exc.message if isinstance(exc, SwarmError) else repr(exc))
        finally:
            stopped.cancel()
            await pool.host.stop()
            grace = SHUTDOWN_GRACE_S if pool.stop_reason == SHUTDOWN else STOP_TIMEOUT_S
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(working, grace)
            await self._clean_up(pool, sandboxes if pool.stop_reason == SHUTDOWN else set())
            if ended is not None:
                await self._end(pool, *ended)
            elif pool.stop_reason == SHUTDOWN:
                with contextlib.suppress(SwarmError):
                    await call(store.runs.hand_over, run.id, self.owner)
            self._pools.pop(run.id, None)

    async def _end(self, pool: _Pool, state: RunState, reason: str) -> None:
        with contextlib.suppress(SwarmError):
            await self.state.call(self.state.store.runs.end, pool.run.id, state, reason, self.owner)
        self._pools.pop(pool.run.id, None)

    async def _clean_up(self, pool: _Pool, leases_of: set[str]) -> None:
        """Close the pool and revoke its token; hand back the leases of ``leases_of`` (runners
        that could not, the server no longer taking requests at shutdown)."""
        if pool.host is not None:
            with contextlib.suppress(Exception):
                await pool.host.close()
        await self._hand_back(pool, leases_of)
        await self._revoke(pool.run.token_id)

    async def _hand_back(self, pool: _Pool, agents: set[str]) -> None:
        """Release, in the store, the leases these agents of the pool hold."""
        if not agents:
            return
        state = self.state
        for agent in await state.call(state.store.agents, pool.run.plan_id):
            if agent.agent in agents:
                with contextlib.suppress(SwarmError):
                    await state.call(state.store.stop, agent.ticket_id, SHUTDOWN)

    async def _revoke(self, token_id: int | None) -> None:
        if token_id is None:
            return
        with contextlib.suppress(SwarmError):
            await self.state.call(self.state.store.tokens.revoke, token_id)
        self.state.forget_tokens()

    async def stop(self, plan_id: int) -> Run:
        """Stop the plan's run and answer once its runners and sandboxes are gone."""
        state, store = self.state, self.state.store
        await state.call(store.get_plan, plan_id)  # 404 for no such plan
        run = await state.call(store.runs.going, plan_id)
        if run is None:
            raise Conflict(f"plan {plan_id} has no run going")
        pool = self._pools.get(run.id)
        if pool is not None:
            pool.stopping.set()
            if pool.task is not None:
                await asyncio.shield(pool.task)
            return await state.call(store.runs.get, run.id)
        if run.held_by is None:  # nobody works it: end it here
            await self._revoke(run.token_id)
            await state.call(store.runs.end, run.id, "stopped", "an admin stopped it", None)
            return await state.call(store.runs.get, run.id)
        # Another replica's pool: ask, and wait for it to stop at its next look.
        await state.call(store.runs.request_stop, run.id)
        deadline = time.monotonic() + STOP_TIMEOUT_S + RENEW_S
        while (now := await state.call(store.runs.get, run.id)).state == "running":
            if time.monotonic() > deadline:
                raise Conflict(
                    f"plan {plan_id}'s run is held by {now.held_by}, which has not stopped it "
                    "yet: it will at its next look"
                )
            await asyncio.sleep(0.5)
        return now

    async def _adopt_forever(self) -> None:
        while not self._closing:
            try:
                await self.adopt()
            except SwarmError as exc:  # database briefly unavailable: keep going
                log.warning("looking for runs to take up failed: %s", exc.message)
            except Exception:
                log.exception("looking for runs to take up failed")
            await asyncio.sleep(ADOPT_S)

    async def adopt(self) -> list[Run]:
        """Take up the runs nobody holds, as far as SWARM_MAX_RUN_AGENTS allows."""
        state, store = self.state, self.state.store
        url = state.own_url
        if url is None or self._closing:
            return []
        room = state.settings.max_run_agents - sum(p.run.agents for p in self._pools.values())
        taken = []
        for found in await state.call(store.runs.adoptable):
            if found.agents > room or self._closing:
                continue
            run = await state.call(store.runs.adopt, found.id, self.owner, LEASE_S)
            if run is None:
                continue  # another replica took it first
            await self._revoke(run.token_id)  # the previous pool's, if its holder died
            log.warning("taking up run %d of plan %d (%d agents)", run.id, run.plan_id, run.agents)
            try:
                taken.append(await self._launch(run, url))
            except Exception:
                log.exception("run %d could not be taken up", run.id)
                continue
            room -= run.agents
        return taken

    async def close(self) -> None:
        """Stop every pool and hand its run over: the app is shutting down."""
        self._closing = True
        if self._adopter is not None:
            self._adopter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._adopter
        pools = list(self._pools.values())
        for pool in pools:
            pool.stop_reason = SHUTDOWN
            # First hand the tickets back in the store: the server takes no more requests, so
            # the runners cannot, and however long they take to stop, no lease of theirs runs
            # out meanwhile and costs its ticket an attempt. (Their late completions are
            # refused: the epoch moved on.)
            if pool.host is not None:
                await self._hand_back(pool, pool.host.sandbox_ids)
            pool.stopping.set()
        await asyncio.gather(*(p.task for p in pools if p.task is not None), return_exceptions=True)


def outcome(counts: dict[str, int]) -> str:
    """How a settled plan ended, for a person."""
    total = sum(counts.values())
    line = f"{counts.get('done', 0)} of {total} tickets done"
    dead, cancelled = counts.get("dead", 0), counts.get("cancelled", 0)
    if cancelled:
        line += f", {cancelled} cancelled"
    if dead:
        line += f", {dead} dead: retry them, then start the run again"
    blocked = counts.get("pending", 0)
    if blocked:
        line += f"; {blocked} waiting on those"
    return line


def runs(state: AppState) -> Runs:
    """The app's runs, made on first use."""
    if state.runs is None:
        state.runs = Runs(state)
    return state.runs  # type: ignore[no-any-return]
