"""The agent lease protocol: claim (long-poll), heartbeat, complete, fail.

These are the hot routes — every ticket passes through each — so they are registered first
(routing tries routes in order) and are lean routes (see :mod:`swarmstack.api.lean`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from swarmstack.api import lean
from swarmstack.api.deps import error_responses
from swarmstack.api.schemas import (
    MAX_ID,
    ClaimRequest,
    CompleteRequest,
    DependencyInfo,
    FailRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    LogRequest,
    LogResponse,
    ReleaseRequest,
    TicketContext,
)
from swarmstack.api.state import AppState, require_claimer, require_ticket_access
from swarmstack.api.workers import Priority
from swarmstack.auth import Principal, TokenKind
from swarmstack.errors import NotFound, StaleLease
from swarmstack.tickets.models import Lease, Plan, Ticket

router = APIRouter(prefix="/v1", tags=["agents"])
_TICKET = {"ticket_id": MAX_ID}


@router.post(
    "/claims",
    response_model=Lease,
    responses={204: {"description": "nothing ready within wait_s"}, **error_responses(403)},
    openapi_extra=lean.documented(ClaimRequest),
)
async def claim(request: Request) -> Response:
    """Lease the best ready ticket: highest upward rank, then priority, then id. With
    ``wait_s`` the request long-polls and returns the moment a ticket becomes ready."""
    state, caller = await lean.caller(request, Priority.CLAIM)
    body = await lean.body(request, ClaimRequest)
    require_claimer(caller)
    started = time.monotonic()
    deadline = started + min(body.wait_s, state.settings.claim_wait_max_s)
    lease = None
    while True:
        # Registered before the claim runs (it may run in a worker thread while wake-ups
        # arrive), so a ticket that becomes ready meanwhile cannot go unnoticed.
        woken = state.waker.register()
        try:
            lease = await state.call(
                state.store.claim,
                body.agent,
                plan_id=body.plan_id,
                ttl_s=body.ttl_s,
                priority=Priority.CLAIM,
            )
            remaining = deadline - time.monotonic()
            if lease is not None or remaining <= 0 or state.draining:
                break
            # A bounded nap also covers a wake-up lost with a dropped LISTEN connection.
            # asyncio.timeout, not wait_for: awaiting the future itself resumes this request
            # in one trip through a busy event loop's queue instead of two. No disconnect
            # check after it either, for the same reason: a lease handed to an agent that
            # left simply expires.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 2.0)):
                    await woken
        finally:
            # A wake-up this request did not need (it got a lease anyway) goes to the next.
            state.waker.unregister(woken, pass_on=lease is not None)
    state.metrics.claim_wait.observe(time.monotonic() - started)
    state.metrics.claims.labels("claimed" if lease else "empty").inc()
    if lease is None:
        return Response(status_code=204)
    state.remember_lease(lease, body.agent)
    return _json(lease)


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


async def _ticket_caller(request: Request) -> tuple[AppState, Principal, int]:
    """The app state, the caller and the path's ticket id, once the caller may reach it."""
    state, caller = await lean.caller(request)
    ticket_id: int = request.path_params["ticket_id"]
    if ticket_id < 1 or ticket_id > MAX_ID:
        raise NotFound(f"no ticket {ticket_id}")
    require_ticket_access(caller, ticket_id)
    return state, caller, ticket_id


async def _lease_write(request: Request, epoch: int) -> tuple[AppState, int]:
    """The app state and the ticket id, once the caller may write under this epoch."""
    state, caller, ticket_id = await _ticket_caller(request)
    if caller.kind is TokenKind.LEASE and caller.epoch != epoch:
        raise StaleLease(
            f"the body names epoch {epoch} but this lease token is for epoch {caller.epoch}"
        )
    return state, ticket_id


@router.post(
    "/tickets/{ticket_id:int}/heartbeat",
    response_model=HeartbeatResponse,
    responses=error_responses(403, 404, 409),
    openapi_extra=lean.documented(HeartbeatRequest, path_params=_TICKET),
)
async def heartbeat(request: Request) -> Response:
    """Extend a live lease. 409 if the lease is stale or expired: stop working on it."""
    body = await lean.body(request, HeartbeatRequest)
    state, ticket_id = await _lease_write(request, body.epoch)
    expires = await state.call(
        state.store.heartbeat, ticket_id, body.epoch, ttl_s=body.ttl_s, sandbox=body.sandbox
    )
    return _json(HeartbeatResponse(ticket_id=ticket_id, epoch=body.epoch, expires_at=expires))


@router.post(
    "/tickets/{ticket_id:int}/complete",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    openapi_extra=lean.documented(CompleteRequest, path_params=_TICKET),
)
async def complete(request: Request) -> Response:
    """Finish the ticket. Repeating the same completion returns the same answer."""
    body = await lean.body(request, CompleteRequest)
    state, ticket_id = await _lease_write(request, body.epoch)
    merge = bool(body.result.branch) and await _branch_arrived(state, ticket_id)
    try:
        ticket = await state.call(
            state.store.complete, ticket_id, body.epoch, body.result, merge=merge
        )
    except StaleLease:
        state.metrics.lease_writes.labels("complete", "stale").inc()
        raise
    state.metrics.lease_writes.labels("complete", "ok").inc()
    if body.result.branch:
        await _open_pull_request(state, ticket)
    if merge:
        state.merge_queue.wake()
    return _json(ticket)


