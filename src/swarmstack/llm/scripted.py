"""The scripted model: a real HTTP server that speaks the Anthropic Messages API and answers from
a script instead of a model.

It is the upstream of the LLM gateway in tests and in the demo: Claude Code, the Anthropic SDK
and the gateway talk to it exactly as they talk to the real API (``POST /v1/messages``, streamed
as server-sent events or as one JSON message, and ``POST /v1/messages/count_tokens``).

The script (YAML or JSON; see ``docs/scripted-model.md``) holds sessions. A request belongs to
the session whose ``match`` (a regular expression) occurs in its first user message or its
system prompt; sessions without ``match`` are handed, in order, to conversations that no
``match`` claims. Within a session the answer is the turn whose number is the count of
assistant messages in the request, so the server keeps no state per conversation: a client
that retries a request gets the same answer. A request that belongs to no session gets
``default``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from swarmstack.errors import UsageError
from swarmstack.llm.sse import event

# -- the script ------------------------------------------------------------------------------


class ToolUse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class Block(BaseModel):
    """One content block of an answer: text, or a tool call."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    tool_use: ToolUse | None = None

    def model_post_init(self, _context: Any) -> None:
        if (self.text is None) == (self.tool_use is None):
            raise ValueError("a block is either text or tool_use")


class ScriptedUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    cache_creation_input_tokens: int = Field(default=0, ge=0)
    cache_read_input_tokens: int = Field(default=0, ge=0)


