"""``swarm run SPEC.md --repo PATH``: the main job, from a spec to merged code."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from swarmstack.cli import common
from swarmstack.run import RunOptions, Summary, SwarmRun


class BackendChoice(enum.StrEnum):
    AUTO = "auto"
    BWRAP = "bwrap"
    QEMU = "qemu"
    FIRECRACKER = "firecracker"


def run_command(
    spec: Annotated[
        Path | None,
        typer.Argument(help="The spec, a Markdown file (not with --resume).", show_default=False),
    ] = None,
    repo: Annotated[
        str | None, typer.Option("--repo", help="The repository: a local path or a git URL.")
    ] = None,
    agents: Annotated[
        int | None,
        typer.Option(
            "--agents", min=1, max=1000, help="Agents at once (default 4).", show_default=False
        ),
    ] = None,
    backend: Annotated[
        BackendChoice, typer.Option("--backend", help="Where agents run.")
    ] = BackendChoice.AUTO,
    approve: Annotated[
        bool, typer.Option("--approve", help="Run the plan without asking first.")
    ] = False,
    budget: Annotated[
        float | None,
        typer.Option("--budget", min=0.0, help="What the plan's model calls may cost, in USD."),
    ] = None,
    strict_waves: Annotated[
        bool, typer.Option("--strict-waves", help="Run wave by wave, not as soon as ready.")
    ] = False,
    github: Annotated[
        str | None,
        typer.Option("--github", help="Publish to this GitHub repository (owner/name)."),
    ] = None,
    create_repo: Annotated[
        bool, typer.Option("--create-repo", help="Create the GitHub repository if missing.")
    ] = False,
    plan_file: Annotated[
        Path | None, typer.Option("--plan", help="Run this plan file instead of designing one.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="The design agent's model.")] = None,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the run keeps its control plane's data.")
    ] = Path(".swarm"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run stopped in --data-dir.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="End with one JSON object; no live display.")
    ] = False,
    api: common.ApiUrl = None,
    token: common.Token = None,
) -> None:
    """Design a plan for SPEC, show it and ask, then run it: agents in sandboxes, the merge
    queue merging and checking each ticket's branch in DAG order. Ctrl-C stops cleanly;
    --resume continues."""
    with common.errors_to_exit():
        if resume and (spec is not None or plan_file is not None):
            common.fail("--resume continues the last run: give no spec or --plan with it")
        options = RunOptions(
            spec=spec,
            repo=repo,
            agents=agents,
            backend=backend.value,
            approve=approve,
            budget_usd=budget,
            strict_waves=strict_waves,
            github=github,
            create_repo=create_repo,
            plan_file=plan_file,
            model=model,
            data_dir=data_dir,
            api_url=api,
            token=token,
            resume=resume,
            quiet=json_out,
        )
        job = SwarmRun(options, console=common.err_console, ask=_ask)
        summary = job.run()
    if summary is None:
        raise typer.Exit(0)
    if json_out:
        common.print_json(summary.as_dict())
    else:
        print_summary(summary)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.tickets_failed:
        raise typer.Exit(1)


def _ask(question: str) -> bool:
    return typer.confirm(question, default=True)


def print_summary(summary: Summary) -> None:
    out = common.console
    if summary.interrupted:
        out.print(
            f"[yellow]stopped[/]: {summary.tickets_done}/{summary.tickets} tickets done; "
            "leases released, sandboxes destroyed. swarm run --resume continues.",
            highlight=False,
        )
    else:
        colour = "green" if not summary.tickets_failed else "red"
        out.print(
            f"[{colour}]{summary.tickets_done}/{summary.tickets} tickets done[/], "
            f"{summary.tickets_failed} failed",
            highlight=False,
        )
    if summary.attention:
        out.print(f"[red]needs attention[/]: {escape(', '.join(summary.attention))}")
    branch = summary.integration_branch or "(nothing merged)"
    sha = f" at {summary.integration_sha[:12]}" if summary.integration_sha else ""
    out.print(f"integration branch: {escape(branch)}{sha}", highlight=False)
    out.print(
        f"pull requests: {summary.prs} ({summary.merge_conflicts_resolved} merge conflicts and "
        f"{summary.checks_failures_fixed} failing checks fixed by agents)",
        highlight=False,
    )
    for url in summary.pr_urls:
        out.print(f"  {escape(url)}", highlight=False)
    out.print(f"cost: ${summary.cost_usd:.4f}; wall time {summary.wall_s:.1f}s", highlight=False)
