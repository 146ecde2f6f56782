"""The agent runner (``swarm agent``): it pulls tickets and turns each into a pushed branch.

One ticket goes like this, every step over HTTP to the control plane (inside a sandbox, through
its forwarder at ``http://127.0.0.1:<port>``):

1. **claim**, long-polling until a ticket is ready; the lease is written to the state file;
2. a **heartbeat** thread extends the lease (a refusal means the lease is lost: stop at once);
3. **context** (the plan, what the tickets it builds on reported) and a fresh **clone** of the
   plan's repository from the git broker;
4. the **driver** works on it; what it says and does is batched into the ticket's log;
5. **commit**, **push** ``swarm/<ticket id>``, **complete** with the driver's summary — or
   **fail** with the reason (retryable or not), or, told to stop (SIGTERM), **release** the
   lease so another agent takes the ticket at once.

Restart-safe: a lease left in the state file by a runner that died is released on start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmstack.agent.task import Dependency, Driver, DriverResult, LogKind, Task, clip
from swarmstack.agent.usage import UsageSampler
from swarmstack.agent.workspace import GitError, Workspace
from swarmstack.client import SwarmClient
from swarmstack.errors import StaleLease, SwarmError, Unavailable
from swarmstack.tickets.models import Lease, TicketResult

log = logging.getLogger(__name__)

LOG_BATCH = 100
LOG_FLUSH_S = 0.25


@dataclass
class RunnerConfig:
    api_url: str
    token: str  # an agent token: it may claim, nothing else
    agent: str = "agent"
    plan_id: int | None = None
    work_root: Path = Path("/workspace")
    state_file: Path | None = None  # where the current lease is kept (restart safety)
    wait_s: float = 30.0
    ttl_s: float | None = None  # None: the server's lease TTL
    heartbeat_s: float | None = None  # None: a third of the lease TTL
    ticket_timeout_s: float = 1800.0
    max_tickets: int | None = None  # None: until stopped
    idle_exit_s: float | None = None  # stop after this long with nothing to claim
    model: str | None = None
    llm_url: str | None = None  # None: <api_url>/llm
    env: dict[str, str] = field(default_factory=dict)
    sandbox_backend: str | None = None  # reported with each heartbeat, with the sandbox's use
    end_on_lost: bool = False  # a lost lease ends the runner (its host makes a fresh sandbox)


@dataclass
class Outcome:
    """How one ticket ended for this runner."""

    ticket_id: int
    state: str  # done | failed | released | lost
    detail: str = ""
    model_s: float = 0.0
    seconds: float = 0.0
    agent_s: float = 0.0  # the driver's own run: the agent at work, the model included


class Runner:
    def __init__(self, config: RunnerConfig, driver: Driver) -> None:
        self.config = config
        self.driver = driver
        self.api = SwarmClient(config.api_url, config.token, timeout=60.0)
        self.stopping = threading.Event()  # SIGTERM: finish nothing new, release the lease
        self.outcomes: list[Outcome] = []
        self.usage = UsageSampler(
            backend=config.sandbox_backend, sandbox_id=os.environ.get("SWARM_SANDBOX_ID")
        )

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> list[Outcome]:
        """Work tickets until told to stop, out of tickets (``max_tickets``) or idle too long;
        the runner's connection to the control plane is closed after."""
        try:
            return self._run()
        finally:
            self.api.close()

    def _run(self) -> list[Outcome]:
        self.recover()
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            if (
                self.config.max_tickets is not None
                and len(self.outcomes) >= self.config.max_tickets
            ):
                break
            wait = self.config.wait_s
            if self.config.idle_exit_s is not None:
                left = self.config.idle_exit_s - (time.monotonic() - idle_since)
                if left <= 0:
                    break
                wait = min(wait, left)
            try:
                lease = self.api.claim(
                    self.config.agent,
                    plan_id=self.config.plan_id,
                    wait_s=wait,
                    ttl_s=self.config.ttl_s,
                )
            except Unavailable as exc:
                log.warning("%s; trying again", exc.message)
                self.stopping.wait(1.0)
                continue
            if lease is None:
                continue
            outcome = self.work(lease)
            self.outcomes.append(outcome)
            print(
                f"ticket {outcome.ticket_id} {outcome.state} in {outcome.seconds:.2f}s"
                + (f": {outcome.detail}" if outcome.detail else ""),
                flush=True,
            )
            if outcome.state == "lost" and self.config.end_on_lost:
                break
            idle_since = time.monotonic()
        return self.outcomes

    def stop(self) -> None:
        self.stopping.set()

    def install_signals(self) -> None:
        def handler(_signum: int, _frame: Any) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- restart safety ----------------------------------------------------------------------

    def recover(self) -> None:
        """Release a lease an earlier runner left behind in the state file."""
        path = self.config.state_file
        if path is None or not path.exists():
            return
        try:
            lease = Lease.model_validate_json(path.read_bytes())
        except ValueError:
            path.unlink()
            return
        with contextlib.suppress(StaleLease, SwarmError):
            self.api.release(lease, "the agent runner restarted")
            print(f"released ticket {lease.ticket.id}, left by an earlier run", flush=True)
        path.unlink()
        shutil.rmtree(self._workspace_path(lease), ignore_errors=True)

    def _remember(self, lease: Lease | None) -> None:
        path = self.config.state_file
        if path is None:
            return
        if lease is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_text(lease.model_dump_json())
        partial.chmod(0o600)
        partial.replace(path)

    # -- one ticket --------------------------------------------------------------------------

    def _workspace_path(self, lease: Lease) -> Path:
        return self.config.work_root / f"ticket-{lease.ticket.id}"

    def work(self, lease: Lease) -> Outcome:
        started = time.monotonic()
        ticket = lease.ticket
        self._remember(lease)
        session = _Session(self, lease)
        session.start()
        workspace: Workspace | None = None
        result: DriverResult | None = None
        try:
            session.log("status", {"text": f"claimed by {self.config.agent}", "epoch": lease.epoch})
            context = self.api.context(lease)
            if context.repository:
                workspace = Workspace.clone(
                    self.config.api_url, lease, self._workspace_path(lease), base=context.base
                )
                session.log("status", {"text": "workspace cloned", "base": workspace.base_sha})
                if workspace.conflicted:
                    conflicted = {"text": "merged the base: conflicts to resolve"}
                    session.log("status", {**conflicted, "conflicts": workspace.conflicted})
            else:
                workspace = Workspace.empty(lease, self._workspace_path(lease))
            task = Task(
                ticket=context.ticket,
                workspace=workspace.path,
                model_base_url=self.config.llm_url or f"{self.config.api_url.rstrip('/')}/llm",
                model_api_key=lease.token,
                plan_title=context.plan_title,
                plan_description=context.plan_description,
                dependencies=tuple(
                    Dependency(d.key, d.title, d.summary) for d in context.dependencies
                ),
                model=self.config.model,
                timeout_s=self.config.ticket_timeout_s,
                env=self.config.env,
            )
            driven = time.monotonic()
            result = self.driver.run(task, session.log, session.stop)
            session.agent_s = time.monotonic() - driven
            return self._finish(session, workspace, result, started)
        except (GitError, SwarmError) as exc:
            if isinstance(exc, StaleLease) or session.lost.is_set():
                return session.end_lost(exc.message, started)
            return session.end_failed(exc.message, retryable=True, started=started)
        except Exception as exc:  # a driver's bug must not leave the lease hanging
            log.exception("the driver failed on ticket %s", ticket.id)
            return session.end_failed(
                f"the runner failed: {exc!r}", retryable=True, started=started
            )
        finally:
            session.close()
            self._remember(None)
            if workspace is not None:
                workspace.remove()

    def _finish(
        self, session: _Session, workspace: Workspace, result: DriverResult, started: float
    ) -> Outcome:
        model_s = result.model_s
        if session.lost.is_set():
            return session.end_lost(session.lost_reason, started, model_s)
        if self.stopping.is_set() and not result.ok:
            return session.end_released(started, model_s)
        if not result.ok:
            reason = result.error or "the agent failed"
            return session.end_failed(reason, result.retryable, started, model_s)
        ticket = session.lease.ticket
        branch = None
        left = workspace.markers_left(workspace.conflicted)
        if left:
            reason = f"conflict markers are left in {', '.join(left)}"
            return session.end_failed(reason, True, started, model_s)
        if workspace.remote:
            message = f"{ticket.key}: {ticket.title}".strip(": ")
            summary = result.summary.strip()
            if summary:
                message += "\n\n" + clip(summary, 4000)
            if workspace.commit(message, author=f"Swarm agent {self.config.agent}"):
                sha = workspace.push()
                branch = workspace.branch
                session.log("status", {"text": f"pushed {branch}", "sha": sha})
            else:
                session.log("status", {"text": "no change to push"})
        return session.end_done(
            TicketResult(summary=result.summary, branch=branch), started, model_s
        )


