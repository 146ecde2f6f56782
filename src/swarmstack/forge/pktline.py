"""The start of a ``git-receive-pack`` request: the ref updates a push asks for.

A push's body is pkt-lines, ``<old-oid> <new-oid> <ref>`` (the first one followed by a NUL and
the client's capabilities), a flush packet (``0000``), then the pack. The broker reads the
commands to decide, before git sees any of it, whether this lease may make them.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmstack.errors import UsageError

ZERO = "0" * 40
MAX_COMMANDS = 1000


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str

    @property
    def deletes(self) -> bool:
        return set(self.new) == {"0"}

    @property
    def creates(self) -> bool:
        return set(self.old) == {"0"}


def ref_updates(body: bytes) -> list[RefUpdate]:
    """The commands of a receive-pack request; UsageError if they are not pkt-lines."""
    updates: list[RefUpdate] = []
    at = 0
    while True:
        head = body[at : at + 4]
        if len(head) < 4:
            raise UsageError("the push ends before its commands do")
        try:
            length = int(head, 16)
        except ValueError:
            raise UsageError("the push is not git's pkt-line format") from None
        if length == 0:  # flush: the commands are over
            return updates
        if length < 4 or at + length > len(body):
            raise UsageError("the push holds a broken pkt-line")
        line = body[at + 4 : at + length].split(b"\0", 1)[0].rstrip(b"\n")
        at += length
        if line.startswith(b"shallow "):
            continue
        parts = line.decode(errors="replace").split(" ")
        if len(parts) != 3 or not all(len(p) in (40, 64) for p in parts[:2]):
            raise UsageError(f"the push holds a command git does not know: {line[:100]!r}")
        updates.append(RefUpdate(*parts))
        if len(updates) > MAX_COMMANDS:
            raise UsageError(f"a push may update at most {MAX_COMMANDS} refs")
