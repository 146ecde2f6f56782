"""The LLM gateway: the Anthropic Messages API for agents, with the real key kept here.

Inside a sandbox ``ANTHROPIC_BASE_URL`` is ``http://127.0.0.1:<port>/llm`` and
``ANTHROPIC_API_KEY`` is the agent's lease token. For each call the gateway checks that the
lease is live and that neither the ticket nor its plan is past its budget, then forwards the
request to the upstream (the Anthropic API, or the scripted model) with the control plane's own
key, and streams the answer back byte for byte. On the way it reads the usage the answer
carries, prices it and records it against the ticket (an ``llm.usage`` event).

A refusal is an error in the Messages API's own shape (``{"type": "error", "error": {...}}``),
so that Claude Code and the SDKs show its message: 401 for a missing or unknown token, 403 for
a lease that is over and for a spent budget. A ticket past its budget is failed for good, with
the reason, at its first call past the line.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from swarmstack.api.state import AppState
from swarmstack.auth import Principal, TokenKind
from swarmstack.errors import AuthError, NotFound, StaleLease, SwarmError
from swarmstack.llm.prices import PriceTable
from swarmstack.llm.sse import StreamWatcher, Usage

log = logging.getLogger(__name__)

router = APIRouter(prefix="/llm", tags=["llm"], include_in_schema=False)

# Request headers passed upstream; everything else (the caller's key above all) stays here.
FORWARDED_HEADERS = ("content-type", "accept", "anthropic-version", "anthropic-beta")
# Response headers passed back to the agent.
RETURNED_HEADERS = (
    "content-type",
    "request-id",
    "retry-after",
    "anthropic-ratelimit-requests-remaining",
)


def _refusal(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status_code=status
    )


class Gateway:
    """What the gateway keeps for the app's lifetime: the upstream client and the prices."""

    def __init__(self, state: AppState) -> None:
        settings = state.settings
        self.state = state
        self.upstream = settings.llm_upstream_url.rstrip("/")
        key = settings.anthropic_api_key
        self.key = key.get_secret_value() if key is not None else None
        self.prices = (
            PriceTable.from_file(settings.llm_price_file)
            if settings.llm_price_file is not None
            else PriceTable()
        )
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.llm_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self.client.aclose()


def gateway(state: AppState) -> Gateway:
    if state.gateway is None:
        state.gateway = Gateway(state)
    return state.gateway  # type: ignore[no-any-return]


async def _lease(state: AppState, request: Request) -> Principal:
    """The caller's lease, from ``x-api-key`` (what the SDKs and Claude Code send) or a bearer
    token."""
    token = request.headers.get("x-api-key")
    if not token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value if scheme.lower() == "bearer" else ""
    if not token:
        raise AuthError("no key: send the lease token as x-api-key")
    principal = await state.authenticate_header(f"Bearer {token}")
    if principal.kind is not TokenKind.LEASE or principal.ticket_id is None:
        raise AuthError("the LLM gateway takes lease tokens only: an agent's, from its claim")
    return principal


async def _admit(state: AppState, principal: Principal) -> JSONResponse | None:
    """None if the call may go upstream, else the refusal (a spent budget fails the ticket)."""
    assert principal.ticket_id is not None and principal.epoch is not None
    settings = state.settings
    spend = await state.call(state.store.spend, principal.ticket_id, principal.epoch)
    reason = None
    if spend.ticket_usd >= settings.ticket_budget_usd:
        reason = (
            f"over budget: ticket {principal.ticket_id} has spent ${spend.ticket_usd:.4f} "
            f"of its ${settings.ticket_budget_usd:.2f}"
        )
    plan_budget = (
        spend.plan_budget_usd if spend.plan_budget_usd is not None else settings.plan_budget_usd
    )
    if reason is None and plan_budget is not None and spend.plan_usd >= plan_budget:
        reason = (
            f"over budget: plan {spend.plan_id} has spent ${spend.plan_usd:.4f} "
            f"of its ${plan_budget:.2f}"
        )
    if reason is None:
        return None
    # If the lease ended meanwhile, the refusal stands all the same.
    with contextlib.suppress(StaleLease, NotFound):
        await state.call(
            state.store.fail, principal.ticket_id, principal.epoch, reason, retryable=False
        )
    return _refusal(403, "permission_error", reason)


