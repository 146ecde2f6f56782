"""``swarm plan SPEC.md --repo PATH``: the design agent, from a spec to a draft plan.

With ``--out`` it runs here and writes the plan file; otherwise the control plane runs it
(``POST /v1/plans``), stores the result as a draft, and this command follows its events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from swarmstack.cli import common
from swarmstack.cli.common import ApiUrl, Token
from swarmstack.design.progress import describe
from swarmstack.errors import SwarmError, UsageError

# How often the CLI asks the control plane for a design's new events.
POLL_S = 0.5


def design_command(
    spec_file: Annotated[
        Path, typer.Argument(help="The spec: a Markdown file.", show_default=False)
    ],
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            help="The repository the plan is for: a local path or a git URL (its tree and "
            "key files go into the prompt).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Design here and write the plan file (YAML if it ends in .yaml or .yml, JSON "
            "otherwise) instead of storing a draft on the control plane.",
        ),
    ] = None,
    title: Annotated[str | None, typer.Option("--title", help="The plan's title.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="The model to ask.")] = None,
    max_estimate: Annotated[
        float | None,
        typer.Option("--max-estimate", min=0.1, max=10_000, help="Largest ticket, agent-hours."),
    ] = None,
    repair_rounds: Annotated[
        int | None,
        typer.Option("--repair-rounds", min=0, max=10, help="Repair rounds at most."),
    ] = None,
    no_critique: Annotated[
        bool, typer.Option("--no-critique", help="Skip the model's review of the plan.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Follow the design until the draft is ready."),
    ] = True,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON, without progress.")
    ] = False,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """Design a plan for a spec: requirements, skeleton, tickets, checks, repair rounds.

    Exit status: 0 a valid plan was made, 1 the design failed (nothing is stored or written),
    2 the spec, the repository or an option is unusable.
    """
    from swarmstack.design.repo import is_url, summarize
    from swarmstack.design.request import DesignOptions, DesignRequest

    with common.errors_to_exit():
        spec = _read_spec(spec_file)
        chosen = {
            "model": model,
            "max_estimate": max_estimate,
            "max_repair_rounds": repair_rounds,
            "critique": False if no_critique else None,
        }
        options = DesignOptions(**{k: v for k, v in chosen.items() if v is not None})
        source = None
        if repo is not None:
            source = repo if is_url(repo) else str(Path(repo).expanduser().resolve())
        summary = summarize(source) if source is not None else None
        request = DesignRequest(
            spec=spec, repo=source, repo_summary=summary, title=title, options=options
        )
        if out is not None:
            _design_here(request, out, json_out)
        else:
            _design_there(request, api, token, wait=wait, json_out=json_out)


def _read_spec(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no spec at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the spec {path}: {exc}") from None
    if not text.strip():
        raise UsageError(f"the spec {path} is empty")
    return text


def _show(kind: str, data: dict[str, Any], *, out: Any = None) -> None:
    """A design event's line: progress on stderr, unless ``out`` is another console."""
    line = describe(kind, data)
    if line is not None:
        (out or common.err_console).print(escape(line), highlight=False, soft_wrap=True)


def _show_out(kind: str, data: dict[str, Any]) -> None:
    _show(kind, data, out=common.console)


async def _show_async(kind: str, data: dict[str, Any]) -> None:
    _show(kind, data)


async def _quiet(_kind: str, _data: dict[str, Any]) -> None:
    return None


def _design_here(request: Any, out: Path, json_out: bool) -> None:
    from swarmstack.cli.plan import print_design, write_plan_file
    from swarmstack.design.request import run_design

    result = asyncio.run(
        run_design(request, common.settings(), emit=_quiet if json_out else _show_async)
    )
    write_plan_file(out, result.plan)
    summary = result.summary()
    if json_out:
        common.print_json({"out": str(out), **summary})
        return
    print_design(result.plan)
    common.console.print(
        f"wrote {escape(str(out))}: {summary['tickets']} tickets in {summary['waves']} waves, "
        f"{summary['repair_rounds']} repair rounds, {summary['calls']} model calls, "
        f"${summary['cost_usd']:.4f}",
        highlight=False,
    )


def _design_there(
    request: Any, api: str | None, token: str | None, *, wait: bool, json_out: bool
) -> None:
    from swarmstack.cli.plan import show_plan

    with common.client(api, token) as api_client:
        plan = api_client.design_plan(request)
        if not json_out:
            common.err_console.print(
                f"plan {plan.id}: the control plane is designing it", highlight=False
            )
        if wait:
            plan = _follow(api_client, plan.id, show=None if json_out else _show)
        if json_out:
            common.print_json(plan)
        elif plan.status != "designing":
            show_plan(api_client, plan.id)
        if plan.status == "failed":
            raise SwarmError(f"plan {plan.id}: {plan.error}")


def log_command(
    plan_id: Annotated[int, typer.Argument(min=1, help="The plan's id.", show_default=False)],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep following a design that is still running."),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the design's events as a JSON array.")
    ] = False,
    api: ApiUrl = None,
    token: Token = None,
) -> None:
    """Show how a plan was designed: every call to the model and its answer, the checks, the
    repairs, and how it ended (``--json``: the events themselves, prompts and answers whole)."""
    with common.errors_to_exit(), common.client(api, token) as api_client:
        plan = api_client.get_plan(plan_id)
        events = []
        after = 0
        while True:
            page = api_client.events(after=after, plan_id=plan_id)
            if not page.events:
                break
            events += [e for e in page.events if e.kind.startswith("design.")]
            after = page.last_seq
        if json_out:
            common.print_json(events)
            return
        if not events:
            common.console.print(f"plan {plan_id} was not designed here: it was imported")
            return
        for event in events:
            _show_out(event.kind, event.data)
        if follow and plan.status == "designing":
            _follow(api_client, plan_id, show=_show_out, after=after)


def _follow(
    api_client: Any,
    plan_id: int,
    *,
    show: Callable[[str, dict[str, Any]], None] | None,
    after: int = 0,
) -> Any:
    """Show the design's events until it is a draft or has failed; the plan then."""
    while True:
        page = api_client.events(after=after, plan_id=plan_id)
        for event in page.events:
            if show is not None:
                show(event.kind, event.data)
        after = page.last_seq
        if any(e.kind in ("design.done", "design.failed") for e in page.events):
            return api_client.get_plan(plan_id)
        if not page.events:
            plan = api_client.get_plan(plan_id)
            if plan.status != "designing":  # finished between two pages
                return plan
            time.sleep(POLL_S)
