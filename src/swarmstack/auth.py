"""Bearer tokens: issued at random, typed by prefix, stored only as SHA-256.

A token reads ``sw<kind>_<row id>_<secret>``. The row id finds the stored hash (of the secret)
in one indexed look-up and the hash is then compared in constant time, so neither the secret nor
its hash is ever used as a search key. Only the secret is hashed, so a lease's hash can be
written before the claim has picked the ticket and epoch that name it.

* ``swadmin_…`` — an operator: everything.
* ``swagent_…`` — an agent or a sandbox host: may claim tickets, nothing else.
* ``swlease_<ticket>-<epoch>_…`` — returned by a claim; bound to one ticket and one epoch.
  It may heartbeat, complete, fail and read its own ticket, and nothing else.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass


class TokenKind(enum.StrEnum):
    ADMIN = "admin"
    AGENT = "agent"
    LEASE = "lease"


_TOKEN_RE = re.compile(r"^sw(admin|agent|lease)_(\d{1,18}(?:-\d{1,18})?)_([A-Za-z0-9_-]{20,100})$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def secret_hash(secret: str) -> str:
    """What the database keeps of a token: the SHA-256 of its secret part. The identifier
    part is not hashed: it selects the one row whose hash the secret must match."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def format_token(kind: TokenKind, ident: str, secret: str) -> str:
    """``ident`` is the token row id, or ``<ticket>-<epoch>`` for a lease token."""
    return f"sw{kind.value}_{ident}_{secret}"


def parse_token(token: str) -> tuple[TokenKind, str] | None:
    """The kind and identifier a token claims, or None if it is not shaped like one."""
    match = _TOKEN_RE.match(token)
    if match is None:
        return None
    return TokenKind(match.group(1)), match.group(2)


def hashes_match(token: str, stored_hash: str) -> bool:
    """Whether ``token``'s secret is the one ``stored_hash`` was made from (constant time)."""
    match = _TOKEN_RE.match(token)
    secret = match.group(3) if match else token
    return hmac.compare_digest(secret_hash(secret), stored_hash)


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``ticket_id``/``epoch`` are set for lease tokens only."""

    kind: TokenKind
    name: str
    token_id: int
    ticket_id: int | None = None
    epoch: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind is TokenKind.ADMIN
