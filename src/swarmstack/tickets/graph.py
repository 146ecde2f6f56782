"""Pure functions over the ticket DAG: validation, waves, upward rank and the critical path.

Two layers:

* the ``*_of`` functions and :func:`validate_graph` take plain sequences and mappings
  (``ids`` in plan order, ``deps[id]`` = the ids it depends on), so the store can run them
  over tickets it loaded from the database;
* :func:`validate`, :func:`waves`, :func:`upward_rank`, :func:`critical_path` and
  :func:`waves_report` take a :class:`PlanSpec` and share the generic layer's internals.

Every walk is iterative, never recursive: plans can hold tens of thousands of tickets and a
long dependency chain must not hit Python's recursion limit.

Conventions: ``A -> B`` means "A depends on B"; a ticket's *dependencies* are upstream of it
and its *dependents* downstream. Where ids repeat (a ``duplicate_id`` error), the first
ticket with that id stands for it in every graph check and later copies are ignored.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from swarmstack.errors import PlanInvalid
from swarmstack.tickets import design
from swarmstack.tickets.models import (
    IssueCode,
    PlanIssue,
    PlanSpec,
    TicketSpec,
    ValidationReport,
    Wave,
    WavesReport,
)

_MAX_ERRORS_IN_MESSAGE = 5  # PlanInvalid's one-line message; the full report is in details


# -- the graph, indexed ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    """Tickets as dense indices in plan order, with known, distinct, non-self edges only."""

    ids: list[str]  # unique, first occurrence wins, plan order
    index: dict[str, int]
    deps: list[list[int]]  # deps[i]: what ticket i depends on, in the order written

    @property
    def size(self) -> int:
        return len(self.ids)

    def dependents(self) -> list[list[int]]:
        """dependents[i]: tickets that depend on i, in plan order."""
        out: list[list[int]] = [[] for _ in self.ids]
        for i, ds in enumerate(self.deps):
            for d in ds:
                out[d].append(i)
        return out


def _build(ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> tuple[_Graph, bool]:
    """Index the graph; the flag says whether anything was dropped (dups, unknown, self)."""
    index: dict[str, int] = {}
    for ticket in ids:
        index.setdefault(ticket, len(index))
    unique = list(index)
    dropped = len(unique) != len(ids)
    edges: list[list[int]] = []
    for ticket in unique:
        mine = index[ticket]
        seen: set[int] = set()
        row: list[int] = []
        for dep in deps.get(ticket, ()):
            d = index.get(dep)
            if d is None or d == mine:
                dropped = True
            elif d not in seen:
                seen.add(d)
                row.append(d)
        edges.append(row)
    return _Graph(unique, index, edges), dropped


def _topological_order(graph: _Graph) -> list[int] | None:
    """Kahn's algorithm, dependencies first, ties in plan order; None if there is a cycle."""
    waiting = [len(ds) for ds in graph.deps]
    dependents = graph.dependents()
    queue = deque(i for i in range(graph.size) if waiting[i] == 0)
    order: list[int] = []
    while queue:
        i = queue.popleft()
        order.append(i)
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                queue.append(j)
    return order if len(order) == graph.size else None


