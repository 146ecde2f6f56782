"""Health, metrics and tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from swarmstack import __version__
from swarmstack.api.deps import Context, State, error_responses
from swarmstack.api.schemas import MAX_ID, Health, TokenCreated, TokenInfo, TokenRequest
from swarmstack.api.state import require_admin
from swarmstack.auth import TokenKind

router = APIRouter()


@router.get("/v1/health", response_model=Health, tags=["admin"])
async def health(state: State) -> Health:
    """Liveness: the process answers and the database is reachable. No token needed."""
    state.store.counts(plan_id=-1)  # touches the database
    return Health(
        status="ok",
        version=__version__,
        database=state.store.db.dialect.name,
        schema_version=state.schema_version,
    )


@router.get(
    "/metrics",
    tags=["admin"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: State) -> Response:
    """Prometheus metrics: requests, claims, lease writes, tickets by state."""
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.post(
    "/v1/tokens",
    status_code=201,
    response_model=TokenCreated,
    responses=error_responses(403),
    tags=["admin"],
)
async def create_token(body: TokenRequest, ctx: Context) -> TokenCreated:
    """Issue an admin or agent token. It is shown once; only its SHA-256 is kept."""
    require_admin(ctx.caller)
    token = ctx.state.store.tokens.create(TokenKind(body.kind), body.name)
    return TokenCreated(token=token, kind=body.kind, name=body.name)


@router.get(
    "/v1/tokens", response_model=list[TokenInfo], responses=error_responses(403), tags=["admin"]
)
async def list_tokens(ctx: Context) -> list[TokenInfo]:
    require_admin(ctx.caller)
    return [TokenInfo.model_validate(t) for t in ctx.state.store.tokens.list()]


@router.delete(
    "/v1/tokens/{token_id:int}",
    status_code=204,
    responses=error_responses(403, 404),
    tags=["admin"],
)
async def revoke_token(token_id: Annotated[int, Path(ge=1, le=MAX_ID)], ctx: Context) -> Response:
    """Revoke a token; requests that carry it are refused from now on."""
    require_admin(ctx.caller)
    ctx.state.store.tokens.revoke(token_id)
    ctx.state.forget_tokens()
    return Response(status_code=204)
