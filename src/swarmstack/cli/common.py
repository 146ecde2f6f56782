"""Shared CLI plumbing: turning Swarm errors into one line and an exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from swarmstack.errors import SwarmError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit with ``code`` (2: the input was unusable)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Map any SwarmError to its message and exit code; never show a traceback."""
    try:
        yield
    except SwarmError as exc:
        fail(exc.message, exc.exit_code)


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of :func:`errors_to_exit` for Typer commands."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with errors_to_exit():
            return fn(*args, **kwargs)

    return wrapper


def settings() -> Any:
    """The settings from the environment; a bad value is a usage error, not a traceback."""
    from pydantic import ValidationError

    from swarmstack.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SWARM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        fail(f"bad setting: {problems}")


def client(api_url: str | None, token: str | None) -> Any:
    """A SwarmClient for the CLI: --api/--token, else SWARM_API_URL/SWARM_TOKEN, else the
    admin token a local ``swarm serve`` wrote into the data directory."""
    from swarmstack.client import SwarmClient

    s = settings()
    token = token or s.token
    if token is None and s.admin_token_file.exists():
        token = s.admin_token_file.read_text().strip()
    return SwarmClient(api_url or s.api_url, token)


# The same two options as Annotated aliases, for commands written in that style.
ApiUrl = Annotated[str | None, typer.Option("--api", help="API URL.")]
Token = Annotated[str | None, typer.Option("--token", help="Bearer token.")]
ApiOption = typer.Option(None, "--api", help="API URL (default: $SWARM_API_URL or local).")
TokenOption = typer.Option(None, "--token", help="Bearer token (default: $SWARM_TOKEN).")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
