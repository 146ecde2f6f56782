"""The HTTP API in process (FastAPI's TestClient), against SQLite and PostgreSQL.

Covers the agent protocol (claim, long-poll, heartbeat, complete, fail), who may do what with
which token, the JSON shape of every error, body limits, plans, tickets, events (pages and the
WebSocket), ``/metrics``, ``/v1/health`` and ``/openapi.json``.

Tests that depend on the database take ``api`` (parametrized over both); tests of the HTTP edge
alone take ``lite`` (SQLite only).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from swarmstack.api import create_app
from swarmstack.auth import TokenKind, format_token, new_secret
from swarmstack.config import Settings
from swarmstack.tickets.store import TicketStore

ADMIN = format_token(TokenKind.ADMIN, "0", new_secret())  # "swadmin_0_" + 43 url-safe chars
MAX_BODY = 16 * 1024
MAX_PLAN = 256 * 1024
JOIN_S = 120.0  # only a hang detector: a long-poll that never returns fails the test


@pytest.fixture(autouse=True)
def _no_swarm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read SWARM_* variables; the tests set everything they need themselves."""
    import os

    for name in list(os.environ):
        if name.startswith("SWARM_") and name != "SWARM_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


# -- the app under test --------------------------------------------------------------------


@dataclass
class Api:
    client: TestClient
    app: FastAPI
    store: TicketStore
    settings: Settings

    def call(
        self,
        method: str,
        path: str,
        token: str | None = ADMIN,
        *,
        json_body: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
        content: Any = None,
    ) -> Any:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        return self.client.request(
            method, path, json=json_body, params=params, headers=all_headers, content=content
        )

    def get(self, path: str, token: str | None = ADMIN, **kwargs: Any) -> Any:
        return self.call("GET", path, token, **kwargs)

    def post(self, path: str, token: str | None = ADMIN, **kwargs: Any) -> Any:
        return self.call("POST", path, token, **kwargs)

    # shortcuts that expect success ---------------------------------------------------------

    def plan(self, spec: dict[str, Any], **params: Any) -> dict[str, Any]:
        r = self.post("/v1/plans", json_body=spec, params=params or None)
        assert r.status_code == 201, r.text
        return r.json()

    def token(self, kind: str = "agent", name: str = "agent-1") -> str:
        r = self.post("/v1/tokens", json_body={"kind": kind, "name": name})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def claim(self, token: str = ADMIN, **body: Any) -> dict[str, Any]:
        r = self.post("/v1/claims", token, json_body={"agent": "agent-1", **body})
        assert r.status_code == 200, r.text
        return r.json()

    def complete(self, lease: dict[str, Any], **result: Any) -> dict[str, Any]:
        r = self.post(
            f"/v1/tickets/{lease['ticket']['id']}/complete",
            lease["token"],
            json_body={"epoch": lease["epoch"], "result": result},
        )
        assert r.status_code == 200, r.text
        return r.json()

    def tickets(self, **params: Any) -> dict[str, dict[str, Any]]:
        r = self.get("/v1/tickets", params=params)
        assert r.status_code == 200, r.text
        return {t["key"]: t for t in r.json()["tickets"]}

    def events(self, after: int = 0, **params: Any) -> list[dict[str, Any]]:
        r = self.get("/v1/events", params={"after": after, **params})
        assert r.status_code == 200, r.text
        return r.json()["events"]


def make_settings(data_dir: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        admin_token=ADMIN,
        max_body_bytes=MAX_BODY,
        max_plan_bytes=MAX_PLAN,
    )


