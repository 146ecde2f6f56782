"""The merge queue's states in the store: ``merging`` until the work is in the integration
branch, a fix attempt when it conflicts or fails its checks, dead after the last attempt; and
strict waves. Run against SQLite and PostgreSQL alike (the ``store`` fixture)."""

from __future__ import annotations

import pytest

from conftest import FakeClock, require_postgres
from swarmstack.bench.pg import scratch_database
from swarmstack.db import NOTIFY_CHANNEL, Database
from swarmstack.errors import Conflict, NotFound
from swarmstack.tickets.models import FixRequest, TicketResult, TicketState
from swarmstack.tickets.store import TicketStore
from test_store import diamond, ids, plan, t

MERGING, READY, DONE, DEAD = (
    TicketState.MERGING,
    TicketState.READY,
    TicketState.DONE,
    TicketState.DEAD,
)
BRANCH = TicketResult(summary="did it", branch="swarm/1")


def conflict(base_sha: str = "b" * 40) -> FixRequest:
    return FixRequest(
        reason="conflict",
        base="main",
        base_sha=base_sha,
        head_sha="h" * 40,
        conflicts=["src/app.py"],
        details="CONFLICT (content): Merge conflict in src/app.py",
    )


def kinds(store: TicketStore, ticket_id: int) -> list[str]:
    return [e.kind for e in store.events_after(0, limit=10_000) if e.ticket_id == ticket_id]


def test_a_branch_is_merging_until_merged_and_only_then_frees_its_dependents(
    store: TicketStore,
) -> None:
    p = store.create_plan(diamond())
    key = ids(store, p.id)
    lease = store.claim("a1")
    assert lease is not None and lease.ticket.key == "A"
    merging = store.complete(lease.ticket.id, lease.epoch, BRANCH, merge=True)
    assert merging.state is MERGING and merging.result == BRANCH
    # The same completion again (a lost response) is answered alike.
    assert store.complete(lease.ticket.id, lease.epoch, BRANCH, merge=True).state is MERGING
    assert store.claim("a2") is None  # B and C wait for A's merge, not its completion
    assert [x.key for x in store.merging(p.id)] == ["A"]
    assert store.get_plan(p.id).counts["merging"] == 1

    done = store.merged(key["A"], sha="c" * 40, how="merge")
    assert done.state is DONE and done.fix is None
    ready = {x.key for x in store.list_tickets(plan_id=p.id) if x.state is READY}
    assert ready == {"B", "C"}
    assert store.merging(p.id) == []
    assert kinds(store, key["A"])[-3:] == ["ticket.merging", "ticket.merged", "ticket.done"]
    with pytest.raises(Conflict, match="is done, not merging"):
        store.merged(key["A"], sha="c" * 40, how="merge")


def test_a_conflict_sends_the_ticket_back_as_a_fix_attempt_then_dead_needing_attention(
    store: TicketStore,
) -> None:
    store.create_plan(plan(t("A")))
    for attempt in (1, 2, 3):
        lease = store.claim("a1")
        assert lease is not None and lease.ticket.attempts == attempt
        if attempt > 1:  # the agent is told what went wrong
            assert lease.ticket.fix is not None and lease.ticket.fix.conflicts == ["src/app.py"]
        store.complete(lease.ticket.id, lease.epoch, BRANCH, merge=True)
        back = store.send_back(lease.ticket.id, conflict())
        assert back.last_error == "merging into main conflicted in src/app.py"
        assert back.state is (DEAD if attempt == 3 else READY)
    events = [e for e in store.events_after(0, limit=1000) if e.ticket_id == back.id]
    assert [e.kind for e in events].count("merge.conflict") == 3
    dead = events[-1]
    assert dead.kind == "ticket.dead" and dead.data["attention"] is True
    assert store.claim("a1") is None
    retried = store.retry(back.id)  # a person looked: the fix is kept for the next agent
    assert retried.state is READY and retried.fix is not None


def test_failing_checks_say_the_command_and_exit_code(store: TicketStore) -> None:
    store.create_plan(plan(t("A")))
    lease = store.claim("a1")
    assert lease is not None
    store.complete(lease.ticket.id, lease.epoch, BRANCH, merge=True)
    fix = FixRequest(
        reason="checks",
        base="main",
        base_sha="b" * 40,
        head_sha="h" * 40,
        details="FAILED (failures=1)",
        command="python3 -m unittest",
        exit_code=1,
    )
    back = store.send_back(lease.ticket.id, fix)
    assert back.state is READY and back.fix == fix
    assert back.last_error == "the checks failed on the merge into main (exit code 1)"
    with pytest.raises(Conflict, match="is ready, not merging"):
        store.send_back(lease.ticket.id, fix)


