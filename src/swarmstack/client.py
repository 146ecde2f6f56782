"""A typed client of the control-plane API, sync (CLI, tools) and async (agents, benchmarks).

Each operation is described once as a :class:`Call` — method, path, body and how to read the
answer — and both clients send the same calls, so they cannot drift apart::

    with SwarmClient("http://127.0.0.1:8420", token) as api:
        lease = api.claim("agent-1", wait_s=30)
        if lease:
            api.complete(lease, TicketResult(summary="done"))

Errors come back as the same :mod:`swarmstack.errors` classes the server raised.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from swarmstack.api.schemas import (
    EventPage,
    FileWritten,
    Health,
    TicketContext,
    TicketPage,
    TokenCreated,
    TokenInfo,
)
from swarmstack.errors import Unavailable, from_response
from swarmstack.runstore import Run
from swarmstack.sandbox.base import (
    ExecOptions,
    ExecResult,
    Exit,
    FileEntry,
    Output,
    SandboxInfo,
    SandboxSpec,
    Snapshot,
)
from swarmstack.sandbox.gitops import GitCommit, GitDiff, GitStatus
from swarmstack.tickets.models import (
    AgentStatus,
    Attempt,
    Event,
    Lease,
    Plan,
    PlanSpec,
    PullRequest,
    SandboxUsage,
    Ticket,
    TicketResult,
    TicketState,
    UsageReport,
    ValidationReport,
    WavesReport,
)

if TYPE_CHECKING:
    import aiohttp

    from swarmstack.design.request import DesignRequest

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[int, bytes], T]  # (status, body) -> result
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    token: str | None = None  # overrides the client's token (lease writes)
    timeout: float | None = None
    content: bytes | None = None  # a raw body (file uploads), sent instead of ``json``


def _model(cls: type[M]) -> Callable[[int, bytes], M]:
    return lambda _status, body: cls.model_validate_json(body)


def _list(cls: type[M]) -> Callable[[int, bytes], list[M]]:
    adapter = TypeAdapter(list[cls])  # type: ignore[valid-type]
    return lambda _status, body: adapter.validate_json(body)


def _nothing(_status: int, _body: bytes) -> None:
    return None


def _bytes(_status: int, body: bytes) -> bytes:
    return body


def _json(_status: int, body: bytes) -> Any:
    return json.loads(body)


def _vm(sandbox_id: str, rest: str = "") -> str:
    return f"/v1/vms/{quote(sandbox_id, safe='')}{rest}"


# An idle connection is given up before the server's keep-alive timeout (uvicorn's: 5 s) can
# close it under a request just sent on it, which would fail with "connection reset by peer".
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)

# Starting, saving or restoring a VM may take a while (a QEMU guest boots): more than a request.
VM_TIMEOUT_S = 300.0
GIT_TIMEOUT_S = 150.0


def _lease_or_none(status: int, body: bytes) -> Lease | None:
    return None if status == 204 else Lease.model_validate_json(body)


def _expiry(_status: int, body: bytes) -> float:
    return float(json.loads(body)["expires_at"])


class Calls:
    """Every API operation, as data."""

    @staticmethod
    def health() -> Call[Health]:
        return Call("GET", "/v1/health", _model(Health))

    @staticmethod
    def create_plan(
        spec: PlanSpec, max_attempts: int | None = None, draft: bool = False
    ) -> Call[Plan]:
        params: dict[str, Any] = {"max_attempts": max_attempts} if max_attempts else {}
        if draft:
            params["draft"] = True
        return Call("POST", "/v1/plans", _model(Plan), spec.model_dump(mode="json"), params)

    @staticmethod
    def design_plan(request: DesignRequest) -> Call[Plan]:
        body = request.model_dump(mode="json", exclude_none=True)
        return Call("POST", "/v1/plans", _model(Plan), body)

    @staticmethod
    def plan_spec(plan_id: int) -> Call[PlanSpec]:
        return Call("GET", f"/v1/plans/{plan_id}/spec", _model(PlanSpec))

    @staticmethod
    def replace_draft(plan_id: int, spec: PlanSpec) -> Call[Plan]:
        return Call("PUT", f"/v1/plans/{plan_id}/spec", _model(Plan), spec.model_dump(mode="json"))

    @staticmethod
    def pause_plan(plan_id: int) -> Call[Plan]:
        return Call("POST", f"/v1/plans/{plan_id}/pause", _model(Plan))

    @staticmethod
    def resume_plan(plan_id: int) -> Call[Plan]:
        return Call("POST", f"/v1/plans/{plan_id}/resume", _model(Plan))

    @staticmethod
    def approve_plan(plan_id: int, max_attempts: int | None = None) -> Call[Plan]:
        params = {"max_attempts": max_attempts} if max_attempts else {}
        return Call("POST", f"/v1/plans/{plan_id}/approve", _model(Plan), params=params)

    @staticmethod
    def start_run(plan_id: int, agents: int | None = None, backend: str | None = None) -> Call[Run]:
        body = {k: v for k, v in (("agents", agents), ("backend", backend)) if v is not None}
        return Call("POST", f"/v1/plans/{plan_id}/run", _model(Run), body, timeout=VM_TIMEOUT_S)

    @staticmethod
    def runs(plan_id: int | None = None) -> Call[list[Run]]:
        params: dict[str, Any] = {"plan_id": plan_id} if plan_id is not None else {}
        return Call("GET", "/v1/runs", _list(Run), params=params)

    @staticmethod
    def stop_run(plan_id: int) -> Call[Run]:
        # It answers once every runner has stopped and every sandbox is gone.
        return Call("DELETE", f"/v1/plans/{plan_id}/run", _model(Run), timeout=VM_TIMEOUT_S)

    @staticmethod
    def validate_plan(spec: PlanSpec, strict: bool = False) -> Call[ValidationReport]:
        return Call(
            "POST",
            "/v1/plans/validate",
            _model(ValidationReport),
            spec.model_dump(mode="json"),
            {"strict": strict},
        )

    @staticmethod
    def list_plans() -> Call[list[Plan]]:
        return Call("GET", "/v1/plans", _list(Plan))

    @staticmethod
    def get_plan(plan_id: int) -> Call[Plan]:
        return Call("GET", f"/v1/plans/{plan_id}", _model(Plan))

    @staticmethod
    def waves(plan_id: int) -> Call[WavesReport]:
        return Call("GET", f"/v1/plans/{plan_id}/waves", _model(WavesReport))

    @staticmethod
    def list_tickets(
        plan_id: int | None = None,
        states: list[TicketState] | None = None,
        phase: str | None = None,
        after_id: int = 0,
        limit: int = 500,
    ) -> Call[TicketPage]:
        params: dict[str, Any] = {"after_id": after_id, "limit": limit}
        if plan_id is not None:
            params["plan_id"] = plan_id
        if states:
            params["state"] = [s.value for s in states]
        if phase:
            params["phase"] = phase
        return Call("GET", "/v1/tickets", _model(TicketPage), params=params)

    @staticmethod
    def get_ticket(ticket_id: int, token: str | None = None) -> Call[Ticket]:
        return Call("GET", f"/v1/tickets/{ticket_id}", _model(Ticket), token=token)

    @staticmethod
    def cancel(ticket_id: int, reason: str | None = None) -> Call[Ticket]:
        body = {"reason": reason} if reason else None
        return Call("POST", f"/v1/tickets/{ticket_id}/cancel", _model(Ticket), body)

    @staticmethod
    def retry(ticket_id: int) -> Call[Ticket]:
        return Call("POST", f"/v1/tickets/{ticket_id}/retry", _model(Ticket))

    @staticmethod
    def attempts(ticket_id: int) -> Call[list[Attempt]]:
        return Call("GET", f"/v1/tickets/{ticket_id}/attempts", _list(Attempt))

    @staticmethod
    def stop(ticket_id: int, reason: str | None = None) -> Call[Ticket]:
        body = {"reason": reason} if reason else None
        return Call("POST", f"/v1/tickets/{ticket_id}/stop", _model(Ticket), body)

    @staticmethod
    def agents(plan_id: int | None = None) -> Call[list[AgentStatus]]:
        params: dict[str, Any] = {"plan_id": plan_id} if plan_id is not None else {}
        return Call("GET", "/v1/agents", _list(AgentStatus), params=params)

    @staticmethod
    def claim(
        agent: str, plan_id: int | None = None, wait_s: float = 0.0, ttl_s: float | None = None
    ) -> Call[Lease | None]:
        body: dict[str, Any] = {"agent": agent, "wait_s": wait_s}
        if plan_id is not None:
            body["plan_id"] = plan_id
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        # The server holds a long-poll up to wait_s; give the transport room beyond that.
        return Call("POST", "/v1/claims", _lease_or_none, body, timeout=wait_s + 30)

    @staticmethod
    def heartbeat(
        lease: Lease, ttl_s: float | None = None, sandbox: SandboxUsage | None = None
    ) -> Call[float]:
        body: dict[str, Any] = {"epoch": lease.epoch}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        if sandbox is not None:
            body["sandbox"] = sandbox.model_dump(mode="json", exclude_none=True)
        return Call(
            "POST",
            f"/v1/tickets/{lease.ticket.id}/heartbeat",
            _expiry,
            body,
            token=lease.token,
        )

    @staticmethod
    def complete(lease: Lease, result: TicketResult | None = None) -> Call[Ticket]:
        body = {"epoch": lease.epoch, "result": (result or TicketResult()).model_dump(mode="json")}
        return Call(
            "POST",
            f"/v1/tickets/{lease.ticket.id}/complete",
            _model(Ticket),
            body,
            token=lease.token,
        )

    @staticmethod
    def fail(lease: Lease, reason: str, retryable: bool = True) -> Call[Ticket]:
        body = {"epoch": lease.epoch, "reason": reason, "retryable": retryable}
        return Call(
            "POST", f"/v1/tickets/{lease.ticket.id}/fail", _model(Ticket), body, token=lease.token
        )

    @staticmethod
    def release(lease: Lease, reason: str = "the agent was stopped") -> Call[Ticket]:
        body = {"epoch": lease.epoch, "reason": reason}
        return Call(
            "POST",
            f"/v1/tickets/{lease.ticket.id}/release",
            _model(Ticket),
            body,
            token=lease.token,
        )

    @staticmethod
    def agent_log(lease: Lease, entries: list[dict[str, Any]]) -> Call[int]:
        body = {"epoch": lease.epoch, "entries": entries}
        return Call(
            "POST",
            f"/v1/tickets/{lease.ticket.id}/log",
            lambda _status, raw: int(json.loads(raw)["appended"]),
            body,
            token=lease.token,
        )

    @staticmethod
    def context(lease: Lease) -> Call[TicketContext]:
        return Call(
            "GET",
            f"/v1/tickets/{lease.ticket.id}/context",
            _model(TicketContext),
            token=lease.token,
        )

    @staticmethod
    def events(
        after: int = 0, limit: int = 1000, plan_id: int | None = None, ticket_id: int | None = None
    ) -> Call[EventPage]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if plan_id is not None:
            params["plan_id"] = plan_id
        if ticket_id is not None:
            params["ticket_id"] = ticket_id
        return Call("GET", "/v1/events", _model(EventPage), params=params)

    @staticmethod
    def usage(plan_id: int | None = None, ticket_id: int | None = None) -> Call[UsageReport]:
        params = {k: v for k, v in (("plan_id", plan_id), ("ticket_id", ticket_id)) if v}
        return Call("GET", "/v1/usage", _model(UsageReport), params=params)

    @staticmethod
    def import_repo(plan_id: int, source: str) -> Call[dict[str, Any]]:
        return Call("POST", f"/v1/plans/{plan_id}/repo", _json, {"source": source})

    @staticmethod
    def link_github(plan_id: int, repository: str, create: bool = False) -> Call[dict[str, Any]]:
        body = {"repository": repository, "create": create}
        return Call("POST", f"/v1/plans/{plan_id}/github", _json, body)

    @staticmethod
    def list_pulls(plan_id: int | None = None) -> Call[list[PullRequest]]:
        params = {"plan_id": plan_id} if plan_id else {}
        return Call("GET", "/v1/pulls", _list(PullRequest), params=params)

    @staticmethod
    def get_pull(ticket_id: int) -> Call[PullRequest]:
        return Call("GET", f"/v1/pulls/{ticket_id}", _model(PullRequest))

    @staticmethod
    def pull_diff(ticket_id: int) -> Call[bytes]:
        return Call("GET", f"/v1/pulls/{ticket_id}/diff", _bytes)

    @staticmethod
    def create_token(kind: str, name: str) -> Call[TokenCreated]:
        return Call("POST", "/v1/tokens", _model(TokenCreated), {"kind": kind, "name": name})

    @staticmethod
    def list_tokens() -> Call[list[TokenInfo]]:
        return Call("GET", "/v1/tokens", _list(TokenInfo))

    @staticmethod
    def revoke_token(token_id: int) -> Call[None]:
        return Call("DELETE", f"/v1/tokens/{token_id}", _nothing)

    # -- sandboxes (admin tokens only) -------------------------------------------------------

    @staticmethod
    def list_vms() -> Call[list[SandboxInfo]]:
        return Call("GET", "/v1/vms", _list(SandboxInfo))

    @staticmethod
    def create_vm(spec: SandboxSpec | None = None) -> Call[SandboxInfo]:
        body = (spec or SandboxSpec()).model_dump(mode="json")
        return Call("POST", "/v1/vms", _model(SandboxInfo), body, timeout=VM_TIMEOUT_S)

    @staticmethod
    def get_vm(sandbox_id: str) -> Call[SandboxInfo]:
        return Call("GET", _vm(sandbox_id), _model(SandboxInfo))

    @staticmethod
    def destroy_vm(sandbox_id: str) -> Call[None]:
        return Call("DELETE", _vm(sandbox_id), _nothing, timeout=VM_TIMEOUT_S)

    @staticmethod
    def pause_vm(sandbox_id: str) -> Call[SandboxInfo]:
        return Call("POST", _vm(sandbox_id, "/pause"), _model(SandboxInfo))

    @staticmethod
    def resume_vm(sandbox_id: str) -> Call[SandboxInfo]:
        return Call("POST", _vm(sandbox_id, "/resume"), _model(SandboxInfo))

    @staticmethod
    def snapshot_vm(sandbox_id: str) -> Call[Snapshot]:
        return Call("POST", _vm(sandbox_id, "/snapshot"), _model(Snapshot), timeout=VM_TIMEOUT_S)

    @staticmethod
    def list_snapshots() -> Call[list[Snapshot]]:
        return Call("GET", "/v1/snapshots", _list(Snapshot))

    @staticmethod
    def restore_snapshot(snapshot_id: str) -> Call[SandboxInfo]:
        path = f"/v1/snapshots/{quote(snapshot_id, safe='')}/restore"
        return Call("POST", path, _model(SandboxInfo), timeout=VM_TIMEOUT_S)

    @staticmethod
    def delete_snapshot(snapshot_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/snapshots/{quote(snapshot_id, safe='')}", _nothing)

    @staticmethod
    def read_file(sandbox_id: str, path: str) -> Call[bytes]:
        return Call("GET", _vm(sandbox_id, "/files"), _bytes, params={"path": path})

    @staticmethod
    def write_file(
        sandbox_id: str, path: str, data: bytes, mode: int | None = None
    ) -> Call[FileWritten]:
        params: dict[str, Any] = {"path": path}
        if mode is not None:
            params["mode"] = mode
        return Call(
            "PUT", _vm(sandbox_id, "/files"), _model(FileWritten), None, params, content=data
        )

    @staticmethod
    def list_files(sandbox_id: str, path: str = ".") -> Call[list[FileEntry]]:
        return Call("GET", _vm(sandbox_id, "/files/list"), _list(FileEntry), params={"path": path})

    @staticmethod
    def delete_file(sandbox_id: str, path: str, recursive: bool = False) -> Call[None]:
        params = {"path": path, "recursive": recursive}
        return Call("DELETE", _vm(sandbox_id, "/files"), _nothing, params=params)

    @staticmethod
    def git_status(sandbox_id: str) -> Call[GitStatus]:
        return Call("GET", _vm(sandbox_id, "/git/status"), _model(GitStatus), timeout=GIT_TIMEOUT_S)

    @staticmethod
    def git_diff(sandbox_id: str, ref: str | None = None, stat: bool = False) -> Call[GitDiff]:
        params: dict[str, Any] = {"stat": stat}
        if ref is not None:
            params["ref"] = ref
        return Call(
            "GET",
            _vm(sandbox_id, "/git/diff"),
            _model(GitDiff),
            None,
            params,
            timeout=GIT_TIMEOUT_S,
        )

    @staticmethod
    def git_log(sandbox_id: str, n: int = 20, ref: str | None = None) -> Call[list[GitCommit]]:
        params: dict[str, Any] = {"n": n}
        if ref is not None:
            params["ref"] = ref
        return Call(
            "GET",
            _vm(sandbox_id, "/git/log"),
            _list(GitCommit),
            None,
            params,
            timeout=GIT_TIMEOUT_S,
        )

    @staticmethod
    def git_commit(
        sandbox_id: str,
        message: str,
        paths: list[str] | None = None,
        author_name: str | None = None,
        author_email: str | None = None,
    ) -> Call[GitCommit]:
        body: dict[str, Any] = {"message": message}
        for key, value in (
            ("paths", paths),
            ("author_name", author_name),
            ("author_email", author_email),
        ):
            if value is not None:
                body[key] = value
        return Call(
            "POST", _vm(sandbox_id, "/git/commit"), _model(GitCommit), body, timeout=GIT_TIMEOUT_S
        )


def exec_body(
    argv: list[str],
    cwd: str = ".",
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    stdin: bytes | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/vms/{id}/exec``."""
    body: dict[str, Any] = {"argv": argv, "cwd": cwd}
    if env is not None:
        body["env"] = env
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if stdin is not None:
        body["stdin"] = base64.b64encode(stdin).decode()
    return body