@contextmanager
def running(settings: Settings) -> Iterator[Api]:
    store = TicketStore.from_settings(settings)
    try:
        app = create_app(settings, store=store)
        with TestClient(app) as client:
            yield Api(client, app, store, settings)
    finally:
        store.close()


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    """The app on a fresh database of each kind, lifespan (migrations, sweeper) running."""
    with running(make_settings(tmp_path / "data", database_url)) as a:
        yield a


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite only, for the HTTP edge where the database does not matter."""
    with running(make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'lite.db'}")) as a:
        yield a


# -- plans used below ------------------------------------------------------------------------


def tk(key: str, deps: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    return {"id": key, "title": f"ticket {key}", "depends_on": list(deps), **fields}


def spec(*tickets: dict[str, Any], title: str = "api test plan") -> dict[str, Any]:
    return {"title": title, "description": "for the API tests", "tickets": list(tickets)}


def diamond(title: str = "diamond") -> dict[str, Any]:
    """A <- B, A <- C, (B, C) <- D; ranks A 8, C 7, B 6, D 4."""
    return spec(
        tk("A", estimate=1, phase="skeleton"),
        tk("B", ["A"], estimate=2),
        tk("C", ["A"], estimate=3),
        tk("D", ["B", "C"], estimate=4, phase="validation"),
        title=title,
    )


def chain(title: str = "chain") -> dict[str, Any]:
    return spec(tk("A"), tk("B", ["A"]), title=title)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Every 4xx answer is a JSON object with a string ``error`` and ``message``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


# -- the agent protocol ----------------------------------------------------------------------


def test_agents_at_work_show_their_sandboxes_and_an_admin_can_stop_one(api: Api) -> None:
    plan = api.plan(chain())
    agent = api.token("agent", "host-1")
    assert api.get("/v1/agents").json() == []
    lease = api.claim(agent, agent="sandbox-7", plan_id=plan["id"])
    ticket_id, beat = lease["ticket"]["id"], f"/v1/tickets/{lease['ticket']['id']}/heartbeat"
    usage = {"backend": "bwrap", "sandbox_id": "sb-1", "memory_bytes": 5 << 20, "cpu_percent": 40}
    r = api.post(beat, lease["token"], json_body={"epoch": 1, "sandbox": usage})
    assert r.status_code == 200, r.text
    # A beat without a report keeps the last one.
    assert api.post(beat, lease["token"], json_body={"epoch": 1}).status_code == 200
    [seen] = api.get("/v1/agents", params={"plan_id": plan["id"]}).json()
    assert (seen["agent"], seen["ticket_key"], seen["attempt"]) == ("sandbox-7", "A", 1)
    assert seen["stale"] is False and seen["fixing"] is False
    assert seen["sandbox"] == {**usage, "processes": None}
    assert api.get("/v1/agents", params={"plan_id": 999}).json() == []
    # Only an admin sees the agents or stops one; bad reports are refused with a reason.
    assert_error(api.get("/v1/agents", agent), 403)
    assert_error(api.post(f"/v1/tickets/{ticket_id}/stop", agent), 403)
    bad = api.post(beat, lease["token"], json_body={"epoch": 1, "sandbox": {"memory_bytes": -1}})
    assert "memory_bytes" in assert_error(bad, 422)["message"]

    r = api.post(f"/v1/tickets/{ticket_id}/stop", json_body={"reason": "looks stuck"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["attempts"]) == ("ready", 0)
    assert_error(api.post(beat, lease["token"], json_body={"epoch": 1}), 409)
    assert api.get("/v1/agents").json() == []
    again = api.post(f"/v1/tickets/{ticket_id}/stop")
    assert "no agent is at work on it" in assert_error(again, 409)["message"]
    assert_error(api.post("/v1/tickets/99999/stop"), 404)
    # The next attempt does not show the last one's sandbox.
    second = api.claim(agent, agent="sandbox-8", plan_id=plan["id"])
    assert second["epoch"] == 2
    [fresh] = api.get("/v1/agents").json()
    assert fresh["agent"] == "sandbox-8" and fresh["sandbox"] is None
    r = api.post(
        f"/v1/tickets/{ticket_id}/fail",
        second["token"],
        json_body={"epoch": 2, "reason": "tests failed", "retryable": True},
    )
    assert r.status_code == 200, r.text
    attempts = api.get(f"/v1/tickets/{ticket_id}/attempts").json()
    assert [(a["epoch"], a["agent"], a["outcome"], a["error"]) for a in attempts] == [
        (1, "sandbox-7", "released", None),
        (2, "sandbox-8", "failed", "tests failed"),
    ]
    assert all(a["ended_at"] >= a["claimed_at"] for a in attempts)
    assert_error(api.get("/v1/tickets/99999/attempts"), 404)


def test_claim_heartbeat_complete_round_trip(api: Api) -> None:
    plan = api.plan(diamond())
    assert plan["ticket_count"] == 4
    assert plan["counts"] == {"ready": 1, "pending": 3}
    agent = api.token("agent", "host-1")

    r = api.post("/v1/claims", agent, json_body={"agent": "worker-1", "plan_id": plan["id"]})
    assert r.status_code == 200, r.text
    lease = r.json()
    ticket = lease["ticket"]
    assert ticket["key"] == "A"
    assert ticket["state"] == "claimed"
    assert ticket["lease_agent"] == "worker-1"
    assert lease["epoch"] == ticket["epoch"] == 1
    assert lease["ttl_s"] == api.settings.lease_ttl_s
    assert lease["token"].startswith(f"swlease_{ticket['id']}-1_")

    # The lease token reads its own ticket.
    own = api.get(f"/v1/tickets/{ticket['id']}", lease["token"])
    assert own.status_code == 200
    assert own.json()["state"] == "claimed"

    r = api.post(
        f"/v1/tickets/{ticket['id']}/heartbeat",
        lease["token"],
        json_body={"epoch": 1, "ttl_s": 600},
    )
    assert r.status_code == 200, r.text
    beat = r.json()
    assert beat["ticket_id"] == ticket["id"]
    assert beat["epoch"] == 1
    assert beat["expires_at"] > lease["expires_at"]
    assert api.get(f"/v1/tickets/{ticket['id']}").json()["lease_expires_at"] == beat["expires_at"]

    result = {"summary": "did A", "branch": "swarm/a", "pull_request": "#1", "cost_usd": 0.5}
    done = api.complete(lease, **result)
    assert done["state"] == "done"
    assert done["result"] == result
    assert done["lease_expires_at"] is None

    tickets = api.tickets(plan_id=plan["id"])
    assert {k: t["state"] for k, t in tickets.items()} == {
        "A": "done",
        "B": "ready",
        "C": "ready",
        "D": "pending",
    }
    assert api.get(f"/v1/plans/{plan['id']}").json()["counts"] == {
        "done": 1,
        "ready": 2,
        "pending": 1,
    }
    kinds = [(e["kind"], e["ticket_id"]) for e in api.events(plan_id=plan["id"])]
    ids = {k: t["id"] for k, t in tickets.items()}
    assert kinds == [
        ("plan.created", None),
        ("ticket.ready", ids["A"]),
        ("ticket.claimed", ids["A"]),
        ("ticket.done", ids["A"]),
        ("ticket.ready", ids["B"]),
        ("ticket.ready", ids["C"]),
    ]

    # The rest of the plan, in rank order, with an admin token claiming too.
    order = []
    while (r := api.post("/v1/claims", json_body={"agent": "admin"})).status_code == 200:
        order.append(r.json()["ticket"]["key"])
        api.complete(r.json())
    assert r.status_code == 204
    assert order == ["C", "B", "D"]
    assert api.get(f"/v1/plans/{plan['id']}").json()["counts"] == {"done": 4}


def test_empty_claim_is_204_with_no_body(api: Api) -> None:
    agent = api.token()
    r = api.post("/v1/claims", agent, json_body={"agent": "a"})
    assert r.status_code == 204
    assert r.content == b""

    plan = api.plan(chain())
    api.claim(agent, plan_id=plan["id"])
    # B waits for A: nothing else is ready, in this plan or any.
    assert api.post("/v1/claims", agent, json_body={"agent": "a"}).status_code == 204
    other = api.plan(spec(tk("X"), title="other"))
    r = api.post("/v1/claims", agent, json_body={"agent": "a", "plan_id": plan["id"]})
    assert r.status_code == 204
    r = api.post("/v1/claims", agent, json_body={"agent": "a", "plan_id": other["id"]})
    assert r.status_code == 200
    assert r.json()["ticket"]["key"] == "X"


def test_fail_retryable_then_not_retryable(api: Api) -> None:
    plan = api.plan(spec(tk("A")), max_attempts=5)
    lease = api.claim(plan_id=plan["id"])
    tid = lease["ticket"]["id"]
    r = api.post(
        f"/v1/tickets/{tid}/fail", lease["token"], json_body={"epoch": 1, "reason": "flaky"}
    )
    assert r.status_code == 200, r.text
    failed = r.json()
    assert failed["state"] == "failed"
    assert failed["last_error"] == "flaky"
    assert failed["retry_at"] is not None
    assert failed["max_attempts"] == 5

    # Retry by hand skips the backoff; a non-retryable failure is final.
    assert api.post(f"/v1/tickets/{tid}/retry").json()["state"] == "ready"
    lease = api.claim(plan_id=plan["id"])
    assert lease["epoch"] == 2
    r = api.post(
        f"/v1/tickets/{tid}/fail",
        lease["token"],
        json_body={"epoch": 2, "reason": "broken", "retryable": False},
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "dead"
    assert r.json()["retry_at"] is None


def test_long_poll_claim_returns_when_a_dependency_completes(api: Api) -> None:
    plan = api.plan(chain())
    first = api.claim(plan_id=plan["id"])
    agent = api.token()
    waker = api.app.state.swarm.waker
    outcome: dict[str, Any] = {}

    def long_poll() -> None:
        try:
            outcome["response"] = api.post(
                "/v1/claims", agent, json_body={"agent": "waiter", "wait_s": 60}
            )
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    waiter = threading.Thread(target=long_poll, daemon=True)
    waiter.start()
    deadline = time.monotonic() + JOIN_S
    while waker.waiting == 0 and waiter.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waker.waiting == 1, outcome  # the claim is parked, not answered

    metrics = api.get("/metrics", None).text
    assert "swarm_claim_waiters 1.0" in metrics

    api.complete(first)  # makes B ready, which must wake the parked claim
    waiter.join(JOIN_S)
    assert not waiter.is_alive(), "the long-poll did not return"
    assert "error" not in outcome, outcome
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["ticket"]["key"] == "B"
    assert response.json()["ticket"]["lease_agent"] == "waiter"
    assert waker.waiting == 0


def test_long_poll_claim_with_nothing_ready_ends_with_204(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'w.db'}")
    settings = settings.model_copy(update={"claim_wait_max_s": 0.2})
    with running(settings) as a:
        # wait_s is capped by the server's claim_wait_max_s.
        r = a.post("/v1/claims", json_body={"agent": "a", "wait_s": 3600})
        assert r.status_code == 204
        assert a.app.state.swarm.waker.waiting == 0
        assert 'swarm_claims_total{outcome="empty"} 1.0' in a.get("/metrics", None).text


# -- tokens and who may do what ----------------------------------------------------------------


def test_missing_token_is_401_with_www_authenticate(lite: Api) -> None:
    for method, path in [
        ("GET", "/v1/tickets"),
        ("GET", "/v1/plans"),
        ("POST", "/v1/claims"),
        ("GET", "/v1/events"),
        ("GET", "/v1/tokens"),
    ]:
        r = lite.call(method, path, None, json_body={"agent": "a"})
        body = assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert "bearer" in body["message"].lower()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer not-a-token",
        "Bearer swadmin_x_" + "a" * 43,
        "Bearer swagent_1-2_" + "a" * 43,  # a lease-shaped id on an agent token
        "Bearer swlease_1_" + "a" * 43,  # a lease token without an epoch
        "Bearer swadmin_0_short",
        "Bearer swagent_99999999999_" + "a" * 43,  # beyond a 32-bit id
        "Basic YWRtaW46YWRtaW4=",
        "Bearer",
        "",
    ],
)
def test_malformed_or_foreign_credentials_are_401(lite: Api, header: str) -> None:
    r = lite.get("/v1/tickets", None, headers={"Authorization": header})
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"


def test_unknown_and_revoked_tokens_are_401(api: Api) -> None:
    unknown = format_token(TokenKind.AGENT, "4242", new_secret())
    assert_error(api.post("/v1/claims", unknown, json_body={"agent": "a"}), 401)

    agent = api.token("agent", "soon-revoked")
    # The right id with the wrong secret is as unknown as a wrong id.
    tid = int(agent.split("_")[1])
    forged = format_token(TokenKind.AGENT, str(tid), new_secret())
    assert_error(api.post("/v1/claims", forged, json_body={"agent": "a"}), 401)

    assert api.post("/v1/claims", agent, json_body={"agent": "a"}).status_code == 204
    listed = {t["id"]: t for t in api.get("/v1/tokens").json()}
    assert listed[tid]["name"] == "soon-revoked"
    assert listed[tid]["revoked_at"] is None
    assert "token" not in listed[tid] and "token_hash" not in listed[tid]

    r = api.call("DELETE", f"/v1/tokens/{tid}")
    assert r.status_code == 204
    assert r.content == b""
    body = assert_error(api.post("/v1/claims", agent, json_body={"agent": "a"}), 401)
    assert "revoked" in body["message"]
    assert api.get("/v1/tokens").json()[-1]["revoked_at"] is not None
    assert_error(api.call("DELETE", "/v1/tokens/999999"), 404, "not_found")

    # An admin token issued through the API is an admin too.
    admin2 = api.token("admin", "ops")
    assert api.get("/v1/plans", admin2).status_code == 200


def test_agent_token_may_only_claim(api: Api) -> None:
    plan = api.plan(diamond())
    agent = api.token()
    tid = api.tickets()["A"]["id"]
    forbidden = [
        ("GET", "/v1/tickets", None),
        ("GET", f"/v1/tickets/{tid}", None),
        ("GET", "/v1/plans", None),
        ("GET", f"/v1/plans/{plan['id']}", None),
        ("GET", f"/v1/plans/{plan['id']}/waves", None),
        ("POST", "/v1/plans", diamond()),
        ("POST", f"/v1/tickets/{tid}/cancel", None),
        ("POST", f"/v1/tickets/{tid}/retry", None),
        ("GET", "/v1/tokens", None),
        ("POST", "/v1/tokens", {"kind": "admin", "name": "escalate"}),
        ("DELETE", "/v1/tokens/1", None),
        ("GET", "/v1/events", None),
        ("POST", f"/v1/tickets/{tid}/heartbeat", {"epoch": 1}),
        ("POST", f"/v1/tickets/{tid}/complete", {"epoch": 1}),
        ("POST", f"/v1/tickets/{tid}/fail", {"epoch": 1, "reason": "no"}),
    ]
    for method, path, body in forbidden:
        r = api.call(method, path, agent, json_body=body)
        assert_error(r, 403, "forbidden")
    # Nothing of that happened.
    assert len(api.get("/v1/plans").json()) == 1
    assert [t["kind"] for t in api.get("/v1/tokens").json()] == ["agent"]
    assert api.tickets()["A"]["state"] == "ready"

    # What an agent token may do: claim.
    lease = api.claim(agent)
    assert lease["ticket"]["key"] == "A"


def test_lease_token_reaches_only_its_own_ticket(api: Api) -> None:
    api.plan(spec(tk("A"), tk("B")))
    first = api.claim()
    second = api.claim()
    mine, theirs = first["ticket"]["id"], second["ticket"]["id"]
    token = first["token"]

    assert api.get(f"/v1/tickets/{mine}", token).status_code == 200
    assert_error(api.get(f"/v1/tickets/{theirs}", token), 403, "forbidden")
    for op, body in [
        ("heartbeat", {"epoch": 1}),
        ("complete", {"epoch": 1}),
        ("fail", {"epoch": 1, "reason": "not mine"}),
    ]:
        assert_error(api.post(f"/v1/tickets/{theirs}/{op}", token, json_body=body), 403)
    assert_error(api.post("/v1/claims", token, json_body={"agent": "a"}), 403, "forbidden")
    for path in ["/v1/tickets", "/v1/plans", "/v1/events", "/v1/tokens"]:
        assert_error(api.get(path, token), 403, "forbidden")
    assert_error(api.post(f"/v1/tickets/{mine}/cancel", token), 403, "forbidden")
    assert api.get(f"/v1/tickets/{theirs}").json()["state"] == "claimed"

    r = api.post(f"/v1/tickets/{mine}/heartbeat", token, json_body={"epoch": 1})
    assert r.status_code == 200
    assert api.complete(first)["state"] == "done"


def test_a_lease_token_works_on_every_replica_and_a_forged_one_on_none(
    tmp_path: Path, database_url: str
) -> None:
    """The replica that hands out a lease trusts its token without a look-up; any other
    replica checks it against the database. Neither accepts a token with another secret."""
    with (
        running(make_settings(tmp_path / "one", database_url)) as one,
        running(make_settings(tmp_path / "two", database_url)) as two,
    ):
        one.plan(spec(tk("A")))
        lease = one.claim()
        tid = lease["ticket"]["id"]
        kind_and_id, _, secret = lease["token"].rpartition("_")
        forged = f"{kind_and_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
        for replica in (one, two):
            err = assert_error(
                replica.post(f"/v1/tickets/{tid}/heartbeat", forged, json_body={"epoch": 1}),
                401,
            )
            assert "unknown token" in err["message"]
        r = two.post(f"/v1/tickets/{tid}/heartbeat", lease["token"], json_body={"epoch": 1})
        assert r.status_code == 200, r.text
        assert two.complete(lease)["state"] == "done"
        assert one.complete(lease)["state"] == "done"  # the same answer, from the other one


def test_body_epoch_must_match_the_lease_token(api: Api) -> None:
    api.plan(spec(tk("A")))
    lease = api.claim()
    tid = lease["ticket"]["id"]
    for op, body in [
        ("heartbeat", {"epoch": 2}),
        ("complete", {"epoch": 2}),
        ("fail", {"epoch": 7, "reason": "x"}),
    ]:
        err = assert_error(api.post(f"/v1/tickets/{tid}/{op}", lease["token"], json_body=body), 409)
        assert err["error"] == "stale_lease"
    assert api.get(f"/v1/tickets/{tid}").json()["state"] == "claimed"


def test_lease_is_stale_after_cancel_and_after_a_new_claim(api: Api) -> None:
    api.plan(spec(tk("A")))
    old = api.claim()
    tid = old["ticket"]["id"]
    cancelled = api.post(f"/v1/tickets/{tid}/cancel", json_body={"reason": "changed my mind"})
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["last_error"] == "changed my mind"
    # Cancelling twice is not an error.
    assert api.post(f"/v1/tickets/{tid}/cancel").json()["state"] == "cancelled"

    for op, body in [
        ("heartbeat", {"epoch": 1}),
        ("complete", {"epoch": 1}),
        ("fail", {"epoch": 1, "reason": "x"}),
    ]:
        r = api.post(f"/v1/tickets/{tid}/{op}", old["token"], json_body=body)
        assert_error(r, 409, "stale_lease")

    assert api.post(f"/v1/tickets/{tid}/retry").json()["state"] == "ready"
    new = api.claim()
    assert new["epoch"] == 2
    r = api.post(f"/v1/tickets/{tid}/heartbeat", old["token"], json_body={"epoch": 1})
    body = assert_error(r, 409, "stale_lease")
    assert "epoch" in body["message"]
    # With an admin token the fence is the body's epoch alone.
    r = api.post(f"/v1/tickets/{tid}/complete", json_body={"epoch": 1})
    assert_error(r, 409, "stale_lease")
    assert api.complete(new)["state"] == "done"
    # A done ticket cannot be cancelled.
    assert_error(api.post(f"/v1/tickets/{tid}/cancel"), 409, "conflict")


def test_repeated_completion_is_idempotent_and_a_different_one_conflicts(api: Api) -> None:
    api.plan(chain())
    lease = api.claim()
    first = api.complete(lease, summary="done", branch="b1")
    again = api.complete(lease, summary="done", branch="b1")
    assert again == first
    tid = lease["ticket"]["id"]
    r = api.post(
        f"/v1/tickets/{tid}/complete",
        lease["token"],
        json_body={"epoch": lease["epoch"], "result": {"summary": "something else"}},
    )
    assert_error(r, 409, "conflict")
    r = api.post(
        f"/v1/tickets/{tid}/fail", lease["token"], json_body={"epoch": 1, "reason": "late"}
    )
    assert_error(r, 409)
    # The dependent was made ready once, not once per repeat.
    readies = [e for e in api.events() if e["kind"] == "ticket.ready"]
    assert len(readies) == 2
    assert api.tickets()["B"]["state"] == "ready"


def test_operator_errors_on_tickets(api: Api) -> None:
    api.plan(chain())
    tid = api.tickets()["A"]["id"]
    body = assert_error(api.post(f"/v1/tickets/{tid}/retry"), 409, "conflict")
    assert "ready" in body["message"]
    assert_error(api.get("/v1/tickets/2147483647"), 404, "not_found")
    assert_error(api.post("/v1/tickets/2147483647/retry"), 404, "not_found")
    assert_error(api.post("/v1/tickets/2147483647/cancel"), 404, "not_found")
    r = api.post("/v1/tickets/2147483647/heartbeat", json_body={"epoch": 1})
    assert_error(r, 404, "not_found")


# -- the shape of errors -----------------------------------------------------------------------


def test_every_4xx_is_json_with_error_and_message(lite: Api) -> None:
    agent = lite.token()
    cases: list[tuple[str, Any, int, str]] = [
        (
            "400 a JSON body that is not UTF-8",
            lambda: lite.post(
                "/v1/claims",
                content=b'{"agent": "\xff"}',
                headers={"content-type": "application/json"},
            ),
            400,
            "bad_request",
        ),
        ("401", lambda: lite.get("/v1/tickets", None), 401, "unauthorized"),
        ("403", lambda: lite.get("/v1/tickets", agent), 403, "forbidden"),
        ("404 a missing ticket", lambda: lite.get("/v1/tickets/12345"), 404, "not_found"),
        ("404 a missing plan", lambda: lite.get("/v1/plans/12345"), 404, "not_found"),
        ("404 no such route", lambda: lite.get("/v1/nowhere"), 404, "not_found"),
        ("405", lambda: lite.call("PUT", "/v1/tickets"), 405, "method_not_allowed"),
        ("409", lambda: lite.post("/v1/tickets/1/retry"), 409, "conflict"),
        (
            "413",
            lambda: lite.post("/v1/claims", json_body={"agent": "a" * (MAX_BODY + 10)}),
            413,
            "payload_too_large",
        ),
        (
            "422 a body field out of range",
            lambda: lite.post("/v1/claims", json_body={"agent": "a", "wait_s": -1}),
            422,
            "invalid_request",
        ),
        (
            "422 an unknown body field",
            lambda: lite.post("/v1/claims", json_body={"agent": "a", "extra": 1}),
            422,
            "invalid_request",
        ),
        (
            "422 JSON that does not parse",
            lambda: lite.post(
                "/v1/claims", content=b"{", headers={"content-type": "application/json"}
            ),
            422,
            "invalid_request",
        ),
        ("422 a bad path id", lambda: lite.get("/v1/tickets/0"), 422, "invalid_request"),
        ("422 a bad query", lambda: lite.get("/v1/tickets?limit=x"), 422, "invalid_request"),
        (
            "422 an invalid plan",
            lambda: lite.post("/v1/plans", json_body=spec(tk("A", ["A"]))),
            422,
            "invalid_plan",
        ),
    ]
    lite.plan(chain())  # ticket 1 exists and is ready: retry conflicts
    for label, send, status, code in cases:
        r = send()
        assert r.status_code == status, (label, r.status_code, r.text)
        assert_error(r, status, code)
    r = lite.post("/v1/claims", json_body={"agent": "a", "wait_s": -1})
    details = r.json()["details"]
    assert details[0]["loc"] == ["body", "wait_s"]
    assert details[0]["type"] == "greater_than_equal"


def test_oversized_body_with_content_length_is_413(lite: Api) -> None:
    big = json.dumps({"agent": "a" * (MAX_BODY + 1)}).encode()
    r = lite.post("/v1/claims", content=big, headers={"content-type": "application/json"})
    body = assert_error(r, 413, "payload_too_large")
    assert str(MAX_BODY) in body["message"]
    assert lite.store.last_seq() == 0


def test_oversized_streamed_body_without_content_length_is_413(lite: Api) -> None:
    # Regression: once, the body limit raises its own exception from inside receive(); FastAPI's
    # body parsing catches every exception there and answers 400 "There was an error parsing the
    # body" instead of the 413 that the same body gets when it carries a Content-Length.
    def chunks() -> Iterator[bytes]:
        yield b'{"agent": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"a" * 1024
        yield b'"}'

    r = lite.post("/v1/claims", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_error(r, 413, "payload_too_large")


def test_streamed_body_under_the_limit_is_accepted(lite: Api) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"agent": '
        yield b'"streamed"}'

    r = lite.post("/v1/claims", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 204, r.text


def test_plans_get_a_larger_body_limit(lite: Api) -> None:
    filler = "x" * (MAX_BODY * 2)
    r = lite.post("/v1/plans", json_body=spec(tk("A", body=filler)))
    assert r.status_code == 201, r.text
    r = lite.post("/v1/plans", json_body=spec(tk("A", body="x" * (MAX_PLAN + 1))))
    assert_error(r, 413, "payload_too_large")
    assert len(lite.get("/v1/plans").json()) == 1


# -- plans --------------------------------------------------------------------------------------


def test_invalid_plan_is_422_with_the_full_report_and_nothing_is_stored(api: Api) -> None:
    api.plan(chain())
    before_plans = api.get("/v1/plans").json()
    before_events = api.events()
    bad = spec(
        tk("A", ["B"]),
        tk("B", ["A"]),  # a cycle
        tk("C", ["nope"]),  # an unknown dependency
        tk("D", ["D"]),  # a self-dependency
        tk("A"),  # a duplicate id
        {"id": "E", "title": ""},  # no title
    )
    r = api.post("/v1/plans", json_body=bad)
    body = assert_error(r, 422, "invalid_plan")
    report = body["details"]
    assert report["valid"] is False
    codes = {issue["code"] for issue in report["errors"]}
    assert codes == {
        "cycle",
        "unknown_dependency",
        "self_dependency",
        "duplicate_id",
        "empty_title",
    }
    for issue in report["errors"]:
        assert issue["message"] and issue["tickets"]
    # The same report as the validate endpoint gives, which stores nothing either.
    checked = api.post("/v1/plans/validate", json_body=bad)
    assert checked.status_code == 200
    assert checked.json() == report

    assert api.get("/v1/plans").json() == before_plans
    assert api.events() == before_events
    assert set(api.tickets()) == {"A", "B"}


def test_design_checks_refuse_a_plan_over_http(api: Api) -> None:
    bad = {
        **spec(
            tk("S", phase="skeleton", covers=["R1"]),
            tk("A", estimate=5, covers=["R9"]),  # not on the skeleton, too large, unknown R9
        ),
        "requirements": [{"id": "R1", "text": "one"}, {"id": "R2", "text": "two"}],
        "max_estimate": 4,
    }
    report = api.post("/v1/plans/validate", json_body=bad).json()
    assert [(i["code"], i["tickets"], i["requirements"]) for i in report["errors"]] == [
        ("unknown_requirement", ["A"], ["R9"]),
        ("uncovered_requirement", [], ["R2"]),
        ("unreachable_from_skeleton", ["A"], []),
        ("too_large", ["A"], []),
    ]
    body = assert_error(api.post("/v1/plans", json_body=bad), 422, "invalid_plan")
    assert body["details"] == report
    assert api.get("/v1/plans").json() == []


def test_plans_list_get_and_waves(api: Api) -> None:
    first = api.plan(diamond("first"))
    second = api.plan(spec(tk("X"), title="second"), max_attempts=7)
    listed = api.get("/v1/plans").json()
    assert [p["id"] for p in listed] == [first["id"], second["id"]]
    assert listed[0] == first
    got = api.get(f"/v1/plans/{second['id']}").json()
    assert got == second
    assert got["title"] == "second"
    assert got["ticket_count"] == 1
    assert api.tickets(plan_id=second["id"])["X"]["max_attempts"] == 7

    waves = api.get(f"/v1/plans/{first['id']}/waves").json()
    assert waves["plan_id"] == first["id"]
    assert [w["index"] for w in waves["waves"]] == [0, 1, 2]
    assert [sorted(w["tickets"]) for w in waves["waves"]] == [["A"], ["B", "C"], ["D"]]
    assert waves["critical_path"] == ["A", "C", "D"]
    assert waves["critical_length"] == 8.0
    assert_error(api.get("/v1/plans/999/waves"), 404, "not_found")
    assert_error(api.get("/v1/plans/999"), 404, "not_found")

    strict = api.post(
        "/v1/plans/validate",
        params={"strict": "true"},
        json_body=spec(tk("P", files=["x.py"]), tk("Q", files=["x.py"])),
    ).json()
    assert strict["valid"] is False
    assert [i["code"] for i in strict["errors"]] == ["file_conflict"]
    lenient = api.post(
        "/v1/plans/validate", json_body=spec(tk("P", files=["x.py"]), tk("Q", files=["x.py"]))
    ).json()
    assert lenient["valid"] is True
    assert [i["code"] for i in lenient["warnings"]] == ["file_conflict"]


# -- tickets ------------------------------------------------------------------------------------


def test_ticket_list_filters(api: Api) -> None:
    first = api.plan(diamond("first"))
    second = api.plan(spec(tk("X", phase="skeleton"), tk("Y", ["X"])), title="second")
    api.claim(plan_id=first["id"])  # A is claimed

    assert set(api.tickets(plan_id=first["id"])) == {"A", "B", "C", "D"}
    assert set(api.tickets(plan_id=second["id"])) == {"X", "Y"}
    assert set(api.tickets(state="pending")) == {"B", "C", "D", "Y"}
    r = api.get("/v1/tickets", params=[("state", "claimed"), ("state", "ready")])
    assert {t["key"] for t in r.json()["tickets"]} == {"A", "X"}
    r = api.get(
        "/v1/tickets",
        params=[("state", "claimed"), ("state", "ready"), ("plan_id", str(second["id"]))],
    )
    assert [t["key"] for t in r.json()["tickets"]] == ["X"]
    assert set(api.tickets(phase="skeleton")) == {"A", "X"}
    assert set(api.tickets(phase="validation")) == {"D"}
    assert set(api.tickets(phase="expansion", plan_id=second["id"])) == {"Y"}
    assert api.tickets(plan_id=999) == {}
    assert_error(api.get("/v1/tickets", params={"state": "bogus"}), 422, "invalid_request")


def test_ticket_paging_with_next_after_id(api: Api) -> None:
    api.plan(spec(*[tk(f"T{i}") for i in range(7)]))
    every = api.get("/v1/tickets").json()
    assert every["next_after_id"] is None
    want = [t["id"] for t in every["tickets"]]
    assert want == sorted(want)
    assert len(want) == 7

    seen: list[int] = []
    after, pages = 0, 0
    while True:
        page = api.get("/v1/tickets", params={"after_id": after, "limit": 3}).json()
        pages += 1
        assert len(page["tickets"]) <= 3
        seen.extend(t["id"] for t in page["tickets"])
        if page["next_after_id"] is None:
            break
        assert page["next_after_id"] == page["tickets"][-1]["id"]
        after = page["next_after_id"]
    assert seen == want
    assert pages == 3
    assert api.get("/v1/tickets", params={"after_id": want[-1]}).json() == {
        "tickets": [],
        "next_after_id": None,
    }


# -- events, metrics, health, schema -------------------------------------------------------


def test_events_page(api: Api) -> None:
    one = api.plan(chain("one"))
    two = api.plan(spec(tk("X"), title="two"))
    api.complete(api.claim(plan_id=one["id"]))
    everything = api.events()
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e["kind"] for e in everything] == [
        "plan.created",
        "ticket.ready",
        "plan.created",
        "ticket.ready",
        "ticket.claimed",
        "ticket.done",
        "ticket.ready",
    ]
    for event in everything:
        assert set(event) == {"seq", "ts", "kind", "plan_id", "ticket_id", "data"}

    page = api.get("/v1/events", params={"after": 0, "limit": 2}).json()
    assert page["events"] == everything[:2]
    assert page["last_seq"] == everything[1]["seq"]
    rest = api.get("/v1/events", params={"after": page["last_seq"]}).json()
    assert rest["events"] == everything[2:]
    assert rest["last_seq"] == everything[-1]["seq"]

    only_two = api.events(plan_id=two["id"])
    assert [e["kind"] for e in only_two] == ["plan.created", "ticket.ready"]
    assert all(e["plan_id"] == two["id"] for e in only_two)
    assert only_two[0]["data"] == {"title": "two", "tickets": 1, "ready": 1}

    end = everything[-1]["seq"]
    assert api.get("/v1/events", params={"after": end}).json() == {"events": [], "last_seq": end}
    assert_error(api.get("/v1/events", params={"limit": 0}), 422, "invalid_request")


def test_metrics_is_prometheus_text(api: Api) -> None:
    api.plan(diamond())
    api.get("/v1/tickets/1")
    r = api.get("/metrics", None)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE swarm_tickets gauge" in text
    assert 'swarm_tickets{state="ready"} 1.0' in text
    assert 'swarm_tickets{state="pending"} 3.0' in text
    assert 'swarm_tickets{state="done"} 0.0' in text
    assert "# TYPE swarm_http_requests_total counter" in text
    assert "swarm_http_requests_total{" in text
    # Requests are counted by route template, not by raw path.
    assert 'route="/v1/tickets/{ticket_id}"' in text
    assert "swarm_claim_waiters 0.0" in text


def test_health(api: Api) -> None:
    r = api.get("/v1/health", None)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["database"] == api.store.db.dialect.name
    assert body["schema_version"] >= 1
    assert body["version"]


EXPECTED_OPERATIONS = {
    ("get", "/v1/health"),
    ("get", "/metrics"),
    ("post", "/v1/tokens"),
    ("get", "/v1/tokens"),
    ("delete", "/v1/tokens/{token_id}"),
    ("post", "/v1/claims"),
    ("post", "/v1/tickets/{ticket_id}/heartbeat"),
    ("post", "/v1/tickets/{ticket_id}/complete"),
    ("post", "/v1/tickets/{ticket_id}/fail"),
    ("post", "/v1/tickets/{ticket_id}/release"),
    ("post", "/v1/tickets/{ticket_id}/log"),
    ("get", "/v1/tickets/{ticket_id}/context"),
    ("post", "/v1/plans"),
    ("post", "/v1/plans/validate"),
    ("get", "/v1/plans"),
    ("get", "/v1/plans/{plan_id}"),
    ("get", "/v1/plans/{plan_id}/waves"),
    ("get", "/v1/plans/{plan_id}/spec"),
    ("put", "/v1/plans/{plan_id}/spec"),
    ("post", "/v1/plans/{plan_id}/approve"),
    ("post", "/v1/plans/{plan_id}/pause"),
    ("post", "/v1/plans/{plan_id}/resume"),
    ("post", "/v1/plans/{plan_id}/run"),
    ("delete", "/v1/plans/{plan_id}/run"),
    ("get", "/v1/runs"),
    ("get", "/v1/tickets"),
    ("get", "/v1/usage"),
    ("post", "/v1/plans/{plan_id}/repo"),
    ("post", "/v1/plans/{plan_id}/github"),
    ("get", "/v1/pulls"),
    ("get", "/v1/pulls/{ticket_id}"),
    ("get", "/v1/pulls/{ticket_id}/diff"),
    ("get", "/v1/tickets/{ticket_id}"),
    ("post", "/v1/tickets/{ticket_id}/cancel"),
    ("post", "/v1/tickets/{ticket_id}/retry"),
    ("post", "/v1/tickets/{ticket_id}/stop"),
    ("get", "/v1/agents"),
    ("get", "/v1/tickets/{ticket_id}/attempts"),
    ("get", "/v1/events"),
    # the VM API (tests/test_vm_api.py)
    ("get", "/v1/vms"),
    ("post", "/v1/vms"),
    ("get", "/v1/vms/{sandbox_id}"),
    ("delete", "/v1/vms/{sandbox_id}"),
    ("post", "/v1/vms/{sandbox_id}/pause"),
    ("post", "/v1/vms/{sandbox_id}/resume"),
    ("post", "/v1/vms/{sandbox_id}/snapshot"),
    ("get", "/v1/snapshots"),
    ("post", "/v1/snapshots/{snapshot_id}/restore"),
    ("delete", "/v1/snapshots/{snapshot_id}"),
    ("post", "/v1/vms/{sandbox_id}/exec"),
    ("get", "/v1/vms/{sandbox_id}/files"),
    ("put", "/v1/vms/{sandbox_id}/files"),
    ("delete", "/v1/vms/{sandbox_id}/files"),
    ("get", "/v1/vms/{sandbox_id}/files/list"),
    ("get", "/v1/vms/{sandbox_id}/git/status"),
    ("get", "/v1/vms/{sandbox_id}/git/diff"),
    ("get", "/v1/vms/{sandbox_id}/git/log"),
    ("post", "/v1/vms/{sandbox_id}/git/commit"),
}


def _http_routes(routes: Sequence[Any]) -> set[tuple[str, str]]:
    """(method, path) of every API route, through included routers of any FastAPI version."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found |= _http_routes(inner.routes)
        elif isinstance(route, APIRoute) and route.include_in_schema:
            found |= {(m.lower(), route.path_format) for m in route.methods if m != "HEAD"}
    return found


