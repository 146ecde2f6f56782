"""The LLM gateway between agents and the model, and the scripted model behind it in tests.

Real servers on both sides: the control plane and the scripted model each run under uvicorn on
a port of their own, and the clients are the Anthropic SDK and the real Claude Code CLI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from swarmstack.api import create_app
from swarmstack.config import Settings
from swarmstack.errors import UsageError
from swarmstack.llm.prices import PriceTable
from swarmstack.llm.scripted import ScriptedModel, load_script
from swarmstack.llm.scripted import create_app as scripted_app
from swarmstack.llm.sse import StreamWatcher, Usage
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import Lease, PlanSpec, TicketResult, TicketSpec, TicketState
from swarmstack.tickets.store import TicketStore

CANARY_KEY = "sk-ant-api03-CANARY-4f2d9c1e7b"
ADMIN = "swadmin_0_" + "a" * 43
MODEL = "claude-sonnet-4-6"  # $3 in, $15 out per million tokens

SCRIPT: dict[str, Any] = {
    "sessions": [
        {
            "name": "writer",
            "match": r"\bT-1\b",
            "turns": [
                {
                    "content": [
                        {"text": "I will write it."},
                        {"tool_use": {"name": "Write", "input": {"file_path": "a.txt"}}},
                    ],
                    "usage": {"input_tokens": 1000, "output_tokens": 200},
                },
                {
                    "content": [{"text": "Done."}],
                    "usage": {"input_tokens": 1300, "output_tokens": 10},
                },
            ],
        },
        {
            "name": "spender",
            "match": r"\bT-2\b",
            "turns": [
                {"content": ["one"], "usage": {"input_tokens": 1000, "output_tokens": 1000}},
                {"content": ["two"], "usage": {"input_tokens": 1000, "output_tokens": 1000}},
                {"content": ["three"], "usage": {"input_tokens": 1000, "output_tokens": 1000}},
            ],
        },
    ]
}


@dataclass
class World:
    model: ScriptedModel
    store: TicketStore
    settings: Settings
    url: str  # the control plane

    def lease(self, key: str) -> Lease:
        ticket = next(t for t in self.store.list_tickets() if t.key == key)
        lease = self.store.claim(f"agent-{key}", ttl_s=300)
        assert lease is not None and lease.ticket.id == ticket.id
        return lease

    def client(self, token: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=f"{self.url}/llm", api_key=token, max_retries=0)


def _world(
    tmp_path: Path,
    database_url: str,
    *,
    upstream_url: str | None = None,
    plan_budget: float | None = None,
    **settings: Any,
) -> Iterator[World]:
    model = ScriptedModel(load_script(SCRIPT))
    with ThreadedServer(scripted_app(model)) as upstream:
        config = Settings(
            data_dir=tmp_path / "data",
            database_url=database_url,
            llm_upstream_url=upstream_url or upstream.url,
            anthropic_api_key=CANARY_KEY,
            admin_token=ADMIN,
            **settings,
        )
        store = TicketStore.from_settings(config)
        store.migrate()
        # T-1 and T-2 ready at once; T-3 after both.
        store.create_plan(
            PlanSpec(
                title="gateway",
                budget_usd=plan_budget,
                tickets=[
                    TicketSpec(id="T-1", title="write", priority=2),
                    TicketSpec(id="T-2", title="spend", priority=1),
                    TicketSpec(id="T-3", title="after", depends_on=["T-1", "T-2"]),
                ],
            )
        )
        try:
            with ThreadedServer(create_app(config, store=store)) as server:
                yield World(model, store, config, server.url)
        finally:
            store.close()


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    yield from _world(tmp_path, database_url, ticket_budget_usd=0.05)


def _usage_events(world: World, ticket_id: int) -> list[dict[str, Any]]:
    return [
        e.data
        for e in world.store.events_after(0)
        if e.kind == "llm.usage" and e.ticket_id == ticket_id
    ]


def test_a_streamed_call_goes_through_with_the_real_key_and_its_usage_is_recorded(
    world: World,
) -> None:
    lease = world.lease("T-1")
    with world.client(lease.token).messages.stream(
        model=MODEL, max_tokens=512, messages=[{"role": "user", "content": "Do T-1 now."}]
    ) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    # Upstream saw the control plane's key, never the lease token.
    seen = world.model.requests[-1]
    assert seen["headers"]["x-api-key"] == CANARY_KEY
    assert lease.token not in str(seen["headers"]) and seen["session"] == "writer"
    [usage] = _usage_events(world, lease.ticket.id)
    assert usage["input_tokens"] == 1000 and usage["output_tokens"] == 200
    assert usage["model"] == MODEL and usage["priced"] == "table"
    assert usage["cost_usd"] == pytest.approx((1000 * 3 + 200 * 15) / 1e6)
    totals = world.store.usage(ticket_id=lease.ticket.id)
    assert totals.calls == 1 and totals.cost_usd == pytest.approx(0.006)


def test_a_plain_json_call_and_token_counting(world: World) -> None:
    lease = world.lease("T-1")
    client = world.client(lease.token)
    conversation: list[Any] = [{"role": "user", "content": "Do T-1 now."}]
    first = client.messages.create(model=MODEL, max_tokens=512, messages=conversation)
    assert first.stop_reason == "tool_use"
    tool = next(b for b in first.content if b.type == "tool_use")
    conversation += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "ok"}],
        },
    ]
    second = client.messages.create(model=MODEL, max_tokens=512, messages=conversation)
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    counted = client.messages.count_tokens(model=MODEL, messages=conversation)
    assert counted.input_tokens > 0
    events = _usage_events(world, lease.ticket.id)
    assert [e["input_tokens"] for e in events] == [1000, 1300]  # counting is free: no event
    assert events[-1]["ticket_spent_usd"] == pytest.approx(0.006 + (1300 * 3 + 10 * 15) / 1e6)


def test_only_a_live_lease_gets_through(world: World) -> None:
    keyless = httpx.post(f"{world.url}/llm/v1/messages", json={"messages": []})
    assert keyless.status_code == 401
    assert keyless.json()["error"]["message"] == "no key: send the lease token as x-api-key"
    for token in ("garbage", "swagent_1_" + "x" * 40):
        with pytest.raises(anthropic.AuthenticationError):
            _ask(world.client(token), "T-1")
    lease = world.lease("T-1")
    world.store.fail(lease.ticket.id, lease.epoch, "gave up")
    with pytest.raises(anthropic.PermissionDeniedError, match="this lease is over"):
        _ask(world.client(lease.token), "T-1")
    # The next holder of the ticket gets through; the old token still does not.
    world.store.retry(lease.ticket.id)
    newer = world.lease("T-1")
    assert _ask(world.client(newer.token), "T-1").stop_reason == "tool_use"
    with pytest.raises(anthropic.PermissionDeniedError, match="stale"):
        _ask(world.client(lease.token), "T-1")
    assert all(r["headers"].get("x-api-key") == CANARY_KEY for r in world.model.requests)


def test_past_its_budget_a_ticket_is_refused_and_fails_as_over_budget(world: World) -> None:
    lease = world.lease("T-1")  # T-1 first: it has the higher priority
    spender = world.lease("T-2")
    client = world.client(spender.token)
    conversation: list[Any] = [{"role": "user", "content": "Do T-2 now."}]
    for _ in range(3):  # $0.018 a call: the third call starts at $0.036, the fourth is refused
        answer = client.messages.create(model=MODEL, max_tokens=64, messages=conversation)
        conversation += [
            {"role": "assistant", "content": answer.content[0].text},  # type: ignore[union-attr]
            {"role": "user", "content": "go on"},
        ]
    with pytest.raises(
        anthropic.PermissionDeniedError,
        match=r"over budget: ticket \d+ has spent \$0\.0540 of its \$0\.05",
    ):
        client.messages.create(model=MODEL, max_tokens=64, messages=conversation)
    ticket = world.store.get_ticket(spender.ticket.id)
    assert ticket.state is TicketState.DEAD  # not retried: another attempt would spend again
    assert ticket.last_error is not None and ticket.last_error.startswith("over budget")
    dead = [e for e in world.store.events_after(0) if e.kind == "ticket.dead"]
    assert dead and "over budget" in dead[-1].data["reason"]
    assert _ask(world.client(lease.token), "T-1").stop_reason == "tool_use"  # others go on


def test_a_plans_budget_stops_its_tickets(tmp_path: Path) -> None:
    for world in _world(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", plan_budget=0.02):
        first = world.lease("T-1")
        second = world.lease("T-2")
        _ask(world.client(second.token), "T-2")  # $0.018
        _ask(world.client(first.token), "T-1")  # $0.006: the plan is at $0.024
        with pytest.raises(anthropic.PermissionDeniedError, match=r"over budget: plan \d+ has"):
            _ask(world.client(first.token), "T-1")
        plan = world.store.list_plans()[0]
        assert plan.budget_usd == 0.02 and plan.spent_usd == pytest.approx(0.024)
        assert world.store.get_ticket(first.ticket.id).state is TicketState.DEAD


def test_the_settings_give_a_plan_without_its_own_budget_one(tmp_path: Path) -> None:
    for world in _world(tmp_path, f"sqlite:///{tmp_path / 'q.db'}", plan_budget_usd=0.01):
        world.lease("T-1")  # claims go by priority: T-1 first
        lease = world.lease("T-2")
        _ask(world.client(lease.token), "T-2")  # $0.018, past the plan's $0.01
        with pytest.raises(anthropic.PermissionDeniedError, match=r"of its \$0\.01"):
            _ask(world.client(lease.token), "T-2")


def test_an_unreachable_upstream_is_a_clear_502(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    for world in _world(tmp_path, url, upstream_url="http://127.0.0.1:9"):  # nothing listens
        lease = world.lease("T-1")
        with pytest.raises(anthropic.InternalServerError, match="cannot be reached") as caught:
            _ask(world.client(lease.token), "T-1")
        assert caught.value.status_code == 502
        assert _usage_events(world, lease.ticket.id) == []  # nothing was spent


def test_the_scripted_model_answers_errors_and_defaults(tmp_path: Path) -> None:
    script = load_script(
        "sessions:\n"
        "  - match: busy\n"
        "    turns: [{error: {status: 529, type: overloaded_error, message: try later}}]\n"
        "  - turns: [first in order]\n"
        "  - turns: [second in order]\n"
        "default: nothing for you\n"
    )
    model = ScriptedModel(script)
    with ThreadedServer(scripted_app(model)) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.APIStatusError, match="try later") as caught:
            _ask(client, "busy")
        assert caught.value.status_code == 529
        # Sessions without a match go to new conversations in order; a retry keeps its own.
        assert _ask(client, "alpha").content[0].text == "first in order"
        assert _ask(client, "beta").content[0].text == "second in order"
        assert _ask(client, "alpha").content[0].text == "first in order"
        assert _ask(client, "gamma").content[0].text == "nothing for you"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("sessions: [{turns: []}]", "turns: List should have at least 1 item"),
        ("sessions: [{match: '(', turns: [x]}]", "is no regular expression"),
        ("sessions: [{turns: [[{text: a, tool_use: {name: b}}]]}]", "either text or tool_use"),
        ("[1, 2]", "a script is a mapping"),
        ("sessions: {", "neither YAML nor JSON"),
        ("sessions: [{turns: [x], colour: red}]", "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_script_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        load_script(text)


def test_usage_is_read_from_a_stream_in_any_chunking() -> None:
    from swarmstack.llm.scripted import stream_events

    message = ScriptedModel(load_script(SCRIPT)).message(
        {"model": MODEL, "messages": []},
        load_script(SCRIPT).sessions[0].turns[0],
    )
    raw = b"".join(stream_events(message)).replace(b"\n\n", b"\r\n\r\n", 3)
    for size in (1, 7, 64, len(raw)):
        watcher = StreamWatcher()
        for start in range(0, len(raw), size):
            watcher.feed(raw[start : start + size])
        assert watcher.complete and watcher.model == MODEL and watcher.stop_reason == "tool_use"
        assert watcher.usage.input_tokens == 1000 and watcher.usage.output_tokens == 200


def test_prices_by_family_and_an_unknown_model_at_the_dearest_rate(tmp_path: Path) -> None:
    table = PriceTable()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.cost("claude-haiku-4-5-20251001", usage).usd == pytest.approx(6.0)
    assert table.cost("claude-opus-4-1", usage).usd == pytest.approx(90.0)
    cached = Usage(cache_creation_input_tokens=1_000_000, cache_read_input_tokens=1_000_000)
    assert table.cost("claude-sonnet-4-6", cached).usd == pytest.approx(3 * 1.25 + 3 * 0.1)
    unknown = table.cost("some-new-model", usage)
    assert unknown.assumed and unknown.usd == pytest.approx(90.0)
    bad = tmp_path / "prices.json"
    bad.write_text('{"m": {"input": 1}}')
    with pytest.raises(UsageError, match="is no price table"):
        PriceTable.from_file(bad)


def _ask(client: anthropic.Anthropic, key: str) -> Any:
    return client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": f"Do {key} now."}]
    )


# -- the real Claude Code CLI through the gateway ------------------------------------------------


def _claude_cli() -> Path:
    try:
        import claude_agent_sdk
    except ImportError:
        pytest.skip("claude-agent-sdk is not installed: scripts/setup installs it for the tests")
    cli = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    if not cli.is_file():
        pytest.skip(f"this claude-agent-sdk wheel bundles no CLI at {cli}")
    return cli


def test_claude_code_writes_a_file_and_runs_a_command_through_the_gateway(
    tmp_path: Path, database_url: str
) -> None:
    cli = _claude_cli()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    target = workspace / "hello.txt"
    # The script does not know the workspace: Claude Code's system prompt names it.
    write = {"name": "Write", "input": {"file_path": "${workspace}/hello.txt", "content": "hi\n"}}
    show = {"name": "Bash", "input": {"command": "cat hello.txt", "description": "show it"}}
    turns = [["Writing the file.", {"tool_use": write}], [{"tool_use": show}], "Done."]
    SCRIPT["sessions"].insert(0, {"name": "claude-code", "match": r"\bT-1\b", "turns": turns})
    try:
        for world in _world(tmp_path, database_url):
            lease = world.lease("T-1")
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(tmp_path / "home"),
                "ANTHROPIC_BASE_URL": f"{world.url}/llm",
                "ANTHROPIC_API_KEY": lease.token,
                "DISABLE_TELEMETRY": "1",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            }
            argv = [
                str(cli),
                "-p",
                "Implement ticket T-1: write hello.txt.",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                "Write,Bash",
            ]
            done = subprocess.run(
                argv,
                cwd=workspace,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            assert target.read_text() == "hi\n"
            lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
            results = [m for m in lines if m.get("type") == "result"]
            assert results and results[-1]["subtype"] == "success"
            tool_outputs = json.dumps([m for m in lines if m.get("type") == "user"])
            assert "hi" in tool_outputs  # the Bash tool's output came back to the model
            calls = [r for r in world.model.requests if r["path"] == "/v1/messages"]
            assert len(calls) >= 3 and {r["session"] for r in calls} == {"claude-code"}
            assert all(r["headers"].get("x-api-key") == CANARY_KEY for r in calls)
            assert all(lease.token not in json.dumps(r["headers"]) for r in calls)
            usage = _usage_events(world, lease.ticket.id)
            assert len(usage) == len(calls)
            everything = (
                done.stdout
                + done.stderr
                + json.dumps([e.model_dump() for e in world.store.events_after(0)])
            )
            assert CANARY_KEY not in everything
    finally:
        SCRIPT["sessions"].pop(0)


def test_swarm_model_serve_answers_and_refuses_a_bad_script(tmp_path: Path) -> None:
    import socket
    import sys
    import time

    bad = tmp_path / "bad.yaml"
    bad.write_text("sessions: [{turns: []}]\n")
    refused = subprocess.run(
        [sys.executable, "-m", "swarmstack", "model", "serve", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "the script does not fit its format: sessions.0.turns" in refused.stderr
    good = tmp_path / "script.yaml"
    good.write_text("sessions:\n  - match: hello\n    turns: ['hello to you']\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "swarmstack", "model", "serve", str(good), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{port}", api_key="k", max_retries=0
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = _ask(client, "hello")
                break
            except anthropic.APIConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "it did not start"
                time.sleep(0.1)
        assert answer.content[0].text == "hello to you"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_usage_is_reported_per_plan_and_ticket_to_those_who_may_see_it(world: World) -> None:
    from typer.testing import CliRunner

    from swarmstack.cli.main import app
    from swarmstack.client import SwarmClient
    from swarmstack.errors import Forbidden

    writer, spender = world.lease("T-1"), world.lease("T-2")
    _ask(world.client(writer.token), "T-1")  # $0.006
    _ask(world.client(spender.token), "T-2")  # $0.018
    with SwarmClient(world.url, ADMIN) as admin:
        report = admin.usage(plan_id=writer.ticket.plan_id)
    assert report.calls == 2 and report.cost_usd == pytest.approx(0.024)
    assert [t.key for t in report.tickets] == ["T-2", "T-1"]  # costliest first
    assert report.input_tokens == 2000 and report.output_tokens == 1200
    with SwarmClient(world.url, writer.token) as agent:
        own = agent.usage(ticket_id=writer.ticket.id)
        assert own.calls == 1 and own.tickets[0].key == "T-1"
        with pytest.raises(Forbidden):
            agent.usage(ticket_id=spender.ticket.id)
        with pytest.raises(Forbidden):
            agent.usage(plan_id=writer.ticket.plan_id)
    shown = CliRunner().invoke(
        app, ["tickets", "usage", "--plan", "1", "--api", world.url, "--token", ADMIN]
    )
    assert shown.exit_code == 0, shown.output
    assert "T-2" in shown.output and "$0.0240" in shown.output


def test_a_tickets_log_shows_its_events_and_follows_it_to_the_end(world: World) -> None:
    import threading

    from typer.testing import CliRunner

    from swarmstack.cli.main import app

    lease = world.lease("T-1")
    _ask(world.client(lease.token), "T-1")
    common = ["--api", world.url, "--token", ADMIN]
    cli = CliRunner()
    shown = cli.invoke(app, ["tickets", "log", str(lease.ticket.id), *common])
    assert shown.exit_code == 0, shown.output
    kinds = [line.split()[2] for line in shown.output.splitlines()]
    assert kinds == ["ticket.ready", "ticket.claimed", "llm.usage"]
    assert "input_tokens=1000" in shown.output
    # --follow keeps going until the ticket is finished, then stops by itself.
    finisher = threading.Timer(
        0.5, lambda: world.store.complete(lease.ticket.id, lease.epoch, TicketResult())
    )
    finisher.start()
    followed = cli.invoke(
        app,
        [
            "tickets",
            "log",
            str(lease.ticket.id),
            "--follow",
            "--json",
            "--interval",
            "0.1",
            *common,
        ],
    )
    finisher.join()
    assert followed.exit_code == 0, followed.output
    events = [json.loads(line) for line in followed.output.splitlines()]
    assert [e["kind"] for e in events][-1] == "ticket.done"
    assert {e["ticket_id"] for e in events} == {lease.ticket.id}
    missing = cli.invoke(app, ["tickets", "log", "999", *common])
    assert missing.exit_code == 1 and "no ticket 999" in missing.output
