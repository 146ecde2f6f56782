"""Designs the control plane runs: one asyncio task per plan in status ``designing``.

``POST /v1/plans`` with a design request stores the plan as ``designing`` and starts the task;
the task writes every step as a ``design.*`` event and ends the plan as a ``draft`` or as
``failed`` with the reason. A task stopped by shutdown fails its plan on the way out (and a
restart fails any plan still ``designing``), so no plan waits forever for a dead task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from swarmstack.api.state import AppState
from swarmstack.design.request import DesignRequest, run_design
from swarmstack.errors import SwarmError
from swarmstack.tickets.models import Plan

log = logging.getLogger(__name__)

STOPPED = "the control plane stopped while the plan was being designed"
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def title_of(spec: str) -> str:
    """A title until the model gives one: the spec's first heading, else its first line."""
    found = _HEADING.search(spec)
    line = found.group(1) if found else next((s for s in spec.splitlines() if s.strip()), "")
    return line.strip()[:200] or "design"


class Designs:
    """The running design tasks of one app."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.tasks: dict[int, asyncio.Task[None]] = {}

    async def start(self, request: DesignRequest) -> Plan:
        store = self.state.store
        recorded = request.model_dump(mode="json", exclude={"repo_summary"})
        plan = await self.state.call(
            store.begin_design, request.title or title_of(request.spec), recorded
        )
        task = asyncio.create_task(self._run(plan.id, request), name=f"design-{plan.id}")
        self.tasks[plan.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(plan.id, None))
        return plan

    async def _run(self, plan_id: int, request: DesignRequest) -> None:
        state, store = self.state, self.state.store

        async def emit(kind: str, data: dict[str, Any]) -> None:
            await state.call(store.design_event, plan_id, kind, data)

        try:
            result = await run_design(request, state.settings, emit=emit)
            await state.call(store.finish_design, plan_id, result.plan, result.summary())
        except asyncio.CancelledError:
            with contextlib.suppress(SwarmError):
                await state.call(store.fail_design, plan_id, STOPPED)
            raise
        except SwarmError as exc:
            await self._fail(plan_id, exc.message)
        except Exception as exc:  # a bug must still end the plan, not leave it designing
            log.exception("the design of plan %s failed", plan_id)
            await self._fail(plan_id, f"internal error: {type(exc).__name__}: {exc}")

    async def _fail(self, plan_id: int, reason: str) -> None:
        try:
            await self.state.call(self.state.store.fail_design, plan_id, reason)
        except SwarmError as exc:
            log.warning("plan %s: cannot record its failed design: %s", plan_id, exc.message)

    async def close(self) -> None:
        """Stop every running design; each fails its plan on the way out."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def designs(state: AppState) -> Designs:
    """The app's design tasks, made on first use."""
    if state.designs is None:
        state.designs = Designs(state)
    return state.designs  # type: ignore[no-any-return]
