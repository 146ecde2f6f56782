"""The design agent: from a spec and a repository to a valid plan, in three phases.

1. **Skeleton** — one call: the requirements (R1, R2, …), the components, the interfaces
   between them, and the skeleton tickets the rest builds on.
2. **Expansion** — one call per component, in waves of the components' own dependencies (a
   component is expanded after those it uses, and sees their tickets); then one call for the
   validation tickets (integration tests, docs), which see the whole plan.
3. **Checks** — the plan checks of ``swarm plan validate`` (strict: file conflicts count),
   file conflicts ordered by an added edge, then a critique by the model. Errors and
   ``must_fix`` findings go back to the model for at most ``max_repair_rounds`` repairs.

The result is valid or there is none: :class:`DesignFailed` says why, and nothing half-made
is returned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic

from swarmstack.design import prompts
from swarmstack.design.model import Asker, Spent
from swarmstack.design.progress import plural
from swarmstack.design.repo import RepoSummary
from swarmstack.design.request import DesignOptions, Emit, no_events
from swarmstack.design.schema import (
    Critique,
    DraftTicket,
    Finding,
    Revision,
    Skeleton,
    TicketBatch,
)
from swarmstack.errors import DesignFailed
from swarmstack.llm.prices import PriceTable
from swarmstack.tickets import graph
from swarmstack.tickets.models import PlanIssue, PlanSpec, TicketSpec, ValidationReport

# Errors the graph needs gone before file conflicts can be ordered by an edge.
_GRAPH_ERRORS = {"duplicate_id", "self_dependency", "unknown_dependency", "cycle"}


@dataclass
class DesignResult:
    plan: PlanSpec
    repair_rounds: int
    spent: Spent
    open_findings: list[Finding] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        waves = graph.waves(self.plan)
        return {
            "tickets": len(self.plan.tickets),
            "waves": len(waves),
            "requirements": len(self.plan.requirements),
            "repair_rounds": self.repair_rounds,
            "open_findings": [f.model_dump() for f in self.open_findings],
            **self.spent.as_dict(),
        }


class DesignAgent:
    """Runs the phases against one Messages API client (the real API or the scripted model)."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        options: DesignOptions | None = None,
        *,
        emit: Emit = no_events,
        prices: PriceTable | None = None,
    ) -> None:
        self.options = options or DesignOptions()
        self.emit = emit
        self.asker = Asker(
            client,
            model=self.options.model,
            system=prompts.render("system"),
            attempts=self.options.attempts,
            max_tokens=self.options.max_tokens,
            emit=emit,
            prices=prices,
        )

    async def design(
        self, spec: str, repo: RepoSummary | None = None, *, title: str | None = None
    ) -> DesignResult:
        """A valid plan for ``spec``, or :class:`DesignFailed`."""
        skeleton = await self._skeleton(spec, repo)
        tickets = [t.spec("skeleton") for t in skeleton.skeleton_tickets]
        tickets += await self._expand(skeleton)
        plan = self._plan(skeleton, tickets, title)
        plan = self._with(plan, [*plan.tickets, *await self._validation_tickets(plan)])
        return await self._check(spec, plan)

    # -- phase 1 ---------------------------------------------------------------------------

    async def _skeleton(self, spec: str, repo: RepoSummary | None) -> Skeleton:
        prompt = prompts.render(
            "skeleton",
            spec=spec.strip(),
            repo=repo.render() if repo is not None else "(no repository: start from nothing)",
            max_estimate=f"{self.options.max_estimate:g}",
        )
        return await self.asker.ask(
            phase="skeleton",
            call="skeleton",
            prompt=prompt,
            tool_name="submit_skeleton",
            description="The requirements, components, interfaces and skeleton tickets.",
            answer=Skeleton,
            check=_skeleton_problems,
        )

    # -- phase 2 ---------------------------------------------------------------------------

    async def _expand(self, skeleton: Skeleton) -> list[TicketSpec]:
        """Each component's tickets; a wave of components at a time, a few calls at once."""
        names = [c.name for c in skeleton.components]
        uses = {c.name: c.depends_on for c in skeleton.components}
        design = _design_text(skeleton)
        limit = asyncio.Semaphore(self.options.parallel)
        made: dict[str, list[DraftTicket]] = {}

        async def expand(name: str) -> None:
            component = next(c for c in skeleton.components if c.name == name)
            upstream = [t for dep in _closure(name, uses) for t in made.get(dep, [])]
            prompt = prompts.render(
                "expansion",
                component=name,
                component_text=json.dumps(component.model_dump(), indent=1),
                design=design,
                upstream=_ticket_lines(upstream) if upstream else "(none)",
                max_estimate=f"{self.options.max_estimate:g}",
            )
            async with limit:
                batch = await self.asker.ask(
                    phase="expansion",
                    call=f"expansion:{name}",
                    prompt=prompt,
                    tool_name="submit_tickets",
                    description=f"The tickets of component {name}.",
                    answer=TicketBatch,
                )
            made[name] = batch.tickets

        for wave in graph.waves_of(names, uses):
            await asyncio.gather(*(expand(name) for name in wave))
        return [t.spec("expansion") for name in names for t in made[name]]

    async def _validation_tickets(self, plan: PlanSpec) -> list[TicketSpec]:
        batch = await self.asker.ask(
            phase="validation",
            call="validation",
            prompt=prompts.render(
                "validation",
                plan=_plan_text(plan),
                max_estimate=f"{self.options.max_estimate:g}",
            ),
            tool_name="submit_tickets",
            description="The validation tickets: integration tests and documentation.",
            answer=TicketBatch,
        )
        return [t.spec("validation") for t in batch.tickets]

    # -- phase 3 ---------------------------------------------------------------------------

    async def _check(self, spec: str, plan: PlanSpec) -> DesignResult:
        rounds = 0
        critiques = 0
        while True:
            report = graph.validate(plan, strict=True)
            ordered = await self._order_conflicts(plan, report, rounds)
            if ordered is not None:
                plan, report = ordered, graph.validate(ordered, strict=True)
            # A validation ticket that runs first checks nothing: in a design it is an error.
            errors = [
                *report.errors,
                *(w for w in report.warnings if w.code == "validation_too_early"),
            ]
            await self.emit(
                "design.validation",
                {
                    "round": rounds,
                    "valid": not errors,
                    "errors": [i.model_dump(mode="json") for i in errors],
                    "warnings": [
                        i.model_dump(mode="json") for i in report.warnings if i not in errors
                    ],
                },
            )
            findings: list[Finding] = []
            if not errors and self.options.critique:
                critiques += 1
                findings = await self._critique(spec, plan, critiques)
            must = [f for f in findings if f.severity == "must_fix"]
            if not errors and not must:
                return DesignResult(plan, rounds, self.asker.spent, findings)
            if rounds == self.options.max_repair_rounds:
                if not errors:  # only the critique is unhappy: keep its findings on record
                    return DesignResult(plan, rounds, self.asker.spent, findings)
                raise DesignFailed(
                    f"after {plural(rounds, 'repair round')} the plan still has "
                    f"{plural(len(errors), 'error')}: " + "; ".join(i.message for i in errors[:5])
                )
            rounds += 1
            plan = await self._repair(plan, errors, must, rounds)

    async def _order_conflicts(
        self, plan: PlanSpec, report: ValidationReport, round_: int
    ) -> PlanSpec | None:
        """Tickets that may run at once and share a file (``report`` is strict, so they are
        errors): the later one in a topological order depends on the earlier. Every added
        edge agrees with that one order, so together they cannot make a cycle. None when
        there is nothing to order, or a graph error must be repaired first."""
        conflicts = [e for e in report.errors if e.code == "file_conflict"]
        if not conflicts or any(e.code in _GRAPH_ERRORS for e in report.errors):
            return None
        waves = graph.waves_of(
            [t.id for t in plan.tickets], {t.id: t.depends_on for t in plan.tickets}
        )
        position = {t: n for n, t in enumerate(t for wave in waves for t in wave)}
        added: dict[str, list[str]] = {}
        for issue in conflicts:
            first, second = sorted(issue.tickets, key=position.__getitem__)
            added.setdefault(second, []).append(first)
        tickets = [
            t.model_copy(update={"depends_on": [*t.depends_on, *added.get(t.id, [])]})
            for t in plan.tickets
        ]
        edges = [[later, earlier] for later, earliers in added.items() for earlier in earliers]
        await self.emit(
            "design.fixed",
            {
                "round": round_,
                "edges": edges,
                "message": f"ordered {plural(len(edges), 'pair')} of tickets that share files",
            },
        )
        return self._with(plan, tickets)

    async def _critique(self, spec: str, plan: PlanSpec, number: int) -> list[Finding]:
        critique = await self.asker.ask(
            phase="critique",
            call=f"critique:{number}",
            prompt=prompts.render("critique", number=number, spec=spec, plan=_plan_text(plan)),
            tool_name="submit_critique",
            description="Findings about the plan; an empty list when it is ready.",
            answer=Critique,
        )
        return critique.findings

    async def _repair(
        self, plan: PlanSpec, errors: Sequence[PlanIssue], must: Sequence[Finding], number: int
    ) -> PlanSpec:
        problems = [_issue_line(i) for i in errors] + [_finding_line(f) for f in must]
        await self.emit(
            "design.repair",
            {
                "round": number,
                "errors": [i.code for i in errors],
                "findings": len(must),
                "problems": problems,
            },
        )
        revision = await self.asker.ask(
            phase="repair",
            call=f"repair:{number}",
            prompt=prompts.render(
                "repair",
                number=number,
                problems="\n".join(f"- {p}" for p in problems),
                requirements="\n".join(f"- {r.id}: {r.text}" for r in plan.requirements),
                plan=_plan_text(plan),
                max_estimate=f"{self.options.max_estimate:g}",
            ),
            tool_name="submit_plan",
            description="The tickets to add or replace, and the ids of tickets to remove.",
            answer=Revision,
            check=lambda revision: revision.problems({t.id for t in plan.tickets}),
        )
        return self._with(plan, revision.apply(plan.tickets))

    # -- the plan --------------------------------------------------------------------------

    def _plan(self, skeleton: Skeleton, tickets: list[TicketSpec], title: str | None) -> PlanSpec:
        return PlanSpec(
            title=title or skeleton.title,
            description=_description(skeleton),
            requirements=skeleton.requirements,
            max_estimate=self.options.max_estimate,
            tickets=tickets,
        )

    @staticmethod
    def _with(plan: PlanSpec, tickets: list[TicketSpec]) -> PlanSpec:
        return plan.model_copy(update={"tickets": tickets})


