"""The builtin driver: a small Messages-API tool loop of our own, with four tools.

The model reads, writes and edits files and runs shell commands in the workspace, nothing else:
a path is relative to the workspace and may not lead out of it (not even through a symlink),
and a command runs in a process group of its own that is killed on its timeout or when the
driver is stopped. Each model call goes through the Anthropic SDK to ``task.model_base_url``
(the LLM gateway) with the lease token as the key, so the gateway's refusals — a stale lease,
a spent budget — end the work for good."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import anthropic
from anthropic.types import Message, MessageParam, ToolParam, ToolResultBlockParam

from swarmstack.agent.task import Driver, DriverResult, LogSink, Task, clip

SYSTEM = (
    "You are a coding agent working in a repository: the current directory. Use the tools to "
    "read and change files and to run commands (tests, linters). Paths are relative to the "
    "repository. When the work is done, answer with a short summary of what you did."
)

RUN_OUTPUT_LIMIT = 20_000  # characters of a command's output the model gets back
READ_LIMIT = 100_000  # characters of a file the model gets back

TOOLS: list[ToolParam] = [
    {
        "name": "read_file",
        "description": "The text of a file of the repository.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "relative to the repo"}},
            "required": ["path"],
        },
    },
    {
        "name": "write_file",
        "description": "Write a file of the repository (created with its folders, or replaced).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "edit_file",
        "description": "Replace the one occurrence of `old` in a file with `new`; `old` must "
        "occur exactly once.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old": {"type": "string"},
                "new": {"type": "string"},
            },
            "required": ["path", "old", "new"],
        },
    },
    {
        "name": "run",
        "description": "Run a shell command (bash) in the repository; returns its exit code "
        "and its output (stdout and stderr together).",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
]


class ToolError(Exception):
    """A tool call that cannot be done: its message goes back to the model as an error."""


class _Stopped(Exception):
    """``stop`` was set while the driver waited."""


class BuiltinDriver(Driver):
    """Our own tool loop over the Messages API.

    ``model`` is used unless the task names one; the work gives up (retryably) after
    ``max_turns`` model calls; each ``run`` command may take ``command_timeout_s``."""

    name = "builtin"

    def __init__(
        self,
        model: str = "claude-sonnet-4-6",  # 4-5 is deprecated: the SDK warns
        max_turns: int = 60,
        max_tokens: int = 8192,
        command_timeout_s: float = 300,
        model_timeout_s: float = 600,
    ) -> None:
        self.model = model
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.command_timeout_s = command_timeout_s
        self.model_timeout_s = model_timeout_s

    def run(self, task: Task, log: LogSink, stop: threading.Event) -> DriverResult:
        client = anthropic.Anthropic(
            base_url=task.model_base_url,
            api_key=task.model_api_key,
            max_retries=2,
            timeout=self.model_timeout_s,
        )
        session = _Session(self, task, log, stop, client)
        try:
            return session.work()
        except _Stopped:
            return session.result(ok=False, error="stopped")
        except anthropic.PermissionDeniedError as exc:
            return session.failed(f"the model gateway refused: {_api_message(exc)}", False)
        except anthropic.AuthenticationError as exc:
            return session.failed(f"the model gateway refused the key: {_api_message(exc)}", False)
        except anthropic.APIError as exc:
            return session.failed(f"the model call failed: {_api_message(exc)}", True)
        except Exception as exc:  # a bug here must fail the ticket, not the runner
            return session.failed(f"the builtin driver failed: {exc!r}", True)
        finally:
            client.close()


class _Session:
    """One ticket's conversation: the loop, the tools and the time spent on the model."""

    def __init__(
        self,
        driver: BuiltinDriver,
        task: Task,
        log: LogSink,
        stop: threading.Event,
        client: anthropic.Anthropic,
    ) -> None:
        self.driver = driver
        self.task = task
        self.log = log
        self.stop = stop
        self.client = client
        self.root = task.workspace.resolve()
        self.model_s = 0.0

    def result(self, **fields: Any) -> DriverResult:
        return DriverResult(model_s=self.model_s, **fields)

    def failed(self, error: str, retryable: bool) -> DriverResult:
        self.log("error", {"text": clip(error)})
        return self.result(ok=False, error=error, retryable=retryable)

    def work(self) -> DriverResult:
        messages: list[MessageParam] = [{"role": "user", "content": self.task.prompt()}]
        for _ in range(self.driver.max_turns):
            response = self._ask(messages)
            texts = [b.text for b in response.content if b.type == "text"]
            for text in texts:
                self.log("message", {"text": clip(text)})
            messages.append({"role": "assistant", "content": response.content})
            if response.stop_reason != "tool_use":
                return self.result(summary="\n\n".join(t.strip() for t in texts if t.strip()))
            results: list[ToolResultBlockParam] = []
            for block in response.content:
                if block.type != "tool_use":
                    continue
                tool_input = block.input if isinstance(block.input, dict) else {}
                shown = {k: clip(v) if isinstance(v, str) else v for k, v in tool_input.items()}
                self.log("tool_call", {"name": block.name, "input": shown, "id": block.id})
                output, is_error = self._call(block.name, tool_input)
                self.log(
                    "tool_result", {"id": block.id, "is_error": is_error, "output": clip(output)}
                )
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": block.id,
                        "content": output,
                        "is_error": is_error,
                    }
                )
                if self.stop.is_set():
                    raise _Stopped
            messages.append({"role": "user", "content": results})
        return self.failed(f"gave up after {self.driver.max_turns} turns", True)

    def _ask(self, messages: list[MessageParam]) -> Message:
        """The model's next turn, called in a thread so that ``stop`` ends the wait for it."""
        if self.stop.is_set():
            raise _Stopped
        outcome: list[Message | BaseException] = []

        def call() -> None:
            try:
                outcome.append(
                    self.client.messages.create(
                        model=self.task.model or self.driver.model,
                        max_tokens=self.driver.max_tokens,
                        system=SYSTEM,
                        tools=TOOLS,
                        messages=messages,
                    )
                )
            except BaseException as exc:  # handed to the waiting thread
                outcome.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=call, name="builtin-model-call", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                if self.stop.wait(0.05):
                    raise _Stopped  # the call is abandoned; closing the client ends it
                thread.join(0.05)
        finally:
            self.model_s += time.monotonic() - started
        answer = outcome[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    # -- the tools ---------------------------------------------------------------------------

    def _call(self, name: str, tool_input: dict[str, Any]) -> tuple[str, bool]:
        """What a tool call gives back to the model, and whether it is an error."""
        try:
            if name == "read_file":
                return self._read(_arg(tool_input, "path")), False
            if name == "write_file":
                return self._write(_arg(tool_input, "path"), _arg(tool_input, "content")), False
            if name == "edit_file":
                old, new = _arg(tool_input, "old"), _arg(tool_input, "new")
                return self._edit(_arg(tool_input, "path"), old, new), False
            if name == "run":
                return self._run(_arg(tool_input, "command"))
            raise ToolError(f"there is no tool {name!r}: use read_file, write_file, edit_file, run")
        except ToolError as exc:
            return str(exc), True
        except OSError as exc:
            if exc.filename:
                return f"{exc.strerror}: {_relative(self.root, exc.filename)}", True
            return str(exc), True
        except UnicodeDecodeError:
            return "the file is not UTF-8 text", True

    def _path(self, path: str) -> Path:
        if not path.strip():
            raise ToolError("the path is empty")
        if Path(path).is_absolute():
            raise ToolError(f"{path} is an absolute path: give it relative to the repository")
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            raise ToolError(f"{path} is outside the repository")
        return target

    def _read(self, path: str) -> str:
        return clip(self._path(path).read_text(encoding="utf-8"), READ_LIMIT)

    def _write(self, path: str, content: str) -> str:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return f"wrote {path} ({len(content)} characters)"

    def _edit(self, path: str, old: str, new: str) -> str:
        if not old:
            raise ToolError("old is empty: give the text to replace")
        target = self._path(path)
        text = target.read_text(encoding="utf-8")
        count = text.count(old)
        if count != 1:
            raise ToolError(f"old occurs {count} times in {path}; it must occur exactly once")
        target.write_text(text.replace(old, new, 1), encoding="utf-8")
        return f"edited {path}"

    def _run(self, command: str) -> tuple[str, bool]:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.root,
            env={**os.environ, **self.task.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        output = _Capture(RUN_OUTPUT_LIMIT)
        reader = threading.Thread(target=output.read, args=(process.stdout,), daemon=True)
        reader.start()
        deadline = time.monotonic() + self.driver.command_timeout_s
        ended = ""
        while True:
            try:
                process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stop.is_set():
                ended = "the command was stopped"
            elif time.monotonic() > deadline:
                ended = f"the command timed out after {self.driver.command_timeout_s:g}s"
            if ended:
                kill_group(process)
                break
        kill_group(process)  # what it left running in the background holds the pipe
        reader.join(timeout=5)
        process.stdout.close()
        if ended:
            return f"{ended}\n{output.text()}", True
        return f"exit code {process.returncode}\n{output.text()}", process.returncode != 0


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the process group of ``process`` (it leads one: ``start_new_session``) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class _Capture:
    """A command's output, holding its start and its end when it is longer than ``limit``."""

    def __init__(self, limit: int) -> None:
        self.half = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.cut = 0

    def read(self, pipe: Any) -> None:
        while chunk := pipe.read1(65536):
            room = max(0, self.half - len(self.head))
            self.head += chunk[:room]
            self.tail += chunk[room:]
            if len(self.tail) > self.half:
                self.cut += len(self.tail) - self.half
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> str:
        head = self.head.decode(errors="replace")
        tail = self.tail.decode(errors="replace")
        if self.cut:
            return f"{head}\n… [{self.cut} bytes cut] …\n{tail}"
        return head + tail


def _relative(root: Path, filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(root)) if path.is_relative_to(root) else filename


def _arg(tool_input: dict[str, Any], key: str) -> str:
    value = tool_input.get(key)
    if not isinstance(value, str):
        raise ToolError(f"the tool needs {key!r} as a string")
    return value


def _api_message(exc: anthropic.APIError) -> str:
    """The API's own words for an error (``over budget: ...``), else the SDK's."""
    body = exc.body
    if isinstance(body, dict):
        error = cast(dict[str, Any], body).get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message
