"""An agent's process: its own process group, its output a line at a time, killed on demand.

Drivers that run a CLI agent start it through :class:`ProcessRun`, which reads stdout and
stderr on two threads (each line to a callback as it arrives) and ends the whole process group —
the agent and every command it started — when the runner says stop or the time is up::

    run = ProcessRun(["claude", "-p", prompt], cwd=workspace, env=env, on_stdout=print)
    outcome = run.wait(stop, timeout_s=1800)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

GRACE_S = 3.0  # between SIGTERM and SIGKILL of the group


@dataclass
class Outcome:
    exit_code: int | None
    error: str | None = None  # set when the process did not simply exit: stopped, timed out
    retryable: bool = True
    stderr_tail: str = ""
    duration_s: float = 0.0


class ProcessRun:
    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        on_stdout: Callable[[str], None],
        on_stderr: Callable[[str], None],
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.on_stdout = on_stdout
        self.on_stderr = on_stderr
        self._tail: deque[str] = deque(maxlen=5)

    def wait(self, stop: threading.Event, timeout_s: float | None) -> Outcome:
        """Run to the end, or until ``stop`` is set or ``timeout_s`` passes (then the group is
        killed). Never raises for the process's sake: a program that cannot start is an
        outcome too."""
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            why = exc.strerror or str(exc)
            return Outcome(None, f"cannot start {self.argv[0]!r}: {why}", retryable=False)
        assert process.stdout is not None and process.stderr is not None
        readers = [
            threading.Thread(target=self._read, args=(process.stdout, self.on_stdout), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, self._stderr), daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = None if timeout_s is None else started + timeout_s
        error = None
        while process.poll() is None:
            if stop.is_set():
                error = "stopped"
                break
            if deadline is not None and time.monotonic() >= deadline:
                error = f"timed out after {timeout_s:g}s"
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)
        if error is not None:
            kill_group(process)
        code = process.wait()
        # Whatever it left running in the background goes with it (and lets go of its pipes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        for reader in readers:
            reader.join(timeout=5)
        return Outcome(
            None if error else code,
            error,
            stderr_tail="\n".join(self._tail),
            duration_s=time.monotonic() - started,
        )

    def _stderr(self, line: str) -> None:
        if line.strip():
            self._tail.append(line.strip())
        self.on_stderr(line)

    @staticmethod
    def _read(stream: IO[bytes], callback: Callable[[str], None]) -> None:
        with stream:
            # A bounded readline: a program that never prints a newline still gets logged.
            for raw in iter(lambda: stream.readline(65536), b""):
                callback(raw.decode("utf-8", errors="replace").rstrip("\n"))


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """End ``process`` and everything in its process group: SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
