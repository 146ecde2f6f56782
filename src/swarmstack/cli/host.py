"""``swarm host``: agent slots on this machine, each a runner in a sandbox of its own."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import typer

from swarmstack.cli.common import console, fail, guarded


@guarded
def host(
    api_url: str | None = typer.Option(
        None, "--api", envvar="SWARM_API_URL", help="The control plane, as this host reaches it."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="SWARM_AGENT_TOKEN", help="An agent token (swarm token create)."
    ),
    agents: int = typer.Option(4, "--agents", min=1, max=1000, help="Agent slots."),
    backend: str = typer.Option("bwrap", "--backend", help="bwrap or qemu."),
    image: str | None = typer.Option(None, "--image", help="The VM image (qemu)."),
    plan_id: int | None = typer.Option(None, "--plan", min=1, help="Only this plan's tickets."),
    per_sandbox: int = typer.Option(
        1, "--tickets-per-sandbox", min=1, help="Tickets a runner works before a fresh sandbox."
    ),
    state_dir: Path = typer.Option(
        Path("/var/lib/swarm/host"), "--state-dir", help="Where the sandboxes' files live."
    ),
    runner_args: list[str] = typer.Option(
        [], "--runner-arg", help="One more `swarm agent` option for every runner (repeatable)."
    ),
) -> None:
    """Run agent slots here until interrupted: each slot a sandbox with `swarm agent` in it,
    a fresh sandbox for every ticket. SIGINT or SIGTERM releases the leases and stops."""
    from swarmstack.agent.host import AgentHost, HostConfig

    if not api_url:
        fail("no control plane: pass --api or set SWARM_API_URL")
    if not token:
        fail("no agent token: pass --token or set SWARM_AGENT_TOKEN")
    config = HostConfig(
        api_url=api_url,
        token=token,
        state_dir=state_dir,
        agents=agents,
        backend=backend,
        image=image,
        plan_id=plan_id,
        tickets_per_sandbox=per_sandbox,
        runner_args=runner_args,
    )

    def show(slot: int, line: str) -> None:
        console.print(f"[dim]slot {slot}[/] {line}", highlight=False, markup=False)

    async def main() -> None:
        async with AgentHost(config, on_line=show) as agent_host:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, lambda: asyncio.ensure_future(agent_host.stop()))
            console.print(f"{agents} agent slots on {backend}, pulling from {api_url}")
            await agent_host.run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
