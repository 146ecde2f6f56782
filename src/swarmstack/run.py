"""``swarm run``: from a written spec to merged, tested code, in one command.

1. **The control plane**: the one at ``--api``, or a ``swarm serve`` this run starts on its
   data directory (``.swarm/`` by default: its database, forge and logs stay there, which is
   what ``--resume`` continues from).
2. **The plan**: the design agent writes it from the spec (or ``--plan FILE`` gives it); it is
   a draft until it is approved, with the repository in the forge, the GitHub link, the
   budget and strict waves set on it first.
3. **Approval**: the plan is shown, and the run asks (``--approve`` does not).
4. **The pool**: ``--agents`` slots, each a runner in a sandbox of its own, pull the plan's
   tickets; the control plane's merge queue merges each branch in DAG order and checks it.
5. **The end**: when no ticket can move any more, a summary — tickets done and failed, pull
   requests, the integration branch, cost, wall time — and, with ``--json``, one object.

Ctrl-C (or SIGTERM) stops cleanly: every runner releases its lease (the ticket is ready again,
its attempt not counted), every sandbox is destroyed, the control plane this run started
stops; a ticket whose branch was already pushed stays merging and is merged when the control
plane starts again. ``swarm run --resume`` picks the plan up from ``<data dir>/run.json``:
what is done stays done and no finished ticket runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from swarmstack.bench.serverproc import ServerProcess
from swarmstack.client import SwarmClient
from swarmstack.design.progress import describe
from swarmstack.design.repo import clone, is_url
from swarmstack.design.request import DesignOptions, DesignRequest
from swarmstack.errors import DesignFailed, SwarmError, UsageError
from swarmstack.tickets.models import Plan, Ticket, TicketState

if TYPE_CHECKING:
    from swarmstack.agent.host import HostConfig

STATE_FILE = "run.json"
DEFAULT_AGENTS = 4
POLL_S = 0.5
# States in which a ticket may still move without a person.
MOVING = {
    TicketState.READY,
    TicketState.CLAIMED,
    TicketState.MERGING,
    TicketState.FAILED,
}


@dataclass
class RunOptions:
    spec: Path | None = None  # None: --resume
    repo: str | None = None
    agents: int | None = None  # None: what the run being resumed had, else DEFAULT_AGENTS
    backend: str = "auto"
    approve: bool = False
    budget_usd: float | None = None
    strict_waves: bool = False
    github: str | None = None
    create_repo: bool = False
    plan_file: Path | None = None  # a plan instead of a design
    model: str | None = None
    data_dir: Path = Path(".swarm")
    api_url: str | None = None  # a control plane that runs already
    token: str | None = None
    resume: bool = False
    server_env: dict[str, str] = field(default_factory=dict)  # for a control plane started here
    quiet: bool = False  # no live display (--json)


@dataclass
class RunState:
    """What ``--resume`` needs, in ``<data dir>/run.json``."""

    plan_id: int
    agents: int
    backend: str
    api_url: str | None = None  # None: the control plane is started on the data directory


@dataclass
class Summary:
    plan_id: int
    title: str
    tickets: int
    tickets_done: int
    tickets_failed: int
    tickets_left: int
    attention: list[str]  # the keys of dead tickets: a person must look
    prs: int
    pr_urls: list[str]
    merge_conflicts_resolved: int
    checks_failures_fixed: int
    integration_branch: str | None
    integration_sha: str | None
    cost_usd: float
    wall_s: float
    interrupted: bool
    api_url: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def agent_backend(name: str) -> str:
    """The sandbox backend agents run on: ``auto`` is bubblewrap where it is installed, else
    QEMU. Firecracker needs a KVM that works (not nested), which the pool does not use yet."""
    if name == "auto":
        return "bwrap" if shutil.which("bwrap") else "qemu"
    if name not in ("bwrap", "qemu"):
        raise UsageError(
            f"agents run in bwrap or qemu sandboxes; {name!r} is not available to the pool"
        )
    return name


def agents_dir(data_dir: Path, sandbox_dir: Path | None = None) -> Path:
    """Where the agents of a control plane's data directory keep their sandboxes' files: not
    in the data directory, which may sit where other users may not pass (root's home is
    0700), and bubblewrap binds a sandbox's files as the sandbox's own uid."""
    from swarmstack.config import Settings

    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return (sandbox_dir or Settings().sandbox_dir) / f"agents-{digest}"


def pool_config(
    api_url: str, token: str, state_dir: Path, agents: int, backend: str, plan_id: int
) -> HostConfig:
    """The agent pool of a run: ``agents`` slots working ``plan_id``'s tickets."""
    from swarmstack.agent.host import HostConfig

    return HostConfig(
        api_url=api_url,
        token=token,
        state_dir=state_dir,
        agents=agents,
        backend=backend,
        plan_id=plan_id,
        # A runner told to stop finishes the long-poll it is in first: keep it short.
        wait_s=3.0,
    )


