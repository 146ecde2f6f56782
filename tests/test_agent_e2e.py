"""A ticket becomes code: the runner in a real sandbox, the real Claude Code CLI driven by the
scripted model through the LLM gateway, the branch pushed through the git broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent_world import (
    ADMIN,
    CANARY_GITHUB,
    CANARY_KEY,
    SAMPLE_FILES,
    SwarmWorld,
    llm_calls,
    swarm_world,
)
from fake_github import FakeGitHub
from swarmstack.sandbox.base import Limits
from swarmstack.tickets.models import PlanSpec, TicketSpec, TicketState

pytestmark = pytest.mark.asyncio

MUL = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
TEST_MUL = (
    "import unittest\n\nimport calc\n\n\nclass MulTest(unittest.TestCase):\n"
    "    def test_mul(self):\n        self.assertEqual(calc.mul(4, 5), 20)\n"
)


def _require_tools() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (scripts/setup installs it)")
    try:
        from swarmstack.agent.drivers.claude_code import find_cli

        find_cli()
    except Exception as exc:
        pytest.skip(f"no Claude Code CLI: {exc}")


def mul_session(ticket_id: int, key: str = "T-1", **extra: Any) -> dict[str, Any]:
    """Claude Code's turns for "add mul()": read, write, add a test, run the suite, report."""
    ws = f"/workspace/ticket-{ticket_id}"
    run = "python3 -m unittest -v 2>&1"
    return {
        "name": key,
        "match": rf"\b{key}\b",
        "turns": [
            [
                "I will read calc.py first.",
                {"tool_use": {"name": "Read", "input": {"file_path": f"{ws}/calc.py"}}},
            ],
            [
                {
                    "tool_use": {
                        "name": "Write",
                        "input": {"file_path": f"{ws}/calc.py", "content": MUL},
                    }
                }
            ],
            [
                {
                    "tool_use": {
                        "name": "Write",
                        "input": {"file_path": f"{ws}/test_mul.py", "content": TEST_MUL},
                    }
                }
            ],
            [{"tool_use": {"name": "Bash", "input": {"command": run, "description": "run tests"}}}],
            "Added mul() to calc.py with a unittest; all tests pass.",
        ],
        **extra,
    }


def mul_plan() -> PlanSpec:
    return PlanSpec(
        title="calc",
        description="A tiny calculator library.",
        tickets=[
            TicketSpec(
                id="T-1",
                title="Add mul()",
                body="calc.py needs a mul(a, b) that multiplies.",
                acceptance=["calc.mul(4, 5) == 20", "the unittest suite passes"],
                files=["calc.py", "test_mul.py"],
            )
        ],
    )


TOOLS = ["Read", "Write", "Write", "Bash"]


def assert_ticket_implemented(world: SwarmWorld, key: str = "T-1", tools: Any = TOOLS) -> None:
    ticket = world.settled(key)
    assert ticket.state is TicketState.DONE, ticket.last_error
    assert ticket.result is not None and "mul()" in ticket.result.summary
    assert ticket.result.branch == f"swarm/{ticket.id}"
    pull = world.admin.get_pull(ticket.id)
    assert (pull.base, pull.head, pull.state) == ("main", f"swarm/{ticket.id}", "merged")
    # Done means merged: the integration branch is the commit that merged the branch.
    assert pull.merge_sha == world.branch_sha("main")
    added = MUL.count("\n") - SAMPLE_FILES["calc.py"].count("\n") + TEST_MUL.count("\n")
    assert (pull.files_changed, pull.insertions, pull.deletions) == (2, added, 0)
    diff = world.admin.pull_diff(ticket.id)
    assert "+def mul(a, b):" in diff and "+class MulTest" in diff
    kinds = [e.kind for e in world.events(ticket.id)]
    assert "pr.opened" in kinds and kinds.index("ticket.merging") < kinds.index("ticket.merged")
    # The log holds the agent's tool calls and what they printed: the suite ran and passed.
    log = [
        e
        for e in world.events(ticket.id)
        if e.kind.startswith("agent.") and e.data["epoch"] == ticket.epoch
    ]
    calls = [e.data["name"] for e in log if e.kind == "agent.tool_call"]
    assert calls == tools
    outputs = " ".join(e.data["output"] for e in log if e.kind == "agent.tool_result")
    assert "Ran 2 tests" in outputs and "OK" in outputs
    # Every model call went through the gateway, upstream with the real key, and was counted.
    usage = world.admin.usage(ticket_id=ticket.id)
    assert usage.calls >= 5 and usage.cost_usd > 0
    upstream = [r for r in llm_calls(world) if r["session"] == key]
    assert len(upstream) >= 5
    assert all(r["headers"].get("x-api-key") == CANARY_KEY for r in llm_calls(world))


