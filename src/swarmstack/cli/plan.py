"""``swarm plan ...``: check a plan file locally, before anything reaches a server.

Also holds :func:`waves_command`, the local-file form of ``swarm waves``; ``main.py`` wires it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from swarmstack.cli import common
from swarmstack.errors import SwarmError
from swarmstack.tickets.graph import validate, waves_report
from swarmstack.tickets.models import PlanIssue, PlanSpec, ValidationReport, WavesReport
from swarmstack.tickets.plan import load_plan

app = typer.Typer(
    help="Check and import plan files: the DAG of tickets that a swarm of agents will run.",
    no_args_is_help=True,
)

PlanFile = Annotated[
    Path,
    typer.Argument(
        help="Plan file: .json, .yaml or .yml (other extensions are detected from content).",
        show_default=False,
    ),
]
JsonFlag = Annotated[
    bool,
    typer.Option("--json", help="Print machine-readable JSON on stdout instead of a summary."),
]


@app.command("validate")
def validate_command(
    file: PlanFile,
    json_out: JsonFlag = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Treat file conflicts (tickets that share a file and may run at the same "
            "time) as errors instead of warnings.",
        ),
    ] = False,
) -> None:
    """Check a plan file and report every problem at once.

    Exit status: 0 valid, 1 invalid, 2 the file could not be read or parsed.
    """
    spec = _load(file)
    report = validate(spec, strict=strict)
    if json_out:
        common.print_json(report)
    else:
        _print_validation(file, spec, report)
    raise typer.Exit(0 if report.valid else 1)


@app.command("import")
def import_command(
    file: PlanFile,
    json_out: JsonFlag = False,
    max_attempts: Annotated[
        int | None,
        typer.Option("--max-attempts", min=1, max=100, help="Attempts before a ticket is dead."),
    ] = None,
    api: Annotated[str | None, typer.Option("--api", help="API URL.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Bearer token.")] = None,
) -> None:
    """Store a plan on the control plane; tickets without dependencies become ready.

    An invalid plan is refused whole (exit 1) with every problem listed; nothing is stored.
    """
    spec = _load(file)
    report = validate(spec)
    if not report.valid:
        if json_out:
            common.print_json(report)
        else:
            _print_validation(file, spec, report)
        raise typer.Exit(1)
    with common.errors_to_exit(), common.client(api, token) as api_client:
        plan = api_client.create_plan(spec, max_attempts)
    if json_out:
        common.print_json(plan)
    else:
        ready = plan.counts.get("ready", 0)
        common.console.print(
            f"plan {plan.id} “{escape(plan.title)}”: {plan.ticket_count} tickets, {ready} ready"
        )


@app.command("repo")
def repo_command(
    plan_id: Annotated[int, typer.Argument(min=1, help="The plan's id.", show_default=False)],
    source: Annotated[
        Path, typer.Argument(help="The local git repository the plan is for.", show_default=False)
    ],
    json_out: JsonFlag = False,
    api: Annotated[str | None, typer.Option("--api", help="API URL.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Bearer token.")] = None,
) -> None:
    """Give a plan its repository in the control plane's forge (a bare clone of SOURCE):
    sandboxes fetch it and push their branches to it through the git broker."""
    with common.errors_to_exit(), common.client(api, token) as api_client:
        repo = api_client.import_repo(plan_id, str(source.resolve()))
    if json_out:
        common.print_json(repo)
    else:
        common.console.print(
            f"plan {plan_id}: repository {escape(repo['path'])}, work goes into "
            f"{escape(repo['default_branch'])}; sandboxes use {escape(repo['remote'])}"
        )


def waves_command(file: PlanFile, json_out: JsonFlag = False) -> None:
    """Show the waves and the critical path of a local plan file.

    Wave 0 holds tickets with no dependencies; each later wave depends only on earlier ones.
    Exit status: 0 shown, 1 the plan is invalid, 2 the file could not be read or parsed.
    """
    spec = _load(file)
    try:
        report = waves_report(spec)
    except SwarmError as exc:
        _fail(exc)
    if json_out:
        common.print_json(report)
    else:
        print_waves(report, title=spec.title)


def _load(file: Path) -> PlanSpec:
    try:
        return load_plan(file)
    except SwarmError as exc:
        _fail(exc)


def _fail(exc: SwarmError) -> NoReturn:
    # common.fail prints with Rich markup on; ids and paths in the message are data.
    common.fail(exc.message, exc.exit_code)


# -- human output ----------------------------------------------------------------------------


def _print_validation(file: Path, spec: PlanSpec, report: ValidationReport) -> None:
    out = common.console
    errors, warnings = len(report.errors), len(report.warnings)
    out.print(
        f'[bold]{escape(str(file))}[/]: "{escape(spec.title)}" '
        f"with {_count(len(spec.tickets), 'ticket')}",
        highlight=False,
    )
    verdict = "[bold green]valid[/]" if report.valid else "[bold red]invalid[/]"
    out.print(
        f"{verdict}: {_count(errors, 'error')}, {_count(warnings, 'warning')}", highlight=False
    )
    for issue in report.errors:
        _print_issue("[red]error  [/]", issue)
    for issue in report.warnings:
        _print_issue("[yellow]warning[/]", issue)


def _print_issue(label: str, issue: PlanIssue) -> None:
    # soft_wrap: one issue per line whatever the terminal width, so the output greps well.
    message = escape(issue.message)
    if not issue.message.startswith(f"{issue.code}:"):  # "cycle: A -> B -> A" says it already
        message = f"[dim]{issue.code}:[/] {message}"
    common.console.print(f"  {label} {message}", highlight=False, soft_wrap=True)
    if issue.suggested_edge is not None:
        later, earlier = issue.suggested_edge
        common.console.print(
            f"          suggested edge: add '{escape(earlier)}' to the depends_on "
            f"of '{escape(later)}'",
            highlight=False,
            soft_wrap=True,
        )


def print_waves(report: WavesReport, *, title: str | None = None) -> None:
    """Print waves and the critical path as a table; shared with the server-side ``waves``."""
    if title is None:
        title = f"plan {report.plan_id}" if report.plan_id is not None else "plan"
    heading = f"{escape(title)}: {_count(len(report.waves), 'wave')}"
    table = Table(title=heading, title_justify="left")
    table.add_column("wave", justify="right")
    table.add_column("tickets", justify="right")
    table.add_column("ids", overflow="fold")
    for wave in report.waves:
        table.add_row(str(wave.index), str(len(wave.tickets)), escape(", ".join(wave.tickets)))
    common.console.print(table)
    # Not "->": in cycle messages that arrow means "depends on", and this list runs the
    # other way, first ticket to last.
    path = ", ".join(report.critical_path) or "(empty plan)"
    common.console.print(
        f"critical path, in run order (total estimate {report.critical_length:g}): {escape(path)}",
        highlight=False,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
