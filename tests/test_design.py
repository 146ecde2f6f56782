"""The design agent against the scripted model: the phases, schema retries, repair rounds,
the request it sends, and the bundled example's plan.

The scripted model is a real Messages API server, so the production client (the anthropic
SDK, streaming) runs in these tests exactly as it would against the real API.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any, get_type_hints

import anthropic
import jsonschema
import pytest
import yaml
from anthropic.types import message_create_params

from swarmstack.config import Settings
from swarmstack.design.agent import DesignAgent, DesignResult
from swarmstack.design.repo import summarize
from swarmstack.design.request import DesignOptions, DesignRequest, run_design, upstream_client
from swarmstack.design.schema import Revision
from swarmstack.errors import DesignFailed, UsageError
from swarmstack.tickets import graph
from swarmstack.tickets.models import TicketSpec
from swarmstack.tickets.plan import load_plan

HERE = Path(__file__).parent / "design"
EXAMPLE = Path(__file__).parent.parent / "src" / "swarmstack" / "examples" / "todo"
KV_SPEC = (HERE / "kv-spec.md").read_text()


class Events:
    """What the design emitted, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.seen.append((kind, data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.seen if k == kind]


def design(
    url: str, spec: str = KV_SPEC, events: Events | None = None, **options: Any
) -> DesignResult:
    async def run() -> DesignResult:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
        async with client:
            agent = DesignAgent(client, DesignOptions(**options), emit=events or Events())
            return await agent.design(spec)

    return asyncio.run(run())


def script_of(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def session(script: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in script["sessions"] if s["name"] == name)


# -- planted defects -------------------------------------------------------------------------


def test_planted_defects_end_in_a_valid_plan_with_every_repair_in_the_events(scripted: Any) -> None:
    url, model = scripted(HERE / "defects.yaml")
    events = Events()
    result = design(url, events=events)

    assert graph.validate(result.plan, strict=True).valid
    assert result.repair_rounds == 3
    by_id = {t.id: t for t in result.plan.tickets}
    assert "cli-list" in by_id and "R3" in by_id["cli-list"].covers
    assert "cli-list" in by_id["e2e"].depends_on  # the critique's must_fix, repaired
    assert "cli-set-get" in by_id["cli-del"].depends_on  # the file conflict, ordered

    # JSON that breaks the schema: refused with every problem, then answered again.
    skeleton = [a for a in events.of("design.answer") if a["call"] == "skeleton"]
    assert [a["accepted"] for a in skeleton] == [False, True]
    problems = "\n".join(skeleton[0]["problems"])
    assert "requirements.1.text: Field required" in problems
    assert "skeleton_tickets.0.estimate" in problems
    assert "skeleton_tickets.0.colour" in problems
    retry = [r for r in model.requests if r["session"] == "skeleton"][1]["body"]
    result_block = retry["messages"][2]["content"][0]
    assert result_block["type"] == "tool_result" and result_block["is_error"] is True
    assert "requirements.1.text: Field required" in result_block["content"]

    # A repair that names a ticket that is not there is refused and asked again.
    repair_answers = [a for a in events.of("design.answer") if a["call"] == "repair:1"]
    assert [a["accepted"] for a in repair_answers] == [False, True]
    assert repair_answers[0]["problems"] == ["remove: there is no ticket 'store-index'"]

    # Round 0: every planted defect found at once.
    checks = events.of("design.validation")
    first = {e["code"] for e in checks[0]["errors"]}
    assert {"cycle", "unknown_dependency", "uncovered_requirement", "file_conflict"} <= first
    cycle = next(e for e in checks[0]["errors"] if e["code"] == "cycle")
    assert set(cycle["tickets"]) == {"store-put", "store-get"}
    dangling = next(e for e in checks[0]["errors"] if e["code"] == "unknown_dependency")
    assert dangling["tickets"] == ["store-delete", "store-index"]
    assert [c["valid"] for c in checks] == [False, False, True, True]

    # The file conflict left after repair 1 is ordered by an edge, not by another round.
    fixed = events.of("design.fixed")
    assert fixed == [
        {
            "round": 1,
            "edges": [["cli-del", "cli-set-get"]],
            "message": "ordered 1 pair of tickets that share files",
        }
    ]
    repairs = events.of("design.repair")
    assert [r["round"] for r in repairs] == [1, 2, 3]
    assert set(repairs[0]["errors"]) == first
    assert repairs[1]["errors"] == ["uncovered_requirement"]
    assert repairs[2]["errors"] == [] and repairs[2]["findings"] == 1

    # What the model was told in each repair round is in its request.
    prompts = {r["session"]: r["body"]["messages"][0]["content"] for r in model.requests}
    assert "[cycle]" in prompts["repair-1"] and "store-index" in prompts["repair-1"]
    assert "requirement R3 is covered by no ticket" in prompts["repair-2"]
    assert "Make e2e depend on cli-list" in prompts["repair-3"]
    # The critique's suggestion stays a suggestion: no round for it, nothing left open.
    assert result.open_findings == []


def test_a_revision_replaces_adds_and_removes_by_id() -> None:
    def planned(key: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": key, "phase": "expansion", "title": key, "body": "", "acceptance": ["ok"],
            "files": [f"{key}.py"], "depends_on": [], "estimate": 1, "covers": [], **fields,
        }  # fmt: skip

    plan = [TicketSpec(id=k, title=k) for k in ("a", "b", "c")]
    revision = Revision.model_validate(
        {"tickets": [planned("d"), planned("b", title="B!")], "remove": ["a"]}
    )
    assert revision.problems({"a", "b", "c"}) == []
    assert [(t.id, t.title) for t in revision.apply(plan)] == [("b", "B!"), ("c", "c"), ("d", "d")]

    assert Revision().problems({"a"}) == ["the revision changes nothing"]
    clash = Revision.model_validate(
        {"tickets": [planned("a"), planned("a")], "remove": ["a", "zz"]}
    )
    assert clash.problems({"a"}) == [
        "remove: there is no ticket 'zz'",
        "tickets: 'a' is given twice",
        "'a' is both given and removed",
    ]


def test_an_answer_that_never_fits_the_schema_fails_with_the_problems(scripted: Any) -> None:
    broken = {"tool_use": {"name": "submit_skeleton", "input": {"title": "kv"}}}
    url, _ = scripted({"sessions": [{"name": "skeleton", "turns": [[broken]] * 3}]})
    events = Events()
    with pytest.raises(DesignFailed) as failed:
        design(url, events=events)
    message = failed.value.message
    assert message.startswith("the model's skeleton answer did not fit the schema after 3 attempts")
    assert "requirements: Field required" in message
    assert [a["accepted"] for a in events.of("design.answer")] == [False, False, False]
    assert not events.of("design.validation")  # nothing half-made went further


def test_an_answer_without_the_tool_is_asked_again(scripted: Any) -> None:
    script = script_of(HERE / "defects.yaml")
    skeleton = session(script, "skeleton")
    skeleton["turns"] = ["I think the plan should have three tickets.", skeleton["turns"][1]]
    url, model = scripted(script)
    events = Events()
    result = design(url, events=events)
    first = events.of("design.answer")[0]
    assert first["accepted"] is False
    assert first["problems"] == ["the answer called no tool: call submit_skeleton with the answer"]
    retry = [r for r in model.requests if r["session"] == "skeleton"][1]["body"]
    assert retry["messages"][1]["role"] == "assistant"
    assert retry["messages"][2] == {
        "role": "user",
        "content": "Your answer was refused:\n- the answer called no tool: call submit_skeleton "
        "with the answer\n\nCall submit_skeleton again with the whole corrected answer.",
    }
    assert graph.validate(result.plan, strict=True).valid


def test_components_that_depend_in_a_circle_are_refused_as_an_answer(scripted: Any) -> None:
    script = script_of(HERE / "defects.yaml")
    good = session(script, "skeleton")["turns"][1]
    circular = copy.deepcopy(good)
    components = circular[0]["tool_use"]["input"]["components"]
    components[0]["depends_on"] = ["cli"]
    components.append({"name": "ghost", "purpose": "x", "files": [], "depends_on": ["nobody"]})
    session(script, "skeleton")["turns"] = [circular, good]
    url, _ = scripted(script)
    events = Events()
    design(url, events=events)
    problems = events.of("design.answer")[0]["problems"]
    assert "component 'ghost' depends on unknown component 'nobody'" in problems
    del components[-1]
    session(script, "skeleton")["turns"] = [circular, good]
    url, _ = scripted(script)
    events = Events()
    design(url, events=events)
    problems = events.of("design.answer")[0]["problems"]
    assert any(p.startswith("components: cycle") for p in problems), problems


def test_repair_rounds_run_out_and_the_design_fails_with_what_is_left(scripted: Any) -> None:
    url, _ = scripted(HERE / "defects.yaml")
    events = Events()
    with pytest.raises(DesignFailed) as failed:
        design(url, events=events, max_repair_rounds=1)
    assert failed.value.message == (
        "after 1 repair round the plan still has 1 error: requirement R3 is covered by no ticket"
    )
    assert [r["round"] for r in events.of("design.repair")] == [1]


def test_a_refusal_of_the_api_fails_the_design_with_its_message(scripted: Any) -> None:
    refusal = {"error": {"status": 400, "type": "invalid_request_error", "message": "too long"}}
    url, _ = scripted({"sessions": [{"name": "skeleton", "turns": [refusal]}]})
    with pytest.raises(DesignFailed) as failed:
        design(url)
    assert failed.value.message == (
        "the model API refused the skeleton request: HTTP 400: too long"
    )


def test_expansion_runs_in_waves_of_the_components_and_sees_what_it_builds_on(
    scripted: Any,
) -> None:
    url, model = scripted(EXAMPLE / "design.yaml")
    design(url, spec=(EXAMPLE / "spec.md").read_text())
    order = [r["session"] for r in model.requests]
    # storage uses model; listing and commands use storage; reports uses listing, not commands.
    assert order.index("expansion-storage") > order.index("expansion-model")
    assert order.index("expansion-listing") > order.index("expansion-storage")
    assert order.index("expansion-commands") > order.index("expansion-storage")
    assert order.index("expansion-reports") > order.index("expansion-listing")
    assert order.index("expansion-reports") > order.index("expansion-commands")
    reports = next(r for r in model.requests if r["session"] == "expansion-reports")["body"]
    text = reports["messages"][0]["content"]
    assert '"id":"cmd-list"' in text and '"id":"json-store"' in text and '"id":"task-model"' in text
    assert '"id":"cmd-add"' not in text  # made already, but not a component reports uses


# -- the request, as the Messages API wants it ------------------------------------------------


def test_the_requests_have_the_messages_api_shape_and_carry_the_key(
    scripted: Any, tmp_path: Path
) -> None:
    url, model = scripted(HERE / "defects.yaml")
    settings = Settings(
        data_dir=tmp_path, llm_upstream_url=url, anthropic_api_key="sk-ant-test-key"
    )
    request = DesignRequest(spec=KV_SPEC, options=DesignOptions(model="claude-opus-4-7"))
    asyncio.run(run_design(request, settings))

    allowed = set(get_type_hints(message_create_params.MessageCreateParamsStreaming))
    required = message_create_params.MessageCreateParamsStreaming.__required_keys__
    assert model.requests
    for recorded in model.requests:
        headers, body = recorded["headers"], recorded["body"]
        assert recorded["path"] == "/v1/messages"
        # The SDK sends the key as x-api-key or as a bearer token; the API takes either.
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        assert headers.get("x-api-key", bearer) == "sk-ant-test-key"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", headers["anthropic-version"])
        assert headers["content-type"] == "application/json"
        assert set(body) <= allowed, set(body) - allowed
        assert required <= set(body)
        assert body["stream"] is True
        assert body["model"] == "claude-opus-4-7"
        assert body["max_tokens"] == 16_000
        assert isinstance(body["system"], str) and body["system"].startswith("You are the design")
        assert body["messages"][0]["role"] == "user"
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"][
            : len(body["messages"])
        ]
        (tool,) = body["tools"]
        assert set(tool) == {"name", "description", "input_schema"}
        assert body["tool_choice"] == {"type": "tool", "name": tool["name"]}
        schema = tool["input_schema"]
        assert schema["type"] == "object" and "$ref" not in json.dumps(schema)
        jsonschema.Draft202012Validator.check_schema(schema)


def test_accepted_answers_fit_the_json_schema_the_model_was_given(scripted: Any) -> None:
    """Our pydantic models and the schema we send agree: what one accepts, the other does."""
    url, model = scripted(EXAMPLE / "design.yaml")
    events = Events()
    design(url, spec=(EXAMPLE / "spec.md").read_text(), events=events)
    schemas = {r["session"]: r["body"]["tools"][0]["input_schema"] for r in model.requests}
    answers = [a for a in events.of("design.answer") if a["accepted"]]
    sessions = [r["session"] for r in model.requests]
    assert len(answers) == len(sessions) == 8
    for name, answer in zip(sessions, answers, strict=True):
        jsonschema.validate(json.loads(answer["input"]), schemas[name])


def test_the_real_api_needs_a_key_and_gets_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="ANTHROPIC_API_KEY is not set"):
        upstream_client(Settings(data_dir=tmp_path))
    client = upstream_client(Settings(data_dir=tmp_path, anthropic_api_key="sk-ant-x"))
    assert str(client.base_url).rstrip("/") == "https://api.anthropic.com"
    assert client.api_key == "sk-ant-x"


