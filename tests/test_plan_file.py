"""Reading plan files and the ``swarm plan validate`` / ``waves`` commands."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from swarmstack.cli.main import app
from swarmstack.cli.plan import waves_command
from swarmstack.errors import UsageError
from swarmstack.tickets.graph import validate
from swarmstack.tickets.plan import load_plan, parse_plan

EXAMPLE = Path(str(resources.files("swarmstack") / "examples" / "todo" / "plan.json"))

PLAN_JSON = """{
  "title": "demo",
  "description": "two tickets",
  "tickets": [
    {"id": "A", "title": "first", "files": ["src/a.py"], "estimate": 2},
    {"id": "B", "title": "second", "depends_on": ["A"], "phase": "validation",
     "priority": 3, "covers": ["R1"], "acceptance": ["tests pass"]}
  ]
}
"""

PLAN_YAML = """\
title: demo
description: two tickets
tickets:
  - id: A
    title: first
    files: [src/a.py]
    estimate: 2
  - id: B
    title: second
    depends_on: [A]
    phase: validation
    priority: 3
    covers: [R1]
    acceptance: [tests pass]
"""

INVALID_YAML = """\
title: broken
tickets:
  - {id: A, title: a, depends_on: [C]}
  - {id: B, title: "", depends_on: [Z, Y]}
  - {id: C, title: c, depends_on: [A]}
"""

CONFLICT_YAML = """\
title: conflict
tickets:
  - {id: A, title: a, files: [src/shared.py]}
  - {id: B, title: b, files: [./src/shared.py]}
"""

runner = CliRunner()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def usage_message(text: str, *, source: str = "plan.yaml", fmt: Any = None) -> str:
    with pytest.raises(UsageError) as caught:
        parse_plan(text, source=source, fmt=fmt)
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(f"{source}: ")
    return message


# -- parse_plan / load_plan ------------------------------------------------------------------


def test_json_and_yaml_give_the_same_plan(tmp_path: Path) -> None:
    from_json = load_plan(write(tmp_path, "plan.json", PLAN_JSON))
    from_yaml = load_plan(write(tmp_path, "plan.yaml", PLAN_YAML))
    from_yml = load_plan(write(tmp_path, "plan.yml", PLAN_YAML))
    assert from_json == from_yaml == from_yml
    assert [t.id for t in from_json.tickets] == ["A", "B"]
    b = from_json.tickets[1]
    assert (b.phase, b.priority, b.depends_on, b.covers) == ("validation", 3, ["A"], ["R1"])
    a = from_json.tickets[0]
    assert (a.phase, a.estimate, a.priority) == ("expansion", 2.0, 0)  # defaults


@pytest.mark.parametrize("text", [PLAN_JSON, PLAN_YAML])
def test_other_extensions_are_detected_from_content(tmp_path: Path, text: str) -> None:
    plan = load_plan(write(tmp_path, "plan.txt", text))
    assert plan.title == "demo"


def test_extension_decides_the_format(tmp_path: Path) -> None:
    # YAML content in a .json file is a JSON error, not silently read as YAML.
    with pytest.raises(UsageError, match=r"plan\.json: not valid JSON"):
        load_plan(write(tmp_path, "plan.json", PLAN_YAML))


def test_explicit_format() -> None:
    assert parse_plan(PLAN_YAML, fmt="yaml").title == "demo"
    assert parse_plan(PLAN_JSON, fmt="json").title == "demo"
    assert "not valid JSON" in usage_message(PLAN_YAML, fmt="json")


def test_yaml_syntax_error_names_the_line() -> None:
    message = usage_message("title: x\ntickets: [\n  - id: A\n")
    assert "not valid YAML" in message
    assert "line 3" in message


def test_json_syntax_error_names_the_line() -> None:
    message = usage_message('{"title": "x",\n "tickets": [}', source="p.json")
    assert message.startswith("p.json: not valid JSON: ")
    assert "line 2" in message


def test_text_that_opens_like_json_reports_the_json_error() -> None:
    assert "not valid JSON" in usage_message('{"title": "x", "tickets": [}')


@pytest.mark.parametrize(
    ("text", "found"),
    [("- a\n- b\n", "a list"), ("just words", "a string"), ("", "an empty document")],
)
def test_top_level_must_be_a_mapping(text: str, found: str) -> None:
    message = usage_message(text)
    assert "top level must be a mapping" in message
    assert message.endswith(f"found {found}")


def test_every_type_problem_in_one_line() -> None:
    text = """\
title: x
tickets:
  - {id: A, estimate: 0, depend_on: [B]}
  - {id: B, phase: later, files: src/b.py, priority: 1.5}
  - {id: 7}
  - title: no id
