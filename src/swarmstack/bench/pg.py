"""Throw-away PostgreSQL databases for benchmarks and tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from swarmstack.errors import Unavailable

DEFAULT_ADMIN_URL = "postgresql:///postgres"


def admin_url() -> str:
    """Where to create scratch databases: $SWARM_TEST_POSTGRES_URL, else the local socket."""
    return os.environ.get("SWARM_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)


def postgres_available(url: str | None = None) -> str | None:
    """None if PostgreSQL answers at ``url``; else the reason it does not."""
    import psycopg

    try:
        with psycopg.connect(url or admin_url(), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@contextmanager
def scratch_database(url: str | None = None) -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    from urllib.parse import urlsplit

    import psycopg

    base = url or admin_url()
    name = f"swarm_scratch_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise Unavailable(f"PostgreSQL is not reachable at {base}: {exc}") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(base)
    scratch = f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    try:
        yield scratch
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