# -- the bundled example --------------------------------------------------------------------


def test_the_example_plan_is_what_its_script_makes(scripted: Any, tmp_path: Path) -> None:
    url, _ = scripted(EXAMPLE / "design.yaml")
    settings = Settings(data_dir=tmp_path, llm_upstream_url=url)
    request = DesignRequest(spec=(EXAMPLE / "spec.md").read_text(), repo=str(EXAMPLE / "repo"))
    result = asyncio.run(run_design(request, settings))
    committed = load_plan(EXAMPLE / "plan.json")
    assert result.plan == committed
    assert graph.validate(committed, strict=True).valid
    assert len(committed.tickets) >= 8
    assert len(graph.waves(committed)) >= 3
    assert {r.id for r in committed.requirements} == {f"R{n}" for n in range(1, 10)}


def test_the_example_repository_is_summarized_into_the_prompt(scripted: Any) -> None:
    url, model = scripted(EXAMPLE / "design.yaml")

    async def run() -> None:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="unused")
        async with client:
            agent = DesignAgent(client)
            await agent.design((EXAMPLE / "spec.md").read_text(), summarize(str(EXAMPLE / "repo")))

    asyncio.run(run())
    prompt = model.requests[0]["body"]["messages"][0]["content"]
    assert prompt.startswith("Design phase: skeleton")
    assert "### Files: 7" in prompt
    assert "src/todo/__init__.py" in prompt and ".swarm.toml" in prompt
    assert '[project]\nname = "todo"' in prompt  # pyproject.toml, a key file
    assert "**Add a task.**" in prompt  # the spec


