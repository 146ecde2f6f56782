"""``swarm bench dashboard``: does the dashboard stay smooth with a big plan and a busy swarm?

A control plane runs in this process (uvicorn in a thread, SQLite) with a plan of ``tickets``
tickets in eight waves (:func:`~swarmstack.bench.dag.waved_plan`). Debian's Chromium, headless
and driven by Playwright, signs in with the admin token as a person would; once the DAG is drawn
and the event stream is open, ``agents`` simulated agents (:mod:`~swarmstack.bench.agentload`)
work the plan over HTTP for ``seconds`` while a probe in the page records what a person would
see.

Reported:

* ``load_ms`` — from submitting the token to the end of the first frame with every ticket's
  node in the DAG;
* ``events_per_s`` — events the agents wrote for the plan, per second of the window;
* ``frame_p50_ms``, ``frame_p99_ms``, ``frames_over_50ms`` — intervals between the page's
  animation frames (16.7 ms when nothing holds the page up);
* ``long_tasks``, ``long_task_total_ms`` — the main thread's tasks over 50 ms (the Long Tasks
  API);
* ``busy_share`` — the main thread's time in tasks (Chromium's ``TaskDuration``, wall time) per
  second of the window; ``script_share``, ``layout_share``, ``style_share`` — its parts in
  script, layout and style recalculation;
* ``latency_p50_ms``, ``latency_p99_ms``, ``latency_max_ms`` over ``latency_samples`` — for
  every ticket state change in the window, from the event's timestamp (taken by the store in the
  write's transaction) to the end of the first frame that shows the node's new ``data-state``;
* ``events_written``, ``events_applied`` — the plan's events in the store and those the page
  applied, both from the plan's creation; ``missed`` — events in the store the page never saw;
* ``catch_up_ms`` — after the agents stop, until the page has the last event (None: not within
  15 s);
* ``tickets_drawn``, ``tickets_done``, ``agent_errors`` (agent requests the server refused);
* ``bench_process_busy`` — CPU seconds per second of this process (server, agents, driver),
  and ``load_avg_1m``: what the browser shares the machine with.

``smooth`` is ``frame_p99_ms <= 50 and latency_p99_ms <= 1000 and missed == 0``: at most one
frame in a hundred is held up past three refreshes, a change shows within a second, nothing is
lost.

With ``profile``, ``hot_functions`` lists the page's busiest script functions (Chromium's
sampling profiler, which slows the page a little). With ``trace``, Chromium's performance trace
of the window is saved there (open it in DevTools or Perfetto) and ``frame_cpu`` gives the
main thread's CPU time per frame and per rendering phase: unlike the wall-clock figures, those
do not grow when other processes take the cores.
"""

from __future__ import annotations

import itertools
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmstack.auth import TokenKind, format_token, new_secret
from swarmstack.bench.agentload import AgentLoad
from swarmstack.bench.dag import waved_plan
from swarmstack.bench.pageprofile import frame_costs, hot_functions
from swarmstack.bench.stats import percentile
from swarmstack.client import SwarmClient
from swarmstack.errors import Unavailable, UsageError
from swarmstack.tickets.models import Event
from swarmstack.tickets.store import TicketStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# What DevTools' performance panel records: tasks, script, style, layout, paint, frames.
TRACE_CATEGORIES = [
    "devtools.timeline",
    "disabled-by-default-devtools.timeline",
    "disabled-by-default-devtools.timeline.frame",
    "v8.execute",
    "blink",
    "cc",
]
WAVES = 8
SMOOTH_FRAME_MS = 50.0
SMOOTH_LATENCY_MS = 1000.0
CATCH_UP_S = 15.0
_STATE_OF = {"ticket.ready": "ready", "ticket.claimed": "claimed", "ticket.done": "done"}

