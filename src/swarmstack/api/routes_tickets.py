"""Plans, tickets and the agent lease protocol. Each route: parse, authorize, call, return."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Discriminator, Tag

from swarmstack.api.deps import Context, IdPath, error_responses
from swarmstack.api.designs import designs
from swarmstack.api.schemas import (
    MAX_ID,
    CancelRequest,
    StopRequest,
    TicketPage,
)
from swarmstack.api.state import (
    require_admin,
    require_ticket_access,
)
from swarmstack.design.request import DesignRequest
from swarmstack.tickets import graph
from swarmstack.tickets.models import (
    AgentStatus,
    Attempt,
    Phase,
    Plan,
    PlanSpec,
    Ticket,
    TicketState,
    UsageReport,
    ValidationReport,
    WavesReport,
)

router = APIRouter(prefix="/v1")


# -- plans ---------------------------------------------------------------------------------


def _body_kind(value: Any) -> str:
    """A body with ``spec`` and no ``tickets`` asks for a design; anything else is a plan
    file, and is judged as one (so its errors name a plan file's fields)."""
    if isinstance(value, dict):
        return "design" if "spec" in value and "tickets" not in value else "plan"
    return "design" if isinstance(value, DesignRequest) else "plan"


PlanOrDesign = Annotated[
    Annotated[PlanSpec, Tag("plan")] | Annotated[DesignRequest, Tag("design")],
    Discriminator(_body_kind),
]


@router.post(
    "/plans",
    status_code=201,
    response_model=Plan,
    responses={
        202: {"model": Plan, "description": "A design request: the plan, being designed."},
        **error_responses(403, 413),
    },
    tags=["plans"],
)
async def create_plan(
    body: PlanOrDesign,
    ctx: Context,
    response: Response,
    max_attempts: Annotated[
        int | None, Query(ge=1, le=100, description="attempts before a ticket is dead")
    ] = None,
    draft: Annotated[
        bool,
        Query(
            description="store the plan file only, as a draft: its tickets are made when it "
            "is approved (and max_attempts is given then)"
        ),
    ] = False,
) -> Plan:
    """Store a plan file, or start the design agent on a spec.

    A plan file's tickets with no dependencies are ready at once; with ``draft`` it is stored
    without tickets, to be read, edited and approved first. An invalid plan is refused with
    422 and the full validation report in ``details``.

    A design request (``spec``, and ``repo`` or ``repo_summary``) answers 202 with the plan
    in status ``designing``; it becomes a ``draft`` (or ``failed``, with ``error``), and each
    step is a ``design.*`` event of the plan."""
    require_admin(ctx.caller)
    if isinstance(body, DesignRequest):
        response.status_code = 202
        return await designs(ctx.state).start(body)
    return ctx.state.store.create_plan(body, max_attempts=max_attempts, draft=draft)


@router.post(
    "/plans/validate",
    response_model=ValidationReport,
    responses=error_responses(413),
    tags=["plans"],
)
async def validate_plan(
    spec: PlanSpec,
    ctx: Context,
    strict: Annotated[bool, Query(description="file conflicts are errors")] = False,
) -> ValidationReport:
    """Check a plan without storing it: every problem at once."""
    require_admin(ctx.caller)
    return graph.validate(spec, strict=strict)


@router.get("/plans", response_model=list[Plan], responses=error_responses(403), tags=["plans"])
async def list_plans(ctx: Context) -> list[Plan]:
    require_admin(ctx.caller)
    return ctx.state.store.list_plans()


@router.get(
    "/plans/{plan_id:int}", response_model=Plan, responses=error_responses(403, 404), tags=["plans"]
)
async def get_plan(plan_id: IdPath, ctx: Context) -> Plan:
    require_admin(ctx.caller)
    return ctx.state.store.get_plan(plan_id)


@router.get(
    "/plans/{plan_id:int}/waves",
    response_model=WavesReport,
    responses=error_responses(403, 404, 409),
    tags=["plans"],
)
async def plan_waves(plan_id: IdPath, ctx: Context) -> WavesReport:
    """Topological generations of the plan, and its critical path; 409 while a design agent
    writes it, or when its design failed."""
    require_admin(ctx.caller)
    return ctx.state.store.waves(plan_id)


@router.get(
    "/plans/{plan_id:int}/spec",
    response_model=PlanSpec,
    responses=error_responses(403, 404, 409),
    tags=["plans"],
)
async def get_plan_spec(plan_id: IdPath, ctx: Context) -> PlanSpec:
    """The plan file of a draft or an active plan, to read or edit (409 while it is being
    designed or when its design failed: it has none)."""
    require_admin(ctx.caller)
    return ctx.state.store.plan_spec(plan_id)


@router.put(
    "/plans/{plan_id:int}/spec",
    response_model=Plan,
    responses=error_responses(403, 404, 409, 413),
    tags=["plans"],
)
async def replace_plan_spec(plan_id: IdPath, spec: PlanSpec, ctx: Context) -> Plan:
    """Replace a draft's plan file with an edited one. 409 unless the plan is a draft; an
    invalid plan is refused with 422 and the full validation report, and the draft is kept."""
    require_admin(ctx.caller)
    return ctx.state.store.replace_draft(plan_id, spec)


@router.post(
    "/plans/{plan_id:int}/approve",
    response_model=Plan,
    responses=error_responses(403, 404, 409),
    tags=["plans"],
)
async def approve_plan(
    plan_id: IdPath,
    ctx: Context,
    max_attempts: Annotated[
        int | None, Query(ge=1, le=100, description="attempts before a ticket is dead")
    ] = None,
) -> Plan:
    """Approve a draft: its tickets are made, those with no dependencies ready at once. 409
    unless the plan is a draft (approving twice is refused)."""
    require_admin(ctx.caller)
    return ctx.state.store.approve(plan_id, max_attempts=max_attempts)


@router.post(
    "/plans/{plan_id:int}/pause",
    response_model=Plan,
    responses=error_responses(403, 404),
    tags=["plans"],
)
async def pause_plan(plan_id: IdPath, ctx: Context) -> Plan:
    """Pause a plan's run: no ticket of it is handed out until it is resumed. Agents at work
    finish their tickets and the merge queue goes on merging. Pausing twice changes nothing."""
    require_admin(ctx.caller)
    return await ctx.state.call(ctx.state.store.pause_plan, plan_id)


@router.post(
    "/plans/{plan_id:int}/resume",
    response_model=Plan,
    responses=error_responses(403, 404),
    tags=["plans"],
)
async def resume_plan(plan_id: IdPath, ctx: Context) -> Plan:
    """Resume a paused plan: its ready tickets are handed out again at once."""
    require_admin(ctx.caller)
    return await ctx.state.call(ctx.state.store.resume_plan, plan_id)


# -- tickets -------------------------------------------------------------------------------


@router.get("/tickets", response_model=TicketPage, responses=error_responses(403), tags=["tickets"])
async def list_tickets(
    ctx: Context,
    plan_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ticket_state: Annotated[list[TicketState] | None, Query(alias="state")] = None,
    phase: Phase | None = None,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> TicketPage:
    """Tickets in id order, filtered by plan, state (repeatable) and phase."""
    require_admin(ctx.caller)
    tickets = ctx.state.store.list_tickets(
        plan_id=plan_id, states=ticket_state or (), phase=phase, after_id=after_id, limit=limit
    )
    next_after = tickets[-1].id if len(tickets) == limit else None
    return TicketPage(tickets=tickets, next_after_id=next_after)


@router.get(
    "/tickets/{ticket_id:int}",
    response_model=Ticket,
    responses=error_responses(403, 404),
    tags=["tickets"],
)
async def get_ticket(ticket_id: IdPath, ctx: Context) -> Ticket:
    require_ticket_access(ctx.caller, ticket_id)
    return ctx.state.store.get_ticket(ticket_id)


@router.get(
    "/tickets/{ticket_id:int}/attempts",
    response_model=list[Attempt],
    responses=error_responses(403, 404),
    tags=["tickets"],
)
async def ticket_attempts(ticket_id: IdPath, ctx: Context) -> list[Attempt]:
    """The ticket's attempts: the agent, when it claimed and ended, the outcome, the error."""
    require_ticket_access(ctx.caller, ticket_id)
    return await ctx.state.call(ctx.state.store.attempts, ticket_id)


@router.post(
    "/tickets/{ticket_id:int}/cancel",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["tickets"],
)
async def cancel_ticket(
    ticket_id: IdPath, ctx: Context, body: CancelRequest | None = None
) -> Ticket:
    """Cancel a ticket that is not done. Cancelling twice is not an error."""
    require_admin(ctx.caller)
    return ctx.state.store.cancel(ticket_id, (body or CancelRequest()).reason)


@router.post(
    "/tickets/{ticket_id:int}/stop",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["tickets"],
)
async def stop_ticket(ticket_id: IdPath, ctx: Context, body: StopRequest | None = None) -> Ticket:
    """Stop the agent at work on a ticket: its lease ends now, so its runner's next heartbeat
    is refused and it stops, and its host replaces the sandbox. The ticket is ready for another
    agent; the attempt does not count. 409 if no agent is at work on it."""
    require_admin(ctx.caller)
    reason = (body or StopRequest()).reason
    return await ctx.state.call(ctx.state.store.stop, ticket_id, reason)


@router.get(
    "/agents",
    response_model=list[AgentStatus],
    responses=error_responses(403),
    tags=["tickets"],
)
async def list_agents(
    ctx: Context, plan_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> list[AgentStatus]:
    """The agents at work (each a live lease), with their sandboxes as last reported and
    whether they look stuck (``stale``)."""
    require_admin(ctx.caller)
    return await ctx.state.call(ctx.state.store.agents, plan_id)


@router.post(
    "/tickets/{ticket_id:int}/retry",
    response_model=Ticket,
    responses=error_responses(403, 404, 409),
    tags=["tickets"],
)
async def retry_ticket(ticket_id: IdPath, ctx: Context) -> Ticket:
    """Give a failed, dead or cancelled ticket a fresh set of attempts, now."""
    require_admin(ctx.caller)
    return ctx.state.store.retry(ticket_id)


# -- model usage ---------------------------------------------------------------------------


@router.get("/usage", response_model=UsageReport, responses=error_responses(403), tags=["usage"])
async def usage(
    ctx: Context,
    plan_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ticket_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> UsageReport:
    """Tokens and dollars spent on model calls through the LLM gateway: everything, a plan's or
    a ticket's (a lease token may ask for its own ticket's)."""
    if ticket_id is None or plan_id is not None:
        require_admin(ctx.caller)
    else:
        require_ticket_access(ctx.caller, ticket_id)
    return ctx.state.store.usage(plan_id=plan_id, ticket_id=ticket_id)