"""
    message = usage_message(text)
    assert message.startswith("plan.yaml: 7 problems: ")
    for part in [
        "tickets[0].estimate: must be > 0, got 0",
        "tickets[0]: unknown field 'depend_on' (did you mean 'depends_on'?)",
        "tickets[1].phase: must be one of 'skeleton', 'expansion' or 'validation', got 'later'",
        "tickets[1].files: must be a list, got string",
        "tickets[1].priority: must be a whole number, got 1.5",
        "tickets[2].id: must be a string, got int",
        "tickets[3]: missing required field 'id'",
    ]:
        assert part in message


def test_one_problem_has_no_count() -> None:
    message = usage_message('{"tickets": []}', source="p.json")
    assert message == "p.json: top level: missing required field 'title'"


def test_problems_are_also_in_details() -> None:
    with pytest.raises(UsageError) as caught:
        parse_plan('{"title": "", "tickets": [], "owner": "me"}', source="p.json")
    assert caught.value.details == {
        "problems": ["title: must not be empty", "top level: unknown field 'owner'"]
    }


def test_deep_nesting_is_a_usage_error() -> None:
    assert "nested too deeply" in usage_message("[" * 100_000, source="deep.json")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.json: no such file$"):
        load_plan(tmp_path / "nope.json")
    with pytest.raises(UsageError, match="is a directory"):
        load_plan(tmp_path)
    binary = tmp_path / "plan.yaml"
    binary.write_bytes(b"title: \xff\xfe\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_plan(binary)


def test_the_example_plan_is_clean() -> None:
    plan = load_plan(EXAMPLE)
    report = validate(plan, strict=True)
    assert report.valid
    assert report.errors == report.warnings == []
    assert 10 <= len(plan.tickets) <= 12
    phases = [t.phase for t in plan.tickets]
    assert phases[0] == "skeleton"
    assert phases[-1] == "validation"


# -- swarm plan validate ---------------------------------------------------------------------


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ")
    return result.stderr


def test_validate_a_valid_plan(tmp_path: Path) -> None:
    result = invoke("plan", "validate", write(tmp_path, "plan.yaml", PLAN_YAML))
    assert result.exit_code == 0, result.output
    assert "valid: 0 errors, 0 warnings" in result.stdout
    assert "2 tickets" in result.stdout


def test_validate_example_json() -> None:
    result = invoke("plan", "validate", EXAMPLE, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"valid": True, "errors": [], "warnings": []}


def test_validate_invalid_plan_json_output(tmp_path: Path) -> None:
    result = invoke("plan", "validate", write(tmp_path, "plan.yaml", INVALID_YAML), "--json")
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert set(body) == {"valid", "errors", "warnings"}
    assert body["valid"] is False
    assert body["warnings"] == []
    for item in body["errors"]:
        assert {"code", "tickets", "message"} <= set(item)
    assert [e["code"] for e in body["errors"]] == [
        "empty_title",
        "unknown_dependency",
        "unknown_dependency",
        "cycle",
    ]
    assert body["errors"][-1]["tickets"] == ["A", "C", "A"]


def test_validate_invalid_plan_human_output(tmp_path: Path) -> None:
    result = invoke("plan", "validate", write(tmp_path, "plan.yaml", INVALID_YAML))
    assert result.exit_code == 1
    out = result.stdout
    assert "invalid: 4 errors, 0 warnings" in out
    assert "cycle: A -> C -> A" in out
    assert "ticket B depends on Z, which is not in the plan" in out


def test_file_conflict_is_a_warning_unless_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", CONFLICT_YAML)
    loose = invoke("plan", "validate", path)
    assert loose.exit_code == 0
    assert "valid: 0 errors, 1 warning" in loose.stdout
    assert "suggested edge: add 'A' to the depends_on of 'B'" in loose.stdout

    strict = invoke("plan", "validate", path, "--strict", "--json")
    assert strict.exit_code == 1
    body = json.loads(strict.stdout)
    assert body["valid"] is False
    assert body["warnings"] == []
    [issue] = body["errors"]
    assert issue["code"] == "file_conflict"
    assert issue["tickets"] == ["A", "B"]
    assert issue["suggested_edge"] == ["B", "A"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("plan.yaml", "title: x\ntickets: [\n", "plan.yaml: not valid YAML"),
        ("plan.json", "{", "plan.json: not valid JSON"),
        ("plan.yaml", "- 1\n", "top level must be a mapping"),
        ("plan.json", '{"title": "x", "tickets": [{"id": "A", "estimate": -1}]}', "> 0"),
        ("plan.yaml", "title: '[bold]x'\ntickets: [{id: A, oops: 1}]\n", "'oops'"),
    ],
)
def test_validate_unusable_input(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = write(tmp_path, name, text)
    for extra in ([], ["--json"]):
        result = invoke("plan", "validate", path, *extra)
        assert expected in assert_one_line_error(result, 2)


def test_validate_missing_file(tmp_path: Path) -> None:
    result = invoke("plan", "validate", tmp_path / "nope.yaml")
    assert "nope.yaml: no such file" in assert_one_line_error(result, 2)


def test_markup_in_messages_is_printed_as_is(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", "title: x\ntickets: [{id: A, '[red]': 1}]\n")
    result = invoke("plan", "validate", path)
    assert "unknown field '[red]'" in assert_one_line_error(result, 2)


def test_plan_group_shows_help() -> None:
    result = invoke("plan")
    assert "validate" in result.output
    assert invoke("plan", "validate").exit_code == 2  # FILE is required


# -- waves_command ---------------------------------------------------------------------------

waves_app = typer.Typer()
waves_app.command()(waves_command)


def test_waves_command_json() -> None:
    result = runner.invoke(waves_app, [str(EXAMPLE), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["waves"][0] == {"index": 0, "tickets": ["scaffold"]}
    assert body["critical_path"][0] == "scaffold"
    assert body["critical_path"][-1] == "e2e-tests"
    assert body["critical_length"] == 10.0


def test_waves_command_human(tmp_path: Path) -> None:
    result = runner.invoke(waves_app, [str(write(tmp_path, "plan.yaml", PLAN_YAML))])
    assert result.exit_code == 0, result.output
    assert "2 waves" in result.stdout
    assert "critical path, in run order (total estimate 3): A, B" in result.stdout


def test_waves_command_refuses_invalid_plans(tmp_path: Path) -> None:
    result = runner.invoke(waves_app, [str(write(tmp_path, "plan.yaml", INVALID_YAML))])
    message = assert_one_line_error(result, 1)
    assert "plan is invalid: 4 errors" in message
    assert "cycle: A -> C -> A" in message

    result = runner.invoke(waves_app, [str(tmp_path / "nope.json")])
    assert_one_line_error(result, 2)
