"""``swarm token``: issue, list and revoke bearer tokens."""

from __future__ import annotations

import enum

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


class Kind(enum.StrEnum):
    AGENT = "agent"
    ADMIN = "admin"


app = typer.Typer(help="Issue, list and revoke API tokens.", no_args_is_help=True)


@app.command("create")
@guarded
def create(
    name: str = typer.Argument(..., help="Who the token is for, e.g. host-3 or alice."),
    kind: Kind = typer.Option(
        Kind.AGENT, "--kind", help="agent (may only claim tickets) or admin (everything)."
    ),
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Issue a token. It is printed once; only its hash is stored."""
    with client(api, token) as api_client:
        created = api_client.create_token(kind.value, name)
    if json_out:
        print_json(created)
    else:
        console.print(created.token, highlight=False, soft_wrap=True)


@app.command("ls")
@guarded
def list_tokens(
    json_out: bool = JsonOption,
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """List tokens (never their secrets)."""
    with client(api, token) as api_client:
        tokens = api_client.list_tokens()
    if json_out:
        print_json(tokens)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "kind", "name", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(str(t.id), t.kind, t.name, "yes" if t.revoked_at else "")
    console.print(table)


@app.command("revoke")
@guarded
def revoke(
    token_id: int = typer.Argument(..., help="The token id, from `swarm token ls`."),
    api: str | None = ApiOption,
    token: str | None = TokenOption,
) -> None:
    """Revoke a token at once."""
    with client(api, token) as api_client:
        api_client.revoke_token(token_id)
    console.print(f"token {token_id} revoked")