# -- checks and text -------------------------------------------------------------------------


def _skeleton_problems(skeleton: Skeleton) -> list[str]:
    found = skeleton.problems()
    names = [c.name for c in skeleton.components]
    if not found:  # the names are sound: now their order
        uses = {c.name: c.depends_on for c in skeleton.components}
        report = graph.validate_graph(names, uses)
        found += [f"components: {issue.message}" for issue in report.errors]
    return found


def _closure(name: str, uses: dict[str, list[str]]) -> list[str]:
    """The components ``name`` uses, directly or through others, nearest first."""
    seen: list[str] = []
    todo = list(uses.get(name, []))
    while todo:
        dep = todo.pop(0)
        if dep not in seen and dep != name:
            seen.append(dep)
            todo += uses.get(dep, [])
    return seen


def _description(skeleton: Skeleton) -> str:
    lines = [skeleton.summary.strip(), "", "## Components", ""]
    for c in skeleton.components:
        uses = f"; uses {', '.join(c.depends_on)}" if c.depends_on else ""
        lines.append(f"- `{c.name}`: {c.purpose} (owns {', '.join(c.files) or 'no files'}{uses})")
    if skeleton.interfaces:
        lines += ["", "## Interfaces", ""]
        for i in skeleton.interfaces:
            lines.append(f"- **{i.name}**, by `{i.provider}` for {', '.join(i.consumers)}:")
            lines += [f"  {line}" for line in i.contract.strip().splitlines()]
    return "\n".join(lines)


