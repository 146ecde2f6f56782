"""The ticket store's contract, run against SQLite and PostgreSQL alike.

Every test takes the ``store`` fixture, which is parametrized over both databases and driven by
a hand-moved clock (lease TTL 30 s, 3 attempts, backoff 2 s doubling up to 60 s).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import FakeClock, require_postgres
from swarmstack.auth import TokenKind, format_token, parse_token
from swarmstack.bench.pg import DEFAULT_ADMIN_URL, scratch_database
from swarmstack.db import Database
from swarmstack.errors import AuthError, Conflict, NotFound, PlanInvalid, StaleLease, UsageError
from swarmstack.tickets.models import (
    Lease,
    Phase,
    Plan,
    PlanSpec,
    Ticket,
    TicketResult,
    TicketSpec,
    TicketState,
)
from swarmstack.tickets.schema import MIGRATIONS
from swarmstack.tickets.store import Change, TicketStore

TTL = 30.0
READY, PENDING, CLAIMED = TicketState.READY, TicketState.PENDING, TicketState.CLAIMED
FAILED, DONE, DEAD, CANCELLED = (
    TicketState.FAILED,
    TicketState.DONE,
    TicketState.DEAD,
    TicketState.CANCELLED,
)


def t(
    key: str,
    deps: Sequence[str] = (),
    *,
    estimate: float = 1.0,
    priority: int = 0,
    phase: Phase = "expansion",
) -> TicketSpec:
    return TicketSpec(
        id=key,
        title=f"ticket {key}",
        depends_on=list(deps),
        estimate=estimate,
        priority=priority,
        phase=phase,
    )


def plan(*tickets: TicketSpec, title: str = "test plan") -> PlanSpec:
    return PlanSpec(title=title, description="for the store tests", tickets=list(tickets))


def diamond() -> PlanSpec:
    """A <- B, A <- C, (B, C) <- D, with distinct estimates so every rank differs."""
    return plan(
        t("A", estimate=1),
        t("B", ["A"], estimate=2),
        t("C", ["A"], estimate=3),
        t("D", ["B", "C"], estimate=4),
    )


def ids(store: TicketStore, plan_id: int) -> dict[str, int]:
    return {x.key: x.id for x in store.list_tickets(plan_id=plan_id)}


def events_since(store: TicketStore, seq: int) -> list[tuple[str, int | None]]:
    return [(e.kind, e.ticket_id) for e in store.events_after(seq)]


def expire(store: TicketStore, clock: FakeClock) -> None:
    """Move past every lease's expiry and let the sweeper see it."""
    clock.advance(TTL + 1)
    store.sweep()


def claim(store: TicketStore, plan_id: int, agent: str = "agent-1") -> Lease:
    lease = store.claim(agent, plan_id=plan_id)
    assert lease is not None
    return lease


def claim_any(store: TicketStore) -> Lease:
    lease = store.claim("agent")
    assert lease is not None
    return lease


RESULT = TicketResult(summary="did it", branch="swarm/1", pull_request=None, cost_usd=0.25)


# -- plans -------------------------------------------------------------------------------------


def test_create_plan_makes_roots_ready_and_the_rest_pending(
    store: TicketStore, clock: FakeClock
) -> None:
    before = store.last_seq()
    created = store.create_plan(diamond())

    assert isinstance(created, Plan)
    assert created.title == "test plan"
    assert created.description == "for the store tests"
    assert created.created_at == clock.now
    assert created.ticket_count == 4
    assert created.counts == {"ready": 1, "pending": 3}

    tickets = {x.key: x for x in store.list_tickets(plan_id=created.id)}
    assert {k: x.state for k, x in tickets.items()} == {
        "A": READY,
        "B": PENDING,
        "C": PENDING,
        "D": PENDING,
    }
    assert {k: x.unmet for k, x in tickets.items()} == {"A": 0, "B": 1, "C": 1, "D": 2}
    # Upward rank: the longest estimated path from the ticket to the end of the plan.
    assert {k: x.rank for k, x in tickets.items()} == {"A": 8.0, "B": 6.0, "C": 7.0, "D": 4.0}
    assert tickets["A"].ready_at == clock.now
    assert tickets["D"].ready_at is None
    for x in tickets.values():
        assert x.plan_id == created.id
        assert (x.attempts, x.epoch, x.max_attempts) == (0, 0, 3)
        assert x.lease_agent is None
        assert x.lease_expires_at is None
        assert x.retry_at is None
        assert x.result is None
    assert tickets["D"].depends_on == ["B", "C"]
    assert tickets["D"].title == "ticket D"

    events = store.events_after(before)
    assert [(e.kind, e.ticket_id) for e in events] == [
        ("plan.created", None),
        ("ticket.ready", tickets["A"].id),
    ]
    assert events[0].data == {"title": "test plan", "tickets": 4, "ready": 1}
    assert all(e.plan_id == created.id and e.ts == clock.now for e in events)


def test_plans_are_read_back_whole(store: TicketStore) -> None:
    spec = diamond()
    first = store.create_plan(spec)
    second = store.create_plan(plan(t("X"), title="second"), max_attempts=7)

    assert store.get_plan(first.id) == first
    assert store.list_plans() == [first, second]
    assert store.plan_spec(first.id) == spec
    assert store.find_ticket(first.id, "C").rank == 7.0
    assert store.find_ticket(second.id, "X").max_attempts == 7
    assert store.get_ticket(store.find_ticket(first.id, "B").id).key == "B"
    waves = store.waves(first.id)
    assert waves.plan_id == first.id
    assert [w.tickets for w in waves.waves] == [["A"], ["B", "C"], ["D"]]
    assert waves.critical_path == ["A", "C", "D"]
    assert waves.critical_length == 8.0


def test_an_invalid_plan_is_refused_and_nothing_is_stored(store: TicketStore) -> None:
    before = store.last_seq()
    with pytest.raises(PlanInvalid):
        store.create_plan(plan(t("A", ["B"]), t("B", ["A"])))
    assert store.list_plans() == []
    assert store.counts() == {}
    assert store.last_seq() == before


