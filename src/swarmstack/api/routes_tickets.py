"""Plans, tickets and the agent lease protocol. Each route: parse, authorize, call, return."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from swarmstack.api.deps import Caller, IdPath, State, error_responses
from swarmstack.api.schemas import (
    MAX_ID,
    CancelRequest,
    ClaimRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    TicketPage,
)
from swarmstack.api.state import (
    require_admin,
    require_claimer,
    require_ticket_access,
)
from swarmstack.auth import Principal, TokenKind
from swarmstack.errors import StaleLease
from swarmstack.tickets import graph
from swarmstack.tickets.models import (
    Lease,
    Plan,
    PlanSpec,
    Ticket,
    TicketState,
    ValidationReport,
    WavesReport,
)

router = APIRouter(prefix="/v1")


# -- plans ---------------------------------------------------------------------------------


@router.post(
    "/plans",
    status_code=201,
    response_model=Plan,
    responses=error_responses(403, 413),
    tags=["plans"],
)
async def create_plan(
    spec: PlanSpec,
    state: State,
    caller: Caller,
    max_attempts: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> Plan:
    """Store a plan; its tickets with no dependencies are ready at once. An invalid plan is
    refused with 422 and the full validation report in ``details``."""
    require_admin(caller)
    return state.store.create_plan(spec, max_attempts=max_attempts)


@router.post(
    "/plans/validate",
    response_model=ValidationReport,
    responses=error_responses(413),
    tags=["plans"],
)
async def validate_plan(
    spec: PlanSpec,
    caller: Caller,
    strict: Annotated[bool, Query(description="file conflicts are errors")] = False,
) -> ValidationReport:
    """Check a plan without storing it: every problem at once."""
    return graph.validate(spec, strict=strict)


@router.get("/plans", response_model=list[Plan], responses=error_responses(403), tags=["plans"])
async def list_plans(state: State, caller: Caller) -> list[Plan]:
    require_admin(caller)
    return state.store.list_plans()


@router.get(
    "/plans/{plan_id}", response_model=Plan, responses=error_responses(403, 404), tags=["plans"]
)
async def get_plan(plan_id: IdPath, state: State, caller: Caller) -> Plan:
    require_admin(caller)
    return state.store.get_plan(plan_id)


@router.get(
    "/plans/{plan_id}/waves",
    response_model=WavesReport,
    responses=error_responses(403, 404),
    tags=["plans"],
)
async def plan_waves(plan_id: IdPath, state: State, caller: Caller) -> WavesReport:
    """Topological generations of the plan, and its critical path."""
    require_admin(caller)
    return state.store.waves(plan_id)


# -- tickets -------------------------------------------------------------------------------


@router.get("/tickets", response_model=TicketPage, responses=error_responses(403), tags=["tickets"])
async def list_tickets(
    state: State,
    caller: Caller,
    plan_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ticket_state: Annotated[list[TicketState] | None, Query(alias="state")] = None,
    phase: Annotated[str | None, Query(max_length=50)] = None,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> TicketPage:
    """Tickets in id order, filtered by plan, state (repeatable) and phase."""
    require_admin(caller)
    tickets = state.store.list_tickets(
        plan_id=plan_id, states=ticket_state or (), phase=phase, after_id=after_id, limit=limit
    )
    next_after = tickets[-1].id if len(tickets) == limit else None
    return TicketPage(tickets=tickets, next_after_id=next_after)


@router.get(
    "/tickets/{ticket_id}",
    response_model=Ticket,
    responses=error_responses(403, 404),
    tags=["tickets"],
)
async def get_ticket(ticket_id: IdPath, state: State, caller: Caller) -> Ticket:
    require_ticket_access(caller, ticket_id)
    return state.store.get_ticket(ticket_id)


@router.post(
    "/tickets/{ticket_id}/cancel",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["tickets"],
)
async def cancel_ticket(
    ticket_id: IdPath, state: State, caller: Caller, body: CancelRequest | None = None
) -> Ticket:
    """Cancel a ticket that is not done. Cancelling twice is not an error."""
    require_admin(caller)
    return state.store.cancel(ticket_id, (body or CancelRequest()).reason)


@router.post(
    "/tickets/{ticket_id}/retry",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["tickets"],
)
async def retry_ticket(ticket_id: IdPath, state: State, caller: Caller) -> Ticket:
    """Give a failed, dead or cancelled ticket a fresh set of attempts, now."""
    require_admin(caller)
    return state.store.retry(ticket_id)


# -- the lease protocol --------------------------------------------------------------------


@router.post(
    "/claims",
    response_model=Lease,
    responses={204: {"description": "nothing ready within wait_s"}, **error_responses(403)},
    tags=["agents"],
)
async def claim(body: ClaimRequest, request: Request, state: State, caller: Caller) -> Any:
    """Lease the best ready ticket: highest upward rank, then priority, then id. With
    ``wait_s`` the request long-polls and returns the moment a ticket becomes ready."""
    require_claimer(caller)
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
    return lease


def _check_epoch(caller: Principal, ticket_id: int, epoch: int) -> None:
    require_ticket_access(caller, ticket_id)
    if caller.kind is TokenKind.LEASE and caller.epoch != epoch:
        raise StaleLease(
            f"the body names epoch {epoch} but this lease token is for epoch {caller.epoch}"
        )


@router.post(
    "/tickets/{ticket_id}/heartbeat",
    response_model=HeartbeatResponse,
    responses=error_responses(403, 404, 409),
    tags=["agents"],
)
async def heartbeat(
    ticket_id: IdPath, body: HeartbeatRequest, state: State, caller: Caller
) -> HeartbeatResponse:
    """Extend a live lease. 409 if the lease is stale or expired: stop working on it."""
    _check_epoch(caller, ticket_id, body.epoch)
    expires = state.store.heartbeat(ticket_id, body.epoch, ttl_s=body.ttl_s)
    return HeartbeatResponse(ticket_id=ticket_id, epoch=body.epoch, expires_at=expires)


@router.post(
    "/tickets/{ticket_id}/complete",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["agents"],
)
async def complete(
    ticket_id: IdPath, body: CompleteRequest, state: State, caller: Caller
) -> Ticket:
    """Finish the ticket. Repeating the same completion returns the same answer."""
    _check_epoch(caller, ticket_id, body.epoch)
    try:
        ticket = state.store.complete(ticket_id, body.epoch, body.result)
    except StaleLease:
        state.metrics.lease_writes.labels("complete", "stale").inc()
        raise
    state.metrics.lease_writes.labels("complete", "ok").inc()
    return ticket


@router.post(
    "/tickets/{ticket_id}/fail",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["agents"],
)
async def fail(ticket_id: IdPath, body: FailRequest, state: State, caller: Caller) -> Ticket:
    """Give the ticket up: it is retried after a backoff, or dead when out of attempts or
    when ``retryable`` is false."""
    _check_epoch(caller, ticket_id, body.epoch)
    ticket = state.store.fail(ticket_id, body.epoch, body.reason, retryable=body.retryable)
    state.metrics.lease_writes.labels("fail", "ok").inc()
    return ticket
