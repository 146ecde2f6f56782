"""The runner's own rules, on this host (no sandbox): how a ticket ends for each outcome of
its driver, what a restart does with a lease left behind, and the CLI's refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from agent_world import SwarmWorld, builtin_sub_session, swarm_world
from swarmstack.agent.drivers import make_driver
from swarmstack.agent.runner import Runner, RunnerConfig
from swarmstack.tickets.models import PlanSpec, TicketSpec, TicketState

PLAN = PlanSpec(title="calc", tickets=[TicketSpec(id="T-1", title="Add sub()")])


def _runner(
    world: SwarmWorld,
    tmp_path: Path,
    driver: str,
    config: dict[str, Any] | None = None,
    **options: Any,
) -> Runner:
    settings = RunnerConfig(
        api_url=world.url,
        token=world.agent_token,
        agent="test-runner",
        work_root=tmp_path / "work",
        state_file=tmp_path / "state" / "lease.json",
        wait_s=1.0,
        max_tickets=1,
    )
    for name, value in (config or {}).items():
        setattr(settings, name, value)
    return Runner(settings, make_driver(driver, **options))


def test_the_builtin_driver_implements_a_ticket_through_the_gateway(tmp_path: Path) -> None:
    session = builtin_sub_session()
    with swarm_world(tmp_path, {"sessions": [session]}, PLAN) as world:
        [outcome] = _runner(world, tmp_path, "builtin").run()
        assert outcome.state == "done", outcome.detail
        ticket = world.settled("T-1")  # merging until the merge queue has merged it
        assert ticket.state is TicketState.DONE and ticket.result is not None
        assert (ticket.result.summary, ticket.result.branch) == ("Added sub().", "swarm/1")
        assert "+def sub(a, b):" in world.admin.pull_diff(ticket.id)
        results = [e.data for e in world.events(ticket.id) if e.kind == "agent.tool_result"]
        assert "sub ok" in results[-1]["output"]
        assert world.admin.usage(ticket_id=ticket.id).calls == 3
        assert not (tmp_path / "work" / "ticket-1").exists()  # the workspace is gone
        assert not (tmp_path / "state" / "lease.json").exists()


def test_a_failing_agent_fails_the_ticket_with_its_words(tmp_path: Path) -> None:
    with swarm_world(tmp_path, {"sessions": []}, PLAN) as world:
        command = (
            f"{sys.executable} -c 'import sys; sys.exit(\"no idea how to do {{ticket_key}}\")'"
        )
        [outcome] = _runner(world, tmp_path, "command", command=command).run()
        assert outcome.state == "failed"
        ticket = world.settled("T-1")  # merging until the merge queue has merged it
        assert ticket.state is TicketState.FAILED and ticket.attempts == 1
        assert ticket.last_error is not None and "no idea how to do T-1" in ticket.last_error
        errors = [e.data for e in world.events(ticket.id) if e.kind == "agent.error"]
        assert errors and errors[0]["retryable"] is True


def test_an_agent_that_changes_nothing_completes_without_a_branch(tmp_path: Path) -> None:
    with swarm_world(tmp_path, {"sessions": []}, PLAN) as world:
        [outcome] = _runner(world, tmp_path, "command", command="true").run()
        assert outcome.state == "done"
        ticket = world.settled("T-1")  # merging until the merge queue has merged it
        assert ticket.state is TicketState.DONE and ticket.result is not None
        assert ticket.result.branch is None
        assert world.admin.list_pulls(world.plan_id) == []
        texts = [e.data.get("text") for e in world.events(ticket.id) if e.kind == "agent.status"]
        assert "no change to push" in texts


def test_a_restarted_runner_releases_the_lease_it_left_behind(tmp_path: Path) -> None:
    with swarm_world(tmp_path, {"sessions": []}, PLAN) as world:
        runner = _runner(world, tmp_path, "command", command="true")
        lease = runner.api.claim("crashed-runner", plan_id=world.plan_id)
        assert lease is not None
        state_file = tmp_path / "state" / "lease.json"
        state_file.parent.mkdir()
        state_file.write_text(lease.model_dump_json())
        (tmp_path / "work" / "ticket-1").mkdir(parents=True)
        runner.recover()
        ticket = world.settled("T-1")  # merging until the merge queue has merged it
        assert (ticket.state, ticket.attempts) == (TicketState.READY, 0)
        released = [e for e in world.events(ticket.id) if e.kind == "ticket.released"]
        assert released[0].data["reason"] == "the agent runner restarted"
        assert not state_file.exists() and not (tmp_path / "work" / "ticket-1").exists()
        # And it goes on to do the ticket.
        assert [o.state for o in runner.run()] == ["done"]


def test_swarm_agent_refuses_unusable_input_with_one_line(tmp_path: Path) -> None:
    def agent(*args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        return subprocess.run(
            [sys.executable, "-m", "swarmstack", "agent", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    cases = {
        ("--token", "swagent_1_x"): "no control plane",
        ("--api", "http://127.0.0.1:9"): "no agent token",
        ("--api", "http://127.0.0.1:9", "--token", "t", "--driver", "command"): "needs --command",
        ("--api", "http://127.0.0.1:9", "--token", "t", "--driver", "nope"): "unknown driver",
        ("--api", "http://127.0.0.1:9", "--token", "t", "--driver", "command",
         "--command", "x {nope}"): "nope",
    }  # fmt: skip
    for args, words in cases.items():
        done = agent(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_runner_reports_its_sandbox_and_an_admin_can_stop_it(tmp_path: Path) -> None:
    import threading
    import time

    with swarm_world(tmp_path, {"sessions": []}, PLAN) as world:
        config = {
            "heartbeat_s": 0.2,
            "max_tickets": None,  # only the lost lease ends it
            "end_on_lost": True,
            "sandbox_backend": "host",
        }
        runner = _runner(world, tmp_path, "command", config, command="sleep 120")
        outcomes: list[Any] = []
        thread = threading.Thread(target=lambda: outcomes.extend(runner.run()))
        thread.start()
        try:
            deadline = time.monotonic() + 60  # a hang detector only
            while True:
                agents = world.admin.agents(world.plan_id)
                usage = agents[0].sandbox if agents else None
                # the runner and the driver's command, measured over two samples
                if usage and usage.cpu_percent is not None and (usage.processes or 0) >= 2:
                    break
                assert time.monotonic() < deadline, agents
                time.sleep(0.05)
            [agent] = agents
            assert (agent.agent, agent.ticket_key, agent.attempt) == ("test-runner", "T-1", 1)
            assert agent.stale is False and agent.claimed_at is not None
            assert usage.backend == "host" and (usage.memory_bytes or 0) > 1_000_000
            ticket = world.admin.stop(agent.ticket_id, "looks stuck")
            assert (ticket.state, ticket.attempts) == (TicketState.READY, 0)
            thread.join(60)
            assert not thread.is_alive()  # its next heartbeat was refused and it ended
        finally:
            runner.stop()
            thread.join(60)
        assert [o.state for o in outcomes] == ["lost"]
        released = [e.data for e in world.events(ticket.id) if e.kind == "ticket.released"]
        assert released == [{"epoch": 1, "reason": "looks stuck"}]
        assert world.admin.agents(world.plan_id) == []
