"""Swarm's tools for a model: design, review and approve a plan, run it, watch it, steer it.

Each tool is a thin layer over :class:`~swarmstack.client.SwarmClient`, called in a worker
thread with the caller's token: a tool may do exactly what the REST API lets that token do, and
is refused for the same reasons. A refusal comes back as the tool's error result carrying the
API's message, for the model to read and act on — never as a protocol error or a crash::

    tools = SwarmTools(lambda: SwarmClient(url, token), sources_dir=Path(".swarm/sources"))
    await tools.status(plan_id=3)  # what a model's call of the tool ``status`` answers

Each tool's docstring is its description: it says when to use the tool, for a model choosing
among them. :mod:`.server` makes the MCP server of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field, ValidationError

from swarmstack.client import SwarmClient
from swarmstack.design.request import DesignRequest
from swarmstack.errors import DesignFailed, SwarmError, UsageError
from swarmstack.mcp_server import views
from swarmstack.run import local_repo
from swarmstack.sandbox.base import Limits, SandboxSpec
from swarmstack.tickets.models import Plan, TicketState
from swarmstack.tickets.plan import parse_plan

Connect = Callable[[], SwarmClient]

PlanId = Annotated[int, Field(ge=1, description="the plan's id (list_plans shows every plan)")]
TicketId = Annotated[
    int,
    Field(ge=1, description="the ticket's numeric id, not its key (list_tickets shows both)"),
]
SandboxId = Annotated[
    str, Field(min_length=1, max_length=64, description="the sandbox's id (list_sandboxes)")
]
Reason = Annotated[str | None, Field(max_length=2000, description="why, for the record")]
MAX_TEXT = 200_000  # characters of a diff, a file or a command's output a tool returns at most


def answer(value: Any) -> CallToolResult:
    """A tool's result: text as it is, anything else as JSON (and as structured content)."""
    if isinstance(value, str):
        return CallToolResult(content=[TextContent(type="text", text=value)])
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = json.dumps(value, indent=1, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=value)


def _dump(models: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json") for m in models]


def refusal(message: str) -> CallToolResult:
    """A tool's error result: what went wrong, for the model to read and correct."""
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def reason(exc: SwarmError) -> str:
    """The API's message, with a refused plan's every problem."""
    details = exc.details if isinstance(exc.details, dict) else {}
    problems = [str(e.get("message", e)) for e in details.get("errors", []) if e]
    return "\n".join([exc.message, *(f"- {p}" for p in problems)])


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit} more characters not shown)"