def _strongly_connected(graph: _Graph) -> list[list[int]]:
    """Tarjan's algorithm, iterative.

    Components come out dependencies first: a component is emitted only after every
    component it depends on, which makes the emission order a topological order of the
    condensed graph.
    """
    n = graph.size
    number = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in range(n):
        if number[root] != -1:
            continue
        number[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]  # (node, index of the next edge to follow)
        while work:
            v, edge = work[-1]
            if edge < len(graph.deps[v]):
                work[-1] = (v, edge + 1)
                w = graph.deps[v][edge]
                if number[w] == -1:
                    number[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], number[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == number[v]:
                component: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    component.append(w)
                    if w == v:
                        break
                components.append(component)
    return components


# -- validation ------------------------------------------------------------------------------


def validate(plan: PlanSpec, *, strict: bool = False) -> ValidationReport:
    """Check a plan and report every problem at once.

    Errors: the graph's (see :func:`validate_graph`), ``empty_title``, the requirement checks
    ``duplicate_requirement``, ``unknown_requirement`` and ``uncovered_requirement`` (when the
    plan lists requirements), ``unreachable_from_skeleton`` (when it has skeleton tickets and
    no cycle) and ``too_large`` (when it sets ``max_estimate``). ``validation_too_early`` is a
    warning; ``file_conflict`` is a warning, or an error when ``strict`` is true. ``valid``
    means there are no errors.
    """
    ids = [t.id for t in plan.tickets]
    deps: dict[str, list[str]] = {}
    files: dict[str, list[str]] = {}
    for ticket in plan.tickets:
        deps.setdefault(ticket.id, ticket.depends_on)
        files.setdefault(ticket.id, ticket.files)
    graph, _ = _build(ids, deps)
    errors, conflicts, order = _graph_issues(graph, ids, deps, files)
    errors += _plan_issues(plan, graph, order)
    return _report(errors, design.early_validation_issues(plan), conflicts, strict=strict)


def validate_graph(
    ids: Sequence[str],
    deps: Mapping[str, Sequence[str]],
    files: Mapping[str, Sequence[str]] | None = None,
    *,
    strict: bool = False,
) -> ValidationReport:
    """The graph checks of :func:`validate` over plain data.

    ``ids`` in plan order (repeats are reported as ``duplicate_id``), ``deps[id]`` the ids it
    depends on, ``files[id]`` the files it touches (omit to skip ``file_conflict``). Errors:
    ``duplicate_id``, ``self_dependency``, ``unknown_dependency``, ``cycle``.
    """
    graph, _ = _build(ids, deps)
    errors, conflicts, _ = _graph_issues(graph, ids, deps, files)
    return _report(errors, [], conflicts, strict=strict)


def _graph_issues(
    graph: _Graph,
    ids: Sequence[str],
    deps: Mapping[str, Sequence[str]],
    files: Mapping[str, Sequence[str]] | None,
) -> tuple[list[PlanIssue], list[PlanIssue], list[int] | None]:
    """The graph's errors, its file conflicts, and a topological order (None on a cycle)."""
    errors = [*_duplicate_issues(ids), *_reference_issues(graph.ids, deps, graph.index)]
    components = _strongly_connected(graph)
    errors += _cycle_issues(graph, components)
    conflicts = _file_conflict_issues(graph, components, files) if files else []
    # Tarjan emits dependencies first: without a cycle, its components are the order.
    acyclic = all(len(c) == 1 for c in components)
    order = [c[0] for c in components] if acyclic else None
    return errors, conflicts, order


def _report(
    errors: list[PlanIssue],
    warnings: list[PlanIssue],
    conflicts: list[PlanIssue],
    *,
    strict: bool,
) -> ValidationReport:
    """``strict`` decides one thing only: whether file conflicts are errors or warnings."""
    if strict:
        errors = [*errors, *conflicts]
    else:
        warnings = [*warnings, *conflicts]
    return ValidationReport(valid=not errors, errors=_by_code(errors), warnings=_by_code(warnings))


def require_valid(plan: PlanSpec) -> ValidationReport:
    """Validate ``plan`` (not strict) and raise :class:`PlanInvalid` if it has any error.

    The exception's ``details`` hold the full report as JSON-ready data; its message is one
    line. Returns the report (which may carry warnings) when the plan is valid.
    """
    report = validate(plan)
    if not report.valid:
        raise _invalid(report)
    return report


_REPORT_ORDER: tuple[IssueCode, ...] = (
    "duplicate_id",
    "empty_title",
    "self_dependency",
    "unknown_dependency",
    "cycle",
    "duplicate_requirement",
    "unknown_requirement",
    "uncovered_requirement",
    "unreachable_from_skeleton",
    "too_large",
    "validation_too_early",
    "file_conflict",  # last: it is the one a strict run adds to the errors
)
_CODE_ORDER = {code: n for n, code in enumerate(_REPORT_ORDER)}


def _by_code(issues: list[PlanIssue]) -> list[PlanIssue]:
    """Group issues by kind, keeping plan order within a kind (sort is stable)."""
    return sorted(issues, key=lambda issue: _CODE_ORDER[issue.code])


def _invalid(report: ValidationReport) -> PlanInvalid:
    shown = [issue.message for issue in report.errors[:_MAX_ERRORS_IN_MESSAGE]]
    more = len(report.errors) - len(shown)
    if more:
        shown.append(f"and {more} more")
    count = len(report.errors)
    noun = "error" if count == 1 else "errors"
    return PlanInvalid(
        f"plan is invalid: {count} {noun}: " + "; ".join(shown),
        details=report.model_dump(mode="json"),
    )


def _duplicate_issues(ids: Sequence[str]) -> list[PlanIssue]:
    positions: dict[str, list[int]] = {}
    for n, ticket in enumerate(ids):
        positions.setdefault(ticket, []).append(n)
    return [
        PlanIssue(
            code="duplicate_id",
            tickets=[ticket],
            message=f"ticket id {ticket} is used {len(where)} times "
            f"(tickets[{'], tickets['.join(map(str, where))}])",
        )
        for ticket, where in positions.items()
        if len(where) > 1
    ]


def _reference_issues(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]], index: Mapping[str, int]
) -> list[PlanIssue]:
    issues: list[PlanIssue] = []
    for ticket in ids:
        reported: set[str] = set()  # a dependency listed twice is one problem
        for dep in deps.get(ticket, ()):
            if dep in reported:
                continue
            reported.add(dep)
            if dep == ticket:
                issues.append(
                    PlanIssue(
                        code="self_dependency",
                        tickets=[ticket],
                        message=f"ticket {ticket} depends on itself",
                    )
                )
            elif dep not in index:
                issues.append(
                    PlanIssue(
                        code="unknown_dependency",
                        tickets=[ticket, dep],
                        message=f"ticket {ticket} depends on {dep}, which is not in the plan",
                    )
                )
    return issues


