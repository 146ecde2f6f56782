"""``swarm bench mcp``: what the MCP layer costs a model that follows a big run.

**The swarm**: a fresh ``swarm serve`` child process (SQLite) with a plan of ``tickets`` tickets
(:func:`~swarmstack.bench.dag.waved_plan`) caught mid-run: agents over HTTP finish the first
tickets the store hands out until ``done_share`` of the plan is done, make ``dead`` of the next
ones fail for good, and then hold ``agents`` leases with a heartbeat each (their sandboxes
reported), so that the status has every part to fill in.

**The calls**, each ``calls`` times after one warm-up, in turn:

* ``direct`` — the status view built in this process over the REST API (what every tool does
  underneath, with no MCP in between);
* ``stdio`` — the tool ``status`` through the SDK's client and ``swarm mcp --api URL --token T``
  over stdio, as Claude Desktop calls it;
* ``http`` — the same tool at ``/mcp`` on the control plane, over streamable HTTP.

Reported: ``p50_ms``/``p99_ms`` of each; ``stdio_over_direct`` and ``http_over_direct``, the
ratios of the medians, measured in the one run; ``stdio_start_ms`` (spawning ``swarm mcp`` and
the MCP handshake) and ``http_start_ms`` (the handshake); ``list_tools_ms`` over stdio; and
``status_bytes``, the size of the answer a model reads, with the plan's shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from swarmstack.bench.dag import waved_plan
from swarmstack.bench.serverproc import ServerProcess
from swarmstack.bench.stats import percentile
from swarmstack.client import SwarmClient
from swarmstack.tickets.models import SandboxUsage, TicketResult


def run(tickets: int, agents: int, calls: int, done_share: float, dead: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="swarm-bench-mcp-") as tmp,
        ServerProcess(Path(tmp) / "control-plane") as server,
    ):
        plan_id = _mid_run(server, tickets, agents, done_share, dead)
        result = asyncio.run(_measure(server, plan_id, calls, Path(tmp) / "swarm-mcp.log"))
    return {"tickets": tickets, "agents": agents, "calls": calls, **result}


def _mid_run(server: ServerProcess, tickets: int, agents: int, share: float, dead: int) -> int:
    with SwarmClient(server.url, server.admin_token, timeout=120) as admin:
        plan = admin.create_plan(waved_plan(tickets, seed=0), max_attempts=1)
        token = admin.create_token("agent", "bench").token
    with SwarmClient(server.url, token, timeout=120) as agent:
        finished = 0
        while finished < int(tickets * share):
            lease = agent.claim(f"agent-{finished % agents}", plan_id=plan.id)
            if lease is None:
                break
            agent.complete(lease, TicketResult(summary="done"))
            finished += 1
        for n in range(dead):
            lease = agent.claim("agent-dead", plan_id=plan.id)
            if lease is None:
                break
            reason = f"the tests of ticket {n} failed:\n" + "E  assert 1 == 2\n" * 20
            agent.fail(lease, reason, retryable=False)
        for n in range(agents):
            lease = agent.claim(f"agent-{n}", plan_id=plan.id)
            if lease is None:
                break
            usage = SandboxUsage(
                backend="bwrap", sandbox_id=f"sb-{n}", memory_bytes=300 << 20, cpu_percent=40.0
            )
            agent.heartbeat(lease, sandbox=usage)
    return plan.id


async def _timed(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[list[float], Any]:
    last = await call()  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        last = await call()
        times.append((time.perf_counter() - start) * 1000)
    return times, last


async def _measure(server: ServerProcess, plan_id: int, calls: int, errlog: Path) -> dict[str, Any]:
    import anyio.to_thread
    import httpx2
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    from swarmstack.mcp_server.views import status

    def direct_status() -> Any:
        with SwarmClient(server.url, server.admin_token, timeout=120) as api:
            return status(api, plan_id)

    direct, view = await _timed(lambda: anyio.to_thread.run_sync(direct_status), calls)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    args = ["-m", "swarmstack", "mcp", "--api", server.url, "--token", server.admin_token]
    params = StdioServerParameters(command=sys.executable, args=args, env=env)
    started = time.perf_counter()
    with errlog.open("w") as child_stderr:  # not this process's: it may have no file behind it
        async with Client(stdio_client(params, errlog=child_stderr)) as client:
            stdio_start = (time.perf_counter() - started) * 1000
            listed, _ = await _timed(client.list_tools, calls)
            stdio, answer = await _timed(
                lambda: client.call_tool("status", {"plan_id": plan_id}), calls
            )
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        started = time.perf_counter()
        async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
            http_start = (time.perf_counter() - started) * 1000
            over_http, _ = await _timed(
                lambda: client.call_tool("status", {"plan_id": plan_id}), calls
            )
    text = "".join(getattr(block, "text", "") for block in answer.content)
    if answer.is_error or json.loads(text)["progress"] != view["progress"]:
        raise RuntimeError(f"the status tool did not answer what the view says: {text[:300]}")

    def ms(values: list[float]) -> dict[str, float | None]:
        return {"p50_ms": _round(percentile(values, 50)), "p99_ms": _round(percentile(values, 99))}

    medians = {k: percentile(v, 50) or 0.0 for k, v in (("d", direct), ("s", stdio))}
    http_median = percentile(over_http, 50) or 0.0
    return {
        "direct": ms(direct),
        "stdio": ms(stdio),
        "http": ms(over_http),
        "stdio_over_direct": round(medians["s"] / medians["d"], 2) if medians["d"] else None,
        "http_over_direct": round(http_median / medians["d"], 2) if medians["d"] else None,
        "stdio_start_ms": round(stdio_start, 1),
        "http_start_ms": round(http_start, 1),
        "list_tools_ms": _round(percentile(listed, 50)),
        "status_bytes": len(text.encode()),
        "by_state": view["progress"]["by_state"],
        "waves": len(view["waves"]),
        "needs_attention": len(view["needs_attention"]),
        "agents_at_work": len(view["agents_at_work"]),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
