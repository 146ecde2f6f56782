"""The builtin and command drivers, on real parts: the builtin driver's Anthropic SDK talks over
HTTP to the scripted model, and every command is a real process in a real workspace."""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from swarmstack.agent.drivers import make_driver
from swarmstack.agent.drivers.builtin import BuiltinDriver
from swarmstack.agent.drivers.command import CommandDriver
from swarmstack.agent.task import LOG_KINDS, DriverResult, LogKind, Task
from swarmstack.errors import UsageError
from swarmstack.llm.scripted import ScriptedModel, load_script
from swarmstack.llm.scripted import create_app as scripted_app
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import Ticket, TicketState

TOKEN = "swlease_test_token"


def _ticket(key: str = "T-1") -> Ticket:
    return Ticket(
        id=7,
        plan_id=1,
        key=key,
        title="write hello",
        body="Write hello.txt and check it.",
        phase="expansion",
        depends_on=[],
        files=["hello.txt"],
        acceptance=["hello.txt says hello swarm"],
        covers=[],
        estimate=1.0,
        priority=0,
        rank=1.0,
        state=TicketState.CLAIMED,
        unmet=0,
        attempts=1,
        max_attempts=3,
        epoch=1,
        lease_agent="agent-1",
        lease_expires_at=None,
        retry_at=None,
        ready_at=None,
        updated_at=0.0,
        last_error=None,
        result=None,
    )


def _task(workspace: Path, base_url: str = "http://127.0.0.1:9", **fields: Any) -> Task:
    workspace.mkdir(exist_ok=True)
    return Task(
        ticket=_ticket(),
        workspace=workspace,
        model_base_url=base_url,
        model_api_key=TOKEN,
        plan_title="drivers",
        **fields,
    )


