"""A whole swarm for the agent tests: the scripted model, a control plane holding a sample
repository, and agent hosts running real runners in real sandboxes.

Both servers are real (uvicorn on ports of their own); the sandboxes reach the control plane
only through their forwarder and the host's relay."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmstack.agent.host import AgentHost, HostConfig
from swarmstack.api import create_app
from swarmstack.bench.e2e import sample_repo as make_repo
from swarmstack.client import SwarmClient
from swarmstack.config import Settings
from swarmstack.forge.local import LocalForge
from swarmstack.llm.scripted import ScriptedModel, load_script
from swarmstack.llm.scripted import create_app as scripted_app
from swarmstack.sandbox.base import Backend
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import Event, PlanSpec, Ticket, TicketState
from swarmstack.tickets.store import TicketStore

CANARY_KEY = "sk-ant-api03-CANARY-ANTHROPIC-7c41e09b"
CANARY_GITHUB = "ghp_CANARYGITHUBTOKEN0123456789abcdef01"
ADMIN = "swadmin_0_" + "e" * 43

SAMPLE_FILES = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": (
        "import unittest\n\nimport calc\n\n\n"
        "class CalcTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n\n\n"
        "if __name__ == '__main__':\n    unittest.main()\n"
    ),
    "README.md": "# calc\n\nA tiny calculator.\n",
}


def builtin_sub_session(key: str = "T-1") -> dict[str, Any]:
    """A scripted session for the builtin driver: it adds ``sub()`` to the sample repository's
    ``calc.py``, checks it with a command, and says so."""
    import sys

    sub = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    check = f"{sys.executable} -c 'import calc; assert calc.sub(5, 3) == 2; print(\"sub ok\")'"
    return {
        "match": rf"\b{key}\b",
        "turns": [
            [{"tool_use": {"name": "write_file", "input": {"path": "calc.py", "content": sub}}}],
            [{"tool_use": {"name": "run", "input": {"command": check}}}],
            "Added sub().",
        ],
    }


def sample_repo(path: Path) -> Path:
    """A git repository with a module and its unittest suite, on ``main``."""
    return make_repo(path, SAMPLE_FILES, "calc")


@dataclass
class SwarmWorld:
    model: ScriptedModel
    store: TicketStore
    settings: Settings
    url: str
    admin: SwarmClient
    agent_token: str
    state_dir: Path
    plan_id: int = 0

    def ticket(self, key: str) -> Ticket:
        return self.store.find_ticket(self.plan_id, key)

    def settled(self, key: str, timeout_s: float = 60.0) -> Ticket:
        """The ticket once the merge queue is done with it (it is merging until then)."""
        deadline = time.monotonic() + timeout_s
        ticket = self.ticket(key)
        while ticket.state is TicketState.MERGING and time.monotonic() < deadline:
            time.sleep(0.05)
            ticket = self.ticket(key)
        return ticket

    def branch_sha(self, branch: str) -> str:
        return LocalForge(self.settings.repos_dir).sha(self.plan_id, branch)

    def events(self, ticket_id: int | None = None) -> list[Event]:
        events = self.store.events_after(0, limit=100_000)
        return [e for e in events if ticket_id is None or e.ticket_id == ticket_id]

    def host(self, using: Backend | None = None, **config: Any) -> AgentHost:
        defaults: dict[str, Any] = {"wait_s": 2.0, "idle_exit_s": 2.0, "plan_id": self.plan_id}
        return AgentHost(
            HostConfig(
                api_url=self.url,
                token=self.agent_token,
                state_dir=Path(tempfile.mkdtemp(dir=self.state_dir)),
                **{**defaults, **config},
            ),
            backend=using,
        )


@contextmanager
def swarm_world(
    tmp_path: Path, script: dict[str, Any], plan: PlanSpec, **settings: Any
) -> Iterator[SwarmWorld]:
    """The servers, the plan with the sample repository, an agent token; hosts made with
    :meth:`SwarmWorld.host` are closed at the end."""
    from sandbox_fixtures import state_dir

    model = ScriptedModel(load_script(script))
    root = state_dir()
    with ThreadedServer(scripted_app(model)) as upstream:
        config = Settings(
            data_dir=tmp_path / "data",
            database_url=f"sqlite:///{tmp_path / 'swarm.db'}",
            llm_upstream_url=upstream.url,
            anthropic_api_key=CANARY_KEY,
            github_token=CANARY_GITHUB,
            admin_token=ADMIN,
            **settings,
        )
        store = TicketStore.from_settings(config)
        store.migrate()
        try:
            with (
                ThreadedServer(create_app(config, store=store)) as server,
                SwarmClient(server.url, ADMIN, timeout=60) as admin,
            ):
                created = admin.create_plan(plan)
                admin.import_repo(created.id, str(sample_repo(tmp_path / "sample")))
                agent_token = admin.create_token("agent", "e2e-host").token
                world = SwarmWorld(
                    model, store, config, server.url, admin, agent_token, root, created.id
                )
                yield world
        finally:
            store.close()
            shutil.rmtree(root, ignore_errors=True)


def llm_calls(world: SwarmWorld) -> list[dict[str, Any]]:
    return [r for r in world.model.requests if r["path"] == "/v1/messages"]
