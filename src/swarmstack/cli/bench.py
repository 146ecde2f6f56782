"""``swarm bench``: benchmarks that print one JSON object each."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from swarmstack.cli.common import console, err_console, guarded, print_json

app = typer.Typer(help="Benchmarks; each prints one JSON object.", no_args_is_help=True)


class DbKind(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


@app.command("claims")
@guarded
def claims(
    agents: int = typer.Option(100, "--agents", min=1, max=2000, help="Concurrent agents."),
    tickets: int = typer.Option(2000, "--tickets", min=1, max=200_000, help="Tickets in the DAG."),
    db: DbKind = typer.Option(DbKind.SQLITE, "--db", help="Which database the server uses."),
    postgres_url: str | None = typer.Option(
        None, "--postgres-url", help="Admin URL to create a scratch database (postgres only)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random DAG."),
    width: int = typer.Option(
        200, "--width", min=1, help="Tickets per layer of the DAG (each depends on the last)."
    ),
    json_out: bool = typer.Option(True, "--json/--no-json", help="Print the JSON object."),
) -> None:
    """Agents over HTTP doing claim → heartbeat → complete on a DAG, against a real server."""
    from swarmstack.bench import claims as bench_claims

    result = bench_claims.run(agents, tickets, db.value, seed, postgres_url, width)
    if json_out:
        print_json(result)
    else:
        console.print(result)


@app.command("schedule")
@guarded
def schedule(
    tickets: int = typer.Option(1000, "--tickets", min=1, max=100_000, help="Tickets in the DAG."),
    agents: int = typer.Option(100, "--agents", min=1, max=2000, help="Concurrent agents."),
    seed: int = typer.Option(0, "--seed", help="Seed of the DAG and of the work durations."),
    target_s: float = typer.Option(
        60.0,
        "--target-s",
        min=0.1,
        max=36_000,
        help="Seconds the shortest possible run would take: durations are scaled to it.",
    ),
    waves: int = typer.Option(8, "--waves", min=1, max=1000, help="Waves of the DAG."),
    db: DbKind = typer.Option(DbKind.SQLITE, "--db", help="Which database the server uses."),
    postgres_url: str | None = typer.Option(
        None, "--postgres-url", help="Admin URL to create a scratch database (postgres only)."
    ),
    json_out: bool = typer.Option(True, "--json/--no-json", help="Print the JSON object."),
) -> None:
    """Agents over HTTP work a DAG of scripted tickets, by default and wave by wave: the
    makespans against their lower bound."""
    from swarmstack.bench import schedule as bench_schedule

    result = bench_schedule.run(
        tickets,
        agents,
        seed=seed,
        target_s=target_s,
        waves=waves,
        db=db.value,
        postgres_url=postgres_url,
    )
    if json_out:
        print_json(result)
    else:
        console.print(result)


@app.command("validate")
@guarded
def validate(
    tickets: int = typer.Option(10_000, "--tickets", min=1, max=1_000_000, help="Plan size."),
    repeat: int = typer.Option(3, "--repeat", min=1, max=100, help="Runs; the best counts."),
    json_out: bool = typer.Option(True, "--json/--no-json", help="Print the JSON object."),
) -> None:
    """Plan validation and wave scheduling on a random DAG and on a chain."""
    from swarmstack.bench import validate as bench_validate

    result = bench_validate.run(tickets, repeat)
    if json_out:
        print_json(result)
    else:
        console.print(result)


class SandboxBackendName(enum.StrEnum):
    BWRAP = "bwrap"
    QEMU = "qemu"


@app.command("sandbox")
@guarded
def sandbox(
    backend: SandboxBackendName = typer.Option(
        SandboxBackendName.BWRAP, "--backend", help="Which sandbox backend to measure."
    ),
    count: int = typer.Option(
        200, "--count", min=1, max=4096, help="Sandboxes to keep alive at once."
    ),
    samples: int = typer.Option(
        100, "--samples", min=1, max=10_000, help="Cold and warm starts to time."
    ),
    warm: int = typer.Option(4, "--warm", min=1, max=256, help="Warm sandboxes in the pool."),
    image: str | None = typer.Option(
        None, "--image", help="The image a VM boots: a key or a directory (default the newest)."
    ),
    json_out: bool = typer.Option(True, "--json/--no-json", help="Print the JSON object."),
) -> None:
    """Cold and warm start times, sandboxes alive at once, and host memory per sandbox."""
    from swarmstack.bench import sandbox as bench_sandbox

    result = bench_sandbox.run(backend.value, count, samples, warm, image)
    if json_out:
        print_json(result)
    else:
        console.print(result)


@app.command("e2e")
@guarded
def e2e(
    agents: int = typer.Option(10, "--agents", min=1, max=200, help="Agent slots (sandboxes)."),
    tickets: int = typer.Option(30, "--tickets", min=1, max=2000, help="Tickets to do."),
    think_s: float = typer.Option(
        1.0, "--think", min=0, max=60, help="Seconds the scripted model takes per turn."
    ),
    per_sandbox: int = typer.Option(
        1,
        "--tickets-per-sandbox",
        min=1,
        max=1000,
        help="Tickets a sandbox's runner works "
        "before a fresh sandbox replaces it (1: a fresh sandbox for every ticket).",
    ),
    json_out: bool = typer.Option(True, "--json/--no-json", help="Print the JSON object."),
) -> None:
    """Scripted tickets through bubblewrap sandboxes, the runner and the real Claude Code CLI:
    wall time, model time and the overhead per ticket."""
    from swarmstack.bench import e2e as bench_e2e

    result = bench_e2e.run(agents, tickets, think_s, per_sandbox)
    if json_out:
        print_json(result)
    else:
        console.print(result)


@app.command("dashboard")
@guarded
def dashboard(
    tickets: int = typer.Option(1000, "--tickets", min=1, max=10_000, help="Tickets in the plan."),
    agents: int = typer.Option(100, "--agents", min=1, max=1000, help="Simulated agents."),
    seconds: float = typer.Option(
        20.0,
        "--seconds",
        min=1,
        max=600,
        help="Seconds the agents work while the page is measured.",
    ),
    turn_s: float = typer.Option(
        2.0,
        "--turn-s",
        min=0.05,
        max=60,
        help="Mean seconds of an agent's turn (it ends with three log lines and a heartbeat).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the plan and of the agents."),
    profile: bool = typer.Option(
        False, "--profile", help="Sample the page's script and list its busiest functions."
    ),
    trace: Path | None = typer.Option(
        None,
        "--trace",
        dir_okay=False,
        help="Save Chromium's performance trace of the window here and add each frame's CPU "
        "time by rendering phase.",
    ),
    json_out: bool = typer.Option(True, "--json/--no-json", help="Print the JSON object."),
) -> None:
    """The dashboard in Debian's Chromium while simulated agents work a big plan: load time,
    frame times, the main thread's busy share, change-to-paint latency, events missed."""
    from swarmstack.bench import dashboard as bench_dashboard

    options = bench_dashboard.Options(
        tickets=tickets,
        agents=agents,
        seconds=seconds,
        turn_s=turn_s,
        seed=seed,
        profile=profile,
        trace=trace,
    )
    result = bench_dashboard.run(
        options, progress=lambda message: err_console.print(message, style="dim")
    )
    if json_out:
        print_json(result)
    else:
        console.print(result)


@app.command("mcp")
@guarded
def mcp(
    tickets: int = typer.Option(1000, "--tickets", min=1, max=20_000, help="Tickets in the plan."),
    agents: int = typer.Option(100, "--agents", min=0, max=1000, help="Agents at work in it."),
    calls: int = typer.Option(20, "--calls", min=1, max=1000, help="Calls of each kind timed."),
    done_share: float = typer.Option(
        0.4, "--done", min=0, max=1, help="The share of the plan done before the calls."
    ),
    dead: int = typer.Option(40, "--dead", min=0, max=10_000, help="Tickets dead before."),
    json_out: bool = typer.Option(True, "--json/--no-json", help="Print the JSON object."),
) -> None:
    """The MCP tool `status` on a big plan mid-run, over stdio (`swarm mcp`) and over HTTP
    (`/mcp`), beside the same view built over the REST API: latency, start-up, answer size."""
    from swarmstack.bench import mcp as bench_mcp

    result = bench_mcp.run(tickets, agents, calls, done_share, dead)
    if json_out:
        print_json(result)
    else:
        console.print(result)
