"""``swarm bench e2e``: tickets through real sandboxes and the real Claude Code CLI.

A real ``swarm serve`` (child process) holds a sample repository and a plan of ``tickets``
independent tickets; the scripted model (another child process) answers every ticket's
session — write a module and its test, run the test, report — after ``think_s`` seconds per
turn, as a model would take a while; ``agents`` slots, each a bubblewrap sandbox with a runner
in it, work them through the LLM gateway and the git broker.

What it prints:

* ``wall_s``: from the plan's import — the host already running, each slot's first sandbox
  made and its runner loaded, as a host waiting for work keeps them — to the last ticket done;
* ``model_s``: the time agents spent waiting for the model, as Claude Code measures it
  (``duration_api_ms`` of its result, summed over the tickets);
* ``overhead_per_ticket_s`` = ``(wall_s * agents - model_s) / tickets_done``: the agent-slot
  seconds each ticket took beyond waiting for the model — the sandbox, the runner, Claude Code
  itself, the clone and the push, the API calls, and any slot left idle at the end;
* ``agent_s``: the time Claude Code ran, model waits included, summed over the tickets, and
  ``swarm_overhead_per_ticket_s`` = ``(wall_s * agents - agent_s) / tickets_done``: what Swarm
  adds around the agent (sandbox, runner, clone, push, API), whichever agent it drives.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from swarmstack.agent.host import AgentHost, HostConfig
from swarmstack.bench.serverproc import ServerProcess, free_port
from swarmstack.client import SwarmClient
from swarmstack.errors import Unavailable
from swarmstack.tickets.models import PlanSpec, TicketSpec

MODEL = "claude-sonnet-4-6"


def session(ticket_id: int, key: str, think_s: float) -> dict[str, Any]:
    ws = f"/workspace/ticket-{ticket_id}"
    name = f"f{ticket_id}"
    module = f"def {name}(x):\n    return x + {ticket_id}\n"
    test = f"from {name} import {name}\nassert {name}(1) == {ticket_id + 1}\nprint('ok')\n"
    write = {"name": "Write", "input": {"file_path": f"{ws}/{name}.py", "content": module}}
    write_test = {
        "name": "Write",
        "input": {"file_path": f"{ws}/test_{name}.py", "content": test},
    }
    run = {"name": "Bash", "input": {"command": f"python3 test_{name}.py", "description": "test"}}
    return {
        "name": key,
        "match": rf"\b{key}\b",
        "delay_s": think_s,
        "turns": [
            [f"Adding {name}.", {"tool_use": write}],
            [{"tool_use": write_test}],
            [{"tool_use": run}],
            f"Added {name}() with its test; it passes.",
        ],
    }


def sample_repo(path: Path, files: dict[str, str] | None = None, message: str = "start") -> Path:
    """A git repository on ``main`` holding ``files`` (name: text; default a README)."""
    path.mkdir(parents=True)
    for name, text in (files or {"README.md": "# bench\n"}).items():
        (path / name).write_text(text)
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=Swarm", "-c", "user.email=swarm@swarm.invalid", "commit",
         "-qm", message],
    ):  # fmt: skip
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return path


def run(
    agents: int,
    tickets: int,
    think_s: float = 1.0,
    per_sandbox: int = 1,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="swarm-bench-e2e-", dir="/var/tmp"))
    root.chmod(0o711)
    try:
        return _run(root, agents, tickets, think_s, per_sandbox, timeout_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(
    root: Path, agents: int, tickets: int, think_s: float, per_sandbox: int, timeout_s: float
) -> dict[str, Any]:
    keys = [f"T-{i}" for i in range(1, tickets + 1)]
    # A fresh database numbers the tickets from 1 in plan order.
    script = {"model": MODEL, "sessions": [session(i, k, think_s) for i, k in enumerate(keys, 1)]}
    script_file = root / "script.json"
    script_file.write_text(json.dumps(script))
    model_port = free_port()
    model = subprocess.Popen(
        [sys.executable, "-m", "swarmstack", "model", "serve", str(script_file),
         "--port", str(model_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{model_port}/v1/messages/count_tokens")
        env = {
            "SWARM_LLM_UPSTREAM_URL": f"http://127.0.0.1:{model_port}",
            "SWARM_ANTHROPIC_API_KEY": "sk-ant-bench-not-a-key",
            "SWARM_TICKET_BUDGET_USD": "5",
        }
        with ServerProcess(root / "data", env=env) as server:
            return asyncio.run(_drive(server, root, agents, keys, per_sandbox, timeout_s))
    finally:
        model.terminate()
        model.wait(timeout=10)


async def _drive(
    server: ServerProcess,
    root: Path,
    agents: int,
    keys: list[str],
    per_sandbox: int,
    timeout_s: float,
) -> dict[str, Any]:
    with SwarmClient(server.url, server.admin_token, timeout=60) as admin:
        token = admin.create_token("agent", "bench-host").token
        config = HostConfig(
            api_url=server.url,
            token=token,
            state_dir=root / "host",
            agents=agents,
            plan_id=1,  # the first plan of a fresh database
            wait_s=5.0,
            tickets_per_sandbox=per_sandbox,
            runner_args=["--model", MODEL],
        )
        async with AgentHost(config) as host:
            # A host that waits for work keeps its slots warm; the clock starts with the work.
            await host.warm()
            repo = sample_repo(root / "sample")
            started = time.monotonic()
            plan = admin.create_plan(
                PlanSpec(title="bench", tickets=[TicketSpec(id=k, title=f"add {k}") for k in keys])
            )
            admin.import_repo(plan.id, str(repo))
            slots = asyncio.create_task(host.run())
            done = 0
            deadline = started + timeout_s
            while done < len(keys):
                if time.monotonic() > deadline:
                    raise Unavailable(f"{done} of {len(keys)} tickets done after {timeout_s:g}s")
                if slots.done():
                    slots.result()  # a slot that crashed says why
                    raise Unavailable("the agent slots ended before the tickets were done")
                await asyncio.sleep(0.1)
                counts = (await asyncio.to_thread(admin.get_plan, plan.id)).counts
                done = counts.get("done", 0)
                finished = done + counts.get("dead", 0)
                if finished == len(keys) and done < len(keys):
                    break
            wall_s = time.monotonic() - started
            await host.stop()
            report = await asyncio.wait_for(slots, 120)
        pulls = admin.list_pulls(plan.id)
        import os

        if os.environ.get("SWARM_BENCH_DUMP"):
            evs = admin.events(0, limit=10000, plan_id=plan.id).events
            Path(os.environ["SWARM_BENCH_DUMP"]).write_text(
                json.dumps([e.model_dump() for e in evs])
            )
        usage = admin.usage(plan_id=plan.id)
    outcomes = [o for o in report.outcomes if o["state"] == "done"]
    model_s = sum(float(o["model_s"]) for o in outcomes)
    agent_s = sum(float(o["agent_s"]) for o in outcomes)
    creates = [r.create_s for r in report.runs]
    return {
        "agents": agents,
        "tickets": len(keys),
        "tickets_done": done,
        "pull_requests": len(pulls),
        "wall_s": round(wall_s, 2),
        "model_s": round(model_s, 2),
        "agent_s": round(agent_s, 2),
        "overhead_per_ticket_s": round((wall_s * agents - model_s) / max(done, 1), 3),
        "swarm_overhead_per_ticket_s": round((wall_s * agents - agent_s) / max(done, 1), 3),
        "ticket_s_p50": round(statistics.median(float(o["seconds"]) for o in outcomes), 2)
        if outcomes
        else None,
        "sandbox_create_s_p50": round(statistics.median(creates), 3) if creates else None,
        "model_calls": usage.calls,
        "think_s": float(json.loads((root / "script.json").read_text())["sessions"][0]["delay_s"]),
        "tickets_per_sandbox": per_sandbox,
        "cpus": os.cpu_count(),
        "backend": "bwrap",
        "driver": "claude-code",
    }


def _wait_for(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.post(url, json={}, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise Unavailable(f"the scripted model did not start at {url}")
