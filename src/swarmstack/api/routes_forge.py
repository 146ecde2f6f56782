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


class GitHubLink(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository: Text = Field(
        min_length=3, max_length=200, description="the GitHub repository, owner/name"
    )
    create: bool = Field(default=False, description="create it (private) when it is missing")


class GitHubLinked(BaseModel):
    plan_id: int
    repository: str
    url: str = Field(description="the repository's page on GitHub")
    branch: str = Field(description="the integration branch, on GitHub as in the forge")
    created: bool


@router.post(
    "/plans/{plan_id:int}/github",
    response_model=GitHubLinked,
    responses=error_responses(401, 403, 404, 409, 422, 503),
    tags=["forge"],
)
async def link_github(plan_id: IdPath, body: GitHubLink, ctx: AdminContext) -> GitHubLinked:
    """Publish the plan's work to a GitHub repository with the control plane's token (it never
    reaches a sandbox): one pull request per ticket, merged by the merge queue in DAG order.
    The repository is created when asked; the integration branch is pushed to it, or fetched
    from it when GitHub has it already. The plan needs its repository in the forge first."""
    from swarmstack.forge.mirror import GitHubMirror
    from swarmstack.forge.queue import integration_branch

    state = ctx.state
    plan = state.store.get_plan(plan_id)
    forge = LocalForge(state.settings.repos_dir)
    local = forge.require(plan_id)
    branch = await asyncio.to_thread(integration_branch, forge, plan)
    mirror = GitHubMirror(state.settings, state.store)
    info = await asyncio.to_thread(mirror.link, local, branch, body.repository, create=body.create)
    await state.call(state.store.set_github, plan_id, body.repository)
    return GitHubLinked(
        plan_id=plan_id,
        repository=info.full_name,
        url=info.html_url,
        branch=branch,
        created=info.created,
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
