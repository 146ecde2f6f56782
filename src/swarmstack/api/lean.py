"""Lean routes: the hot agent endpoints without FastAPI's per-request dependency solving.

A claim, a heartbeat and a completion each pass through here once per ticket, and FastAPI's
generic machinery (dependency graph, parameter models, response validation) costs more than the
database work they do. These routes take only the ``Request``, parse the body with the same
pydantic model in one call, and answer with bytes. The OpenAPI document still describes them
exactly — body, path parameter, bearer auth — through :func:`documented`, and the schemathesis
tests hold the description and the behaviour together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from swarmstack.api.state import AppState
from swarmstack.api.workers import Priority
from swarmstack.auth import Principal

M = TypeVar("M", bound=BaseModel)

# Models whose schemas lean routes reference; add_components() puts them into the document.
BODY_MODELS: list[type[BaseModel]] = []


def documented(
    body: type[BaseModel] | None = None, *, path_params: dict[str, int] | None = None
) -> Any:
    """``openapi_extra`` for a lean route: its JSON body (if it takes one), its integer path
    parameters (name → maximum), and bearer auth."""
    extra: dict[str, Any] = {"security": [{"HTTPBearer": []}]}
    if body is not None:
        BODY_MODELS.append(body)
        ref = {"$ref": f"#/components/schemas/{body.__name__}"}
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    if path_params:
        extra["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": maximum},
            }
            for name, maximum in path_params.items()
        ]
    return extra


def add_components(schema: dict[str, Any]) -> dict[str, Any]:
    """Put the lean routes' body models (and the models they nest) into the document."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in BODY_MODELS:
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in doc.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components.setdefault(model.__name__, doc)
    schemes = schema["components"].setdefault("securitySchemes", {})
    schemes.setdefault("HTTPBearer", {"type": "http", "scheme": "bearer"})
    return schema


def install_openapi(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so the generated document includes the lean routes' models."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_components(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def caller(
    request: Request, priority: Priority = Priority.WRITE
) -> tuple[AppState, Principal]:
    """The app state and who is calling, from the Authorization header."""
    state: AppState = request.app.state.swarm
    header = request.headers.get("authorization", "")
    return state, await state.authenticate_header(header, priority=priority)


async def body(request: Request, model: type[M]) -> M:
    """The request body as ``model``; a body that does not fit is a 422 like any other."""
    raw = await request.body()
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=raw) from None


class FastLane:
    """Serve the lean routes straight from the ASGI scope.

    The endpoints are the very functions the router holds (which also document them in
    OpenAPI and serve them if this lane is not installed): only the dispatch differs — a regex
    per route instead of the router's matching, wrappers and exit stacks. Errors go to the
    app's own exception handlers, so answers are the same either way.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        handlers: dict[Any, Callable[..., Any]],
    ) -> None:
        self.app = app
        self.routes = [r for r in routes if isinstance(r, APIRoute)]
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match = route.path_regex.match(scope["path"])
                if match is not None and scope["method"] in (route.methods or ()):
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: APIRoute, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["route"] = route
        scope["path_params"] = {k: route.param_convertors[k].convert(v) for k, v in params.items()}
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = next(
                (self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None
            )
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)
