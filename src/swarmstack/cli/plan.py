"""``swarm plan ...``: check a plan file locally, before anything reaches a server; store it
whole or as a draft; read, export, edit and approve a stored draft; pause and resume it, and
start, stop and list the runs of agents the control plane puts on it.

Also holds :func:`waves_command`, the local-file form of ``swarm waves``; ``main.py`` wires it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from swarmstack.cli import common
from swarmstack.cli.common import ApiUrl, Token
from swarmstack.cli.design import design_command, log_command
from swarmstack.errors import SwarmError, UsageError
from swarmstack.tickets.design import coverage
from swarmstack.tickets.graph import validate, waves_report
from swarmstack.tickets.models import Plan, PlanIssue, PlanSpec, ValidationReport, WavesReport
from swarmstack.tickets.plan import load_plan

SPEC_SUFFIXES = (".md", ".markdown", ".txt", ".rst")


class _PlanGroup(TyperGroup):
    """``swarm plan SPEC.md …`` is ``swarm plan design SPEC.md …``: a first argument that
    names no command but a spec file is taken as the spec. Anything else stays an unknown
    command, so a typo is not mistaken for a spec."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # typer's own click types
        first = args[0] if args else ""
        unknown = first and first not in self.commands and not first.startswith("-")
        if unknown and (first.lower().endswith(SPEC_SUFFIXES) or Path(first).is_file()):
            args = ["design", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_PlanGroup,
    help="Design, check, import, review and approve plans: the DAG of tickets that a swarm "
    "of agents will run. `swarm plan SPEC.md --repo PATH` designs one from a spec.",
    no_args_is_help=True,
)
app.command("design")(design_command)
app.command("log")(log_command)

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
PlanId = Annotated[int, typer.Argument(min=1, help="The stored plan's id.", show_default=False)]
MaxAttempts = Annotated[
    int | None,
    typer.Option("--max-attempts", min=1, max=100, help="Attempts before a ticket is dead."),
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
    max_attempts: MaxAttempts = None,
    draft: Annotated[
        bool,
        typer.Option(
            "--draft",
            help="Store the plan file only, as a draft to review, edit and approve: no "
            "tickets until `swarm plan approve`.",
        ),
    ] = False,
    into: Annotated[
        int | None,
        typer.Option(
            "--into",
            min=1,
            help="Replace the plan file of this draft (an edited export) instead of storing "
            "a new plan.",
        ),
    ] = None,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """Store a plan on the control plane; tickets without dependencies become ready.

    With --draft it is stored without tickets; with --into ID it replaces draft ID's plan file.
    An invalid plan is refused whole (exit 1) with every problem listed; nothing is stored.
    """
    if max_attempts is not None and (draft or into is not None):
        common.fail(
            "--max-attempts is for the tickets, which a draft gets when approved: give it to "
            "`swarm plan approve`"
        )
    spec = _load(file)
    report = validate(spec)
    if not report.valid:
        if json_out:
            common.print_json(report)
        else:
            _print_validation(file, spec, report)
        raise typer.Exit(1)
    with common.errors_to_exit(), common.client(api, token) as api_client:
        if into is not None:
            plan = api_client.replace_draft(into, spec)
        else:
            plan = api_client.create_plan(spec, max_attempts, draft=draft)
    if json_out:
        common.print_json(plan)
    elif into is not None:
        common.console.print(
            f"plan {plan.id} “{escape(plan.title)}”: draft replaced, now "
            f"{_count(len(spec.tickets), 'ticket')}"
        )
    elif draft:
        common.console.print(
            f"plan {plan.id} “{escape(plan.title)}”: stored as a draft with "
            f"{_count(len(spec.tickets), 'ticket')}; review it with `swarm plan show {plan.id}`, "
            f"then `swarm plan approve {plan.id}`"
        )
    else:
        ready = plan.counts.get("ready", 0)
        common.console.print(
            f"plan {plan.id} “{escape(plan.title)}”: {plan.ticket_count} tickets, {ready} ready"
        )


@app.command("show")
def show_command(
    plan_id: PlanId,
    json_out: JsonFlag = False,
    tickets: Annotated[
        bool, typer.Option("--tickets", help="Also list every ticket, wave by wave.")
    ] = False,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """Show a stored plan: its status, which tickets cover each requirement, and its waves.

    What to read before approving a draft. A plan still being designed, or whose design
    failed, has no plan file yet: only its status (and error) are shown.
    """
    with common.errors_to_exit(), common.client(api, token) as api_client:
        if not json_out:
            show_plan(api_client, plan_id, tickets=tickets)
            return
        plan, spec, waves = _fetch(api_client, plan_id)
    common.print_json(
        {
            "plan": plan.model_dump(mode="json"),
            "spec": spec.model_dump(mode="json") if spec is not None else None,
            "waves": waves.model_dump(mode="json") if waves is not None else None,
            "coverage": coverage(spec) if spec is not None else {},
        }
    )


def show_plan(api_client: Any, plan_id: int, *, tickets: bool = False) -> None:
    """Print a stored plan as ``swarm plan show`` does (also once a design on the control
    plane is over); SwarmErrors are the caller's to map."""
    plan, spec, waves = _fetch(api_client, plan_id)
    _print_plan(plan, spec)
    if spec is not None and waves is not None:
        _print_shape(spec, waves, title=f"plan {plan.id}", tickets=tickets)


def print_design(spec: PlanSpec, *, tickets: bool = False) -> None:
    """Print a valid plan file's requirement coverage and waves (a plan designed here, not
    stored anywhere)."""
    _print_shape(spec, waves_report(spec), title=spec.title, tickets=tickets)


def _fetch(api_client: Any, plan_id: int) -> tuple[Plan, PlanSpec | None, WavesReport | None]:
    """The plan, and its plan file and waves when it has a plan file (not while it is being
    designed, nor when its design failed)."""
    plan = api_client.get_plan(plan_id)
    if plan.status not in ("draft", "active"):
        return plan, None, None
    return plan, api_client.plan_spec(plan_id), api_client.waves(plan_id)


@app.command("approve")
def approve_command(
    plan_id: PlanId,
    max_attempts: MaxAttempts = None,
    json_out: JsonFlag = False,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """Approve a draft: its tickets are made, and those without dependencies become ready.

    Exit status 1 if the plan is not a draft (approved already, or still being designed).
    """
    with common.errors_to_exit(), common.client(api, token) as api_client:
        plan = api_client.approve_plan(plan_id, max_attempts)
    if json_out:
        common.print_json(plan)
    else:
        ready = plan.counts.get("ready", 0)
        common.console.print(
            f"plan {plan.id} approved: {_count(plan.ticket_count, 'ticket')}, {ready} ready"
        )


@app.command("pause")
def pause_command(
    plan_id: PlanId, json_out: JsonFlag = False, api: ApiUrl = None, token: Token = None
) -> None:
    """Pause a plan's run: no ticket of it is handed out until `swarm plan resume`. Agents at
    work finish their tickets, and the merge queue goes on merging."""
    with common.errors_to_exit(), common.client(api, token) as api_client:
        plan = api_client.pause_plan(plan_id)
    if json_out:
        common.print_json(plan)
    else:
        working = plan.counts.get("claimed", 0)
        common.console.print(
            f"plan {plan.id} paused: no new claims; {_count(working, 'ticket')} still at work"
        )


@app.command("resume")
def resume_command(
    plan_id: PlanId, json_out: JsonFlag = False, api: ApiUrl = None, token: Token = None
) -> None:
    """Resume a paused plan: its ready tickets are handed out again."""
    with common.errors_to_exit(), common.client(api, token) as api_client:
        plan = api_client.resume_plan(plan_id)
    if json_out:
        common.print_json(plan)
    else:
        ready = plan.counts.get("ready", 0)
        common.console.print(f"plan {plan.id} resumed: {ready} ready")


@app.command("start")
def start_command(
    plan_id: PlanId,
    agents: Annotated[
        int, typer.Option("--agents", "-n", min=1, max=1000, help="Agents at once.")
    ] = 4,
    backend: Annotated[
        str,
        typer.Option(help="Their sandboxes: auto (bubblewrap where installed), bwrap or qemu."),
    ] = "auto",
    json_out: JsonFlag = False,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """Start agents on an approved plan, in the control plane: each a runner in a sandbox of
    its own, until no ticket can move without a person. The run outlives a restart of the
    control plane; `swarm plan stop` ends it."""
    if backend not in ("auto", "bwrap", "qemu"):
        common.fail(f"--backend: {backend!r} is not one of auto, bwrap, qemu")
    with common.errors_to_exit(), common.client(api, token) as api_client:
        run = api_client.start_run(plan_id, agents, backend)
    if json_out:
        common.print_json(run)
    else:
        common.console.print(
            f"plan {plan_id}: run {run.id} started, {_count(run.agents, 'agent')} "
            f"({run.backend}); `swarm plan runs {plan_id}` follows it"
        )


@app.command("stop")
def stop_command(
    plan_id: PlanId, json_out: JsonFlag = False, api: ApiUrl = None, token: Token = None
) -> None:
    """Stop a plan's run: every agent hands its ticket back (the attempt not counted) and every
    sandbox is destroyed; merged work stays. `swarm plan pause` holds work without stopping."""
    with common.errors_to_exit(), common.client(api, token) as api_client:
        run = api_client.stop_run(plan_id)
    if json_out:
        common.print_json(run)
    else:
        common.console.print(f"plan {plan_id}: run {run.id} {run.state}")


@app.command("runs")
def runs_command(
    plan_id: Annotated[
        int | None, typer.Argument(min=1, help="Only this plan's.", show_default=False)
    ] = None,
    json_out: JsonFlag = False,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """List the runs the control plane started, oldest first: agents, backend, state, the
    replica working it, how it ended."""
    with common.errors_to_exit(), common.client(api, token) as api_client:
        runs = api_client.runs(plan_id)
    if json_out:
        common.print_json(runs)
        return
    if not runs:
        common.console.print("no runs yet")
        return
    table = Table("run", "plan", "agents", "backend", "state", "held by", "ended")
    for run in runs:
        held = run.held_by or ("waiting for a control plane" if run.state == "running" else "")
        table.add_row(
            str(run.id),
            str(run.plan_id),
            str(run.agents),
            run.backend,
            run.state,
            escape(held),
            escape(run.reason or ""),
        )
    common.console.print(table)


@app.command("export")
def export_command(
    plan_id: PlanId,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the plan file here instead of to stdout: YAML if it ends in .yaml or "
            ".yml, JSON otherwise. An existing file is replaced.",
        ),
    ] = None,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """Print a stored plan's plan file as JSON, or write it to a file to edit.

    Edit it, then put it back with `swarm plan import FILE --into ID` (drafts only).
    """
    with common.errors_to_exit(), common.client(api, token) as api_client:
        spec = api_client.plan_spec(plan_id)
    if out is None:
        common.print_json(spec)
        return
    with common.errors_to_exit():
        write_plan_file(out, spec)
    common.console.print(
        f"plan {plan_id} “{escape(spec.title)}”: {_count(len(spec.tickets), 'ticket')} "
        f"written to {escape(str(out))}",
        highlight=False,
    )


def write_plan_file(path: Path, spec: PlanSpec) -> None:
    """Write a plan file that ``swarm plan import`` reads back as the same plan: YAML when the
    name ends in .yaml or .yml, JSON otherwise. An existing file is replaced whole."""
    data = spec.model_dump(mode="json")
    if path.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        _write_atomically(path, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _write_atomically(path: Path, text: str) -> None:
    """Write into a temporary file beside ``path``, then rename it over ``path``: a reader (or
    an editor) never sees half a file, and a failed write leaves the old one alone."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), _mode_for(path))  # mkstemp's 0600 is not what a user expects
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The mode the file has, or the one a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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


@app.command("github")
def github_command(
    plan_id: Annotated[int, typer.Argument(min=1, help="The plan's id.", show_default=False)],
    repository: Annotated[
        str, typer.Argument(help="The GitHub repository, owner/name.", show_default=False)
    ],
    create: Annotated[
        bool, typer.Option("--create-repo", help="Create it (private) if it is missing.")
    ] = False,
    json_out: JsonFlag = False,
    api: Annotated[str | None, typer.Option("--api", help="API URL.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Bearer token.")] = None,
) -> None:
    """Publish a plan's work to GitHub: one pull request per ticket, merged by the merge queue
    in DAG order, with the control plane's GITHUB_TOKEN (which never enters a sandbox)."""
    with common.errors_to_exit(), common.client(api, token) as api_client:
        linked = api_client.link_github(plan_id, repository, create)
    if json_out:
        common.print_json(linked)
    else:
        made = "created, " if linked["created"] else ""
        common.console.print(
            f"plan {plan_id}: publishing to {escape(linked['url'])} ({made}integration branch "
            f"{escape(linked['branch'])})"
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


_STATUS_STYLE = {"designing": "yellow", "draft": "cyan", "failed": "bold red", "active": "green"}


def _print_plan(plan: Plan, spec: PlanSpec | None) -> None:
    out = common.console
    style = _STATUS_STYLE.get(plan.status, "")
    out.print(f"[bold]plan {plan.id}[/] “{escape(plan.title)}”", highlight=False)
    if plan.status == "active":
        counts = ", ".join(f"{n} {state}" for state, n in sorted(plan.counts.items()))
        detail = f"{_count(plan.ticket_count, 'ticket')}" + (f" ({counts})" if counts else "")
    elif plan.status == "draft" and spec is not None:
        detail = (
            f"{_count(len(spec.tickets), 'ticket')} in its plan file, none made yet; "
            f"approve with `swarm plan approve {plan.id}`"
        )
    elif plan.status == "designing":
        detail = "a design agent is writing its plan file"
    else:
        detail = escape(plan.error or "its design failed")
    out.print(f"[{style}]{plan.status}[/]: {detail}", highlight=False, soft_wrap=True)


def _print_shape(spec: PlanSpec, waves: WavesReport, *, title: str, tickets: bool) -> None:
    """Requirement coverage, then the waves (and, with ``tickets``, every ticket)."""
    _print_coverage(spec, coverage(spec))
    print_waves(waves, title=title)
    if tickets:
        _print_tickets(spec, waves)


def _print_coverage(spec: PlanSpec, covered: dict[str, list[str]]) -> None:
    if not spec.requirements:
        common.console.print("[dim]no requirements listed[/]")
        return
    texts = {r.id: r.text for r in reversed(spec.requirements)}  # the first of a duplicate
    table = Table(title="requirements", title_justify="left")
    table.add_column("id")
    table.add_column("requirement", overflow="fold")
    table.add_column("covered by", overflow="fold")
    for rid, tickets in covered.items():
        if tickets:
            table.add_row(escape(rid), escape(texts[rid]), escape(", ".join(tickets)))
        else:
            table.add_row(f"[red]{escape(rid)}[/]", escape(texts[rid]), "[bold red]uncovered[/]")
    common.console.print(table)


def _print_tickets(spec: PlanSpec, waves: WavesReport) -> None:
    by_id = {t.id: t for t in reversed(spec.tickets)}
    table = Table(title="tickets", title_justify="left")
    for column in ("wave", "id", "phase", "estimate", "depends on", "title"):
        table.add_column(
            column, overflow="fold", justify="right" if column in ("wave", "estimate") else "left"
        )
    for wave in waves.waves:
        for key in wave.tickets:
            t = by_id[key]
            table.add_row(
                str(wave.index), escape(key), t.phase, f"{t.estimate:g}",
                escape(", ".join(t.depends_on)), escape(t.title),
            )  # fmt: skip
    common.console.print(table)


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
