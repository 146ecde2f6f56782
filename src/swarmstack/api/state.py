"""What the app holds while it runs, reached from routes through ``request.app.state``."""

from __future__ import annotations

import asyncio
import functools
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials

from swarmstack.api.metrics import Metrics
from swarmstack.api.workers import Priority, Workers
from swarmstack.auth import Principal, TokenKind, hash_token
from swarmstack.config import Settings
from swarmstack.errors import AuthError, Forbidden
from swarmstack.events import Waker
from swarmstack.sandbox.manager import SandboxManager
from swarmstack.tickets.models import Lease
from swarmstack.tickets.store import TicketStore

T = TypeVar("T")
MISSING_TOKEN = "missing bearer token: send 'Authorization: Bearer <token>'"

# How long a verified admin or agent token is trusted without asking the database again: a
# revocation reaches this replica at once and other replicas within this many seconds.
AUTH_TTL_S = 5.0
LEASE_AUTH_TTL_S = 3600.0
AUTH_CACHE_SIZE = 50_000


@dataclass
class AppState:
    settings: Settings
    store: TicketStore
    sandboxes: SandboxManager
    waker: Waker = field(default_factory=Waker)
    metrics: Metrics = field(default_factory=Metrics)
    schema_version: int = 0
    _auth_cache: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: Workers | None = None  # made on first use (PostgreSQL only)
    gateway: Any = None  # the LLM gateway's upstream client (routes_llm.Gateway), on first use
    designs: Any = None  # the running design tasks (designs.Designs), on first use
    merge_queue: Any = None  # the merge queue (forge.queue.MergeQueue) while the app runs
    runs: Any = None  # the agent pools this process runs (runs.Runs), on first use
    # This server as a process on its machine reaches it, once known (set by whoever binds the
    # socket, or by the first run started): what agent pools taken up after a restart call.
    own_url: str | None = None
    draining: bool = False  # the server is stopping: long-polls and event streams end now
    loop: asyncio.AbstractEventLoop | None = None  # the server's, while the app runs

    def drain(self) -> None:
        """The server is stopping: every parked claim answers now (204: nothing yet) and every
        event stream closes (1012: the service restarts), so the server need not wait out its
        graceful-shutdown timeout for them. Call on the loop; see :meth:`drain_soon`."""
        self.draining = True
        self.waker.wake(1 << 30)

    def drain_soon(self) -> None:
        """:meth:`drain`, from any thread (a signal handler, the thread stopping a server)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.drain)

    async def call(
        self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.WRITE, **kwargs: Any
    ) -> T:
        """Run a store call: on the event loop for SQLite (one connection, no waiting on a
        lock), in a worker thread with its own connection for PostgreSQL, so that one
        request's round trips do not stall every other request (see :mod:`.workers`)."""
        if self.store.db.dialect.name != "postgresql":
            return fn(*args, **kwargs)
        if self._workers is None:
            self._workers = Workers(self.settings.db_threads)
        return await self._workers.run(priority, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Let the store calls already queued finish; the app is shutting down."""
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None

    async def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if credentials is None:
            raise AuthError(MISSING_TOKEN)
        return await self.authenticate_header(f"{credentials.scheme} {credentials.credentials}")

    async def authenticate_header(
        self, header: str, fallback: str | None = None, *, priority: Priority = Priority.WRITE
    ) -> Principal:
        """Who an ``Authorization: Bearer <token>`` header names; ``fallback`` is a token from
        elsewhere (a WebSocket's query string) used when the header is absent. A look-up in
        the database runs at ``priority`` (see :mod:`.workers`)."""
        scheme, _, token = header.partition(" ")
        if not (token and scheme.lower() == "bearer"):
            if not fallback:
                raise AuthError(MISSING_TOKEN)
            token = fallback
        cached = self._auth_cache.get(token)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return await self.call(self._verify_token, token, priority=priority)

    def _verify_token(self, token: str) -> Principal:
        """Check a token against the database and remember the answer for a while (a lease
        token's identity never changes; whether its lease is live every write checks itself)."""
        configured = self.settings.admin_token
        if configured and hmac.compare_digest(hash_token(token), hash_token(configured)):
            principal = Principal(TokenKind.ADMIN, "configured-admin", 0)
        else:
            principal = self.store.tokens.authenticate(token)
        self._remember(token, principal)
        return principal

    def _remember(self, token: str, principal: Principal) -> None:
        ttl = LEASE_AUTH_TTL_S if principal.kind is TokenKind.LEASE else AUTH_TTL_S
        with self._cache_lock:
            if len(self._auth_cache) >= AUTH_CACHE_SIZE:
                self._auth_cache.pop(next(iter(self._auth_cache)), None)
            self._auth_cache[token] = (principal, time.monotonic() + ttl)

    def remember_lease(self, lease: Lease, agent: str) -> None:
        """A lease this replica just minted needs no database lookup when its agent uses it."""
        principal = Principal(
            TokenKind.LEASE, agent, 0, ticket_id=lease.ticket.id, epoch=lease.epoch
        )
        self._remember(lease.token, principal)

    def forget_tokens(self) -> None:
        """Drop remembered answers (after a revocation)."""
        with self._cache_lock:
            self._auth_cache.clear()


async def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.swarm
    return state


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden(f"{principal.kind} tokens may not do this; it needs an admin token")


def require_claimer(principal: Principal) -> None:
    if principal.kind not in (TokenKind.ADMIN, TokenKind.AGENT):
        raise Forbidden("claims need an agent or admin token; a lease token works its own ticket")


def require_ticket_access(principal: Principal, ticket_id: int) -> None:
    """Admins reach every ticket; a lease token only its own; agent tokens none."""
    if principal.is_admin:
        return
    if principal.kind is TokenKind.LEASE and principal.ticket_id == ticket_id:
        return
    if principal.kind is TokenKind.LEASE:
        raise Forbidden(
            f"this lease token is for ticket {principal.ticket_id}, not ticket {ticket_id}"
        )
    raise Forbidden("agent tokens may only claim; use the lease token the claim returned")
