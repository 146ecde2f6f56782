"""Runs: agent pools the control plane starts for a plan (see :mod:`.runs`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from swarmstack.api.deps import AdminContext, IdPath, error_responses, own_url
from swarmstack.api.runs import runs
from swarmstack.api.schemas import MAX_ID, RunRequest
from swarmstack.runstore import Run

router = APIRouter(prefix="/v1")


@router.post(
    "/plans/{plan_id:int}/run",
    status_code=201,
    response_model=Run,
    responses=error_responses(403, 404, 409),
    tags=["runs"],
)
async def start_run(
    plan_id: IdPath, ctx: AdminContext, request: Request, body: RunRequest | None = None
) -> Run:
    """Start agents on an approved plan, here: ``agents`` slots, each a runner in a sandbox of
    its own (the pool ``swarm run`` starts), working the plan's tickets until none can move
    without a person. 409 for a draft (approve it first), a plan being designed or whose design
    failed, or one with a run going; 422 for more agents than ``SWARM_MAX_RUN_AGENTS``; 400 when
    the backend cannot run here."""
    return await runs(ctx.state).start(plan_id, body or RunRequest(), own_url(request.scope))


@router.get("/runs", response_model=list[Run], responses=error_responses(403), tags=["runs"])
async def list_runs(
    ctx: AdminContext, plan_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> list[Run]:
    """Every run (of one plan), oldest first, whichever replica started or holds it."""
    return await runs(ctx.state).find(plan_id)


@router.delete(
    "/plans/{plan_id:int}/run",
    response_model=Run,
    responses=error_responses(403, 404, 409),
    tags=["runs"],
)
async def stop_run(plan_id: IdPath, ctx: AdminContext) -> Run:
    """Stop the plan's run and answer once it has stopped: each runner releases its lease (the
    ticket is ready again, the attempt not counted) and each sandbox is destroyed. 409 when no
    run is going."""
    return await runs(ctx.state).stop(plan_id)