class Log:
    """A log sink that keeps what it is given."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: LogKind, data: dict[str, Any]) -> None:
        assert kind in LOG_KINDS
        self.entries.append((kind, data))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.entries]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.entries if k == kind]


@contextmanager
def scripted(*turns: Any, **session: Any) -> Iterator[tuple[str, ScriptedModel]]:
    """The scripted model serving one session of ``turns``, at its URL."""
    model = ScriptedModel(load_script({"sessions": [{"turns": list(turns), **session}]}))
    with ThreadedServer(scripted_app(model)) as server:
        yield server.url, model


def _tool(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"tool_use": {"name": name, "input": tool_input}}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no one reaps yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stop_when(condition: Any, stop: threading.Event) -> threading.Thread:
    """Set ``stop`` from another thread once ``condition()`` holds (or after 10 s)."""

    def watch() -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# -- the builtin driver -----------------------------------------------------------------------


def test_builtin_writes_edits_and_checks_a_file_and_sums_up(tmp_path: Path) -> None:
    check = "test \"$(cat pkg/hello.txt)\" = 'hello swarm' && echo checked $EXTRA; echo oops >&2"
    with scripted(
        ["I will write it.", _tool("write_file", path="pkg/hello.txt", content="hello world")],
        [_tool("edit_file", path="pkg/hello.txt", old="world", new="swarm")],
        [_tool("run", command=check)],
        "Done: pkg/hello.txt says hello swarm.",
        delay_s=0.01,
    ) as (url, model):
        task = _task(tmp_path / "ws", url, env={"EXTRA": "by the task"})
        log = Log()
        result = BuiltinDriver().run(task, log, threading.Event())

    assert result == DriverResult(
        summary="Done: pkg/hello.txt says hello swarm.", model_s=result.model_s
    )
    assert result.model_s >= 0.04  # four calls, each "thinking" 10 ms
    assert (task.workspace / "pkg" / "hello.txt").read_text() == "hello swarm"
    assert log.kinds() == ["message"] + ["tool_call", "tool_result"] * 3 + ["message"]
    calls, results = log.of("tool_call"), log.of("tool_result")
    assert [c["name"] for c in calls] == ["write_file", "edit_file", "run"]
    assert calls[0]["input"] == {"path": "pkg/hello.txt", "content": "hello world"}
    assert [r["id"] for r in results] == [c["id"] for c in calls]
    assert not any(r["is_error"] for r in results)
    assert results[2]["output"].startswith("exit code 0\n")
    assert "checked by the task" in results[2]["output"] and "oops" in results[2]["output"]
    assert log.of("message")[-1] == {"text": "Done: pkg/hello.txt says hello swarm."}

    # What the model was sent: the lease token, the tools, the prompt, the results in one turn.
    last = model.requests[-1]
    # This SDK sends the key as a bearer token, not as x-api-key; the gateway takes both.
    headers = last["headers"]
    assert TOKEN in (
        headers.get("x-api-key"),
        headers.get("authorization", "").removeprefix("Bearer "),
    )
    body = last["body"]
    assert body["model"] == "claude-sonnet-4-6"
    assert [t["name"] for t in body["tools"]] == ["read_file", "write_file", "edit_file", "run"]
    assert "coding agent" in body["system"]
    assert body["messages"][0] == {"role": "user", "content": task.prompt()}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 3 + ["user"]
    (sent,) = body["messages"][-1]["content"]
    assert sent["type"] == "tool_result" and sent["tool_use_id"] == calls[2]["id"]


def test_builtin_refuses_paths_out_of_the_workspace_and_bad_edits(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (workspace / "link").symlink_to(outside)
    (workspace / "twice.txt").write_text("a a")
    with scripted(
        [
            _tool("write_file", path="../escape.txt", content="x"),
            _tool("write_file", path=str(outside / "abs.txt"), content="x"),
            _tool("write_file", path="/etc/x", content="x"),
            _tool("write_file", path="link/via-link.txt", content="x"),
            _tool("read_file", path="link/secret.txt"),
            _tool("edit_file", path="twice.txt", old="a", new="b"),
            _tool("edit_file", path="twice.txt", old="zzz", new="b"),
            _tool("read_file", path="missing.txt"),
            _tool("write_file", path="no-content.txt"),
            _tool("delete_everything"),
        ],
        "I could not.",
    ) as (url, model):
        log = Log()
        result = BuiltinDriver(model="claude-haiku-4-5").run(
            _task(workspace, url, model="claude-opus-4-6"), log, threading.Event()
        )

    assert result.ok and result.summary == "I could not."
    assert model.requests[0]["body"]["model"] == "claude-opus-4-6"  # the task's, not the driver's
    outputs = [r["output"] for r in log.of("tool_result")]
    assert all(r["is_error"] for r in log.of("tool_result")), outputs
    assert outputs[0] == "../escape.txt is outside the repository"
    assert "is an absolute path" in outputs[1] and "is an absolute path" in outputs[2]
    assert outputs[3] == "link/via-link.txt is outside the repository"
    assert outputs[4] == "link/secret.txt is outside the repository"
    assert outputs[5] == "old occurs 2 times in twice.txt; it must occur exactly once"
    assert outputs[6] == "old occurs 0 times in twice.txt; it must occur exactly once"
    assert outputs[7] == "No such file or directory: missing.txt"
    assert outputs[8] == "the tool needs 'content' as a string"
    assert outputs[9].startswith("there is no tool 'delete_everything'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "ws"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (workspace / "twice.txt").read_text() == "a a"
    assert not Path("/etc/x").exists()


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "said"),
    [
        (403, "permission_error", False, "the model gateway refused: over budget"),
        (401, "authentication_error", False, "the model gateway refused the key: over budget"),
        (400, "invalid_request_error", True, "the model call failed: over budget"),
    ],
)
def test_builtin_ends_on_an_api_error(
    tmp_path: Path, status: int, kind: str, retryable: bool, said: str
) -> None:
    error = {"status": status, "type": kind, "message": "over budget"}
    with scripted({"error": error}) as (url, model):
        log = Log()
        result = BuiltinDriver().run(_task(tmp_path / "ws", url), log, threading.Event())
    assert not result.ok and result.retryable is retryable
    assert result.error == said
    assert log.entries == [("error", {"text": said})]
    assert len(model.requests) == 1  # the SDK retries none of these


def test_builtin_gives_up_after_max_turns(tmp_path: Path) -> None:
    busy = [_tool("run", command="echo again")]
    with scripted(busy, busy, busy, busy) as (url, model):
        log = Log()
        result = BuiltinDriver(max_turns=2).run(_task(tmp_path / "ws", url), log, threading.Event())
    assert not result.ok and result.retryable
    assert result.error == "gave up after 2 turns"
    assert len(model.requests) == 2
    assert log.kinds() == ["tool_call", "tool_result"] * 2 + ["error"]


def test_builtin_stops_during_a_command_and_kills_it(tmp_path: Path) -> None:
    command = "sleep 30 & echo $! > sleep.pid; wait"
    with scripted([_tool("run", command=command)], "never reached") as (url, model):
        task = _task(tmp_path / "ws", url)
        pid_file = task.workspace / "sleep.pid"
        stop = threading.Event()
        _stop_when(lambda: pid_file.exists() and pid_file.read_text().strip(), stop)
        log = Log()
        started = time.monotonic()
        result = BuiltinDriver().run(task, log, stop)
        took = time.monotonic() - started

    assert not result.ok and result.error == "stopped"
    assert took < 5
    assert _gone(int(pid_file.read_text()))
    assert log.of("tool_result")[0]["output"].startswith("the command was stopped")
    assert len(model.requests) == 1


def test_builtin_stops_while_the_model_thinks(tmp_path: Path) -> None:
    with scripted({"content": ["slow"], "delay_s": 1.5}) as (url, _):
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        result = BuiltinDriver().run(_task(tmp_path / "ws", url), Log(), stop)
        took = time.monotonic() - started
    assert not result.ok and result.error == "stopped"
    assert took < 1.0
    assert 0.1 < result.model_s < 1.0


def test_builtin_times_a_command_out(tmp_path: Path) -> None:
    with scripted([_tool("run", command="echo begun; sleep 30")], "it was slow") as (url, _):
        log = Log()
        driver = BuiltinDriver(command_timeout_s=0.3)
        result = driver.run(_task(tmp_path / "ws", url), log, threading.Event())
    assert result.ok and result.summary == "it was slow"
    (output,) = log.of("tool_result")
    assert output["is_error"]
    assert output["output"] == "the command timed out after 0.3s\nbegun\n"


# -- the command driver -----------------------------------------------------------------------

AGENT = """
import os, pathlib, sys
prompt_file, prompt, key, workspace, model = sys.argv[1:]
pathlib.Path("out.txt").write_text(pathlib.Path(prompt_file).read_text())
print("prompt intact:", prompt == pathlib.Path(prompt_file).read_text())
print("cwd:", os.getcwd() == workspace, "key:", key, "model:", model)
for name in ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "SWARM_TICKET_ID", "SWARM_TICKET_KEY",
             "EXTRA"]:
    print(name, os.environ[name])
