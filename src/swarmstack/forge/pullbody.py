"""What a ticket's pull request says: its title and its Markdown body.

The body carries a hidden marker, ``<!-- swarm:ticket=7 plan=3 -->``, by which the GitHub
forge knows its own pull requests again after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swarmstack.tickets.models import Ticket

TITLE_MAX = 256  # GitHub's limit on a title
BODY_MAX = 65_536  # and on a body
_SECTION_MAX = 24_000  # the ticket's body and the agent's summary, each


_MARKED = re.compile(r"<!-- swarm:ticket=(\d+) plan=(\d+) -->")


def marker(ticket_id: int, plan_id: int) -> str:
    return f"<!-- swarm:ticket={ticket_id} plan={plan_id} -->"


def marked(body: str | None) -> tuple[int, int] | None:
    """The ticket and plan a pull request's body names in its marker, if it has one."""
    found = _MARKED.search(body or "")
    return (int(found[1]), int(found[2])) if found else None


def pull_title(ticket: Ticket) -> str:
    """``T-7: add the cart``: the ticket's key and title, cut to GitHub's limit."""
    title = f"{ticket.key}: {ticket.title}" if ticket.title.strip() else ticket.key
    title = " ".join(title.split())
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"


def pull_body(ticket: Ticket, *, summary: str, depends: Mapping[str, int]) -> str:
    """The ticket's body, its acceptance criteria as a checklist, the agent's summary and
    the pull requests of the tickets it depends on (``#12``; a dependency without one is
    named only), then the marker."""
    parts = [f"Ticket **{ticket.key}** of plan {ticket.plan_id}, made by Swarm."]
    if ticket.body.strip():
        parts.append(_cut(ticket.body.strip()))
    if ticket.acceptance:
        checks = "\n".join(f"- [ ] {' '.join(item.split())}" for item in ticket.acceptance)
        parts.append(f"### Acceptance criteria\n\n{checks}")
    if summary.strip():
        parts.append(f"### What the agent did\n\n{_cut(summary.strip())}")
    if ticket.depends_on:
        lines = [
            f"- {key}: #{depends[key]}" if key in depends else f"- {key} (no pull request)"
            for key in ticket.depends_on
        ]
        parts.append("### Depends on\n\n" + "\n".join(lines))
    tail = marker(ticket.id, ticket.plan_id)
    body = "\n\n".join(parts)
    room = BODY_MAX - len(tail) - 2
    if len(body) > room:
        body = body[: room - 2] + " …"
    return f"{body}\n\n{tail}"


def _cut(text: str) -> str:
    if len(text) <= _SECTION_MAX:
        return text
    return text[:_SECTION_MAX] + f"\n\n… ({len(text) - _SECTION_MAX} more characters not shown)"
