"""Shared fixtures: real SQLite files and real PostgreSQL databases, a controllable clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmstack.bench.pg import postgres_available, scratch_database
from swarmstack.db import Database
from swarmstack.tickets.store import TicketStore


def require_postgres() -> None:
    """Skip (locally) or fail (in CI) when no PostgreSQL server answers."""
    reason = postgres_available()
    if reason is None:
        return
    message = f"PostgreSQL is not reachable ({reason}); set SWARM_TEST_POSTGRES_URL"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class FakeClock:
    """A clock the test moves by hand, so lease expiry and backoff need no sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'swarm.db'}"
        return
    require_postgres()
    with scratch_database() as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Iterator[TicketStore]:
    """A migrated store on a fresh database, with a hand-driven clock."""
    s = TicketStore(
        Database(database_url),
        lease_ttl_s=30,
        max_attempts=3,
        backoff_base_s=2,
        backoff_max_s=60,
        clock=clock,
    )
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def no_swarm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read SWARM_* variables (and the Anthropic key); a test that uses
    this sets the ones it means and no others leak in from the shell."""
    for name in list(os.environ):
        if name.startswith("SWARM_") and name != "SWARM_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


@pytest.fixture
def scripted() -> Iterator[Any]:
    """Start scripted models (real Messages API servers): ``scripted(script)`` takes a path or
    a mapping and returns ``(url, model)``; every one is stopped after the test."""
    from swarmstack.llm.scripted import ScriptedModel, create_app, load_script
    from swarmstack.threaded import ThreadedServer

    servers: list[ThreadedServer] = []

    def start(script: Path | dict[str, Any]) -> tuple[str, ScriptedModel]:
        model = ScriptedModel(load_script(script))
        servers.append(ThreadedServer(create_app(model)).start())
        return servers[-1].url, model

    yield start
    for server in servers:
        server.stop()