def settled(states: Iterable[TicketState]) -> bool:
    """No ticket can move any more without a person: all done, or blocked by the dead."""
    seen = list(states)
    return bool(seen) and not any(s in MOVING for s in seen)


def local_repo(source: str, sources_dir: Path) -> Path:
    """A repository as a local path: a URL is cloned into ``sources_dir`` once."""
    if not is_url(source):
        path = Path(source).expanduser().resolve()
        if not (path / ".git").exists() and not (path / "HEAD").is_file():
            raise UsageError(f"{source} is not a git repository")
        return path
    target = sources_dir / source.rstrip("/").rsplit("/", 1)[-1]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        clone(source, target, shallow=False)
    return target


def start_control_plane(data_dir: Path, env: dict[str, str]) -> ServerProcess:
    """``swarm serve`` on ``<data_dir>/control-plane``, its admin token written to
    ``<data_dir>/admin.token`` where only this user can read it (the dashboard asks for it)."""
    server = ServerProcess(data_dir / "control-plane", env=env)
    server.start(timeout=60)
    token_file = data_dir / "admin.token"
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(server.admin_token + "\n")
    return server


class SwarmRun:
    def __init__(
        self,
        options: RunOptions,
        *,
        console: Console | None = None,
        ask: Callable[[str], bool] | None = None,
    ) -> None:
        self.options = options
        self.console = console or Console(stderr=True)
        self.ask = ask
        self.data_dir = options.data_dir.expanduser().resolve()
        self.server: ServerProcess | None = None
        self.url = ""

    # -- the whole job -----------------------------------------------------------------

    def run(self) -> Summary | None:
        """The run; None when the plan was left a draft (not approved)."""
        o = self.options
        saved = self._load_state() if o.resume else None
        if o.resume and saved is None:
            raise UsageError(
                f"nothing to resume in {self.data_dir}: start a run with swarm run SPEC --repo"
            )
        if not o.resume and (o.spec is None and o.plan_file is None):
            raise UsageError("give the spec (swarm run SPEC.md --repo PATH) or --resume")
        if not o.resume and not o.repo:
            raise UsageError("--repo is needed: the repository the plan is for")
        backend = agent_backend(saved.backend if saved else o.backend)
        agents = o.agents or (saved.agents if saved else DEFAULT_AGENTS)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        repo = None if saved else self._local_repo(o.repo or "")
        if o.spec is not None and not o.spec.is_file():
            raise UsageError(f"no spec at {o.spec}")
        with contextlib.ExitStack() as stack:
            admin_url, token = self._control_plane(stack, backend, saved)
            admin = stack.enter_context(SwarmClient(admin_url, token, timeout=120))
            if saved is not None:
                plan = admin.get_plan(saved.plan_id)
            else:
                assert repo is not None
                plan = self._make_plan(admin, repo)
            state = RunState(plan.id, agents, backend, o.api_url)
            self._save_state(state)
            if plan.status == "draft":
                if not self._approved(admin, plan, agents):
                    self.console.print(
                        f"plan {plan.id} is a draft: swarm plan approve {plan.id}, then "
                        "swarm run --resume",
                        highlight=False,
                    )
                    return None
                plan = admin.approve_plan(plan.id)
            elif plan.status != "active":
                raise SwarmError(f"plan {plan.id} is {plan.status}: {plan.error or ''}".strip())
            return asyncio.run(self._execute(admin, plan, agents, backend, token))

    # -- the control plane -------------------------------------------------------------

    def _control_plane(
        self, stack: contextlib.ExitStack, backend: str, saved: RunState | None
    ) -> tuple[str, str]:
        o = self.options
        api_url = o.api_url or (saved.api_url if saved else None)
        if api_url:
            token = o.token or os.environ.get("SWARM_TOKEN")
            if not token:
                raise UsageError("an admin token is needed for --api (--token or SWARM_TOKEN)")
            self.url = api_url.rstrip("/")
            return self.url, token
        env = {"SWARM_SANDBOX_BACKEND": backend, **o.server_env}
        self.server = start_control_plane(self.data_dir, env)
        stack.callback(self.server.stop)
        self.url = self.server.url
        # The dashboard's token is written, never printed.
        token_file = self.data_dir / "admin.token"
        self.console.print(
            f"dashboard: {self.url}/ (sign in with the token in {token_file}); data in "
            f"{self.data_dir}, log {self.server.log_path}",
            highlight=False,
        )
        return self.url, self.server.admin_token

    # -- the plan ----------------------------------------------------------------------

    def _make_plan(self, admin: SwarmClient, repo: Path) -> Plan:
        o = self.options
        if o.plan_file is not None:
            from swarmstack.tickets.plan import load_plan

            plan = admin.create_plan(load_plan(o.plan_file), draft=True)
        else:
            assert o.spec is not None
            plan = self._design(admin, o.spec, repo)
        admin.import_repo(plan.id, str(repo))
        if o.github:
            linked = admin.link_github(plan.id, o.github, o.create_repo)
            self.console.print(f"publishing to {linked['url']}", highlight=False)
        updates: dict[str, Any] = {}
        if o.budget_usd is not None:
            updates["budget_usd"] = o.budget_usd
        if o.strict_waves:
            updates["strict_waves"] = True
        if updates:
            spec = admin.plan_spec(plan.id)
            plan = admin.replace_draft(plan.id, spec.model_copy(update=updates))
        return admin.get_plan(plan.id)

    def _local_repo(self, source: str) -> Path:
        """The repository as a local path: a URL is cloned into the data directory once."""
        return local_repo(source, self.data_dir / "sources")

    def _design(self, admin: SwarmClient, spec_file: Path, repo: Path) -> Plan:
        try:
            text = spec_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the spec {spec_file}: {exc}") from None
        if not text.strip():
            raise UsageError(f"the spec {spec_file} is empty")
        options = DesignOptions(model=self.options.model) if self.options.model else None
        request = DesignRequest(spec=text, repo=str(repo), options=options or DesignOptions())
        plan = admin.design_plan(request)
        self.console.print(f"plan {plan.id}: designing from {spec_file}", highlight=False)
        after = 0
        while plan.status == "designing":
            page = admin.events(after=after, plan_id=plan.id)
            for event in page.events:
                line = describe(event.kind, event.data)
                if line is not None and not self.options.quiet:
                    self.console.print(escape(line), highlight=False, soft_wrap=True)
            after = page.last_seq
            if not page.events:
                time.sleep(POLL_S)
            plan = admin.get_plan(plan.id)
        if plan.status == "failed":
            raise DesignFailed(f"plan {plan.id}: {plan.error}")
        return plan

    def _approved(self, admin: SwarmClient, plan: Plan, agents: int) -> bool:
        if self.options.approve:
            return True
        from swarmstack.cli.plan import show_plan

        show_plan(admin, plan.id)
        if self.ask is None or not sys.stdin.isatty():
            raise UsageError(
                f"plan {plan.id} waits for approval: run again with --approve, or approve it "
                f"(swarm plan approve {plan.id}) and swarm run --resume"
            )
        return self.ask(f"Run plan {plan.id} with {agents} agents?")

    # -- the pool at work --------------------------------------------------------------

    async def _execute(
        self, admin: SwarmClient, plan: Plan, agents: int, backend: str, token: str
    ) -> Summary:
        from swarmstack.agent.host import AgentHost

        started = time.monotonic()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        agent_token = await asyncio.to_thread(admin.create_token, "agent", f"run-{plan.id}")
        config = pool_config(
            self.url, agent_token.token, self.agents_dir(), agents, backend, plan.id
        )
        host = AgentHost(config, on_line=lambda _slot, _line: None)
        board = Board(plan, agents, backend, self.url)
        interrupted = False
        try:
            async with host:
                work = asyncio.create_task(host.run(), name="swarm-run-pool")
                with self._live(board) as update:
                    while True:
                        board.tickets = await asyncio.to_thread(admin.all_tickets, plan_id=plan.id)
                        board.plan = await asyncio.to_thread(admin.get_plan, plan.id)
                        update()
                        if board.settled:
                            break
                        if work.done():  # the pool ended by itself: say why
                            work.result()
                            raise SwarmError("the agent pool stopped before the plan was done")
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), POLL_S)
                        if stop.is_set():
                            interrupted = True
                            break
                    board.stopping = (
                        "stopping: releasing leases, destroying sandboxes…"
                        if interrupted
                        else "every ticket is settled: stopping the agents…"
                    )
                    update()
                    await host.stop()
                    with contextlib.suppress(asyncio.CancelledError, SwarmError):
                        await asyncio.wait_for(work, timeout=60)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return await asyncio.to_thread(self._summary, admin, plan, started, interrupted)

    @contextlib.contextmanager
    def _live(self, board: Board) -> Iterator[Callable[[], None]]:
        if self.options.quiet:
            yield lambda: None
            return
        with Live(board.render(), console=self.console, refresh_per_second=4) as live:
            yield lambda: live.update(board.render())

    def _summary(
        self, admin: SwarmClient, plan: Plan, started: float, interrupted: bool
    ) -> Summary:
        tickets = admin.all_tickets(plan_id=plan.id)
        states = Counter(t.state for t in tickets)
        pulls = admin.list_pulls(plan_id=plan.id)
        events = admin.all_events(plan_id=plan.id)
        done = {t.id for t in tickets if t.state is TicketState.DONE}
        conflicted = {e.ticket_id for e in events if e.kind == "merge.conflict"}
        failed_checks = {e.ticket_id for e in events if e.kind == "merge.checks"}
        merged = [e for e in events if e.kind == "ticket.merged"]
        current = admin.get_plan(plan.id)
        branch = current.integration_branch
        if merged and branch is None:
            branch = next((p.base for p in pulls), None)
        return Summary(
            plan_id=plan.id,
            title=plan.title,
            tickets=len(tickets),
            tickets_done=states[TicketState.DONE],
            tickets_failed=states[TicketState.DEAD],
            tickets_left=len(tickets) - states[TicketState.DONE] - states[TicketState.DEAD],
            attention=sorted(t.key for t in tickets if t.state is TicketState.DEAD),
            prs=len(pulls),
            pr_urls=[p.url for p in pulls if p.url],
            merge_conflicts_resolved=len(conflicted & done),
            checks_failures_fixed=len(failed_checks & done),
            integration_branch=branch,
            integration_sha=str(merged[-1].data["sha"]) if merged else None,
            cost_usd=round(current.spent_usd, 4),
            wall_s=round(time.monotonic() - started, 2),
            interrupted=interrupted,
            api_url=self.url,
        )

    def agents_dir(self) -> Path:
        """Where the agents' sandboxes keep their files (see :func:`agents_dir`)."""
        return agents_dir(self.data_dir)

    # -- the state file ----------------------------------------------------------------

    def _load_state(self) -> RunState | None:
        path = self.data_dir / STATE_FILE
        try:
            return RunState(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path} is not a run's state: {exc}") from None

    def _save_state(self, state: RunState) -> None:
        path = self.data_dir / STATE_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(state), indent=2) + "\n")
        partial.replace(path)