def _cycle_issues(graph: _Graph, components: list[list[int]]) -> list[PlanIssue]:
    """One issue per cyclic component, naming its shortest cycle through its first ticket."""
    cyclic = sorted(min(c) for c in components if len(c) > 1)
    if not cyclic:
        return []
    component_of = _component_of(graph.size, components)
    issues = []
    for start in cyclic:
        path = [graph.ids[i] for i in _cycle_through(graph, start, component_of)]
        issues.append(PlanIssue(code="cycle", tickets=path, message="cycle: " + " -> ".join(path)))
    return issues


def _component_of(n: int, components: list[list[int]]) -> list[int]:
    out = [0] * n
    for c, members in enumerate(components):
        for i in members:
            out[i] = c
    return out


def _cycle_through(graph: _Graph, start: int, component_of: list[int]) -> list[int]:
    """Breadth-first search inside ``start``'s component for the shortest way back to it.

    Every node of a strongly connected component lies on a cycle, so the search always
    succeeds; the path starts and ends with ``start``.
    """
    home = component_of[start]
    came_from = {start: start}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in graph.deps[v]:
            if w == start:
                back = [v]  # from v back to start along the search tree
                while back[-1] != start:
                    back.append(came_from[back[-1]])
                return [*reversed(back), start]
            if component_of[w] == home and w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def normalize_path(path: str) -> str:
    """Light clean-up so spellings of one file compare equal.

    Strips surrounding whitespace, collapses repeated slashes and drops ``.`` segments
    (``./src//a.py`` -> ``src/a.py``). It does not resolve ``..`` or symlinks: plan paths
    are relative to a repository nobody has checked out here.
    """
    collapsed = re.sub(r"/{2,}", "/", path.strip())
    cleaned = "/".join(part for part in collapsed.split("/") if part != ".")
    return cleaned or collapsed


