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
from swarmstack.bench.dashboard import CHROMIUM, CHROMIUM_ARGS
from swarmstack.config import Settings
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import (
    FixRequest,
    PlanSpec,
    SandboxUsage,
    TicketResult,
    TicketSpec,
    TicketState,
)
from swarmstack.tickets.store import TicketStore

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
        max_run_agents=0,  # a run in the store is shown, never taken up
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
            args=CHROMIUM_ARGS,
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


def test_pause_stops_claiming_and_resume_starts_it_again(
    server: tuple[str, TicketStore, int], browser: Any
) -> None:
    url, store, plan_id = server
    page = _signed_in(browser, url)
    assert page.inner_text("#plan-pause") == "Pause" and not page.is_visible("#paused")
    page.click("#plan-pause")
    page.wait_for_selector("#paused:not([hidden])")
    assert page.inner_text("#plan-pause") == "Resume"
    assert store.get_plan(plan_id).paused is True
    assert store.claim("agent-1", plan_id=plan_id) is None  # two tickets ready, none handed out
    page.click("#plan-pause")
    page.wait_for_selector("#paused", state="hidden")
    lease = store.claim("agent-1", plan_id=plan_id)
    assert lease is not None and lease.ticket.state is TicketState.CLAIMED
    # A pause made elsewhere (the CLI, another tab) reaches the page as an event.
    store.pause_plan(plan_id)
    page.wait_for_selector("#paused:not([hidden])", timeout=2000)


def test_a_run_of_agents_is_shown_started_and_stopped_from_the_page(
    server: tuple[str, TicketStore, int], browser: Any
) -> None:
    url, store, plan_id = server
    page = _signed_in(browser, url)
    page.wait_for_selector("#run-start:not([hidden])")
    assert not page.is_visible("#run-stop") and not page.is_visible("#run-state")
    page.fill("#run-agents", "3")
    page.click("#run-start")  # this control plane starts no agents: the page says why
    page.wait_for_selector("#plan-error:has-text('start agents: this control plane starts no')")
    # A run another control plane left (handed over at its shutdown) shows as waiting.
    run = store.runs.start(plan_id, 3, "bwrap", "host-b:4242:ab12", lease_s=30)
    page.wait_for_selector("#run-state:has-text('3 agents (bwrap)')", timeout=5000)
    assert "host-b:4242:ab12" in page.get_attribute("#run-state", "title")
    assert store.runs.hand_over(run.id, "host-b:4242:ab12")
    page.wait_for_selector("#run-state:has-text('run waiting for a control plane')", timeout=5000)
    assert not page.is_visible("#run-start")
    page.click("#run-stop")
    page.wait_for_selector("#run-state:has-text('last run stopped: an admin stopped it')")
    assert store.runs.get(run.id).state == "stopped"
    assert page.is_visible("#run-start") and not page.is_visible("#run-stop")


def test_a_draft_is_drawn_from_its_plan_file_and_approved_from_the_page(
    server: tuple[str, TicketStore, int], browser: Any
) -> None:
    url, store, _plan_id = server
    draft = store.create_plan(_plan().model_copy(update={"title": "the draft"}), draft=True)
    page = _signed_in(browser, url)
    page.select_option("#plan-select", str(draft.id))
    _until(page, f"window.swarmDashboard.plan && window.swarmDashboard.plan.id === {draft.id}")
    page.wait_for_selector("#plan-approve:not([hidden])")
    states = _states(page)
    assert states == dict.fromkeys(states, "draft") and len(states) == 6
    page.click('#dag g.ticket[data-key="scaffold"]')
    page.wait_for_selector("#details:not([hidden])")
    assert "until the plan is approved" in page.inner_text("#d-meta")
    assert "it imports" in page.inner_text("#d-acceptance")
    page.click("#close-details")
    page.click("#plan-approve")
    page.wait_for_selector('#dag g.ticket[data-key="scaffold"][data-state="ready"]')
    assert store.get_plan(draft.id).status == "active"
    assert _states(page) == {t.key: t.state.value for t in store.list_tickets(plan_id=draft.id)}
    assert not page.is_visible("#plan-approve")