def exec_item(line: bytes) -> Output | Exit:
    """One NDJSON line of an exec answer."""
    item = json.loads(line)
    if "stream" in item:
        return Output(item["stream"], base64.b64decode(item["data"]))
    return Exit(int(item["exit"]), bool(item.get("timed_out")), item.get("error"))


def _headers(token: str | None, call: Call[Any] | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if call is not None and call.content is not None:
        headers["Content-Type"] = "application/octet-stream"
    return headers


def _answer(call: Call[T], status: int, content: bytes) -> T:
    _raise_for(status, content)
    return call.read(status, content)


def _raise_for(status: int, content: bytes) -> None:
    """Raise the error an answer of 400 or more carries."""
    if status >= 400:
        try:
            body = json.loads(content)
        except ValueError:
            body = {"message": content[:500].decode(errors="replace") or f"HTTP {status}"}
        raise from_response(status, body)


class SwarmClient:
    """Blocking client; one connection pool, reused."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, limits=POOL_LIMITS
        )

    def __enter__(self) -> SwarmClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.method,
                call.path,
                json=call.json,
                content=call.content,
                params=call.params or None,
                headers=_headers(call.token or self.token, call),
                timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the Swarm API at {self.base_url}: {exc}") from exc
        return _answer(call, response.status_code, response.content)

    # One line each; the logic is in Calls.
    def health(self) -> Health:
        return self.send(Calls.health())

    def create_plan(
        self, spec: PlanSpec, max_attempts: int | None = None, draft: bool = False
    ) -> Plan:
        return self.send(Calls.create_plan(spec, max_attempts, draft))

    def design_plan(self, request: DesignRequest) -> Plan:
        """Start the design agent on the control plane: the plan, in status designing."""
        return self.send(Calls.design_plan(request))

    def plan_spec(self, plan_id: int) -> PlanSpec:
        return self.send(Calls.plan_spec(plan_id))

    def replace_draft(self, plan_id: int, spec: PlanSpec) -> Plan:
        return self.send(Calls.replace_draft(plan_id, spec))

    def approve_plan(self, plan_id: int, max_attempts: int | None = None) -> Plan:
        return self.send(Calls.approve_plan(plan_id, max_attempts))

    def pause_plan(self, plan_id: int) -> Plan:
        return self.send(Calls.pause_plan(plan_id))

    def resume_plan(self, plan_id: int) -> Plan:
        return self.send(Calls.resume_plan(plan_id))

    def start_run(self, plan_id: int, agents: int | None = None, backend: str | None = None) -> Run:
        """Start agents on the plan, in the control plane (they stop when it is settled)."""
        return self.send(Calls.start_run(plan_id, agents, backend))

    def runs(self, plan_id: int | None = None) -> list[Run]:
        return self.send(Calls.runs(plan_id))

    def stop_run(self, plan_id: int) -> Run:
        return self.send(Calls.stop_run(plan_id))

    def validate_plan(self, spec: PlanSpec, strict: bool = False) -> ValidationReport:
        return self.send(Calls.validate_plan(spec, strict))

    def list_plans(self) -> list[Plan]:
        return self.send(Calls.list_plans())

    def get_plan(self, plan_id: int) -> Plan:
        return self.send(Calls.get_plan(plan_id))

    def waves(self, plan_id: int) -> WavesReport:
        return self.send(Calls.waves(plan_id))

    def list_tickets(self, **filters: Any) -> TicketPage:
        return self.send(Calls.list_tickets(**filters))

    def all_tickets(self, **filters: Any) -> list[Ticket]:
        """Every ticket matching the filters, following pages."""
        tickets: list[Ticket] = []
        after = 0
        while True:
            page = self.list_tickets(after_id=after, limit=5000, **filters)
            tickets.extend(page.tickets)
            if page.next_after_id is None:
                return tickets
            after = page.next_after_id

    def get_ticket(self, ticket_id: int) -> Ticket:
        return self.send(Calls.get_ticket(ticket_id))

    def cancel(self, ticket_id: int, reason: str | None = None) -> Ticket:
        return self.send(Calls.cancel(ticket_id, reason))

    def retry(self, ticket_id: int) -> Ticket:
        return self.send(Calls.retry(ticket_id))

    def attempts(self, ticket_id: int) -> list[Attempt]:
        return self.send(Calls.attempts(ticket_id))

    def stop(self, ticket_id: int, reason: str | None = None) -> Ticket:
        return self.send(Calls.stop(ticket_id, reason))

    def agents(self, plan_id: int | None = None) -> list[AgentStatus]:
        return self.send(Calls.agents(plan_id))

    def claim(self, agent: str, **kwargs: Any) -> Lease | None:
        return self.send(Calls.claim(agent, **kwargs))

    def heartbeat(
        self, lease: Lease, ttl_s: float | None = None, sandbox: SandboxUsage | None = None
    ) -> float:
        return self.send(Calls.heartbeat(lease, ttl_s, sandbox))

    def complete(self, lease: Lease, result: TicketResult | None = None) -> Ticket:
        return self.send(Calls.complete(lease, result))

    def fail(self, lease: Lease, reason: str, retryable: bool = True) -> Ticket:
        return self.send(Calls.fail(lease, reason, retryable))

    def release(self, lease: Lease, reason: str = "the agent was stopped") -> Ticket:
        return self.send(Calls.release(lease, reason))

    def agent_log(self, lease: Lease, entries: list[dict[str, Any]]) -> int:
        return self.send(Calls.agent_log(lease, entries))

    def context(self, lease: Lease) -> TicketContext:
        return self.send(Calls.context(lease))

    def events(
        self,
        after: int = 0,
        limit: int = 1000,
        plan_id: int | None = None,
        ticket_id: int | None = None,
    ) -> EventPage:
        return self.send(Calls.events(after, limit, plan_id, ticket_id))

    def usage(self, plan_id: int | None = None, ticket_id: int | None = None) -> UsageReport:
        return self.send(Calls.usage(plan_id, ticket_id))

    def import_repo(self, plan_id: int, source: str) -> dict[str, Any]:
        return self.send(Calls.import_repo(plan_id, source))

    def link_github(self, plan_id: int, repository: str, create: bool = False) -> dict[str, Any]:
        return self.send(Calls.link_github(plan_id, repository, create))

    def list_pulls(self, plan_id: int | None = None) -> list[PullRequest]:
        return self.send(Calls.list_pulls(plan_id))

    def get_pull(self, ticket_id: int) -> PullRequest:
        return self.send(Calls.get_pull(ticket_id))

    def pull_diff(self, ticket_id: int) -> str:
        return self.send(Calls.pull_diff(ticket_id)).decode(errors="replace")

    def all_events(self, after: int = 0, plan_id: int | None = None) -> list[Event]:
        """Every event after ``after``, following pages."""
        events: list[Event] = []
        while page := self.events(after, limit=5000, plan_id=plan_id).events:
            events.extend(page)
            after = page[-1].seq
        return events

    def create_token(self, kind: str, name: str) -> TokenCreated:
        return self.send(Calls.create_token(kind, name))

    def list_tokens(self) -> list[TokenInfo]:
        return self.send(Calls.list_tokens())

    def revoke_token(self, token_id: int) -> None:
        self.send(Calls.revoke_token(token_id))

    # -- sandboxes ---------------------------------------------------------------------------

    def list_vms(self) -> list[SandboxInfo]:
        return self.send(Calls.list_vms())

    def create_vm(self, spec: SandboxSpec | None = None) -> SandboxInfo:
        return self.send(Calls.create_vm(spec))

    def get_vm(self, sandbox_id: str) -> SandboxInfo:
        return self.send(Calls.get_vm(sandbox_id))

    def destroy_vm(self, sandbox_id: str) -> None:
        self.send(Calls.destroy_vm(sandbox_id))

    def pause_vm(self, sandbox_id: str) -> SandboxInfo:
        return self.send(Calls.pause_vm(sandbox_id))

    def resume_vm(self, sandbox_id: str) -> SandboxInfo:
        return self.send(Calls.resume_vm(sandbox_id))

    def snapshot_vm(self, sandbox_id: str) -> Snapshot:
        return self.send(Calls.snapshot_vm(sandbox_id))

    def list_snapshots(self) -> list[Snapshot]:
        return self.send(Calls.list_snapshots())

    def restore_snapshot(self, snapshot_id: str) -> SandboxInfo:
        return self.send(Calls.restore_snapshot(snapshot_id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.send(Calls.delete_snapshot(snapshot_id))

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        return self.send(Calls.read_file(sandbox_id, path))

    def write_file(
        self, sandbox_id: str, path: str, data: bytes, mode: int | None = None
    ) -> FileWritten:
        return self.send(Calls.write_file(sandbox_id, path, data, mode))

    def list_files(self, sandbox_id: str, path: str = ".") -> list[FileEntry]:
        return self.send(Calls.list_files(sandbox_id, path))

    def delete_file(self, sandbox_id: str, path: str, recursive: bool = False) -> None:
        self.send(Calls.delete_file(sandbox_id, path, recursive))

    def git_status(self, sandbox_id: str) -> GitStatus:
        return self.send(Calls.git_status(sandbox_id))

    def git_diff(self, sandbox_id: str, ref: str | None = None, stat: bool = False) -> GitDiff:
        return self.send(Calls.git_diff(sandbox_id, ref, stat))

    def git_log(self, sandbox_id: str, n: int = 20, ref: str | None = None) -> list[GitCommit]:
        return self.send(Calls.git_log(sandbox_id, n, ref))

    def git_commit(self, sandbox_id: str, message: str, **kwargs: Any) -> GitCommit:
        return self.send(Calls.git_commit(sandbox_id, message, **kwargs))

    def exec_stream(
        self, sandbox_id: str, argv: list[str], **options: Unpack[ExecOptions]
    ) -> Iterator[Output | Exit]:
        """Run a command in a sandbox, yielding its output as it comes and, last, its
        :class:`Exit` (the one call that streams its answer, NDJSON)."""
        body = exec_body(argv, **options)
        wait = body.get("timeout_s")
        # No read timeout of our own: a quiet command is not a dead server.
        timeout = httpx.Timeout(30.0, read=None if wait is None else wait + 30)
        try:
            with self._http.stream(
                "POST",
                _vm(sandbox_id, "/exec"),
                json=body,
                headers=_headers(self.token),
                timeout=timeout,
            ) as response:
                if response.status_code >= 400:
                    _raise_for(response.status_code, response.read())
                for line in response.iter_lines():
                    if line:
                        yield exec_item(line.encode())
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the Swarm API at {self.base_url}: {exc}") from exc

    def exec(self, sandbox_id: str, argv: list[str], **options: Unpack[ExecOptions]) -> ExecResult:
        """Run a command in a sandbox to its end and collect its output."""
        out: list[bytes] = []
        err: list[bytes] = []
        result = ExecResult(exit_code=-1)
        for item in self.exec_stream(sandbox_id, argv, **options):
            if isinstance(item, Output):
                (out if item.stream == "stdout" else err).append(item.data)
            else:
                result = ExecResult(item.exit_code, timed_out=item.timed_out)
                if item.error:
                    err.append(item.error.encode())
        result.stdout, result.stderr = b"".join(out), b"".join(err)
        return result


class AsyncSwarmClient:
    """Non-blocking client for agents: claim, heartbeat, complete, fail, read (over httpx)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, limits=POOL_LIMITS
        )
        self._owns_http = http is None

    async def __aenter__(self) -> AsyncSwarmClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                self.base_url + call.path,
                json=call.json,
                content=call.content,
                params=call.params or None,
                headers=_headers(call.token or self.token, call),
                timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the Swarm API at {self.base_url}: {exc}") from exc
        return _answer(call, response.status_code, response.content)

    async def claim(self, agent: str, **kwargs: Any) -> Lease | None:
        return await self.send(Calls.claim(agent, **kwargs))

    async def heartbeat(self, lease: Lease, ttl_s: float | None = None) -> float:
        return await self.send(Calls.heartbeat(lease, ttl_s))

    async def complete(self, lease: Lease, result: TicketResult | None = None) -> Ticket:
        return await self.send(Calls.complete(lease, result))

    async def fail(self, lease: Lease, reason: str, retryable: bool = True) -> Ticket:
        return await self.send(Calls.fail(lease, reason, retryable))

    async def get_ticket(self, ticket_id: int, token: str | None = None) -> Ticket:
        return await self.send(Calls.get_ticket(ticket_id, token))

    async def events(
        self, after: int = 0, limit: int = 1000, plan_id: int | None = None
    ) -> EventPage:
        return await self.send(Calls.events(after, limit, plan_id))


class AiohttpSwarmClient(AsyncSwarmClient):
    """The same async client over aiohttp, whose per-request cost is a fraction of httpx's:
    for many agents in one process (``swarm bench``), where the client shares the CPU."""

    def __init__(
        self, base_url: str, token: str | None = None, *, session: aiohttp.ClientSession
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._session = session
        self._owns_http = False

    async def aclose(self) -> None:
        return None

    async def send(self, call: Call[T]) -> T:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=call.timeout or 30.0)
        try:
            async with self._session.request(
                call.method,
                self.base_url + call.path,
                json=call.json,
                data=call.content,
                params=_flat_params(call.params),
                headers=_headers(call.token or self.token, call),
                timeout=timeout,
            ) as response:
                content = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach the Swarm API at {self.base_url}: {exc}") from exc
        return _answer(call, status, content)


def _flat_params(params: dict[str, Any]) -> list[tuple[str, str]] | None:
    """Query parameters as aiohttp wants them: repeated keys for lists, strings for values."""
    if not params:
        return None
    flat: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            flat.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return flat
