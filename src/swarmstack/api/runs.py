"""Runs the control plane starts itself: an agent pool per plan, until no ticket can move.

``POST /v1/plans/{id}/run`` mints an agent token and starts the pool ``swarm run`` starts (an
:class:`~swarmstack.agent.host.AgentHost`: each slot a runner in a fresh sandbox) as a task of
this process. The task watches the plan's tickets and ends the pool when none can move without
a person — every ticket done, or the rest waiting on a dead one — or when ``DELETE
/v1/plans/{id}/run`` or the app's shutdown stops it: the runners release their leases (the
tickets are ready again, the attempts not counted), every sandbox is destroyed and the token is
revoked. Runs live in the process that started them: ``GET /v1/runs`` lists this replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from swarmstack.api.schemas import Run, RunRequest, RunState
from swarmstack.api.state import AppState
from swarmstack.auth import TokenKind, parse_token
from swarmstack.errors import Conflict, InvalidRequest, SwarmError
from swarmstack.tickets.models import TicketState

if TYPE_CHECKING:
    from swarmstack.agent.host import AgentHost

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a run looks at its plan's tickets
STOP_TIMEOUT_S = 60.0
SHUTDOWN = "the control plane stopped"


@dataclass
class _Run:
    info: Run
    host: AgentHost | None = None
    token_id: int | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str = "an admin stopped it"
    task: asyncio.Task[None] | None = None

    def end(self, state: RunState, reason: str) -> None:
        self.info.state = state
        self.info.reason = reason
        self.info.ended_at = time.time()


class Runs:
    """The agent pools of one app."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._runs: list[_Run] = []

    def list(self, plan_id: int | None = None) -> list[Run]:
        """Every run this process started, oldest first."""
        return [r.info for r in self._runs if plan_id is None or r.info.plan_id == plan_id]

    def _going(self, plan_id: int) -> _Run | None:
        return next(
            (r for r in self._runs if r.info.plan_id == plan_id and r.info.state == "running"),
            None,
        )

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
        going = self._going(plan_id)
        if going is not None:
            raise Conflict(
                f"plan {plan_id} has a run going already ({going.info.agents} agents): stop it "
                "first to start another"
            )
        backend = agent_backend(request.backend)
        # Registered before the first wait, so that a second request for the plan sees it.
        run = _Run(
            Run(
                plan_id=plan_id,
                agents=request.agents,
                backend=backend,
                started_at=time.time(),
                state="running",
            )
        )
        self._runs.append(run)
        try:
            await self._start_pool(run, api_url)
        except BaseException as exc:
            run.end("failed", exc.message if isinstance(exc, SwarmError) else repr(exc))
            await self._clean_up(run, set())
            raise
        run.task = asyncio.create_task(self._watch(run), name=f"run-{plan_id}")
        return run.info

    async def _start_pool(self, run: _Run, api_url: str) -> None:
        from swarmstack.agent.host import AgentHost
        from swarmstack.run import agents_dir, pool_config

        state, settings = self.state, self.state.settings
        token = await state.call(
            state.store.tokens.create, TokenKind.AGENT, f"run-{run.info.plan_id}"
        )
        parsed = parse_token(token)
        run.token_id = int(parsed[1]) if parsed is not None else None
        home = agents_dir(settings.data_dir.resolve(), settings.sandbox_dir)
        where = home / f"plan-{run.info.plan_id}"
        config = pool_config(
            api_url, token, where, run.info.agents, run.info.backend, run.info.plan_id
        )
        plan_id = run.info.plan_id
        run.host = AgentHost(
            config,
            on_line=lambda slot, line: log.debug("plan %d, slot %d: %s", plan_id, slot, line),
        )
        await run.host.start()

    async def _watch(self, run: _Run) -> None:
        """Keep the pool at work until the plan is settled, the run is stopped or it fails;
        the run says how it ended once its runners and sandboxes are gone."""
        assert run.host is not None
        from swarmstack.run import settled

        plan_id = run.info.plan_id
        pool = asyncio.create_task(run.host.run(), name=f"run-{plan_id}-pool")
        stopped = asyncio.create_task(run.stopping.wait())
        working: set[str] = set()
        ended: tuple[RunState, str] = ("failed", "the run was interrupted")
        try:
            while True:
                done, _ = await asyncio.wait(
                    {pool, stopped}, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
                working = run.host.sandbox_ids
                if stopped in done:
                    ended = ("stopped", run.stop_reason)
                    break
                if pool in done:
                    pool.result()
                    raise SwarmError("the agent pool stopped before the plan was done")
                counts = await self.state.call(self.state.store.counts, plan_id)
                if settled(TicketState(s) for s, n in counts.items() if n):
                    ended = ("finished", outcome(counts))
                    break
        except Exception as exc:
            log.exception("the run of plan %d failed", plan_id)
            ended = ("failed", exc.message if isinstance(exc, SwarmError) else repr(exc))
        finally:
            stopped.cancel()
            await run.host.stop()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(pool, STOP_TIMEOUT_S)
            await self._clean_up(run, working if run.stop_reason == SHUTDOWN else set())
            run.end(*ended)

    async def _clean_up(self, run: _Run, leases_of: set[str]) -> None:
        """Close the pool and revoke its token; hand back the leases of ``leases_of`` (runners
        that could not, the server no longer taking requests at shutdown)."""
        state = self.state
        if run.host is not None:
            with contextlib.suppress(Exception):
                await run.host.close()
        if leases_of:
            for agent in await state.call(state.store.agents, run.info.plan_id):
                if agent.agent in leases_of:
                    with contextlib.suppress(SwarmError):
                        await state.call(state.store.stop, agent.ticket_id, SHUTDOWN)
        if run.token_id is not None:
            with contextlib.suppress(SwarmError):
                await state.call(state.store.tokens.revoke, run.token_id)
            state.forget_tokens()

    async def stop(self, plan_id: int) -> Run:
        """Stop the plan's run and answer once its runners and sandboxes are gone."""
        await self.state.call(self.state.store.get_plan, plan_id)  # 404 for no such plan
        run = self._going(plan_id)
        if run is None:
            raise Conflict(f"plan {plan_id} has no run going")
        run.stopping.set()
        if run.task is not None:
            await asyncio.shield(run.task)
        return run.info

    async def close(self) -> None:
        """Stop every run: the app is shutting down."""
        going = [r for r in self._runs if r.info.state == "running"]
        for run in going:
            run.stop_reason = SHUTDOWN
            run.stopping.set()
        await asyncio.gather(*(r.task for r in going if r.task is not None), return_exceptions=True)


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
