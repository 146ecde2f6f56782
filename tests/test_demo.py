"""The demo runs the bundled plan end to end on a real server with local agents."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from swarmstack.cli.main import app


@pytest.mark.slow
def test_demo_finishes_every_ticket_of_the_bundled_plan() -> None:
    result = CliRunner().invoke(app, ["demo", "--pace", "0", "--agents", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["tickets"] == 11
    assert summary["done"] == 11
    assert summary["waves"] == 6
    # plan.created, then per ticket at least ready, claimed and done
    assert summary["events"] >= 1 + 3 * 11
    assert summary["critical_path"].startswith("scaffold")
