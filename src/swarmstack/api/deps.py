"""FastAPI dependencies shared by the routers: the app state and the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from swarmstack.api.schemas import MAX_ID, ErrorBody
from swarmstack.api.state import AppState, app_state, require_admin
from swarmstack.auth import Principal

bearer = HTTPBearer(auto_error=False, description="an admin, agent or lease token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
State = Annotated[AppState, Depends(app_state)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


@dataclass(frozen=True)
class Ctx:
    """What a route needs besides its parameters: the app's state and who is calling."""

    state: AppState
    caller: Principal


async def context(request: Request, credentials: Credentials) -> Ctx:
    state: AppState = request.app.state.swarm
    return Ctx(state, await state.authenticate(credentials))


async def admin_context(request: Request, credentials: Credentials) -> Ctx:
    """The caller, who must hold an admin token: refused before the route reads anything."""
    ctx = await context(request, credentials)
    require_admin(ctx.caller)
    return ctx


# One dependency per route: each one FastAPI solves costs time on every request.
Context = Annotated[Ctx, Depends(context)]
AdminContext = Annotated[Ctx, Depends(admin_context)]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (400, 401 and 422 always)."""
    return {code: {"model": ErrorBody} for code in (400, 401, 422, *codes)}


def own_url(scope: Scope) -> str:
    """This server as a process on its own machine reaches it: the address the request came
    in on, not its Host header (which may name a proxy in front of it)."""
    server = scope.get("server")
    if not server or server[1] is None:
        return str(Request(scope).base_url).rstrip("/")
    host, port = str(server[0]), int(server[1])
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scope.get('scheme', 'http')}://{host}:{port}"