# -- the repository summary -----------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def test_a_git_repository_is_its_tracked_files_at_its_head(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "README.md").write_text("# demo\n")
    (repo / "src" / "main.py").write_text("print(1)\n")
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    (repo / "scratch.txt").write_text("untracked\n")
    summary = summarize(str(repo))
    assert summary.files == ["README.md", "src/main.py"]
    assert summary.head == _git(repo, "rev-parse", "HEAD")
    assert [k.path for k in summary.key_files] == ["README.md"]

    # A URL is cloned shallowly and summarized the same way.
    by_url = summarize(f"file://{repo}")
    assert by_url.files == summary.files and by_url.head == summary.head
    assert by_url.source == f"file://{repo}"


def test_a_plain_directory_skips_caches_and_big_ones_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "index.js").write_text("")
    for n in range(30):
        (tmp_path / f"f{n:02}.py").write_text("")
    (tmp_path / "README.md").write_text("x" * 10_000)
    monkeypatch.setattr("swarmstack.design.repo.MAX_PATHS", 10)
    summary = summarize(str(tmp_path))
    assert summary.total_files == 31 and len(summary.files) == 10
    assert not any(p.startswith("node_modules") for p in summary.files)
    (readme,) = summary.key_files
    assert readme.truncated and len(readme.text) == 6_000
    assert "(the first 10 shown)" in summary.render()


def test_a_repository_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        summarize(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="cannot clone the repository"):
        summarize(f"file://{tmp_path}/missing.git")
