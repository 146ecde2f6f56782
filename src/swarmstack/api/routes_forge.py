"""The local forge through the API: a plan's repository, and the tickets' pull requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from swarmstack.api.deps import AdminContext, IdPath, error_responses
from swarmstack.api.schemas import MAX_ID
from swarmstack.forge.local import LocalForge
from swarmstack.tickets.models import PullRequest, Text

router = APIRouter(prefix="/v1")


class RepoImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Text = Field(min_length=1, max_length=4096, description="a local git repository")


class Repo(BaseModel):
    plan_id: int
    path: str
    default_branch: str
    remote: str = Field(description="the broker's URL path for the plan's sandboxes")


@router.post(
    "/plans/{plan_id:int}/repo",
    status_code=201,
    response_model=Repo,
    responses=error_responses(403, 404, 409),
    tags=["forge"],
)
async def import_repo(plan_id: IdPath, body: RepoImport, ctx: AdminContext) -> Repo:
    """Give the plan its repository in the forge: a bare clone of ``source``. Its default
    branch is where the plan's work goes."""
    ctx.state.store.get_plan(plan_id)  # 404 for a plan that does not exist
    forge = LocalForge(ctx.state.settings.repos_dir)
    path = await asyncio.to_thread(forge.import_repo, plan_id, Path(body.source))
    branch = await asyncio.to_thread(forge.default_branch, plan_id)
    return Repo(
        plan_id=plan_id, path=str(path), default_branch=branch, remote=f"/git/plan-{plan_id}.git"
    )


@router.get(
    "/pulls", response_model=list[PullRequest], responses=error_responses(403), tags=["forge"]
)
async def list_pulls(
    ctx: AdminContext, plan_id: int | None = Query(default=None, ge=1, le=MAX_ID)
) -> list[PullRequest]:
    """Pull requests, oldest first; one per ticket whose branch reached the forge."""
    return ctx.state.store.pull_requests(plan_id)


@router.get(
    "/pulls/{ticket_id:int}",
    response_model=PullRequest,
    responses=error_responses(403, 404),
    tags=["forge"],
)
async def get_pull(ticket_id: IdPath, ctx: AdminContext) -> PullRequest:
    return ctx.state.store.pull_request(ticket_id)


@router.get(
    "/pulls/{ticket_id:int}/diff",
    responses={
        200: {"description": "the unified diff", "content": {"text/plain": {}}},
        **error_responses(403, 404),
    },
    tags=["forge"],
)
async def pull_diff(ticket_id: IdPath, ctx: AdminContext) -> PlainTextResponse:
    """The pull request's unified diff: what its head changed since it left its base."""
    pull = ctx.state.store.pull_request(ticket_id)
    forge = LocalForge(ctx.state.settings.repos_dir)
    text = await asyncio.to_thread(forge.diff, pull.plan_id, pull.base_sha, pull.head_sha)
    return PlainTextResponse(text)
