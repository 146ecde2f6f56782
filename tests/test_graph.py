"""Validation, waves, upward rank and critical path over the ticket DAG."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmstack.errors import PlanInvalid
from swarmstack.tickets.graph import (
    critical_path,
    critical_path_of,
    normalize_path,
    require_valid,
    upward_rank,
    upward_rank_of,
    validate,
    validate_graph,
    waves,
    waves_of,
    waves_report,
    waves_report_of,
)
from swarmstack.tickets.models import PlanSpec, TicketSpec, ValidationReport


def ticket(
    id: str,
    deps: Sequence[str] = (),
    files: Sequence[str] = (),
    estimate: float = 1.0,
    title: str | None = None,
) -> TicketSpec:
    return TicketSpec(
        id=id,
        title=f"ticket {id}" if title is None else title,
        depends_on=list(deps),
        files=list(files),
        estimate=estimate,
    )


def plan(*tickets: TicketSpec) -> PlanSpec:
    return PlanSpec(title="test plan", tickets=list(tickets))


def codes(report: ValidationReport) -> list[str]:
    return [issue.code for issue in report.errors]


# -- each validation code --------------------------------------------------------------------


def test_a_clean_plan_is_valid() -> None:
    report = validate(plan(ticket("A"), ticket("B", ["A"]), ticket("C", ["A", "B"])))
    assert report == ValidationReport(valid=True)


def test_empty_plan_is_valid() -> None:
    empty = plan()
    assert validate(empty).valid
    assert waves(empty) == []
    assert critical_path(empty) == ([], 0.0)
    assert upward_rank(empty) == {}


def test_duplicate_id() -> None:
    report = validate(plan(ticket("A"), ticket("B"), ticket("A"), ticket("A")))
    [issue] = report.errors
    assert issue.code == "duplicate_id"
    assert issue.tickets == ["A"]
    assert "3 times" in issue.message
    assert "tickets[0], tickets[2], tickets[3]" in issue.message


def test_unknown_dependency_names_ticket_and_dependency() -> None:
    report = validate(plan(ticket("A", ["X", "Y", "X"])))
    assert codes(report) == ["unknown_dependency", "unknown_dependency"]  # X once, not twice
    assert [issue.tickets for issue in report.errors] == [["A", "X"], ["A", "Y"]]


def test_self_dependency_is_not_also_a_cycle() -> None:
    report = validate(plan(ticket("A", ["A"])))
    assert codes(report) == ["self_dependency"]
    assert report.errors[0].tickets == ["A"]


@pytest.mark.parametrize("title", ["", "   ", "\t\n"])
def test_empty_title(title: str) -> None:
    report = validate(plan(ticket("A", title=title), ticket("B")))
    assert codes(report) == ["empty_title"]
    assert report.errors[0].tickets == ["A"]


def test_cycle_names_its_path() -> None:
    report = validate(plan(ticket("A", ["B"]), ticket("B", ["C"]), ticket("C", ["A"])))
    [issue] = report.errors
    assert issue.code == "cycle"
    assert issue.tickets == ["A", "B", "C", "A"]
    assert issue.message == "cycle: A -> B -> C -> A"


def test_cycle_starts_at_the_first_ticket_in_plan_order() -> None:
    report = validate(plan(ticket("C", ["A"]), ticket("A", ["B"]), ticket("B", ["C"])))
    assert report.errors[0].tickets == ["C", "A", "B", "C"]


def test_one_cycle_per_strongly_connected_component() -> None:
    report = validate(
        plan(
            # one component {A, B, C, D} with two cycles through A: the shorter is named
            ticket("A", ["B", "D"]),
            ticket("B", ["C"]),
            ticket("C", ["A"]),
            ticket("D", ["A"]),
            # a second, separate component
            ticket("E", ["F"]),
            ticket("F", ["E"]),
            # tickets hanging off the cycles are not part of them
            ticket("G", ["A", "E"]),
        )
    )
    assert [issue.tickets for issue in report.errors] == [["A", "D", "A"], ["E", "F", "E"]]


def test_file_conflict_is_a_warning_with_a_suggested_edge() -> None:
    report = validate(plan(ticket("A", files=["src/x.py"]), ticket("B", files=["src/x.py"])))
    assert report.valid
    [issue] = report.warnings
    assert issue.code == "file_conflict"
    assert issue.tickets == ["A", "B"]
    assert issue.suggested_edge == ("B", "A")  # B, later in the plan, should depend on A
    assert "src/x.py" in issue.message


def test_file_conflict_is_an_error_when_strict() -> None:
    report = validate(
        plan(ticket("A", files=["a.py"]), ticket("B", ["Z"], files=["a.py"])), strict=True
    )
    assert not report.valid
    assert report.warnings == []
    assert codes(report) == ["unknown_dependency", "file_conflict"]


def test_one_conflict_per_pair_listing_every_shared_file() -> None:
    report = validate(
        plan(
            ticket("A", files=["b.py", "a.py", "c.py"]),
            ticket("B", files=["a.py", "b.py"]),
        )
    )
    [issue] = report.warnings
    assert "files a.py, b.py and" in issue.message


def test_ordered_tickets_do_not_conflict() -> None:
    report = validate(
        plan(
            ticket("A", files=["x.py"]),
            ticket("B", ["A"]),
            ticket("C", ["B"], files=["x.py"]),  # transitively after A
            ticket("D", files=["y.py", "y.py"]),  # a file listed twice is not a conflict
        )
    )
    assert report == ValidationReport(valid=True)


def test_suggested_edge_follows_plan_order_not_dependency_order() -> None:
    report = validate(
        plan(
            ticket("Late", ["Base"], files=["f.py"]),
            ticket("Base"),
            ticket("Early", files=["./f.py"]),
        )
    )
    [issue] = report.warnings
    assert issue.tickets == ["Late", "Early"]
    assert issue.suggested_edge == ("Early", "Late")


def test_paths_are_normalized_before_comparing() -> None:
    report = validate(
        plan(ticket("A", files=["./src//pkg/./a.py"]), ticket("B", files=["src/pkg/a.py"]))
    )
    assert len(report.warnings) == 1
    assert "src/pkg/a.py" in report.warnings[0].message


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("./src/a.py", "src/a.py"),
        ("src//a.py", "src/a.py"),
        ("src/./a.py", "src/a.py"),
        (" src/a.py ", "src/a.py"),
        ("/abs//a.py", "/abs/a.py"),
        ("../up/a.py", "../up/a.py"),
        ("src/", "src/"),
    ],
)
def test_normalize_path(raw: str, clean: str) -> None:
    assert normalize_path(raw) == clean


def test_file_conflicts_are_checked_around_cycles() -> None:
    report = validate(
        plan(
            ticket("A", ["B"], files=["cyc.py"]),
            ticket("B", ["A"], files=["cyc.py"]),  # same cycle: not reported twice
            ticket("C", ["A"], files=["x.py"]),
            ticket("D", ["A"], files=["x.py"]),  # both downstream of the cycle, unordered
        )
    )
    assert codes(report) == ["cycle"]
    [issue] = report.warnings
    assert issue.tickets == ["C", "D"]


def test_every_problem_at_once() -> None:
    report = validate(
        plan(
            ticket("A", ["A", "Missing"], files=["shared.py"]),
            ticket("B", ["C"], title=" "),
            ticket("C", ["D"]),
            ticket("D", ["B"]),
            ticket("A"),
            ticket("E", files=["shared.py"]),
        )
    )
    assert codes(report) == [
        "duplicate_id",
        "empty_title",
        "self_dependency",
        "unknown_dependency",
        "cycle",
    ]
    assert report.errors[-1].tickets == ["B", "C", "D", "B"]
    assert [w.tickets for w in report.warnings] == [["A", "E"]]


# -- require_valid and the scheduling functions ----------------------------------------------


def test_require_valid_returns_the_report_with_warnings() -> None:
    report = require_valid(plan(ticket("A", files=["f"]), ticket("B", files=["f"])))
    assert report.valid
    assert len(report.warnings) == 1


@pytest.mark.parametrize("fn", [require_valid, waves, upward_rank, critical_path, waves_report])
def test_invalid_plans_raise_plan_invalid(fn: Callable[[PlanSpec], object]) -> None:
    bad = plan(ticket("A", ["B"]), ticket("B", ["A"]), ticket("C", title=""))
    with pytest.raises(PlanInvalid) as caught:
        fn(bad)
    exc = caught.value
    assert exc.exit_code == 1
    assert "\n" not in exc.message
    assert "cycle: A -> B -> A" in exc.message
    assert [e["code"] for e in exc.details["errors"]] == ["empty_title", "cycle"]


def test_plan_invalid_message_is_capped() -> None:
    bad = plan(*[ticket(f"T{i}", ["nowhere"]) for i in range(20)])
    with pytest.raises(PlanInvalid) as caught:
        waves(bad)
    assert caught.value.message.startswith("plan is invalid: 20 errors: ")
    assert caught.value.message.endswith("and 15 more")
    assert len(caught.value.details["errors"]) == 20


# A hand-checked DAG:
#
#   A(2) ──> B(3) ──> D(4)        E(1) ──> F(2)
#     └────> C(1) ──┘
#
# waves: [A, E], [B, C, F], [D]
# rank:  D=4, B=3+4=7, C=1+4=5, A=2+max(7,5)=9, F=2, E=1+2=3
# critical path: A, B, D = 9
DIAMOND = plan(
    ticket("A", estimate=2),
    ticket("B", ["A"], estimate=3),
    ticket("C", ["A"], estimate=1),
    ticket("D", ["B", "C"], estimate=4),
    ticket("E", estimate=1),
    ticket("F", ["E"], estimate=2),
)


def test_waves() -> None:
    assert waves(DIAMOND) == [["A", "E"], ["B", "C", "F"], ["D"]]


def test_upward_rank() -> None:
    assert upward_rank(DIAMOND) == {"A": 9, "B": 7, "C": 5, "D": 4, "E": 3, "F": 2}


def test_critical_path() -> None:
    assert critical_path(DIAMOND) == (["A", "B", "D"], 9.0)


def test_waves_report() -> None:
    report = waves_report(DIAMOND)
    assert [(w.index, w.tickets) for w in report.waves] == [
        (0, ["A", "E"]),
        (1, ["B", "C", "F"]),
        (2, ["D"]),
    ]
    assert (report.critical_path, report.critical_length, report.plan_id) == (
        ["A", "B", "D"],
        9.0,
        None,
    )


def test_critical_path_ties_go_to_plan_order() -> None:
    tied = plan(
        ticket("S"),
        ticket("X", ["S"]),
        ticket("Y", ["S"]),
        ticket("T", estimate=2),  # a second source with the same total
    )
    assert critical_path(tied) == (["S", "X"], 2.0)


def test_waves_keep_plan_order_not_id_order() -> None:
    assert waves(plan(ticket("z"), ticket("a"), ticket("m", ["z"]))) == [["z", "a"], ["m"]]


def test_generic_versions_work_on_plain_data() -> None:
    ids = ["A", "B", "C"]
    deps = {"B": ["A"], "C": ["A"]}  # A absent from deps: no dependencies
    estimate = {"A": 1.0, "B": 5.0, "C": 2.0}
    assert waves_of(ids, deps) == [["A"], ["B", "C"]]
    assert upward_rank_of(ids, deps, estimate) == {"A": 6.0, "B": 5.0, "C": 2.0}
    assert critical_path_of(ids, deps, estimate) == (["A", "B"], 6.0)
    assert waves_report_of(ids, deps, estimate).critical_length == 6.0
    report = validate_graph(ids, deps, {"B": ["f"], "C": ["./f"]})
    assert report.valid
    assert [w.suggested_edge for w in report.warnings] == [("C", "B")]
    # B depends on A, which is in a cycle with C: B comes after C, so no conflict.
    report = validate_graph(ids, {**deps, "A": ["C"]}, {"B": ["f"], "C": ["f"]})
    assert codes(report) == ["cycle"]
    assert report.warnings == []
    with pytest.raises(PlanInvalid, match="not in the plan"):
        waves_of(["A"], {"A": ["B"]})
    with pytest.raises(PlanInvalid, match="used 2 times"):
        upward_rank_of(["A", "A"], {}, {"A": 1.0})


# -- large plans: correctness only; timing belongs to the benchmarks --------------------------

N = 10_000


def test_long_chain() -> None:
    chain = plan(
        *[
            ticket(f"T{i}", [f"T{i - 1}"] if i else [], files=["pyproject.toml", f"src/m{i}.py"])
            for i in range(N)
        ]
    )
    assert validate(chain, strict=True) == ValidationReport(valid=True)
    assert len(waves(chain)) == N
    path, length = critical_path(chain)
    assert path == [f"T{i}" for i in range(N)]
    assert length == N
    assert upward_rank(chain)["T0"] == N


def test_long_cycle() -> None:
    ring = plan(*[ticket(f"T{i}", [f"T{(i + 1) % N}"]) for i in range(N)])
    [issue] = validate(ring).errors
    assert issue.code == "cycle"
    assert issue.tickets == [*(f"T{i}" for i in range(N)), "T0"]


def random_dag(n: int, seed: int) -> PlanSpec:
    """A random DAG with a backbone that shares one file and exactly one known conflict.

    Ticket i depends on up to three random earlier tickets; every tenth ticket also
    depends on the previous tenth and touches pyproject.toml (ordered: no conflict). Two
    free-standing tickets share src/shared.py: the only conflict.
    """
    rng = random.Random(seed)
    tickets = []
    for i in range(n):
        deps = {f"T{rng.randrange(i)}" for _ in range(rng.randint(0, 3))} if i else set()
        files = [f"src/mod{i}.py"]
        if i % 10 == 0:
            files.append("pyproject.toml")
            if i:
                deps.add(f"T{i - 10}")
        tickets.append(ticket(f"T{i}", sorted(deps), files, estimate=rng.randint(1, 5)))
    tickets += [ticket("X1", files=["src/shared.py"]), ticket("X2", files=["./src/shared.py"])]
    return plan(*tickets)


def test_large_random_dag() -> None:
    dag = random_dag(N, seed=7)
    report = validate(dag)
    assert report.valid
    [issue] = report.warnings
    assert issue.suggested_edge == ("X2", "X1")
    assert_schedule_consistent(dag)


# -- file conflicts against brute force ------------------------------------------------------


def brute_force_conflicts(spec: PlanSpec) -> set[tuple[str, str]]:
    deps = {t.id: set(t.depends_on) for t in spec.tickets}
    upstream: dict[str, set[str]] = {}
    for t in spec.tickets:  # plans below list dependencies first
        upstream[t.id] = set().union(*[upstream[d] | {d} for d in deps[t.id]])
    pairs = set()
    for a, b in combinations(spec.tickets, 2):
        shared = {normalize_path(f) for f in a.files} & {normalize_path(f) for f in b.files}
        if shared and a.id not in upstream[b.id] and b.id not in upstream[a.id]:
            pairs.add((a.id, b.id))
    return pairs


@pytest.mark.parametrize("seed", range(5))
def test_file_conflicts_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    tickets = []
    for i in range(150):
        deps = sorted({f"T{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        files = [f"f{rng.randrange(40)}" for _ in range(rng.randint(0, 3))]
        tickets.append(ticket(f"T{i}", deps, files))
    spec = plan(*tickets)
    found = {(w.tickets[0], w.tickets[1]) for w in validate(spec).warnings}
    assert found == brute_force_conflicts(spec)


# -- property: waves and ranks respect every edge --------------------------------------------


def assert_schedule_consistent(spec: PlanSpec) -> None:
    wave_of = {t: n for n, wave in enumerate(waves(spec)) for t in wave}
    assert sorted(wave_of) == sorted(t.id for t in spec.tickets)
    rank = upward_rank(spec)
    estimate = {t.id: t.estimate for t in spec.tickets}
    for t in spec.tickets:
        assert rank[t.id] >= estimate[t.id]
        for d in t.depends_on:
            assert wave_of[t.id] > wave_of[d]
            assert rank[d] >= estimate[d] + rank[t.id]
    path, length = critical_path(spec)
    assert length == max(rank.values(), default=0.0)
    assert sum(estimate[t] for t in path) == pytest.approx(length)


@st.composite
def dags(draw: st.DrawFn) -> PlanSpec:
    n = draw(st.integers(min_value=0, max_value=25))
    names = draw(st.permutations([f"t{i}" for i in range(n)]))
    tickets = []
    for i in range(n):
        earlier = draw(st.lists(st.integers(0, i - 1), max_size=4, unique=True)) if i else []
        estimate = draw(st.floats(min_value=0.01, max_value=100, allow_nan=False))
        tickets.append(ticket(names[i], [names[j] for j in earlier], estimate=estimate))
    order = draw(st.permutations(range(n)))  # plan order need not be topological
    return plan(*[tickets[k] for k in order])


@settings(max_examples=200, deadline=None)
@given(dags())
def test_waves_and_ranks_respect_every_edge(spec: PlanSpec) -> None:
    assert validate(spec).valid
    assert_schedule_consistent(spec)