def test_waves_of_a_plan_stored_under_older_rules(store: TicketStore) -> None:
    p = store.create_plan(plan(t("S", phase="skeleton"), t("A", ["S"])))
    # Before the skeleton rule a ticket could start from nothing; such a plan still shows.
    older = plan(t("S", phase="skeleton"), t("A", ["S"]), t("Loose"))
    with store.db.tx() as tx:
        tx.execute(
            "UPDATE plans SET spec = :s WHERE id = :id", {"s": older.model_dump_json(), "id": p.id}
        )
    assert [w.tickets for w in store.waves(p.id).waves] == [["S", "Loose"], ["A"]]


def test_an_empty_plan_is_stored(store: TicketStore) -> None:
    p = store.create_plan(plan())
    assert (p.ticket_count, p.counts) == (0, {})
    assert [e.kind for e in store.events_after(0)] == ["plan.created"]
    assert store.claim("agent", plan_id=p.id) is None
    assert store.waves(p.id).waves == []


def test_repeated_dependency_counts_once(store: TicketStore) -> None:
    p = store.create_plan(plan(t("A"), t("B", ["A", "A"])))
    assert store.find_ticket(p.id, "B").unmet == 1
    lease = claim(store, p.id)
    store.complete(lease.ticket.id, lease.epoch, RESULT)
    assert store.find_ticket(p.id, "B").state is READY


# -- claiming ----------------------------------------------------------------------------------


def test_claim_order_is_upward_rank_then_priority_then_id(store: TicketStore) -> None:
    p = store.create_plan(
        plan(
            t("tie_b", estimate=2),
            t("low", estimate=1),
            t("p_lo", estimate=2, priority=-5),
            t("tie_a", estimate=2),
            t("high", estimate=5),
            t("p_hi", estimate=2, priority=10),
            t("base", estimate=1),  # small itself, but leads to a long ticket: rank 11
            t("child", ["base"], estimate=10),
        )
    )
    order = []
    while (lease := store.claim("agent", plan_id=p.id)) is not None:
        order.append(lease.ticket.key)
    # tie_b was written first, so it has the smaller id: ties go by id, not by key.
    assert order == ["base", "high", "p_hi", "tie_b", "tie_a", "p_lo", "low"]

    base = store.find_ticket(p.id, "base")
    store.complete(base.id, base.epoch, RESULT)
    assert claim(store, p.id).ticket.key == "child"
    assert store.claim("agent", plan_id=p.id) is None


def test_claim_is_scoped_to_its_plan(store: TicketStore) -> None:
    small = store.create_plan(plan(t("S", estimate=1)))
    big = store.create_plan(plan(t("L", estimate=5)))
    empty = store.create_plan(plan(t("root"), t("leaf", ["root"])))
    claim(store, empty.id)  # its only ready ticket is gone; "leaf" is pending

    assert store.claim("agent", plan_id=empty.id) is None
    assert claim(store, small.id).ticket.key == "S"
    assert claim(store, big.id).ticket.plan_id == big.id
    assert store.claim("agent") is None


def test_unscoped_claim_takes_the_best_ticket_of_any_plan(store: TicketStore) -> None:
    store.create_plan(plan(t("S", estimate=1)))
    big = store.create_plan(plan(t("L", estimate=5)))
    lease = claim_any(store)
    assert (lease.ticket.plan_id, lease.ticket.key) == (big.id, "L")
    assert claim_any(store).ticket.key == "S"
    assert store.claim("agent") is None


def test_claim_returns_none_when_nothing_is_ready(store: TicketStore) -> None:
    assert store.claim("agent") is None
    p = store.create_plan(plan(t("A"), t("B", ["A"])))
    seq = store.last_seq()
    lease = claim(store, p.id)
    assert store.claim("agent", plan_id=p.id) is None
    assert store.claim("agent") is None
    assert events_since(store, seq) == [("ticket.claimed", lease.ticket.id)]


