"""The command driver: any CLI agent, started from a template of its command line.

The template is split like a shell would split it (``shlex``) and then each word is filled in,
so a prompt with spaces and quotes stays one argument and no shell ever sees it::

    CommandDriver(command="aider --yes --message-file {prompt_file} --model {model}")

Placeholders: ``{prompt}``, ``{prompt_file}`` (a file holding the prompt, outside the
workspace), ``{workspace}``, ``{ticket_id}``, ``{ticket_key}`` and ``{model}`` (empty when the
task names none); a literal brace is doubled (``{{``). The agent finds the model gateway in
``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY``, and the ticket in ``SWARM_TICKET_ID``,
``SWARM_TICKET_KEY`` and ``SWARM_PROMPT_FILE``. What it prints becomes the ticket's log."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Literal

from swarmstack.agent.drivers.process import ProcessRun
from swarmstack.agent.task import Driver, DriverResult, LogSink, Task, clip
from swarmstack.errors import UsageError

PLACEHOLDERS = ("prompt", "prompt_file", "workspace", "ticket_id", "ticket_key", "model")
SUMMARY_LIMIT = 2_000  # characters of the last stdout lines that make the summary
ERROR_LIMIT = 500  # characters of the line quoted in an error


class _Placeholders(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise UsageError(
            f"the agent command has an unknown placeholder {{{key}}}: use "
            + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            + " (and {{ or }} for a literal brace)"
        )


class CommandDriver(Driver):
    """A CLI agent run from the ``command`` template, for at most ``timeout_s`` (default: the
    task's timeout)."""

    name = "command"

    def __init__(self, command: str, timeout_s: float | None = None) -> None:
        try:
            self.words = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"the agent command does not parse: {exc}: {command}") from None
        if not self.words:
            raise UsageError("the agent command is empty")
        dummy = _Placeholders((p, p) for p in PLACEHOLDERS)
        for word in self.words:
            try:
                word.format_map(dummy)
            except (ValueError, IndexError, AttributeError) as exc:
                raise UsageError(
                    f"the agent command's word {word!r} does not fill: {exc}"
                ) from None
        self.timeout_s = timeout_s

    def run(self, task: Task, log: LogSink, stop: threading.Event) -> DriverResult:
        folder = Path(tempfile.mkdtemp(prefix="swarm-prompt-"))
        try:
            prompt = task.prompt()
            prompt_file = folder / "prompt.md"
            prompt_file.write_text(prompt, encoding="utf-8")
            values = _Placeholders(
                prompt=prompt,
                prompt_file=str(prompt_file),
                workspace=str(task.workspace),
                ticket_id=str(task.ticket.id),
                ticket_key=task.ticket.key,
                model=task.model or "",
            )
            argv = [word.format_map(values) for word in self.words]
            env = {
                **os.environ,
                **task.env,
                "ANTHROPIC_BASE_URL": task.model_base_url,
                "ANTHROPIC_API_KEY": task.model_api_key,
                "SWARM_TICKET_ID": str(task.ticket.id),
                "SWARM_TICKET_KEY": task.ticket.key,
                "SWARM_PROMPT_FILE": str(prompt_file),
            }
            timeout_s = self.timeout_s if self.timeout_s is not None else task.timeout_s
            return _run(argv, task.workspace, env, timeout_s, log, stop)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _run(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    log: LogSink,
    stop: threading.Event,
) -> DriverResult:
    lock = threading.Lock()  # one log entry at a time, whatever the sink
    stdout = _Lines("stdout", log, lock)
    stderr = _Lines("stderr", log, lock)
    run = ProcessRun(argv, cwd=cwd, env=env, on_stdout=stdout.add, on_stderr=stderr.add)
    outcome = run.wait(stop, timeout_s)
    if outcome.error is not None:
        if outcome.retryable:  # stopped, or out of time
            error, said = outcome.error, f"the agent command {outcome.error}"
        else:  # it never started
            error = said = outcome.error.replace("cannot start", "cannot start the agent command")
        with lock:
            log("error", {"text": said})
        return DriverResult(ok=False, error=error, retryable=outcome.retryable)
    if outcome.exit_code != 0:
        last = stderr.last() or stdout.last()
        error = f"the agent command exited with {outcome.exit_code}" + (f": {last}" if last else "")
        return DriverResult(ok=False, error=error, retryable=True)
    return DriverResult(summary=stdout.summary() or "the command finished")


class _Lines:
    """One of the agent's streams, read a line at a time into the log; its last lines kept."""

    def __init__(
        self, stream: Literal["stdout", "stderr"], log: LogSink, lock: threading.Lock
    ) -> None:
        self.stream = stream
        self.log = log
        self.lock = lock
        self.tail: deque[str] = deque(maxlen=200)

    def add(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.strip():
            self.tail.append(line)
        with self.lock:
            self.log("output", {"stream": self.stream, "text": clip(line)})

    def last(self) -> str:
        """The last non-empty line, clipped for an error message."""
        return clip(self.tail[-1].strip(), ERROR_LIMIT) if self.tail else ""

    def summary(self) -> str:
        """The last non-empty lines, as many as fit in :data:`SUMMARY_LIMIT`."""
        kept: list[str] = []
        size = 0
        for line in reversed(self.tail):
            if size + len(line) + 1 > SUMMARY_LIMIT:
                if not kept:
                    kept.append(line[-SUMMARY_LIMIT:])
                break
            kept.append(line)
            size += len(line) + 1
        return "\n".join(reversed(kept))