def test_openapi_lists_every_route(lite: Api) -> None:
    r = lite.get("/openapi.json", None)
    assert r.status_code == 200
    schema = r.json()
    listed = {
        (method, path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert _http_routes(lite.app.router.routes) == EXPECTED_OPERATIONS
    assert listed == EXPECTED_OPERATIONS
    # Every route that takes a token says so, and documents its 401.
    for method, path in EXPECTED_OPERATIONS - {("get", "/v1/health"), ("get", "/metrics")}:
        operation = schema["paths"][path][method]
        assert operation.get("security"), (method, path)
        assert "401" in operation["responses"], (method, path)
    assert "204" in schema["paths"]["/v1/claims"]["post"]["responses"]
    assert "/v1/events/ws" not in schema["paths"]  # WebSockets are not OpenAPI operations


# -- the WebSocket -------------------------------------------------------------------------------


def receive_events(ws: Any, n: int, *, keepalives: int = 3) -> list[dict[str, Any]]:
    """The next ``n`` events; a keepalive comes only after 15 quiet seconds, so a few of them
    in a row mean the events are not coming (instead of hanging forever)."""
    got: list[dict[str, Any]] = []
    seen_keepalives = 0
    while len(got) < n:
        message = json.loads(ws.receive_text())
        if message.get("kind") == "keepalive":
            seen_keepalives += 1
            assert seen_keepalives <= keepalives, f"got only {got} before {keepalives} keepalives"
            continue
        got.append(message)
    return got


def _refused(api: Api, url: str, headers: dict[str, str] | None = None) -> int:
    """The close code of a refused handshake (the session ends before any event)."""
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        api.client.websocket_connect(url, headers=headers or {}) as ws,
    ):
        ws.receive_text()
    return refused.value.code


def test_websocket_refuses_a_missing_or_bad_token_with_4401(lite: Api) -> None:
    assert _refused(lite, "/v1/events/ws") == 4401
    assert _refused(lite, "/v1/events/ws", bearer("not-a-token")) == 4401
    assert _refused(lite, "/v1/events/ws?token=not-a-token") == 4401
    unknown = format_token(TokenKind.ADMIN, "77", new_secret())
    assert _refused(lite, f"/v1/events/ws?token={unknown}") == 4401


def test_websocket_refuses_non_admins_with_4403(lite: Api) -> None:
    agent = lite.token()
    assert _refused(lite, "/v1/events/ws", bearer(agent)) == 4403
    assert _refused(lite, f"/v1/events/ws?token={agent}") == 4403
    lite.plan(chain())
    lease = lite.claim()
    assert _refused(lite, "/v1/events/ws", bearer(lease["token"])) == 4403


def test_websocket_with_header_or_query_token(lite: Api) -> None:
    lite.plan(chain())
    expected = lite.events()
    with lite.client.websocket_connect("/v1/events/ws", headers=bearer(ADMIN)) as ws:
        assert receive_events(ws, len(expected)) == expected
    with lite.client.websocket_connect(f"/v1/events/ws?after=0&token={ADMIN}") as ws:
        assert receive_events(ws, len(expected)) == expected


def test_websocket_replays_after_seq_then_streams_live(api: Api) -> None:
    plan = api.plan(diamond())
    api.complete(api.claim())  # A done: B and C ready
    history = api.events()
    assert len(history) == 6
    cut = history[1]["seq"]

    with api.client.websocket_connect(f"/v1/events/ws?after={cut}", headers=bearer(ADMIN)) as ws:
        assert receive_events(ws, len(history) - 2) == history[2:]

        # Live: claim C then B, complete both; D becomes ready.
        c = api.claim(plan_id=plan["id"])
        b = api.claim(plan_id=plan["id"])
        api.complete(c)
        api.complete(b)
        live = receive_events(ws, 5)
        ids = {k: t["id"] for k, t in api.tickets().items()}
        assert [(e["kind"], e["ticket_id"]) for e in live] == [
            ("ticket.claimed", ids["C"]),
            ("ticket.claimed", ids["B"]),
            ("ticket.done", ids["C"]),
            ("ticket.done", ids["B"]),
            ("ticket.ready", ids["D"]),
        ]
        assert live[0]["data"]["agent"] == "agent-1"
        assert live == api.events(after=history[-1]["seq"])


def test_websocket_streams_a_lone_claim_without_waiting_for_a_keepalive(api: Api) -> None:
    # Regression (SQLite): once, the in-process wake-up only fires for commits that made tickets
    # ready (TicketStore._publish ignores ready == 0, and claim/fail/cancel never publish), so a
    # claim, a failure or a cancel reaches WebSocket readers only at the next keepalive (15 s) or
    # the next commit that readies a ticket. On PostgreSQL every write sends NOTIFY and the event
    # streams at once.
    api.plan(spec(tk("A"), tk("B")))
    history = api.events()
    with api.client.websocket_connect(
        f"/v1/events/ws?after={history[-1]['seq']}", headers=bearer(ADMIN)
    ) as ws:
        lease = api.claim()
        first = json.loads(ws.receive_text())
        assert first["kind"] == "ticket.claimed", first
        assert first["ticket_id"] == lease["ticket"]["id"]


def test_websocket_plan_filter(api: Api) -> None:
    one = api.plan(chain("one"))
    two = api.plan(chain("two"))
    with api.client.websocket_connect(
        f"/v1/events/ws?plan_id={two['id']}", headers=bearer(ADMIN)
    ) as ws:
        replay = receive_events(ws, 2)
        assert [e["kind"] for e in replay] == ["plan.created", "ticket.ready"]
        api.complete(api.claim(plan_id=one["id"]))
        api.complete(api.claim(plan_id=two["id"]))
        live = receive_events(ws, 3)
        assert all(e["plan_id"] == two["id"] for e in replay + live)
        assert [e["kind"] for e in live] == ["ticket.claimed", "ticket.done", "ticket.ready"]


def test_websocket_reconnect_gets_exactly_the_rest(api: Api) -> None:
    api.plan(diamond())
    api.complete(api.claim())
    api.complete(api.claim())
    history = api.events()
    assert len(history) >= 8

    with api.client.websocket_connect("/v1/events/ws?after=0", headers=bearer(ADMIN)) as ws:
        head = receive_events(ws, 3)
    last = head[-1]["seq"]
    with api.client.websocket_connect(f"/v1/events/ws?after={last}", headers=bearer(ADMIN)) as ws:
        tail = receive_events(ws, len(history) - 3)
        assert head + tail == history
        # Nothing more is replayed: the next message is the next new event, not a duplicate.
        api.plan(spec(tk("Z"), title="later"))
        fresh = receive_events(ws, 2)
        assert [e["kind"] for e in fresh] == ["plan.created", "ticket.ready"]
        assert fresh[0]["seq"] > history[-1]["seq"]
    seqs = [e["seq"] for e in head + tail + fresh]
    assert len(seqs) == len(set(seqs))
    assert seqs == [e["seq"] for e in api.events()]


# -- database-specific edges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "params"),
    [
        ("POST", "/v1/claims", {"agent": "nul\x00agent"}, None),
        ("POST", "/v1/tokens", {"kind": "agent", "name": "nul\x00name"}, None),
        ("GET", "/v1/tickets", None, {"phase": "nul\x00"}),
        ("POST", "/v1/tickets/1/cancel", {"reason": "nul\x00reason"}, None),
        ("POST", "/v1/plans", spec(tk("A", body="nul\x00body")), None),
    ],
    ids=["claim-agent", "token-name", "tickets-phase", "cancel-reason", "plan-body"],
)
def test_nul_characters_in_text_are_never_a_server_error(
    api: Api, method: str, path: str, body: Any, params: Any
) -> None:
    # Regression (PostgreSQL): once, text columns cannot hold U+0000, and psycopg's DataError
    # escapes as a plain-text 500 "Internal Server Error". SQLite stores the character. The API
    # should refuse it as 422 invalid_request (or store it), never answer 5xx.
    api.plan(chain())
    # The TestClient re-raises a server exception, so a 5xx fails right here with its cause.
    r = api.call(method, path, json_body=body, params=params)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_error(r, r.status_code)
