"""``swarm pr``: the tickets' pull requests in the local forge."""

from __future__ import annotations

import typer
from rich.table import Table

from swarmstack.cli.common import (
    ApiOption,
    JsonOption,
    TokenOption,
    client,
    console,
    guarded,
    print_json,
)

app = typer.Typer(
    help="Pull requests: one per ticket whose branch reached the forge.", no_args_is_help=True
)


@app.command("ls")
@guarded
def list_pulls(
    plan: int | None = typer.Option(None, "--plan", min=1, help="Only this plan's."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """List pull requests, oldest first."""
    with client(api, token) as api_client:
        pulls = api_client.list_pulls(plan)
    if json_out:
        print_json(pulls)
        return
    table = Table("ticket", "plan", "head", "base", "state", "files", "+", "-")
    for pull in pulls:
        table.add_row(
            str(pull.ticket_id), str(pull.plan_id), pull.head, pull.base, pull.state,
            str(pull.files_changed), f"[green]{pull.insertions}[/]", f"[red]{pull.deletions}[/]",
        )  # fmt: skip
    console.print(table)


@app.command("show")
@guarded
def show(
    ticket: int = typer.Argument(..., min=1, help="The ticket's id."),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """One pull request: its branches, commits and size."""
    with client(api, token) as api_client:
        pull = api_client.get_pull(ticket)
    if json_out:
        print_json(pull)
        return
    console.print(
        f"ticket {pull.ticket_id} (plan {pull.plan_id}): {pull.head} → {pull.base}, {pull.state}\n"
        f"  head {pull.head_sha[:12]}, base {pull.base_sha[:12]}\n"
        f"  {pull.files_changed} files changed, {pull.insertions} insertions(+), "
        f"{pull.deletions} deletions(-)",
        highlight=False,
    )


@app.command("diff")
@guarded
def diff(
    ticket: int = typer.Argument(..., min=1, help="The ticket's id."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """The pull request's unified diff, on stdout as it is."""
    with client(api, token) as api_client:
        text = api_client.pull_diff(ticket)
    typer.echo(text, nl=False)
