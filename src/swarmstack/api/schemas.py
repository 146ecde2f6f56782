"""Request and response bodies of the HTTP API that are not library models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, WithJsonSchema

from swarmstack.sandbox.base import Limits, SandboxSpec
from swarmstack.tickets.models import (
    Event,
    Integer,
    Number,
    SandboxUsage,
    Text,
    Ticket,
    TicketResult,
)

# Ids are 64-bit and epochs 32-bit integers in the database; larger ones cannot exist.
MAX_ID = 2**63 - 1
MAX_EPOCH = 2**31 - 1


class ErrorBody(BaseModel):
    error: str = Field(description="a stable machine-readable code")
    message: str = Field(description="what went wrong, for a person")
    details: Any = None


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: Text = Field(min_length=1, max_length=200, description="who is claiming, for the record")
    plan_id: Integer | None = Field(default=None, ge=1, le=MAX_ID, description="only this plan")
    wait_s: Number = Field(default=0.0, ge=0, le=3600, description="long-poll up to this long")
    ttl_s: Number | None = Field(default=None, ge=1, le=86_400, description="lease length")


class LeaseWrite(BaseModel):
    """Every agent write names the epoch of the lease it holds."""

    model_config = ConfigDict(extra="forbid")

    epoch: Integer = Field(ge=1, le=MAX_EPOCH)


class HeartbeatRequest(LeaseWrite):
    ttl_s: Number | None = Field(default=None, ge=1, le=86_400)
    sandbox: SandboxUsage | None = Field(
        default=None, description="the runner's sandbox: where it runs, what it uses"
    )


class HeartbeatResponse(BaseModel):
    ticket_id: int
    epoch: int
    expires_at: float


class CompleteRequest(LeaseWrite):
    result: TicketResult = Field(default_factory=TicketResult)


class FailRequest(LeaseWrite):
    reason: Text = Field(min_length=1, max_length=20_000)
    retryable: Annotated[bool, Strict()] = True


class ReleaseRequest(LeaseWrite):
    reason: Text = Field(
        default="the agent was stopped", min_length=1, max_length=2_000, description="why"
    )


AgentLogKind = Literal["message", "tool_call", "tool_result", "output", "status", "error"]


class LogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: AgentLogKind
    data: dict[str, Any] = Field(default_factory=dict, description="becomes the event's data")


class LogRequest(LeaseWrite):
    """What an agent said and did, in order: each entry becomes an ``agent.<kind>`` event."""

    entries: list[LogEntry] = Field(min_length=1, max_length=500)


class LogResponse(BaseModel):
    appended: int


class DependencyInfo(BaseModel):
    key: str
    title: str
    state: str
    summary: str = ""


class TicketContext(BaseModel):
    """What an agent needs besides its ticket: the plan it belongs to and what the tickets it
    builds on reported."""

    ticket: Ticket
    plan_title: str
    plan_description: str
    dependencies: list[DependencyInfo]
    repository: bool = Field(description="whether the forge holds the plan's repository")
    base: str | None = Field(
        default=None,
        description="the branch the ticket's work starts from and is merged into (the plan's "
        "integration branch); none without a repository",
    )


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(default="cancelled by an operator", min_length=1, max_length=2_000)


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(default="an admin stopped its agent", min_length=1, max_length=2_000)


class TicketPage(BaseModel):
    tickets: list[Ticket]
    next_after_id: int | None = Field(description="pass as after_id for the next page")


class EventPage(BaseModel):
    events: list[Event]
    last_seq: int = Field(description="the sequence of the last event returned (or `after`)")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["admin", "agent"]
    name: Text = Field(min_length=1, max_length=200)


class TokenCreated(BaseModel):
    token: str = Field(description="shown once; only its SHA-256 is stored")
    kind: str
    name: str


class TokenInfo(BaseModel):
    id: int
    kind: str
    name: str
    created_at: float
    revoked_at: float | None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: str
    schema_version: int


# -- runs: agent pools the control plane starts ------------------------------------------------

MAX_RUN_AGENTS = 1000  # as `swarm run --agents`; SWARM_MAX_RUN_AGENTS may allow fewer


class RunRequest(BaseModel):
    """The body of ``POST /v1/plans/{id}/run``: how many agents, and where they run."""

    model_config = ConfigDict(extra="forbid")

    agents: Integer = Field(
        default=4, ge=1, le=MAX_RUN_AGENTS, description="agents at once, each in its own sandbox"
    )
    backend: Literal["auto", "bwrap", "qemu"] = Field(
        default="auto",
        description="where the agents run: bubblewrap, QEMU microVMs, or auto (bubblewrap "
        "where it is installed, else QEMU)",
    )


# -- sandboxes (the VM API) ----------------------------------------------------------------------

SANDBOX_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # sandbox and snapshot ids in paths
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NO_NUL = r"^[^\x00]*$"
# What git keeps in an identity: no angle brackets, no line breaks, no control characters.
_PERSON = r"^[^<>\x00-\x1f\x7f]+$"
_EMAIL = r"^[^<>\s\x00-\x1f\x7f]+$"
# Limits keep every request well inside SWARM_MAX_BODY_BYTES (1 MiB by default), so that one
# too many of anything is refused for what it is (422), not for its size (413).
MAX_ENV = 64
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 8192
MAX_ARG = 32_768  # longer scripts: upload a file, run it
MAX_COMMIT_PATHS = 100

# pydantic documents a dict with patterned keys as patternProperties, which lets any other key
# through; the schema says what validation does: every name must match.
Environment = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=ENV_NAME, max_length=MAX_ENV_NAME)],
        Annotated[str, StringConstraints(pattern=_NO_NUL, max_length=MAX_ENV_VALUE)],
    ],
    Field(max_length=MAX_ENV),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": ENV_NAME, "maxLength": MAX_ENV_NAME},
            "additionalProperties": {
                "type": "string",
                "pattern": _NO_NUL,
                "maxLength": MAX_ENV_VALUE,
            },
            "maxProperties": MAX_ENV,
        }
    ),
]


class VmLimits(Limits):
    """:class:`Limits` as the API takes them: numbers only, and no less than a sandbox needs
    to start (a tenth of a CPU, 64 MiB, 16 processes)."""

    model_config = ConfigDict(extra="forbid")

    cpus: Number = Field(default=1.0, ge=0.1, le=64)
    memory_mib: Integer = Field(default=1024, ge=64, le=1 << 20)
    pids: Integer = Field(default=512, ge=16, le=1 << 22)
    disk_mib: Integer = Field(default=4096, ge=16, le=1 << 24)


class VmSpec(SandboxSpec):
    """The body of ``POST /v1/vms``: a :class:`SandboxSpec`, strictly checked."""

    model_config = ConfigDict(extra="forbid")

    image: Text | None = Field(default=None, min_length=1, max_length=500)
    limits: VmLimits = Field(default_factory=VmLimits)
    env: Environment = Field(default_factory=dict)
    control_port: Integer = Field(default=8420, ge=1, le=65535)

    def to_spec(self) -> SandboxSpec:
        return SandboxSpec.model_validate(self.model_dump())


class ExecRequest(BaseModel):
    """A command for ``POST /v1/vms/{id}/exec``."""

    model_config = ConfigDict(extra="forbid")

    argv: list[Annotated[Text, Field(max_length=MAX_ARG)]] = Field(
        min_length=1, description="the program and its arguments; no shell"
    )
    # Paths are checked by the route (400 bad_path, like every workspace path), not here.
    cwd: str = Field(default=".", max_length=4096, description="relative to the workspace")
    env: Environment | None = Field(default=None, description="on top of the sandbox's own")
    timeout_s: Number | None = Field(
        default=None, gt=0, le=86_400, description="kill the command and its children after"
    )
    stdin: str | None = Field(
        default=None,
        pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        description="the command's standard input, base64-encoded",
    )


class FileWritten(BaseModel):
    path: str
    size: int


class CommitRequest(BaseModel):
    """``POST /v1/vms/{id}/git/commit``: with no ``paths``, every change in the work tree."""

    model_config = ConfigDict(extra="forbid")

    message: Text = Field(min_length=1, max_length=65_536)
    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        default=None, min_length=1, max_length=MAX_COMMIT_PATHS, description="workspace paths"
    )
    author_name: str | None = Field(default=None, min_length=1, max_length=200, pattern=_PERSON)
    author_email: str | None = Field(default=None, min_length=1, max_length=200, pattern=_EMAIL)