class ScriptedError(BaseModel):
    """An API error instead of an answer (``overloaded_error`` is 529, and so on)."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(ge=400, le=599)
    type: str = "api_error"
    message: str = "scripted error"


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: list[Block] = Field(default_factory=list)
    usage: ScriptedUsage = Field(default_factory=ScriptedUsage)
    delay_s: float = Field(default=0.0, ge=0, le=600, description="time the model takes")
    error: ScriptedError | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _short_blocks(cls, value: Any) -> Any:
        """A block may be written as a bare string: a text block."""
        if isinstance(value, list):
            return [{"text": v} if isinstance(v, str) else v for v in value]
        return value

    @classmethod
    def text(cls, text: str) -> Turn:
        return cls(content=[Block(text=text)])


def _turn(value: Any) -> Any:
    """A turn may be written as a bare string (one text block) or a list of blocks."""
    if isinstance(value, str):
        return {"content": [{"text": value}]}
    if isinstance(value, list):
        return {"content": value}
    return value


class Session(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    match: str | None = None
    turns: list[Turn] = Field(min_length=1)
    delay_s: float = Field(default=0.0, ge=0, le=600, description="per turn, unless it says")

    @field_validator("turns", mode="before")
    @classmethod
    def _short_turns(cls, value: Any) -> Any:
        return [_turn(v) for v in value] if isinstance(value, list) else value

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"match {value!r} is no regular expression: {exc}") from None
        return value


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "claude-sonnet-4-6"
    sessions: list[Session] = Field(default_factory=list)
    default: Turn = Field(default_factory=lambda: Turn.text("Nothing is scripted for this."))

    @field_validator("default", mode="before")
    @classmethod
    def _short_default(cls, value: Any) -> Any:
        return _turn(value)


def load_script(source: Path | str | dict[str, Any]) -> Script:
    """A script from a file (YAML or JSON), a YAML/JSON text, or a parsed mapping."""
    if isinstance(source, Path):
        try:
            source = source.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the script: {exc.strerror}: {exc.filename}") from None
    if isinstance(source, str):
        try:
            source = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise UsageError(f"the script is neither YAML nor JSON: {exc}") from None
    if not isinstance(source, dict):
        raise UsageError("a script is a mapping with 'sessions' (and 'default', 'model')")
    try:
        return Script.model_validate(source)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"the script does not fit its format: {problems}") from None


# -- answering -------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _estimate_tokens(payload: Any) -> int:
    """About four characters a token: what a script does not say is estimated so."""
    return max(1, len(json.dumps(payload, separators=(",", ":"))) // 4)


# Claude Code tells the model where it works, in its first message ("Primary working directory:
# /workspace/ticket-7"); a script says ``${workspace}`` in a tool call's input where that
# directory belongs.
_WORKDIR = re.compile(r"working directory: (\S+)", re.IGNORECASE)
WORKSPACE = "${workspace}"


def _workspace_of(body: dict[str, Any]) -> str | None:
    """The working directory the request names, in its system prompt or a message."""
    given = body.get("messages")
    messages = given if isinstance(given, list) else []
    texts = [_text_of(body.get("system"))]
    texts += [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    for text in texts:
        found = _WORKDIR.search(text)
        if found:
            return found.group(1)
    return None


def _fill(value: Any, workspace: str | None) -> Any:
    """``value`` with ``${workspace}`` replaced in every string, when the request named one."""
    if workspace is None:
        return value
    if isinstance(value, str):
        return value.replace(WORKSPACE, workspace)
    if isinstance(value, list):
        return [_fill(v, workspace) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, workspace) for k, v in value.items()}
    return value


class ScriptedModel:
    """The script, and the requests it has answered (for tests to look at)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []  # {"path", "headers", "body", "session"}
        self._lock = threading.Lock()
        self._assigned: dict[str, int] = {}  # conversation fingerprint -> session index
        self._unmatched = [i for i, s in enumerate(script.sessions) if s.match is None]

    def session_for(self, body: dict[str, Any]) -> tuple[Session | None, int]:
        """The session a request belongs to, and the turn it asks for."""
        given = body.get("messages")
        messages: list[Any] = given if isinstance(given, list) else []
        first_user = next(
            (m for m in messages if isinstance(m, dict) and m.get("role") == "user"), {}
        )
        haystack = _text_of(first_user.get("content")) + "\n" + _text_of(body.get("system"))
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        for session in self.script.sessions:
            if session.match is not None and re.search(session.match, haystack):
                return session, turn
        fingerprint = hashlib.sha256(haystack.encode()).hexdigest()
        with self._lock:
            index = self._assigned.get(fingerprint)
            if index is None and self._unmatched:
                index = self._unmatched.pop(0)
                self._assigned[fingerprint] = index
        return (self.script.sessions[index] if index is not None else None), turn

    def answer(self, body: dict[str, Any]) -> tuple[Turn, str]:
        session, number = self.session_for(body)
        if session is None:
            return self.script.default, ""
        if number >= len(session.turns):  # the client went on past the script: end it
            return Turn.text("The scripted session is over."), session.name
        turn = session.turns[number]
        if turn.delay_s == 0 and session.delay_s:
            turn = turn.model_copy(update={"delay_s": session.delay_s})
        return turn, session.name

    def message(self, body: dict[str, Any], turn: Turn) -> dict[str, Any]:
        """The answer as a Messages API message object."""
        content: list[dict[str, Any]] = []
        workspace = _workspace_of(body)
        for block in turn.content:
            if block.text is not None:
                content.append({"type": "text", "text": block.text})
            elif block.tool_use is not None:
                content.append(
                    {
                        "type": "tool_use",
                        "id": block.tool_use.id or f"toolu_{secrets.token_hex(12)}",
                        "name": block.tool_use.name,
                        "input": _fill(block.tool_use.input, workspace),
                    }
                )
        uses_tools = any(b["type"] == "tool_use" for b in content)
        usage = turn.usage
        request_side = {k: body.get(k) for k in ("system", "messages", "tools")}
        return {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": str(body.get("model") or self.script.model),
            "content": content,
            "stop_reason": "tool_use" if uses_tools else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage.input_tokens
                if usage.input_tokens is not None
                else _estimate_tokens(request_side),
                "output_tokens": usage.output_tokens
                if usage.output_tokens is not None
                else _estimate_tokens(content),
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
            },
        }


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """A message as the event stream the API sends for it."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [event("message_start", {"type": "message_start", "message": start})]
    events.append(event("ping", {"type": "ping"}))
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            empty: dict[str, Any] = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            empty = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
        )
        events.append(
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
        events.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(event("message_stop", {"type": "message_stop"}))
    return events


def _error(status: int, kind: str, message: str) -> JSONResponse:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status)


def create_app(model: ScriptedModel) -> FastAPI:
    """The scripted model's HTTP app."""
    app = FastAPI(title="Swarm scripted model", docs_url=None, redoc_url=None)

    async def read_body(request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def record(request: Request, body: dict[str, Any], session: str) -> None:
        model.requests.append(
            {
                "path": request.url.path,
                "headers": dict(request.headers),
                "body": body,
                "session": session,
                "at": time.time(),
            }
        )

    @app.post("/v1/messages")
    async def messages(request: Request) -> Any:
        body = await read_body(request)
        if body is None or not isinstance(body.get("messages"), list):
            return _error(400, "invalid_request_error", "the body is no JSON object with messages")
        turn, session = model.answer(body)
        record(request, body, session)
        if turn.delay_s:
            await asyncio.sleep(turn.delay_s)
        if turn.error is not None:
            return _error(turn.error.status, turn.error.type, turn.error.message)
        message = model.message(body, turn)
        if not body.get("stream"):
            return JSONResponse(message)

        async def chunks() -> Any:
            for chunk in stream_events(message):
                yield chunk

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Any:
        body = await read_body(request)
        if body is None:
            return _error(400, "invalid_request_error", "the body is no JSON object")
        record(request, body, "")
        request_side = {k: body.get(k) for k in ("system", "messages", "tools")}
        return JSONResponse({"input_tokens": _estimate_tokens(request_side)})

    @app.get("/_scripted/requests")
    async def requests() -> Any:
        """What the server was asked, newest last (without headers: they carry keys)."""
        return [{"path": r["path"], "session": r["session"], "at": r["at"]} for r in model.requests]

    return app
