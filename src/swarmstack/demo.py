"""``swarm demo``: a real control plane, the bundled plan, and local agents working it.

The agents here do no coding — each "works" a ticket for a moment and completes it — but
every step is the real protocol over HTTP: long-poll claim, heartbeat, complete, and the
dependents of each completed ticket becoming ready for the next idle agent.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from swarmstack.bench.serverproc import ServerProcess
from swarmstack.client import AiohttpSwarmClient, SwarmClient
from swarmstack.tickets.models import TicketResult
from swarmstack.tickets.plan import load_plan

EXAMPLE_PLAN = Path(__file__).resolve().parent / "examples" / "todo" / "plan.json"


@dataclass
class _Board:
    total: int
    done: list[str] = field(default_factory=list)
    working: dict[str, str] = field(default_factory=dict)  # agent -> ticket title

    def render(self, started: float) -> Group:
        table = Table(box=None, header_style="bold")
        table.add_column("agent")
        table.add_column("working on")
        for agent in sorted(self.working):
            table.add_row(agent, self.working[agent] or "[dim]waiting for a ready ticket[/]")
        bar = ProgressBar(total=self.total, completed=len(self.done), width=40)
        line = f"{len(self.done)}/{self.total} tickets done  {time.monotonic() - started:.1f}s"
        return Group(bar, line, table) if self.working else Group(bar, line)


async def _agents(url: str, token: str, board: _Board, agents: int, pace: float) -> None:
    import aiohttp

    finished = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        api = AiohttpSwarmClient(url, token, session=session)

        async def agent(name: str) -> None:
            while not finished.is_set():
                board.working[name] = ""
                lease = await api.claim(name, wait_s=1.0)
                if lease is None:
                    continue
                ticket = lease.ticket
                board.working[name] = f"{ticket.key}  {ticket.title}"
                await api.heartbeat(lease)
                await asyncio.sleep(pace * random.uniform(0.5, 1.5) * ticket.estimate)
                await api.complete(lease, TicketResult(summary=f"{name} finished {ticket.key}"))
                board.done.append(ticket.key)
                if len(board.done) >= board.total:
                    finished.set()
            board.working.pop(name, None)

        await asyncio.gather(*(agent(f"agent-{i + 1}") for i in range(agents)))


def run_demo(
    *,
    agents: int = 4,
    plan_file: Path | None = None,
    pace: float = 0.4,
    data_dir: Path | None = None,
    keep_serving: bool = False,
    console: Console | None = None,
) -> dict[str, object]:
    """Run the demo end to end; returns its summary."""
    console = console or Console()
    spec = load_plan(plan_file or EXAMPLE_PLAN)
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    server = ServerProcess(workdir).start()
    try:
        with SwarmClient(server.url, server.admin_token) as admin:
            plan = admin.create_plan(spec)
            waves = admin.waves(plan.id)
            console.print(
                f"[bold]Swarm demo[/]: control plane on {server.url}, plan {plan.id} "
                f"“{plan.title}”: {plan.ticket_count} tickets in {len(waves.waves)} waves, "
                f"{agents} agents"
            )
            token = admin.create_token("agent", "demo").token
            board = _Board(total=plan.ticket_count)
            started = time.monotonic()

            async def main() -> None:
                work = asyncio.create_task(_agents(server.url, token, board, agents, pace))
                with Live(board.render(started), console=console, refresh_per_second=8) as live:
                    while not work.done():
                        live.update(board.render(started))
                        await asyncio.sleep(0.1)
                    live.update(board.render(started))
                await work

            asyncio.run(main())
            final = admin.get_plan(plan.id)
            events = admin.events(after=0, limit=10_000, plan_id=plan.id).events
        summary: dict[str, object] = {
            "plan": plan.id,
            "tickets": final.ticket_count,
            "done": final.counts.get("done", 0),
            "waves": len(waves.waves),
            "events": len(events),
            "wall_s": round(time.monotonic() - started, 2),
            "critical_path": " → ".join(waves.critical_path),
        }
        console.print()
        console.print(
            f"[green]done[/]: {summary['done']}/{summary['tickets']} tickets in "
            f"{summary['wall_s']}s; {summary['events']} events; critical path "
            f"{summary['critical_path']}"
        )
        if keep_serving:
            console.print(
                f"The control plane keeps running at {server.url} (admin token: "
                f"{server.admin_token}). Try: SWARM_API_URL={server.url} "
                f"SWARM_TOKEN={server.admin_token} swarm tickets ls. Ctrl-C stops it."
            )
            try:
                assert server.proc is not None
                server.proc.wait()
            except KeyboardInterrupt:
                pass
        return summary
    finally:
        server.stop()