async def test_claude_code_implements_a_ticket_in_a_bubblewrap_sandbox(tmp_path: Path) -> None:
    _require_tools()
    script = {"sessions": [mul_session(1)]}
    with swarm_world(tmp_path, script, mul_plan()) as world:
        assert world.ticket("T-1").id == 1
        async with world.host(backend="bwrap") as host:
            report = await host.run()
        done = [o for o in report.outcomes if o["state"] == "done"]
        assert len(done) == 1, [r.output_tail for r in report.runs]
        assert_ticket_implemented(world)
        # The log reads as a transcript.
        from typer.testing import CliRunner

        from swarmstack.cli.main import app

        shown = CliRunner().invoke(
            app, ["tickets", "log", "1", "--api", world.url, "--token", ADMIN]
        )
        assert shown.exit_code == 0, shown.output
        assert "agent.tool_call    Bash: python3 -m unittest -v 2>&1" in shown.output
        assert "agent.tool_call    Write: /workspace/ticket-1/test_mul.py" in shown.output
        results = [line for line in shown.output.splitlines() if "agent.tool_result" in line]
        # the suite's output, its first lines shown and the rest counted
        assert "test_add" in results[-1] and " lines)" in results[-1]
        assert "ticket.done" in shown.output
        # Nothing of the control plane's secrets reached the agent, its log or the events.
        everything = json.dumps([e.model_dump() for e in world.events()])
        everything += "".join(r.output_tail for r in report.runs)
        assert CANARY_KEY not in everything and CANARY_GITHUB not in everything


# -- secrets stay in the control plane -------------------------------------------------------

DUMP_ENVIRONS = (
    "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; echo; tr '\\0' ' ' < $p/cmdline; "
    "echo; done > $HOME/environs.txt 2>/dev/null; wc -l < $HOME/environs.txt"
)
# Every file a sandbox could have written or been given: all but the read-only system and
# runner code, and the kernel's views.
SCAN_FILES = (
    "grep -rIl -e {key} -e {github} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
    "--exclude-dir=usr --exclude-dir=lib --exclude-dir=opt 2>/dev/null; echo scanned"
)


async def test_the_canaries_reach_no_process_file_log_or_event_of_a_sandbox(
    tmp_path: Path,
) -> None:
    _require_tools()
    session = mul_session(1)
    # Halfway through, the agent dumps the environment and command line of every process in
    # its sandbox (the runner, Claude Code, its shell) into a file.
    dump = {"name": "Bash", "input": {"command": DUMP_ENVIRONS, "description": "dump"}}
    session["turns"].insert(3, [{"tool_use": dump}])
    # The plan is published to GitHub (a fake one) with the control plane's token: its pull
    # request is opened and merged while the agent works in the sandbox that must not see it.
    github = FakeGitHub(tmp_path / "github")
    github.add_user("swarm-bot", CANARY_GITHUB)
    github.start()
    urls = {"github_api_url": github.api_url, "github_git_url": github.url}
    with (
        swarm_world(tmp_path, {"sessions": [session]}, mul_plan(), **urls) as world,
        contextlib.closing(github),
    ):
        world.admin.link_github(world.plan_id, "swarm-bot/calc", create=True)
        async with world.host(backend="bwrap") as host:
            run = await host.run_one(0, keep=True)
            sandbox = host.last_sandbox
            assert sandbox is not None
            try:
                assert [o["state"] for o in run.outcomes] == ["done"], run.output_tail
                environs = await sandbox.exec(["/bin/sh", "-c", "cat $HOME/environs.txt"])
                scan = await sandbox.exec(
                    ["/bin/sh", "-c", SCAN_FILES.format(key=CANARY_KEY, github=CANARY_GITHUB)],
                    timeout_s=120,
                )
            finally:
                await sandbox.destroy()
        dumped = environs.stdout.decode()
        # The dump is real: it holds the gateway address and the lease token Claude Code got.
        assert "ANTHROPIC_BASE_URL=http://127.0.0.1:8420/llm" in dumped
        assert "ANTHROPIC_API_KEY=swlease_1-1_" in dumped and "swarmstack.agent" in dumped
        assert CANARY_KEY not in dumped and CANARY_GITHUB not in dumped
        assert world.agent_token not in dumped  # the agent token came on stdin, in no env
        assert scan.stdout.decode().strip() == "scanned", scan.stdout
        everything = json.dumps([e.model_dump() for e in world.events()]) + run.output_tail
        assert "swlease_1-1_" not in everything  # nor the lease token, in the log
        assert CANARY_KEY not in everything and CANARY_GITHUB not in everything
        assert_ticket_implemented(world, tools=["Read", "Write", "Write", "Bash", "Bash"])
        (pull,) = github.repo("swarm-bot/calc").pulls.values()
        assert pull.head == "swarm/1" and pull.merged_at is not None
        assert github.rev("swarm-bot/calc", "main") == world.branch_sha("main")


