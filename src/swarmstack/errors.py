"""One exception hierarchy for the whole of Swarm.

Each error knows its HTTP status and its CLI exit code, so the API and the CLI map errors in
one place and never show a traceback for a mistake the caller can fix::

    SwarmError                      500 / exit 1
    ├── UsageError                  400 / exit 2   bad input: unparseable file, wrong types
    │   ├── InvalidRequest          422 / exit 2   a body or parameter that breaks the schema
    │   └── PlanInvalid             422 / exit 1   a plan that parses but breaks the rules
    ├── AuthError                   401 / exit 2   missing, malformed or unknown token
    ├── Forbidden                   403 / exit 2   a valid token touching what it may not
    ├── NotFound                    404 / exit 1
    ├── Conflict                    409 / exit 1   the state forbids it (cancel a done ticket)
    │   └── StaleLease              409 / exit 1   an agent write with an epoch that is not live
    ├── PayloadTooLarge             413 / exit 2
    ├── DesignFailed                502 / exit 1   the design agent got no usable plan
    └── Unavailable                 503 / exit 1   the server or database cannot be reached
"""

from __future__ import annotations

from typing import Any


class SwarmError(Exception):
    """Base of every error Swarm raises on purpose."""

    status_code = 500
    exit_code = 1
    code = "internal"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class UsageError(SwarmError):
    status_code = 400
    exit_code = 2
    code = "bad_request"


class InvalidRequest(UsageError):
    status_code = 422
    code = "invalid_request"


class PlanInvalid(UsageError):
    """The plan parsed but fails validation; ``details`` holds the full report."""

    status_code = 422
    exit_code = 1
    code = "invalid_plan"


class AuthError(SwarmError):
    status_code = 401
    exit_code = 2
    code = "unauthorized"


class Forbidden(SwarmError):
    status_code = 403
    exit_code = 2
    code = "forbidden"


class NotFound(SwarmError):
    status_code = 404
    code = "not_found"


class Conflict(SwarmError):
    status_code = 409
    code = "conflict"


class StaleLease(Conflict):
    code = "stale_lease"


class PayloadTooLarge(SwarmError):
    status_code = 413
    exit_code = 2
    code = "payload_too_large"


class DesignFailed(SwarmError):
    """The model's answers never made a valid plan (or the model could not be reached)."""

    status_code = 502
    code = "design_failed"


class Unavailable(SwarmError):
    status_code = 503
    code = "unavailable"


_BY_CODE: dict[str, type[SwarmError]] = {
    cls.code: cls
    for cls in (
        SwarmError,
        UsageError,
        InvalidRequest,
        PlanInvalid,
        AuthError,
        Forbidden,
        NotFound,
        Conflict,
        StaleLease,
        PayloadTooLarge,
        DesignFailed,
        Unavailable,
    )
}


def from_response(status: int, body: Any) -> SwarmError:
    """Rebuild the error a server sent, for the client side."""
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    cls = _BY_CODE.get(code or "")
    if cls is None:
        cls = next(
            (c for c in _BY_CODE.values() if c.status_code == status and c.code != "internal"),
            SwarmError,
        )
    details = body.get("details") if isinstance(body, dict) else None
    return cls(message or f"HTTP {status}", details=details)
