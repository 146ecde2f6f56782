"""The MCP server, driven by the ``mcp`` SDK's own client: over stdio (``swarm mcp``, as Claude
Desktop starts it) and over streamable HTTP (``/mcp`` on the control plane), against a real
``swarm serve`` whose design agent and agents the scripted model answers for. Over each, a spec
is planned, approved and run to the end by agents in bubblewrap sandboxes, and a dead ticket is
found in the status and retried; over HTTP a caller without a valid token is refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agent_world import sample_repo
from sandbox_fixtures import state_dir
from swarmstack.bench.serverproc import ServerProcess
from swarmstack.client import SwarmClient
from swarmstack.llm.scripted import ScriptedModel, load_script
from swarmstack.llm.scripted import create_app as scripted_app
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import PlanSpec, TicketSpec

SPEC = "# greet\n\nA module greet.py whose greet(name) returns 'Hello, NAME!', with its tests.\n"
KEYS = ["scaffold", "greet-name", "greet-tests"]
FILES = {
    "scaffold": ("greet.py", "def greet(name):\n    raise NotImplementedError\n"),
    "greet-name": ("greet.py", "def greet(name):\n    return f'Hello, {name}!'\n"),
    "greet-tests": (
        "test_greet.py",
        "import unittest\n\nimport greet\n\n\nclass GreetTest(unittest.TestCase):\n"
        "    def test_greet(self):\n        self.assertEqual(greet.greet('Ann'), 'Hello, Ann!')\n",
    ),
}
TOOLS = {
    "list_plans", "plan_spec", "show_plan", "edit_plan", "approve_plan", "start_run",
    "pause_run", "resume_run", "stop_run", "status", "list_tickets", "show_ticket",
    "retry_ticket", "cancel_ticket", "stop_agent", "list_pull_requests", "show_diff",
    "list_sandboxes", "create_sandbox", "destroy_sandbox", "sandbox_exec",
    "sandbox_read_file", "sandbox_write_file",
}  # fmt: skip


def _ticket(key: str, files: list[str], depends_on: list[str]) -> dict[str, Any]:
    return {
        "id": key,
        "title": f"the {key} ticket",
        "body": f"Write {', '.join(files)}.",
        "acceptance": [f"{files[0]} is there"],
        "files": files,
        "depends_on": depends_on,
        "estimate": 1,
        "covers": ["R1"],
    }


def _tool(name: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"tool_use": {"name": name, "input": payload}}]


def design_sessions() -> list[dict[str, Any]]:
    """The design agent's answers for SPEC: one component, a chain of three tickets."""
    skeleton = {
        "title": "greet",
        "summary": "A greet() function in greet.py and its unittest suite.",
        "requirements": [{"id": "R1", "text": "greet(name) returns 'Hello, NAME!'"}],
        "components": [{"name": "greet", "purpose": "the function", "files": ["greet.py"]}],
        "skeleton_tickets": [_ticket("scaffold", ["greet.py"], [])],
    }
    answers = [
        ("^Design phase: skeleton", _tool("submit_skeleton", skeleton)),
        (
            "^Design phase: expansion of component `greet`",
            _tool(
                "submit_tickets", {"tickets": [_ticket("greet-name", ["greet.py"], ["scaffold"])]}
            ),
        ),
        (
            "^Design phase: validation tickets",
            _tool(
                "submit_tickets",
                {"tickets": [_ticket("greet-tests", ["test_greet.py"], ["greet-name"])]},
            ),
        ),
        ("^Design phase: critique 1", _tool("submit_critique", {"findings": []})),
    ]
    return [{"match": match, "turns": [turn]} for match, turn in answers]


