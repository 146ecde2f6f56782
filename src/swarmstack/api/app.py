"""The app factory: ``create_app(settings)`` builds a FastAPI app; no module globals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swarmstack import __version__
from swarmstack.api import (
    lean,
    routes_admin,
    routes_agents,
    routes_dashboard,
    routes_events,
    routes_forge,
    routes_git,
    routes_llm,
    routes_runs,
    routes_tickets,
    routes_vm,
)
from swarmstack.api.runs import runs
from swarmstack.api.state import AppState
from swarmstack.config import Settings
from swarmstack.errors import SwarmError
from swarmstack.events import PgListener
from swarmstack.mcp_server.http import McpEndpoint
from swarmstack.sandbox.manager import BackendFactory, SandboxManager, default_factory
from swarmstack.tickets.store import TicketStore

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def create_app(
    settings: Settings | None = None,
    *,
    store: TicketStore | None = None,
    backend_factory: BackendFactory | None = None,
) -> FastAPI:
    """Build the control-plane API. ``store`` may be passed in (tests share one), and so may
    the factory of the VM API's sandbox backend (default: ``SWARM_SANDBOX_BACKEND``), which is
    called at the first request that needs a sandbox."""
    settings = settings or Settings()
    sandboxes = SandboxManager(
        backend_factory or default_factory(settings),
        settings.snapshot_dir,
        max_sandboxes=settings.max_sandboxes,
    )
    state = AppState(
        settings=settings,
        store=store or TicketStore.from_settings(settings),
        sandboxes=sandboxes,
    )
    state.metrics.watch_store(state.store.counts, lambda: state.waker.waiting)
    mcp = McpEndpoint(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.schema_version = state.store.migrate()
        # Designs run inside the server: one that was running when it stopped never ends.
        interrupted = state.store.fail_interrupted_designs()
        if interrupted:
            log.warning("%d plans were being designed when the server stopped: failed", interrupted)
        state.store.db.checkpoint_in_background()
        listener: PgListener | None = None
        if state.store.db.dialect.name == "postgresql":
            listener = PgListener(state.store.db.conninfo, state.waker, asyncio.get_running_loop())
            listener.start()
        else:
            state.waker.bind(asyncio.get_running_loop())
            state.store.subscribe(state.waker.on_change)
        state.loop = asyncio.get_running_loop()
        state.draining = False
        sweeper = asyncio.create_task(_sweep_forever(state), name="swarm-sweeper")
        runs(state).begin()  # runs left by a control plane that stopped are taken up
        if state.settings.merge_queue:
            from swarmstack.forge.local import LocalForge
            from swarmstack.forge.mirror import GitHubMirror
            from swarmstack.forge.queue import MergeQueue

            state.merge_queue = MergeQueue(
                state.store,
                LocalForge(state.settings.repos_dir),
                state.sandboxes.backend,
                call=state.call,
                checks_timeout_s=state.settings.checks_timeout_s,
                mirror=GitHubMirror(state.settings, state.store),
            )
            state.merge_queue.start()
        # Everything made so far lives as long as the app: keep it out of the collector's
        # full passes, which would otherwise pause every request for tens of milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await mcp.close()
            await runs(state).close()  # before the store closes: their leases go back
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if state.merge_queue is not None:
                await state.merge_queue.close()
            if listener is not None:
                listener.stop()
            await state.sandboxes.close()
            if state.designs is not None:  # before the store closes: they fail their plans
                await state.designs.close()
            if state.gateway is not None:
                await state.gateway.close()
            state.close()

    app = FastAPI(
        title="Swarm control plane",
        version=__version__,
        description="Tickets, claims with leases, the event stream of a Swarm, and its sandboxes.",
        lifespan=lifespan,
        # Prometheus at /metrics is the metrics story; OpenTelemetry's per-request checks
        # cost more than a heartbeat's database work.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.swarm = state
    app.include_router(routes_agents.router)  # first: the hot path matches soonest
    app.include_router(routes_tickets.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_events.router)
    app.include_router(routes_vm.router)
    app.include_router(routes_llm.router)
    app.include_router(routes_git.router)
    app.include_router(routes_forge.router)
    app.include_router(routes_runs.router)
    app.include_router(routes_dashboard.router)
    app.router.routes.append(Route("/mcp", mcp, include_in_schema=False))  # ASGI: every method
    _install_error_handlers(app)
    lean.install_openapi(app)
    app.add_middleware(
        lean.FastLane, routes=routes_agents.router.routes, handlers=app.exception_handlers
    )
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(RequestMetrics, state=state)
    return app


async def _sweep_forever(state: AppState) -> None:
    """Expire dead leases and end backoffs; sleep until the next one is due (or the interval)."""
    interval = state.settings.sweep_interval_s
    while True:
        try:
            result = state.store.sweep()
            delay = interval
            if result.next_due is not None:
                delay = min(interval, max(0.01, result.next_due - state.store.clock() + 0.001))
        except SwarmError as exc:  # database briefly unavailable: keep going
            log.warning("sweep failed: %s", exc.message)
            delay = interval
        await asyncio.sleep(delay)


def _error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SwarmError)
    async def swarm_error(_request: Request, exc: SwarmError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        ]
        details = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return _error(422, "invalid_request", "; ".join(problems) or "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = _error(exc.status_code, code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return response

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(500, "internal", "internal error; the server log has the details")


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


_FILE_UPLOAD = re.compile(r"^/v1/vms/[^/]+/files$")


class BodyLimit:
    """Refuse bodies over the limit with 413 before reading them whole (plans and files
    uploaded into a sandbox get more room)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.default = settings.max_body_bytes
        self.plans = settings.max_plan_bytes
        self.files = settings.max_file_bytes
        self.llm = settings.llm_max_body_bytes
        self.push = settings.max_push_bytes

    def limit(self, scope: Scope) -> int:
        path: str = scope["path"]
        if path.startswith("/v1/plans"):
            return self.plans
        if path.startswith("/llm/"):
            return self.llm
        if path.startswith("/git/"):
            return self.push
        if scope["method"] == "PUT" and _FILE_UPLOAD.match(path):
            return self.files
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _too_large(limit)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException passes through FastAPI's body parsing to our handler.
                    raise StarletteHTTPException(413, f"request body is larger than {limit} bytes")
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> JSONResponse:
    return _error(413, "payload_too_large", f"request body is larger than {limit} bytes")


class RequestMetrics:
    """Counts requests by route template and status for ``/metrics``."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.counter = state.metrics.requests
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            key = (scope["method"], getattr(scope.get("route"), "path_format", "unmatched"), status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.counter.labels(key[0], key[1], str(status))
            child.inc()
