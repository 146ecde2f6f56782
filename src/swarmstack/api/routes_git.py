"""The git broker: git's smart HTTP over the local forge, for the holders of live leases.

A sandbox's remote is ``http://127.0.0.1:<port>/git/plan-<plan>.git`` with its lease token as
a bearer token (``git -c http.extraHeader="Authorization: Bearer <token>"``) or as the password
of HTTP basic authentication. A live lease on a ticket of that plan may fetch everything; it
may push only ``refs/heads/swarm/<ticket id>`` of its own ticket — no other branch, no tag, no
deletion. The broker reads the commands of a push before git sees any of it and refuses the
whole push with 403 and the reason if one of them is not allowed. An admin token may fetch.

git runs on the host only in the forge's bare repositories, hardened (see
:mod:`swarmstack.forge.hostgit`).
"""

from __future__ import annotations

import base64
import zlib

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from swarmstack.api.state import AppState
from swarmstack.auth import Principal, TokenKind
from swarmstack.errors import (
    AuthError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    StaleLease,
    UsageError,
)
from swarmstack.forge import hostgit
from swarmstack.forge.local import LocalForge, ticket_branch
from swarmstack.forge.pktline import ref_updates

router = APIRouter(prefix="/git", include_in_schema=False)
SERVICES = ("git-upload-pack", "git-receive-pack")
_NO_CACHE = {"Cache-Control": "no-cache, max-age=0, must-revalidate", "Pragma": "no-cache"}


def branch_of(ticket_id: int) -> str:
    return f"refs/heads/{ticket_branch(ticket_id)}"


def _refuse(status: int, message: str) -> PlainTextResponse:
    headers = {"WWW-Authenticate": 'Basic realm="swarm"'} if status == 401 else {}
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            _user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or None
    return None


async def _caller(state: AppState, request: Request, plan_id: int, *, push: bool) -> Principal:
    token = _token(request)
    if token is None:
        raise AuthError("the git broker needs a lease token (Authorization: Bearer <token>)")
    principal = await state.authenticate_header(f"Bearer {token}")
    if principal.kind is TokenKind.ADMIN and not push:
        return principal
    if principal.kind is not TokenKind.LEASE:
        raise Forbidden("only a lease token may push" if push else "a lease token, please")
    assert principal.ticket_id is not None and principal.epoch is not None
    ticket = state.store.live_ticket(principal.ticket_id, principal.epoch)
    if ticket.plan_id != plan_id:
        raise Forbidden(f"this lease is for a ticket of plan {ticket.plan_id}, not {plan_id}")
    return principal


def _body(raw: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        body = inflater.decompress(raw, limit + 1)
        if len(body) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the push unpacks to more than {limit} bytes")
        return body
    if encoding not in ("", "identity"):
        raise UsageError(f"unknown Content-Encoding {encoding!r}")
    return raw


async def _handle(request: Request, plan_id: int, service: str, *, advertise: bool) -> Response:
    state: AppState = request.app.state.swarm
    push = service == "git-receive-pack"
    try:
        principal = await _caller(state, request, plan_id, push=push)
        repo = LocalForge(state.settings.repos_dir).require(plan_id)
        body = None
        if not advertise:
            raw = await request.body()
            body = _body(
                raw, request.headers.get("content-encoding", ""), state.settings.max_push_bytes
            )
            if push:
                assert principal.ticket_id is not None
                allowed = branch_of(principal.ticket_id)
                for update in ref_updates(body):
                    if update.ref != allowed:
                        raise Forbidden(f"this lease may push {allowed} only, not {update.ref}")
                    if update.deletes:
                        raise Forbidden(f"a lease may not delete {update.ref}")
                # The lease may have ended while the pack came in.
                assert principal.epoch is not None
                state.store.live_ticket(principal.ticket_id, principal.epoch)
        out = await hostgit.serve(service, repo, body, advertise=advertise)
    except AuthError as exc:
        return _refuse(401, exc.message)
    except StaleLease as exc:
        return _refuse(403, f"this lease is over: {exc.message}")
    except Forbidden as exc:
        return _refuse(403, exc.message)
    except NotFound as exc:
        return _refuse(404, exc.message)
    except (UsageError, PayloadTooLarge) as exc:
        return _refuse(exc.status_code, exc.message)
    except hostgit.GitFailed as exc:
        return _refuse(500, exc.message)
    if advertise:
        banner = f"# service={service}\n".encode()
        out = f"{len(banner) + 4:04x}".encode() + banner + b"0000" + out
        media = f"application/x-{service}-advertisement"
    else:
        media = f"application/x-{service}-result"
    return Response(out, media_type=media, headers=_NO_CACHE)


@router.get("/plan-{plan_id:int}.git/info/refs")
async def info_refs(request: Request, plan_id: int, service: str = "") -> Response:
    if service not in SERVICES:
        return _refuse(403, "the broker speaks git's smart HTTP only (?service=git-upload-pack)")
    return await _handle(request, plan_id, service, advertise=True)


@router.post("/plan-{plan_id:int}.git/git-upload-pack")
async def upload_pack(request: Request, plan_id: int) -> Response:
    return await _handle(request, plan_id, "git-upload-pack", advertise=False)


@router.post("/plan-{plan_id:int}.git/git-receive-pack")
async def receive_pack(request: Request, plan_id: int) -> Response:
    return await _handle(request, plan_id, "git-receive-pack", advertise=False)