def agent_sessions() -> list[dict[str, Any]]:
    """Claude Code's answers for each ticket: write its file, say so."""
    sessions = []
    for key, (path, content) in FILES.items():
        write = {"file_path": f"${{workspace}}/{path}", "content": content}
        sessions.append(
            {
                "name": key,
                "match": rf"You are implementing ticket {key}\b",
                "delay_s": 0.1,
                "turns": [_tool("Write", write), f"Wrote {path}."],
            }
        )
    # The dead ticket's agent, once it is retried, takes its time: long enough to be stopped,
    # short enough to have answered before the server stops (which waits for the answer).
    sessions.append(
        {"match": r"You are implementing ticket lone\b", "delay_s": 10, "turns": ["ok"]}
    )
    return sessions


@dataclass
class Swarm:
    url: str
    token: str
    repo: Path
    sandboxes: Path

    def api(self, token: str | None = None) -> SwarmClient:
        return SwarmClient(self.url, token or self.token, timeout=60)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """``swarm serve`` in a process of its own, the scripted model its upstream."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is missing: the agents run in bubblewrap sandboxes")
    tmp = tmp_path_factory.mktemp("mcp")
    model = ScriptedModel(load_script({"sessions": design_sessions() + agent_sessions()}))
    sandboxes = state_dir()
    try:
        with ThreadedServer(scripted_app(model)) as upstream:
            env = {
                "SWARM_LLM_UPSTREAM_URL": upstream.url,
                "SWARM_SANDBOX_DIR": str(sandboxes),
                "SWARM_SANDBOX_BACKEND": "bwrap",
            }
            with ServerProcess(tmp / "control-plane", env=env) as server:
                yield Swarm(server.url, server.admin_token, sample_repo(tmp / "repo"), sandboxes)
    finally:
        shutil.rmtree(sandboxes, ignore_errors=True)


def _child_env() -> dict[str, str]:
    """What ``swarm mcp`` is started with: this environment (its PYTHONPATH) but no SWARM_*."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}


def stdio(*args: str) -> Client:
    """``python -m swarmstack mcp ARGS`` as Claude Desktop starts it, through the SDK's client."""
    command = [sys.executable, "-m", "swarmstack", "mcp", *args]
    params = StdioServerParameters(command=command[0], args=command[1:], env=_child_env())
    return Client(params, read_timeout_seconds=120)


