"""``swarm tickets``: list, show, retry and cancel tickets through the API."""

from __future__ import annotations

import time

import typer
from rich.markup import escape
from rich.table import Table

from swarmstack.cli.common import (
    ApiOption,
    JsonOption,
    TokenOption,
    client,
    console,
    guarded,
    print_json,
)
from swarmstack.tickets.log import log_line
from swarmstack.tickets.models import Event, Ticket, TicketState

app = typer.Typer(help="List, inspect, retry and cancel tickets.", no_args_is_help=True)

_STATE_STYLE = {
    "pending": "dim",
    "ready": "cyan",
    "claimed": "yellow",
    "failed": "magenta",
    "done": "green",
    "dead": "bold red",
    "cancelled": "dim red",
}


def _age(ts: float | None) -> str:
    if ts is None:
        return ""
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@app.command("ls")
@guarded
def list_tickets(
    plan: int | None = typer.Option(None, "--plan", help="Only tickets of this plan id."),
    state: list[TicketState] | None = typer.Option(
        None, "--state", help="Only tickets in this state (repeatable)."
    ),
    phase: str | None = typer.Option(None, "--phase", help="skeleton, expansion or validation."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """List tickets, in id order."""
    with client(api, token) as api_client:
        tickets = api_client.all_tickets(plan_id=plan, states=state, phase=phase)
    if json_out:
        print_json(tickets)
        return
    table = Table(box=None, header_style="bold")
    for column in (
        "id",
        "plan",
        "key",
        "state",
        "rank",
        "prio",
        "tries",
        "agent",
        "updated",
        "title",
    ):
        table.add_column(column, no_wrap=column != "title")
    for t in tickets:
        style = _STATE_STYLE.get(t.state.value, "")
        table.add_row(
            str(t.id),
            str(t.plan_id),
            t.key,
            f"[{style}]{t.state.value}[/]",
            f"{t.rank:g}",
            str(t.priority),
            f"{t.attempts}/{t.max_attempts}",
            t.lease_agent or "",
            _age(t.updated_at),
            t.title,
        )
    console.print(table)
    console.print(f"{len(tickets)} tickets")


def _show(ticket: Ticket) -> None:
    console.print(f"[bold]#{ticket.id} {ticket.key}[/]  {ticket.title}")
    style = _STATE_STYLE.get(ticket.state.value, "")
    console.print(
        f"state [{style}]{ticket.state.value}[/]  plan {ticket.plan_id}  phase {ticket.phase}  "
        f"rank {ticket.rank:g}  priority {ticket.priority}  attempts "
        f"{ticket.attempts}/{ticket.max_attempts}  epoch {ticket.epoch}"
    )
    if ticket.depends_on:
        console.print(f"depends on: {', '.join(ticket.depends_on)}")
    if ticket.files:
        console.print(f"files: {', '.join(ticket.files)}")
    if ticket.lease_agent and ticket.state is TicketState.CLAIMED:
        console.print(
            f"leased to {ticket.lease_agent}, expires in "
            f"{(ticket.lease_expires_at or 0) - time.time():.0f}s"
        )
    if ticket.last_error:
        console.print(f"[red]last error:[/] {ticket.last_error}")
    if ticket.body:
        console.print()
        console.print(ticket.body, highlight=False)
    for line in ticket.acceptance:
        console.print(f"  [green]✓[/] {line}", highlight=False)
    if ticket.result:
        console.print(f"result: {ticket.result.summary}", highlight=False)
        if ticket.result.branch:
            console.print(f"branch: {ticket.result.branch}")


@app.command("show")
@guarded
def show(
    ticket_id: int = typer.Argument(..., help="The ticket id."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Show one ticket in full."""
    with client(api, token) as api_client:
        ticket = api_client.get_ticket(ticket_id)
        attempts = [] if json_out else api_client.attempts(ticket_id)
    if json_out:
        print_json(ticket)
        return
    _show(ticket)
    for n, a in enumerate(attempts, 1):
        took = f"{a.ended_at - a.claimed_at:.0f}s, {a.outcome}" if a.ended_at else "going on"
        error = f" — {a.error}" if a.error else ""
        console.print(f"attempt {n}: {escape(a.agent)}, {took}{escape(error)}", highlight=False)


@app.command("retry")
@guarded
def retry(
    ticket_id: int = typer.Argument(..., help="The ticket id."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Give a failed, dead or cancelled ticket a fresh set of attempts, now."""
    with client(api, token) as api_client:
        ticket = api_client.retry(ticket_id)
    if json_out:
        print_json(ticket)
    else:
        console.print(f"ticket {ticket.id} ({ticket.key}) is {ticket.state.value}")


@app.command("cancel")
@guarded
def cancel(
    ticket_id: int = typer.Argument(..., help="The ticket id."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the record."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Cancel a ticket that is not done; an agent working on it loses its lease."""
    with client(api, token) as api_client:
        ticket = api_client.cancel(ticket_id, reason)
    if json_out:
        print_json(ticket)
    else:
        console.print(f"ticket {ticket.id} ({ticket.key}) is {ticket.state.value}")


@app.command("stop")
@guarded
def stop(
    ticket_id: int = typer.Argument(..., help="The ticket id."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the record."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Stop the agent at work on a ticket: its lease ends, its host replaces its sandbox, and
    the ticket is ready for another agent (the attempt does not count)."""
    with client(api, token) as api_client:
        ticket = api_client.stop(ticket_id, reason)
    if json_out:
        print_json(ticket)
    else:
        console.print(f"ticket {ticket.id} ({ticket.key}): its agent was stopped; it is ready")


@app.command("agents")
@guarded
def agents(
    plan: int | None = typer.Option(None, "--plan", min=1, help="Only this plan's agents."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """The agents at work: their tickets, heartbeats and sandboxes (memory, cpu)."""
    with client(api, token) as api_client:
        working = api_client.agents(plan)
    if json_out:
        print_json(working)
        return
    table = Table("agent", "ticket", "for", "heartbeat", "backend", "memory", "cpu", box=None)
    now = time.time()
    for a in working:
        box = a.sandbox
        memory = f"{box.memory_bytes / 2**20:.0f} MiB" if box and box.memory_bytes else ""
        cpu = f"{box.cpu_percent:.0f}%" if box and box.cpu_percent is not None else ""
        table.add_row(
            escape(a.agent),
            escape(f"{a.ticket_id} {a.ticket_key}") + (" (fixing)" if a.fixing else ""),
            f"{now - a.claimed_at:.0f}s" if a.claimed_at else "",
            f"{now - a.last_heartbeat_at:.0f}s ago" + (" [red]stale[/]" if a.stale else ""),
            escape((box.backend if box else None) or ""),
            memory,
            cpu,
        )
    console.print(table if working else "no agent is at work")


@app.command("usage")
@guarded
def usage(
    plan: int | None = typer.Option(None, "--plan", help="Only this plan's model calls."),
    ticket: int | None = typer.Option(None, "--ticket", help="Only this ticket's model calls."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Tokens and dollars spent on model calls through the LLM gateway, per ticket."""
    with client(api, token) as api_client:
        report = api_client.usage(plan_id=plan, ticket_id=ticket)
    if json_out:
        print_json(report)
        return
    table = Table("ticket", "key", "calls", "input", "output", "cost $")
    for row in report.tickets:
        table.add_row(
            str(row.ticket_id),
            row.key,
            str(row.calls),
            f"{row.input_tokens:,}",
            f"{row.output_tokens:,}",
            f"{row.cost_usd:.4f}",
        )
    console.print(table)
    console.print(
        f"{report.calls} calls, {report.input_tokens:,} input and {report.output_tokens:,} "
        f"output tokens ({report.cache_read_input_tokens:,} read from the cache): "
        f"[bold]${report.cost_usd:.4f}[/]"
    )


@app.command("log")
@guarded
def log(
    ticket: int = typer.Argument(..., min=1, help="The ticket's id."),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing new events until the ticket is finished."
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON event per line."),
    interval_s: float = typer.Option(0.5, "--interval", min=0.05, max=60, help="Polling period."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """A ticket's log: its events, oldest first (claims, model calls, pushes, pull requests,
    completion or failure)."""

    def show(events: list[Event]) -> None:
        for event in events:
            if json_out:
                typer.echo(event.model_dump_json())
            else:
                console.print(log_line(event), highlight=False, markup=False, soft_wrap=True)

    after = 0
    with client(api, token) as api_client:
        api_client.get_ticket(ticket)  # 404 for a ticket that does not exist
        while True:
            page = api_client.events(after, limit=5000, ticket_id=ticket)
            show(page.events)
            after = page.last_seq
            if len(page.events) == 5000:
                continue
            if not follow:
                return
            if api_client.get_ticket(ticket).state.finished:
                # What came between the last page and the state just read.
                show(api_client.events(after, limit=5000, ticket_id=ticket).events)
                return
            time.sleep(interval_s)
