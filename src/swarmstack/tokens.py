"""Token storage: issue, list, revoke, and authenticate bearer tokens (see :mod:`auth`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from swarmstack.auth import (
    Principal,
    TokenKind,
    format_token,
    hashes_match,
    new_secret,
    parse_token,
    secret_hash,
)
from swarmstack.db import Database
from swarmstack.errors import AuthError, NotFound, UsageError

_MAX_INT = 2**63 - 1  # ids are 64-bit integers in the database, epochs 32-bit
_MAX_EPOCH = 2**31 - 1


class TokenStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def create(self, kind: TokenKind, name: str) -> str:
        """Issue an admin or agent token; only its hash is stored."""
        if kind is TokenKind.LEASE:
            raise UsageError("lease tokens come from claims, not from create_token")
        secret = new_secret()
        with self.db.tx() as tx:
            row_id = int(
                tx.scalar(
                    "INSERT INTO tokens (kind, name, token_hash, created_at) "
                    "VALUES (:k, :n, :h, :now) RETURNING id",
                    {"k": kind.value, "n": name, "h": secret_hash(secret), "now": self.clock()},
                )
            )
        return format_token(kind, str(row_id), secret)

    def revoke(self, token_id: int) -> None:
        with self.db.tx() as tx:
            hit = tx.scalar(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, :now) WHERE id = :id "
                "RETURNING id",
                {"now": self.clock(), "id": token_id},
            )
        if hit is None:
            raise NotFound(f"no token {token_id}")

    def list(self) -> list[dict[str, Any]]:
        with self.db.read() as tx:
            rows: list[dict[str, Any]] = tx.all(
                "SELECT id, kind, name, created_at, revoked_at FROM tokens ORDER BY id"
            )
        return rows

    def authenticate(self, token: str) -> Principal:
        """Who a bearer token belongs to; AuthError unless it is a live token."""
        parsed = parse_token(token)
        if parsed is None:
            raise AuthError("malformed token")
        kind, ident = parsed
        numbers = [int(x) for x in ident.split("-")]
        too_big = numbers[0] > _MAX_INT or (len(numbers) == 2 and numbers[1] > _MAX_EPOCH)
        if (kind is TokenKind.LEASE) != (len(numbers) == 2) or too_big:
            raise AuthError("malformed token")
        if kind is TokenKind.LEASE:
            ticket_id, epoch = numbers
            with self.db.read() as tx:
                row = tx.one(
                    "SELECT token_hash, agent FROM attempts WHERE ticket_id = :t AND epoch = :e",
                    {"t": ticket_id, "e": epoch},
                )
            if row is None or not hashes_match(token, row["token_hash"]):
                raise AuthError("unknown token")
            return Principal(kind, str(row["agent"]), 0, ticket_id=ticket_id, epoch=epoch)
        with self.db.read() as tx:
            row = tx.one(
                "SELECT token_hash, name, revoked_at, kind FROM tokens WHERE id = :id",
                {"id": numbers[0]},
            )
        if row is None or row["kind"] != kind.value or not hashes_match(token, row["token_hash"]):
            raise AuthError("unknown token")
        if row["revoked_at"] is not None:
            raise AuthError("token revoked")
        return Principal(kind, str(row["name"]), numbers[0])