def _file_conflict_issues(
    graph: _Graph, components: list[list[int]], files: Mapping[str, Sequence[str]]
) -> list[PlanIssue]:
    """Pairs of tickets that share a file and that no path orders either way.

    Works on the condensed graph, so it is defined even when there are cycles: tickets in
    one cycle count as ordered (the cycle is reported as an error on its own), and tickets
    that merely depend on a cycle are still checked against each other.
    """
    touching = _tickets_by_file(graph, files)
    if not touching:
        return []
    component_of = _component_of(graph.size, components)
    upstream = _upstream_bitsets(graph, components, component_of)
    shared: dict[tuple[int, int], list[str]] = {}
    for path, tickets in sorted(touching.items()):  # sorted: each pair lists its files sorted
        for earlier, later in _unordered_pairs(tickets, component_of, upstream):
            shared.setdefault((earlier, later), []).append(path)
    return [
        _conflict_issue(graph.ids[a], graph.ids[b], paths)
        for (a, b), paths in sorted(shared.items())
    ]


def _tickets_by_file(graph: _Graph, files: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """Normalized path -> tickets touching it (plan order), for paths with two or more."""
    by_path: dict[str, list[int]] = {}
    for i, ticket in enumerate(graph.ids):
        for path in {normalize_path(p) for p in files.get(ticket, ())} - {""}:
            by_path.setdefault(path, []).append(i)
    return {path: tickets for path, tickets in by_path.items() if len(tickets) > 1}


def _upstream_bitsets(
    graph: _Graph, components: list[list[int]], component_of: list[int]
) -> list[int]:
    """upstream[c]: bit k set iff component c is, or transitively depends on, component k.

    Components come from Tarjan dependencies first, so one pass in that order sees every
    dependency's set complete. Python ints make the sets cheap: a 10,000-ticket plan needs
    about 1.2 kB per set.
    """
    upstream = [0] * len(components)
    for c, members in enumerate(components):
        bits = 1 << c
        for v in members:
            for d in graph.deps[v]:
                bits |= upstream[component_of[d]]
        upstream[c] = bits
    return upstream


def _unordered_pairs(
    tickets: list[int], component_of: list[int], upstream: list[int]
) -> Iterable[tuple[int, int]]:
    """(earlier, later) pairs, in plan order, among ``tickets`` with no path between them.

    A component can only depend on components numbered below it, so for each ticket the
    candidates are the other tickets in lower components that it does not reach. That
    costs a few big-int operations per ticket plus one step per pair found, instead of
    testing every pair: a file that all 10,000 tickets of a chain touch costs nothing.
    """
    at_bit: dict[int, list[int]] = {}
    for i in tickets:
        at_bit.setdefault(component_of[i], []).append(i)
    mask = 0
    for bit in at_bit:
        mask |= 1 << bit
    for i in tickets:
        c = component_of[i]
        loose = mask & ((1 << c) - 1) & ~upstream[c]
        while loose:
            low = loose & -loose
            loose ^= low
            for j in at_bit[low.bit_length() - 1]:
                yield (i, j) if i < j else (j, i)


def _conflict_issue(earlier: str, later: str, paths: list[str]) -> PlanIssue:
    listed = ", ".join(paths)
    noun = "file" if len(paths) == 1 else "files"
    return PlanIssue(
        code="file_conflict",
        tickets=[earlier, later],
        message=f"tickets {earlier} and {later} both touch {noun} {listed} and may run at "
        f"the same time; make {later} depend on {earlier}",
        suggested_edge=(later, earlier),
    )


# -- checks that need the tickets: titles, the skeleton, and those of design.py -------------


def _plan_issues(plan: PlanSpec, graph: _Graph, order: list[int] | None) -> list[PlanIssue]:
    """The errors that need the tickets themselves, not only their ids and edges.

    Each check is one pass over the plan; when nothing is wrong none of them builds an
    issue, so :func:`_plan_dag` can afford them on every schedule.
    """
    issues = [
        PlanIssue(code="empty_title", tickets=[t.id], message=f"ticket {t.id} has no title")
        for t in plan.tickets
        if not t.title.strip()
    ]
    issues += design.requirement_issues(plan)
    if order is not None:
        issues += _unreachable_issues(_first_of_each(plan), graph, order)
    issues += design.too_large_issues(plan)
    return issues


def _first_of_each(plan: PlanSpec) -> list[TicketSpec]:
    """The ticket that stands for each id, aligned with ``_Graph.ids``."""
    first: dict[str, TicketSpec] = {}
    for ticket in plan.tickets:
        first.setdefault(ticket.id, ticket)
    return list(first.values())


def _unreachable_issues(
    tickets: list[TicketSpec], graph: _Graph, order: list[int]
) -> list[PlanIssue]:
    """Non-skeleton tickets that depend on no skeleton ticket, directly or transitively.

    One pass in topological order: a ticket is reached when it is a skeleton ticket or one
    of its dependencies is reached. A ticket with an unknown dependency counts as reached:
    the missing ticket may be the link, and it is an error of its own already. A plan
    without skeleton tickets has nothing to reach from and is not checked.
    """
    skeleton = [t.phase == "skeleton" for t in tickets]
    if not any(skeleton):
        return []
    reached = [False] * graph.size
    for i in order:
        reached[i] = (
            skeleton[i]
            or any(reached[d] for d in graph.deps[i])
            or any(dep not in graph.index for dep in tickets[i].depends_on)
        )
    return [
        PlanIssue(
            code="unreachable_from_skeleton",
            tickets=[t.id],
            message=f"{t.phase} ticket {t.id} does not depend on any skeleton ticket, "
            "directly or through its dependencies",
        )
        for i, t in enumerate(tickets)
        if not reached[i]
    ]


# -- scheduling: waves, upward rank, critical path -------------------------------------------


def _ordered(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]]
) -> tuple[_Graph, list[int]] | None:
    """Index the graph and order it; None if anything stands in the way (dups, unknown or
    self dependencies, cycles)."""
    graph, dropped = _build(ids, deps)
    order = None if dropped else _topological_order(graph)
    return None if order is None else (graph, order)


