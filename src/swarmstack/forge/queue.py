"""The merge queue: a ticket is done only when its work is in the integration branch.

A ticket whose agent pushed a branch completes as ``merging``. The queue takes a plan's merging
tickets one at a time, first come first served — each one's dependencies are merged already,
since it could not be claimed before they were, so this order is the DAG's — and for each:

1. merges ``swarm/<id>`` into the integration branch in the bare repository, in memory
   (:func:`swarmstack.forge.merge.prepare`);
2. runs the plan's checks (its ``checks`` command, else ``checks`` in the repository's
   ``.swarm.toml``) on the merged commit, in a fresh sandbox;
3. moves the integration branch to the merged commit if it has not moved meanwhile, and marks
   the ticket done — which makes ready the dependents whose last dependency it was.

A conflict, failing checks or a merge that cannot be made sends the ticket back to the agents
as a fix attempt on the same branch (and so the same pull request), with git's account of the
conflict or the checks' output and the base it was merged onto; after its last attempt the
ticket is dead and needs a person. Plans are merged side by side; within a plan one merge runs
at a time, since each lands on the one before.

Nothing is held in memory that the store does not also hold: a control plane that stops while
a ticket is merging takes it up again when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from swarmstack.errors import Conflict, InvalidRequest, NotFound, SwarmError
from swarmstack.forge import hostgit
from swarmstack.forge.checks import run_checks
from swarmstack.forge.local import LocalForge, ticket_branch
from swarmstack.forge.merge import MergeResult, land, prepare
from swarmstack.forge.mirror import GitHubMirror
from swarmstack.sandbox.base import Backend
from swarmstack.tickets.models import FixReason, FixRequest, Plan, Ticket
from swarmstack.tickets.store import TicketStore

log = logging.getLogger("swarmstack.merge")
T = TypeVar("T")

CONFIG_FILE = ".swarm.toml"
# How long the queue waits before it tries again when the checks could not run at all (no
# sandbox could be made): not the ticket's fault, so no attempt of its is spent on it.
RETRY_S = 5.0
# GitHub may refuse a merge the queue made locally (its branch moved under it): so many times
# it is fetched and merged again before the queue waits and tries later.
LAND_TRIES = 3
# A replica that is not told of completions (another one took them) still looks this often.
POLL_S = 5.0


class StoreCall(Protocol):
    """How the queue calls the store: ``AppState.call`` (a worker thread on PostgreSQL)."""

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]: ...


@dataclass(frozen=True)
class RepoConfig:
    """What a repository's ``.swarm.toml`` says (at the commit being merged)."""

    checks: str | None = None
    checks_timeout_s: float | None = None


