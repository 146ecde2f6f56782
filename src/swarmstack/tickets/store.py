"""The ticket store: plans, the lifecycle, claiming with leases and fencing epochs.

Every method is one transaction. Every state change appends an event in the same transaction.
Readiness is a per-ticket counter of unfinished dependencies (``unmet``), decremented in the
transaction that finishes a dependency; nothing ever rebuilds the graph.

A lease is (ticket, epoch). The epoch grows by one at every claim, so a write that carries an
older epoch — or arrives after the lease expired, even before the sweeper noticed — is refused
with :class:`StaleLease`. Completing or failing twice with the same lease and the same payload
returns the first answer again, so an agent may safely retry after a lost response.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from swarmstack.auth import TokenKind, format_token, new_secret, secret_hash
from swarmstack.config import Settings
from swarmstack.db import EVENTS_LOCK_KEY, NOTIFY_CHANNEL, POSTGRESQL, Database, Row, Tx, migrate
from swarmstack.errors import Conflict, NotFound, StaleLease, SwarmError
from swarmstack.runstore import RunStore
from swarmstack.tickets import graph
from swarmstack.tickets.models import (
    AgentStatus,
    Attempt,
    DiffStats,
    Event,
    FixRequest,
    Lease,
    Plan,
    PlanSpec,
    PlanStatus,
    PullRequest,
    SandboxUsage,
    Ticket,
    TicketResult,
    TicketState,
    UsageReport,
    WavesReport,
)
from swarmstack.tickets.schema import MIGRATIONS
from swarmstack.tokens import TokenStore

TICKET_COLUMNS = (
    "id, plan_id, key, title, body, phase, depends_on, files, acceptance, covers, estimate, "
    "priority, rank, state, unmet, attempts, max_attempts, epoch, lease_agent, "
    "lease_expires_at, retry_at, ready_at, updated_at, last_error, result, fix, wave"
)
_JSON_LIST_COLUMNS = ("depends_on", "files", "acceptance", "covers")
_LIVE_LEASE = "id = :id AND epoch = :epoch AND state = 'claimed' AND lease_expires_at > :now"
_FINISHED = "('done', 'dead', 'cancelled')"
# A ready ticket waits while its plan is paused, and, in a plan that runs wave by wave, while an
# earlier wave is unfinished.
_WAVE_OPEN = (
    "NOT EXISTS (SELECT 1 FROM plans p WHERE p.id = tickets.plan_id AND (p.paused = 1 "
    "OR p.strict_waves = 1 AND EXISTS (SELECT 1 FROM tickets e WHERE e.plan_id = tickets.plan_id "
    f"AND e.wave < tickets.wave AND e.state NOT IN {_FINISHED})))"
)

EventRow = tuple[str, int | None, int | None, dict[str, Any]]  # kind, plan, ticket, data

# What the spec column holds while a plan is being designed: it is NOT NULL, and plan_spec
# never reads it (it refuses a designing or failed plan first).
_NO_SPEC = ""
_DESIGN_LIFECYCLE = ("design.started", "design.done", "design.failed")

# On PostgreSQL a claim and a completion are each one statement in its own transaction: the
# data-modifying CTEs below do what the portable code path does in five or six statements, so
# the server spends a fraction of the CPU on them. Their order inside the statement matters:
# the event lock (see db.EVENTS_LOCK_KEY) is taken only after every row lock, from a subquery
# that must read the other CTEs to the end first, and before any event row takes its sequence
# number. The tests run every store operation on both databases, so both paths answer alike.
_PG_CLAIM = """
WITH c AS (
    UPDATE tickets SET state = 'claimed', epoch = epoch + 1, attempts = attempts + 1,
        lease_agent = :agent, lease_expires_at = :exp, retry_at = NULL, updated_at = :now
    WHERE id = (SELECT id FROM tickets WHERE state = 'ready' {scope} AND {wave_open}
                ORDER BY rank DESC, priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
      AND state = 'ready'
    RETURNING {columns}
), a AS (
    INSERT INTO attempts (ticket_id, epoch, agent, token_hash, claimed_at)
    SELECT id, epoch, :agent, :hash, :now FROM c
    RETURNING 1
), l AS (
    SELECT pg_advisory_xact_lock(:lock) AS locked, pg_notify(:channel, '0') AS notified
    FROM c, (SELECT count(*) FROM a) AS written
), e AS (
    INSERT INTO events (ts, kind, plan_id, ticket_id, data)
    SELECT :now, 'ticket.claimed', c.plan_id, c.id, json_build_object(
        'agent', CAST(:agent AS TEXT), 'epoch', c.epoch, 'attempt', c.attempts)::text
    FROM c, l
)
SELECT {columns} FROM c
"""
_PG_COMPLETE = """
WITH d AS (
    UPDATE tickets SET state = 'done', lease_expires_at = NULL, result = :result,
        last_error = NULL, updated_at = :now
    WHERE {live}
    RETURNING {columns}
), r AS (
    UPDATE tickets SET unmet = unmet - 1,
        state = CASE WHEN unmet = 1 AND state = 'pending' THEN 'ready' ELSE state END,
        ready_at = CASE WHEN unmet = 1 AND state = 'pending' THEN :now ELSE ready_at END,
        updated_at = :now
    WHERE id IN (SELECT ticket_id FROM deps WHERE depends_on_id IN (SELECT id FROM d))
    RETURNING id, plan_id, state
), a AS (
    UPDATE attempts SET outcome = 'done', ended_at = :now, request_hash = :request,
        response = (SELECT row_to_json(d)::text FROM d)
    WHERE ticket_id = :id AND epoch = :epoch AND EXISTS (SELECT 1 FROM d)
    RETURNING 1
), l AS (
    SELECT pg_advisory_xact_lock(:lock) AS locked,
        pg_notify(:channel, CAST(n.ready AS TEXT)) AS notified, n.ready
    FROM d,
        (SELECT count(*) FILTER (WHERE state = 'ready') AS ready FROM r) AS n,
        (SELECT count(*) FROM a) AS written
), e AS (
    INSERT INTO events (ts, kind, plan_id, ticket_id, data)
    SELECT :now, 'ticket.done', d.plan_id, d.id, json_build_object('epoch', d.epoch)::text
    FROM d, l
    UNION ALL
    SELECT :now, 'ticket.ready', r.plan_id, r.id, '{{}}' FROM r, l WHERE r.state = 'ready'
)
SELECT {columns}, l.ready AS became_ready FROM d, l
"""


def _ticket(row: Row) -> Ticket:
    for column in _JSON_LIST_COLUMNS:
        row[column] = json.loads(row[column])
    row["result"] = json.loads(row["result"]) if row["result"] else None
    row["fix"] = json.loads(row["fix"]) if row["fix"] else None
    return Ticket.model_validate(row)


def fix_reason(fix: FixRequest) -> str:
    """A fix request in one line: what a ticket's ``last_error`` says."""
    if fix.reason == "conflict":
        where = ", ".join(fix.conflicts) or "its changes"
        return f"merging into {fix.base} conflicted in {where}"
    if fix.reason == "error":
        return f"the merge into {fix.base} could not be made: {fix.details}"
    if fix.timed_out:
        return f"the checks timed out on the merge into {fix.base}"
    return f"the checks failed on the merge into {fix.base} (exit code {fix.exit_code})"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Change:
    """A committed transaction appended events; ``ready`` tickets became claimable."""

    ready: int = 0


@dataclass(frozen=True)
class Spend:
    plan_id: int
    ticket_usd: float
    plan_usd: float
    plan_budget_usd: float | None


@dataclass
class SweepResult:
    expired: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    promoted: list[int] = field(default_factory=list)
    next_due: float | None = None


class TicketStore:
    """Plans and tickets in SQLite or PostgreSQL, behind one code path."""

    def __init__(
        self,
        db: Database,
        *,
        lease_ttl_s: float = 60.0,
        max_attempts: int = 3,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.lease_ttl_s = lease_ttl_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.tokens = TokenStore(db, clock)
        self.runs = RunStore(db, clock)
        self._subscribers: list[Callable[[Change], None]] = []
        self._strict_plans: dict[int, bool] = {}
        self._claim_sql = {
            scoped: "UPDATE tickets SET state = 'claimed', epoch = epoch + 1, "
            "attempts = attempts + 1, lease_agent = :agent, lease_expires_at = :exp, "
            "retry_at = NULL, updated_at = :now "
            "WHERE id = (SELECT id FROM tickets WHERE state = 'ready'"
            + (" AND plan_id = :plan" if scoped else "")
            + f" AND {_WAVE_OPEN}"
            + f" ORDER BY rank DESC, priority DESC, id LIMIT 1 {db.dialect.skip_locked}) "
            f"AND state = 'ready' RETURNING {TICKET_COLUMNS}"
            for scoped in (False, True)
        }
        self._fused = db.dialect is POSTGRESQL
        self._pg_claim = {
            scoped: _PG_CLAIM.format(
                scope="AND plan_id = :plan" if scoped else "",
                wave_open=_WAVE_OPEN,
                columns=TICKET_COLUMNS,
            )
            for scoped in (False, True)
        }
        self._pg_complete = _PG_COMPLETE.format(live=_LIVE_LEASE, columns=TICKET_COLUMNS)
        self._pg_params = {"lock": EVENTS_LOCK_KEY, "channel": NOTIFY_CHANNEL}

    @classmethod
    def from_settings(cls, settings: Settings) -> TicketStore:
        db = Database(
            settings.resolved_database_url(),
            sqlite_synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
        )
        return cls(
            db,
            lease_ttl_s=settings.lease_ttl_s,
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
        )

    def migrate(self) -> int:
        return migrate(self.db, MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    def subscribe(self, callback: Callable[[Change], None]) -> None:
        """Call ``callback`` after every commit that appended events (in this process)."""
        self._subscribers.append(callback)

    def _publish(self, ready: int) -> None:
        for callback in self._subscribers:
            callback(Change(ready=ready))

    # -- events ------------------------------------------------------------------------------

    def _append(self, tx: Tx, events: Sequence[EventRow]) -> None:
        """Append events as the last step of a write transaction, and signal them."""
        if not events:
            return
        tx.before_events(sum(1 for e in events if e[0] == "ticket.ready"))
        now = self.clock()
        tx.executemany(
            "INSERT INTO events (ts, kind, plan_id, ticket_id, data) "
            "VALUES (:ts, :kind, :plan, :ticket, :data)",
            [
                {"ts": now, "kind": k, "plan": p, "ticket": t, "data": json.dumps(d)}
                for k, p, t, d in events
            ],
        )

    def events_after(
        self,
        after: int = 0,
        *,
        limit: int = 1000,
        plan_id: int | None = None,
        ticket_id: int | None = None,
    ) -> list[Event]:
        where = "seq > :after" + (" AND plan_id = :plan" if plan_id is not None else "")
        if ticket_id is not None:
            where += " AND ticket_id = :ticket"
        with self.db.read() as tx:
            rows = tx.all(
                f"SELECT seq, ts, kind, plan_id, ticket_id, data FROM events WHERE {where} "
                "ORDER BY seq LIMIT :limit",
                {"after": after, "plan": plan_id, "ticket": ticket_id, "limit": limit},
            )
        return [Event.model_validate({**r, "data": json.loads(r["data"])}) for r in rows]

    def last_seq(self) -> int:
        with self.db.read() as tx:
            return int(tx.scalar("SELECT COALESCE(MAX(seq), 0) FROM events"))

    # -- plans -------------------------------------------------------------------------------

    def create_plan(
        self, spec: PlanSpec, *, max_attempts: int | None = None, draft: bool = False
    ) -> Plan:
        """Store a valid plan; tickets with no dependencies start ready.

        With ``draft`` only the plan file is stored: a person reads and edits it first, and
        :meth:`approve` makes its tickets then (so ``max_attempts`` is given there, and is not
        used here)."""
        graph.require_valid(spec)
        if draft:
            with self.db.tx() as tx:
                plan_id = self._insert_plan(tx, spec.title, spec, status="draft")
                drafted = {"title": spec.title, "tickets": len(spec.tickets)}
                self._append(tx, [("plan.drafted", plan_id, None, drafted)])
            self._publish(0)
            return self.get_plan(plan_id)
        ranks = graph.upward_rank(spec)
        with self.db.tx() as tx:
            plan_id = self._insert_plan(tx, spec.title, spec, status="active")
            ready = self._insert_tickets(tx, plan_id, spec, ranks, max_attempts)
            created = {"title": spec.title, "tickets": len(spec.tickets), "ready": len(ready)}
            self._append(tx, [("plan.created", plan_id, None, created), *ready])
        self._publish(len(ready))
        return self.get_plan(plan_id)

    def _insert_plan(
        self,
        tx: Tx,
        title: str,
        spec: PlanSpec | None,
        *,
        status: PlanStatus,
        design: str | None = None,
    ) -> int:
        """A new plans row; a plan being designed has no plan file yet (see ``_NO_SPEC``)."""
        return int(
            tx.scalar(
                "INSERT INTO plans (title, description, created_at, spec, budget_usd, status, "
                "design, strict_waves, integration, checks) VALUES (:t, :d, :c, :s, :b, "
                ":status, :design, :strict, :into, :checks) RETURNING id",
                {
                    **self._spec_columns(spec or PlanSpec(title=title, tickets=[])),
                    "t": title,
                    "s": spec.model_dump_json() if spec else _NO_SPEC,
                    "c": self.clock(),
                    "status": status,
                    "design": design,
                },
            )
        )

    def _insert_tickets(
        self,
        tx: Tx,
        plan_id: int,
        spec: PlanSpec,
        ranks: dict[str, float],
        max_attempts: int | None,
    ) -> list[EventRow]:
        """Make a valid plan's tickets and dependency edges (the one way tickets come to be,
        for a plan stored whole and for an approved draft); returns the ``ticket.ready``
        events of the tickets with no dependencies, which start ready."""
        now = self.clock()
        wave_of = {key: n for n, wave in enumerate(graph.waves(spec)) for key in wave}
        tx.executemany(
            "INSERT INTO tickets (plan_id, key, title, body, phase, depends_on, files, "
            "acceptance, covers, estimate, priority, rank, state, unmet, max_attempts, "
            "ready_at, updated_at, wave) VALUES (:plan, :key, :title, :body, :phase, :deps, "
            ":files, :acc, :covers, :est, :prio, :rank, :state, :unmet, :max, :ready, :now, "
            ":wave)",
            [
                {
                    "plan": plan_id,
                    "key": t.id,
                    "title": t.title,
                    "body": t.body,
                    "phase": t.phase,
                    "deps": json.dumps(t.depends_on),
                    "files": json.dumps(t.files),
                    "acc": json.dumps(t.acceptance),
                    "covers": json.dumps(t.covers),
                    "est": t.estimate,
                    "prio": t.priority,
                    "rank": ranks[t.id],
                    "state": TicketState.PENDING.value if t.depends_on else "ready",
                    "unmet": len(set(t.depends_on)),
                    "max": max_attempts or self.max_attempts,
                    "ready": None if t.depends_on else now,
                    "now": now,
                    "wave": wave_of[t.id],
                }
                for t in spec.tickets
            ],
        )
        ids = {
            r["key"]: r["id"]
            for r in tx.all("SELECT id, key FROM tickets WHERE plan_id = :p", {"p": plan_id})
        }
        tx.executemany(
            "INSERT INTO deps (ticket_id, depends_on_id) VALUES (:t, :d)",
            [
                {"t": ids[t.id], "d": ids[dep]}
                for t in spec.tickets
                for dep in sorted(set(t.depends_on))
            ],
        )
        return [("ticket.ready", plan_id, ids[t.id], {}) for t in spec.tickets if not t.depends_on]

    def replace_draft(self, plan_id: int, spec: PlanSpec) -> Plan:
        """Put a new plan file in place of a draft's (a person edited it); refused unless the
        plan is a draft, and like :meth:`create_plan` unless the new file is valid."""
        with self.db.read() as tx:
            self._require_status(tx, plan_id, "draft")  # say so before judging the new file
        graph.require_valid(spec)
        with self.db.tx() as tx:
            hit = tx.scalar(
                "UPDATE plans SET title = :t, description = :d, spec = :s, budget_usd = :b, "
                "strict_waves = :strict, integration = :into, checks = :checks "
                "WHERE id = :id AND status = 'draft' RETURNING id",
                {**self._spec_columns(spec), "id": plan_id},
            )
            if hit is None:  # approved (or gone) since the check above
                raise self._status_error(tx, plan_id, "draft")
            edited = {"title": spec.title, "tickets": len(spec.tickets)}
            self._append(tx, [("plan.edited", plan_id, None, edited)])
        self._publish(0)
        return self.get_plan(plan_id)

    def approve(self, plan_id: int, *, max_attempts: int | None = None) -> Plan:
        """Make a draft active: its tickets are made as :meth:`create_plan` makes them, those
        with no dependencies ready. Only a draft can be approved, once: the status changes in
        the statement that checks it, so of two approvals at once (two replicas) the second
        waits for the first's row lock, then finds an active plan and is refused."""
        with self.db.tx() as tx:
            spec_json = tx.scalar(
                "UPDATE plans SET status = 'active' WHERE id = :id AND status = 'draft' "
                "RETURNING spec",
                {"id": plan_id},
            )
            if spec_json is None:
                raise self._status_error(tx, plan_id, "draft")
            spec = PlanSpec.model_validate_json(spec_json)
            # Checked again: a rule added since the draft was stored must not make tickets of
            # a plan it refuses (the report says what to edit).
            graph.require_valid(spec)
            ready = self._insert_tickets(tx, plan_id, spec, graph.upward_rank(spec), max_attempts)
            approved = {"title": spec.title, "tickets": len(spec.tickets), "ready": len(ready)}
            self._append(tx, [("plan.approved", plan_id, None, approved), *ready])
        self._publish(len(ready))
        return self.get_plan(plan_id)

    @staticmethod
    def _spec_columns(spec: PlanSpec) -> dict[str, Any]:
        """The plans columns a plan file sets (its parameters named as every UPDATE names them)."""
        return {
            "t": spec.title,
            "d": spec.description,
            "s": spec.model_dump_json(),
            "b": spec.budget_usd,
            "strict": int(spec.strict_waves),
            "into": spec.integration_branch,
            "checks": spec.checks,
        }

    @classmethod
    def _require_status(cls, tx: Tx, plan_id: int, wanted: PlanStatus) -> None:
        status = tx.scalar("SELECT status FROM plans WHERE id = :id", {"id": plan_id})
        if status != wanted:
            raise cls._status_error(tx, plan_id, wanted)

    @staticmethod
    def _status_error(tx: Tx, plan_id: int, wanted: PlanStatus) -> SwarmError:
        """Why a statement guarded by ``status = wanted`` found no plan: NotFound without the
        plan, else Conflict saying what the plan is."""
        status = tx.scalar("SELECT status FROM plans WHERE id = :id", {"id": plan_id})
        if status is None:
            return NotFound(f"no plan {plan_id}")
        if status == wanted:  # it became so after the guarded statement looked
            return Conflict(f"plan {plan_id} changed while this request ran; try again")
        being = {"draft": "a draft", "designing": "being designed"}.get(wanted, wanted)
        return Conflict(f"plan {plan_id} is {status}, not {being}")

    # -- plans a design agent writes ---------------------------------------------------------

    def begin_design(self, title: str, request: dict[str, Any]) -> Plan:
        """A plan a design agent is about to write: ``designing``, with no plan file yet and
        the request it works from kept with it; :meth:`finish_design` or :meth:`fail_design`
        ends it."""
        with self.db.tx() as tx:
            plan_id = self._insert_plan(
                tx, title, None, status="designing", design=json.dumps(request)
            )
            self._append(tx, [("design.started", plan_id, None, {"title": title})])
        self._publish(0)
        return self.get_plan(plan_id)

    def design_event(self, plan_id: int, kind: str, data: dict[str, Any]) -> None:
        """Append what the design agent is doing (a ``design.*`` event) to a plan it is
        designing. The kinds that start and end a design are the store's own."""
        if not kind.startswith("design.") or kind in _DESIGN_LIFECYCLE:
            raise ValueError(
                f"design events are design.<kind>, other than {', '.join(_DESIGN_LIFECYCLE)}: "
                f"got {kind!r}"
            )
        with self.db.tx() as tx:
            # Locked, so that no event lands after the design.done of a finish committing now.
            status = tx.scalar(
                "SELECT status FROM plans WHERE id = :id " + tx.dialect.for_update,
                {"id": plan_id},
            )
            if status != "designing":
                raise self._status_error(tx, plan_id, "designing")
            self._append(tx, [(kind, plan_id, None, data)])
        self._publish(0)

    def finish_design(self, plan_id: int, spec: PlanSpec, data: dict[str, Any]) -> Plan:
        """The design agent wrote a valid plan file: the plan becomes a draft for a person to
        read, edit and approve. An invalid file is refused (PlanInvalid, with the report) and
        the plan stays ``designing``, so the designer may fix it or give up."""
        graph.require_valid(spec)
        with self.db.tx() as tx:
            hit = tx.scalar(
                "UPDATE plans SET status = 'draft', title = :t, description = :d, spec = :s, "
                "budget_usd = :b, strict_waves = :strict, integration = :into, checks = :checks "
                "WHERE id = :id AND status = 'designing' RETURNING id",
                {**self._spec_columns(spec), "id": plan_id},
            )
            if hit is None:
                raise self._status_error(tx, plan_id, "designing")
            self._append(tx, [("design.done", plan_id, None, data)])
        self._publish(0)
        return self.get_plan(plan_id)

    def fail_design(self, plan_id: int, reason: str, data: dict[str, Any] | None = None) -> Plan:
        """The design gave up: the plan is ``failed`` with ``reason`` as its error."""
        with self.db.tx() as tx:
            hit = tx.scalar(
                "UPDATE plans SET status = 'failed', error = :reason "
                "WHERE id = :id AND status = 'designing' RETURNING id",
                {"reason": reason, "id": plan_id},
            )
            if hit is None:
                raise self._status_error(tx, plan_id, "designing")
            self._append(tx, [("design.failed", plan_id, None, {**(data or {}), "reason": reason})])
        self._publish(0)
        return self.get_plan(plan_id)

    def fail_interrupted_designs(
        self, reason: str = "the control plane restarted while the plan was being designed"
    ) -> int:
        """Fail every plan still ``designing``; returns how many. A design runs inside the
        server, so at start-up none can still be running, and without this a plan would
        show ``designing`` forever."""
        with self.db.tx() as tx:
            failed = tx.all(
                "UPDATE plans SET status = 'failed', error = :reason "
                "WHERE status = 'designing' RETURNING id",
                {"reason": reason},
            )
            self._append(
                tx,
                [
                    ("design.failed", int(r["id"]), None, {"reason": reason})
                    for r in sorted(failed, key=lambda r: int(r["id"]))
                ],
            )
        if failed:
            self._publish(0)
        return len(failed)

    # -- reading plans -----------------------------------------------------------------------

    def get_plan(self, plan_id: int) -> Plan:
        with self.db.read() as tx:
            row = tx.one(
                "SELECT id, title, description, created_at, budget_usd, status, error, "
                "strict_waves, integration AS integration_branch, checks, github, paused, "
                "(SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE plan_id = :id) AS spent_usd "
                "FROM plans WHERE id = :id",
                {"id": plan_id},
            )
            if row is None:
                raise NotFound(f"no plan {plan_id}")
            counts = self._counts(tx, plan_id)
        row["strict_waves"] = bool(row["strict_waves"])
        row["paused"] = bool(row["paused"])
        return Plan(**row, ticket_count=sum(counts.values()), counts=counts)

    def list_plans(self) -> list[Plan]:
        with self.db.read() as tx:
            ids = [r["id"] for r in tx.all("SELECT id FROM plans ORDER BY id")]
        return [self.get_plan(i) for i in ids]

    def plan_spec(self, plan_id: int) -> PlanSpec:
        """The plan file of a draft or an active plan (what a person exports and edits); a
        plan still being designed, or whose design failed, has none."""
        with self.db.read() as tx:
            row = tx.one("SELECT spec, status, error FROM plans WHERE id = :id", {"id": plan_id})
        if row is None:
            raise NotFound(f"no plan {plan_id}")
        if row["status"] == "designing":
            raise Conflict(f"plan {plan_id} is still being designed")
        if row["status"] == "failed":
            raise Conflict(f"plan {plan_id}'s design failed: {row['error']}")
        return PlanSpec.model_validate_json(row["spec"])

    def waves(self, plan_id: int) -> WavesReport:
        # The graph alone: the plan was valid when stored, and a check added since must not
        # hide the shape of a plan that is already running.
        spec = self.plan_spec(plan_id)
        report = graph.waves_report_of(
            [t.id for t in spec.tickets],
            {t.id: t.depends_on for t in spec.tickets},
            {t.id: t.estimate for t in spec.tickets},
        )
        return report.model_copy(update={"plan_id": plan_id})

    @staticmethod
    def _counts(tx: Tx, plan_id: int | None) -> dict[str, int]:
        where = "WHERE plan_id = :p" if plan_id is not None else ""
        rows = tx.all(
            f"SELECT state, COUNT(*) AS n FROM tickets {where} GROUP BY state", {"p": plan_id}
        )
        return {r["state"]: int(r["n"]) for r in rows}

    def counts(self, plan_id: int | None = None) -> dict[str, int]:
        """Tickets by state, over one plan or all of them."""
        with self.db.read() as tx:
            return self._counts(tx, plan_id)

    # -- reading tickets ---------------------------------------------------------------------

    def get_ticket(self, ticket_id: int) -> Ticket:
        with self.db.read() as tx:
            return self._ticket_in(tx, ticket_id)

    @staticmethod
    def _ticket_in(tx: Tx, ticket_id: int) -> Ticket:
        row = tx.one(f"SELECT {TICKET_COLUMNS} FROM tickets WHERE id = :id", {"id": ticket_id})
        if row is None:
            raise NotFound(f"no ticket {ticket_id}")
        return _ticket(row)

    def find_ticket(self, plan_id: int, key: str) -> Ticket:
        with self.db.read() as tx:
            row = tx.one(
                f"SELECT {TICKET_COLUMNS} FROM tickets WHERE plan_id = :p AND key = :k",
                {"p": plan_id, "k": key},
            )
        if row is None:
            raise NotFound(f"no ticket {key!r} in plan {plan_id}")
        return _ticket(row)

    def list_tickets(
        self,
        *,
        plan_id: int | None = None,
        states: Iterable[TicketState] = (),
        phase: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[Ticket]:
        """Tickets in id order, filtered; page with ``after_id`` (the last id seen)."""
        clauses = ["id > :after"]
        params: dict[str, Any] = {"after": after_id, "limit": limit}
        if plan_id is not None:
            clauses.append("plan_id = :plan")
            params["plan"] = plan_id
        wanted = sorted({TicketState(s).value for s in states})
        if wanted:
            names = [f"s{i}" for i in range(len(wanted))]
            clauses.append(f"state IN ({', '.join(':' + n for n in names)})")
            params.update(zip(names, wanted, strict=True))
        if phase is not None:
            clauses.append("phase = :phase")
            params["phase"] = phase
        with self.db.read() as tx:
            rows = tx.all(
                f"SELECT {TICKET_COLUMNS} FROM tickets WHERE {' AND '.join(clauses)} "
                "ORDER BY id LIMIT :limit",
                params,
            )
        return [_ticket(r) for r in rows]

    # -- the lease protocol ------------------------------------------------------------------

    def claim(
        self, agent: str, *, plan_id: int | None = None, ttl_s: float | None = None
    ) -> Lease | None:
        """Atomically pick the best ready ticket and lease it to ``agent``; None if none."""
        now = self.clock()
        ttl = self.lease_ttl_s if ttl_s is None else ttl_s
        secret = new_secret()
        params = {"agent": agent, "exp": now + ttl, "now": now, "plan": plan_id}
        if self._fused:
            row = self.db.execute_once(
                self._pg_claim[plan_id is not None],
                {**params, "hash": secret_hash(secret), **self._pg_params},
            )
            if row is None:
                return None
            ticket = _ticket(row)
        else:
            with self.db.tx() as tx:
                row = tx.one(self._claim_sql[plan_id is not None], params)
                if row is None:
                    return None
                ticket = _ticket(row)
                tx.execute(
                    "INSERT INTO attempts (ticket_id, epoch, agent, token_hash, claimed_at) "
                    "VALUES (:t, :e, :a, :h, :now)",
                    {
                        "t": ticket.id,
                        "e": ticket.epoch,
                        "a": agent,
                        "h": secret_hash(secret),
                        "now": now,
                    },
                )
                data = {"agent": agent, "epoch": ticket.epoch, "attempt": ticket.attempts}
                self._append(tx, [("ticket.claimed", ticket.plan_id, ticket.id, data)])
        self._publish(0)
        token = format_token(TokenKind.LEASE, f"{ticket.id}-{ticket.epoch}", secret)
        return Lease(
            ticket=ticket, epoch=ticket.epoch, expires_at=now + ttl, token=token, ttl_s=ttl
        )

    def heartbeat(
        self,
        ticket_id: int,
        epoch: int,
        *,
        ttl_s: float | None = None,
        sandbox: SandboxUsage | None = None,
    ) -> float:
        """Extend a live lease, keeping what the runner says of its sandbox; returns the new
        expiry."""
        now = self.clock()
        expires = now + (self.lease_ttl_s if ttl_s is None else ttl_s)
        usage = None
        if sandbox is not None:
            usage = json.dumps({"epoch": epoch, **sandbox.model_dump(exclude_none=True)})
        # One statement: its own transaction, no BEGIN/COMMIT round trips.
        hit = self.db.execute_once(
            "UPDATE tickets SET lease_expires_at = :exp, updated_at = :now, "
            "sandbox = COALESCE(:usage, sandbox) "
            f"WHERE {_LIVE_LEASE} RETURNING id",
            {"exp": expires, "now": now, "id": ticket_id, "epoch": epoch, "usage": usage},
        )
        if hit is None:
            with self.db.read() as tx:
                raise self._why_stale(tx, ticket_id, epoch, now)
        return expires

    def complete(
        self, ticket_id: int, epoch: int, result: TicketResult, *, merge: bool = False
    ) -> Ticket:
        """Finish a ticket under a live lease; dependents whose last dependency this was
        become ready in the same transaction. With ``merge`` the agent's work is a branch to
        merge: the ticket is ``merging`` until :meth:`merged` (or :meth:`send_back`)."""
        now = self.clock()
        request = {"op": "complete", **result.model_dump(mode="json")}
        if merge:
            return self._complete_to_merge(ticket_id, epoch, result, request, now)
        if self._fused:
            row = self.db.execute_once(
                self._pg_complete,
                {
                    "result": result.model_dump_json(),
                    "now": now,
                    "id": ticket_id,
                    "epoch": epoch,
                    "request": _digest(request),
                    **self._pg_params,
                },
            )
            if row is not None:
                became_ready = int(row.pop("became_ready"))
                ticket = _ticket(row)
                self._publish(became_ready)
                self._open_next_wave(ticket.plan_id, ticket.wave)
                return ticket
            with self.db.read() as tx:
                return self._replay(tx, ticket_id, epoch, request, now)
        with self.db.tx() as tx:
            done = self._end_lease(tx, ticket_id, epoch, "done", result, request, now)
            if done is None:
                return self._replay(tx, ticket_id, epoch, request, now)
            ready = self._release_dependents(tx, ticket_id, now)
            self._append(tx, [("ticket.done", done.plan_id, done.id, {"epoch": epoch}), *ready])
        self._publish(len(ready))
        self._open_next_wave(done.plan_id, done.wave)
        return done

    @staticmethod
    def _release_dependents(tx: Tx, ticket_id: int, now: float) -> list[EventRow]:
        """One dependency fewer for each dependent of a ticket that is now done; returns the
        ``ticket.ready`` events of those whose last dependency it was."""
        # SET expressions see the old row: unmet = 1 means this was the last dependency.
        rows = tx.all(
            "UPDATE tickets SET unmet = unmet - 1, state = CASE "
            "WHEN unmet = 1 AND state = 'pending' THEN 'ready' ELSE state END, "
            "ready_at = CASE WHEN unmet = 1 AND state = 'pending' "
            "THEN :now ELSE ready_at END, updated_at = :now "
            "WHERE id IN (SELECT ticket_id FROM deps WHERE depends_on_id = :id) "
            "RETURNING id, plan_id, state",
            {"now": now, "id": ticket_id},
        )
        return [("ticket.ready", r["plan_id"], r["id"], {}) for r in rows if r["state"] == "ready"]

    def _end_lease(
        self,
        tx: Tx,
        ticket_id: int,
        epoch: int,
        state: Literal["done", "merging"],
        result: TicketResult,
        request: Any,
        now: float,
    ) -> Ticket | None:
        """A completion under a live lease: the ticket ``done`` or ``merging`` with its result,
        and its attempt's record; None if the lease is not live."""
        row = tx.one(
            "UPDATE tickets SET state = :state, lease_expires_at = NULL, "
            "result = :result, last_error = NULL, updated_at = :now "
            f"WHERE {_LIVE_LEASE} RETURNING {TICKET_COLUMNS}",
            {
                "state": state,
                "result": result.model_dump_json(),
                "now": now,
                "id": ticket_id,
                "epoch": epoch,
            },
        )
        if row is None:
            return None
        response = json.dumps(row)  # before _ticket reads the row
        ticket = _ticket(row)
        self._end_attempt(tx, ticket.id, epoch, state, request, response, now)
        return ticket

    def _complete_to_merge(
        self, ticket_id: int, epoch: int, result: TicketResult, request: Any, now: float
    ) -> Ticket:
        with self.db.tx() as tx:
            ticket = self._end_lease(tx, ticket_id, epoch, "merging", result, request, now)
            if ticket is None:
                return self._replay(tx, ticket_id, epoch, request, now)
            data = {"epoch": epoch, "branch": result.branch}
            self._append(tx, [("ticket.merging", ticket.plan_id, ticket.id, data)])
        self._publish(0)
        return ticket

    # -- the merge queue ---------------------------------------------------------------------

    def merging(self, plan_id: int | None = None) -> list[Ticket]:
        """The merge queue: tickets whose branches wait to be merged, first come first served
        (each one's dependencies are merged already: it could not be claimed before)."""
        where = "AND plan_id = :plan " if plan_id is not None else ""
        with self.db.read() as tx:
            rows = tx.all(
                f"SELECT {TICKET_COLUMNS} FROM tickets WHERE state = 'merging' {where}"
                "ORDER BY updated_at, id",
                {"plan": plan_id},
            )
        return [_ticket(r) for r in rows]

    def merged(self, ticket_id: int, *, sha: str, how: str) -> Ticket:
        """The ticket's work is in the integration branch (at ``sha``): it is done, and its
        dependents whose last dependency it was become ready."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                "UPDATE tickets SET state = 'done', fix = NULL, updated_at = :now "
                f"WHERE id = :id AND state = 'merging' RETURNING {TICKET_COLUMNS}",
                {"now": now, "id": ticket_id},
            )
            if row is None:
                raise self._not_merging(tx, ticket_id)
            ticket = _ticket(row)
            ready = self._release_dependents(tx, ticket_id, now)
            tx.execute(
                "UPDATE pull_requests SET state = 'merged', merge_sha = :sha, updated_at = :now "
                "WHERE ticket_id = :id",
                {"sha": sha, "now": now, "id": ticket_id},
            )
            events: list[EventRow] = [
                ("ticket.merged", ticket.plan_id, ticket.id, {"sha": sha, "how": how}),
                ("ticket.done", ticket.plan_id, ticket.id, {"epoch": ticket.epoch}),
                *ready,
            ]
            self._append(tx, events)
        self._publish(len(ready))
        self._open_next_wave(ticket.plan_id, ticket.wave)
        return ticket

    def send_back(self, ticket_id: int, fix: FixRequest) -> Ticket:
        """Its merge conflicted or failed the checks: the ticket is ready again for a fix
        attempt on its own branch, told what went wrong, or dead — needing a person — when
        its attempts are spent."""
        now = self.clock()
        reason = fix_reason(fix)
        with self.db.tx() as tx:
            current = tx.one(
                "SELECT attempts, max_attempts FROM tickets WHERE id = :id AND state = 'merging' "
                + tx.dialect.for_update,
                {"id": ticket_id},
            )
            if current is None:
                raise self._not_merging(tx, ticket_id)
            dead = int(current["attempts"]) >= int(current["max_attempts"])
            row = tx.one(
                "UPDATE tickets SET state = :state, fix = :fix, last_error = :reason, "
                "ready_at = CASE WHEN :dead = 1 THEN ready_at ELSE :now END, updated_at = :now "
                f"WHERE id = :id AND state = 'merging' RETURNING {TICKET_COLUMNS}",
                {
                    "state": "dead" if dead else "ready",
                    "fix": fix.model_dump_json(),
                    "reason": reason,
                    "dead": int(dead),
                    "now": now,
                    "id": ticket_id,
                },
            )
            assert row is not None  # locked above
            ticket = _ticket(row)
            what = {
                **fix.model_dump(include={"base", "base_sha", "head_sha", "conflicts"}),
                "details": fix.details[-4_000:],
                "exit_code": fix.exit_code,
                "timed_out": fix.timed_out,
            }
            events: list[EventRow] = [(f"merge.{fix.reason}", ticket.plan_id, ticket.id, what)]
            if dead:
                attention = {"reason": reason, "attention": True, "attempts": ticket.attempts}
                events.append(("ticket.dead", ticket.plan_id, ticket.id, attention))
            else:
                events.append(("ticket.ready", ticket.plan_id, ticket.id, {"fix": fix.reason}))
            self._append(tx, events)
        self._publish(0 if dead else 1)
        if dead:
            self._open_next_wave(ticket.plan_id, ticket.wave)
        return ticket

    def _not_merging(self, tx: Tx, ticket_id: int) -> SwarmError:
        ticket = self._ticket_in(tx, ticket_id)
        return Conflict(f"ticket {ticket_id} is {ticket.state}, not merging")

    # -- strict waves ------------------------------------------------------------------------

    def _strict(self, plan_id: int) -> bool:
        """Whether a plan runs wave by wave (fixed when it is made, so remembered)."""
        strict = self._strict_plans.get(plan_id)
        if strict is None:
            with self.db.read() as tx:
                value = tx.scalar("SELECT strict_waves FROM plans WHERE id = :id", {"id": plan_id})
            strict = self._strict_plans[plan_id] = bool(value)
        return strict

    # -- pausing a plan ----------------------------------------------------------------------

    def pause_plan(self, plan_id: int, reason: str = "") -> Plan:
        """Stop handing out the plan's tickets. Agents at work finish theirs and the merge queue
        goes on merging; nothing new starts until :meth:`resume_plan`. Pausing a paused plan
        changes nothing."""
        with self.db.tx() as tx:
            self._plan_exists(tx, plan_id)
            hit = tx.scalar(
                "UPDATE plans SET paused = 1 WHERE id = :id AND paused = 0 RETURNING id",
                {"id": plan_id},
            )
            if hit is not None:
                self._append(tx, [("plan.paused", plan_id, None, {"reason": reason})])
        self._publish(0)
        return self.get_plan(plan_id)

    def resume_plan(self, plan_id: int) -> Plan:
        """Hand out the plan's ready tickets again, waking as many claimers."""
        with self.db.tx() as tx:
            self._plan_exists(tx, plan_id)
            hit = tx.scalar(
                "UPDATE plans SET paused = 0 WHERE id = :id AND paused = 1 RETURNING id",
                {"id": plan_id},
            )
            ready = 0
            if hit is not None:
                ready = int(
                    tx.scalar(
                        "SELECT COUNT(*) FROM tickets WHERE plan_id = :p AND state = 'ready'",
                        {"p": plan_id},
                    )
                    or 0
                )
                self._append(tx, [("plan.resumed", plan_id, None, {"ready": ready})])
        if ready:
            self._wake(ready)
        else:
            self._publish(0)
        return self.get_plan(plan_id)

    @staticmethod
    def _plan_exists(tx: Tx, plan_id: int) -> None:
        if tx.scalar("SELECT id FROM plans WHERE id = :id", {"id": plan_id}) is None:
            raise NotFound(f"no plan {plan_id}")

    def _wake(self, ready: int) -> None:
        """Tell every server's claimers that ``ready`` tickets became claimable."""
        if self.db.dialect is POSTGRESQL:
            # Servers on PostgreSQL hear of ready tickets only through NOTIFY: without it,
            # their claimers would sleep until their long-poll's next check.
            self.db.execute_once(
                "SELECT pg_notify(:channel, :ready)",
                {"channel": NOTIFY_CHANNEL, "ready": str(ready)},
            )
        self._publish(ready)

    def _open_next_wave(self, plan_id: int, wave: int) -> None:
        """In a plan run wave by wave, the last ticket of a wave to finish lets the ready
        tickets of the next be claimed: wake as many claimers."""
        if not self._strict(plan_id):
            return
        with self.db.read() as tx:
            row = tx.one(
                "SELECT (SELECT COUNT(*) FROM tickets WHERE plan_id = :p AND wave = :w "
                f"AND state NOT IN {_FINISHED}) AS open, (SELECT COUNT(*) FROM tickets "
                "WHERE plan_id = :p AND state = 'ready') AS ready",
                {"p": plan_id, "w": wave},
            )
        if row is None or int(row["open"]) or not int(row["ready"]):
            return
        self._wake(int(row["ready"]))

    def fail(self, ticket_id: int, epoch: int, reason: str, *, retryable: bool = True) -> Ticket:
        """Give a ticket up under a live lease: back to ready after a backoff, or dead."""
        now = self.clock()
        request = {"op": "fail", "reason": reason, "retryable": retryable}
        with self.db.tx() as tx:
            current = tx.one(
                f"SELECT attempts, max_attempts FROM tickets WHERE {_LIVE_LEASE} "
                + tx.dialect.for_update,
                {"id": ticket_id, "epoch": epoch, "now": now},
            )
            if current is None:
                return self._replay(tx, ticket_id, epoch, request, now)
            attempts = int(current["attempts"])
            dead = not retryable or attempts >= int(current["max_attempts"])
            delay = min(self.backoff_base_s * 2 ** (attempts - 1), self.backoff_max_s)
            row = tx.one(
                "UPDATE tickets SET state = :state, retry_at = :retry, lease_agent = NULL, "
                "lease_expires_at = NULL, "
                f"last_error = :reason, updated_at = :now WHERE {_LIVE_LEASE} "
                f"RETURNING {TICKET_COLUMNS}",
                {
                    "state": "dead" if dead else "failed",
                    "retry": None if dead else now + delay,
                    "reason": reason,
                    "now": now,
                    "id": ticket_id,
                    "epoch": epoch,
                },
            )
            assert row is not None  # the row is locked by this transaction
            response = json.dumps(row)
            ticket = _ticket(row)
            self._end_attempt(tx, ticket.id, epoch, ticket.state.value, request, response, now)
            data = {"epoch": epoch, "reason": reason, "retry_at": ticket.retry_at}
            self._append(tx, [(f"ticket.{ticket.state.value}", ticket.plan_id, ticket.id, data)])
        self._publish(0)
        if ticket.state is TicketState.DEAD:
            self._open_next_wave(ticket.plan_id, ticket.wave)
        return ticket

    def agents(self, plan_id: int | None = None) -> list[AgentStatus]:
        """Every live lease (an agent at work), oldest claim first, with its sandbox as its
        runner last reported it."""
        now = self.clock()
        scope = "AND plan_id = :plan " if plan_id is not None else ""
        with self.db.read() as tx:
            rows = tx.all(
                "SELECT id, key, plan_id, lease_agent, attempts, epoch, fix, updated_at, "
                "lease_expires_at, sandbox, (SELECT claimed_at FROM attempts a WHERE "
                "a.ticket_id = tickets.id AND a.epoch = tickets.epoch) AS claimed_at FROM tickets "
                f"WHERE state = 'claimed' {scope}ORDER BY id",
                {"plan": plan_id},
            )
        agents = []
        for row in rows:
            beat, expires = float(row["updated_at"]), float(row["lease_expires_at"])
            usage = json.loads(row["sandbox"]) if row["sandbox"] else {}
            sandbox = None
            if usage.pop("epoch", None) == row["epoch"]:  # not a report of an earlier attempt
                sandbox = SandboxUsage.model_validate(usage)
            agents.append(
                AgentStatus(
                    ticket_id=row["id"],
                    ticket_key=row["key"],
                    plan_id=row["plan_id"],
                    agent=row["lease_agent"] or "",
                    attempt=row["attempts"],
                    fixing=row["fix"] is not None,
                    claimed_at=row["claimed_at"],
                    last_heartbeat_at=beat,
                    lease_expires_at=expires,
                    # two-thirds of the lease without a beat: runners beat every third
                    stale=now - beat > (expires - beat) * 2 / 3,
                    sandbox=sandbox,
                )
            )
        return agents

    def attempts(self, ticket_id: int) -> list[Attempt]:
        """A ticket's attempts, first first: who, when, how each ended and why it failed."""
        with self.db.read() as tx:
            self._ticket_in(tx, ticket_id)
            rows = tx.all(
                "SELECT epoch, agent, claimed_at, ended_at, outcome, response FROM attempts "
                "WHERE ticket_id = :t ORDER BY epoch",
                {"t": ticket_id},
            )
        attempts = []
        for row in rows:
            error = None
            if row["outcome"] in ("failed", "dead") and row["response"]:
                error = json.loads(row["response"]).get("last_error")
            del row["response"]
            attempts.append(Attempt(**row, error=error))
        return attempts

    def stop(self, ticket_id: int, reason: str) -> Ticket:
        """Take a ticket away from the agent at work on it (an admin's decision): its lease
        ends at once, so its runner's next heartbeat is refused and it stops; the ticket is
        ready for another agent, the attempt not counted against it."""
        with self.db.read() as tx:
            ticket = self._ticket_in(tx, ticket_id)
        if ticket.state is not TicketState.CLAIMED:
            raise Conflict(f"ticket {ticket_id} is {ticket.state}: no agent is at work on it")
        return self.release(ticket_id, ticket.epoch, reason)

    def release(self, ticket_id: int, epoch: int, reason: str) -> Ticket:
        """Hand a live lease back unfinished (the runner was told to stop): the ticket is
        ready again at once and the attempt is not counted against it."""
        now = self.clock()
        request = {"op": "release", "reason": reason}
        with self.db.tx() as tx:
            row = tx.one(
                "UPDATE tickets SET state = 'ready', attempts = attempts - 1, retry_at = NULL, "
                "lease_agent = NULL, lease_expires_at = NULL, ready_at = :now, "
                f"updated_at = :now WHERE {_LIVE_LEASE} RETURNING {TICKET_COLUMNS}",
                {"now": now, "id": ticket_id, "epoch": epoch},
            )
            if row is None:
                return self._replay(tx, ticket_id, epoch, request, now)
            ticket = _ticket(row)
            self._end_attempt(tx, ticket.id, epoch, "released", request, json.dumps(row), now)
            data = {"epoch": epoch, "reason": reason}
            self._append(
                tx,
                [
                    ("ticket.released", ticket.plan_id, ticket.id, data),
                    ("ticket.ready", ticket.plan_id, ticket.id, {}),
                ],
            )
        self._publish(1)
        return ticket

    def agent_log(
        self, ticket_id: int, epoch: int, entries: Sequence[tuple[str, dict[str, Any]]]
    ) -> int:
        """Append what an agent said and did (``agent.<kind>`` events) under a live lease;
        returns how many were appended."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                f"SELECT plan_id FROM tickets WHERE {_LIVE_LEASE}",
                {"id": ticket_id, "epoch": epoch, "now": now},
            )
            if row is None:
                raise self._why_stale(tx, ticket_id, epoch, now)
            plan_id = int(row["plan_id"])
            self._append(
                tx,
                [
                    (f"agent.{kind}", plan_id, ticket_id, {**data, "epoch": epoch})
                    for kind, data in entries
                ],
            )
        self._publish(0)
        return len(entries)

    def dependencies(self, ticket_id: int) -> list[Ticket]:
        """The tickets ``ticket_id`` depends on, in plan order."""
        ticket = self.get_ticket(ticket_id)
        if not ticket.depends_on:
            return []
        with self.db.read() as tx:
            rows = tx.all(
                f"SELECT {TICKET_COLUMNS} FROM tickets WHERE plan_id = :plan ORDER BY id",
                {"plan": ticket.plan_id},
            )
        wanted = set(ticket.depends_on)
        return [t for t in map(_ticket, rows) if t.key in wanted]

    def _end_attempt(
        self,
        tx: Tx,
        ticket_id: int,
        epoch: int,
        outcome: str,
        request: Any,
        response: str,
        now: float,
    ) -> None:
        """Record how the attempt ended, with the request's digest and the answer's ticket
        row (as JSON), so that the same request again gets the same answer."""
        tx.execute(
            "UPDATE attempts SET outcome = :o, ended_at = :now, request_hash = :h, "
            "response = :r WHERE ticket_id = :t AND epoch = :e",
            {
                "o": outcome,
                "now": now,
                "h": _digest(request),
                "r": response,
                "t": ticket_id,
                "e": epoch,
            },
        )

    def _replay(self, tx: Tx, ticket_id: int, epoch: int, request: Any, now: float) -> Ticket:
        """The lease is not live: if this very request already succeeded, answer it again."""
        attempt = tx.one(
            "SELECT outcome, request_hash, response FROM attempts "
            "WHERE ticket_id = :t AND epoch = :e",
            {"t": ticket_id, "e": epoch},
        )
        if attempt is not None and attempt["request_hash"] is not None:
            if attempt["request_hash"] == _digest(request):
                return _ticket(json.loads(attempt["response"]))
            raise Conflict(
                f"this lease already ended the ticket ({attempt['outcome']}) "
                "with a different request"
            )
        raise self._why_stale(tx, ticket_id, epoch, now)

    @staticmethod
    def _why_stale(tx: Tx, ticket_id: int, epoch: int, now: float) -> Exception:
        row = tx.one(
            "SELECT epoch, state, lease_expires_at FROM tickets WHERE id = :id", {"id": ticket_id}
        )
        if row is None:
            return NotFound(f"no ticket {ticket_id}")
        current, state = int(row["epoch"]), row["state"]
        if epoch != current:
            return StaleLease(
                f"lease epoch {epoch} is stale: ticket {ticket_id} is at epoch {current} ({state})"
            )
        if state != TicketState.CLAIMED:
            return StaleLease(f"lease epoch {epoch} is over: ticket {ticket_id} is {state}")
        return StaleLease(
            f"lease epoch {epoch} expired {now - float(row['lease_expires_at']):.3f}s ago; the "
            "ticket will be handed to another agent"
        )

    def live_ticket(self, ticket_id: int, epoch: int) -> Ticket:
        """The ticket a lease is for, if the lease is live; StaleLease if it is not."""
        now = self.clock()
        with self.db.read() as tx:
            row = tx.one(
                f"SELECT {TICKET_COLUMNS} FROM tickets WHERE {_LIVE_LEASE}",
                {"id": ticket_id, "epoch": epoch, "now": now},
            )
            if row is None:
                raise self._why_stale(tx, ticket_id, epoch, now)
        return _ticket(row)

    # -- model calls -------------------------------------------------------------------------

    def spend(self, ticket_id: int, epoch: int) -> Spend:
        """What a live lease's ticket and its plan have spent on model calls, and the plan's
        budget; StaleLease unless the lease is live (the LLM gateway's check before a call)."""
        now = self.clock()
        with self.db.read() as tx:
            row = tx.one(
                "SELECT t.plan_id, p.budget_usd, "
                "(SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE ticket_id = t.id) AS ticket, "
                "(SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE plan_id = t.plan_id) AS plan "
                "FROM tickets t JOIN plans p ON p.id = t.plan_id "
                "WHERE t.id = :id AND t.epoch = :epoch AND t.state = 'claimed' "
                "AND t.lease_expires_at > :now",
                {"id": ticket_id, "epoch": epoch, "now": now},
            )
            if row is None:
                raise self._why_stale(tx, ticket_id, epoch, now)
        budget = row["budget_usd"]
        return Spend(
            plan_id=int(row["plan_id"]),
            ticket_usd=float(row["ticket"]),
            plan_usd=float(row["plan"]),
            plan_budget_usd=None if budget is None else float(budget),
        )

    def record_usage(
        self,
        ticket_id: int,
        epoch: int,
        model: str,
        tokens: dict[str, int],
        cost_usd: float,
        *,
        priced: str = "table",
    ) -> float:
        """Record one model call of a ticket (even if its lease ended meanwhile: the tokens
        were spent) with an ``llm.usage`` event; returns what the ticket has spent in all."""
        now = self.clock()
        with self.db.tx() as tx:
            plan_id = tx.scalar("SELECT plan_id FROM tickets WHERE id = :id", {"id": ticket_id})
            if plan_id is None:
                raise NotFound(f"no ticket {ticket_id}")
            tx.execute(
                "INSERT INTO usage (ts, plan_id, ticket_id, epoch, model, input_tokens, "
                "output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd) "
                "VALUES (:ts, :plan, :ticket, :epoch, :model, :i, :o, :cw, :cr, :cost)",
                {
                    "ts": now,
                    "plan": plan_id,
                    "ticket": ticket_id,
                    "epoch": epoch,
                    "model": model,
                    "i": tokens.get("input_tokens", 0),
                    "o": tokens.get("output_tokens", 0),
                    "cw": tokens.get("cache_creation_input_tokens", 0),
                    "cr": tokens.get("cache_read_input_tokens", 0),
                    "cost": cost_usd,
                },
            )
            total = float(
                tx.scalar(
                    "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE ticket_id = :id",
                    {"id": ticket_id},
                )
            )
            data = {
                "epoch": epoch,
                "model": model,
                **tokens,
                "cost_usd": cost_usd,
                "priced": priced,
                "ticket_spent_usd": round(total, 6),
            }
            self._append(tx, [("llm.usage", int(plan_id), ticket_id, data)])
        self._publish(0)
        return total

    def usage(self, *, plan_id: int | None = None, ticket_id: int | None = None) -> UsageReport:
        """Tokens and cost of the model calls of a plan, a ticket, or everything, with the
        share of each ticket."""
        where, params = [], {}
        if plan_id is not None:
            where.append("u.plan_id = :plan")
            params["plan"] = plan_id
        if ticket_id is not None:
            where.append("u.ticket_id = :ticket")
            params["ticket"] = ticket_id
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sums = (
            "COUNT(*) AS calls, COALESCE(SUM(u.input_tokens), 0) AS input_tokens, "
            "COALESCE(SUM(u.output_tokens), 0) AS output_tokens, "
            "COALESCE(SUM(u.cost_usd), 0) AS cost_usd"
        )
        with self.db.read() as tx:
            row = tx.one(
                f"SELECT {sums}, "
                "COALESCE(SUM(u.cache_creation_input_tokens), 0) AS cache_creation_input_tokens, "
                "COALESCE(SUM(u.cache_read_input_tokens), 0) AS cache_read_input_tokens "
                f"FROM usage u {clause}",
                params,
            )
            tickets = tx.all(
                f"SELECT u.ticket_id, t.key, {sums} FROM usage u "
                f"JOIN tickets t ON t.id = u.ticket_id {clause} "
                "GROUP BY u.ticket_id, t.key ORDER BY cost_usd DESC, u.ticket_id",
                params,
            )
        assert row is not None
        return UsageReport.model_validate({**row, "tickets": tickets})

    # -- pull requests -----------------------------------------------------------------------

    _PR_COLUMNS = (
        "id, plan_id, ticket_id, base, head, base_sha, head_sha, files_changed, insertions, "
        "deletions, state, created_at, updated_at, merge_sha, number, url"
    )

    def record_pull_request(self, ticket_id: int, stats: DiffStats) -> PullRequest:
        """Open the ticket's pull request, or bring it up to date with a new push (the same
        record: a retry of the ticket updates its pull request, it does not open another)."""
        now = self.clock()
        values = {
            "ticket": ticket_id,
            "base": stats.base,
            "head": stats.head,
            "bsha": stats.base_sha,
            "hsha": stats.head_sha,
            "files": stats.files_changed,
            "ins": stats.insertions,
            "dels": stats.deletions,
            "now": now,
        }
        with self.db.tx() as tx:
            plan_id = tx.scalar("SELECT plan_id FROM tickets WHERE id = :id", {"id": ticket_id})
            if plan_id is None:
                raise NotFound(f"no ticket {ticket_id}")
            row = tx.one(
                f"UPDATE pull_requests SET base = :base, head = :head, base_sha = :bsha, "
                "head_sha = :hsha, files_changed = :files, insertions = :ins, deletions = :dels, "
                f"state = 'open', updated_at = :now WHERE ticket_id = :ticket "
                f"RETURNING {self._PR_COLUMNS}",
                values,
            )
            kind = "pr.updated"
            if row is None:
                kind = "pr.opened"
                row = tx.one(
                    "INSERT INTO pull_requests (plan_id, ticket_id, base, head, base_sha, "
                    "head_sha, files_changed, insertions, deletions, state, created_at, "
                    "updated_at) VALUES (:plan, :ticket, :base, :head, :bsha, :hsha, :files, "
                    f":ins, :dels, 'open', :now, :now) RETURNING {self._PR_COLUMNS}",
                    {**values, "plan": plan_id},
                )
            assert row is not None
            pull = PullRequest.model_validate(row)
            data = stats.model_dump(
                include={"head", "head_sha", "files_changed", "insertions", "deletions"}
            )
            self._append(tx, [(kind, pull.plan_id, ticket_id, data)])
        self._publish(0)
        return pull

    def link_pull_request(self, ticket_id: int, *, number: int, url: str) -> PullRequest:
        """The ticket's pull request is number ``number`` on GitHub, at ``url``."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                "UPDATE pull_requests SET number = :n, url = :url, updated_at = :now "
                f"WHERE ticket_id = :t RETURNING {self._PR_COLUMNS}",
                {"n": number, "url": url, "now": now, "t": ticket_id},
            )
            if row is None:
                raise NotFound(f"ticket {ticket_id} has no pull request")
            pull = PullRequest.model_validate(row)
            data = {"number": number, "url": url}
            self._append(tx, [("pr.published", pull.plan_id, ticket_id, data)])
        self._publish(0)
        return pull

    def set_github(self, plan_id: int, repository: str | None) -> Plan:
        """Publish the plan's work to this GitHub repository (``owner/name``), or no longer."""
        with self.db.tx() as tx:
            hit = tx.scalar(
                "UPDATE plans SET github = :g WHERE id = :id RETURNING id",
                {"g": repository, "id": plan_id},
            )
            if hit is None:
                raise NotFound(f"no plan {plan_id}")
            self._append(tx, [("plan.github", plan_id, None, {"repository": repository})])
        self._publish(0)
        return self.get_plan(plan_id)

    def note(self, kind: str, ticket: Ticket, data: dict[str, Any]) -> None:
        """Append an event about a ticket that changes no state."""
        with self.db.tx() as tx:
            self._append(tx, [(kind, ticket.plan_id, ticket.id, data)])
        self._publish(0)

    def pull_requests(self, plan_id: int | None = None) -> list[PullRequest]:
        where = "WHERE plan_id = :plan " if plan_id is not None else ""
        with self.db.read() as tx:
            rows = tx.all(
                f"SELECT {self._PR_COLUMNS} FROM pull_requests {where}ORDER BY id",
                {"plan": plan_id},
            )
        return [PullRequest.model_validate(r) for r in rows]

    def pull_request(self, ticket_id: int) -> PullRequest:
        with self.db.read() as tx:
            row = tx.one(
                f"SELECT {self._PR_COLUMNS} FROM pull_requests WHERE ticket_id = :t",
                {"t": ticket_id},
            )
        if row is None:
            raise NotFound(f"ticket {ticket_id} has no pull request")
        return PullRequest.model_validate(row)

    # -- operators ---------------------------------------------------------------------------

    def cancel(self, ticket_id: int, reason: str = "cancelled") -> Ticket:
        """Cancel a ticket that is not done; a live lease on it stops being live."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                "UPDATE tickets SET state = 'cancelled', lease_agent = NULL, "
                "lease_expires_at = NULL, retry_at = NULL, last_error = :reason, updated_at = :now "
                f"WHERE id = :id AND state NOT IN ('done', 'cancelled') RETURNING {TICKET_COLUMNS}",
                {"reason": reason, "now": now, "id": ticket_id},
            )
            if row is None:
                ticket = self._ticket_in(tx, ticket_id)
                if ticket.state is TicketState.CANCELLED:
                    return ticket
                raise Conflict(f"ticket {ticket_id} is {ticket.state}: it cannot be cancelled")
            ticket = _ticket(row)
            tx.execute(
                "UPDATE attempts SET outcome = 'cancelled', ended_at = :now "
                "WHERE ticket_id = :t AND outcome IS NULL",
                {"now": now, "t": ticket_id},
            )
            self._append(tx, [("ticket.cancelled", ticket.plan_id, ticket.id, {"reason": reason})])
        self._publish(0)
        self._open_next_wave(ticket.plan_id, ticket.wave)
        return ticket

    def retry(self, ticket_id: int) -> Ticket:
        """Give a failed, dead or cancelled ticket a fresh set of attempts, now."""
        now = self.clock()
        with self.db.tx() as tx:
            row = tx.one(
                "UPDATE tickets SET state = CASE WHEN unmet = 0 THEN 'ready' ELSE 'pending' END, "
                "ready_at = CASE WHEN unmet = 0 THEN :now ELSE NULL END, "
                "attempts = 0, retry_at = NULL, updated_at = :now "
                "WHERE id = :id AND state IN ('failed', 'dead', 'cancelled') "
                f"RETURNING {TICKET_COLUMNS}",
                {"now": now, "id": ticket_id},
            )
            if row is None:
                ticket = self._ticket_in(tx, ticket_id)
                raise Conflict(
                    f"ticket {ticket_id} is {ticket.state}: only failed, dead or cancelled "
                    "tickets can be retried"
                )
            ticket = _ticket(row)
            events: list[EventRow] = [
                ("ticket.retried", ticket.plan_id, ticket.id, {"state": ticket.state.value})
            ]
            if ticket.state is TicketState.READY:
                events.append(("ticket.ready", ticket.plan_id, ticket.id, {}))
            self._append(tx, events)
        self._publish(1 if ticket.state is TicketState.READY else 0)
        return ticket

    def sweep(self) -> SweepResult:
        """Return expired leases to ready (or dead, out of attempts) and end due backoffs."""
        now = self.clock()
        result = SweepResult()
        with self.db.tx() as tx:
            expired = tx.all(
                "UPDATE tickets SET "
                "state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'ready' END, "
                "ready_at = CASE WHEN attempts >= max_attempts THEN ready_at ELSE :now END, "
                "lease_agent = NULL, lease_expires_at = NULL, updated_at = :now, "
                "last_error = 'lease expired' "
                "WHERE state = 'claimed' AND lease_expires_at <= :now "
                "RETURNING id, plan_id, epoch, state, wave",
                {"now": now},
            )
            promoted = tx.all(
                "UPDATE tickets SET state = 'ready', ready_at = :now, retry_at = NULL, "
                "updated_at = :now WHERE state = 'failed' AND retry_at <= :now "
                "RETURNING id, plan_id",
                {"now": now},
            )
            tx.executemany(
                "UPDATE attempts SET outcome = 'expired', ended_at = :now "
                "WHERE ticket_id = :t AND epoch = :e AND outcome IS NULL",
                [{"now": now, "t": r["id"], "e": r["epoch"]} for r in expired],
            )
            events: list[EventRow] = []
            for r in expired:
                events.append(("ticket.expired", r["plan_id"], r["id"], {"epoch": r["epoch"]}))
                if r["state"] == "dead":
                    result.dead.append(r["id"])
                    events.append(
                        ("ticket.dead", r["plan_id"], r["id"], {"reason": "lease expired"})
                    )
                else:
                    result.expired.append(r["id"])
                    events.append(("ticket.ready", r["plan_id"], r["id"], {}))
            for r in promoted:
                result.promoted.append(r["id"])
                events.append(("ticket.ready", r["plan_id"], r["id"], {}))
            self._append(tx, events)
            result.next_due = tx.scalar(
                "SELECT MIN(t) FROM (SELECT MIN(lease_expires_at) AS t FROM tickets "
                "WHERE state = 'claimed' UNION ALL SELECT MIN(retry_at) FROM tickets "
                "WHERE state = 'failed') AS due"
            )
        if events:
            self._publish(len(result.expired) + len(result.promoted))
        for r in expired:
            if r["state"] == "dead":
                self._open_next_wave(int(r["plan_id"]), int(r["wave"]))
        return result