def _dag(ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> tuple[_Graph, list[int]]:
    """:func:`_ordered`, or raise PlanInvalid with the full report."""
    dag = _ordered(ids, deps)
    if dag is None:
        # The report is only built on this failure path: the happy path is one Kahn pass.
        raise _invalid(validate_graph(ids, deps))
    return dag


def _plan_dag(plan: PlanSpec) -> tuple[_Graph, list[int]]:
    """:func:`_dag` for a plan: also refuses plans with any other error (empty titles,
    requirements, skeleton reachability, sizes).

    Without ``strict``, file conflicts are only warnings and never make a plan invalid, so
    this skips them and stays cheap even when the store asks for ranks right after it called
    :func:`require_valid`.
    """
    dag = _ordered(*_plain(plan)[:2])
    if dag is None or _plan_issues(plan, *dag):
        raise _invalid(validate(plan))
    return dag


def waves_of(ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Topological generations: wave 0 has no dependencies, wave k+1 depends on wave <= k.

    Ids keep plan order within a wave. Raises :class:`PlanInvalid` on duplicate ids,
    unknown or self dependencies and cycles.
    """
    graph, order = _dag(ids, deps)
    return _waves(graph, order)


def _waves(graph: _Graph, order: list[int]) -> list[list[str]]:
    level = [0] * graph.size
    for i in order:
        level[i] = max((level[d] + 1 for d in graph.deps[i]), default=0)
    out: list[list[str]] = [[] for _ in range(max(level, default=-1) + 1)]
    for i, ticket in enumerate(graph.ids):  # plan order within each wave
        out[level[i]].append(ticket)
    return out


def upward_rank_of(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]], estimate: Mapping[str, float]
) -> dict[str, float]:
    """rank(t) = estimate(t) + max(rank of t's dependents, default 0), for every ticket.

    The rank is the estimated length of the longest path from ``t`` to the end of the plan;
    scheduling higher ranks first keeps the critical path moving. Raises
    :class:`PlanInvalid` like :func:`waves_of`.
    """
    graph, order = _dag(ids, deps)
    rank = _ranks(graph, order, estimate)
    return {ticket: rank[i] for i, ticket in enumerate(graph.ids)}


def _ranks(graph: _Graph, order: list[int], estimate: Mapping[str, float]) -> list[float]:
    dependents = graph.dependents()
    rank = [0.0] * graph.size
    for i in reversed(order):  # dependents before the tickets they depend on
        below = max((rank[j] for j in dependents[i]), default=0.0)
        rank[i] = float(estimate[graph.ids[i]]) + below
    return rank


def critical_path_of(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]], estimate: Mapping[str, float]
) -> tuple[list[str], float]:
    """The source-to-sink path with the largest sum of estimates, and that sum.

    Ties go to the ticket earlier in plan order. An empty plan gives ``([], 0.0)``. Raises
    :class:`PlanInvalid` like :func:`waves_of`.
    """
    graph, order = _dag(ids, deps)
    return _critical_path(graph, _ranks(graph, order, estimate))


def _critical_path(graph: _Graph, rank: list[float]) -> tuple[list[str], float]:
    sources = [i for i in range(graph.size) if not graph.deps[i]]
    if not sources:
        return [], 0.0
    # max() keeps the first of equal values, and both lists are in plan order.
    current = max(sources, key=lambda i: rank[i])
    length = rank[current]
    dependents = graph.dependents()
    path = [graph.ids[current]]
    while dependents[current]:
        current = max(dependents[current], key=lambda j: rank[j])
        path.append(graph.ids[current])
    return path, length


def waves_report_of(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]], estimate: Mapping[str, float]
) -> WavesReport:
    """Waves and critical path together, as the API and ``swarm waves`` show them."""
    return _waves_report(*_dag(ids, deps), estimate)


def _waves_report(graph: _Graph, order: list[int], estimate: Mapping[str, float]) -> WavesReport:
    path, length = _critical_path(graph, _ranks(graph, order, estimate))
    return WavesReport(
        waves=[Wave(index=n, tickets=w) for n, w in enumerate(_waves(graph, order))],
        critical_path=path,
        critical_length=length,
    )


def _plain(plan: PlanSpec) -> tuple[list[str], dict[str, list[str]], dict[str, float]]:
    """A plan as the generic functions take it; repeated ids are caught by :func:`_build`."""
    ids = [t.id for t in plan.tickets]
    deps = {t.id: t.depends_on for t in plan.tickets}
    estimate = {t.id: t.estimate for t in plan.tickets}
    return ids, deps, estimate


def waves(plan: PlanSpec) -> list[list[str]]:
    """:func:`waves_of` for a plan; raises :class:`PlanInvalid` if the plan has errors."""
    return _waves(*_plan_dag(plan))


def upward_rank(plan: PlanSpec) -> dict[str, float]:
    """:func:`upward_rank_of` for a plan; raises :class:`PlanInvalid` if it has errors."""
    graph, order = _plan_dag(plan)
    rank = _ranks(graph, order, _plain(plan)[2])
    return {ticket: rank[i] for i, ticket in enumerate(graph.ids)}


def critical_path(plan: PlanSpec) -> tuple[list[str], float]:
    """:func:`critical_path_of` for a plan; raises :class:`PlanInvalid` if it has errors."""
    graph, order = _plan_dag(plan)
    return _critical_path(graph, _ranks(graph, order, _plain(plan)[2]))


def waves_report(plan: PlanSpec) -> WavesReport:
    """:func:`waves_report_of` for a plan; raises :class:`PlanInvalid` if it has errors."""
    return _waves_report(*_plan_dag(plan), _plain(plan)[2])