class SwarmTools:
    """The tools, each a method; ``connect`` gives a client acting as the caller."""

    def __init__(self, connect: Connect, sources_dir: Path) -> None:
        self.connect = connect
        self.sources_dir = sources_dir

    async def act(self, work: Callable[[SwarmClient], Any]) -> Any:
        """``work`` with a client acting as the caller, in a worker thread (the client is made
        here, in the caller's context)."""
        api = self.connect()

        def in_thread() -> Any:
            with api:
                return work(api)

        return await anyio.to_thread.run_sync(in_thread)

    async def call(self, work: Callable[[SwarmClient], Any]) -> CallToolResult:
        """A tool's answer: what ``work`` returns, or its refusal as the tool's error."""
        return await self.guarded(self.act(work))

    async def guarded(self, action: Awaitable[Any]) -> CallToolResult:
        """A tool's answer: what ``action`` comes to, or its refusal as the tool's error."""
        try:
            return answer(await action)
        except SwarmError as exc:
            return refusal(reason(exc))
        except ValidationError as exc:  # a request model built from the arguments
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            return refusal(f"invalid arguments: {problems}")

    # -- plans -----------------------------------------------------------------------------

    async def list_plans(self) -> CallToolResult:
        """List every plan: its id, title, status (designing, draft, failed or active), its
        tickets by state, whether it is paused, and what it has cost. Use it to find a plan's
        id; status and show_plan take it."""
        return await self.call(lambda api: {"plans": [views.plan_row(p) for p in api.list_plans()]})

    async def plan_spec(
        self,
        repo: Annotated[
            str,
            Field(
                min_length=1,
                description="the repository the plan is for: the path of a git repository on "
                "the control plane's machine, or a git URL to clone there",
            ),
        ],
        spec: Annotated[
            str | None, Field(description="the spec itself, in Markdown (or give spec_file)")
        ] = None,
        spec_file: Annotated[
            str | None, Field(description="the path of a Markdown file holding the spec")
        ] = None,
        title: Annotated[
            str | None, Field(max_length=500, description="the plan's title (default: the model's)")
        ] = None,
        wait_s: Annotated[
            float,
            Field(ge=0, le=600, description="how long to wait for the design to finish"),
        ] = 45.0,
        *,
        ctx: Context,
    ) -> CallToolResult:
        """Design a plan from a written spec: the design agent reads the spec and the
        repository and breaks the work into a DAG of tickets (requirements, skeleton,
        expansion, validation), stored as a draft. Nothing runs until the draft is approved.

        Give the spec as text (spec) or as a file (spec_file), and the repository. A design
        takes from seconds to several minutes: this waits up to wait_s seconds, reporting each
        step of the design as progress, and returns the draft (as show_plan shows it); a plan
        still 'designing' then is being worked on — call show_plan with its id later. Next:
        review the draft with show_plan, change it with edit_plan, then approve_plan and
        start_run."""

        def begin(api: SwarmClient) -> Plan:
            text = _spec_text(spec, spec_file)
            source = local_repo(repo, self.sources_dir)
            plan = api.design_plan(DesignRequest(spec=text, repo=str(source), title=title))
            try:
                api.import_repo(plan.id, str(source))
            except SwarmError as exc:
                raise SwarmError(
                    f"plan {plan.id} is being designed, but its repository could not be put "
                    f"in the forge: {exc.message}"
                ) from None
            return plan

        def finish(api: SwarmClient, plan: Plan) -> Any:
            if plan.status == "failed":
                raise DesignFailed(f"the design of plan {plan.id} failed: {plan.error}")
            view = views.plan_view(api, plan.id)
            view["next"] = (
                f"the design is still under way: call show_plan({plan.id}) in a minute"
                if plan.status == "designing"
                else f"review the draft, change it with edit_plan if need be, then "
                f"approve_plan({plan.id}) and start_run({plan.id})"
            )
            return view

        async def design() -> Any:
            plan = await self.act(begin)
            plan_id, steps = plan.id, views.DesignSteps(plan.id)
            deadline = time.monotonic() + wait_s
            while True:
                for line in await self.act(steps.new):
                    await ctx.report_progress(steps.count, None, f"plan {plan_id}: {line}")
                if plan.status != "designing" or time.monotonic() >= deadline:
                    break
                await anyio.sleep(0.5)
                plan = await self.act(lambda api: api.get_plan(plan_id))
            last = plan
            return await self.act(lambda api: finish(api, last))

        return await self.guarded(design())

    async def show_plan(
        self,
        plan_id: PlanId,
        plan_file: Annotated[
            bool,
            Field(description="also return the whole plan file as YAML, to edit for edit_plan"),
        ] = False,
    ) -> CallToolResult:
        """Show one plan: its status and cost; for a draft or an active plan, the spec's
        requirements and the tickets covering each, every ticket (key, title, wave,
        dependencies, files; an active plan's also its ticket_id and state), the waves and the
        critical path; for a plan being designed, the design's progress; for a failed design,
        why. Use it to review a draft before approving it."""
        return await self.call(lambda api: views.plan_view(api, plan_id, with_file=plan_file))

    async def edit_plan(
        self,
        plan_id: PlanId,
        plan_file: Annotated[
            str,
            Field(
                min_length=1,
                description="the whole edited plan file, YAML or JSON, as show_plan with "
                "plan_file=true returns it",
            ),
        ],
    ) -> CallToolResult:
        """Replace a draft's plan file with an edited one (add, split, reorder or reword
        tickets, change dependencies, files, checks or the budget). Only a draft can be
        edited, and the whole file is given. The new file is checked first — cycles, unknown
        dependencies, uncovered requirements, files two parallel tickets share — and refused
        with every problem, the draft staying as it was."""

        def work(api: SwarmClient) -> Any:
            spec = parse_plan(plan_file, source="the edited plan file")
            api.replace_draft(plan_id, spec)
            return views.plan_view(api, plan_id)

        return await self.call(work)

    async def approve_plan(
        self,
        plan_id: PlanId,
        max_attempts: Annotated[
            int | None,
            Field(ge=1, le=100, description="attempts a ticket gets before it is dead"),
        ] = None,
    ) -> CallToolResult:
        """Approve a draft: its tickets are made, and those without dependencies are ready.
        Nothing is worked on until agents are put on the plan with start_run. A plan is
        approved once; anything but a draft is refused."""

        def work(api: SwarmClient) -> Any:
            row = views.plan_row(api.approve_plan(plan_id, max_attempts))
            return row | {"next": f"start_run({plan_id}) puts agents on it"}

        return await self.call(work)

    # -- runs ------------------------------------------------------------------------------

    async def start_run(
        self,
        plan_id: PlanId,
        agents: Annotated[int, Field(ge=1, le=1000, description="agents working at once")] = 4,
        backend: Annotated[
            Literal["auto", "bwrap", "qemu"],
            Field(description="sandboxes: bubblewrap, QEMU microVMs, or auto (bubblewrap if any)"),
        ] = "auto",
    ) -> CallToolResult:
        """Start agents on an approved plan: each agent is Claude Code in a sandbox of its own;
        they pull the plan's ready tickets (highest in the DAG first) and push branches, and the
        merge queue merges and checks each. The run ends by itself once no ticket can move
        without a person: every ticket done, or the rest waiting on dead ones; it goes on after
        a restart of the control plane. Follow it with status. Refused for a draft
        (approve_plan first) and when a run is going already."""

        def work(api: SwarmClient) -> Any:
            run = api.start_run(plan_id, agents, backend)
            return run.model_dump(mode="json") | {"next": f"status({plan_id}) to follow it"}

        return await self.call(work)

    async def pause_run(self, plan_id: PlanId) -> CallToolResult:
        """Pause a plan's run: no new ticket of it is handed out. Agents at work finish their
        tickets, the merge queue goes on merging, and the agents stay up, waiting. Use it to
        hold work while looking at something; resume_run hands tickets out again."""
        return await self.call(lambda api: views.plan_row(api.pause_plan(plan_id)))

    async def resume_run(self, plan_id: PlanId) -> CallToolResult:
        """Resume a paused plan (see pause_run): its ready tickets are handed out to the
        waiting agents at once."""
        return await self.call(lambda api: views.plan_row(api.resume_plan(plan_id)))

    async def stop_run(self, plan_id: PlanId) -> CallToolResult:
        """Stop a plan's run: every agent hands its ticket back (ready again, the attempt not
        counted) and every sandbox is destroyed; merged work stays. To hold work without
        stopping the agents use pause_run; start_run starts a run again."""
        return await self.call(lambda api: api.stop_run(plan_id))

    async def status(
        self,
        plan_id: Annotated[
            int | None, Field(ge=1, description="the plan (default: the newest active one)")
        ] = None,
    ) -> CallToolResult:
        """How a run is going, at a glance: tickets done out of all, by state and per wave;
        what needs attention and why (dead tickets with their last error, tickets a merge
        conflict or failing checks sent back, stale agents, a plan over its budget); what the
        model calls cost against the budget; the agents at work; and whether the run is going
        or nothing can move any more (settled). Call it every minute or so to follow a run."""
        return await self.call(lambda api: views.status(api, plan_id))

    # -- tickets ---------------------------------------------------------------------------

    async def list_tickets(
        self,
        plan_id: Annotated[int | None, Field(ge=1, description="only this plan's")] = None,
        state: Annotated[
            list[TicketState] | None, Field(description="only tickets in these states")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=5000, description="at most this many")] = 200,
    ) -> CallToolResult:
        """List tickets in id order: ticket_id, key, title, state (pending, ready, claimed,
        merging, failed, done, dead, cancelled), wave, attempts, the agent at work and the last
        error. Filter by plan and state, e.g. state=["dead"] for what needs a person."""

        def work(api: SwarmClient) -> Any:
            page = api.list_tickets(plan_id=plan_id, states=state, limit=limit)
            found: dict[str, Any] = {"tickets": [views.ticket_row(t) for t in page.tickets]}
            if page.next_after_id is not None:
                found["more"] = f"only the first {limit} are listed: filter, or raise limit"
            return found

        return await self.call(work)

    async def show_ticket(
        self,
        ticket_id: TicketId,
        log_lines: Annotated[
            int, Field(ge=0, le=2000, description="how many of its last log lines to include")
        ] = 40,
    ) -> CallToolResult:
        """Show one ticket in full — what it asks for, its acceptance criteria, dependencies,
        files, state, its last error, why a merge sent it back, its result, each attempt (its
        agent and how it ended) — and the end of its log: what its agents said and did, its
        claims, pushes and merges. Use it to find out why a ticket failed."""
        return await self.call(lambda api: views.ticket_view(api, ticket_id, log_lines))

    async def retry_ticket(self, ticket_id: TicketId) -> CallToolResult:
        """Give a failed, dead or cancelled ticket a fresh set of attempts, now: it is ready
        again (or pending, waiting on its dependencies). If the plan's run has ended, call
        start_run again so that agents pick it up."""

        def work(api: SwarmClient) -> Any:
            ticket = api.retry(ticket_id)
            runs = api.runs(ticket.plan_id)
            going = bool(runs) and runs[-1].state == "running"
            hint = (
                "an agent of the run will pick it up"
                if going
                else (f"no run is going for plan {ticket.plan_id}: start_run({ticket.plan_id})")
            )
            return views.ticket_row(ticket) | {"next": hint}

        return await self.call(work)

    async def cancel_ticket(
        self,
        ticket_id: TicketId,
        reason: Reason = None,
    ) -> CallToolResult:
        """Cancel a ticket that is not done: an agent at work on it loses its lease, and the
        tickets that depend on it stay pending. Cancelling twice is harmless; retry_ticket
        brings it back."""
        return await self.call(lambda api: views.ticket_row(api.cancel(ticket_id, reason)))

    async def stop_agent(
        self,
        ticket_id: TicketId,
        reason: Reason = None,
    ) -> CallToolResult:
        """Stop the agent at work on a ticket (a stuck or stale one): its lease ends, its
        sandbox is replaced, and the ticket goes to another agent without counting the
        attempt."""
        return await self.call(lambda api: views.ticket_row(api.stop(ticket_id, reason)))

    # -- pull requests ---------------------------------------------------------------------

    async def list_pull_requests(
        self, plan_id: Annotated[int | None, Field(ge=1, description="only this plan's")] = None
    ) -> CallToolResult:
        """List pull requests, one per ticket whose branch reached the forge: its ticket,
        branch and base, open or merged, the merge commit, its size and its GitHub address."""
        return await self.call(lambda api: {"pull_requests": _dump(api.list_pulls(plan_id))})

    async def show_diff(
        self,
        ticket_id: TicketId,
        max_chars: Annotated[
            int, Field(ge=100, le=MAX_TEXT, description="cut the diff after this many characters")
        ] = 50_000,
    ) -> CallToolResult:
        """Show a ticket's pull request as a unified diff: what its branch changed since it
        left the integration branch."""
        return await self.call(lambda api: clip(api.pull_diff(ticket_id), max_chars))

    # -- sandboxes (the VM API) ------------------------------------------------------------

    async def list_sandboxes(self) -> CallToolResult:
        """List the sandboxes of the control plane's VM API (not the agents' own): id,
        backend, state, limits, memory. sandbox_exec and the file tools take their ids."""
        return await self.call(lambda api: {"sandboxes": _dump(api.list_vms())})

    async def create_sandbox(
        self,
        image: Annotated[
            str | None, Field(description="a VM image (default: the backend's)")
        ] = None,
        memory_mib: Annotated[int, Field(ge=64, le=1 << 20)] = 1024,
        cpus: Annotated[float, Field(ge=0.1, le=64)] = 1.0,
    ) -> CallToolResult:
        """Start a fresh sandbox (an empty workspace, no network) to run commands and read
        and write files in, with sandbox_exec and the file tools; destroy_sandbox when done."""
        spec = SandboxSpec(image=image, limits=Limits(memory_mib=memory_mib, cpus=cpus))
        return await self.call(lambda api: api.create_vm(spec))

    async def destroy_sandbox(self, sandbox_id: SandboxId) -> CallToolResult:
        """Destroy a sandbox made with create_sandbox, and everything in it."""

        def work(api: SwarmClient) -> Any:
            api.destroy_vm(sandbox_id)
            return f"sandbox {sandbox_id} is destroyed"

        return await self.call(work)

    async def sandbox_exec(
        self,
        sandbox_id: SandboxId,
        command: Annotated[str, Field(min_length=1, description="a shell command line (sh -c)")],
        cwd: Annotated[str, Field(description="the directory, relative to the workspace")] = ".",
        timeout_s: Annotated[float, Field(gt=0, le=3600, description="kill it after")] = 120.0,
    ) -> CallToolResult:
        """Run a shell command in a sandbox (create_sandbox makes one) and return its exit
        code, stdout and stderr: to look into a repository or try a command by hand."""

        def work(api: SwarmClient) -> Any:
            done = api.exec(sandbox_id, ["/bin/sh", "-c", command], cwd=cwd, timeout_s=timeout_s)
            return {
                "exit_code": done.exit_code,
                "timed_out": done.timed_out,
                "stdout": clip(done.stdout.decode(errors="replace"), MAX_TEXT // 2),
                "stderr": clip(done.stderr.decode(errors="replace"), MAX_TEXT // 2),
            }

        return await self.call(work)

    async def sandbox_read_file(
        self,
        sandbox_id: SandboxId,
        path: Annotated[str, Field(min_length=1, description="relative to the workspace")],
        max_chars: Annotated[int, Field(ge=1, le=MAX_TEXT)] = 50_000,
    ) -> CallToolResult:
        """Read a text file in a sandbox's workspace (the path relative to it)."""
        return await self.call(
            lambda api: clip(api.read_file(sandbox_id, path).decode(errors="replace"), max_chars)
        )

    async def sandbox_write_file(
        self,
        sandbox_id: SandboxId,
        path: Annotated[str, Field(min_length=1, description="relative to the workspace")],
        content: Annotated[str, Field(description="the file's whole text")],
        mode: Annotated[int | None, Field(ge=0, le=0o7777, description="e.g. 493 for 0755")] = None,
    ) -> CallToolResult:
        """Write a text file into a sandbox's workspace: made, or replaced whole."""
        return await self.call(lambda api: api.write_file(sandbox_id, path, content.encode(), mode))

    # -- resources -------------------------------------------------------------------------

    async def read(self, work: Callable[[SwarmClient], Any]) -> str:
        """A resource's JSON; a refusal is the resource's error."""
        try:
            value = await self.act(work)
        except SwarmError as exc:
            raise ResourceError(exc.message) from None
        return json.dumps(value, indent=1, ensure_ascii=False)


def _spec_text(spec: str | None, spec_file: str | None) -> str:
    if (spec is None) == (spec_file is None):
        raise UsageError("give the spec as text (spec) or as a file (spec_file), one of them")
    if spec_file is not None:
        path = Path(spec_file).expanduser()
        try:
            spec = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the spec {path}: {exc}") from None
    assert spec is not None
    if not spec.strip():
        raise UsageError("the spec is empty")
    return spec
