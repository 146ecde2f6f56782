"""The default driver: Claude Code, headless, its stream of messages read as the ticket's log.

The CLI is the one the ``claude-agent-sdk`` wheel bundles (``claude_agent_sdk/_bundled/claude``),
or ``claude`` on ``$PATH`` (the VM image installs it at ``/usr/local/bin/claude``). It runs as
``claude -p PROMPT --output-format stream-json --verbose --permission-mode acceptEdits
--allowedTools …`` in the workspace, with ``ANTHROPIC_BASE_URL`` at the LLM gateway and
``ANTHROPIC_API_KEY`` set to the lease token: the real key never reaches it. Each line it prints
is one JSON message — the session's start, an assistant turn (text and tool calls), the tool
results sent back, the final result — and each becomes log entries as it arrives.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from swarmstack.agent.drivers.process import ProcessRun
from swarmstack.agent.task import Driver, DriverResult, LogSink, Task, clip
from swarmstack.errors import UsageError

DEFAULT_TOOLS = ("Bash", "Edit", "MultiEdit", "Write", "Read", "Glob", "Grep", "LS", "TodoWrite")

# Claude Code's background traffic (telemetry, updates, error reports) has nowhere to go from
# a sandbox without a network; asked not to, it does not try.
QUIET = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


def find_cli(explicit: str | None = None) -> str:
    """The Claude Code CLI: ``explicit``, else the bundled one, else ``claude`` on $PATH."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise UsageError(f"the Claude Code CLI {explicit} is not an executable file")
        return explicit
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "_bundled" / "claude"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("claude")
    if found:
        return found
    raise UsageError(
        "no Claude Code CLI here: install the agent extra (pip install 'swarmstack[agent]'), "
        "put claude on $PATH, or name it with --claude"
    )


class ClaudeCodeDriver(Driver):
    """Options: ``claude`` (the CLI's path), ``allowed_tools``, ``max_turns``, ``extra_args``."""

    name = "claude-code"

    def __init__(
        self,
        claude: str | None = None,
        allowed_tools: tuple[str, ...] | list[str] = DEFAULT_TOOLS,
        max_turns: int | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.cli = find_cli(claude)
        self.allowed_tools = tuple(allowed_tools)
        self.max_turns = max_turns
        self.extra_args = tuple(extra_args)

    def argv(self, task: Task) -> list[str]:
        argv = [self.cli, "-p", task.prompt(), "--output-format", "stream-json", "--verbose"]
        argv += ["--permission-mode", "acceptEdits"]
        argv += ["--allowedTools", ",".join(self.allowed_tools)]
        if task.model:
            argv += ["--model", task.model]
        if self.max_turns:
            argv += ["--max-turns", str(self.max_turns)]
        return [*argv, *self.extra_args]

    def environment(self, task: Task) -> dict[str, str]:
        env = {
            **os.environ,
            **task.env,
            **QUIET,
            "ANTHROPIC_BASE_URL": task.model_base_url,
            "ANTHROPIC_API_KEY": task.model_api_key,
        }
        env.pop("ANTHROPIC_AUTH_TOKEN", None)  # it would win over the key
        return env

    def run(self, task: Task, log: LogSink, stop: threading.Event) -> DriverResult:
        stream = _Stream(log)
        run = ProcessRun(
            self.argv(task),
            cwd=task.workspace,
            env=self.environment(task),
            on_stdout=stream.line,
            on_stderr=lambda line: log("output", {"stream": "stderr", "text": clip(line)}),
        )
        outcome = run.wait(stop, task.timeout_s)
        if outcome.error is not None:
            return DriverResult(
                ok=False, error=outcome.error, retryable=outcome.retryable, model_s=stream.model_s
            )
        final = stream.result
        if final is None:
            tail = outcome.stderr_tail or "no result message"
            return DriverResult(
                ok=False,
                error=f"Claude Code exited with {outcome.exit_code} without a result: {tail}",
                model_s=stream.model_s,
            )
        text = str(final.get("result") or "")
        if final.get("is_error") or final.get("subtype") != "success" or outcome.exit_code != 0:
            why = text or str(final.get("subtype") or "error")
            refused = "403" in why or "permission_error" in why or "over budget" in why
            return DriverResult(
                ok=False,
                error=f"Claude Code failed: {clip(why, 2000)}",
                retryable=not refused,
                model_s=stream.model_s,
            )
        return DriverResult(summary=clip(text, 20_000) or "done", model_s=stream.model_s)


class _Stream:
    """Claude Code's stream-json output, a line at a time, as log entries."""

    def __init__(self, log: LogSink) -> None:
        self.log = log
        self.result: dict[str, Any] | None = None
        self.model_s = 0.0
        self._started = time.monotonic()

    def line(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            if line.strip():
                self.log("output", {"stream": "stdout", "text": clip(line)})
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "system":
            if message.get("subtype") == "init":
                self.log(
                    "status",
                    {
                        "text": "Claude Code started",
                        "model": message.get("model"),
                        "tools": message.get("tools"),
                        "session_id": message.get("session_id"),
                    },
                )
        elif kind == "assistant":
            for block in _content(message):
                if block.get("type") == "text" and str(block.get("text", "")).strip():
                    self.log("message", {"text": clip(str(block["text"]))})
                elif block.get("type") == "tool_use":
                    self.log(
                        "tool_call",
                        {
                            "id": block.get("id"),
                            "name": block.get("name"),
                            "input": _clip_values(block.get("input")),
                        },
                    )
        elif kind == "user":
            for block in _content(message):
                if block.get("type") == "tool_result":
                    self.log(
                        "tool_result",
                        {
                            "id": block.get("tool_use_id"),
                            "is_error": bool(block.get("is_error")),
                            "output": clip(_text(block.get("content"))),
                        },
                    )
        elif kind == "result":
            self.result = message
            api_ms = message.get("duration_api_ms")
            if isinstance(api_ms, int | float):
                self.model_s = float(api_ms) / 1000
            self.log(
                "status",
                {
                    "text": "Claude Code finished",
                    "subtype": message.get("subtype"),
                    "is_error": bool(message.get("is_error")),
                    "turns": message.get("num_turns"),
                    "duration_s": (message.get("duration_ms") or 0) / 1000,
                },
            )


def _content(message: dict[str, Any]) -> list[dict[str, Any]]:
    inner = message.get("message")
    content = inner.get("content") if isinstance(inner, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", "")) for b in content if isinstance(b, dict) and "text" in b
        )
    return "" if content is None else json.dumps(content)


def _clip_values(value: Any) -> Any:
    if isinstance(value, str):
        return clip(value, 4_000)
    if isinstance(value, dict):
        return {str(k): _clip_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_values(v) for v in value[:100]]
    return value
