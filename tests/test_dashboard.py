"""The dashboard in Debian's Chromium, driven by Playwright, against a real control plane whose
tickets the test moves through the store: what it draws, how fast a change arrives, what a
dropped WebSocket loses (nothing), what it shows without a token (the login only)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarmstack.api import create_app
from swarmstack.config import Settings
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import PlanSpec, TicketResult, TicketSpec
from swarmstack.tickets.store import TicketStore

CHROMIUM = "/usr/bin/chromium"
ADMIN = "swadmin_0_" + "d" * 43
SHOTS = Path(os.environ.get("SWARM_SCREENSHOTS", "test-screenshots"))

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Debian's chromium is not installed (scripts/setup installs it)",
)


def _plan() -> PlanSpec:
    """Three waves: 2, 3 and 1 tickets."""
    tickets = [
        TicketSpec(id="scaffold", title="the skeleton", acceptance=["it imports"]),
        TicketSpec(id="docs", title="the docs"),
        TicketSpec(id="store", title="the store", depends_on=["scaffold"]),
        TicketSpec(id="cli", title="the CLI", depends_on=["scaffold"]),
        TicketSpec(id="api", title="the API", depends_on=["scaffold", "docs"]),
        TicketSpec(id="e2e", title="end to end", depends_on=["store", "cli", "api"]),
    ]
    return PlanSpec(title="dashboard test", tickets=tickets)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, TicketStore, int]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'swarm.db'}",
        admin_token=ADMIN,
        merge_queue=False,
    )
    store = TicketStore.from_settings(settings)
    store.migrate()
    plan = store.create_plan(_plan())
    with ThreadedServer(create_app(settings, store=store)) as running:
        yield running.url, store, plan.id
    store.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


def _signed_in(browser: Any, url: str, width: int = 1440, height: int = 900) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url + "/")
    page.fill("#token", ADMIN)
    page.click("button[type=submit]")
    page.wait_for_selector("#dag g.ticket")
    _until(page, "window.swarmDashboard.socket && window.swarmDashboard.socket.readyState === 1")
    return page


def _until(page: Any, expression: str, timeout_s: float = 5.0) -> None:
    """Wait until ``expression`` is true in the page. (Playwright's wait_for_function evaluates
    a string, which the page's Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.02)


def _states(page: Any) -> dict[str, str]:
    return page.eval_on_selector_all(
        "#dag g.ticket",
        "nodes => Object.fromEntries(nodes.map(n => [n.dataset.key, n.dataset.state]))",
    )


def test_without_a_token_only_the_login_shows_and_the_api_refuses(
    server: tuple[str, TicketStore, int], browser: Any
) -> None:
    url, _store, _plan_id = server
    page = browser.new_page()
    page.goto(url + "/")
    assert page.is_visible("#login") and not page.is_visible("#board")
    assert page.eval_on_selector_all("#dag g.ticket", "n => n.length") == 0
    refused = page.evaluate("fetch('/v1/plans').then(r => r.status)")
    assert refused == 401
    page.fill("#token", "swadmin_0_" + "x" * 43)
    page.click("button[type=submit]")
    _until(page, "document.querySelector('#login-error').textContent.length > 0")
    assert page.is_visible("#login")
    # The page never puts the token in a URL.
    assert httpx.get(url + "/").headers["content-security-policy"].startswith("default-src")


def test_the_dag_by_waves_follows_the_store_within_a_second_and_misses_nothing_after_a_cut(
    server: tuple[str, TicketStore, int], browser: Any
) -> None:
    url, store, plan_id = server
    page = _signed_in(browser, url)
    assert page.url.rstrip("/") == url and ADMIN not in page.url
    waves = page.eval_on_selector_all(
        "#dag g.ticket", "nodes => nodes.map(n => Number(n.dataset.wave))"
    )
    assert sorted(waves) == [0, 0, 1, 1, 1, 2]
    assert _states(page) == {
        "scaffold": "ready", "docs": "ready", "store": "pending", "cli": "pending",
        "api": "pending", "e2e": "pending",
    }  # fmt: skip
    assert page.eval_on_selector_all("#dag g.ticket.critical", "n => n.length") >= 2

    # A claim reaches the page within a second.
    lease = store.claim("agent-7", plan_id=plan_id)
    assert lease is not None
    started = time.monotonic()
    page.wait_for_selector(
        f'#dag g.ticket[data-key="{lease.ticket.key}"][data-state="claimed"]', timeout=1000
    )
    assert time.monotonic() - started < 1.0
    page.wait_for_selector("#agents tr")
    assert "agent-7" in page.inner_text("#agents")

    # Cut the WebSocket; change things while it is down; it comes back with all of them.
    page.evaluate("window.swarmDashboard.socket.close()")
    store.complete(lease.ticket.id, lease.epoch, TicketResult(summary="done"))
    other = store.claim("agent-8", plan_id=plan_id)
    assert other is not None
    _until(page, "window.swarmDashboard.socket && window.swarmDashboard.socket.readyState === 1")
    page.wait_for_selector(
        f'#dag g.ticket[data-key="{other.ticket.key}"][data-state="claimed"]', timeout=5000
    )
    seen = page.evaluate("window.swarmDashboard.seqs")
    expected = [e.seq for e in store.events_after(0, limit=10_000, plan_id=plan_id)]
    _until(page, f"window.swarmDashboard.seqs.length >= {len(expected)}")
    seen = page.evaluate("window.swarmDashboard.seqs")
    assert seen == expected  # every event once, in order, across the cut
    states = _states(page)
    assert states == {t.key: t.state.value for t in store.list_tickets(plan_id=plan_id)}

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "dashboard-1440.png"), full_page=True)
    narrow = _signed_in(browser, url, width=390, height=844)
    narrow.screenshot(path=str(SHOTS / "dashboard-390.png"), full_page=True)
    overflow = narrow.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0  # nothing sticks out sideways at 390 px


def test_retry_from_the_ticket_panel_makes_a_dead_ticket_run_again(
    server: tuple[str, TicketStore, int], browser: Any
) -> None:
    url, store, plan_id = server
    lease = store.claim("agent-1", plan_id=plan_id)
    assert lease is not None
    store.fail(lease.ticket.id, lease.epoch, "the agent gave up", retryable=False)
    page = _signed_in(browser, url)
    key = lease.ticket.key
    page.wait_for_selector(f'#dag g.ticket[data-key="{key}"][data-state="dead"]')
    assert page.is_visible("#attention") and key in page.inner_text("#attention")
    page.click(f'#dag g.ticket[data-key="{key}"]')
    page.wait_for_selector("#details:not([hidden])")
    assert "the agent gave up" in page.inner_text("#d-meta")
    page.click("#d-retry")
    page.wait_for_selector(f'#dag g.ticket[data-key="{key}"][data-state="ready"]', timeout=2000)
    again = store.claim("agent-2", plan_id=plan_id)
    assert again is not None and again.ticket.key == key and again.ticket.attempts == 1
