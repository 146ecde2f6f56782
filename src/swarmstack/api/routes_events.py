"""The event log over HTTP: a page after a sequence number, or a live WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from swarmstack.api.deps import Context, error_responses
from swarmstack.api.schemas import MAX_ID, EventPage
from swarmstack.api.state import AppState, require_admin
from swarmstack.errors import SwarmError

router = APIRouter(prefix="/v1")
# Sent when nothing happened for this long, so proxies keep the socket open and clients can
# tell a quiet swarm from a dead connection.
KEEPALIVE_S = 15.0


@router.get("/events", response_model=EventPage, responses=error_responses(403), tags=["events"])
async def list_events(
    ctx: Context,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    plan_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ticket_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> EventPage:
    """Events with a sequence number above ``after``, oldest first; of one plan, or of one
    ticket (its log)."""
    require_admin(ctx.caller)
    events = ctx.state.store.events_after(after, limit=limit, plan_id=plan_id, ticket_id=ticket_id)
    return EventPage(events=events, last_seq=events[-1].seq if events else after)


AUTH_MESSAGE_S = 5.0


async def _first_message_token(websocket: WebSocket) -> str | None:
    """The token of a first message ``{"token": "..."}``; None when none comes in time."""
    try:
        text = await asyncio.wait_for(websocket.receive_text(), timeout=AUTH_MESSAGE_S)
    except TimeoutError:
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    value = message.get("token") if isinstance(message, dict) else None
    return value if isinstance(value, str) and value else None


@router.websocket("/events/ws")
async def stream_events(
    websocket: WebSocket,
    after: Annotated[int, Query(ge=0)] = 0,
    plan_id: Annotated[int | None, Query(ge=1)] = None,
    token: Annotated[
        str | None, Query(description="for browsers, which cannot set headers")
    ] = None,
) -> None:
    """Replay every event after ``after``, then stream new ones as they commit.

    Authenticate with ``Authorization: Bearer``, or — what a browser does, since it can set no
    header and a token must not be in a URL — with a first message ``{"token": "..."}`` within
    five seconds (``?token=`` is still taken, for clients that can do nothing else). A refused
    handshake closes with code 4401 (no token or a bad one) or 4403 (not an admin)."""
    state: AppState = websocket.app.state.swarm
    # Accept first, then close with a reason: a refusal before accept reaches the client only
    # as a bare HTTP 403, and it could not tell a bad token from a missing one.
    await websocket.accept()
    try:
        header = websocket.headers.get("authorization", "")
        if not header and token is None:
            token = await _first_message_token(websocket)
        require_admin(await state.authenticate_header(header, fallback=token))
    except SwarmError as exc:
        await websocket.close(code=4000 + exc.status_code, reason=exc.message[:120])
        return
    except WebSocketDisconnect:
        return

    async def until_closed() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    watcher = asyncio.create_task(until_closed())
    last = after
    try:
        while not watcher.done():
            if state.draining:  # the server stops: the client reconnects to it, or another
                await websocket.close(code=1012, reason="the server is restarting")
                return
            signal = state.waker.next_events()
            events = state.store.events_after(last, limit=1000, plan_id=plan_id)
            for event in events:
                await websocket.send_text(event.model_dump_json())
                last = event.seq
            if len(events) == 1000:
                continue
            done, _ = await asyncio.wait(
                [signal, watcher], timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                await websocket.send_text(json.dumps({"kind": "keepalive", "seq": last}))
    except WebSocketDisconnect:
        pass
    finally:
        watcher.cancel()