print("prompt file:", os.environ["SWARM_PROMPT_FILE"] == prompt_file, prompt_file)
print("a warning", file=sys.stderr)
print()
print("all done")
"""


def _python(code: str, *words: str) -> str:
    """A command template running ``code`` with this Python."""
    return shlex.join([sys.executable, "-c", code]) + "".join(f" {w}" for w in words)


def test_command_runs_an_agent_with_the_prompt_the_env_and_its_output_logged(
    tmp_path: Path,
) -> None:
    template = _python(AGENT, "{prompt_file}", "{prompt}", "{ticket_key}", "{workspace}", "{model}")
    task = _task(
        tmp_path / "ws", "http://gateway:1/llm", model="claude-x", env={"EXTRA": "extra value"}
    )
    log = Log()
    result = CommandDriver(command=template).run(task, log, threading.Event())

    assert result.ok, result
    assert (task.workspace / "out.txt").read_text() == task.prompt()
    stdout = [e["text"] for e in log.of("output") if e["stream"] == "stdout"]
    stderr = [e["text"] for e in log.of("output") if e["stream"] == "stderr"]
    assert stdout[:7] == [
        "prompt intact: True",
        "cwd: True key: T-1 model: claude-x",
        "ANTHROPIC_BASE_URL http://gateway:1/llm",
        f"ANTHROPIC_API_KEY {TOKEN}",
        "SWARM_TICKET_ID 7",
        "SWARM_TICKET_KEY T-1",
        "EXTRA extra value",
    ]
    assert stdout[-2:] == ["", "all done"]
    assert stderr == ["a warning"]
    assert set(log.kinds()) == {"output"}
    prompt_file = Path(stdout[7].split()[-1])
    assert stdout[7] == f"prompt file: True {prompt_file}"
    assert not prompt_file.is_relative_to(tmp_path) and not prompt_file.parent.exists()
    assert result.summary.endswith("all done")
    assert result.summary.startswith("prompt intact: True\n")


def test_command_without_output_still_sums_up(tmp_path: Path) -> None:
    result = CommandDriver(command="true").run(_task(tmp_path / "ws"), Log(), threading.Event())
    assert result == DriverResult(summary="the command finished")


def test_command_exiting_non_zero_fails_with_its_last_stderr_line(tmp_path: Path) -> None:
    code = "import sys; print('working'); print('it broke', file=sys.stderr); sys.exit(3)"
    log = Log()
    result = CommandDriver(command=_python(code)).run(
        _task(tmp_path / "ws"), log, threading.Event()
    )
    assert not result.ok and result.retryable
    assert result.error == "the agent command exited with 3: it broke"
    # Two streams read side by side: each in order, the two in either.
    assert sorted(log.of("output"), key=lambda e: e["stream"]) == [
        {"stream": "stderr", "text": "it broke"},
        {"stream": "stdout", "text": "working"},
    ]


def test_command_times_out_and_its_whole_group_is_killed(tmp_path: Path) -> None:
    task = _task(tmp_path / "ws", timeout_s=0.5)
    log = Log()
    started = time.monotonic()
    result = CommandDriver(command="bash -c 'sleep 30 & echo $! > child.pid; wait'").run(
        task, log, threading.Event()
    )
    assert time.monotonic() - started < 3
    assert not result.ok and result.retryable
    assert result.error == "timed out after 0.5s"
    assert _gone(int((task.workspace / "child.pid").read_text()))
    assert log.entries[-1] == ("error", {"text": "the agent command timed out after 0.5s"})


def test_command_stops_when_told(tmp_path: Path) -> None:
    code = "import time; print('started', flush=True); time.sleep(30)"
    log = Log()
    stop = threading.Event()
    _stop_when(lambda: log.of("output"), stop)
    started = time.monotonic()
    result = CommandDriver(command=_python(code), timeout_s=20).run(
        _task(tmp_path / "ws"), log, stop
    )
    assert time.monotonic() - started < 3
    assert not result.ok and result.error == "stopped"
    assert log.of("output") == [{"stream": "stdout", "text": "started"}]


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("agent --message {promt}", "unknown placeholder {promt}: use {prompt}, {prompt_file}"),
        ("agent {0}", "does not fill: Format string contains positional fields"),
        ("agent '{prompt}", "does not parse: No closing quotation"),
        ("agent {prompt", "does not fill"),
        ("  ", "the agent command is empty"),
    ],
)
def test_command_refuses_a_bad_template(template: str, why: str) -> None:
    with pytest.raises(UsageError, match=why.replace("{", r"\{").replace("}", r"\}")):
        CommandDriver(command=template)


def test_command_with_a_missing_program_is_not_retried(tmp_path: Path) -> None:
    log = Log()
    result = CommandDriver(command="no-such-agent-program {prompt}").run(
        _task(tmp_path / "ws"), log, threading.Event()
    )
    assert not result.ok and not result.retryable
    assert result.error == (
        "cannot start the agent command 'no-such-agent-program': No such file or directory"
    )
    assert log.kinds() == ["error"]


def test_the_registry_builds_both_drivers() -> None:
    builtin = make_driver("builtin", max_turns=3)
    assert isinstance(builtin, BuiltinDriver) and builtin.max_turns == 3
    command = make_driver("command", command="agent {prompt}", timeout_s=5)
    assert isinstance(command, CommandDriver) and command.timeout_s == 5
    assert os.path.basename(command.words[0]) == "agent"
