"""``/mcp`` on the control plane: Swarm's MCP tools over streamable HTTP, for admin tokens.

Every request carries ``Authorization: Bearer <token>``, checked as every REST route checks a
token: none or an unknown one is 401, one that is not an admin's 403, each with the API's JSON
error. The tools then act with that same token, through the REST API at this server's own
address, so what a tool may do and why it is refused are exactly the API's. A session belongs
to the token that opened it. The SDK is loaded, and its session manager started, at the first
request that passes.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from swarmstack.api.deps import own_url
from swarmstack.api.state import AppState, require_admin
from swarmstack.client import SwarmClient
from swarmstack.errors import AuthError, SwarmError

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager


@dataclass(frozen=True)
class Caller:
    """Who a tool call acts for: the API as this server reaches itself, and their token."""

    url: str
    token: str


# Set for each request; the SDK carries it to the tool call the request holds.
CALLER: ContextVar[Caller | None] = ContextVar("swarm_mcp_caller", default=None)


def caller_client() -> SwarmClient:
    """A client acting as the caller of the tool call at hand."""
    caller = CALLER.get()
    if caller is None:
        raise AuthError("no caller: the tool was called outside an authenticated request")
    return SwarmClient(caller.url, caller.token, timeout=120)


class McpEndpoint:
    """The ASGI app at ``/mcp``: authenticate, then hand the request to the SDK."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._manager: StreamableHTTPSessionManager | None = None
        self._lock: asyncio.Lock | None = None
        self._closing: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), ""
        )
        try:
            principal = await self.state.authenticate_header(header)
            require_admin(principal)
        except SwarmError as exc:
            challenge = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
            refused = JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=challenge)
            await refused(scope, receive, send)
            return
        from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
        from mcp.server.auth.provider import AccessToken

        token = header.partition(" ")[2].strip()
        identity = f"{principal.kind}:{principal.token_id}:{principal.name}"
        user = AuthenticatedUser(AccessToken(token=token, client_id=identity, scopes=["admin"]))
        manager = await self._started()
        reset = CALLER.set(Caller(own_url(scope), token))
        try:
            # The SDK binds a session to the user that opened it.
            await manager.handle_request({**scope, "user": user}, receive, send)
        finally:
            CALLER.reset(reset)

    async def _started(self) -> StreamableHTTPSessionManager:
        if self._manager is not None:
            return self._manager
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._manager is None:
                self._manager = await self._start()
        return self._manager

    async def _start(self) -> StreamableHTTPSessionManager:
        from mcp.server.transport_security import TransportSecuritySettings

        from swarmstack.mcp_server.server import build_server

        server = build_server(caller_client, sources_dir=self.state.settings.data_dir / "sources")
        # Every request needs the bearer token, which a page on another site cannot send: DNS
        # rebinding gains nothing, and the Host a proxy passes on must not be refused.
        server.streamable_http_app(
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
        )
        manager = server.session_manager
        ready = asyncio.Event()
        closing = self._closing = asyncio.Event()

        async def serve() -> None:
            async with manager.run():
                ready.set()
                await closing.wait()

        self._task = asyncio.create_task(serve(), name="swarm-mcp")
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({self._task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiting.cancel()
            self._task.result()  # raises what stopped it
        return manager

    async def close(self) -> None:
        """End every session (the app is shutting down)."""
        if self._task is None or self._closing is None:
            return
        self._closing.set()
        with contextlib.suppress(Exception):
            await self._task
