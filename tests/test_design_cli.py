"""``swarm plan SPEC.md``: the design agent from the command line, here (``--out``) and on a
real control plane (``POST /v1/plans``), against the scripted model over HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from swarmstack.api.designs import STOPPED, title_of
from swarmstack.bench.serverproc import ServerProcess
from swarmstack.cli.main import app as cli_app
from swarmstack.client import SwarmClient
from swarmstack.tickets import graph
from swarmstack.tickets.models import PlanSpec
from swarmstack.tickets.plan import load_plan

HERE = Path(__file__).parent / "design"
EXAMPLE = Path(__file__).parent.parent / "src" / "swarmstack" / "examples" / "todo"
BROKEN = {"sessions": [{"name": "skeleton", "turns": [[{"text": "no tool"}]] * 3}]}

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("no_swarm_env")


def control_plane(data: Path, upstream: str) -> ServerProcess:
    return ServerProcess(data, env={"SWARM_LLM_UPSTREAM_URL": upstream})


def cli(*args: str, **env: str) -> Result:
    return runner.invoke(cli_app, list(args), env={"COLUMNS": "200", **env})


def one_line_error(result: Result, exit_code: int) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def kinds(admin: SwarmClient, plan_id: int) -> list[str]:
    return [e.kind for e in admin.events(plan_id=plan_id).events]


# -- here: --out ---------------------------------------------------------------------------


def test_designing_here_writes_the_example_plan(scripted: Any, tmp_path: Path) -> None:
    url, model = scripted(EXAMPLE / "design.yaml")
    out = tmp_path / "plan.json"
    result = cli(
        "plan",
        str(EXAMPLE / "spec.md"),
        "--repo",
        str(EXAMPLE / "repo"),
        "--out",
        str(out),
        SWARM_LLM_UPSTREAM_URL=url,
    )
    assert result.exit_code == 0, result.output
    assert load_plan(out) == load_plan(EXAMPLE / "plan.json")
    assert "→ skeleton" in result.stderr and "← expansion:reports:" in result.stderr
    assert "checks, round 0: valid" in result.stderr
    assert "wrote " in result.stdout and "11 tickets in 6 waves" in result.stdout
    assert "R9" in result.stdout  # the coverage table
    assert len(model.requests) == 8
    validated = cli("plan", "validate", str(out))
    assert validated.exit_code == 0, validated.output

    as_yaml = tmp_path / "plan.yaml"
    result = cli(
        "plan",
        "design",
        str(EXAMPLE / "spec.md"),
        "--out",
        str(as_yaml),
        "--json",
        SWARM_LLM_UPSTREAM_URL=url,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tickets"] == 11 and summary["calls"] == 8 and summary["out"] == str(as_yaml)
    assert result.stderr == ""  # --json: no progress
    assert as_yaml.read_text().startswith("title: A todo list on the command line")
    assert load_plan(as_yaml) == load_plan(EXAMPLE / "plan.json")


def test_a_failed_design_here_writes_nothing(scripted: Any, tmp_path: Path) -> None:
    url, _ = scripted(BROKEN)
    out = tmp_path / "plan.json"
    result = cli("plan", str(HERE / "kv-spec.md"), "--out", str(out), SWARM_LLM_UPSTREAM_URL=url)
    line = one_line_error(result, 1)
    assert line == (
        "error: the model's skeleton answer did not fit the schema after 3 attempts: the "
        "answer called no tool: call submit_skeleton with the answer"
    )
    assert "← skeleton: refused" in result.stderr
    assert not out.exists()


def test_unusable_input_is_exit_2_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    spec = HERE / "kv-spec.md"
    empty = tmp_path / "empty.md"
    empty.write_text("  \n")
    cases = [
        (["plan", str(tmp_path / "missing.md"), "--out", str(out)], "no spec at"),
        (["plan", str(empty), "--out", str(out)], "is empty"),
        (["plan", str(spec), "--repo", str(tmp_path / "nope"), "--out", str(out)], "is not a"),
        # The real API with no key: said before any call is made.
        (["plan", str(spec), "--out", str(out)], "ANTHROPIC_API_KEY is not set"),
    ]
    for args, words in cases:
        assert words in one_line_error(cli(*args), 2)
    assert not out.exists()
    # A typo of a command is not taken for a spec.
    typo = cli("plan", "valdate", str(spec))
    assert typo.exit_code == 2 and "No such command 'valdate'" in typo.output


# -- there: the control plane --------------------------------------------------------------


def test_the_control_plane_designs_a_draft_with_every_repair_in_its_events(
    scripted: Any, tmp_path: Path
) -> None:
    url, _ = scripted(HERE / "defects.yaml")
    with control_plane(tmp_path / "data", url) as server:
        env = {"SWARM_API_URL": server.url, "SWARM_TOKEN": server.admin_token}
        result = cli("plan", str(HERE / "kv-spec.md"), "--repo", str(EXAMPLE / "repo"), **env)
        assert result.exit_code == 0, result.output
        progress = result.stderr
        assert "the control plane is designing it" in progress
        assert "← skeleton: refused, requirements.1.text: Field required" in progress
        assert (
            "checks, round 0: 4 errors "
            "(cycle, file_conflict, uncovered_requirement, unknown_dependency)"
        ) in progress
        assert "ordered 1 pair of tickets that share files: cli-del after cli-set-get" in progress
        for n in (1, 2, 3):
            assert f"repair round {n}:" in progress
        assert "draft ready: 8 tickets in 5 waves, 3 repair rounds, 11 model calls" in progress
        assert "draft" in result.stdout and "cli-list" in result.stdout  # swarm plan show

        with SwarmClient(server.url, server.admin_token) as admin:
            (plan,) = admin.list_plans()
            assert plan.status == "draft" and plan.title == "kv" and plan.ticket_count == 0
            seen = kinds(admin, plan.id)
            assert seen[0] == "design.started" and seen[-1] == "design.done"
            assert seen.count("design.repair") == 3 and seen.count("design.fixed") == 1
            events = admin.events(plan_id=plan.id).events
            first = next(e for e in events if e.kind == "design.request")
            assert first.data["prompt"].startswith("Design phase: skeleton")
            assert "src/todo/__init__.py" in first.data["prompt"]  # the repo the CLI read
            spec = admin.plan_spec(plan.id)
            assert graph.validate(spec, strict=True).valid

            log = cli("plan", "log", str(plan.id), **env)
            assert log.exit_code == 0, log.output
            lines = log.stdout.splitlines()
            assert lines[0] == "designing “kv: a key-value store on the command line”"
            assert "repair round 2: 1 problem to fix" in lines
            assert lines[-1].startswith("draft ready: 8 tickets in 5 waves")
            as_json = json.loads(cli("plan", "log", str(plan.id), "--json", **env).stdout)
            assert [e["kind"] for e in as_json] == seen
            assert as_json[1]["data"]["prompt"].startswith("Design phase: skeleton")

            approved = cli("plan", "approve", str(plan.id), **env)
            assert approved.exit_code == 0, approved.output
            ready = [t.key for t in admin.all_tickets(plan_id=plan.id) if t.state == "ready"]
            assert ready == ["layout"]

        imported = cli("plan", "import", str(EXAMPLE / "plan.json"), **env)
        assert imported.exit_code == 0, imported.output
        log = cli("plan", "log", "2", **env)
        assert log.stdout == "plan 2 was not designed here: it was imported\n"
        assert "no plan 9" in one_line_error(cli("plan", "log", "9", **env), 1)


def test_a_design_that_fails_on_the_control_plane_stores_no_plan_file(
    scripted: Any, tmp_path: Path
) -> None:
    url, _ = scripted(BROKEN)
    with control_plane(tmp_path / "data", url) as server:
        env = {"SWARM_API_URL": server.url, "SWARM_TOKEN": server.admin_token}
        result = cli("plan", str(HERE / "kv-spec.md"), **env)
        line = one_line_error(result, 1)
        assert line.startswith("error: plan 1: the model's skeleton answer did not fit")
        with SwarmClient(server.url, server.admin_token) as admin:
            plan = admin.get_plan(1)
            assert plan.status == "failed" and plan.ticket_count == 0
            assert plan.error is not None and plan.error in line
            assert kinds(admin, 1)[-1] == "design.failed"
        shown = cli("plan", "show", "1", **env)
        assert shown.exit_code == 0 and "failed" in shown.stdout


def test_a_design_request_over_http(scripted: Any, tmp_path: Path) -> None:
    url, model = scripted(EXAMPLE / "design.yaml")
    with (
        control_plane(tmp_path / "data", url) as server,
        httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {server.admin_token}"}
        ) as http,
    ):
        spec = (EXAMPLE / "spec.md").read_text()
        # The control plane reads the repository itself when only its path is given.
        answer = http.post("/v1/plans", json={"spec": spec, "repo": str(EXAMPLE / "repo")})
        assert answer.status_code == 202, answer.text
        plan = answer.json()
        assert plan["status"] == "designing" and plan["title"] == "A todo list on the command line"
        for _ in range(600):  # a bound, not a timing assertion
            plan = http.get(f"/v1/plans/{plan['id']}").json()
            if plan["status"] != "designing":
                break
            time.sleep(0.1)
        assert plan["status"] == "draft", plan
        stored = PlanSpec.model_validate(http.get(f"/v1/plans/{plan['id']}/spec").json())
        assert stored == PlanSpec.model_validate_json((EXAMPLE / "plan.json").read_text())
        prompt = model.requests[0]["body"]["messages"][0]["content"]
        assert "### `pyproject.toml`" in prompt

        # Bad input is a 422 with the reason; nothing is stored.
        empty = http.post("/v1/plans", json={"spec": ""})
        assert empty.status_code == 422 and "spec" in empty.text
        both = http.post("/v1/plans", json={"spec": "x", "title": "t", "tickets": []})
        assert both.status_code == 422 and "spec" in both.json()["message"]  # judged as a plan
        odd = http.post("/v1/plans", json={"spec": "x", "options": {"max_repair_rounds": 99}})
        assert odd.status_code == 422 and "max_repair_rounds" in odd.json()["message"]
        assert len(http.get("/v1/plans").json()) == 1


def test_a_stopped_control_plane_fails_the_design_it_was_running(
    scripted: Any, tmp_path: Path
) -> None:
    slow = {"sessions": [{"name": "skeleton", "delay_s": 60, "turns": ["never in time"]}]}
    url, model = scripted(slow)
    data = tmp_path / "data"
    with control_plane(data, url) as server:
        env = {"SWARM_API_URL": server.url, "SWARM_TOKEN": server.admin_token}
        result = cli("plan", str(HERE / "kv-spec.md"), "--no-wait", "--json", **env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["status"] == "designing"
        for _ in range(300):  # until the model is being asked
            if model.requests:
                break
            time.sleep(0.1)
        assert model.requests
    with control_plane(data, url) as server, SwarmClient(server.url, server.admin_token) as admin:
        plan = admin.get_plan(1)
        assert (plan.status, plan.error) == ("failed", STOPPED)
        assert kinds(admin, 1).count("design.failed") == 1


def test_a_plan_is_titled_by_its_spec_until_the_model_names_it() -> None:
    assert title_of("# Todo service\n\ntext") == "Todo service"
    assert title_of("intro line\n## Later heading ##\n") == "Later heading"
    assert title_of("\n\n  just words  \n") == "just words"
    assert title_of("") == "design"
