"""Small statistics the benchmarks share."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (inclusive method) to three decimals; None if ``values`` is empty."""
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 3)