# Installed before the token is submitted: stamps the submit and the first frame painted with
# every ticket's node, then (``start``) records animation frames, long tasks, and the time each
# node first showed each state (wall-clock ms, comparable with the store's timestamps).
_PROBE = """(tickets) => {
  const wall = () => performance.timeOrigin + performance.now();
  const afterPaint = (fn) => requestAnimationFrame(() => {
    const channel = new MessageChannel();
    channel.port1.onmessage = fn;
    channel.port2.postMessage(0);
  });
  const dag = document.getElementById("dag");
  const bench = window.swarmBench = {
    submitAt: null, paintedAt: null, frames: [], longTasks: [], shown: {}, recording: false,
  };
  document.addEventListener("submit", () => { bench.submitAt = performance.now(); }, true);
  const drawn = new MutationObserver(() => {
    if (dag.querySelectorAll("g.ticket").length < tickets) return;
    drawn.disconnect();
    afterPaint(() => { bench.paintedAt = performance.now(); });
  });
  drawn.observe(dag, { childList: true });
  bench.start = () => {
    bench.recording = true;
    const frame = (ts) => {
      if (bench.recording) { bench.frames.push(ts); requestAnimationFrame(frame); }
    };
    requestAnimationFrame(frame);
    bench.longObserver = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) bench.longTasks.push(e.duration);
    });
    bench.longObserver.observe({ type: "longtask" });
    let pending = [];
    const stamp = () => {
      const t = wall();
      for (const key of pending) if (!(key in bench.shown)) bench.shown[key] = t;
      pending = [];
    };
    new MutationObserver((records) => {
      // A node changed twice in one task has two records: each holds the value before it.
      const before = new Map();
      for (const r of records) {
        if (!before.has(r.target)) before.set(r.target, []);
        before.get(r.target).push(r.oldValue);
      }
      const scheduled = pending.length > 0;
      for (const [node, olds] of before) {
        for (const state of [...olds.slice(1), node.dataset.state]) {
          pending.push(`${node.dataset.key} ${state}`);
        }
      }
      if (!scheduled && pending.length) afterPaint(stamp);
    }).observe(dag, {
      subtree: true, attributes: true, attributeFilter: ["data-state"], attributeOldValue: true,
    });
  };
  bench.stop = () => {
    bench.recording = false;
    for (const e of bench.longObserver.takeRecords()) bench.longTasks.push(e.duration);
    bench.longObserver.disconnect();
  };
}"""


@dataclass(frozen=True)
class Options:
    tickets: int = 1000
    agents: int = 100
    seconds: float = 20.0
    turn_s: float = 2.0  # the mean of an agent's turn (see agentload)
    seed: int = 0
    profile: bool = False
    trace: Path | None = None