@asynccontextmanager
async def over_http(url: str, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield client


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def connect(swarm: Swarm, transport: str) -> AbstractAsyncContextManager[Client]:
    """The SDK's client on Swarm's tools, as an admin: over stdio or over HTTP."""
    if transport == "stdio":
        return stdio("--api", swarm.url, "--token", swarm.token)
    return over_http(swarm.url, swarm.token)


def text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    """A tool's answer, which must not be an error."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}: {text(result)}"
    return json.loads(text(result)) if result.structured_content is not None else text(result)


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """A tool's error, returned as its result: the reason."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} was not refused: {text(result)}"
    return text(result)


async def test_a_spec_is_planned_approved_and_run_to_the_end(swarm: Swarm, transport: str) -> None:
    async with connect(swarm, transport) as client:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        assert all(len(t.description or "") > 50 for t in listed.tools), listed.tools

        steps: list[str] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            steps.append(message or "")

        result = await client.call_tool(
            "plan_spec",
            {"spec": SPEC, "repo": str(swarm.repo), "wait_s": 120},
            progress_callback=progress,
        )
        assert not result.is_error, text(result)
        planned = json.loads(text(result))
        assert planned["status"] == "draft", planned
        plan_id = planned["plan_id"]
        # Each step of the design was reported as it came, the draft last.
        assert steps[0] == f"plan {plan_id}: designing “greet”", steps
        assert any("← skeleton" in s for s in steps) and "draft ready: 3 tickets" in steps[-1]
        assert [t["key"] for t in planned["tickets"]] == KEYS
        assert planned["requirements"][0]["covered_by"] == KEYS
        assert "approve it first" in await refused(client, "start_run", plan_id=plan_id)

        # The draft is edited: refused with its problem, then accepted with a budget.
        shown = await call(client, "show_plan", plan_id=plan_id, plan_file=True)
        edited = yaml.safe_load(shown["plan_file"])
        edited["tickets"][0]["depends_on"] = ["greet-tests"]
        cycle = await refused(client, "edit_plan", plan_id=plan_id, plan_file=yaml.dump(edited))
        assert "cycle" in cycle
        edited["tickets"][0]["depends_on"] = []
        edited["budget_usd"] = 5.0
        after = await call(client, "edit_plan", plan_id=plan_id, plan_file=json.dumps(edited))
        assert after["budget_usd"] == 5.0 and after["status"] == "draft"

        approved = await call(client, "approve_plan", plan_id=plan_id)
        assert approved["status"] == "active" and approved["by_state"] == {"ready": 1, "pending": 2}
        run = await call(client, "start_run", plan_id=plan_id, agents=2, backend="bwrap")
        assert run["state"] == "running" and run["agents"] == 2
        assert "has a run going already" in await refused(client, "start_run", plan_id=plan_id)

        deadline = time.monotonic() + 150
        status = await call(client, "status", plan_id=plan_id)
        while status["run"]["state"] == "running":
            assert time.monotonic() < deadline, status
            await asyncio.sleep(1.0)
            status = await call(client, "status", plan_id=plan_id)
        assert status["settled"] is True and status["needs_attention"] == [], status
        assert status["progress"] == {
            "done": 3,
            "total": 3,
            "percent": 100,
            "by_state": {"done": 3},
        }
        assert [w["done"] for w in status["waves"]] == [1, 1, 1]
        assert status["run"]["state"] == "finished"
        assert status["cost"]["budget_usd"] == 5.0 and status["cost"]["over_budget"] is False
        assert status["run"]["reason"] == "3 of 3 tickets done"
        assert "3 of 3 tickets done" in status["summary"]

        pulls = (await call(client, "list_pull_requests", plan_id=plan_id))["pull_requests"]
        assert [p["state"] for p in pulls] == ["merged"] * 3
        last = pulls[-1]["ticket_id"]
        assert "+    def test_greet(self):" in await call(client, "show_diff", ticket_id=last)
        ticket = await call(client, "show_ticket", ticket_id=last, log_lines=200)
        assert ticket["state"] == "done" and any("ticket.merged" in line for line in ticket["log"])
        assert [a["outcome"] for a in ticket["attempts_made"]] == ["merging"]
    # The pool is gone: no sandbox is left behind.
    left = [p for p in swarm.sandboxes.glob("agents-*/plan-*/sandboxes/*") if p.is_dir()]
    assert left == []


def dead_ticket(swarm: Swarm) -> tuple[int, int]:
    """A plan of one ticket that its only attempt failed for good: (plan, ticket)."""
    with swarm.api() as admin:
        plan = admin.create_plan(
            PlanSpec(title="lone", tickets=[TicketSpec(id="lone", title="alone")]), 1
        )
        agent_token = admin.create_token("agent", "tester").token
    with swarm.api(agent_token) as agent:
        lease = agent.claim("tester", plan_id=plan.id)
        assert lease is not None
        agent.fail(lease, "the tests broke", retryable=False)
    return plan.id, lease.ticket.id


async def test_a_dead_ticket_is_found_and_retried(swarm: Swarm, transport: str) -> None:
    plan_id, ticket_id = dead_ticket(swarm)
    async with connect(swarm, transport) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        status = await call(client, "status", plan_id=plan_id)
        assert status["needs_attention"] == [
            {
                "problem": "dead",
                "ticket_id": ticket_id,
                "key": "lone",
                "title": "alone",
                "why": "the tests broke",
            }
        ]
        assert status["progress"]["by_state"] == {"dead": 1} and status["settled"] is True

        retried = await call(client, "retry_ticket", ticket_id=ticket_id)
        assert retried["state"] == "ready" and f"start_run({plan_id})" in retried["next"]
        assert "can be retried" in await refused(client, "retry_ticket", ticket_id=ticket_id)
        ready = await call(client, "list_tickets", plan_id=plan_id, state=["ready"])
        assert [t["ticket_id"] for t in ready["tickets"]] == [ticket_id]

        paused = await call(client, "pause_run", plan_id=plan_id)
        assert paused["paused"] is True
        assert (await call(client, "resume_run", plan_id=plan_id))["paused"] is False

        # A run picks the retried ticket up; stopped, its agent hands the ticket back.
        await call(client, "start_run", plan_id=plan_id, agents=1, backend="bwrap")
        deadline = time.monotonic() + 60
        while not (status := await call(client, "status", plan_id=plan_id))["agents_at_work"]:
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.5)
        assert status["agents_at_work"][0]["ticket_id"] == ticket_id
        stopped = await call(client, "stop_run", plan_id=plan_id)
        assert stopped["state"] == "stopped" and stopped["reason"] == "an admin stopped it"
        status = await call(client, "status", plan_id=plan_id)
        assert status["agents_at_work"] == [] and status["progress"]["by_state"] == {"ready": 1}
        with swarm.api() as admin:
            assert admin.get_ticket(ticket_id).attempts == 0  # released: the attempt not counted

        # Failures are the tools' errors with the API's reasons; bad arguments the schema's.
        assert f"no plan {plan_id + 1000}" in await refused(
            client, "show_plan", plan_id=plan_id + 1000
        )
        assert "has no run going" in await refused(client, "stop_run", plan_id=plan_id)
        assert "plan_id" in await refused(client, "status", plan_id="one")
        assert "is active, not a draft" in await refused(
            client, "edit_plan", plan_id=plan_id, plan_file="title: x\ntickets: [{id: a}]\n"
        )

        read = await client.read_resource(f"swarm://tickets/{ticket_id}")
        assert json.loads(read.contents[0].text)["state"] == "ready"  # type: ignore[union-attr]
        plans = await client.read_resource("swarm://plans")
        assert plan_id in [p["plan_id"] for p in json.loads(plans.contents[0].text)]  # type: ignore[union-attr]


