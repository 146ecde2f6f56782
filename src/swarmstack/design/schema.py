"""What the design agent asks the model for: one pydantic model per phase, sent as a tool.

The model answers by calling the phase's tool; its input must validate against the model
here. These are the model's side of the contract, so they are strict about shape (types,
required fields, no unknown keys) and loose about meaning: a cycle or an uncovered
requirement is the plan checks' business, fixed in a repair round, not a reason to reject
the answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from swarmstack.tickets.models import Requirement, TicketSpec

# Slugs keep ids readable in branch names, logs and prompts.
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=80)]
Line = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DraftTicket(_Strict):
    """A ticket as the model writes it; becomes a :class:`TicketSpec`."""

    id: Slug = Field(description="unique in the plan, lowercase words joined by '-'")
    title: Line
    body: str = Field(description="what to build and how, for an engineer new to the code")
    acceptance: list[Line] = Field(
        min_length=1, description="checks a reviewer can run; each one testable"
    )
    files: list[Line] = Field(
        min_length=1, description="paths the ticket creates or changes, relative to the root"
    )
    depends_on: list[Slug] = Field(description="ids of tickets that must be done first")
    estimate: float = Field(gt=0, le=100, description="agent-hours")
    covers: list[Line] = Field(
        default_factory=list,
        description="ids of the requirements the ticket implements (R1, R2, ...)",
    )

    def spec(self, phase: Literal["skeleton", "expansion", "validation"]) -> TicketSpec:
        return TicketSpec(
            id=self.id,
            title=self.title,
            body=self.body,
            phase=phase,
            depends_on=self.depends_on,
            files=self.files,
            acceptance=self.acceptance,
            estimate=self.estimate,
            covers=self.covers,
        )


class Component(_Strict):
    name: Slug
    purpose: Line
    files: list[Line] = Field(description="the paths the component owns")
    depends_on: list[Slug] = Field(
        default_factory=list, description="components whose interfaces this one uses"
    )


class Interface(_Strict):
    name: Line
    provider: Slug = Field(description="the component that implements it")
    consumers: list[Slug] = Field(description="the components that call it")
    contract: str = Field(min_length=1, description="signatures, types, errors: the fixed part")


class Skeleton(_Strict):
    """Phase 1: requirements, components, interfaces, and the tickets everything builds on."""

    title: Line
    summary: str = Field(min_length=1, description="what is being built, in a paragraph")
    requirements: list[Requirement] = Field(min_length=1)
    components: list[Component] = Field(min_length=1)
    interfaces: list[Interface] = Field(default_factory=list)
    skeleton_tickets: list[DraftTicket] = Field(min_length=1, max_length=5)

    def problems(self) -> list[str]:
        """What the schema cannot say: names that must refer to each other."""
        names = [c.name for c in self.components]
        found = []
        for name in sorted({n for n in names if names.count(n) > 1}):
            found.append(f"component {name!r} is listed twice")
        known = set(names)
        for c in self.components:
            found += [
                f"component {c.name!r} depends on unknown component {d!r}"
                for d in c.depends_on
                if d not in known
            ]
        for i in self.interfaces:
            found += [
                f"interface {i.name!r} names unknown component {n!r}"
                for n in [i.provider, *i.consumers]
                if n not in known
            ]
        rids = [r.id for r in self.requirements]
        found += [
            f"requirement id {r!r} is listed twice" for r in sorted(set(rids)) if rids.count(r) > 1
        ]
        return found


class TicketBatch(_Strict):
    """Phases 2 and 3: a component's tickets, or the validation tickets."""

    tickets: list[DraftTicket] = Field(min_length=1)


class Finding(_Strict):
    severity: Literal["must_fix", "suggestion"]
    tickets: list[str] = Field(default_factory=list)
    requirements: list[str] = Field(default_factory=list)
    problem: Line
    fix: Line


class Critique(_Strict):
    """A review of the whole plan; ``must_fix`` findings start a repair round."""

    findings: list[Finding] = Field(description="empty when the plan is fine")


class PlannedTicket(DraftTicket):
    """A ticket with its phase: how the plan is shown to the model, and repaired by it."""

    phase: Literal["skeleton", "expansion", "validation"]


class Revision(_Strict):
    """A repair round's answer: what changes, not the whole plan again, so that the answer
    stays as small as the fix however large the plan is."""

    tickets: list[PlannedTicket] = Field(
        default_factory=list,
        description="tickets to add, or to replace whole (matched by id); tickets not named "
        "here or in remove stay as they are",
    )
    remove: list[Slug] = Field(default_factory=list, description="ids of tickets to delete")
    notes: str = Field(default="", description="what changed and why, briefly")

    def problems(self, ids: set[str]) -> list[str]:
        """What cannot be applied to a plan with tickets ``ids``."""
        found = [] if self.tickets or self.remove else ["the revision changes nothing"]
        found += [f"remove: there is no ticket {i!r}" for i in self.remove if i not in ids]
        named = [t.id for t in self.tickets]
        found += [
            f"tickets: {i!r} is given twice" for i in sorted(set(named)) if named.count(i) > 1
        ]
        found += [f"{i!r} is both given and removed" for i in sorted(set(named) & set(self.remove))]
        return found

    def apply(self, tickets: list[TicketSpec]) -> list[TicketSpec]:
        """The plan's tickets with this revision applied: replacements in place, new tickets
        at the end, removed ones gone."""
        given = {t.id: t.spec(t.phase) for t in self.tickets}
        kept = [given.pop(t.id, t) for t in tickets if t.id not in self.remove]
        return [*kept, *given.values()]


# -- as tools --------------------------------------------------------------------------------


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every ``$ref`` replaced by its definition: simpler for the model."""
    defs = schema.pop("$defs", {})

    def walk(node: Any, names: bool = False) -> Any:
        # ``names``: the keys of this mapping are property names, not schema keywords.
        if isinstance(node, dict):
            ref = node.get("$ref")
            if not names and isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {
                k: walk(v, names=not names and k == "properties")
                for k, v in node.items()
                if names or k != "title"  # pydantic's titles repeat the names
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def tool(name: str, model: type[BaseModel], description: str) -> dict[str, Any]:
    """A Messages API tool whose input is ``model``."""
    return {
        "name": name,
        "description": description,
        "input_schema": _inline(model.model_json_schema()),
    }


def problems_of(exc: ValidationError, limit: int = 20) -> list[str]:
    """A validation error as lines the model can act on: where, and what is wrong."""
    lines = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"{where}: {error['msg']}")
    if len(exc.errors()) > limit:
        lines.append(f"and {len(exc.errors()) - limit} more")
    return lines