def repo_config(repo: Path, sha: str) -> RepoConfig:
    """The ``.swarm.toml`` of commit ``sha``; empty when there is none. A file that does not
    parse is the ticket's problem (its branch may have changed it): :class:`InvalidRequest`."""
    code, out, _ = hostgit.run_status("show", f"{sha}:{CONFIG_FILE}", cwd=repo)
    if code != 0:
        return RepoConfig()
    try:
        data = tomllib.loads(out.decode(errors="replace"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{CONFIG_FILE} does not parse: {exc}") from None
    checks = data.get("checks")
    timeout = data.get("checks_timeout_s")
    if checks is not None and not isinstance(checks, str):
        raise InvalidRequest(f"{CONFIG_FILE}: checks must be a string (a shell command)")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise InvalidRequest(f"{CONFIG_FILE}: checks_timeout_s must be a positive number")
    return RepoConfig(checks=checks or None, checks_timeout_s=timeout)


def integration_branch(forge: LocalForge, plan: Plan) -> str:
    """The branch the plan's work goes into, made from the default branch when the plan
    names one the repository does not have yet."""
    default = forge.default_branch(plan.id)
    into = plan.integration_branch or default
    if into != default:
        try:
            forge.sha(plan.id, into)
        except NotFound:
            start = forge.sha(plan.id, default)
            # The zero old value: only if it still does not exist (another request made it).
            hostgit.run_status(
                "update-ref", f"refs/heads/{into}", start, "0" * 40, cwd=forge.require(plan.id)
            )
    return into


def merge_message(ticket: Ticket) -> str:
    return (
        f"{ticket.key}: {ticket.title}\n\n"
        f"Merged by Swarm: ticket {ticket.id} of plan {ticket.plan_id}, branch "
        f"{ticket_branch(ticket.id)}."
    )


class MergeQueue:
    """Merges the branches of merging tickets, plan by plan, while the control plane runs."""

    def __init__(
        self,
        store: TicketStore,
        forge: LocalForge,
        backend: Callable[[], Awaitable[Backend]],
        *,
        call: StoreCall | None = None,
        checks_timeout_s: float = 900.0,
        mirror: GitHubMirror | None = None,
    ) -> None:
        self.store = store
        self.forge = forge
        self.mirror = mirror
        self._backend = backend
        self._call: StoreCall = call or _direct
        self.checks_timeout_s = checks_timeout_s
        self._wake = asyncio.Event()
        self._plans: dict[int, asyncio.Task[None]] = {}
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="swarm-merge-queue")

    async def close(self) -> None:
        tasks = [t for t in (self._runner, *self._plans.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """A ticket became merging (or the queue should look again)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                queued = await self._call(self.store.merging)
            except Exception:  # the store is down for a moment: look again later
                log.exception("the merge queue could not read the store")
                queued = []
            for plan_id in dict.fromkeys(t.plan_id for t in queued):
                task = self._plans.get(plan_id)
                if task is None or task.done():
                    self._plans[plan_id] = asyncio.create_task(
                        self._drain(plan_id), name=f"swarm-merge-plan-{plan_id}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_S)

    async def _drain(self, plan_id: int) -> None:
        """Merge a plan's merging tickets until none is left."""
        while True:
            queued = await self._call(self.store.merging, plan_id)
            if not queued:
                return
            try:
                await self.merge_one(queued[0])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the infrastructure, not the ticket: try again soon
                log.exception("merging ticket %d failed; trying again", queued[0].id)
                with contextlib.suppress(SwarmError):
                    reason = exc.message if isinstance(exc, SwarmError) else repr(exc)
                    await self._call(
                        self.store.note, "merge.waiting", queued[0], {"reason": reason}
                    )
                await asyncio.sleep(RETRY_S)

    async def merge_one(self, ticket: Ticket) -> Ticket | None:
        """Merge, check and land one merging ticket; returns it as it ends (done, ready for a
        fix attempt, or dead), or None when it stopped being merging meanwhile."""
        plan = await self._call(self.store.get_plan, ticket.plan_id)
        repo = self.forge.require(plan.id)
        into = await asyncio.to_thread(integration_branch, self.forge, plan)
        branch = ticket_branch(ticket.id)
        mirror = self.mirror if plan.github else None
        number = 0
        if mirror is not None:
            await asyncio.to_thread(mirror.sync, plan, into, repo)
            number = await asyncio.to_thread(mirror.publish, plan, ticket, into, repo)
        refused = 0
        while True:
            try:
                result = await asyncio.to_thread(
                    prepare, repo, into=into, branch=branch, message=merge_message(ticket)
                )
            except hostgit.GitFailed as exc:
                base_sha = await asyncio.to_thread(self.forge.sha, plan.id, into)
                fix = FixRequest(
                    reason="error", base=into, base_sha=base_sha, head_sha="", details=exc.message
                )
                return await self._send_back(plan, ticket, fix)
            if not result.merged:
                what = {"conflicts": result.conflicts, "details": result.details}
                return await self._send_back(plan, ticket, _fix("conflict", into, result, **what))
            assert result.sha is not None
            if result.how != "already merged":
                failed = await self._check(plan, repo, ticket, into, result)
                if failed is not None:
                    return await self._send_back(plan, ticket, failed)
                try:
                    if mirror is None:
                        await asyncio.to_thread(land, repo, into, result)
                    else:
                        message = merge_message(ticket)
                        sha = await asyncio.to_thread(
                            mirror.land, plan, number, result.head_sha, message, into, repo
                        )
                        result = dataclasses.replace(result, sha=sha)
                except Conflict:  # the branch moved while the checks ran: merge again
                    refused += 1
                    if mirror is not None:
                        if refused >= LAND_TRIES:
                            raise
                        await asyncio.to_thread(mirror.sync, plan, into, repo)
                    continue
            return await self._merged(ticket, result)

    async def _check(
        self, plan: Plan, repo: Path, ticket: Ticket, into: str, result: MergeResult
    ) -> FixRequest | None:
        """Run the checks on the merged commit; the fix request if they fail."""
        assert result.sha is not None
        try:
            config = await asyncio.to_thread(repo_config, repo, result.sha)
        except SwarmError as exc:
            return _fix("error", into, result, details=exc.message)
        command = plan.checks or config.checks
        if command is None:
            return None
        timeout = config.checks_timeout_s or self.checks_timeout_s
        data = {"sha": result.sha, "command": command, "how": result.how}
        await self._call(self.store.note, "merge.checking", ticket, data)
        backend = await self._backend()
        checked = await run_checks(backend, repo, result.sha, command, timeout_s=timeout)
        summary = {
            "sha": result.sha,
            "passed": checked.passed,
            "exit_code": checked.exit_code,
            "seconds": checked.seconds,
        }
        await self._call(self.store.note, "merge.checked", ticket, summary)
        if checked.passed:
            return None
        return _fix(
            "checks",
            into,
            result,
            details=checked.output,
            command=command,
            exit_code=checked.exit_code,
            timed_out=checked.timed_out,
        )

    async def _send_back(self, plan: Plan, ticket: Ticket, fix: FixRequest) -> Ticket | None:
        # The pull request says why before the ticket is ready again, so whoever sees the
        # fix attempt start finds the reason on it.
        if self.mirror is not None and plan.github:
            try:
                await asyncio.to_thread(self.mirror.sent_back, plan, ticket, fix)
            except SwarmError as exc:  # the pull request misses a comment; nothing else
                log.warning("could not comment on %s's pull request: %s", ticket.key, exc)
        try:
            return await self._call(self.store.send_back, ticket.id, fix)
        except Conflict:  # cancelled, or another replica finished it
            return None

    async def _merged(self, ticket: Ticket, result: MergeResult) -> Ticket | None:
        assert result.sha is not None
        try:
            return await self._call(self.store.merged, ticket.id, sha=result.sha, how=result.how)
        except Conflict:
            return None


async def _direct(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


def _fix(reason: FixReason, into: str, result: MergeResult, **what: Any) -> FixRequest:
    """What the ticket's next attempt must fix, against the base its merge was tried on."""
    return FixRequest(
        reason=reason, base=into, base_sha=result.base_sha, head_sha=result.head_sha, **what
    )
