"""``swarm demo``, the README's first command: the bundled example from its spec to a merged,
tested repository — the design agent, agents in bubblewrap sandboxes running the real Claude
Code against the scripted model, the merge queue with its checks, the planned conflict
resolved by a fix attempt."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from swarmstack.forge import hostgit
from swarmstack.tickets.plan import load_plan

EXAMPLE = Path(__file__).parent.parent / "src" / "swarmstack" / "examples" / "todo"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")
def test_the_demo_merges_every_ticket_resolves_its_conflict_and_its_tests_pass(
    tmp_path: Path,
) -> None:
    work = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "swarmstack", "demo", "--json", "--data-dir", str(work)],
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if not k.startswith("SWARM_")},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    tickets = len(load_plan(EXAMPLE / "plan.json").tickets)
    assert summary["tickets_done"] == tickets and summary["tickets_failed"] == 0
    assert summary["prs"] == tickets  # one pull request per ticket
    assert summary["merge_conflicts_resolved"] == 1  # the planned one, by the fix loop
    assert summary["tests_passed"] is True and "OK" in summary["tests_output"]
    assert summary["wall_s"] > 0

    # Every ticket was merged, each after the tickets it depends on.
    db = work / ".swarm" / "control-plane" / "swarm.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        merged = [
            key
            for (key,) in conn.execute(
                "SELECT t.key FROM events e JOIN tickets t ON t.id = e.ticket_id "
                "WHERE e.kind = 'ticket.merged' ORDER BY e.seq"
            )
        ]
    plan = load_plan(EXAMPLE / "plan.json")
    assert sorted(merged) == sorted(t.id for t in plan.tickets)
    position = {key: i for i, key in enumerate(merged)}
    for ticket in plan.tickets:
        for dep in ticket.depends_on:
            assert position[dep] < position[ticket.id], (dep, ticket.id)
    # The integration branch holds every ticket's work.
    bare = work / ".swarm" / "control-plane" / "repos" / f"plan-{summary['plan_id']}.git"
    for ticket in plan.tickets:
        for path in ticket.files:
            hostgit.run("cat-file", "-e", f"main:{path}", cwd=bare)  # fails if it is missing
    # Both sides of the conflict are in the command table.
    cli = hostgit.run("show", "main:src/todo/cli.py", cwd=bare).decode()
    assert '"search"' in cli and '"export"' in cli and "<<<<<<<" not in cli
