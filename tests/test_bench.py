"""The benchmark commands run end to end and print one JSON object with sane figures."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from swarmstack.bench.dag import layered_plan
from swarmstack.cli.main import app
from swarmstack.tickets import graph

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