def _design_text(skeleton: Skeleton) -> str:
    requirements = "\n".join(f"- {r.id}: {r.text}" for r in skeleton.requirements)
    skeleton_tickets = _ticket_lines(skeleton.skeleton_tickets)
    return (
        f"# {skeleton.title}\n\n{_description(skeleton)}\n\n## Requirements\n\n{requirements}"
        f"\n\n## Skeleton tickets\n\n{skeleton_tickets}"
    )


def _ticket_lines(tickets: Sequence[DraftTicket]) -> str:
    """One ticket per line as JSON: compact, and still easy to read and to cite."""
    return "\n".join(t.model_dump_json() for t in tickets)


def _plan_text(plan: PlanSpec) -> str:
    fields = ("id", "phase", "title", "body", "acceptance", "files", "depends_on", "estimate")
    planned = [
        json.dumps({**{f: getattr(t, f) for f in fields}, "covers": t.covers}) for t in plan.tickets
    ]
    requirements = "\n".join(f"- {r.id}: {r.text}" for r in plan.requirements)
    return f"Requirements:\n{requirements}\n\nTickets, one per line:\n" + "\n".join(planned)


def _issue_line(issue: PlanIssue) -> str:
    line = f"[{issue.code}] {issue.message}"
    if issue.suggested_edge is not None:
        later, earlier = issue.suggested_edge
        line += f" (or add {earlier} to the depends_on of {later})"
    return line


def _finding_line(finding: Finding) -> str:
    where = ", ".join([*finding.tickets, *finding.requirements])
    return f"[critique] {finding.problem} Fix: {finding.fix}" + (f" ({where})" if where else "")
