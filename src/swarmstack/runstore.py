"""Runs in the database: the agent pools control planes start for plans, held by leases.

A run is a row: its plan, agents and backend, its state, and the control plane holding it — the
``owner`` with a lease it renews while the pool works. A plan has at most one run going (a
partial unique index, so two replicas starting one at once cannot both win). The row outlives
the process: a control plane that shuts down hands its runs over (the lease ends at once) and a
crashed one's lease runs out; either way the next control plane to look adopts the run and
starts its pool again. Stopping a run held by another replica is asked for in the row, and the
holder stops it at its next look::

    run = store.runs.start(plan_id, agents=4, backend="bwrap", owner="host-a:812", lease_s=30)
    store.runs.renew(run.id, "host-a:812", 30)      # False once the run is no longer its own
    store.runs.adoptable()                           # runs going that nobody holds
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from swarmstack.db import Database
from swarmstack.errors import Conflict, NotFound

RunState = Literal["running", "finished", "stopped", "failed"]
_COLUMNS = (
    "id, plan_id, agents, backend, state, reason, started_at, ended_at, owner, lease_until, "
    "token_id, stop_requested, adoptions"
)


class Run(BaseModel):
    """An agent pool a control plane runs for a plan, until no ticket can move."""

    id: int
    plan_id: int
    agents: int
    backend: str
    started_at: float
    ended_at: float | None = None
    state: RunState = Field(
        description="running; finished (no ticket can move any more), stopped (by an admin) "
        "or failed"
    )
    reason: str | None = Field(default=None, description="how it ended, for a person")
    held_by: str | None = Field(
        default=None,
        description="the control plane whose pool works it (host:pid:…); none while a running "
        "run waits for a control plane to take it up (after a restart or a crash)",
    )
    adoptions: int = Field(
        default=0, description="how often a control plane took it up after another one let go"
    )
    token_id: int | None = Field(default=None, exclude=True)  # its pool's agent token
    stop_requested: bool = Field(default=False, exclude=True)


class RunStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def _run(self, row: dict[str, Any], now: float) -> Run:
        held = row["owner"] if (row["lease_until"] or 0) > now else None
        return Run(
            id=row["id"],
            plan_id=row["plan_id"],
            agents=row["agents"],
            backend=row["backend"],
            state=row["state"],
            reason=row["reason"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            held_by=held if row["state"] == "running" else None,
            adoptions=row["adoptions"],
            token_id=row["token_id"],
            stop_requested=bool(row["stop_requested"]),
        )

    def _select(self, where: str, params: dict[str, Any]) -> list[Run]:
        now = self.clock()
        with self.db.read() as tx:
            rows = tx.all(f"SELECT {_COLUMNS} FROM runs {where} ORDER BY id", params)
        return [self._run(r, now) for r in rows]

    def start(self, plan_id: int, agents: int, backend: str, owner: str, lease_s: float) -> Run:
        """A new run held by ``owner``; Conflict if the plan has one going."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                "INSERT INTO runs (plan_id, agents, backend, state, started_at, owner, "
                "lease_until) VALUES (:p, :a, :b, 'running', :now, :o, :until) "
                "ON CONFLICT (plan_id) WHERE state = 'running' DO NOTHING "
                f"RETURNING {_COLUMNS}",
                {"p": plan_id, "a": agents, "b": backend, "now": now, "o": owner,
                 "until": now + lease_s},
            )  # fmt: skip
        if row is None:
            going = self.going(plan_id)
            agents_now = f" ({going.agents} agents)" if going is not None else ""
            raise Conflict(
                f"plan {plan_id} has a run going already{agents_now}: stop it first to start "
                "another"
            )
        return self._run(row, now)

    def get(self, run_id: int) -> Run:
        found = self._select("WHERE id = :id", {"id": run_id})
        if not found:
            raise NotFound(f"no run {run_id}")
        return found[0]

    def going(self, plan_id: int) -> Run | None:
        """The plan's run going, if it has one."""
        found = self._select("WHERE plan_id = :p AND state = 'running'", {"p": plan_id})
        return found[0] if found else None

    def find(self, plan_id: int | None = None) -> list[Run]:
        """Every run (of one plan), oldest first."""
        if plan_id is None:
            return self._select("", {})
        return self._select("WHERE plan_id = :p", {"p": plan_id})

    def set_token(self, run_id: int, token_id: int | None) -> None:
        with self.db.tx() as tx:
            tx.execute(
                "UPDATE runs SET token_id = :t WHERE id = :id", {"t": token_id, "id": run_id}
            )

    def renew(self, run_id: int, owner: str, lease_s: float) -> Run | None:
        """Extend ``owner``'s lease on a running run: the run (whose ``stop_requested`` says
        whether someone asked it to stop), or None when it is no longer ``owner``'s to work."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                "UPDATE runs SET lease_until = :until WHERE id = :id AND owner = :o "
                f"AND state = 'running' RETURNING {_COLUMNS}",
                {"until": now + lease_s, "id": run_id, "o": owner},
            )
        return None if row is None else self._run(row, now)

    def end(self, run_id: int, state: RunState, reason: str, owner: str | None) -> bool:
        """End a running run (as ``owner``, or — with None — whoever held it); False if it had
        ended already or is another's."""
        if state == "running":
            raise ValueError("a run ends finished, stopped or failed")
        whose = "" if owner is None else "AND owner = :o "
        with self.db.tx() as tx:
            hit = tx.scalar(
                "UPDATE runs SET state = :s, reason = :r, ended_at = :now, owner = NULL, "
                f"lease_until = NULL WHERE id = :id AND state = 'running' {whose}RETURNING id",
                {"s": state, "r": reason, "now": self.clock(), "id": run_id, "o": owner},
            )
        return hit is not None

    def hand_over(self, run_id: int, owner: str) -> bool:
        """Let go of a running run without ending it (the control plane is shutting down): the
        next control plane to look takes it up."""
        with self.db.tx() as tx:
            hit = tx.scalar(
                "UPDATE runs SET owner = NULL, lease_until = NULL WHERE id = :id "
                "AND owner = :o AND state = 'running' RETURNING id",
                {"id": run_id, "o": owner},
            )
        return hit is not None

    def request_stop(self, run_id: int) -> None:
        with self.db.tx() as tx:
            tx.execute(
                "UPDATE runs SET stop_requested = 1 WHERE id = :id AND state = 'running'",
                {"id": run_id},
            )

    def adoptable(self) -> list[Run]:
        """Runs going that no control plane holds: handed over, or their holder's lease out."""
        return self._select(
            "WHERE state = 'running' AND (lease_until IS NULL OR lease_until <= :now)",
            {"now": self.clock()},
        )

    def adopt(self, run_id: int, owner: str, lease_s: float) -> Run | None:
        """Take up a run nobody holds; None if it is held or ended (another took it first)."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                "UPDATE runs SET owner = :o, lease_until = :until, adoptions = adoptions + 1 "
                "WHERE id = :id AND state = 'running' "
                f"AND (lease_until IS NULL OR lease_until <= :now) RETURNING {_COLUMNS}",
                {"o": owner, "until": now + lease_s, "id": run_id, "now": now},
            )
        return None if row is None else self._run(row, now)
