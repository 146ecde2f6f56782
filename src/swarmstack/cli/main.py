"""Entry point of the ``swarm`` command; each command group lives in its own module."""

from __future__ import annotations

from pathlib import Path

import typer

from swarmstack.cli import agent, bench, host, image, model, plan, pr, run, tickets, tokens, vm
from swarmstack.cli.common import (
    ApiOption,
    JsonOption,
    TokenOption,
    client,
    console,
    guarded,
    print_json,
    settings,
)
from swarmstack.cli.mcp import mcp_command

app = typer.Typer(
    name="swarm",
    help="Swarm: turn a written spec into merged, tested code with many coding agents at once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(plan.app, name="plan")
app.add_typer(tickets.app, name="tickets")
app.add_typer(tokens.app, name="token")
app.add_typer(bench.app, name="bench")
app.add_typer(vm.app, name="vm")
app.add_typer(image.app, name="image")
app.add_typer(model.app, name="model")
app.add_typer(pr.app, name="pr")
app.command("agent")(agent.agent)
app.command("run")(run.run_command)
app.command("host")(host.host)
app.command("mcp")(mcp_command)


@app.command()
@guarded
def serve(
    host: str | None = typer.Option(None, "--host", help="Interface to listen on."),
    port: int | None = typer.Option(None, "--port", help="TCP port (default 8420)."),
    database_url: str | None = typer.Option(
        None, "--database-url", help="sqlite:///file or postgresql://… (default: data dir)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Where state lives."),
    plan_file: Path | None = typer.Option(
        None, "--plan", help="Import this plan file at start if no plan is stored yet."
    ),
    example: bool = typer.Option(
        False, "--example", help="Import the bundled example plan if no plan is stored yet."
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Run the control plane: API, event stream, lease sweeper."""
    from swarmstack.server import seed_plan
    from swarmstack.server import serve as run_server

    overrides = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "database_url": database_url,
            "data_dir": data_dir,
        }.items()
        if v is not None
    }
    s = settings().model_copy(update=overrides)
    if example:
        plan_file = Path(__file__).resolve().parent.parent / "examples" / "todo" / "plan.json"
    if plan_file is not None:
        seeded = seed_plan(s, plan_file)
        if seeded is not None:
            console.print(
                f"imported plan {seeded.id}: {seeded.title} ({seeded.ticket_count} tickets)"
            )
    console.print(
        f"Swarm control plane on http://{s.host}:{s.port}  "
        f"(database {s.resolved_database_url().split('://')[0]}, "
        f"admin token in {s.admin_token_file})"
    )
    run_server(s, log_level=log_level)


@app.command()
@guarded
def waves(
    source: str = typer.Argument(..., help="A plan file, or a stored plan's id."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Show a plan's waves (topological generations) and its critical path."""
    if not source.isdigit():
        plan.waves_command(Path(source), json_out)
        return
    with client(api, token) as api_client:
        report = api_client.waves(int(source))
    if json_out:
        print_json(report)
    else:
        plan.print_waves(report)


@app.command()
@guarded
def demo(
    agents: int = typer.Option(4, "--agents", min=1, max=64, help="Agents at once."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Where to work and keep the result (default: a new temp dir)."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="No live display; end with one JSON object."
    ),
) -> None:
    """The bundled example from its spec to merged, tested code: the design agent, agents in
    sandboxes running Claude Code, the merge queue — with the scripted model answering for
    Claude."""
    from swarmstack.demo import run_demo

    summary = run_demo(agents=agents, data_dir=data_dir, quiet=json_out)
    if json_out:
        print_json(summary)
    if summary["tickets_failed"] or not summary["tests_passed"]:
        raise typer.Exit(1)


def main() -> None:
    app()