async def _forward(request: Request, path: str, *, priced: bool) -> Response:
    state: AppState = request.app.state.swarm
    try:
        principal = await _lease(state, request)
        refusal = None
        if priced:
            refusal = await _admit(state, principal)
        else:  # count_tokens costs nothing: a live lease is enough
            assert principal.ticket_id is not None and principal.epoch is not None
            await state.call(state.store.live_ticket, principal.ticket_id, principal.epoch)
    except AuthError as exc:
        return _refusal(401, "authentication_error", exc.message)
    except (StaleLease, NotFound) as exc:
        return _refusal(403, "permission_error", f"this lease is over: {exc.message}")
    except SwarmError as exc:
        return _refusal(exc.status_code, "api_error", exc.message)
    if refusal is not None:
        return refusal
    gw = gateway(state)
    body = await request.body()
    try:
        wants_stream = bool(json.loads(body).get("stream")) if priced else False
    except (ValueError, AttributeError):
        return _refusal(400, "invalid_request_error", "the body is no JSON object")
    headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
    if gw.key is not None:
        headers["x-api-key"] = gw.key
    upstream_request = gw.client.build_request(
        "POST", f"{gw.upstream}{path}", params=request.query_params, content=body, headers=headers
    )
    try:
        upstream = await gw.client.send(upstream_request, stream=True)
    except httpx.HTTPError as exc:
        log.warning("the model upstream %s failed: %s", gw.upstream, exc)
        return _refusal(
            502, "api_error", f"the model upstream cannot be reached: {type(exc).__name__}"
        )
    returned = {k: v for k, v in upstream.headers.items() if k in RETURNED_HEADERS}
    if not priced or upstream.status_code >= 400 or not wants_stream:
        content = await upstream.aread()
        await upstream.aclose()
        if priced and upstream.status_code < 400:
            usage, model = _usage_of_message(content)
            await _record(state, gw, principal, model, usage)
        return Response(content, status_code=upstream.status_code, headers=returned)
    watcher = StreamWatcher()

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                watcher.feed(chunk)
                yield chunk
        finally:
            await upstream.aclose()
            # Recorded even when the agent went away mid-answer: the tokens were spent.
            await _record(state, gw, principal, watcher.model, watcher.usage)

    return StreamingResponse(relay(), status_code=upstream.status_code, headers=returned)


def _usage_of_message(content: bytes) -> tuple[Usage, str | None]:
    usage = Usage()
    try:
        message = json.loads(content)
    except ValueError:
        return usage, None
    if not isinstance(message, dict):
        return usage, None
    usage.update(message.get("usage"))
    model = message.get("model")
    return usage, model if isinstance(model, str) else None


async def _record(
    state: AppState, gw: Gateway, principal: Principal, model: str | None, usage: Usage
) -> None:
    assert principal.ticket_id is not None and principal.epoch is not None
    name = model or "unknown"
    cost = gw.prices.cost(name, usage)
    try:
        await state.call(
            state.store.record_usage,
            principal.ticket_id,
            principal.epoch,
            name,
            usage.as_dict(),
            cost.usd,
            priced="assumed" if cost.assumed else "table",
        )
    except SwarmError as exc:  # never lose the answer over the bookkeeping
        log.warning("usage of ticket %s not recorded: %s", principal.ticket_id, exc.message)


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    """The Messages API, streamed or not, for the holder of a live lease."""
    return await _forward(request, "/v1/messages", priced=True)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """Token counting (free upstream), for the holder of a live lease."""
    return await _forward(request, "/v1/messages/count_tokens", priced=False)
