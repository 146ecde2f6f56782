"""The lease protocol against a model: Hypothesis drives the store and a few lines of Python.

A rule-based state machine claims, heartbeats, completes, fails, lets leases expire, sweeps,
cancels, retries and restarts the store (a new :class:`TicketStore` on the same database) in
any order, over a small DAG, and checks after every step that the database and the model agree:
every ticket's state, epoch, attempts, unmet count and deadlines; the counts by state; which
(ticket, epoch) leases are live; the events the step appended and the wake-ups it published.
Every lease the machine ever held stays in play, so stale writes are tried all the time: they
must be refused with StaleLease, or, for a repeated identical completion or failure, answered
with the very ticket the first call returned.

Each example runs on its own plan in one database per test, so PostgreSQL needs no scratch
database per example; the clock only moves forward across examples, and each example starts by
sweeping whatever earlier examples left claimed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import FakeClock
from swarmstack.auth import TokenKind
from swarmstack.db import Database
from swarmstack.errors import Conflict, StaleLease
from swarmstack.tickets.models import PlanSpec, Ticket, TicketResult, TicketSpec, TicketState
from swarmstack.tickets.store import Change, TicketStore

TTL = 30.0
SHORT_TTL = 5.0
MAX_ATTEMPTS = 3  # the store's default; each example's plan picks 1, 2 or 3
BACKOFF_BASE = 2.0
BACKOFF_MAX = 3.0  # the first failure backs off 2 s, the second 3 s (capped, not 4 s)
MAX_CANCELS = 2  # per example: an operator who cancels everything leaves nothing to test

# A <- C, (A, B) <- D, (C, D) <- E. Ranks: A 6, B 3 (priority 5), C 3, D 2, E 1.
SPEC = PlanSpec(
    title="lease model",
    tickets=[
        TicketSpec(id="A", title="a", estimate=3),
        TicketSpec(id="B", title="b", estimate=1, priority=5),
        TicketSpec(id="C", title="c", depends_on=["A"], estimate=2),
        TicketSpec(id="D", title="d", depends_on=["A", "B"], estimate=1),
        TicketSpec(id="E", title="e", depends_on=["C", "D"], estimate=1),
    ],
)
KEYS = [t.id for t in SPEC.tickets]

S = TicketState


@dataclass
class Model:
    """One ticket as the protocol says it should be."""

    id: int
    key: str
    rank: float
    priority: int
    dependents: list[int]
    state: TicketState
    unmet: int
    attempts: int = 0
    epoch: int = 0
    expires: float | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class LeaseRef:
    ticket_id: int
    epoch: int
    token: str


@dataclass
class Ended:
    """An attempt its own agent ended: the request that ended it and the answer it got."""

    request: tuple[object, ...]
    response: Ticket


@dataclass
class Expected:
    events: list[tuple[str, int | None]] = field(default_factory=list)

    def add(self, kind: str, ticket_id: int) -> None:
        self.events.append((kind, ticket_id))


def by_kind(event: tuple[str, int | None]) -> tuple[str, int]:
    return event[0], event[1] or 0


class LeaseProtocol(RuleBasedStateMachine):
    url: str
    clock: FakeClock

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.store = self._open()
        self.tickets: dict[int, Model] = {}
        self.attempts: dict[tuple[int, int], Ended | None] = {}
        self.held: list[LeaseRef] = []
        self.max_epoch: dict[int, int] = {}
        self.expected = Expected()
        self.heard: list[Change] = []
        self.seq = 0
        self.plan_id = 0
        self.max_attempts = MAX_ATTEMPTS
        self.cancels = 0
        self.turn = 0

    def _open(self) -> TicketStore:
        store = TicketStore(
            Database(self.url),
            lease_ttl_s=TTL,
            max_attempts=MAX_ATTEMPTS,
            backoff_base_s=BACKOFF_BASE,
            backoff_max_s=BACKOFF_MAX,
            clock=self.clock,
        )
        store.subscribe(self.heard_change)
        return store

    def heard_change(self, change: Change) -> None:
        self.heard.append(change)

    def teardown(self) -> None:
        self.store.close()

    # -- setup ---------------------------------------------------------------------------------

    @initialize(max_attempts=st.sampled_from([MAX_ATTEMPTS, 2, 1]))
    def new_plan(self, max_attempts: int) -> None:
        # Past every deadline an earlier example left behind, and those tickets swept, so
        # nothing outside this example's plan is claimed or failed any more.
        self.clock.advance(10_000)
        self.store.sweep()
        self.heard.clear()
        self.seq = self.store.last_seq()

        plan = self.store.create_plan(SPEC, max_attempts=max_attempts)
        self.plan_id = plan.id
        self.max_attempts = max_attempts
        rows = {t.key: t for t in self.store.list_tickets(plan_id=plan.id)}
        assert sorted(rows) == sorted(KEYS)
        for spec in SPEC.tickets:
            row = rows[spec.id]
            self.tickets[row.id] = Model(
                id=row.id,
                key=spec.id,
                rank=row.rank,
                priority=spec.priority,
                dependents=[rows[t.id].id for t in SPEC.tickets if spec.id in t.depends_on],
                state=S.PENDING if spec.depends_on else S.READY,
                unmet=len(spec.depends_on),
            )
            if not spec.depends_on:
                self.expected.add("ticket.ready", row.id)
        self.expected.events.append(("plan.created", None))
        assert {k: r.rank for k, r in rows.items()} == {"A": 6, "B": 3, "C": 3, "D": 2, "E": 1}

    # -- the model's judgements ----------------------------------------------------------------

    def live(self, lease: LeaseRef) -> bool:
        m = self.tickets[lease.ticket_id]
        return (
            m.state is S.CLAIMED
            and m.epoch == lease.epoch
            and m.expires is not None
            and m.expires > self.clock.now
        )

    def next_ready(self) -> Model | None:
        ready = [m for m in self.tickets.values() if m.state is S.READY]
        if not ready:
            return None
        return min(ready, key=lambda m: (-m.rank, -m.priority, m.id))

    def next_due(self) -> float | None:
        due = [m.expires for m in self.tickets.values() if m.state is S.CLAIMED]
        due += [m.retry_at for m in self.tickets.values() if m.state is S.FAILED]
        return min((d for d in due if d is not None), default=None)

    # -- agent rules ---------------------------------------------------------------------------

    @rule(target=leases)
    def claim(self) -> object:
        return self.do_claim(None)

    @rule(target=leases)
    def claim_short(self) -> object:
        return self.do_claim(SHORT_TTL)

    def do_claim(self, ttl: float | None) -> object:
        expected = self.next_ready()
        lease = self.store.claim("agent", plan_id=self.plan_id, ttl_s=ttl)
        if expected is None:
            assert lease is None
            return multiple()
        assert lease is not None
        assert lease.ticket.id == expected.id, (lease.ticket.key, expected.key)
        m = expected
        m.state, m.epoch, m.attempts = S.CLAIMED, m.epoch + 1, m.attempts + 1
        m.expires, m.retry_at = self.clock.now + (ttl or TTL), None
        assert (lease.epoch, lease.expires_at) == (m.epoch, m.expires)
        who = self.store.tokens.authenticate(lease.token)
        assert (who.kind, who.ticket_id, who.epoch) == (TokenKind.LEASE, m.id, m.epoch)
        self.attempts[(m.id, m.epoch)] = None
        self.expected.add("ticket.claimed", m.id)
        ref = LeaseRef(m.id, m.epoch, lease.token)
        self.held.append(ref)
        return ref

    def live_leases(self) -> list[LeaseRef]:
        return [lease for lease in self.held if self.live(lease)]

    @rule(lease=leases, short=st.booleans())
    def heartbeat(self, lease: LeaseRef, short: bool) -> None:
        self.do_heartbeat(lease, SHORT_TTL if short else None)

    @precondition(lambda self: self.live_leases())
    @rule(data=st.data(), short=st.booleans())
    def heartbeat_live(self, data: st.DataObject, short: bool) -> None:
        lease = data.draw(st.sampled_from(self.live_leases()))
        self.do_heartbeat(lease, SHORT_TTL if short else None)

    def do_heartbeat(self, lease: LeaseRef, ttl: float | None) -> None:
        if self.live(lease):
            expires = self.store.heartbeat(lease.ticket_id, lease.epoch, ttl_s=ttl)
            assert expires == self.clock.now + (ttl or TTL)
            self.tickets[lease.ticket_id].expires = expires
        else:
            with pytest.raises(StaleLease):
                self.store.heartbeat(lease.ticket_id, lease.epoch, ttl_s=ttl)

    @rule(lease=leases, summary=st.sampled_from(["ok", "also ok"]))
    def complete(self, lease: LeaseRef, summary: str) -> None:
        self.do_complete(lease, summary)

    @precondition(lambda self: self.live_leases())
    @rule(data=st.data())
    def complete_live(self, data: st.DataObject) -> None:
        self.do_complete(data.draw(st.sampled_from(self.live_leases())), "ok")

    def do_complete(self, lease: LeaseRef, summary: str) -> None:
        result = TicketResult(summary=summary)
        request = ("complete", summary)
        if not self.live(lease):
            self.stale_write(
                lease, request, lambda: self.store.complete(lease.ticket_id, lease.epoch, result)
            )
            return
        ticket = self.store.complete(lease.ticket_id, lease.epoch, result)
        m = self.tickets[lease.ticket_id]
        m.state, m.expires = S.DONE, None
        self.expected.add("ticket.done", m.id)
        for d in m.dependents:
            dependent = self.tickets[d]
            dependent.unmet -= 1
            if dependent.unmet == 0 and dependent.state is S.PENDING:
                dependent.state = S.READY
                self.expected.add("ticket.ready", d)
        assert (ticket.state, ticket.result) == (S.DONE, result)
        self.attempts[(m.id, lease.epoch)] = Ended(request, ticket)

    @rule(lease=leases, reason=st.sampled_from(["flaky", "broken"]), retryable=st.booleans())
    def fail(self, lease: LeaseRef, reason: str, retryable: bool) -> None:
        self.do_fail(lease, reason, retryable)

    @precondition(lambda self: self.live_leases())
    @rule(data=st.data())
    def fail_live(self, data: st.DataObject) -> None:
        self.do_fail(data.draw(st.sampled_from(self.live_leases())), "flaky", True)

    def do_fail(self, lease: LeaseRef, reason: str, retryable: bool) -> None:
        request = ("fail", reason, retryable)
        if not self.live(lease):
            self.stale_write(
                lease,
                request,
                lambda: self.store.fail(lease.ticket_id, lease.epoch, reason, retryable=retryable),
            )
            return
        ticket = self.store.fail(lease.ticket_id, lease.epoch, reason, retryable=retryable)
        m = self.tickets[lease.ticket_id]
        m.expires = None
        if not retryable or m.attempts >= self.max_attempts:
            m.state, m.retry_at = S.DEAD, None
        else:
            m.state = S.FAILED
            delay = min(BACKOFF_BASE * 2 ** (m.attempts - 1), BACKOFF_MAX)
            m.retry_at = self.clock.now + delay
        self.expected.add(f"ticket.{m.state.value}", m.id)
        assert (ticket.state, ticket.retry_at, ticket.last_error) == (m.state, m.retry_at, reason)
        self.attempts[(m.id, lease.epoch)] = Ended(request, ticket)

    def stale_write(
        self, lease: LeaseRef, request: tuple[object, ...], write: Callable[[], Ticket]
    ) -> None:
        """A write under a lease that is not live: the first answer again, or refused."""
        ended = self.attempts[(lease.ticket_id, lease.epoch)]
        if ended is not None and ended.request == request:
            assert write() == ended.response
        elif ended is not None:
            with pytest.raises(Conflict) as info:
                write()
            assert not isinstance(info.value, StaleLease)
        else:
            with pytest.raises(StaleLease):
                write()

    # -- time, the sweeper and restarts --------------------------------------------------------

    @rule(seconds=st.sampled_from([1.0, 2.0, 4.0, 7.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: (self.next_due() or 0) > self.clock.now)
    @rule()
    def tick_to_next_deadline(self) -> None:
        due = self.next_due()
        assert due is not None
        self.clock.now = due  # exactly on the boundary: a lease is live strictly before it

    @rule()
    def sweep(self) -> None:
        self.do_sweep()

    @precondition(lambda self: (self.next_due() or 0) > self.clock.now)
    @rule()
    def sweep_at_next_deadline(self) -> None:
        due = self.next_due()
        assert due is not None
        self.clock.now = due  # a deadline is due on the dot: the sweeper acts at once
        self.do_sweep()

    @rule()
    def expire(self) -> None:
        self.clock.advance(TTL + 1)
        self.do_sweep()

    def do_sweep(self) -> None:
        now = self.clock.now
        expired, dead, promoted = set(), set(), set()
        for m in self.tickets.values():
            if m.state is S.CLAIMED and m.expires is not None and m.expires <= now:
                m.expires = None
                self.expected.add("ticket.expired", m.id)
                if m.attempts >= self.max_attempts:
                    m.state = S.DEAD
                    dead.add(m.id)
                    self.expected.add("ticket.dead", m.id)
                else:
                    m.state = S.READY
                    expired.add(m.id)
                    self.expected.add("ticket.ready", m.id)
            elif m.state is S.FAILED and m.retry_at is not None and m.retry_at <= now:
                m.state, m.retry_at = S.READY, None
                promoted.add(m.id)
                self.expected.add("ticket.ready", m.id)
        result = self.store.sweep()
        assert (set(result.expired), set(result.dead), set(result.promoted)) == (
            expired,
            dead,
            promoted,
        )
        assert result.next_due == self.next_due()

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = self._open()

    # -- operator rules ------------------------------------------------------------------------

    @precondition(lambda self: self.cancels < MAX_CANCELS)
    @rule(index=st.integers(0, len(KEYS) - 1))
    def cancel(self, index: int) -> None:
        self.cancels += 1
        m = list(self.tickets.values())[index]
        if m.state is S.DONE:
            with pytest.raises(Conflict):
                self.store.cancel(m.id)
            return
        ticket = self.store.cancel(m.id, "operator")
        if m.state is not S.CANCELLED:
            m.state, m.expires, m.retry_at = S.CANCELLED, None, None
            self.expected.add("ticket.cancelled", m.id)
        assert ticket.state is S.CANCELLED

    @rule(index=st.integers(0, len(KEYS) - 1))
    def retry(self, index: int) -> None:
        self.do_retry(list(self.tickets.values())[index])

    def retryable(self) -> list[Model]:
        return [m for m in self.tickets.values() if m.state in (S.FAILED, S.DEAD, S.CANCELLED)]

    @precondition(lambda self: self.retryable())
    @rule(data=st.data())
    def retry_a_stuck_ticket(self, data: st.DataObject) -> None:
        self.do_retry(data.draw(st.sampled_from(self.retryable())))

    def do_retry(self, m: Model) -> None:
        if m.state not in (S.FAILED, S.DEAD, S.CANCELLED):
            with pytest.raises(Conflict):
                self.store.retry(m.id)
            return
        ticket = self.store.retry(m.id)
        m.state = S.READY if m.unmet == 0 else S.PENDING
        m.attempts, m.retry_at = 0, None
        self.expected.add("ticket.retried", m.id)
        if m.state is S.READY:
            self.expected.add("ticket.ready", m.id)
        assert (ticket.state, ticket.attempts) == (m.state, 0)

    # -- what must hold after every step -------------------------------------------------------

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        rows = {t.id: t for t in self.store.list_tickets(plan_id=self.plan_id)}
        self.check_tickets(rows)
        self.check_leases(rows)
        self.check_events()

    def check_tickets(self, rows: dict[int, Ticket]) -> None:
        """State, epoch, attempts, unmet and deadlines of every ticket; counts by state."""
        assert rows.keys() == self.tickets.keys()
        for tid, m in self.tickets.items():
            row = rows[tid]
            seen = (row.state, row.epoch, row.attempts, row.unmet)
            assert seen == (m.state, m.epoch, m.attempts, m.unmet), (m.key, seen, m)
            assert (row.lease_expires_at, row.retry_at) == (m.expires, m.retry_at), m.key
            assert row.epoch >= self.max_epoch.get(tid, 0), "an epoch went down"
            self.max_epoch[tid] = row.epoch
        counts = Counter(m.state.value for m in self.tickets.values())
        assert self.store.counts(self.plan_id) == dict(counts)

    def check_leases(self, rows: dict[int, Ticket]) -> None:
        """The same (ticket, epoch) leases are live in both, and no other one is honoured."""
        now = self.clock.now
        in_db = {
            (t.id, t.epoch)
            for t in rows.values()
            if t.state is S.CLAIMED and t.lease_expires_at is not None and t.lease_expires_at > now
        }
        live = self.live_leases()
        assert in_db == {(lease.ticket_id, lease.epoch) for lease in live}
        # Heartbeat with the newest lease that is over, and with one more in turn, so every
        # lease the machine ever held is tried again and again as the example goes on.
        stale = [lease for lease in self.held if lease not in live]
        if stale:
            self.turn += 1
            for lease in {stale[-1], stale[self.turn % len(stale)]}:
                with pytest.raises(StaleLease):
                    self.store.heartbeat(lease.ticket_id, lease.epoch)

    def check_events(self) -> None:
        """The step appended exactly the events the model expects, and woke whom it should."""
        events = self.store.events_after(self.seq)
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)) and all(s > self.seq for s in seqs)
        assert all(e.plan_id == self.plan_id for e in events)
        assert sorted(((e.kind, e.ticket_id) for e in events), key=by_kind) == sorted(
            self.expected.events, key=by_kind
        )
        readied = sum(1 for kind, _ in self.expected.events if kind == "ticket.ready")
        assert sum(c.ready for c in self.heard) == readied
        assert bool(self.heard) == bool(events)  # heard exactly when events were appended
        self.seq = seqs[-1] if seqs else self.seq
        self.expected = Expected()
        self.heard.clear()


SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_lease_protocol_matches_its_model(database_url: str) -> None:
    setup = TicketStore(Database(database_url))
    setup.migrate()
    setup.close()
    machine = type(
        "LeaseProtocolOn" + database_url.split(":", 1)[0].capitalize(),
        (LeaseProtocol,),
        {"url": database_url, "clock": FakeClock()},
    )
    run_state_machine_as_test(machine, settings=SETTINGS)
