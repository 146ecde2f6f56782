"""What the tools answer: plans, tickets and a run's status as small JSON objects for a model.

Each view is read through the typed client, so it shows what the caller's token may read and
nothing else; the ids in it (plan, ticket) are the ones the other tools take.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

import yaml

from swarmstack.client import SwarmClient
from swarmstack.design.progress import describe
from swarmstack.errors import NotFound
from swarmstack.run import settled
from swarmstack.tickets.design import coverage
from swarmstack.tickets.log import log_line
from swarmstack.tickets.models import Plan, PlanSpec, Ticket, TicketState
from swarmstack.tickets.store import fix_reason

ERROR_CHARS = 600  # a ticket's last error, in lists
SHOWN = 25  # items of a list in the status at most (what needs attention, agents at work)


def plan_row(plan: Plan) -> dict[str, Any]:
    """A plan in a list: what it is and how far it got."""
    row: dict[str, Any] = {
        "plan_id": plan.id,
        "title": plan.title,
        "status": plan.status,
        "ticket_count": plan.ticket_count,
        "by_state": plan.counts,
        "paused": plan.paused,
        "spent_usd": round(plan.spent_usd, 4),
        "budget_usd": plan.budget_usd,
    }
    if plan.error:
        row["error"] = plan.error
    return row


def plan_file_text(spec: PlanSpec) -> str:
    """A plan file as YAML, the form a person (or a model) edits."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def plan_view(api: SwarmClient, plan_id: int, *, with_file: bool = False) -> dict[str, Any]:
    """One plan: its status; for a draft or an active plan the requirements and the tickets
    covering each, the tickets by wave and the critical path; a design's progress."""
    plan = api.get_plan(plan_id)
    view = plan_row(plan)
    if plan.status == "designing":
        view["design_progress"] = design_progress(api, plan_id)
        return view
    if plan.status == "failed":
        return view
    spec = api.plan_spec(plan_id)
    waves = api.waves(plan_id)
    wave_of = {key: w.index for w in waves.waves for key in w.tickets}
    stored = {t.key: t for t in api.all_tickets(plan_id=plan_id)} if plan.status == "active" else {}
    texts = {r.id: r.text for r in spec.requirements}
    view["requirements"] = [
        {"id": rid, "text": texts.get(rid, ""), "covered_by": keys}
        for rid, keys in coverage(spec).items()
    ]
    tickets = []
    for t in spec.tickets:
        row: dict[str, Any] = {"key": t.id, "title": t.title, "wave": wave_of.get(t.id)}
        if t.id in stored:
            row |= {"ticket_id": stored[t.id].id, "state": stored[t.id].state.value}
        row |= {"depends_on": t.depends_on, "files": t.files, "estimate": t.estimate}
        tickets.append(row)
    view["tickets_by_wave"] = [w.tickets for w in waves.waves]
    view["critical_path"] = waves.critical_path
    view["tickets"] = tickets
    if spec.checks:
        view["checks"] = spec.checks
    if with_file:
        view["plan_file"] = plan_file_text(spec)
    return view


def design_progress(api: SwarmClient, plan_id: int, lines: int = 15) -> list[str]:
    """The last steps of a plan's design, one line each."""
    return DesignSteps(plan_id).new(api)[-lines:]


class DesignSteps:
    """A design's steps as lines, each once: what :meth:`new` has not returned before."""

    def __init__(self, plan_id: int) -> None:
        self.plan_id = plan_id
        self.after = 0
        self.count = 0

    def new(self, api: SwarmClient) -> list[str]:
        lines = []
        while page := api.events(after=self.after, limit=5000, plan_id=self.plan_id).events:
            for event in page:
                if event.kind.startswith("design."):
                    line = describe(event.kind, event.data)
                    if line is not None:
                        lines.append(line)
            self.after = page[-1].seq
        self.count += len(lines)
        return lines


def ticket_row(ticket: Ticket) -> dict[str, Any]:
    """A ticket in a list."""
    row: dict[str, Any] = {
        "ticket_id": ticket.id,
        "plan_id": ticket.plan_id,
        "key": ticket.key,
        "title": ticket.title,
        "state": ticket.state.value,
        "wave": ticket.wave,
        "attempts": f"{ticket.attempts}/{ticket.max_attempts}",
    }
    if ticket.lease_agent and ticket.state is TicketState.CLAIMED:
        row["agent"] = ticket.lease_agent
    if ticket.last_error and ticket.state is not TicketState.DONE:
        row["last_error"] = ticket.last_error[-ERROR_CHARS:]
    return row


def ticket_view(api: SwarmClient, ticket_id: int, log_lines: int) -> dict[str, Any]:
    """One ticket in full, with the last ``log_lines`` lines of its log."""
    ticket = api.get_ticket(ticket_id)
    view = ticket_row(ticket) | {
        "body": ticket.body,
        "acceptance": ticket.acceptance,
        "depends_on": ticket.depends_on,
        "files": ticket.files,
        "phase": ticket.phase,
    }
    if ticket.last_error:
        view["last_error"] = ticket.last_error
    if ticket.fix is not None and not ticket.state.finished:
        view["sent_back"] = fix_reason(ticket.fix)
    if ticket.result is not None:
        view["result"] = ticket.result.model_dump(mode="json", exclude_defaults=True)
    view["attempts_made"] = [
        a.model_dump(mode="json", exclude_none=True) for a in api.attempts(ticket_id)
    ]
    if log_lines:
        view["log"] = ticket_log(api, ticket_id, log_lines)
    return view