# -- a runner that sleeps through its lease ---------------------------------------------------

# SIGSTOP (or SIGCONT) the runner and everything it started: in the sandbox's pid namespace
# those are the processes from the runner's pid on, but for this shell.
STOP_RUNNER = (
    "r=$(cat $HOME/.swarm/runner.pid); for p in /proc/[0-9]*; do p=${p#/proc/}; "
    '[ "$p" -ge "$r" ] && [ "$p" -ne $$ ] && kill -SIG "$p" 2>/dev/null; done; echo $r'
)
STALE_CALLS = r"""
import json, sys, urllib.request, urllib.error
lease = json.load(open(sys.argv[1]))
api, token = "http://127.0.0.1:8420", lease["token"]
tid, epoch = lease["ticket"]["id"], lease["epoch"]
def call(path, body, headers):
    req = urllib.request.Request(api + path, json.dumps(body).encode(), headers)
    req.add_header("content-type", "application/json")
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as exc:
        return exc.code
bearer = {"authorization": "Bearer " + token}
print(json.dumps({
    "heartbeat": call(f"/v1/tickets/{tid}/heartbeat", {"epoch": epoch}, bearer),
    "complete": call(f"/v1/tickets/{tid}/complete", {"epoch": epoch, "result": {}}, bearer),
    "gateway": call("/llm/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 10,
        "messages": [{"role": "user", "content": "T-1"}]}, {"x-api-key": token}),
}))
"""


async def test_a_runner_stopped_past_its_lease_is_refused_everything_when_it_wakes(
    tmp_path: Path,
) -> None:
    _require_tools()
    session = mul_session(1)
    session["turns"][1] = {"content": session["turns"][1], "delay_s": 2.0}  # it is thinking
    with swarm_world(tmp_path, {"sessions": [session]}, mul_plan(), sweep_interval_s=0.2) as world:
        async with world.host(backend="bwrap", runner_args=["--ttl", "2"]) as host:
            sleeper = asyncio.create_task(host.run_one(0, keep=True))
            await _until(lambda: _has_tool_call(world, "Read"), 60)
            sandbox = host._running[0]
            stopped = await sandbox.exec(["/bin/sh", "-c", STOP_RUNNER.replace("SIG", "STOP")])
            assert stopped.ok, stopped.stderr
            # While it sleeps, its lease expires and another runner does the ticket.
            lease_file = await sandbox.exec(["/bin/sh", "-c", "cat $HOME/.swarm/lease.json"])
            await _until(lambda: world.ticket("T-1").state is TicketState.READY, 30)
            other = await host.run_one(1)
            assert [o["state"] for o in other.outcomes] == ["done"], other.output_tail
            assert world.ticket("T-1").epoch == 2
            # The sleeper's lease, tried by hand from inside its sandbox: every write refused.
            await sandbox.write_file("stale.json", lease_file.stdout)
            await sandbox.write_file("stale.py", STALE_CALLS.encode())
            tried = await sandbox.exec(["/usr/bin/python3", "stale.py", "stale.json"])
            assert tried.ok, tried.stderr
            assert json.loads(tried.stdout) == {"heartbeat": 409, "complete": 409, "gateway": 403}
            push = await sandbox.exec(
                ["/bin/sh", "-c", PUSH_WITH.format(token=json.loads(lease_file.stdout)["token"])]
            )
            assert push.exit_code != 0 and b"403" in push.stderr, push.stderr
            # Woken, the runner itself finds its lease gone and gives the ticket up to nobody.
            woken = await sandbox.exec(["/bin/sh", "-c", STOP_RUNNER.replace("SIG", "CONT")])
            assert woken.ok
            run = await asyncio.wait_for(sleeper, 120)
            await sandbox.destroy()
        assert [o["state"] for o in run.outcomes] == ["lost"], run.output_tail
        assert "lease lost" in run.output_tail
        ticket = world.ticket("T-1")
        assert ticket.state is TicketState.DONE and ticket.epoch == 2
        done = [e for e in world.events(ticket.id) if e.kind == "ticket.done"]
        assert [e.data["epoch"] for e in done] == [2]
        assert world.admin.get_pull(ticket.id).head_sha  # the second runner's branch
        assert_ticket_implemented(world)


