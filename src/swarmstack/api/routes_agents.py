"""The agent lease protocol: claim (long-poll), heartbeat, complete, fail.

These are the hot routes — every ticket passes through each — so they are registered first
(routing tries routes in order), take one dependency, and answer with bytes pydantic made.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from swarmstack.api.deps import Context, IdPath, error_responses
from swarmstack.api.schemas import (
    ClaimRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HeartbeatResponse,
)
from swarmstack.api.state import require_claimer, require_ticket_access
from swarmstack.auth import Principal, TokenKind
from swarmstack.errors import StaleLease
from swarmstack.tickets.models import Lease, Ticket

router = APIRouter(prefix="/v1", tags=["agents"])


# -- the lease protocol --------------------------------------------------------------------


@router.post(
    "/claims",
    response_model=Lease,
    responses={204: {"description": "nothing ready within wait_s"}, **error_responses(403)},
    tags=["agents"],
)
async def claim(body: ClaimRequest, request: Request, ctx: Context) -> Any:
    """Lease the best ready ticket: highest upward rank, then priority, then id. With
    ``wait_s`` the request long-polls and returns the moment a ticket becomes ready."""
    state = ctx.state
    require_claimer(ctx.caller)
    started = time.monotonic()
    wait = min(body.wait_s, state.settings.claim_wait_max_s)
    lease = state.store.claim(body.agent, plan_id=body.plan_id, ttl_s=body.ttl_s)
    deadline = started + wait
    while lease is None and (remaining := deadline - time.monotonic()) > 0:
        # Registered before we sleep and right after a claim found nothing, with no await in
        # between, so a wake-up for a ticket that became ready in that gap cannot be missed.
        woken = state.waker.register()
        try:
            # A bounded nap also covers a wake-up lost with a dropped LISTEN connection.
            await asyncio.wait_for(woken, timeout=min(remaining, 2.0))
        except TimeoutError:
            pass
        finally:
            state.waker.unregister(woken)
        if await request.is_disconnected():
            break
        lease = state.store.claim(body.agent, plan_id=body.plan_id, ttl_s=body.ttl_s)
    state.metrics.claim_wait.observe(time.monotonic() - started)
    state.metrics.claims.labels("claimed" if lease else "empty").inc()
    if lease is None:
        return Response(status_code=204)
    return _json(lease)


def _json(model: BaseModel) -> Response:
    """The hot agent routes answer with bytes pydantic already made (the route's
    response_model still documents the shape in OpenAPI)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _check_epoch(caller: Principal, ticket_id: int, epoch: int) -> None:
    require_ticket_access(caller, ticket_id)
    if caller.kind is TokenKind.LEASE and caller.epoch != epoch:
        raise StaleLease(
            f"the body names epoch {epoch} but this lease token is for epoch {caller.epoch}"
        )


@router.post(
    "/tickets/{ticket_id:int}/heartbeat",
    response_model=HeartbeatResponse,
    responses=error_responses(403, 404, 409),
    tags=["agents"],
)
async def heartbeat(ticket_id: IdPath, body: HeartbeatRequest, ctx: Context) -> Response:
    """Extend a live lease. 409 if the lease is stale or expired: stop working on it."""
    state = ctx.state
    _check_epoch(ctx.caller, ticket_id, body.epoch)
    expires = state.store.heartbeat(ticket_id, body.epoch, ttl_s=body.ttl_s)
    return _json(HeartbeatResponse(ticket_id=ticket_id, epoch=body.epoch, expires_at=expires))


@router.post(
    "/tickets/{ticket_id:int}/complete",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["agents"],
)
async def complete(ticket_id: IdPath, body: CompleteRequest, ctx: Context) -> Response:
    """Finish the ticket. Repeating the same completion returns the same answer."""
    state = ctx.state
    _check_epoch(ctx.caller, ticket_id, body.epoch)
    try:
        ticket = state.store.complete(ticket_id, body.epoch, body.result)
    except StaleLease:
        state.metrics.lease_writes.labels("complete", "stale").inc()
        raise
    state.metrics.lease_writes.labels("complete", "ok").inc()
    return _json(ticket)


@router.post(
    "/tickets/{ticket_id:int}/fail",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["agents"],
)
async def fail(ticket_id: IdPath, body: FailRequest, ctx: Context) -> Response:
    """Give the ticket up: it is retried after a backoff, or dead when out of attempts or
    when ``retryable`` is false."""
    state = ctx.state
    _check_epoch(ctx.caller, ticket_id, body.epoch)
    ticket = state.store.fail(ticket_id, body.epoch, body.reason, retryable=body.retryable)
    state.metrics.lease_writes.labels("fail", "ok").inc()
    return _json(ticket)