async def test_an_admin_runs_commands_and_moves_files_in_a_sandbox(swarm: Swarm) -> None:
    async with over_http(swarm.url, swarm.token) as client:
        made = await call(client, "create_sandbox", memory_mib=256)
        box = made["id"]
        try:
            assert made["state"] == "running" and made["backend"] == "bwrap"
            listed = await call(client, "list_sandboxes")
            assert box in [s["id"] for s in listed["sandboxes"]]
            written = await call(
                client, "sandbox_write_file", sandbox_id=box, path="bin/hi.sh",
                content="echo hello from $(pwd)\n", mode=0o755,
            )  # fmt: skip
            assert written["path"] == "bin/hi.sh", written
            ran = await call(client, "sandbox_exec", sandbox_id=box, command="bin/hi.sh > out.txt")
            assert ran["exit_code"] == 0 and ran["timed_out"] is False, ran
            out = await call(client, "sandbox_read_file", sandbox_id=box, path="out.txt")
            assert out.startswith("hello from /")
            failed = await call(client, "sandbox_exec", sandbox_id=box, command="ls nothing-here")
            assert failed["exit_code"] != 0 and "nothing-here" in failed["stderr"]
            assert "climbs out" in await refused(
                client, "sandbox_read_file", sandbox_id=box, path="../../etc/passwd"
            )
        finally:
            gone = await call(client, "destroy_sandbox", sandbox_id=box)
        assert gone == f"sandbox {box} is destroyed"
        assert "no sandbox" in await refused(client, "sandbox_exec", sandbox_id=box, command="true")


