"""Typed models shared by the plan file, the store, the HTTP API and the client."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

Phase = Literal["skeleton", "expansion", "validation"]
# designing: a design agent is writing the plan file; draft: written, waiting for a person to
# approve it; failed: the design gave up; active: approved (or imported whole), tickets exist.
PlanStatus = Literal["designing", "draft", "failed", "active"]

# Text that PostgreSQL can store: no NUL characters (SQLite would, but one rule for both).
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]


def _number_only(value: Any) -> Any:
    # JSON's 3 and 3.0 are both numbers; true and "3" are not, whatever lax parsing allows.
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a number")
    return value


Integer = Annotated[int, BeforeValidator(_number_only)]
Number = Annotated[float, BeforeValidator(_number_only)]
# The bounds before the validator: so they reach the JSON schema inside an optional's anyOf.
Dollars = Annotated[float, Field(ge=0, le=1e9), BeforeValidator(_number_only)]
Estimate = Annotated[float, Field(gt=0, le=10_000), BeforeValidator(_number_only)]


class TicketState(enum.StrEnum):
    """Where a ticket is in its life; see ARCHITECTURE.md, "Ticket lifecycle"."""

    PENDING = "pending"  # some dependency is not done yet
    READY = "ready"  # may be claimed
    CLAIMED = "claimed"  # an agent holds a live lease
    MERGING = "merging"  # its branch is in the merge queue: merged and checked, or sent back
    FAILED = "failed"  # waiting out its backoff before it is ready again
    DONE = "done"
    DEAD = "dead"  # failed too many times; needs a person
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TicketState.DONE, TicketState.DEAD, TicketState.CANCELLED)


# -- the plan file -------------------------------------------------------------------------


class TicketSpec(BaseModel):
    """One ticket as a person writes it in a plan file."""

    model_config = ConfigDict(extra="forbid")

    id: Text = Field(min_length=1, max_length=200)
    title: Text = Field(default="", max_length=500)
    body: Text = ""
    phase: Phase = "expansion"
    depends_on: list[Text] = Field(default_factory=list)
    files: list[Text] = Field(default_factory=list)
    acceptance: list[Text] = Field(default_factory=list)
    estimate: Number = Field(default=1.0, gt=0, le=10_000)
    priority: Integer = Field(default=0, ge=-1000, le=1000)
    covers: list[Text] = Field(default_factory=list)


class Requirement(BaseModel):
    """One requirement of the spec, which tickets name in their ``covers``."""

    model_config = ConfigDict(extra="forbid")

    id: Text = Field(min_length=1, max_length=200)
    text: Text


class PlanSpec(BaseModel):
    """A named DAG of tickets: the plan file (JSON or YAML) and the body of ``POST /v1/plans``."""

    model_config = ConfigDict(extra="forbid")

    title: Text = Field(min_length=1, max_length=500)
    description: Text = ""
    budget_usd: Dollars | None = Field(
        default=None, description="what the plan's model calls may cost in all, in US dollars"
    )
    requirements: list[Requirement] = Field(
        default_factory=list,
        description="the spec's requirements; when listed, every one must be covered by a "
        "ticket and tickets may cover only these",
    )
    max_estimate: Estimate | None = Field(
        default=None, description="the largest estimate a ticket may have"
    )
    checks: Text | None = Field(
        default=None,
        max_length=4_000,
        description="the command (sh -c) that checks a merged tree, run in a sandbox before a "
        "ticket counts as done; default: `checks` in the repository's .swarm.toml",
    )
    integration_branch: Text | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="the branch the tickets' work is merged into; default: the repository's "
        "default branch",
    )
    strict_waves: bool = Field(
        default=False,
        description="run wave by wave: a ticket is claimable only when every ticket of the "
        "waves before its own is finished",
    )
    tickets: list[TicketSpec]


# -- validation report ---------------------------------------------------------------------

IssueCode = Literal[
    "duplicate_id",
    "unknown_dependency",
    "self_dependency",
    "cycle",
    "empty_title",
    "file_conflict",
    "duplicate_requirement",
    "unknown_requirement",
    "uncovered_requirement",
    "unreachable_from_skeleton",
    "validation_too_early",
    "too_large",
]


class PlanIssue(BaseModel):
    code: IssueCode
    tickets: list[str]
    message: str
    suggested_edge: tuple[str, str] | None = None  # (dependent, dependency) for file_conflict
    requirements: list[str] = Field(
        default_factory=list, description="requirement ids the issue is about"
    )


class ValidationReport(BaseModel):
    valid: bool
    errors: list[PlanIssue] = Field(default_factory=list)
    warnings: list[PlanIssue] = Field(default_factory=list)


# -- stored objects, as the API returns them ------------------------------------------------


class Plan(BaseModel):
    id: int
    title: str
    description: str
    created_at: float
    ticket_count: int
    counts: dict[str, int] = Field(default_factory=dict, description="tickets by state")
    budget_usd: float | None = None
    spent_usd: float = Field(default=0.0, description="what its model calls have cost so far")
    status: PlanStatus = Field(
        default="active",
        description="designing (a design agent is writing it), draft (no tickets until "
        "approved), failed (its design failed) or active (its tickets exist)",
    )
    error: str | None = Field(default=None, description="why its design failed, if it did")
    strict_waves: bool = Field(default=False, description="whether it runs wave by wave")
    integration_branch: str | None = Field(
        default=None, description="where its work is merged; none: the repository's default"
    )
    checks: str | None = Field(
        default=None, description="its check command; none: the repository's .swarm.toml"
    )
    github: str | None = Field(
        default=None, description="the GitHub repository (owner/name) its work is published to"
    )
    paused: bool = Field(
        default=False, description="whether its tickets are held back: no new claims until resumed"
    )


class TicketResult(BaseModel):
    """What an agent reports when it completes a ticket."""

    model_config = ConfigDict(extra="forbid")

    summary: Text = Field(default="", max_length=20_000)
    branch: Text | None = Field(default=None, max_length=500)
    pull_request: Text | None = Field(default=None, max_length=2_000)
    cost_usd: Number = Field(default=0.0, ge=0, le=1e9)


# conflict: git could not merge it; checks: the merged tree failed them; error: the merge could
# not be made at all (its branch is gone, say).
class SandboxUsage(BaseModel):
    """What a runner reports of its sandbox with each heartbeat: where it runs, and what the
    processes it started use (resident memory now; cpu since the last beat, 100 = one core)."""

    model_config = ConfigDict(extra="forbid")

    backend: Text | None = Field(default=None, max_length=40, description="bwrap, qemu, …")
    sandbox_id: Text | None = Field(default=None, max_length=200)
    memory_bytes: Integer | None = Field(default=None, ge=0, le=2**62)
    cpu_percent: Number | None = Field(default=None, ge=0, le=100_000)
    processes: Integer | None = Field(default=None, ge=0, le=10_000_000)


class Attempt(BaseModel):
    """One claim of a ticket and how it ended."""

    epoch: int
    agent: str
    claimed_at: float
    ended_at: float | None = Field(description="none while the attempt goes on")
    outcome: str | None = Field(
        description="done, merging (its branch went to the merge queue), failed, dead, "
        "released, expired or cancelled; none while it goes on"
    )
    error: str | None = Field(default=None, description="why it failed, if it did")


class AgentStatus(BaseModel):
    """An agent at work: the live lease it holds, and its sandbox as last reported."""

    ticket_id: int
    ticket_key: str
    plan_id: int
    agent: str
    attempt: int
    fixing: bool = Field(description="whether this attempt fixes a conflict or failed checks")
    claimed_at: float | None
    last_heartbeat_at: float = Field(description="when the lease was last claimed or extended")
    lease_expires_at: float
    stale: bool = Field(
        description="no heartbeat for two-thirds of the lease: the agent may be stuck, and the "
        "ticket goes to another agent when the lease runs out"
    )
    sandbox: SandboxUsage | None = None


FixReason = Literal["conflict", "checks", "error"]


class FixRequest(BaseModel):
    """Why a ticket's merged work was sent back, for the agent that fixes it: the conflicted
    paths and git's account of them, or the failing checks' output, against ``base_sha`` of
    the integration branch ``base``."""

    reason: FixReason
    base: str
    base_sha: str
    head_sha: str
    conflicts: list[str] = Field(default_factory=list)
    details: str = Field(default="", description="git's messages, or the checks' output")
    command: str | None = Field(default=None, description="the check command that failed")
    exit_code: int | None = None
    timed_out: bool = False


class Ticket(BaseModel):
    id: int
    plan_id: int
    key: str
    title: str
    body: str
    phase: Phase
    depends_on: list[str]
    files: list[str]
    acceptance: list[str]
    covers: list[str]
    estimate: float
    priority: int
    rank: float = Field(description="upward rank: longest estimated path to the end of the DAG")
    state: TicketState
    unmet: int = Field(description="dependencies not done yet")
    attempts: int
    max_attempts: int
    epoch: int
    lease_agent: str | None
    lease_expires_at: float | None
    retry_at: float | None
    ready_at: float | None
    updated_at: float
    last_error: str | None
    result: TicketResult | None
    fix: FixRequest | None = Field(
        default=None, description="set when its last merge conflicted or failed its checks"
    )
    wave: int = Field(default=0, description="its topological generation in the plan")


class TicketUsage(BaseModel):
    ticket_id: int
    key: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class UsageReport(BaseModel):
    """What model calls through the LLM gateway have used and cost, in all and per ticket."""

    calls: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float
    tickets: list[TicketUsage] = Field(default_factory=list, description="costliest first")


class DiffStats(BaseModel):
    """A branch against the base it left: its commits and the size of its change."""

    base: str
    head: str
    base_sha: str
    head_sha: str
    files_changed: int
    insertions: int
    deletions: int


class PullRequest(DiffStats):
    """A ticket's branch against its plan's base branch, in the forge."""

    id: int
    plan_id: int
    ticket_id: int
    state: Literal["open", "merged", "closed"]
    created_at: float
    updated_at: float
    merge_sha: str | None = Field(default=None, description="the commit that merged it")
    number: int | None = Field(default=None, description="its number on GitHub")
    url: str | None = Field(default=None, description="its page on GitHub")


class Lease(BaseModel):
    """What a successful claim returns: the ticket and the right to work on it."""

    ticket: Ticket
    epoch: int
    expires_at: float
    token: str = Field(description="lease token: bound to this ticket and epoch")
    ttl_s: float


class Event(BaseModel):
    seq: int
    ts: float
    kind: str
    plan_id: int | None
    ticket_id: int | None
    data: dict[str, Any]


class Wave(BaseModel):
    index: int
    tickets: list[str]


class WavesReport(BaseModel):
    plan_id: int | None = None
    waves: list[Wave]
    critical_path: list[str]
    critical_length: float
