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

from swarmstack.tickets.models import Ticket

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
        """The ticket as instructions for a coding agent."""
        t = self.ticket
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
