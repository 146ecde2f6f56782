"""``swarm agent``: the runner that works tickets, inside a sandbox (or anywhere it may)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import typer

from swarmstack.cli.common import fail, guarded


@guarded
def agent(
    api_url: str | None = typer.Option(
        None,
        "--api",
        envvar="SWARM_API_URL",
        help="The control plane (inside a sandbox: http://127.0.0.1:<port>, its forwarder).",
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="SWARM_AGENT_TOKEN", help="An agent token (it may only claim)."
    ),
    token_stdin: bool = typer.Option(
        False, "--token-stdin", help="Read the agent token from the first line of stdin."
    ),
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        help="Wait for this file to hold the agent token, read it and "
        "delete it (a host starts runners ahead of the work this way).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Who claims, for the record (default: the sandbox id or host)."
    ),
    driver: str = typer.Option("claude-code", "--driver", help="claude-code, command or builtin."),
    command: str | None = typer.Option(
        None, "--command", help="The command driver's template, e.g. 'aider --message {prompt}'."
    ),
    claude: str | None = typer.Option(None, "--claude", help="The Claude Code CLI to run."),
    model: str | None = typer.Option(None, "--model", help="The model the driver asks for."),
    plan_id: int | None = typer.Option(None, "--plan", min=1, help="Only this plan's tickets."),
    work_root: Path = typer.Option(
        Path(os.environ.get("SWARM_WORKSPACE", "/workspace")),
        "--workspace",
        help="Where tickets' workspaces are made.",
    ),
    state_file: Path | None = typer.Option(
        None,
        "--state-file",
        help="Where the current lease is kept, so a restart releases it "
        "(default: ~/.swarm/lease.json).",
    ),
    once: bool = typer.Option(False, "--once", help="Work one ticket, then exit."),
    max_tickets: int | None = typer.Option(None, "--max-tickets", min=1, help="Then exit."),
    idle_exit_s: float | None = typer.Option(
        None, "--idle-exit", min=0, help="Exit after this many seconds with nothing to claim."
    ),
    wait_s: float = typer.Option(30.0, "--wait", min=0, max=3600, help="Long-poll this long."),
    ttl_s: float | None = typer.Option(None, "--ttl", min=1, help="Lease length in seconds."),
    timeout_s: float = typer.Option(
        1800.0, "--timeout", min=1, help="Give a ticket up after this many seconds."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the outcomes as JSON at the end."),
    sandbox_backend: str | None = typer.Option(
        None,
        "--sandbox-backend",
        help="The kind of sandbox this runs in (bwrap, qemu…), reported with each heartbeat.",
    ),
    end_on_lost: bool = typer.Option(
        False,
        "--end-on-lost",
        help="Exit when a lease is lost (taken away or expired), so a fresh sandbox replaces "
        "this one.",
    ),
) -> None:
    """Pull tickets and work them: claim, clone from the git broker, run the driver, commit,
    push swarm/<ticket id>, complete (or fail, with the reason). SIGTERM releases the lease."""
    from swarmstack.agent.drivers import make_driver
    from swarmstack.agent.runner import Runner, RunnerConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    pid_file = Path.home() / ".swarm" / "runner.pid"  # how a host asks it to stop
    with contextlib.suppress(OSError):
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    if token_stdin:
        token = sys.stdin.readline().strip()
    if not api_url:
        fail("no control plane: pass --api or set SWARM_API_URL")
    if not token and token_file is None:
        fail(
            "no agent token: pass --token, --token-stdin or --token-file, or set SWARM_AGENT_TOKEN"
        )
    options: dict[str, object] = {}
    if driver == "command":
        if not command:
            fail("the command driver needs --command 'TEMPLATE'")
        options["command"] = command
    elif command:
        fail("--command is for --driver command")
    if driver == "claude-code" and claude:
        options["claude"] = claude
    chosen = make_driver(driver, **options)
    if token_file is not None:
        token = _wait_for_token(token_file)
        if token is None:
            return  # told to stop before there was work for it
    assert token is not None
    runner = Runner(
        RunnerConfig(
            api_url=api_url,
            token=token,
            agent=name or os.environ.get("SWARM_SANDBOX_ID") or os.uname().nodename,
            plan_id=plan_id,
            work_root=work_root,
            state_file=state_file or Path.home() / ".swarm" / "lease.json",
            wait_s=wait_s,
            ttl_s=ttl_s,
            ticket_timeout_s=timeout_s,
            max_tickets=1 if once else max_tickets,
            idle_exit_s=idle_exit_s,
            model=model,
            sandbox_backend=sandbox_backend,
            end_on_lost=end_on_lost,
        ),
        chosen,
    )
    runner.install_signals()
    outcomes = runner.run()
    if as_json:
        print(json.dumps([o.__dict__ for o in outcomes]), flush=True)


def _wait_for_token(path: Path) -> str | None:
    """The token, once ``path`` holds it (then the file is gone); None on SIGTERM first."""
    stopped: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        stopped.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        while not stopped:
            # A stat every 20 ms: cheap enough for a runner that waits a long time.
            raw = path.read_text() if path.exists() else ""
            if raw.endswith("\n"):  # the whole line is there
                path.unlink()
                return raw.strip()
            time.sleep(0.02)
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    """``python -m swarmstack.agent``: the runner alone, without the rest of the CLI."""
    typer.run(agent)
