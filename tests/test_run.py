"""``swarm run``, the main job, as a user runs it: a child process that starts its own control
plane, agents in bubblewrap sandboxes running the real Claude Code against the scripted model,
the merge queue; interrupted with Ctrl-C and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent_world import sample_repo
from swarmstack.llm.scripted import ScriptedModel, load_script
from swarmstack.llm.scripted import create_app as scripted_app
from swarmstack.run import RunOptions, SwarmRun
from swarmstack.threaded import ThreadedServer

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

KEYS = ("T-1", "T-2", "T-3", "T-4")


def _session(key: str, think_s: float) -> dict[str, Any]:
    name = key.lower().replace("-", "_")
    write = {"file_path": f"${{workspace}}/{name}.py", "content": f"NAME = {key!r}\n"}
    return {
        "name": key,
        "match": rf"You are implementing ticket {key}\b",
        "delay_s": think_s,
        "turns": [[{"tool_use": {"name": "Write", "input": write}}], f"Wrote {name}.py."],
    }


def _plan(tmp_path: Path) -> Path:
    plan = {
        "title": "four modules",
        "checks": "python3 -m unittest -q",
        "tickets": [
            {"id": "T-1", "title": "one", "files": ["t_1.py"]},
            {"id": "T-2", "title": "two", "files": ["t_2.py"]},
            {"id": "T-3", "title": "three", "depends_on": ["T-1"], "files": ["t_3.py"]},
            {"id": "T-4", "title": "four", "depends_on": ["T-2"], "files": ["t_4.py"]},
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def _swarm(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "swarmstack", "run", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_interrupted_and_resumed_a_run_loses_nothing_and_repeats_no_finished_ticket(
    tmp_path: Path,
) -> None:
    model = ScriptedModel(load_script({"sessions": [_session(k, 1.5) for k in KEYS]}))
    repo = sample_repo(tmp_path / "repo")
    data = tmp_path / "run"
    with ThreadedServer(scripted_app(model)) as upstream:
        env = {"SWARM_LLM_UPSTREAM_URL": upstream.url}
        args = ["--repo", str(repo), "--plan", str(_plan(tmp_path)), "--approve"]
        first = _swarm(
            *args, "--agents", "2", "--data-dir", str(data), "--json", env=env, cwd=tmp_path
        )
        db = data / "control-plane" / "swarm.db"
        deadline = time.monotonic() + 180
        while True:  # until one ticket is done and another is being worked on
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "no ticket was done in time"
            states = _states(db)
            if states.get("done", 0) >= 1 and states.get("claimed", 0) >= 1:
                break
            time.sleep(0.2)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 130, err[-3000:]
        stopped = json.loads(out)
        assert stopped["interrupted"] is True and stopped["tickets_done"] >= 1
        # The dashboard's address is printed; its token only written, for this user alone.
        token_file = data / "admin.token"
        assert f"dashboard: {stopped['api_url']}/" in err
        assert token_file.stat().st_mode & 0o077 == 0
        assert token_file.read_text().strip() not in out + err
        # Stopped cleanly: no lease held, no sandbox left.
        states = _states(db)
        assert "claimed" not in states, states
        agents = SwarmRun(RunOptions(data_dir=data)).agents_dir()
        sandboxes = agents / "sandboxes"
        left = [p for p in sandboxes.iterdir() if p.is_dir()] if sandboxes.exists() else []
        assert left == []  # each sandbox's directory went with it
        done_before = _done_keys(db)
        claims_before = _claims(db)

        second = _swarm("--resume", "--data-dir", str(data), "--json", env=env, cwd=tmp_path)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err[-3000:]
        summary = json.loads(out)
    assert summary["tickets_done"] == len(KEYS) and summary["tickets_failed"] == 0
    assert summary["interrupted"] is False and summary["prs"] == len(KEYS)
    # Nothing lost: every ticket's work is in the integration branch.
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", "main"],
        cwd=data / "control-plane" / "repos" / "plan-1.git",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {f"t_{n}.py" for n in range(1, 5)} <= set(listed)
    # Nothing repeated: a ticket done before the interrupt was never claimed again, and each
    # ticket was done once.
    claims_after = _claims(db)
    for key in done_before:
        assert claims_after[key] == claims_before[key], key
    assert Counter(_events(db, "ticket.done").values()) == Counter({1: len(KEYS)})


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql).fetchall()


def _states(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        return dict(_query(db, "SELECT state, COUNT(*) FROM tickets GROUP BY state"))
    except Exception:  # the schema is not there yet
        return {}


def _done_keys(db: Path) -> set[str]:
    return {k for (k,) in _query(db, "SELECT key FROM tickets WHERE state = 'done'")}


def _claims(db: Path) -> Counter[str]:
    return Counter(_events(db, "ticket.claimed"))


def _events(db: Path, kind: str) -> dict[str, int]:
    rows = _query(
        db,
        "SELECT t.key, COUNT(*) FROM events e JOIN tickets t ON t.id = e.ticket_id "
        f"WHERE e.kind = '{kind}' GROUP BY t.key",
    )
    return dict(rows)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give the spec"),
        (["spec.md"], "--repo is needed"),
        (["spec.md", "--repo", "."], "is not a git repository"),
        (["missing.md", "--repo", "repo"], "no spec at missing.md"),
        (["spec.md", "--repo", "repo", "--backend", "firecracker"], "not available to the pool"),
        (["--resume"], "nothing to resume"),
        (["spec.md", "--resume"], "give no spec or --plan with it"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], says: str
) -> None:
    from typer.testing import CliRunner

    from swarmstack.cli.main import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.md").write_text("# A spec\n")
    sample_repo(tmp_path / "repo")
    result = CliRunner().invoke(app, ["run", *args, "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "d" / "control-plane").exists()  # no control plane was started


def test_the_board_says_when_the_plan_is_paused_and_how_to_resume_it() -> None:
    from rich.console import Console

    from swarmstack.run import Board
    from swarmstack.tickets.models import Plan

    plan = Plan(id=4, title="a plan", description="", created_at=0.0, ticket_count=3)
    console = Console(width=120, record=True)
    console.print(Board(plan, 2, "bwrap", "http://127.0.0.1:1").render())
    assert "paused" not in console.export_text()
    console.print(Board(plan.model_copy(update={"paused": True}), 2, "bwrap", "x").render())
    assert "paused: no new tickets start until `swarm plan resume 4`" in console.export_text()
