"""The design checks a plan must pass: requirements, reachability from the skeleton, sizes.

Two tiers: the hand-written plans under ``tests/plans/`` (one per class of defect) go through
``swarm plan validate`` in a real subprocess, and :func:`validate` is tested on each check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import pytest

from swarmstack.errors import PlanInvalid, UsageError
from swarmstack.tickets.graph import _REPORT_ORDER, require_valid, validate, waves, waves_report
from swarmstack.tickets.models import (
    IssueCode,
    Phase,
    PlanIssue,
    PlanSpec,
    Requirement,
    TicketSpec,
    ValidationReport,
)
from swarmstack.tickets.plan import load_plan, parse_plan

PLANS = Path(__file__).parent / "plans"
BAD = PLANS / "bad"
GOOD = PLANS / "good.yaml"


def swarm_validate(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmstack", "plan", "validate", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def validate_json(path: Path, *args: str, exit_code: int) -> dict[str, Any]:
    result = swarm_validate(path, "--json", *args)
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert result.stderr == ""
    body: dict[str, Any] = json.loads(result.stdout)
    return body


# -- the bad plans, through the CLI ----------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    """What ``swarm plan validate --json`` must report for one file under ``tests/plans/bad``.

    ``issues`` holds ``(tickets, requirements)`` of every issue, in report order. A warning
    leaves the plan valid; ``strict`` makes it an error under ``--strict``.
    """

    file: str
    code: IssueCode
    issues: list[tuple[list[str], list[str]]]
    level: Literal["error", "warning"] = "error"
    strict: bool = False


DEFECTS = [
    Defect("cycle.yaml", "cycle", [(["model", "storage", "model"], [])]),
    Defect("unknown_dependency.json", "unknown_dependency", [(["routes", "model"], [])]),
    Defect("self_dependency.yaml", "self_dependency", [(["model"], [])]),
    Defect("duplicate_id.json", "duplicate_id", [(["routes"], [])]),
    Defect("empty_title.yaml", "empty_title", [(["storage"], [])]),
    Defect(
        "file_conflict.yaml",
        "file_conflict",
        [(["list-routes", "item-routes"], [])],
        level="warning",
        strict=True,
    ),
    Defect("duplicate_requirement.yaml", "duplicate_requirement", [([], ["R1"])]),
    Defect("unknown_requirement.yaml", "unknown_requirement", [(["item-routes"], ["R3"])]),
    Defect("uncovered_requirement.json", "uncovered_requirement", [([], ["R3"])]),
    Defect(
        "unreachable_from_skeleton.yaml",
        "unreachable_from_skeleton",
        [(["readme"], []), (["docs-site"], [])],
    ),
    Defect("too_large.yaml", "too_large", [(["routes"], [])]),
    Defect("validation_too_early.yaml", "validation_too_early", [(["smoke"], [])], "warning"),
]
UNPARSABLE = "malformed.json"


def involved(issues: list[dict[str, Any]]) -> list[tuple[list[str], list[str]]]:
    return [(issue["tickets"], issue["requirements"]) for issue in issues]


def assert_only(issues: list[dict[str, Any]], defect: Defect) -> None:
    assert {issue["code"] for issue in issues} == {defect.code}, issues
    assert involved(issues) == defect.issues
    for issue in issues:
        assert issue["message"]
        assert "\n" not in issue["message"]


def test_every_bad_plan_is_checked() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted([*(d.file for d in DEFECTS), UNPARSABLE])


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.file)
def test_bad_plan(defect: Defect) -> None:
    path = BAD / defect.file
    if defect.level == "error":
        body = validate_json(path, exit_code=1)
        assert body["valid"] is False
        assert body["warnings"] == []
        assert_only(body["errors"], defect)
    else:
        body = validate_json(path, exit_code=0)
        assert body["valid"] is True
        assert body["errors"] == []
        assert_only(body["warnings"], defect)
    if defect.strict:
        body = validate_json(path, "--strict", exit_code=1)
        assert body["warnings"] == []
        assert_only(body["errors"], defect)


def test_a_file_that_does_not_parse_is_unusable_input() -> None:
    result = swarm_validate(BAD / UNPARSABLE, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert result.stderr.startswith("error: ")
    assert f"{UNPARSABLE}: not valid JSON" in result.stderr


def test_the_good_plan_passes_every_check() -> None:
    body = validate_json(GOOD, "--strict", exit_code=0)
    assert body == {"valid": True, "errors": [], "warnings": []}

    spec = load_plan(GOOD)
    assert spec.requirements
    assert spec.max_estimate is not None
    assert len(spec.tickets) >= 8
    assert len(waves(spec)) >= 3
    phases = [t.phase for t in spec.tickets]
    assert phases[0] == "skeleton"
    assert set(phases) == set(get_args(Phase))
    listed = {r.id for r in spec.requirements}
    assert set().union(*(t.covers for t in spec.tickets)) == listed


# -- the new fields --------------------------------------------------------------------------


def test_plans_without_the_new_fields_read_as_before() -> None:
    spec = parse_plan('{"title": "x", "tickets": [{"id": "A", "title": "a"}]}', fmt="json")
    assert spec.requirements == []
    assert spec.max_estimate is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "max_estimate: must be > 0, got 0"),
        ("10001", "max_estimate: must be <= 10000, got 10001"),
        ("'3'", "max_estimate: value error, must be a number"),  # as for every number field
        ("true", "max_estimate: value error, must be a number"),
    ],
)
def test_max_estimate_bounds(value: str, problem: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_plan(f"title: x\nmax_estimate: {value}\ntickets: []\n", source="p.yaml")
    assert caught.value.message == f"p.yaml: {problem}"


def test_requirement_fields_are_checked_like_ticket_fields() -> None:
    text = "title: x\nrequirements:\n  - {id: '', text: a}\n  - {id: R2, txt: b}\ntickets: []\n"
    with pytest.raises(UsageError) as caught:
        parse_plan(text, source="p.yaml")
    assert caught.value.details == {
        "problems": [
            "requirements[0].id: must not be empty",
            "requirements[1]: missing required field 'text'",
            "requirements[1]: unknown field 'txt' (did you mean 'text'?)",
        ]
    }


def test_issue_json_only_gains_an_optional_field() -> None:
    old = {"code": "cycle", "tickets": ["A", "B", "A"], "message": "cycle: A -> B -> A"}
    issue = PlanIssue.model_validate(old)
    assert issue.requirements == []
    assert issue.model_dump(mode="json") == {**old, "suggested_edge": None, "requirements": []}


def test_every_code_has_a_place_in_the_report() -> None:
    assert sorted(_REPORT_ORDER) == sorted(get_args(IssueCode))


# -- validate, check by check ----------------------------------------------------------------


def ticket(
    id: str,
    deps: list[str] | None = None,
    *,
    phase: Phase = "expansion",
    covers: list[str] | None = None,
    estimate: float = 1.0,
) -> TicketSpec:
    return TicketSpec(
        id=id,
        title=f"ticket {id}",
        phase=phase,
        depends_on=deps or [],
        covers=covers or [],
        estimate=estimate,
    )


def plan(
    *tickets: TicketSpec,
    requirements: list[str] | None = None,
    max_estimate: float | None = None,
) -> PlanSpec:
    return PlanSpec(
        title="test plan",
        requirements=[Requirement(id=r, text=f"requirement {r}") for r in requirements or []],
        max_estimate=max_estimate,
        tickets=list(tickets),
    )


def codes(issues: list[PlanIssue]) -> list[str]:
    return [issue.code for issue in issues]


def test_without_a_requirements_list_covers_is_free_form() -> None:
    spec = plan(ticket("A", covers=["R1", "anything at all"]), ticket("B", ["A"]))
    assert validate(spec, strict=True) == ValidationReport(valid=True)


def test_duplicate_requirement() -> None:
    spec = plan(ticket("A", covers=["R1", "R2"]), requirements=["R1", "R2", "R1", "R1"])
    [issue] = validate(spec).errors
    assert issue.code == "duplicate_requirement"
    assert (issue.tickets, issue.requirements) == ([], ["R1"])
    assert issue.message == (
        "requirement id R1 is listed 3 times (requirements[0], requirements[2], requirements[3])"
    )


def test_unknown_requirement_once_per_ticket_and_id() -> None:
    spec = plan(
        ticket("A", covers=["R1", "R9", "R9"]),
        ticket("B", covers=["R8", "R9"]),
        requirements=["R1"],
    )
    report = validate(spec)
    assert codes(report.errors) == ["unknown_requirement"] * 3
    assert [(i.tickets, i.requirements) for i in report.errors] == [
        (["A"], ["R9"]),
        (["B"], ["R8"]),
        (["B"], ["R9"]),
    ]
    assert (
        report.errors[0].message
        == "ticket A covers R9, which is not one of the plan's requirements"
    )


def test_uncovered_requirement() -> None:
    spec = plan(
        ticket("A", covers=["R1"]),
        ticket("A", covers=["R2"]),  # a duplicate ticket still covers what it names
        requirements=["R1", "R2", "R3", "R4"],
    )
    report = validate(spec)
    assert codes(report.errors) == [
        "duplicate_id",
        "uncovered_requirement",
        "uncovered_requirement",
    ]
    uncovered = report.errors[1:]
    assert [(i.tickets, i.requirements) for i in uncovered] == [([], ["R3"]), ([], ["R4"])]
    assert "R3" in uncovered[0].message


def test_every_listed_requirement_covered_is_valid() -> None:
    spec = plan(
        ticket("A", covers=["R1"]),
        ticket("B", ["A"], covers=["R2", "R1"]),
        requirements=["R1", "R2"],
    )
    assert validate(spec) == ValidationReport(valid=True)


def test_reachability_from_the_skeleton_is_transitive() -> None:
    spec = plan(
        ticket("S", phase="skeleton"),
        ticket("T", phase="skeleton"),  # skeleton tickets need no dependencies
        ticket("A", ["S"]),
        ticket("B", ["A"]),
        ticket("V", ["B", "Loose"], phase="validation"),  # one reached dependency is enough
        ticket("Loose"),
    )
    [issue] = validate(spec).errors
    assert issue.code == "unreachable_from_skeleton"
    assert issue.tickets == ["Loose"]
    assert issue.message == (
        "expansion ticket Loose does not depend on any skeleton ticket, directly or through "
        "its dependencies"
    )


def test_unreachable_tickets_downstream_are_reported_too() -> None:
    spec = plan(
        ticket("S", phase="skeleton"),
        ticket("C", ["B"]),
        ticket("B", ["A"]),
        ticket("A"),
        ticket("V", ["C"], phase="validation"),
    )
    report = validate(spec)
    assert codes(report.errors) == ["unreachable_from_skeleton"] * 4
    assert [i.tickets for i in report.errors] == [["C"], ["B"], ["A"], ["V"]]  # plan order


def test_no_skeleton_no_reachability_check() -> None:
    spec = plan(ticket("A"), ticket("B"), ticket("V", ["A", "B"], phase="validation"))
    assert validate(spec) == ValidationReport(valid=True)


def test_reachability_waits_for_the_cycle_to_be_fixed() -> None:
    spec = plan(ticket("S", phase="skeleton"), ticket("A", ["B"]), ticket("B", ["A"]))
    assert codes(validate(spec).errors) == ["cycle"]


def test_an_unknown_dependency_may_be_the_missing_link() -> None:
    spec = plan(ticket("S", phase="skeleton"), ticket("A", ["Missing"]), ticket("B", ["A"]))
    assert codes(validate(spec).errors) == ["unknown_dependency"]


def test_a_self_dependency_is_no_link() -> None:
    spec = plan(ticket("S", phase="skeleton"), ticket("A", ["A"]), ticket("B", ["A", "S"]))
    report = validate(spec)
    assert codes(report.errors) == ["self_dependency", "unreachable_from_skeleton"]
    assert report.errors[1].tickets == ["A"]


def test_validation_too_early_is_a_warning_even_when_strict() -> None:
    spec = plan(
        ticket("A"), ticket("V", phase="validation"), ticket("W", ["A"], phase="validation")
    )
    for strict in (False, True):
        report = validate(spec, strict=strict)
        assert report.valid
        assert report.errors == []
        [issue] = report.warnings
        assert issue.code == "validation_too_early"
        assert issue.tickets == ["V"]


def test_warnings_come_grouped_by_code() -> None:
    spec = PlanSpec(
        title="t",
        tickets=[
            TicketSpec(id="A", title="a", files=["f.py"]),
            TicketSpec(id="B", title="b", files=["f.py"]),
            TicketSpec(id="V", title="v", phase="validation"),
        ],
    )
    assert codes(validate(spec).warnings) == ["validation_too_early", "file_conflict"]


def test_too_large() -> None:
    spec = plan(
        ticket("A", estimate=4),  # at the limit is fine
        ticket("B", ["A"], estimate=4.5),
        ticket("C", ["A"], estimate=40),
        max_estimate=4,
    )
    report = validate(spec)
    assert codes(report.errors) == ["too_large", "too_large"]
    assert [i.tickets for i in report.errors] == [["B"], ["C"]]
    assert report.errors[0].message == (
        "ticket B has estimate 4.5, more than the plan's max_estimate of 4; split it"
    )


def test_without_max_estimate_any_estimate_goes() -> None:
    assert validate(plan(ticket("A", estimate=10_000))).valid


def test_new_errors_come_after_the_graph_errors_in_a_fixed_order() -> None:
    spec = plan(
        ticket("S", phase="skeleton", covers=["R1"]),
        ticket("A", ["Nope"], estimate=9),
        ticket("B", covers=["R7"]),
        ticket("B"),
        requirements=["R1", "R1", "R2"],
        max_estimate=5,
    )
    assert codes(validate(spec).errors) == [
        "duplicate_id",
        "unknown_dependency",
        "duplicate_requirement",
        "unknown_requirement",
        "uncovered_requirement",
        "unreachable_from_skeleton",
        "too_large",
    ]


def test_scheduling_refuses_plans_with_the_new_errors() -> None:
    uncovered = plan(ticket("A", covers=["R1"]), requirements=["R1", "R2"])
    unreachable = plan(ticket("S", phase="skeleton"), ticket("A"))
    too_large = plan(ticket("A", estimate=3), max_estimate=2)
    for spec, code in [
        (uncovered, "uncovered_requirement"),
        (unreachable, "unreachable_from_skeleton"),
        (too_large, "too_large"),
    ]:
        for fn in (require_valid, waves, waves_report):
            with pytest.raises(PlanInvalid) as caught:
                fn(spec)
            assert [e["code"] for e in caught.value.details["errors"]] == [code]


# -- a large plan using every check: correctness only, timing belongs to the benchmarks ------

N = 10_000


def test_a_large_plan_with_requirements_and_a_skeleton() -> None:
    requirements = [f"R{k}" for k in range(N // 10)]
    tickets = [ticket("T0", phase="skeleton", estimate=2)]
    tickets += [
        ticket(f"T{i}", [f"T{i - 1}", "T0"], covers=[f"R{i % len(requirements)}"], estimate=2)
        for i in range(1, N - 1)
    ]
    tickets.append(ticket("check", [f"T{N - 2}"], phase="validation", covers=requirements))
    spec = plan(*tickets, requirements=requirements, max_estimate=2)
    assert validate(spec, strict=True) == ValidationReport(valid=True)
    assert len(waves(spec)) == N

    stray = plan(*tickets, ticket("stray"), requirements=[*requirements, "R-new"], max_estimate=2)
    report = validate(stray)
    assert [(i.code, i.tickets, i.requirements) for i in report.errors] == [
        ("uncovered_requirement", [], ["R-new"]),
        ("unreachable_from_skeleton", ["stray"], []),
    ]