def run(options: Options, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and return its one JSON object."""
    if not Path(CHROMIUM).is_file():
        raise Unavailable(f"no Chromium at {CHROMIUM} (scripts/setup installs Debian's)")
    if options.trace is not None and not options.trace.parent.is_dir():
        raise UsageError(f"no directory {options.trace.parent} for the trace")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:
        raise Unavailable(
            "this benchmark needs Playwright: pip install 'swarmstack[test]'"
        ) from exc
    from swarmstack.api import create_app
    from swarmstack.config import Settings
    from swarmstack.threaded import ThreadedServer

    say = progress or (lambda _message: None)
    admin = format_token(TokenKind.ADMIN, "0", new_secret())  # for this run's server only
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            database_url=f"sqlite:///{Path(tmp) / 'swarm.db'}",
            admin_token=admin,
            merge_queue=False,
        )
        store = TicketStore.from_settings(settings)
        store.migrate()
        try:
            plan = store.create_plan(waved_plan(options.tickets, waves=WAVES, seed=options.seed))
            with (
                ThreadedServer(create_app(settings, store=store)) as server,
                sync_playwright() as p,
            ):
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    return _measure(browser, server.url, admin, store, plan.id, options, say)
                finally:
                    browser.close()
        except Error as exc:
            raise Unavailable(f"Chromium: {exc.message.splitlines()[0]}") from exc
        finally:
            store.close()


def _until(page: Any, expression: str, timeout_s: float, what: str) -> None:
    """Poll ``expression`` in the page (the page's CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise Unavailable(f"the dashboard never got there: {what} (after {timeout_s:g}s)")
        time.sleep(0.02)


def _clock_offset_ms(page: Any) -> float:
    """The page's wall clock minus this process's, from the quickest of a few round trips."""
    best: tuple[float, float] = (float("inf"), 0.0)
    for _ in range(7):
        before = time.time()
        theirs = page.evaluate("performance.timeOrigin + performance.now()")
        after = time.time()
        best = min(best, (after - before, theirs - (before + after) * 500))
    return best[1]


def _main_thread(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _events(store: TicketStore, plan_id: int) -> list[Event]:
    events: list[Event] = []
    while page := store.events_after(
        events[-1].seq if events else 0, limit=10_000, plan_id=plan_id
    ):
        events.extend(page)
    return events


def _sign_in(page: Any, url: str, admin: str, tickets: int) -> float:
    """Sign in through the form; the ms from the submit to every node drawn and painted."""
    page.goto(url + "/")
    page.evaluate(_PROBE, tickets)
    page.fill("#token", admin)
    page.click("button[type=submit]")
    _until(page, "window.swarmBench.paintedAt !== null", 120, f"{tickets} tickets drawn")
    live = "window.swarmDashboard.socket && window.swarmDashboard.socket.readyState === 1"
    _until(page, live, 30, "the event stream open")
    return float(page.evaluate("window.swarmBench.paintedAt - window.swarmBench.submitAt"))


def _measure(
    browser: Any,
    url: str,
    admin_token: str,
    store: TicketStore,
    plan_id: int,
    o: Options,
    say: Callable[[str], None],
) -> dict[str, Any]:
    with SwarmClient(url, admin_token) as admin:
        agent_token = admin.create_token("agent", "bench").token
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    say(f"signing in; drawing {o.tickets} tickets")
    load_ms = _sign_in(page, url, admin_token, o.tickets)
    # The events from before the page loaded are replayed first: none of them is measured.
    replayed = _events(store, plan_id)[-1].seq
    _until(page, f"window.swarmDashboard.lastSeq >= {replayed}", 30, "the replay applied")
    offset_ms = _clock_offset_ms(page)

    say(f"{o.agents} agents at work for {o.seconds:g}s")
    if o.profile:
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": 200})
        cdp.send("Profiler.start")
    if o.trace is not None:
        browser.start_tracing(page=page, path=str(o.trace), categories=TRACE_CATEGORIES)
    page.evaluate("window.swarmBench.start()")
    before, cpu_before, started = _main_thread(cdp), _cpu_s(), time.time()
    with AgentLoad(url, agent_token, plan_id, o.agents, turn_s=o.turn_s, seed=o.seed) as load:
        page.wait_for_timeout(o.seconds * 1000)
    ended, cpu_after, after = time.time(), _cpu_s(), _main_thread(cdp)
    page.evaluate("window.swarmBench.stop()")
    window = ended - started
    extra: dict[str, Any] = {}
    if o.trace is not None:
        browser.stop_tracing()
        extra["frame_cpu"] = frame_costs(o.trace)
    if o.profile:
        extra["hot_functions"] = hot_functions(cdp.send("Profiler.stop")["profile"], window)

    say("waiting for the page to catch up")
    last = _events(store, plan_id)[-1].seq
    caught = time.monotonic()
    catch_up_ms: float | None = None
    while time.monotonic() - caught < CATCH_UP_S:
        if page.evaluate(f"window.swarmDashboard.lastSeq >= {last}"):
            catch_up_ms = round((time.monotonic() - caught) * 1000, 1)
            break
        time.sleep(0.02)
    page.wait_for_timeout(200)  # for the frame that shows the last changes
    probe = page.evaluate(
        "({frames: swarmBench.frames, longTasks: swarmBench.longTasks, shown: swarmBench.shown,"
        " seqs: swarmDashboard.seqs, applied: swarmDashboard.applied,"
        " drawn: document.querySelectorAll('#dag g.ticket').length})"
    )

    events = _events(store, plan_id)
    written = [e for e in events if replayed < e.seq and e.ts <= ended]
    keys = {t.id: t.key for t in store.list_tickets(plan_id=plan_id, limit=o.tickets + 1)}
    shown: dict[str, float] = probe["shown"]
    latencies = [
        shown[change] - offset_ms - e.ts * 1000
        for e in events
        if e.seq > replayed and (state := _STATE_OF.get(e.kind)) and e.ticket_id in keys
        if (change := f"{keys[e.ticket_id]} {state}") in shown
    ]
    gaps = [b - a for a, b in itertools.pairwise(probe["frames"])]
    busy = {k: (after[k] - before[k]) / window for k in after if k.endswith("Duration")}
    missed = len({e.seq for e in events} - set(probe["seqs"]))
    figures: dict[str, Any] = {
        "bench": "dashboard",
        "tickets": o.tickets,
        "agents": o.agents,
        "seconds": o.seconds,
        "turn_s": o.turn_s,
        "load_ms": round(load_ms, 1),
        "events_per_s": round(len(written) / window, 1),
        "frames": len(probe["frames"]),
        "frame_p50_ms": percentile(gaps, 50),
        "frame_p99_ms": percentile(gaps, 99),
        "frames_over_50ms": sum(1 for g in gaps if g > SMOOTH_FRAME_MS),
        "long_tasks": len(probe["longTasks"]),
        "long_task_total_ms": round(sum(probe["longTasks"]), 1),
        "busy_share": round(busy["TaskDuration"], 3),
        "script_share": round(busy["ScriptDuration"], 3),
        "layout_share": round(busy["LayoutDuration"], 3),
        "style_share": round(busy["RecalcStyleDuration"], 3),
        "latency_samples": len(latencies),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_max_ms": round(max(latencies), 3) if latencies else None,
        "events_written": len(events),
        "events_applied": probe["applied"],
        "missed": missed,
        "catch_up_ms": catch_up_ms,
        "tickets_drawn": probe["drawn"],
        "tickets_done": load.tickets_done,
        "agent_errors": load.errors,
        "bench_process_busy": round((cpu_after - cpu_before) / window, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    figures["smooth"] = (
        figures["frame_p99_ms"] is not None
        and figures["frame_p99_ms"] <= SMOOTH_FRAME_MS
        and figures["latency_p99_ms"] is not None
        and figures["latency_p99_ms"] <= SMOOTH_LATENCY_MS
        and missed == 0
    )
    return figures | extra