async def _branch_arrived(state: AppState, ticket_id: int) -> bool:
    """Whether a completion goes through the merge queue: there is one, the ticket's plan has
    a repository in the forge and the ticket's branch is in it."""
    from swarmstack.forge.local import LocalForge, ticket_branch

    if state.merge_queue is None:
        return False
    ticket = await state.call(state.store.get_ticket, ticket_id)
    forge = LocalForge(state.settings.repos_dir)
    if not forge.has_repo(ticket.plan_id):
        return False
    try:
        await asyncio.to_thread(forge.sha, ticket.plan_id, ticket_branch(ticket_id))
    except NotFound:
        return False
    return True


@router.post(
    "/tickets/{ticket_id:int}/fail",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    openapi_extra=lean.documented(FailRequest, path_params=_TICKET),
)
async def fail(request: Request) -> Response:
    """Give the ticket up: it is retried after a backoff, or dead when out of attempts or
    when ``retryable`` is false."""
    body = await lean.body(request, FailRequest)
    state, ticket_id = await _lease_write(request, body.epoch)
    ticket = await state.call(
        state.store.fail, ticket_id, body.epoch, body.reason, retryable=body.retryable
    )
    state.metrics.lease_writes.labels("fail", "ok").inc()
    return _json(ticket)


@router.post(
    "/tickets/{ticket_id:int}/release",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    openapi_extra=lean.documented(ReleaseRequest, path_params=_TICKET),
)
async def release(request: Request) -> Response:
    """Hand the lease back unfinished: the ticket is ready again at once, and the attempt is
    not counted (an agent that was told to stop, not one that failed)."""
    body = await lean.body(request, ReleaseRequest)
    state, ticket_id = await _lease_write(request, body.epoch)
    ticket = await state.call(state.store.release, ticket_id, body.epoch, body.reason)
    state.metrics.lease_writes.labels("release", "ok").inc()
    return _json(ticket)


@router.post(
    "/tickets/{ticket_id:int}/log",
    response_model=LogResponse,
    responses=error_responses(403, 404, 409, 413),
    openapi_extra=lean.documented(LogRequest, path_params=_TICKET),
)
async def agent_log(request: Request) -> Response:
    """Append to the ticket's log what its agent said and did (``agent.message``,
    ``agent.tool_call``, ``agent.tool_result``, ``agent.output``, ``agent.status``,
    ``agent.error`` events) while its lease is live."""
    body = await lean.body(request, LogRequest)
    state, ticket_id = await _lease_write(request, body.epoch)
    entries = [(e.kind, e.data) for e in body.entries]
    appended = await state.call(state.store.agent_log, ticket_id, body.epoch, entries)
    return _json(LogResponse(appended=appended))


@router.get(
    "/tickets/{ticket_id:int}/context",
    response_model=TicketContext,
    responses=error_responses(403, 404),
    openapi_extra=lean.documented(path_params=_TICKET),
)
async def context(request: Request) -> Response:
    """The ticket with its plan's title and description and what the tickets it depends on
    reported: what an agent needs to start."""
    from swarmstack.forge.local import LocalForge

    state, _caller, ticket_id = await _ticket_caller(request)
    ticket = await state.call(state.store.get_ticket, ticket_id)
    plan = await state.call(state.store.get_plan, ticket.plan_id)
    deps = await state.call(state.store.dependencies, ticket_id)
    infos = [
        DependencyInfo(
            key=d.key,
            title=d.title,
            state=d.state.value,
            summary=d.result.summary if d.result else "",
        )
        for d in deps
    ]
    repository = LocalForge(state.settings.repos_dir).has_repo(ticket.plan_id)
    base = await _integration_branch(state, plan) if repository else None
    return _json(
        TicketContext(
            ticket=ticket,
            plan_title=plan.title,
            plan_description=plan.description,
            dependencies=infos,
            repository=repository,
            base=base,
        )
    )


async def _integration_branch(state: AppState, plan: Plan) -> str:
    """Where the plan's work goes: made from the default branch when the plan names a branch
    the repository does not have yet."""
    from swarmstack.forge.local import LocalForge
    from swarmstack.forge.queue import integration_branch

    forge = LocalForge(state.settings.repos_dir)
    return await asyncio.to_thread(integration_branch, forge, plan)


async def _open_pull_request(state: AppState, ticket: Ticket) -> None:
    """The ticket reported a branch: open its pull request from what the forge holds. A
    plan without a repository in the forge has no pull requests here; a branch that never
    arrived gets a ``pr.missing`` event instead. The completion stands either way."""
    from swarmstack.forge.hostgit import GitFailed
    from swarmstack.forge.local import LocalForge, ticket_branch

    forge = LocalForge(state.settings.repos_dir)
    if not forge.has_repo(ticket.plan_id):
        return
    plan = await state.call(state.store.get_plan, ticket.plan_id)
    head = ticket_branch(ticket.id)
    try:  # git runs in a thread; the store is called the way every route calls it
        base = await _integration_branch(state, plan)
        stats = await asyncio.to_thread(forge.stats, ticket.plan_id, head, base)
    except (NotFound, GitFailed) as exc:
        await state.call(state.store.note, "pr.missing", ticket, {"reason": exc.message})
        return
    await state.call(state.store.record_pull_request, ticket.id, stats)
