"""``swarm demo``: the bundled example, from its spec to a merged, tested repository.

It is ``swarm run`` on embedded defaults: a fresh control plane (SQLite, the local forge), the
bundled spec and starting repository (a command-line todo list), and the scripted model
answering in place of Claude — the design agent's recorded answers (``design.yaml``) and
each coding agent's (``agents.yaml``). Everything else is real: the design agent's phases and
checks, agents in sandboxes running the Claude Code CLI through the LLM gateway, branches
through the git broker, the merge queue merging in DAG order and running the repository's
tests on every merge. Two tickets of one wave are planned to collide in one file; the one
merged second is sent back, and its agent resolves the conflict — no person involved.

At the end the integration branch's own tests run once more in a fresh sandbox. With
``ANTHROPIC_API_KEY`` set, ``swarm run`` on the same spec and repository uses Claude for real.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from swarmstack.config import Settings
from swarmstack.forge.checks import run_checks
from swarmstack.forge.queue import repo_config
from swarmstack.llm.scripted import ScriptedModel, load_script
from swarmstack.llm.scripted import create_app as scripted_app
from swarmstack.run import RunOptions, Summary, SwarmRun
from swarmstack.threaded import ThreadedServer

EXAMPLE = Path(__file__).resolve().parent / "examples" / "todo"
_GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}


def example_script(example: Path = EXAMPLE) -> dict[str, Any]:
    """The scripted model's sessions for the example: the design agent's and the agents'."""
    sessions: list[Any] = []
    model = None
    for name in ("design.yaml", "agents.yaml"):
        script = yaml.safe_load((example / name).read_text())
        sessions += script.get("sessions", [])
        model = model or script.get("model")
    return {"model": model or "claude-sonnet-4-6", "sessions": sessions}


def example_repo(target: Path, example: Path = EXAMPLE) -> Path:
    """A git repository on ``main`` holding the example's starting files."""
    shutil.copytree(example / "repo", target)
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=Swarm", "-c", "user.email=swarm@swarm.invalid", "commit",
         "-qm", "The starting point"],
    ):  # fmt: skip
        subprocess.run(argv, cwd=target, env=_GIT_ENV, check=True, capture_output=True)
    return target


def run_demo(
    *,
    agents: int = 4,
    data_dir: Path | None = None,
    quiet: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the example end to end; returns the demo's summary."""
    console = console or Console(stderr=True)
    work = data_dir or Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    repo = example_repo(work / "todo")
    model = ScriptedModel(load_script(example_script()))
    with ThreadedServer(scripted_app(model)) as upstream:
        options = RunOptions(
            spec=EXAMPLE / "spec.md",
            repo=str(repo),
            agents=agents,
            approve=True,
            data_dir=work / ".swarm",
            # The scripted model answers for Claude: no key of the caller's goes to it.
            server_env={
                "SWARM_LLM_UPSTREAM_URL": upstream.url,
                "SWARM_ANTHROPIC_API_KEY": "scripted-model",
                "ANTHROPIC_API_KEY": "scripted-model",
            },
            quiet=quiet,
        )
        if not quiet:
            console.print(
                f"[bold]Swarm demo[/]: {EXAMPLE.name} from its spec, {agents} agents; the "
                f"scripted model at {upstream.url} answers for Claude. Working in {work}.",
                highlight=False,
            )
        run = SwarmRun(options, console=console)
        summary = run.run()
        assert summary is not None  # approved: it ran
        tests = _final_checks(run, summary)
    result = {
        "tickets_done": summary.tickets_done,
        "tickets_failed": summary.tickets_failed,
        "prs": summary.prs,
        "merge_conflicts_resolved": summary.merge_conflicts_resolved,
        "tests_passed": tests["passed"],
        "wall_s": round(time.monotonic() - started, 2),
        "tickets": summary.tickets,
        "plan_id": summary.plan_id,
        "integration_branch": summary.integration_branch,
        "integration_sha": summary.integration_sha,
        "tests_command": tests["command"],
        "tests_output": tests["output"],
        "workdir": str(work),
    }
    if not quiet:
        _print(console, result)
    return result


def _final_checks(run: SwarmRun, summary: Summary) -> dict[str, Any]:
    """The integration branch's own tests, on its last commit, in a fresh sandbox."""
    if summary.integration_sha is None:
        return {"passed": False, "command": None, "output": "nothing was merged"}
    repos = run.data_dir / "control-plane" / "repos"
    bare = repos / f"plan-{summary.plan_id}.git"
    command = repo_config(bare, summary.integration_sha).checks
    if command is None:
        return {"passed": False, "command": None, "output": "the repository has no checks"}

    async def check() -> Any:
        from swarmstack.sandbox.bwrap import BwrapBackend

        backend = BwrapBackend(Settings().sandbox_dir / "demo-checks")
        try:
            return await run_checks(backend, bare, summary.integration_sha or "", command)
        finally:
            await backend.close()

    result = asyncio.run(check())
    return {"passed": result.passed, "command": command, "output": result.output[-2000:]}


def _print(console: Console, result: dict[str, Any]) -> None:
    ok = result["tests_passed"] and not result["tickets_failed"]
    colour = "green" if ok else "red"
    console.print(
        f"[{colour}]{result['tickets_done']}/{result['tickets']} tickets done[/], "
        f"{result['tickets_failed']} failed, {result['prs']} pull requests, "
        f"{result['merge_conflicts_resolved']} merge conflict resolved by an agent; "
        f"{result['integration_branch']} at {str(result['integration_sha'])[:12]}: "
        f"`{result['tests_command']}` {'passed' if result['tests_passed'] else 'FAILED'}; "
        f"{result['wall_s']}s",
        highlight=False,
    )
    tail = (result["tests_output"] or "").strip().splitlines()[-3:]
    for line in tail:
        console.print(f"  {line}", highlight=False, markup=False)
    console.print(
        f"The repository is in {result['workdir']}/.swarm/control-plane/repos "
        f"(plan-{result['plan_id']}.git).",
        highlight=False,
    )