PUSH_WITH = (
    "cd /workspace && rm -rf probe && git init -q probe && cd probe && "
    "git -c user.name=x -c user.email=x@x commit -q --allow-empty -m probe && "
    "git -c http.extraHeader='Authorization: Bearer {token}' push "
    "http://127.0.0.1:8420/git/plan-1.git HEAD:refs/heads/swarm/1"
)


def _has_tool_call(world: SwarmWorld, name: str) -> bool:
    return any(e.kind == "agent.tool_call" and e.data.get("name") == name for e in world.events())


async def _until(condition: Any, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still not so after {timeout_s}s")
        await asyncio.sleep(0.1)


# -- the same in a QEMU microVM ---------------------------------------------------------------


async def test_claude_code_implements_a_ticket_in_a_qemu_microvm(tmp_path: Path) -> None:
    from sandbox_fixtures import make_backend

    _require_tools()
    with swarm_world(tmp_path, {"sessions": [mul_session(1)]}, mul_plan()) as world:
        host = world.host(backend="qemu", limits=Limits(memory_mib=1024, cpus=2))
        host.backend = make_backend("qemu", host.config.state_dir, control_dir=host.control_dir)
        async with host:
            run = await host.run_one(0)
        assert [o["state"] for o in run.outcomes] == ["done"], run.output_tail
        assert_ticket_implemented(world)
        everything = json.dumps([e.model_dump() for e in world.events()]) + run.output_tail
        assert CANARY_KEY not in everything and CANARY_GITHUB not in everything


# -- a hostile workspace -----------------------------------------------------------------------

HOSTILE = (
    "git config core.fsmonitor 'touch {m}/fsmonitor' && "
    "git config core.hooksPath .hooks && mkdir -p .hooks && "
    "for h in pre-commit post-commit pre-push pre-receive update post-receive post-update "
    "reference-transaction; do printf '#!/bin/sh\\ntouch {m}/hook-'$h'\\n' > .hooks/$h; done && "
    "chmod +x .hooks/* && "
    "git config filter.evil.clean 'touch {m}/clean; cat' && "
    "git config filter.evil.smudge 'touch {m}/smudge; cat' && "
    "git config diff.evil.textconv 'touch {m}/textconv; cat' && "
    "printf '* filter=evil diff=evil\\n' > .gitattributes && echo armed"
)


async def test_a_workspace_git_config_runs_nothing_on_the_host(tmp_path: Path) -> None:
    _require_tools()
    markers = tmp_path / "markers"
    markers.mkdir()
    ws = "/workspace/ticket-1"
    arm = {"name": "Bash", "input": {"command": HOSTILE.format(m=markers), "description": "arm"}}
    note = {"name": "Write", "input": {"file_path": f"{ws}/NOTES.md", "content": "notes\n"}}
    session = {"match": r"\bT-1\b", "turns": [[{"tool_use": arm}], [{"tool_use": note}], "Done."]}
    with swarm_world(tmp_path, {"sessions": [session]}, mul_plan()) as world:
        async with world.host(backend="bwrap") as host:
            run = await host.run_one(0)
        assert [o["state"] for o in run.outcomes] == ["done"], run.output_tail
        ticket = world.ticket("T-1")
        log = [e.data for e in world.events(ticket.id) if e.kind == "agent.tool_result"]
        assert "armed" in log[0]["output"]
        # The hooks and the attributes naming the filter and diff drivers reached the host's
        # repository, which stored the push, diffed it and counted it...
        diff = world.admin.pull_diff(ticket.id)
        assert "+* filter=evil diff=evil" in diff and ".hooks/post-receive" in diff
        assert world.admin.get_pull(ticket.id).files_changed == 10
        # ...and ran none of them.
        assert sorted(p.name for p in markers.iterdir()) == []


# -- budgets and stopping ----------------------------------------------------------------------


async def test_a_session_past_its_budget_is_stopped_and_the_ticket_says_why(
    tmp_path: Path,
) -> None:
    _require_tools()
    costly = {"input_tokens": 2000, "output_tokens": 2000}  # $0.036 a turn at Sonnet's price
    look = {"name": "Bash", "input": {"command": "ls", "description": "look"}}
    turns = [{"content": [{"tool_use": look}], "usage": costly} for _ in range(6)]
    session = {"name": "T-1", "match": r"\bT-1\b", "turns": [*turns, "Done."]}
    with swarm_world(
        tmp_path, {"sessions": [session]}, mul_plan(), ticket_budget_usd=0.05
    ) as world:
        model = ["--model", "claude-sonnet-4-6"]
        async with world.host(backend="bwrap", runner_args=model) as host:
            run = await host.run_one(0)
        ticket = world.ticket("T-1")
        assert ticket.state is TicketState.DEAD
        assert ticket.last_error is not None and "over budget" in ticket.last_error
        assert run.outcomes and run.outcomes[0]["state"] in ("failed", "lost")
        # Two calls fit in $0.05; the third was refused before it reached the model.
        usage = world.admin.usage(ticket_id=ticket.id)
        calls = llm_calls(world)
        assert [r["session"] for r in calls] == ["T-1", "T-1"]
        assert {r["body"]["model"] for r in calls} == {"claude-sonnet-4-6"}
        assert usage.calls == 2 and usage.cost_usd == pytest.approx(0.072)


async def test_sigterm_releases_the_lease_and_the_ticket_is_ready_at_once(
    tmp_path: Path,
) -> None:
    _require_tools()
    session = mul_session(1)
    session["turns"][1] = {"content": session["turns"][1], "delay_s": 30.0}
    with swarm_world(tmp_path, {"sessions": [session]}, mul_plan()) as world:
        async with world.host(backend="bwrap") as host:
            working = asyncio.create_task(host.run_one(0))
            await _until(lambda: _has_tool_call(world, "Read"), 60)
            started = asyncio.get_running_loop().time()
            await host.stop()
            run = await asyncio.wait_for(working, 30)
            took = asyncio.get_running_loop().time() - started
        assert [o["state"] for o in run.outcomes] == ["released"], run.output_tail
        assert took < 15
        ticket = world.ticket("T-1")
        assert (ticket.state, ticket.attempts) == (TicketState.READY, 0)
        kinds = [e.kind for e in world.events(ticket.id)]
        assert kinds[-2:] == ["ticket.released", "ticket.ready"]


# -- swarm host -----------------------------------------------------------------------------


async def test_swarm_host_works_tickets_in_sandboxes_until_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from sandbox_fixtures import state_dir

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (scripts/setup installs it)")
    plan = PlanSpec(
        title="two",
        tickets=[TicketSpec(id="T-1", title="one"), TicketSpec(id="T-2", title="two")],
    )
    with swarm_world(tmp_path, {"sessions": []}, plan) as world:
        root = state_dir()
        command = "sh -c 'echo {ticket_key} > done-{ticket_key}.txt'"
        argv = [
            sys.executable, "-m", "swarmstack", "host", "--api", world.url, "--agents", "2",
            "--state-dir", str(root / "host"), "--runner-arg=--driver",
            "--runner-arg=command", "--runner-arg=--command", f"--runner-arg={command}",
        ]  # fmt: skip
        env = {**os.environ, "SWARM_AGENT_TOKEN": world.agent_token}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            await _until(
                lambda: all(world.ticket(k).state is TicketState.DONE for k in ("T-1", "T-2")),
                90,
            )
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            shutil.rmtree(root, ignore_errors=True)
        assert proc.returncode == 0, out.decode()[-2000:]
        for key in ("T-1", "T-2"):
            ticket = world.ticket(key)
            assert "+" + key in world.admin.pull_diff(ticket.id)
        assert b"ticket 1 done" in out and b"ticket 2 done" in out
