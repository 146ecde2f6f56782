"""The MCP server: Swarm's tools (:mod:`.tools`) with their hints, and its resources::

    server = build_server(lambda: SwarmClient(url, token), sources_dir=Path(".swarm/sources"))
    server.run("stdio")

The same server runs over stdio (``swarm mcp``) and behind ``/mcp`` (:mod:`.http`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp_types import ToolAnnotations

from swarmstack import __version__
from swarmstack.mcp_server import views
from swarmstack.mcp_server.tools import Connect, SwarmTools

INSTRUCTIONS = """\
Swarm turns a written spec into merged, tested code with many coding agents at once. A design
agent breaks the spec into a plan: a DAG of tickets in waves, stored as a draft. Once the plan
is approved, agents (Claude Code, each in a sandbox) pull ready tickets and push branches; a
merge queue merges each into the integration branch in DAG order and runs the checks, sending
conflicts and failures back to an agent.

The usual way: plan_spec → show_plan (review; edit_plan to change it) → approve_plan →
start_run → status, again every minute or so, until it says nothing can move → for what needs
attention: show_ticket, retry_ticket or cancel_ticket → list_pull_requests and show_diff for the
result. Tickets have a numeric ticket_id (what the tools take) and a key (their name in the
plan file)."""

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTROY = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)

TOOLS: dict[str, ToolAnnotations] = {
    "list_plans": READ,
    "plan_spec": WRITE,
    "show_plan": READ,
    "edit_plan": WRITE,
    "approve_plan": WRITE,
    "start_run": WRITE,
    "pause_run": WRITE,
    "resume_run": WRITE,
    "stop_run": DESTROY,
    "status": READ,
    "list_tickets": READ,
    "show_ticket": READ,
    "retry_ticket": WRITE,
    "cancel_ticket": DESTROY,
    "stop_agent": DESTROY,
    "list_pull_requests": READ,
    "show_diff": READ,
    "list_sandboxes": READ,
    "create_sandbox": WRITE,
    "destroy_sandbox": DESTROY,
    "sandbox_exec": DESTROY,
    "sandbox_read_file": READ,
    "sandbox_write_file": DESTROY,
}


def build_server(connect: Connect, *, sources_dir: Path) -> MCPServer:
    """The MCP server of Swarm's tools and resources, acting through ``connect``'s clients;
    a git URL given to plan_spec is cloned into ``sources_dir``."""
    tools = SwarmTools(connect, sources_dir)
    server: MCPServer = MCPServer(
        "swarm", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )
    for name, hints in TOOLS.items():
        method = getattr(tools, name)
        description = inspect.cleandoc(method.__doc__ or "")
        server.add_tool(method, name=name, description=description, annotations=hints)

    @server.resource(
        "swarm://plans", name="plans", mime_type="application/json", description="every plan"
    )
    async def plans() -> str:
        return await tools.read(lambda api: [views.plan_row(p) for p in api.list_plans()])

    @server.resource(
        "swarm://plans/{plan_id}",
        name="plan",
        mime_type="application/json",
        description="a plan: its status, requirements, tickets, waves and plan file",
    )
    async def plan(plan_id: str) -> str:
        return await tools.read(lambda api: views.plan_view(api, _id(plan_id), with_file=True))

    @server.resource(
        "swarm://tickets/{ticket_id}",
        name="ticket",
        mime_type="application/json",
        description="a ticket in full, with the end of its log",
    )
    async def ticket(ticket_id: str) -> str:
        return await tools.read(lambda api: views.ticket_view(api, _id(ticket_id), 100))

    return server


def _id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ResourceError(f"{text!r} is not an id: a positive number")
    return int(text)