def test_agents_show_their_sandboxes_and_what_needs_attention_comes_first(
    server: tuple[str, TicketStore, int], browser: Any
) -> None:
    url, store, plan_id = server
    working = store.claim("sandbox-a", plan_id=plan_id)
    stuck = store.claim("sandbox-b", plan_id=plan_id)
    assert working is not None and stuck is not None
    usage = SandboxUsage(backend="bwrap", memory_bytes=96 << 20, cpu_percent=37.4, processes=5)
    store.heartbeat(working.ticket.id, working.epoch, sandbox=usage)
    # sandbox-b's runner stalled: its last beat was 5 minutes into a 6-minute lease.
    now = time.time()
    store.db.execute_once(
        "UPDATE tickets SET updated_at = :beat, lease_expires_at = :exp WHERE id = :id",
        {"beat": now - 300, "exp": now + 60, "id": stuck.ticket.id},
    )
    page = _signed_in(browser, url)
    row = f'#agents tr[data-ticket="{working.ticket.id}"]'
    page.wait_for_selector(row)
    _until(page, f"document.querySelector('{row}').innerText.includes('MiB')")
    text = page.inner_text(row)
    assert "sandbox-a" in text and "bwrap" in text and "96 MiB" in text and "37%" in text
    page.wait_for_selector("#attention:not([hidden])")
    assert f"{stuck.ticket.key}: agent sandbox-b is stale" in page.inner_text("#attention")
    assert (
        page.eval_on_selector(f'#agents tr[data-ticket="{stuck.ticket.id}"]', "r => r.className")
        == "stale"
    )

    # Stop the stuck one from its row: its lease ends and the ticket is ready for another.
    page.click(f'#agents tr[data-ticket="{stuck.ticket.id}"] button.stop')
    key = stuck.ticket.key
    page.wait_for_selector(f'#dag g.ticket[data-key="{key}"][data-state="ready"]', timeout=2000)
    assert store.get_ticket(stuck.ticket.id).attempts == 0
    _until(page, "!document.querySelector('#attention').innerText.includes('stale')")

    # An over-budget ticket and a conflict show up with their reasons.
    store.fail(working.ticket.id, working.epoch, "over budget: ticket 1 has spent $2.0100 of "
               "its $2.00", retryable=False)  # fmt: skip
    again = store.claim("sandbox-c", plan_id=plan_id)
    assert again is not None
    store.complete(again.ticket.id, again.epoch, TicketResult(branch="swarm/x"), merge=True)
    fix = FixRequest(reason="conflict", base="main", base_sha="b" * 40, head_sha="h" * 40,
                     conflicts=["src/app.py"], details="CONFLICT (content)")  # fmt: skip
    store.send_back(again.ticket.id, fix)
    _until(page, "document.querySelector('#attention').innerText.includes('conflict')")
    attention = page.inner_text("#attention")
    assert f"{working.ticket.key}: over budget: ticket 1 has spent $2.0100" in attention
    assert f"{again.ticket.key}: conflict with main in src/app.py: being fixed" in attention
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "dashboard-attention-1440.png"), full_page=True)


def test_the_ticket_panel_shows_the_pull_requests_diff_and_cost_of_a_scripted_swarm(
    tmp_path: Path, browser: Any
) -> None:
    from agent_world import ADMIN as WORLD_ADMIN
    from agent_world import builtin_sub_session, swarm_world
    from swarmstack.agent.drivers import make_driver
    from swarmstack.agent.runner import Runner, RunnerConfig

    session = builtin_sub_session()
    spec = PlanSpec(title="calc", tickets=[TicketSpec(id="T-1", title="Add sub()")])
    with swarm_world(tmp_path, {"sessions": [session]}, spec) as world:
        config = RunnerConfig(
            api_url=world.url,
            token=world.agent_token,
            agent="panel-runner",
            work_root=tmp_path / "work",
            state_file=tmp_path / "state" / "lease.json",
            wait_s=1.0,
            max_tickets=1,
        )
        [outcome] = Runner(config, make_driver("builtin")).run()
        assert outcome.state == "done", outcome.detail
        ticket = world.settled("T-1")
        assert ticket.state is TicketState.DONE
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(world.url + "/")
        page.fill("#token", WORLD_ADMIN)
        page.click("button[type=submit]")
        page.wait_for_selector('#dag g.ticket[data-key="T-1"][data-state="done"]')
        page.click('#dag g.ticket[data-key="T-1"]')
        _until(page, "document.querySelector('#d-diff').textContent.includes('def sub')")
        assert "+def sub(a, b):" in page.inner_text("#d-diff")
        assert "swarm/1 into main, merged: 1 file, +4" in page.inner_text("#d-pr")
        usage = world.admin.usage(ticket_id=ticket.id)
        assert page.inner_text("#d-cost").startswith(f"${usage.cost_usd:.4f} in 3 model calls")
        assert page.inner_text("#d-attempts").startswith("panel-runner: ")
        assert "merging" in page.inner_text("#d-attempts")  # its branch went to the queue
        log = page.inner_text("#d-log")
        assert "write_file" in log and "sub ok" in log
        page.screenshot(path=str(SHOTS / "dashboard-ticket-1440.png"), full_page=True)


def test_the_control_planes_own_sandboxes_are_listed_and_destroyed_from_the_page(
    browser: Any,
) -> None:
    from vm_fixtures import ADMIN as VM_ADMIN
    from vm_fixtures import vm_plane

    with vm_plane() as plane, ThreadedServer(plane.app) as running:
        plane.store.create_plan(_plan())
        headers = {"Authorization": f"Bearer {VM_ADMIN}"}
        body = {"limits": {"memory_mib": 256}}
        made = httpx.post(running.url + "/v1/vms", json=body, headers=headers, timeout=60)
        assert made.status_code == 201, made.text
        vm = made.json()["id"]
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(running.url + "/")
        page.fill("#token", VM_ADMIN)
        page.click("button[type=submit]")
        row = f'#sandbox-rows tr[data-sandbox="{vm}"]'
        page.wait_for_selector(row, timeout=10_000)
        text = page.inner_text(row)
        assert "bwrap" in text and "running" in text and "256 MiB" in text
        assert " MiB" in text.replace("256 MiB", "")  # what it uses now, besides its limit
        page.click(f"{row} button.stop")
        page.wait_for_selector("#sandboxes", state="hidden", timeout=10_000)
        listed = httpx.get(running.url + "/v1/vms", headers=headers).json()
        assert vm not in {v["id"] for v in listed}