def test_strict_waves_hold_the_next_wave_until_the_last_one_is_finished(
    store: TicketStore,
) -> None:
    # Wave 0: A (long) and B; wave 1: C after B. C is ready once B is done, but strict waves
    # hold it until A is finished too.
    spec = plan(t("A", estimate=5), t("B"), t("C", ["B"])).model_copy(update={"strict_waves": True})
    p = store.create_plan(spec)
    assert store.get_plan(p.id).strict_waves is True
    waves = {x.key: x.wave for x in store.list_tickets(plan_id=p.id)}
    assert waves == {"A": 0, "B": 0, "C": 1}
    woken: list[int] = []
    store.subscribe(lambda change: woken.append(change.ready))
    a, b = store.claim("a1"), store.claim("a2")
    assert a is not None and b is not None and {a.ticket.key, b.ticket.key} == {"A", "B"}
    if a.ticket.key == "B":
        a, b = b, a
    store.complete(b.ticket.id, b.epoch, TicketResult())
    assert store.claim("a2") is None  # C is ready but wave 0 is not finished
    woken.clear()
    store.complete(a.ticket.id, a.epoch, TicketResult())
    assert max(woken) >= 1  # the claimers waiting for C are woken
    c = store.claim("a2")
    assert c is not None and c.ticket.key == "C"


@pytest.mark.postgres
def test_on_postgresql_a_wave_that_opens_notifies_every_replica(clock: FakeClock) -> None:
    # Servers on PostgreSQL hear of ready tickets only through NOTIFY (each replica LISTENs):
    # a wave that opens must say so there, or its claimers sleep out their long-poll nap.
    import psycopg

    require_postgres()
    with scratch_database() as url:
        store = TicketStore(Database(url), clock=clock)
        store.migrate()
        spec = plan(t("A", estimate=5), t("B"), t("C", ["B"]))
        store.create_plan(spec.model_copy(update={"strict_waves": True}))
        a, b = store.claim("a1"), store.claim("a2")
        assert a is not None and b is not None
        if a.ticket.key == "B":
            a, b = b, a
        store.complete(b.ticket.id, b.epoch, TicketResult())
        with psycopg.connect(store.db.conninfo, autocommit=True) as listener:
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            store.complete(a.ticket.id, a.epoch, TicketResult())  # A frees no dependent
            heard = [int(n.payload) for n in listener.notifies(timeout=1.0, stop_after=2)]
        store.close()
    assert max(heard) >= 1, heard


def test_a_paused_plan_hands_out_nothing_until_resumed_and_its_work_at_hand_finishes(
    store: TicketStore,
) -> None:
    p = store.create_plan(plan(t("A"), t("B"), t("C", ["A"])))
    other = store.create_plan(plan(t("X")))
    a = store.claim("a1", plan_id=p.id)
    assert a is not None
    paused = store.pause_plan(p.id, reason="look at it")
    assert paused.paused is True
    assert store.pause_plan(p.id).paused is True  # twice: the same, one event
    assert store.claim("a2", plan_id=p.id) is None  # B is ready but held
    x = store.claim("a2")  # another plan's tickets still go out
    assert x is not None and x.ticket.plan_id == other.id
    assert store.claim("a3") is None
    # The ticket at work finishes, and frees its dependent, which is held too.
    store.complete(a.ticket.id, a.epoch, TicketResult())
    held = {x.key: x.state for x in store.list_tickets(plan_id=p.id)}
    assert held["C"] is READY and held["B"] is READY
    assert store.claim("a3") is None

    woken: list[int] = []
    store.subscribe(lambda change: woken.append(change.ready))
    resumed = store.resume_plan(p.id)
    assert resumed.paused is False and max(woken) == 2  # both held tickets, at once
    assert store.resume_plan(p.id).paused is False
    got = {store.claim("a3").ticket.key, store.claim("a4").ticket.key}  # type: ignore[union-attr]
    assert got == {"B", "C"}
    plan_events = [
        (e.kind, e.data) for e in store.events_after(0, limit=10_000, plan_id=p.id)
        if e.kind.startswith("plan.p") or e.kind.startswith("plan.r")
    ]  # fmt: skip
    assert plan_events == [
        ("plan.paused", {"reason": "look at it"}),
        ("plan.resumed", {"ready": 2}),
    ]
    with pytest.raises(NotFound, match="no plan 999"):
        store.pause_plan(999)
    with pytest.raises(NotFound, match="no plan 999"):
        store.resume_plan(999)


def test_a_paused_strict_plan_stays_held_when_its_wave_opens(store: TicketStore) -> None:
    spec = plan(t("A"), t("B", ["A"])).model_copy(update={"strict_waves": True})
    p = store.create_plan(spec)
    a = store.claim("a1")
    assert a is not None
    store.pause_plan(p.id)
    store.complete(a.ticket.id, a.epoch, TicketResult())  # wave 1 opens, but the plan is paused
    assert store.claim("a2") is None
    store.resume_plan(p.id)
    b = store.claim("a2")
    assert b is not None and b.ticket.key == "B"


def test_without_strict_waves_a_ticket_runs_as_soon_as_its_dependencies_are_done(
    store: TicketStore,
) -> None:
    spec = plan(t("A", estimate=5), t("B"), t("C", ["B"]))
    store.create_plan(spec)
    a, b = store.claim("a1"), store.claim("a2")
    assert a is not None and b is not None
    if a.ticket.key == "B":
        a, b = b, a
    store.complete(b.ticket.id, b.epoch, TicketResult())
    c = store.claim("a2")
    assert c is not None and c.ticket.key == "C"
