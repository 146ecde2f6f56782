"""Shared fixtures: real SQLite files and real PostgreSQL databases, a controllable clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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
