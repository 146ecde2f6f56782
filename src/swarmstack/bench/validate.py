"""``swarm bench validate``: how long validation and scheduling take on large plans."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from swarmstack.bench.dag import chain_plan, designed_plan, random_plan
from swarmstack.tickets import graph
from swarmstack.tickets.models import PlanSpec


def _best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def run(tickets: int = 10_000, repeat: int = 3) -> dict[str, Any]:
    """Validate and schedule a random DAG, a chain, and a random DAG with requirements and
    a skeleton (every check runs on it) of ``tickets`` tickets; best of N."""
    plans: dict[str, PlanSpec] = {
        "random_dag": random_plan(tickets, seed=1),
        "chain": chain_plan(tickets),
        "designed_dag": designed_plan(tickets, seed=1),
    }
    result: dict[str, Any] = {"bench": "validate", "tickets": tickets, "repeat": repeat}
    for name, spec in plans.items():
        report = graph.validate(spec)
        result[f"{name}_valid"] = report.valid
        result[f"{name}_validate_ms"] = _best_ms(functools.partial(graph.validate, spec), repeat)
        result[f"{name}_waves_ms"] = _best_ms(functools.partial(graph.waves_report, spec), repeat)
        result[f"{name}_waves"] = len(graph.waves(spec))
    return result