@dataclass
class Board:
    """What the live display shows: the plan overall, each wave, and the agents at work."""

    plan: Plan
    agents: int
    backend: str
    url: str
    tickets: list[Ticket] = field(default_factory=list)
    stopping: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def settled(self) -> bool:
        """No ticket can move any more without a person: all done, or blocked by the dead."""
        return settled(t.state for t in self.tickets)

    def render(self) -> Group:
        tickets = self.tickets
        states = Counter(t.state.value for t in tickets)
        total = len(tickets) or self.plan.ticket_count
        done = states.get("done", 0)
        elapsed = time.monotonic() - self.started
        head = (
            f"[bold]{escape(self.plan.title)}[/] — plan {self.plan.id}, {self.agents} agents "
            f"({self.backend}), control plane {self.url}"
        )
        if self.plan.paused:
            head += (
                f"\n[bold yellow]paused[/]: no new tickets start until "
                f"`swarm plan resume {self.plan.id}`"
            )
        overall = Table.grid(padding=(0, 1))
        overall.add_row(
            "overall",
            ProgressBar(total=max(total, 1), completed=done, width=40),
            f"{done}/{total} done",
            "  ".join(f"{k} {v}" for k, v in sorted(states.items()) if k != "done"),
            f"{elapsed:.0f}s",
        )
        waves: dict[int, list[Ticket]] = {}
        for t in tickets:
            waves.setdefault(t.wave, []).append(t)
        for n in sorted(waves):
            wave = waves[n]
            finished = sum(t.state is TicketState.DONE for t in wave)
            overall.add_row(
                f"wave {n + 1}",
                ProgressBar(total=len(wave), completed=finished, width=40),
                f"{finished}/{len(wave)}",
                "",
                "",
            )
        agents = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("agent", "ticket", "state", "attempt"):
            agents.add_column(column)
        busy = [t for t in tickets if t.state in (TicketState.CLAIMED, TicketState.MERGING)]
        for t in sorted(busy, key=lambda t: (t.state.value, t.lease_agent or "", t.id)):
            what = "fixing" if t.fix is not None and t.state is TicketState.CLAIMED else ""
            state = "merging" if t.state is TicketState.MERGING else what or "working"
            agents.add_row(
                escape(t.lease_agent or "") if t.state is TicketState.CLAIMED else "merge queue",
                escape(f"{t.key}  {t.title}"[:70]),
                state,
                str(t.attempts),
            )
        dead = [t for t in tickets if t.state is TicketState.DEAD]
        parts: list[Any] = [head, overall]
        if busy:
            parts.append(agents)
        if dead:
            names = ", ".join(f"{t.key} ({t.last_error})" for t in dead)
            parts.append(f"[red]needs attention[/]: {escape(names)}")
        if self.stopping:
            parts.append(f"[yellow]{escape(self.stopping)}[/]")
        return Group(*parts)