class _Session:
    """One lease at work: its heartbeat, its log, and the one call that ends it."""

    def __init__(self, runner: Runner, lease: Lease) -> None:
        self.runner = runner
        self.api = runner.api
        self.lease = lease
        self.stop = threading.Event()  # tells the driver to stop
        self.lost = threading.Event()
        self.lost_reason = ""
        self.agent_s = 0.0
        self._entries: queue.Queue[dict[str, Any]] = queue.Queue()
        self._done = threading.Event()
        self._flushing = threading.Lock()
        ttl = lease.ttl_s
        self.interval = runner.config.heartbeat_s or max(0.5, ttl / 3)
        self._threads = [
            threading.Thread(target=self._heartbeat, daemon=True, name="heartbeat"),
            threading.Thread(target=self._flush_loop, daemon=True, name="log"),
        ]
        self._deadline_timer: threading.Timer | None = None

    def start(self) -> None:
        self.runner.usage.sample()  # the first heartbeat's cpu is measured from here
        for thread in self._threads:
            thread.start()
        # SIGTERM reaches the driver through the session's stop
        threading.Thread(target=self._watch_stopping, daemon=True).start()

    def _watch_stopping(self) -> None:
        while not self._done.is_set():
            if self.runner.stopping.wait(0.1):
                self.stop.set()
                return

    def log(self, kind: LogKind, data: dict[str, Any]) -> None:
        self._entries.put({"kind": kind, "data": data})

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            self.stop.set()
            print(f"ticket {self.lease.ticket.id}: lease lost: {reason}", flush=True)

    def _heartbeat(self) -> None:
        while not self._done.wait(self.interval):
            try:
                usage = self.runner.usage.sample()
                self.api.heartbeat(self.lease, self.runner.config.ttl_s, sandbox=usage)
            except StaleLease as exc:
                self._lose(exc.message)
                return
            except SwarmError as exc:  # unreachable for a moment: the next beat may land
                log.warning("heartbeat of ticket %s: %s", self.lease.ticket.id, exc.message)

    def _flush_loop(self) -> None:
        while not self._done.is_set():
            time.sleep(LOG_FLUSH_S)
            self.flush()
        self.flush()

    def flush(self) -> None:
        with self._flushing:  # one batch at a time, so the log keeps its order
            self._flush()

    def _flush(self) -> None:
        batch: list[dict[str, Any]] = []
        while len(batch) < LOG_BATCH:
            try:
                batch.append(self._entries.get_nowait())
            except queue.Empty:
                break
        while batch:
            if self.lost.is_set():
                return
            try:
                self.api.agent_log(self.lease, batch)
            except StaleLease as exc:
                self._lose(exc.message)
                return
            except SwarmError as exc:
                log.warning("log of ticket %s: %s", self.lease.ticket.id, exc.message)
                return
            batch = []
            while len(batch) < LOG_BATCH:
                try:
                    batch.append(self._entries.get_nowait())
                except queue.Empty:
                    break

    def close(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=10)

    # -- ends: exactly one of them per lease ------------------------------------------------

    def _drain(self) -> None:
        """Send the rest of the log before the lease ends (after, it would be refused)."""
        self.flush()

    def _outcome(self, state: str, detail: str, started: float, model_s: float) -> Outcome:
        seconds = time.monotonic() - started
        return Outcome(self.lease.ticket.id, state, detail, model_s, seconds, self.agent_s)

    def end_done(self, result: TicketResult, started: float, model_s: float) -> Outcome:
        self._drain()
        try:
            self.api.complete(self.lease, result)
        except StaleLease as exc:
            return self.end_lost(exc.message, started, model_s)
        return self._outcome("done", result.branch or "", started, model_s)

    def end_failed(
        self, reason: str, retryable: bool, started: float, model_s: float = 0.0
    ) -> Outcome:
        if self.runner.stopping.is_set() and retryable:
            return self.end_released(started, model_s)
        self.log("error", {"text": clip(reason, 4000), "retryable": retryable})
        self._drain()
        try:
            self.api.fail(self.lease, clip(reason, 4000), retryable=retryable)
        except StaleLease as exc:
            return self.end_lost(exc.message, started, model_s)
        except SwarmError as exc:
            log.warning("could not fail ticket %s: %s", self.lease.ticket.id, exc.message)
        return self._outcome("failed", reason, started, model_s)

    def end_released(self, started: float, model_s: float = 0.0) -> Outcome:
        self.log("status", {"text": "the agent was stopped; the ticket goes back to ready"})
        self._drain()
        try:
            self.api.release(self.lease, "the agent was stopped")
        except StaleLease as exc:
            return self.end_lost(exc.message, started, model_s)
        except SwarmError as exc:
            log.warning("could not release ticket %s: %s", self.lease.ticket.id, exc.message)
        return self._outcome("released", "", started, model_s)

    def end_lost(self, reason: str, started: float, model_s: float = 0.0) -> Outcome:
        self._lose(reason)
        return self._outcome("lost", reason, started, model_s)
