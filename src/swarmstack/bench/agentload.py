"""Simulated agents working a plan over HTTP: the requests and events of a busy swarm, without
sandboxes or a model (the load of ``swarm bench dashboard``).

Each agent long-polls a claim, works its ticket for two to four *turns* and completes it. A turn
is what a coding agent's turn with a model leaves behind: a log batch of what it said, called
and got back (``agent.message``, ``agent.tool_call``, ``agent.tool_result`` events) and a
heartbeat. A turn lasts ``turn_s`` times a random factor of 0.5-1.5.

The agents go through the API, as real ones do, rather than write to the store from this
thread: the server wakes its event streams on its own event loop, so a write made beside it
would reach the page only when something else woke that loop. All agents share one asyncio loop
in a thread of their own, over aiohttp (whose requests cost little CPU).
"""

from __future__ import annotations

import asyncio
import random
import threading
from types import TracebackType
from typing import Any

from swarmstack.client import AiohttpSwarmClient, Calls
from swarmstack.errors import SwarmError
from swarmstack.tickets.models import TicketResult

LEASE_TTL_S = 30.0
CLAIM_WAIT_S = 5.0  # each claim's long-poll
_SAID = (
    "I read the module and its tests. The function needs a guard for the empty case and the "
    "caller should pass the parsed value instead of the raw string; I will change both and "
    "run the tests."
)
_OUTPUT = "".join(f"tests/test_mod.py::test_case_{i} PASSED\n" for i in range(12))


class AgentLoad:
    """``agents`` simulated agents with ``token`` (an agent token) on the server at ``url``,
    working plan ``plan_id`` from :meth:`start` to :meth:`stop`."""

    def __init__(
        self, url: str, token: str, plan_id: int, agents: int, *, turn_s: float, seed: int = 0
    ) -> None:
        self.url = url
        self.token = token
        self.plan_id = plan_id
        self.agents = agents
        self.turn_s = turn_s
        self.tickets_done = 0
        self.errors = 0  # writes the server refused: the agent drops its ticket
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="agents")

    def start(self) -> AgentLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=60)

    def __enter__(self) -> AgentLoad:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._swarm())
        finally:
            self._loop.close()

    async def _swarm(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = AiohttpSwarmClient(self.url, self.token, session=session)
            agents = [
                asyncio.create_task(self._agent(api, f"agent-{i}")) for i in range(self.agents)
            ]
            await self._stopping.wait()
            for task in agents:
                task.cancel()
            await asyncio.gather(*agents, return_exceptions=True)

    async def _agent(self, api: AiohttpSwarmClient, name: str) -> None:
        while True:
            try:
                await self._ticket(api, name)
            except SwarmError:
                self.errors += 1

    async def _ticket(self, api: AiohttpSwarmClient, name: str) -> None:
        lease = await api.claim(name, plan_id=self.plan_id, wait_s=CLAIM_WAIT_S, ttl_s=LEASE_TTL_S)
        if lease is None:
            return
        command = f"pytest -q tests/test_{lease.ticket.key.lower()}.py"
        entries: list[dict[str, Any]] = [
            {"kind": "message", "data": {"text": _SAID}},
            {"kind": "tool_call", "data": {"name": "Bash", "input": {"command": command}}},
            {"kind": "tool_result", "data": {"is_error": False, "output": _OUTPUT}},
        ]
        for _turn in range(self._rng.randint(2, 4)):
            await asyncio.sleep(self.turn_s * self._rng.uniform(0.5, 1.5))
            await api.send(Calls.agent_log(lease, entries))
            await api.heartbeat(lease, LEASE_TTL_S)
        await api.complete(lease, TicketResult(summary=f"done by {name}"))
        self.tickets_done += 1