def test_a_claim_leases_the_ticket(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A")))
    lease = claim(store, p.id, agent="alice")
    assert lease.epoch == lease.ticket.epoch == 1
    assert lease.expires_at == clock.now + TTL
    assert lease.ttl_s == TTL
    assert lease.ticket.state is CLAIMED
    assert lease.ticket.lease_agent == "alice"
    assert lease.ticket.lease_expires_at == lease.expires_at
    assert lease.ticket.attempts == 1
    assert store.get_ticket(lease.ticket.id) == lease.ticket
    assert parse_token(lease.token) == (TokenKind.LEASE, f"{lease.ticket.id}-1")

    short = store.create_plan(plan(t("B")))
    quick = store.claim("bob", plan_id=short.id, ttl_s=5)
    assert quick is not None
    assert (quick.ttl_s, quick.expires_at) == (5, clock.now + 5)


def test_epochs_grow_by_one_per_claim(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A")), max_attempts=10)
    seq = store.last_seq()
    epochs, attempts = [], []
    for _ in range(3):
        lease = claim(store, p.id)
        epochs.append(lease.epoch)
        attempts.append(lease.ticket.attempts)
        expire(store, clock)
    ticket_id = lease.ticket.id
    store.cancel(ticket_id)
    store.retry(ticket_id)
    lease = claim(store, p.id)
    epochs.append(lease.epoch)
    attempts.append(lease.ticket.attempts)

    assert epochs == [1, 2, 3, 4]  # a retry resets the attempts, never the epoch
    assert attempts == [1, 2, 3, 1]
    claimed = [e for e in store.events_after(seq) if e.kind == "ticket.claimed"]
    assert [(e.data["epoch"], e.data["attempt"]) for e in claimed] == list(
        zip(epochs, attempts, strict=True)
    )
    assert {e.data["agent"] for e in claimed} == {"agent-1"}


# -- heartbeats and expiry ---------------------------------------------------------------------


def test_heartbeat_extends_the_lease(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A")))
    lease = claim(store, p.id)
    tid = lease.ticket.id

    clock.advance(20)
    assert store.heartbeat(tid, lease.epoch) == clock.now + TTL
    assert store.get_ticket(tid).lease_expires_at == clock.now + TTL
    clock.advance(20)  # past the first expiry, within the extended one
    assert store.heartbeat(tid, lease.epoch, ttl_s=5) == clock.now + 5
    clock.advance(4)
    store.complete(tid, lease.epoch, RESULT)
    assert store.get_ticket(tid).state is DONE


def test_an_agent_without_a_heartbeat_for_two_thirds_of_its_lease_is_stale(
    store: TicketStore, clock: FakeClock
) -> None:
    store.create_plan(plan(t("A")))
    lease = store.claim("a1", ttl_s=30)
    assert lease is not None
    clock.advance(19)
    assert [a.stale for a in store.agents()] == [False]
    clock.advance(2)  # 21 s of a 30 s lease without a beat: two beats missed
    assert [a.stale for a in store.agents()] == [True]
    store.heartbeat(lease.ticket.id, lease.epoch, ttl_s=30)
    assert [(a.stale, a.agent) for a in store.agents()] == [(False, "a1")]


def test_an_expired_lease_is_refused_before_the_sweeper_runs(
    store: TicketStore, clock: FakeClock
) -> None:
    p = store.create_plan(plan(t("A")))
    lease = claim(store, p.id)
    tid = lease.ticket.id
    clock.advance(TTL)  # a lease is live strictly before its expiry

    with pytest.raises(StaleLease):
        store.heartbeat(tid, lease.epoch)
    with pytest.raises(StaleLease):
        store.complete(tid, lease.epoch, RESULT)
    with pytest.raises(StaleLease):
        store.fail(tid, lease.epoch, "boom")
    ticket = store.get_ticket(tid)
    assert (ticket.state, ticket.epoch) == (CLAIMED, 1)  # nobody swept yet
    assert store.claim("other", plan_id=p.id) is None


def test_heartbeat_with_a_wrong_epoch_is_refused(store: TicketStore) -> None:
    p = store.create_plan(plan(t("A")))
    lease = claim(store, p.id)
    for epoch in (0, 2, 99):
        with pytest.raises(StaleLease):
            store.heartbeat(lease.ticket.id, epoch)
    assert store.heartbeat(lease.ticket.id, lease.epoch) == lease.expires_at


def test_an_expired_lease_is_swept_back_to_ready_with_its_attempt_counted(
    store: TicketStore, clock: FakeClock
) -> None:
    p = store.create_plan(plan(t("A")))
    old = claim(store, p.id, agent="slow")
    tid = old.ticket.id
    clock.advance(TTL + 1)
    seq = store.last_seq()

    swept = store.sweep()
    assert (swept.expired, swept.dead, swept.promoted) == ([tid], [], [])
    assert swept.next_due is None
    ticket = store.get_ticket(tid)
    assert (ticket.state, ticket.attempts, ticket.epoch) == (READY, 1, 1)
    assert ticket.lease_expires_at is None
    assert ticket.last_error == "lease expired"
    assert ticket.ready_at == clock.now
    assert events_since(store, seq) == [("ticket.expired", tid), ("ticket.ready", tid)]
    assert store.events_after(seq)[0].data == {"epoch": 1}

    new = claim(store, p.id, agent="fast")
    assert (new.epoch, new.ticket.attempts) == (2, 2)
    for write in (
        lambda: store.heartbeat(tid, old.epoch),
        lambda: store.complete(tid, old.epoch, RESULT),
        lambda: store.fail(tid, old.epoch, "late"),
    ):
        with pytest.raises(StaleLease):
            write()
    done = store.complete(tid, new.epoch, RESULT)
    assert (done.state, done.epoch, done.lease_agent) == (DONE, 2, "fast")


def test_sweep_leaves_live_leases_alone(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A"), t("B")))
    first = claim(store, p.id)
    clock.advance(10)
    second = claim(store, p.id)
    swept = store.sweep()
    assert (swept.expired, swept.dead, swept.promoted) == ([], [], [])
    assert swept.next_due == first.expires_at
    clock.advance(21)
    swept = store.sweep()
    assert swept.expired == [first.ticket.id]
    assert swept.next_due == second.expires_at
    assert store.get_ticket(second.ticket.id).state is CLAIMED


# -- completing --------------------------------------------------------------------------------


def test_complete_readies_dependents_when_their_last_dependency_is_done(
    store: TicketStore, clock: FakeClock
) -> None:
    p = store.create_plan(diamond())
    key = {v: k for k, v in ids(store, p.id).items()}
    by_key = ids(store, p.id)

    a = claim(store, p.id)
    assert a.ticket.key == "A"
    clock.advance(1)
    seq = store.last_seq()
    done = store.complete(a.ticket.id, a.epoch, RESULT)
    assert done.state is DONE
    assert done.result == RESULT
    assert done.lease_expires_at is None
    assert done.updated_at == clock.now
    assert store.get_ticket(a.ticket.id) == done
    assert sorted(events_since(store, seq)) == sorted(
        [("ticket.done", by_key["A"]), ("ticket.ready", by_key["B"]), ("ticket.ready", by_key["C"])]
    )
    assert events_since(store, seq)[0] == ("ticket.done", by_key["A"])
    state = {x.key: (x.state, x.unmet) for x in store.list_tickets(plan_id=p.id)}
    assert state == {"A": (DONE, 0), "B": (READY, 0), "C": (READY, 0), "D": (PENDING, 2)}
    assert store.find_ticket(p.id, "B").ready_at == clock.now

    c = claim(store, p.id)
    b = claim(store, p.id)
    assert [key[c.ticket.id], key[b.ticket.id]] == ["C", "B"]  # rank 7 before rank 6
    seq = store.last_seq()
    store.complete(b.ticket.id, b.epoch, RESULT)
    assert events_since(store, seq) == [("ticket.done", by_key["B"])]
    assert (store.find_ticket(p.id, "D").state, store.find_ticket(p.id, "D").unmet) == (PENDING, 1)
    assert store.claim("agent", plan_id=p.id) is None

    seq = store.last_seq()
    store.complete(c.ticket.id, c.epoch, RESULT)
    assert events_since(store, seq) == [("ticket.done", by_key["C"]), ("ticket.ready", by_key["D"])]
    d = store.find_ticket(p.id, "D")
    assert (d.state, d.unmet) == (READY, 0)
    assert claim(store, p.id).ticket.key == "D"
    assert store.counts(p.id) == {"done": 3, "claimed": 1}


def test_complete_with_a_stale_epoch_is_refused(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A"), t("B", ["A"])))
    old = claim(store, p.id)
    tid = old.ticket.id
    expire(store, clock)
    new = claim(store, p.id)
    seq = store.last_seq()

    with pytest.raises(StaleLease, match="stale"):
        store.complete(tid, old.epoch, RESULT)
    with pytest.raises(StaleLease):
        store.complete(tid, new.epoch + 1, RESULT)
    assert store.last_seq() == seq
    ticket = store.get_ticket(tid)
    assert (ticket.state, ticket.epoch, ticket.result) == (CLAIMED, new.epoch, None)
    assert store.find_ticket(p.id, "B").state is PENDING


def test_repeating_a_completion_returns_the_first_answer(
    store: TicketStore, clock: FakeClock
) -> None:
    p = store.create_plan(plan(t("A"), t("B", ["A"])))
    lease = claim(store, p.id)
    tid = lease.ticket.id
    first = store.complete(tid, lease.epoch, RESULT)
    seq = store.last_seq()

    clock.advance(100)  # even long after, and after the lease would have expired
    again = store.complete(tid, lease.epoch, RESULT.model_copy())
    assert again == first
    assert store.last_seq() == seq  # no second ticket.done, no second readiness
    assert store.find_ticket(p.id, "B").unmet == 0

    with pytest.raises(Conflict) as info:
        store.complete(tid, lease.epoch, TicketResult(summary="something else"))
    assert not isinstance(info.value, StaleLease)
    with pytest.raises(Conflict):
        store.fail(tid, lease.epoch, "changed my mind")
    assert store.get_ticket(tid).result == RESULT


def test_repeating_a_failure_returns_the_first_answer(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A")))
    lease = claim(store, p.id)
    tid = lease.ticket.id
    first = store.fail(tid, lease.epoch, "boom")
    seq = store.last_seq()
    clock.advance(1)
    assert store.fail(tid, lease.epoch, "boom") == first
    assert store.last_seq() == seq
    with pytest.raises(Conflict):
        store.fail(tid, lease.epoch, "boom", retryable=False)
    with pytest.raises(Conflict):
        store.fail(tid, lease.epoch, "other reason")
    with pytest.raises(Conflict):
        store.complete(tid, lease.epoch, RESULT)
    assert store.get_ticket(tid).state is FAILED


# -- failing -----------------------------------------------------------------------------------


def test_fail_backs_off_exponentially_up_to_the_cap(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A")), max_attempts=8)
    delays = []
    for attempt in range(1, 8):
        lease = claim(store, p.id)
        tid = lease.ticket.id
        assert lease.ticket.attempts == attempt
        seq = store.last_seq()
        failed = store.fail(tid, lease.epoch, f"attempt {attempt} broke")
        assert failed.state is FAILED
        assert failed.last_error == f"attempt {attempt} broke"
        assert failed.lease_expires_at is None
        assert failed.retry_at is not None
        delays.append(failed.retry_at - clock.now)
        event = store.events_after(seq)[0]
        assert (event.kind, event.data) == (
            "ticket.failed",
            {"epoch": attempt, "reason": f"attempt {attempt} broke", "retry_at": failed.retry_at},
        )

        # Not before its time: the sweeper leaves it and nothing is claimable.
        clock.advance(delays[-1] - 0.5)
        swept = store.sweep()
        assert swept.promoted == []
        assert swept.next_due == failed.retry_at
        assert store.claim("agent", plan_id=p.id) is None
        clock.advance(0.5)
        seq = store.last_seq()
        assert store.sweep().promoted == [tid]
        assert events_since(store, seq) == [("ticket.ready", tid)]
        ticket = store.get_ticket(tid)
        assert (ticket.state, ticket.retry_at, ticket.ready_at) == (READY, None, clock.now)

    assert delays == [2, 4, 8, 16, 32, 60, 60]  # base 2 s doubling, capped at 60 s
    lease = claim(store, p.id)
    dead = store.fail(lease.ticket.id, lease.epoch, "last straw")
    assert (dead.state, dead.attempts, dead.retry_at) == (DEAD, 8, None)


def test_fail_without_retry_is_dead_at_once(store: TicketStore) -> None:
    p = store.create_plan(plan(t("A"), t("B", ["A"])))
    lease = claim(store, p.id)
    seq = store.last_seq()
    dead = store.fail(lease.ticket.id, lease.epoch, "impossible", retryable=False)
    assert (dead.state, dead.attempts, dead.retry_at) == (DEAD, 1, None)
    assert dead.last_error == "impossible"
    assert events_since(store, seq) == [("ticket.dead", lease.ticket.id)]
    assert store.sweep().promoted == []
    assert store.claim("agent", plan_id=p.id) is None
    assert store.counts(p.id) == {"dead": 1, "pending": 1}


def test_fail_is_dead_after_max_attempts(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A")))
    states = []
    for _ in range(3):
        lease = claim(store, p.id)
        states.append(store.fail(lease.ticket.id, lease.epoch, "again").state)
        clock.advance(100)
        store.sweep()
    assert states == [FAILED, FAILED, DEAD]
    assert store.claim("agent", plan_id=p.id) is None


def test_lease_expiry_is_dead_after_max_attempts(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A")))
    tid = store.find_ticket(p.id, "A").id
    seq = store.last_seq()
    results = []
    for _ in range(3):
        claim(store, p.id)
        clock.advance(TTL + 1)
        swept = store.sweep()
        results.append((swept.expired, swept.dead))
    assert results == [([tid], []), ([tid], []), ([], [tid])]
    ticket = store.get_ticket(tid)
    assert (ticket.state, ticket.attempts, ticket.epoch) == (DEAD, 3, 3)
    assert [k for k, _ in events_since(store, seq)] == [
        "ticket.claimed",
        "ticket.expired",
        "ticket.ready",
        "ticket.claimed",
        "ticket.expired",
        "ticket.ready",
        "ticket.claimed",
        "ticket.expired",
        "ticket.dead",
    ]
    assert store.claim("agent", plan_id=p.id) is None


# -- operators: cancel and retry ---------------------------------------------------------------


def ticket_in(store: TicketStore, state: TicketState) -> tuple[int, Lease | None]:
    """A ticket of a fresh plan driven into ``state``, with the lease that got it there."""
    if state is PENDING:
        p = store.create_plan(plan(t("root"), t("x", ["root"])))
        return store.find_ticket(p.id, "x").id, None
    p = store.create_plan(plan(t("x")))
    if state is READY:
        return store.find_ticket(p.id, "x").id, None
    lease = claim(store, p.id)
    tid = lease.ticket.id
    if state is FAILED:
        store.fail(tid, lease.epoch, "broke")
    elif state is DEAD:
        store.fail(tid, lease.epoch, "broke for good", retryable=False)
    elif state is DONE:
        store.complete(tid, lease.epoch, RESULT)
    elif state is CANCELLED:
        store.cancel(tid)
    assert store.get_ticket(tid).state is state
    return tid, lease


def test_cancel_works_in_every_state_but_done(store: TicketStore, clock: FakeClock) -> None:
    for state in (PENDING, READY, CLAIMED, FAILED, DEAD):
        tid, _ = ticket_in(store, state)
        seq = store.last_seq()
        clock.advance(1)
        cancelled = store.cancel(tid, "not needed")
        assert cancelled.state is CANCELLED, state
        assert cancelled.last_error == "not needed"
        assert (cancelled.lease_expires_at, cancelled.retry_at) == (None, None)
        assert cancelled.updated_at == clock.now
        assert store.get_ticket(tid) == cancelled
        events = store.events_after(seq)
        assert [(e.kind, e.ticket_id, e.data) for e in events] == [
            ("ticket.cancelled", tid, {"reason": "not needed"})
        ]

        clock.advance(1)
        assert store.cancel(tid, "twice") == cancelled  # twice is fine, and changes nothing
        assert store.last_seq() == events[-1].seq

    # A cancelled ticket is never handed out again, and a failed one is never promoted.
    assert store.sweep().promoted == []
    assert all(lease.ticket.key == "root" for lease in iter(lambda: store.claim("a"), None))


def test_cancelling_a_done_ticket_is_a_conflict(store: TicketStore) -> None:
    tid, _ = ticket_in(store, DONE)
    seq = store.last_seq()
    with pytest.raises(Conflict) as info:
        store.cancel(tid)
    assert not isinstance(info.value, StaleLease)
    assert store.get_ticket(tid).state is DONE
    assert store.last_seq() == seq


def test_a_cancelled_ticket_s_lease_is_refused(store: TicketStore, clock: FakeClock) -> None:
    tid, lease = ticket_in(store, CLAIMED)
    assert lease is not None
    store.cancel(tid)
    seq = store.last_seq()
    for write in (
        lambda: store.heartbeat(tid, lease.epoch),
        lambda: store.complete(tid, lease.epoch, RESULT),
        lambda: store.fail(tid, lease.epoch, "too late"),
    ):
        with pytest.raises(StaleLease):
            write()
    assert store.last_seq() == seq
    assert store.get_ticket(tid).state is CANCELLED
    clock.advance(TTL + 1)
    swept = store.sweep()  # the cancelled lease is not "expired" into ready either
    assert (swept.expired, swept.dead) == ([], [])
    assert store.get_ticket(tid).state is CANCELLED


def test_a_cancelled_dependent_stays_cancelled_but_keeps_counting(store: TicketStore) -> None:
    p = store.create_plan(plan(t("A"), t("B", ["A"])))
    b = store.find_ticket(p.id, "B").id
    store.cancel(b)
    lease = claim(store, p.id)
    seq = store.last_seq()
    store.complete(lease.ticket.id, lease.epoch, RESULT)
    assert events_since(store, seq) == [("ticket.done", lease.ticket.id)]
    ticket = store.get_ticket(b)
    assert (ticket.state, ticket.unmet) == (CANCELLED, 0)
    assert store.retry(b).state is READY


def test_retry_gives_a_fresh_set_of_attempts(store: TicketStore, clock: FakeClock) -> None:
    for state in (FAILED, DEAD, CANCELLED):
        tid, lease = ticket_in(store, state)
        assert lease is not None
        seq = store.last_seq()
        clock.advance(1)
        retried = store.retry(tid)
        assert (retried.state, retried.attempts, retried.epoch) == (READY, 0, lease.epoch)
        assert (retried.retry_at, retried.ready_at) == (None, clock.now)
        assert store.get_ticket(tid) == retried
        events = store.events_after(seq)
        assert [(e.kind, e.ticket_id, e.data) for e in events] == [
            ("ticket.retried", tid, {"state": "ready"}),
            ("ticket.ready", tid, {}),
        ]
        with pytest.raises(StaleLease):
            store.heartbeat(tid, lease.epoch)

        again = claim(store, retried.plan_id)
        assert (again.ticket.id, again.epoch, again.ticket.attempts) == (tid, lease.epoch + 1, 1)
        store.complete(tid, again.epoch, RESULT)


def test_retry_leaves_a_ticket_with_unmet_dependencies_pending(store: TicketStore) -> None:
    p = store.create_plan(plan(t("A"), t("B", ["A"])))
    b = store.find_ticket(p.id, "B").id
    store.cancel(b)
    seq = store.last_seq()
    retried = store.retry(b)
    assert (retried.state, retried.unmet, retried.ready_at) == (PENDING, 1, None)
    events = store.events_after(seq)
    assert [(e.kind, e.data) for e in events] == [("ticket.retried", {"state": "pending"})]
    lease = claim(store, p.id)
    store.complete(lease.ticket.id, lease.epoch, RESULT)
    assert store.get_ticket(b).state is READY


def test_a_retried_ticket_gets_all_its_attempts_again(store: TicketStore, clock: FakeClock) -> None:
    tid, _ = ticket_in(store, DEAD)
    store.retry(tid)
    states = []
    for _ in range(3):
        lease = claim(store, store.get_ticket(tid).plan_id)
        states.append(store.fail(tid, lease.epoch, "nope").state)
        clock.advance(100)
        store.sweep()
    assert states == [FAILED, FAILED, DEAD]


def test_retry_of_a_live_or_finished_ticket_is_a_conflict(store: TicketStore) -> None:
    for state in (PENDING, READY, CLAIMED, DONE):
        tid, _ = ticket_in(store, state)
        before = store.get_ticket(tid)
        seq = store.last_seq()
        with pytest.raises(Conflict):
            store.retry(tid)
        assert store.get_ticket(tid) == before
        assert store.last_seq() == seq


def test_unknown_ids_are_not_found(store: TicketStore) -> None:
    p = store.create_plan(plan(t("A")))
    missing = 987_654
    calls: list[Callable[[], object]] = [
        lambda: store.get_ticket(missing),
        lambda: store.heartbeat(missing, 1),
        lambda: store.complete(missing, 1, RESULT),
        lambda: store.fail(missing, 1, "x"),
        lambda: store.cancel(missing),
        lambda: store.retry(missing),
        lambda: store.get_plan(missing),
        lambda: store.plan_spec(missing),
        lambda: store.waves(missing),
        lambda: store.find_ticket(p.id, "nope"),
        lambda: store.find_ticket(missing, "A"),
        lambda: store.tokens.revoke(missing),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()
    assert store.counts(missing) == {}
    assert store.list_tickets(plan_id=missing) == []


# -- events ------------------------------------------------------------------------------------


def test_every_state_change_appends_exactly_one_event(store: TicketStore, clock: FakeClock) -> None:
    p = store.create_plan(plan(t("A"), t("B", ["A"])))
    a, b = ids(store, p.id)["A"], ids(store, p.id)["B"]

    lease = claim(store, p.id)
    store.fail(a, lease.epoch, "flaky")
    store.fail(a, lease.epoch, "flaky")  # a replay: no event
    clock.advance(2)
    store.sweep()
    lease = claim(store, p.id)
    store.heartbeat(a, lease.epoch)  # not a state change
    expire(store, clock)
    stale = lease
    lease = claim(store, p.id)
    with pytest.raises(StaleLease):
        store.complete(a, stale.epoch, RESULT)
    store.complete(a, lease.epoch, RESULT)
    store.sweep()  # nothing due: no event
    lease = claim(store, p.id)
    store.cancel(b)
    store.cancel(b)
    store.retry(b)
    lease = claim(store, p.id)
    store.fail(b, lease.epoch, "hopeless", retryable=False)
    with pytest.raises(Conflict):
        store.retry(a)

    events = store.events_after(0)
    assert [(e.kind, e.ticket_id) for e in events] == [
        ("plan.created", None),
        ("ticket.ready", a),
        ("ticket.claimed", a),
        ("ticket.failed", a),
        ("ticket.ready", a),
        ("ticket.claimed", a),
        ("ticket.expired", a),
        ("ticket.ready", a),
        ("ticket.claimed", a),
        ("ticket.done", a),
        ("ticket.ready", b),
        ("ticket.claimed", b),
        ("ticket.cancelled", b),
        ("ticket.retried", b),
        ("ticket.ready", b),
        ("ticket.claimed", b),
        ("ticket.dead", b),
    ]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))  # strictly increasing
    assert store.last_seq() == seqs[-1]
    assert all(e.plan_id == p.id for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert [e.data.get("epoch") for e in events if e.kind == "ticket.claimed"] == [1, 2, 3, 1, 2]
    # The same event bodies from both databases' code paths (one statement on PostgreSQL).
    assert events[2].data == {"agent": "agent-1", "epoch": 1, "attempt": 1}
    assert events[9].data == {"epoch": 3}
    assert events[10].data == {}


def test_events_after_pages_and_filters_by_plan(store: TicketStore) -> None:
    first = store.create_plan(plan(t("A"), t("B"), t("C", ["A"])))
    lease = claim(store, first.id)
    store.complete(lease.ticket.id, lease.epoch, RESULT)
    second = store.create_plan(plan(t("X"), t("Y")))
    claim(store, second.id)
    third = store.create_plan(plan(t("Z")))

    everything = store.events_after(0)
    assert len(everything) == 12
    paged: list[int] = []
    while page := store.events_after(paged[-1] if paged else 0, limit=3):
        assert len(page) <= 3
        paged.extend(e.seq for e in page)
    assert paged == [e.seq for e in everything]

    for p in (first, second, third):
        mine = store.events_after(0, plan_id=p.id)
        assert mine == [e for e in everything if e.plan_id == p.id]
        assert mine[0].kind == "plan.created"
    middle = everything[5].seq
    assert store.events_after(middle, plan_id=second.id) == [
        e for e in everything if e.seq > middle and e.plan_id == second.id
    ]
    assert store.events_after(everything[-1].seq) == []
    assert store.events_after(0, plan_id=987_654) == []


# -- reading tickets ---------------------------------------------------------------------------


def test_list_tickets_filters_and_pages(store: TicketStore) -> None:
    p = store.create_plan(
        plan(
            t("s1", phase="skeleton"),
            t("e1", ["s1"]),
            t("s2", phase="skeleton"),  # not expansion: that must build on a skeleton ticket
            t("v1", ["e1", "s2"], phase="validation"),
        )
    )
    other = store.create_plan(plan(t("x", phase="skeleton")))
    key = {**ids(store, p.id), **ids(store, other.id)}

    def keys(tickets: list[Ticket]) -> list[str]:
        return [x.key for x in tickets]

    everything = store.list_tickets()
    assert keys(everything) == ["s1", "e1", "s2", "v1", "x"]
    assert [x.id for x in everything] == sorted(key.values())
    assert keys(store.list_tickets(plan_id=other.id)) == ["x"]
    assert keys(store.list_tickets(states=[READY])) == ["s1", "s2", "x"]
    assert keys(store.list_tickets(plan_id=p.id, states=[READY])) == ["s1", "s2"]
    assert keys(store.list_tickets(states=[PENDING, READY], plan_id=p.id)) == keys(everything)[:4]
    assert keys(store.list_tickets(states=[DONE, CLAIMED])) == []
    assert keys(store.list_tickets(phase="skeleton")) == ["s1", "s2", "x"]
    assert keys(store.list_tickets(phase="skeleton", states=[READY])) == ["s1", "s2", "x"]
    assert keys(store.list_tickets(phase="expansion", states=[PENDING])) == ["e1"]
    assert keys(store.list_tickets(plan_id=p.id, phase="validation")) == ["v1"]

    pages: list[str] = []
    after = 0
    while page := store.list_tickets(after_id=after, limit=2):
        assert len(page) <= 2
        pages.extend(keys(page))
        after = page[-1].id
    assert pages == keys(everything)
    assert keys(store.list_tickets(after_id=key["s2"])) == ["v1", "x"]
    assert keys(store.list_tickets(after_id=key["s1"], states=[READY])) == ["s2", "x"]


def test_counts_by_plan_and_overall(store: TicketStore) -> None:
    first = store.create_plan(diamond())
    second = store.create_plan(plan(t("X"), t("Y")))
    claim(store, second.id)
    assert store.counts(first.id) == {"ready": 1, "pending": 3}
    assert store.counts(second.id) == {"ready": 1, "claimed": 1}
    assert store.counts() == {"ready": 2, "pending": 3, "claimed": 1}
    assert store.get_plan(second.id).counts == {"ready": 1, "claimed": 1}


# -- tokens ------------------------------------------------------------------------------------


def test_admin_and_agent_tokens_authenticate_until_revoked(store: TicketStore) -> None:
    admin = store.tokens.create(TokenKind.ADMIN, "operator")
    agent = store.tokens.create(TokenKind.AGENT, "host-1")
    assert admin.startswith("swadmin_")
    assert agent.startswith("swagent_")

    who = store.tokens.authenticate(admin)
    assert (who.kind, who.name, who.is_admin) == (TokenKind.ADMIN, "operator", True)
    assert (who.ticket_id, who.epoch) == (None, None)
    bot = store.tokens.authenticate(agent)
    assert (bot.kind, bot.name, bot.is_admin) == (TokenKind.AGENT, "host-1", False)
    assert bot.token_id != who.token_id

    listed = {row["id"]: row for row in store.tokens.list()}
    assert {row["name"] for row in listed.values()} == {"operator", "host-1"}
    assert all("token_hash" not in row for row in listed.values())

    store.tokens.revoke(bot.token_id)
    with pytest.raises(AuthError, match="revoked"):
        store.tokens.authenticate(agent)
    assert listed[bot.token_id]["revoked_at"] is None
    assert {row["id"]: row for row in store.tokens.list()}[bot.token_id]["revoked_at"] is not None
    assert store.tokens.authenticate(admin) == who


def test_malformed_or_tampered_tokens_are_refused(store: TicketStore) -> None:
    admin = store.tokens.create(TokenKind.ADMIN, "operator")
    kind, ident = parse_token(admin) or (None, "")
    assert kind is TokenKind.ADMIN
    secret = admin.rsplit("_", 1)[1]
    tampered = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    bad = [
        "",
        "nonsense",
        "Bearer " + admin,
        admin + " ",
        f"swadmin_{ident}_short",
        f"swroot_{ident}_{secret}",
        f"swadmin_{ident}-1_{secret}",  # an admin token has no epoch
        f"swlease_{ident}_{secret}",  # a lease token must have one
        f"swadmin_{2**40}_{secret}",  # beyond any row id
        tampered,
        format_token(TokenKind.AGENT, ident, secret),  # right row, wrong kind
        format_token(TokenKind.ADMIN, str(int(ident) + 1), secret),  # no such row
    ]
    for token in bad:
        with pytest.raises(AuthError):
            store.tokens.authenticate(token)
    with pytest.raises(UsageError):
        store.tokens.create(TokenKind.LEASE, "nope")


def test_a_lease_token_authenticates_as_its_ticket_and_epoch(
    store: TicketStore, clock: FakeClock
) -> None:
    p = store.create_plan(plan(t("A")))
    first = claim(store, p.id, agent="alice")
    tid = first.ticket.id
    who = store.tokens.authenticate(first.token)
    assert (who.kind, who.name, who.ticket_id, who.epoch) == (TokenKind.LEASE, "alice", tid, 1)
    assert not who.is_admin

    expire(store, clock)
    second = claim(store, p.id, agent="bob")
    assert store.tokens.authenticate(second.token).epoch == 2
    # Still itself after it expired: the epoch it names is what the writes are checked against.
    assert store.tokens.authenticate(first.token).epoch == 1
    secret = first.token.rsplit("_", 1)[1]
    with pytest.raises(AuthError):
        store.tokens.authenticate(format_token(TokenKind.LEASE, f"{tid}-2", secret))
    with pytest.raises(AuthError):
        store.tokens.authenticate(format_token(TokenKind.LEASE, f"{tid}-3", secret))
    with pytest.raises(AuthError):
        store.tokens.authenticate(first.token[:-1] + ("A" if first.token[-1] != "A" else "B"))


# -- the database ------------------------------------------------------------------------------


def test_migrate_twice_is_a_no_op(store: TicketStore, database_url: str) -> None:
    p = store.create_plan(diamond())
    version = store.migrate()
    assert store.migrate() == version == len(MIGRATIONS)
    with store.db.read() as tx:
        assert tx.scalar("SELECT COUNT(*) FROM schema_version") == len(MIGRATIONS)

    reopened = TicketStore(Database(database_url))
    try:
        assert reopened.migrate() == version
        assert reopened.get_plan(p.id) == store.get_plan(p.id)
    finally:
        reopened.close()


@pytest.mark.postgres
def test_a_scratch_database_on_the_local_socket_can_be_opened() -> None:
    # Regression: scratch_database once rebuilt the URL with urlsplit(...).geturl(), which
    # drops the empty host of a Unix-socket URL ("postgresql:///postgres" became the
    # unparseable "postgresql:/swarm_scratch_<hex>"), so every PostgreSQL run of the `store`
    # fixture errored in setup under scripts/test's default SWARM_TEST_POSTGRES_URL.
    require_postgres()
    with scratch_database(DEFAULT_ADMIN_URL) as url:
        db = Database(url)
        try:
            with db.read() as tx:
                assert tx.scalar("SELECT current_database()") == url.rsplit("/", 1)[1]
        finally:
            db.close()


def test_subscribers_hear_every_commit_that_appended_events(
    store: TicketStore, clock: FakeClock
) -> None:
    """Each commit with events is heard once, with the number of tickets it made ready; a
    commit with no events (a heartbeat, an idle sweep) is not heard."""
    heard: list[Change] = []
    store.subscribe(heard.append)

    p = store.create_plan(plan(t("A"), t("B"), t("C", ["A"]), t("D", ["A"])))
    assert heard == [Change(ready=2)]
    a = store.find_ticket(p.id, "A").id
    lease = store.claim("agent", plan_id=p.id)
    assert lease is not None
    assert lease.ticket.id == a  # rank 2
    assert heard[1:] == [Change(ready=0)]  # the claim
    store.heartbeat(a, lease.epoch)
    assert len(heard) == 2  # heartbeats append no events
    store.complete(a, lease.epoch, RESULT)
    assert heard[2:] == [Change(ready=2)]

    lease = claim(store, p.id)
    store.fail(lease.ticket.id, lease.epoch, "flaky")
    assert heard[3:] == [Change(ready=0), Change(ready=0)]  # claim, fail
    clock.advance(2)
    store.sweep()
    assert heard[5:] == [Change(ready=1)]

    lease = claim(store, p.id)
    clock.advance(TTL)
    store.sweep()
    assert heard[6:] == [Change(ready=0), Change(ready=1)]  # claim, expiry
    store.cancel(lease.ticket.id)
    assert heard[8:] == [Change(ready=0)]
    store.retry(lease.ticket.id)
    assert heard[9:] == [Change(ready=1)]
    store.sweep()
    assert len(heard) == 10  # nothing was due


# -- many agents at once -----------------------------------------------------------------------


def racing_plan(size: int, seed: int) -> PlanSpec:
    rng = random.Random(seed)
    tickets = []
    for i in range(size):
        window = range(max(0, i - 20), i)
        deps = sorted(rng.sample(window, min(len(window), rng.choice((0, 1, 1, 2, 3)))))
        tickets.append(t(f"T{i}", [f"T{d}" for d in deps], estimate=rng.choice((0.5, 1, 2))))
    return plan(*tickets, title="racing")


def test_racing_agents_finish_every_ticket_exactly_once(
    store: TicketStore, clock: FakeClock
) -> None:
    size, agents = 200, 8
    spec = racing_plan(size, seed=20240611)
    p = store.create_plan(spec, max_attempts=1000)
    key = ids(store, p.id)
    deps = {key[x.id]: [key[d] for d in x.depends_on] for x in spec.tickets}

    lock = threading.Lock()
    claims: list[tuple[int, int]] = []
    completed: Counter[int] = Counter()
    refused: Counter[str] = Counter()
    gave_up: list[int] = []
    stop = threading.Event()

    def agent(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            # Some leases are short enough for the sweeper to take back while we work.
            ttl = 2.0 if rng.random() < 0.2 else None
            lease = store.claim(f"agent-{n}", plan_id=p.id, ttl_s=ttl)
            if lease is None:
                if store.counts(p.id).get("done") == size:
                    return
                time.sleep(0.001)
                continue
            tid, epoch = lease.ticket.id, lease.epoch
            with lock:
                claims.append((tid, epoch))
            try:
                if rng.random() < 0.3:
                    store.heartbeat(tid, epoch)
                if rng.random() < 0.1:
                    store.fail(tid, epoch, f"agent-{n} gave up")
                    with lock:
                        gave_up.append(tid)
                    continue
                store.complete(tid, epoch, TicketResult(summary=f"agent-{n}"))
                with lock:
                    completed[tid] += 1
            except StaleLease:  # our lease ran out while we worked: someone else will do it
                with lock:
                    refused[f"{tid}-{epoch}"] += 1

    # A reader tails the event log while everyone writes: it must see every event, in order.
    tailed: list[int] = []
    written = threading.Event()

    def tail() -> None:
        last = start
        while True:
            finished = written.is_set()  # read before the page: after it, nothing is in flight
            page = store.events_after(last, plan_id=p.id, limit=50)
            tailed.extend(e.seq for e in page)
            if page:
                last = page[-1].seq
            elif finished:
                return
            else:
                time.sleep(0.001)

    start = store.last_seq()
    with ThreadPoolExecutor(max_workers=agents + 1) as pool:
        reader = pool.submit(tail)
        futures = [pool.submit(agent, n) for n in range(agents)]
        deadline = time.monotonic() + 120
        try:
            while not all(f.done() for f in futures):
                assert time.monotonic() < deadline, f"stuck: {store.counts(p.id)}"
                clock.advance(1)  # failed tickets come back after 2 s; leases last 30 s
                store.sweep()
                time.sleep(0.002)
        finally:
            stop.set()
            written.set()
        for f in futures:
            f.result()
        reader.result()

    assert store.counts(p.id) == {"done": size}
    assert completed == Counter(dict.fromkeys(key.values(), 1))
    assert len(set(claims)) == len(claims), "a (ticket, epoch) lease was handed out twice"
    assert all(n == 1 for n in refused.values())
    assert gave_up, "no agent failed a ticket: the retry path went untested"

    events = store.events_after(0, plan_id=p.id, limit=100_000)
    claimed = [(e.ticket_id, e.data["epoch"]) for e in events if e.kind == "ticket.claimed"]
    assert sorted(claimed) == sorted(claims)
    done_at = {e.ticket_id: e.seq for e in events if e.kind == "ticket.done"}
    assert len([e for e in events if e.kind == "ticket.done"]) == size == len(done_at)
    first_claim: dict[int, int] = {}
    for e in events:
        if e.kind == "ticket.claimed":
            first_claim.setdefault(e.ticket_id or 0, e.seq)
    for tid, needs in deps.items():
        assert all(done_at[d] < first_claim[tid] for d in needs), "claimed before a dependency"
    assert tailed == [e.seq for e in events if e.seq > start], "the tailing reader missed events"
    for x in store.list_tickets(plan_id=p.id):
        assert x.epoch == sum(1 for c in claims if c[0] == x.id)


def test_a_version_1_database_gains_the_usage_table_and_keeps_its_plans(database_url: str) -> None:
    from swarmstack.db import migrate

    db = Database(database_url)
    try:
        assert migrate(db, MIGRATIONS[:1]) == 1
        with db.tx() as tx:  # a plan as version 1 stored it: no budget column yet
            tx.execute(
                "INSERT INTO plans (title, description, created_at, spec) "
                "VALUES ('old', '', 1.0, '{\"title\": \"old\", \"tickets\": []}')"
            )
    finally:
        db.close()
    upgraded = TicketStore(Database(database_url))
    try:
        assert upgraded.migrate() == len(MIGRATIONS)
        [plan] = upgraded.list_plans()
        assert plan.title == "old" and plan.budget_usd is None and plan.spent_usd == 0
        assert upgraded.usage(plan_id=plan.id).calls == 0
    finally:
        upgraded.close()