async def test_a_ticket_is_cancelled_and_a_plan_read_as_a_resource(swarm: Swarm) -> None:
    with swarm.api() as admin:
        b = TicketSpec(id="b", title="b", depends_on=["a"])
        plan = admin.create_plan(
            PlanSpec(title="to cancel", tickets=[TicketSpec(id="a", title="a"), b])
        )
        tickets = {t.key: t for t in admin.all_tickets(plan_id=plan.id)}
    async with over_http(swarm.url, swarm.token) as client:
        a = tickets["a"].id
        assert "no agent" in await refused(client, "stop_agent", ticket_id=a)
        cancelled = await call(client, "cancel_ticket", ticket_id=a, reason="not needed")
        assert cancelled["state"] == "cancelled"
        status = await call(client, "status", plan_id=plan.id)
        assert status["progress"]["by_state"] == {"cancelled": 1, "pending": 1}
        assert status["settled"] is True  # b waits on a, which nobody works
        templates = await client.list_resource_templates()
        uris = {t.uri_template for t in templates.resource_templates}
        assert {"swarm://plans/{plan_id}", "swarm://tickets/{ticket_id}"} <= uris
        read = await client.read_resource(f"swarm://plans/{plan.id}")
        shown = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        assert shown["status"] == "active" and "plan_file" in shown
        assert [t["key"] for t in shown["tickets"]] == ["a", "b"]
        with pytest.raises(MCPError, match="not an id"):
            await client.read_resource("swarm://plans/first")


def test_the_status_of_a_big_plan_stays_short(swarm: Swarm) -> None:
    from swarmstack.mcp_server.views import SHOWN, status

    keys = [f"t{n}" for n in range(SHOWN + 5)]
    with swarm.api() as admin:
        plan = admin.create_plan(
            PlanSpec(title="many", tickets=[TicketSpec(id=k, title=k) for k in keys]), 1
        )
        agent_token = admin.create_token("agent", "failing").token
    with swarm.api(agent_token) as agent:
        while (lease := agent.claim("failing", plan_id=plan.id, wait_s=0)) is not None:
            agent.fail(lease, f"{lease.ticket.key} broke", retryable=False)
    with swarm.api() as admin:
        view = status(admin, plan.id)
    assert view["progress"]["by_state"] == {"dead": len(keys)}
    assert len(view["needs_attention"]) == SHOWN
    assert view["needs_attention_not_shown"].startswith("5 more; list_tickets")
    assert f"{len(keys)} things need attention" in view["summary"]


async def test_over_http_a_caller_without_a_valid_token_is_refused(swarm: Swarm) -> None:
    with swarm.api() as admin:
        agent_token = admin.create_token("agent", "not-an-admin").token
    wrong = "swadmin_0_" + "x" * 43
    for token, status, says in [
        (None, 401, "missing bearer token"),
        (wrong, 401, "unknown token"),
        (agent_token, 403, "needs an admin token"),
    ]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        raw = httpx.post(f"{swarm.url}/mcp", json={}, headers=headers)
        assert raw.status_code == status and says in raw.json()["message"], raw.text
        with pytest.raises(ExceptionGroup) as caught:  # the SDK's client gets no session
            async with over_http(swarm.url, token) as client:
                await client.list_tools()
        assert caught.group_contains(MCPError)


async def test_swarm_mcp_embedded_starts_a_control_plane_of_its_own(tmp_path: Path) -> None:
    async with stdio("--embedded", str(tmp_path / "data")) as client:
        assert await call(client, "list_plans") == {"plans": []}
        assert "there is no plan yet" in await refused(client, "status")
    assert (tmp_path / "data" / "admin.token").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--embedded", "data", "--api", "http://127.0.0.1:9"], "give no --api or --token"),
        (["--api", "http://127.0.0.1:9"], "an admin token is needed"),
    ],
)
@pytest.mark.usefixtures("no_swarm_env")
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], says: str
) -> None:
    from typer.testing import CliRunner

    from swarmstack.cli.main import app

    monkeypatch.setenv("SWARM_DATA_DIR", str(tmp_path))  # no admin.token of a local server
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["mcp", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "data").exists()  # no control plane was started
