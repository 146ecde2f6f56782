"""The dashboard: one page and its script, served as files — no build step.

The page holds no secret: it asks for an admin token, keeps it in the tab's session storage,
sends it as a bearer token to the API and as the first message of the event stream's
WebSocket. It is never in a URL, so never in a log.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from swarmstack.errors import NotFound

router = APIRouter(include_in_schema=False)

FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Only this origin's scripts, styles and connections (its API and WebSocket); no frames.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    media = FILES.get(name)
    if media is None:
        raise NotFound(f"the dashboard has no {name}")
    body = resources.files("swarmstack.dashboard").joinpath(name).read_bytes()
    return Response(body, media_type=media, headers=HEADERS)


@router.get("/")
async def page() -> Response:
    return _file("index.html")


@router.get("/dashboard/{name}")
async def asset(name: str) -> Response:
    return _file(name)
