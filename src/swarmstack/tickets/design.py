"""Checks of a plan's content beyond its graph: requirements, ticket sizes, phase order.

:func:`swarmstack.tickets.graph.validate` runs them along with the graph checks; each is one
pass over the plan and builds no issue when nothing is wrong.
"""

from __future__ import annotations

from swarmstack.tickets.models import PlanIssue, PlanSpec


def requirement_issues(plan: PlanSpec) -> list[PlanIssue]:
    """Requirements listed twice, covers naming unlisted ones, and listed ones nobody covers.

    A plan that lists no requirements keeps ``covers`` free-form: nothing to check against.
    """
    if not plan.requirements:
        return []
    positions: dict[str, list[int]] = {}
    for n, requirement in enumerate(plan.requirements):
        positions.setdefault(requirement.id, []).append(n)
    issues = [
        PlanIssue(
            code="duplicate_requirement",
            tickets=[],
            requirements=[rid],
            message=f"requirement id {rid} is listed {len(where)} times "
            f"(requirements[{'], requirements['.join(map(str, where))}])",
        )
        for rid, where in positions.items()
        if len(where) > 1
    ]
    covered: set[str] = set()
    for ticket in plan.tickets:
        for rid in dict.fromkeys(ticket.covers):  # a requirement listed twice is one problem
            covered.add(rid)
            if rid not in positions:
                issues.append(
                    PlanIssue(
                        code="unknown_requirement",
                        tickets=[ticket.id],
                        requirements=[rid],
                        message=f"ticket {ticket.id} covers {rid}, which is not one of the "
                        "plan's requirements",
                    )
                )
    issues += [
        PlanIssue(
            code="uncovered_requirement",
            tickets=[],
            requirements=[rid],
            message=f"requirement {rid} is covered by no ticket",
        )
        for rid in positions
        if rid not in covered
    ]
    return issues


def too_large_issues(plan: PlanSpec) -> list[PlanIssue]:
    """Tickets whose estimate is over the plan's ``max_estimate``, if it sets one."""
    limit = plan.max_estimate
    if limit is None:
        return []
    return [
        PlanIssue(
            code="too_large",
            tickets=[t.id],
            message=f"ticket {t.id} has estimate {t.estimate:g}, more than the plan's "
            f"max_estimate of {limit:g}; split it",
        )
        for t in plan.tickets
        if t.estimate > limit
    ]


def early_validation_issues(plan: PlanSpec) -> list[PlanIssue]:
    """Validation tickets check other work, so one with no dependencies would run first."""
    return [
        PlanIssue(
            code="validation_too_early",
            tickets=[t.id],
            message=f"validation ticket {t.id} has no dependencies, so it may run before the "
            "work it checks; make it depend on that work",
        )
        for t in plan.tickets
        if t.phase == "validation" and not t.depends_on
    ]


def coverage(plan: PlanSpec) -> dict[str, list[str]]:
    """Each listed requirement's id -> the tickets that cover it, in plan order (an empty list
    when none does): what a person reads before approving a designed plan."""
    covered: dict[str, list[str]] = {r.id: [] for r in plan.requirements}
    for ticket in plan.tickets:
        for rid in dict.fromkeys(ticket.covers):
            if rid in covered:
                covered[rid].append(ticket.id)
    return covered
