"""The benchmark commands run end to end and print one JSON object with sane figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swarmstack.bench import listschedule
from swarmstack.bench.dag import layered_plan, waved_plan
from swarmstack.bench.dashboard import CHROMIUM
from swarmstack.cli.main import app
from swarmstack.tickets import graph
from swarmstack.tickets.models import PlanSpec, TicketSpec

runner = CliRunner()


def test_bench_validate_prints_one_json_object() -> None:
    result = runner.invoke(app, ["bench", "validate", "--tickets", "500", "--repeat", "1"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["random_dag_valid"] is True
    assert figures["chain_valid"] is True
    assert figures["chain_waves"] == 500
    assert figures["random_dag_validate_ms"] > 0


def test_layered_plan_is_a_valid_dag_of_the_asked_width() -> None:
    plan = layered_plan(1000, width=100, seed=3)
    assert graph.validate(plan).valid
    waves = graph.waves(plan)
    assert [len(w) for w in waves] == [100] * 10
    assert all(1 <= len(t.depends_on) <= 2 for t in plan.tickets[100:])


@pytest.mark.slow
def test_bench_claims_small_run_has_no_double_claims_and_loses_nothing() -> None:
    result = runner.invoke(
        app, ["bench", "claims", "--agents", "10", "--tickets", "200", "--width", "50"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["double_claims"] == 0
    assert figures["lost"] == 0
    assert figures["lifecycles_per_s"] > 0
    assert figures["dispatch_samples"] > 0
    assert figures["dispatch_p99_ms"] is not None


def test_waved_plan_has_the_asked_waves_each_ticket_hanging_on_the_wave_before() -> None:
    plan = waved_plan(1000, waves=8, seed=4)
    assert graph.validate(plan).valid
    waves = graph.waves(plan)
    assert len(waves) == 8
    assert sum(len(w) for w in waves) == 1000
    assert max(len(w) for w in waves) > 100 > len(waves[0])  # widest in the middle
    wave_of = {key: n for n, keys in enumerate(waves) for key in keys}
    for ticket in plan.tickets:
        if wave_of[ticket.id]:
            assert 1 <= len(ticket.depends_on) <= 2
            assert max(wave_of[d] for d in ticket.depends_on) == wave_of[ticket.id] - 1
    assert len({t.estimate for t in plan.tickets}) > 50
    assert waved_plan(1000, waves=8, seed=4) == plan


def _plan(*tickets: tuple[str, float, list[str]]) -> PlanSpec:
    return PlanSpec(
        title="t",
        tickets=[
            TicketSpec(id=key, title=key, estimate=est, depends_on=deps)
            for key, est, deps in tickets
        ],
    )


def test_list_schedule_runs_the_highest_rank_first_and_strict_waves_wait() -> None:
    # X -> Y is the long path (rank 6); Z1 and Z2 fill in beside it. X (0-1) and Z1 (0-2)
    # first; at 1, Y goes before Z2 (1-6, Z2 2-4): taking Z2 first would end at 7.
    plan = _plan(("Z1", 2, []), ("Z2", 2, []), ("X", 1, []), ("Y", 5, ["X"]))
    seconds = {t.id: t.estimate for t in plan.tickets}
    assert listschedule.makespan(plan, seconds, 2) == 6.0
    # Wave by wave, Y waits for Z2 as well (1-3): Y 3-8.
    assert listschedule.makespan(plan, seconds, 2, strict_waves=True) == 8.0
    assert listschedule.makespan(plan, seconds, 1) == 10.0
    assert listschedule.makespan(plan, seconds, 4) == 6.0


@pytest.mark.slow
def test_bench_schedule_small_run_figures_hang_together() -> None:
    result = runner.invoke(
        app,
        ["bench", "schedule", "--tickets", "60", "--agents", "10", "--target-s", "1.5", "--json"],
    )
    assert result.exit_code == 0, result.output
    f = json.loads(result.stdout)
    assert (f["tickets"], f["agents"], f["waves"], f["db"]) == (60, 10, 8, "sqlite")
    assert f["tickets_done"] == f["strict_tickets_done"] == 60
    assert f["lower_bound_s"] == pytest.approx(1.5)
    assert f["lower_bound_s"] == pytest.approx(
        max(f["critical_path_s"], f["total_work_s"] / f["agents"]), abs=1e-3
    )
    assert f["lower_bound_s"] <= f["makespan_s"]
    assert f["lower_bound_s"] <= f["strict_wave_makespan_s"]
    assert f["lower_bound_s"] <= f["simulated_makespan_s"] + 1e-3
    assert f["simulated_makespan_s"] <= f["simulated_strict_makespan_s"] + 1e-3
    assert f["efficiency"] == pytest.approx(f["lower_bound_s"] / f["makespan_s"], abs=1e-3)
    assert f["strict_ratio"] == pytest.approx(
        f["makespan_s"] / f["strict_wave_makespan_s"], abs=1e-3
    )
    assert 0 < f["efficiency"] <= 1
    assert f["claim_p50_ms"] is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Debian's chromium is not installed (scripts/setup installs it)",
)
def test_bench_dashboard_small_run_draws_every_ticket_and_misses_no_event() -> None:
    args = ["--tickets", "60", "--agents", "5", "--seconds", "3", "--turn-s", "0.3"]
    result = runner.invoke(app, ["bench", "dashboard", *args])
    assert result.exit_code == 0, result.output
    f = json.loads(result.stdout)
    assert (f["tickets"], f["agents"], f["tickets_drawn"]) == (60, 5, 60)
    assert f["missed"] == 0 and f["agent_errors"] == 0
    assert f["events_applied"] == f["events_written"] > 60
    assert f["tickets_done"] > 0 and f["events_per_s"] > 0
    assert 0 < f["load_ms"] < 20_000
    assert f["frames"] > 0 and 0 < f["frame_p50_ms"] <= f["frame_p99_ms"]
    assert f["latency_samples"] > f["tickets_done"]  # claims, completions, tickets made ready
    for name in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms"):
        assert isinstance(f[name], float) and 0 < f[name] < 5000, name
    assert f["latency_p50_ms"] <= f["latency_p99_ms"] <= f["latency_max_ms"]
    assert 0 <= f["busy_share"] <= 1 and isinstance(f["smooth"], bool)


@pytest.mark.slow
def test_bench_mcp_times_the_status_tool_over_stdio_and_http_against_the_view() -> None:
    result = runner.invoke(
        app,
        ["bench", "mcp", "--tickets", "60", "--agents", "5", "--calls", "2", "--dead", "3"],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    # 40% done, then 3 dead, then 5 agents at work: the rest waits on them or is ready.
    by_state = figures["by_state"]
    assert (by_state["done"], by_state["dead"], by_state["claimed"]) == (24, 3, 5)
    assert figures["agents_at_work"] == 5 and figures["needs_attention"] == 3
    for way in ("direct", "stdio", "http"):
        assert 0 < figures[way]["p50_ms"] <= figures[way]["p99_ms"]
    assert figures["stdio_over_direct"] > 0 and figures["http_over_direct"] > 0
    assert figures["status_bytes"] > 1000 and figures["list_tools_ms"] > 0