def ticket_log(api: SwarmClient, ticket_id: int, lines: int) -> list[str]:
    """The last ``lines`` events of a ticket: what its agents said and did, its merges."""
    kept: deque[str] = deque(maxlen=lines)
    after = 0
    while True:
        page = api.events(after, limit=5000, ticket_id=ticket_id)
        kept.extend(log_line(e) for e in page.events)
        if len(page.events) < 5000:
            return list(kept)
        after = page.last_seq


def newest_plan(api: SwarmClient) -> Plan:
    """The plan a question without a plan id is about: the newest active one, else the newest."""
    plans = api.list_plans()
    if not plans:
        raise NotFound("there is no plan yet: plan_spec designs one from a spec")
    active = [p for p in plans if p.status == "active"]
    return max(active or plans, key=lambda p: p.id)


def status(api: SwarmClient, plan_id: int | None) -> dict[str, Any]:
    """A run at a glance: progress overall and per wave, what needs attention and why, the
    cost against the budget, the agents at work, and the run itself."""
    plan = api.get_plan(plan_id) if plan_id is not None else newest_plan(api)
    tickets = api.all_tickets(plan_id=plan.id) if plan.status == "active" else []
    agents = api.agents(plan.id)
    runs = api.runs(plan.id)
    now = time.time()
    states = Counter(t.state.value for t in tickets)
    done = states.get("done", 0)
    view: dict[str, Any] = {
        "plan_id": plan.id,
        "title": plan.title,
        "status": plan.status,
        "paused": plan.paused,
        "settled": settled(t.state for t in tickets),
        "progress": {
            "done": done,
            "total": len(tickets),
            "percent": round(100 * done / len(tickets)) if tickets else 0,
            "by_state": dict(sorted(states.items())),
        },
    }
    waves: dict[int, Counter[str]] = {}
    for t in tickets:
        waves.setdefault(t.wave, Counter())[t.state.value] += 1
    view["waves"] = [
        {"wave": n, "done": c.get("done", 0), "total": sum(c.values()), "by_state": dict(c)}
        for n, c in sorted(waves.items())
    ]
    attention = _attention(plan, tickets, agents)
    view["needs_attention"] = attention[:SHOWN]
    if len(attention) > SHOWN:
        view["needs_attention_not_shown"] = (
            f"{len(attention) - SHOWN} more; list_tickets with state=['dead'] (or show_ticket) "
            "for the rest"
        )
    view["cost"] = {
        "spent_usd": round(plan.spent_usd, 4),
        "budget_usd": plan.budget_usd,
        "over_budget": plan.budget_usd is not None and plan.spent_usd > plan.budget_usd,
    }
    view["agents_at_work"] = [
        {
            "agent": a.agent,
            "ticket_id": a.ticket_id,
            "key": a.ticket_key,
            "doing": "fixing" if a.fixing else "working",
            "attempt": a.attempt,
            "for_s": round(now - a.claimed_at) if a.claimed_at else None,
            "last_heartbeat_s_ago": round(now - a.last_heartbeat_at),
            "stale": a.stale,
        }
        for a in agents[:SHOWN]
    ]
    if len(agents) > SHOWN:
        view["agents_not_shown"] = f"{len(agents) - SHOWN} more agents at work"
    view["merging"] = [t.key for t in tickets if t.state is TicketState.MERGING]
    view["run"] = runs[-1].model_dump(mode="json") if runs else None
    view["summary"] = _summary(view, plan, len(agents), len(attention))
    return view


def _attention(plan: Plan, tickets: list[Ticket], agents: list[Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if plan.budget_usd is not None and plan.spent_usd > plan.budget_usd:
        items.append(
            {
                "problem": "over budget",
                "why": f"the plan has spent ${plan.spent_usd:.2f} of its ${plan.budget_usd:.2f}",
            }
        )
    for t in tickets:
        if t.state is TicketState.DEAD:
            items.append(_item(t, "dead", t.last_error or "out of attempts"))
        elif t.fix is not None and not t.state.finished:
            items.append(_item(t, "sent back", fix_reason(t.fix)))
    for a in agents:
        if a.stale:
            items.append(
                {
                    "problem": "stale agent",
                    "ticket_id": a.ticket_id,
                    "key": a.ticket_key,
                    "why": f"{a.agent} has not sent a heartbeat for "
                    f"{time.time() - a.last_heartbeat_at:.0f}s",
                }
            )
    return items


def _item(ticket: Ticket, problem: str, why: str) -> dict[str, Any]:
    return {
        "problem": problem,
        "ticket_id": ticket.id,
        "key": ticket.key,
        "title": ticket.title,
        "why": why[-ERROR_CHARS:],
    }


def _summary(view: dict[str, Any], plan: Plan, agents: int, attention: int) -> str:
    """The status in a sentence."""
    if plan.status != "active":
        hint = {
            "designing": "its design is under way (show_plan shows its progress)",
            "draft": "review it with show_plan, then approve_plan",
            "failed": f"its design failed: {plan.error}",
        }[plan.status]
        return f"plan {plan.id} is {plan.status}: {hint}"
    progress = view["progress"]
    line = f"{progress['done']} of {progress['total']} tickets done"
    working = agents
    if working:
        line += f", {working} being worked on"
    if view["merging"]:
        line += f", {len(view['merging'])} merging"
    if attention:
        line += f"; {attention} {'thing needs' if attention == 1 else 'things need'} attention"
    run = view["run"]
    if view["settled"]:
        line += "; nothing can move any more without a person"
    elif plan.paused:
        line += "; the plan is paused (resume_run starts new tickets again)"
    elif not working and (run is None or run["state"] != "running"):
        line += "; no agents are at work on it (start_run puts some on it)"
    return line + f"; ${plan.spent_usd:.2f} spent"
