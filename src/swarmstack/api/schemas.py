"""Request and response bodies of the HTTP API that are not library models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

from swarmstack.tickets.models import Event, Integer, Number, Text, Ticket, TicketResult

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


class HeartbeatResponse(BaseModel):
    ticket_id: int
    epoch: int
    expires_at: float


class CompleteRequest(LeaseWrite):
    result: TicketResult = Field(default_factory=TicketResult)


class FailRequest(LeaseWrite):
    reason: Text = Field(min_length=1, max_length=20_000)
    retryable: Annotated[bool, Strict()] = True


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(default="cancelled by an operator", min_length=1, max_length=2_000)


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
