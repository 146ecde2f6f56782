"""What a driver is given and what it gives back: the contract between the runner and the agents.

The runner (:mod:`swarmstack.agent.runner`) claims a ticket, prepares a workspace and hands a
driver a :class:`Task`. The driver does the work in the workspace — writes files, runs commands —
and returns a :class:`DriverResult`; committing and pushing are the runner's. Everything the
agent says or does along the way goes to the :class:`LogSink`, which becomes the ticket's log::

    class EchoDriver(Driver):
        name = "echo"

        def run(self, task: Task, log: LogSink, stop: threading.Event) -> DriverResult:
            log("message", {"text": task.prompt()})
            return DriverResult(summary="said it")

A driver must return soon after ``stop`` is set (the lease is lost, the runner got SIGTERM or
the ticket timed out); it then returns whatever it has, and the runner decides what it means.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from swarmstack.tickets.models import FixRequest, Ticket

# What a log entry is about; each becomes an ``agent.<kind>`` event of the ticket.
LogKind = Literal["message", "tool_call", "tool_result", "output", "status", "error"]
LOG_KINDS: tuple[str, ...] = ("message", "tool_call", "tool_result", "output", "status", "error")


class LogSink(Protocol):
    def __call__(self, kind: LogKind, data: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Dependency:
    """A ticket this one builds on, and what its agent said it did."""

    key: str
    title: str
    summary: str


@dataclass(frozen=True)
class Task:
    """One ticket to implement, in a workspace that holds the repository at its base.

    ``model_base_url`` and ``model_api_key`` are the LLM gateway as the sandbox reaches it and
    the lease token: an Anthropic SDK or CLI pointed at them works as if it spoke to the API."""

    ticket: Ticket
    workspace: Path
    model_base_url: str
    model_api_key: str
    plan_title: str = ""
    plan_description: str = ""
    dependencies: tuple[Dependency, ...] = ()
    model: str | None = None  # None: the driver's own default
    timeout_s: float = 1800.0
    env: dict[str, str] = field(default_factory=dict)  # extra environment for agent processes

    def prompt(self) -> str:
        """The ticket as instructions for a coding agent; a fix attempt says first what went
        wrong when its work was merged."""
        t = self.ticket
        if t.fix is not None:
            parts = [
                f"You are fixing ticket {t.key} of the plan {self.plan_title!r}: attempt "
                f"{t.attempts}. Its work is done but could not be merged.",
                fix_instructions(t.fix),
            ]
        else:
            parts = [f"You are implementing ticket {t.key} of the plan {self.plan_title!r}."]
        if self.plan_description.strip():
            parts.append(f"About the plan:\n{self.plan_description.strip()}")
        parts.append(f"Ticket {t.key}: {t.title}".rstrip())
        if t.body.strip():
            parts.append(t.body.strip())
        if t.acceptance:
            parts.append("Acceptance criteria:\n" + "\n".join(f"- {a}" for a in t.acceptance))
        if t.files:
            parts.append("Files this ticket is expected to touch:\n" + "\n".join(t.files))
        if self.dependencies:
            done = "\n".join(
                f"- {d.key} ({d.title}): {d.summary or 'no summary'}" for d in self.dependencies
            )
            parts.append(f"Already done by the tickets this one builds on:\n{done}")
        parts.append(
            "Work in the current directory, which holds the repository. Make the change, run "
            "the relevant tests, and finish with a short summary of what you did. Do not "
            "commit or push: that is done for you."
        )
        return "\n\n".join(parts)


def fix_instructions(fix: FixRequest) -> str:
    """What a fix attempt's agent is told about the merge that went wrong."""
    base = f"`{fix.base}` (at {fix.base_sha[:12]})"
    if fix.reason == "conflict":
        paths = "\n".join(f"- {p}" for p in fix.conflicts) or "- (git named none)"
        text = (
            f"Merging this ticket's branch into {base} conflicted. The workspace holds the "
            f"ticket's branch with {fix.base} merged into it, and git's conflict markers "
            f"(<<<<<<<, =======, >>>>>>>) in these files:\n{paths}\n\nResolve every "
            "conflict so that both sides' intent is kept, remove the markers, and run the "
            "tests. Do not commit: the merge is concluded for you."
        )
        if fix.details.strip():
            text += f"\n\nWhat git said:\n{clip(fix.details.strip(), 4_000)}"
        return text
    if fix.reason == "checks":
        how = "timed out" if fix.timed_out else f"failed with exit code {fix.exit_code}"
        return (
            f"After merging into {base} the repository's checks (`{fix.command}`) {how}. The "
            f"workspace holds the ticket's branch with {fix.base} merged into it. Make the "
            "checks pass without weakening them, and run them.\n\nThe end of their "
            f"output:\n{clip(fix.details.strip(), 8_000)}"
        )
    return (
        f"The merge into {base} could not be made: {fix.details.strip()}. The workspace "
        f"starts from {fix.base}; do the ticket's work again."
    )


@dataclass
class DriverResult:
    """How the work went. ``ok`` false fails the ticket with ``error`` (retried when
    ``retryable``); true completes it with ``summary`` and whatever the workspace holds."""

    summary: str = ""
    ok: bool = True
    error: str | None = None
    retryable: bool = True
    model_s: float = 0.0  # time spent waiting for the model, where the driver can tell


class Driver(abc.ABC):
    """A coding agent the runner can drive."""

    name: ClassVar[str]

    @abc.abstractmethod
    def run(self, task: Task, log: LogSink, stop: threading.Event) -> DriverResult:
        """Do the ticket's work in ``task.workspace``; return soon after ``stop`` is set."""


def clip(text: str, limit: int = 8_000) -> str:
    """``text`` cut to ``limit`` characters for a log entry, saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [{len(text) - limit} more characters]"
